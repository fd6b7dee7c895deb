//! The `trust` binary: runs the trust sidecar (`trust serve …`); checks its configuration
//! file (`trust check --config FILE`); `trust --version`, `--log-format json|text`
//! (docs/ops/logging.md).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trust::abuse::AbuseLimits;
use trust::keys::Alg;
use trust::listener::ListenerLimits;
use trust::oidc::{OidcConfig, Secret};
use trust::Config;

#[derive(Parser)]
#[command(
    name = "trust",
    version,
    about = "The trust sidecar: consent registry, authorization server, participant registry, change feed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: hub_log::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the API over HTTPS until SIGINT or SIGTERM.
    Serve(Box<Serve>),
    /// Checks a configuration file (`--config`) and exits: 0 when it is valid, 2 with
    /// `file:line: field: message` when not.
    Check(Check),
}

#[derive(Parser)]
struct Check {
    /// The configuration file (TOML; conf/trust.example.toml).
    #[arg(long)]
    config: PathBuf,
}

#[derive(Parser)]
struct Serve {
    /// Listener address (port 0: an ephemeral port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Configuration file (TOML: SLA targets and the reports' time zone; docs/sla.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// SQLite database file (created if missing); or use `--postgres-url`.
    #[arg(
        long,
        required_unless_present = "postgres_url",
        conflicts_with = "postgres_url"
    )]
    db: Option<PathBuf>,
    #[command(flatten)]
    postgres: PostgresFlags,
    /// Server certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Platform CA bundle client certificates must chain to (repeatable).
    #[arg(long = "client-ca", required = true)]
    client_ca: Vec<PathBuf>,
    /// Operator client certificate (PEM; repeatable).
    #[arg(long = "operator-cert")]
    operator_cert: Vec<PathBuf>,
    /// Operator certificate thumbprint, x5t#S256 (repeatable).
    #[arg(long = "operator-thumbprint")]
    operator_thumbprint: Vec<String>,
    /// Hub (gateway) client certificate allowed on the snapshot and feed (repeatable).
    #[arg(long = "hub-cert")]
    hub_cert: Vec<PathBuf>,
    /// Hub certificate thumbprint, x5t#S256 (repeatable).
    #[arg(long = "hub-thumbprint")]
    hub_thumbprint: Vec<String>,
    /// Public base URL (default https://LISTEN).
    #[arg(long)]
    public_url: Option<String>,
    /// Token issuer `iss` (default: the public URL).
    #[arg(long)]
    issuer: Option<String>,
    /// Token audience `aud` (the hub's configured audience).
    #[arg(long, default_value = "open-api-hub")]
    audience: String,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    token_lifetime_secs: i64,
    /// Algorithm of generated signing keys: ES256 (generated) or PS256 (imported only).
    #[arg(long, default_value = "ES256", value_parser = parse_alg)]
    token_alg: Alg,
    /// PKCS#8 PEM signing key to import (ES256 or PS256; repeatable).
    #[arg(long = "signing-key")]
    signing_key: Vec<PathBuf>,
    /// Rotate the signing key after this many seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    key_rotate_after_secs: i64,
    /// Publish the next key this many seconds before it signs.
    #[arg(long, default_value_t = 3600)]
    key_publish_lead_secs: i64,
    /// Development notifier outbox: one-time codes appended as JSON lines.
    #[arg(long)]
    otp_outbox: Option<PathBuf>,
    /// Enables development customer sessions (POST /v1/customer/sessions).
    #[arg(long)]
    dev_customer_sessions: bool,
    /// Feed heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Housekeeping (expiry, rotation) interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    housekeeping_ms: u64,
    /// Changes kept in the feed history.
    #[arg(long, default_value_t = 1_000_000)]
    feed_retention: u64,
    /// Also write the start-up line (`{"trust_url":…}`) to this file once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    listeners: ListenerFlags,
    #[command(flatten)]
    abuse: AbuseFlags,
    #[command(flatten)]
    oidc: OidcFlags,
    #[command(flatten)]
    probe: ProbeFlags,
}

