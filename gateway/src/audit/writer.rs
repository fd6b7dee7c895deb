//! The journal's writer thread: takes records off the queue in batches, formats and seals
//! them into the hash chain (all the per-record work, SHA-256 included, happens here, not
//! on the request path), writes them, and only then gives their places in the queue back.
//! A write that fails or blocks keeps its records: the queue fills up and consent routes
//! are refused (`503 audit_unavailable`) until the journal takes records again. Also
//! reopens the file on request (log rotation), continuing the chain into the new file.
//! A record's tap (`live`) is finished here: a transactions page's lines go into the line
//! and the rollups, a sampled answer to the live checks' validator.

use serde::Serialize;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use super::chain::{self, Hash, GENESIS};
use super::lock::JournalLock;
use super::{AuditRecord, Counters, Takeover};
use crate::live::{Finished, LiveChecks};
use crate::rollup::{Aggregator, Counted};

/// How long a record may wait in the queue before it is written.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// How long a stopping writer waits for the validator's last checks.
const LIVE_FINISH: Duration = Duration::from_secs(1);

/// Formatted bytes the writer holds before it stops taking records off the queue (a
/// stalled sink must not turn the queue into unbounded memory).
const MAX_PENDING: usize = 1 << 20;

/// What the request path and the writer share.
pub(super) struct Shared {
    /// Records queued, or places reserved for them, not yet written to the sink.
    pub(super) used: AtomicUsize,
    /// The most `used` may reach (`[audit] buffer`).
    pub(super) capacity: usize,
    /// Records refused since start (queue full, writer gone).
    pub(super) dropped: AtomicU64,
    /// Set to ask the writer to reopen the file.
    pub(super) reopen: AtomicBool,
    /// Set to ask the writer to drain and stop.
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn new(capacity: usize) -> Shared {
        Shared {
            used: AtomicUsize::new(0),
            capacity,
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }
}

/// Where the journal goes.
pub(super) enum Sink {
    /// Standard output (`path = "-"`); never reopened.
    Stdout,
    /// An appended file.
    File {
        /// Its path (opened again on reopen).
        path: PathBuf,
        /// The open file.
        file: File,
    },
}

impl Sink {
    /// Opens the journal and finds where its chain stands: the last record's hash of a
    /// journal already on disk (a restart continues it), otherwise the genesis.
    pub(super) fn open(path: &Path) -> std::io::Result<(Sink, Hash)> {
        if path.as_os_str() == "-" {
            return Ok((Sink::Stdout, GENESIS));
        }
        let (last, cut_short) = chain::resume(path)?;
        let mut file = append(path)?;
        if cut_short {
            // The previous process died mid-record: the next record starts on its own line
            // (the cut record stays, and `gateway audit verify` reports it).
            file.write_all(b"\n")?;
        }
        let not_empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 1);
        if last.is_none() && not_empty {
            tracing::warn!(path = %path.display(), "the journal's last line is not a sealed record: a new hash chain starts here");
        }
        Ok((
            Sink::File {
                path: path.to_path_buf(),
                file,
            },
            last.unwrap_or(GENESIS),
        ))
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let n = out.write(buf)?;
                out.flush()?;
                Ok(n)
            }
            Sink::File { file, .. } => file.write(buf),
        }
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// How the writer thread begins: with the journal open, or once the process that still
/// writes it (the old process of a binary upgrade) has closed it.
pub(super) enum Start {
    /// Standard output, or a file whose lock this process holds: opened, chain resumed.
    Ready {
        sink: Sink,
        prev: Hash,
        lock: Option<JournalLock>,
    },
    /// A file another process holds: wait for its lock, then open it and resume its chain.
    Wait { path: PathBuf, lock: JournalLock },
}

