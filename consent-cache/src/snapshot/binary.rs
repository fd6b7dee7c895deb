//! The binary snapshot format (`.snap`), version 1. All integers little-endian.
//!
//! ```text
//! header (40 bytes)
//!   0  magic            8 bytes  "OBHCSNAP"
//!   8  format version   u32      1
//!  12  flags            u32      0 (reserved)
//!  16  feed version     u64      the store's change-feed version
//!  24  record count     u64
//!  32  block count      u32
//!  36  header crc32     u32      CRC-32 of bytes 0..36
//! blocks, each
//!   0  records          u32      records in this block (<= 2^20)
//!   4  payload length   u32      bytes (<= 64 MiB)
//!   8  crc32            u32      CRC-32 of the records field then the payload
//!  12  payload:
//!        purposes: varint n, then n × (varint len, UTF-8 bytes)
//!        records, each:
//!          varint id length, id bytes
//!          varint api_user
//!          varint customer length, customer bytes
//!          varint provider count, varint per provider
//!          u8 permission bits (accounts 1, balances 2, transactions 4, payments 8)
//!          u8 status (0 awaiting_authorisation, 1 authorised, 2 rejected, 3 revoked, 4 expired)
//!          zigzag varint created_at (unix seconds)
//!          varint expires_at: 0 = none, else zigzag(unix seconds) + 1
//!          varint purpose index into the block's purposes
//!          varint accounts: 0 = all accounts, else byte length + 1, then the
//!                 account ids joined by NUL
//! end of file right after the last block
//! ```
//!
//! Varints are unsigned LEB128 (at most 10 bytes). Blocks are independent, so
//! they are checked and decoded in parallel; every record is validated again on
//! load, as if it came from JSON.

use super::pipeline;
use super::{finish_load, LoadError, Origin, WriteError};
use crate::record::{RecordError, RecordView};
use crate::segment::{Segment, ShardBuilders};
use crate::types::{Bin, ConsentStatus, Permissions};
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first eight bytes of every binary snapshot.
pub const MAGIC: [u8; 8] = *b"OBHCSNAP";
/// The binary format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const HEADER_LEN: usize = 40;
const BLOCK_HEADER_LEN: usize = 12;
const BLOCK_RECORDS: u32 = 4096;
const BLOCK_TARGET_BYTES: usize = 1 << 20;
const MAX_BLOCK_RECORDS: u32 = 1 << 20;
const MAX_BLOCK_BYTES: u32 = 64 << 20;

fn status_code(s: ConsentStatus) -> u8 {
    match s {
        ConsentStatus::AwaitingAuthorisation => 0,
        ConsentStatus::Authorised => 1,
        ConsentStatus::Rejected => 2,
        ConsentStatus::Revoked => 3,
        ConsentStatus::Expired => 4,
    }
}

