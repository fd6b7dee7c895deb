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

#![forbid(unsafe_code)]

use serde_json::json;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use consent_cache::{Bin, ConsentRecord, ConsentStatus, Permission};
use gateway::config::{
    at, AuditSection, ConsentSection, FileConfig, HubFiles, ParticipantSection, ProviderSection,
    TrustSection,
};
use policy::directory::{ParticipantStatus, Role};
use policy::limits::{LimitSettings, QuotaSettings};
use sandbox::bank::{BankConfig, BankHandle};
use sandbox::pki::{DevPki, PkiSpec};
use sandbox::tokens::{AccessClaims, DevAlg, DevIssuer};

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
            prepare_only: false,
            banks_only: false,
            rate_limit: None,
            consents_from: ConsentSource::Trust,
            trust_port: 8444,
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
    /// The demo issuer's key was refused as a signing key.
    #[error("token signing key: {0}")]
    Key(#[from] trust::keys::KeyError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The target directory this binary was built into (`…/target`), else `./target`.
fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Fixed demo identities.
pub const API_USERS: [(&str, &str, &str); 3] = [
    ("100140000001", "Qazaq Fintech LLP", "active"),
    ("100140000002", "Steppe Pay JSC", "active"),
    ("100140000003", "Suspended Lending LLP", "suspended"),
];
/// Fixed demo providers.
pub const PROVIDERS: [(&str, &str); 2] = [
    ("990340000011", "Altyn Sandbox Bank"),
    ("990340000022", "Dala Sandbox Bank"),
];
/// The demo's token issuer and audience.
pub const ISSUER: &str = "https://trust.hub.local.test";
/// The hub's audience.
pub const AUDIENCE: &str = "https://hub.local.test";

fn bin(s: &str) -> Bin {
    // Start-up only, over the constants above (a unit test checks them).
    #[allow(clippy::expect_used)]
    Bin::parse(s).expect("demo BIN constants are valid")
}

fn abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
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
    let banks = start_banks(&runtime, &ids, args.customers)?;
    let world = World {
        paths,
        ids,
        runtime,
        banks,
    };
    let DemoConsents {
        jsonl,
        records,
        manifest: mut manifest_consents,
    } = demo_consents(&world)?;
    let running = if with_trust {
        Some(seed_trust(
            &world,
            args.trust_port,
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
    let manifest_json = manifest_json(&world, args, trust_url.as_deref(), manifest_consents);
    write_manifest(&world.paths.manifest, &manifest_json)?;

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
            dir,
        })
    }
}

/// The demo's identities: the development PKI and the token issuer, with their files.
struct Identities {
    users: Vec<Bin>,
    providers: Vec<Bin>,
    pki: DevPki,
    issuer: DevIssuer,
    /// The issuer's private key (PEM), also the trust sidecar's signing key.
    issuer_key: PathBuf,
    /// The issuer's public key set, the hub's start-up keys.
    jwks: PathBuf,
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
    fn api_user(&self, user: Bin) -> Result<&sandbox::pki::Identity, DemoError> {
        self.ids
            .pki
            .api_user(user)
            .ok_or_else(|| DemoError::Bank("no certificate for api user".into()))
    }
}

