//! Snapshot files: loading a store from JSON Lines (`.jsonl`) or the compact
//! binary format (`.snap`), writing `.snap` files, and converting between them.
//!
//! Both loaders read the file as a stream of chunks on the calling thread and
//! decode the chunks on up to four worker threads into per-thread shard
//! builders, which are then merged and indexed shard by shard in parallel; the
//! file is never held in memory whole.

mod binary;
mod jsonl;
mod pipeline;

use crate::record::{ConsentRecord, RecordError};
use crate::segment::{build_shards, BuildError, Segment, ShardBuilders};
use crate::store::ConsentStore;
use foldhash::fast::RandomState;
use std::borrow::Borrow;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use binary::{FORMAT_VERSION, MAGIC};

/// Where in a snapshot file a record sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// 1-based line of a JSON Lines file.
    Line(u64),
    /// 1-based record number of a binary snapshot.
    Record(u64),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(n) => write!(f, "line {n}"),
            Origin::Record(n) => write!(f, "record {n}"),
        }
    }
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

/// Why a snapshot could not be loaded (or converted). Every message starts with the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file name ends in neither `.jsonl` nor `.snap`.
    #[error("{}: unknown snapshot format: the file name must end in .jsonl or .snap", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A JSON Lines line is not a valid consent record as JSON.
    #[error("{}: line {line}, column {column}: {}{message}", path.display(), field_prefix(.field))]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column within the line.
        column: usize,
        /// Path to the offending field (`providers[1]`), when serde could tell.
        field: Option<String>,
        /// serde_json's message (for missing and unknown fields it names the field).
        message: String,
    },
    /// A line longer than the loader accepts (64 MiB).
    #[error("{}: line {line}: line too long", path.display())]
    LineTooLong {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
    },
    /// A record that parsed but breaks a rule of contract §5.
    #[error("{}: {origin}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where the record is.
        origin: Origin,
        /// The broken rule (its message starts with the field).
        #[source]
        source: RecordError,
    },
    /// Two records with one id.
    #[error("{}: {second}: duplicate consent id {id:?} (first at {first})", path.display())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The repeated id.
        id: String,
        /// Where the id first appears.
        first: Origin,
        /// Where it appears again.
        second: Origin,
    },
    /// Not a binary snapshot: the magic bytes are wrong.
    #[error("{}: not a consent snapshot (bad magic)", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A binary snapshot of a format version this build cannot read.
    #[error("{}: snapshot format version {found} is not supported (this build reads version {supported})", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The file's format version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The binary snapshot ends early.
    #[error("{}: truncated snapshot: {detail}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was missing.
        detail: String,
    },
    /// A block's checksum does not match its contents.
    #[error("{}: corrupt snapshot: checksum mismatch in block {block}", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// 0-based block number.
        block: u64,
    },
    /// The binary snapshot is malformed in another way.
    #[error("{}: corrupt snapshot: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A shard's arena would pass 4 GiB.
    #[error("{}: the store's capacity was exceeded", path.display())]
    Capacity {
        /// The file.
        path: PathBuf,
    },
    /// A loader thread panicked (a bug).
    #[error("{}: a loader thread failed", path.display())]
    Internal {
        /// The file.
        path: PathBuf,
    },
    /// Writing the converted snapshot failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Why a binary snapshot could not be written. No file is left at the target
/// path on error (snapshots are written to a temporary file and renamed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Creating, writing or renaming the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The target file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An input record is invalid.
    #[error("{}: record #{index}: {source}", path.display())]
    Invalid {
        /// The target file.
        path: PathBuf,
        /// 0-based position in the input.
        index: usize,
        /// The broken rule.
        #[source]
        source: RecordError,
    },
    /// An input record repeats an earlier id.
    #[error("{}: record #{index}: duplicate consent id {id:?}", path.display())]
    Duplicate {
        /// The target file.
        path: PathBuf,
        /// 0-based position in the input.
        index: usize,
        /// The repeated id.
        id: String,
    },
    /// More records or blocks than the format can count.
    #[error("{}: too many records for one snapshot", path.display())]
    TooLarge {
        /// The target file.
        path: PathBuf,
    },
}

