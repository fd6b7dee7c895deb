//! Traffic rollups (`[rollups]`, `[trust]` mode): every request the audit journal seals
//! is also counted, on the journal's writer thread, per API user × provider × route ×
//! outcome × minute, with histograms of the bank's and the hub's time per provider ×
//! route (`feed_wire::rollup`); closed minutes wait in a bounded outbox and a background
//! task pushes them to the control plane, idempotently by (gateway, epoch, minute). The
//! request path pays nothing: the journal record it already sends is what is counted,
//! so the rollups reconcile exactly with the journal. At a graceful stop the partial
//! minute is closed, pushed a last time, and what is still unacknowledged is spooled
//! next to the journal for the next process to push.

mod aggregate;
mod outbox;
mod ship;
mod spool;

pub use aggregate::{Aggregator, Counted};
pub use outbox::{Origin, Outbox};
pub use spool::{path_for as spool_path, Spool};

use prometheus::IntCounterVec;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::plane::{Endpoint, TrustPlane};

/// `[rollups]` compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupSettings {
    /// The gateway's name in the rollups (stable across restarts).
    pub gateway: String,
    /// How often closed minutes are pushed.
    pub push_interval: Duration,
    /// Closed minutes kept unacknowledged at most (the oldest beyond are dropped).
    pub max_pending_minutes: usize,
    /// How long after its end a minute is closed.
    pub close_after: Duration,
    /// Where to push (`[rollups] url`); empty: the `[trust]` endpoints.
    pub endpoints: Vec<Endpoint>,
    /// The spool file (none when the journal is standard output).
    pub spool: Option<PathBuf>,
}

/// This process's rollups: its origin (gateway, epoch), the outbox, the spool.
pub struct Rollups {
    /// The settings in force (a change needs a restart).
    pub settings: RollupSettings,
    /// This process.
    pub origin: Arc<Origin>,
    /// Closed minutes not yet acknowledged.
    pub outbox: Arc<Outbox>,
    spool: Mutex<Option<Spool>>,
    pushes: IntCounterVec,
}

impl Rollups {
    /// This process's rollups with a new epoch; a spool left by the previous process is
    /// read into the outbox first (pushed before this process's minutes).
    pub fn start(settings: RollupSettings, metrics: &Metrics) -> Rollups {
        let origin = Arc::new(Origin::drawn(settings.gateway.clone()));
        let outbox = Arc::new(Outbox::new(
            settings.max_pending_minutes,
            metrics.rollup_pending.clone(),
            metrics.rollup_dropped.clone(),
        ));
        let rollups = Rollups {
            spool: Mutex::new(settings.spool.clone().map(Spool::new)),
            settings,
            origin,
            outbox,
            pushes: metrics.rollup_pushes.clone(),
        };
        rollups.read_spool();
        tracing::info!(
            gateway = %rollups.origin.gateway,
            epoch = %rollups.origin.epoch,
            pending = rollups.outbox.len(),
            "traffic rollups on"
        );
        rollups
    }

    /// The journal writer's counter for this process.
    pub fn aggregator(&self) -> Aggregator {
        Aggregator::new(
            self.origin.clone(),
            self.outbox.clone(),
            self.settings.close_after,
        )
    }

    fn spool(&self) -> std::sync::MutexGuard<'_, Option<Spool>> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the spool into the outbox if it is there and changed.
    fn read_spool(&self) {
        if let Some(spool) = self.spool().as_mut() {
            match spool.read_into(&self.outbox) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(spool = %spool.path().display(), minutes = n, "rollup spool read; pushing it")
                }
                Err(e) => tracing::error!(error = %e, "rollup spool not read"),
            }
        }
    }

    /// At a graceful stop, once the journal is closed (every minute closed): a last push
    /// within `within`, then whatever is still unacknowledged goes to the spool.
    pub fn finish(&self, plane: Option<Arc<TrustPlane>>, within: Duration) {
        if let Some(plane) = plane.filter(|_| !self.outbox.is_empty()) {
            let pushed = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| {
                    rt.block_on(async { tokio::time::timeout(within, self.push_all(&plane)).await })
                });
            if !matches!(pushed, Ok(Ok(true))) {
                tracing::warn!(pending = self.outbox.len(), "last rollup push incomplete");
            }
        }
        self.write_spool();
    }

    /// Writes what is unacknowledged to the spool (or removes a spool fully pushed).
    fn write_spool(&self) {
        let batches = self.outbox.batches();
        let minutes: usize = batches.iter().map(|b| b.minutes.len()).sum();
        let guard = self.spool();
        let Some(spool) = guard.as_ref() else {
            if minutes > 0 {
                tracing::error!(minutes, "the journal is standard output: no rollup spool; unacknowledged minutes are lost");
                self.outbox.count_dropped("not_spooled", minutes);
            }
            return;
        };
        match spool.write(&batches) {
            Ok(()) if minutes > 0 => {
                tracing::info!(spool = %spool.path().display(), minutes, "unacknowledged rollups spooled for the next start")
            }
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, minutes, "rollup spool not written; unacknowledged minutes are lost");
                self.outbox.count_dropped("not_spooled", minutes);
            }
        }
    }
}