/// The PKI (with an operator certificate for the trust sidecar's registry) and the
/// token issuer, written under `dir`.
fn identities(dir: &Path) -> Result<Identities, DemoError> {
    let users: Vec<Bin> = API_USERS.iter().map(|u| bin(u.0)).collect();
    let providers: Vec<Bin> = PROVIDERS.iter().map(|p| bin(p.0)).collect();
    let pki = DevPki::generate(
        &dir.join("pki"),
        &PkiSpec {
            // The trust sidecar's operator API (participant registry) needs one.
            operator: true,
            ..PkiSpec::new(users.clone(), providers.clone())
        },
    )?;
    // The key id is the key's RFC 7638 thumbprint, which is how the trust sidecar names
    // the key once it signs with it: the demo's own tokens and the sidecar's share it.
    let generated = DevIssuer::generate(DevAlg::Es256, "demo", ISSUER)?;
    let kid = trust::keys::SigningKey::from_pkcs8(
        trust::keys::Alg::Es256,
        &trust::keys::pkcs8_from_pem(generated.key_pem().as_bytes())?,
    )?
    .kid()
    .to_string();
    let issuer = DevIssuer::load(generated.key_pem(), &kid, ISSUER, DevAlg::Es256)?;
    let (issuer_key, jwks) = issuer.write_files(dir)?;
    Ok(Identities {
        users,
        providers,
        pki,
        issuer,
        issuer_key,
        jwks,
    })
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

/// One sandbox bank per provider, on ephemeral loopback ports, accepting only the hub.
fn start_banks(
    runtime: &tokio::runtime::Runtime,
    ids: &Identities,
    customers: usize,
) -> Result<Vec<BankHandle>, DemoError> {
    let pki = &ids.pki;
    let mut banks = Vec::new();
    for (i, p) in ids.providers.iter().enumerate() {
        let id = pki
            .provider_server(*p)
            .ok_or_else(|| DemoError::Bank("no certificate for provider".into()))?;
        let cfg = BankConfig {
            bin: *p,
            name: PROVIDERS[i].1.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            server_cert_chain_pem: id.chain_pem().into_bytes(),
            server_key_pem: id.key_pem.clone().into_bytes(),
            client_ca_pem: pki.ca_cert_pem().as_bytes().to_vec(),
            customers,
            seed: 0x5EED_0000 + i as u64,
            allowed_client_thumbprints: Some(vec![pki.hub_client().thumbprint]),
        };
        let h = runtime
            .block_on(sandbox::bank::start(cfg))
            .map_err(|e| DemoError::Bank(e.to_string()))?;
        banks.push(h);
    }
    Ok(banks)
}

const ALL: [Permission; 3] = [
    Permission::Accounts,
    Permission::Balances,
    Permission::Transactions,
];

/// One demo consent: indices into `API_USERS`, `PROVIDERS` (and the banks) and the
/// bank's customers, what it grants and its state.
struct Plan {
    id: &'static str,
    user: usize,
    bank: usize,
    customer: usize,
    perms: &'static [Permission],
    /// Restricted to the customer's first account.
    restrict: bool,
    status: ConsentStatus,
    /// Seconds from now; negative for a consent already past its expiry.
    expires_in: Option<i64>,
}

impl Plan {
    /// A consent of the first user at the first bank over `ALL`, expiring in a day.
    const fn new(id: &'static str, customer: usize, status: ConsentStatus) -> Plan {
        Plan {
            id,
            user: 0,
            bank: 0,
            customer,
            perms: &ALL,
            restrict: false,
            status,
            expires_in: Some(86400),
        }
    }
}

/// Consents in every status over real sandbox customers and accounts.
const PLANS: [Plan; 9] = [
    Plan {
        expires_in: Some(90 * 86400),
        ..Plan::new("c-authorised-full", 0, ConsentStatus::Authorised)
    },
    Plan {
        restrict: true,
        expires_in: Some(90 * 86400),
        ..Plan::new("c-authorised-restricted", 1, ConsentStatus::Authorised)
    },
    Plan {
        user: 1,
        bank: 1,
        perms: &[Permission::Accounts],
        expires_in: None,
        ..Plan::new("c-authorised-accounts-only", 2, ConsentStatus::Authorised)
    },
    Plan {
        user: 1,
        bank: 1,
        expires_in: Some(30 * 86400),
        ..Plan::new("c-authorised-bank2", 0, ConsentStatus::Authorised)
    },
    Plan::new("c-awaiting", 3, ConsentStatus::AwaitingAuthorisation),
    Plan::new("c-rejected", 4, ConsentStatus::Rejected),
    Plan::new("c-revoked", 5, ConsentStatus::Revoked),
    Plan {
        user: 1,
        bank: 1,
        expires_in: Some(-86400),
        ..Plan::new("c-expired", 6, ConsentStatus::Expired)
    },
    Plan {
        user: 1,
        bank: 1,
        expires_in: Some(-3600),
        ..Plan::new("c-lapsed", 7, ConsentStatus::Authorised)
    },
];

/// The demo consents in the forms the next steps need.
struct DemoConsents {
    /// `consents.jsonl`, the hub's snapshot with `--consents-from file`.
    jsonl: String,
    /// The contract records, imported into the trust sidecar.
    records: Vec<ConsentRecord>,
    /// The manifest's entries: each record with a token and the customer's account ids.
    manifest: Vec<serde_json::Value>,
}

/// The `PLANS` as contract records, snapshot lines and manifest entries with tokens.
fn demo_consents(world: &World) -> Result<DemoConsents, DemoError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = DemoConsents {
        jsonl: String::new(),
        records: Vec::new(),
        manifest: Vec::new(),
    };
    for p in &PLANS {
        let data = world.banks[p.bank].data();
        let customer = data
            .customers()
            .nth(p.customer)
            .ok_or_else(|| DemoError::Bank("too few sandbox customers".into()))?;
        let record = consent_json(p, &world.ids, customer, now);
        let _ = writeln!(out.jsonl, "{record}");
        out.records
            .push(serde_json::from_value(record.clone()).map_err(|e| {
                DemoError::Bank(format!(
                    "demo consent {} is not a contract record: {e}",
                    p.id
                ))
            })?);
        let user = world.ids.users[p.user];
        let claims = AccessClaims::for_consent(
            ISSUER,
            AUDIENCE,
            user,
            p.id,
            p.perms,
            &world.api_user(user)?.thumbprint,
            now,
            24 * 3600,
        )?;
        let token = world.ids.issuer.mint(&claims)?;
        let mut m = record;
        if let Some(o) = m.as_object_mut() {
            o.insert("token".into(), json!(token));
            o.insert(
                "account_ids".into(),
                json!(customer
                    .accounts
                    .iter()
                    .map(|a| a.id.clone())
                    .collect::<Vec<_>>()),
            );
        }
        out.manifest.push(m);
    }
    Ok(out)
}

