//! Counting: the journal writer hands every record it seals to the [`Aggregator`], which
//! adds it to its minute (calls and transaction lines by API user × provider × route ×
//! outcome, histograms of the bank's and the hub's time by provider × route, successful
//! calls by consent × route) and moves minutes to the outbox once closed. The live
//! checks' results (`live`) arrive later, from the validator: they are counted in the
//! minute of their call, or like a late record in the oldest open one. A minute closes `close_after` after its end, so that requests that
//! arrived in it and were still running at its end are counted in it. A record whose
//! minute is already closed (a request that outlasted `close_after`) is counted in the
//! oldest minute still open instead, and the journal line says so (`rollup_minute`):
//! what was pushed is never pushed again, and the journal still reconciles exactly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consent_cache::Bin;
use feed_wire::rollup::{
    CallRow, ConsentRow, Histogram, LatencyRow, LiveRow, MinuteRollup, Outcome,
};

use super::outbox::{Origin, Outbox};
use crate::live::{Checked, LiveResult};

/// What the rollups take from one journal record.
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    /// The API user, if identified.
    pub api_user: Option<Bin>,
    /// The provider, if named and registered.
    pub provider: Option<Bin>,
    /// The route template (`-` when none matched).
    pub route: &'static str,
    /// How the call ended.
    pub outcome: Outcome,
    /// The whole request's time, µs.
    pub latency_us: u64,
    /// The bank's share of it, µs.
    pub bank_us: u64,
    /// Transaction lines returned (0 unless counted on the transactions route).
    pub lines: u64,
    /// The consent id of the token the call carried.
    pub consent: Option<&'a str>,
}

/// The minute a record is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    /// Its start, Unix seconds.
    pub start: i64,
    /// It is not the minute of the record's own time (that one was closed already).
    pub moved: bool,
}

impl Minute {
    /// The minute, when it is not the record's own (for the journal line).
    pub fn moved(self) -> Option<i64> {
        self.moved.then_some(self.start)
    }
}

