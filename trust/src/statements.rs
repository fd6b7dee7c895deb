//! Monthly statements (issue 15, `docs/billing.md`): computed with the `billing` crate
//! from the stored usage once a calendar month of the tariff's time zone has closed (plus
//! a grace period for late rollups), stored immutably (an issued month is never issued
//! again, a stored statement never rewritten: the database refuses it), corrected only by
//! adjustments kept beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use billing::{Decimal, Statement, Tariff};
use consent_cache::Bin;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::db::{Row, Sql, StoreError, Tx};
use crate::error::Error;
use crate::usage::{self, Range};
use crate::wire::rollup::MinuteRollup;

/// Minutes after a month's close before its statements are issued, by default: rollups
/// of the month's last minutes arrive within a few push intervals.
pub const DEFAULT_GRACE_MINUTES: u64 = 10;
/// Longest adjustment reason, in characters.
const MAX_REASON_CHARS: usize = 500;

/// `[billing]` compiled: the tariff and when a month's statements are issued.
#[derive(Debug, Clone)]
pub struct BillingSettings {
    /// The tariff (validated at start).
    pub tariff: Arc<Tariff>,
    /// Where it was read from.
    pub tariff_path: PathBuf,
    /// Seconds after a month's close before its statements are issued.
    pub close_grace_secs: i64,
}

/// A calendar month of the tariff's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    /// The year.
    pub year: i16,
    /// The month, 1 to 12.
    pub month: i8,
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Month {
    /// Parses `YYYY-MM`; the error names `field`.
    pub fn parse(field: &str, s: &str) -> Result<Month, Error> {
        let bad = || Error::BadRequest(format!("{field}: a month YYYY-MM"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        let digits = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(y, 4) || !digits(m, 2) {
            return Err(bad());
        }
        let year = y.parse::<i16>().map_err(|_| bad())?;
        let month = m.parse::<i8>().map_err(|_| bad())?;
        Date::new(year, month, 1).map_err(|_| bad())?;
        Ok(Month { year, month })
    }

    /// The month holding local day `d`.
    pub fn of(d: Date) -> Month {
        Month {
            year: d.year(),
            month: d.month(),
        }
    }

    /// Its days.
    pub fn range(self) -> Result<Range, Error> {
        let from = Date::new(self.year, self.month, 1)
            .map_err(|_| Error::BadRequest("month: not a calendar month".into()))?;
        Ok(Range {
            from,
            to: from.last_of_month(),
        })
    }

    /// The month after.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before.
    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }
}

/// When a month's statements may be issued: its end (the next month's local midnight)
/// plus the grace period, in Unix seconds.
pub fn issuable_at(settings: &BillingSettings, m: Month) -> Result<i64, Error> {
    let tz = settings.tariff.time_zone();
    let end = m
        .range()?
        .to
        .tomorrow()
        .map_err(|_| Error::BadRequest("month: outside the supported years".into()))?;
    Ok(usage::midnight(tz, end)? + settings.close_grace_secs)
}

/// The latest month whose statements may be issued at `now`.
pub fn last_closed(settings: &BillingSettings, now: i64) -> Result<Month, Error> {
    let today = Timestamp::from_second(now)
        .map_err(|_| Error::Internal("the clock is out of range".into()))?
        .to_zoned_datetime(settings.tariff.time_zone().clone())
        .date();
    let previous = Month::of(today).previous();
    if now >= issuable_at(settings, previous)? {
        Ok(previous)
    } else {
        Ok(previous.previous())
    }
}

/// The outcome of an issuing run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    /// The month.
    pub month: String,
    /// Whether this run issued it (`false`: it had been issued before; nothing changed).
    pub issued_now: bool,
    /// Statements the month holds.
    pub statements: u64,
    /// When it was issued, Unix seconds.
    pub issued_at: i64,
}

/// Whether month `m` has been issued.
pub fn issued(sql: &mut dyn Sql, m: Month) -> Result<Option<Issued>, StoreError> {
    let row = sql.query_opt(
        "SELECT issued_at, statements FROM statement_months WHERE month = $1",
        &[m.to_string().into()],
    )?;
    row.map(|r| {
        Ok(Issued {
            month: m.to_string(),
            issued_now: false,
            statements: crate::db::version(&r, 1)?,
            issued_at: r.int(0)?,
        })
    })
    .transpose()
}

