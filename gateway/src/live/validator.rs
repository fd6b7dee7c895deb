//! The validator thread: takes sampled answers from the journal's writer through a bounded
//! queue (the writer never waits: a full queue counts the sample `unchecked`), holds each
//! to the provider schema of its API (`provider-schema`), counts the result on
//! `hub_live_checks_total{provider,route,result}` and hands it back to the writer for the
//! rollups. Nothing of an answer outlives its check; a violation is logged (debug) by
//! provider, route and the schema path of the rule only, never a value.

use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use consent_cache::Bin;
use feed_wire::ProviderApi;
use prometheus::IntCounterVec;
use provider_schema::Violation;

use super::tap::Sample;

/// How a sampled answer fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveResult {
    /// It conforms to the provider schema.
    Pass,
    /// It breaks the provider schema (or is not JSON).
    Violation,
    /// It could not be checked (content-encoded, over the bound, the queue full).
    Unchecked,
}

impl LiveResult {
    /// The metric's `result` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            LiveResult::Pass => "pass",
            LiveResult::Violation => "violation",
            LiveResult::Unchecked => "unchecked",
        }
    }
}

/// One sample's result, for the rollups (in the minute of the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// When the call arrived (its audit record's time).
    pub time: SystemTime,
    /// The provider.
    pub provider: Bin,
    /// The route template.
    pub route: &'static str,
    /// The result.
    pub result: LiveResult,
}

/// A sampled answer waiting for the validator.
struct Job {
    checked: Checked,
    api: ProviderApi,
    body: Bytes,
}

/// The writer thread's side of the live checks.
pub struct LiveChecks {
    jobs: SyncSender<Job>,
    results: Receiver<Checked>,
    counter: IntCounterVec,
}

impl LiveChecks {
    /// Starts the validator thread with a queue of `queue` answers.
    pub fn start(queue: usize, counter: IntCounterVec) -> std::io::Result<LiveChecks> {
        let (jobs, rx) = mpsc::sync_channel(queue.max(1));
        let (tx, results) = mpsc::channel();
        let thread_counter = counter.clone();
        std::thread::Builder::new()
            .name("live-checks".into())
            .spawn(move || run(rx, tx, thread_counter))?;
        Ok(LiveChecks {
            jobs,
            results,
            counter,
        })
    }

    /// Hands a sample of `provider`'s answer of `api` on `route` to the validator; what
    /// is known at once (not checkable, the queue full) is counted here and returned.
    pub fn submit(
        &self,
        time: SystemTime,
        provider: Bin,
        route: &'static str,
        api: ProviderApi,
        sample: Sample,
    ) -> Option<Checked> {
        let mut checked = Checked {
            time,
            provider,
            route,
            result: LiveResult::Unchecked,
        };
        match sample {
            Sample::NotSampled => return None,
            Sample::Unchecked => {}
            Sample::Body(body) => match self.jobs.try_send(Job { checked, api, body }) {
                Ok(()) => return None,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    checked = job.checked;
                }
            },
        }
        count(&self.counter, &checked);
        Some(checked)
    }

    /// Lets the validator finish what is queued, within `within`; its results.
    pub fn finish(self, within: Duration) -> Vec<Checked> {
        let LiveChecks { jobs, results, .. } = self;
        // The validator ends once the queue is empty and nobody can send to it.
        drop(jobs);
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(c) = results.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            out.push(c);
        }
        out
    }

    /// Results the validator has finished since the last call.
    pub fn results(&self) -> mpsc::TryIter<'_, Checked> {
        self.results.try_iter()
    }
}

/// `hub_live_checks_total{provider,route,result}` (a BIN and a route template only).
fn count(counter: &IntCounterVec, c: &Checked) {
    let digits = c.provider.digits();
    let provider = std::str::from_utf8(&digits).unwrap_or("-");
    counter
        .with_label_values(&[provider, c.route, c.result.as_str()])
        .inc();
}

