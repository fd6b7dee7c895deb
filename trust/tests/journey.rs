//! The customer journey over real TLS: create → authorise with the code from the
//! outbox → token → revoke; wrong, expired and exhausted codes; token refusals.

mod common;

use common::*;
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use trust::clock::ManualClock;

async fn started(f: &Fixture, clock: &ManualClock) -> (trust::Running, Client) {
    let running = trust::start(f.config(clock), None).await.unwrap();
    let c = f.client(running.addr());
    register_all(f, &c).await;
    (running, c)
}

fn verify_jwt(token: &str, jwks: &Value, issuer: &str) -> Value {
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.expect("kid");
    let jwk = set.find(&kid).expect("the signing key is published");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut v = Validation::new(header.alg);
    v.set_audience(&["open-api-hub"]);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    decode::<Value>(token, &key, &v).unwrap().claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_journey_create_authorise_token_revoke() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = started(&f, &clock).await;
    let a = f.user(USER_A);

    let id = create_consent(&c, a, CUSTOMER, json!({"accounts": ["KZ01ACC"]})).await;
    let v = c
        .get(Some(a), &format!("/v1/consents/{id}"))
        .await
        .expect(200);
    assert_eq!(v["api_user"], USER_A);
    assert_eq!(v["accounts"], json!(["KZ01ACC"]));
    assert_eq!(v["history"][0]["actor"], format!("api_user:{USER_A}"));
    assert_eq!(v["history"][0]["from"], Value::Null);

    // Not yet authorised: no token.
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={id}");
    let r = c.token(Some(a), &form).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // The customer sees it, authorises it with the code from the outbox.
    let s = session(&c, CUSTOMER).await;
    let list = c
        .customer(&s, "GET", "/v1/customer/consents", None)
        .await
        .expect(200);
    assert_eq!(list["consents"][0]["id"], id.as_str());
    assert_eq!(list["consents"][0]["status"], "awaiting_authorisation");
    let auth = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/consents/{id}/authorisations"),
            None,
        )
        .await
        .expect(201);
    assert_eq!(auth["codes_sent"], 1);
    assert_eq!(auth["codes_left"], 1);
    assert_eq!(auth["attempts_left"], 4);
    let outbox = std::fs::read_to_string(f.outbox()).unwrap();
    let line: Value = serde_json::from_str(outbox.lines().last().unwrap()).unwrap();
    assert_eq!(line["customer"], CUSTOMER);
    assert_eq!(line["consent_id"], id.as_str());
    assert_eq!(line.as_object().unwrap().len(), 3);
    let aid = auth["id"].as_str().unwrap();
    let v = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/authorisations/{aid}/verify"),
            Some(json!({"code": last_code(&f.outbox(), &id)})),
        )
        .await
        .expect(200);
    assert_eq!(v["status"], "authorised");

    // The API user gets a contract §4 token bound to its certificate.
    let t = c.token(Some(a), &form).await;
    assert_eq!(t.headers["cache-control"], "no-store");
    let t = t.expect(200);
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 300);
    assert_eq!(t["scope"], "accounts balances transactions");
    let jwks = c.get(None, "/.well-known/jwks.json").await.expect(200);
    let meta = c
        .get(None, "/.well-known/oauth-authorization-server")
        .await
        .expect(200);
    assert_eq!(meta["issuer"], running.url());
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/oauth2/token", running.url())
    );
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!(["tls_client_auth"])
    );
    assert_eq!(meta["tls_client_certificate_bound_access_tokens"], true);
    let claims = verify_jwt(t["access_token"].as_str().unwrap(), &jwks, running.url());
    assert_eq!(claims["client_id"], USER_A);
    assert_eq!(claims["consent_id"], id.as_str());
    assert_eq!(claims["scope"], "accounts balances transactions");
    assert_eq!(claims["cnf"]["x5t#S256"], a.x5t_s256.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() == 36));
    assert_eq!(
        decode_header(t["access_token"].as_str().unwrap())
            .unwrap()
            .alg,
        Algorithm::ES256
    );

    // A narrower scope may be asked for; a wider one may not.
    let narrow = c
        .token(Some(a), &format!("{form}&scope=balances"))
        .await
        .expect(200);
    assert_eq!(narrow["scope"], "balances");

    // The customer revokes: no more tokens, the history says who did what.
    let v = c
        .customer(&s, "DELETE", &format!("/v1/customer/consents/{id}"), None)
        .await
        .expect(200);
    assert_eq!(v["status"], "revoked");
    let r = c.token(Some(a), &form).await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let v = c
        .get(Some(a), &format!("/v1/consents/{id}"))
        .await
        .expect(200);
    let steps: Vec<(Value, Value, Value)> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["actor"].clone(), h["from"].clone(), h["to"].clone()))
        .collect();
    assert_eq!(
        steps,
        [
            (
                json!(format!("api_user:{USER_A}")),
                Value::Null,
                json!("awaiting_authorisation")
            ),
            (
                json!("customer"),
                json!("awaiting_authorisation"),
                json!("authorised")
            ),
            (json!("customer"), json!("authorised"), json!("revoked")),
        ]
    );
    // Revoking again is harmless; the API user may also revoke (idempotent here).
    c.send(
        Some(a),
        "DELETE",
        &format!("/v1/consents/{id}"),
        &[],
        vec![],
    )
    .await
    .expect(200);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_and_exhausted_codes() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = started(&f, &clock).await;
    let a = f.user(USER_A);
    let id = create_consent(&c, a, CUSTOMER, json!({})).await;
    let s = session(&c, CUSTOMER).await;
    let start = format!("/v1/customer/consents/{id}/authorisations");
    let auth = c.customer(&s, "POST", &start, None).await.expect(201);
    let aid = auth["id"].as_str().unwrap().to_owned();
    let verify = format!("/v1/customer/authorisations/{aid}/verify");
    let resend = format!("/v1/customer/authorisations/{aid}/resend");
    let first = last_code(&f.outbox(), &id);
    let wrong = |code: &str| format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);

    // Another customer cannot see or use the session.
    let intruder = session(&c, OTHER_CUSTOMER).await;
    let r = c
        .customer(&intruder, "POST", &verify, Some(json!({"code": first})))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (404, "authorisation_not_found".into())
    );
    let r = c.customer(&intruder, "POST", &start, None).await;
    assert_eq!((r.status, r.code()), (404, "consent_not_found".into()));

    // A wrong code costs an attempt.
    let r = c
        .customer(&s, "POST", &verify, Some(json!({"code": wrong(&first)})))
        .await;
    assert_eq!((r.status, r.code()), (400, "otp_invalid".into()));
    assert_eq!(r.json()["attempts_left"], 3);

    // One resend allowed; it replaces the first code.
    let again = c.customer(&s, "POST", &resend, None).await.expect(200);
    assert_eq!(
        (again["codes_sent"].as_u64(), again["codes_left"].as_u64()),
        (Some(2), Some(0))
    );
    let r = c.customer(&s, "POST", &resend, None).await;
    assert_eq!((r.status, r.code()), (429, "otp_resend_limit".into()));
    let second = last_code(&f.outbox(), &id);
    if second != first {
        let r = c
            .customer(&s, "POST", &verify, Some(json!({"code": first})))
            .await;
        assert_eq!(r.code(), "otp_invalid", "the first code no longer works");
    } else {
        let r = c
            .customer(&s, "POST", &verify, Some(json!({"code": wrong(&first)})))
            .await;
        assert_eq!(r.code(), "otp_invalid");
    }
    // Codes expire after 5 minutes.
    clock.advance(300);
    let r = c
        .customer(&s, "POST", &verify, Some(json!({"code": second})))
        .await;
    assert_eq!((r.status, r.code()), (400, "otp_expired".into()));
    assert_eq!(r.json()["attempts_left"], 1);
    // The fourth attempt exhausts the session, even with the right (expired) code.
    let r = c
        .customer(&s, "POST", &verify, Some(json!({"code": "000000"})))
        .await;
    assert_eq!((r.status, r.code()), (403, "otp_attempts_exhausted".into()));
    let r = c
        .customer(&s, "POST", &verify, Some(json!({"code": second})))
        .await;
    assert_eq!((r.status, r.code()), (403, "otp_attempts_exhausted".into()));
    let v = c
        .get(Some(a), &format!("/v1/consents/{id}"))
        .await
        .expect(200);
    assert_eq!(v["status"], "awaiting_authorisation");

    // A new session works (at most 3 per consent), and authorises.
    let auth2 = c.customer(&s, "POST", &start, None).await.expect(201);
    let auth3 = c.customer(&s, "POST", &start, None).await.expect(201);
    let r = c.customer(&s, "POST", &start, None).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "authorisation_sessions_exhausted".into())
    );
    // The second session was superseded by the third.
    let aid2 = auth2["id"].as_str().unwrap();
    let r = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/authorisations/{aid2}/verify"),
            Some(json!({"code": "123456"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "authorisation_closed".into()));
    let aid3 = auth3["id"].as_str().unwrap();
    let v = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/authorisations/{aid3}/verify"),
            Some(json!({"code": last_code(&f.outbox(), &id)})),
        )
        .await
        .expect(200);
    assert_eq!(v["status"], "authorised");

    // Codes are never stored in clear (read from the database as an outsider would).
    let hashes = f
        .store
        .bytes_column("SELECT code_hash FROM authorisations")
        .await;
    assert_eq!(hashes.len(), 3, "three authorisation sessions");
    assert!(hashes.iter().flatten().all(|h| h.len() == 32));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customer_refuses_and_the_consent_is_rejected() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = started(&f, &clock).await;
    let id = create_consent(&c, f.user(USER_A), CUSTOMER, json!({})).await;
    let s = session(&c, CUSTOMER).await;
    let auth = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/consents/{id}/authorisations"),
            None,
        )
        .await
        .expect(201);
    let v = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/consents/{id}/reject"),
            None,
        )
        .await
        .expect(200);
    assert_eq!(v["status"], "rejected");
    // The open session closed with the refusal.
    let aid = auth["id"].as_str().unwrap();
    let r = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/authorisations/{aid}/verify"),
            Some(json!({"code": last_code(&f.outbox(), &id)})),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "authorisation_closed".into()));
    let r = c
        .customer(&s, "DELETE", &format!("/v1/customer/consents/{id}"), None)
        .await;
    assert_eq!((r.status, r.code()), (409, "consent_not_revocable".into()));
    // Without a session, nothing.
    let r = c.get(None, "/v1/customer/consents").await;
    assert_eq!(
        (r.status, r.code()),
        (401, "customer_session_required".into())
    );
    let r = c
        .customer("forged", "GET", "/v1/customer/consents", None)
        .await;
    assert_eq!(r.status, 401);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_refuses_per_rfc_6749() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = started(&f, &clock).await;
    let (a, b) = (f.user(USER_A), f.user(USER_B));
    let id = create_consent(&c, a, CUSTOMER, json!({})).await;
    authorise(&c, &f.outbox(), CUSTOMER, &id).await;
    let ok = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={id}");
    c.token(Some(a), &ok).await.expect(200);

    let cases: Vec<(Option<&sandbox::pki::Identity>, String, u16, &str)> = vec![
        // Someone else's consent: as if it did not exist.
        (
            Some(b),
            format!("grant_type=client_credentials&client_id={USER_B}&consent_id={id}"),
            400,
            "invalid_grant",
        ),
        (
            Some(a),
            format!("grant_type=client_credentials&client_id={USER_A}&consent_id=nope"),
            400,
            "invalid_grant",
        ),
        // The certificate is the client: no certificate, or a client_id not its own.
        (None, ok.clone(), 401, "invalid_client"),
        (Some(b), ok.clone(), 401, "invalid_client"),
        (Some(f.operator()), ok.clone(), 401, "invalid_client"),
        (
            Some(a),
            format!("grant_type=client_credentials&consent_id={id}"),
            400,
            "invalid_request",
        ),
        (
            Some(a),
            format!("grant_type=authorization_code&client_id={USER_A}&consent_id={id}"),
            400,
            "unsupported_grant_type",
        ),
        (
            Some(a),
            format!("client_id={USER_A}&consent_id={id}"),
            400,
            "invalid_request",
        ),
        (
            Some(a),
            format!("grant_type=client_credentials&client_id={USER_A}"),
            400,
            "invalid_request",
        ),
        (
            Some(a),
            format!("{ok}&consent_id={id}"),
            400,
            "invalid_request",
        ),
        (
            Some(a),
            format!("{ok}&scope=payments"),
            400,
            "invalid_scope",
        ),
    ];
    for (who, form, status, error) in cases {
        let r = c.token(who, &form).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str().unwrap()),
            (status, error),
            "{form}"
        );
        assert!(r.json()["error_description"].is_string());
    }
    let r = c
        .send(
            Some(a),
            "POST",
            "/oauth2/token",
            &[("content-type", "application/json")],
            ok.clone().into_bytes(),
        )
        .await;
    assert_eq!(r.json()["error"], "invalid_request");

    // A suspended participant gets no tokens and cannot use the consent API.
    c.json(
        Some(f.operator()),
        "PUT",
        &format!("/v1/participants/{USER_A}/status"),
        json!({"status": "suspended"}),
    )
    .await
    .expect(200);
    let r = c.token(Some(a), &ok).await;
    assert_eq!(r.json()["error"], "unauthorized_client");
    let r = c.get(Some(a), &format!("/v1/consents/{id}")).await;
    assert_eq!((r.status, r.code()), (403, "participant_inactive".into()));
    c.json(
        Some(f.operator()),
        "PUT",
        &format!("/v1/participants/{USER_A}/status"),
        json!({"status": "active"}),
    )
    .await
    .expect(200);
    c.token(Some(a), &ok).await.expect(200);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consent_api_checks_ownership_and_input() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = started(&f, &clock).await;
    let (a, b) = (f.user(USER_A), f.user(USER_B));
    let id = create_consent(&c, a, CUSTOMER, json!({})).await;
    for m in ["GET", "DELETE"] {
        let r = c
            .send(Some(b), m, &format!("/v1/consents/{id}"), &[], vec![])
            .await;
        assert_eq!(
            (r.status, r.code()),
            (404, "consent_not_found".into()),
            "{m}"
        );
    }
    let r = c.get(None, &format!("/v1/consents/{id}")).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "client_certificate_required".into())
    );
    let r = c
        .get(Some(f.operator()), &format!("/v1/consents/{id}"))
        .await;
    assert_eq!((r.status, r.code()), (403, "participant_unknown".into()));
    let bad = [
        (json!({"providers": ["123"]}), 400, "bad_request"),
        (
            json!({"providers": ["999999999999"]}),
            422,
            "provider_unknown",
        ),
        (json!({"providers": [USER_B]}), 422, "provider_unknown"),
        (json!({"permissions": ["payments"]}), 422, "invalid_field"),
        (json!({"permissions": []}), 422, "invalid_field"),
        (json!({"purpose": " "}), 422, "invalid_field"),
        (
            json!({"expires_at": "2020-01-01T00:00:00Z"}),
            422,
            "invalid_field",
        ),
        (json!({"accounts": []}), 422, "invalid_field"),
        (json!({"colour": "red"}), 400, "bad_request"),
    ];
    for (extra, status, code) in bad {
        let mut body = json!({
            "customer": CUSTOMER, "providers": [BANK_1], "permissions": ["accounts"], "purpose": "p",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = c.json(Some(a), "POST", "/v1/consents", body).await;
        assert_eq!((r.status, r.code()), (status, code.to_owned()), "{extra}");
    }
    let big = json!({"customer": CUSTOMER, "providers": [BANK_1], "permissions": ["accounts"],
        "purpose": "x".repeat(70_000)});
    let r = c.json(Some(a), "POST", "/v1/consents", big).await;
    assert_eq!((r.status, r.code()), (413, "payload_too_large".into()));
    // The API user withdraws before authorisation: revoked.
    let v = c
        .send(
            Some(a),
            "DELETE",
            &format!("/v1/consents/{id}"),
            &[],
            vec![],
        )
        .await
        .expect(200);
    assert_eq!(v["status"], "revoked");
    let r = c
        .send(Some(a), "PATCH", &format!("/v1/consents/{id}"), &[], vec![])
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, DELETE");
    assert_eq!(c.get(Some(a), "/v1/nothing").await.status, 404);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_expire_and_their_tokens_stop() {
    let f = Fixture::new();
    let start = now();
    let clock = ManualClock::new(start);
    let (running, c) = started(&f, &clock).await;
    let a = f.user(USER_A);
    let expires = time::OffsetDateTime::from_unix_timestamp(start + 120)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let id = create_consent(&c, a, CUSTOMER, json!({"expires_at": expires})).await;
    let pending = create_consent(&c, a, CUSTOMER, json!({"expires_at": expires})).await;
    authorise(&c, &f.outbox(), CUSTOMER, &id).await;
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={id}");
    let t = c.token(Some(a), &form).await.expect(200);
    assert_eq!(t["expires_in"], 120, "a token never outlives its consent");
    clock.advance(120);
    // The token endpoint refuses at once, whatever the expiry task has done.
    assert_eq!(
        c.token(Some(a), &form).await.json()["error"],
        "invalid_grant"
    );
    // The periodic task marks both consents expired.
    for consent in [&id, &pending] {
        let mut status = Value::Null;
        for _ in 0..500 {
            status = c
                .get(Some(a), &format!("/v1/consents/{consent}"))
                .await
                .expect(200)["status"]
                .clone();
            if status == "expired" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(status, "expired");
    }
    let v = c
        .get(Some(a), &format!("/v1/consents/{id}"))
        .await
        .expect(200);
    let last = v["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["actor"].as_str(), last["from"].as_str()),
        (Some("system:expiry"), Some("authorised"))
    );
    running.stop().await;
}
