//! The trust sidecars as configured by `[trust]` ([`TrustPlane`]: where they are
//! ([`Endpoint`]), how to reach them, the row 7 bound, the heartbeat interval) and the
//! follower's progress as the rest of the gateway reads it ([`FeedStatus`]: freshness,
//! position, the endpoint followed, counters, the registry and keys in force).

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{ConfigError, Source, TrustSection};
use crate::network::Registry;
use crate::tls::{self, TlsError};

/// One trust sidecar endpoint: an `https://host[:port][/prefix]` base URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL as configured.
    pub url: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) authority: String,
    pub(crate) prefix: String,
    pub(crate) server_name: ServerName<'static>,
}

impl Endpoint {
    /// Parses a base URL: https, a host, no query, no credentials (the hub authenticates
    /// with its client certificate, and the URL appears in logs and the status).
    pub fn parse(url: &str) -> Result<Endpoint, PlaneError> {
        let uri: http::Uri = url.parse().map_err(|e| PlaneError::Url(format!("{e}")))?;
        if uri.scheme_str() != Some("https") || uri.query().is_some() {
            return Err(PlaneError::Url("scheme must be https, no query".into()));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| PlaneError::Url("no host".into()))?;
        if auth.as_str().contains('@') {
            return Err(PlaneError::Url(
                "no credentials in the URL (the hub authenticates with its client certificate)"
                    .into(),
            ));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| PlaneError::Url(format!("host: {e}")))?;
        Ok(Endpoint {
            url: url.to_string(),
            host: host.to_string(),
            port: auth.port_u16().unwrap_or(443),
            authority: auth.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
            server_name,
        })
    }

    /// An HTTP/1.1 connection to the endpoint over the hub's mTLS (`tls`: its client
    /// identity, the sidecars' CAs); a spawned task drives it while the sender lives.
    pub(crate) async fn connect<B>(
        &self,
        tls: &Arc<ClientConfig>,
    ) -> Result<hyper::client::conn::http1::SendRequest<B>, ConnectError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await?;
        let io = hyper_util::rt::TokioIo::new(tls);
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// `host:port`, how the status and logs name the endpoint.
    pub fn name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The sidecars as configured by `[trust]`: where they are and how to talk to them.
/// Rebuilt on every configuration load; the [`FeedStatus`] is carried over.
pub struct TrustPlane {
    /// The base URLs as configured, comma-separated (for logs).
    pub url: String,
    /// The endpoints, replicas of one database, in the order they are tried.
    pub endpoints: Vec<Endpoint>,
    pub(crate) tls: Arc<ClientConfig>,
    /// The row 7 bound.
    pub max_staleness: Duration,
    /// The sidecars' heartbeat interval: a feed silent for twice this long is stalled.
    pub heartbeat: Duration,
    /// The follower's progress and liveness, shared with the request path.
    pub status: Arc<FeedStatus>,
    /// Token keys come from the sidecar's JWKS.
    pub jwks: bool,
    /// Interval between JWKS refreshes.
    pub jwks_refresh: Duration,
    /// The earliest `notAfter` of the `[trust] ca` bundles (seconds since the epoch), for
    /// `hub_certificate_expiry_timestamp_seconds{certificate="trust_ca"}`.
    pub ca_not_after: Option<i64>,
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// TCP or TLS.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/1.1 handshake.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
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
    /// One sidecar at `url`: validates the URL and builds the client TLS configuration
    /// (the hub's client identity, the sidecar's CAs); heartbeat interval by default.
    pub fn new(
        url: &str,
        ca_pems: &[Vec<u8>],
        client_cert_pem: &[u8],
        client_key_pem: &[u8],
        max_staleness: Duration,
        status: Arc<FeedStatus>,
    ) -> Result<TrustPlane, PlaneError> {
        let endpoint = Endpoint::parse(url)?;
        let tls = Arc::new(client_config(ca_pems, client_cert_pem, client_key_pem)?);
        Ok(TrustPlane {
            url: url.to_string(),
            endpoints: vec![endpoint],
            tls,
            max_staleness,
            heartbeat: Duration::from_secs(crate::config::defaults::HEARTBEAT_SECS),
            status,
            jwks: false,
            jwks_refresh: Duration::from_secs(crate::config::defaults::JWKS_REFRESH_SECS),
            ca_not_after: None,
        })
    }

