//! The trust feed follower (`[trust]` mode): loads `GET /v1/snapshot` from the trust
//! sidecar into a fresh `ConsentStore` and participant [`Registry`], then follows
//! `GET /v1/feed?since=…` (NDJSON) and applies consent changes to that store, which the
//! request path reads through `Snapshot::consents`, and participant changes to the
//! registry, from which it rebuilds the participant directory and provider pools
//! (`Snapshot::network`, see `network` for how the registry and the file combine) and
//! swaps them in before reading further: a participant suspended in the sidecar is
//! refused from the request after the change arrives. It tracks when the sidecar was last heard from, for contract
//! §6 row 7 (`503 consent_state_stale`), and the feed position, so a disconnect resumes
//! with no gap and no duplicate. A gap, a `resync` line, a `410` or a change the store
//! cannot apply reloads the snapshot (the previous store keeps serving meanwhile).
//!
//! Authentication: the hub's `[upstream_tls]` client certificate; the sidecar's server
//! certificate is verified against `[trust] ca`.
//!
//! With `[trust] jwks = true` the same service also keeps the token keys: it fetches
//! `{url}/.well-known/jwks.json` at start, every `jwks_refresh_secs`, and when a token
//! names an unknown `kid` (one fetch at a time, at most one a second); a failed fetch
//! or an unusable set keeps the last good keys.
//!
//! A participant line that does not decode (an unknown role or status, say) but names a
//! BIN is applied as "undecodable": that participant is kept inactive (fail closed) and
//! the feed goes on. A line that does not even name a BIN ends the connection like any
//! other unreadable line.

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use consent_cache::{Bin, Change, ConsentRecord, ConsentStore};
use feed_wire::{FeedLine, SnapshotLine};

use crate::network::Registry;
use crate::state::State;
use crate::tls::{self, TlsError};

/// First wait after a failed connection; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Retry of a failed JWKS fetch (the keys change rarely; an unknown `kid` asks at once).
const JWKS_RETRY: Duration = Duration::from_secs(2);
/// TCP + TLS + response headers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A line longer than this is refused (a consent record is at most a few hundred KiB).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// A feed connection silent for this long (no heartbeat) is dropped and reopened.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The sidecar as configured by `[trust]`: where it is and how to talk to it. Rebuilt
/// on every configuration load; the [`FeedStatus`] is carried over.
pub struct TrustPlane {
    /// Base URL as configured (for logs).
    pub url: String,
    host: String,
    port: u16,
    authority: String,
    prefix: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
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
        Ok(TrustPlane {
            url: url.to_string(),
            host: host.to_string(),
            port,
            authority: auth.as_str().to_string(),
            prefix,
            server_name,
            tls: Arc::new(cfg),
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
    jwks: std::sync::Mutex<Option<Arc<[u8]>>>,
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
            jwks: std::sync::Mutex::new(None),
            jwks_wanted: tokio::sync::Notify::new(),
        }
    }

    /// The last JWKS document fetched from the sidecar and in force.
    pub fn last_jwks(&self) -> Option<Arc<[u8]>> {
        self.jwks.lock().ok().and_then(|g| g.clone())
    }

    /// Asks for a JWKS refresh (a token named an unknown `kid`); requests coalesce.
    pub fn want_jwks(&self) {
        self.jwks_wanted.notify_one();
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn heard(&self) {
        self.last_heard_ms.store(self.now_ms(), Ordering::Release);
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

    /// Records the JWKS document now in force.
    pub fn set_jwks(&self, bytes: Arc<[u8]>) {
        if let Ok(mut g) = self.jwks.lock() {
            *g = Some(bytes);
        }
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

/// Why a snapshot load or a feed connection ended.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("unexpected status {0}")]
    Status(u16),
    #[error("line {0}: {1}")]
    Parse(u64, String),
    #[error("stream ended")]
    Ended,
    #[error("snapshot cut short or inconsistent: {0}")]
    BadSnapshot(String),
    #[error("snapshot needed: {0}")]
    NeedSnapshot(String),
}

struct Position {
    store_id: String,
    version: u64,
}

/// The pingora background service that runs the follower until shutdown.
pub struct Follower {
    state: Arc<State>,
}

impl Follower {
    /// Follows the sidecar of the state's `[trust]` configuration.
    pub fn new(state: Arc<State>) -> Follower {
        Follower { state }
    }
}

#[async_trait]
impl BackgroundService for Follower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = async {
                tokio::join!(follow(self.state.clone()), keep_keys(self.state.clone()))
            } => {}
        }
    }
}

