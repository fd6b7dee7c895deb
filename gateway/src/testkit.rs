//! Test support: a hub [`State`] over freshly generated development material (PKI, token
//! issuer, consents, configuration file), and pingora sessions over in-memory streams
//! that present a chosen client certificate, so `ProxyHttp` phases run in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use consent_cache::{Bin, Permission};
use sandbox::pki::{DevPki, PkiSpec};
use sandbox::tokens::{AccessClaims, DevAlg, DevIssuer};

use policy::directory::{ParticipantStatus, Role};
use policy::limits::QuotaSettings;

use crate::audit::AuditLog;
use crate::config::{
    at, AuditSection, ConsentSection, FileConfig, HubFiles, ParticipantSection, ProviderSection,
};
use crate::metrics::Metrics;
use crate::plane::FeedStatus;
use crate::snapshot::{sections, Publisher};
use crate::state::State;

/// The API user of the generated world (active, with a registered certificate).
pub(crate) const USER: &str = "100140000001";
/// Its provider bank (published, two base URLs, the second with a path prefix).
pub(crate) const BANK: &str = "990340000011";
/// USER's authorised consent at BANK: accounts and balances of [`ACCOUNT`] only.
pub(crate) const CONSENT: &str = "consent-1";
/// The customer of [`CONSENT`].
pub(crate) const CUSTOMER: &str = "900101300123";
/// The one account [`CONSENT`] covers.
pub(crate) const ACCOUNT: &str = "KZ001";
/// Requests body limit of the generated configuration.
pub(crate) const MAX_BODY: usize = 1024;
/// Open-data burst per client IP: the request after this many is rate limited.
pub(crate) const OPEN_DATA_BURST: u32 = 2;
/// The peer address every test connection reports.
pub(crate) const PEER: &str = "127.0.0.1:50000";

const ISSUER: &str = "https://trust.hub.local.test";
const AUDIENCE: &str = "https://hub.local.test";

/// A hub over generated material, and what tests need from that material.
pub(crate) struct TestHub {
    /// The hub's state (file-mode consents, no trust sidecar).
    pub(crate) state: Arc<State>,
    /// SHA-256 of USER's certificate: what its connections present.
    pub(crate) cert: [u8; 32],
    /// USER's access token for [`CONSENT`], bound to `cert`.
    pub(crate) token: String,
    _dir: tempfile::TempDir,
}

/// A fresh hub in its own temporary directory.
pub(crate) fn test_hub() -> TestHub {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (config, cert, token) = write_material(dir.path());
    TestHub {
        state: test_state(&config),
        cert,
        token,
        _dir: dir,
    }
}

/// Builds the hub's state from a configuration file, as `server::run` does: the one place
/// tests construct a [`State`].
pub(crate) fn test_state(config: &Path) -> Arc<State> {
    let feed = Arc::new(FeedStatus::new());
    let file = sections::load(config, None, &feed).expect("test configuration");
    let process = file.process.clone();
    let publisher = Publisher::new(file, feed);
    let audit = AuditLog::open(&process.audit_path, process.audit_buffer).expect("journal");
    Arc::new(State::new(
        publisher,
        Metrics::new(),
        audit,
        config.to_path_buf(),
    ))
}

fn bin(s: &str) -> Bin {
    Bin::parse(s).expect("a BIN")
}

/// Generates the PKI, the token issuer, one consent and the configuration under `dir`;
/// returns the configuration file, USER's certificate digest and its token.
pub(crate) fn write_material(dir: &Path) -> (PathBuf, [u8; 32], String) {
    let pki = DevPki::generate(
        &dir.join("pki"),
        &PkiSpec::new(vec![bin(USER)], vec![bin(BANK)]),
    )
    .expect("dev PKI");
    let issuer = DevIssuer::generate(DevAlg::Es256, "test", ISSUER).expect("issuer");
    let (_key, jwks) = issuer.write_files(dir).expect("issuer files");
    let user = pki.api_user(bin(USER)).expect("user identity");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = AccessClaims::for_consent(
        ISSUER,
        AUDIENCE,
        bin(USER),
        CONSENT,
        &[Permission::Accounts, Permission::Balances],
        &user.thumbprint,
        now,
        3600,
    )
    .expect("claims");
    let token = issuer.mint(&claims).expect("token");
    let consents = dir.join("consents.jsonl");
    let record = serde_json::json!({
        "id": CONSENT, "api_user": USER, "customer": CUSTOMER, "providers": [BANK],
        "permissions": ["accounts", "balances"], "accounts": [ACCOUNT],
        "purpose": "tests", "created_at": "2024-01-01T00:00:00Z", "status": "authorised",
    });
    std::fs::write(&consents, format!("{record}\n")).expect("consents");
    let config = dir.join("hub.toml");
    let typed = hub_config(
        &pki,
        &jwks,
        &consents,
        &dir.join("audit.jsonl"),
        &user.x5t_s256,
    );
    std::fs::write(&config, typed.to_toml().expect("serialises")).expect("configuration");
    (config, user.thumbprint, token)
}

