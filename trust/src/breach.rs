//! Sustained SLA breaches (issue 14 point 4, `docs/oversight.md`): on the replica that
//! leads housekeeping, every provider API is evaluated periodically over a sliding
//! window of closed rollup minutes against the provider's targets (`sla`) and the live
//! checks' share of violations (`live`); a breach sustained over the window fails the
//! API (`grade::breach`) and so delists it, like K failing probes.
//!
//! A window breaches a rule when three things hold: enough traffic to conclude (the
//! minimums), the window as a whole misses the target, and the target is missed in at
//! least the sustained share of the window's minutes — so one bad minute never delists,
//! however little else the window holds (a provider with traffic in few minutes is left
//! to the probes).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consent_cache::Bin;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::app::{blocking, App};
use crate::db::{Sql, StoreError};
use crate::error::Error;
use crate::grade::Hysteresis;
use crate::listener::stopped;
use crate::live;
use crate::oversight::{self, BreachVerdict};
use crate::prober::{self, ProviderNotice, ProviderNotifier};
use crate::rollups::ROUTES;
use crate::sla::{self, Bound, Counts, Targets};
use crate::wire::rollup::{Histogram, Outcome};
use crate::wire::{ProviderApi, Role};

/// The evaluation's settings (`[oversight]` of the sidecar's configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreachSettings {
    /// Whether breaches are evaluated at all (default on).
    pub enabled: bool,
    /// Between two evaluations (default 60 s).
    pub every: Duration,
    /// The window, in minutes (default 15).
    pub window_minutes: u32,
    /// A minute is evaluated once it ended this long ago, so the gateways' pushes of it
    /// have arrived (default 60 s).
    pub settle_secs: u32,
    /// Calls that reached the provider (availability) or were timed (p95) below which
    /// nothing is concluded (default 20).
    pub min_calls: u64,
    /// Answers validated by the live checks below which their share is not judged
    /// (default 20).
    pub min_live_sampled: u64,
    /// The largest share of violations among validated answers, millionths (default
    /// 5 % = 50,000).
    pub live_violations_ppm: u32,
    /// The share of the window's minutes that must miss the target too, percent
    /// (default 80).
    pub sustained_percent: u32,
}

impl Default for BreachSettings {
    fn default() -> Self {
        BreachSettings {
            enabled: true,
            every: Duration::from_secs(60),
            window_minutes: 15,
            settle_secs: 60,
            min_calls: 20,
            min_live_sampled: 20,
            live_violations_ppm: 50_000,
            sustained_percent: 80,
        }
    }
}

impl BreachSettings {
    /// The window `[from, to)` evaluated at `now`: the last `window_minutes` minutes
    /// that ended at least `settle_secs` ago.
    pub fn window(&self, now: i64) -> (i64, i64) {
        let to = (now - i64::from(self.settle_secs)).div_euclid(60) * 60;
        (to - 60 * i64::from(self.window_minutes), to)
    }
}

/// What the evaluation task needs.
#[derive(Debug, Clone, Copy)]
pub struct BreachConfig {
    /// The rules.
    pub settings: BreachSettings,
    /// M (and K) of the probes: a breach relists after M passes.
    pub hysteresis: Hysteresis,
    /// Whether the probes run (else a cleared window relists at once).
    pub probing: bool,
}

/// The calls that reached the provider and, of those, its failures.
fn reached_and_failures(c: &Counts) -> (u64, u64) {
    (
        c.count(Outcome::reached_provider),
        c.count(Outcome::is_provider_failure),
    )
}

/// Minutes of one provider × route, by minute.
pub type Series = BTreeMap<i64, Counts>;

/// The rollups of `[from, to)` by (provider, route), minute by minute.
pub fn read(
    sql: &mut dyn Sql,
    (from, to): (i64, i64),
) -> Result<HashMap<(String, String), Series>, StoreError> {
    let mut out: HashMap<(String, String), Series> = HashMap::new();
    let params = [from.into(), to.into()];
    sql.query_each(
        "SELECT provider, route, minute, outcome, CAST(SUM(calls) AS BIGINT) FROM rollup_calls
         WHERE minute >= $1 AND minute < $2 AND provider IS NOT NULL
         GROUP BY provider, route, minute, outcome",
        &params,
        &mut |r| {
            let i = sla::outcome_index(&r.text(3)?)
                .ok_or_else(|| StoreError::Corrupt("an unknown rollup outcome".into()))?;
            let m = out.entry((r.text(0)?, r.text(1)?)).or_default();
            m.entry(r.int(2)?).or_default().calls[i] += sla::to_u64(r.int(4)?)?;
            Ok(())
        },
    )?;
    sql.query_each(
        "SELECT provider, route, minute, bucket, CAST(SUM(count) AS BIGINT) FROM rollup_latency
         WHERE minute >= $1 AND minute < $2 AND kind = 'bank'
         GROUP BY provider, route, minute, bucket",
        &params,
        &mut |r| {
            let m = out.entry((r.text(0)?, r.text(1)?)).or_default();
            let h = &mut m.entry(r.int(2)?).or_default().bank;
            sla::add_to_bucket(h, r.int(3)?, r.int(4)?)
        },
    )?;
    live::read(
        sql,
        (from, to),
        None,
        true,
        &mut |p, route, minute, counts| {
            let m = out.entry((p, route)).or_default();
            m.entry(minute).or_default().live.add(counts);
        },
    )?;
    Ok(out)
}