type CallKey = (Option<Bin>, Option<Bin>, &'static str, Outcome);

/// Live checks of one provider × route: sampled (validated), violations, unchecked.
type LiveCounts = [u64; 3];

/// One open minute's counts.
#[derive(Default)]
struct Open {
    /// Calls and transaction lines.
    calls: HashMap<CallKey, (u64, u64)>,
    latency: HashMap<(Bin, &'static str), (Histogram, Histogram)>,
    /// Successful calls by (API user, provider, route), then consent id (looked up by
    /// `&str`: a key is allocated once per consent and minute, not per call).
    consents: HashMap<(Bin, Bin, &'static str), HashMap<Box<str>, u64>>,
    live: HashMap<(Bin, &'static str), LiveCounts>,
}

impl Open {
    fn add(&mut self, c: &Counted<'_>) {
        let row = self
            .calls
            .entry((c.api_user, c.provider, c.route, c.outcome))
            .or_insert((0, 0));
        row.0 += 1;
        row.1 += c.lines;
        self.add_consent(c);
        if let (Some(provider), true) = (c.provider, c.outcome.reached_provider()) {
            let (bank, hub) = self
                .latency
                .entry((provider, c.route))
                .or_insert_with(|| (Histogram::new(), Histogram::new()));
            bank.record(c.bank_us);
            hub.record(c.latency_us.saturating_sub(c.bank_us));
        }
    }

    /// A successful call with a token: counted by its consent.
    fn add_consent(&mut self, c: &Counted<'_>) {
        let (Outcome::Success, Some(api_user), Some(provider), Some(consent)) =
            (c.outcome, c.api_user, c.provider, c.consent)
        else {
            return;
        };
        let by_consent = self
            .consents
            .entry((api_user, provider, c.route))
            .or_default();
        match by_consent.get_mut(consent) {
            Some(n) => *n += 1,
            None => {
                by_consent.insert(consent.into(), 1);
            }
        }
    }

    fn add_live(&mut self, c: &Checked) {
        let counts = self.live.entry((c.provider, c.route)).or_default();
        match c.result {
            LiveResult::Pass => counts[0] += 1,
            LiveResult::Violation => {
                counts[0] += 1;
                counts[1] += 1;
            }
            LiveResult::Unchecked => counts[2] += 1,
        }
    }

    /// The minute's rollup, rows in a stable order (the same counts, the same body).
    fn into_rollup(self, minute: i64) -> MinuteRollup {
        let mut calls: Vec<CallRow> = self
            .calls
            .into_iter()
            .map(
                |((api_user, provider, route, outcome), (calls, lines))| CallRow {
                    api_user,
                    provider,
                    route: route.to_string(),
                    outcome,
                    calls,
                    lines,
                },
            )
            .collect();
        calls.sort_by(|a, b| {
            (a.api_user, a.provider, &a.route, a.outcome)
                .cmp(&(b.api_user, b.provider, &b.route, b.outcome))
        });
        let mut latency: Vec<LatencyRow> = self
            .latency
            .into_iter()
            .map(|((provider, route), (bank, hub))| LatencyRow {
                provider,
                route: route.to_string(),
                bank,
                hub,
            })
            .collect();
        latency.sort_by(|a, b| (a.provider, &a.route).cmp(&(b.provider, &b.route)));
        MinuteRollup {
            minute,
            calls,
            latency,
            live: live_rows(self.live),
            consents: consent_rows(self.consents),
        }
    }
}

fn live_rows(live: HashMap<(Bin, &'static str), LiveCounts>) -> Vec<LiveRow> {
    let mut rows: Vec<LiveRow> = live
        .into_iter()
        .map(
            |((provider, route), [sampled, violations, unchecked])| LiveRow {
                provider,
                route: route.to_string(),
                sampled,
                violations,
                unchecked,
            },
        )
        .collect();
    rows.sort_by(|a, b| (a.provider, &a.route).cmp(&(b.provider, &b.route)));
    rows
}

fn consent_rows(
    consents: HashMap<(Bin, Bin, &'static str), HashMap<Box<str>, u64>>,
) -> Vec<ConsentRow> {
    let mut rows: Vec<ConsentRow> = consents
        .into_iter()
        .flat_map(|((api_user, provider, route), by_consent)| {
            by_consent
                .into_iter()
                .map(move |(consent, calls)| ConsentRow {
                    api_user,
                    provider,
                    consent: consent.into(),
                    route: route.to_string(),
                    calls,
                })
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.api_user, a.provider, &a.consent, &a.route)
            .cmp(&(b.api_user, b.provider, &b.consent, &b.route))
    });
    rows
}

/// The journal writer's counter of this process's traffic.
pub struct Aggregator {
    origin: Arc<Origin>,
    outbox: Arc<Outbox>,
    close_after: i64,
    open: BTreeMap<i64, Open>,
    /// Every minute before this one has been closed (moved to the outbox).
    closed_before: i64,
}

/// `t` in whole Unix seconds (before 1970: negative, rounded down).
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64),
    }
}

/// The start (Unix seconds) of the minute holding `t`.
pub fn minute_start(t: SystemTime) -> i64 {
    unix_secs(t).div_euclid(60) * 60
}

impl Aggregator {
    /// Counts for `origin` (this process), handing closed minutes to `outbox`.
    pub fn new(origin: Arc<Origin>, outbox: Arc<Outbox>, close_after: Duration) -> Aggregator {
        Aggregator {
            origin,
            outbox,
            close_after: close_after.as_secs() as i64,
            open: BTreeMap::new(),
            closed_before: i64::MIN,
        }
    }

    /// The minute a record of time `t` is counted in.
    pub fn minute_of(&self, t: SystemTime) -> Minute {
        let own = minute_start(t);
        if own < self.closed_before {
            Minute {
                start: self.closed_before,
                moved: true,
            }
        } else {
            Minute {
                start: own,
                moved: false,
            }
        }
    }

    /// Counts a record in `minute` (from [`Aggregator::minute_of`]).
    pub fn count(&mut self, minute: Minute, c: &Counted<'_>) {
        self.open.entry(minute.start).or_default().add(c);
    }

    /// Counts a live check in its call's minute, or the oldest open one when that has
    /// closed (the validator ran after the minute was pushed).
    pub fn count_live(&mut self, c: &Checked) {
        let minute = self.minute_of(c.time);
        self.open.entry(minute.start).or_default().add_live(c);
    }

    /// Closes the minutes that ended `close_after` or more before `now`.
    pub fn close_due(&mut self, now: SystemTime) {
        let now = unix_secs(now);
        while let Some((&first, _)) = self.open.first_key_value() {
            if now < first + 60 + self.close_after {
                break;
            }
            self.close(first);
        }
    }

    /// Closes every open minute (the process counts nothing more).
    pub fn close_all(&mut self) {
        while let Some((&first, _)) = self.open.first_key_value() {
            self.close(first);
        }
    }

    fn close(&mut self, minute: i64) {
        if let Some(open) = self.open.remove(&minute) {
            self.outbox.push(&self.origin, open.into_rollup(minute));
        }
        self.closed_before = self.closed_before.max(minute + 60);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn counted(outcome: Outcome, provider: Option<&str>, bank_us: u64) -> Counted<'static> {
        Counted {
            api_user: Some("100140000001".parse().expect("bin")),
            provider: provider.map(|p| p.parse().expect("bin")),
            route: "GET /v1/providers/{provider_id}/accounts",
            outcome,
            latency_us: 3_000,
            bank_us,
            lines: 0,
            consent: None,
        }
    }

    fn aggregator(bound: usize) -> (Aggregator, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::detached(bound));
        let origin = Arc::new(Origin::new("gw".into(), "e1".into()));
        let a = Aggregator::new(origin, outbox.clone(), Duration::from_secs(10));
        (a, outbox)
    }

    #[test]
    fn a_minute_closes_after_its_end_plus_close_after_and_counts_by_key() {
        let (mut a, outbox) = aggregator(10);
        for (t, outcome, bank) in [
            (1_200, Outcome::Success, 1_500),
            (1_210, Outcome::Success, 1_500),
            (1_259, Outcome::Timeout, 600_000),
            (1_259, Outcome::Refused, 0),
        ] {
            let provider = (outcome != Outcome::Refused).then_some("990340000011");
            let m = a.minute_of(at(t));
            assert_eq!(
                m,
                Minute {
                    start: 1_200,
                    moved: false
                }
            );
            a.count(m, &counted(outcome, provider, bank));
        }
        a.close_due(at(1_269));
        assert!(outbox.is_empty(), "closed before its end plus close_after");
        a.close_due(at(1_270));
        let batch = outbox.batch(100).expect("one minute");
        assert_eq!(batch.minutes.len(), 1);
        let m = &batch.minutes[0];
        assert_eq!(m.minute, 1_200);
        let calls: Vec<(Outcome, u64)> = m.calls.iter().map(|c| (c.outcome, c.calls)).collect();
        assert_eq!(
            calls,
            // Rows sorted by key: no provider (the refusal) first.
            [
                (Outcome::Refused, 1),
                (Outcome::Success, 2),
                (Outcome::Timeout, 1)
            ]
        );
        // Refused calls never reached the provider: three in the histograms.
        assert_eq!(m.latency.len(), 1);
        assert_eq!(m.latency[0].bank.count(), 3);
        assert_eq!(m.latency[0].bank.0[Histogram::bucket_of(1_500)], 2);
        assert_eq!(m.latency[0].hub.0[Histogram::bucket_of(1_500)], 2);
        // The timeout's hub share is saturated at zero, not negative.
        assert_eq!(m.latency[0].hub.0[0], 1);
    }

    #[test]
    fn lines_consents_and_live_checks_are_counted_in_their_minute() {
        let (mut a, outbox) = aggregator(10);
        let tx = "/v1/providers/{provider_id}/accounts/{account_id}/transactions";
        let provider: Bin = "990340000011".parse().expect("bin");
        let calls = [
            (Outcome::Success, 3, Some("c-1")),
            (Outcome::Success, 0, Some("c-1")),
            (Outcome::Success, 5, Some("c-2")),
            // Not successful: no consent row; open data (no token): none either.
            (Outcome::ServerError, 0, Some("c-1")),
            (Outcome::Success, 0, None),
        ];
        for (outcome, lines, consent) in calls {
            let c = Counted {
                route: tx,
                lines,
                consent,
                ..counted(outcome, Some("990340000011"), 10)
            };
            a.count(a.minute_of(at(1_200)), &c);
        }
        let check = |t, result| Checked {
            time: at(t),
            provider,
            route: tx,
            result,
        };
        a.count_live(&check(1_210, LiveResult::Pass));
        a.count_live(&check(1_220, LiveResult::Violation));
        a.count_live(&check(1_230, LiveResult::Unchecked));
        a.close_due(at(1_300));
        // The validator finished after its call's minute closed: the oldest open one.
        a.count_live(&check(1_250, LiveResult::Violation));
        a.close_all();
        let batch = outbox.batch(100).expect("two minutes");
        let m = &batch.minutes[0];
        let lines: Vec<(Outcome, u64, u64)> = m
            .calls
            .iter()
            .map(|c| (c.outcome, c.calls, c.lines))
            .collect();
        assert_eq!(
            lines,
            [(Outcome::Success, 4, 8), (Outcome::ServerError, 1, 0)]
        );
        let consents: Vec<(&str, u64)> = m
            .consents
            .iter()
            .map(|c| (c.consent.as_str(), c.calls))
            .collect();
        assert_eq!(consents, [("c-1", 2), ("c-2", 1)]);
        let live = &m.live[0];
        assert_eq!((live.sampled, live.violations, live.unchecked), (2, 1, 1));
        assert_eq!(batch.minutes[1].minute, 1_260);
        assert_eq!(batch.minutes[1].live[0].violations, 1);
    }

    #[test]
    fn a_record_of_a_closed_minute_is_counted_in_the_oldest_open_one_and_says_so() {
        let (mut a, outbox) = aggregator(10);
        let m = a.minute_of(at(1_230));
        a.count(m, &counted(Outcome::Success, Some("990340000011"), 10));
        a.close_due(at(1_300));
        assert_eq!(outbox.len(), 1);
        let late = a.minute_of(at(1_250));
        assert_eq!(
            late,
            Minute {
                start: 1_260,
                moved: true
            }
        );
        assert_eq!(late.moved(), Some(1_260));
        a.count(late, &counted(Outcome::Success, Some("990340000011"), 10));
        a.close_all();
        let batch = outbox.batch(100).expect("two minutes");
        let minutes: Vec<i64> = batch.minutes.iter().map(|m| m.minute).collect();
        assert_eq!(minutes, [1_200, 1_260]);
    }
}
