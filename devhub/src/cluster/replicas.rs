//! The trust replicas: `trust serve` processes on one PostgreSQL database, with the same
//! certificates (the hub's server identity, the operator and hub client certificates
//! the demo's sidecar uses) and the same signing key (the demo issuer's, stored once by
//! the seed). Each listens on 127.0.0.1 — an ephemeral port the first time, the same
//! port when restarted — and reports its URL through `--ready-file`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::bank::wait_ready_file;
use super::postgres::Database;
use super::procs::{Piece, Reaper};
use super::{ClusterError, Dirs};
use crate::identities::{Identities, AUDIENCE, ISSUER};

/// How to (re)start one replica.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// `trust-1`, …
    pub name: String,
    /// Every flag but `--listen` and `--ready-file`.
    pub args: Vec<OsString>,
    /// Its port once it listened (reused on restart).
    pub port: u16,
    pub ready_file: PathBuf,
    pub log: PathBuf,
}

/// The flags every replica shares.
pub(crate) fn common_args(
    ids: &Identities,
    db: &Database,
    otp_outbox: &Path,
    heartbeat_ms: u64,
) -> Result<Vec<OsString>, ClusterError> {
    let pki = &ids.pki;
    let server = pki.hub_server();
    let mut a: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: &dyn AsRef<std::ffi::OsStr>| {
        a.push(name.into());
        a.push(value.as_ref().to_owned());
    };
    flag("--postgres-url", &db.url());
    flag("--postgres-password-file", &db.password_file());
    flag("--postgres-pool", &"8");
    flag("--cert", &server.cert_path);
    flag("--key", &server.key_path);
    flag("--client-ca", &pki.ca_cert_path());
    flag("--operator-cert", &ids.operator()?.cert_path);
    flag("--hub-cert", &pki.hub_client().cert_path);
    flag("--issuer", &ISSUER);
    flag("--audience", &AUDIENCE);
    flag("--signing-key", &ids.issuer_key);
    flag("--otp-outbox", &otp_outbox);
    flag("--heartbeat-ms", &heartbeat_ms.to_string());
    a.push("--dev-customer-sessions".into());
    Ok(a)
}

/// The flags that make the replicas probe the banks (the one leading housekeeping does):
/// the hub's client identity towards them, the interval, the providers' outbox.
pub(crate) fn probe_args(ids: &Identities, interval_ms: u64, outbox: &Path) -> Vec<OsString> {
    let hub = ids.pki.hub_client();
    [
        ("--probe-client-cert", hub.cert_path.as_os_str()),
        ("--probe-client-key", hub.key_path.as_os_str()),
        ("--probe-ca", ids.pki.ca_cert_path().as_os_str()),
        ("--provider-outbox", outbox.as_os_str()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [OsString::from(k), v.to_owned()])
    .chain([
        OsString::from("--probe-interval-ms"),
        OsString::from(interval_ms.to_string()),
    ])
    .collect()
}

impl Launch {
    /// The `i`-th replica (from 0), not started yet.
    pub fn new(i: usize, args: Vec<OsString>, dirs: &Dirs) -> Launch {
        let name = format!("trust-{}", i + 1);
        Launch {
            ready_file: dirs.run.join(format!("{name}.ready")),
            log: dirs.logs.join(format!("{name}.log")),
            name,
            args,
            port: 0,
        }
    }

    /// The replica's base URL (once it listened).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until it listens (it has opened the database by then).
    pub fn start(
        &mut self,
        exe: &Path,
        filter: &str,
        reaper: &mut Reaper,
        timeout: Duration,
    ) -> Result<Piece, ClusterError> {
        let _ = std::fs::remove_file(&self.ready_file);
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .args(&self.args)
            .arg("--listen")
            .arg(SocketAddr::from(([127, 0, 0, 1], self.port)).to_string())
            .arg("--ready-file")
            .arg(&self.ready_file)
            .env("RUST_LOG", filter);
        let mut piece = Piece::spawn(&self.name, cmd, &self.log, reaper)?;
        let line = wait_ready_file(&mut piece, &self.ready_file, timeout)?;
        let addr: Option<SocketAddr> = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["addr"].as_str()?.parse().ok());
        match addr {
            Some(a) => self.port = a.port(),
            None => {
                piece.kill(reaper);
                return Err(ClusterError::Setup(format!(
                    "{}: unreadable ready line {line:?}",
                    self.name
                )));
            }
        }
        Ok(piece)
    }
}
