//! Pricing a month: usage rows summed per API user × provider × route × class × tariff
//! version, free calls under the per-customer daily threshold taken off, each line priced
//! and rounded once, caps applied per API user × provider, and the lines shared out into
//! each participant's statements (the API user's and the provider's see the same lines).

use std::collections::BTreeMap;

use consent_cache::Bin;
use feed_wire::rollup::Outcome;
use jiff::civil::Date;
use rust_decimal::Decimal;

use crate::class::CallClass;
use crate::money::round;
use crate::routes::{canonical_route, TRANSACTIONS};
use crate::statement::{CapLine, Role, Statement, StatementLine};
use crate::tariff::{Tariff, TariffVersion};
use crate::{BillingError, CustomerDay, UsageRow};

/// Usage summed per day × API user × provider × route × outcome: (calls, lines).
type DayUsage = BTreeMap<(Date, Option<Bin>, Option<Bin>, String, Outcome), (u64, u64)>;
/// Free calls per day × API user × provider × route.
type FreeCalls = BTreeMap<(Date, Bin, Bin, String), u64>;
/// A statement line's key: API user, provider, route, class, version's first day.
type LineKey = (Option<Bin>, Option<Bin>, String, CallClass, Date);

/// Counts of one line.
#[derive(Default, Clone, Copy)]
struct Counts {
    calls: u64,
    free: u64,
    lines: u64,
}

/// The first and last day of a calendar month.
pub(crate) fn month_days(year: i16, month: i8) -> Result<(Date, Date), BillingError> {
    let first = Date::new(year, month, 1).map_err(|_| BillingError::Month { year, month })?;
    Ok((first, first.last_of_month()))
}

fn route_name(route: &str) -> String {
    canonical_route(route).unwrap_or(route).to_string()
}

fn version(tariff: &Tariff, day: Date) -> Result<&TariffVersion, BillingError> {
    tariff.version_at(day).ok_or(BillingError::NoTariff { day })
}

/// One statement per participant and role for the calendar month `year`-`month` (local
/// days of the tariff's time zone), as `docs/billing.md` describes. `usage` and
/// `customers` outside the month are ignored.
pub fn statements(
    tariff: &Tariff,
    year: i16,
    month: i8,
    usage: &[UsageRow],
    customers: &[CustomerDay],
) -> Result<Vec<Statement>, BillingError> {
    let (first, last) = month_days(year, month)?;
    let mut days = DayUsage::new();
    for r in usage.iter().filter(|r| (first..=last).contains(&r.day)) {
        let e = days
            .entry((
                r.day,
                r.api_user,
                r.provider,
                route_name(&r.route),
                r.outcome,
            ))
            .or_default();
        // Sums of stored rows: saturating, never wrapping (a count that large is refused
        // as an overflow when priced).
        e.0 = e.0.saturating_add(r.calls);
        e.1 = e.1.saturating_add(r.lines);
    }
    let free = free_calls(tariff, first, last, &days, customers)?;
    let counts = line_counts(tariff, &days, &free)?;
    let priced = price_lines(tariff, &counts)?;
    let caps = caps(tariff, last, &priced)?;
    assemble(tariff, (year, month, first, last), priced, caps)
}

/// Free calls under the threshold: per customer × API user × provider × day, the first N
/// chargeable successful calls, given to routes in their canonical order; never more
/// than the usage counted on that route that day.
fn free_calls(
    tariff: &Tariff,
    first: Date,
    last: Date,
    days: &DayUsage,
    customers: &[CustomerDay],
) -> Result<FreeCalls, BillingError> {
    let mut per_customer: BTreeMap<(Date, Bin, Bin, &str), BTreeMap<String, u64>> = BTreeMap::new();
    for c in customers.iter().filter(|c| (first..=last).contains(&c.day)) {
        let v = version(tariff, c.day)?;
        if v.class_of(&c.route, Outcome::Success) == CallClass::Chargeable {
            let key = (c.day, c.api_user, c.provider, c.customer.as_str());
            let n = per_customer
                .entry(key)
                .or_default()
                .entry(route_name(&c.route))
                .or_default();
            *n = n.saturating_add(c.calls);
        }
    }
    let mut free = FreeCalls::new();
    for ((day, user, provider, _), routes) in per_customer {
        let v = version(tariff, day)?;
        let mut left = u64::from(
            v.prices_for(Some(user), Some(provider))
                .free_per_customer_day,
        );
        for (route, calls) in routes {
            let k = left.min(calls);
            left -= k;
            if k > 0 {
                let n = free.entry((day, user, provider, route)).or_default();
                *n = n.saturating_add(k);
            }
        }
    }
    for ((day, user, provider, route), k) in free.iter_mut() {
        let key = (
            *day,
            Some(*user),
            Some(*provider),
            route.clone(),
            Outcome::Success,
        );
        *k = (*k).min(days.get(&key).map_or(0, |c| c.0));
    }
    Ok(free)
}

