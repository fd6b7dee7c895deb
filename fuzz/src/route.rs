//! `policy::route::match_route`, fed exactly as the gateway feeds it: the raw request
//! target as UTF-8, split at the first `?` into path and query.
//!
//! Input: one byte choosing the method, then the request target. What must hold for an
//! accepted request: only `GET`; the provider and account segments use only the
//! characters the module documents; the upstream path (contract §3) is `/v1/…` without
//! `//`, `..`, `%`, `?` or `#`; the query forwarded unchanged to the bank holds only
//! RFC 3986 query characters and well-formed `%XX`, and on `transactions` only the four
//! documented parameters.

use http::Method;
use policy::route::{match_route, upstream_path, RouteId, MAX_ACCOUNT_ID_LEN};

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get",
];

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&m, target)) = data.split_first() else {
        return;
    };
    let Ok(method) = Method::from_bytes(METHODS[usize::from(m) % METHODS.len()].as_bytes()) else {
        return;
    };
    // The gateway refuses a target that is not UTF-8 before routing (`bad_request`).
    let Ok(raw) = std::str::from_utf8(target) else {
        return;
    };
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let Ok(route) = match_route(&method, path, query) else {
        return;
    };
    assert_eq!(method, Method::GET, "only GET is served");
    assert_segment(route.provider);
    if let Some(a) = route.account {
        assert_segment(a);
        assert!(
            a.len() <= MAX_ACCOUNT_ID_LEN,
            "account id longer than the bound"
        );
    }
    let mut up = String::new();
    upstream_path(&route, &mut up);
    assert!(up.starts_with("/v1/"), "upstream path {up:?}");
    for bad in ["//", "..", "%", "?", "#"] {
        assert!(!up.contains(bad), "upstream path {up:?} contains {bad:?}");
    }
    let q = query.unwrap_or("");
    assert_query_bytes(q);
    if route.id == RouteId::Transactions {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            assert!(
                ["from", "to", "limit", "cursor"].contains(&name),
                "transactions accepted parameter {name:?}"
            );
        }
    } else if route.id != RouteId::OpenData {
        assert!(
            q.is_empty(),
            "a query on an account route was accepted: {q:?}"
        );
    }
}

/// A routed segment: non-empty, not `.`, no `..`, only the documented characters.
fn assert_segment(s: &str) {
    assert!(
        !s.is_empty() && s != "." && !s.contains(".."),
        "segment {s:?}"
    );
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&b)),
        "segment {s:?} has a character outside the documented set"
    );
}

/// What reaches the bank unchanged: RFC 3986 query characters and `%` with two hex digits.
fn assert_query_bytes(q: &str) {
    let b = q.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let ok = b
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            assert!(ok, "forwarded query {q:?} has a malformed percent-escape");
            i += 3;
            continue;
        }
        assert!(
            c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?".contains(&c),
            "forwarded query {q:?} has byte {c:#04x}"
        );
        i += 1;
    }
}
