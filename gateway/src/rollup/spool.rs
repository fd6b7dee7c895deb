//! The spool: what a gateway stopping gracefully could not get acknowledged, one
//! `RollupBatch` per JSON line (each under the process that counted it, so its pushes
//! stay idempotent), in `<journal>.rollups` next to the audit journal. The next process
//! reads it at start and whenever it changes (a binary upgrade's old process writes it
//! after the new one started), and pushes it; a control-plane outage across a restart
//! thus loses nothing. Written to a temporary sibling and renamed: never half a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use feed_wire::rollup::RollupBatch;

use super::outbox::Outbox;

/// A spool that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file.
    #[error("rollup spool {path}: {source}")]
    Io {
        /// The spool.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The spool next to a journal file (none for a journal on standard output).
pub fn path_for(journal: &Path) -> Option<PathBuf> {
    if journal.as_os_str() == "-" {
        return None;
    }
    let mut p = journal.as_os_str().to_owned();
    p.push(".rollups");
    Some(PathBuf::from(p))
}

/// The spool file and what of it this process has read.
pub struct Spool {
    path: PathBuf,
    /// Length and modification time of the version read last.
    seen: Option<(u64, Option<SystemTime>)>,
}

impl Spool {
    /// The spool at `path` (not read yet).
    pub fn new(path: PathBuf) -> Spool {
        Spool { path, seen: None }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the spool into `outbox` if it is there and changed since last read; the
    /// file stays until this process writes its own (a crash meanwhile loses nothing, and
    /// pushing it twice is harmless). Lines that do not parse are logged and skipped.
    pub fn read_into(&mut self, outbox: &Outbox) -> Result<usize, SpoolError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.failed(e)),
        };
        let stamp = (meta.len(), meta.modified().ok());
        if self.seen == Some(stamp) {
            return Ok(0);
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.failed(e))?;
        self.seen = Some(stamp);
        let mut minutes = 0;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str::<RollupBatch>(line) {
                Ok(batch) => {
                    minutes += batch.minutes.len();
                    outbox.restore(batch);
                }
                Err(e) => tracing::error!(
                    spool = %self.path.display(),
                    line = i + 1,
                    error = %e,
                    "a rollup spool line is not a batch; skipped"
                ),
            }
        }
        Ok(minutes)
    }

    /// Replaces the spool with `batches` (removes it when there are none).
    pub fn write(&self, batches: &[RollupBatch]) -> Result<(), SpoolError> {
        if batches.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.failed(e)),
                _ => Ok(()),
            };
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            for b in batches {
                serde_json::to_writer(&mut f, b)?;
                f.write_all(b"\n")?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| self.failed(e))
    }

    fn failed(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feed_wire::rollup::MinuteRollup;

    fn batch(epoch: &str, minutes: &[i64]) -> RollupBatch {
        RollupBatch {
            gateway: "gw".into(),
            epoch: epoch.into(),
            minutes: minutes
                .iter()
                .map(|&minute| MinuteRollup {
                    minute,
                    calls: vec![],
                    latency: vec![],
                    live: vec![],
                    consents: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn a_spool_round_trips_once_per_change_and_an_empty_one_is_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let path = path_for(&dir.path().join("audit.jsonl")).expect("a file journal");
        assert!(path.ends_with("audit.jsonl.rollups"));
        assert_eq!(path_for(Path::new("-")), None);
        let mut spool = Spool::new(path.clone());
        let outbox = Outbox::detached(10);
        assert_eq!(spool.read_into(&outbox).expect("no spool"), 0);
        let written = vec![batch("a", &[60, 120]), batch("b", &[60])];
        spool.write(&written).expect("write");
        std::fs::write(
            &path,
            format!(
                "{}not json\n",
                std::fs::read_to_string(&path).expect("read")
            ),
        )
        .expect("append a bad line");
        assert_eq!(spool.read_into(&outbox).expect("read"), 3);
        assert_eq!(outbox.batches(), written);
        // Unchanged: not read again.
        assert_eq!(spool.read_into(&outbox).expect("read"), 0);
        spool.write(&[]).expect("remove");
        assert!(!path.exists());
    }
}
