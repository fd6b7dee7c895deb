//! The hub's configuration file: serde DTOs parsed strictly from TOML (unknown keys
//! are errors). They are never used on the request path: `snapshot` compiles them
//! into a validated runtime snapshot. Every error names the file, the line and the field.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

use consent_cache::{Bin, Permission};
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
    /// The file or a value in it is invalid.
    #[error("{file}:{line}: {field}: {message}")]
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

/// The whole configuration file.
#[derive(Debug, Deserialize)]
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
    #[serde(default)]
    pub consents: ConsentSection,
    /// Consents followed live from the trust sidecar.
    #[serde(default)]
    pub trust: Option<TrustSection>,
    /// The audit journal.
    #[serde(default)]
    pub audit: AuditSection,
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The HTTPS listener for API users, e.g. `"127.0.0.1:8443"`.
    pub listen: Spanned<String>,
    /// The plain-HTTP admin listener (metrics, health, reload); loopback by default.
    #[serde(default = "default_admin")]
    pub admin_listen: Spanned<String>,
    /// Worker threads; default: the machine's cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Request header block limit in bytes; larger gets `431`.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Request body limit in bytes; larger gets `413`.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Share work between worker threads (tokio work stealing). Off by default: one
    /// runtime per thread avoids cross-thread wake-ups, which a profile showed to cost
    /// more than the balancing gains on this workload.
    #[serde(default)]
    pub work_stealing: bool,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 is always offered).
    #[serde(default = "yes")]
    pub http2: bool,
    /// Seconds to keep serving after SIGTERM before closing listeners.
    #[serde(default = "default_grace")]
    pub grace_period_secs: u64,
    /// Seconds in-flight requests get to finish at shutdown.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// Idle pooled connections kept per worker towards banks.
    #[serde(default = "default_pool")]
    pub upstream_keepalive_pool_size: usize,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
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
}

/// `[upstream_tls]`
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    /// JWKS file with the authorization server's public keys. With `[trust] jwks = true`
    /// it is the start-up set, replaced by the sidecar's once fetched.
    pub jwks: Spanned<PathBuf>,
    /// Expected `iss`.
    pub issuer: Spanned<String>,
    /// Expected `aud` (the hub's audience).
    pub audience: Spanned<String>,
    /// Clock skew tolerance for `exp`, `nbf`, `iat`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Largest accepted token.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// Verified tokens kept in memory.
    #[serde(default = "default_token_cache")]
    pub cache_capacity: usize,
}

/// `[consents]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSection {
    /// Snapshot file (`.jsonl` or `.snap`); reloaded with the configuration. Exactly one
    /// of this and `[trust]` is set.
    #[serde(default)]
    pub snapshot: Option<Spanned<PathBuf>>,
}

/// `[trust]`: the trust sidecar as the consent control plane (snapshot + change feed).
/// The hub authenticates with its `[upstream_tls]` client identity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    /// The sidecar's https base URL, e.g. `"https://127.0.0.1:7443"`.
    pub url: Spanned<String>,
    /// CA bundle(s) verifying the sidecar's server certificate.
    pub ca: Vec<Spanned<PathBuf>>,
    /// Consent routes answer `503 consent_state_stale` once the sidecar has not been
    /// heard from for longer than this (contract §6 row 7).
    #[serde(default = "default_max_staleness")]
    pub max_staleness_secs: u64,
    /// Take the token keys from `{url}/.well-known/jwks.json`: fetched at start, every
    /// `jwks_refresh_secs` and when a token names an unknown `kid`; the last good set is
    /// kept when a fetch fails.
    #[serde(default)]
    pub jwks: bool,
    /// Seconds between JWKS refreshes.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
}

/// `[audit]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Journal file (appended), or `"-"` for standard output.
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// Records buffered between the request path and the writer; when full, records are
    /// counted as dropped rather than blocking requests.
    #[serde(default = "default_audit_buffer")]
    pub buffer: usize,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            path: default_audit_path(),
            buffer: default_audit_buffer(),
        }
    }
}

