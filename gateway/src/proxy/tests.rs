//! In-process tests of the `ProxyHttp` phases: real pingora sessions over in-memory
//! streams (see `testkit`), the hub's phases called one by one, and assertions on what
//! they write, return and leave in the request's outcome.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::REQUEST_HEADER_TOO_LARGE;
use pingora::proxy::{ProxyHttp, Session};
use std::time::Duration;
use tokio::io::DuplexStream;

use consent_cache::Bin;
use policy::code::Code;
use policy::route::RouteId;

use super::ctx::{Ctx, Outcome, Refused};
use super::Hub;
use crate::testkit::{
    connect, received, session, test_hub, TestHub, ACCOUNT, BANK, CONSENT, CUSTOMER, MAX_BODY,
    OPEN_DATA_BURST, USER,
};

mod hardening;

const IID: &str = "0f3c1d2e-4b5a-4c6d-8e7f-9a0b1c2d3e4f";

fn bin(s: &str) -> Option<Bin> {
    Bin::parse(s).ok()
}

/// A `GET` of `path` with `extra` header lines (each ending in CRLF) and the interaction id.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: hub.local.test\r\nx-fapi-interaction-id: {IID}\r\n{extra}\r\n")
        .into_bytes()
}

fn open_data() -> String {
    format!("/v1/open-data/{BANK}/atms")
}

fn accounts() -> String {
    format!("/v1/providers/{BANK}/accounts")
}

fn bearer(t: &TestHub) -> String {
    format!("Authorization: Bearer {}\r\n", t.token)
}

/// Runs `request_filter` on `raw` from a connection presenting `cert`.
async fn filtered(
    hub: &Hub,
    raw: &[u8],
    cert: Option<[u8; 32]>,
) -> (bool, Session, Ctx, DuplexStream) {
    let (mut s, client) = session(raw, cert).await;
    let mut ctx = hub.new_ctx();
    let answered = hub
        .request_filter(&mut s, &mut ctx)
        .await
        .expect("request_filter");
    (answered, s, ctx, client)
}

/// An admitted request of USER with its peer chosen (`upstream_peer` ran).
async fn admitted(
    t: &TestHub,
    hub: &Hub,
    raw: &[u8],
) -> (Session, Ctx, Box<HttpPeer>, DuplexStream) {
    let (answered, mut s, mut ctx, client) = filtered(hub, raw, Some(t.cert)).await;
    assert!(!answered, "refused: {:?}", refused(&ctx));
    let peer = hub.upstream_peer(&mut s, &mut ctx).await.expect("a peer");
    (s, ctx, peer, client)
}

fn refused(ctx: &Ctx) -> Option<&Refused> {
    match &ctx.outcome {
        Outcome::Refused(r) => Some(r),
        _ => None,
    }
}

/// The refusal in `ctx`, which must answer `code` and have identified `who` (api user,
/// provider).
fn refusal(ctx: &Ctx, code: Code, who: (Option<Bin>, Option<Bin>)) -> &Refused {
    let r = refused(ctx).expect("refused");
    assert_eq!((r.code, r.api_user, r.provider), (code, who.0, who.1));
    r
}

fn requests(t: &TestHub, route: &str, code: &str, provider: &str) -> u64 {
    t.state
        .metrics
        .requests
        .with_label_values(&[route, code, provider])
        .get()
}

#[tokio::test]
async fn a_path_no_route_has_is_a_problem_with_the_interaction_id() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let (answered, s, mut ctx, client) =
        filtered(&hub, &get("/v1/nowhere", ""), Some(t.cert)).await;
    assert!(answered);
    assert_eq!(ctx.route, None);
    assert_eq!(ctx.answered(), Some(Code::RouteNotFound));
    let r = refusal(&ctx, Code::RouteNotFound, (None, None));
    assert!(r.token.is_none());
    let record = ctx.audit_record(None, Duration::from_micros(7));
    assert_eq!(
        (record.route, record.code, record.status),
        ("-", "route_not_found", 404)
    );
    assert_eq!((record.latency_us, record.upstream_status), (7, 0));
    let a = received(s, client).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.header("x-fapi-interaction-id"), Some(IID));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert!(a.header("date").is_some());
    let body = a.json();
    assert_eq!(
        (body["code"].as_str(), body["status"].as_u64()),
        (Some("route_not_found"), Some(404))
    );
    assert_eq!(body["interaction_id"].as_str(), Some(IID));
}

