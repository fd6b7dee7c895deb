//! Header policy: what the hub sends a bank (its path and `Host`, the `x-hub-*` identity
//! of the admitted request, nothing hop-by-hop or client-forged) and what it lets through
//! to API users (an allow-list), plus the interaction id and the cached `Date` value.

use http::header::{self, HeaderName, HeaderValue};
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
const X_FAPI_CUSTOMER_IP: HeaderName = HeaderName::from_static("x-fapi-customer-ip-address");
static X_HUB_API_USER: StaticHeaderName = StaticHeaderName::new("x-hub-api-user");
static X_HUB_CONSENT_ID: StaticHeaderName = StaticHeaderName::new("x-hub-consent-id");
static X_HUB_CUSTOMER: StaticHeaderName = StaticHeaderName::new("x-hub-customer");
static X_HUB_PERMISSIONS: StaticHeaderName = StaticHeaderName::new("x-hub-permissions");
static X_HUB_ACCOUNTS: StaticHeaderName = StaticHeaderName::new("x-hub-accounts");
static RATELIMIT_POLICY: StaticHeaderName = StaticHeaderName::new("ratelimit-policy");
static RATELIMIT: StaticHeaderName = StaticHeaderName::new("ratelimit");

/// Hop-by-hop and proxy-control headers never forwarded upstream (RFC 9110 §7.6.1), plus
/// headers whose client-supplied values would mislead a bank.
const STRIP_UPSTREAM: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "cookie",
];

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

/// Points the upstream request at the chosen base URL: its path prefix (per target, as a
/// retry may pick another one) before the route's upstream path, and its authority.
pub(super) fn set_target(upstream: &mut RequestHeader, target: &Target, path: &str) -> Result<()> {
    if target.prefix.is_empty() {
        upstream.set_raw_path(path.as_bytes())?;
    } else {
        let mut full = Vec::with_capacity(target.prefix.len() + path.len());
        full.extend_from_slice(target.prefix.as_bytes());
        full.extend_from_slice(path.as_bytes());
        upstream.set_raw_path(&full)?;
    }
    upstream.insert_header(header::HOST, target.authority.as_str())?;
    Ok(())
}

/// Strips hop-by-hop headers, headers named by `Connection`, every client `x-hub-*`, the
/// body framing of a body already read and dropped, and a customer IP that is not an IP.
pub(super) fn strip_upstream(upstream: &mut RequestHeader, body_discarded: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    if let Some(conn) = upstream.headers.get(header::CONNECTION) {
        if let Ok(s) = conn.to_str() {
            for name in s.split(',') {
                if let Ok(h) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    doomed.push(h);
                }
            }
        }
    }
    for name in upstream.headers.keys() {
        let n = name.as_str();
        if n.starts_with("x-hub-") || STRIP_UPSTREAM.contains(&n) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        upstream.remove_header(name);
    }
    if body_discarded {
        // The body was read and dropped in `request_filter`; its framing must not travel.
        upstream.remove_header(&header::CONTENT_LENGTH);
        upstream.remove_header(&header::TRANSFER_ENCODING);
    }
    let ip_ok = upstream
        .headers
        .get(X_FAPI_CUSTOMER_IP)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s.trim().parse::<IpAddr>().is_ok());
    if !ip_ok {
        upstream.remove_header(&X_FAPI_CUSTOMER_IP);
    }
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

/// Keeps only the allow-listed headers of a bank's answer and adds the hub's own: the
/// interaction id, `Date`, `no-store` on customer data (contract §3) and the rate limits.
pub(super) fn filter_downstream(
    resp: &mut ResponseHeader,
    iid: &[u8; 36],
    customer_data: bool,
    rate: &RateInfo,
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
    let (mut policy, mut state) = (String::with_capacity(64), String::with_capacity(64));
    rate.write_headers(&mut policy, &mut state);
    resp.insert_static_header(&RATELIMIT_POLICY, policy)?;
    resp.insert_static_header(&RATELIMIT, state)?;
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