/// Provider conformance probing (docs/oversight.md): on when the hub's client identity
/// towards banks is given.
#[derive(clap::Args)]
struct ProbeFlags {
    /// The hub's client certificate towards banks (PEM); turns probing on.
    #[arg(long, requires_all = ["probe_client_key", "probe_ca"])]
    probe_client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    probe_client_key: Option<PathBuf>,
    /// The CA that verifies the banks' certificates (PEM).
    #[arg(long)]
    probe_ca: Option<PathBuf>,
    /// Between two probe rounds, in milliseconds (jittered ±10 %).
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    probe_interval_ms: u64,
    /// K: consecutive failing probes that delist a provider API.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    probe_fail_after: u32,
    /// M: consecutive passing probes that relist it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    probe_pass_after: u32,
    /// Development notifier of providers: their APIs' changes appended as JSON lines.
    #[arg(long)]
    provider_outbox: Option<PathBuf>,
    /// Between two evaluations of sustained SLA breaches, in milliseconds (overrides
    /// `[oversight] evaluate_every_ms`; default 60 s).
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    breach_interval_ms: Option<u64>,
}

impl ProbeFlags {
    fn config(&self) -> Option<trust::prober::ProbeConfig> {
        let (Some(cert), Some(key), Some(ca)) = (
            self.probe_client_cert.clone(),
            self.probe_client_key.clone(),
            self.probe_ca.clone(),
        ) else {
            return None;
        };
        Some(trust::prober::ProbeConfig {
            interval: Duration::from_millis(self.probe_interval_ms),
            client_cert: cert,
            client_key: key,
            ca,
            hysteresis: trust::grade::Hysteresis {
                fail_after: self.probe_fail_after,
                pass_after: self.probe_pass_after,
            },
            outbox: self.provider_outbox.clone(),
        })
    }
}

/// The PostgreSQL database (several replicas on one database; `docs/postgres.md`).
#[derive(clap::Args)]
struct PostgresFlags {
    /// `postgres://user@host:port/dbname` (no password here: see `--postgres-password-file`).
    #[arg(long)]
    postgres_url: Option<String>,
    /// A file holding the database password (its first line).
    #[arg(long, requires = "postgres_url")]
    postgres_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) of the database server: TLS required. Without it, only a
    /// loopback host or a unix socket is accepted.
    #[arg(long, requires = "postgres_url")]
    postgres_ca: Option<PathBuf>,
    /// Pooled connections to the database.
    #[arg(long, default_value_t = 16)]
    postgres_pool: usize,
    /// A statement (waiting for the feed's lock included) is cancelled after this many
    /// milliseconds.
    #[arg(long, default_value_t = 15_000)]
    postgres_statement_timeout_ms: u64,
}

impl PostgresFlags {
    /// The settings, the password read from its file; `None` without `--postgres-url`.
    fn settings(&self) -> Result<Option<trust_store::PgSettings>, String> {
        let Some(url) = &self.postgres_url else {
            return Ok(None);
        };
        let mut s = trust_store::PgSettings::new(url.clone());
        s.pool_size = self.postgres_pool.max(1);
        s.statement_timeout = Duration::from_millis(self.postgres_statement_timeout_ms.max(100));
        s.tls = self.postgres_ca.clone();
        if let Some(file) = &self.postgres_password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--postgres-password-file {}: {e}", file.display()))?;
            let line = text.lines().next().unwrap_or_default().to_owned();
            if line.is_empty() {
                return Err(format!(
                    "--postgres-password-file {}: empty",
                    file.display()
                ));
            }
            s.password = Some(line);
        }
        Ok(Some(s))
    }
}