fn status_from_code(c: u8) -> Option<ConsentStatus> {
    Some(match c {
        0 => ConsentStatus::AwaitingAuthorisation,
        1 => ConsentStatus::Authorised,
        2 => ConsentStatus::Rejected,
        3 => ConsentStatus::Revoked,
        4 => ConsentStatus::Expired,
        _ => return None,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Why encoding stopped (mapped to [`WriteError`] with the path by the caller).
#[derive(Debug)]
pub(crate) enum EncodeError {
    Io(io::Error),
    Invalid { index: usize, source: RecordError },
    Duplicate { index: usize, id: String },
    TooLarge,
}

impl From<io::Error> for EncodeError {
    fn from(e: io::Error) -> Self {
        EncodeError::Io(e)
    }
}

/// Streams records into blocks.
pub(crate) struct Encoder<W: Write + Seek> {
    out: W,
    records: Vec<u8>,
    purposes: Vec<u8>,
    purpose_ids: HashMap<Box<str>, u64, RandomState>,
    prefix: Vec<u8>,
    in_block: u32,
    blocks: u32,
    total: u64,
}

impl<W: Write + Seek> Encoder<W> {
    fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&[0; HEADER_LEN])?;
        Ok(Encoder {
            out,
            records: Vec::with_capacity(BLOCK_TARGET_BYTES + 4096),
            purposes: Vec::new(),
            purpose_ids: HashMap::default(),
            prefix: Vec::new(),
            in_block: 0,
            blocks: 0,
            total: 0,
        })
    }

    /// Appends one (already validated) record.
    pub(crate) fn push(&mut self, v: &RecordView<'_>) -> Result<(), EncodeError> {
        let purpose = match self.purpose_ids.get(v.purpose) {
            Some(&i) => i,
            None => {
                let i = self.purpose_ids.len() as u64;
                put_str(&mut self.purposes, v.purpose);
                self.purpose_ids.insert(v.purpose.into(), i);
                i
            }
        };
        let out = &mut self.records;
        put_str(out, v.id);
        put_varint(out, v.api_user.get());
        put_str(out, v.customer);
        put_varint(out, v.providers.len() as u64);
        for p in v.providers {
            put_varint(out, p.get());
        }
        out.push(v.permissions.bits());
        out.push(status_code(v.status));
        put_varint(out, zigzag(v.created_at));
        put_varint(out, v.expires_at.map_or(0, |e| zigzag(e) + 1));
        put_varint(out, purpose);
        match v.accounts {
            None => put_varint(out, 0),
            Some(joined) => {
                put_varint(out, joined.len() as u64 + 1);
                out.extend_from_slice(joined.as_bytes());
            }
        }
        self.in_block += 1;
        self.total += 1;
        if self.in_block >= BLOCK_RECORDS
            || self.records.len() + self.purposes.len() >= BLOCK_TARGET_BYTES
        {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), EncodeError> {
        if self.in_block == 0 {
            return Ok(());
        }
        self.prefix.clear();
        put_varint(&mut self.prefix, self.purpose_ids.len() as u64);
        let len = self.prefix.len() + self.purposes.len() + self.records.len();
        let len = u32::try_from(len).map_err(|_| EncodeError::TooLarge)?;
        if len > MAX_BLOCK_BYTES {
            // Only a block of 4096 records near every field's size limit gets here.
            return Err(EncodeError::TooLarge);
        }
        self.blocks = self.blocks.checked_add(1).ok_or(EncodeError::TooLarge)?;
        let count = self.in_block.to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&count);
        crc.update(&self.prefix);
        crc.update(&self.purposes);
        crc.update(&self.records);
        self.out.write_all(&count)?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.out.write_all(&self.prefix)?;
        self.out.write_all(&self.purposes)?;
        self.out.write_all(&self.records)?;
        self.records.clear();
        self.purposes.clear();
        self.purpose_ids.clear();
        self.in_block = 0;
        Ok(())
    }

    /// Writes the last block and the header; returns the writer and the record count.
    fn finish(mut self, version: u64) -> Result<(W, u64), EncodeError> {
        self.flush_block()?;
        let mut header = [0u8; HEADER_LEN];
        header[0..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&version.to_le_bytes());
        header[24..32].copy_from_slice(&self.total.to_le_bytes());
        header[32..36].copy_from_slice(&self.blocks.to_le_bytes());
        let crc = crc32fast::hash(&header[..36]);
        header[36..40].copy_from_slice(&crc.to_le_bytes());
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        Ok((self.out, self.total))
    }
}

/// Writes a snapshot to a temporary file beside `path`, syncs it and renames it
/// into place, so readers never see a half-written snapshot.
pub(crate) fn write_atomically(
    path: &Path,
    version: u64,
    fill: impl FnOnce(&mut Encoder<BufWriter<File>>) -> Result<(), EncodeError>,
) -> Result<usize, WriteError> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = write_file(&tmp, version, fill).and_then(|n| {
        fs::rename(&tmp, path).map_err(EncodeError::Io)?;
        Ok(n)
    });
    result.map_err(|e| {
        // Best effort: the temporary file may not exist (creation failed).
        let _ = fs::remove_file(&tmp);
        let path = path.to_owned();
        match e {
            EncodeError::Io(source) => WriteError::Io { path, source },
            EncodeError::Invalid { index, source } => WriteError::Invalid {
                path,
                index,
                source,
            },
            EncodeError::Duplicate { index, id } => WriteError::Duplicate { path, index, id },
            EncodeError::TooLarge => WriteError::TooLarge { path },
        }
    })
}

fn write_file(
    tmp: &Path,
    version: u64,
    fill: impl FnOnce(&mut Encoder<BufWriter<File>>) -> Result<(), EncodeError>,
) -> Result<usize, EncodeError> {
    let file = File::create(tmp)?;
    let mut enc = Encoder::new(BufWriter::with_capacity(1 << 20, file))?;
    fill(&mut enc)?;
    let (out, total) = enc.finish(version)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    usize::try_from(total).map_err(|_| EncodeError::TooLarge)
}

/// One block as read from the file, not yet checked.
struct Block {
    number: u64,
    /// Number (0-based) of the block's first record in the file.
    first_record: u64,
    records: u32,
    crc: u32,
    payload: Vec<u8>,
}

/// Reads blocks one after the other and checks the file's framing.
struct Blocks<R> {
    path: PathBuf,
    reader: R,
    blocks: u32,
    next: u32,
    records_declared: u64,
    records_seen: u64,
    done: bool,
}

