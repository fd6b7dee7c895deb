//! The JSON Lines snapshot format (`.jsonl`): one [`ConsentRecord`] per line,
//! optionally preceded by a header line `{"snapshot_version": N}`. Blank lines and
//! lines starting with `#` are skipped. Errors name the file, line, column and field.

use super::pipeline;
use super::{finish_load, LoadError, Origin};
use crate::record::ConsentRecord;
use crate::segment::{Segment, ShardBuilders};
use foldhash::fast::RandomState;
use serde::Deserialize;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Bytes read per chunk (cut back to the last complete line).
const CHUNK_BYTES: u64 = 4 << 20;
/// Longest line accepted.
const MAX_LINE: usize = 64 << 20;

/// The optional first line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotHeader {
    snapshot_version: u64,
}

/// Whole lines of the file, starting at line `first_line`.
struct Chunk {
    first_line: u64,
    bytes: Vec<u8>,
    /// The header line, if it is in this chunk.
    header_line: Option<u64>,
}

/// Content lines are neither blank nor comments.
fn content(line: &[u8]) -> Option<&[u8]> {
    let t = line.trim_ascii();
    (!t.is_empty() && t[0] != b'#').then_some(t)
}

/// Reads the file in chunks of whole lines and spots the header line.
struct Chunks {
    path: PathBuf,
    file: File,
    carry: Vec<u8>,
    next_line: u64,
    eof: bool,
    failed: bool,
    /// Whether the first content line has been seen (only it may be a header).
    seen_content: bool,
    version: u64,
}

impl Chunks {
    fn read_chunk(&mut self) -> Result<Option<Chunk>, LoadError> {
        let mut buf = std::mem::take(&mut self.carry);
        let mut scanned = 0;
        loop {
            if self.eof {
                break;
            }
            let n = (&mut self.file)
                .take(CHUNK_BYTES)
                .read_to_end(&mut buf)
                .map_err(|source| LoadError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                self.eof = true;
                break;
            }
            if let Some(pos) = buf[scanned..].iter().rposition(|&b| b == b'\n') {
                self.carry = buf.split_off(scanned + pos + 1);
                break;
            }
            scanned = buf.len();
            if buf.len() > MAX_LINE {
                return Err(LoadError::LineTooLong {
                    path: self.path.clone(),
                    line: self.next_line,
                });
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let first_line = self.next_line;
        let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
        self.next_line += lines;
        let mut header_line = None;
        if !self.seen_content {
            for (k, line) in buf.split(|&b| b == b'\n').enumerate() {
                let Some(line) = content(line) else { continue };
                self.seen_content = true;
                if let Ok(h) = serde_json::from_slice::<SnapshotHeader>(line) {
                    self.version = h.snapshot_version;
                    header_line = Some(first_line + k as u64);
                }
                break;
            }
        }
        Ok(Some(Chunk {
            first_line,
            bytes: buf,
            header_line,
        }))
    }
}

impl Iterator for Chunks {
    type Item = Result<Chunk, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.read_chunk().transpose();
        self.failed = matches!(item, Some(Err(_)));
        item
    }
}

fn json_error(
    path: &Path,
    line: u64,
    field: Option<String>,
    inner: serde_json::Error,
) -> LoadError {
    let column = inner.column();
    let mut message = inner.to_string();
    // serde_json appends " at line L column C"; the line is ours to tell.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    LoadError::Json {
        path: path.to_owned(),
        line,
        column,
        field,
        message,
    }
}

fn decode_chunk(
    path: &Path,
    hasher: &RandomState,
    chunk: Chunk,
    out: &mut ShardBuilders,
) -> Result<(), LoadError> {
    let mut scratch = String::new();
    for (k, raw) in chunk.bytes.split(|&b| b == b'\n').enumerate() {
        let line = chunk.first_line + k as u64;
        if chunk.header_line == Some(line) {
            continue;
        }
        if content(raw).is_none() {
            continue;
        }
        // Parse the raw line (JSON allows the surrounding whitespace, `\r` included)
        // so columns count from the start of the line.
        let mut de = serde_json::Deserializer::from_slice(raw);
        let record: ConsentRecord = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            // serde_path_to_error writes "." for the top level and "?" when it lost track.
            let field = (field != "." && field != "?").then_some(field);
            json_error(path, line, field, e.into_inner())
        })?;
        de.end().map_err(|e| json_error(path, line, None, e))?;
        let invalid = |source| LoadError::Invalid {
            path: path.to_owned(),
            origin: Origin::Line(line),
            source,
        };
        let view = record.view(&mut scratch).map_err(invalid)?;
        view.validate().map_err(invalid)?;
        out.push(hasher, &view, line)
            .map_err(|_| LoadError::Capacity {
                path: path.to_owned(),
            })?;
    }
    Ok(())
}

/// Reads a `.jsonl` file into shard segments; returns them and the snapshot version.
pub(crate) fn load(path: &Path, hasher: &RandomState) -> Result<(Vec<Segment>, u64), LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    let mut chunks = Chunks {
        path: path.to_owned(),
        file,
        carry: Vec::new(),
        next_line: 1,
        eof: false,
        failed: false,
        seen_content: false,
        version: 0,
    };
    // A record line is at least ~200 bytes of JSON.
    let expected = (len / 200) as usize;
    let decode = |chunk: Chunk, out: &mut ShardBuilders| decode_chunk(path, hasher, chunk, out);
    let parts = pipeline::run(
        path,
        &mut chunks,
        &decode,
        expected,
        crate::store::ConsentStore::worker_threads(),
    )?;
    let segments = finish_load(path, parts, hasher, Origin::Line)?;
    Ok((segments, chunks.version))
}
