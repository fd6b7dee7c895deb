//! The request policy at the edges, over real mTLS against the hub binary: what reaches a
//! (recording) sandbox bank is an allow-list of headers (contract §3); a `401` without
//! credentials carries a bare `Bearer` challenge (RFC 6750 §3.1); a flood of forged tokens
//! costs a bounded number of signature verifications per connection and per certificate,
//! then `429 rate_limited`; a refused request's body is never drained.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::http::ClientCert;
use e2e::*;
use gateway::config::at;
use sandbox::bank::RecordedRequest;
use sandbox::tokens::DevIssuer;

/// Failed verifications allowed per connection (and refilled per second) in this hub.
const PER_CONNECTION: u32 = 3;
/// Failed verifications allowed per client certificate (and refilled per second).
const PER_CERTIFICATE: u32 = 6;
/// File stem of a second certificate of user B, whose budget only one test spends.
const SECOND_CERT: &str = "api-user-b-second";

static HUB: OnceLock<Hub> = OnceLock::new();

fn hub() -> &'static Hub {
    HUB.get_or_init(|| {
        Hub::start_with(hub_exe!(), |s| {
            s.unlimited();
            let t = &mut s.config.tokens;
            t.max_failed_verifications_per_connection_per_sec = at(PER_CONNECTION);
            t.max_failed_verifications_per_certificate_per_sec = at(PER_CERTIFICATE);
            let second = s
                .prepared
                .pki
                .issue_client(bin(USER_B), SECOND_CERT, &s.prepared.dir.join("second"))
                .expect("issue");
            s.participant_mut(USER_B)
                .thumbprints
                .push(at(second.x5t_s256.clone()));
        })
    })
}

/// The request the bank recorded under interaction id `iid`.
fn seen_by_bank(bank: &str, iid: &str) -> RecordedRequest {
    hub()
        .bank(bank)
        .recent_requests()
        .into_iter()
        .find(|r| r.header("x-fapi-interaction-id") == Some(iid))
        .unwrap_or_else(|| panic!("the bank did not record {iid}"))
}

fn names(r: &RecordedRequest) -> BTreeSet<&str> {
    r.headers.iter().map(|(n, _)| n.as_str()).collect()
}

/// What reaches the bank on an unrestricted consent's route, whatever the client sends.
const HUB_HEADERS: [&str; 6] = [
    "host",
    "x-fapi-interaction-id",
    "x-hub-api-user",
    "x-hub-consent-id",
    "x-hub-customer",
    "x-hub-permissions",
];

#[tokio::test]
async fn a_bank_receives_only_the_allow_listed_headers() {
    let hub = hub();
    let iid = uuid::Uuid::new_v4().to_string();
    let mut req = Req::get(accounts_path(BANK_1))
        .bearer(&hub.token("c-authorised-full"))
        .interaction_id(&iid);
    for (name, value) in [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Forwarded-Prefix", "/internal"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("x-hub_customer", "999999999999"),
        ("X-Hub-Customer", "999999999999"),
        ("X-Custom-Thing", "1"),
        ("User-Agent", "e2e"),
        ("Cookie", "session=1"),
        ("Accept", "application/json"),
        ("Accept-Language", "kk, ru;q=0.8"),
        ("x-fapi-customer-ip-address", "192.0.2.7"),
    ] {
        req = req.header(name, value);
    }
    hub.client_as(USER_A).send(&req).await.ok_json();
    let seen = seen_by_bank(BANK_1, &iid);
    let mut expected: BTreeSet<&str> = HUB_HEADERS.into();
    expected.extend(["accept", "accept-language", "x-fapi-customer-ip-address"]);
    assert_eq!(names(&seen), expected, "{seen:?}");
    assert_eq!(seen.header("accept-language"), Some("kk, ru;q=0.8"));
    assert_eq!(seen.header("x-fapi-customer-ip-address"), Some("192.0.2.7"));
    assert_ne!(seen.header("x-hub-customer"), Some("999999999999"));
    assert_eq!(seen.method, "GET");
}

