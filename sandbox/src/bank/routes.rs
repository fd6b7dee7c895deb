//! The API of a sandbox bank as the hub sees it (contract §3): routing, the checks a
//! real provider makes on the hub's `x-hub-*` headers, pagination cursors, and the
//! pre-serialised responses that keep the hot path cheap.

use crate::data::json::{self, BalanceView, Next};
use crate::data::{Account, BankData};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, SERVER,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use ring::hmac;
use std::collections::HashMap;
use std::fmt::Write as _;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// Header the hub must strip (it reveals an internal host name); sent on purpose.
pub(crate) const X_INTERNAL_HOST: HeaderName = HeaderName::from_static("x-internal-host");
const X_FAPI_INTERACTION_ID: HeaderName = HeaderName::from_static("x-fapi-interaction-id");
const X_HUB_API_USER: HeaderName = HeaderName::from_static("x-hub-api-user");
const X_HUB_CONSENT_ID: HeaderName = HeaderName::from_static("x-hub-consent-id");
const X_HUB_CUSTOMER: HeaderName = HeaderName::from_static("x-hub-customer");
const X_HUB_PERMISSIONS: HeaderName = HeaderName::from_static("x-hub-permissions");
const X_HUB_ACCOUNTS: HeaderName = HeaderName::from_static("x-hub-accounts");

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const SERVER_NAME: HeaderValue = HeaderValue::from_static("sandbox-bank/0.1");
const INTERNAL_HOST: HeaderValue = HeaderValue::from_static("bank-node-7.internal");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const PUBLIC_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=60");
const GET_ONLY: HeaderValue = HeaderValue::from_static("GET");

/// Default and largest page size of `…/transactions`.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 500;

/// Open-data datasets, in the order of [`Prepared::open_data`].
const DATASETS: [&str; 4] = ["exchange-rates", "branches", "atms", "products"];

/// The response type of the bank.
pub(crate) type Resp = Response<Full<Bytes>>;

/// Whether a response may be cached by the hub.
#[derive(Debug, Clone, Copy)]
enum Cache {
    /// Customer data (contract §3: never cached or stored).
    NoStore,
    /// Open data.
    Public,
}

/// Builds a JSON response with the bank's fixed headers and the echoed interaction id.
fn respond(
    status: StatusCode,
    body: Bytes,
    interaction_id: Option<&HeaderValue>,
    cache: Cache,
) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, JSON);
    h.insert(SERVER, SERVER_NAME);
    h.insert(X_INTERNAL_HOST, INTERNAL_HOST);
    h.insert(
        CACHE_CONTROL,
        match cache {
            Cache::NoStore => NO_STORE,
            Cache::Public => PUBLIC_CACHE,
        },
    );
    if let Some(id) = interaction_id {
        h.insert(X_FAPI_INTERACTION_ID, id.clone());
    }
    resp
}

/// An error response `{"error": code, "message": message}`.
pub(crate) fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    interaction_id: Option<&HeaderValue>,
) -> Resp {
    respond(
        status,
        json::error(code, message),
        interaction_id,
        Cache::NoStore,
    )
}

/// The answer of the `Status(code)` behaviour: that status with a small JSON body.
/// Codes that cannot be a final response (below 200 or not a valid status) become 500.
pub(crate) fn forced_status(code: u16, interaction_id: Option<&HeaderValue>) -> Resp {
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Bytes::new()
    } else {
        Bytes::from(format!(
            r#"{{"error":"sandbox_forced_status","status":{}}}"#,
            status.as_u16()
        ))
    };
    respond(status, body, interaction_id, Cache::NoStore)
}

/// Responses computed once at start: every customer's full account list, every
/// account's detail and balances, and the open-data sets.
pub(crate) struct Prepared {
    account_lists: HashMap<String, Bytes>,
    accounts: HashMap<String, PreparedAccount>,
    open_data: [Bytes; 4],
    cursor_key: hmac::Key,
}

struct PreparedAccount {
    owner: String,
    detail: Bytes,
    balances: Bytes,
}

