//! The hub's configuration file: serde DTOs parsed strictly from TOML (unknown keys
//! are errors). They are never used on the request path: `snapshot::sections` compiles
//! them, section by section, into what the runtime snapshot is built from. Every error
//! names the file, the line and the field. The same DTOs serialise: the development hub,
//! the benches and the tests build a typed configuration and write it with
//! [`FileConfig::to_toml`] instead of writing TOML by hand.

pub mod bounds;
mod build;
pub mod defaults;
mod locate;
mod source;
mod trust;

pub use build::{at, HubFiles};
pub use source::Source;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use toml::Spanned;

use consent_cache::Permission;
use policy::directory::{ParticipantStatus, Role};

/// A configuration problem, always with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file or a value in it is invalid (`file:line: field: message`; without the
    /// line when nothing of the field is written, e.g. a missing section).
    #[error("{file}{}: {field}: {message}", line_part(*line))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when the problem is not tied to one line).
        line: usize,
        /// The field (dotted path where known).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The consent snapshot could not be loaded.
    #[error("consent snapshot: {0}")]
    Consents(#[from] consent_cache::LoadError),
}

/// `:line`, or nothing for line 0 (not tied to a line of the file).
fn line_part(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listeners and process settings.
    pub server: ServerSection,
    /// Downstream (API user facing) TLS.
    pub tls: TlsSection,
    /// Upstream (provider bank facing) TLS.
    pub upstream_tls: UpstreamTlsSection,
    /// Access-token validation.
    pub tokens: TokenSection,
    /// Consents from a file (one of `[consents] snapshot` and `[trust]` is required).
    #[serde(default, skip_serializing_if = "ConsentSection::is_empty")]
    pub consents: ConsentSection,
    /// Consents followed live from the trust sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustSection>,
    /// The audit journal.
    #[serde(default)]
    pub audit: AuditSection,
    /// Traffic rollups pushed to the control plane (`[trust]` mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollups: Option<RollupSection>,
    /// Live-traffic checks of providers' answers (on by default, 1 % sampled).
    #[serde(default)]
    pub live_checks: LiveCheckSection,
    /// Rate limits.
    #[serde(default)]
    pub limits: policy::limits::LimitSettings,
    /// Registered participants (API users and providers).
    #[serde(default)]
    pub participants: Vec<ParticipantSection>,
    /// Providers' upstreams and SLAs.
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The HTTPS listener for API users, e.g. `"127.0.0.1:8443"`.
    pub listen: Spanned<String>,
    /// The plain-HTTP admin listener (metrics, health, reload); loopback by default.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: Spanned<String>,
    /// Worker threads; default: the machine's cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Request header block limit in bytes; larger gets `431`.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Request body limit in bytes; larger gets `413`.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Share work between worker threads (tokio work stealing). Off by default: one
    /// runtime per thread avoids cross-thread wake-ups, which a profile showed to cost
    /// more than the balancing gains on this workload.
    #[serde(default)]
    pub work_stealing: bool,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 is always offered).
    #[serde(default = "defaults::http2")]
    pub http2: bool,
    /// Seconds pingora waits after SIGTERM before stopping its services (its listeners
    /// stop accepting at once; requests in flight go on), then `shutdown_timeout_secs`.
    #[serde(default = "defaults::grace_period_secs")]
    pub grace_period_secs: u64,
    /// Seconds in-flight requests get to finish at shutdown.
    #[serde(default = "defaults::shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Idle pooled connections kept per worker towards banks.
    #[serde(default = "defaults::upstream_pool")]
    pub upstream_keepalive_pool_size: usize,
    /// Seconds a new API connection gets from accept to a completed TLS handshake; a
    /// connection still silent or half-way through its handshake then is closed.
    #[serde(default = "defaults::tls_handshake_timeout_secs")]
    pub tls_handshake_timeout_secs: u64,
    /// API connections open at once (handshaking or established); more are closed at
    /// accept and counted (`hub_downstream_connections_closed_total{reason="over_capacity"}`).
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// The unix socket over which a new process started with `gateway run --upgrade`
    /// receives the listening sockets from this one (on SIGQUIT). Default: next to the
    /// audit journal (`<journal>.upgrade.sock`); required when the journal is standard
    /// output. Its directory must be closed to other users (docs/ops/upgrade.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_sock: Option<Spanned<PathBuf>>,
}

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The hub's server certificate chain (PEM).
    pub cert: Spanned<PathBuf>,
    /// Its private key (PEM, PKCS#8 / SEC1 / PKCS#1).
    pub key: Spanned<PathBuf>,
    /// Platform CA bundle(s) that issue participants' client certificates.
    pub client_ca: Vec<Spanned<PathBuf>>,
    /// Optional CRL files (DER or PEM) of those CAs.
    #[serde(default)]
    pub crl: Vec<Spanned<PathBuf>>,
    /// Accept CRLs past their `nextUpdate`. Off by default: such a CRL is refused at load,
    /// and once a loaded CRL expires, certificates of its CA are refused at handshake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_expired_crl: bool,
}