#[tokio::test]
async fn a_made_up_interaction_id_is_replaced_and_a_wrong_method_names_the_allowed_one() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: h\r\nx-fapi-interaction-id: not-a-uuid\r\nContent-Length: 0\r\n\r\n",
        open_data()
    );
    let (answered, s, _ctx, client) = filtered(&hub, raw.as_bytes(), Some(t.cert)).await;
    assert!(answered);
    let a = received(s, client).await;
    assert_eq!((a.status, a.header("allow")), (405, Some("GET")));
    let iid = a
        .header("x-fapi-interaction-id")
        .expect("an interaction id");
    assert!(
        iid != "not-a-uuid" && uuid::Uuid::try_parse(iid).is_ok(),
        "{iid}"
    );
}

#[tokio::test]
async fn a_connection_without_a_certificate_digest_is_participant_unknown() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let (answered, s, ctx, client) = filtered(&hub, &get(&open_data(), ""), None).await;
    assert!(answered);
    assert_eq!(t.state.metrics.no_tls_digest.get(), 1);
    assert_eq!(ctx.route, Some(RouteId::OpenData));
    // Nobody is identified, but the path named a registered provider.
    refusal(&ctx, Code::ParticipantUnknown, (None, bin(BANK)));
    let a = received(s, client).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["code"].as_str(), Some("participant_unknown"));
}

#[tokio::test]
async fn refusals_keep_what_the_rows_before_them_established() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    // Row 4: a token that does not verify; the participant is known, the token is not.
    let raw = get(&accounts(), "Authorization: Bearer nope\r\n");
    let (answered, s, ctx, client) = filtered(&hub, &raw, Some(t.cert)).await;
    assert!(answered);
    let r = refusal(&ctx, Code::InvalidToken, (bin(USER), bin(BANK)));
    assert!(r.token.is_none());
    let a = received(s, client).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    // Row 14: past the token checks, the verified token is journalled.
    let path = format!("/v1/providers/{BANK}/accounts/KZ999/balances");
    let (_, _s, mut ctx, _c) = filtered(&hub, &get(&path, &bearer(&t)), Some(t.cert)).await;
    let r = refusal(&ctx, Code::AccountNotInConsent, (bin(USER), bin(BANK)));
    assert_eq!(r.token.as_ref().map(|t| &*t.consent_id), Some(CONSENT));
    let record = ctx.audit_record(None, Duration::ZERO);
    assert_eq!(
        (record.code, record.status),
        ("account_not_in_consent", 403)
    );
    assert_eq!((record.api_user, record.provider), (bin(USER), bin(BANK)));
    assert_eq!(record.route, RouteId::Balances.template());
    assert!(record.token.is_some());
}

#[tokio::test]
async fn a_consent_request_is_admitted_with_what_the_upstream_phases_need() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let path = format!("/v1/providers/{BANK}/accounts/{ACCOUNT}/balances");
    let (s, ctx, _peer, _client) = admitted(&t, &hub, &get(&path, &bearer(&t))).await;
    let Outcome::Admitted(a) = &ctx.outcome else {
        panic!("not admitted");
    };
    assert_eq!((Some(a.api_user), Some(a.provider)), (bin(USER), bin(BANK)));
    assert_eq!(a.consent.as_ref().map(|c| c.id()), Some(CONSENT));
    assert_eq!(a.upstream_path, format!("/v1/accounts/{ACCOUNT}/balances"));
    assert!(a.call.target.is_some() && a.call.start.is_some());
    assert!(!a.body_discarded);
    assert_eq!(ctx.answered(), None);
    assert!(s.as_downstream().response_written().is_none());
}

