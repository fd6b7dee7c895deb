//! Per-process scratch files: the snapshot and configuration loaders read files, so the
//! harnesses write each input to a file in a directory of their own under `TMPDIR`
//! (`scripts/fuzz` points it at a throw-away directory and removes it afterwards).

use std::path::{Path, PathBuf};

/// A fresh directory for `target` in this process (created once per call).
///
/// # Panics
///
/// When the directory cannot be created: the harness cannot run at all then.
pub fn dir(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hub-fuzz-{target}-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create the scratch directory {}: {e}", dir.display());
    }
    dir
}

/// Writes `bytes` to `path`, replacing what was there.
///
/// # Panics
///
/// When the file cannot be written (a broken environment, not a finding in the parser).
pub fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("cannot write the scratch file {}: {e}", path.display());
    }
}