impl Prepared {
    pub(crate) fn new(data: &BankData) -> Self {
        let mut account_lists = HashMap::with_capacity(data.customers().len());
        let mut accounts = HashMap::new();
        for c in data.customers() {
            account_lists.insert(
                c.iin.clone(),
                json::collection(&c.accounts, "/v1/accounts", None, c.accounts.len()),
            );
            for a in &c.accounts {
                let path = format!("/v1/accounts/{}", a.id);
                accounts.insert(
                    a.id.clone(),
                    PreparedAccount {
                        owner: c.iin.clone(),
                        detail: json::single(a, &path),
                        balances: json::single(&BalanceView(a), &format!("{path}/balances")),
                    },
                );
            }
        }
        let open_data = [
            json::collection(
                data.exchange_rates(),
                "/v1/open-data/exchange-rates",
                None,
                data.exchange_rates().len(),
            ),
            json::collection(
                data.branches(),
                "/v1/open-data/branches",
                None,
                data.branches().len(),
            ),
            json::collection(data.atms(), "/v1/open-data/atms", None, data.atms().len()),
            json::collection(
                data.products(),
                "/v1/open-data/products",
                None,
                data.products().len(),
            ),
        ];
        // Deterministic from the data, so cursors survive a restart with the same seed.
        let mut key_material = [0u8; 16];
        key_material[..8].copy_from_slice(&data.bank().get().to_be_bytes());
        key_material[8..].copy_from_slice(&data.seed().to_be_bytes());
        Prepared {
            account_lists,
            accounts,
            open_data,
            cursor_key: hmac::Key::new(hmac::HMAC_SHA256, &key_material),
        }
    }
}

/// A route of the bank's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Accounts,
    Account(&'a str),
    Balances(&'a str),
    Transactions(&'a str),
    OpenData(&'a str),
}

impl Route<'_> {
    fn permission(self) -> Option<&'static str> {
        match self {
            Route::Accounts | Route::Account(_) => Some("accounts"),
            Route::Balances(_) => Some("balances"),
            Route::Transactions(_) => Some("transactions"),
            Route::OpenData(_) => None,
        }
    }
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v1/")?;
    let mut seg = rest.split('/');
    let route = match (seg.next()?, seg.next(), seg.next()) {
        ("accounts", None, _) => Route::Accounts,
        ("accounts", Some(id), None) if !id.is_empty() => Route::Account(id),
        ("accounts", Some(id), Some("balances")) if !id.is_empty() => Route::Balances(id),
        ("accounts", Some(id), Some("transactions")) if !id.is_empty() => Route::Transactions(id),
        ("open-data", Some(ds), None) if !ds.is_empty() => Route::OpenData(ds),
        _ => return None,
    };
    if seg.next().is_some() {
        return None;
    }
    Some(route)
}

/// `8-4-4-4-12` hex digits, any case (RFC 9562 text form).
fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A rejected request: status, error code and a message.
type Reject = (StatusCode, &'static str, String);

fn bad(code: &'static str, message: impl Into<String>) -> Reject {
    (StatusCode::BAD_REQUEST, code, message.into())
}

/// Exactly one value of a header, as UTF-8.
fn one<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, Reject> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(bad(
            "duplicate_header",
            format!("{name} sent more than once"),
        ));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| bad("invalid_header", format!("{name} is not visible ASCII")))
}

fn required<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, Reject> {
    match one(headers, name)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad("missing_header", format!("{name} is required"))),
    }
}

/// The hub's headers on an account route, checked the way a provider would.
struct HubHeaders<'h> {
    customer: &'h str,
    /// `x-hub-accounts`, when the consent restricts accounts.
    accounts: Option<&'h str>,
}

fn hub_headers<'h>(headers: &'h HeaderMap, permission: &str) -> Result<HubHeaders<'h>, Reject> {
    let interaction = required(headers, &X_FAPI_INTERACTION_ID)?;
    if !is_uuid(interaction.as_bytes()) {
        return Err(bad(
            "invalid_header",
            "x-fapi-interaction-id must be a UUID",
        ));
    }
    let api_user = required(headers, &X_HUB_API_USER)?;
    if api_user.len() != 12 || !api_user.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad(
            "invalid_header",
            "x-hub-api-user must be a 12-digit BIN",
        ));
    }
    required(headers, &X_HUB_CONSENT_ID)?;
    let customer = required(headers, &X_HUB_CUSTOMER)?;
    let permissions = required(headers, &X_HUB_PERMISSIONS)?;
    let accounts = one(headers, &X_HUB_ACCOUNTS)?;
    if !permissions.split(',').any(|p| p.trim() == permission) {
        return Err((
            StatusCode::FORBIDDEN,
            "permission_missing",
            format!("x-hub-permissions does not grant {permission}"),
        ));
    }
    Ok(HubHeaders { customer, accounts })
}

fn in_list(list: &str, id: &str) -> bool {
    list.split(',').any(|a| a.trim() == id)
}

