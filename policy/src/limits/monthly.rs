//! Calendar-month quotas per consent × endpoint (operational limits): which routes of which
//! provider are capped and at how many calls ([`MonthlyQuotas`]), the calendar month that
//! contains an instant in the configured time zone ([`MonthWindow`]), and an in-process
//! counter ([`MonthlyCounter`]) for the `local` mode and failure policy. The gateway counts
//! shared quotas in its store under [`MonthWindow::key`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use consent_cache::Bin;
use dashmap::DashMap;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::settings::{CappedRoute, LimitError, MonthlySettings};
use crate::route::RouteId;

/// One calendar month in the configured zone: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthWindow {
    /// `YYYYMM`, e.g. `202612`.
    pub key: u32,
    /// Local midnight of the 1st, Unix seconds.
    pub start_unix: i64,
    /// Local midnight of the next month's 1st, Unix seconds.
    pub end_unix: i64,
}

impl MonthWindow {
    /// The month containing `now_unix` in `tz`; `None` only for instants outside the
    /// years jiff supports (±9999).
    pub fn containing(now_unix: i64, tz: &TimeZone) -> Option<MonthWindow> {
        let local = Timestamp::from_second(now_unix)
            .ok()?
            .to_zoned_datetime(tz.clone());
        let first = local.date().first_of_month();
        let next = first.last_of_month().tomorrow().ok()?;
        let start = midnight(first, tz)?;
        let end = midnight(next, tz)?;
        let key = u32::try_from(first.year()).ok()? * 100 + u32::try_from(first.month()).ok()?;
        Some(MonthWindow {
            key,
            start_unix: start,
            end_unix: end,
        })
    }

    /// Whether `now_unix` is inside this month.
    pub fn contains(&self, now_unix: i64) -> bool {
        (self.start_unix..self.end_unix).contains(&now_unix)
    }

    /// The month's length in seconds (the `w` of the `RateLimit-Policy`).
    pub fn length_secs(&self) -> u64 {
        (self.end_unix - self.start_unix).max(1).unsigned_abs()
    }

    /// Seconds from `now_unix` to the reset (≥ 1).
    pub fn secs_to_reset(&self, now_unix: i64) -> u64 {
        (self.end_unix - now_unix).max(1).unsigned_abs()
    }
}

fn midnight(d: Date, tz: &TimeZone) -> Option<i64> {
    // A zone whose midnight is skipped on that day (a DST gap) starts the day at the
    // first instant after the gap: jiff's default `compatible` disambiguation.
    Some(
        d.to_zoned_datetime(tz.clone())
            .ok()?
            .timestamp()
            .as_second(),
    )
}

/// The compiled `[limits.monthly]`: the zone and the quota of each provider × route.
#[derive(Debug, Clone)]
pub struct MonthlyQuotas {
    tz: TimeZone,
    routes: HashMap<CappedRoute, u32>,
    providers: HashMap<Bin, HashMap<CappedRoute, u32>>,
}

impl MonthlyQuotas {
    /// Compiles validated settings; `None` when nothing is capped.
    pub fn compile(s: &MonthlySettings) -> Result<Option<MonthlyQuotas>, LimitError> {
        let tz = TimeZone::get(&s.time_zone)
            .map_err(|_| LimitError::UnknownTimeZone(s.time_zone.clone()))?;
        if s.is_empty() {
            return Ok(None);
        }
        let providers = s
            .providers
            .iter()
            .map(|p| (p.provider, p.routes.iter().map(|(r, n)| (*r, *n)).collect()))
            .collect();
        Ok(Some(MonthlyQuotas {
            tz,
            routes: s.routes.iter().map(|(r, n)| (*r, *n)).collect(),
            providers,
        }))
    }

    /// Calls per consent per month on `route` of `provider`; `None`: not capped (open
    /// data never is).
    pub fn limit(&self, provider: Bin, route: RouteId) -> Option<u32> {
        let capped = CappedRoute::of(route)?;
        self.providers
            .get(&provider)
            .and_then(|p| p.get(&capped))
            .or_else(|| self.routes.get(&capped))
            .copied()
    }

    /// The month containing `now_unix` in the configured zone.
    pub fn window(&self, now_unix: i64) -> Option<MonthWindow> {
        MonthWindow::containing(now_unix, &self.tz)
    }
}

