//! The usage, report and statement routes (issue 15, `docs/billing.md`) and the
//! operations behind them: operators read everyone's (`/v1/admin/usage`,
//! `/v1/admin/report`, `/v1/admin/statements…`), a participant only its own, by its mTLS
//! identity (`/v1/usage`, `/v1/statements…`); another participant's BIN in a parameter is
//! refused, another's statement is not found. Drafts (`…/statements/draft`) are a month's
//! statements so far, computed by the issuing code and never stored.

use std::collections::HashMap;
use std::sync::Arc;

use consent_cache::Bin;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::{blocking, App};
use crate::error::Error;
use crate::http::{
    full, method_not_allowed, ok, operator, query_strings, read_json, wants_csv, with_headers,
    Peer, Resp,
};
use crate::statements::{
    self, AdjustmentInput, BillingSettings, DraftStatement, Issued, Month, StoredStatement,
};
use crate::usage::{self, Group, Range, Report, UsageAnswer};

/// A usage or report query: `from`, `to` (local dates, inclusive), `group`, and
/// `participant` (an operator's filter; on a participant's own route, its own BIN only).
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery {
    /// The days.
    pub range: Range,
    /// The grouping.
    pub group: Group,
    /// Only rows of this participant.
    pub participant: Option<Bin>,
}

impl UsageQuery {
    /// Reads the query parameters (each at most once, none unknown).
    pub fn parse(mut q: HashMap<String, String>) -> Result<UsageQuery, Error> {
        let mut take = |k: &str| q.remove(k);
        let from = take("from").ok_or_else(|| Error::BadRequest("from: required".into()))?;
        let to = take("to").ok_or_else(|| Error::BadRequest("to: required".into()))?;
        let group = match take("group").as_deref() {
            None => Group::Range,
            Some("day") => Group::Day,
            Some("month") => Group::Month,
            Some(_) => return Err(Error::BadRequest("group: day or month".into())),
        };
        let participant = participant_param(take("participant"))?;
        no_other(&q, "from, to, group, participant")?;
        let from = crate::sla::parse_date("from", &from)?;
        let to = crate::sla::parse_date("to", &to)?;
        if from > to {
            return Err(Error::BadRequest("from: after to".into()));
        }
        if usage::days(Range { from, to })
            .nth(usage::MAX_DAYS)
            .is_some()
        {
            return Err(Error::BadRequest(format!(
                "to: at most {} days from from, inclusive",
                usage::MAX_DAYS
            )));
        }
        Ok(UsageQuery {
            range: Range { from, to },
            group,
            participant,
        })
    }
}

/// The optional `participant` parameter: a BIN.
fn participant_param(p: Option<String>) -> Result<Option<Bin>, Error> {
    p.map(|p| {
        Bin::parse(&p)
            .map_err(|_| Error::BadRequest("participant: a BIN, exactly 12 digits".into()))
    })
    .transpose()
}

/// Refuses any parameter left in `q` once the known ones (`known`) are taken.
fn no_other(q: &HashMap<String, String>, known: &str) -> Result<(), Error> {
    match q.keys().next() {
        Some(other) => Err(Error::BadRequest(format!(
            "query parameter {other} is unknown ({known})"
        ))),
        None => Ok(()),
    }
}

// ---- operations ----

impl App {
    /// The billing settings, or the problem every billing route answers without them.
    pub fn billing(&self) -> Result<&BillingSettings, Error> {
        self.settings
            .billing
            .as_ref()
            .ok_or_else(|| Error::Unavailable {
                code: "billing_not_configured",
                detail: "billing is off: the sidecar's configuration names no tariff ([billing])"
                    .into(),
            })
    }

    /// Usage classified by the tariff in force each day.
    pub async fn usage(self: &Arc<Self>, q: UsageQuery) -> Result<UsageAnswer, Error> {
        let app = self.clone();
        blocking(move || {
            let b = app.billing()?;
            let tz = b.tariff.time_zone();
            let rows = app
                .db
                .read(|sql| usage::read_usage(sql, tz, q.range, q.participant))?;
            Ok(UsageAnswer {
                from: q.range.from,
                to: q.range.to,
                time_zone: b.tariff.time_zone_name().to_owned(),
                rows: usage::classify(&b.tariff, &rows, q.group)?,
            })
        })
        .await
    }

