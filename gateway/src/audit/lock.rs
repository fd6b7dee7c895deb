//! One writer per journal: an exclusive lock (`flock`) on `<journal>.lock`, held by the
//! writer thread for as long as it may write. Two processes appending to one journal at
//! once would interleave two hash chains and break `gateway audit verify`; during a binary
//! upgrade the new process therefore waits for the old one to release the lock, then
//! continues the chain from the journal's last record. The lock lives in its own file
//! because the journal itself is renamed by log rotation; the kernel releases it when the
//! holder exits, however it exits, so a crashed hub never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// The lock file of a journal, opened (not necessarily held).
pub(super) struct JournalLock {
    file: File,
    path: PathBuf,
}

impl JournalLock {
    /// Opens (creating) the lock file of the journal at `journal`.
    pub(super) fn open(journal: &Path) -> std::io::Result<JournalLock> {
        let path = lock_path(journal);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        Ok(JournalLock { file, path })
    }

    /// Takes the lock if no other process holds it; `false` when one does.
    pub(super) fn try_take(&self) -> std::io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Waits until the lock is this process's.
    pub(super) fn wait(&self) -> std::io::Result<()> {
        self.file.lock()
    }

    /// The lock file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// `<journal>.lock`.
pub(super) fn lock_path(journal: &Path) -> PathBuf {
    let mut p = journal.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}
