//! The route table of contract §2 and the strict request-target parser in front of it
//! (decision row 1), plus the upstream path of contract §3.
//!
//! Parsing rules, beyond what the contract spells out:
//!
//! * The path must start with `/`. An empty segment (`//`) anywhere but at the very end is
//!   `bad_request`; a single trailing `/` is simply a path no route has (`route_not_found`).
//! * `..` anywhere in the path is `bad_request`, not only as a whole segment: no legitimate
//!   identifier needs it and some upstream stacks treat `..;` or `a..` specially. A `.`
//!   segment is `bad_request` too.
//! * Percent-encoding is not accepted in the path at all (`%2e`, `%2f`, `%5c`, and also
//!   harmless ones such as `%41`): no segment of a hub route ever needs it, and refusing it
//!   removes every decode-twice / normalise-differently ambiguity between the hub and the
//!   provider.
//! * A segment may contain only RFC 3986 `unreserved` characters
//!   (`A-Z a-z 0-9 - . _ ~`) and the `pchar` extras `! $ & ' ( ) * + , = : @`.
//!   `;` is excluded on purpose: Java servlet containers strip `;params` from segments,
//!   which would let the provider see a different account id than the one the hub checked.
//!   Space, control characters, `\`, `%` and non-ASCII are therefore all `bad_request`.
//! * Literal segments (`v1`, `providers`, `accounts`, …) are case-sensitive.
//! * The provider segment is any valid segment; a value that is not a BIN is answered by the
//!   decision (`provider_not_in_consent` / `provider_not_found`), not here.
//! * Account ids are at most [`MAX_ACCOUNT_ID_LEN`] characters (longer: `bad_request`).
//! * Order: path syntax (400) → route exists (404) → account id length (400) → method
//!   (405, only `GET` is served; `HEAD` is not) → query (400).
//!
//! Query rules:
//!
//! * `transactions` accepts only `from`, `to`, `limit`, `cursor`, each at most once, every
//!   pair written `name=value` with a non-empty value. `from`/`to` are RFC 3339 `full-date`
//!   or `date-time` (`T`/`Z` in either case, 1–9 fraction digits); their value may be
//!   percent-encoded (so `%2B05:00` and `%3A` work) and a literal `+` is taken as `+`
//!   (RFC 3986, not form encoding). A date-only `from` means the start of that day (UTC) and
//!   a date-only `to` the end of that day, so `from=2024-01-02T10:00:00Z&to=2024-01-02` is a
//!   valid range; `from` after `to` is `bad_request`. `limit` is a decimal integer
//!   1..=500 without sign or leading zeros. `cursor` is 1..=256 `unreserved` characters.
//! * The other account routes accept no query at all (an empty `?` is tolerated).
//! * Open-data queries are passed through but must be well formed: only RFC 3986 query
//!   characters (`pchar`, `/`, `?`) and `%` followed by two hex digits.
//!
//! [`match_route`] performs no heap allocation; [`parse_route`] is the same with the rule
//! that failed ([`RouteError`], the problem's `detail`).

use crate::code::Code;
use consent_cache::{Bin, Permission};
use feed_wire::ProviderApi;

/// Maximum length of the `{account_id}` segment.
pub const MAX_ACCOUNT_ID_LEN: usize = 64;
/// Maximum length of the `cursor` query parameter.
pub const MAX_CURSOR_LEN: usize = 256;
/// Largest accepted `limit` query parameter.
pub const MAX_LIMIT: u32 = 500;

/// The routes of contract §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    /// `GET /v1/providers/{provider_id}/accounts`
    Accounts,
    /// `GET /v1/providers/{provider_id}/accounts/{account_id}`
    Account,
    /// `GET /v1/providers/{provider_id}/accounts/{account_id}/balances`
    Balances,
    /// `GET /v1/providers/{provider_id}/accounts/{account_id}/transactions`
    Transactions,
    /// `GET /v1/open-data/{provider_id}/{dataset}`
    OpenData,
}

impl RouteId {
    /// Every route.
    pub const ALL: [RouteId; 5] = [
        RouteId::Accounts,
        RouteId::Account,
        RouteId::Balances,
        RouteId::Transactions,
        RouteId::OpenData,
    ];

    /// The route template as written in the contract (for logs, metrics and audit).
    pub const fn template(self) -> &'static str {
        match self {
            RouteId::Accounts => "/v1/providers/{provider_id}/accounts",
            RouteId::Account => "/v1/providers/{provider_id}/accounts/{account_id}",
            RouteId::Balances => "/v1/providers/{provider_id}/accounts/{account_id}/balances",
            RouteId::Transactions => {
                "/v1/providers/{provider_id}/accounts/{account_id}/transactions"
            }
            RouteId::OpenData => "/v1/open-data/{provider_id}/{dataset}",
        }
    }

    /// The permission the route requires; `None` for open data.
    pub const fn permission(self) -> Option<Permission> {
        match self {
            RouteId::Accounts | RouteId::Account => Some(Permission::Accounts),
            RouteId::Balances => Some(Permission::Balances),
            RouteId::Transactions => Some(Permission::Transactions),
            RouteId::OpenData => None,
        }
    }

    /// Whether this is the open-data route (no token, no consent: rows 4–14 skipped).
    pub const fn is_open_data(self) -> bool {
        matches!(self, RouteId::OpenData)
    }

    /// Whether the route carries an `{account_id}` segment.
    pub const fn has_account(self) -> bool {
        matches!(
            self,
            RouteId::Account | RouteId::Balances | RouteId::Transactions
        )
    }
}

