//! In-process tests of the request policy at the edges: the upstream request rebuilt from
//! an allow-list, the `WWW-Authenticate` shapes of a `401`, the budget of failed token
//! verifications, and a refused request whose body is never drained.

use std::collections::BTreeSet;
use std::time::Instant;

use super::*;

/// The upstream request `upstream_request_filter` makes of an admitted `raw` request.
async fn upstream_of(t: &TestHub, hub: &Hub, raw: &[u8]) -> RequestHeader {
    let (mut s, mut ctx, _peer, _client) = admitted(t, hub, raw).await;
    let mut up: RequestHeader = s.req_header().clone();
    hub.upstream_request_filter(&mut s, &mut up, &mut ctx)
        .await
        .expect("upstream request");
    up
}

fn names(up: &RequestHeader) -> BTreeSet<String> {
    up.headers.keys().map(|n| n.as_str().to_owned()).collect()
}

fn values<'a>(up: &'a RequestHeader, name: &str) -> Vec<&'a str> {
    up.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// What a bank receives on a consent route whatever the client sends: the hub's own
/// headers and the allow-listed client ones, nothing else.
const CONSENT_ROUTE_HEADERS: [&str; 7] = [
    "host",
    "x-fapi-interaction-id",
    "x-hub-api-user",
    "x-hub-consent-id",
    "x-hub-customer",
    "x-hub-permissions",
    "x-hub-accounts",
];

#[tokio::test]
async fn the_bank_gets_the_allow_listed_headers_and_nothing_else() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let extra = format!(
        "{}X-HTTP-Method-Override: DELETE\r\nX-Method-Override: PUT\r\n\
         X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Forwarded-Prefix: /x\r\n\
         x-hub_customer: 111111111111\r\nX-Hub-Customer: 111111111111\r\nX-Custom: 1\r\n\
         User-Agent: t\r\nAccept-Encoding: gzip\r\nForwarded: for=10.0.0.1\r\nVia: 1.1 p\r\n\
         X-Real-IP: 10.0.0.2\r\nProxy-Authorization: Basic x\r\nCookie: a=b\r\nOrigin: o\r\n\
         Referer: r\r\nIf-None-Match: \"e\"\r\nContent-Type: text/plain\r\nExpect: nothing\r\n\
         Accept: application/json\r\nAccept: text/plain\r\nAccept-Language: kk, ru;q=0.8\r\n\
         x-fapi-customer-ip-address: 192.0.2.7\r\n",
        bearer(&t)
    );
    let up = upstream_of(&t, &hub, &get(&accounts(), &extra)).await;
    let mut expected: BTreeSet<String> = CONSENT_ROUTE_HEADERS.map(String::from).into();
    for n in ["accept", "accept-language", "x-fapi-customer-ip-address"] {
        expected.insert(n.to_owned());
    }
    assert_eq!(names(&up), expected);
    assert_eq!(values(&up, "accept"), ["application/json", "text/plain"]);
    assert_eq!(values(&up, "accept-language"), ["kk, ru;q=0.8"]);
    assert_eq!(values(&up, "x-hub-customer"), [CUSTOMER]);
    assert_eq!(values(&up, "x-fapi-customer-ip-address"), ["192.0.2.7"]);
    assert_eq!(up.method, http::Method::GET);
}

#[tokio::test]
async fn headers_named_by_any_connection_field_are_dropped() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let extra = format!(
        "{}Connection: keep-alive\r\nConnection: Accept-Language , X-FAPI-Customer-IP-Address\r\n\
         Accept: application/json\r\nAccept-Language: kk\r\n\
         x-fapi-customer-ip-address: 192.0.2.7\r\n",
        bearer(&t)
    );
    let up = upstream_of(&t, &hub, &get(&accounts(), &extra)).await;
    let mut expected: BTreeSet<String> = CONSENT_ROUTE_HEADERS.map(String::from).into();
    expected.insert("accept".to_owned());
    assert_eq!(names(&up), expected);
}

#[tokio::test]
async fn repeated_customer_ips_are_forwarded_only_when_all_are_addresses() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let ip = "x-fapi-customer-ip-address";
    for (fields, forwarded) in [
        (&["192.0.2.7", "2001:db8::1"][..], Some("192.0.2.7")),
        (&["2001:db8::1", "192.0.2.7"][..], Some("2001:db8::1")),
        (&["192.0.2.7", "not-an-ip"][..], None),
        (&["not-an-ip", "192.0.2.7"][..], None),
        (&["192.0.2.7, 192.0.2.8"][..], None),
        (&["192.0.2.7", ""][..], None),
        (&["192.0.2.7:443"][..], None),
    ] {
        let fields: String = fields.iter().map(|f| format!("{ip}: {f}\r\n")).collect();
        let extra = format!("{}{fields}", bearer(&t));
        let up = upstream_of(&t, &hub, &get(&accounts(), &extra)).await;
        assert_eq!(
            values(&up, ip),
            forwarded.into_iter().collect::<Vec<_>>(),
            "{extra}"
        );
    }
}

