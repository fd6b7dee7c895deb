//! A deliberately small HTTP client for the hub's tests: raw HTTP/1.1 over TLS (so a test
//! controls every request byte, including paths that URL libraries would normalise), an
//! HTTP/2 client on hyper's connection API, and the parsed response with problem+json
//! assertions for contract §6 and §7.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use policy::code::Code;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::openapi::{assert_conforms, Api};

/// The name the hub's development server certificate carries.
pub const HUB_SERVER_NAME: &str = "localhost";

/// Longest any single exchange with the hub may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Which TLS versions a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.3 and 1.2 (the default of rustls).
    Default,
    /// TLS 1.2 only: the server's verdict on the client certificate then arrives inside
    /// the handshake, so a refused certificate fails `connect` itself.
    Tls12Only,
}

/// A client certificate and key in PEM.
#[derive(Clone)]
pub struct ClientCert {
    /// Leaf certificate (and optionally its chain), PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

impl ClientCert {
    /// From a sandbox PKI identity.
    pub fn of(id: &sandbox::pki::Identity) -> ClientCert {
        ClientCert {
            cert_pem: id.cert_pem.clone(),
            key_pem: id.key_pem.clone(),
        }
    }
}

/// Builds a rustls client configuration trusting `ca_pem`, presenting `cert` (if any) and
/// offering `alpn`.
pub fn tls_config(
    ca_pem: &str,
    cert: Option<&ClientCert>,
    alpn: &[&[u8]],
    versions: TlsVersions,
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match versions {
        TlsVersions::Default => builder.with_safe_default_protocol_versions(),
        TlsVersions::Tls12Only => builder.with_protocol_versions(&[&rustls::version::TLS12]),
    }
    .expect("protocol versions")
    .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut c.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("client certificate PEM");
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut c.key_pem.as_bytes())
                    .expect("client key PEM")
                    .expect("a private key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate and key")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One request, written byte for byte as given (plus `Host` unless the test sets one).
#[derive(Debug, Clone)]
pub struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    host: bool,
}

impl Req {
    /// `GET target` (the target is sent exactly as written).
    pub fn get(target: impl Into<String>) -> Req {
        Req::new("GET", target)
    }

    /// Any method.
    pub fn new(method: &str, target: impl Into<String>) -> Req {
        Req {
            method: method.to_string(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            host: true,
        }
    }

    /// Adds a header (repeats allowed, order kept).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Req {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Req {
        self.header("Authorization", format!("Bearer {token}"))
    }

    /// `x-fapi-interaction-id`.
    pub fn interaction_id(self, id: &str) -> Req {
        self.header("x-fapi-interaction-id", id)
    }

    /// A body, with its `Content-Length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        let n = self.body.len();
        self.header("Content-Length", n.to_string())
    }

    /// Sends no `Host` header (the test adds its own or wants none).
    pub fn without_host(mut self) -> Req {
        self.host = false;
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target as sent.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The headers the test added.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The HTTP/1.1 wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        if self.host {
            out.extend_from_slice(format!("Host: {HUB_SERVER_NAME}\r\n").as_bytes());
        }
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// Whether the request carried an `Authorization` field (`None`: not known, for a
    /// response read apart from its request). A `401`'s challenge depends on it.
    pub authorization_sent: Option<bool>,
}

/// Whether `s` is a UUID in its canonical hyphenated 36-character form.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