#[tokio::test]
async fn connection_nominations_invalid_ips_and_dropped_bodies_do_not_reach_a_bank() {
    let hub = hub();
    let iid = uuid::Uuid::new_v4().to_string();
    let req = Req::get(accounts_path(BANK_1))
        .bearer(&hub.token("c-authorised-full"))
        .interaction_id(&iid)
        .header("Connection", "keep-alive")
        .header("Connection", "Accept-Language")
        .header("Accept", "application/json")
        .header("Accept-Language", "kk")
        .header("x-fapi-customer-ip-address", "192.0.2.7")
        .header("x-fapi-customer-ip-address", "192.0.2.7, 10.0.0.1")
        .body("hello");
    hub.client_as(USER_A).send(&req).await.ok_json();
    let seen = seen_by_bank(BANK_1, &iid);
    let mut expected: BTreeSet<&str> = HUB_HEADERS.into();
    // The body was read and dropped: the bank is told it gets none.
    expected.extend(["accept", "content-length"]);
    assert_eq!(names(&seen), expected, "{seen:?}");
    assert_eq!(seen.header("content-length"), Some("0"));
}

#[tokio::test]
async fn a_401_challenges_with_an_error_code_only_when_credentials_were_sent() {
    let hub = hub();
    let client = hub.client_as(USER_A);
    let path = accounts_path(BANK_1);
    let bare = client.get(&path, None).await;
    bare.assert_problem(401, "invalid_token");
    assert_eq!(bare.header("www-authenticate"), Some("Bearer"));
    let mut h2 = client.h2().await.expect("h2");
    let bare = h2.get(&path, &[]).await.expect("h2 answer");
    bare.assert_problem(401, "invalid_token");
    assert_eq!(bare.header("www-authenticate"), Some("Bearer"));
    for value in ["Bearer nope", "Basic dTpw", "Bearer"] {
        let r = client
            .send(&Req::get(path.as_str()).header("Authorization", value))
            .await;
        r.assert_problem(401, "invalid_token");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{value}"
        );
    }
}

/// A well-formed token for user B signed by a key the hub does not hold, under the hub
/// issuer's `kid`: it passes every check before the signature and fails that one.
fn forged() -> String {
    static FORGER: OnceLock<DevIssuer> = OnceLock::new();
    let hub = hub();
    let forger = FORGER.get_or_init(|| {
        DevIssuer::generate(hub.issuer.alg(), hub.issuer.kid(), devhub::ISSUER).expect("key")
    });
    forger
        .mint(&hub.claims(USER_B, "c-authorised-bank2", &ALL_PERMISSIONS))
        .expect("mint")
}

/// Sends forged tokens on one connection until the hub answers `429` (at most `limit`);
/// returns how many were `401` and the `429`.
async fn flood(conn: &mut e2e::http::TlsConn, limit: u32) -> (u32, Response) {
    let req = Req::get(accounts_path(BANK_2)).bearer(&forged());
    let mut invalid = 0;
    loop {
        let r = conn.send(&req).await.expect("an answer");
        if r.status == 429 {
            r.assert_problem(429, "rate_limited");
            return (invalid, r);
        }
        r.assert_problem(401, "invalid_token");
        invalid += 1;
        assert!(
            invalid <= limit,
            "{invalid} forged tokens verified, never a 429"
        );
    }
}

/// What a budget of `per_sec` lets through in `elapsed`: its burst and what refilled.
fn allowed(per_sec: u32, elapsed: Duration) -> u32 {
    per_sec + (elapsed.as_secs_f64() * f64::from(per_sec)).ceil() as u32
}

