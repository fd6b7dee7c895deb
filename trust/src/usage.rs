//! Usage records (issue 15, `docs/billing.md`): the rollups' successful calls per
//! consent (stored with their minute, so with the same idempotence), the sidecar's own
//! events per API user (counted in the transaction of the action itself, so a count
//! never disagrees with the consents table), and the reads the usage routes, the
//! platform report and the statements are computed from.

use std::collections::{BTreeMap, HashMap, HashSet};

use billing::{CustomerDay, UsageRow};
use consent_cache::{Bin, ConsentStatus};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::db::{Sql, StoreError, Value};
use crate::error::Error;
use crate::rollups::{contract_route, insert_rows, refuse};
use crate::wire::rollup::{MinuteRollup, Outcome};

/// Longest accepted range of a usage query or report, in days (inclusive).
pub const MAX_DAYS: usize = 366;

// ---- rollups: successful calls per consent ----

/// Checks a minute's `consents` rows: known routes that name a provider, counts in range,
/// each key once, and never more successful calls per API user × provider × route than
/// the minute's `calls` rows hold (the consents rows split those, they add nothing).
pub(crate) fn validate_consents(m: &mut MinuteRollup, at: &str) -> Result<(), Error> {
    let mut success: HashMap<(Bin, Bin, &str), u64> = HashMap::new();
    for c in &m.calls {
        if let (Some(u), Some(p), Outcome::Success) = (c.api_user, c.provider, c.outcome) {
            *success.entry((u, p, c.route.as_str())).or_default() += c.calls;
        }
    }
    let mut keys = HashSet::with_capacity(m.consents.len());
    let mut split: HashMap<(Bin, Bin, String), u64> = HashMap::new();
    for (j, row) in m.consents.iter_mut().enumerate() {
        let field = format!("{at}.consents[{j}]");
        contract_route(&mut row.route, &field)?;
        let id_ok = !row.consent.is_empty()
            && row.consent.len() <= consent_cache::MAX_ID_LEN
            && row.consent.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            return Err(refuse(
                format!("{field}.consent"),
                "1 to 128 visible ASCII characters",
            ));
        }
        if row.calls == 0 || i64::try_from(row.calls).is_err() {
            return Err(refuse(format!("{field}.calls"), "1 to 2^63 - 1"));
        }
        let key = (
            row.api_user,
            row.provider,
            row.consent.clone(),
            row.route.clone(),
        );
        if !keys.insert(key) {
            return Err(refuse(
                field,
                "api_user, provider, consent and route repeat an earlier row of this minute",
            ));
        }
        let sum = split
            .entry((row.api_user, row.provider, row.route.clone()))
            .or_default();
        *sum = sum.saturating_add(row.calls);
        let held = success
            .get(&(row.api_user, row.provider, row.route.as_str()))
            .copied()
            .unwrap_or(0);
        if *sum > held {
            return Err(refuse(
                format!("{field}.calls"),
                "more than the minute's successful calls of this api_user, provider and route",
            ));
        }
    }
    Ok(())
}

/// Writes a minute's `consents` rows (called by [`crate::rollups::store`] for a minute
/// not held before, in its transaction).
pub(crate) fn store_consents(
    sql: &mut dyn Sql,
    gateway: &str,
    epoch: &str,
    m: &MinuteRollup,
) -> Result<(), StoreError> {
    let rows = m.consents.iter().map(|c| {
        vec![
            gateway.into(),
            epoch.into(),
            m.minute.into(),
            c.api_user.to_string().into(),
            c.provider.to_string().into(),
            c.consent.as_str().into(),
            c.route.as_str().into(),
            c.calls.into(),
        ]
    });
    insert_rows(
        sql,
        "rollup_consents(gateway, epoch, minute, api_user, provider, consent, route, calls)",
        rows,
    )
}

// ---- the sidecar's own events ----

/// An event of the sidecar counted per API user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    /// A consent created (`POST /v1/consents`).
    ConsentCreated,
    /// A consent authorised by its customer.
    ConsentAuthorised,
    /// A consent refused by its customer.
    ConsentRejected,
    /// A consent revoked (by the API user or the customer).
    ConsentRevoked,
    /// A consent expired.
    ConsentExpired,
    /// An access token issued.
    TokenIssued,
}

