//! The limit store's circuit breaker, on the request path: a few atomics, no lock.
//!
//! Closed, every call goes through. `threshold` consecutive failures open it: for
//! `open_for` no call goes through (callers fail at once, no I/O). Then it is half-open:
//! exactly one caller is let through as a probe while the others keep failing at once;
//! the probe's success closes it, its failure opens it again for `open_for`. A probe
//! whose caller gave up (its future dropped) lets the next caller probe instead. Any
//! success closes it (a late answer to a call made before it opened included: Redis
//! answered).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// `open_until` while the breaker is closed.
const CLOSED: u64 = 0;

/// A circuit breaker (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Breaker {
    /// The origin of the microsecond clock below.
    base: Instant,
    threshold: u32,
    open_for_us: u64,
    /// Consecutive failures since the last success.
    failures: AtomicU32,
    /// [`CLOSED`], or the time (µs since `base`, ≥ 1) from which a probe may go.
    open_until: AtomicU64,
    /// A probe is in flight.
    probing: AtomicBool,
}

/// Leave for one call; report its outcome with [`succeeded`](Permit::succeeded) or
/// [`failed`](Permit::failed). Dropped without either (the caller gave up), it only
/// frees the probe's place.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` (≥ 1) consecutive failures, for
    /// `open_for`.
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            base: Instant::now(),
            threshold: threshold.max(1),
            open_for_us: u64::try_from(open_for.as_micros()).unwrap_or(u64::MAX / 2),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(CLOSED),
            probing: AtomicBool::new(false),
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX / 2)
    }

    /// Leave for a call, or `None` while open (or half-open with a probe in flight).
    pub(crate) fn admit(&self) -> Option<Permit<'_>> {
        self.admit_at(self.now_us())
    }

    fn admit_at(&self, now: u64) -> Option<Permit<'_>> {
        let until = self.open_until.load(SeqCst);
        if until == CLOSED {
            return Some(self.permit(false));
        }
        if now < until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, SeqCst, SeqCst)
            .ok()
            .map(|_| self.permit(true))
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            settled: false,
        }
    }

    /// Whether it is open or half-open.
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(SeqCst) != CLOSED
    }

    /// Whole seconds until the next probe may go, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs_at(self.now_us())
    }

    fn retry_after_secs_at(&self, now: u64) -> u64 {
        let until = self.open_until.load(SeqCst);
        if until == CLOSED {
            return 1;
        }
        until.saturating_sub(now).div_ceil(1_000_000).max(1)
    }

    fn open_at(&self, now: u64) -> u64 {
        now.saturating_add(self.open_for_us).max(1)
    }

    fn success(&self) {
        self.failures.store(0, SeqCst);
        self.open_until.store(CLOSED, SeqCst);
    }

    fn failure(&self, probe: bool, now: u64) {
        if probe {
            self.open_until.store(self.open_at(now), SeqCst);
            return;
        }
        let failures = self.failures.fetch_add(1, SeqCst).saturating_add(1);
        if failures >= self.threshold {
            // Opens a closed breaker; a late failure does not push an open one's probe back.
            let _ = self
                .open_until
                .compare_exchange(CLOSED, self.open_at(now), SeqCst, SeqCst);
        }
    }
}

impl Permit<'_> {
    /// The call succeeded: the breaker closes.
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.breaker.success();
        self.release();
    }

    /// The call failed: counts towards opening; a probe's failure reopens at once.
    pub(crate) fn failed(mut self) {
        self.failed_at(self.breaker.now_us());
    }

    fn failed_at(&mut self, now: u64) {
        self.settled = true;
        self.breaker.failure(self.probe, now);
        self.release();
    }

    fn release(&self) {
        if self.probe {
            self.breaker.probing.store(false, SeqCst);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn fail(b: &Breaker, now: u64) {
        b.admit_at(now).expect("admitted").failed_at(now);
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, Duration::from_secs(2));
        fail(&b, 10);
        fail(&b, 10);
        b.admit_at(10).expect("closed").succeeded(); // resets the count
        fail(&b, 20);
        fail(&b, 20);
        assert!(!b.is_open());
        fail(&b, 20);
        assert!(b.is_open());
        assert!(b.admit_at(21).is_none());
        assert!(b.admit_at(20 + 2 * SEC - 1).is_none());
        assert_eq!(b.retry_after_secs_at(20), 2);
        assert_eq!(b.retry_after_secs_at(20 + 2 * SEC - 1), 1);
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_outcome_decides() {
        let b = Breaker::new(1, Duration::from_secs(1));
        fail(&b, 0);
        let later = SEC + 5;
        let mut probe = b.admit_at(later).expect("the probe");
        assert!(b.admit_at(later).is_none(), "one probe at a time");
        assert_eq!(b.retry_after_secs_at(later), 1);
        probe.failed_at(later);
        drop(probe);
        assert!(
            b.admit_at(later + 1).is_none(),
            "reopened for another second"
        );
        assert!(b.admit_at(later + SEC - 1).is_none());
        let probe = b.admit_at(later + SEC).expect("the next probe");
        probe.succeeded();
        assert!(!b.is_open());
        assert!(b.admit_at(later + SEC).is_some() && b.admit_at(later + SEC).is_some());
    }

    #[test]
    fn an_abandoned_probe_frees_its_place() {
        let b = Breaker::new(1, Duration::from_secs(1));
        fail(&b, 0);
        drop(b.admit_at(SEC).expect("the probe"));
        assert!(b.is_open(), "still open: nothing was learnt");
        assert!(b.admit_at(SEC).is_some(), "the next caller probes");
    }

    #[test]
    fn a_late_failure_does_not_delay_the_probe() {
        let b = Breaker::new(1, Duration::from_secs(1));
        let late = b.admit_at(0).expect("closed");
        fail(&b, 0);
        let mut late = late;
        late.failed_at(SEC / 2);
        drop(late);
        assert!(
            b.admit_at(SEC).is_some(),
            "the probe goes at 1 s, not 1.5 s"
        );
    }
}