/// Stores month `m`'s statements, `computed` beforehand in a read view ([`compute`]), in
/// `tx`, once: when the month was issued meanwhile (another request or replica), the
/// stored issue is answered and `computed` dropped. The caller has checked that the
/// month is closed. Rollups stored between the computation and this write are not in
/// the statements: the grace period exists so that none arrive then; any that do are
/// shown as late ([`late_of`]).
pub fn store_issued(tx: &mut Tx<'_>, m: Month, computed: &[Statement]) -> Result<Issued, Error> {
    // Serialises issuing runs of several replicas (portable SQL rule 7) for the few
    // inserts only; the re-check under it is exact, the tables' keys the last guard.
    tx.head()?;
    if let Some(done) = issued(tx, m)? {
        return Ok(done);
    }
    let now = tx.now();
    for s in computed {
        let participant = s.participant.to_string();
        let role = s.role.as_str();
        tx.execute(
            "INSERT INTO statements(id, participant, role, month, body, digest, issued_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                statement_id(s).into(),
                participant.as_str().into(),
                role.into(),
                m.to_string().into(),
                serde_json::to_string(s)?.into(),
                s.digest().into(),
                now.into(),
            ],
        )?;
    }
    let count = u64::try_from(computed.len()).unwrap_or(u64::MAX);
    tx.execute(
        "INSERT INTO statement_months(month, issued_at, statements) VALUES ($1, $2, $3)",
        &[m.to_string().into(), now.into(), count.into()],
    )?;
    Ok(Issued {
        month: m.to_string(),
        issued_now: true,
        statements: count,
        issued_at: now,
    })
}