impl<R: Read> Blocks<R> {
    fn err_truncated(&self, detail: String) -> LoadError {
        LoadError::Truncated {
            path: self.path.clone(),
            detail,
        }
    }

    fn read_block(&mut self) -> Result<Block, LoadError> {
        let number = u64::from(self.next);
        let mut head = [0u8; BLOCK_HEADER_LEN];
        read_full(&mut self.reader, &mut head)
            .map_err(|e| io_error(&self.path, e))?
            .then_some(())
            .ok_or_else(|| {
                self.err_truncated(format!("block {number} of {} is missing", self.blocks))
            })?;
        let records = le_u32(&head, 0);
        let len = le_u32(&head, 4);
        let crc = le_u32(&head, 8);
        if records == 0 || records > MAX_BLOCK_RECORDS || len > MAX_BLOCK_BYTES {
            return Err(LoadError::Corrupt {
                path: self.path.clone(),
                detail: format!("block {number}: bad header ({records} records, {len} bytes)"),
            });
        }
        let mut payload = Vec::with_capacity(len as usize);
        (&mut self.reader)
            .take(u64::from(len))
            .read_to_end(&mut payload)
            .map_err(|e| io_error(&self.path, e))?;
        if payload.len() != len as usize {
            return Err(self.err_truncated(format!("block {number} ends early")));
        }
        let block = Block {
            number,
            first_record: self.records_seen,
            records,
            crc,
            payload,
        };
        self.records_seen += u64::from(records);
        self.next += 1;
        Ok(block)
    }

    fn check_end(&mut self) -> Result<(), LoadError> {
        let mut probe = [0u8; 1];
        let extra = self
            .reader
            .read(&mut probe)
            .map_err(|e| io_error(&self.path, e))?;
        if extra != 0 {
            return Err(LoadError::Corrupt {
                path: self.path.clone(),
                detail: "data after the last block".into(),
            });
        }
        if self.records_seen != self.records_declared {
            return Err(LoadError::Corrupt {
                path: self.path.clone(),
                detail: format!(
                    "header announces {} records, blocks hold {}",
                    self.records_declared, self.records_seen
                ),
            });
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Blocks<R> {
    type Item = Result<Block, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = if self.next < self.blocks {
            self.read_block()
        } else {
            self.done = true;
            return self.check_end().err().map(Err);
        };
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

fn io_error(path: &Path, source: io::Error) -> LoadError {
    LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Fills `buf`; `Ok(false)` if the input ended first.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The checked file header.
struct Header {
    version: u64,
    records: u64,
    blocks: u32,
}

fn read_header(path: &Path, r: &mut impl Read) -> Result<Header, LoadError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, e)),
        }
    }
    // Judge the magic on whatever arrived, so a short text file is "not a snapshot".
    let magic_len = got.min(MAGIC.len());
    if h[..magic_len] != MAGIC[..magic_len] || got == 0 {
        return Err(LoadError::BadMagic {
            path: path.to_owned(),
        });
    }
    if got < HEADER_LEN {
        return Err(LoadError::Truncated {
            path: path.to_owned(),
            detail: "header ends early".into(),
        });
    }
    let found = le_u32(&h, 8);
    if found != FORMAT_VERSION {
        return Err(LoadError::UnsupportedVersion {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    if crc32fast::hash(&h[..36]) != le_u32(&h, 36) {
        return Err(LoadError::Corrupt {
            path: path.to_owned(),
            detail: "header checksum mismatch".into(),
        });
    }
    if le_u32(&h, 12) != 0 {
        return Err(LoadError::Corrupt {
            path: path.to_owned(),
            detail: "unknown header flags".into(),
        });
    }
    Ok(Header {
        version: le_u64(&h, 16),
        records: le_u64(&h, 24),
        blocks: le_u32(&h, 32),
    })
}

/// Reads a `.snap` file into shard segments; returns them and the feed version.
pub(crate) fn load(path: &Path, hasher: &RandomState) -> Result<(Vec<Segment>, u64), LoadError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut reader = io::BufReader::with_capacity(1 << 20, file);
    let header = read_header(path, &mut reader)?;
    // Every record takes more than 16 bytes, so a corrupt count cannot make us over-reserve.
    let expected = header.records.min(file_len / 16) as usize;
    let blocks = Blocks {
        path: path.to_owned(),
        reader,
        blocks: header.blocks,
        next: 0,
        records_declared: header.records,
        records_seen: 0,
        done: false,
    };
    let decode = |block: Block, out: &mut ShardBuilders| decode_block(path, hasher, block, out);
    let parts = pipeline::run(
        path,
        blocks,
        &decode,
        expected,
        crate::store::ConsentStore::worker_threads(),
    )?;
    let segments = finish_load(path, parts, hasher, Origin::Record)?;
    Ok((segments, header.version))
}

/// Reads the parts of one payload, failing with a static reason.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("record runs past the block")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        let b = *self.buf.get(self.pos).ok_or("record runs past the block")?;
        self.pos += 1;
        Ok(b)
    }