/// The test world's configuration, typed: file-mode consents, USER and BANK, BANK on
/// two base URLs (the second with a path prefix), a small open-data burst.
pub(crate) fn hub_config(
    pki: &DevPki,
    jwks: &Path,
    consents: &Path,
    audit: &Path,
    x5t: &str,
) -> FileConfig {
    let mut c = FileConfig::for_files(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &pki_files(pki, jwks),
        ISSUER,
        AUDIENCE,
    );
    c.server.threads = Some(1);
    c.server.max_body_bytes = MAX_BODY;
    // Every successful answer tapped (the live checks' tests; none runs a validator).
    c.live_checks.sample_rate = at(1.0);
    c.consents = ConsentSection::file(consents.to_path_buf());
    c.audit = AuditSection::file(audit.to_path_buf());
    c.limits.per_ip_open_data = QuotaSettings::new(1, OPEN_DATA_BURST).expect("a quota");
    let mut user = ParticipantSection::new(USER, "User", &[Role::User], ParticipantStatus::Active);
    user.thumbprints = vec![at(x5t.to_string())];
    let bank = ParticipantSection::new(BANK, "Bank", &[Role::Provider], ParticipantStatus::Active);
    c.participants = vec![user, bank];
    let urls = [
        "https://127.0.0.1:9".to_string(),
        "https://127.0.0.1:10/api".to_string(),
    ];
    let mut provider = ProviderSection::new(BANK, &urls);
    provider.sni = Some("localhost".into());
    c.providers = vec![provider];
    c
}

/// What a development PKI gives a hub's configuration.
fn pki_files(pki: &DevPki, jwks: &Path) -> HubFiles {
    HubFiles {
        ca: pki.ca_cert_path().to_path_buf(),
        server: (
            pki.hub_server().cert_path.clone(),
            pki.hub_server().key_path.clone(),
        ),
        client: (
            pki.hub_client().cert_path.clone(),
            pki.hub_client().key_path.clone(),
        ),
        jwks: jwks.to_path_buf(),
    }
}

/// One end of an in-memory connection, as pingora sees a TLS connection over TCP: the
/// client certificate's digest (if one was presented) and the peer address.
#[derive(Debug)]
pub(crate) struct TestStream {
    io: DuplexStream,
    ssl: Option<Arc<SslDigest>>,
    socket: Arc<SocketDigest>,
}

impl TestStream {
    fn new(io: DuplexStream, cert: Option<[u8; 32]>) -> TestStream {
        let socket = SocketDigest::from_raw_fd(-1);
        let peer: SocketAddr = PEER.parse().expect("peer address");
        let _ = socket.peer_addr.set(Some(PeerAddr::Inet(peer)));
        let _ = socket.local_addr.set(None);
        TestStream {
            io,
            ssl: cert.map(|c| {
                Arc::new(SslDigest::new(
                    "TLS_AES_128_GCM_SHA256",
                    "TLSv1.3",
                    None,
                    None,
                    c.to_vec(),
                ))
            }),
            socket: Arc::new(socket),
        }
    }
}

impl AsyncRead for TestStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TestStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TestStream {
    async fn shutdown(&mut self) {}
}

impl UniqueID for TestStream {
    fn id(&self) -> UniqueIDType {
        0
    }
}

impl Ssl for TestStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.ssl.clone()
    }
}

impl GetTimingDigest for TestStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for TestStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TestStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.socket.clone())
    }
}

impl Peek for TestStream {}

/// A downstream session whose client has sent `raw` (nothing read yet), and the client's
/// end of the connection.
pub(crate) async fn connect(raw: &[u8], cert: Option<[u8; 32]>) -> (Session, DuplexStream) {
    let (mut client, server) = tokio::io::duplex(4 << 20);
    client.write_all(raw).await.expect("request written");
    let session = Session::new_h1(Box::new(TestStream::new(server, cert)));
    (session, client)
}

/// A downstream session with the request `raw` read, and the client's end.
pub(crate) async fn session(raw: &[u8], cert: Option<[u8; 32]>) -> (Session, DuplexStream) {
    let (mut session, client) = connect(raw, cert).await;
    assert!(
        session.read_request().await.expect("a request"),
        "no request read"
    );
    (session, client)
}

/// What the client received once the session is over (the server end is closed).
pub(crate) async fn received(session: Session, mut client: DuplexStream) -> Answer {
    drop(session);
    let mut raw = Vec::new();
    client.read_to_end(&mut raw).await.expect("response read");
    Answer::parse(&raw)
}

/// An HTTP/1 response as the client saw it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status code.
    pub(crate) status: u16,
    /// Header names (lower case) and values, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The body bytes.
    pub(crate) body: Vec<u8>,
}

impl Answer {
    fn parse(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    /// The first value of header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}
