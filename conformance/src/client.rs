//! The HTTPS client towards one provider: hyper-util's pooled HTTP/1.1 client over a
//! rustls connector with the hub's client certificate, so a long-lived [`crate::Prober`]
//! reuses its connections like the gateway does, and one bounded call ([`Client::get`])
//! whose failures are typed ([`CallFailure`]): refused or failed TCP, a failed TLS
//! handshake, no answer in time, an answer that is not HTTP, one too large.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The largest answer read; a bigger one is a failure, not an unbounded buffer.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Idle connections are closed after this (shorter than the default probe interval, so a
/// probe usually makes a fresh TLS handshake and the TLS rule sees it).
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why the client could not be built from the target's PEM material.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The base URL is not `https://host[:port][/prefix]`.
    #[error("the base URL must be https://host[:port][/prefix] without query: {0}")]
    BaseUrl(&'static str),
    /// A PEM input could not be read.
    #[error("invalid PEM in the {what}: {source}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// The parse error.
        #[source]
        source: io::Error,
    },
    /// The client certificate PEM holds no certificate.
    #[error("no certificate in the client certificate PEM")]
    NoClientCertificate,
    /// The key PEM holds no private key.
    #[error("no private key in the client key PEM")]
    NoPrivateKey,
    /// The CA PEM holds no usable certificate.
    #[error("no usable certificate in the CA PEM")]
    NoCa,
    /// rustls refused the identity (e.g. the key does not match the certificate).
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A test customer's value cannot be sent as its `x-hub-*` header (empty, not visible
    /// ASCII, or an account id outside the contract's alphabet).
    #[error("the test customer's {0} cannot be sent as a header")]
    Header(&'static str),
    /// The embedded provider schema does not compile (a build defect).
    #[error("the provider schema: {0}")]
    Schema(String),
}

/// How a call failed before a complete HTTP answer was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum CallFailure {
    /// The TCP connection failed (the `io::ErrorKind`, e.g. `connection refused`).
    #[error("TCP connection failed: {0}")]
    Connect(String),
    /// The TLS handshake failed (rustls' reason, e.g. an unknown CA or a refused client
    /// certificate).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// No complete answer within the call timeout (milliseconds).
    #[error("no complete answer within {0} ms")]
    Timeout(u64),
    /// What came back is not HTTP, or the connection closed before a complete answer.
    #[error("the answer is not valid HTTP: {0}")]
    NotHttp(String),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("the answer body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

/// A complete HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// The connector's error: where connecting failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("tcp: {0}")]
    Tcp(io::Error),
    #[error("tls: {0}")]
    Tls(io::Error),
    #[error("the URL has no usable host")]
    Host,
    #[error("no connection within {0} ms")]
    Timeout(u64),
}

/// A TLS stream as hyper-util's pooled client wants it.
struct TlsIo(TokioIo<TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects TCP, then TLS with the hub's identity, to the URI's host, within its bound:
/// half the call timeout, so that a call that times out as a whole had its connection (a
/// provider stuck in the handshake fails the TLS rule, not only the status rule).
#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
    bound: Duration,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<TlsIo, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TlsIo;
    type Error = ConnectError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let bound = self.bound;
        let connect = async move {
            let host = uri.host().ok_or(ConnectError::Host)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::Host)?;
            let tcp = TcpStream::connect((host.as_str(), port))
                .await
                .map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await.map_err(ConnectError::Tls)?;
            Ok(TlsIo(TokioIo::new(stream)))
        };
        Box::pin(async move {
            tokio::time::timeout(bound, connect)
                .await
                .map_err(|_| ConnectError::Timeout(millis(bound)))?
        })
    }
}

/// The provider's base URL, split for building request URIs.
#[derive(Debug, Clone)]
struct Base {
    /// `https://authority`.
    origin: String,
    /// The path prefix without a trailing `/` (often empty).
    prefix: String,
}

