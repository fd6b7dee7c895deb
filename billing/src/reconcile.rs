//! Reconciliation: two countings of the same calls compared key by key — per day × API
//! user × provider × route × outcome ([`reconcile`]), or per period × API user ×
//! provider × route × class ([`reconcile_periods`], the trust sidecar's usage answer) —
//! every key where calls or lines differ reported, none hidden.

use std::collections::BTreeMap;
use std::fmt;

use consent_cache::Bin;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::class::{default_class, CallClass};
use crate::routes::canonical_route;
use crate::tariff::Tariff;
use crate::{BillingError, UsageRow};

/// One row of the trust sidecar's usage answer (`GET /v1/admin/usage`, `GET /v1/usage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodRow {
    /// The API user.
    pub api_user: Option<Bin>,
    /// The provider.
    pub provider: Option<Bin>,
    /// The route template.
    pub route: String,
    /// The call class.
    pub class: CallClass,
    /// Calls in the period.
    pub calls: u64,
    /// Transaction lines in the period.
    pub lines: u64,
}

/// The usage answer: the trust sidecar's `{"from", "to", "time_zone", "rows": [...]}`
/// (the period fields optional, so that a bare `{"rows": [...]}` is read as well).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// The first local day of the period, when the answer names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Date>,
    /// The last local day, when named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Date>,
    /// The time zone of the days, when named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// One row per API user × provider × route × class.
    pub rows: Vec<PeriodRow>,
}

/// A key on which the two countings differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The day, or `None` for a whole period.
    pub day: Option<Date>,
    /// The API user.
    pub api_user: Option<Bin>,
    /// The provider.
    pub provider: Option<Bin>,
    /// The route.
    pub route: String,
    /// The outcome or the class.
    pub kind: String,
    /// Calls expected (recomputed) and reported.
    pub calls: (u64, u64),
    /// Lines expected and reported.
    pub lines: (u64, u64),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bin = |b: Option<Bin>| b.map_or_else(|| "-".to_string(), |b| b.to_string());
        let day = self
            .day
            .map_or_else(|| "period".to_string(), |d| d.to_string());
        write!(
            f,
            "{day} api_user={} provider={} route={:?} {}: calls expected {} reported {}; lines expected {} reported {}",
            bin(self.api_user),
            bin(self.provider),
            self.route,
            self.kind,
            self.calls.0,
            self.calls.1,
            self.lines.0,
            self.lines.1
        )
    }
}

type Key = (Option<Date>, Option<Bin>, Option<Bin>, String, String);
/// API user × provider × route × class.
type ClassKey = (Option<Bin>, Option<Bin>, String, CallClass);

fn compare(
    expected: BTreeMap<Key, (u64, u64)>,
    reported: BTreeMap<Key, (u64, u64)>,
) -> Vec<Difference> {
    let mut keys: Vec<&Key> = expected.keys().chain(reported.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let e = expected.get(k).copied().unwrap_or_default();
            let r = reported.get(k).copied().unwrap_or_default();
            (e != r).then(|| Difference {
                day: k.0,
                api_user: k.1,
                provider: k.2,
                route: k.3.clone(),
                kind: k.4.clone(),
                calls: (e.0, r.0),
                lines: (e.1, r.1),
            })
        })
        .collect()
}

fn route_name(route: &str) -> String {
    canonical_route(route).unwrap_or(route).to_string()
}

fn sum<'a>(rows: impl Iterator<Item = (Key, u64, u64)> + 'a) -> BTreeMap<Key, (u64, u64)> {
    let mut out: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for (k, calls, lines) in rows {
        let e = out.entry(k).or_default();
        e.0 += calls;
        e.1 += lines;
    }
    out
}

fn by_day(rows: &[UsageRow]) -> BTreeMap<Key, (u64, u64)> {
    sum(rows.iter().map(|r| {
        let key = (
            Some(r.day),
            r.api_user,
            r.provider,
            route_name(&r.route),
            r.outcome.as_str().to_string(),
        );
        (key, r.calls, r.lines)
    }))
}

fn by_period(rows: &[PeriodRow]) -> BTreeMap<Key, (u64, u64)> {
    sum(rows.iter().map(|r| {
        let key = (
            None,
            r.api_user,
            r.provider,
            route_name(&r.route),
            r.class.as_str().to_string(),
        );
        (key, r.calls, r.lines)
    }))
}

/// Every day × API user × provider × route × outcome where `reported` differs from
/// `expected` in calls or lines (rows with the same key are summed first).
pub fn reconcile(expected: &[UsageRow], reported: &[UsageRow]) -> Vec<Difference> {
    compare(by_day(expected), by_day(reported))
}

/// Every API user × provider × route × class of the period where the two differ.
pub fn reconcile_periods(expected: &[PeriodRow], reported: &[PeriodRow]) -> Vec<Difference> {
    compare(by_period(expected), by_period(reported))
}

/// Daily usage summed over the period per API user × provider × route × class, each day
/// classified by the tariff version in force (or the default classes without a tariff).
pub fn period_rows(
    usage: &[UsageRow],
    tariff: Option<&Tariff>,
) -> Result<Vec<PeriodRow>, BillingError> {
    let mut out: BTreeMap<ClassKey, (u64, u64)> = BTreeMap::new();
    for r in usage {
        let class = match tariff {
            Some(t) => t
                .version_at(r.day)
                .ok_or(BillingError::NoTariff { day: r.day })?
                .class_of(&r.route, r.outcome),
            None => default_class(&route_name(&r.route), r.outcome),
        };
        let e = out
            .entry((r.api_user, r.provider, route_name(&r.route), class))
            .or_default();
        e.0 += r.calls;
        e.1 += r.lines;
    }
    Ok(out
        .into_iter()
        .map(
            |((api_user, provider, route, class), (calls, lines))| PeriodRow {
                api_user,
                provider,
                route,
                class,
                calls,
                lines,
            },
        )
        .collect())
}
