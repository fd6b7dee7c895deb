//! SLA accounting from the gateways' rollups (`docs/sla.md`): each provider's targets
//! (a default and per-provider overrides), and the report per provider × route × day or
//! month in a configured time zone — calls by outcome, availability, error rate,
//! latency quantiles of the bank and of the hub, and the targets breached.

use std::collections::{BTreeMap, HashMap};

use consent_cache::Bin;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::db::{Sql, StoreError};
use crate::error::Error;
use crate::live::{self, LiveCounts};
use crate::wire::rollup::{Histogram, Outcome, BUCKETS, BUCKET_BOUNDS_US};

/// Longest report, in days (`from` to `to` inclusive).
pub const MAX_REPORT_DAYS: usize = 366;

/// One provider's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// Availability per route per month, in millionths (99.5 % = 995,000).
    pub availability_ppm: u32,
    /// The bank's p95 per route per day, in milliseconds (a histogram bucket bound).
    pub bank_p95_ms: u64,
}

impl Default for Targets {
    /// 99.5 % a month; bank p95 ≤ 500 ms a day (the reference hub's SLA).
    fn default() -> Self {
        Targets {
            availability_ppm: 995_000,
            bank_p95_ms: 500,
        }
    }
}

impl Targets {
    /// Whether `ms` is a bucket bound (only those compare exactly with a quantile).
    pub fn is_bucket_bound_ms(ms: u64) -> bool {
        BUCKET_BOUNDS_US.contains(&ms.saturating_mul(1000))
    }
}

/// The SLA settings (`[sla]` of the sidecar's configuration file).
#[derive(Debug, Clone)]
pub struct SlaSettings {
    /// The zone days and months are counted in.
    pub time_zone: TimeZone,
    /// Its name as configured (reported back).
    pub time_zone_name: String,
    /// Targets of providers without an override.
    pub default: Targets,
    /// Per-provider targets.
    pub providers: HashMap<Bin, Targets>,
}

impl Default for SlaSettings {
    fn default() -> Self {
        SlaSettings {
            time_zone: TimeZone::UTC,
            time_zone_name: "UTC".into(),
            default: Targets::default(),
            providers: HashMap::new(),
        }
    }
}

impl SlaSettings {
    /// The targets of `provider`.
    pub fn targets(&self, provider: Bin) -> Targets {
        self.providers
            .get(&provider)
            .copied()
            .unwrap_or(self.default)
    }

    /// Local midnight of `d` as Unix seconds (a day whose midnight is skipped starts at
    /// the first instant after the gap).
    fn midnight(&self, d: Date) -> Result<i64, Error> {
        d.to_zoned_datetime(self.time_zone.clone())
            .map(|z| z.timestamp().as_second())
            .map_err(|_| Error::BadRequest("from, to: outside the supported years".into()))
    }
}

/// How the report groups days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One row per day.
    Day,
    /// One row per calendar month (the part of it within `from`..=`to`).
    Month,
}

/// `GET /v1/admin/sla?from=DATE&to=DATE&period=day|month[&provider=BIN]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    /// First day (local).
    pub from: Date,
    /// Last day (local), inclusive.
    pub to: Date,
    /// Grouping.
    pub period: Period,
    /// Only this provider.
    pub provider: Option<Bin>,
}

pub(crate) fn parse_date(name: &str, s: &str) -> Result<Date, Error> {
    let shape = s.len() == 10
        && s.bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 4 | 7) == (b == b'-') && (b == b'-' || b.is_ascii_digit()));
    shape
        .then(|| s.parse::<Date>().ok())
        .flatten()
        .ok_or_else(|| Error::BadRequest(format!("{name}: a date YYYY-MM-DD")))
}

impl ReportQuery {
    /// Reads the query parameters (each at most once, none unknown).
    pub fn parse(mut q: HashMap<String, String>) -> Result<ReportQuery, Error> {
        let mut take = |k: &str| q.remove(k);
        let from = take("from").ok_or_else(|| Error::BadRequest("from: required".into()))?;
        let to = take("to").ok_or_else(|| Error::BadRequest("to: required".into()))?;
        let period = match take("period").as_deref() {
            None | Some("day") => Period::Day,
            Some("month") => Period::Month,
            Some(_) => return Err(Error::BadRequest("period: day or month".into())),
        };
        let provider = take("provider")
            .map(|p| {
                Bin::parse(&p)
                    .map_err(|_| Error::BadRequest("provider: a BIN, exactly 12 digits".into()))
            })
            .transpose()?;
        if let Some(other) = q.keys().next() {
            return Err(Error::BadRequest(format!(
                "query parameter {other} is unknown (from, to, period, provider)"
            )));
        }
        let (from, to) = (parse_date("from", &from)?, parse_date("to", &to)?);
        if from > to {
            return Err(Error::BadRequest("from: after to".into()));
        }
        if days(from, to).nth(MAX_REPORT_DAYS).is_some() {
            return Err(Error::BadRequest(format!(
                "to: at most {MAX_REPORT_DAYS} days from from, inclusive"
            )));
        }
        Ok(ReportQuery {
            from,
            to,
            period,
            provider,
        })
    }
}