#[tokio::test]
async fn the_upstream_request_carries_the_hub_headers_and_nothing_hop_by_hop() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let extra = format!(
        "{}Connection: keep-alive, x-private\r\nx-private: 1\r\nx-hub-api-user: 999999999999\r\n\
         x-hub-evil: 1\r\nCookie: a=b\r\nX-Forwarded-For: 10.0.0.1\r\nTE: trailers\r\n\
         x-fapi-customer-ip-address: not-an-ip\r\nAccept: application/json\r\n",
        bearer(&t)
    );
    let (mut s, mut ctx, _peer, _client) = admitted(&t, &hub, &get(&accounts(), &extra)).await;
    let mut up: RequestHeader = s.req_header().clone();
    hub.upstream_request_filter(&mut s, &mut up, &mut ctx)
        .await
        .expect("upstream request");
    let h = |name: &str| up.headers.get(name).and_then(|v| v.to_str().ok());
    for gone in [
        "authorization",
        "connection",
        "x-private",
        "x-hub-evil",
        "cookie",
        "x-forwarded-for",
        "te",
        "x-fapi-customer-ip-address",
    ] {
        assert_eq!(h(gone), None, "{gone} forwarded");
    }
    assert_eq!(h("x-hub-api-user"), Some(USER));
    assert_eq!(h("x-hub-consent-id"), Some(CONSENT));
    assert_eq!(h("x-hub-customer"), Some(CUSTOMER));
    assert_eq!(h("x-hub-permissions"), Some("accounts,balances"));
    assert_eq!(h("x-hub-accounts"), Some(ACCOUNT));
    assert_eq!(h("x-fapi-interaction-id"), Some(IID));
    assert_eq!(h("accept"), Some("application/json"));
    let sent = (
        h("host"),
        String::from_utf8_lossy(up.raw_path()).into_owned(),
    );
    assert!(
        sent == (Some("127.0.0.1:9"), "/v1/accounts".into())
            || sent == (Some("127.0.0.1:10"), "/api/v1/accounts".into()),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_valid_customer_ip_and_an_open_data_request_travel_without_consent_headers() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let head = "x-fapi-customer-ip-address: 192.0.2.7\r\nContent-Length: 5\r\n";
    let raw = [get(&open_data(), head), b"hello".to_vec()].concat();
    let (mut s, mut ctx, _peer, _client) = admitted(&t, &hub, &raw).await;
    let Outcome::Admitted(a) = &ctx.outcome else {
        panic!("not admitted");
    };
    assert!(a.body_discarded, "the body was not drained");
    let mut up: RequestHeader = s.req_header().clone();
    hub.upstream_request_filter(&mut s, &mut up, &mut ctx)
        .await
        .expect("upstream request");
    let h = |name: &str| up.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(h("x-fapi-customer-ip-address"), Some("192.0.2.7"));
    // A body read and dropped is announced empty: without framing pingora would send it
    // chunked.
    assert_eq!(
        (h("content-length"), h("transfer-encoding")),
        (Some("0"), None)
    );
    assert_eq!(h("x-hub-api-user"), Some(USER));
    assert_eq!(
        (h("x-hub-consent-id"), h("x-hub-permissions")),
        (None, None)
    );
}

#[tokio::test]
async fn a_downstream_response_keeps_only_allow_listed_headers() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let (mut s, mut ctx, _peer, _client) = admitted(&t, &hub, &get(&accounts(), &bearer(&t))).await;
    let mut resp = ResponseHeader::build(200, None).expect("head");
    for (k, v) in [
        ("server", "bank/1.0"),
        ("set-cookie", "s=1"),
        ("location", "https://internal.bank/"),
        ("x-internal-host", "db7"),
        ("content-type", "application/json"),
        ("etag", "\"v1\""),
        ("content-length", "2"),
    ] {
        resp.insert_header(k, v).expect("header");
    }
    hub.upstream_response_filter(&mut s, &mut resp, &mut ctx)
        .await
        .expect("response filter");
    let h = |name: &str| resp.headers.get(name).and_then(|v| v.to_str().ok());
    for gone in ["server", "set-cookie", "location", "x-internal-host"] {
        assert_eq!(h(gone), None, "{gone} passed");
    }
    assert_eq!(
        (h("content-type"), h("etag")),
        (Some("application/json"), Some("\"v1\""))
    );
    assert_eq!(h("x-fapi-interaction-id"), Some(IID));
    assert_eq!(h("cache-control"), Some("no-store"));
    assert!(h("date").is_some() && h("ratelimit-policy").is_some() && h("ratelimit").is_some());
    let written = Some(resp.status.as_u16());
    let record = ctx.audit_record(written, Duration::from_micros(50));
    assert_eq!(
        (record.code, record.status, record.upstream_status),
        ("ok", 200, 200)
    );
    assert_eq!((record.api_user, record.provider), (bin(USER), bin(BANK)));
    assert_eq!(record.token.as_ref().map(|t| &*t.consent_id), Some(CONSENT));
}

