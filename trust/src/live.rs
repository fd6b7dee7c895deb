//! Live-traffic schema checks in the gateways' rollups (issue 14 point 2, the
//! `live` rows of a minute): their rules, their storage beside the rest of the minute
//! (so a retried push never double-counts them either), and reading them back per
//! provider × route for the SLA report and the breach evaluation.

use std::collections::HashSet;

use crate::db::{Sql, StoreError, Value};
use crate::error::Error;
use crate::rollups::{contract_route, insert_rows, refuse};
use crate::wire::rollup::LiveRow;

/// What the live checks counted: answers validated, of those breaking the provider
/// schema, and answers sampled but not validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LiveCounts {
    /// Answers sampled and validated.
    pub sampled: u64,
    /// Of those, answers that violated the provider schema.
    pub violations: u64,
    /// Answers sampled but not validated (a gap, never guessed).
    pub unchecked: u64,
}

impl LiveCounts {
    /// Adds `other`.
    pub fn add(&mut self, other: LiveCounts) {
        self.sampled += other.sampled;
        self.violations += other.violations;
        self.unchecked += other.unchecked;
    }
}

/// Checks one minute's live rows (`at` names the minute, `minutes[i]`): a contract route
/// (stored with its method), counts that fit a signed 64-bit column, violations among
/// the answers validated, each provider × route once.
pub fn validate(rows: &mut [LiveRow], at: &str) -> Result<(), Error> {
    let mut keys = HashSet::with_capacity(rows.len());
    for (j, row) in rows.iter_mut().enumerate() {
        let field = format!("{at}.live[{j}]");
        contract_route(&mut row.route, &field)?;
        for (name, n) in [
            ("sampled", row.sampled),
            ("violations", row.violations),
            ("unchecked", row.unchecked),
        ] {
            if i64::try_from(n).is_err() {
                return Err(refuse(format!("{field}.{name}"), "0 to 2^63 - 1"));
            }
        }
        if row.violations > row.sampled {
            return Err(refuse(
                format!("{field}.violations"),
                "at most sampled (violations are among the answers validated)",
            ));
        }
        if !keys.insert((row.provider, row.route.clone())) {
            return Err(refuse(
                field,
                "provider and route repeat an earlier row of this minute",
            ));
        }
    }
    Ok(())
}

/// Stores one newly stored minute's live rows (the caller holds the minute's key in
/// `rollup_minutes`, in the same transaction).
pub fn store(
    sql: &mut dyn Sql,
    key: (&str, &str, i64),
    rows: &[LiveRow],
) -> Result<(), StoreError> {
    let (gateway, epoch, minute) = key;
    let values = rows.iter().map(|l| {
        vec![
            gateway.into(),
            epoch.into(),
            minute.into(),
            l.provider.to_string().into(),
            (&l.route).into(),
            l.sampled.into(),
            l.violations.into(),
            Value::from(l.unchecked),
        ]
    });
    insert_rows(
        sql,
        "rollup_live(gateway, epoch, minute, provider, route, sampled, violations, unchecked)",
        values,
    )
}

/// The live counts of the minutes in `[start, end)`, by provider, route and (when
/// `by_minute`) minute; `provider` narrows to one provider.
pub fn read(
    sql: &mut dyn Sql,
    (start, end): (i64, i64),
    provider: Option<&str>,
    by_minute: bool,
    each: &mut dyn FnMut(String, String, i64, LiveCounts),
) -> Result<(), StoreError> {
    let (filter, params): (&str, Vec<Value>) = match provider {
        Some(p) => (
            "AND provider = $3",
            vec![start.into(), end.into(), p.into()],
        ),
        None => ("", vec![start.into(), end.into()]),
    };
    let minute = if by_minute {
        "minute"
    } else {
        "CAST(0 AS BIGINT)"
    };
    let statement = format!(
        "SELECT provider, route, {minute}, CAST(SUM(sampled) AS BIGINT),
                CAST(SUM(violations) AS BIGINT), CAST(SUM(unchecked) AS BIGINT)
         FROM rollup_live WHERE minute >= $1 AND minute < $2 {filter}
         GROUP BY provider, route{}",
        if by_minute { ", minute" } else { "" }
    );
    let count =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::Corrupt("a negative live count".into()));
    sql.query_each(&statement, &params, &mut |r| {
        let counts = LiveCounts {
            sampled: count(r.int(3)?)?,
            violations: count(r.int(4)?)?,
            unchecked: count(r.int(5)?)?,
        };
        each(r.text(0)?, r.text(1)?, r.int(2)?, counts);
        Ok(())
    })
    .map(|_| ())
}