impl Event {
    /// Every event, in report order.
    pub const ALL: [Event; 6] = [
        Event::ConsentCreated,
        Event::ConsentAuthorised,
        Event::ConsentRejected,
        Event::ConsentRevoked,
        Event::ConsentExpired,
        Event::TokenIssued,
    ];

    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::ConsentCreated => "consent_created",
            Event::ConsentAuthorised => "consent_authorised",
            Event::ConsentRejected => "consent_rejected",
            Event::ConsentRevoked => "consent_revoked",
            Event::ConsentExpired => "consent_expired",
            Event::TokenIssued => "token_issued",
        }
    }

    /// The event of a consent reaching `status` (its creation aside).
    pub const fn of_status(status: ConsentStatus) -> Option<Event> {
        match status {
            ConsentStatus::AwaitingAuthorisation => None,
            ConsentStatus::Authorised => Some(Event::ConsentAuthorised),
            ConsentStatus::Rejected => Some(Event::ConsentRejected),
            ConsentStatus::Revoked => Some(Event::ConsentRevoked),
            ConsentStatus::Expired => Some(Event::ConsentExpired),
        }
    }
}

/// Counts one `event` of `api_user` at `at` (Unix seconds), in the caller's transaction.
/// Counted per minute, like the rollups, so that a day or a month in any time zone is
/// exact.
pub fn count_event(
    sql: &mut dyn Sql,
    api_user: Bin,
    at: i64,
    event: Event,
) -> Result<(), StoreError> {
    sql.execute(
        "INSERT INTO usage_events(api_user, kind, minute, count) VALUES ($1, $2, $3, 1)
         ON CONFLICT (api_user, kind, minute) DO UPDATE SET count = usage_events.count + 1",
        &[
            api_user.to_string().into(),
            event.as_str().into(),
            at.div_euclid(60).saturating_mul(60).into(),
        ],
    )?;
    Ok(())
}

// ---- queries ----

/// A period of a query: from and to local dates, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First day.
    pub from: Date,
    /// Last day, inclusive.
    pub to: Date,
}

/// How rows are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// One row per key for the whole range.
    Range,
    /// Per local day.
    Day,
    /// Per local month.
    Month,
}

impl Group {
    /// The `period` of a row of `day` (`None` for the whole range).
    pub fn period(self, day: Date) -> Option<String> {
        match self {
            Group::Range => None,
            Group::Day => Some(day.to_string()),
            Group::Month => Some(format!("{:04}-{:02}", day.year(), day.month())),
        }
    }
}

/// Every day of a range.
pub fn days(r: Range) -> impl Iterator<Item = Date> {
    std::iter::successors(Some(r.from), |d| d.tomorrow().ok()).take_while(move |d| *d <= r.to)
}

/// Local midnight of `d` as Unix seconds (a day whose midnight is skipped starts at the
/// first instant after the gap).
pub fn midnight(tz: &TimeZone, d: Date) -> Result<i64, Error> {
    d.to_zoned_datetime(tz.clone())
        .map(|z| z.timestamp().as_second())
        .map_err(|_| Error::BadRequest("to: outside the supported years".into()))
}

/// The minutes `[start, end)` of local day `d`.
fn bounds(tz: &TimeZone, d: Date) -> Result<(i64, i64), Error> {
    let next = d
        .tomorrow()
        .map_err(|_| Error::BadRequest("to: outside the supported years".into()))?;
    Ok((midnight(tz, d)?, midnight(tz, next)?))
}

/// The days of a range as a table for one grouped query: `WITH days(lo, hi) AS (VALUES
/// …)` over parameters `$1 …` (each day's `[start, end)` minutes), and each day by its
/// start, to read a row's day back. One query per request instead of one per day (up to
/// [`MAX_DAYS`]); the bounds stay computed here, in the time zone, so both engines group
/// by the same local days (daylight-saving days included).
struct DayTable {
    /// The `WITH` clause.
    with: String,
    /// Its parameters, two per day; further parameters of the query follow them.
    params: Vec<Value>,
    /// Each day by its start.
    day_of: HashMap<i64, Date>,
}