/// The verdict on one provider × route's window.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The rules broken: `availability`, `bank_p95`, `live_schema`.
    pub rules: Vec<&'static str>,
    /// Whether the window had any traffic.
    pub traffic: bool,
    /// Enough traffic to conclude (the availability minimum) and no rule missed by the
    /// window as a whole.
    pub compliant: bool,
    /// The rule, the window and the numbers (stored; an event's evidence).
    pub evaluation: Value,
}

/// Whether `bad` of `of` minutes reach the sustained share.
fn sustained(bad: u64, of: u64, percent: u32) -> bool {
    of > 0 && u128::from(bad) * 100 >= u128::from(of) * u128::from(percent)
}

/// Whether `violations` of `sampled` exceed `ppm` millionths, exactly.
fn over(violations: u64, sampled: u64, ppm: u32) -> bool {
    u128::from(violations) * 1_000_000 > u128::from(sampled) * u128::from(ppm)
}

fn percent(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 * 100.0 / d as f64)
}

/// A window's totals, and per rule (availability, p95, live) its minutes with traffic and
/// of those the minutes that missed the target.
struct Totals {
    all: Counts,
    with: [u64; 3],
    missed: [u64; 3],
}

fn totals(series: &Series, targets: Targets, s: &BreachSettings) -> Totals {
    let mut t = Totals {
        all: Counts {
            bank: Histogram::new(),
            ..Counts::default()
        },
        with: [0; 3],
        missed: [0; 3],
    };
    for m in series.values() {
        t.all.add(m);
        let (reached, failures) = reached_and_failures(m);
        let checks = [
            (reached > 0)
                .then(|| sla::below(reached - failures, reached, targets.availability_ppm)),
            Bound::of(&m.bank, 0.95).map(|b| b.exceeds(targets.bank_p95_ms)),
            (m.live.sampled > 0)
                .then(|| over(m.live.violations, m.live.sampled, s.live_violations_ppm)),
        ];
        for (i, c) in checks.into_iter().enumerate() {
            if let Some(missed) = c {
                t.with[i] += 1;
                t.missed[i] += u64::from(missed);
            }
        }
    }
    t
}

/// Evaluates one provider × route's window `[from, to)` against `targets`.
pub fn evaluate(
    series: &Series,
    targets: Targets,
    s: &BreachSettings,
    (from, to): (i64, i64),
    now: i64,
) -> Verdict {
    let t = totals(series, targets, s);
    let (reached, failures) = reached_and_failures(&t.all);
    let timed = t.all.bank.count();
    let p95 = Bound::of(&t.all.bank, 0.95);
    let lv = t.all.live;
    let minutes = u64::from(s.window_minutes);
    let sus = |i: usize| sustained(t.missed[i], minutes, s.sustained_percent);
    // Each rule: enough to conclude, and the whole window misses the target.
    let missed = [
        reached >= s.min_calls && sla::below(reached - failures, reached, targets.availability_ppm),
        timed >= s.min_calls && p95.as_ref().is_some_and(|b| b.exceeds(targets.bank_p95_ms)),
        lv.sampled >= s.min_live_sampled && over(lv.violations, lv.sampled, s.live_violations_ppm),
    ];
    let [availability, latency, schema] = [0, 1, 2].map(|i| missed[i] && sus(i));
    let rules: Vec<&'static str> = [
        (availability, "availability"),
        (latency, "bank_p95"),
        (schema, "live_schema"),
    ]
    .into_iter()
    .filter_map(|(hit, name)| hit.then_some(name))
    .collect();
    let traffic = t.all.calls.iter().any(|n| *n > 0) || lv.sampled + lv.unchecked > 0;
    let (with, bad) = (t.with, t.missed);
    let evaluation = json!({
        "evaluated_at": now,
        "traffic": traffic,
        "breaching": !rules.is_empty(),
        "rules": rules,
        "window": {"from": from, "to": to, "minutes": s.window_minutes},
        "sustained_percent": s.sustained_percent,
        "availability": {
            "calls": reached, "failures": failures,
            "availability_percent": percent(reached - failures, reached),
            "target_percent": sla::percent_of_ppm(targets.availability_ppm),
            "min_calls": s.min_calls, "minutes": with[0], "minutes_missed": bad[0],
            "breached": availability,
        },
        "bank_p95": {
            "calls": timed, "p95_ms": p95, "target_ms": targets.bank_p95_ms,
            "min_calls": s.min_calls, "minutes": with[1], "minutes_missed": bad[1],
            "breached": latency,
        },
        "live": {
            "sampled": lv.sampled, "violations": lv.violations, "unchecked": lv.unchecked,
            "violations_percent": percent(lv.violations, lv.sampled),
            "limit_percent": sla::percent_of_ppm(s.live_violations_ppm),
            "min_sampled": s.min_live_sampled, "minutes": with[2], "minutes_missed": bad[2],
            "breached": schema,
        },
    });
    Verdict {
        // Shows the bank meeting its targets: enough calls, and no rule missed by the
        // window as a whole (sustained or not).
        compliant: reached >= s.min_calls && !missed.contains(&true),
        rules,
        traffic,
        evaluation,
    }
}