/// Live checks (the test hub samples every answer): a successful answer's chunks are kept
/// by reference while the very same bytes go on to the API user, and the tap travels with
/// the journal record once the answer has ended; an encoded answer's chunks are not kept.
#[tokio::test]
async fn a_sampled_answer_is_tapped_by_reference_and_passed_on_untouched() {
    use crate::live::Sample;
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let path = format!("/v1/providers/{BANK}/accounts/{ACCOUNT}/balances");
    let page = Bytes::from_static(br#"{"data":{"account_id":"KZ001"},"links":{"self":"/"}}"#);
    for (encoding, sample) in [
        (None, Sample::Body(page.clone())),
        (Some("gzip"), Sample::Unchecked),
    ] {
        let (mut s, mut ctx, _peer, _client) = admitted(&t, &hub, &get(&path, &bearer(&t))).await;
        let mut resp = ResponseHeader::build(200, None).expect("head");
        if let Some(e) = encoding {
            resp.insert_header("content-encoding", e).expect("header");
        }
        hub.upstream_response_filter(&mut s, &mut resp, &mut ctx)
            .await
            .expect("response filter");
        for (chunk, end) in [(page.slice(..20), false), (page.slice(20..), true)] {
            let mut body = Some(chunk.clone());
            hub.upstream_response_body_filter(&mut s, &mut body, end, &mut ctx)
                .expect("body filter");
            let passed = body.expect("passed on");
            assert_eq!(
                (passed.as_ptr(), passed.len()),
                (chunk.as_ptr(), chunk.len())
            );
        }
        let record = ctx.audit_record(Some(200), Duration::from_millis(1));
        let tap = record.tap.expect("tapped");
        assert_eq!(tap.finish().sample, sample);
    }
}

#[tokio::test]
async fn open_data_past_the_burst_is_rate_limited_and_journalled_as_such() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    for _ in 0..OPEN_DATA_BURST {
        let (answered, ..) = filtered(&hub, &get(&open_data(), ""), Some(t.cert)).await;
        assert!(!answered);
    }
    let (answered, mut s, mut ctx, client) =
        filtered(&hub, &get(&open_data(), ""), Some(t.cert)).await;
    assert!(answered);
    let r = refusal(&ctx, Code::RateLimited, (bin(USER), bin(BANK)));
    assert!(r.limited.is_some());
    hub.logging(&mut s, None, &mut ctx).await;
    let route = RouteId::OpenData.template();
    assert_eq!(requests(&t, route, "rate_limited", BANK), 1);
    let a = received(s, client).await;
    assert_eq!(a.status, 429);
    assert!(a
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
    assert!(a.header("ratelimit").is_some_and(|v| v.contains("r=0")));
    assert!(a.header("ratelimit-policy").is_some());
    assert_eq!(a.json()["code"].as_str(), Some("rate_limited"));
}

#[tokio::test]
async fn an_oversized_chunked_body_is_refused_with_who_was_identified() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let mut raw = get(&open_data(), "Transfer-Encoding: chunked\r\n");
    let chunk = vec![b'a'; MAX_BODY / 2 + 1];
    for _ in 0..2 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let (answered, s, mut ctx, client) = filtered(&hub, &raw, Some(t.cert)).await;
    assert!(answered);
    let record = ctx.audit_record(None, Duration::ZERO);
    assert_eq!((record.code, record.status), ("payload_too_large", 413));
    assert_eq!((record.api_user, record.provider), (bin(USER), bin(BANK)));
    assert_eq!(received(s, client).await.status, 413);
}

