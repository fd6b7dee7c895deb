//! The development hub: one command (`devhub`, behind `scripts/demo`) that creates a
//! development PKI and token issuer, starts sandbox banks and the trust sidecar, writes
//! the hub's configuration and the contract §9 manifest, prints ready-to-paste `curl`
//! commands, and runs the gateway in the same process. Everything generated is
//! development material and lives under the target directory. This crate composes the
//! development world (sandbox banks, the dev PKI and token issuer, the trust sidecar)
//! around the gateway library, so that the production `gateway` binary links none of it.
//!
//! Consents come from the trust sidecar by default (`--consents-from trust`): it runs
//! in-process on the demo's PKI (its server certificate is the hub's, the hub's client
//! certificate reads its feed, the PKI's operator certificate runs its registry), with
//! its SQLite database and the development one-time-code outbox in the demo directory,
//! and the demo issuer's key as its token signing key, so the manifest's pre-minted
//! tokens and the tokens of its `/oauth2/token` verify alike at the hub. The demo seeds
//! its participant registry and imports the demo consents through its storage
//! (`App::import_consents`); the manifest lists the consents as the sidecar then holds
//! them. The hub follows it (`[trust]`, keys from its JWKS) and takes its participants
//! from the registry: the generated configuration has no `[[participants]]`, and its
//! `[[providers]]` only tune upstreams. `--consents-from file` is the former setup:
//! `consents.jsonl` and `[[participants]]`, no sidecar (used by the end-to-end tests'
//! fixture and the benchmarks).
//!
//! The same world also runs as a cluster of separate processes ([`cluster`],
//! `hub-cluster`, behind `scripts/cluster`): PostgreSQL, two trust replicas, two gateways
//! and the sandbox banks, each its own process (`docs/cluster.md`). The pieces both use
//! live in modules: the identities, the banks, the consents, the hub configuration, the
//! trust sidecar's configuration and seed, and the manifest.

#![forbid(unsafe_code)]

mod banks;
mod billing;
pub mod cluster;
mod consents;
mod hubconfig;
mod identities;
mod manifest;
mod seed;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use consent_cache::ConsentRecord;
use sandbox::bank::BankHandle;
use sandbox::pki::DevPki;
use sandbox::tokens::DevIssuer;

pub use consents::extra_consent_id;
pub use identities::{API_USERS, AUDIENCE, ISSUER, PROVIDERS};
pub use manifest::curl_lines;

use hubconfig::{HubConfig, TrustTuning};
use identities::{abs, identities, Identities};
use manifest::{BankUrls, ManifestInputs, TrustInfo};

/// `devhub` options (what `scripts/demo` passes on).
#[derive(Debug, clap::Parser)]
#[command(
    name = "devhub",
    version,
    about = "The development hub: sandbox banks, the trust sidecar and the gateway in one process."
)]
pub struct DemoArgs {
    /// Port of the hub's mTLS API listener (127.0.0.1).
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
    /// Port of the admin listener (127.0.0.1).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Where to write the manifest (default: <target>/demo/manifest.json).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Directory for generated files (default: <target>/demo).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Customers per sandbox bank.
    #[arg(long, default_value_t = 200)]
    pub customers: usize,
    /// Worker threads of the gateway (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Generate everything and print the manifest path, but do not start anything.
    #[arg(long)]
    pub prepare_only: bool,
    /// Start the sandbox banks and write the configuration, but not the hub (run it as
    /// its own process with `gateway run --config <dir>/hub.toml`, e.g. to measure it).
    #[arg(long)]
    pub banks_only: bool,
    /// Replace the default rate limits by this many requests per second (burst twice
    /// that) for every limit kind, e.g. for load tests.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Where the hub takes consents and participants from: `trust` (the trust sidecar,
    /// started by the demo) or `file` (`consents.jsonl` and `[[participants]]`).
    #[arg(long, value_enum, default_value_t = ConsentSource::Trust)]
    pub consents_from: ConsentSource,
    /// Port of the trust sidecar (127.0.0.1; 0 = any free port).
    #[arg(long, default_value_t = 8444)]
    pub trust_port: u16,
    /// Between two conformance probe rounds of the banks by the sidecar, in milliseconds
    /// (docs/oversight.md); tests run them fast.
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub probe_interval_ms: u64,
    /// `--log-format json|text`.
    #[command(flatten)]
    pub log: hub_log::LogArgs,
}