/// The provider APIs a rollup route counts: one each, but the open-data route counts
/// every data set (rollups do not tell them apart).
fn apis_of(route: &str) -> &'static [ProviderApi] {
    const OPEN_DATA: [ProviderApi; 4] = [
        ProviderApi::ExchangeRates,
        ProviderApi::Branches,
        ProviderApi::Atms,
        ProviderApi::Products,
    ];
    match ROUTES.iter().position(|r| *r == route) {
        Some(0) => &[ProviderApi::Accounts],
        Some(1) => &[ProviderApi::Account],
        Some(2) => &[ProviderApi::Balances],
        Some(3) => &[ProviderApi::Transactions],
        Some(_) => &OPEN_DATA,
        None => &[],
    }
}

/// One provider's verdicts, API by API.
fn verdicts(
    data: &HashMap<(String, String), Series>,
    provider: Bin,
    targets: Targets,
    s: &BreachSettings,
    window: (i64, i64),
    now: i64,
) -> Vec<BreachVerdict> {
    let empty = Series::new();
    let mut out = Vec::new();
    for route in ROUTES {
        let series = data
            .get(&(provider.to_string(), route.to_owned()))
            .unwrap_or(&empty);
        let mut v = evaluate(series, targets, s, window, now);
        v.evaluation["route"] = json!(route);
        for api in apis_of(route) {
            out.push(BreachVerdict {
                api: *api,
                breaching: !v.rules.is_empty(),
                traffic: v.traffic,
                compliant: v.compliant,
                rules: v.rules.iter().map(|r| format!("sla_{r}")).collect(),
                evaluation: v.evaluation.clone(),
            });
        }
    }
    out
}

impl App {
    /// Evaluates every provider's APIs over the window ending at this sidecar's clock,
    /// records the evaluations and grades them (delisting or relisting; one transaction
    /// per provider). Returns the notices of the changes.
    pub async fn evaluate_breaches(
        self: &Arc<Self>,
        cfg: &BreachConfig,
    ) -> Result<Vec<ProviderNotice>, Error> {
        let now = self.now();
        let window = cfg.settings.window(now);
        let app = self.clone();
        let (data, subjects) = blocking(move || {
            app.db.read(|sql| {
                let subjects: HashSet<Bin> = oversight::subjects(sql)?
                    .into_iter()
                    .map(|(b, _)| b)
                    .collect();
                Ok::<_, Error>((read(sql, window)?, subjects))
            })
        })
        .await?;
        let directory = self.directory();
        let mut providers: Vec<Bin> = directory
            .records()
            .filter(|r| r.has_role(Role::Provider))
            .map(|r| r.bin)
            .collect();
        providers.sort_unstable();
        let mut notices = Vec::new();
        for provider in providers {
            let targets = self.settings.sla.targets(provider);
            let verdicts = verdicts(&data, provider, targets, &cfg.settings, window, now);
            let probed = cfg.probing && subjects.contains(&provider);
            let (app, h) = (self.clone(), cfg.hysteresis);
            let (changes, written) = blocking(move || {
                app.db.write(app.now(), |tx| {
                    oversight::apply_breaches(tx, provider, &verdicts, probed, h)
                })
            })
            .await?;
            if let Some(w) = written {
                self.swap_directory(w.directory);
            }
            notices.extend(changes.into_iter().map(|(api, t, rules)| ProviderNotice {
                provider,
                api,
                grade: t.to.as_str(),
                listed: t.listed,
                failed_rules: rules,
            }));
        }
        Ok(notices)
    }
}

