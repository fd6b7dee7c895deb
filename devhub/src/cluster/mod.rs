//! The hub as a real cluster on loopback (`scripts/cluster`, and the resilience tests):
//! separate processes for a PostgreSQL server (in a temporary directory), two trust
//! replicas on it, a Redis server (the gateways' shared rate limits and monthly quotas),
//! N gateways (two by default) following both replicas and sharing the Redis, and the
//! sandbox banks. The demo's PKI, identities, consents, hub configuration and manifest
//! are reused; the database is seeded once (participants and demo consents) by a trust
//! sidecar run in-process for that alone, before the replicas start.
//!
//! [`start`] returns a [`Cluster`]: the manifest (the demo's fields, plus `trust_urls`,
//! `gateway_urls`, `admin_urls`, `redis` and `pids`), the pieces' process ids, and
//! methods that kill, stop, pause and restart pieces for tests. Dropping it (or
//! [`Cluster::stop`]) stops every piece (SIGTERM, then SIGKILL), Redis (SIGTERM) and
//! PostgreSQL (`pg_ctl stop -m fast`); a reaper child does the same should the owning
//! process die without that (see [`procs`]). See `docs/cluster.md`.

mod bank;
pub mod cli;
mod gateways;
mod postgres;
mod procs;
mod redis;
mod replicas;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use policy::limits::LimitSettings;
use sandbox::data::BankData;
use sandbox::redis::RedisError;
use serde_json::{json, Value};
pub use trust_store::pg_server::StopMode;
use trust_store::pg_server::{PgServer, PgServerError};

pub use bank::{run_bank, BankSpec};
pub use procs::signal;

use crate::consents::{demo_consents, CUSTOMERS_USED};
use crate::identities::{identities, Identities};
use crate::manifest::{self, BankUrls, ManifestInputs, TrustInfo};
use crate::DemoError;
use gateways::GatewaySpec;
use postgres::Database;
use procs::{Piece, Reaper};
use redis::Redis;
use replicas::Launch;

/// Why the cluster could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Generating the demo's world (PKI, issuer, consents, configuration) or seeding
    /// the trust database failed.
    #[error("{0}")]
    Demo(#[from] DemoError),
    /// The PostgreSQL server failed.
    #[error("{0}")]
    Postgres(#[from] PgServerError),
    /// The Redis server failed.
    #[error("{0}")]
    Redis(#[from] RedisError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The piece.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A piece did not become ready in time.
    #[error("{what} was not ready within {secs} s; its log ends with:\n{log}")]
    NotReady {
        /// The piece.
        what: String,
        /// The bound.
        secs: u64,
        /// The end of its log.
        log: String,
    },
    /// A piece exited while starting.
    #[error("{what} exited during start-up ({status}); its log ends with:\n{log}")]
    Exited {
        /// The piece.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// A piece asked for does not exist.
    #[error("no such piece: {0}")]
    NoSuchPiece(String),
    /// Anything else in setting up the cluster.
    #[error("{0}")]
    Setup(String),
}

impl ClusterError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
        move |source| ClusterError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The programs the cluster runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The trust sidecar (`trust serve …`).
    pub trust: PathBuf,
    /// The gateway (`gateway run --config …`).
    pub gateway: PathBuf,
    /// A program whose `bank --spec FILE` runs a sandbox bank (`hub-cluster`).
    pub bank: PathBuf,
}

impl Binaries {
    /// `trust` and `gateway` beside the running executable (the release directory),
    /// and the running executable itself for the banks.
    pub fn beside_current_exe() -> Result<Binaries, ClusterError> {
        let exe = std::env::current_exe().map_err(ClusterError::io(Path::new("current exe")))?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        let found = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(ClusterError::Setup(format!(
                    "{} is missing (scripts/build builds it)",
                    p.display()
                )))
            }
        };
        Ok(Binaries {
            trust: found("trust")?,
            gateway: found("gateway")?,
            bank: exe.clone(),
        })
    }
}