/// The open-data datasets of contract §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// `exchange-rates`
    ExchangeRates,
    /// `branches`
    Branches,
    /// `atms`
    Atms,
    /// `products`
    Products,
}

impl Dataset {
    /// Every dataset.
    pub const ALL: [Dataset; 4] = [
        Dataset::ExchangeRates,
        Dataset::Branches,
        Dataset::Atms,
        Dataset::Products,
    ];

    /// The path segment.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dataset::ExchangeRates => "exchange-rates",
            Dataset::Branches => "branches",
            Dataset::Atms => "atms",
            Dataset::Products => "products",
        }
    }

    /// Its provider API.
    pub const fn api(self) -> ProviderApi {
        match self {
            Dataset::ExchangeRates => ProviderApi::ExchangeRates,
            Dataset::Branches => ProviderApi::Branches,
            Dataset::Atms => ProviderApi::Atms,
            Dataset::Products => ProviderApi::Products,
        }
    }

    /// Parses a path segment (exact, case-sensitive).
    pub fn parse(s: &str) -> Option<Dataset> {
        match s {
            "exchange-rates" => Some(Dataset::ExchangeRates),
            "branches" => Some(Dataset::Branches),
            "atms" => Some(Dataset::Atms),
            "products" => Some(Dataset::Products),
            _ => None,
        }
    }
}

/// A matched request: the route and the values of its path parameters, borrowed from the
/// request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// Which route.
    pub id: RouteId,
    /// The `{provider_id}` segment, as sent (not necessarily a BIN).
    pub provider: &'a str,
    /// The `{account_id}` segment, for routes that have one.
    pub account: Option<&'a str>,
    /// The dataset, for open data.
    pub dataset: Option<Dataset>,
}

impl Route<'_> {
    /// The provider segment as a BIN, if it is one.
    pub fn provider_bin(&self) -> Option<Bin> {
        Bin::parse(self.provider).ok()
    }

    /// The provider API the route calls (the unit of conformance and publication).
    pub fn api(&self) -> ProviderApi {
        match (self.id, self.dataset) {
            (RouteId::Accounts, _) => ProviderApi::Accounts,
            (RouteId::Account, _) => ProviderApi::Account,
            (RouteId::Balances, _) => ProviderApi::Balances,
            (RouteId::Transactions, _) => ProviderApi::Transactions,
            (RouteId::OpenData, Some(d)) => d.api(),
            // The matcher never builds an open-data route without its dataset; the
            // first dataset stands in rather than a panic on the request path.
            (RouteId::OpenData, None) => ProviderApi::ExchangeRates,
        }
    }
}

/// Why a request target matches no route: the code, and which rule failed in words (a
/// fixed sentence: never the request's own text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteError {
    /// `bad_request`, `route_not_found` or `method_not_allowed`.
    pub code: Code,
    /// The rule that failed, for the problem's `detail`.
    pub detail: &'static str,
}

const fn bad(detail: &'static str) -> RouteError {
    RouteError {
        code: Code::BadRequest,
        detail,
    }
}

const NOT_FOUND: RouteError = RouteError {
    code: Code::RouteNotFound,
    detail: "no route of the hub's API has this path",
};
const UNKNOWN_DATASET: RouteError = RouteError {
    code: Code::RouteNotFound,
    detail: "dataset: one of exchange-rates, branches, atms, products",
};
const GET_ONLY: RouteError = RouteError {
    code: Code::MethodNotAllowed,
    detail: "this route allows GET only",
};
const PATH_START: RouteError = bad("the path must start with /");
const DOT_DOT: RouteError = bad("the path must not contain '..' or a '.' segment");
const EMPTY_SEGMENT: RouteError = bad("the path must not contain an empty segment (//)");
const SEGMENT_BYTE: RouteError = bad(
    "a path segment holds a character other than A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , = : @ (percent-encoding is not accepted in paths)",
);
const ACCOUNT_LEN: RouteError = bad("account_id: at most 64 characters");
const NO_QUERY: RouteError = bad("this route takes no query parameters");
const QUERY_BYTE: RouteError =
    bad("the query holds a character not allowed by RFC 3986 or a broken percent-encoding");
const QUERY_PAIR: RouteError = bad("every query parameter must be name=value with a value");
const QUERY_NAME: RouteError = bad(
    "unknown or repeated query parameter: transactions takes from, to, limit and cursor, each at most once",
);
const FROM_DATE: RouteError = bad("from: an RFC 3339 date (YYYY-MM-DD) or date-time");
const TO_DATE: RouteError = bad("to: an RFC 3339 date (YYYY-MM-DD) or date-time");
const LIMIT: RouteError = bad("limit: an integer from 1 to 500 (no sign, no leading zeros)");
const CURSOR: RouteError = bad("cursor: 1 to 256 characters of A-Z a-z 0-9 - . _ ~");
const FROM_AFTER_TO: RouteError = bad("from is after to");

