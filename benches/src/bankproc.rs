//! The sandbox banks as their own process (so their CPU is measured apart from the load
//! generator's): `compare bank --spec FILE` starts the banks the spec names, prints one
//! JSON line per bank (`{"bin","addr"}`) and then `ready`, and runs until SIGINT/SIGTERM
//! or until its standard input closes (the runner died).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consent_cache::Bin;
use sandbox::bank::{BankConfig, Behaviour};
use serde::{Deserialize, Serialize};

use crate::error::{io_at, HarnessError, Result};

/// One bank of the spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BankSpec {
    /// The provider's BIN.
    pub bin: String,
    /// Server certificate chain (PEM).
    pub cert_chain: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// Seed of the synthetic data.
    pub seed: u64,
    /// Answer every request after this delay (the slow-bank scenario).
    pub delay_ms: Option<u64>,
}

/// What the bank process starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The banks.
    pub banks: Vec<BankSpec>,
    /// CA of the clients allowed in (the platform CA).
    pub client_ca: PathBuf,
    /// Customers per bank.
    pub customers: usize,
    /// Worker threads of the bank runtime.
    pub threads: usize,
}

/// A started bank as reported on standard output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// BIN.
    pub bin: String,
    /// Listening address.
    pub addr: SocketAddr,
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(io_at(p))
}

/// Runs the bank process described by the spec file (does not return until stopped).
pub fn main(spec_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(spec_path).map_err(io_at(spec_path))?;
    let spec: Spec = serde_json::from_str(&text)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(spec.threads.max(1))
        .thread_name("sandbox-bank")
        .enable_all()
        .build()
        .map_err(crate::error::os("bank runtime"))?;
    let ca = read(&spec.client_ca)?;
    let mut handles = Vec::new();
    for b in &spec.banks {
        let bin = Bin::parse(&b.bin).map_err(|e| HarnessError::Plan(format!("{}: {e}", b.bin)))?;
        let mut cfg = BankConfig::new(
            bin,
            format!("Bench bank {}", b.bin),
            read(&b.cert_chain)?,
            read(&b.key)?,
            ca.clone(),
        );
        cfg.customers = spec.customers;
        cfg.seed = b.seed;
        let h = sandbox::bank::start_on(rt.handle(), cfg)
            .map_err(|e| HarnessError::Plan(format!("bank {}: {e}", b.bin)))?;
        if let Some(ms) = b.delay_ms {
            h.set_behaviour(Behaviour::Delay(Duration::from_millis(ms)));
        }
        println!(
            "{}",
            serde_json::to_string(&Started {
                bin: b.bin.clone(),
                addr: h.addr(),
            })?
        );
        handles.push(h);
    }
    println!("ready");
    rt.block_on(async {
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(crate::error::os("SIGTERM handler"))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = stdin_closed => {}
        }
        Ok::<(), HarnessError>(())
    })?;
    drop(handles);
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

/// A started bank process: its process group and the two banks' addresses.
pub struct BankProcess {
    /// The process (stopped on drop).
    pub proc: crate::procs::Proc,
    /// Kept open: the bank process stops when it closes (the harness died).
    pub stdin: Option<std::process::ChildStdin>,
    /// The banks' listeners, in [`crate::fixture::PROVIDERS`] order.
    pub addrs: [SocketAddr; 2],
}

/// Starts the environment's two sandbox banks as one process (`self_exe bank --spec`),
/// the first one answering after `first_delay` when given; files go to `dir`.
pub fn spawn(
    env: &crate::fixture::BenchEnv,
    dir: &Path,
    self_exe: &Path,
    threads: usize,
    first_delay: Option<Duration>,
) -> Result<BankProcess> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let pki = &env.pki;
    let mut banks = Vec::new();
    for (i, b) in env.providers.iter().enumerate() {
        let id = pki
            .provider_server(*b)
            .ok_or_else(|| HarnessError::Plan(format!("no certificate for bank {b}")))?;
        let chain = dir.join(format!("bank-{b}-chain.pem"));
        std::fs::write(&chain, id.chain_pem()).map_err(io_at(&chain))?;
        banks.push(BankSpec {
            bin: b.to_string(),
            cert_chain: chain,
            key: id.key_path.clone(),
            seed: crate::fixture::bank_seed(i),
            delay_ms: first_delay
                .filter(|_| i == 0)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        });
    }
    let spec = Spec {
        banks,
        client_ca: pki.ca_cert_path().to_path_buf(),
        customers: crate::fixture::CUSTOMERS,
        threads,
    };
    let spec_path = dir.join("bank-spec.json");
    std::fs::write(&spec_path, serde_json::to_string_pretty(&spec)?).map_err(io_at(&spec_path))?;
    let log = dir.join("bank.log");
    let mut cmd = Command::new(self_exe);
    cmd.arg("bank")
        .arg("--spec")
        .arg(&spec_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).map_err(io_at(&log))?);
    let mut proc = crate::procs::Proc::spawn("bank", &mut cmd, nix::sys::signal::Signal::SIGTERM)?;
    let stdin = proc.child_mut().stdin.take();
    let stdout = proc
        .child_mut()
        .stdout
        .take()
        .ok_or_else(|| HarnessError::Process {
            name: "bank".into(),
            reason: "no stdout".into(),
        })?;
    let mut addrs = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(crate::error::os("reading the bank's output"))?;
        if line.trim() == "ready" {
            break;
        }
        let started: Started = serde_json::from_str(&line)?;
        addrs.push(started.addr);
    }
    match addrs.as_slice() {
        [a, b] => Ok(BankProcess {
            proc,
            stdin,
            addrs: [*a, *b],
        }),
        _ => Err(HarnessError::Process {
            name: "bank".into(),
            reason: format!("did not start both banks (see {})", log.display()),
        }),
    }
}
