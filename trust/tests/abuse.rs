//! Abuse limits over real TLS: one-time codes per customer per hour and per day,
//! consents per API user per minute and awaiting authorisation at once, unauthenticated
//! requests per source address. Each refusal is `429 rate_limited` (problem+json) with
//! `Retry-After`; time moves with an injected clock.

mod common;

use common::*;
use serde_json::json;
use trust::clock::ManualClock;

fn retry_after(r: &Reply) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers))
}

#[track_caller]
fn limited(r: &Reply, detail: &str) -> u64 {
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    let v = r.json();
    assert_eq!(v["code"], "rate_limited");
    assert!(v["detail"].as_str().unwrap().contains(detail), "{v}");
    assert!(
        !String::from_utf8_lossy(&r.body).contains(CUSTOMER),
        "no customer id in the answer"
    );
    retry_after(r)
}

async fn start_authorisation(c: &Client, session: &str, consent: &str) -> Reply {
    c.customer(
        session,
        "POST",
        &format!("/v1/customer/consents/{consent}/authorisations"),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_per_customer_are_limited_per_hour_and_per_day() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = start_with(&f, &clock, |c| {
        c.abuse.codes_per_customer_hour = 3;
        c.abuse.codes_per_customer_day = 5;
    })
    .await;
    register_all(&f, &c).await;
    let mut consents = Vec::new();
    for _ in 0..5 {
        consents.push(create_consent(&c, f.user(USER_A), CUSTOMER, json!({})).await);
    }
    let other = create_consent(&c, f.user(USER_A), OTHER_CUSTOMER, json!({})).await;

    let s = session(&c, CUSTOMER).await;
    start_authorisation(&c, &s, &consents[0]).await.expect(201);
    let a = start_authorisation(&c, &s, &consents[1]).await.expect(201);
    // A resend is a code too: the third of the hour.
    let aid = a["id"].as_str().unwrap();
    c.customer(
        &s,
        "POST",
        &format!("/v1/customer/authorisations/{aid}/resend"),
        None,
    )
    .await
    .expect(200);
    let r = start_authorisation(&c, &s, &consents[2]).await;
    let wait = limited(&r, "per customer per hour (3)");
    assert!((3590..=3600).contains(&wait), "{wait}");
    // Refused codes are not counted, and another customer is not affected.
    let s2 = session(&c, OTHER_CUSTOMER).await;
    start_authorisation(&c, &s2, &other).await.expect(201);

    // An hour later two more fit, then the day's limit answers.
    clock.advance(3601);
    let s = session(&c, CUSTOMER).await;
    for id in &consents[2..4] {
        start_authorisation(&c, &s, id).await.expect(201);
    }
    let r = start_authorisation(&c, &s, &consents[4]).await;
    let wait = limited(&r, "per customer per day (5)");
    assert!((86400 - 3601 - 10..=86400 - 3601).contains(&wait), "{wait}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_per_api_user_are_limited_per_minute_and_while_awaiting() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = start_with(&f, &clock, |c| {
        c.abuse.consents_per_user_minute = 3;
        c.abuse.open_consents_per_user = 5;
    })
    .await;
    register_all(&f, &c).await;
    let body = json!({"customer": CUSTOMER, "providers": [BANK_1],
                      "permissions": ["accounts"], "purpose": "Budget"});
    let create = |who: &'static str| {
        let (c, body) = (c.clone(), body.clone());
        let id = f.user(who);
        async move { c.json(Some(id), "POST", "/v1/consents", body).await }
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            create(USER_A).await.expect(201)["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let wait = limited(
        &create(USER_A).await,
        "consents created per API user per minute (3)",
    );
    assert!((1..=60).contains(&wait), "{wait}");
    create(USER_B).await.expect(201); // each API user has its own allowance

    clock.advance(61);
    for _ in 0..2 {
        create(USER_A).await.expect(201);
    }
    clock.advance(61);
    // Five awaiting authorisation: the sixth waits until one is answered or withdrawn.
    limited(
        &create(USER_A).await,
        "awaiting authorisation per API user (5)",
    );
    c.send(
        Some(f.user(USER_A)),
        "DELETE",
        &format!("/v1/consents/{}", ids[0]),
        &[],
        vec![],
    )
    .await
    .expect(200);
    authorise(&c, &f.outbox(), CUSTOMER, &ids[1]).await;
    create(USER_A).await.expect(201);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_routes_are_limited_per_source_address() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = start_with(&f, &clock, |c| {
        c.abuse.address_per_minute = 6;
        c.abuse.address_burst = 3;
    })
    .await;
    register_all(&f, &c).await;
    for _ in 0..3 {
        c.get(None, "/.well-known/jwks.json").await.expect(200);
    }
    let wait = limited(
        &c.get(None, "/.well-known/oauth-authorization-server").await,
        "unauthenticated requests per source address",
    );
    assert!((1..=10).contains(&wait), "{wait}");
    let r = c
        .json(
            None,
            "POST",
            "/v1/customer/sessions",
            json!({"customer": CUSTOMER}),
        )
        .await;
    limited(&r, "per source address");
    // Health probes are not counted.
    c.get(None, "/healthz").await.expect(200);
    // Authenticated callers from the same address are not counted.
    let id = create_consent(&c, f.user(USER_A), CUSTOMER, json!({})).await;
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={id}");
    assert_eq!(c.token(Some(f.user(USER_A)), &form).await.status, 400); // not yet authorised
    running.stop().await;
}