#[tokio::test]
async fn a_dropped_body_travels_as_an_empty_one() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let raw = [
        get(
            &open_data(),
            "Content-Length: 5\r\nContent-Type: text/plain\r\n",
        ),
        b"hello".to_vec(),
    ]
    .concat();
    let up = upstream_of(&t, &hub, &raw).await;
    let expected: BTreeSet<String> = [
        "host",
        "content-length",
        "x-fapi-interaction-id",
        "x-hub-api-user",
    ]
    .map(String::from)
    .into();
    assert_eq!(names(&up), expected);
    assert_eq!(values(&up, "content-length"), ["0"]);
}

/// A `401` answer to `extra` on a consent route.
async fn challenge(t: &TestHub, hub: &Hub, extra: &str) -> Option<String> {
    let (answered, s, _ctx, client) = filtered(hub, &get(&accounts(), extra), Some(t.cert)).await;
    assert!(answered);
    let a = received(s, client).await;
    assert_eq!(a.status, 401, "{extra}");
    assert_eq!(a.json()["code"].as_str(), Some("invalid_token"));
    a.header("www-authenticate").map(str::to_owned)
}

#[tokio::test]
async fn a_request_without_credentials_gets_a_bare_bearer_challenge() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    assert_eq!(challenge(&t, &hub, "").await.as_deref(), Some("Bearer"));
    // A token in a cookie is no credential either.
    let cookie = format!("Cookie: access_token={}\r\n", t.token);
    assert_eq!(
        challenge(&t, &hub, &cookie).await.as_deref(),
        Some("Bearer")
    );
    let invalid = Some("Bearer error=\"invalid_token\"");
    for extra in [
        "Authorization: Bearer nope\r\n".to_owned(),
        "Authorization: Basic dTpw\r\n".to_owned(),
        "Authorization: \r\n".to_owned(),
        format!("{0}{0}", bearer(&t)),
    ] {
        assert_eq!(
            challenge(&t, &hub, &extra).await.as_deref(),
            invalid,
            "{extra}"
        );
    }
}

/// `t`'s token with its signature changed: every check before the signature passes.
fn forged(t: &TestHub) -> String {
    let (signed, sig) = t.token.rsplit_once('.').expect("a JWS");
    let mut sig = sig.as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    format!("{signed}.{}", String::from_utf8(sig).expect("ASCII"))
}

#[tokio::test]
async fn failed_verifications_past_the_connection_budget_are_rate_limited() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let budget = crate::config::defaults::FAILED_VERIFICATIONS_PER_CONNECTION;
    // Verified (and cached) before the flood.
    let valid = get(&accounts(), &bearer(&t));
    assert!(!filtered(&hub, &valid, Some(t.cert)).await.0);
    let bad = get(
        &accounts(),
        &format!("Authorization: Bearer {}\r\n", forged(&t)),
    );
    let start = Instant::now();
    let mut invalid = 0u32;
    let (s, ctx, client) = loop {
        let (answered, s, ctx, client) = filtered(&hub, &bad, Some(t.cert)).await;
        assert!(answered);
        match refused(&ctx).map(|r| r.code) {
            Some(Code::InvalidToken) => invalid += 1,
            Some(Code::RateLimited) => break (s, ctx, client),
            other => panic!("unexpected {other:?}"),
        }
        assert!(invalid <= 4 * budget, "never rate limited");
    };
    // The budget refills at `budget` a second: what the loop's time let through, no more.
    let refilled = (start.elapsed().as_secs_f64() * f64::from(budget)).ceil() as u32;
    assert!(
        (budget..=budget + refilled).contains(&invalid),
        "{invalid} failed verifications before the 429"
    );
    let r = refusal(&ctx, Code::RateLimited, (bin(USER), bin(BANK)));
    let limited = r.limited.expect("which budget");
    assert_eq!(
        limited.kind,
        policy::limits::LimitKind::TokenFailuresConnection
    );
    assert!(r.token.is_none());
    let a = received(s, client).await;
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(a
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
    assert!(a
        .header("ratelimit-policy")
        .is_some_and(|p| p.contains("token-failures-connection")));
    let refusals = &t.state.metrics.token_budget_refusals;
    assert_eq!(
        refusals
            .with_label_values(&["token-failures-connection"])
            .get(),
        1
    );
    // The token verified before is a cache hit: never throttled.
    assert!(!filtered(&hub, &valid, Some(t.cert)).await.0);
}

#[tokio::test]
async fn a_refused_request_with_a_body_closes_the_connection_unread() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    for (extra, closes) in [
        ("Content-Length: 100\r\n", true),
        ("Transfer-Encoding: chunked\r\n", true),
        ("", false),
    ] {
        // Only the header block is sent: the announced body never comes.
        let (mut s, client) = session(&get(&accounts(), extra), Some(t.cert)).await;
        // Whatever pingora's default, the hub itself does not keep such a connection.
        s.set_close_on_response_before_downstream_finish(false);
        let mut ctx = hub.new_ctx();
        assert!(hub.request_filter(&mut s, &mut ctx).await.expect("filter"));
        assert_eq!(s.get_keepalive().is_none(), closes, "{extra:?}");
        let a = received(s, client).await;
        assert_eq!(a.status, 401);
        let connection = if closes { "close" } else { "keep-alive" };
        assert_eq!(a.header("connection"), Some(connection), "{extra:?}");
    }
}
