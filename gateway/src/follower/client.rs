//! The follower's transport: one mTLS HTTP/1.1 `GET` to the sidecar ([`get`]) and the
//! NDJSON line splitter over a response body ([`Lines`]). What the lines mean is the
//! protocol's business ([`super::protocol`]).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::protocol::Fault;
use crate::plane::TrustPlane;

/// TCP + TLS + response headers.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A line longer than this is refused (a consent record is at most a few hundred KiB).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Why a request to the sidecar, or the body it was answered with, failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    /// TCP or TLS.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The connection, the headers or a silent stream took too long.
    #[error("timed out")]
    Timeout,
    /// HTTP framing.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] http::Error),
    /// What the sidecar sent breaks the protocol.
    #[error(transparent)]
    Protocol(#[from] Fault),
}

/// The client half of an HTTP/1.1 connection; kept as long as its response body is read.
pub(super) type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One GET; the sender is returned so the connection lives as long as the body.
pub(super) async fn get(
    plane: &TrustPlane,
    path_and_query: &str,
) -> Result<(Sender, http::Response<Incoming>), ClientError> {
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
        Ok::<_, ClientError>((sender, resp))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// Splits a response body into `\n`-terminated lines.
pub(super) struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    start: usize,
    scanned: usize,
    idle: Duration,
    count: u64,
}

impl Lines {
    /// Reads `body`; a body silent for `idle` ends with [`ClientError::Timeout`].
    pub(super) fn new(body: Incoming, idle: Duration) -> Lines {
        Lines {
            body,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            scanned: 0,
            idle,
            count: 0,
        }
    }

    /// The next complete line already received, if any, with its 1-based number.
    pub(super) fn buffered(&mut self) -> Result<Option<(u64, &str)>, Fault> {
        let from = self.scanned.max(self.start);
        match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let (s, e) = (self.start, from + i);
                self.start = e + 1;
                self.scanned = self.start;
                self.count += 1;
                let line = std::str::from_utf8(&self.buf[s..e])
                    .map_err(|_| Fault::Parse(self.count, "not UTF-8".into()))?;
                Ok(Some((self.count, line)))
            }
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    /// Reads more of the body; `false` at its end.
    pub(super) async fn fill(&mut self) -> Result<bool, ClientError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start.min(self.scanned);
            self.start = 0;
        }
        loop {
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| ClientError::Timeout)?;
            match frame {
                None => return Ok(false),
                Some(f) => {
                    if let Ok(data) = f?.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        if self.buf.len() + data.len() > MAX_LINE_BYTES {
                            return Err(Fault::Parse(self.count + 1, "line too long".into()).into());
                        }
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
            }
        }
    }
}