    /// The same plane over `endpoints` (replicas of one database, in the order they are
    /// tried; at least one), with the same TLS.
    fn with_endpoints(mut self, endpoints: Vec<Endpoint>) -> TrustPlane {
        if !endpoints.is_empty() {
            self.url = endpoints
                .iter()
                .map(|e| e.url.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.endpoints = endpoints;
        }
        self
    }

    /// The `[trust]` section compiled, every problem reported with the file, the line and
    /// the field: the CAs, the bounds, then each endpoint's URL. `identity` is the hub's
    /// `[upstream_tls]` client certificate and key (PEM); `feed` the process's status.
    pub fn from_section(
        src: &Source,
        t: &TrustSection,
        identity: (&[u8], &[u8]),
        feed: &Arc<FeedStatus>,
    ) -> Result<TrustPlane, ConfigError> {
        let anchor = t.anchor();
        if t.ca.is_empty() {
            return Err(src.invalid(anchor, "trust.ca", "at least one CA is required"));
        }
        let mut pems = Vec::with_capacity(t.ca.len());
        for (i, p) in t.ca.iter().enumerate() {
            pems.push(src.read_bytes(p, &format!("trust.ca[{i}]"))?);
        }
        src.bounded("trust.max_staleness_secs", t.max_staleness_secs)?;
        src.bounded("trust.heartbeat_secs", t.heartbeat_secs)?;
        src.bounded("trust.jwks_refresh_secs", t.jwks_refresh_secs)?;
        let mut endpoints = Vec::new();
        for (field, url) in t.endpoint_urls(src)? {
            let endpoint = Endpoint::parse(url.get_ref())
                .map_err(|e| src.invalid(url, &field, e.to_string()))?;
            endpoints.push(endpoint);
        }
        let first = endpoints.first().map(|e| e.url.clone()).unwrap_or_default();
        let max_staleness = Duration::from_secs(t.max_staleness_secs);
        let plane = TrustPlane::new(
            &first,
            &pems,
            identity.0,
            identity.1,
            max_staleness,
            feed.clone(),
        )
        .map_err(|e| match e {
            PlaneError::Url(_) => src.invalid(anchor, "trust.url", e.to_string()),
            PlaneError::Tls(_) => src.invalid(anchor, "trust.ca", e.to_string()),
        })?;
        let mut plane = plane.with_endpoints(endpoints);
        plane.heartbeat = Duration::from_secs(t.heartbeat_secs);
        plane.jwks = t.jwks;
        plane.jwks_refresh = Duration::from_secs(t.jwks_refresh_secs);
        plane.ca_not_after = tls::ca_ders(&pems)
            .and_then(|cas| tls::earliest_not_after(&cas))
            .map_err(|e| src.invalid(anchor, "trust.ca", e.to_string()))?;
        if plane.endpoints.len() > 1 && plane.heartbeat.saturating_mul(2) >= plane.max_staleness {
            tracing::warn!(
                heartbeat_secs = t.heartbeat_secs,
                max_staleness_secs = t.max_staleness_secs,
                "[trust] twice heartbeat_secs is not below max_staleness_secs: a stalled endpoint is left only after consent routes have gone stale"
            );
        }
        Ok(plane)
    }

    /// Contract §6 row 7: a snapshot has been loaded and some endpoint was heard from
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
/// Freshness is one clock for every endpoint: the last time any of them was heard
/// from, so consent routes go stale only when none has been within the bound.
pub struct FeedStatus {
    started: Instant,
    loaded: AtomicBool,
    last_heard_ms: AtomicU64,
    version: AtomicU64,
    resyncs: AtomicU64,
    reconnects: AtomicU64,
    participant_changes: AtomicU64,
    endpoint: AtomicUsize,
    endpoint_name: std::sync::Mutex<String>,
    endpoint_switches: AtomicU64,
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
            started: Instant::now(),
            loaded: AtomicBool::new(false),
            last_heard_ms: AtomicU64::new(0),
            version: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            participant_changes: AtomicU64::new(0),
            endpoint: AtomicUsize::new(0),
            endpoint_name: std::sync::Mutex::new(String::new()),
            endpoint_switches: AtomicU64::new(0),
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

    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    /// A sidecar was heard from, and what it said is in force: fresh from now.
    pub(crate) fn heard(&self) {
        self.heard_at(Instant::now());
    }

    /// [`FeedStatus::heard`] at `at` (never moves the clock back).
    pub(crate) fn heard_at(&self, at: Instant) {
        self.last_heard_ms
            .fetch_max(self.ms_at(at), Ordering::AcqRel);
    }

    /// The follower now uses endpoint `index` (`name`: its `host:port`); counted as a
    /// switch when `switched`.
    pub(crate) fn follow_endpoint(&self, index: usize, name: &str, switched: bool) {
        self.endpoint.store(index, Ordering::Relaxed);
        let mut current = self
            .endpoint_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != name {
            *current = name.to_string();
        }
        if switched {
            self.endpoint_switches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The endpoint the follower uses: its index in `[trust] urls` and its `host:port`
    /// (empty before the first connection).
    pub fn endpoint(&self) -> (usize, String) {
        let name = self
            .endpoint_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        (self.endpoint.load(Ordering::Relaxed), name)
    }

    /// Times the follower moved from one endpoint to another.
    pub fn endpoint_switches(&self) -> u64 {
        self.endpoint_switches.load(Ordering::Relaxed)
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

    /// Whether a snapshot is loaded and some endpoint was heard from within `bound`.
    pub fn is_fresh(&self, bound: Duration) -> bool {
        self.is_fresh_at(bound, Instant::now())
    }

    /// [`FeedStatus::is_fresh`] at `now`.
    pub(crate) fn is_fresh_at(&self, bound: Duration, now: Instant) -> bool {
        self.loaded.load(Ordering::Acquire) && self.staleness_at(now) <= bound
    }

    /// Time since an endpoint was last heard from (since start when never).
    pub fn staleness(&self) -> Duration {
        self.staleness_at(Instant::now())
    }

    fn staleness_at(&self, now: Instant) -> Duration {
        let last = self.last_heard_ms.load(Ordering::Acquire);
        Duration::from_millis(self.ms_at(now).saturating_sub(last))
    }

    /// Whether a snapshot has been loaded.
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
        let e = &p.endpoints[0];
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("trust.local", 7443, "/base")
        );
        let p = plane("https://127.0.0.1").unwrap();
        let e = &p.endpoints[0];
        assert_eq!((e.port, e.prefix.as_str()), (443, ""));
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

    #[test]
    fn stale_only_once_no_endpoint_has_been_heard_within_the_bound() {
        let s = FeedStatus::new();
        let bound = Duration::from_secs(30);
        let t0 = s.started;
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        s.loaded.store(true, Ordering::Release);
        s.follow_endpoint(0, "a:1", false);
        s.heard_at(at(10));
        // Endpoint 0 fails at 12 s; 1 is followed but has sent nothing yet: still fresh,
        // on what 0 said, until the bound has passed since then.
        s.follow_endpoint(1, "b:2", true);
        assert!(s.is_fresh_at(bound, at(39)));
        // 1 is heard at 20 s: the clock restarts from it, whichever endpoint it was.
        s.heard_at(at(20));
        assert!(s.is_fresh_at(bound, at(50)));
        // Both silent: stale once the bound has passed since the last of them.
        assert!(!s.is_fresh_at(bound, at(51)));
        assert_eq!(s.staleness_at(at(51)), Duration::from_secs(31));
        // A late report of an earlier line does not move the clock back.
        s.heard_at(at(15));
        assert!(s.is_fresh_at(bound, at(50)));
        assert_eq!(
            (s.endpoint(), s.endpoint_switches()),
            ((1, "b:2".into()), 1)
        );
    }

    #[test]
    fn endpoints_are_named_by_host_and_port_and_carry_no_credentials() {
        let e = Endpoint::parse("https://trust-2.local:7443/x").unwrap();
        assert_eq!(e.name(), "trust-2.local:7443");
        assert_eq!(
            Endpoint::parse("https://[::1]:9").unwrap().name(),
            "[::1]:9"
        );
        assert_eq!(
            Endpoint::parse("https://10.0.0.1").unwrap().name(),
            "10.0.0.1:443"
        );
        for bad in [
            "https://user:secret@trust.local:7443",
            "https://u@trust.local",
        ] {
            let e = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(e.contains("credentials") && !e.contains("secret"), "{e}");
        }
    }

    /// `[trust]` written to a file next to the development PKI's CA, compiled.
    fn compiled(trust: &str) -> Result<TrustPlane, ConfigError> {
        #[derive(serde::Deserialize)]
        struct TrustOnly {
            trust: TrustSection,
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = consent_cache::Bin::parse("100140000001").unwrap();
        let pki = sandbox::pki::DevPki::generate(
            dir.path(),
            &sandbox::pki::PkiSpec::new(vec![bin], vec![]),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_cert_pem()).unwrap();
        let text = format!("[trust]\n{trust}ca = [\"ca.pem\"]\n");
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, &text).unwrap();
        let src = Source::read(&path).unwrap();
        let t = toml::from_str::<TrustOnly>(&text).unwrap().trust;
        let hub = pki.hub_client();
        let identity = (hub.cert_pem.as_bytes(), hub.key_pem.as_bytes());
        TrustPlane::from_section(&src, &t, identity, &Arc::new(FeedStatus::new()))
    }

    fn refused(trust: &str) -> (usize, String, String) {
        match compiled(trust) {
            Err(ConfigError::Invalid {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted: {trust}"),
        }
    }

    #[test]
    fn a_section_compiles_to_its_endpoints_in_order() {
        let p = compiled("urls = [\"https://127.0.0.1:7001\", \"https://127.0.0.2:7002/t\"]\nheartbeat_secs = 1\njwks = true\n").unwrap();
        let names: Vec<String> = p.endpoints.iter().map(Endpoint::name).collect();
        assert_eq!(names, vec!["127.0.0.1:7001", "127.0.0.2:7002"]);
        assert_eq!(p.endpoints[1].prefix, "/t");
        assert_eq!((p.heartbeat, p.jwks), (Duration::from_secs(1), true));
        assert_eq!(p.url, "https://127.0.0.1:7001, https://127.0.0.2:7002/t");
        let p = compiled("url = \"https://127.0.0.1:7001\"\n").unwrap();
        assert_eq!(p.endpoints.len(), 1);
        assert_eq!(p.heartbeat, Duration::from_secs(5));
    }

    #[test]
    fn a_malformed_endpoint_or_bound_is_refused_with_its_line_and_field() {
        let (line, field, message) =
            refused("urls = [\n  \"https://127.0.0.1:7001\",\n  \"http://127.0.0.1:7002\",\n]\n");
        assert_eq!((line, field.as_str()), (4, "trust.urls[1]"));
        assert!(message.contains("https"), "{message}");
        let (line, field, _) = refused("url = \"https://127.0.0.1:1/?q\"\n");
        assert_eq!((line, field.as_str()), (2, "trust.url"));
        // At the bound's own line (3), not the section's first URL (2).
        let (line, field, _) = refused("urls = [\"https://a:1\"]\nheartbeat_secs = 0\n");
        assert_eq!((line, field.as_str()), (3, "trust.heartbeat_secs"));
        for (bound, want, range) in [
            (
                "max_staleness_secs = 99999999999",
                "trust.max_staleness_secs",
                "1 to 3600 ",
            ),
            (
                "jwks_refresh_secs = 0",
                "trust.jwks_refresh_secs",
                "1 to 86400 ",
            ),
        ] {
            let (line, field, message) = refused(&format!("url = \"https://a:1\"\n{bound}\n"));
            assert_eq!((line, field.as_str()), (3, want));
            assert!(message.contains(range), "{message}");
        }
        let (_, field, _) = refused("url = \"https://a:1\"\nurls = [\"https://b:1\"]\n");
        assert_eq!(field, "trust.urls");
    }
}
