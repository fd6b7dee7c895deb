//! Shared by the billing crate's integration tests: days and usage rows.

use billing::{Bin, Date, Outcome, UsageRow};

/// `YYYY-MM-DD`.
pub fn day(s: &str) -> Date {
    s.parse().unwrap()
}

/// A usage row.
pub fn usage(
    d: &str,
    api_user: Option<Bin>,
    provider: Option<Bin>,
    route: &str,
    outcome: Outcome,
    (calls, lines): (u64, u64),
) -> UsageRow {
    UsageRow {
        day: day(d),
        api_user,
        provider,
        route: route.to_string(),
        outcome,
        calls,
        lines,
    }
}