/// How the cluster is made.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory for generated files (PKI, configurations, logs, manifest).
    pub dir: PathBuf,
    /// Where to write the manifest (default `DIR/manifest.json`).
    pub manifest: Option<PathBuf>,
    /// Every rate limit at this many requests per second (burst twice that); ignored
    /// when `limits` is set.
    pub rate_limit: Option<u32>,
    /// The gateways' `[limits]`: quotas, classes (mode and failure policy), monthly
    /// quotas, store tuning. Default: the gateway's defaults (or `rate_limit`'s). Either
    /// way the cluster sets `[limits.store]`'s `url` (its Redis) and `gateways` (their
    /// number); the other store settings are kept when given.
    pub limits: Option<LimitSettings>,
    /// Customers per sandbox bank.
    pub customers: usize,
    /// Extra authorised consents (`c-extra-0001`, …; first user, first bank), for tests.
    pub extra_consents: usize,
    /// The programs.
    pub binaries: Binaries,
    /// Trust replicas (at least 1).
    pub trust_replicas: usize,
    /// Gateways (at least 1).
    pub gateways: usize,
    /// Worker threads per gateway (default: the machine's cores).
    pub gateway_threads: Option<usize>,
    /// The replicas' feed heartbeat (`--heartbeat-ms`); the gateways' `heartbeat_secs`
    /// is this rounded up to whole seconds.
    pub heartbeat_ms: u64,
    /// Between two probe rounds of the banks (`--probe-interval-ms`).
    pub probe_interval_ms: u64,
    /// The gateways' `max_staleness_secs` (default: the gateway's, 30 s).
    pub max_staleness_secs: Option<u64>,
    /// A synchronous standby beside the primary, the replicas on both (multi-host URL).
    pub standby: bool,
    /// How long each piece may take to become ready.
    pub ready_timeout: Duration,
    /// `RUST_LOG` of the trust replicas and gateways.
    pub log_filter: String,
    /// The replicas' tariff (`[billing]` of their configuration file): default the
    /// demo's (conf/tariff.example.toml); a test gives its own.
    pub tariff: Option<PathBuf>,
}

impl ClusterOptions {
    /// Two replicas, two gateways, 200 customers per bank, 1 s heartbeats.
    pub fn new(dir: PathBuf, binaries: Binaries) -> ClusterOptions {
        ClusterOptions {
            dir,
            manifest: None,
            rate_limit: None,
            limits: None,
            customers: 200,
            extra_consents: 0,
            binaries,
            trust_replicas: 2,
            gateways: 2,
            gateway_threads: None,
            heartbeat_ms: 1000,
            probe_interval_ms: 45_000,
            max_staleness_secs: None,
            standby: false,
            ready_timeout: Duration::from_secs(60),
            log_filter: "info".into(),
            tariff: None,
        }
    }
}

/// Where the cluster writes: `root` (configurations, journals, the manifest by default),
/// `run` (specs and ready files), `logs` (each piece's output).
pub(crate) struct Dirs {
    root: PathBuf,
    run: PathBuf,
    logs: PathBuf,
}

impl Dirs {
    /// Creates them, emptying what a previous cluster left in `run` and `logs`.
    fn new(dir: &Path) -> Result<Dirs, ClusterError> {
        std::fs::create_dir_all(dir).map_err(ClusterError::io(dir))?;
        let root = crate::identities::abs(dir);
        let dirs = Dirs {
            run: root.join("run"),
            logs: root.join("logs"),
            root,
        };
        for d in [&dirs.run, &dirs.logs] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(ClusterError::io(d))?;
            }
            std::fs::create_dir_all(d).map_err(ClusterError::io(d))?;
        }
        let _ = std::fs::remove_file(dirs.root.join("otp_outbox"));
        let _ = std::fs::remove_file(dirs.root.join("provider_outbox"));
        // Every gateway's journal and configuration (a previous cluster may have had more).
        for entry in std::fs::read_dir(&dirs.root).map_err(ClusterError::io(&dirs.root))? {
            let path = entry.map_err(ClusterError::io(&dirs.root))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let audit = name.starts_with("audit-") && name.ends_with(".jsonl");
            let config = name.starts_with("hub-") && name.ends_with(".toml");
            if audit || config {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(dirs)
    }
}

/// The process ids of the pieces (the manifest's `pids`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pids {
    /// The PostgreSQL postmaster (the primary; 0 while it is stopped).
    pub postgres: u32,
    /// The Redis server (0 while it is stopped).
    pub redis: u32,
    /// The standby's postmaster, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_standby: Option<u32>,
    /// The trust replicas, in `trust_urls` order.
    pub trust: Vec<u32>,
    /// The gateways, in `gateway_urls` order.
    pub gateways: Vec<u32>,
    /// The sandbox banks, in `providers` order.
    pub banks: Vec<u32>,
}

/// A running cluster.
pub struct Cluster {
    dirs: Dirs,
    manifest_path: PathBuf,
    manifest: Value,
    binaries: Binaries,
    options: ClusterOptions,
    reaper: Reaper,
    db: Database,
    redis: Redis,
    trust: Vec<(Launch, Piece)>,
    /// The replicas' configuration file and the tariff it names (once written).
    billing: Option<crate::billing::BillingFiles>,
    gateways: Vec<(GatewaySpec, Piece)>,
    banks: Vec<Piece>,
    /// Names of pieces whose exit was reported already.
    reported: Vec<String>,
    /// The runtime the seed ran on: kept while the cluster runs, since the stopped
    /// seed's database watcher thread may still use it for a moment.
    seed_runtime: Option<tokio::runtime::Runtime>,
    stopped: bool,
}

