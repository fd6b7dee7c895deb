//! The cluster's sandbox banks, each its own process (`hub-cluster bank --spec FILE`,
//! the cluster binary re-executing itself). The cluster writes one spec per bank (JSON:
//! the BIN, the name, the data seed and customer count, and the paths of its certificate
//! chain, its key, the CA and the hub's client certificate — paths only, never key
//! material) and the SLA the gateways hold it to; the bank process listens on an
//! ephemeral loopback port, and its fault control listener on another, writes
//! `{"addr": "127.0.0.1:PORT", "faults_addr": "127.0.0.1:PORT"}` to its ready file, and
//! serves until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use consent_cache::Bin;
use sandbox::bank::BankConfig;
use serde::{Deserialize, Serialize};

use super::procs::{wait_for, Piece, Reaper};
use super::ClusterError;
use crate::banks::{bank_seed, provider_sla, LOOPBACK_ANY};
use crate::identities::{Identities, PROVIDERS};

/// What a bank process serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BankSpec {
    /// The provider's BIN.
    pub bin: String,
    /// Its display name.
    pub name: String,
    /// The server certificate and its issuer (PEM).
    pub chain: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA the hub's client certificate chains to.
    pub client_ca: PathBuf,
    /// The hub's client certificate: the only client accepted.
    pub hub_client_cert: PathBuf,
    /// Customers generated.
    pub customers: usize,
    /// The data seed.
    pub seed: u64,
    /// The provider's SLA in milliseconds (the gateways' `timeout_ms`): the `slow` fault
    /// mode answers after 2.5 times it.
    pub sla_ms: u64,
    /// Where the bound addresses are written once listening.
    pub ready_file: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(ClusterError::io(path))
}

impl BankSpec {
    /// The `i`-th provider's bank on the demo's PKI; its chain is written to `dir`.
    fn of(ids: &Identities, i: usize, customers: usize, dir: &Path) -> Result<Self, ClusterError> {
        let (bin, name) = ids
            .providers
            .get(i)
            .zip(PROVIDERS.get(i).map(|p| p.1))
            .ok_or_else(|| ClusterError::Setup("too few providers".into()))?;
        let id = ids
            .pki
            .provider_server(*bin)
            .ok_or_else(|| ClusterError::Setup("no certificate for provider".into()))?;
        let chain = dir.join(format!("bank-{}-chain.pem", i + 1));
        std::fs::write(&chain, id.chain_pem()).map_err(ClusterError::io(&chain))?;
        Ok(BankSpec {
            bin: bin.to_string(),
            name: name.to_owned(),
            chain,
            key: id.key_path.clone(),
            client_ca: ids.pki.ca_cert_path().to_path_buf(),
            hub_client_cert: ids.pki.hub_client().cert_path.clone(),
            customers,
            seed: bank_seed(i),
            sla_ms: u64::try_from(provider_sla().as_millis()).unwrap_or(u64::MAX),
            ready_file: dir.join(format!("bank-{}.ready", i + 1)),
        })
    }

    /// The bank's configuration, read from the files the spec names.
    fn config(&self) -> Result<BankConfig, ClusterError> {
        let bin =
            Bin::parse(&self.bin).map_err(|e| ClusterError::Setup(format!("{}: {e}", self.bin)))?;
        let hub = sandbox::pki::thumbprint_of_pem(&read(&self.hub_client_cert)?)
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        Ok(BankConfig {
            bin,
            name: self.name.clone(),
            listen: LOOPBACK_ANY,
            server_cert_chain_pem: read(&self.chain)?,
            server_key_pem: read(&self.key)?,
            client_ca_pem: read(&self.client_ca)?,
            customers: self.customers,
            seed: self.seed,
            allowed_client_thumbprints: Some(vec![hub]),
            sla: Duration::from_millis(self.sla_ms),
            faults_listen: Some(LOOPBACK_ANY),
        })
    }
}