impl Start {
    /// Takes the journal at `path`; `None` when another process holds it and `takeover`
    /// refuses that.
    pub(super) fn take(path: &Path, takeover: Takeover) -> std::io::Result<Option<Start>> {
        if path.as_os_str() == "-" {
            let (sink, prev) = Sink::open(path)?;
            let lock = None;
            return Ok(Some(Start::Ready { sink, prev, lock }));
        }
        let lock = JournalLock::open(path)?;
        if lock.try_take()? {
            let (sink, prev) = Sink::open(path)?;
            let lock = Some(lock);
            return Ok(Some(Start::Ready { sink, prev, lock }));
        }
        if takeover == Takeover::Refuse {
            return Ok(None);
        }
        // A journal that cannot be opened at all fails the start now, not after the wait.
        append(path)?;
        tracing::info!(
            journal = %path.display(),
            lock = %lock.path().display(),
            "another process still writes the audit journal: records wait in the queue until it has closed it"
        );
        let path = path.to_path_buf();
        Ok(Some(Start::Wait { path, lock }))
    }

    /// The writer, once the journal is this process's (on the writer thread: may block).
    pub(super) fn into_writer(
        self,
        rx: Receiver<AuditRecord>,
        shared: Arc<Shared>,
        counters: Counters,
    ) -> Writer {
        match self {
            Start::Ready { sink, prev, lock } => {
                Writer::new(rx, sink, shared, prev, lock, counters)
            }
            Start::Wait { path, lock } => {
                let waited = std::time::Instant::now();
                // Blocks until the other process closes the journal or exits (the kernel
                // releases its lock then). A hub stopped meanwhile logs its unwritten
                // records when `AuditLog::close` gives up waiting for this thread.
                if let Err(e) = lock.wait() {
                    tracing::error!(error = %e, "cannot lock the audit journal; writing it anyway");
                }
                let (sink, prev) = open_retrying(&path);
                tracing::info!(
                    journal = %path.display(),
                    waited_ms = waited.elapsed().as_millis() as u64,
                    chain_from = %chain::hex(&prev),
                    "audit journal taken over from the previous process"
                );
                Writer::new(rx, sink, shared, prev, Some(lock), counters)
            }
        }
    }
}

/// Opens the journal, retrying every second while it cannot be (logged once): the queue
/// fills meanwhile and consent routes are refused, as with any failing journal.
fn open_retrying(path: &Path) -> (Sink, Hash) {
    let mut logged = false;
    loop {
        match Sink::open(path) {
            Ok(opened) => return opened,
            Err(e) => {
                if !logged {
                    tracing::error!(journal = %path.display(), error = %e, "cannot open the audit journal; retrying every second");
                    logged = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Sealed lines not yet (fully) written.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
    /// Where each line of `buf` ends, and whether it is a request's record (which holds a
    /// place in the queue until written).
    lines: VecDeque<(usize, bool)>,
}

impl Pending {
    /// Drops the lines written completely; returns how many were request records.
    fn retire(&mut self) -> usize {
        let (mut records, mut cut) = (0, 0);
        while let Some(&(end, is_record)) = self.lines.front() {
            if end > self.written {
                break;
            }
            self.lines.pop_front();
            records += usize::from(is_record);
            cut = end;
        }
        if cut > 0 {
            self.buf.drain(..cut);
            self.written -= cut;
            for (end, _) in &mut self.lines {
                *end -= cut;
            }
        }
        records
    }
}

/// The record as written: contract §8's fields, the chain link, never a secret.
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
    /// How the call ended (the rollups' outcome: `refused`, `success`, `timeout`, …).
    outcome: &'static str,
    /// The bank's time to the last byte (or the failure), µs; the hub's is the rest.
    bank_us: u64,
    /// Transactions: the lines of the page the provider answered (absent when it could
    /// not be counted: not a successful answer, content-encoded, over the tap's bound, not
    /// a page).
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<u64>,
    /// The minute the rollups counted the record in, when not its own (a request that
    /// outlasted its minute's closing; see `rollup`).
    #[serde(skip_serializing_if = "Option::is_none")]
    rollup_minute: Option<i64>,
    prev: &'a str,
}

/// The marker of records the journal could not take, written where they would have been.
#[derive(Serialize)]
struct Gap<'a> {
    time: String,
    event: &'static str,
    count: u64,
    prev: &'a str,
}

/// What the rollups count of a record.
fn counted(r: &AuditRecord, lines: Option<u64>) -> Counted<'_> {
    Counted {
        api_user: r.api_user,
        provider: r.provider,
        route: r.route,
        outcome: r.outcome,
        latency_us: r.latency_us,
        bank_us: r.bank_us,
        lines: lines.unwrap_or(0),
        consent: r.token.as_deref().map(|t| &*t.consent_id),
    }
}

fn hex64(h: &Hash) -> [u8; 64] {
    let mut out = [b'0'; 64];
    out.copy_from_slice(chain::hex(h).as_bytes());
    out
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) rx: Receiver<AuditRecord>,
    pub(super) sink: Sink,
    pub(super) shared: Arc<Shared>,
    /// The last sealed record's hash, in hex (copied from its line: no formatting twice).
    prev: [u8; 64],
    pending: Pending,
    /// Drops already marked in the journal.
    gaps_marked: u64,
    /// The sink refused the last write (logged once per outage).
    failing: bool,
    /// This process's hold on the journal, released when the writer ends.
    _lock: Option<JournalLock>,
    /// The traffic rollups, counted from the records as they are sealed.
    rollups: Option<Aggregator>,
    /// The live checks' validator.
    live: Option<LiveChecks>,
}