/// The contract record (§8) of one planned consent, created a day before `now`.
fn consent_json(
    p: &Plan,
    ids: &Identities,
    customer: &sandbox::data::Customer,
    now: i64,
) -> serde_json::Value {
    let accounts: Option<Vec<String>> = p.restrict.then(|| {
        customer
            .accounts
            .iter()
            .take(1)
            .map(|a| a.id.clone())
            .collect()
    });
    json!({
        "id": p.id,
        "api_user": ids.users[p.user].to_string(),
        "customer": customer.iin,
        "providers": [ids.providers[p.bank].to_string()],
        "permissions": p.perms.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
        "accounts": accounts,
        "purpose": "Personal finance overview (demo)",
        "created_at": rfc3339(now - 86400),
        "expires_at": p.expires_in.map(|s| rfc3339(now + s)),
        "status": p.status.as_str(),
    })
}

/// Unix seconds as RFC 3339 (empty when out of range, which the demo's times never are).
fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The sidecar branch: a fresh database, the sidecar started and seeded, and the
/// manifest's consents as the sidecar then holds them (the consent past its expiry was
/// expired by it).
fn seed_trust(
    world: &World,
    port: u16,
    records: Vec<ConsentRecord>,
    manifest_consents: &mut [serde_json::Value],
) -> Result<trust::Running, DemoError> {
    remove_stale(&world.paths)?;
    let sidecar = start_trust(world, port, records)?;
    for m in manifest_consents {
        let Some(id) = m["id"].as_str().map(str::to_string) else {
            continue;
        };
        let view = world.runtime.block_on(sidecar.app().consent(id))?;
        m["status"] = json!(view.record.status.as_str());
        m["version"] = json!(view.version);
    }
    Ok(sidecar)
}