/// `[upstream_tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// CA bundle(s) that issue the banks' server certificates.
    pub ca: Vec<Spanned<PathBuf>>,
    /// The hub's client certificate towards banks (PEM chain).
    pub client_cert: Spanned<PathBuf>,
    /// Its private key.
    pub client_key: Spanned<PathBuf>,
}

/// `[tokens]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// JWKS file with the authorization server's public keys. With `[trust] jwks = true`
    /// it is the start-up set, replaced by the sidecar's once fetched.
    pub jwks: Spanned<PathBuf>,
    /// Expected `iss`.
    pub issuer: Spanned<String>,
    /// Expected `aud` (the hub's audience).
    pub audience: Spanned<String>,
    /// Clock skew tolerance for `exp`, `nbf`, `iat` (at most 300).
    #[serde(default = "defaults::leeway_secs")]
    pub leeway_secs: Spanned<u64>,
    /// Largest accepted token.
    #[serde(default = "defaults::max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens kept in memory.
    #[serde(default = "defaults::token_cache")]
    pub cache_capacity: usize,
    /// Signature verifications that may fail per connection: this many at once, then this
    /// many a second; past them tokens not in the cache answer `429 rate_limited`.
    #[serde(default = "defaults::failed_verifications_per_connection")]
    pub max_failed_verifications_per_connection_per_sec: Spanned<u32>,
    /// The same per client certificate, across all its connections.
    #[serde(default = "defaults::failed_verifications_per_certificate")]
    pub max_failed_verifications_per_certificate_per_sec: Spanned<u32>,
}

/// `[consents]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSection {
    /// Snapshot file (`.jsonl` or `.snap`); followed on disk and reloaded on its own,
    /// apart from the rest of the configuration. Exactly one of this and `[trust]` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Spanned<PathBuf>>,
    /// Consent routes answer `503 consent_state_stale` once a change of the file on disk
    /// has failed to load for longer than this (contract §6 row 7 in file mode).
    #[serde(default = "defaults::consent_max_staleness_secs")]
    pub max_staleness_secs: u64,
}

impl Default for ConsentSection {
    fn default() -> Self {
        ConsentSection {
            snapshot: None,
            max_staleness_secs: defaults::CONSENT_MAX_STALENESS_SECS,
        }
    }
}

/// `[trust]`: the trust sidecar as the consent control plane (snapshot + change feed).
/// The hub authenticates with its `[upstream_tls]` client identity. One endpoint
/// (`url`) or several replicas of one database (`urls`): the follower uses one at a
/// time and moves to the next when it fails (`docs/trust-failover.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    /// The sidecar's https base URL, e.g. `"https://127.0.0.1:7443"`: the same as a
    /// one-element `urls`. Empty when `urls` is used.
    #[serde(
        default = "defaults::no_url",
        skip_serializing_if = "defaults::is_no_url"
    )]
    pub url: Spanned<String>,
    /// The https base URLs of several sidecars serving one database, in the order they
    /// are tried. Exclusive with `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Spanned<Vec<Spanned<String>>>>,
    /// CA bundle(s) verifying the sidecars' server certificates.
    pub ca: Vec<Spanned<PathBuf>>,
    /// Consent routes answer `503 consent_state_stale` once no sidecar has been heard
    /// from for longer than this (contract §6 row 7).
    #[serde(default = "defaults::max_staleness_secs")]
    pub max_staleness_secs: u64,
    /// Take the token keys from `{url}/.well-known/jwks.json`: fetched at start, every
    /// `jwks_refresh_secs` and when a token names an unknown `kid`; the last good set is
    /// kept when a fetch fails. With several endpoints, from the first that answers,
    /// starting with the one the feed follows.
    #[serde(default)]
    pub jwks: bool,
    /// Seconds between JWKS refreshes.
    #[serde(default = "defaults::jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// The sidecars' feed heartbeat interval (`trust serve --heartbeat-ms`; at least
    /// theirs): a feed with no line for twice this long is stalled, and the follower
    /// moves on to the next endpoint.
    #[serde(default = "defaults::heartbeat_secs")]
    pub heartbeat_secs: u64,
}

