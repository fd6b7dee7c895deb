//! The audit journal (contract §8): one sealed JSON line per request, handed off the
//! request path to a writer thread. Nothing that served customer data goes unrecorded: a
//! consent route reserves its record's place in the journal before it is admitted
//! ([`Journal::reserve`]), and while the journal cannot take records (its queue full of
//! records the sink has not accepted: a stalled or failing disk, a pipe nobody reads)
//! consent routes are refused instead (`503 audit_unavailable`); open data continues and
//! a record the journal cannot take is counted and marked in the journal by a
//! `records_dropped` line. Each line carries a SHA-256 hash chained to the previous one,
//! across log rotation (reopen on SIGUSR1); `gateway audit verify` checks a journal.
//! A record holds only identifiers fit for incident investigation: never token values,
//! keys, customer ids, account ids or bodies. One process writes a journal file at a time
//! (`<journal>.lock`); a binary upgrade's new process waits for the old one to close it.

pub mod chain;
mod lock;
mod writer;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use consent_cache::Bin;
use feed_wire::rollup::Outcome;
use policy::token::VerifiedToken;

use crate::live::LiveChecks;
use crate::rollup::Aggregator;

use writer::Shared;

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
    /// How the call ended, as the traffic rollups count it (`feed_wire::rollup`).
    pub outcome: Outcome,
    /// The bank's time in microseconds: from the call to the provider to the last byte
    /// of its answer, or to the failure (0 when the provider was not called).
    pub bank_us: u64,
    /// The tap on the provider's successful answer (transactions, or sampled for the
    /// live checks), ended: the writer counts its lines and hands a sample on. `None`
    /// for nearly every request (nothing allocated for it).
    pub tap: Option<Box<crate::live::Tap>>,
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The journal file cannot be opened (or its tail read to continue the chain).
    #[error("audit journal {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process writes this journal (it holds the lock file).
    #[error(
        "audit journal {path}: another process is writing it (it holds {lock}); \
         a binary upgrade is started with `gateway run --upgrade`"
    )]
    InUse {
        /// The journal.
        path: String,
        /// Its lock file.
        lock: String,
    },
}

/// What the journal does when another process still writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Refuse to open it (a second hub configured with the same journal).
    Refuse,
    /// Queue records (within `[audit] buffer`) until the other process has closed it, then
    /// continue its chain: the new process of a binary upgrade.
    Wait,
}

/// What the writer thread counts besides writing the journal.
#[derive(Default)]
pub struct Counters {
    /// The traffic rollups.
    pub rollups: Option<Aggregator>,
    /// The live checks' validator.
    pub live: Option<LiveChecks>,
}

/// The request path's handle on the journal: sends records, reserves places for them.
#[derive(Clone)]
pub struct Journal {
    tx: Sender<AuditRecord>,
    shared: Arc<Shared>,
}

/// A place in the journal's queue held for one request's record: taken before a consent
/// route is admitted, used by its record. Dropped unused, the place is given back.
pub struct Slot {
    shared: Arc<Shared>,
    /// Still this slot's to give back (not handed to a queued record).
    held: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.shared.used.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Journal {
    /// Takes a place in the queue; `false` while the journal cannot take records.
    fn take_place(&self) -> bool {
        let s = &self.shared;
        if s.used.fetch_add(1, Ordering::AcqRel) < s.capacity {
            return true;
        }
        s.used.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Reserves a place for a record that must not be lost (a consent route's); `None`
    /// while the journal cannot take records.
    pub fn reserve(&self) -> Option<Slot> {
        self.take_place().then(|| Slot {
            shared: self.shared.clone(),
            held: true,
        })
    }

    /// Queues a record in its reserved place (`slot`), or in a free one; `false` when
    /// the journal could not take it (it is then counted and marked as dropped).
    pub fn send(&self, record: AuditRecord, slot: Option<Slot>) -> bool {
        let placed = match slot {
            // The place now belongs to the queued record: the writer gives it back.
            Some(mut slot) => {
                slot.held = false;
                true
            }
            None => self.take_place(),
        };
        if placed && self.tx.send(record).is_ok() {
            return true;
        }
        if placed {
            // The writer is gone: the place is not coming back through it.
            self.shared.used.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.dropped.fetch_add(1, Ordering::AcqRel);
        false
    }

    /// Asks the writer to reopen the journal file (log rotation).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::SeqCst);
    }

    /// Records queued or reserved and not yet written.
    pub fn backlog(&self) -> usize {
        self.shared.used.load(Ordering::Acquire)
    }
}

/// The journal: its writer thread and the handle the request path clones.
pub struct AuditLog {
    journal: Journal,
    done: mpsc::Receiver<()>,
    running: bool,
}

impl AuditLog {
    /// Opens the journal (`-` is standard output; an existing file is appended to and its
    /// chain continued) and starts its writer thread. `buffer` bounds the records queued
    /// or reserved and not yet written.
    /// Refuses a journal another process writes ([`Takeover::Refuse`]).
    #[cfg(test)]
    pub fn open(path: &Path, buffer: usize) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(path, buffer, Takeover::Refuse, Counters::default())
    }

    /// As [`AuditLog::open`], with the choice of what to do when another process holds
    /// the journal. Waiting happens on the writer thread: the hub serves meanwhile, and
    /// its records wait in the queue. With `counters.rollups`, the writer also counts every
    /// record it seals into the traffic rollups (off the request path, exactly as
    /// journalled); with `counters.live`, it hands sampled answers to the live checks.
    pub fn open_with(
        path: &Path,
        buffer: usize,
        takeover: Takeover,
        counters: Counters,
    ) -> Result<AuditLog, AuditError> {
        let failed = |source| AuditError::Open {
            path: path.display().to_string(),
            source,
        };
        let start = writer::Start::take(path, takeover).map_err(failed)?;
        let start = match start {
            Some(start) => start,
            None => {
                return Err(AuditError::InUse {
                    path: path.display().to_string(),
                    lock: lock::lock_path(path).display().to_string(),
                })
            }
        };
        let shared = Arc::new(Shared::new(buffer.max(1)));
        let (tx, rx) = mpsc::channel::<AuditRecord>();
        let (done_tx, done) = mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                start.into_writer(rx, thread_shared, counters).run();
                let _ = done_tx.send(());
            })
            .map_err(failed)?;
        Ok(AuditLog {
            journal: Journal { tx, shared },
            done,
            running: true,
        })
    }

    /// The request path's handle.
    pub fn journal(&self) -> Journal {
        self.journal.clone()
    }

    /// Writes what is queued and stops the writer, waiting at most `wait` (a sink that
    /// blocks must not hold the process forever); `false` when records were left unwritten.
    pub fn close(&mut self, wait: Duration) -> bool {
        if !self.running {
            return true;
        }
        self.running = false;
        self.journal.shared.stop.store(true, Ordering::SeqCst);
        if self.done.recv_timeout(wait).is_ok() {
            return true;
        }
        tracing::error!(
            unwritten = self.journal.backlog(),
            "the audit journal did not take its last records in time"
        );
        false
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close(CLOSE_WAIT);
    }
}

/// How long dropping the journal waits for the writer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
