//! The follower's transport: one mTLS HTTP/1.1 `GET` to one trust endpoint ([`get`])
//! and the NDJSON line splitter over a response body ([`Lines`]), which ends a body that
//! goes without a complete line past its stall bound. What the lines mean is the
//! protocol's business ([`super::protocol`]).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use std::time::{Duration, Instant};

use super::endpoints::Stall;
use super::protocol::Fault;
use crate::plane::{ConnectError, Endpoint, TrustPlane};

/// TCP + TLS + response headers, at most (see [`connect_timeout`]).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A line longer than this is refused (a consent record is at most a few hundred KiB).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Why a request to the sidecar, or the body it was answered with, failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    /// TCP or TLS.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The connection or the headers took too long.
    #[error("timed out")]
    Timeout,
    /// The body went without a complete line for longer than its stall bound.
    #[error("stalled: no line for {0:?}")]
    Stalled(Duration),
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

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> ClientError {
        match e {
            ConnectError::Io(e) => ClientError::Io(e),
            ConnectError::Http(e) => ClientError::Http(e),
        }
    }
}

/// The client half of an HTTP/1.1 connection; kept as long as its response body is read.
pub(super) type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// How long a connection may take up to the response headers: [`CONNECT_TIMEOUT`], or
/// the stall bound when that is shorter (an endpoint that accepts and then says nothing
/// is left as soon as a silent feed would be).
pub(super) fn connect_timeout(plane: &TrustPlane) -> Duration {
    CONNECT_TIMEOUT.min(Stall::bound_for(plane.heartbeat))
}

/// One GET to `endpoint`; the sender is returned so the connection lives as long as the
/// body.
pub(super) async fn get(
    plane: &TrustPlane,
    endpoint: &Endpoint,
    path_and_query: &str,
) -> Result<(Sender, http::Response<Incoming>), ClientError> {
    let connect = async {
        let mut sender: Sender = endpoint.connect(&plane.tls).await?;
        let req = http::Request::get(format!("{}{}", endpoint.prefix, path_and_query))
            .header(http::header::HOST, endpoint.authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        Ok::<_, ClientError>((sender, resp))
    };
    tokio::time::timeout(connect_timeout(plane), connect)
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// Splits a response body into `\n`-terminated lines.
pub(super) struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    start: usize,
    scanned: usize,
    stall: Stall,
    /// The last data read completed a line: the stall clock restarts when the next wait
    /// begins (time the loop spends applying what it read is not the sidecar's silence).
    line_read: bool,
    count: u64,
}

impl Lines {
    /// Reads `body`; a body that goes without a complete line for `stall_bound` (from
    /// now, then from each line) ends with [`ClientError::Stalled`].
    pub(super) fn new(body: Incoming, stall_bound: Duration) -> Lines {
        Lines {
            body,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            scanned: 0,
            stall: Stall::new(stall_bound, Instant::now()),
            line_read: false,
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
        if std::mem::take(&mut self.line_read) {
            self.stall.line(Instant::now());
        }
        loop {
            // Checked before waiting too: a timeout polls its future first, so bytes that
            // keep trickling in without a newline would never reach the deadline.
            if self.stall.stalled(Instant::now()) {
                return Err(ClientError::Stalled(self.stall.bound()));
            }
            let deadline = tokio::time::Instant::from_std(self.stall.deadline());
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .map_err(|_| ClientError::Stalled(self.stall.bound()))?;
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
                        self.line_read = data.contains(&b'\n');
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
            }
        }
    }
}