/// The first closed month up to `last` still to issue: months from the first one holding
/// usage (never before the first month the tariff covers from its first day), oldest
/// first, skipping issued ones. `None` when there is none.
pub fn next_due(
    sql: &mut dyn Sql,
    settings: &BillingSettings,
    last: Month,
) -> Result<Option<Month>, Error> {
    let Some(first_minute) = sql
        .query_one("SELECT MIN(minute) FROM rollup_calls", &[])?
        .opt_int(0)?
    else {
        return Ok(None);
    };
    let first = month_at(settings, first_minute)?.max(tariff_start(settings));
    if first > last {
        return Ok(None);
    }
    let done: std::collections::BTreeSet<String> = sql
        .query(
            "SELECT month FROM statement_months WHERE month >= $1 AND month <= $2",
            &[first.to_string().into(), last.to_string().into()],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_, _>>()?;
    Ok(first_not_in(first, last, |m| done.contains(&m.to_string())))
}

/// The oldest month of `first..=last` for which `issued` is false.
pub fn first_not_in(first: Month, last: Month, issued: impl Fn(Month) -> bool) -> Option<Month> {
    std::iter::successors(Some(first), |m| Some(m.next()))
        .take_while(|m| *m <= last)
        .find(|m| !issued(*m))
}

/// The first month the tariff covers from its first day (a month partly before the
/// first version cannot be priced).
fn tariff_start(settings: &BillingSettings) -> Month {
    let Some(from) = settings.tariff.versions().first().map(|v| v.effective_from) else {
        return Month {
            year: i16::MAX,
            month: 12,
        };
    };
    if from.day() == 1 {
        Month::of(from)
    } else {
        Month::of(from).next()
    }
}

/// The month of the tariff's time zone that Unix second `at` falls in.
pub fn month_at(settings: &BillingSettings, at: i64) -> Result<Month, Error> {
    let day = Timestamp::from_second(at)
        .map_err(|_| Error::Internal("a stored minute is out of range".into()))?
        .to_zoned_datetime(settings.tariff.time_zone().clone())
        .date();
    Ok(Month::of(day))
}

/// Calls of `fresh` minutes (just stored, in the caller's transaction) that fall in a
/// month already issued: per participant whose statement they concern (the API user's
/// and the provider's), for the late-usage metric. The rows stay stored: usage reports
/// remain exact, and [`late_of`] shows them on the statement.
pub fn late_calls(
    sql: &mut dyn Sql,
    settings: &BillingSettings,
    fresh: &[&MinuteRollup],
) -> Result<BTreeMap<Bin, u64>, Error> {
    let mut issued_months: BTreeMap<Month, bool> = BTreeMap::new();
    let mut out: BTreeMap<Bin, u64> = BTreeMap::new();
    for m in fresh {
        let month = month_at(settings, m.minute)?;
        let late = match issued_months.get(&month) {
            Some(late) => *late,
            None => {
                let late = issued(sql, month)?.is_some();
                issued_months.insert(month, late);
                late
            }
        };
        if !late {
            continue;
        }
        for c in &m.calls {
            for who in [c.api_user, c.provider].into_iter().flatten() {
                let n = out.entry(who).or_default();
                *n = n.saturating_add(c.calls);
            }
        }
    }
    Ok(out)
}

/// Month `m`'s statements from the usage stored now: what issuing stores, and what a
/// draft shows of a month so far. Customers are keys drawn for this run only.
pub fn compute(
    sql: &mut dyn Sql,
    settings: &BillingSettings,
    m: Month,
) -> Result<Vec<Statement>, Error> {
    let tariff = &settings.tariff;
    let range = m.range()?;
    let tz = tariff.time_zone();
    let use_rows = usage::read_usage(sql, tz, range, None)?;
    let customers = usage::read_customer_days(sql, tz, range)?;
    billing::statements(tariff, m.year, m.month, &use_rows, &customers).map_err(|e| {
        Error::Unprocessable {
            code: "statement_not_computable",
            detail: e.to_string(),
        }
    })
}

/// A statement computed on request from the usage so far (`…/statements/draft`): never
/// stored, never issued, and marked so.
#[derive(Debug, Clone, Serialize)]
pub struct DraftStatement {
    /// The id the statement will have once issued.
    pub id: String,
    /// The participant.
    pub participant: String,
    /// `api_user` or `provider`.
    pub role: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Always `true`: a draft may still change as rollups arrive.
    pub draft: bool,
    /// When it was computed, Unix seconds.
    pub computed_at: i64,
    /// SHA-256 of the statement's canonical JSON as computed now (equal to the issued
    /// statement's when nothing changes before issuing).
    pub digest: String,
    /// The statement (billing's JSON, as issued statements hold it).
    pub statement: Statement,
}

impl DraftStatement {
    fn new(s: Statement, computed_at: i64) -> DraftStatement {
        DraftStatement {
            id: statement_id(&s),
            participant: s.participant.to_string(),
            role: s.role.as_str().to_owned(),
            month: s.month.clone(),
            draft: true,
            computed_at,
            digest: s.digest(),
            statement: s,
        }
    }

    /// The printable form, headed as a draft.
    pub fn to_text(&self) -> String {
        let at = Timestamp::from_second(self.computed_at)
            .map_or_else(|_| self.computed_at.to_string(), |t| t.to_string());
        format!(
            "DRAFT, not issued: the month's usage as of {at}; it may still change.\n\n{}",
            self.statement.to_text()
        )
    }
}

/// Month `m`'s draft statements (all, or one participant's), ordered by participant and
/// role like issued ones.
pub fn drafts(
    sql: &mut dyn Sql,
    settings: &BillingSettings,
    m: Month,
    participant: Option<Bin>,
    now: i64,
) -> Result<Vec<DraftStatement>, Error> {
    let mut out: Vec<DraftStatement> = compute(sql, settings, m)?
        .into_iter()
        .filter(|s| participant.is_none_or(|p| s.participant == p))
        .map(|s| DraftStatement::new(s, now))
        .collect();
    out.sort_by(|a, b| (&a.participant, &a.role).cmp(&(&b.participant, &b.role)));
    Ok(out)
}

/// A statement's id in URLs: billing's (`2026-03/api_user/100140000001`, unique per
/// month, role and participant) with `-` for `/`, so that it is one path segment.
pub fn statement_id(s: &Statement) -> String {
    s.id.replace('/', "-")
}

/// A correction of an issued statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdjustmentView {
    /// Order of recording.
    pub seq: i64,
    /// The signed amount (2 decimals), as a string.
    pub amount: String,
    /// Why.
    pub reason: String,
    /// Who (the operator's certificate).
    pub by: String,
    /// When, Unix seconds.
    pub at: i64,
}