/// A new registry for a new PKI: the previous run's database and codes go (and the
/// snapshot file, which the hub does not read with the sidecar).
fn remove_stale(paths: &Paths) -> Result<(), DemoError> {
    for stale in [
        paths.trust_db.clone(),
        paths.dir.join("trust.db-wal"),
        paths.dir.join("trust.db-shm"),
        paths.otp_outbox.clone(),
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

/// What the hub's configuration is made of.
struct HubConfig<'a> {
    port: u16,
    admin_port: u16,
    threads: Option<usize>,
    /// Requests per second for every limit kind (burst twice that), instead of the defaults.
    rate_limit: Option<u32>,
    pki: &'a DevPki,
    jwks: &'a Path,
    /// The trust sidecar; without it consents come from `consents` and participants are
    /// listed in the file.
    trust_url: Option<&'a str>,
    consents: &'a Path,
    audit: &'a Path,
    /// Each API user's `x5t#S256`, in `API_USERS` order (empty with the sidecar).
    user_thumbprints: Vec<&'a str>,
    /// Each provider's bank, in `PROVIDERS` order.
    bank_addrs: Vec<SocketAddr>,
}

/// The hub's configuration, typed (serialised by [`write_hub_config`]).
fn hub_config(c: &HubConfig<'_>) -> Result<FileConfig, DemoError> {
    let ca = [c.pki.ca_cert_path().to_path_buf()];
    let (server, client) = (c.pki.hub_server(), c.pki.hub_client());
    let files = HubFiles {
        ca: ca[0].clone(),
        server: (server.cert_path.clone(), server.key_path.clone()),
        client: (client.cert_path.clone(), client.key_path.clone()),
        jwks: c.jwks.to_path_buf(),
    };
    let (listen, admin) = (
        format!("127.0.0.1:{}", c.port),
        format!("127.0.0.1:{}", c.admin_port),
    );
    let mut cfg = FileConfig::for_files(&listen, &admin, &files, ISSUER, AUDIENCE);
    cfg.server.threads = c.threads;
    match c.trust_url {
        // Consents, participants and token keys from the sidecar; the JWKS file is the
        // start-up key set (the same demo key).
        Some(url) => {
            let mut t = TrustSection::new(url, &ca);
            t.jwks = true;
            cfg.trust = Some(t);
        }
        None => cfg.consents = ConsentSection::file(c.consents.to_path_buf()),
    }
    cfg.audit = AuditSection::file(c.audit.to_path_buf());
    if let Some(r) = c.rate_limit {
        let r = r.max(1);
        let q = QuotaSettings::new(r, r.saturating_mul(2))
            .ok_or_else(|| DemoError::Bank("rate limit must be > 0".into()))?;
        cfg.limits = LimitSettings {
            per_user: q,
            per_user_provider: q,
            per_consent_route: q,
            per_ip_open_data: q,
            overrides: Vec::new(),
        };
    }
    // With the sidecar, participants come from its registry (which has the same URLs);
    // `[[providers]]` then only tune the upstreams.
    for ((bin, name, status), x5t) in API_USERS.iter().zip(&c.user_thumbprints) {
        let mut p = ParticipantSection::new(bin, name, &[Role::User], participant_status(status));
        p.thumbprints = vec![at(x5t.to_string())];
        cfg.participants.push(p);
    }
    for ((bin, name), addr) in PROVIDERS.iter().zip(&c.bank_addrs) {
        if c.trust_url.is_none() {
            cfg.participants.push(ParticipantSection::new(
                bin,
                name,
                &[Role::Provider],
                ParticipantStatus::Active,
            ));
        }
        let mut p = ProviderSection::new(bin, &[format!("https://{addr}")]);
        p.sni = Some("localhost".into());
        cfg.providers.push(p);
    }
    Ok(cfg)
}

/// A demo participant's status as written in [`API_USERS`].
fn participant_status(s: &str) -> ParticipantStatus {
    match s {
        "active" => ParticipantStatus::Active,
        "isolated" => ParticipantStatus::Isolated,
        "terminated" => ParticipantStatus::Terminated,
        _ => ParticipantStatus::Suspended,
    }
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
            .map(|u| Ok(world.api_user(*u)?.x5t_s256.as_str()))
            .collect::<Result<_, DemoError>>()?,
    };
    let cfg = hub_config(&HubConfig {
        port: args.port,
        admin_port: args.admin_port,
        threads: args.threads,
        rate_limit: args.rate_limit,
        pki: &world.ids.pki,
        jwks: &world.ids.jwks,
        trust_url,
        consents: &world.paths.consents,
        audit: &world.paths.audit,
        user_thumbprints,
        bank_addrs: world.banks.iter().map(BankHandle::addr).collect(),
    })?;
    let text = cfg
        .to_toml()
        .map_err(|e| DemoError::Bank(format!("hub configuration: {e}")))?;
    let text =
        format!("# Generated by `devhub` (scripts/demo): development material only.\n{text}");
    let path = &world.paths.config;
    std::fs::write(path, text).map_err(io(path))
}