    /// The platform report: requests, consents and tokens by participant and period, in
    /// the tariff's time zone (the SLA reports' without billing).
    pub async fn report(self: &Arc<Self>, q: UsageQuery) -> Result<Report, Error> {
        let app = self.clone();
        blocking(move || {
            let (tz, zone) = match &app.settings.billing {
                Some(b) => (b.tariff.time_zone().clone(), b.tariff.time_zone_name()),
                None => (
                    app.settings.sla.time_zone.clone(),
                    app.settings.sla.time_zone_name.as_str(),
                ),
            };
            let (rows, events) = app.db.read(|sql| {
                Ok::<_, Error>((
                    usage::read_usage(sql, &tz, q.range, q.participant)?,
                    usage::read_events(sql, &tz, q.range)?,
                ))
            })?;
            let (rows, totals) = usage::report(&rows, &events, q.group, q.participant);
            Ok(Report {
                from: q.range.from,
                to: q.range.to,
                time_zone: zone.to_owned(),
                rows,
                totals,
            })
        })
        .await
    }

    /// Issues month `m` if it is closed and not issued yet (`POST
    /// /v1/admin/statements/issue`, and housekeeping); an open month is refused.
    pub async fn issue_statements(self: &Arc<Self>, m: Month) -> Result<Issued, Error> {
        let app = self.clone();
        blocking(move || {
            let b = app.billing()?;
            let now = app.now();
            if now < statements::issuable_at(b, m)? {
                return Err(Error::Conflict {
                    code: "month_not_closed",
                    detail: format!(
                        "{m} has not closed yet in {} (with the grace period for late rollups)",
                        b.tariff.time_zone_name()
                    ),
                });
            }
            // Computed in a read view: the write transaction (and the feed head's lock
            // it takes) lasts only for the inserts, not for the month's computation.
            let (done, computed) = app.db.read(|sql| match statements::issued(sql, m)? {
                Some(done) => Ok::<_, Error>((Some(done), Vec::new())),
                None => Ok((None, statements::compute(sql, b, m)?)),
            })?;
            if let Some(done) = done {
                return Ok(done);
            }
            app.db
                .write(now, |tx| statements::store_issued(tx, m, &computed))
        })
        .await
    }

    /// Housekeeping (leading replica): issues the oldest closed month not issued yet
    /// (one per round, so that a long backlog never stalls housekeeping). `None` when
    /// billing is off or nothing is due.
    pub async fn issue_due_statements(self: &Arc<Self>) -> Result<Option<Issued>, Error> {
        let Some(b) = self.settings.billing.as_ref() else {
            return Ok(None);
        };
        let last = statements::last_closed(b, self.now())?;
        let app = self.clone();
        let due = blocking(move || {
            let b = app.billing()?;
            app.db.read(|sql| statements::next_due(sql, b, last))
        })
        .await?;
        match due {
            Some(m) => self.issue_statements(m).await.map(Some),
            None => Ok(None),
        }
    }

    /// Statements of a month and/or a participant.
    pub async fn statements(
        self: &Arc<Self>,
        month: Option<Month>,
        participant: Option<Bin>,
    ) -> Result<Vec<StoredStatement>, Error> {
        let app = self.clone();
        blocking(move || {
            let tz = app.billing()?.tariff.time_zone();
            app.db
                .read(|sql| statements::list(sql, tz, month, participant))
        })
        .await
    }

    /// Month `m`'s statements so far, computed as issuing would and never stored.
    pub async fn draft_statements(
        self: &Arc<Self>,
        m: Month,
        participant: Option<Bin>,
    ) -> Result<Vec<DraftStatement>, Error> {
        let app = self.clone();
        blocking(move || {
            let b = app.billing()?;
            let now = app.now();
            app.db
                .read(|sql| statements::drafts(sql, b, m, participant, now))
        })
        .await
    }

    /// One draft statement by the id it will have (`owner`: only if it is that
    /// participant's).
    pub async fn draft_statement(
        self: &Arc<Self>,
        id: String,
        owner: Option<Bin>,
    ) -> Result<DraftStatement, Error> {
        let not_found = Error::NotFound("statement_not_found");
        // Ids start with their month (`2026-11-api_user-…`).
        let Some(m) = id.get(..7).and_then(|m| Month::parse("id", m).ok()) else {
            return Err(not_found);
        };
        self.draft_statements(m, owner)
            .await?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or(not_found)
    }