async fn follow(state: Arc<State>) {
    let mut pos: Option<Position> = None;
    let mut backoff = MIN_BACKOFF;
    loop {
        // Only the pieces needed are kept, not the whole snapshot (which a reload replaces).
        let (plane, store) = {
            let snap = state.snapshot.load();
            match &snap.trust {
                Some(plane) => (plane.clone(), snap.consents.clone()),
                None => {
                    tracing::warn!("no [trust] section any more: the consent feed follower stops");
                    return;
                }
            }
        };
        let plane = &*plane;
        let status = plane.status.clone();
        if pos.is_none() {
            match load_snapshot(plane, status.registry()).await {
                Ok((new_store, registry, p)) => {
                    let was_loaded = status.loaded();
                    tracing::info!(
                        version = p.version,
                        consents = new_store.len(),
                        participants = registry.len(),
                        "snapshot loaded from the trust sidecar"
                    );
                    state.publish_registry(Arc::new(registry)).await;
                    store.store(Arc::new(new_store));
                    status.version.store(p.version, Ordering::Relaxed);
                    status.heard();
                    status.loaded.store(true, Ordering::Release);
                    if was_loaded {
                        status.resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    pos = Some(p);
                }
                Err(e) => {
                    tracing::warn!(error = %e, url = %plane.url, "consent snapshot load failed; retrying");
                    status.reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let Some(p) = pos.as_mut() else { continue };
        let mut heard_any = false;
        let outcome = follow_feed(&state, plane, &store, &status, p, &mut heard_any).await;
        if heard_any {
            backoff = MIN_BACKOFF;
        }
        match outcome {
            Err(FollowError::NeedSnapshot(why)) => {
                tracing::warn!(reason = %why, "consent feed: reloading the snapshot");
                pos = None;
                if !heard_any {
                    // E.g. a 410 right after a fresh snapshot: do not spin.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            Err(e) => {
                tracing::info!(error = %e, version = p.version, "consent feed disconnected; resuming");
                status.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Ok(()) => {}
        }
    }
}

/// Least time between two JWKS fetches (an unknown `kid` is chosen by the caller).
const MIN_JWKS_INTERVAL: Duration = Duration::from_secs(1);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Keeps the token verifier's keys in step with the sidecar's JWKS.
async fn keep_keys(state: Arc<State>) {
    loop {
        let snap = state.snapshot.load_full();
        let Some(plane) = snap.trust.as_ref() else {
            return;
        };
        if !plane.jwks {
            // Turned on by a later reload, perhaps.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let (status, refresh) = (plane.status.clone(), plane.jwks_refresh);
        let wait = match fetch_jwks(plane).await {
            Ok(bytes) => {
                state.publish_jwks(bytes).await;
                refresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS fetch from the trust sidecar failed; keeping the last good keys");
                refresh.min(JWKS_RETRY)
            }
        };
        drop(snap);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = status.jwks_wanted.notified() => {}
        }
        tokio::time::sleep(MIN_JWKS_INTERVAL).await;
    }
}

async fn fetch_jwks(plane: &TrustPlane) -> Result<Vec<u8>, FollowError> {
    let (_sender, resp) = get(plane, "/.well-known/jwks.json").await?;
    if resp.status() != http::StatusCode::OK {
        return Err(FollowError::Status(resp.status().as_u16()));
    }
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if out.len() + data.len() > MAX_JWKS_BYTES {
                    return Err(FollowError::Parse(1, "JWKS too large".into()));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, read)
        .await
        .map_err(|_| FollowError::Timeout)??;
    Ok(out)
}

/// One GET; the sender is returned so the connection lives as long as the body.
async fn get(
    plane: &TrustPlane,
    path_and_query: &str,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        http::Response<Incoming>,
    ),
    FollowError,
> {
    let connect = async {
        let tcp = TcpStream::connect((plane.host.as_str(), plane.port)).await?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(plane.tls.clone())
            .connect(plane.server_name.clone(), tcp)
            .await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(format!("{}{}", plane.prefix, path_and_query))
            .header(http::header::HOST, plane.authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        Ok::<_, FollowError>((sender, resp))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| FollowError::Timeout)?
}

/// A line that does not parse. serde_json's message may quote the offending value
/// (which could be a customer id), so only its category and column are kept.
fn parse_error(line: u64, e: &serde_json::Error) -> FollowError {
    FollowError::Parse(
        line,
        format!("{:?} error at column {}", e.classify(), e.column()),
    )
}

/// Splits a response body into `\n`-terminated lines.
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    start: usize,
    scanned: usize,
    idle: Duration,
    count: u64,
}

impl Lines {
    fn new(body: Incoming, idle: Duration) -> Lines {
        Lines {
            body,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            scanned: 0,
            idle,
            count: 0,
        }
    }

    /// The next complete line already received, if any.
    fn buffered(&mut self) -> Result<Option<(u64, &str)>, FollowError> {
        let from = self.scanned.max(self.start);
        match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let (s, e) = (self.start, from + i);
                self.start = e + 1;
                self.scanned = self.start;
                self.count += 1;
                let line = std::str::from_utf8(&self.buf[s..e])
                    .map_err(|_| FollowError::Parse(self.count, "not UTF-8".into()))?;
                Ok(Some((self.count, line)))
            }
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    /// Reads more of the body; `false` at its end.
    async fn fill(&mut self) -> Result<bool, FollowError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start.min(self.scanned);
            self.start = 0;
        }
        loop {
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| FollowError::Timeout)?;
            match frame {
                None => return Ok(false),
                Some(f) => {
                    if let Ok(data) = f?.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        if self.buf.len() + data.len() > MAX_LINE_BYTES {
                            return Err(FollowError::Parse(self.count + 1, "line too long".into()));
                        }
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
            }
        }
    }
}

async fn load_snapshot(
    plane: &TrustPlane,
    previous: Option<Arc<Registry>>,
) -> Result<(ConsentStore, Registry, Position), FollowError> {
    let (_sender, resp) = get(plane, "/v1/snapshot").await?;
    if resp.status() != http::StatusCode::OK {
        return Err(FollowError::Status(resp.status().as_u16()));
    }
    let mut lines = Lines::new(resp.into_body(), MIN_IDLE_TIMEOUT.max(plane.max_staleness));
    let mut header = None;
    let mut records: Vec<ConsentRecord> = Vec::new();
    let mut registry = Registry::new();
    let mut participants = 0u64;
    loop {
        while let Some((n, line)) = lines.buffered()? {
            let parsed = match SnapshotLine::parse(line) {
                Ok(p) => p,
                Err(e) => match undecodable_participant(line) {
                    Some((_, bin, thumbprints)) if header.is_some() => {
                        // Fail closed: kept inactive, recognised by the thumbprints it
                        // had before and any readable now.
                        let mut known = previous
                            .as_ref()
                            .map(|r| r.thumbprints_of(bin))
                            .unwrap_or_default();
                        known.extend(thumbprints);
                        tracing::warn!(participant = %bin, "snapshot participant not decodable: kept inactive");
                        registry.undecodable(bin, known);
                        participants += 1;
                        continue;
                    }
                    _ => return Err(parse_error(n, &e)),
                },
            };
            match (parsed, &header) {
                (SnapshotLine::Snapshot(h), None) => header = Some(h),
                (SnapshotLine::Participant(p), Some(_)) => {
                    participants += 1;
                    registry.upsert(p);
                }
                (SnapshotLine::Consent(c), Some(_)) => records.push(c),
                (SnapshotLine::End(t), Some(h)) => {
                    if t.version != h.version
                        || t.consents != records.len() as u64
                        || t.participants != participants
                        || registry.len() as u64 != participants
                    {
                        return Err(FollowError::BadSnapshot(
                            "counts differ from the end line".into(),
                        ));
                    }
                    let position = Position {
                        store_id: h.store_id.clone(),
                        version: h.version,
                    };
                    if !position
                        .store_id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(FollowError::BadSnapshot("store id".into()));
                    }
                    let store = ConsentStore::from_records(records)
                        .map_err(|e| FollowError::BadSnapshot(e.to_string()))?;
                    return Ok((store, registry, position));
                }
                _ => return Err(FollowError::BadSnapshot(format!("line {n} out of order"))),
            }
        }
        if !lines.fill().await? {
            return Err(FollowError::BadSnapshot("no end line".into()));
        }
    }
}

/// The parts of a participant line that did not decode as a whole: its version (on
/// the feed), BIN and thumbprints. `None` when the line names no BIN.
fn undecodable_participant(line: &str) -> Option<(Option<u64>, Bin, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Line {
        participant: Lenient,
    }
    #[derive(serde::Deserialize)]
    struct Lenient {
        #[serde(default)]
        version: Option<u64>,
        bin: Bin,
        #[serde(default)]
        thumbprints: Vec<serde_json::Value>,
    }
    let l: Line = serde_json::from_str(line).ok()?;
    let thumbprints = l
        .participant
        .thumbprints
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    Some((l.participant.version, l.participant.bin, thumbprints))
}

async fn follow_feed(
    state: &Arc<State>,
    plane: &TrustPlane,
    store: &arc_swap::ArcSwap<ConsentStore>,
    status: &FeedStatus,
    pos: &mut Position,
    heard_any: &mut bool,
) -> Result<(), FollowError> {
    let path = format!("/v1/feed?since={}&store_id={}", pos.version, pos.store_id);
    let (_sender, resp) = get(plane, &path).await?;
    match resp.status() {
        http::StatusCode::OK => {}
        http::StatusCode::GONE => {
            return Err(FollowError::NeedSnapshot("410 from the feed".into()))
        }
        s => return Err(FollowError::Status(s.as_u16())),
    }
    let mut lines = Lines::new(resp.into_body(), MIN_IDLE_TIMEOUT.max(plane.max_staleness));
    let mut batch: Vec<Change> = Vec::new();
    let mut registry: Registry = status.registry().map(|r| (*r).clone()).unwrap_or_default();
    let mut caught_up = false;
    loop {
        let mut result = Ok(());
        let mut participants_changed = false;
        // Whatever ends this pass, the changes read before it are applied below: the
        // position has already moved past them.
        loop {
            let (n, line) = match lines.buffered() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let parsed = match FeedLine::parse(line) {
                Ok(p) => p,
                Err(e) => match undecodable_participant(line) {
                    Some((Some(v), bin, thumbprints)) => {
                        *heard_any = true;
                        if v != pos.version + 1 {
                            result = Err(FollowError::NeedSnapshot(format!(
                                "gap: change {v} after {}",
                                pos.version
                            )));
                            break;
                        }
                        pos.version = v;
                        tracing::warn!(participant = %bin, version = v, "participant change not decodable: kept inactive");
                        registry.undecodable(bin, thumbprints);
                        participants_changed = true;
                        status.participant_changes.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    _ => {
                        result = Err(parse_error(n, &e));
                        break;
                    }
                },
            };
            *heard_any = true;
            if let Some(v) = parsed.change_version() {
                if v != pos.version + 1 {
                    result = Err(FollowError::NeedSnapshot(format!(
                        "gap: change {v} after {}",
                        pos.version
                    )));
                    break;
                }
            }
            match parsed {
                FeedLine::Consent(c) => {
                    pos.version = c.version;
                    batch.push(c);
                }
                FeedLine::Participant(p) => {
                    pos.version = p.version;
                    let feed_wire::ParticipantOp::Upsert(record) = p.op;
                    tracing::info!(
                        participant = %record.bin,
                        status = record.status.as_str(),
                        version = p.version,
                        "participant change from the trust registry"
                    );
                    registry.upsert(record);
                    participants_changed = true;
                    status.participant_changes.fetch_add(1, Ordering::Relaxed);
                }
                FeedLine::Heartbeat(h) => {
                    if h.store_id != pos.store_id {
                        result = Err(FollowError::NeedSnapshot("store id changed".into()));
                        break;
                    }
                    if h.version != pos.version {
                        result = Err(FollowError::NeedSnapshot(format!(
                            "heartbeat at {} but position {}",
                            h.version, pos.version
                        )));
                        break;
                    }
                    // The sidecar sends one at once when this connection's backlog is
                    // drained: from here on, what is applied is the registry's present.
                    caught_up = true;
                }
                FeedLine::Resync(r) => {
                    result = Err(FollowError::NeedSnapshot(format!("resync: {}", r.reason)));
                    break;
                }
            }
        }
        let mut applied = true;
        if !batch.is_empty() {
            let current = store.load();
            if let Err(e) = current.apply_batch(batch.drain(..)) {
                applied = false;
                result = Err(FollowError::NeedSnapshot(format!("apply: {e}")));
            }
        }
        if participants_changed {
            state.publish_registry(Arc::new(registry.clone())).await;
        }
        if applied {
            status.version.store(pos.version, Ordering::Relaxed);
            // Fresh (contract §6 row 7) only once what was read is in force, and, on a new
            // connection, only after the backlog: a gateway that went stale during an
            // outage must not turn fresh on the first replayed line while revocations made
            // during the outage are still further down the stream.
            if caught_up && result.is_ok() {
                status.heard();
            }
        }
        result?;
        if !lines.fill().await? {
            return Err(FollowError::Ended);
        }
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
    fn an_undecodable_participant_line_still_names_its_bin_and_thumbprints() {
        // A role this hub does not know: the line does not decode as a feed line …
        let line = r#"{"participant":{"version":9,"op":"upsert","bin":"100140000001","name":"A","roles":["auditor"],"status":"active","thumbprints":["abc",7],"provider_urls":[],"updated_at":"2026-11-22T20:00:00Z"}}"#;
        assert!(FeedLine::parse(line).is_err());
        // … but names enough to keep the participant refused.
        let (version, bin, thumbprints) = undecodable_participant(line).unwrap();
        assert_eq!(version, Some(9));
        assert_eq!(bin, Bin::parse("100140000001").unwrap());
        assert_eq!(thumbprints, vec!["abc".to_string()]);
        // Snapshot lines carry no version.
        let snap = r#"{"participant":{"bin":"100140000001","status":"dormant"}}"#;
        assert_eq!(undecodable_participant(snap).unwrap().0, None);
        for other in [
            r#"{"participant":{"version":9}}"#,
            r#"{"participant":{"bin":"12"}}"#,
            r#"{"consent":{"version":9,"op":"frobnicate"}}"#,
            "not json",
        ] {
            assert!(undecodable_participant(other).is_none(), "{other}");
        }
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
