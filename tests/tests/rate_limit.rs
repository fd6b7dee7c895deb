//! Contract §6 row 16 and §7: a tiny per consent × route quota answers `429 rate_limited`
//! with `Retry-After`, `RateLimit-Policy` and `RateLimit`; other consents and routes keep
//! their own quota; open data is limited per client IP.

use std::sync::OnceLock;

use e2e::*;

static HUB: OnceLock<Hub> = OnceLock::new();

/// Burst of the per consent × route and per IP quotas in this hub (refilled at 1/s).
const BURST: usize = 2;

fn hub() -> &'static Hub {
    HUB.get_or_init(|| {
        Hub::start_with(hub_exe!(), |s| {
            s.set_limit("per_consent_route", 1, BURST as u32);
            s.set_limit("per_ip_open_data", 1, BURST as u32);
        })
    })
}

/// Sends `path` until the hub refuses (at most `BURST + 5` times); returns the answers.
async fn until_limited(client: &Client, path: &str, token: Option<&str>) -> Vec<Response> {
    let mut out = Vec::new();
    for _ in 0..BURST + 5 {
        let r = client.get(path, token).await;
        let done = r.status == 429;
        out.push(r);
        if done {
            break;
        }
    }
    out
}

#[tokio::test]
async fn consent_route_quota_answers_429_with_retry_after_and_ratelimit_headers() {
    let hub = hub();
    let client = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    let acc = hub.accounts_of("c-authorised-full").remove(0);
    let path = balances_path(BANK_1, &acc);
    let answers = until_limited(&client, &path, Some(&token)).await;
    // The first `BURST` pass (nothing else uses this consent × route in this hub).
    for r in &answers[..BURST] {
        r.ok_json();
        let policy = r.header("ratelimit-policy").unwrap_or("");
        assert!(policy.contains("q="), "RateLimit-Policy {policy:?}");
        assert!(r.header("ratelimit").is_some_and(|v| v.contains("r=")));
    }
    let last = answers.last().expect("answers");
    last.assert_problem(429, "rate_limited");
    let state = last.header("ratelimit").unwrap_or("");
    assert!(state.contains("r=0"), "RateLimit {state:?} on 429");

    // Another route of the same consent, and another consent, have their own quota.
    client
        .get(&account_path(BANK_1, &acc), Some(&token))
        .await
        .ok_json();
    let restricted = hub.token("c-authorised-restricted");
    let allowed = hub.consent("c-authorised-restricted")["accounts"][0]
        .as_str()
        .expect("account")
        .to_string();
    client
        .get(&balances_path(BANK_1, &allowed), Some(&restricted))
        .await
        .ok_json();
}

#[tokio::test]
async fn open_data_quota_is_per_client_ip() {
    let hub = hub();
    let client = hub.client_as(USER_B);
    let answers = until_limited(&client, &open_data_path(BANK_2, "branches"), None).await;
    for r in &answers[..BURST] {
        r.ok_json();
    }
    answers
        .last()
        .expect("answers")
        .assert_problem(429, "rate_limited");
}
