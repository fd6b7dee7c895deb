//! The runtime snapshot: everything the request path reads, compiled from its inputs
//! (the configuration file, the participant registry from the feed, the keys fetched
//! from the sidecar) into one immutable value and published with one `ArcSwap` by the
//! [`Publisher`], the only writer. Every event (SIGHUP, `POST /admin/reload`, a registry
//! change, a JWKS fetch, a changed consent file) updates its input and republishes
//! through [`Publisher::publish`]; nothing edits a published snapshot.
//!
//! Long-lived state lives outside the snapshot and is reused by key when its inputs did
//! not change: the rate limiters and their counters (by `[limits]`), the upstream pools
//! and their ejection state (by URL and settings, see `network`), the token verifier and
//! its cache (by settings and key set), the consent store that the feed updates in place
//! and a consent file replaces (one per process), the consent file's status, the
//! follower's status, the audit journal.

pub mod consents;
mod live;
mod publish;
mod references;
mod rollups;
pub mod sections;
#[cfg(test)]
mod tests;

use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use crate::limits::Limits;
use arc_swap::ArcSwap;
use consent_cache::ConsentStore;
use policy::code::Code;
use policy::route::RouteId;
use policy::token::{TokenSettings, TokenVerifier};

use crate::audit::{Journal, Slot};
use crate::config::ConfigError;
use crate::network::Network;
use crate::plane::{FeedStatus, TrustPlane};

pub use consents::{Backoff, ConsentFile, ConsentFileStatus};
pub use publish::{Change, PublishError, Published, Publisher};
pub use sections::{ControlPlane, FileInputs};

/// What the request path reads; immutable once published.
pub struct Snapshot {
    file: Arc<FileInputs>,
    network: Arc<Network>,
    tokens: Arc<TokenVerifier>,
    /// What `tokens` was built from (to reuse it, and its cache, when unchanged).
    tokens_key: (TokenSettings, Arc<[u8]>),
    consents: Arc<ArcSwap<ConsentStore>>,
    consent_file: Arc<ConsentFileStatus>,
    journal: Arc<OnceLock<Journal>>,
}

impl Snapshot {
    /// The participant directory and upstream pools.
    pub fn network(&self) -> Arc<Network> {
        self.network.clone()
    }

    /// The access-token verifier.
    pub fn tokens(&self) -> Arc<TokenVerifier> {
        self.tokens.clone()
    }

    /// The consent store in force (the feed updates it in place; a consent file reload
    /// replaces it).
    pub fn consents(&self) -> arc_swap::Guard<Arc<ConsentStore>> {
        self.consents.load()
    }

    /// The rate limits and monthly quotas.
    pub(crate) fn limits(&self) -> &Limits {
        &self.file.limits
    }

    /// The trust sidecar, when it is the consent control plane.
    pub fn trust(&self) -> Option<&Arc<TrustPlane>> {
        self.file.trust()
    }

    /// A token named an unknown `kid`: ask the sidecar for fresh keys (`[trust] jwks`).
    pub fn want_jwks(&self) {
        if let Some(plane) = self.trust() {
            plane.status.want_jwks();
        }
    }

    /// Request header block limit.
    pub fn max_header_bytes(&self) -> usize {
        self.file.max_header_bytes
    }

    /// Request body limit.
    pub fn max_body_bytes(&self) -> usize {
        self.file.max_body_bytes
    }

    /// What the request path needs of `[live_checks]`.
    pub(crate) fn live_sampling(&self) -> crate::live::Sampling {
        self.file.live.sampling()
    }

    /// The configuration file's share of the inputs.
    pub fn file(&self) -> &FileInputs {
        &self.file
    }

    /// Contract §6 row 7: the sidecar's state is fresh once a snapshot is loaded and
    /// while the feed is heard within its bound; a consent file's, unless a change on disk
    /// has failed to load for longer than `[consents] max_staleness_secs`.
    pub fn consent_state_fresh(&self) -> bool {
        match &self.file.control {
            ControlPlane::Trust(plane) => plane.is_fresh(),
            ControlPlane::File { max_staleness, .. } => {
                self.consent_file.is_fresh(*max_staleness, Instant::now)
            }
        }
    }

    /// A consent route's place in the audit journal, taken before it is admitted, so that
    /// no customer data is served unrecorded: `Err(audit_unavailable)` while the journal
    /// cannot take records (or none is open). Open data needs none (`Ok(None)`).
    pub fn journal_slot(&self, route: RouteId) -> Result<Option<Slot>, Code> {
        if route.is_open_data() {
            return Ok(None);
        }
        self.journal
            .get()
            .and_then(Journal::reserve)
            .map(Some)
            .ok_or(Code::AuditUnavailable)
    }