/// Starts a cluster and waits until every piece answers (each within
/// `ready_timeout`); on failure, whatever started is stopped.
pub fn start(options: &ClusterOptions) -> Result<Cluster, ClusterError> {
    let dirs = Dirs::new(&options.dir)?;
    let ids = identities(&dirs.root)?;
    let mut reaper = Reaper::start()?;
    let db = Database::start(&dirs.run, options.standby, &mut reaper)?;
    let redis = Redis::start(&dirs.root.join("redis"), &mut reaper)?;
    let manifest_path = options
        .manifest
        .clone()
        .unwrap_or_else(|| dirs.root.join("manifest.json"));
    let mut cluster = Cluster {
        dirs,
        manifest_path,
        manifest: Value::Null,
        binaries: options.binaries.clone(),
        options: options.clone(),
        reaper,
        db,
        redis,
        trust: Vec::new(),
        billing: None,
        gateways: Vec::new(),
        banks: Vec::new(),
        reported: Vec::new(),
        seed_runtime: None,
        stopped: false,
    };
    // From here on, dropping `cluster` stops whatever started.
    cluster.start_pieces(&ids)?;
    Ok(cluster)
}

impl Cluster {
    /// Banks, the seed, the replicas, the gateways, the manifest.
    fn start_pieces(&mut self, ids: &Identities) -> Result<(), ClusterError> {
        let o = self.options.clone();
        let (banks, bank_addrs) = bank::start_banks(
            &self.binaries.bank,
            ids,
            o.customers,
            &self.dirs,
            &mut self.reaper,
            o.ready_timeout,
        )?;
        self.banks = banks;
        let bank_urls: Vec<String> = bank_addrs
            .iter()
            .map(|a| format!("https://{}", a.api))
            .collect();
        let faults_urls: Vec<String> = bank_addrs
            .iter()
            .map(|a| sandbox::bank::faults_url(a.faults))
            .collect();
        let bank_addrs: Vec<SocketAddr> = bank_addrs.iter().map(|a| a.api).collect();
        let mut consents = self.seed(ids, &bank_urls)?;
        let head = consents
            .iter()
            .filter_map(|c| c["version"].as_u64())
            .max()
            .unwrap_or(0);
        self.start_replicas(ids)?;
        let trust_urls = self.trust_urls();
        let limits = gateways::limits(&o, &self.redis.url())?;
        for i in 0..o.gateways.max(1) {
            let spec = GatewaySpec::new(i, &self.dirs)?;
            spec.write_config(ids, &o, &limits, &trust_urls, &bank_addrs)?;
            let piece = spec.start(&self.binaries.gateway, &o.log_filter, &mut self.reaper)?;
            self.gateways.push((spec, piece));
        }
        for (spec, piece) in &mut self.gateways {
            spec.wait_ready(piece, head, o.ready_timeout)?;
        }
        let urls = BankUrls {
            api: &bank_urls,
            faults: &faults_urls,
        };
        self.manifest = self.make_manifest(ids, urls, std::mem::take(&mut consents));
        self.write_manifest()
    }

    /// Seeds the database once through an in-process sidecar: the participants (each
    /// provider at its bank), the demo consents; returns the manifest's consents as the
    /// database holds them.
    fn seed(&mut self, ids: &Identities, bank_urls: &[String]) -> Result<Vec<Value>, ClusterError> {
        let data = (0..ids.providers.len())
            .map(|i| crate::banks::bank_data(ids, i, CUSTOMERS_USED).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let generated = demo_consents(ids, &data, self.options.extra_consents)?;
        let mut consents = generated.manifest;
        let mut config = crate::seed::trust_config(
            ids,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            PathBuf::new(),
            self.otp_outbox(),
        )?;
        config.postgres = Some(self.db.settings());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ClusterError::io(&self.dirs.run))?;
        let seeded = runtime.block_on(async {
            let running = trust::start(config, None).await.map_err(DemoError::from)?;
            let seeded = async {
                let refs: Vec<&BankData> = data.iter().map(|d| &**d).collect();
                crate::seed::seed(running.app(), ids, bank_urls, &refs, generated.records).await?;
                crate::seed::held_states(running.app(), &mut consents).await
            }
            .await;
            running.stop().await;
            seeded
        });
        self.seed_runtime = Some(runtime);
        seeded?;
        Ok(consents)
    }