/// The contract §9 manifest.
fn manifest_json(
    world: &World,
    args: &DemoArgs,
    trust_url: Option<&str>,
    consents: Vec<serde_json::Value>,
) -> serde_json::Value {
    let (ids, paths, pki) = (&world.ids, &world.paths, &world.ids.pki);
    let mut manifest = json!({
        "gateway_url": format!("https://127.0.0.1:{}", args.port),
        "admin_url": format!("http://127.0.0.1:{}", args.admin_port),
        "ca_cert": abs(pki.ca_cert_path()),
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "token_signing_key": abs(&ids.issuer_key),
        "token_kid": ids.issuer.kid(),
        "token_alg": "ES256",
        "jwks": abs(&ids.jwks),
        "api_users": API_USERS.iter().enumerate().filter_map(|(i, u)| {
            let id = pki.api_user(ids.users[i])?;
            Some(json!({"id": u.0, "name": u.1, "status": u.2, "cert": abs(&id.cert_path), "key": abs(&id.key_path), "x5t#S256": id.x5t_s256}))
        }).collect::<Vec<_>>(),
        "providers": PROVIDERS.iter().enumerate().map(|(i, p)| json!({"id": p.0, "name": p.1, "url": format!("https://{}", world.banks[i].addr())})).collect::<Vec<_>>(),
        "hub_client_cert": abs(&pki.hub_client().cert_path),
        "hub_client_key": abs(&pki.hub_client().key_path),
        "untrusted_client": {"cert": abs(&pki.untrusted_client().cert_path), "key": abs(&pki.untrusted_client().key_path)},
        "config": abs(&paths.config),
        "audit_log": paths.audit,
        "consents_from": if trust_url.is_some() { "trust" } else { "file" },
        "consents": consents,
    });
    if let (Some(url), Some(o)) = (trust_url, manifest.as_object_mut()) {
        o.insert("trust_url".into(), json!(url));
        o.insert("otp_outbox".into(), json!(paths.otp_outbox));
        o.insert("trust_db".into(), json!(paths.trust_db));
        if let Some(op) = pki.operator() {
            o.insert(
                "operator".into(),
                json!({"cert": abs(&op.cert_path), "key": abs(&op.key_path)}),
            );
        }
    }
    manifest
}

/// Writes the manifest (creating its directory, which may be outside the demo's).
fn write_manifest(path: &Path, manifest: &serde_json::Value) -> Result<(), DemoError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let text = serde_json::to_string_pretty(manifest).unwrap_or_default();
    std::fs::write(path, text).map_err(io(path))
}

/// The trust sidecar's configuration on the demo's PKI: the hub's server certificate,
/// the hub's client certificate reads the feed, the operator certificate runs the
/// registry, the demo issuer's key signs tokens.
fn trust_config(world: &World, port: u16, operator: &sandbox::pki::Identity) -> trust::Config {
    let pki = &world.ids.pki;
    let mut c = trust::Config::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        world.paths.trust_db.clone(),
        pki.hub_server().cert_path.clone(),
        pki.hub_server().key_path.clone(),
        pki.ca_cert_path().to_path_buf(),
    );
    c.operator_certs = vec![operator.cert_path.clone()];
    c.hub_certs = vec![pki.hub_client().cert_path.clone()];
    c.issuer = Some(ISSUER.to_string());
    c.audience = AUDIENCE.to_string();
    c.signing_keys = vec![world.ids.issuer_key.clone()];
    c.otp_outbox = Some(world.paths.otp_outbox.clone());
    c.dev_customer_sessions = true;
    c
}

/// Starts the trust sidecar on the demo's PKI and seeds it: the demo participants
/// (through the registry, as the operator), then the demo consents (imported through
/// its storage, each with a feed version and a history entry), then one expiry pass.
fn start_trust(
    world: &World,
    port: u16,
    records: Vec<ConsentRecord>,
) -> Result<trust::Running, DemoError> {
    let operator = world
        .ids
        .pki
        .operator()
        .ok_or_else(|| DemoError::Bank("the PKI has no operator certificate".into()))?;
    let config = trust_config(world, port, operator);
    world.runtime.block_on(async {
        let running = trust::start(config, None).await?;
        let app = running.app().clone();
        let actor = trust::history::operator(&operator.x5t_s256);
        seed_participants(world, &app, &actor).await?;
        app.import_consents(records).await?;
        app.expire_due().await?;
        Ok::<_, DemoError>(running)
    })
}

/// The demo's API users and providers, put into the sidecar's registry by `actor`.
async fn seed_participants(
    world: &World,
    app: &std::sync::Arc<trust::app::App>,
    actor: &str,
) -> Result<(), DemoError> {
    use trust::participants::ParticipantInput;
    use trust::wire::{ParticipantStatus, Role};

    for (i, u) in API_USERS.iter().enumerate() {
        let id = world
            .ids
            .pki
            .api_user(bin(u.0))
            .ok_or_else(|| DemoError::Bank(format!("no certificate for api user {i}")))?;
        let input = ParticipantInput {
            name: u.1.to_string(),
            roles: vec![Role::User],
            thumbprints: vec![id.x5t_s256.clone()],
            provider_urls: Vec::new(),
            status: ParticipantStatus::parse(u.2),
        };
        app.put_participant(actor.to_owned(), bin(u.0), input)
            .await?;
    }
    for (i, p) in PROVIDERS.iter().enumerate() {
        let bank = world
            .banks
            .get(i)
            .ok_or_else(|| DemoError::Bank("too few sandbox banks".into()))?;
        let input = ParticipantInput {
            name: p.1.to_string(),
            roles: vec![Role::Provider],
            thumbprints: Vec::new(),
            provider_urls: vec![format!("https://{}", bank.addr())],
            status: Some(ParticipantStatus::Active),
        };
        app.put_participant(actor.to_owned(), bin(p.0), input)
            .await?;
    }
    Ok(())
}