    /// One line for logs and `gateway check`.
    pub fn summary(&self) -> String {
        let p = &self.file.process;
        let source = match self.trust() {
            Some(plane) => format!("consents from {}", plane.url),
            None => format!("{} consents", self.consents.load().len()),
        };
        let (participants, providers) = (
            self.network.directory.participants().len(),
            self.network.upstreams.len(),
        );
        // In `[trust]` mode the registry's participants and providers arrive with the
        // sidecar's first snapshot, after the configuration is loaded: until then the
        // counts are only the file's, and say so.
        let network = match self.trust() {
            Some(t) if t.status.registry().is_some() => format!(
                "{participants} participants ({} from the trust registry), {providers} providers",
                self.network.from_registry
            ),
            Some(_) => format!(
                "{participants} participants and {providers} providers from the file \
                 (the trust registry's participants and providers arrive with the sidecar's first snapshot)"
            ),
            None => format!("{participants} participants, {providers} providers"),
        };
        format!(
            "{network}, {source}, listen {}, admin {}",
            p.listen, p.admin_listen
        )
    }
}

/// Where binary upgrades hand the listening sockets over (`[server] upgrade_sock`).
#[derive(Debug, Clone, PartialEq)]
pub enum UpgradeSock {
    /// The unix socket's absolute path.
    At(PathBuf),
    /// None: why (`gateway run --upgrade` is refused with it); `warn` when an operator
    /// would not expect it (logged at start, listed by `gateway check`).
    Unavailable {
        /// Why there is no upgrade socket.
        reason: String,
        /// Whether to say so at start.
        warn: bool,
    },
}

impl UpgradeSock {
    /// The socket's path, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::At(p) => Some(p),
            Self::Unavailable { .. } => None,
        }
    }
}

/// Settings that only take effect at process start.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    /// API listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Worker threads.
    pub threads: usize,
    /// Offer h2.
    pub http2: bool,
    /// Tokio work stealing between worker threads.
    pub work_stealing: bool,
    /// Grace period at SIGTERM.
    pub grace_period_secs: u64,
    /// In-flight budget at shutdown.
    pub shutdown_timeout_secs: u64,
    /// Upstream keep-alive pool size.
    pub upstream_keepalive_pool_size: usize,
    /// From accept to a completed TLS handshake on the API listener.
    pub tls_handshake_timeout: std::time::Duration,
    /// API connections open at once.
    pub max_connections: usize,
    /// Audit journal destination.
    pub audit_path: PathBuf,
    /// Where a new process started with `--upgrade` receives the listening sockets
    /// (`[server] upgrade_sock`, absolute), or why there is no such place.
    pub upgrade_sock: UpgradeSock,
    /// Audit buffer.
    pub audit_buffer: usize,
    /// `[rollups]`, when on.
    pub rollups: Option<crate::rollup::RollupSettings>,
    /// The hub's client certificate towards banks (read by the connector at start).
    pub upstream_cert: PathBuf,
    /// Its key.
    pub upstream_key: PathBuf,
    /// The banks' CA bundle files.
    pub upstream_ca: Vec<PathBuf>,
}

/// Downstream TLS material.
#[derive(Clone)]
pub struct TlsMaterial {
    /// mTLS trust (platform CAs + CRLs), with what identifies its material.
    pub verifier: crate::tls::ClientTrust,
    /// The hub's server certificate.
    pub cert: Arc<CertifiedKey>,
}

/// Identifies a file's content cheaply, to skip reloading an unchanged consent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            path: path.to_path_buf(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// Validates a configuration file the way a start would, without starting anything
/// (`gateway check`); returns the summary of what it would serve.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    check_report(path).map(|c| c.summary)
}

/// What `gateway check` reports about a valid file.
#[derive(Debug, Clone)]
pub struct Checked {
    /// What it would serve (one line).
    pub summary: String,
    /// What the trust registry would replace (`[trust]` mode), file, line and field each.
    pub warnings: Vec<String>,
}

/// [`check`] with the file's warnings.
pub fn check_report(path: &Path) -> Result<Checked, ConfigError> {
    let file = sections::load(path, None, &Arc::new(FeedStatus::new()))?;
    let mut warnings = file.warnings.clone();
    if let UpgradeSock::Unavailable { reason, warn: true } = &file.process.upgrade_sock {
        warnings.push(format!("{}: {reason}", path.display()));
    }
    let summary = Publisher::new(file, Arc::new(FeedStatus::new()))
        .current()
        .summary();
    Ok(Checked { summary, warnings })
}