    /// Starts the trust replicas one after the other (each ready before the next).
    fn start_replicas(&mut self, ids: &Identities) -> Result<(), ClusterError> {
        let mut args =
            replicas::common_args(ids, &self.db, &self.otp_outbox(), self.options.heartbeat_ms)?;
        args.extend(replicas::probe_args(
            ids,
            self.options.probe_interval_ms,
            &self.provider_outbox(),
        ));
        // Billing on: the configuration file names the tariff (the demo's or the test's).
        let files = crate::billing::write(&self.dirs.root, self.options.tariff.as_deref())?;
        args.extend(["--config".into(), files.config.clone().into()]);
        self.billing = Some(files);
        for i in 0..self.options.trust_replicas.max(1) {
            let mut launch = Launch::new(i, args.clone(), &self.dirs);
            let piece = launch.start(
                &self.binaries.trust,
                &self.options.log_filter,
                &mut self.reaper,
                self.options.ready_timeout,
            )?;
            self.trust.push((launch, piece));
        }
        Ok(())
    }

    fn otp_outbox(&self) -> PathBuf {
        self.dirs.root.join("otp_outbox")
    }

    fn provider_outbox(&self) -> PathBuf {
        self.dirs.root.join("provider_outbox")
    }

    /// The demo's manifest fields (naming the first gateway and replica) and the
    /// cluster's: every URL, the pids, the database.
    fn make_manifest(&self, ids: &Identities, banks: BankUrls<'_>, consents: Vec<Value>) -> Value {
        let first = &self.gateways[0].0;
        let mut m = manifest::manifest_json(ManifestInputs {
            ids,
            gateway_url: format!("https://{}", first.api),
            admin_url: format!("http://{}", first.admin),
            banks,
            config: &first.config,
            audit: &first.audit,
            trust: Some(TrustInfo {
                url: self.trust_urls()[0].clone(),
                otp_outbox: self.otp_outbox(),
                db: json!(self.db.url()),
                provider_outbox: self.provider_outbox(),
                billing: self.billing.as_ref().map(crate::billing::manifest_json),
            }),
            consents,
        });
        if let Some(o) = m.as_object_mut() {
            o.insert("trust_urls".into(), json!(self.trust_urls()));
            o.insert("gateway_urls".into(), json!(self.gateway_urls()));
            o.insert("admin_urls".into(), json!(self.admin_urls()));
            o.insert(
                "configs".into(),
                json!(self
                    .gateways
                    .iter()
                    .map(|g| &g.0.config)
                    .collect::<Vec<_>>()),
            );
            o.insert("logs".into(), json!(self.dirs.logs));
            o.insert(
                "postgres".into(),
                json!({
                    "url": self.db.url(),
                    "password_file": self.db.password_file(),
                    "data_dir": self.db.primary.data_dir(),
                    "bin": self.db.primary.bin(),
                }),
            );
            if let (Some(s), Some(pg)) = (&self.db.standby, o.get_mut("postgres")) {
                pg["standby_data_dir"] = json!(s.data_dir());
            }
            o.insert(
                "redis".into(),
                json!({ "url": self.redis.url(), "dir": self.redis.dir() }),
            );
        }
        m
    }

    /// Writes the manifest with the current pids.
    fn write_manifest(&mut self) -> Result<(), ClusterError> {
        let pids = json!(self.pids());
        if let Some(o) = self.manifest.as_object_mut() {
            o.insert("pids".into(), pids);
        }
        manifest::write_manifest(&self.manifest_path, &self.manifest)?;
        Ok(())
    }

    /// The manifest (as last written).
    pub fn manifest(&self) -> &Value {
        &self.manifest
    }

    /// The manifest's path.
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The directory of generated files.
    pub fn dir(&self) -> &Path {
        &self.dirs.root
    }

    /// The trust replicas' base URLs.
    pub fn trust_urls(&self) -> Vec<String> {
        self.trust.iter().map(|(l, _)| l.url()).collect()
    }

    /// The gateways' API addresses.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|(g, _)| g.api).collect()
    }

    /// The gateways' API base URLs.
    pub fn gateway_urls(&self) -> Vec<String> {
        self.gateway_addrs()
            .iter()
            .map(|a| format!("https://{a}"))
            .collect()
    }

    /// The gateways' admin listeners.
    pub fn admin_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|(g, _)| g.admin).collect()
    }

    /// The gateways' admin base URLs.
    pub fn admin_urls(&self) -> Vec<String> {
        self.admin_addrs()
            .iter()
            .map(|a| format!("http://{a}"))
            .collect()
    }

    /// Every piece's process id.
    pub fn pids(&self) -> Pids {
        Pids {
            postgres: self.db.primary.pid().unwrap_or(0),
            redis: self.redis.pid().unwrap_or(0),
            postgres_standby: self.db.standby.as_ref().and_then(PgServer::pid),
            trust: self.trust.iter().map(|(_, p)| p.pid).collect(),
            gateways: self.gateways.iter().map(|(_, p)| p.pid).collect(),
            banks: self.banks.iter().map(|p| p.pid).collect(),
        }
    }
}

mod control;
