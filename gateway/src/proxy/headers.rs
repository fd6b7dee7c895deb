//! Header policy: what the hub sends a bank (an allow-list: the request is rebuilt with its
//! path and `Host`, the few client headers the contract forwards and the `x-hub-*`
//! identity of the admitted request) and what it lets through to API users (an
//! allow-list), plus the interaction id and the cached `Date` value.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader, StaticHeaderName};
use pingora::prelude::*;
use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use consent_cache::Permissions;
use policy::limits::{Limited, RateInfo};

use super::ctx::Admitted;
use crate::upstream::Target;

pub(super) static X_FAPI_INTERACTION_ID: StaticHeaderName =
    StaticHeaderName::new("x-fapi-interaction-id");
static X_FAPI_CUSTOMER_IP: StaticHeaderName = StaticHeaderName::new("x-fapi-customer-ip-address");
static X_HUB_API_USER: StaticHeaderName = StaticHeaderName::new("x-hub-api-user");
static X_HUB_CONSENT_ID: StaticHeaderName = StaticHeaderName::new("x-hub-consent-id");
static X_HUB_CUSTOMER: StaticHeaderName = StaticHeaderName::new("x-hub-customer");
static X_HUB_PERMISSIONS: StaticHeaderName = StaticHeaderName::new("x-hub-permissions");
static X_HUB_ACCOUNTS: StaticHeaderName = StaticHeaderName::new("x-hub-accounts");
static RATELIMIT_POLICY: StaticHeaderName = StaticHeaderName::new("ratelimit-policy");
static RATELIMIT: StaticHeaderName = StaticHeaderName::new("ratelimit");

/// The client headers a bank receives as sent (contract §3), unless a `Connection` field
/// nominates them as hop-by-hop. Every other client header is dropped: `Authorization`,
/// client `x-hub-*` and look-alikes, hop-by-hop and forwarding headers, method and URL
/// overrides, cookies, anything custom. The hub adds the rest itself: `Host`, the
/// interaction id, the `x-hub-*` context and a customer IP that is one (see
/// [`customer_ip`]).
static FORWARDED: [&StaticHeaderName; FORWARDED_COUNT] = [&ACCEPT, &ACCEPT_LANGUAGE];
const FORWARDED_COUNT: usize = 2;
static ACCEPT: StaticHeaderName = StaticHeaderName::new("accept");
static ACCEPT_LANGUAGE: StaticHeaderName = StaticHeaderName::new("accept-language");
/// Bit of the customer IP in [`nominated`]'s answer (after those of [`FORWARDED`]).
const CUSTOMER_IP_BIT: u8 = 1 << FORWARDED_COUNT;
/// Room in the rebuilt request for `Host`, `Content-Length`, the interaction id, six
/// `x-hub-*`, the customer IP and a few `Accept`/`Accept-Language` fields, so that no
/// insertion grows the map.
const UPSTREAM_HEADERS: usize = 16;

/// Response headers a provider may pass to API users; everything else (server software,
/// internal host names, cookies, redirects) is dropped: deny by default.
const PASS_DOWNSTREAM: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "transfer-encoding",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "vary",
    "retry-after",
];

thread_local! {
    static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
}

/// The `Date` header value, formatted at most once per second per thread.
pub(super) fn date_header() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if let Ok(v) = HeaderValue::from_str(&s) {
                *d = (secs, v);
            }
        }
        d.1.clone()
    })
}

/// Echoes the caller's interaction id if it is a UUID (canonical 36-char form), else makes one.
pub(super) fn interaction_id(given: Option<&HeaderValue>) -> [u8; 36] {
    let mut out = [0u8; 36];
    if let Some(v) = given {
        let b = v.as_bytes();
        if b.len() == 36 && uuid::Uuid::try_parse_ascii(b).is_ok() {
            out.copy_from_slice(b);
            return out;
        }
    }
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut out);
    out
}