/// Every day from `from` to `to`, inclusive.
fn days(from: Date, to: Date) -> impl Iterator<Item = Date> {
    std::iter::successors(Some(from), |d| d.tomorrow().ok()).take_while(move |d| *d <= to)
}

/// What the rollups hold for one provider × route over some minutes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls by outcome, in [`Outcome::ALL`] order.
    pub calls: [u64; 7],
    /// The bank's time.
    pub bank: Histogram,
    /// The hub's time.
    pub hub: Histogram,
    /// The live-traffic schema checks.
    pub live: LiveCounts,
}

impl Counts {
    /// Adds `other`.
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.calls.iter_mut().zip(other.calls) {
            *a += b;
        }
        self.bank.merge(&other.bank);
        self.hub.merge(&other.hub);
        self.live.add(other.live);
    }

    /// Calls whose outcome `pick` selects.
    pub fn count(&self, pick: impl Fn(Outcome) -> bool) -> u64 {
        Outcome::ALL
            .iter()
            .zip(self.calls)
            .filter(|(o, _)| pick(**o))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One day's counts by (provider, route).
type Day = BTreeMap<(String, String), Counts>;

/// The position of an outcome's wire name in [`Outcome::ALL`].
pub(crate) fn outcome_index(s: &str) -> Option<usize> {
    Outcome::ALL.iter().position(|o| o.as_str() == s)
}

/// A stored count (never negative).
pub(crate) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt("a negative rollup count".into()))
}

/// Adds a stored bucket's count to `h` (sized on first use).
pub(crate) fn add_to_bucket(h: &mut Histogram, bucket: i64, count: i64) -> Result<(), StoreError> {
    if h.0.len() != BUCKETS {
        *h = Histogram::new();
    }
    let slot = usize::try_from(bucket)
        .ok()
        .and_then(|b| h.0.get_mut(b))
        .ok_or_else(|| StoreError::Corrupt("a rollup bucket out of range".into()))?;
    *slot += to_u64(count)?;
    Ok(())
}

/// Reads the counts of the minutes in `[start, end)`.
fn read_range(
    sql: &mut dyn Sql,
    start: i64,
    end: i64,
    provider: Option<Bin>,
) -> Result<Day, StoreError> {
    let mut day = Day::new();
    let (filter, params) = match provider {
        Some(p) => (
            "provider = $3",
            vec![start.into(), end.into(), p.to_string().into()],
        ),
        None => ("provider IS NOT NULL", vec![start.into(), end.into()]),
    };
    let calls = format!(
        "SELECT provider, route, outcome, CAST(SUM(calls) AS BIGINT) FROM rollup_calls
         WHERE minute >= $1 AND minute < $2 AND {filter}
         GROUP BY provider, route, outcome"
    );
    sql.query_each(&calls, &params, &mut |r| {
        let i = outcome_index(&r.text(2)?)
            .ok_or_else(|| StoreError::Corrupt("an unknown rollup outcome".into()))?;
        let entry = day.entry((r.text(0)?, r.text(1)?)).or_default();
        entry.calls[i] += to_u64(r.int(3)?)?;
        Ok(())
    })?;
    let latency = format!(
        "SELECT provider, route, kind, bucket, CAST(SUM(count) AS BIGINT) FROM rollup_latency
         WHERE minute >= $1 AND minute < $2 AND {filter}
         GROUP BY provider, route, kind, bucket"
    );
    sql.query_each(&latency, &params, &mut |r| {
        let entry = day.entry((r.text(0)?, r.text(1)?)).or_default();
        let h = match r.text(2)?.as_str() {
            "bank" => &mut entry.bank,
            _ => &mut entry.hub,
        };
        add_to_bucket(h, r.int(3)?, r.int(4)?)
    })?;
    let only = provider.map(|p| p.to_string());
    live::read(
        sql,
        (start, end),
        only.as_deref(),
        false,
        &mut |provider, route, _, counts| {
            day.entry((provider, route)).or_default().live.add(counts);
        },
    )?;
    Ok(day)
}