    /// One statement (`owner`: only if it is that participant's).
    pub async fn statement(
        self: &Arc<Self>,
        id: String,
        owner: Option<Bin>,
    ) -> Result<StoredStatement, Error> {
        let app = self.clone();
        blocking(move || {
            let tz = app.billing()?.tariff.time_zone();
            app.db
                .read(|sql| statements::get(sql, tz, &id, owner))?
                .ok_or(Error::NotFound("statement_not_found"))
        })
        .await
    }

    /// Records an adjustment of a statement (`key`: its `Idempotency-Key`); the flag:
    /// whether this call recorded it (`false`: a replay of the key's first request).
    pub async fn adjust_statement(
        self: &Arc<Self>,
        id: String,
        input: AdjustmentInput,
        key: Option<String>,
        actor: String,
    ) -> Result<(StoredStatement, bool), Error> {
        let app = self.clone();
        blocking(move || {
            let tz = app.billing()?.tariff.time_zone();
            app.db.write(app.now(), |tx| {
                statements::adjust(tx, tz, &id, input, key.as_deref(), &actor)
            })
        })
        .await
    }
}

// ---- HTTP ----

/// The calling participant's BIN (any role, active), by its certificate.
fn participant(app: &App, peer: &Peer) -> Result<Bin, Error> {
    crate::http::participant(app, peer).map(|p| p.bin)
}

fn query(req: &Request<Incoming>) -> Result<HashMap<String, String>, Error> {
    query_strings(req.uri().query().unwrap_or(""))
}

/// A participant's query: its own BIN, whatever it asked; another's is refused.
fn own_query(app: &App, peer: &Peer, req: &Request<Incoming>) -> Result<UsageQuery, Error> {
    let me = participant(app, peer)?;
    let mut q = UsageQuery::parse(query(req)?)?;
    if q.participant.is_some_and(|p| p != me) {
        return Err(Error::Forbidden("not_your_usage"));
    }
    q.participant = Some(me);
    Ok(q)
}

/// `GET /v1/admin/usage`, `GET /v1/admin/report` (operator) and `GET /v1/usage` (the
/// caller's own).
pub(crate) async fn usage_route(
    app: &Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
    what: &str,
) -> Result<Resp, Error> {
    if req.method() != Method::GET {
        return Ok(method_not_allowed("GET"));
    }
    match what {
        "own" => ok(&app.usage(own_query(app, peer, &req)?).await?),
        "report" => {
            operator(app, peer)?;
            ok(&app.report(UsageQuery::parse(query(&req)?)?).await?)
        }
        _ => {
            operator(app, peer)?;
            ok(&app.usage(UsageQuery::parse(query(&req)?)?).await?)
        }
    }
}

/// Reads `month` (optional) and `participant` (optional) and nothing else.
fn list_query(req: &Request<Incoming>) -> Result<(Option<Month>, Option<Bin>), Error> {
    let mut q = query(req)?;
    let month = q
        .remove("month")
        .map(|m| Month::parse("month", &m))
        .transpose()?;
    let participant = participant_param(q.remove("participant"))?;
    no_other(&q, "month, participant")?;
    Ok((month, participant))
}