impl ConsentStore {
    /// Loads a snapshot, choosing the format by extension (`.jsonl` or `.snap`).
    /// The store's version is the snapshot's (`snapshot_version` of a JSON Lines
    /// header line, 0 without one).
    pub fn load(path: &Path) -> Result<ConsentStore, LoadError> {
        let hasher = RandomState::default();
        let (segments, version) = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => jsonl::load(path, &hasher)?,
            Some("snap") => binary::load(path, &hasher)?,
            _ => {
                return Err(LoadError::UnknownFormat {
                    path: path.to_owned(),
                })
            }
        };
        Ok(ConsentStore::from_segments(segments, hasher, version))
    }

    /// Writes every consent and the store's version as a binary snapshot, as of
    /// one consistent moment (concurrent deltas wait only while the view is
    /// taken, not while the file is written). Returns the number of records.
    pub fn write_snapshot(&self, path: &Path) -> Result<usize, WriteError> {
        let view = self.view();
        binary::write_atomically(path, view.version, |enc| view.for_each(|v| enc.push(v)))
    }
}

/// Writes `records` as a binary snapshot at feed version `version`, streaming
/// (the records are validated, not stored). Returns the number of records.
///
/// Duplicate ids are rejected using 128-bit hashes of the ids seen so far
/// (16 bytes per record while writing), so the file always loads.
pub fn write_snapshot<I>(path: &Path, version: u64, records: I) -> Result<usize, WriteError>
where
    I: IntoIterator,
    I::Item: Borrow<ConsentRecord>,
{
    let mut seen = hashbrown::HashSet::<u128, foldhash::fast::FixedState>::default();
    let (lo, hi) = (
        foldhash::fast::FixedState::with_seed(0x6f62_6875_6273_6e70),
        foldhash::fast::FixedState::with_seed(0x636f_6e73_656e_7473),
    );
    let mut scratch = String::new();
    binary::write_atomically(path, version, |enc| {
        for (index, r) in records.into_iter().enumerate() {
            let r = r.borrow();
            let view = r
                .view(&mut scratch)
                .and_then(|v| v.validate().map(|()| v))
                .map_err(|source| binary::EncodeError::Invalid { index, source })?;
            use std::hash::BuildHasher;
            let key = (u128::from(hi.hash_one(&r.id)) << 64) | u128::from(lo.hash_one(&r.id));
            if !seen.insert(key) {
                return Err(binary::EncodeError::Duplicate {
                    index,
                    id: r.id.clone(),
                });
            }
            enc.push(&view)?;
        }
        Ok(())
    })
}

/// Converts a snapshot (normally `.jsonl`) into a binary `.snap` file, validating
/// every record on the way. Returns the number of records written.
pub fn convert(input: &Path, output: &Path) -> Result<usize, LoadError> {
    let store = ConsentStore::load(input)?;
    Ok(store.write_snapshot(output)?)
}

/// Merges and indexes the per-thread builders of a load.
fn finish_load(
    path: &Path,
    parts: Vec<ShardBuilders>,
    hasher: &RandomState,
    origin: fn(u64) -> Origin,
) -> Result<Vec<Segment>, LoadError> {
    build_shards(parts, hasher, ConsentStore::worker_threads()).map_err(|e| match e {
        BuildError::Duplicate(d) => LoadError::Duplicate {
            path: path.to_owned(),
            id: d.id,
            first: origin(d.first),
            second: origin(d.second),
        },
        BuildError::Capacity => LoadError::Capacity {
            path: path.to_owned(),
        },
        BuildError::Panicked => LoadError::Internal {
            path: path.to_owned(),
        },
    })
}
