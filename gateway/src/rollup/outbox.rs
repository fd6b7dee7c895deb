//! The outbox: closed minutes waiting for the control plane's acknowledgement, oldest
//! first, each under the process (gateway name and epoch) that counted it. Bounded by
//! `max_pending_minutes`: beyond it the oldest minute is dropped and counted
//! (`hub_rollup_minutes_dropped_total{reason="bound"}`), so a long control-plane outage
//! costs bounded memory and never blocks the journal writer, let alone a request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use feed_wire::rollup::{MinuteRollup, RollupBatch};
#[cfg(test)]
use prometheus::Opts;
use prometheus::{IntCounterVec, IntGauge};

/// The process that counted a minute: the idempotence key's first two parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The gateway's configured name.
    pub gateway: String,
    /// The process's epoch.
    pub epoch: String,
}

impl Origin {
    /// A given name and epoch.
    pub fn new(gateway: String, epoch: String) -> Origin {
        Origin { gateway, epoch }
    }

    /// This process: `gateway` with a new random epoch (128 bits, hex), so that no other
    /// process of the same gateway, before or after, shares it.
    pub fn drawn(gateway: String) -> Origin {
        let epoch = uuid::Uuid::new_v4().simple().to_string();
        Origin { gateway, epoch }
    }
}

struct Entry {
    origin: Arc<Origin>,
    minute: MinuteRollup,
}

/// Closed minutes not yet acknowledged.
pub struct Outbox {
    queue: Mutex<VecDeque<Entry>>,
    bound: usize,
    pending: IntGauge,
    dropped: IntCounterVec,
}

impl Outbox {
    /// An outbox of at most `bound` minutes, reporting through the hub's metrics.
    pub fn new(bound: usize, pending: IntGauge, dropped: IntCounterVec) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            bound: bound.max(1),
            pending,
            dropped,
        }
    }

    /// An outbox whose metrics are registered nowhere (tests).
    #[cfg(test)]
    pub fn detached(bound: usize) -> Outbox {
        let dropped = IntCounterVec::new(Opts::new("d", "d"), &["reason"]).expect("metric");
        Outbox::new(bound, IntGauge::new("p", "p").expect("metric"), dropped)
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        // A panic while holding the lock leaves a consistent queue (no half-done edits).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a closed minute; past the bound the oldest is dropped and counted.
    pub fn push(&self, origin: &Arc<Origin>, minute: MinuteRollup) {
        let mut q = self.queue();
        q.push_back(Entry {
            origin: origin.clone(),
            minute,
        });
        while q.len() > self.bound {
            q.pop_front();
            self.dropped.with_label_values(&["bound"]).inc();
        }
        self.pending.set(q.len() as i64);
    }

    /// Adds the minutes of `batch` not already held (a spool read back), oldest first.
    pub fn restore(&self, batch: RollupBatch) {
        let origin = Arc::new(Origin::new(batch.gateway, batch.epoch));
        for minute in batch.minutes {
            let held = self
                .queue()
                .iter()
                .any(|e| *e.origin == *origin && e.minute.minute == minute.minute);
            if !held {
                self.push(&origin, minute);
            }
        }
    }

    /// The next push: up to `max` of the oldest process's minutes, oldest first (copies;
    /// they stay until acknowledged).
    pub fn batch(&self, max: usize) -> Option<RollupBatch> {
        let q = self.queue();
        let origin = q.front()?.origin.clone();
        let minutes = q
            .iter()
            .filter(|e| *e.origin == *origin)
            .take(max)
            .map(|e| e.minute.clone())
            .collect();
        Some(RollupBatch {
            gateway: origin.gateway.clone(),
            epoch: origin.epoch.clone(),
            minutes,
        })
    }

    /// Removes the minutes of `batch` (acknowledged, or given up: then counted under
    /// `dropped`).
    pub fn remove(&self, batch: &RollupBatch, dropped: Option<&str>) {
        let mut q = self.queue();
        let before = q.len();
        q.retain(|e| {
            !(e.origin.gateway == batch.gateway
                && e.origin.epoch == batch.epoch
                && batch.minutes.iter().any(|m| m.minute == e.minute.minute))
        });
        if let Some(reason) = dropped {
            let n = (before - q.len()) as u64;
            self.dropped.with_label_values(&[reason]).inc_by(n);
        }
        self.pending.set(q.len() as i64);
    }

    /// Everything held, one batch per process, oldest first (for the spool).
    pub fn batches(&self) -> Vec<RollupBatch> {
        let q = self.queue();
        let mut out: Vec<RollupBatch> = Vec::new();
        for e in q.iter() {
            match out
                .iter_mut()
                .find(|b| b.gateway == e.origin.gateway && b.epoch == e.origin.epoch)
            {
                Some(b) => b.minutes.push(e.minute.clone()),
                None => out.push(RollupBatch {
                    gateway: e.origin.gateway.clone(),
                    epoch: e.origin.epoch.clone(),
                    minutes: vec![e.minute.clone()],
                }),
            }
        }
        out
    }

    /// Minutes held.
    pub fn len(&self) -> usize {
        self.queue().len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts minutes given up for `reason` (`not_spooled`).
    pub fn count_dropped(&self, reason: &str, n: usize) {
        self.dropped.with_label_values(&[reason]).inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(m: i64) -> MinuteRollup {
        MinuteRollup {
            minute: m,
            calls: vec![],
            latency: vec![],
            live: vec![],
            consents: vec![],
        }
    }

    #[test]
    fn past_the_bound_the_oldest_minute_is_dropped_and_counted() {
        let o = Outbox::detached(2);
        let a = Arc::new(Origin::drawn("gw".into()));
        for m in [60, 120, 180] {
            o.push(&a, minute(m));
        }
        assert_eq!(o.len(), 2);
        assert_eq!(o.dropped.with_label_values(&["bound"]).get(), 1);
        assert_eq!(o.pending.get(), 2);
        let b = o.batch(10).expect("batch");
        assert_eq!(
            b.minutes.iter().map(|m| m.minute).collect::<Vec<_>>(),
            [120, 180]
        );
    }

    #[test]
    fn batches_keep_each_process_apart_and_acks_remove_only_theirs() {
        let o = Outbox::detached(10);
        let old = Arc::new(Origin::new("gw".into(), "old".into()));
        let new = Arc::new(Origin::drawn("gw".into()));
        assert_ne!(new.epoch, Origin::drawn("gw".into()).epoch);
        o.push(&old, minute(60));
        o.push(&new, minute(60));
        o.push(&old, minute(120));
        let first = o.batch(10).expect("old first");
        assert_eq!(first.epoch, "old");
        assert_eq!(first.minutes.len(), 2);
        // A spool read back adds nothing already held.
        o.restore(first.clone());
        assert_eq!(o.len(), 3);
        o.remove(&first, None);
        let second = o.batch(10).expect("new");
        assert_eq!(second.epoch, new.epoch);
        assert_eq!(o.batches(), vec![second]);
    }
}