/// Runs until shutdown; evaluates only while `leading` (set by housekeeping), so in a
/// cluster an API is evaluated and graded once.
pub async fn run(
    app: Arc<App>,
    cfg: BreachConfig,
    leading: Arc<AtomicBool>,
    notifier: Option<Arc<dyn ProviderNotifier>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(cfg.settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut shutdown) => return,
        }
        if !leading.load(Ordering::Acquire) {
            continue;
        }
        match app.evaluate_breaches(&cfg).await {
            Ok(notices) => prober::deliver(notices, notifier.as_deref()),
            Err(e) => tracing::error!(error = %e, "SLA breaches not evaluated"),
        }
        match app.oversight().await {
            Ok(statuses) => app.metrics.observe(&statuses),
            Err(e) => tracing::warn!(error = %e, "oversight metrics not updated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::LiveCounts;

    const S: BreachSettings = BreachSettings {
        enabled: true,
        every: Duration::from_secs(60),
        window_minutes: 5,
        settle_secs: 60,
        min_calls: 20,
        min_live_sampled: 20,
        live_violations_ppm: 50_000,
        sustained_percent: 80,
    };

    fn minute(success: u64, failed: u64, sampled: u64, violations: u64) -> Counts {
        let mut m = Counts::default();
        m.calls[0] = success;
        m.calls[2] = failed;
        m.live = LiveCounts {
            sampled,
            violations,
            unchecked: 0,
        };
        m
    }

    fn series(minutes: &[Counts]) -> Series {
        (0..).map(|i| i * 60).zip(minutes.iter().cloned()).collect()
    }

    #[test]
    fn the_window_is_the_closed_minutes_that_settled() {
        assert_eq!(S.window(1_000_000), (999_600, 999_900));
        assert_eq!(S.window(999_959), (999_540, 999_840));
    }

    #[test]
    fn a_sustained_breach_breaks_the_rule_and_one_bad_minute_does_not() {
        let t = Targets::default();
        let bad = series(&vec![minute(5, 5, 0, 0); 5]);
        let v = evaluate(&bad, t, &S, (0, 300), 400);
        assert_eq!(v.rules, ["availability"]);
        assert_eq!(v.evaluation["availability"]["calls"], 50);
        assert_eq!(v.evaluation["availability"]["failures"], 25);
        let mut one = vec![minute(10, 0, 0, 0); 4];
        one.push(minute(0, 10, 0, 0));
        let v = evaluate(&series(&one), t, &S, (0, 300), 400);
        assert!(v.rules.is_empty(), "{}", v.evaluation);
        assert_eq!(v.evaluation["availability"]["minutes_missed"], 1);
        // Below the minimum of calls nothing is concluded.
        let few = series(&vec![minute(0, 3, 0, 0); 5]);
        let v = evaluate(&few, t, &S, (0, 300), 400);
        assert!(v.rules.is_empty() && !v.compliant);
        assert!(evaluate(&series(&vec![minute(10, 0, 0, 0); 5]), t, &S, (0, 300), 400).compliant);
    }

    #[test]
    fn one_bad_minute_of_a_quiet_window_does_not_breach() {
        // All of the window's traffic in one failing minute: the share is of the window's
        // minutes (1 of 5), not of the minutes with traffic (1 of 1).
        let v = evaluate(
            &series(&[minute(0, 100, 0, 0)]),
            Targets::default(),
            &S,
            (0, 300),
            400,
        );
        assert!(v.rules.is_empty(), "{}", v.evaluation);
        assert_eq!(v.evaluation["availability"]["minutes_missed"], 1);
        assert!(!v.compliant);
    }

    #[test]
    fn live_violations_over_the_share_break_the_schema_rule() {
        let t = Targets::default();
        let v = evaluate(&series(&vec![minute(10, 0, 10, 1); 5]), t, &S, (0, 300), 0);
        assert_eq!(v.rules, ["live_schema"]);
        // Exactly 5 % is not over 5 %.
        let v = evaluate(&series(&vec![minute(10, 0, 20, 1); 5]), t, &S, (0, 300), 0);
        assert!(v.rules.is_empty());
        assert_eq!(apis_of(ROUTES[4]).len(), 4);
        assert_eq!(apis_of(ROUTES[2]), [ProviderApi::Balances]);
    }
}