/// Reads the report's days from the store: one pair of grouped queries per local day.
pub fn read(
    sql: &mut dyn Sql,
    query: &ReportQuery,
    settings: &SlaSettings,
) -> Result<Vec<(Date, Day)>, Error> {
    let mut out = Vec::new();
    for d in days(query.from, query.to) {
        let start = settings.midnight(d)?;
        let next = d
            .tomorrow()
            .map_err(|_| Error::BadRequest("to: outside the supported years".into()))?;
        let end = settings.midnight(next)?;
        out.push((d, read_range(sql, start, end, query.provider)?));
    }
    Ok(out)
}

/// A latency quantile: a bucket's upper bound in ms, or beyond the last bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Bound {
    /// At most this many milliseconds.
    Ms(u64),
    /// Beyond the last bucket bound (`">30000"`).
    Over(String),
}

impl Bound {
    /// The `q` quantile of `h` (`None` when empty).
    pub(crate) fn of(h: &Histogram, q: f64) -> Option<Bound> {
        if h.count() == 0 {
            return None;
        }
        Some(match h.quantile_bound_us(q) {
            Some(us) => Bound::Ms(us / 1000),
            None => Bound::Over(format!(">{}", BUCKET_BOUNDS_US[BUCKETS - 2] / 1000)),
        })
    }

    /// Whether the bound is above `ms`.
    pub(crate) fn exceeds(&self, ms: u64) -> bool {
        match self {
            Bound::Ms(v) => *v > ms,
            Bound::Over(_) => true,
        }
    }

    fn csv(b: &Option<Bound>) -> String {
        match b {
            None => String::new(),
            Some(Bound::Ms(v)) => v.to_string(),
            Some(Bound::Over(s)) => s.clone(),
        }
    }
}

/// p50, p95 and p99 of a histogram (`null` without calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<Bound>,
    /// 95th percentile.
    pub p95: Option<Bound>,
    /// 99th percentile.
    pub p99: Option<Bound>,
}

impl Quantiles {
    fn of(h: &Histogram) -> Quantiles {
        Quantiles {
            p50: Bound::of(h, 0.50),
            p95: Bound::of(h, 0.95),
            p99: Bound::of(h, 0.99),
        }
    }
}

/// Calls by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ByOutcome {
    /// Answered 1xx–3xx.
    pub success: u64,
    /// Answered 4xx.
    pub client_error: u64,
    /// Answered 5xx.
    pub server_error: u64,
    /// No answer within the SLA.
    pub timeout: u64,
    /// TLS or connection failure, circuit open.
    pub unreachable: u64,
    /// Not valid HTTP.
    pub bad_response: u64,
    /// Refused by the hub before the provider.
    pub refused: u64,
}

impl ByOutcome {
    fn of(c: &[u64; 7]) -> ByOutcome {
        ByOutcome {
            success: c[0],
            client_error: c[1],
            server_error: c[2],
            timeout: c[3],
            unreachable: c[4],
            bad_response: c[5],
            refused: c[6],
        }
    }
}

/// The targets a row is held to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetView {
    /// Availability a month, percent.
    pub availability_percent: f64,
    /// Bank p95 a day, milliseconds.
    pub bank_p95_ms: u64,
}

/// A target missed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Breach {
    /// The month's availability below the target (month rows).
    Availability {
        /// The month's availability, percent.
        availability_percent: f64,
        /// The target, percent.
        target_percent: f64,
    },
    /// A day's bank p95 above the target (day rows: that day; month rows: each such day).
    BankP95 {
        /// The local day.
        day: String,
        /// The day's bank p95.
        bank_p95_ms: Bound,
        /// The target, ms.
        target_ms: u64,
    },
}