    fn str_of_len(&mut self, len: u64) -> Result<&'a str, &'static str> {
        let len = usize::try_from(len).map_err(|_| "length too large")?;
        let end = self.pos.checked_add(len).ok_or("length too large")?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or("record runs past the block")?;
        self.pos = end;
        std::str::from_utf8(bytes).map_err(|_| "text is not UTF-8")
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        let len = self.varint()?;
        self.str_of_len(len)
    }

    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}

fn decode_block(
    path: &Path,
    hasher: &RandomState,
    block: Block,
    out: &mut ShardBuilders,
) -> Result<(), LoadError> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&block.records.to_le_bytes());
    crc.update(&block.payload);
    if crc.finalize() != block.crc {
        return Err(LoadError::Checksum {
            path: path.to_owned(),
            block: block.number,
        });
    }
    let corrupt = |what: &str| LoadError::Corrupt {
        path: path.to_owned(),
        detail: format!("block {}: {what}", block.number),
    };
    let mut cur = Cursor {
        buf: &block.payload,
        pos: 0,
    };
    let n_purposes = cur.varint().map_err(corrupt)?;
    if n_purposes > block.payload.len() as u64 {
        return Err(corrupt("bad purpose count"));
    }
    let mut purposes = Vec::with_capacity(n_purposes as usize);
    for _ in 0..n_purposes {
        purposes.push(cur.str().map_err(corrupt)?);
    }
    let mut providers: Vec<Bin> = Vec::new();
    for k in 0..u64::from(block.records) {
        let origin = block.first_record + k + 1;
        let view = decode_record(&mut cur, &purposes, &mut providers).map_err(corrupt)?;
        view.validate().map_err(|source| LoadError::Invalid {
            path: path.to_owned(),
            origin: Origin::Record(origin),
            source,
        })?;
        out.push(hasher, &view, origin)
            .map_err(|_| LoadError::Capacity {
                path: path.to_owned(),
            })?;
    }
    if !cur.at_end() {
        return Err(corrupt("bytes after the last record"));
    }
    Ok(())
}

fn decode_record<'a: 'p, 'p>(
    cur: &mut Cursor<'a>,
    purposes: &[&'a str],
    providers: &'p mut Vec<Bin>,
) -> Result<RecordView<'p>, &'static str> {
    let id = cur.str()?;
    let api_user = Bin::new(cur.varint()?).ok_or("api_user is not a BIN")?;
    let customer = cur.str()?;
    let n = cur.varint()?;
    if n > (cur.buf.len() - cur.pos) as u64 {
        return Err("bad provider count");
    }
    providers.clear();
    for _ in 0..n {
        providers.push(Bin::new(cur.varint()?).ok_or("provider is not a BIN")?);
    }
    let permissions = Permissions::from_bits(cur.byte()?).ok_or("unknown permission bits")?;
    let status = status_from_code(cur.byte()?).ok_or("unknown status")?;
    let created_at = unzigzag(cur.varint()?);
    let expires_at = match cur.varint()? {
        0 => None,
        v => Some(unzigzag(v - 1)),
    };
    let purpose = usize::try_from(cur.varint()?)
        .ok()
        .and_then(|i| purposes.get(i).copied())
        .ok_or("purpose index out of range")?;
    let accounts = match cur.varint()? {
        0 => None,
        len => Some(cur.str_of_len(len - 1)?),
    };
    Ok(RecordView {
        id,
        api_user,
        customer,
        providers,
        permissions,
        accounts,
        purpose,
        created_at,
        expires_at,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut cur = Cursor { buf: &buf, pos: 0 };
            assert_eq!(cur.varint().unwrap(), v);
            assert!(cur.at_end());
        }
        for v in [
            0i64,
            -1,
            1,
            i64::MIN,
            i64::MAX,
            1_767_225_600,
            -62_135_596_800,
        ] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut cur = Cursor {
            buf: &[0xff; 11],
            pos: 0,
        };
        assert!(cur.varint().is_err());
    }

    #[test]
    fn status_codes_round_trip() {
        for s in [
            ConsentStatus::AwaitingAuthorisation,
            ConsentStatus::Authorised,
            ConsentStatus::Rejected,
            ConsentStatus::Revoked,
            ConsentStatus::Expired,
        ] {
            assert_eq!(status_from_code(status_code(s)), Some(s));
        }
        assert_eq!(status_from_code(5), None);
    }
}
