//! Traffic rollups pushed by the gateways (`POST /v1/rollups`, [`crate::wire::rollup`]):
//! the rules a batch must meet, and its storage. A minute is stored once per
//! `(gateway, epoch, minute)` with all its rows, or not at all; a minute already held is
//! ignored (a retried push), so nothing is counted twice.

use std::collections::HashSet;

use serde::Serialize;

use crate::db::{Sql, StoreError, Value};
use crate::error::Error;
use crate::wire::rollup::{
    CallRow, Histogram, LatencyRow, MinuteRollup, Outcome, RollupBatch, BUCKETS,
};

/// Largest accepted push body (the wire's bound): a gateway splits a larger backlog into
/// several pushes.
pub use crate::wire::rollup::MAX_BATCH_BYTES;
/// Longest gateway name and epoch, in bytes.
const MAX_NAME_LEN: usize = 64;
/// How far past the sidecar's clock a minute may start (gateways' clocks drift a little;
/// a minute far in the future is a broken clock, refused rather than stored).
const MAX_AHEAD_SECS: i64 = 300;
/// Rows per multi-row `INSERT` (at most 9 parameters each: well under both engines' limits).
const INSERT_CHUNK: usize = 200;

/// The contract's routes (contract §2) as rollups, reports and usage name them: one table,
/// the billing crate's (a call is priced under the same spelling it is stored under).
pub use billing::routes::{canonical_route, NO_ROUTE, ROUTES, TRANSACTIONS};

/// The answer to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Stored {
    /// Minutes newly stored.
    pub stored: u64,
    /// Minutes already held (ignored).
    pub duplicates: u64,
}

/// A refusal naming the field and the rule (never a value sent).
pub(crate) fn refuse(field: String, rule: &str) -> Error {
    Error::BadRequest(format!("{field}: {rule}"))
}

