//! The operator's side over real TLS: the participant registry and signing-key
//! rotation; PS256 tokens from an imported key.

mod common;

use common::*;
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use trust::clock::ManualClock;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_registers_participants_and_moves_their_status() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    let op = f.operator();
    let a = f.user(USER_A);
    let path = format!("/v1/participants/{USER_A}");
    let body = json!({"name": "Fintech A", "roles": ["user"], "thumbprints": [a.x5t_s256]});

    // Only the operator certificate may.
    let r = c.json(None, "PUT", &path, body.clone()).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "client_certificate_required".into())
    );
    let r = c.json(Some(a), "PUT", &path, body.clone()).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "operator_certificate_required".into())
    );

    let v = c
        .json(Some(op), "PUT", &path, body.clone())
        .await
        .expect(201);
    assert_eq!(v["status"], "active");
    assert_eq!(v["roles"], json!(["user"]));
    // The same record again changes nothing (no new version).
    let again = c
        .json(Some(op), "PUT", &path, body.clone())
        .await
        .expect(200);
    assert_eq!(again["version"], v["version"]);
    // Now the API user is known.
    let r = c.get(Some(a), "/v1/consents/x").await;
    assert_eq!(r.code(), "consent_not_found");

    for status in ["suspended", "isolated", "active", "terminated"] {
        let v = c
            .json(
                Some(op),
                "PUT",
                &format!("{path}/status"),
                json!({ "status": status }),
            )
            .await
            .expect(200);
        assert_eq!(v["status"], status);
    }
    let r = c
        .json(
            Some(op),
            "PUT",
            &format!("{path}/status"),
            json!({"status": "active"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "participant_terminated".into()));
    let r = c.json(Some(op), "PUT", &path, body.clone()).await;
    assert_eq!((r.status, r.code()), (409, "participant_terminated".into()));
    let v = c.get(Some(op), &path).await.expect(200);
    let moves: Vec<(Value, Value)> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["from"].clone(), h["to"].clone()))
        .collect();
    assert_eq!(moves.len(), 5);
    assert_eq!(moves[0], (Value::Null, json!("active")));
    assert_eq!(moves[4], (json!("active"), json!("terminated")));
    assert!(v["history"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("operator:"));
    let r = c.get(Some(a), "/v1/consents/x").await;
    assert_eq!(r.code(), "participant_inactive");

    // One thumbprint, one participant; the operator's and the hub's are reserved.
    let taken = json!({"name": "B", "roles": ["user"], "thumbprints": [a.x5t_s256]});
    let r = c
        .json(
            Some(op),
            "PUT",
            &format!("/v1/participants/{USER_B}"),
            taken,
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "thumbprint_in_use".into()));
    let hub = json!({"name": "B", "roles": ["user"], "thumbprints": [f.hub().x5t_s256]});
    let r = c
        .json(Some(op), "PUT", &format!("/v1/participants/{USER_B}"), hub)
        .await;
    assert_eq!((r.status, r.code()), (409, "thumbprint_in_use".into()));
    let bad = json!({"name": "B", "roles": ["provider"]});
    let r = c
        .json(Some(op), "PUT", &format!("/v1/participants/{USER_B}"), bad)
        .await;
    assert_eq!((r.status, r.code()), (422, "invalid_field".into()));
    // Issue 10 item 11: a malformed BIN is the caller's error, named; an unknown one 404.
    let r = c.get(Some(op), "/v1/participants/12").await;
    assert_eq!((r.status, r.code()), (422, "invalid_field".into()));
    let r = c.get(Some(op), "/v1/participants/999999999999").await;
    assert_eq!((r.status, r.code()), (404, "participant_not_found".into()));
    let list = c.get(Some(op), "/v1/participants").await.expect(200);
    assert_eq!(list["participants"].as_array().unwrap().len(), 1);
    running.stop().await;
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn token_kid(c: &Client, f: &Fixture, id: &str) -> (String, String) {
    let t = c
        .token(
            Some(f.user(USER_A)),
            &format!("grant_type=client_credentials&client_id={USER_A}&consent_id={id}"),
        )
        .await
        .expect(200);
    let jwt = t["access_token"].as_str().unwrap().to_owned();
    (decode_header(&jwt).unwrap().kid.unwrap(), jwt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_publishes_the_next_key_first_and_keeps_the_old_one_until_its_tokens_expire() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let mut config = f.config(&clock);
    config.key_publish_lead_secs = 600;
    config.key_rotate_after_secs = 3600;
    let running = trust::start(config, None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await;
    let id = create_consent(&c, f.user(USER_A), CUSTOMER, json!({})).await;
    authorise(&c, &f.outbox(), CUSTOMER, &id).await;

    // From the start: the active key and the next one are both published.
    let jwks = c.get(None, "/.well-known/jwks.json").await.expect(200);
    let published = kids(&jwks);
    assert_eq!(published.len(), 2);
    let (first, _) = token_kid(&c, &f, &id).await;
    assert!(published.contains(&first));
    let next = published.iter().find(|k| **k != first).unwrap().clone();

    // The operator cannot make the next key sign before its publication lead.
    let r = c
        .send(
            Some(f.operator()),
            "POST",
            "/v1/admin/keys/rotate",
            &[],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "next_key_not_ready".into()));
    let r = c
        .send(
            Some(f.user(USER_A)),
            "POST",
            "/v1/admin/keys/rotate",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 403);

    // After the lead it may; the old key stays published, a new next key appears.
    clock.advance(600);
    let keys = c
        .send(
            Some(f.operator()),
            "POST",
            "/v1/admin/keys/rotate",
            &[],
            vec![],
        )
        .await
        .expect(200);
    let stages: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["retired", "active", "next"]);
    let (second, jwt) = token_kid(&c, &f, &id).await;
    assert_eq!(
        second, next,
        "the key published in advance is the one that signs"
    );
    let jwks = c.get(None, "/.well-known/jwks.json").await.expect(200);
    assert!(
        kids(&jwks).contains(&first),
        "the old key stays while its tokens live"
    );
    let set: JwkSet = serde_json::from_value(jwks).unwrap();
    let key = DecodingKey::from_jwk(set.find(&second).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["open-api-hub"]);
    decode::<Value>(&jwt, &key, &v).unwrap();

    // Once every token of the old key has expired (300 s + 60 s leeway), it goes.
    clock.advance(360);
    let mut gone = false;
    for _ in 0..500 {
        let jwks = c.get(None, "/.well-known/jwks.json").await.expect(200);
        if !kids(&jwks).contains(&first) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the retired key leaves the JWKS");

    // Automatic rotation: after rotate_after, with the lead satisfied.
    clock.advance(3600);
    let mut rotated = false;
    for _ in 0..500 {
        if token_kid(&c, &f, &id).await.0 != second {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(rotated, "the housekeeping task rotates the key");
    running.stop().await;

    // Keys survive a restart.
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    let jwks = c.get(None, "/.well-known/jwks.json").await.expect(200);
    assert!(kids(&jwks).len() >= 2);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps256_tokens_from_an_imported_key() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let mut config = f.config(&clock);
    config.token_alg = trust::keys::Alg::Ps256;
    config.signing_keys = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sandbox/fixtures/dev-issuer-rsa-2048.pem")];
    let running = trust::start(config, None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await;
    let id = create_consent(&c, f.user(USER_A), CUSTOMER, json!({})).await;
    authorise(&c, &f.outbox(), CUSTOMER, &id).await;
    let (kid, jwt) = token_kid(&c, &f, &id).await;
    let header = decode_header(&jwt).unwrap();
    assert_eq!(header.alg, Algorithm::PS256);
    // RFC 9068: every access token says what it is, whatever its algorithm.
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwks = c.get(None, "/.well-known/jwks.json").await.expect(200);
    assert_eq!(kids(&jwks), std::slice::from_ref(&kid));
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    let set: JwkSet = serde_json::from_value(jwks).unwrap();
    let key = DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::PS256);
    v.set_audience(&["open-api-hub"]);
    let claims = decode::<Value>(&jwt, &key, &v).unwrap().claims;
    assert_eq!(claims["client_id"], USER_A);
    // No next key can be generated for PS256: a forced rotation says so.
    let r = c
        .send(
            Some(f.operator()),
            "POST",
            "/v1/admin/keys/rotate",
            &[],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "no_next_key".into()));
    running.stop().await;
}

/// Waits until `done` holds (10 s at most).
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What another replica on the same database writes reaches this one's caches: the
/// write here goes straight to the database, not through this process's operations (as
/// a second replica's would). A suspension refuses the participant's tokens; a rotation
/// changes the signing key and the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_and_keys_follow_writes_made_elsewhere() {
    use trust::clock::Clock as _;
    use trust::wire::ParticipantStatus;
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let mut config = f.config(&clock);
    // Housekeeping (which reloads the keys after its own rotation step) runs once, at
    // start: what follows is picked up by following the store alone, as on a replica
    // that does not lead.
    config.housekeeping = std::time::Duration::from_secs(3600);
    let running = trust::start(config, None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await;
    let app = running.app().clone();
    let signer = |app: &trust::app::App| app.keys().signer.as_ref().unwrap().kid().to_owned();
    let first = signer(&app);

    let (db, at) = (app.db.clone(), clock.now());
    tokio::task::spawn_blocking(move || {
        db.write(at, |tx| {
            let suspended = ParticipantStatus::Suspended;
            trust::participants::set_status(tx, bin(USER_A), suspended, "operator:elsewhere")
        })
    })
    .await
    .unwrap()
    .unwrap();
    eventually("the registry not reloaded", || {
        app.directory().get(bin(USER_A)).unwrap().status == ParticipantStatus::Suspended
    })
    .await;
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id=x");
    let r = c.token(Some(f.user(USER_A)), &form).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (400, json!("unauthorized_client"))
    );

    // Past the publication lead, the next key is promoted elsewhere.
    clock.advance(3700);
    let (db, at, policy) = (app.db.clone(), clock.now(), app.settings.key_policy);
    let rotated = tokio::task::spawn_blocking(move || {
        let rng = ring::rand::SystemRandom::new();
        db.write(at, |tx| trust::keys::rotate(tx, &policy, true, &rng))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(rotated, Ok(true));
    eventually("the keys not reloaded", || signer(&app) != first).await;
    let jwks = c.get(None, "/.well-known/jwks.json").await.expect(200);
    let published = kids(&jwks);
    assert_eq!(published.len(), 3, "retired, active, next");
    assert!(published.contains(&first) && published.contains(&signer(&app)));
    running.stop().await;
}