impl Writer {
    pub(super) fn new(
        rx: Receiver<AuditRecord>,
        sink: Sink,
        shared: Arc<Shared>,
        prev: Hash,
        lock: Option<JournalLock>,
        counters: Counters,
    ) -> Writer {
        Writer {
            rx,
            sink,
            shared,
            prev: hex64(&prev),
            pending: Pending::default(),
            gaps_marked: 0,
            failing: false,
            _lock: lock,
            rollups: counters.rollups,
            live: counters.live,
        }
    }

    /// Runs until asked to stop and everything queued is written. Polls on a timer rather
    /// than blocking in `recv`: a blocked receiver makes every request's send wake this
    /// thread (a futex call and a context switch per request); polling drains in batches.
    pub(super) fn run(mut self) {
        loop {
            let stopping = self.shared.stop.load(Ordering::SeqCst);
            if self.shared.reopen.swap(false, Ordering::SeqCst) {
                self.reopen();
            }
            let queue_empty = self.fill();
            self.flush();
            self.count_live_results();
            if let Some(r) = self.rollups.as_mut() {
                r.close_due(std::time::SystemTime::now());
            }
            if stopping && queue_empty && self.pending.buf.is_empty() {
                break;
            }
            std::thread::sleep(FLUSH_EVERY);
        }
        self.finish_live();
        // The process counts nothing more: its partial minute is closed too.
        if let Some(r) = self.rollups.as_mut() {
            r.close_all();
        }
        tracing::info!(last_hash = self.prev_hex(), "audit journal closed");
    }

    /// Seals queued records into the pending buffer (up to its bound); returns whether the
    /// queue is empty.
    fn fill(&mut self) -> bool {
        while self.pending.buf.len() < MAX_PENDING {
            match self.rx.try_recv() {
                Ok(r) => {
                    self.mark_gap();
                    self.seal_record(&r);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    self.mark_gap();
                    return true;
                }
            }
        }
        false
    }

    /// Records refused since the last mark leave one sealed line saying how many.
    fn mark_gap(&mut self) {
        let dropped = self.shared.dropped.load(Ordering::Acquire);
        if dropped <= self.gaps_marked {
            return;
        }
        let prev = self.prev;
        let gap = Gap {
            time: rfc3339(std::time::SystemTime::now()),
            event: "records_dropped",
            count: dropped - self.gaps_marked,
            prev: std::str::from_utf8(&prev).unwrap_or_default(),
        };
        if self.seal(&gap, false) {
            self.gaps_marked = dropped;
        }
    }