/// The bank process: serves the spec's bank until SIGTERM or SIGINT.
pub fn run_bank(spec: &Path) -> Result<(), ClusterError> {
    let text = std::fs::read_to_string(spec).map_err(ClusterError::io(spec))?;
    let spec: BankSpec = serde_json::from_str(&text)
        .map_err(|e| ClusterError::Setup(format!("{}: {e}", spec.display())))?;
    let config = spec.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sandbox-bank")
        .enable_all()
        .build()
        .map_err(ClusterError::io(&spec.ready_file))?;
    let bank = sandbox::bank::start_on(runtime.handle(), config)
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    let line = serde_json::json!({
        "addr": bank.addr().to_string(),
        "faults_addr": bank.faults_addr().map(|a| a.to_string()),
    })
    .to_string();
    write_atomically(&spec.ready_file, &line)?;
    tracing::info!(bin = %spec.bin, addr = %bank.addr(), faults = ?bank.faults_addr(), "sandbox bank listening");
    runtime.block_on(super::cli::stop_signal());
    tracing::info!(bin = %spec.bin, "sandbox bank stopping");
    bank.stop();
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// Writes `text` to a temporary sibling of `path`, then renames it: a reader sees the
/// whole file or none.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), ClusterError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(ClusterError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(ClusterError::io(path))
}

/// Where a bank process listens: its API and its fault control listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BankAddrs {
    pub api: SocketAddr,
    pub faults: SocketAddr,
}

/// Starts one bank process per provider and waits until each listens: the pieces and
/// their addresses, in `PROVIDERS` order.
pub(crate) fn start_banks(
    exe: &Path,
    ids: &Identities,
    customers: usize,
    dirs: &super::Dirs,
    reaper: &mut Reaper,
    timeout: Duration,
) -> Result<(Vec<Piece>, Vec<BankAddrs>), ClusterError> {
    let mut pieces = Vec::new();
    let mut ready = Vec::new();
    for i in 0..ids.providers.len() {
        let spec = BankSpec::of(ids, i, customers, &dirs.run)?;
        let _ = std::fs::remove_file(&spec.ready_file);
        let path = dirs.run.join(format!("bank-{}.json", i + 1));
        let text =
            serde_json::to_string_pretty(&spec).map_err(|e| ClusterError::Setup(e.to_string()))?;
        std::fs::write(&path, text).map_err(ClusterError::io(&path))?;
        let mut cmd = Command::new(exe);
        cmd.arg("bank").arg("--spec").arg(&path);
        let name = format!("bank-{}", i + 1);
        let log = dirs.logs.join(format!("{name}.log"));
        pieces.push(Piece::spawn(&name, cmd, &log, reaper)?);
        ready.push(spec.ready_file);
    }
    let mut addrs = Vec::new();
    for (piece, file) in pieces.iter_mut().zip(&ready) {
        let line = wait_ready_file(piece, file, timeout)?;
        let ready = serde_json::from_str::<serde_json::Value>(&line).ok();
        let addr = |key: &str| ready.as_ref()?[key].as_str()?.parse().ok();
        let (Some(api), Some(faults)) = (addr("addr"), addr("faults_addr")) else {
            return Err(ClusterError::Setup(format!(
                "{}: unreadable ready file",
                piece.name
            )));
        };
        addrs.push(BankAddrs { api, faults });
    }
    Ok((pieces, addrs))
}

/// Waits until `piece` wrote `file`; its first line. Fails when the piece exits first.
pub(crate) fn wait_ready_file(
    piece: &mut Piece,
    file: &Path,
    timeout: Duration,
) -> Result<String, ClusterError> {
    let mut exited = None;
    let line = wait_for(timeout, || {
        if let Some(status) = piece.exited() {
            exited = Some(status);
            return Some(None);
        }
        let text = std::fs::read_to_string(file).ok()?;
        Some(Some(text.lines().next()?.to_owned()))
    })
    .flatten();
    match (line, exited) {
        (Some(line), _) => Ok(line),
        (None, Some(status)) => Err(ClusterError::Exited {
            what: piece.name.clone(),
            status: status.to_string(),
            log: piece.log_tail(30),
        }),
        (None, None) => Err(ClusterError::NotReady {
            what: piece.name.clone(),
            secs: timeout.as_secs(),
            log: piece.log_tail(30),
        }),
    }
}
