//! The sidecar's listeners and what protects them: a connection cap per listener and per
//! source address, a TLS handshake timeout, header and body read timeouts and an idle
//! timeout (HTTP/1.1 keep-alive and HTTP/2 alike), so that idle, half-open or slow
//! connections cannot hold the sidecar's sockets, and a flood on the public listener
//! cannot reach the internal one that gateways and operators use.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::http::{self, Body, Peer};

/// Pending connections the kernel may queue before `accept` (capped by `somaxconn`).
const BACKLOG: u32 = 4096;
/// Concurrent HTTP/2 streams per connection.
const MAX_H2_STREAMS: u32 = 64;

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// API users and customers: consents, the customer's routes, the token endpoint.
    Public,
    /// Gateways and operators: snapshot, feed, participant registry, key administration.
    Internal,
    /// Everything (one listener, no `internal_listen` configured).
    All,
}

/// The protections of one listener (`trust serve --help` lists the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Open connections at once (default 10,000 public, 1,000 internal); past it a new
    /// connection is closed at once.
    pub max_connections: usize,
    /// Open connections from one source address (default 256 public, 1,000 internal).
    pub max_connections_per_address: usize,
    /// A TLS handshake must finish within this (default 10 s).
    pub handshake_timeout: Duration,
    /// An HTTP/1.1 request head must arrive within this (default 10 s).
    pub header_read_timeout: Duration,
    /// A request body must arrive within this (default 30 s; `408 request_timeout`).
    pub body_read_timeout: Duration,
    /// A connection with no request in progress is closed after this (default 60 s).
    pub idle_timeout: Duration,
}

impl ListenerLimits {
    /// The public listener's defaults.
    pub fn public() -> ListenerLimits {
        ListenerLimits {
            max_connections: 10_000,
            max_connections_per_address: 256,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// The internal listener's defaults: few callers (gateways, operators), each may hold
    /// a feed open.
    pub fn internal() -> ListenerLimits {
        ListenerLimits {
            max_connections: 1_000,
            max_connections_per_address: 1_000,
            ..ListenerLimits::public()
        }
    }

    /// The first setting that is zero (which would refuse everything), by name.
    pub fn zero_field(&self) -> Option<&'static str> {
        [
            (self.max_connections == 0, "max-connections"),
            (
                self.max_connections_per_address == 0,
                "max-connections-per-address",
            ),
            (self.handshake_timeout.is_zero(), "handshake-timeout-ms"),
            (self.header_read_timeout.is_zero(), "header-read-timeout-ms"),
            (self.body_read_timeout.is_zero(), "body-read-timeout-ms"),
            (self.idle_timeout.is_zero(), "idle-timeout-ms"),
        ]
        .into_iter()
        .find(|(zero, _)| *zero)
        .map(|(_, name)| name)
    }
}

/// Binds `addr` with a deep accept queue.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Counts open connections, globally and per source address.
#[derive(Debug)]
struct Gate {
    global: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
}

/// One admitted connection; dropping it frees its places.
struct Admitted {
    _global: OwnedSemaphorePermit,
    gate: Arc<Gate>,
    addr: IpAddr,
}

impl Gate {
    fn new(limits: &ListenerLimits) -> Arc<Gate> {
        Arc::new(Gate {
            global: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: Mutex::new(HashMap::new()),
            max_per_address: limits.max_connections_per_address,
        })
    }

    fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<Admitted> {
        let global = self.global.clone().try_acquire_owned().ok()?;
        let mut map = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(addr).or_insert(0);
        if *n >= self.max_per_address {
            return None;
        }
        *n += 1;
        Some(Admitted {
            _global: global,
            gate: self.clone(),
            addr,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self
            .gate
            .per_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

/// What every connection of one listener shares.
#[derive(Clone)]
pub struct Serving {
    /// TLS.
    pub acceptor: TlsAcceptor,
    /// The application.
    pub app: Arc<App>,
    /// Which routes it serves.
    pub exposure: Exposure,
    /// Its protections.
    pub limits: ListenerLimits,
}

/// Accepts until `shutdown`, then closes every connection.
pub async fn accept_loop(
    listener: TcpListener,
    serving: Serving,
    mut shutdown: watch::Receiver<bool>,
) {
    let gate = Gate::new(&serving.limits);
    let http = Arc::new(http_builder(&serving.limits));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => match gate.admit(remote.ip()) {
                    // Over a cap: closed at once, before any TLS work.
                    None => drop(tcp),
                    Some(place) => {
                        let conn = Conn { serving: serving.clone(), http: http.clone(), remote: remote.ip() };
                        conns.spawn(conn.serve(tcp, place, shutdown.clone()));
                    }
                },
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    conns.shutdown().await;
}

fn http_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .keep_alive_interval(None);
    http
}

/// Resolves once the sidecar is stopping.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// One accepted connection.
struct Conn {
    serving: Serving,
    http: Arc<auto::Builder<TokioExecutor>>,
    remote: IpAddr,
}

impl Conn {
    async fn serve(self, tcp: TcpStream, _place: Admitted, mut shutdown: watch::Receiver<bool>) {
        let _ = tcp.set_nodelay(true);
        let limits = self.serving.limits;
        let handshake = self.serving.acceptor.accept(tcp);
        let tls = tokio::select! {
            r = tokio::time::timeout(limits.handshake_timeout, handshake) => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            },
            () = stopped(&mut shutdown) => return,
        };
        let peer = Arc::new(Peer {
            thumbprint: tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| crate::server::thumbprint(leaf.as_ref())),
            addr: self.remote,
            exposure: self.serving.exposure,
            body_read_timeout: limits.body_read_timeout,
        });
        let activity = Arc::new(Activity::default());
        let service = {
            let (app, activity) = (self.serving.app.clone(), activity.clone());
            service_fn(move |req| {
                let (app, peer, busy) = (app.clone(), peer.clone(), activity.begin());
                async move {
                    let resp = http::handle(app, peer, req).await;
                    Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked {
                        inner: b,
                        _busy: busy,
                    }))
                }
            })
        };
        let conn = self.http.serve_connection(TokioIo::new(tls), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => log_end(r),
            () = activity.idle_for(limits.idle_timeout) => {
                // Finish what is in flight (nothing, or a request that just began), then close.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    r = conn.as_mut() => log_end(r),
                    () = tokio::time::sleep(limits.header_read_timeout) => {}
                }
            }
            () = stopped(&mut shutdown) => {}
        }
    }
}

fn log_end(r: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Requests in progress on one connection (from the request to the end of its response
/// body, so a feed being streamed is never idle).
#[derive(Default)]
struct Activity {
    busy: AtomicUsize,
    changed: Notify,
}

/// One request in progress; dropped with its response body.
struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Resolves once no request has been in progress for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before reading the count, so no change is missed in between.
            changed.as_mut().enable();
            if self.busy.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            if tokio::time::timeout(timeout, changed).await.is_err()
                && self.busy.load(Ordering::SeqCst) == 0
            {
                return;
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in progress until it is dropped.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