/// `POST /v1/admin/statements/{id}/adjustments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentInput {
    /// The signed amount, a decimal string with at most 2 decimals (`"-150.00"`).
    pub amount: String,
    /// Why (shown with the statement).
    pub reason: String,
}

/// An issued statement with its adjustments.
#[derive(Debug, Clone, Serialize)]
pub struct StoredStatement {
    /// Its id.
    pub id: String,
    /// The participant.
    pub participant: String,
    /// `api_user` or `provider`.
    pub role: String,
    /// `YYYY-MM`.
    pub month: String,
    /// SHA-256 of the statement's canonical JSON, as issued.
    pub digest: String,
    /// When it was issued, Unix seconds.
    pub issued_at: i64,
    /// The statement (billing's JSON, its members in the order its digest covers, so the
    /// served JSON can be checked against the digest).
    pub statement: Statement,
    /// Corrections, oldest first.
    pub adjustments: Vec<AdjustmentView>,
    /// Calls of the month stored after it was issued: not in the statement (immutable),
    /// shown so that the operator can adjust it.
    pub late: Late,
}

/// Usage of a statement's month and participant stored after the statement was issued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Late {
    /// Calls.
    pub calls: u64,
    /// Transaction lines.
    pub lines: u64,
}

/// What the stored usage of `s`'s month holds for its participant and role beyond what
/// `s` counted: the rollups stored after the month's statements were computed. Derived
/// from the rows themselves, so it is exact whichever replica stored them and whenever
/// (also between the computation and the issuing write).
pub fn late_of(sql: &mut dyn Sql, tz: &TimeZone, s: &Statement) -> Result<Late, Error> {
    let range = Month::parse("month", &s.month)?.range()?;
    let end = range
        .to
        .tomorrow()
        .map_err(|_| Error::Internal("a statement month out of range".into()))?;
    // The role picks the column: both are fixed strings, never input.
    let column = match s.role {
        billing::Role::ApiUser => "api_user",
        billing::Role::Provider => "provider",
    };
    let row = sql.query_one(
        &format!(
            "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT), CAST(COALESCE(SUM(lines), 0) AS BIGINT)
             FROM rollup_calls WHERE minute >= $1 AND minute < $2 AND {column} = $3"
        ),
        &[
            usage::midnight(tz, range.from)?.into(),
            usage::midnight(tz, end)?.into(),
            s.participant.to_string().into(),
        ],
    )?;
    let (calls, lines) = s.lines.iter().fold((0u64, 0u64), |(c, l), line| {
        (c.saturating_add(line.calls), l.saturating_add(line.lines))
    });
    Ok(Late {
        calls: crate::db::version(&row, 0)?.saturating_sub(calls),
        lines: crate::db::version(&row, 1)?.saturating_sub(lines),
    })
}

const COLUMNS: &str = "id, participant, role, month, body, digest, issued_at";

fn from_row(sql: &mut dyn Sql, tz: &TimeZone, r: &Row) -> Result<StoredStatement, Error> {
    let id = r.text(0)?;
    let adjustments = adjustments(sql, &id)?;
    let statement: Statement = serde_json::from_str(&r.text(4)?)?;
    let late = late_of(sql, tz, &statement)?;
    Ok(StoredStatement {
        id,
        participant: r.text(1)?,
        role: r.text(2)?,
        month: r.text(3)?,
        statement,
        digest: r.text(5)?,
        issued_at: r.int(6)?,
        adjustments,
        late,
    })
}

fn adjustments(sql: &mut dyn Sql, id: &str) -> Result<Vec<AdjustmentView>, StoreError> {
    sql.query(
        "SELECT seq, amount, reason, actor, at FROM statement_adjustments
         WHERE statement_id = $1 ORDER BY seq",
        &[id.into()],
    )?
    .iter()
    .map(|r| {
        Ok(AdjustmentView {
            seq: r.int(0)?,
            amount: r.text(1)?,
            reason: r.text(2)?,
            by: r.text(3)?,
            at: r.int(4)?,
        })
    })
    .collect()
}