impl DayTable {
    fn new(tz: &TimeZone, range: Range) -> Result<DayTable, Error> {
        let mut rows = Vec::new();
        let mut params = Vec::new();
        let mut day_of = HashMap::new();
        for (i, day) in days(range).enumerate() {
            let (start, end) = bounds(tz, day)?;
            // Typed casts: PostgreSQL infers a bare parameter in VALUES as text.
            rows.push(format!(
                "(CAST(${} AS BIGINT), CAST(${} AS BIGINT))",
                2 * i + 1,
                2 * i + 2
            ));
            params.extend([Value::from(start), Value::from(end)]);
            day_of.insert(start, day);
        }
        Ok(DayTable {
            with: format!("WITH days(lo, hi) AS (VALUES {})", rows.join(", ")),
            params,
            day_of,
        })
    }

    /// The number of the next parameter after the days'.
    fn next_param(&self) -> usize {
        self.params.len() + 1
    }

    /// The day a row's `lo` column names.
    fn day(&self, lo: i64) -> Result<Date, StoreError> {
        self.day_of
            .get(&lo)
            .copied()
            .ok_or_else(|| StoreError::Corrupt("a day bound the query was not given".into()))
    }
}

fn count(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt("a negative usage count".into()))
}

fn bin(s: Option<String>) -> Result<Option<Bin>, StoreError> {
    s.map(|s| Bin::parse(&s).map_err(|_| StoreError::Corrupt("a stored BIN is invalid".into())))
        .transpose()
}

fn outcome(s: &str) -> Result<Outcome, StoreError> {
    Outcome::ALL
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt("an unknown rollup outcome".into()))
}

/// Calls per day × API user × provider × route × outcome over `range`: everyone's, or
/// only the rows where `party` is the API user or the provider.
pub fn read_usage(
    sql: &mut dyn Sql,
    tz: &TimeZone,
    range: Range,
    party: Option<Bin>,
) -> Result<Vec<UsageRow>, Error> {
    let t = DayTable::new(tz, range)?;
    let mut params = t.params.clone();
    let filter = match party {
        Some(p) => {
            params.push(p.to_string().into());
            let n = t.next_param();
            format!("AND (r.api_user = ${n} OR r.provider = ${n})")
        }
        None => String::new(),
    };
    let query = format!(
        "{} SELECT d.lo, r.api_user, r.provider, r.route, r.outcome,
                CAST(SUM(r.calls) AS BIGINT), CAST(SUM(r.lines) AS BIGINT)
         FROM days d JOIN rollup_calls r ON r.minute >= d.lo AND r.minute < d.hi {filter}
         GROUP BY d.lo, r.api_user, r.provider, r.route, r.outcome",
        t.with
    );
    let mut out = Vec::new();
    sql.query_each(&query, &params, &mut |r| {
        out.push(UsageRow {
            day: t.day(r.int(0)?)?,
            api_user: bin(r.opt_text(1)?)?,
            provider: bin(r.opt_text(2)?)?,
            route: r.text(3)?,
            outcome: outcome(&r.text(4)?)?,
            calls: count(r.int(5)?)?,
            lines: count(r.int(6)?)?,
        });
        Ok(())
    })?;
    // In day order, as the answers are built (a stable order whatever the engine's plan).
    out.sort_by_key(|u| u.day);
    Ok(out)
}