#[tokio::test]
async fn forged_tokens_cost_a_bounded_number_of_verifications_per_connection() {
    let hub = hub();
    let client = hub.client_as(USER_B);
    let mut conn = client.connect().await.expect("connect");
    let valid = hub.token("c-authorised-bank2");
    // Verified (and cached) before the flood.
    conn.send(&Req::get(accounts_path(BANK_2)).bearer(&valid))
        .await
        .expect("answer")
        .ok_json();
    let start = Instant::now();
    let (invalid, refused) = flood(&mut conn, 10 * PER_CONNECTION).await;
    assert!(
        (PER_CONNECTION..=allowed(PER_CONNECTION, start.elapsed())).contains(&invalid),
        "{invalid} failed verifications before the 429"
    );
    let policy = refused.header("ratelimit-policy").unwrap_or("");
    assert!(policy.contains("token-failures-connection"), "{policy}");
    // A token the cache holds is never throttled, on this connection or another.
    conn.send(&Req::get(accounts_path(BANK_2)).bearer(&valid))
        .await
        .expect("answer")
        .ok_json();
    let metrics = hub.metrics().await;
    let refusals = metric(
        &metrics,
        "hub_token_budget_refusals_total{budget=\"token-failures-connection\"}",
    );
    assert!(refusals.is_some_and(|n| n >= 1.0), "{metrics}");
}

#[tokio::test]
async fn forged_tokens_cost_a_bounded_number_of_verifications_per_certificate() {
    let hub = hub();
    let dir = hub.dir.join("second");
    let second = ClientCert {
        cert_pem: std::fs::read_to_string(dir.join(format!("{SECOND_CERT}.pem"))).expect("cert"),
        key_pem: std::fs::read_to_string(dir.join(format!("{SECOND_CERT}-key.pem"))).expect("key"),
    };
    let client = hub.client_with(Some(&second));
    let start = Instant::now();
    let mut invalid = 0;
    let mut connections = 0;
    let refused = loop {
        connections += 1;
        assert!(connections <= 10, "the certificate's budget never ran out");
        let mut conn = client.connect().await.expect("connect");
        let (n, refused) = flood(&mut conn, 10 * PER_CERTIFICATE).await;
        invalid += n;
        let policy = refused.header("ratelimit-policy").unwrap_or("").to_owned();
        if policy.contains("token-failures-certificate") {
            break refused;
        }
        assert!(policy.contains("token-failures-connection"), "{policy}");
    };
    assert!(
        connections > 1,
        "one connection spent the certificate's budget"
    );
    assert!(
        (PER_CERTIFICATE..=allowed(PER_CERTIFICATE, start.elapsed())).contains(&invalid),
        "{invalid} failed verifications over {connections} connections"
    );
    assert!(refused
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
    // Another participant's certificate has its own budget.
    hub.client_as(USER_A)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.mint_for(USER_A, "c-authorised-full")),
        )
        .await
        .ok_json();
}

/// Sends `head` (a request whose announced body never comes) and asserts the hub answers
/// `status` at once and then closes the connection rather than wait for the body.
async fn refused_unread(head: &str, status: u16, code: &str) {
    let mut conn = hub().client_as(USER_A).connect().await.expect("connect");
    let r = conn.send_raw(head.as_bytes()).await.expect("an answer");
    r.assert_problem(status, code);
    assert_eq!(r.header("connection"), Some("close"), "{head}");
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "the hub kept the connection to read the body: {head}"
    );
}

#[tokio::test]
async fn a_refused_request_s_body_is_never_drained() {
    let path = accounts_path(BANK_1);
    let host = "Host: localhost\r\n";
    refused_unread(
        &format!("GET {path} HTTP/1.1\r\n{host}Content-Length: 60000\r\n\r\n"),
        401,
        "invalid_token",
    )
    .await;
    refused_unread(
        &format!("GET {path} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
        401,
        "invalid_token",
    )
    .await;
    refused_unread(
        &format!("GET {path} HTTP/1.1\r\n{host}Content-Length: 1000000000000\r\n\r\n"),
        413,
        "payload_too_large",
    )
    .await;
}
