//! The sidecar as configured by `[trust]` ([`TrustPlane`]: where it is, how to reach it,
//! the row 7 bound) and the follower's progress as the rest of the gateway reads it
//! ([`FeedStatus`]: freshness, position, counters, the registry and keys in force).

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::network::Registry;
use crate::tls::{self, TlsError};

/// The sidecar as configured by `[trust]`: where it is and how to talk to it. Rebuilt
/// on every configuration load; the [`FeedStatus`] is carried over.
pub struct TrustPlane {
    /// Base URL as configured (for logs).
    pub url: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) authority: String,
    pub(crate) prefix: String,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) tls: Arc<ClientConfig>,
    /// The row 7 bound.
    pub max_staleness: Duration,
    /// The follower's progress and liveness, shared with the request path.
    pub status: Arc<FeedStatus>,
    /// Token keys come from the sidecar's JWKS.
    pub jwks: bool,
    /// Interval between JWKS refreshes.
    pub jwks_refresh: Duration,
}

/// Why a `[trust]` section was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The URL is not an `https://host[:port][/prefix]` base URL.
    #[error("not an https base URL (https://host[:port][/prefix]): {0}")]
    Url(String),
    /// TLS material refused.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

impl TrustPlane {
    /// Validates the URL and builds the client TLS configuration (the hub's client
    /// identity, the sidecar's CAs).
    pub fn new(
        url: &str,
        ca_pems: &[Vec<u8>],
        client_cert_pem: &[u8],
        client_key_pem: &[u8],
        max_staleness: Duration,
        status: Arc<FeedStatus>,
    ) -> Result<TrustPlane, PlaneError> {
        let uri: http::Uri = url.parse().map_err(|e| PlaneError::Url(format!("{e}")))?;
        if uri.scheme_str() != Some("https") || uri.query().is_some() {
            return Err(PlaneError::Url("scheme must be https, no query".into()));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| PlaneError::Url("no host".into()))?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let port = auth.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| PlaneError::Url(format!("host: {e}")))?;
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(TrustPlane {
            url: url.to_string(),
            host: host.to_string(),
            port,
            authority: auth.as_str().to_string(),
            prefix,
            server_name,
            tls: Arc::new(client_config(ca_pems, client_cert_pem, client_key_pem)?),
            max_staleness,
            status,
            jwks: false,
            jwks_refresh: Duration::from_secs(300),
        })
    }

    /// Contract §6 row 7: a snapshot has been loaded and the sidecar was heard from
    /// within the bound.
    pub fn is_fresh(&self) -> bool {
        self.status.is_fresh(self.max_staleness)
    }
}