/// Answers one request under the `Normal` behaviour; with `ignore_accounts` the bank
/// acts as if `x-hub-accounts` had not been sent. `forwarded_authorization` is set when
/// the request carried an `Authorization` header.
pub(crate) fn handle<B>(
    data: &BankData,
    prepared: &Prepared,
    req: &Request<B>,
    ignore_accounts: bool,
    forwarded_authorization: &mut bool,
) -> Resp {
    let headers = req.headers();
    let iid = headers.get(X_FAPI_INTERACTION_ID);
    if headers.contains_key(AUTHORIZATION) {
        *forwarded_authorization = true;
        return error(
            StatusCode::BAD_REQUEST,
            "authorization_forwarded",
            "the hub must not forward the API user's Authorization header",
            iid,
        );
    }
    let Some(route) = parse_route(req.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such route", iid);
    };
    if req.method() != Method::GET {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served",
            iid,
        );
        resp.headers_mut().insert(ALLOW, GET_ONLY);
        return resp;
    }
    let Some(permission) = route.permission() else {
        return open_data(prepared, route, iid);
    };
    match account_route(data, prepared, req, route, permission, ignore_accounts) {
        Ok(resp) => resp,
        Err((status, code, message)) => error(status, code, &message, iid),
    }
}

fn open_data(prepared: &Prepared, route: Route<'_>, iid: Option<&HeaderValue>) -> Resp {
    let Route::OpenData(ds) = route else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such route", iid);
    };
    match DATASETS.iter().position(|d| *d == ds) {
        Some(i) => respond(
            StatusCode::OK,
            prepared.open_data[i].clone(),
            iid,
            Cache::Public,
        ),
        None => error(
            StatusCode::NOT_FOUND,
            "dataset_not_found",
            "datasets: exchange-rates, branches, atms, products",
            iid,
        ),
    }
}

fn account_route<B>(
    data: &BankData,
    prepared: &Prepared,
    req: &Request<B>,
    route: Route<'_>,
    permission: &str,
    ignore_accounts: bool,
) -> Result<Resp, Reject> {
    let headers = req.headers();
    let iid = headers.get(X_FAPI_INTERACTION_ID);
    let mut hub = hub_headers(headers, permission)?;
    if ignore_accounts {
        hub.accounts = None;
    }
    let Some(customer) = data.customer(hub.customer) else {
        return Err((
            StatusCode::NOT_FOUND,
            "customer_not_found",
            "no such customer at this bank".into(),
        ));
    };
    let ok = |body: Bytes| respond(StatusCode::OK, body, iid, Cache::NoStore);
    let id = match route {
        Route::Accounts => {
            return Ok(match hub.accounts {
                None => match prepared.account_lists.get(&customer.iin) {
                    Some(body) => ok(body.clone()),
                    None => ok(json::collection(
                        &customer.accounts,
                        "/v1/accounts",
                        None,
                        customer.accounts.len(),
                    )),
                },
                Some(list) => {
                    let visible: Vec<&Account> = customer
                        .accounts
                        .iter()
                        .filter(|a| in_list(list, &a.id))
                        .collect();
                    ok(json::collection(
                        &visible,
                        "/v1/accounts",
                        None,
                        visible.len(),
                    ))
                }
            });
        }
        Route::Account(id) | Route::Balances(id) | Route::Transactions(id) => id,
        Route::OpenData(_) => return Ok(open_data(prepared, route, iid)),
    };
    let entry = prepared
        .accounts
        .get(id)
        .filter(|e| e.owner == customer.iin)
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                "account_not_found",
                "no such account for this customer".to_owned(),
            )
        })?;
    if let Some(list) = hub.accounts {
        if !in_list(list, id) {
            return Err((
                StatusCode::FORBIDDEN,
                "account_not_in_consent",
                "x-hub-accounts does not list this account".into(),
            ));
        }
    }
    match route {
        Route::Account(_) => Ok(ok(entry.detail.clone())),
        Route::Balances(_) => Ok(ok(entry.balances.clone())),
        _ => {
            let account = data.account(id).ok_or_else(|| {
                (
                    StatusCode::NOT_FOUND,
                    "account_not_found",
                    "no such account for this customer".to_owned(),
                )
            })?;
            let body = transactions(prepared, account, req.uri().path(), req.uri().query())?;
            Ok(ok(body))
        }
    }
}

/// The query of `…/transactions`.
#[derive(Debug, Default, PartialEq, Eq)]
struct TxQuery {
    from: Option<Date>,
    to: Option<Date>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `YYYY-MM-DD`, or an RFC 3339 date-time whose own calendar date is used.
fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, format_description!("[year]-[month]-[day]"))
        .ok()
        .or_else(|| OffsetDateTime::parse(s, &Rfc3339).ok().map(|t| t.date()))
}