/// The demo hub's consent control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsentSource {
    /// The trust sidecar, run by the demo.
    Trust,
    /// A consent snapshot file.
    File,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            port: 8443,
            admin_port: 9901,
            manifest: None,
            dir: None,
            customers: 200,
            threads: None,
            probe_interval_ms: 45_000,
            prepare_only: false,
            banks_only: false,
            rate_limit: None,
            consents_from: ConsentSource::Trust,
            trust_port: 8444,
            log: hub_log::LogArgs::default(),
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing a generated file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The PKI could not be generated.
    #[error("pki: {0}")]
    Pki(#[from] sandbox::pki::PkiError),
    /// The issuer could not be generated.
    #[error("token issuer: {0}")]
    Token(#[from] sandbox::tokens::TokenError),
    /// A sandbox bank could not start.
    #[error("sandbox bank: {0}")]
    Bank(String),
    /// The gateway failed.
    #[error("{0}")]
    Run(#[from] gateway::server::RunError),
    /// The trust sidecar could not start.
    #[error("trust sidecar: {0}")]
    Trust(#[from] trust::StartError),
    /// The trust sidecar refused the demo's participants or consents.
    #[error("trust sidecar seed: {0}")]
    Seed(#[from] trust::error::Error),
    /// The trust sidecar's configuration file (or the tariff it names) is invalid.
    #[error("trust configuration: {0}")]
    TrustConfig(#[from] trust::config_file::FileError),
    /// The trust sidecar's configuration file could not be written.
    #[error("trust configuration: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The demo issuer's key was refused as a signing key.
    #[error("token signing key: {0}")]
    Key(#[from] trust::keys::KeyError),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The target directory this binary was built into (`…/target`), else `./target`.
pub(crate) fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Everything the demo generated, for the manifest, tests and benches.
pub struct Prepared {
    /// The hub configuration file.
    pub config: PathBuf,
    /// The manifest file.
    pub manifest: PathBuf,
    /// The manifest's JSON.
    pub manifest_json: serde_json::Value,
    /// Running sandbox banks (keep alive while the hub runs).
    pub banks: Vec<BankHandle>,
    /// The runtime that drives the banks.
    pub runtime: tokio::runtime::Runtime,
    /// The development PKI (for tests that need more identities).
    pub pki: DevPki,
    /// The development token issuer (for tests that mint their own tokens).
    pub issuer: DevIssuer,
    /// The directory everything was written to.
    pub dir: PathBuf,
    /// The trust sidecar (`--consents-from trust`), running on `runtime`.
    pub trust: Option<trust::Running>,
}

impl Prepared {
    /// Stops the sidecar and the banks.
    pub fn shutdown(mut self) {
        if let Some(t) = self.trust.take() {
            self.runtime.block_on(t.stop());
        }
        drop(self.banks);
        self.runtime.shutdown_background();
    }
}

/// Generates PKI, issuer, banks, consents, config and manifest; starts the banks and,
/// with `--consents-from trust`, the seeded trust sidecar (both keep running on
/// `Prepared::runtime` until `Prepared::shutdown` or drop).
pub fn prepare(args: &DemoArgs) -> Result<Prepared, DemoError> {
    let paths = Paths::new(args)?;
    let ids = identities(&paths.dir)?;
    let with_trust = args.consents_from == ConsentSource::Trust;
    let runtime = demo_runtime(with_trust, &paths.dir)?;
    let banks = banks::start_banks(&runtime, &ids, args.customers)?;
    let world = World {
        paths,
        ids,
        runtime,
        banks,
    };
    let consents::DemoConsents {
        jsonl,
        records,
        manifest: mut manifest_consents,
    } = consents::demo_consents(&world.ids, &banks::data_of(&world.banks), 0)?;
    // Billing on with the sidecar: its configuration file names the demo's tariff.
    let billing_files = with_trust
        .then(|| billing::write(&world.paths.dir, None))
        .transpose()?;
    let running = if let Some(files) = &billing_files {
        Some(seed_trust(
            &world,
            (args.trust_port, args.probe_interval_ms),
            files,
            records,
            &mut manifest_consents,
        )?)
    } else {
        let path = &world.paths.consents;
        std::fs::write(path, jsonl).map_err(io(path))?;
        None
    };
    let trust_url = running.as_ref().map(|r| r.url().to_string());
    write_hub_config(&world, args, trust_url.as_deref())?;
    let manifest_json = demo_manifest(
        &world,
        args,
        trust_url,
        billing_files.as_ref(),
        manifest_consents,
    );
    manifest::write_manifest(&world.paths.manifest, &manifest_json)?;

    let World {
        paths,
        ids,
        runtime,
        banks,
    } = world;
    Ok(Prepared {
        config: paths.config,
        manifest: abs(&paths.manifest),
        manifest_json,
        banks,
        runtime,
        pki: ids.pki,
        issuer: ids.issuer,
        dir: paths.dir,
        trust: running,
    })
}

/// Where the demo writes its files (all under `dir` but the manifest, which may be
/// elsewhere).
struct Paths {
    dir: PathBuf,
    manifest: PathBuf,
    config: PathBuf,
    consents: PathBuf,
    audit: PathBuf,
    trust_db: PathBuf,
    otp_outbox: PathBuf,
    provider_outbox: PathBuf,
}

impl Paths {
    /// Creates the directory; the paths under it are absolute, since `hub.toml` and the
    /// manifest name them for other processes.
    fn new(args: &DemoArgs) -> Result<Paths, DemoError> {
        let dir = args
            .dir
            .clone()
            .unwrap_or_else(|| target_dir().join("demo"));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let dir = abs(&dir);
        Ok(Paths {
            manifest: args
                .manifest
                .clone()
                .unwrap_or_else(|| dir.join("manifest.json")),
            config: dir.join("hub.toml"),
            consents: dir.join("consents.jsonl"),
            audit: dir.join("audit.jsonl"),
            trust_db: dir.join("trust.db"),
            otp_outbox: dir.join("otp_outbox"),
            provider_outbox: dir.join("provider_outbox"),
            dir,
        })
    }
}

/// What the steps after the identities and banks share.
struct World {
    paths: Paths,
    ids: Identities,
    /// Drives the banks (and the trust sidecar).
    runtime: tokio::runtime::Runtime,
    /// One running sandbox bank per entry of `PROVIDERS`, in that order.
    banks: Vec<BankHandle>,
}

impl World {
    /// The banks' base URLs, in `PROVIDERS` order.
    fn bank_urls(&self) -> Vec<String> {
        self.banks
            .iter()
            .map(|b| format!("https://{}", b.addr()))
            .collect()
    }

    /// The banks' fault control routes, in `PROVIDERS` order.
    fn faults_urls(&self) -> Vec<String> {
        // Every demo bank runs one (`banks::bank_config`).
        self.banks
            .iter()
            .map(|b| b.faults_url().unwrap_or_default())
            .collect()
    }
}

/// The runtime of the banks; the trust sidecar, when it runs, gets a second worker.
fn demo_runtime(with_trust: bool, dir: &Path) -> Result<tokio::runtime::Runtime, DemoError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if with_trust { 2 } else { 1 })
        .thread_name("sandbox-bank")
        .enable_all()
        .build()
        .map_err(io(dir))
}

/// The sidecar branch: a fresh database, the sidecar started and seeded, and the
/// manifest's consents as the sidecar then holds them (the consent past its expiry was
/// expired by it).
fn seed_trust(
    world: &World,
    (port, probe_interval_ms): (u16, u64),
    files: &billing::BillingFiles,
    records: Vec<ConsentRecord>,
    manifest_consents: &mut [serde_json::Value],
) -> Result<trust::Running, DemoError> {
    remove_stale(&world.paths)?;
    let mut config = seed::trust_config(
        &world.ids,
        SocketAddr::from(([127, 0, 0, 1], port)),
        world.paths.trust_db.clone(),
        world.paths.otp_outbox.clone(),
    )?;
    config.probe = Some(seed::probe_config(
        &world.ids,
        Duration::from_millis(probe_interval_ms),
        world.paths.provider_outbox.clone(),
    ));
    billing::apply(&mut config, &files.config)?;
    let bank_urls = world.bank_urls();
    let data: Vec<&sandbox::data::BankData> = world.banks.iter().map(|b| &**b.data()).collect();
    world.runtime.block_on(async {
        let running = trust::start(config, None).await?;
        seed::seed(running.app(), &world.ids, &bank_urls, &data, records).await?;
        seed::held_states(running.app(), manifest_consents).await?;
        Ok::<_, DemoError>(running)
    })
}

/// A new registry for a new PKI: the previous run's database and codes go (and the
/// snapshot file, which the hub does not read with the sidecar).
fn remove_stale(paths: &Paths) -> Result<(), DemoError> {
    for stale in [
        paths.trust_db.clone(),
        paths.dir.join("trust.db-wal"),
        paths.dir.join("trust.db-shm"),
        paths.otp_outbox.clone(),
        paths.provider_outbox.clone(),
        paths.consents.clone(),
    ] {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DemoError::Io {
                    path: stale,
                    source: e,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes `hub.toml`.
fn write_hub_config(
    world: &World,
    args: &DemoArgs,
    trust_url: Option<&str>,
) -> Result<(), DemoError> {
    let user_thumbprints = match trust_url {
        Some(_) => Vec::new(),
        None => world
            .ids
            .users
            .iter()
            .map(|u| Ok(world.ids.api_user(*u)?.x5t_s256.as_str()))
            .collect::<Result<_, DemoError>>()?,
    };
    let trust_urls: Vec<String> = trust_url.into_iter().map(str::to_string).collect();
    let cfg = hubconfig::hub_config(&HubConfig {
        port: args.port,
        admin_port: args.admin_port,
        threads: args.threads,
        rate_limit: args.rate_limit,
        limits: None,
        pki: &world.ids.pki,
        jwks: &world.ids.jwks,
        trust_urls: &trust_urls,
        trust_tuning: TrustTuning::default(),
        consents: &world.paths.consents,
        audit: &world.paths.audit,
        user_thumbprints,
        bank_addrs: world.banks.iter().map(BankHandle::addr).collect(),
        quick_stop: false,
        gateway_name: None,
    })?;
    hubconfig::write(&world.paths.config, &cfg, "`devhub` (scripts/demo)")
}

/// The demo's contract §9 manifest.
fn demo_manifest(
    world: &World,
    args: &DemoArgs,
    trust_url: Option<String>,
    billing_files: Option<&billing::BillingFiles>,
    consents: Vec<serde_json::Value>,
) -> serde_json::Value {
    let paths = &world.paths;
    manifest::manifest_json(ManifestInputs {
        ids: &world.ids,
        gateway_url: format!("https://127.0.0.1:{}", args.port),
        admin_url: format!("http://127.0.0.1:{}", args.admin_port),
        banks: BankUrls {
            api: &world.bank_urls(),
            faults: &world.faults_urls(),
        },
        config: &paths.config,
        audit: &paths.audit,
        trust: trust_url.map(|url| TrustInfo {
            url,
            otp_outbox: paths.otp_outbox.clone(),
            db: serde_json::json!(paths.trust_db),
            provider_outbox: paths.provider_outbox.clone(),
            billing: billing_files.map(billing::manifest_json),
        }),
        consents,
    })
}

/// Runs the demo until Ctrl-C.
pub fn run(args: DemoArgs) -> Result<(), DemoError> {
    let prepared = prepare(&args)?;
    println!("manifest: {}", prepared.manifest.display());
    println!("config:   {}", prepared.config.display());
    if let Some(url) = prepared.manifest_json["trust_url"].as_str() {
        println!("trust:    {url}");
    }
    if args.prepare_only {
        prepared.shutdown();
        return Ok(());
    }
    if args.banks_only {
        return run_banks_only(prepared);
    }
    println!(
        "\nTry it (Ctrl-C stops the demo):\n\n{}",
        curl_lines(&prepared.manifest_json)
    );
    println!(
        "metrics: curl {}/metrics\n",
        prepared.manifest_json["admin_url"]
            .as_str()
            .unwrap_or_default()
    );
    let result = gateway::server::run(&prepared.config);
    prepared.shutdown();
    result?;
    Ok(())
}

/// `--banks-only`: the banks and the sidecar until Ctrl-C.
fn run_banks_only(prepared: Prepared) -> Result<(), DemoError> {
    for b in &prepared.banks {
        println!(
            "bank {} listening on https://{} (faults: {})",
            b.bin(),
            b.addr(),
            b.faults_url().unwrap_or_default()
        );
    }
    if let Some(url) = prepared.manifest_json["trust_url"].as_str() {
        println!("trust sidecar listening on {url}");
    }
    println!(
        "banks running; start the hub with: gateway run --config {}",
        prepared.config.display()
    );
    let _ = prepared.runtime.block_on(tokio::signal::ctrl_c());
    prepared.shutdown();
    Ok(())
}