/// The client side of the sidecar's mTLS: the hub's identity, the sidecar's CAs, HTTP/1.1.
fn client_config(
    ca_pems: &[Vec<u8>],
    client_cert_pem: &[u8],
    client_key_pem: &[u8],
) -> Result<ClientConfig, PlaneError> {
    let mut roots = RootCertStore::empty();
    for pem in ca_pems {
        for c in tls::certs_from_pem(pem)? {
            roots
                .add(c)
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        }
    }
    let certs = tls::certs_from_pem(client_cert_pem)?;
    let key = tls::key_from_pem(client_key_pem)?;
    let mut cfg = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The follower's progress, read by the request path (freshness) and `/metrics`.
pub struct FeedStatus {
    epoch: Instant,
    loaded: AtomicBool,
    last_heard_ms: AtomicU64,
    version: AtomicU64,
    resyncs: AtomicU64,
    reconnects: AtomicU64,
    participant_changes: AtomicU64,
    registry: std::sync::Mutex<Option<Arc<Registry>>>,
    jwks_wanted: tokio::sync::Notify,
}

impl Default for FeedStatus {
    fn default() -> Self {
        FeedStatus::new()
    }
}

impl FeedStatus {
    /// Nothing loaded yet: stale.
    pub fn new() -> FeedStatus {
        FeedStatus {
            epoch: Instant::now(),
            loaded: AtomicBool::new(false),
            last_heard_ms: AtomicU64::new(0),
            version: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            participant_changes: AtomicU64::new(0),
            registry: std::sync::Mutex::new(None),
            jwks_wanted: tokio::sync::Notify::new(),
        }
    }

    /// Asks for a JWKS refresh (a token named an unknown `kid`); requests coalesce.
    pub fn want_jwks(&self) {
        self.jwks_wanted.notify_one();
    }

    /// Wakes the key-refresh loop when [`FeedStatus::want_jwks`] was called.
    pub(crate) fn jwks_wanted(&self) -> &tokio::sync::Notify {
        &self.jwks_wanted
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The sidecar was heard from, and what it said is in force: fresh from now.
    pub(crate) fn heard(&self) {
        self.last_heard_ms.store(self.now_ms(), Ordering::Release);
    }

    /// A snapshot at `version` is in force: fresh from now; counted as a resync unless
    /// it is the first.
    pub(crate) fn snapshot_installed(&self, version: u64) {
        self.version.store(version, Ordering::Relaxed);
        self.heard();
        if self.loaded.swap(true, Ordering::AcqRel) {
            self.resyncs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The consent store now reflects the feed up to `version`.
    pub(crate) fn set_version(&self, version: u64) {
        self.version.store(version, Ordering::Relaxed);
    }

    /// A connection to the sidecar was lost or refused.
    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Participant changes read from the feed.
    pub(crate) fn count_participant_changes(&self, n: u64) {
        self.participant_changes.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether a snapshot is loaded and the sidecar was heard from within `bound`.
    pub fn is_fresh(&self, bound: Duration) -> bool {
        self.loaded.load(Ordering::Acquire) && self.staleness() <= bound
    }

    /// Time since the sidecar was last heard from (since start when never).
    pub fn staleness(&self) -> Duration {
        let now = self.now_ms();
        let last = self.last_heard_ms.load(Ordering::Acquire);
        Duration::from_millis(now.saturating_sub(last))
    }

    /// Whether a snapshot has been loaded.
    #[cfg(test)]
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The feed position the consent store reflects.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Snapshot reloads after the first (gaps, `resync`, `410`, unappliable changes).
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// Connections lost or refused.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Participant changes applied from the feed.
    pub fn participant_changes(&self) -> u64 {
        self.participant_changes.load(Ordering::Relaxed)
    }

    /// Records the participant registry now in force.
    pub fn set_registry(&self, registry: Arc<Registry>) {
        *self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(registry);
    }

    /// The participant registry as last loaded from the sidecar (none before the first
    /// snapshot).
    pub fn registry(&self) -> Option<Arc<Registry>> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_only_once_loaded_and_while_heard_within_the_bound() {
        let s = FeedStatus::new();
        assert!(!s.is_fresh(Duration::from_secs(30)), "nothing loaded yet");
        s.heard();
        assert!(
            !s.is_fresh(Duration::from_secs(30)),
            "heard, but no snapshot"
        );
        s.loaded.store(true, Ordering::Release);
        assert!(s.is_fresh(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !s.is_fresh(Duration::from_millis(5)),
            "silent past the bound"
        );
        assert!(s.staleness() >= Duration::from_millis(20));
        s.heard();
        assert!(s.is_fresh(Duration::from_millis(5)));
    }

    #[test]
    fn a_snapshot_counts_as_a_resync_only_after_the_first() {
        let s = FeedStatus::new();
        s.snapshot_installed(7);
        assert!(s.loaded() && s.is_fresh(Duration::from_secs(30)));
        assert_eq!((s.version(), s.resyncs()), (7, 0));
        s.snapshot_installed(9);
        assert_eq!((s.version(), s.resyncs()), (9, 1));
    }

    #[test]
    fn trust_url_must_be_an_https_base_url() {
        let dir = tempfile::tempdir().unwrap();
        let bin = consent_cache::Bin::parse("100140000001").unwrap();
        let pki = sandbox::pki::DevPki::generate(
            dir.path(),
            &sandbox::pki::PkiSpec::new(vec![bin], vec![]),
        )
        .unwrap();
        let ca = vec![pki.ca_cert_pem().as_bytes().to_vec()];
        let (cert, key) = (
            pki.hub_client().cert_pem.as_bytes(),
            pki.hub_client().key_pem.as_bytes(),
        );
        let plane = |url: &str| {
            TrustPlane::new(
                url,
                &ca,
                cert,
                key,
                Duration::from_secs(30),
                Arc::new(FeedStatus::new()),
            )
        };
        let p = plane("https://trust.local:7443/base/").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.prefix.as_str()),
            ("trust.local", 7443, "/base")
        );
        let p = plane("https://127.0.0.1").unwrap();
        assert_eq!((p.port, p.prefix.as_str()), (443, ""));
        for bad in [
            "http://127.0.0.1:7443",
            "https://127.0.0.1:7443/?x=1",
            "127.0.0.1:7443",
            "",
        ] {
            assert!(plane(bad).is_err(), "{bad}");
        }
        assert!(!p.is_fresh());
    }
}