/// The validator thread: until the writer lets go of the queue.
fn run(jobs: Receiver<Job>, results: Sender<Checked>, counter: IntCounterVec) {
    if let Err(e) = provider_schema::schemas() {
        tracing::error!(error = %e, "the provider schema does not compile: live samples are counted unchecked");
    }
    for job in jobs {
        let mut checked = job.checked;
        checked.result = match check(job.api, &job.body) {
            Ok(()) => LiveResult::Pass,
            Err(Violation::NoSchema) => LiveResult::Unchecked,
            Err(v) => {
                tracing::debug!(
                    provider = %checked.provider,
                    route = checked.route,
                    rule = rule(&v),
                    "a provider's live answer breaks the provider schema"
                );
                LiveResult::Violation
            }
        };
        count(&counter, &checked);
        if results.send(checked).is_err() {
            break;
        }
    }
}

/// Holds a body to the schema of `api`'s successful answer.
pub fn check(api: ProviderApi, body: &[u8]) -> Result<(), Violation> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| Violation::NotJson)?;
    provider_schema::validate(api, &value)
}

/// The rule broken, by its schema path (never the instance's values).
fn rule(v: &Violation) -> &str {
    match v {
        Violation::Schema { schema_path, .. } => schema_path,
        Violation::NotJson => "the body is not JSON",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"{"data":[{"transaction_id":"tx-1","booking_date":"2025-06-30","value_date":"2025-06-30","amount":"1250.00","currency":"KZT","credit_debit":"debit","status":"booked","counterparty":"Shop","description":"Card"}],"links":{"self":"/v1/accounts/acc-1/transactions"},"meta":{"total":1}}"#;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(
            prometheus::Opts::new("live_checks_total", "test"),
            &["provider", "route", "result"],
        )
        .expect("metric")
    }

    fn checked(live: &LiveChecks) -> Checked {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = live.results().next() {
                return c;
            }
            assert!(Instant::now() < deadline, "no result");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_conforming_page_passes_and_a_violating_one_is_counted_as_such() {
        let counter = counter();
        let live = LiveChecks::start(4, counter.clone()).expect("thread");
        let provider: Bin = "990340000011".parse().expect("bin");
        let route = "/v1/providers/{provider_id}/accounts/{account_id}/transactions";
        let api = ProviderApi::Transactions;
        let t = SystemTime::now();
        let ok = Sample::Body(Bytes::from_static(PAGE.as_bytes()));
        assert_eq!(live.submit(t, provider, route, api, ok), None, "queued");
        assert_eq!(checked(&live).result, LiveResult::Pass);
        let broken = Bytes::from(PAGE.replace(r#""links""#, r#""lynx""#));
        live.submit(t, provider, route, api, Sample::Body(broken));
        assert_eq!(checked(&live).result, LiveResult::Violation);
        let html = Sample::Body(Bytes::from_static(b"<html>"));
        live.submit(t, provider, route, api, html);
        assert_eq!(checked(&live).result, LiveResult::Violation);
        let now = live.submit(t, provider, route, api, Sample::Unchecked);
        assert_eq!(now.map(|c| c.result), Some(LiveResult::Unchecked));
        let labels = |r| counter.with_label_values(&["990340000011", route, r]).get();
        assert_eq!(
            (labels("pass"), labels("violation"), labels("unchecked")),
            (1, 2, 1)
        );
    }

    #[test]
    fn a_full_queue_counts_unchecked_and_never_blocks() {
        // No validator behind the queue: its one place fills and stays full.
        let (jobs, _rx) = mpsc::sync_channel(1);
        let (_tx, results) = mpsc::channel();
        let live = LiveChecks {
            jobs,
            results,
            counter: counter(),
        };
        let provider: Bin = "990340000011".parse().expect("bin");
        let body = || Sample::Body(Bytes::from_static(PAGE.as_bytes()));
        let api = ProviderApi::Transactions;
        assert_eq!(
            live.submit(SystemTime::now(), provider, "r", api, body()),
            None
        );
        let full = live.submit(SystemTime::now(), provider, "r", api, body());
        assert_eq!(full.map(|c| c.result), Some(LiveResult::Unchecked));
        let none = live.submit(SystemTime::now(), provider, "r", api, Sample::NotSampled);
        assert_eq!(none, None);
    }
}
