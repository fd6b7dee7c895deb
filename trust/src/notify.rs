//! How one-time codes reach the customer: the [`Notifier`] trait, and the development
//! notifier that appends `{"customer","consent_id","code"}` JSON lines to the demo's
//! `otp_outbox` file (contract §9). Production plugs an SMS or push gateway in here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One code to deliver.
#[derive(Clone, Serialize)]
pub struct OtpMessage<'a> {
    /// The customer id the code is for.
    pub customer: &'a str,
    /// The consent being authorised.
    pub consent_id: &'a str,
    /// The code in clear.
    pub code: &'a str,
}

impl std::fmt::Debug for OtpMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtpMessage")
            .field("consent_id", &self.consent_id)
            .finish_non_exhaustive()
    }
}

/// The code could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotifyError(pub String);

/// Delivers one-time codes to customers. Called from a blocking thread, after the
/// code's hash has been committed.
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// Delivers one code.
    fn send(&self, message: &OtpMessage<'_>) -> Result<(), NotifyError>;
}

/// Development notifier: one JSON line per code appended to a file (mode 0600).
#[derive(Debug)]
pub struct FileNotifier {
    path: PathBuf,
    file: Mutex<File>,
}

impl FileNotifier {
    /// Opens (creating) the outbox for appending.
    pub fn open(path: &Path) -> std::io::Result<FileNotifier> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        Ok(FileNotifier {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// The outbox file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Notifier for FileNotifier {
    fn send(&self, message: &OtpMessage<'_>) -> Result<(), NotifyError> {
        let mut line =
            serde_json::to_vec(message).map_err(|e| NotifyError(format!("encoding: {e}")))?;
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| NotifyError("outbox lock poisoned".into()))?;
        // One write of the whole line: concurrent readers never see half a line.
        file.write_all(&line)
            .and_then(|()| file.flush())
            .map_err(|e| NotifyError(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otp_outbox");
        let n = FileNotifier::open(&path).unwrap();
        for code in ["123456", "654321"] {
            n.send(&OtpMessage {
                customer: "900101300123",
                consent_id: "c-1",
                code,
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["code"], "654321");
        assert_eq!(lines[0]["customer"], "900101300123");
        assert_eq!(lines[0]["consent_id"], "c-1");
        let dbg = format!(
            "{:?}",
            OtpMessage {
                customer: "900101300123",
                consent_id: "c",
                code: "111111"
            }
        );
        assert!(!dbg.contains("111111") && !dbg.contains("900101300123"));
    }
}