/// One statement; `owner`: only when it is that participant's. `tz`: the tariff's.
pub fn get(
    sql: &mut dyn Sql,
    tz: &TimeZone,
    id: &str,
    owner: Option<Bin>,
) -> Result<Option<StoredStatement>, Error> {
    let row = sql.query_opt(
        &format!("SELECT {COLUMNS} FROM statements WHERE id = $1"),
        &[id.into()],
    )?;
    match row {
        Some(r) if owner.is_none_or(|o| r.text(1).is_ok_and(|p| p == o.to_string())) => {
            Ok(Some(from_row(sql, tz, &r)?))
        }
        _ => Ok(None),
    }
}

/// The statements of a month (all, or one participant's), or of every month of one
/// participant, ordered by month, participant and role.
pub fn list(
    sql: &mut dyn Sql,
    tz: &TimeZone,
    month: Option<Month>,
    participant: Option<Bin>,
) -> Result<Vec<StoredStatement>, Error> {
    let (filter, params) = match (month, participant) {
        (Some(m), Some(p)) => (
            "WHERE month = $1 AND participant = $2",
            vec![m.to_string().into(), p.to_string().into()],
        ),
        (Some(m), None) => ("WHERE month = $1", vec![m.to_string().into()]),
        (None, Some(p)) => ("WHERE participant = $1", vec![p.to_string().into()]),
        (None, None) => ("", vec![]),
    };
    let rows = sql.query(
        &format!("SELECT {COLUMNS} FROM statements {filter} ORDER BY month, participant, role"),
        &params,
    )?;
    rows.iter().map(|r| from_row(sql, tz, r)).collect()
}

/// Checks an adjustment: its amount and its trimmed reason.
fn checked(input: &AdjustmentInput) -> Result<(Decimal, &str), Error> {
    let amount = Decimal::from_str(input.amount.trim())
        .ok()
        .filter(|a| a.scale() <= 2 && !a.is_zero() && input.amount.trim() == input.amount)
        .ok_or_else(|| {
            Error::invalid(
                "amount",
                "a non-zero signed decimal with at most 2 decimals (\"-150.00\")",
            )
        })?;
    let reason = input.reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON_CHARS
        || reason.chars().any(char::is_control)
    {
        return Err(Error::invalid(
            "reason",
            "1 to 500 characters, no control characters",
        ));
    }
    Ok((amount, reason))
}

/// What a replayed request is compared by: SHA-256 (hex) of the statement id and the
/// body's members exactly as sent.
fn fingerprint(id: &str, input: &AdjustmentInput) -> Result<String, Error> {
    let canonical = serde_json::to_string(&[id, &input.amount, &input.reason])?;
    Ok(billing::sha256_hex(canonical.as_bytes()))
}

/// The adjustment `actor` recorded earlier under `key`, if any: its statement when the
/// request is the same (`request`), `409 idempotency_key_reused` when it is not.
fn replay(
    tx: &mut Tx<'_>,
    tz: &TimeZone,
    actor: &str,
    key: &str,
    request: &str,
) -> Result<Option<StoredStatement>, Error> {
    let Some(r) = tx.query_opt(
        "SELECT request, statement_id FROM adjustment_keys WHERE actor = $1 AND idem_key = $2",
        &[actor.into(), key.into()],
    )?
    else {
        return Ok(None);
    };
    if r.text(0)? != request {
        return Err(Error::Conflict {
            code: "idempotency_key_reused",
            detail: "Idempotency-Key: already used by this operator for another request".into(),
        });
    }
    get(tx, tz, &r.text(1)?, None)?
        .map(Some)
        .ok_or(Error::NotFound("statement_not_found"))
}