/// `/v1/admin/statements…` (operator).
pub(crate) async fn admin_statements(
    app: &Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
    rest: &[&str],
    body_timeout: std::time::Duration,
) -> Result<Resp, Error> {
    let actor = operator(app, peer)?;
    let method = req.method().clone();
    match (rest, method) {
        ([], Method::GET) => {
            let (month, participant) = list_query(&req)?;
            ok(&app.statements(month, participant).await?)
        }
        (["draft"], Method::GET) => {
            let (month, participant) = draft_query(&req)?;
            ok(&app.draft_statements(month, participant).await?)
        }
        (["draft", id], Method::GET) => one_draft(app, req, (*id).to_owned(), None).await,
        (["issue"], Method::POST) => {
            let mut q = query(&req)?;
            let month = q
                .remove("month")
                .ok_or_else(|| Error::BadRequest("month: required".into()))?;
            no_other(&q, "month")?;
            ok(&app.issue_statements(Month::parse("month", &month)?).await?)
        }
        ([id], Method::GET) => one(app, req, (*id).to_owned(), None).await,
        ([id, "adjustments"], Method::POST) => {
            let key = idempotency_key(&req)?;
            let input: AdjustmentInput = read_json(req, body_timeout).await?;
            let (s, recorded) = app
                .adjust_statement((*id).to_owned(), input, key, actor)
                .await?;
            let status = if recorded {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(crate::http::json(status, &s))
        }
        (["issue"] | [_, "adjustments"], _) => Ok(method_not_allowed("POST")),
        ([] | [_] | ["draft", _], _) => Ok(method_not_allowed("GET")),
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// Longest `Idempotency-Key`, in characters.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The optional `Idempotency-Key` header: once, 1 to 255 visible ASCII characters.
/// Absent is accepted (see docs/billing-trust.md: an adjustment is rare, deliberate and
/// listed with its statement, so a duplicate is seen and corrected by another).
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, Error> {
    let mut values = req.headers().get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let bad = || {
        Error::BadRequest(format!(
            "Idempotency-Key: once, 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))
    };
    let v = v.to_str().map_err(|_| bad())?;
    let ok = values.next().is_none()
        && (1..=MAX_IDEMPOTENCY_KEY).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(Some(v.to_owned()))
    } else {
        Err(bad())
    }
}

/// `/v1/statements…` (the caller's own).
pub(crate) async fn own_statements(
    app: &Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
    rest: &[&str],
) -> Result<Resp, Error> {
    let me = participant(app, peer)?;
    if req.method() != Method::GET {
        return Ok(method_not_allowed("GET"));
    }
    match rest {
        [] => {
            let (month, participant) = list_query(&req)?;
            if participant.is_some_and(|p| p != me) {
                return Err(Error::Forbidden("not_your_statements"));
            }
            ok(&app.statements(month, Some(me)).await?)
        }
        ["draft"] => {
            let (month, participant) = draft_query(&req)?;
            if participant.is_some_and(|p| p != me) {
                return Err(Error::Forbidden("not_your_statements"));
            }
            ok(&app.draft_statements(month, Some(me)).await?)
        }
        ["draft", id] => one_draft(app, req, (*id).to_owned(), Some(me)).await,
        [id] => one(app, req, (*id).to_owned(), Some(me)).await,
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// Reads `month` (required) and `participant` (optional) and nothing else.
fn draft_query(req: &Request<Incoming>) -> Result<(Month, Option<Bin>), Error> {
    match list_query(req)? {
        (Some(m), participant) => Ok((m, participant)),
        (None, _) => Err(Error::BadRequest("month: required".into())),
    }
}

/// The form a statement is asked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Text,
}

/// `?format=json|csv|text` (nothing else), or `Accept: text/csv`.
fn format_of(req: &Request<Incoming>) -> Result<Format, Error> {
    let mut q = query(req)?;
    let format = q.remove("format");
    no_other(&q, "format")?;
    match format.as_deref() {
        None if wants_csv(req) => Ok(Format::Csv),
        None | Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some("text") => Ok(Format::Text),
        Some(_) => Err(Error::BadRequest("format: json, csv or text".into())),
    }
}

/// A statement's answer in `format`, given its three forms.
fn render(
    format: Format,
    json: impl FnOnce() -> Resp,
    csv: impl FnOnce() -> Result<String, Error>,
    text: impl FnOnce() -> Result<String, Error>,
) -> Result<Resp, Error> {
    let mut r = match format {
        Format::Csv => text_response(csv()?, "text/csv; charset=utf-8"),
        Format::Text => text_response(text()?, "text/plain; charset=utf-8"),
        Format::Json => json(),
    };
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(r)
}

/// One statement as JSON, CSV (`Accept: text/csv` or `?format=csv`) or printable text
/// (`?format=text`).
async fn one(
    app: &Arc<App>,
    req: Request<Incoming>,
    id: String,
    owner: Option<Bin>,
) -> Result<Resp, Error> {
    let format = format_of(&req)?;
    let s = app.statement(id, owner).await?;
    render(
        format,
        || crate::http::json(StatusCode::OK, &s),
        || Ok(s.statement.to_csv()),
        || statements::to_text(&s),
    )
}

/// One draft statement, in the same forms as an issued one (the text headed as a draft).
async fn one_draft(
    app: &Arc<App>,
    req: Request<Incoming>,
    id: String,
    owner: Option<Bin>,
) -> Result<Resp, Error> {
    let format = format_of(&req)?;
    let d = app.draft_statement(id, owner).await?;
    render(
        format,
        || crate::http::json(StatusCode::OK, &d),
        || Ok(d.statement.to_csv()),
        || Ok(d.to_text()),
    )
}

fn text_response(body: String, content_type: &'static str) -> Resp {
    with_headers(Response::new(full(body)), content_type, "no-store")
}
