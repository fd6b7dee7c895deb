//! The audit journal (contract §8): one JSON line per request, handed off the request
//! path through a bounded channel to a writer thread, flushed when idle and on shutdown.
//! A record holds only identifiers fit for incident investigation: never token values,
//! keys, customer ids, account ids or bodies.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use consent_cache::Bin;
use policy::token::VerifiedToken;

/// What the request path hands to the journal: fixed-size fields and shared handles, no
/// formatting (that happens on the writer thread).
pub struct AuditRecord {
    /// When the request arrived.
    pub time: SystemTime,
    /// The interaction id (a UUID, 36 ASCII bytes).
    pub interaction_id: [u8; 36],
    /// The authenticated API user, once known.
    pub api_user: Option<Bin>,
    /// The provider, once parsed as a BIN.
    pub provider: Option<Bin>,
    /// The verified token (only its consent id and jti are written).
    pub token: Option<Arc<VerifiedToken>>,
    /// Route template.
    pub route: &'static str,
    /// Decision code (`ok` when allowed).
    pub code: &'static str,
    /// Status sent to the API user.
    pub status: u16,
    /// Status the provider answered (0 when not called).
    pub upstream_status: u16,
    /// End-to-end latency in microseconds.
    pub latency_us: u64,
    /// Time waiting for the provider in microseconds (0 when not called).
    pub upstream_latency_us: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    interaction_id: &'a str,
    api_user: Option<String>,
    provider: Option<String>,
    consent_id: Option<&'a str>,
    token_jti: Option<&'a str>,
    route: &'a str,
    code: &'a str,
    status: u16,
    upstream_status: u16,
    latency_us: u64,
    upstream_latency_us: u64,
}

/// Where the journal goes.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The journal file cannot be opened.
    #[error("audit journal {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The journal: its writer thread and the sender the request path clones.
pub struct AuditLog {
    tx: SyncSender<AuditRecord>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Opens the journal (`-` is standard output) and starts its writer thread.
    pub fn open(path: &Path, buffer: usize) -> Result<AuditLog, AuditError> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AuditError::Open {
                        path: path.display().to_string(),
                        source,
                    })?,
            )
        };
        let (tx, rx) = mpsc::sync_channel::<AuditRecord>(buffer);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_w = stop.clone();
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(rx, out, stop_w))
            .map_err(|source| AuditError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(AuditLog {
            tx,
            stop,
            writer: Some(writer),
        })
    }

    /// A sender for the request path (`try_send`: never blocks a request).
    pub fn sender(&self) -> SyncSender<AuditRecord> {
        self.tx.clone()
    }

    /// Drains what is queued, flushes and stops the writer.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(rx: mpsc::Receiver<AuditRecord>, out: Box<dyn Write + Send>, stop: Arc<AtomicBool>) {
    // The writer polls on a timer instead of blocking in `recv`: a blocked receiver makes
    // every request's `try_send` wake this thread (a futex call and a context switch per
    // request); polling drains records in batches and costs the request path nothing.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut wrote = false;
        while let Ok(r) = rx.try_recv() {
            write_one(&mut out, &r);
            wrote = true;
        }
        if wrote {
            let _ = out.flush();
        }
        if stopping {
            break;
        }
        std::thread::sleep(FLUSH_EVERY);
    }
    let _ = out.flush();
}

/// How long a record may wait in the buffer before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

fn write_one(out: &mut impl Write, r: &AuditRecord) {
    let time = time::OffsetDateTime::from(r.time)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let line = Line {
        time,
        interaction_id: std::str::from_utf8(&r.interaction_id).unwrap_or("-"),
        api_user: r.api_user.map(|b| b.to_string()),
        provider: r.provider.map(|b| b.to_string()),
        consent_id: r.token.as_deref().map(|t| &*t.consent_id),
        token_jti: r.token.as_deref().map(|t| &*t.jti),
        route: r.route,
        code: r.code,
        status: r.status,
        upstream_status: r.upstream_status,
        latency_us: r.latency_us,
        upstream_latency_us: r.upstream_latency_us,
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