/// Successful calls per day × API user × provider × customer × route over `range`, for
/// the free thresholds. The consent ids are mapped to their customers through the
/// consents table (only a consent of the same API user counts); the customer is passed
/// on as an opaque key drawn for this computation only (`c1`, `c2`, …), never its id.
pub fn read_customer_days(
    sql: &mut dyn Sql,
    tz: &TimeZone,
    range: Range,
) -> Result<Vec<CustomerDay>, Error> {
    let t = DayTable::new(tz, range)?;
    // A consent the table does not hold (of another API user, or not known here) is its
    // own customer: its calls still get the free threshold, as `hub-billing statement`
    // counts them without a customer map.
    let query = format!(
        "{} SELECT d.lo, r.api_user, r.provider, COALESCE(c.customer, '#' || r.consent), r.route,
                CAST(SUM(r.calls) AS BIGINT)
         FROM days d JOIN rollup_consents r ON r.minute >= d.lo AND r.minute < d.hi
         LEFT JOIN consents c ON c.id = r.consent AND c.api_user = r.api_user
         GROUP BY d.lo, r.api_user, r.provider, COALESCE(c.customer, '#' || r.consent), r.route",
        t.with
    );
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    sql.query_each(&query, &t.params, &mut |r| {
        let (Some(api_user), Some(provider)) = (bin(Some(r.text(1)?))?, bin(Some(r.text(2)?))?)
        else {
            return Err(StoreError::Corrupt("a consents row without BINs".into()));
        };
        let next = keys.len() + 1;
        let customer = keys
            .entry(r.text(3)?)
            .or_insert_with(|| format!("c{next}"))
            .clone();
        out.push(CustomerDay {
            day: t.day(r.int(0)?)?,
            api_user,
            provider,
            customer,
            route: r.text(4)?,
            calls: count(r.int(5)?)?,
        });
        Ok(())
    })?;
    out.sort_by_key(|c| c.day);
    Ok(out)
}

/// Events per local day × API user × event over `range`.
pub fn read_events(
    sql: &mut dyn Sql,
    tz: &TimeZone,
    range: Range,
) -> Result<Vec<(Date, Bin, Event, u64)>, Error> {
    let t = DayTable::new(tz, range)?;
    let query = format!(
        "{} SELECT d.lo, e.api_user, e.kind, CAST(SUM(e.count) AS BIGINT)
         FROM days d JOIN usage_events e ON e.minute >= d.lo AND e.minute < d.hi
         GROUP BY d.lo, e.api_user, e.kind",
        t.with
    );
    let mut out = Vec::new();
    sql.query_each(&query, &t.params, &mut |r| {
        let Some(user) = bin(Some(r.text(1)?))? else {
            return Ok(());
        };
        let kind = r.text(2)?;
        let event = Event::ALL
            .into_iter()
            .find(|e| e.as_str() == kind)
            .ok_or_else(|| StoreError::Corrupt("an unknown usage event".into()))?;
        out.push((t.day(r.int(0)?)?, user, event, count(r.int(3)?)?));
        Ok(())
    })?;
    out.sort_by_key(|e| e.0);
    Ok(out)
}

// ---- answers ----

/// One row of `GET /v1/admin/usage` and `GET /v1/usage`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UsageLine {
    /// The local day or month (`group=day|month`), absent for the whole range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// The API user (`null`: the caller was not identified).
    pub api_user: Option<Bin>,
    /// The provider (`null`: none in the path).
    pub provider: Option<Bin>,
    /// The contract's route template, or `-`.
    pub route: String,
    /// The call class of the tariff in force that day.
    pub class: &'static str,
    /// Calls.
    pub calls: u64,
    /// Transaction lines returned.
    pub lines: u64,
}

/// The answer of the usage routes.
#[derive(Debug, Clone, Serialize)]
pub struct UsageAnswer {
    /// First day (local).
    pub from: Date,
    /// Last day (local), inclusive.
    pub to: Date,
    /// The time zone days are counted in (the tariff's).
    pub time_zone: String,
    /// Calls by api_user × provider × route × class (× period).
    pub rows: Vec<UsageLine>,
}