/// Upper bound on segments we remember; longer paths match no route.
const MAX_SEGMENTS: usize = 6;

/// Parses `path` (the raw request path, without the query) strictly, matches it against
/// the route table and validates `query` for that route. See the module docs for the rules.
pub fn match_route<'a>(
    method: &http::Method,
    path: &'a str,
    query: Option<&'a str>,
) -> Result<Route<'a>, Code> {
    parse_route(method, path, query).map_err(|e| e.code)
}

/// [`match_route`], with the rule that failed.
pub fn parse_route<'a>(
    method: &http::Method,
    path: &'a str,
    query: Option<&'a str>,
) -> Result<Route<'a>, RouteError> {
    let segs = split_path(path)?;
    let route = match segs.as_slice() {
        ["v1", "providers", p, "accounts"] => Route {
            id: RouteId::Accounts,
            provider: p,
            account: None,
            dataset: None,
        },
        ["v1", "providers", p, "accounts", a] => account_route(RouteId::Account, p, a),
        ["v1", "providers", p, "accounts", a, "balances"] => account_route(RouteId::Balances, p, a),
        ["v1", "providers", p, "accounts", a, "transactions"] => {
            account_route(RouteId::Transactions, p, a)
        }
        ["v1", "open-data", p, d] => match Dataset::parse(d) {
            Some(dataset) => Route {
                id: RouteId::OpenData,
                provider: p,
                account: None,
                dataset: Some(dataset),
            },
            None => return Err(UNKNOWN_DATASET),
        },
        _ => return Err(NOT_FOUND),
    };
    if let Some(a) = route.account {
        if a.len() > MAX_ACCOUNT_ID_LEN {
            return Err(ACCOUNT_LEN);
        }
    }
    if method != http::Method::GET {
        return Err(GET_ONLY);
    }
    let query = query.unwrap_or("");
    match route.id {
        RouteId::Transactions => check_transactions_query(query)?,
        RouteId::Accounts | RouteId::Account | RouteId::Balances => {
            if !query.is_empty() {
                return Err(NO_QUERY);
            }
        }
        RouteId::OpenData => check_open_query(query)?,
    }
    Ok(route)
}

fn account_route<'a>(id: RouteId, provider: &'a str, account: &'a str) -> Route<'a> {
    Route {
        id,
        provider,
        account: Some(account),
        dataset: None,
    }
}

/// At most [`MAX_SEGMENTS`] validated segments; `len == usize::MAX` marks "too many".
struct Segments<'a> {
    items: [&'a str; MAX_SEGMENTS],
    len: usize,
}

impl<'a> Segments<'a> {
    fn as_slice(&self) -> &[&'a str] {
        self.items.get(..self.len).unwrap_or(&[])
    }
}

fn split_path(path: &str) -> Result<Segments<'_>, RouteError> {
    let rest = path.strip_prefix('/').ok_or(PATH_START)?;
    if contains_dot_dot(rest.as_bytes()) {
        return Err(DOT_DOT);
    }
    let mut segs = Segments {
        items: [""; MAX_SEGMENTS],
        len: 0,
    };
    let mut count = 0usize;
    let mut iter = rest.split('/').peekable();
    let mut trailing_empty = false;
    while let Some(seg) = iter.next() {
        if seg.is_empty() {
            if iter.peek().is_some() {
                return Err(EMPTY_SEGMENT);
            }
            trailing_empty = true;
            break;
        }
        check_segment(seg)?;
        if let Some(slot) = segs.items.get_mut(count) {
            *slot = seg;
        }
        count += 1;
    }
    // A trailing slash (including the bare "/") names no route; too many segments neither.
    segs.len = if trailing_empty || count > MAX_SEGMENTS {
        0
    } else {
        count
    };
    Ok(segs)
}

fn contains_dot_dot(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"..")
}

fn check_segment(seg: &str) -> Result<(), RouteError> {
    if seg == "." {
        return Err(DOT_DOT);
    }
    if seg.bytes().all(is_segment_byte) {
        Ok(())
    } else {
        Err(SEGMENT_BYTE)
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const fn is_segment_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// RFC 3986 `query` characters other than `%` (handled separately).
const fn is_query_byte(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
        )
}

const fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn check_open_query(q: &str) -> Result<(), RouteError> {
    let b = q.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            match (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            ) {
                (Some(_), Some(_)) => i += 3,
                _ => return Err(QUERY_BYTE),
            }
        } else if is_query_byte(c) {
            i += 1;
        } else {
            return Err(QUERY_BYTE);
        }
    }
    Ok(())
}