#[tokio::test]
async fn request_body_past_the_limit_fails_the_proxying() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let (mut s, mut ctx, _peer, _client) = admitted(&t, &hub, &get(&open_data(), "")).await;
    let mut body = Some(Bytes::from(vec![b'a'; MAX_BODY]));
    hub.request_body_filter(&mut s, &mut body, false, &mut ctx)
        .await
        .expect("within the limit");
    let mut more = Some(Bytes::from_static(b"a"));
    let e = hub
        .request_body_filter(&mut s, &mut more, true, &mut ctx)
        .await
        .expect_err("past the limit");
    assert_eq!(e.etype(), &ErrorType::HTTPStatus(413));
}

#[tokio::test]
async fn a_provider_timeout_is_answered_and_journalled_from_the_rescue_table() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let (mut s, mut ctx, _peer, client) = admitted(&t, &hub, &get(&accounts(), &bearer(&t))).await;
    let mut e = Error::new(ErrorType::ReadTimedout);
    e.as_up();
    let failed = hub.fail_to_proxy(&mut s, &e, &mut ctx).await;
    assert_eq!(failed.error_code, 504);
    assert!(!hub.suppress_error_log(&s, &ctx, &e));
    let record = ctx.audit_record(None, Duration::ZERO);
    assert_eq!((record.code, record.status), ("provider_timeout", 504));
    assert_eq!((record.api_user, record.provider), (bin(USER), bin(BANK)));
    let a = received(s, client).await;
    assert_eq!(
        (a.status, a.header("x-fapi-interaction-id")),
        (504, Some(IID))
    );
    assert_eq!(a.json()["code"].as_str(), Some("provider_timeout"));
}

#[tokio::test]
async fn a_client_gone_is_counted_and_not_answered() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let (answered, mut s, mut ctx, client) =
        filtered(&hub, &get(&open_data(), ""), Some(t.cert)).await;
    assert!(!answered);
    let mut e = Error::new(ErrorType::ReadError);
    e.as_down();
    let failed = hub.fail_to_proxy(&mut s, &e, &mut ctx).await;
    assert_eq!(failed.error_code, 0);
    assert_eq!(t.state.metrics.client_gone.get(), 1);
    assert!(hub.suppress_error_log(&s, &ctx, &e));
    assert_eq!(ctx.answered(), None);
    drop(s);
    let mut raw = Vec::new();
    let mut client = client;
    tokio::io::AsyncReadExt::read_to_end(&mut client, &mut raw)
        .await
        .expect("read");
    assert!(
        raw.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test]
async fn a_connect_failure_is_retried_when_another_base_url_serves() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    let (mut s, mut ctx, peer, _client) = admitted(&t, &hub, &get(&accounts(), &bearer(&t))).await;
    let e = Error::new(ErrorType::ConnectRefused);
    assert!(!e.retry());
    let e = hub.fail_to_connect(&mut s, &peer, &mut ctx, e);
    assert!(e.retry(), "the provider's other base URL was not tried");
}

#[tokio::test]
async fn header_blocks_pingora_cannot_read_get_their_own_codes() {
    let t = test_hub();
    let hub = Hub::new(t.state.clone());
    // One header value past pingora's 1 MiB limit, never ended: the block stays partial.
    // (Many short headers would hit httparse's header count first, a malformed request.)
    let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nx-big: ".to_vec();
    big.resize(big.len() + (1 << 20) + 1024, b'a');
    let malformed = b"GET / HTTP/1.1\r\nHost: h\r\nNo colon here\r\n\r\n".to_vec();
    for (raw, etype, status, code) in [
        (
            big,
            REQUEST_HEADER_TOO_LARGE,
            431,
            "request_header_fields_too_large",
        ),
        (malformed, ErrorType::InvalidHTTPHeader, 400, "bad_request"),
    ] {
        let (mut s, _client) = connect(&raw, Some(t.cert)).await;
        let mut e = s.read_request().await.expect_err("unreadable");
        assert_eq!(e.etype(), &etype);
        e.as_down();
        let (head, body) = hub.malformed_request_response(&e).expect("an answer");
        assert_eq!(head.status.as_u16(), status);
        assert!(head.headers.get("x-fapi-interaction-id").is_some());
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["code"].as_str(), Some(code));
        assert_eq!(requests(&t, "-", code, "-"), 1);
    }
}
