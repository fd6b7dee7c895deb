//! One accepted connection of a sandbox bank: the I/O wrapper that lets a request
//! handler take the connection away from hyper (to write garbage or reset it), and
//! the per-connection control block that handlers and the connection task share.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

/// The server side of one TLS connection.
pub(crate) type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// What a handler asked the connection task to do with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    /// Write bytes that are not HTTP inside the TLS session, then close.
    Garbage = 1,
    /// Close the TCP connection with an RST (`SO_LINGER` 0).
    Reset = 2,
}

/// Non-HTTP bytes: a NUL, a bogus status-line-ish token and binary noise, so that
/// neither an HTTP/1.1 nor an HTTP/2 parser can take it for a response.
const GARBAGE: &[u8] =
    b"\x00\x17\xfe\xffSANDBOX-GARBAGE \x01\x02\x03 not http at all\r\n\x7f\x80\x81\r\n\r\n";

/// Shared by the connection task, the [`ConnIo`] hyper owns and every request
/// handler on the connection.
pub(crate) struct ConnCtl {
    abort: AtomicU8,
    wake: Notify,
    handoff: Mutex<Option<Tls>>,
    closed: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnCtl {
    pub(crate) fn new() -> Self {
        ConnCtl {
            abort: AtomicU8::new(0),
            wake: Notify::new(),
            handoff: Mutex::new(None),
            closed: watch::Sender::new(false),
        }
    }

    /// Asks the connection task to take the connection away from hyper.
    pub(crate) fn abort(&self, how: Abort) {
        self.abort.store(how as u8, Ordering::SeqCst);
        // notify_one keeps a permit if the task is not waiting yet: no lost wake-up.
        self.wake.notify_one();
    }

    fn aborted(&self) -> Option<Abort> {
        match self.abort.load(Ordering::SeqCst) {
            1 => Some(Abort::Garbage),
            2 => Some(Abort::Reset),
            _ => None,
        }
    }

    /// Completes when a handler called [`ConnCtl::abort`].
    pub(crate) async fn abort_requested(&self) {
        self.wake.notified().await;
    }

    /// Completes once the connection is gone (handlers that never answer wait on this
    /// so that they do not outlive their connection).
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        // An error means the sender is gone, which also means closed.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Called by the connection task after hyper's connection was dropped: performs
    /// the requested abort on the stream [`ConnIo`] handed back, then marks the
    /// connection closed.
    pub(crate) async fn finish(&self) {
        let stream = lock(&self.handoff).take();
        if let (Some(mut stream), Some(how)) = (stream, self.aborted()) {
            match how {
                Abort::Garbage => {
                    // Bounded: a peer that stops reading must not pin the task.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        stream.write_all(GARBAGE).await?;
                        stream.flush().await?;
                        stream.shutdown().await
                    })
                    .await;
                }
                Abort::Reset => {
                    if let Err(e) = stream.get_ref().0.set_zero_linger() {
                        tracing::debug!(error = %e, "sandbox bank: SO_LINGER 0 failed");
                    }
                }
            }
            drop(stream);
        }
        self.mark_closed();
    }

    fn mark_closed(&self) {
        self.closed.send_replace(true);
    }
}

/// Marks the connection closed when dropped, also when the connection task is
/// aborted (bank shutdown), so that no handler waits for a connection that is gone.
pub(crate) struct CloseOnDrop(pub(crate) Arc<ConnCtl>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.mark_closed();
    }
}

/// The I/O object given to hyper. On drop, if a handler asked for an abort, it hands
/// the TLS stream back to the connection task instead of closing it.
pub(crate) struct ConnIo {
    inner: Option<Tls>,
    ctl: Arc<ConnCtl>,
}

impl ConnIo {
    pub(crate) fn new(inner: Tls, ctl: Arc<ConnCtl>) -> Self {
        ConnIo {
            inner: Some(inner),
            ctl,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut Tls>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.ctl.aborted().is_some() {
            if let Some(stream) = self.inner.take() {
                *lock(&self.ctl.handoff) = Some(stream);
            }
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