/// One provider × route × period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The provider's BIN.
    pub provider: String,
    /// The contract's route template.
    pub route: String,
    /// `YYYY-MM-DD` (day) or `YYYY-MM` (month).
    pub period: String,
    /// First local day counted.
    pub from: String,
    /// Last local day counted.
    pub to: String,
    /// Calls by outcome.
    pub calls: ByOutcome,
    /// Every call.
    pub total: u64,
    /// Calls that reached the provider (all but `refused`).
    pub reached_provider: u64,
    /// Calls that count against the provider (5xx, timeouts, unreachable, bad answers).
    pub failures: u64,
    /// 1 − failures ÷ reached_provider; `null` when none reached it.
    pub availability: Option<f64>,
    /// (failures + 4xx) ÷ reached_provider; `null` when none reached it.
    pub error_rate: Option<f64>,
    /// The bank's time to the last byte.
    pub bank_ms: Quantiles,
    /// The hub's own time.
    pub hub_ms: Quantiles,
    /// The provider's targets.
    pub targets: TargetView,
    /// Targets missed in this period.
    pub breaches: Vec<Breach>,
    /// The live-traffic schema checks of the period.
    pub live: LiveCounts,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// First local day.
    pub from: String,
    /// Last local day.
    pub to: String,
    /// Grouping.
    pub period: Period,
    /// The zone days are counted in.
    pub time_zone: String,
    /// Rows by provider, route, period.
    pub rows: Vec<Row>,
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// Millionths as a percentage.
pub(crate) fn percent_of_ppm(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

/// Whether `available` of `reached` is below `ppm` millionths, exactly.
pub(crate) fn below(available: u64, reached: u64, ppm: u32) -> bool {
    u128::from(available) * 1_000_000 < u128::from(reached) * u128::from(ppm)
}

fn period_key(d: Date, period: Period) -> String {
    match period {
        Period::Day => d.to_string(),
        Period::Month => format!("{:04}-{:02}", d.year(), d.month()),
    }
}

/// Builds the report from the days read.
pub fn report(days: &[(Date, Day)], query: &ReportQuery, settings: &SlaSettings) -> Report {
    // (provider, route, period) → (first day, last day, counts, days' bank p95 breaches)
    type Acc = (Date, Date, Counts, Vec<Breach>);
    let mut acc: BTreeMap<(String, String, String), Acc> = BTreeMap::new();
    for (d, day) in days {
        for ((provider, route), counts) in day {
            let targets = Bin::parse(provider)
                .map(|b| settings.targets(b))
                .unwrap_or(settings.default);
            let key = (
                provider.clone(),
                route.clone(),
                period_key(*d, query.period),
            );
            let e = acc
                .entry(key)
                .or_insert_with(|| (*d, *d, Counts::default(), Vec::new()));
            e.1 = *d;
            e.2.add(counts);
            if let Some(p95) = Bound::of(&counts.bank, 0.95) {
                if p95.exceeds(targets.bank_p95_ms) {
                    e.3.push(Breach::BankP95 {
                        day: d.to_string(),
                        bank_p95_ms: p95,
                        target_ms: targets.bank_p95_ms,
                    });
                }
            }
        }
    }
    let rows = acc
        .into_iter()
        .map(|((provider, route, period), (first, last, counts, days))| {
            let targets = Bin::parse(&provider)
                .map(|b| settings.targets(b))
                .unwrap_or(settings.default);
            row(
                provider,
                route,
                period,
                (first, last),
                &counts,
                days,
                targets,
                query.period,
            )
        })
        .collect();
    Report {
        from: query.from.to_string(),
        to: query.to.to_string(),
        period: query.period,
        time_zone: settings.time_zone_name.clone(),
        rows,
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    provider: String,
    route: String,
    period: String,
    (first, last): (Date, Date),
    counts: &Counts,
    mut breaches: Vec<Breach>,
    targets: Targets,
    grouping: Period,
) -> Row {
    let reached = counts.count(Outcome::reached_provider);
    let failures = counts.count(Outcome::is_provider_failure);
    let client_errors = counts.count(|o| o == Outcome::ClientError);
    let available = reached - failures;
    let target_percent = percent_of_ppm(targets.availability_ppm);
    // Availability is a monthly target: judged on month rows only.
    if grouping == Period::Month
        && reached > 0
        && below(available, reached, targets.availability_ppm)
    {
        breaches.insert(
            0,
            Breach::Availability {
                availability_percent: available as f64 * 100.0 / reached as f64,
                target_percent,
            },
        );
    }
    Row {
        provider,
        route,
        period,
        from: first.to_string(),
        to: last.to_string(),
        calls: ByOutcome::of(&counts.calls),
        total: counts.calls.iter().sum(),
        reached_provider: reached,
        failures,
        availability: ratio(available, reached),
        error_rate: ratio(failures + client_errors, reached),
        bank_ms: Quantiles::of(&counts.bank),
        hub_ms: Quantiles::of(&counts.hub),
        targets: TargetView {
            availability_percent: target_percent,
            bank_p95_ms: targets.bank_p95_ms,
        },
        breaches,
        live: counts.live,
    }
}

/// The CSV header (`Accept: text/csv`).
const CSV_HEADER: [&str; 30] = [
    "provider",
    "route",
    "period",
    "from",
    "to",
    "success",
    "client_error",
    "server_error",
    "timeout",
    "unreachable",
    "bad_response",
    "refused",
    "total",
    "reached_provider",
    "failures",
    "availability",
    "error_rate",
    "bank_p50_ms",
    "bank_p95_ms",
    "bank_p99_ms",
    "hub_p50_ms",
    "hub_p95_ms",
    "hub_p99_ms",
    "target_availability_percent",
    "target_bank_p95_ms",
    "availability_breached",
    "bank_p95_breached_days",
    "live_sampled",
    "live_violations",
    "live_unchecked",
];

/// The report as CSV (RFC 4180): a header, then one line per row; empty cells for
/// `null`; the breaches as a flag and the days they name (space-separated).
pub fn to_csv(report: &Report) -> Result<Vec<u8>, Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let fail = |e: csv::Error| Error::Internal(format!("CSV: {e}"));
    w.write_record(CSV_HEADER).map_err(fail)?;
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in &report.rows {
        let c = &r.calls;
        let availability_breached = r
            .breaches
            .iter()
            .any(|b| matches!(b, Breach::Availability { .. }));
        let days: Vec<&str> = r
            .breaches
            .iter()
            .filter_map(|b| match b {
                Breach::BankP95 { day, .. } => Some(day.as_str()),
                Breach::Availability { .. } => None,
            })
            .collect();
        let mut record: Vec<String> = vec![
            r.provider.clone(),
            r.route.clone(),
            r.period.clone(),
            r.from.clone(),
            r.to.clone(),
        ];
        record.extend(
            [
                c.success,
                c.client_error,
                c.server_error,
                c.timeout,
                c.unreachable,
                c.bad_response,
                c.refused,
                r.total,
                r.reached_provider,
                r.failures,
            ]
            .map(|n| n.to_string()),
        );
        record.extend([opt(r.availability), opt(r.error_rate)]);
        for q in [&r.bank_ms, &r.hub_ms] {
            record.extend([&q.p50, &q.p95, &q.p99].map(Bound::csv));
        }
        record.extend([
            r.targets.availability_percent.to_string(),
            r.targets.bank_p95_ms.to_string(),
            availability_breached.to_string(),
            days.join(" "),
        ]);
        record.extend([r.live.sampled, r.live.violations, r.live.unchecked].map(|n| n.to_string()));
        w.write_record(&record).map_err(fail)?;
    }
    w.into_inner()
        .map_err(|e| Error::Internal(format!("CSV: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<ReportQuery, Error> {
        ReportQuery::parse(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn detail(r: Result<ReportQuery, Error>) -> String {
        match r {
            Err(Error::BadRequest(d)) => d,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn query_rules() {
        let ok = q(&[
            ("from", "2026-11-01"),
            ("to", "2026-11-30"),
            ("period", "month"),
        ])
        .unwrap();
        assert_eq!(ok.period, Period::Month);
        assert!(detail(q(&[("to", "2026-11-30")])).starts_with("from: required"));
        assert!(detail(q(&[("from", "2026-11-02"), ("to", "2026-11-01")])).contains("after to"));
        assert!(detail(q(&[("from", "2026-1-02"), ("to", "2026-11-01")])).starts_with("from:"));
        assert!(detail(q(&[("from", "2026-02-30"), ("to", "2026-11-01")])).starts_with("from:"));
        assert!(detail(q(&[("from", "2025-01-01"), ("to", "2026-01-02")])).contains("366 days"));
        assert!(q(&[("from", "2025-01-01"), ("to", "2026-01-01")]).is_ok());
        assert!(detail(q(&[
            ("from", "2026-11-01"),
            ("to", "2026-11-01"),
            ("x", "1")
        ]))
        .contains("x is unknown"));
        let bad_bin = detail(q(&[
            ("from", "2026-11-01"),
            ("to", "2026-11-01"),
            ("provider", "12345"),
        ]));
        assert!(bad_bin.starts_with("provider:") && !bad_bin.contains("12345"));
    }

    #[test]
    fn availability_compares_exactly() {
        // 199 of 200 is 99.5 %: not below 99.5 %; 198 of 200 is.
        assert!(!below(199, 200, 995_000));
        assert!(below(198, 200, 995_000));
        assert!(Targets::is_bucket_bound_ms(500));
        assert!(!Targets::is_bucket_bound_ms(400));
    }

    #[test]
    fn almaty_days_start_at_local_midnight() {
        let s = SlaSettings {
            time_zone: TimeZone::get("Asia/Almaty").unwrap(),
            ..SlaSettings::default()
        };
        let d: Date = "2026-11-01".parse().unwrap();
        // 2026-11-01T00:00+05:00 = 2026-10-31T19:00Z.
        assert_eq!(s.midnight(d).unwrap(), 1_793_473_200);
    }
}