/// Classifies each day's rows with the tariff version in force that day and sums them
/// per period × api_user × provider × route × class.
pub fn classify(
    tariff: &billing::Tariff,
    usage: &[UsageRow],
    group: Group,
) -> Result<Vec<UsageLine>, Error> {
    type Key = (
        Option<String>,
        Option<Bin>,
        Option<Bin>,
        String,
        &'static str,
    );
    let mut sums: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for u in usage {
        let version = tariff
            .version_at(u.day)
            .ok_or_else(|| Error::Unprocessable {
                code: "tariff_not_in_force",
                detail: format!("no tariff version is in force on {}", u.day),
            })?;
        let class = version.class_of(&u.route, u.outcome).as_str();
        let key = (
            group.period(u.day),
            u.api_user,
            u.provider,
            u.route.clone(),
            class,
        );
        // Sums of stored rows: saturating, never wrapping or panicking.
        let sum = sums.entry(key).or_default();
        sum.0 = sum.0.saturating_add(u.calls);
        sum.1 = sum.1.saturating_add(u.lines);
    }
    Ok(sums
        .into_iter()
        .map(
            |((period, api_user, provider, route, class), (calls, lines))| UsageLine {
                period,
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

/// One row of the platform report (`GET /v1/admin/report`): a participant's figures in
/// a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReportLine {
    /// The local day or month, absent for the whole range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// The participant.
    pub participant: Option<Bin>,
    /// Calls it made as an API user (every outcome).
    pub requests: u64,
    /// Calls it served as a provider (calls that reached it).
    pub served: u64,
    /// Consents created.
    pub consents_created: u64,
    /// Consents authorised by their customers.
    pub consents_authorised: u64,
    /// Consents refused by their customers.
    pub consents_rejected: u64,
    /// Consents revoked.
    pub consents_revoked: u64,
    /// Consents expired.
    pub consents_expired: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
}

impl ReportLine {
    /// The count of `event`.
    fn slot(&mut self, event: Event) -> &mut u64 {
        match event {
            Event::ConsentCreated => &mut self.consents_created,
            Event::ConsentAuthorised => &mut self.consents_authorised,
            Event::ConsentRejected => &mut self.consents_rejected,
            Event::ConsentRevoked => &mut self.consents_revoked,
            Event::ConsentExpired => &mut self.consents_expired,
            Event::TokenIssued => &mut self.tokens_issued,
        }
    }
}

/// The platform report: rows per period × participant, and the totals per period.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// First day (local).
    pub from: Date,
    /// Last day (local), inclusive.
    pub to: Date,
    /// The time zone days are counted in.
    pub time_zone: String,
    /// Per period × participant (`participant: null`: calls of unidentified callers).
    pub rows: Vec<ReportLine>,
    /// Per period, every participant summed (`participant` absent).
    pub totals: Vec<ReportLine>,
}

/// Builds the platform report from a range's usage and events: every participant's
/// rows, or `only` that one's (and the totals of those rows).
pub fn report(
    usage: &[UsageRow],
    events: &[(Date, Bin, Event, u64)],
    group: Group,
    only: Option<Bin>,
) -> (Vec<ReportLine>, Vec<ReportLine>) {
    let mut rows: BTreeMap<(Option<String>, Option<Bin>), ReportLine> = BTreeMap::new();
    for u in usage {
        let period = group.period(u.day);
        let line = rows
            .entry((period.clone(), u.api_user))
            .or_insert_with(|| blank(period.clone(), u.api_user));
        line.requests = line.requests.saturating_add(u.calls);
        if let (Some(p), true) = (u.provider, u.outcome.reached_provider()) {
            let line = rows
                .entry((period.clone(), Some(p)))
                .or_insert_with(|| blank(period, Some(p)));
            line.served = line.served.saturating_add(u.calls);
        }
    }
    for (day, user, event, n) in events {
        let period = group.period(*day);
        let line = rows
            .entry((period.clone(), Some(*user)))
            .or_insert_with(|| blank(period, Some(*user)));
        let slot = line.slot(*event);
        *slot = slot.saturating_add(*n);
    }
    if let Some(p) = only {
        rows.retain(|(_, who), _| *who == Some(p));
    }
    let mut totals: BTreeMap<Option<String>, ReportLine> = BTreeMap::new();
    for l in rows.values_mut() {
        let t = totals
            .entry(l.period.clone())
            .or_insert_with(|| blank(l.period.clone(), None));
        t.requests = t.requests.saturating_add(l.requests);
        t.served = t.served.saturating_add(l.served);
        for e in Event::ALL {
            let n = *l.slot(e);
            let slot = t.slot(e);
            *slot = slot.saturating_add(n);
        }
    }
    (rows.into_values().collect(), totals.into_values().collect())
}

fn blank(period: Option<String>, participant: Option<Bin>) -> ReportLine {
    ReportLine {
        period,
        participant,
        ..ReportLine::default()
    }
}