/// Usage summed into statement lines (each day under the version in force that day).
fn line_counts(
    tariff: &Tariff,
    days: &DayUsage,
    free: &FreeCalls,
) -> Result<BTreeMap<LineKey, Counts>, BillingError> {
    let mut out: BTreeMap<LineKey, Counts> = BTreeMap::new();
    for ((day, user, provider, route, outcome), (calls, lines)) in days {
        let v = version(tariff, *day)?;
        let class = v.class_of(route, *outcome);
        let c = out
            .entry((*user, *provider, route.clone(), class, v.effective_from))
            .or_default();
        c.calls = c.calls.saturating_add(*calls);
        c.lines = c.lines.saturating_add(*lines);
        if let (Outcome::Success, CallClass::Chargeable, Some(u), Some(p)) =
            (outcome, class, user, provider)
        {
            let k = free
                .get(&(*day, *u, *p, route.clone()))
                .copied()
                .unwrap_or(0);
            c.free = c.free.saturating_add(k);
        }
    }
    Ok(out)
}

/// A priced line with its API user and provider.
struct Priced {
    api_user: Option<Bin>,
    provider: Option<Bin>,
    line: StatementLine,
}

/// Each line priced and rounded once: (calls − free) × price per call, plus, for
/// chargeable transactions calls, lines × price per 100 lines ÷ 100. Calls of an
/// unidentified caller are counted but priced at 0 (no one to bill).
fn price_lines(
    tariff: &Tariff,
    counts: &BTreeMap<LineKey, Counts>,
) -> Result<Vec<Priced>, BillingError> {
    let mut out = Vec::with_capacity(counts.len());
    for ((user, provider, route, class, from), c) in counts {
        let prices = tariff
            .version_at(*from)
            .map(|v| v.prices_for(*user, *provider));
        let (unit, per_100) = match (prices, user) {
            (Some(p), Some(_)) => {
                let lines_priced = *class == CallClass::Chargeable && route == TRANSACTIONS;
                let per_100 = if lines_priced {
                    p.per_100_lines
                } else {
                    Decimal::ZERO
                };
                (p.per_call(*class), per_100)
            }
            _ => (Decimal::ZERO, Decimal::ZERO),
        };
        let exact = line_amount(c, unit, per_100)?;
        out.push(Priced {
            api_user: *user,
            provider: *provider,
            line: StatementLine {
                counterparty: None,
                route: route.clone(),
                class: *class,
                tariff_from: *from,
                calls: c.calls,
                free_calls: c.free,
                lines: c.lines,
                unit_price: round(unit),
                per_100_lines: round(per_100),
                amount: round(exact),
            },
        });
    }
    Ok(out)
}

/// (calls − free) × unit + lines × per 100 ÷ 100, exactly, or an overflow error.
fn line_amount(c: &Counts, unit: Decimal, per_100: Decimal) -> Result<Decimal, BillingError> {
    let overflow = || BillingError::Overflow {
        what: "a statement line",
    };
    let calls = Decimal::from(c.calls.saturating_sub(c.free)).checked_mul(unit);
    let lines = Decimal::from(c.lines)
        .checked_mul(per_100)
        .and_then(|v| v.checked_div(Decimal::ONE_HUNDRED));
    calls
        .zip(lines)
        .and_then(|(a, b)| a.checked_add(b))
        .ok_or_else(overflow)
}

/// The monthly cap of each API user × provider (the terms in force on the month's last
/// day) and how much it takes off.
fn caps(
    tariff: &Tariff,
    last: Date,
    priced: &[Priced],
) -> Result<Vec<(Bin, Bin, CapLine)>, BillingError> {
    let mut charged: BTreeMap<(Bin, Bin), Decimal> = BTreeMap::new();
    for p in priced {
        if let (Some(u), Some(v)) = (p.api_user, p.provider) {
            let sum = charged.entry((u, v)).or_default();
            *sum = sum
                .checked_add(p.line.amount)
                .ok_or(BillingError::Overflow {
                    what: "a monthly cap's charges",
                })?;
        }
    }
    let mut out = Vec::new();
    for ((user, provider), charged) in charged {
        let v = version(tariff, last)?;
        let Some(cap) = v.prices_for(Some(user), Some(provider)).monthly_cap else {
            continue;
        };
        if charged > cap {
            let line = CapLine {
                counterparty: provider,
                cap: round(cap),
                charged: round(charged),
                reduction: round(charged - cap),
            };
            out.push((user, provider, line));
        }
    }
    Ok(out)
}