fn parse_tx_query(query: Option<&str>) -> Result<TxQuery, Reject> {
    let mut q = TxQuery::default();
    let Some(query) = query else {
        return Ok(q);
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)
            .ok_or_else(|| bad("invalid_query", format!("{k}: bad percent-encoding")))?;
        let dup = || bad("invalid_query", format!("{k} given more than once"));
        match k {
            "from" | "to" => {
                let d = parse_date(&v).ok_or_else(|| {
                    bad(
                        "invalid_query",
                        format!("{k} must be an RFC 3339 date (YYYY-MM-DD)"),
                    )
                })?;
                let slot = if k == "from" { &mut q.from } else { &mut q.to };
                if slot.replace(d).is_some() {
                    return Err(dup());
                }
            }
            "limit" => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad("invalid_query", format!("limit must be 1..={MAX_LIMIT}"))
                    })?;
                if q.limit.replace(n).is_some() {
                    return Err(dup());
                }
            }
            "cursor" => {
                if v.is_empty() {
                    return Err(bad("invalid_query", "cursor must not be empty"));
                }
                if q.cursor.replace(v).is_some() {
                    return Err(dup());
                }
            }
            // Unknown parameters are ignored, as most providers do.
            _ => {}
        }
    }
    if let (Some(from), Some(to)) = (q.from, q.to) {
        if from > to {
            return Err(bad("invalid_query", "from is after to"));
        }
    }
    Ok(q)
}

/// The cursor's MAC binds the offset to the account and the date filter, so a cursor
/// cannot be replayed against another account or another filter.
fn cursor_tag(key: &hmac::Key, account: &str, q: &TxQuery, offset: u32) -> [u8; 8] {
    let day = |d: Option<Date>| d.map_or(i32::MIN, Date::to_julian_day).to_be_bytes();
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(account.as_bytes());
    ctx.update(&[0]);
    ctx.update(&day(q.from));
    ctx.update(&day(q.to));
    ctx.update(&offset.to_be_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 8];
    out.copy_from_slice(&tag.as_ref()[..8]);
    out
}

fn encode_cursor(key: &hmac::Key, account: &str, q: &TxQuery, offset: u32) -> String {
    let mut raw = [0u8; 12];
    raw[..4].copy_from_slice(&offset.to_be_bytes());
    raw[4..].copy_from_slice(&cursor_tag(key, account, q, offset));
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(key: &hmac::Key, account: &str, q: &TxQuery, cursor: &str) -> Option<u32> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let raw: [u8; 12] = raw.try_into().ok()?;
    let offset = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    (raw[4..] == cursor_tag(key, account, q, offset)).then_some(offset)
}