/// `[rollups]`: the per-minute traffic rollups (calls by API user × provider × route ×
/// outcome, latency histograms) pushed to the control plane for SLA accounting and usage.
/// Present: on. Needs `[trust]` (pushed over its mTLS identity).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupSection {
    /// The gateway's name in the rollups, stable across restarts and unique among the
    /// gateways (letters, digits, `.`, `-`, `_`; at most 64). Default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Spanned<String>>,
    /// How often closed minutes are pushed, in milliseconds.
    #[serde(default = "defaults::rollup_push_interval_ms")]
    pub push_interval_ms: u64,
    /// Closed minutes kept while the control plane does not acknowledge them; beyond it
    /// the oldest is dropped and counted (`hub_rollup_minutes_dropped_total{reason="bound"}`).
    #[serde(default = "defaults::rollup_max_pending_minutes")]
    pub max_pending_minutes: usize,
    /// Seconds after its end a minute is closed and pushed: requests still running then
    /// are counted in a later minute (their journal line says which).
    #[serde(default = "defaults::rollup_close_after_secs")]
    pub close_after_secs: u64,
    /// Where to push instead of the `[trust]` endpoints (an https base URL; the same
    /// client identity and CAs as `[trust]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Spanned<String>>,
}

impl Default for RollupSection {
    fn default() -> Self {
        RollupSection {
            gateway: None,
            push_interval_ms: defaults::rollup_push_interval_ms(),
            max_pending_minutes: defaults::rollup_max_pending_minutes(),
            close_after_secs: defaults::rollup_close_after_secs(),
            url: None,
        }
    }
}

/// `[live_checks]`: providers' successful answers sampled and validated against the
/// provider schema off the request path (docs/oversight.md); transactions pages are
/// always tapped to count their lines (usage). A reload changes the rate and the bound;
/// the queue is taken at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveCheckSection {
    /// The share of successful provider answers validated, from 0 (none) to 1 (all).
    #[serde(default = "defaults::live_sample_rate")]
    pub sample_rate: Spanned<f64>,
    /// The largest answer kept for a check or a line count, in bytes; a larger one is
    /// counted `unchecked` (and its lines unknown).
    #[serde(default = "defaults::live_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Sampled answers waiting for the validator at most; a sample beyond is counted
    /// `unchecked`, never waited for.
    #[serde(default = "defaults::live_queue")]
    pub queue: usize,
}

impl Default for LiveCheckSection {
    fn default() -> Self {
        LiveCheckSection {
            sample_rate: defaults::live_sample_rate(),
            max_body_bytes: defaults::LIVE_MAX_BODY_BYTES,
            queue: defaults::LIVE_QUEUE,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Journal file (appended), or `"-"` for standard output.
    #[serde(default = "defaults::audit_path")]
    pub path: PathBuf,
    /// Records queued for the writer or reserved by requests in flight and not yet
    /// written; when full (the journal cannot take records), consent routes answer
    /// `503 audit_unavailable` and other records are counted as dropped, never blocking.
    #[serde(default = "defaults::audit_buffer")]
    pub buffer: usize,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            path: defaults::audit_path(),
            buffer: defaults::audit_buffer(),
        }
    }
}

/// `[[participants]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantSection {
    /// 12-digit BIN.
    pub bin: Spanned<String>,
    /// Legal name (for operators; never used in decisions).
    pub name: String,
    /// `user`, `provider`, or both.
    pub roles: Vec<Role>,
    /// `active` | `suspended` | `isolated` | `terminated`.
    pub status: ParticipantStatus,
    /// Registered certificate thumbprints (`x5t#S256`, base64url unpadded).
    #[serde(default)]
    pub thumbprints: Vec<Spanned<String>>,
    /// Registered certificates as PEM files; their thumbprints are computed at load.
    #[serde(default)]
    pub certs: Vec<Spanned<PathBuf>>,
}

/// `[[providers]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// The provider participant's BIN.
    pub bin: Spanned<String>,
    /// Published in the catalogue; a delisted provider answers `503 provider_unavailable`.
    #[serde(default = "defaults::published")]
    pub published: bool,
    /// Base URLs (`https://host:port[/prefix]`); several are balanced round-robin.
    pub upstreams: Vec<Spanned<String>>,
    /// TLS server name to verify, when it differs from the URL's host. An empty name
    /// turns off the verification of the bank's certificate (as in pingora, where an empty
    /// SNI means "verify nothing") and is refused unless
    /// `insecure_skip_verify_for_development` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Development only: allows `sni = ""`, i.e. a bank whose certificate is not verified.
    /// Logged at WARN at every load.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify_for_development: bool,
    /// TCP + TLS connect timeout.
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// SLA: the longest the hub waits for the bank's answer before `504 provider_timeout`.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures after which a base URL is ejected.
    #[serde(default = "defaults::eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected base URL stays out of rotation.
    #[serde(default = "defaults::eject_secs")]
    pub eject_secs: u64,
}

/// The permissions the demo and docs mention, re-exported for callers building configs.
pub const ALL_PERMISSIONS: [Permission; 3] = [
    Permission::Accounts,
    Permission::Balances,
    Permission::Transactions,
];