/// Checks a batch against the rules of `docs/sla.md` and writes every route in its
/// stored spelling. A refusal's detail names the field (by position) and the rule, never
/// a value sent.
pub fn validate(batch: &mut RollupBatch, now: i64) -> Result<(), Error> {
    let name_ok = |s: &str, ok: fn(&u8) -> bool| {
        !s.is_empty() && s.len() <= MAX_NAME_LEN && s.as_bytes().iter().all(ok)
    };
    if !name_ok(&batch.gateway, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    }) {
        return Err(refuse(
            "gateway".into(),
            "1 to 64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    if !name_ok(&batch.epoch, u8::is_ascii_hexdigit) {
        return Err(refuse("epoch".into(), "1 to 64 hexadecimal digits"));
    }
    let mut previous = None;
    for (i, m) in batch.minutes.iter_mut().enumerate() {
        let at = format!("minutes[{i}]");
        if m.minute < 0 || m.minute % 60 != 0 {
            return Err(refuse(
                format!("{at}.minute"),
                "the minute's start: Unix seconds, a non-negative multiple of 60",
            ));
        }
        if m.minute > now + MAX_AHEAD_SECS {
            return Err(refuse(
                format!("{at}.minute"),
                "starts in the future (more than 300 s past the sidecar's clock)",
            ));
        }
        if previous.is_some_and(|p| m.minute <= p) {
            return Err(refuse(
                format!("{at}.minute"),
                "minutes oldest first, each at most once per batch",
            ));
        }
        previous = Some(m.minute);
        validate_minute(m, &at)?;
    }
    Ok(())
}

fn validate_minute(m: &mut MinuteRollup, at: &str) -> Result<(), Error> {
    let mut keys = HashSet::with_capacity(m.calls.len());
    for (j, row) in m.calls.iter_mut().enumerate() {
        let field = format!("{at}.calls[{j}]");
        validate_call(row, &field)?;
        if !keys.insert((row.api_user, row.provider, row.route.clone(), row.outcome)) {
            return Err(refuse(
                field,
                "api_user, provider, route and outcome repeat an earlier row of this minute",
            ));
        }
    }
    let mut keys = HashSet::with_capacity(m.latency.len());
    for (j, row) in m.latency.iter_mut().enumerate() {
        let field = format!("{at}.latency[{j}]");
        validate_latency(row, &field)?;
        if !keys.insert((row.provider, row.route.clone())) {
            return Err(refuse(
                field,
                "provider and route repeat an earlier row of this minute",
            ));
        }
    }
    crate::live::validate(&mut m.live, at)?;
    crate::usage::validate_consents(m, at)
}

fn validate_call(row: &mut CallRow, field: &str) -> Result<(), Error> {
    let Some(route) = canonical_route(&row.route) else {
        return Err(refuse(
            format!("{field}.route"),
            "a route template of the contract (§2) or -",
        ));
    };
    row.route = route.to_owned();
    if route == NO_ROUTE && (row.outcome != Outcome::Refused || row.provider.is_some()) {
        return Err(refuse(
            field.to_owned(),
            "a call that matched no route (-) is refused and names no provider",
        ));
    }
    if row.outcome.reached_provider() && row.provider.is_none() {
        return Err(refuse(
            format!("{field}.provider"),
            "required for a call that reached the provider",
        ));
    }
    if row.calls == 0 || i64::try_from(row.calls).is_err() {
        return Err(refuse(format!("{field}.calls"), "1 to 2^63 - 1"));
    }
    if i64::try_from(row.lines).is_err() {
        return Err(refuse(format!("{field}.lines"), "0 to 2^63 - 1"));
    }
    if row.lines > 0 && route != TRANSACTIONS {
        return Err(refuse(
            format!("{field}.lines"),
            "only the transactions route returns lines",
        ));
    }
    Ok(())
}

/// Writes a row's `route` (`field` names the row) in its stored spelling: a contract
/// route template, never `-`.
pub(crate) fn contract_route(route: &mut String, field: &str) -> Result<(), Error> {
    match canonical_route(route) {
        Some(r) if r != NO_ROUTE => {
            *route = r.to_owned();
            Ok(())
        }
        _ => Err(refuse(
            format!("{field}.route"),
            "a route template of the contract (§2)",
        )),
    }
}

fn validate_latency(row: &mut LatencyRow, field: &str) -> Result<(), Error> {
    contract_route(&mut row.route, field)?;
    for (name, h) in [("bank", &row.bank), ("hub", &row.hub)] {
        if h.0.len() != BUCKETS {
            return Err(refuse(
                format!("{field}.{name}"),
                "exactly 19 bucket counts (feed_wire::rollup::BUCKET_BOUNDS_US and the unbounded one)",
            ));
        }
        if h.0.iter().any(|n| i64::try_from(*n).is_err()) {
            return Err(refuse(
                format!("{field}.{name}"),
                "each count 0 to 2^63 - 1",
            ));
        }
    }
    Ok(())
}

/// Stores a validated batch in the caller's transaction: each minute not yet held with
/// all its rows; a minute already held is counted as a duplicate and left as it is.
pub fn store(sql: &mut dyn Sql, batch: &RollupBatch, now: i64) -> Result<Stored, StoreError> {
    store_fresh(sql, batch, now).map(|(stored, _)| stored)
}

/// [`store`], also giving the minutes newly stored (those a late-usage check looks at:
/// a duplicate was counted when first stored).
pub fn store_fresh<'b>(
    sql: &mut dyn Sql,
    batch: &'b RollupBatch,
    now: i64,
) -> Result<(Stored, Vec<&'b MinuteRollup>), StoreError> {
    let mut fresh = Vec::new();
    let mut out = Stored {
        stored: 0,
        duplicates: 0,
    };
    for m in &batch.minutes {
        // The key decides: a concurrent push of the same minute waits on it and then
        // finds it held (PostgreSQL READ COMMITTED; SQLite has one writer).
        let new = sql.execute(
            "INSERT INTO rollup_minutes(gateway, epoch, minute, received_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (gateway, epoch, minute) DO NOTHING",
            &[
                (&batch.gateway).into(),
                (&batch.epoch).into(),
                m.minute.into(),
                now.into(),
            ],
        )?;
        if new == 0 {
            out.duplicates += 1;
            continue;
        }
        let key = || -> [Value; 3] {
            [
                (&batch.gateway).into(),
                (&batch.epoch).into(),
                m.minute.into(),
            ]
        };
        let calls = m.calls.iter().map(|c| {
            let mut row = key().to_vec();
            row.extend([
                c.api_user.map(|b| b.to_string()).into(),
                c.provider.map(|b| b.to_string()).into(),
                (&c.route).into(),
                c.outcome.as_str().into(),
                c.calls.into(),
                c.lines.into(),
            ]);
            row
        });
        insert_rows(
            sql,
            "rollup_calls(gateway, epoch, minute, api_user, provider, route, outcome, calls, lines)",
            calls,
        )?;
        let buckets = m.latency.iter().flat_map(|l| {
            let bank = nonzero(&l.bank).map(move |(i, n)| ("bank", i, n));
            let hub = nonzero(&l.hub).map(move |(i, n)| ("hub", i, n));
            bank.chain(hub).map(move |(kind, i, n)| {
                let mut row = key().to_vec();
                row.extend([
                    l.provider.to_string().into(),
                    (&l.route).into(),
                    kind.into(),
                    Value::from(i64::try_from(i).unwrap_or(i64::MAX)),
                    n.into(),
                ]);
                row
            })
        });
        insert_rows(
            sql,
            "rollup_latency(gateway, epoch, minute, provider, route, kind, bucket, count)",
            buckets,
        )?;
        crate::live::store(sql, (&batch.gateway, &batch.epoch, m.minute), &m.live)?;
        crate::usage::store_consents(sql, &batch.gateway, &batch.epoch, m)?;
        out.stored += 1;
        fresh.push(m);
    }
    Ok((out, fresh))
}