fn check_transactions_query(q: &str) -> Result<(), RouteError> {
    if q.is_empty() {
        return Ok(());
    }
    let mut from: Option<i128> = None;
    let mut to: Option<i128> = None;
    let mut seen_limit = false;
    let mut seen_cursor = false;
    for pair in q.split('&') {
        let (name, value) = pair.split_once('=').ok_or(QUERY_PAIR)?;
        if value.is_empty() {
            return Err(QUERY_PAIR);
        }
        match name {
            "from" if from.is_none() => {
                from = Some(parse_query_date(value, DateBound::Start).ok_or(FROM_DATE)?)
            }
            "to" if to.is_none() => {
                to = Some(parse_query_date(value, DateBound::End).ok_or(TO_DATE)?)
            }
            "limit" if !seen_limit => {
                seen_limit = true;
                parse_limit(value).ok_or(LIMIT)?;
            }
            "cursor" if !seen_cursor => {
                seen_cursor = true;
                if value.len() > MAX_CURSOR_LEN || !value.bytes().all(is_unreserved) {
                    return Err(CURSOR);
                }
            }
            _ => return Err(QUERY_NAME),
        }
    }
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(FROM_AFTER_TO);
        }
    }
    Ok(())
}

fn parse_limit(v: &str) -> Option<u32> {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 3 || b.first() == Some(&b'0') {
        return None;
    }
    let mut n: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    (1..=MAX_LIMIT).contains(&n).then_some(n)
}

#[derive(Clone, Copy)]
enum DateBound {
    Start,
    End,
}

