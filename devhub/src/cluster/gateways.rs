//! The cluster's gateways: `gateway run --config hub-N.toml` processes, each with its
//! own API and admin ports (free loopback ports below the ephemeral range), its own
//! audit journal, `[trust] urls` naming every trust replica (token keys from their
//! JWKS), and the same `[limits]`: shared limits on the cluster's Redis
//! (`[limits.store] url`, `gateways` = how many there are). A gateway is ready when its
//! admin listener answers `/readyz` and its consent feed has reached the seeded head.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use policy::limits::{LimitSettings, StoreSettings};

use super::procs::{http_get, metric, wait_for, Piece, Reaper};
use super::{ClusterError, ClusterOptions, Dirs};
use crate::hubconfig::{self, HubConfig, TrustTuning};
use crate::identities::Identities;

/// One gateway: its files and ports.
#[derive(Debug, Clone)]
pub(crate) struct GatewaySpec {
    /// `gateway-1`, …
    pub name: String,
    pub config: PathBuf,
    pub audit: PathBuf,
    pub log: PathBuf,
    pub api: SocketAddr,
    pub admin: SocketAddr,
}

/// A free loopback port below the kernel's ephemeral range (where client sockets get
/// theirs), from a random start, never handed out twice by this process.
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = (uuid::Uuid::new_v4().as_u128() % u128::from(SPAN)) as u16;
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let taken = taken.get_or_insert_with(HashSet::new);
    for i in 0..SPAN {
        let port = LOW + (start + i) % SPAN;
        if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
    Err(ClusterError::Setup(format!(
        "no free port in {LOW}..{}",
        LOW + SPAN
    )))
}

/// The gateways' `[limits]`: `opts.limits` (else the defaults, or `rate_limit`'s flat
/// quotas) with `[limits.store]` on `redis_url`, shared by `opts.gateways` gateways.
pub(crate) fn limits(
    opts: &ClusterOptions,
    redis_url: &str,
) -> Result<LimitSettings, ClusterError> {
    let mut limits = match (&opts.limits, opts.rate_limit) {
        (Some(l), _) => l.clone(),
        (None, Some(r)) => hubconfig::flat_limits(r)?,
        (None, None) => LimitSettings::default(),
    };
    let gateways = u32::try_from(opts.gateways.max(1))
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| ClusterError::Setup(format!("{} gateways", opts.gateways)))?;
    let mut store = limits
        .store
        .take()
        .unwrap_or_else(|| StoreSettings::new(redis_url));
    store.url = redis_url.to_owned();
    store.gateways = gateways;
    limits.store = Some(store);
    Ok(limits)
}

impl GatewaySpec {
    /// The `i`-th gateway (from 0) on new ports.
    pub fn new(i: usize, dirs: &Dirs) -> Result<GatewaySpec, ClusterError> {
        let name = format!("gateway-{}", i + 1);
        Ok(GatewaySpec {
            config: dirs.root.join(format!("hub-{}.toml", i + 1)),
            audit: dirs.root.join(format!("audit-{}.jsonl", i + 1)),
            log: dirs.logs.join(format!("{name}.log")),
            api: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            name,
        })
    }

    /// Writes its configuration: following `trust_urls`, forwarding to `banks`, with
    /// `limits`.
    pub fn write_config(
        &self,
        ids: &Identities,
        opts: &ClusterOptions,
        limits: &LimitSettings,
        trust_urls: &[String],
        banks: &[SocketAddr],
    ) -> Result<(), ClusterError> {
        let cfg = hubconfig::hub_config(&HubConfig {
            port: self.api.port(),
            admin_port: self.admin.port(),
            threads: opts.gateway_threads,
            rate_limit: None,
            limits: Some(limits.clone()),
            pki: &ids.pki,
            jwks: &ids.jwks,
            trust_urls,
            trust_tuning: TrustTuning {
                heartbeat_secs: Some(opts.heartbeat_ms.div_ceil(1000).max(1)),
                max_staleness_secs: opts.max_staleness_secs,
            },
            consents: Path::new(""),
            audit: &self.audit,
            user_thumbprints: Vec::new(),
            bank_addrs: banks.to_vec(),
            quick_stop: true,
            gateway_name: Some(&self.name),
        })?;
        hubconfig::write(&self.config, &cfg, "`hub-cluster` (scripts/cluster)")?;
        Ok(())
    }

    /// Starts it.
    pub fn start(
        &self,
        exe: &Path,
        filter: &str,
        reaper: &mut Reaper,
    ) -> Result<Piece, ClusterError> {
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", filter);
        Piece::spawn(&self.name, cmd, &self.log, reaper)
    }

    /// Its consent feed's version now (0 when it does not answer).
    pub fn feed_version(&self) -> u64 {
        http_get(self.admin, "/metrics")
            .ok()
            .and_then(|(_, text)| metric(&text, "hub_consent_feed_version"))
            .map_or(0, |v| v as u64)
    }

    /// Waits until it is ready and its feed reached version `head`.
    pub fn wait_ready(
        &self,
        piece: &mut Piece,
        head: u64,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let mut exited = None;
        let ready = wait_for(timeout, || {
            if let Some(status) = piece.exited() {
                exited = Some(status);
                return Some(false);
            }
            let (status, _) = http_get(self.admin, "/readyz").ok()?;
            if status != 200 {
                return None;
            }
            let (_, text) = http_get(self.admin, "/metrics").ok()?;
            let version = metric(&text, "hub_consent_feed_version")?;
            (version >= head as f64).then_some(true)
        });
        match (ready, exited) {
            (Some(true), _) => Ok(()),
            (_, Some(status)) => Err(ClusterError::Exited {
                what: self.name.clone(),
                status: status.to_string(),
                log: piece.log_tail(30),
            }),
            _ => Err(ClusterError::NotReady {
                what: format!("{} (its consent feed at version {head})", self.name),
                secs: timeout.as_secs(),
                log: piece.log_tail(30),
            }),
        }
    }
}