fn transactions(
    prepared: &Prepared,
    account: &Account,
    path: &str,
    query: Option<&str>,
) -> Result<Bytes, Reject> {
    let q = parse_tx_query(query)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let all = account.transactions_between(q.from, q.to);
    let offset = match &q.cursor {
        None => 0,
        Some(c) => decode_cursor(&prepared.cursor_key, &account.id, &q, c)
            .map(|o| o as usize)
            .filter(|&o| o < all.len())
            .ok_or_else(|| {
                bad(
                    "invalid_cursor",
                    "cursor is malformed, expired or for another filter",
                )
            })?,
    };
    let end = offset.saturating_add(limit).min(all.len());
    let page = all.get(offset..end).unwrap_or(&[]);
    let self_link = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let next = (end < all.len()).then(|| {
        let cursor = encode_cursor(&prepared.cursor_key, &account.id, &q, end as u32);
        // A query-only relative reference (RFC 3986 §5.2): it resolves against whatever URL
        // the client called, so it stays right behind the hub, which changes the path.
        let mut link = String::from("?");
        // Writing into a String cannot fail.
        if let Some(from) = q.from {
            let _ = write!(link, "from={from}&");
        }
        if let Some(to) = q.to {
            let _ = write!(link, "to={to}&");
        }
        let _ = write!(link, "limit={limit}&cursor={cursor}");
        (link, cursor)
    });
    Ok(json::collection(
        page,
        &self_link,
        next.as_ref().map(|(link, cursor)| Next { link, cursor }),
        all.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_strictly() {
        assert_eq!(parse_route("/v1/accounts"), Some(Route::Accounts));
        assert_eq!(parse_route("/v1/accounts/a1"), Some(Route::Account("a1")));
        assert_eq!(
            parse_route("/v1/accounts/a1/balances"),
            Some(Route::Balances("a1"))
        );
        assert_eq!(
            parse_route("/v1/accounts/a1/transactions"),
            Some(Route::Transactions("a1"))
        );
        assert_eq!(
            parse_route("/v1/open-data/atms"),
            Some(Route::OpenData("atms"))
        );
        for bad in [
            "/v1/accounts/",
            "/v1/accounts//balances",
            "/v1/accounts/a1/other",
            "/v1/accounts/a1/balances/x",
            "/v2/accounts",
            "/v1/open-data/",
            "/",
        ] {
            assert_eq!(parse_route(bad), None, "{bad}");
        }
    }

    #[test]
    fn uuid_shape() {
        assert!(is_uuid(b"0b5e7c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert!(is_uuid(b"0B5E7C1A-2F3D-4E5F-8A9B-0C1D2E3F4A5B"));
        assert!(!is_uuid(b"0b5e7c1a2f3d4e5f8a9b0c1d2e3f4a5b"));
        assert!(!is_uuid(b"0b5e7c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5g"));
    }

    #[test]
    fn query_parsing() {
        let q = parse_tx_query(Some(
            "from=2025-01-01&to=2025-02-01T10:00:00%2B05:00&limit=7",
        ));
        let q = q.unwrap_or_default();
        assert_eq!(q.limit, Some(7));
        assert_eq!(q.from.map(|d| d.to_string()).as_deref(), Some("2025-01-01"));
        assert_eq!(q.to.map(|d| d.to_string()).as_deref(), Some("2025-02-01"));
        for bad in [
            "limit=0",
            "limit=501",
            "limit=x",
            "from=2025-13-01",
            "from=2025-02-01&to=2025-01-01",
            "limit=5&limit=6",
            "cursor=",
            "from=%zz",
        ] {
            assert!(parse_tx_query(Some(bad)).is_err(), "{bad}");
        }
        assert!(parse_tx_query(Some("foo=bar")).is_ok());
    }

    /// A bank told to ignore `x-hub-accounts` lists and serves every account of the
    /// customer; by default it keeps to the listed ones.
    #[test]
    fn ignoring_x_hub_accounts_lists_and_serves_every_account() {
        use http_body_util::BodyExt;
        let bank = consent_cache::Bin::parse("990340000011").expect("bin");
        let data = BankData::generate(bank, 7, 20);
        let prepared = Prepared::new(&data);
        let customer = data
            .customers()
            .find(|c| c.accounts.len() >= 2)
            .expect("a customer with two accounts");
        let (allowed, other) = (&customer.accounts[0].id, &customer.accounts[1].id);
        let get = |path: &str, ignore: bool| {
            let req = Request::get(path)
                .header(
                    X_FAPI_INTERACTION_ID,
                    "0b5e7c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b",
                )
                .header(X_HUB_API_USER, "100140000001")
                .header(X_HUB_CONSENT_ID, "c-1")
                .header(X_HUB_CUSTOMER, customer.iin.as_str())
                .header(X_HUB_PERMISSIONS, "accounts,balances")
                .header(X_HUB_ACCOUNTS, allowed.as_str())
                .body(())
                .expect("request");
            let resp = handle(&data, &prepared, &req, ignore, &mut false);
            let status = resp.status().as_u16();
            let body = json_of(resp.into_body());
            (status, body)
        };
        fn json_of(body: Full<Bytes>) -> serde_json::Value {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let bytes = rt
                .block_on(body.collect())
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            serde_json::from_slice(&bytes).expect("JSON")
        }
        let listed = |v: &serde_json::Value| -> Vec<String> {
            v["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|a| a["account_id"].as_str().expect("id").to_owned())
                .collect()
        };
        let (status, v) = get("/v1/accounts", false);
        assert_eq!((status, listed(&v)), (200, vec![allowed.clone()]));
        let every: Vec<String> = customer.accounts.iter().map(|a| a.id.clone()).collect();
        let (status, v) = get("/v1/accounts", true);
        assert_eq!((status, listed(&v)), (200, every));
        let balances = format!("/v1/accounts/{other}/balances");
        assert_eq!(get(&balances, false).0, 403);
        assert_eq!(get(&balances, true).0, 200);
    }

    #[test]
    fn cursor_round_trip_and_binding() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let q = TxQuery::default();
        let c = encode_cursor(&key, "acc-1", &q, 150);
        assert_eq!(decode_cursor(&key, "acc-1", &q, &c), Some(150));
        assert_eq!(decode_cursor(&key, "acc-2", &q, &c), None);
        let filtered = TxQuery {
            from: parse_date("2025-01-01"),
            ..TxQuery::default()
        };
        assert_eq!(decode_cursor(&key, "acc-1", &filtered, &c), None);
        assert_eq!(decode_cursor(&key, "acc-1", &q, "AAAA"), None);
    }
}