fn parse_base(url: &str) -> Result<Base, SetupError> {
    let uri: Uri = url.parse().map_err(|_| SetupError::BaseUrl("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(SetupError::BaseUrl("the scheme must be https"));
    }
    let authority = uri
        .authority()
        .ok_or(SetupError::BaseUrl("no host"))?
        .as_str();
    if authority.contains('@') {
        return Err(SetupError::BaseUrl("user information is not allowed"));
    }
    if uri.query().is_some() {
        return Err(SetupError::BaseUrl("a query is not allowed"));
    }
    Ok(Base {
        origin: format!("https://{authority}"),
        prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

fn tls_config(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<ClientConfig, SetupError> {
    let pem = |what| move |source| SetupError::Pem { what, source };
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert[..])
        .collect::<Result<_, _>>()
        .map_err(pem("client certificate"))?;
    if chain.is_empty() {
        return Err(SetupError::NoClientCertificate);
    }
    let key = rustls_pemfile::private_key(&mut &key[..])
        .map_err(pem("client key"))?
        .ok_or(SetupError::NoPrivateKey)?;
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca[..]) {
        // A CA bundle may carry certificates rustls cannot use; the others still count.
        let _ = roots.add(c.map_err(pem("CA"))?);
    }
    if roots.is_empty() {
        return Err(SetupError::NoCa);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

/// The pooled mTLS client towards one provider.
pub(crate) struct Client {
    base: Base,
    pooled: Pooled<Connector, Empty<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// Builds the TLS identity and the pool (no connection yet).
    pub(crate) fn new(
        base_url: &str,
        cert: &[u8],
        key: &[u8],
        ca: &[u8],
        timeout: Duration,
    ) -> Result<Client, SetupError> {
        let base = parse_base(base_url)?;
        let tls = tls_config(cert, key, ca)?;
        let pooled = Pooled::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(2)
            .build(Connector {
                tls: TlsConnector::from(Arc::new(tls)),
                bound: timeout / 2,
            });
        Ok(Client {
            base,
            pooled,
            timeout,
        })
    }

    /// One `GET` of `path_and_query` (below the base URL's prefix) with `headers`, bounded
    /// by the call timeout; the answer and the time to its last byte.
    pub(crate) async fn get(
        &self,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> (Result<Answer, CallFailure>, Duration) {
        let started = Instant::now();
        let result = match tokio::time::timeout(
            self.timeout,
            self.exchange(path_and_query, headers),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(CallFailure::Timeout(millis(self.timeout))),
        };
        (result, started.elapsed())
    }

    async fn exchange(
        &self,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<Answer, CallFailure> {
        let uri = format!("{}{}{}", self.base.origin, self.base.prefix, path_and_query);
        let mut req = http::Request::get(uri)
            .body(Empty::<Bytes>::new())
            .map_err(|_| CallFailure::NotHttp("the request URL is invalid".into()))?;
        *req.headers_mut() = headers;
        let resp = self.pooled.request(req).await.map_err(|e| classify(&e))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast_ref::<hyper::Error>() {
                Some(h) => CallFailure::NotHttp(hyper_reason(h)),
                None => CallFailure::TooLarge,
            })?
            .to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// Milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The typed failure behind a pooled client's error: the connector's, or hyper's.
fn classify(e: &hyper_util::client::legacy::Error) -> CallFailure {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(ce) = c.downcast_ref::<ConnectError>() {
            return match ce {
                ConnectError::Tcp(io) => CallFailure::Connect(io.kind().to_string()),
                ConnectError::Tls(io) => CallFailure::Tls(tls_reason(io)),
                ConnectError::Host => CallFailure::Connect("the URL has no usable host".into()),
                ConnectError::Timeout(ms) => {
                    CallFailure::Tls(format!("no TLS connection within {ms} ms"))
                }
            };
        }
        // In TLS 1.3 a provider refuses the client certificate after the client's side of
        // the handshake is done: its alert arrives with the first read, inside hyper's
        // error. It is still the handshake that failed.
        if let Some(tls) = rustls_error(c) {
            return CallFailure::Tls(tls.to_string());
        }
        cause = c.source();
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            return CallFailure::NotHttp(hyper_reason(h));
        }
        cause = c.source();
    }
    CallFailure::NotHttp("the connection failed".into())
}

/// The rustls error `e` is or wraps (tokio-rustls puts it inside an `io::Error`, whose
/// `source` skips it).
fn rustls_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    })
}

/// rustls' own reason (a fixed sentence of the library), else the I/O kind.
fn tls_reason(e: &io::Error) -> String {
    match rustls_error(e) {
        Some(tls) => tls.to_string(),
        None => e.kind().to_string(),
    }
}

/// hyper's classification, as a fixed sentence.
fn hyper_reason(e: &hyper::Error) -> String {
    let reason = if e.is_parse() || e.is_parse_status() {
        "malformed HTTP"
    } else if e.is_incomplete_message() {
        "the connection closed before a complete answer"
    } else if e.is_closed() || e.is_canceled() {
        "the connection closed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "the connection failed"
    };
    reason.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_https_with_an_optional_prefix() {
        let b = parse_base("https://127.0.0.1:8443").expect("plain");
        assert_eq!(
            (b.origin.as_str(), b.prefix.as_str()),
            ("https://127.0.0.1:8443", "")
        );
        let b = parse_base("https://bank.example/api/").expect("prefix");
        assert_eq!(
            (b.origin.as_str(), b.prefix.as_str()),
            ("https://bank.example", "/api")
        );
        for bad in [
            "http://bank.example",
            "bank.example",
            "https://u:p@bank.example",
            "https://bank.example/?x=1",
            "",
        ] {
            assert!(parse_base(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pem_material_is_checked_up_front() {
        let Err(e) = tls_config(b"", b"", b"") else {
            panic!("no certificate, yet a configuration");
        };
        assert!(matches!(e, SetupError::NoClientCertificate), "{e}");
    }
}