/// In-process monthly counts by (month, consent × route key): the `local` mode, and the
/// `local` failure policy of a shared quota (with its limit divided by the gateways).
#[derive(Debug, Default)]
pub struct MonthlyCounter {
    counts: DashMap<(u32, u128), AtomicU32>,
}

impl MonthlyCounter {
    /// Counts one call against `limit` for `key` in `month`; `Ok(remaining)` if it was
    /// within the limit, `Err(())` (nothing counted) if the limit is reached.
    #[allow(clippy::result_unit_err)]
    pub fn take(&self, month: u32, key: u128, limit: u32) -> Result<u32, ()> {
        let entry = self
            .counts
            .entry((month, key))
            .or_insert_with(|| AtomicU32::new(0));
        entry
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|before| limit - before - 1)
            .map_err(|_| ())
    }

    /// Forgets every month before `month`.
    pub fn retain_month(&self, month: u32) {
        self.counts.retain(|(m, _), _| *m >= month);
    }

    /// Keys tracked (for a gauge).
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::settings::ProviderMonthly;

    fn almaty() -> TimeZone {
        TimeZone::get("Asia/Almaty").unwrap()
    }

    #[test]
    fn a_month_starts_at_local_midnight_of_the_first() {
        // 2026-12-31T19:00:00Z is 2027-01-01T00:00 in Almaty (UTC+5).
        let new_year_local = 1_798_743_600;
        let w = MonthWindow::containing(new_year_local, &almaty()).unwrap();
        assert_eq!(w.key, 202701);
        assert_eq!(w.start_unix, new_year_local);
        assert_eq!(w.length_secs(), 31 * 86_400);
        let before = MonthWindow::containing(new_year_local - 1, &almaty()).unwrap();
        assert_eq!(before.key, 202612);
        assert_eq!(before.end_unix, new_year_local);
        assert_eq!(before.secs_to_reset(new_year_local - 1), 1);
        // In UTC the same instant is still December.
        let utc = MonthWindow::containing(new_year_local, &TimeZone::UTC).unwrap();
        assert_eq!(utc.key, 202612);
        assert!(utc.contains(new_year_local) && !w.contains(new_year_local - 1));
    }

    #[test]
    fn february_of_a_leap_year_has_29_days() {
        let mid_feb_2028 = 1_834_358_400; // 2028-02-17T00:00:00Z
        let w = MonthWindow::containing(mid_feb_2028, &TimeZone::UTC).unwrap();
        assert_eq!((w.key, w.length_secs()), (202802, 29 * 86_400));
    }

    #[test]
    fn provider_tiers_replace_the_route_default() {
        let p1 = Bin::parse("200000000001").unwrap();
        let p2 = Bin::parse("200000000002").unwrap();
        let s = MonthlySettings {
            time_zone: "Asia/Almaty".into(),
            routes: [(CappedRoute::Balances, 120), (CappedRoute::Accounts, 420)].into(),
            providers: vec![ProviderMonthly {
                provider: p1,
                routes: [(CappedRoute::Balances, 4)].into(),
            }],
        };
        let q = MonthlyQuotas::compile(&s).unwrap().unwrap();
        assert_eq!(q.limit(p1, RouteId::Balances), Some(4));
        assert_eq!(q.limit(p1, RouteId::Accounts), Some(420));
        assert_eq!(q.limit(p2, RouteId::Balances), Some(120));
        assert_eq!(q.limit(p2, RouteId::Transactions), None);
        assert_eq!(q.limit(p1, RouteId::OpenData), None);
    }

    #[test]
    fn unknown_zones_are_refused_and_empty_settings_cap_nothing() {
        let bad = MonthlySettings {
            time_zone: "Mars/Olympus".into(),
            ..MonthlySettings::default()
        };
        assert!(matches!(
            MonthlyQuotas::compile(&bad),
            Err(LimitError::UnknownTimeZone(_))
        ));
        assert!(MonthlyQuotas::compile(&MonthlySettings::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_counter_refuses_at_exactly_the_limit_and_forgets_old_months() {
        let c = MonthlyCounter::default();
        assert_eq!(c.take(202612, 7, 3), Ok(2));
        assert_eq!(c.take(202612, 7, 3), Ok(1));
        assert_eq!(c.take(202612, 7, 3), Ok(0));
        assert_eq!(c.take(202612, 7, 3), Err(()));
        assert_eq!(c.take(202612, 8, 3), Ok(2));
        assert_eq!(c.take(202701, 7, 3), Ok(2));
        c.retain_month(202701);
        assert_eq!(c.len(), 1);
    }
}