impl Response {
    /// The first value of a header (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (any case).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not JSON).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The problem's `code` member, or `""` when the body has none.
    pub fn code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default()
    }

    /// The `x-fapi-interaction-id` response header.
    pub fn interaction_id(&self) -> &str {
        self.header("x-fapi-interaction-id").unwrap_or("")
    }

    /// Summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} headers={:?} body={}",
            self.version,
            self.status,
            self.headers,
            self.text()
        )
    }

    /// Asserts the whole shape of whatever answered, a bank's `200` through the hub
    /// ([`Response::ok_json`]) or the hub's own problem ([`Response::assert_problem`] for
    /// the code it names), and returns `(status, code)` (`code` is empty on a `200`).
    #[track_caller]
    pub fn assert_answer(&self) -> (u16, String) {
        if self.status == 200 {
            self.ok_json();
            return (200, String::new());
        }
        let code = self.code();
        self.assert_problem(self.status, &code);
        (self.status, code)
    }

    /// Asserts a `200` with a JSON body from the bank (through the hub) and returns it.
    #[track_caller]
    pub fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "expected 200: {}", self.describe());
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "content-type {ct:?}: {}",
            self.describe()
        );
        assert!(is_uuid(self.interaction_id()), "{}", self.describe());
        self.assert_date();
        self.json()
    }

    /// Asserts an HTTP `Date` header that parses.
    #[track_caller]
    pub fn assert_date(&self) {
        let date = self
            .header("date")
            .unwrap_or_else(|| panic!("no Date header: {}", self.describe()));
        assert!(
            httpdate::parse_http_date(date).is_ok(),
            "Date {date:?} is not an HTTP date"
        );
    }

    /// Asserts everything contract §6/§7 says about an error answer: the status, the code,
    /// `application/problem+json`, the exact body shape with the code's own `type` and
    /// `title` and a `detail` that holds no token (its words are not compared here), the
    /// interaction id (header equal to the
    /// body, a UUID), `Date`, and the per-status headers (`WWW-Authenticate` on 401,
    /// `Retry-After` + `RateLimit-Policy`/`RateLimit` on 429, `Allow` on 405).
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) -> &Response {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "unexpected answer: {}",
            self.describe()
        );
        let known = Code::ALL
            .into_iter()
            .find(|c| c.as_str() == code)
            .unwrap_or_else(|| panic!("{code:?} is not a contract code"));
        assert_eq!(known.status(), status, "{code} is a {}", known.status());
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/problem+json"),
            "content-type {ct:?}: {}",
            self.describe()
        );
        let body = self.json();
        let obj = body.as_object().expect("problem body is an object");
        for key in [
            "type",
            "title",
            "status",
            "code",
            "interaction_id",
            "detail",
        ] {
            assert!(obj.contains_key(key), "problem lacks {key:?}: {body}");
        }
        // Contract §6: `detail` says which rule failed, never a token.
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(!detail.is_empty(), "empty detail: {body}");
        assert!(!detail.contains("eyJ"), "a token in the detail: {body}");
        for key in obj.keys() {
            assert!(
                [
                    "type",
                    "title",
                    "status",
                    "code",
                    "interaction_id",
                    "detail"
                ]
                .contains(&key.as_str()),
                "unexpected problem member {key:?}: {body}"
            );
        }
        let type_uri = format!("urn:openapi-hub:problem:{code}");
        assert_eq!(known.type_uri(), type_uri);
        assert_eq!(body["type"].as_str(), Some(type_uri.as_str()), "{body}");
        assert_eq!(body["title"].as_str(), Some(known.title()), "{body}");
        assert_eq!(body["status"].as_u64(), Some(u64::from(status)), "{body}");
        let iid = self.interaction_id();
        assert!(is_uuid(iid), "x-fapi-interaction-id {iid:?} is not a UUID");
        assert_eq!(body["interaction_id"].as_str(), Some(iid), "{body}");
        self.assert_date();
        if status == 401 {
            let wa = self.header("www-authenticate").unwrap_or("");
            if self.authorization_sent == Some(false) {
                // RFC 6750 §3.1: no credentials at all, no error code.
                assert_eq!(
                    wa, "Bearer",
                    "WWW-Authenticate on a 401 without credentials"
                );
            } else {
                assert!(
                    wa.starts_with("Bearer") && wa.contains("error=\"invalid_token\""),
                    "WWW-Authenticate {wa:?} on 401"
                );
            }
        }
        if status == 429 {
            let ra = self.header("retry-after").unwrap_or("");
            assert!(
                ra.parse::<u64>().is_ok_and(|s| s >= 1),
                "Retry-After {ra:?} on 429"
            );
            assert!(
                self.header("ratelimit-policy").is_some(),
                "RateLimit-Policy missing on 429"
            );
            assert!(
                self.header("ratelimit").is_some(),
                "RateLimit missing on 429"
            );
        }
        if status == 405 {
            let allow = self.header("allow").unwrap_or("");
            assert!(allow.contains("GET"), "Allow {allow:?} on 405");
        }
        self
    }
}

/// A TLS connection to the hub speaking HTTP/1.1; several requests may share it.
pub struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    /// Bytes read from the server so far.
    read_total: usize,
    /// The document every answer to [`Conn::send`] and [`Conn::send_raw`] is held to.
    api: Option<Api>,
}

/// An HTTP/1.1 connection over TLS.
pub type TlsConn = Conn<TlsStream<TcpStream>>;

/// Opens a TLS connection (the handshake may still be refused afterwards in TLS 1.3, when
/// the server checks the client certificate).
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tls_handshake(tcp, config).await
}

/// Opens a TLS connection from the local address `local` (any port): to the hub, another
/// loopback address such as 127.0.0.2 is another client IP.
pub async fn connect_tls_from(
    local: IpAddr,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let socket = match local {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(local, 0))?;
    let tcp = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tls_handshake(tcp, config).await
}