/// Records an adjustment of statement `id` by `actor` (the statement itself is left as
/// issued); with an `Idempotency-Key` (`key`), a repeated request records nothing and
/// answers the first one's statement. The flag: whether this call recorded it.
pub fn adjust(
    tx: &mut Tx<'_>,
    tz: &TimeZone,
    id: &str,
    input: AdjustmentInput,
    key: Option<&str>,
    actor: &str,
) -> Result<(StoredStatement, bool), Error> {
    let (amount, reason) = checked(&input)?;
    let request = fingerprint(id, &input)?;
    if let Some(key) = key {
        // Read, decide, write (portable SQL rule 7): concurrent uses of one key serialise.
        tx.head()?;
        if let Some(first) = replay(tx, tz, actor, key, &request)? {
            return Ok((first, false));
        }
    }
    if get(tx, tz, id, None)?.is_none() {
        return Err(Error::NotFound("statement_not_found"));
    }
    let now = tx.now();
    let seq = tx
        .query_one(
            "INSERT INTO statement_adjustments(statement_id, amount, reason, actor, at)
             VALUES ($1, $2, $3, $4, $5) RETURNING seq",
            &[
                id.into(),
                format!("{:.2}", amount).into(),
                reason.into(),
                actor.into(),
                now.into(),
            ],
        )?
        .int(0)?;
    if let Some(key) = key {
        tx.execute(
            "INSERT INTO adjustment_keys(actor, idem_key, request, statement_id, seq, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                actor.into(),
                key.into(),
                request.into(),
                id.into(),
                seq.into(),
                now.into(),
            ],
        )?;
    }
    let s = get(tx, tz, id, None)?.ok_or(Error::NotFound("statement_not_found"))?;
    Ok((s, true))
}

/// The printable form: billing's text, then the adjustments.
pub fn to_text(s: &StoredStatement) -> Result<String, Error> {
    let mut out = s.statement.to_text();
    out.push_str(&format!("\nStatement {}  digest {}\n", s.id, s.digest));
    if !s.adjustments.is_empty() {
        out.push_str("\nAdjustments\n");
        for a in &s.adjustments {
            let at =
                Timestamp::from_second(a.at).map_or_else(|_| a.at.to_string(), |t| t.to_string());
            out.push_str(&format!(
                "  {at}  {:>14}  {}  ({})\n",
                a.amount, a.reason, a.by
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(grace_minutes: i64) -> BillingSettings {
        let tariff = Tariff::parse(
            "time_zone = \"Asia/Almaty\"\n[[versions]]\neffective_from = 2026-01-01\n\
             [versions.prices]\nchargeable = \"1.00\"\n",
            "t.toml",
        )
        .unwrap();
        BillingSettings {
            tariff: Arc::new(tariff),
            tariff_path: PathBuf::from("t.toml"),
            close_grace_secs: grace_minutes * 60,
        }
    }

    #[test]
    fn months_parse_strictly() {
        assert_eq!(
            Month::parse("month", "2026-11").unwrap(),
            Month {
                year: 2026,
                month: 11
            }
        );
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026/11",
            "2026-11-01",
            "",
        ] {
            let e = Month::parse("month", bad).unwrap_err();
            assert!(e.to_string().contains("month:"), "{bad}: {e}");
        }
        assert_eq!(
            Month::parse("m", "2026-01").unwrap().previous().to_string(),
            "2025-12"
        );
    }

    #[test]
    fn a_month_closes_at_local_midnight_plus_the_grace() {
        let s = settings(10);
        // 2026-12-01T00:00 in Almaty (UTC+5) is 2026-11-30T19:00Z.
        let close = 1_796_065_200;
        let nov = Month::parse("m", "2026-11").unwrap();
        assert_eq!(issuable_at(&s, nov).unwrap(), close + 600);
        assert_eq!(last_closed(&s, close + 599).unwrap().to_string(), "2026-10");
        assert_eq!(last_closed(&s, close + 600).unwrap().to_string(), "2026-11");
        let s = settings(0);
        assert_eq!(last_closed(&s, close - 1).unwrap().to_string(), "2026-10");
        assert_eq!(last_closed(&s, close).unwrap().to_string(), "2026-11");
    }

    #[test]
    fn the_backlog_is_taken_oldest_first_skipping_issued_months() {
        let m = |s: &str| Month::parse("m", s).unwrap();
        assert_eq!(m("2026-12").next(), m("2027-01"));
        assert_eq!(m("2026-11").next(), m("2026-12"));
        let issued = [m("2026-10"), m("2026-12")];
        let due = |first, last| first_not_in(first, last, |x| issued.contains(&x));
        assert_eq!(due(m("2026-10"), m("2027-02")), Some(m("2026-11")));
        assert_eq!(due(m("2026-12"), m("2027-02")), Some(m("2027-01")));
        assert_eq!(due(m("2026-10"), m("2026-10")), None);
        assert_eq!(due(m("2026-11"), m("2026-10")), None, "first after last");
    }
}