/// The lines and caps shared out into one statement per participant and role.
fn assemble(
    tariff: &Tariff,
    (year, month, first, last): (i16, i8, Date, Date),
    priced: Vec<Priced>,
    caps: Vec<(Bin, Bin, CapLine)>,
) -> Result<Vec<Statement>, BillingError> {
    type Parts = (Vec<StatementLine>, Vec<CapLine>);
    let mut parts: BTreeMap<(Role, Bin), Parts> = BTreeMap::new();
    for p in priced {
        if let Some(u) = p.api_user {
            let line = StatementLine {
                counterparty: p.provider,
                ..p.line.clone()
            };
            parts.entry((Role::ApiUser, u)).or_default().0.push(line);
        }
        if let Some(v) = p.provider {
            let line = StatementLine {
                counterparty: p.api_user,
                ..p.line
            };
            parts.entry((Role::Provider, v)).or_default().0.push(line);
        }
    }
    for (user, provider, cap) in caps {
        let as_provider = CapLine {
            counterparty: user,
            ..cap.clone()
        };
        parts.entry((Role::ApiUser, user)).or_default().1.push(cap);
        parts
            .entry((Role::Provider, provider))
            .or_default()
            .1
            .push(as_provider);
    }
    parts
        .into_iter()
        .map(|((role, who), (lines, caps))| {
            Statement::new(
                who,
                role,
                (year, month),
                (first, last),
                tariff.time_zone_name(),
                lines,
                caps,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "100140000001";
    const BANKS: [&str; 2] = ["990340000011", "990340000022"];

    fn tariff(price: &str) -> Tariff {
        let text = format!(
            "[[versions]]\neffective_from = 2026-01-01\n[versions.prices]\n\
             chargeable = \"{price}\"\nper_100_lines = \"{price}\"\n"
        );
        Tariff::parse(&text, "t.toml").unwrap()
    }

    /// `calls` successful calls on each of the contract's data routes of `banks` on each
    /// of `days` of November 2026.
    fn rows(calls: u64, lines: u64, banks: &[&str], days: &[i8]) -> Vec<UsageRow> {
        let routes = crate::routes::ROUTES
            .iter()
            .filter(|r| r.starts_with("GET /v1/providers"));
        let routes: Vec<&str> = routes.copied().collect();
        let mut keys = Vec::new();
        for &d in days {
            for &b in banks {
                keys.extend(routes.iter().map(|&r| (d, b, r)));
            }
        }
        keys.into_iter()
            .map(|(d, bank, route)| UsageRow {
                day: Date::new(2026, 11, d).unwrap(),
                api_user: Some(Bin::parse(USER).unwrap()),
                provider: Some(Bin::parse(bank).unwrap()),
                route: route.to_owned(),
                outcome: Outcome::Success,
                calls,
                lines,
            })
            .collect()
    }

    #[test]
    fn amounts_beyond_decimal_are_an_error_never_a_panic() {
        // Each line fits (u64::MAX × 10^9 < 7.9 × 10^28); the API user's sum of eight
        // does not.
        let t = tariff("1000000000");
        let e = statements(&t, 2026, 11, &rows(u64::MAX, 0, &BANKS, &[2]), &[]).unwrap_err();
        assert!(matches!(e, BillingError::Overflow { .. }), "{e}");
        // Counts summed over days saturate instead of wrapping: still an error, not a
        // panic and not a small wrapped count priced as if it were real.
        let huge = rows(u64::MAX, u64::MAX, &BANKS, &[2, 3]);
        let e = statements(&t, 2026, 11, &huge, &[]).unwrap_err();
        assert!(matches!(e, BillingError::Overflow { .. }), "{e}");
        // Ordinary usage at the highest price is priced exactly.
        let ok = statements(&t, 2026, 11, &rows(3, 250, &BANKS[..1], &[2]), &[]).unwrap();
        // 3 calls on each data route, and 250 lines (2.5 hundreds) on transactions.
        let n = Decimal::from(rows(1, 0, &BANKS[..1], &[2]).len() as u64);
        let want = Decimal::from(3_000_000_000u64) * n + Decimal::from(2_500_000_000u64);
        assert_eq!(ok[0].totals.gross, round(want));
    }
}