async fn tls_handshake(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(HUB_SERVER_NAME).expect("server name");
    tokio::time::timeout(IO_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps an established stream.
    pub fn new(io: S) -> Conn<S> {
        Conn {
            io,
            buf: Vec::new(),
            read_total: 0,
            api: None,
        }
    }

    /// Bytes read from the server so far on this connection: unchanged across a failed
    /// request, the connection closed before any byte of its response (RFC 9110 §9.2.2).
    pub fn bytes_read(&self) -> usize {
        self.read_total
    }

    /// Holds every answer to a request sent with [`Conn::send`] or [`Conn::send_raw`] to
    /// `api`'s OpenAPI document (a mismatch panics); `None` checks nothing.
    pub fn checked_against(mut self, api: Option<Api>) -> Conn<S> {
        self.api = api;
        self
    }

    /// The underlying stream.
    pub fn stream(&self) -> &S {
        &self.io
    }

    /// Sends a request and reads its response.
    pub async fn send(&mut self, req: &Req) -> io::Result<Response> {
        let head = req.method() == "HEAD";
        self.send_raw_inner(&req.to_bytes(), head).await
    }

    /// Writes `bytes` exactly and reads one response.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<Response> {
        self.send_raw_inner(bytes, false).await
    }

    async fn send_raw_inner(&mut self, bytes: &[u8], head: bool) -> io::Result<Response> {
        let response = tokio::time::timeout(IO_TIMEOUT, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await?;
            let mut response = self.read_response(head).await?;
            response.authorization_sent = Some(has_authorization(bytes));
            Ok::<_, io::Error>(response)
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))??;
        if let Some(api) = self.api {
            let (method, target) = request_line(bytes);
            assert_conforms(api, &method, &target, &response);
        }
        Ok(response)
    }

    /// Reads one response (for a request already written).
    pub async fn read_response(&mut self, head: bool) -> io::Result<Response> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head_text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        for line in lines {
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if head || status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            self.read_chunked().await?
        } else if let Some(cl) = get("content-length") {
            let n: usize = cl
                .parse()
                .map_err(|_| bad(format!("bad content-length {cl:?}")))?;
            while self.buf.len() < n {
                self.fill().await?;
            }
            self.buf.drain(..n).collect()
        } else {
            loop {
                match self.fill().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            std::mem::take(&mut self.buf)
        };
        Ok(Response {
            version,
            status,
            headers,
            body,
            authorization_sent: None,
        })
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        self.read_total += n;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Whether the server closed the connection (reads EOF or an error within `wait`).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(wait, self.io.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// The method and the request target of the HTTP/1.1 request in `bytes` (empty when its
/// first line has none: such a request matches no route).
fn request_line(bytes: &[u8]) -> (String, String) {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    (method, target)
}

/// Whether the HTTP/1.1 request in `bytes` has an `Authorization` field in its head.
fn has_authorization(bytes: &[u8]) -> bool {
    let head = find(bytes, b"\r\n\r\n").map_or(bytes, |end| &bytes[..end]);
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        line.get(..14)
            .is_some_and(|name| name.eq_ignore_ascii_case(b"authorization:"))
    })
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP/2 connection to the hub (ALPN `h2`), driven on the current tokio runtime.
pub struct H2Conn {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: String,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    /// The document every answer is held to (see [`Conn::checked_against`]).
    api: Option<Api>,
}

impl H2Conn {
    /// Connects with ALPN `h2` and performs the HTTP/2 handshake.
    pub async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<H2Conn> {
        let tls = connect_tls(addr, config).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2Conn {
            send,
            authority: format!("{HUB_SERVER_NAME}:{}", addr.port()),
            alpn,
            api: None,
        })
    }

    /// Holds every answer to `api`'s OpenAPI document (see [`Conn::checked_against`]).
    pub fn checked_against(mut self, api: Option<Api>) -> H2Conn {
        self.api = api;
        self
    }

    /// Sends a `GET` with the given headers on a new stream.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        let mut b = http::Request::builder()
            .method("GET")
            .uri(format!("https://{}{path}", self.authority));
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let req = b.body(Full::new(Bytes::new())).map_err(io::Error::other)?;
        let fut = async {
            self.send.ready().await.map_err(io::Error::other)?;
            let resp = self
                .send
                .send_request(req)
                .await
                .map_err(io::Error::other)?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
            Ok::<_, io::Error>(Response {
                version: format!("{:?}", parts.version),
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
                authorization_sent: Some(
                    headers
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case("authorization")),
                ),
            })
        };
        let response = tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no h2 response in time"))??;
        if let Some(api) = self.api {
            assert_conforms(api, "GET", path, &response);
        }
        Ok(response)
    }
}

/// One plain-HTTP exchange with the admin listener: `(status, body)`.
pub async fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> io::Result<(u16, String)> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut conn = Conn::new(tcp);
        let req = Req::new(method, path)
            .header("Connection", "close")
            .header("Content-Length", "0");
        let resp = conn.send(&req).await?;
        Ok::<_, io::Error>((resp.status, resp.text()))
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "admin request timed out"))?
}