/// Longest RFC 3339 value we accept after percent-decoding:
/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+HH:MM` is 35 bytes.
const MAX_DATE_LEN: usize = 40;

fn parse_query_date(raw: &str, bound: DateBound) -> Option<i128> {
    let mut buf = [0u8; MAX_DATE_LEN];
    let mut n = 0usize;
    let b = raw.as_bytes();
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        let decoded = if c == b'%' {
            let hi = b.get(i + 1).copied().and_then(hex_val)?;
            let lo = b.get(i + 2).copied().and_then(hex_val)?;
            i += 3;
            hi * 16 + lo
        } else {
            i += 1;
            c
        };
        *buf.get_mut(n)? = decoded;
        n += 1;
    }
    parse_rfc3339(buf.get(..n)?, bound)
}

const NANOS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i128 = 86_400;

/// Parses an RFC 3339 `full-date` or `date-time` into nanoseconds since the Unix epoch.
fn parse_rfc3339(s: &[u8], bound: DateBound) -> Option<i128> {
    let date = s.get(..10)?;
    let days = parse_full_date(date)?;
    let rest = s.get(10..)?;
    if rest.is_empty() {
        let start = i128::from(days) * SECS_PER_DAY * NANOS_PER_SEC;
        return Some(match bound {
            DateBound::Start => start,
            DateBound::End => start + SECS_PER_DAY * NANOS_PER_SEC - 1,
        });
    }
    let (&t, rest) = rest.split_first()?;
    if t != b'T' && t != b't' {
        return None;
    }
    // partial-time: HH:MM:SS[.frac]
    let hh = two_digits(rest.get(0..2)?)?;
    if *rest.get(2)? != b':' {
        return None;
    }
    let mm = two_digits(rest.get(3..5)?)?;
    if *rest.get(5)? != b':' {
        return None;
    }
    let ss = two_digits(rest.get(6..8)?)?;
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = rest.get(8..)?;
    let mut frac_nanos: i128 = 0;
    if rest.first() == Some(&b'.') {
        let digits = rest.get(1..)?;
        let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return None;
        }
        let mut v: i128 = 0;
        for &c in digits.get(..n)? {
            v = v * 10 + i128::from(c - b'0');
        }
        for _ in n..9 {
            v *= 10;
        }
        frac_nanos = v;
        rest = digits.get(n..)?;
    }
    // time-offset: Z / z / (+|-)HH:MM
    let offset_secs: i128 = match rest {
        [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = two_digits(&[*h1, *h2])?;
            let om = two_digits(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let v = i128::from(oh) * 3600 + i128::from(om) * 60;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let secs = i128::from(days) * SECS_PER_DAY
        + i128::from(hh) * 3600
        + i128::from(mm) * 60
        + i128::from(ss)
        - offset_secs;
    Some(secs * NANOS_PER_SEC + frac_nanos)
}

fn two_digits(b: &[u8]) -> Option<u32> {
    match b {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}

/// `YYYY-MM-DD` → days since 1970-01-01 (proleptic Gregorian).
fn parse_full_date(b: &[u8]) -> Option<i64> {
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = *b else {
        return None;
    };
    let year = i64::from(two_digits(&[y1, y2])? * 100 + two_digits(&[y3, y4])?);
    let month = two_digits(&[m1, m2])?;
    let day = two_digits(&[d1, d2])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let d = i64::from(d);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Appends the upstream path of contract §3 for `route` to `out`:
/// `/v1/accounts`, `/v1/accounts/{id}`, `/v1/accounts/{id}/balances`,
/// `/v1/accounts/{id}/transactions`, `/v1/open-data/{dataset}`.
///
/// The query string is not part of it (the gateway forwards it unchanged). Nothing is
/// allocated when `out` already has the capacity.
pub fn upstream_path(route: &Route<'_>, out: &mut String) {
    match route.id {
        RouteId::OpenData => {
            out.push_str("/v1/open-data/");
            if let Some(d) = route.dataset {
                out.push_str(d.as_str());
            }
        }
        RouteId::Accounts => out.push_str("/v1/accounts"),
        RouteId::Account | RouteId::Balances | RouteId::Transactions => {
            out.push_str("/v1/accounts/");
            out.push_str(route.account.unwrap_or(""));
            match route.id {
                RouteId::Balances => out.push_str("/balances"),
                RouteId::Transactions => out.push_str("/transactions"),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use proptest::prelude::*;

    const P: &str = "180340012345";

    fn get(path: &str, query: Option<&str>) -> Result<Route<'static>, Code> {
        let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
        let query: Option<&'static str> = query.map(|q| &*Box::leak(q.to_owned().into_boxed_str()));
        match_route(&Method::GET, path, query)
    }

    fn detail(path: &str, query: Option<&str>) -> &'static str {
        match parse_route(&Method::GET, path, query) {
            Err(e) => e.detail,
            Ok(_) => "matched",
        }
    }

    #[test]
    fn each_refusal_names_its_rule_and_never_echoes_the_request() {
        let tx = format!("/v1/providers/{P}/accounts/KZ123/transactions");
        let cases = [
            (Some("limit=501"), "limit: an integer from 1 to 500"),
            (Some("from=yesterday"), "from: an RFC 3339 date"),
            (Some("to=2024-13-01"), "to: an RFC 3339 date"),
            (Some("foo=1"), "unknown or repeated query parameter"),
            (
                Some("limit=5&limit=6"),
                "unknown or repeated query parameter",
            ),
            (Some("limit"), "name=value"),
            (Some("from=2024-02-02&to=2024-02-01"), "from is after to"),
            (Some("cursor=a%20b"), "cursor: 1 to 256"),
        ];
        let mut seen = std::collections::HashSet::new();
        for (query, expected) in cases {
            let d = detail(&tx, query);
            assert!(d.contains(expected), "{query:?}: {d}");
            assert!(!d.contains("yesterday") && !d.contains("501"), "{d}");
            seen.insert(d);
        }
        assert_eq!(seen.len(), 7, "distinct rules, distinct details");
        let accounts = format!("/v1/providers/{P}/accounts");
        assert_eq!(detail(&accounts, Some("x=1")), NO_QUERY.detail);
        let films = format!("/v1/open-data/{P}/films");
        assert_eq!(detail(&films, None), UNKNOWN_DATASET.detail);
        assert_eq!(detail("/v1/nothing", None), NOT_FOUND.detail);
        assert_eq!(detail("/v1//x", None), EMPTY_SEGMENT.detail);
        assert_eq!(detail("/v1/a%2Fb", None), SEGMENT_BYTE.detail);
        let long = format!("/v1/providers/{P}/accounts/{}", "A".repeat(65));
        assert_eq!(detail(&long, None), ACCOUNT_LEN.detail);
        let post = parse_route(&Method::POST, &accounts, None).unwrap_err();
        assert_eq!(
            (post.code, post.detail),
            (Code::MethodNotAllowed, GET_ONLY.detail)
        );
    }

    #[test]
    fn every_route_matches() {
        let r = get(&format!("/v1/providers/{P}/accounts"), None).unwrap();
        assert_eq!(
            (r.id, r.provider, r.account, r.dataset),
            (RouteId::Accounts, P, None, None)
        );
        let r = get(&format!("/v1/providers/{P}/accounts/KZ123"), None).unwrap();
        assert_eq!((r.id, r.account), (RouteId::Account, Some("KZ123")));
        let r = get(&format!("/v1/providers/{P}/accounts/KZ123/balances"), None).unwrap();
        assert_eq!((r.id, r.account), (RouteId::Balances, Some("KZ123")));
        let r = get(
            &format!("/v1/providers/{P}/accounts/KZ123/transactions"),
            None,
        )
        .unwrap();
        assert_eq!((r.id, r.account), (RouteId::Transactions, Some("KZ123")));
        for d in Dataset::ALL {
            let r = get(&format!("/v1/open-data/{P}/{}", d.as_str()), None).unwrap();
            assert_eq!(
                (r.id, r.provider, r.dataset),
                (RouteId::OpenData, P, Some(d))
            );
        }
    }

    #[test]
    fn route_metadata() {
        assert_eq!(RouteId::Accounts.permission(), Some(Permission::Accounts));
        assert_eq!(RouteId::Account.permission(), Some(Permission::Accounts));
        assert_eq!(RouteId::Balances.permission(), Some(Permission::Balances));
        assert_eq!(
            RouteId::Transactions.permission(),
            Some(Permission::Transactions)
        );
        assert_eq!(RouteId::OpenData.permission(), None);
        assert!(RouteId::OpenData.is_open_data());
        assert!(!RouteId::Accounts.is_open_data());
        assert!(!RouteId::Accounts.has_account());
        assert!(RouteId::Balances.has_account());
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for p in [
            "/",
            "/v1",
            "/v1/providers",
            "/v2/providers/180340012345/accounts",
            "/V1/providers/180340012345/accounts",
            "/v1/providers/180340012345/Accounts",
            "/v1/providers/180340012345/accounts/",
            "/v1/providers/180340012345/accounts/a/b",
            "/v1/providers/180340012345/accounts/a/balances/x",
            "/v1/providers/180340012345/accounts/a/balances/x/y/z",
            "/v1/open-data/180340012345/loans",
            "/v1/open-data/180340012345",
            "/v1/open-data/180340012345/atms/x",
        ] {
            assert_eq!(get(p, None), Err(Code::RouteNotFound), "{p}");
        }
    }

    #[test]
    fn bad_paths_are_bad_requests() {
        for p in [
            "",
            "v1/providers/180340012345/accounts",
            "//v1/providers/180340012345/accounts",
            "/v1//providers/180340012345/accounts",
            "/v1/providers/180340012345/accounts//",
            "/v1/providers/180340012345/accounts/../accounts",
            "/v1/providers/180340012345/accounts/./x",
            "/v1/providers/180340012345/accounts/a..b",
            "/v1/providers/180340012345/accounts/..",
            "/v1/providers/180340012345/accounts/%2e%2e",
            "/v1/providers/180340012345/accounts/%2E",
            "/v1/providers/180340012345/accounts/a%2fb",
            "/v1/providers/180340012345/accounts/a%2Fb",
            "/v1/providers/180340012345/accounts/a%5cb",
            "/v1/providers/180340012345/accounts/a%41",
            "/v1/providers/180340012345/accounts/a\\b",
            "/v1/providers/180340012345/accounts/a b",
            "/v1/providers/180340012345/accounts/a\u{0}b",
            "/v1/providers/180340012345/accounts/a\tb",
            "/v1/providers/180340012345/accounts/счёт",
            "/v1/providers/180340012345/accounts/a;x=1",
            "/v1/providers/180340012345/accounts/a#b",
            "/v1/providers/180340012345/accounts/a?b",
            "/v1/providers/%31/accounts",
            "/v1/unknown/../providers/180340012345/accounts",
            "/x/y/z/w/v/u/t/../s",
        ] {
            assert_eq!(get(p, None), Err(Code::BadRequest), "{p:?}");
        }
    }

    #[test]
    fn segment_charset_is_the_documented_one() {
        let ok = "AZaz09-._~!$&'()*+,=:@";
        let r = get(&format!("/v1/providers/{P}/accounts/{ok}"), None).unwrap();
        assert_eq!(r.account, Some(ok));
        // The provider segment need not be a BIN at this stage.
        let r = get("/v1/providers/not-a-bin/accounts", None).unwrap();
        assert_eq!(r.provider, "not-a-bin");
        assert_eq!(r.provider_bin(), None);
    }

    #[test]
    fn account_id_length_cap() {
        let a64 = "a".repeat(64);
        assert!(get(&format!("/v1/providers/{P}/accounts/{a64}"), None).is_ok());
        let a65 = "a".repeat(65);
        assert_eq!(
            get(&format!("/v1/providers/{P}/accounts/{a65}/balances"), None),
            Err(Code::BadRequest)
        );
    }

    #[test]
    fn non_get_on_known_path_is_405() {
        for m in [
            Method::POST,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert_eq!(
                match_route(&m, "/v1/providers/180340012345/accounts", None),
                Err(Code::MethodNotAllowed)
            );
            assert_eq!(
                match_route(&m, "/v1/open-data/180340012345/atms", None),
                Err(Code::MethodNotAllowed)
            );
            assert_eq!(
                match_route(&m, "/v1/nothing", None),
                Err(Code::RouteNotFound)
            );
            assert_eq!(match_route(&m, "/v1/../x", None), Err(Code::BadRequest));
        }
    }

    fn tx(q: &str) -> Result<Route<'static>, Code> {
        get(
            "/v1/providers/180340012345/accounts/A1/transactions",
            Some(q),
        )
    }

    #[test]
    fn transactions_query_accepts_valid_combinations() {
        for q in [
            "",
            "from=2024-01-01",
            "to=2024-12-31",
            "from=2024-01-01&to=2024-01-01",
            "from=2024-01-02T10:00:00Z&to=2024-01-02",
            "from=2024-02-29&to=2024-03-01T00:00:00.123456789+05:00",
            "from=2024-01-01T00:00:00%2B05:00",
            "from=2024-01-01T00%3A00%3A00z",
            "from=2024-01-01t00:00:00-03:30",
            "from=2024-01-01T23:59:60Z",
            "limit=1",
            "limit=500",
            "limit=42&cursor=abc-DEF_1.2~3",
            "cursor=x&limit=7&to=2025-01-01&from=2024-01-01",
        ] {
            assert!(tx(q).is_ok(), "{q}");
        }
        let long_cursor = format!("cursor={}", "c".repeat(256));
        assert!(tx(&long_cursor).is_ok());
    }

    #[test]
    fn transactions_query_rejects_everything_else() {
        for q in [
            "foo=1",
            "from",
            "from=",
            "&",
            "limit=1&",
            "&limit=1",
            "limit=0",
            "limit=501",
            "limit=007",
            "limit=+5",
            "limit=-1",
            "limit=1e2",
            "limit=1000",
            "limit=1&limit=2",
            "from=2024-01-01&from=2024-01-02",
            "to=2024-01-01&to=2024-01-01",
            "cursor=a&cursor=b",
            "cursor=a%2Fb",
            "cursor=a+b",
            "cursor=a/b",
            "from=2024-13-01",
            "from=2023-02-29",
            "from=2024-04-31",
            "from=2024-00-10",
            "from=2024-1-01",
            "from=24-01-01",
            "from=2024-01-01T25:00:00Z",
            "from=2024-01-01T10:60:00Z",
            "from=2024-01-01T10:00:00",
            "from=2024-01-01T10:00Z",
            "from=2024-01-01T10:00:00.Z",
            "from=2024-01-01T10:00:00.1234567890Z",
            "from=2024-01-01T10:00:00+5:00",
            "from=2024-01-01T10:00:00+05:60",
            "from=2024-01-01 10:00:00Z",
            "from=2024-01-01%20",
            "from=2024-01-01%zz",
            "from=2024-01-01%2",
            "from=2024-01-02&to=2024-01-01",
            "from=2024-01-01T10:00:00Z&to=2024-01-01T09:59:59Z",
            "from=2024-01-01T00:00:00%2B01:00&to=2023-12-31T22:59:59Z",
            "FROM=2024-01-01",
            "fr%6Fm=2024-01-01",
        ] {
            assert_eq!(tx(q), Err(Code::BadRequest), "{q}");
        }
        let long_cursor = format!("cursor={}", "c".repeat(257));
        assert_eq!(tx(&long_cursor), Err(Code::BadRequest));
    }

    #[test]
    fn offsets_are_applied_when_ordering() {
        // 00:00+01:00 is 23:00Z the day before.
        assert!(tx("from=2024-01-01T00:00:00%2B01:00&to=2023-12-31T23:00:00Z").is_ok());
        assert_eq!(
            tx("from=2024-01-01T00:00:00%2B01:00&to=2023-12-31T22:59:59.999Z"),
            Err(Code::BadRequest)
        );
    }

    #[test]
    fn other_account_routes_take_no_query() {
        for p in [
            "/v1/providers/180340012345/accounts",
            "/v1/providers/180340012345/accounts/A1",
            "/v1/providers/180340012345/accounts/A1/balances",
        ] {
            assert!(get(p, Some("")).is_ok());
            assert_eq!(get(p, Some("limit=1")), Err(Code::BadRequest), "{p}");
            assert_eq!(get(p, Some("x")), Err(Code::BadRequest), "{p}");
        }
    }

    #[test]
    fn open_data_query_must_be_well_formed() {
        let p = "/v1/open-data/180340012345/branches";
        for q in ["", "city=Almaty", "q=a%20b&x=/?:@!$'()*+,;=", "a=%C3%A9"] {
            assert!(get(p, Some(q)).is_ok(), "{q}");
        }
        for q in [
            "a=%", "a=%2", "a=%zz", "a b", "a=\u{1}", "a=é", "a=<x>", "a=\"", "a=|", "a=\\",
        ] {
            assert_eq!(get(p, Some(q)), Err(Code::BadRequest), "{q:?}");
        }
    }

    #[test]
    fn upstream_paths() {
        let cases = [
            ("/v1/providers/180340012345/accounts", "/v1/accounts"),
            ("/v1/providers/180340012345/accounts/A1", "/v1/accounts/A1"),
            (
                "/v1/providers/180340012345/accounts/A1/balances",
                "/v1/accounts/A1/balances",
            ),
            (
                "/v1/providers/180340012345/accounts/A1/transactions",
                "/v1/accounts/A1/transactions",
            ),
            (
                "/v1/open-data/180340012345/exchange-rates",
                "/v1/open-data/exchange-rates",
            ),
        ];
        for (req, up) in cases {
            let r = get(req, None).unwrap();
            let mut out = String::with_capacity(128);
            let cap = out.capacity();
            upstream_path(&r, &mut out);
            assert_eq!(out, up);
            assert_eq!(out.capacity(), cap);
        }
    }

    #[test]
    fn rfc3339_conversion_is_right() {
        assert_eq!(
            parse_rfc3339(b"1970-01-01T00:00:00Z", DateBound::Start),
            Some(0)
        );
        assert_eq!(
            parse_rfc3339(b"2000-03-01T00:00:00Z", DateBound::Start),
            Some(951_868_800 * NANOS_PER_SEC)
        );
        assert_eq!(
            parse_rfc3339(b"1969-12-31", DateBound::End),
            Some(-1),
            "end of the day before the epoch"
        );
        assert_eq!(
            parse_rfc3339(b"2024-02-29T12:00:00.5+02:00", DateBound::Start),
            Some((1_709_200_800) * NANOS_PER_SEC + 500_000_000)
        );
    }

    fn substitute(template: &str, r: &Route<'_>) -> String {
        template
            .replace("{provider_id}", r.provider)
            .replace("{account_id}", r.account.unwrap_or(""))
            .replace("{dataset}", r.dataset.map_or("", Dataset::as_str))
    }

    fn segment_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("v1".to_owned()),
            Just("providers".to_owned()),
            Just("accounts".to_owned()),
            Just("balances".to_owned()),
            Just("transactions".to_owned()),
            Just("open-data".to_owned()),
            Just("atms".to_owned()),
            Just("180340012345".to_owned()),
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("".to_owned()),
            Just("%2f".to_owned()),
            Just("%2e%2e".to_owned()),
            "[a-zA-Z0-9._~%/\\\\;:@!$&'()*+,=-]{0,12}",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn match_route_is_total_and_safe(
            segs in proptest::collection::vec(segment_strategy(), 0..8),
            lead in proptest::bool::ANY,
            query in proptest::option::of(any::<String>()),
        ) {
            let mut path = String::new();
            if lead { path.push('/'); }
            path.push_str(&segs.join("/"));
            let res = match_route(&Method::GET, &path, query.as_deref());
            if let Ok(r) = res {
                let lower = path.to_ascii_lowercase();
                prop_assert!(!path.contains(".."));
                prop_assert!(!path.contains("//"));
                prop_assert!(!lower.contains("%2f"));
                prop_assert!(!lower.contains("%2e"));
                prop_assert!(!lower.contains("%5c"));
                prop_assert!(!path.contains('%'));
                prop_assert_eq!(substitute(r.id.template(), &r), path.clone());
                let mut up = String::new();
                upstream_path(&r, &mut up);
                prop_assert!(up.starts_with("/v1/"));
                prop_assert!(!up.contains(".."));
            }
        }

        #[test]
        fn valid_paths_round_trip_and_any_injection_is_refused(
            (path, id) in valid_path(),
            bad in prop_oneof![
                Just(".."), Just("//"), Just("%2f"), Just("%2F"), Just("%2e"), Just("%2E%2E"),
                Just("%5c"), Just("\\"), Just(" "), Just("\u{0}"), Just(";"), Just("é"),
            ],
            at in any::<proptest::sample::Index>(),
        ) {
            let r = match_route(&Method::GET, &path, None);
            prop_assert!(r.is_ok(), "{} refused: {:?}", path, r);
            let r = r.unwrap();
            prop_assert_eq!(r.id, id);
            prop_assert_eq!(substitute(id.template(), &r), path.clone());
            let mut up = String::new();
            upstream_path(&r, &mut up);
            if let Some(a) = r.account {
                prop_assert!(up.contains(a));
            }
            let pos = at.index(path.len() + 1);
            let mut injected = path.clone();
            injected.insert_str(pos, bad);
            prop_assert!(
                match_route(&Method::GET, &injected, None).is_err(),
                "{:?} accepted", injected
            );
        }

        #[test]
        fn arbitrary_strings_never_panic(path in any::<String>(), q in any::<String>()) {
            let _ = match_route(&Method::GET, &path, Some(&q));
            let _ = tx(&q);
        }

        #[test]
        fn valid_dates_round_trip_ordering(a in 0i64..4_000_000_000, b in 0i64..4_000_000_000) {
            let fmt = |t: i64| {
                let days = t.div_euclid(86_400);
                let secs = t.rem_euclid(86_400);
                let (y, m, d) = civil_from_days(days);
                format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
            };
            let q = format!("from={}&to={}", fmt(a), fmt(b));
            prop_assert_eq!(tx(&q).is_ok(), a <= b, "{}", q);
        }
    }

    const SEG_CHARS: &str = "[A-Za-z0-9_~!$&'()*+,=:@-]";

    /// Paths that must be accepted: every route, random valid ids (dots never adjacent).
    fn valid_path() -> impl Strategy<Value = (String, RouteId)> {
        let re = format!("{SEG_CHARS}([.]?{SEG_CHARS}){{0,30}}");
        let id = || proptest::string::string_regex(&re).unwrap();
        (0usize..5, id(), id(), 0usize..4).prop_map(|(route, provider, account, d)| {
            let dataset = Dataset::ALL[d].as_str();
            match route {
                0 => (
                    format!("/v1/providers/{provider}/accounts"),
                    RouteId::Accounts,
                ),
                1 => (
                    format!("/v1/providers/{provider}/accounts/{account}"),
                    RouteId::Account,
                ),
                2 => (
                    format!("/v1/providers/{provider}/accounts/{account}/balances"),
                    RouteId::Balances,
                ),
                3 => (
                    format!("/v1/providers/{provider}/accounts/{account}/transactions"),
                    RouteId::Transactions,
                ),
                _ => (
                    format!("/v1/open-data/{provider}/{dataset}"),
                    RouteId::OpenData,
                ),
            }
        })
    }

    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (if m <= 2 { y + 1 } else { y }, m, d)
    }
}