/// The non-empty buckets of a histogram, by index.
fn nonzero(h: &Histogram) -> impl Iterator<Item = (usize, u64)> + '_ {
    h.0.iter().copied().enumerate().filter(|(_, n)| *n > 0)
}

/// Inserts rows of equal width into `target` (`table(columns)`), many per statement.
pub(crate) fn insert_rows(
    sql: &mut dyn Sql,
    target: &str,
    rows: impl Iterator<Item = Vec<Value>>,
) -> Result<(), StoreError> {
    let mut params: Vec<Value> = Vec::new();
    let mut width = 0;
    let mut count = 0;
    let flush = |sql: &mut dyn Sql, params: &mut Vec<Value>, width: usize, count: usize| {
        if count == 0 {
            return Ok(());
        }
        let tuples: Vec<String> = (0..count)
            .map(|r| {
                let cols: Vec<String> =
                    (1..=width).map(|c| format!("${}", r * width + c)).collect();
                format!("({})", cols.join(", "))
            })
            .collect();
        let statement = format!("INSERT INTO {target} VALUES {}", tuples.join(", "));
        sql.execute(&statement, params)?;
        params.clear();
        Ok::<_, StoreError>(())
    };
    for row in rows {
        width = row.len();
        params.extend(row);
        count += 1;
        if count == INSERT_CHUNK {
            flush(sql, &mut params, width, count)?;
            count = 0;
        }
    }
    flush(sql, &mut params, width, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_stored_with_their_method() {
        assert_eq!(
            canonical_route("/v1/providers/{provider_id}/accounts"),
            Some("GET /v1/providers/{provider_id}/accounts")
        );
        assert_eq!(canonical_route(ROUTES[4]), Some(ROUTES[4]));
        assert_eq!(canonical_route("-"), Some("-"));
        for bad in [
            "",
            "POST /v1/providers/{provider_id}/accounts",
            "/v1/providers/990340000011/accounts",
            "GET  /v1/open-data/{provider_id}/{dataset}",
        ] {
            assert_eq!(canonical_route(bad), None, "{bad}");
        }
    }
}