/// `[[participants]]`
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// The provider participant's BIN.
    pub bin: Spanned<String>,
    /// Published in the catalogue; a delisted provider answers `503 provider_unavailable`.
    #[serde(default = "yes")]
    pub published: bool,
    /// Base URLs (`https://host:port[/prefix]`); several are balanced round-robin.
    pub upstreams: Vec<Spanned<String>>,
    /// TLS server name to verify, when it differs from the URL's host.
    #[serde(default)]
    pub sni: Option<String>,
    /// TCP + TLS connect timeout.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// SLA: the longest the hub waits for the bank's answer before `504 provider_timeout`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures after which a base URL is ejected.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected base URL stays out of rotation.
    #[serde(default = "default_eject_secs")]
    pub eject_secs: u64,
}

fn yes() -> bool {
    true
}
fn default_admin() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_string())
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_grace() -> u64 {
    1
}
fn default_shutdown_timeout() -> u64 {
    10
}
fn default_pool() -> usize {
    1024
}
fn default_leeway() -> u64 {
    30
}
fn default_max_token() -> usize {
    8 * 1024
}
fn default_token_cache() -> usize {
    100_000
}
fn default_max_staleness() -> u64 {
    30
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_audit_path() -> PathBuf {
    PathBuf::from("-")
}
fn default_audit_buffer() -> usize {
    65_536
}
fn default_connect_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_eject_after() -> u32 {
    3
}
fn default_eject_secs() -> u64 {
    10
}

/// A parsed file with what is needed to point at lines in it.
pub struct Source {
    /// The file as given.
    pub path: PathBuf,
    /// Its directory, against which relative paths in it are resolved.
    pub dir: PathBuf,
    text: String,
}

impl Source {
    /// Reads a configuration file.
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Source {
            path: path.to_path_buf(),
            dir,
            text,
        })
    }

    /// Parses the text strictly.
    pub fn parse(&self) -> Result<FileConfig, ConfigError> {
        toml::from_str::<FileConfig>(&self.text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let line = self.line_of(offset);
            let field = self.key_on_line(line).unwrap_or_else(|| "-".to_string());
            ConfigError::Invalid {
                file: self.path.clone(),
                line,
                field,
                message: e.message().trim().to_string(),
            }
        })
    }

    /// 1-based line number of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn key_on_line(&self, line: usize) -> Option<String> {
        let l = self.text.lines().nth(line.checked_sub(1)?)?;
        let key = l.split('=').next()?.trim();
        if key.is_empty() {
            None
        } else {
            Some(key.trim_matches(|c| c == '[' || c == ']').to_string())
        }
    }

    /// An error pointing at a spanned value.
    pub fn invalid<T>(
        &self,
        at: &Spanned<T>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = at.span();
        ConfigError::Invalid {
            file: self.path.clone(),
            line: if span.end == 0 {
                0
            } else {
                self.line_of(span.start)
            },
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// An error not tied to a line.
    pub fn invalid_here(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.path.clone(),
            line: 0,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Resolves a configured path against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Reads a file named by a spanned path, with the error pointing at the value.
    pub fn read_bytes(&self, p: &Spanned<PathBuf>, field: &str) -> Result<Vec<u8>, ConfigError> {
        let full = self.resolve(p.get_ref());
        std::fs::read(&full)
            .map_err(|e| self.invalid(p, field, format!("cannot read {}: {e}", full.display())))
    }

    /// Parses a spanned BIN.
    pub fn bin(&self, s: &Spanned<String>, field: &str) -> Result<Bin, ConfigError> {
        Bin::parse(s.get_ref()).map_err(|e| self.invalid(s, field, e.to_string()))
    }

    /// Parses a spanned socket address.
    pub fn socket_addr(&self, s: &Spanned<String>, field: &str) -> Result<SocketAddr, ConfigError> {
        s.get_ref()
            .parse()
            .map_err(|e| self.invalid(s, field, format!("not an ip:port address: {e}")))
    }
}

/// The permissions the demo and docs mention, re-exported for callers building configs.
pub const ALL_PERMISSIONS: [Permission; 3] = [
    Permission::Accounts,
    Permission::Balances,
    Permission::Transactions,
];