/// The interaction id as text (it is ASCII by construction).
pub(super) fn iid_str(iid: &[u8; 36]) -> &str {
    std::str::from_utf8(iid).unwrap_or("00000000-0000-0000-0000-000000000000")
}

/// Replaces the request pingora would send the bank with one built from nothing (deny by
/// default): `client`'s method at the chosen base URL (its path prefix, per target, as a
/// retry may pick another one, before the route's upstream path) with its `Host`, and of
/// the client's headers only the allow-listed ones. A body read and dropped before
/// (`body_discarded`) travels as `Content-Length: 0`: without framing pingora would send
/// it chunked, and the bank gets no body either way.
pub(super) fn rebuild_upstream(
    upstream: &mut RequestHeader,
    client: &RequestHeader,
    target: &Target,
    path: &str,
    body_discarded: bool,
) -> Result<()> {
    let method = client.method.clone();
    let mut fresh = if target.prefix.is_empty() {
        RequestHeader::build_no_case(method, path.as_bytes(), Some(UPSTREAM_HEADERS))?
    } else {
        let mut full = Vec::with_capacity(target.prefix.len() + path.len());
        full.extend_from_slice(target.prefix.as_bytes());
        full.extend_from_slice(path.as_bytes());
        RequestHeader::build_no_case(method, &full, Some(UPSTREAM_HEADERS))?
    };
    // What pingora chose for the connection to the bank (HTTP/1.1 or 2), not the client's.
    fresh.set_version(upstream.version);
    if let Some(end) = upstream.send_end_stream() {
        fresh.set_send_end_stream(end);
    }
    fresh.insert_header(header::HOST, target.authority.as_str())?;
    if body_discarded {
        fresh.insert_header(header::CONTENT_LENGTH, "0")?;
    }
    forward_allowed(&client.headers, &mut fresh)?;
    *upstream = fresh;
    Ok(())
}

/// Copies the allow-listed client headers (see [`FORWARDED`]) that no `Connection` field
/// nominates.
fn forward_allowed(client: &HeaderMap, upstream: &mut RequestHeader) -> Result<()> {
    let hop_by_hop = nominated(client);
    for (i, name) in FORWARDED.iter().enumerate() {
        if hop_by_hop & (1 << i) != 0 {
            continue;
        }
        let mut values = client.get_all(name.name()).iter();
        if let Some(first) = values.next() {
            // The usual single field goes in under its prepared name (no copy of the name).
            upstream.insert_static_header(name, first.clone())?;
            for more in values {
                upstream.append_header(name.name(), more.clone())?;
            }
        }
    }
    if hop_by_hop & CUSTOMER_IP_BIT == 0 {
        if let Some(ip) = customer_ip(client) {
            upstream.insert_static_header(&X_FAPI_CUSTOMER_IP, ip)?;
        }
    }
    Ok(())
}

/// Which forwardable headers (bits in [`FORWARDED`] order, then [`CUSTOMER_IP_BIT`]) a
/// `Connection` field names: hop-by-hop by nomination (RFC 9110 §7.6.1), so never
/// forwarded. Every `Connection` field counts, not only the first.
fn nominated(client: &HeaderMap) -> u8 {
    let mut bits = 0;
    for field in client.get_all(header::CONNECTION) {
        for token in field.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            for (i, name) in FORWARDED.iter().enumerate() {
                if token.eq_ignore_ascii_case(name.name().as_str().as_bytes()) {
                    bits |= 1 << i;
                }
            }
            if token.eq_ignore_ascii_case(X_FAPI_CUSTOMER_IP.name().as_str().as_bytes()) {
                bits |= CUSTOMER_IP_BIT;
            }
        }
    }
    bits
}