    fn seal_record(&mut self, r: &AuditRecord) {
        let prev = self.prev;
        let minute = self.rollups.as_ref().map(|a| a.minute_of(r.time));
        let tapped = r.tap.as_deref().map(crate::live::Tap::finish);
        let lines = tapped.as_ref().and_then(|t| t.lines);
        let line = Line {
            time: rfc3339(r.time),
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
            outcome: r.outcome.as_str(),
            bank_us: r.bank_us,
            lines,
            rollup_minute: minute.and_then(|m| m.moved()),
            prev: std::str::from_utf8(&prev).unwrap_or_default(),
        };
        if self.seal(&line, true) {
            // Counted exactly as journalled: the rollups reconcile with the journal.
            if let (Some(a), Some(m)) = (self.rollups.as_mut(), minute) {
                a.count(m, &counted(r, lines));
            }
            if let Some(t) = tapped {
                self.sample(r, t);
            }
        } else {
            // Cannot happen for these plain fields; the record's place is given back
            // and it is counted as dropped, so a gap marks it.
            self.shared.used.fetch_sub(1, Ordering::AcqRel);
            self.shared.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Hands a tapped answer's sample to the live checks; what they count at once (not
    /// checkable, their queue full) goes to the rollups now.
    fn sample(&mut self, r: &AuditRecord, t: Finished) {
        let (Some(live), Some(provider)) = (self.live.as_ref(), r.provider) else {
            return;
        };
        if let Some(c) = live.submit(r.time, provider, r.route, t.api, t.sample) {
            if let Some(a) = self.rollups.as_mut() {
                a.count_live(&c);
            }
        }
    }

    /// The validator's finished checks, into the rollups.
    fn count_live_results(&mut self) {
        if let (Some(live), Some(a)) = (self.live.as_ref(), self.rollups.as_mut()) {
            for c in live.results() {
                a.count_live(&c);
            }
        }
    }

    /// The validator's last checks, within a bound (a stop must not wait on it).
    fn finish_live(&mut self) {
        if let Some(live) = self.live.take() {
            for c in live.finish(LIVE_FINISH) {
                if let Some(a) = self.rollups.as_mut() {
                    a.count_live(&c);
                }
            }
        }
    }

    /// Serialises `value` as the next line of the chain.
    fn seal(&mut self, value: &impl Serialize, is_record: bool) -> bool {
        let p = &mut self.pending;
        let start = p.buf.len();
        if serde_json::to_writer(&mut p.buf, value).is_err() {
            p.buf.truncate(start);
            return false;
        }
        chain::seal(&mut p.buf, start);
        // The line ends `"hash":"<64 hex>"}` and a newline.
        let end = p.buf.len() - 3;
        self.prev.copy_from_slice(&p.buf[end - 64..end]);
        p.lines.push_back((p.buf.len(), is_record));
        true
    }

    /// Writes what is pending; gives the queue places of written records back.
    fn flush(&mut self) {
        let p = &mut self.pending;
        while p.written < p.buf.len() {
            match self.sink.write(&p.buf[p.written..]) {
                Ok(0) => {
                    self.note_failure(&std::io::Error::from(ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => p.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.note_failure(&e);
                    break;
                }
            }
        }
        let done = self.pending.retire();
        if done > 0 {
            self.shared.used.fetch_sub(done, Ordering::AcqRel);
        }
        if self.failing && self.pending.buf.is_empty() {
            self.failing = false;
            tracing::info!("audit journal writable again");
        }
    }

    fn prev_hex(&self) -> &str {
        std::str::from_utf8(&self.prev).unwrap_or_default()
    }

    fn note_failure(&mut self, e: &std::io::Error) {
        if !self.failing {
            self.failing = true;
            tracing::error!(error = %e, "audit journal write failed: records are kept and consent routes refused until it succeeds");
        }
    }

    /// Log rotation: finishes what it can in the old file, then appends to a file opened
    /// anew at the same path. A record cut short in the old file is written whole in the
    /// new one; the chain continues (the new file's first record links to the old file's
    /// last). If the new file cannot be opened, the old one keeps being written.
    fn reopen(&mut self) {
        let Sink::File { path, .. } = &self.sink else {
            return;
        };
        let path = path.clone();
        self.flush();
        match append(&path) {
            Ok(file) => {
                self.pending.written = 0;
                self.sink = Sink::File {
                    path: path.clone(),
                    file,
                };
                tracing::info!(path = %path.display(), chain_from = self.prev_hex(), "audit journal reopened");
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "audit journal not reopened; still writing the previous file");
            }
        }
    }
}