/// Ready-to-paste commands for the first consents.
fn curl_lines(m: &serde_json::Value) -> String {
    let mut out = String::new();
    let gw = m["gateway_url"].as_str().unwrap_or_default();
    let ca = m["ca_cert"].as_str().unwrap_or_default();
    let find_user = |id: &str| {
        m["api_users"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    for c in m["consents"].as_array().into_iter().flatten().take(3) {
        let u = find_user(c["api_user"].as_str().unwrap_or_default());
        let base = format!(
            "curl --cacert {ca} --cert {} --key {} -H \"Authorization: Bearer {}\"",
            u["cert"].as_str().unwrap_or_default(),
            u["key"].as_str().unwrap_or_default(),
            c["token"].as_str().unwrap_or_default()
        );
        let provider = c["providers"][0].as_str().unwrap_or_default();
        let account = c["account_ids"][0].as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "# consent {} ({})",
            c["id"].as_str().unwrap_or_default(),
            c["status"].as_str().unwrap_or_default()
        );
        let _ = writeln!(out, "{base} {gw}/v1/providers/{provider}/accounts");
        let _ = writeln!(
            out,
            "{base} {gw}/v1/providers/{provider}/accounts/{account}/balances"
        );
        let _ = writeln!(
            out,
            "{base} '{gw}/v1/providers/{provider}/accounts/{account}/transactions?limit=5'\n"
        );
    }
    if let Some(u) = m["api_users"].get(0) {
        let p = m["providers"][0]["id"].as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "# open data (no token)\ncurl --cacert {ca} --cert {} --key {} {gw}/v1/open-data/{p}/exchange-rates",
            u["cert"].as_str().unwrap_or_default(),
            u["key"].as_str().unwrap_or_default()
        );
    }
    if let (Some(trust), Some(outbox), Some(u), Some(c)) = (
        m["trust_url"].as_str(),
        m["otp_outbox"].as_str(),
        m["api_users"].get(0),
        m["consents"].get(0),
    ) {
        let user = format!(
            "curl --cacert {ca} --cert {} --key {}",
            u["cert"].as_str().unwrap_or_default(),
            u["key"].as_str().unwrap_or_default()
        );
        let customer = c["customer"].as_str().unwrap_or_default();
        let provider = c["providers"][0].as_str().unwrap_or_default();
        let bin = u["id"].as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "\n# a new consent through the trust sidecar: the API user asks, the customer \
             authorises with the one-time code, the API user gets a token\n\
             {user} -H 'content-type: application/json' -d '{{\"customer\":\"{customer}\",\"providers\":[\"{provider}\"],\"permissions\":[\"accounts\",\"balances\"],\"purpose\":\"Demo\"}}' {trust}/v1/consents     # -> id\n\
             curl --cacert {ca} -H 'content-type: application/json' -d '{{\"customer\":\"{customer}\"}}' {trust}/v1/customer/sessions     # -> session\n\
             curl --cacert {ca} -X POST -H 'Authorization: Bearer SESSION' {trust}/v1/customer/consents/ID/authorisations     # -> authorisation id\n\
             tail -n 1 {outbox}     # the code\n\
             curl --cacert {ca} -H 'Authorization: Bearer SESSION' -H 'content-type: application/json' -d '{{\"code\":\"CODE\"}}' {trust}/v1/customer/authorisations/AID/verify\n\
             {user} -d 'grant_type=client_credentials&client_id={bin}&consent_id=ID' {trust}/oauth2/token     # -> access_token\n\
             {user} -X DELETE {trust}/v1/consents/ID     # revoke: the hub refuses the token at once"
        );
    }
    out
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
        for b in &prepared.banks {
            println!("bank {} listening on https://{}", b.bin(), b.addr());
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
        return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_identities_are_valid_bins() {
        for u in API_USERS {
            assert!(Bin::parse(u.0).is_ok(), "{}", u.0);
        }
        for p in PROVIDERS {
            assert!(Bin::parse(p.0).is_ok(), "{}", p.0);
        }
    }
}
