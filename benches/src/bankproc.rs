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
