//! Live-traffic checks (`[live_checks]`, issue 14 point 2; issue 15 point 1): a tap on a
//! provider's successful answer keeps its chunks as they stream to the API user (`Bytes`
//! clones: a reference count each, never a copy, never a delay) and travels with the audit
//! record to the journal's writer thread, which counts a transactions page's lines and
//! hands a sampled answer to the [`validator`] thread, off the request path. Nothing is
//! tapped when the route is not transactions and the sample rate is 0.

mod lines;
mod tap;
pub mod validator;

#[cfg(test)]
pub use tap::Sample;
pub use tap::{Finished, Tap};
pub use validator::{Checked, LiveChecks, LiveResult};

use feed_wire::ProviderApi;

/// `[live_checks]` compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveSettings {
    /// The share of successful provider answers validated, in [0, 1].
    pub sample_rate: f64,
    /// The most bytes of one answer a tap keeps; past it the tap is dropped.
    pub max_body_bytes: usize,
    /// Answers waiting for the validator at most (taken at start).
    pub queue: usize,
}

impl LiveSettings {
    /// What the request path needs: the sampling threshold and the tap's bound.
    pub fn sampling(&self) -> Sampling {
        // The rate as a fraction of 2^32: a draw below it is sampled (1.0: every draw).
        let threshold = (self.sample_rate.clamp(0.0, 1.0) * 4_294_967_296.0) as u64;
        Sampling {
            threshold,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// The request path's copy of the live-check settings in force (from the snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sampling {
    /// A draw of 32 random bits below this samples (0: never; 2^32: always).
    threshold: u64,
    /// The tap's bound.
    max_body_bytes: usize,
}

impl Sampling {
    /// Whether to validate this answer: one draw of a thread-local generator (no lock,
    /// no allocation), none at all when the rate is 0.
    pub fn sample(&self) -> bool {
        self.threshold != 0 && u64::from(fastrand::u32(..)) < self.threshold
    }

    /// A tap for a successful answer of `api`, or `None` when nothing is to be done with
    /// it (not transactions, not sampled). `encoded` says whether the answer has a content
    /// encoding (it is not decoded; a sample of it is `unchecked`, its lines unknown);
    /// asked only for an answer that is tapped.
    pub fn tap(&self, api: ProviderApi, encoded: impl FnOnce() -> bool) -> Option<Box<Tap>> {
        let lines = api == ProviderApi::Transactions;
        let validate = self.sample();
        (lines || validate).then(|| Tap::new(api, lines, validate, encoded(), self.max_body_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(rate: f64) -> Sampling {
        LiveSettings {
            sample_rate: rate,
            max_body_bytes: 1024,
            queue: 1,
        }
        .sampling()
    }

    #[test]
    fn a_rate_of_zero_never_samples_and_one_always_does() {
        let (never, always, half) = (sampling(0.0), sampling(1.0), sampling(0.5));
        assert!((0..10_000).all(|_| !never.sample()));
        assert!((0..10_000).all(|_| always.sample()));
        let n = (0..10_000).filter(|_| half.sample()).count();
        assert!((4_000..6_000).contains(&n), "{n} of 10000 at 0.5");
    }

    #[test]
    fn nothing_is_tapped_at_rate_zero_but_transactions_are_always() {
        let never = sampling(0.0);
        assert!(never.tap(ProviderApi::Balances, || false).is_none());
        assert!(never.tap(ProviderApi::Atms, || false).is_none());
        let tx = never
            .tap(ProviderApi::Transactions, || false)
            .expect("lines");
        assert!(matches!(tx.sample(), Sample::NotSampled));
        let always = sampling(1.0);
        assert!(always.tap(ProviderApi::Balances, || false).is_some());
    }
}