/// The listeners and their protections (timeouts apply to both listeners).
#[derive(clap::Args)]
struct ListenerFlags {
    /// Internal listener for gateways (snapshot, feed) and operators (registry, keys);
    /// when set, those routes leave the public listener.
    #[arg(long)]
    internal_listen: Option<SocketAddr>,
    /// Open connections at once on the public listener.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Open connections from one source address on the public listener.
    #[arg(long, default_value_t = 256)]
    max_connections_per_address: usize,
    /// Open connections at once on the internal listener.
    #[arg(long, default_value_t = 1_000)]
    internal_max_connections: usize,
    /// Open connections from one source address on the internal listener.
    #[arg(long, default_value_t = 1_000)]
    internal_max_connections_per_address: usize,
    /// A TLS handshake must finish within this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    handshake_timeout_ms: u64,
    /// An HTTP/1.1 request head must arrive within this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// A request body must arrive within this many milliseconds (408 otherwise).
    #[arg(long, default_value_t = 30_000)]
    body_read_timeout_ms: u64,
    /// A connection with no request in progress (HTTP/1.1 or HTTP/2) is closed after this
    /// many milliseconds.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
}

impl ListenerFlags {
    fn limits(&self, max: usize, per_address: usize) -> ListenerLimits {
        ListenerLimits {
            max_connections: max,
            max_connections_per_address: per_address,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

/// Abuse limits (429 with Retry-After).
#[derive(clap::Args)]
struct AbuseFlags {
    /// One-time codes sent to one customer in any hour.
    #[arg(long, default_value_t = 10)]
    codes_per_customer_hour: u32,
    /// One-time codes sent to one customer in any 24 hours.
    #[arg(long, default_value_t = 30)]
    codes_per_customer_day: u32,
    /// Consents one API user may create in any minute.
    #[arg(long, default_value_t = 120)]
    consents_per_user_minute: u32,
    /// Consents of one API user awaiting authorisation at once.
    #[arg(long, default_value_t = 10_000)]
    open_consents_per_user: u32,
    /// Unauthenticated requests per source address per minute (sustained).
    #[arg(long, default_value_t = 120)]
    address_per_minute: u32,
    /// Unauthenticated requests one source address may make at once.
    #[arg(long, default_value_t = 60)]
    address_burst: u32,
}

/// The customer's identity provider (OpenID Connect, authorization code flow with PKCE).
#[derive(clap::Args)]
struct OidcFlags {
    /// The provider's issuer URL (https); enables `GET /v1/customer/login`.
    #[arg(long, requires_all = ["oidc_client_id", "oidc_ca"])]
    oidc_issuer: Option<String>,
    /// The sidecar's client id at the provider.
    #[arg(long)]
    oidc_client_id: Option<String>,
    /// File holding the client secret (client_secret_basic); without it a public client.
    #[arg(long)]
    oidc_client_secret_file: Option<PathBuf>,
    /// CA bundle (PEM) verifying the provider's TLS certificate (repeatable).
    #[arg(long)]
    oidc_ca: Vec<PathBuf>,
    /// The ID token claim that holds the customer's IIN.
    #[arg(long, default_value = "iin")]
    oidc_iin_claim: String,
    /// Scope asked for besides `openid` (repeatable).
    #[arg(long)]
    oidc_scope: Vec<String>,
    /// Redirect URI registered at the provider (default PUBLIC_URL/v1/customer/login/callback).
    #[arg(long)]
    oidc_redirect_url: Option<String>,
    /// Seconds a started login may take.
    #[arg(long, default_value_t = 600)]
    oidc_login_ttl_secs: i64,
}

impl OidcFlags {
    fn config(self) -> Result<Option<OidcConfig>, String> {
        let (Some(issuer), Some(client_id)) = (self.oidc_issuer, self.oidc_client_id) else {
            return Ok(None);
        };
        let mut c = OidcConfig::new(&issuer, &client_id, self.oidc_ca);
        if let Some(path) = self.oidc_client_secret_file {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("--oidc-client-secret-file {}: {e}", path.display()))?;
            c.client_secret = Some(Secret(text.trim().to_owned()));
        }
        c.iin_claim = self.oidc_iin_claim;
        c.scopes = self.oidc_scope;
        c.redirect_url = self.oidc_redirect_url;
        c.login_ttl_secs = self.oidc_login_ttl_secs.max(1);
        Ok(Some(c))
    }
}

fn parse_alg(s: &str) -> Result<Alg, String> {
    Alg::parse(s).ok_or_else(|| format!("{s}: expected ES256 or PS256"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    hub_log::init(cli.log.log_format, "info");
    let args = match cli.command {
        Command::Serve(args) => *args,
        Command::Check(c) => return check(&c.config),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trust: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

/// `trust check --config FILE`.
fn check(path: &std::path::Path) -> ExitCode {
    match trust::config_file::load(path) {
        Ok(s) => {
            println!(
                "{}: ok (SLA: time zone {}, {} provider override(s); breaches: {}, window {} min; billing: {})",
                path.display(),
                s.sla.time_zone_name,
                s.sla.providers.len(),
                if s.breach.enabled { "on" } else { "off" },
                s.breach.window_minutes,
                s.billing.as_ref().map_or_else(
                    || "off".to_owned(),
                    |b| format!("tariff {}", b.tariff_path.display())
                )
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trust: {e}");
            ExitCode::from(2)
        }
    }
}

/// The sidecar's configuration from the flags and the configuration file (the ready
/// file aside).
fn config(a: Serve) -> Result<Config, String> {
    let postgres = a.postgres.settings()?;
    let db = a.db.unwrap_or_default();
    let mut config = Config::new(a.listen, db, a.cert, a.key, PathBuf::new());
    config.postgres = postgres;
    config.client_ca = a.client_ca;
    config.operator_certs = a.operator_cert;
    config.operator_thumbprints = a.operator_thumbprint;
    config.hub_certs = a.hub_cert;
    config.hub_thumbprints = a.hub_thumbprint;
    config.public_url = a.public_url;
    config.issuer = a.issuer;
    config.audience = a.audience;
    config.token_lifetime_secs = a.token_lifetime_secs;
    config.token_alg = a.token_alg;
    config.signing_keys = a.signing_key;
    config.key_rotate_after_secs = a.key_rotate_after_secs;
    config.key_publish_lead_secs = a.key_publish_lead_secs;
    config.otp_outbox = a.otp_outbox;
    config.dev_customer_sessions = a.dev_customer_sessions;
    config.heartbeat = Duration::from_millis(a.heartbeat_ms.max(10));
    config.housekeeping = Duration::from_millis(a.housekeeping_ms.max(10));
    config.feed_retention = a.feed_retention;
    let l = &a.listeners;
    config.internal_listen = l.internal_listen;
    config.public_limits = l.limits(l.max_connections, l.max_connections_per_address);
    config.internal_limits = l.limits(
        l.internal_max_connections,
        l.internal_max_connections_per_address,
    );
    let b = &a.abuse;
    config.abuse = AbuseLimits {
        codes_per_customer_hour: b.codes_per_customer_hour,
        codes_per_customer_day: b.codes_per_customer_day,
        consents_per_user_minute: b.consents_per_user_minute,
        open_consents_per_user: b.open_consents_per_user,
        address_per_minute: b.address_per_minute,
        address_burst: b.address_burst,
    };
    config.oidc = a.oidc.config()?;
    config.probe = a.probe.config();
    if let Some(path) = &a.config {
        let file = trust::config_file::load(path).map_err(|e| e.to_string())?;
        config.sla = file.sla;
        config.breach = file.breach;
        config.billing = file.billing;
    }
    if let Some(ms) = a.probe.breach_interval_ms {
        config.breach.every = Duration::from_millis(ms);
    }
    Ok(config)
}

async fn serve(mut a: Serve) -> ExitCode {
    let ready_file = a.ready_file.take();
    let config = match config(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trust: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match trust::start(config, None).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trust: {e}");
            return ExitCode::from(2);
        }
    };
    let mut line =
        serde_json::json!({ "trust_url": running.url(), "addr": running.addr().to_string() });
    if let (Some(url), Some(o)) = (running.internal_url(), line.as_object_mut()) {
        o.insert("internal_url".into(), serde_json::json!(url));
    }
    let line = line.to_string();
    println!("{line}");
    if let Some(path) = ready_file {
        if let Err(e) = std::fs::write(&path, format!("{line}\n")) {
            eprintln!("trust: {}: {e}", path.display());
            running.stop().await;
            return ExitCode::FAILURE;
        }
    }
    wait_for_signal().await;
    tracing::info!("stopping");
    running.stop().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