/// The customer IP to forward (contract §7): the first `x-fapi-customer-ip-address` field,
/// trimmed, when every such field is one IP address. One that is not (a list, a name,
/// garbage) drops them all, so a bank never has to choose between claims.
fn customer_ip(client: &HeaderMap) -> Option<HeaderValue> {
    let mut first = None;
    for value in client.get_all(X_FAPI_CUSTOMER_IP.name()) {
        let text = value.to_str().ok()?;
        let ip = text.trim();
        ip.parse::<IpAddr>().ok()?;
        if first.is_none() {
            first = Some(if ip.len() == text.len() {
                value.clone()
            } else {
                HeaderValue::from_str(ip).ok()?
            });
        }
    }
    first
}

/// Tells the bank who asks and under which consent (contract §3): the interaction id, the
/// API user and, on consent routes, the consent id, customer, what may be served and
/// which accounts.
pub(super) fn forward_identity(
    upstream: &mut RequestHeader,
    iid: &[u8; 36],
    admitted: &Admitted,
) -> Result<()> {
    upstream.insert_static_header(&X_FAPI_INTERACTION_ID, iid_str(iid))?;
    let user = admitted.api_user.digits();
    upstream.insert_static_header(
        &X_HUB_API_USER,
        HeaderValue::from_bytes(&user)
            .map_err(|_| Error::explain(ErrorType::InternalError, "api user header"))?,
    )?;
    let Some(c) = &admitted.consent else {
        return Ok(());
    };
    upstream.insert_static_header(&X_HUB_CONSENT_ID, c.id())?;
    upstream.insert_static_header(&X_HUB_CUSTOMER, c.customer())?;
    // What the bank may serve: granted by the consent and by the token's scope.
    let granted = match &admitted.token {
        Some(t) => Permissions::from_bits(c.permissions().bits() & t.scope.bits())
            .unwrap_or(Permissions::EMPTY),
        None => c.permissions(),
    };
    upstream.insert_static_header(&X_HUB_PERMISSIONS, granted.comma_list())?;
    if let Some(accounts) = c.accounts() {
        // Extension to contract §3: lets the bank filter the account list of a consent
        // restricted to some accounts.
        let mut list = String::new();
        for (i, a) in accounts.enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(a);
        }
        upstream.insert_static_header(&X_HUB_ACCOUNTS, list)?;
    }
    Ok(())
}

/// Whether a bank's answer is content-encoded (any coding but `identity`): the live checks
/// do not decode it.
pub(super) fn is_encoded(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// Keeps only the allow-listed headers of a bank's answer and adds the hub's own: the
/// interaction id, `Date`, `no-store` on customer data (contract §3) and the rate limits.
pub(super) fn filter_downstream(
    resp: &mut ResponseHeader,
    iid: &[u8; 36],
    customer_data: bool,
    rate: Option<&RateInfo>,
) -> Result<()> {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in resp.headers.keys() {
        if !PASS_DOWNSTREAM.contains(&name.as_str()) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        resp.remove_header(name);
    }
    resp.insert_static_header(&X_FAPI_INTERACTION_ID, iid_str(iid))?;
    resp.insert_header(header::DATE, date_header())?;
    if customer_data {
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    }
    if let Some(rate) = rate {
        let (mut policy, mut state) = (String::with_capacity(64), String::with_capacity(64));
        rate.write_headers(&mut policy, &mut state);
        resp.insert_static_header(&RATELIMIT_POLICY, policy)?;
        resp.insert_static_header(&RATELIMIT, state)?;
    }
    Ok(())
}

/// The `Retry-After` and rate-limit headers of a `429`.
pub(super) fn limited_headers(resp: &mut ResponseHeader, limited: &Limited) -> Result<()> {
    let (mut policy, mut state) = (String::new(), String::new());
    limited.write_headers(&mut policy, &mut state);
    resp.insert_header(header::RETRY_AFTER, limited.retry_after_secs)?;
    resp.insert_static_header(&RATELIMIT_POLICY, policy)?;
    resp.insert_static_header(&RATELIMIT, state)?;
    Ok(())
}
