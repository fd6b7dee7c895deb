//! The budget of failed token verifications (row 4 under a flood): what is charged (only a
//! signature verification that ran and failed), what is free (cache hits, valid tokens,
//! tokens refused before their signature), and the `429` the decision answers once a
//! connection or a certificate has spent its budget.

mod common;

use common::*;
use policy::token::{Charge, Charged, TokenVerifier};
use policy::{decide, match_route, Code, LimitKind, TokenError};
use serde_json::json;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Instant;

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::new)
}

/// A verifier with budgets of `conn` and `cert` failed verifications a second.
fn verifier(conn: u32, cert: u32) -> TokenVerifier {
    keys().verifier_with(|s| {
        s.max_failed_verifications_per_connection_per_sec = NonZeroU32::new(conn).unwrap();
        s.max_failed_verifications_per_certificate_per_sec = NonZeroU32::new(cert).unwrap();
    })
}

/// A verification charged now to connection `port` (of one client address) and `cert`.
fn charge(port: u16, cert: &[u8; 32]) -> Charge<'_> {
    Charge {
        connection: Some(SocketAddr::from(([192, 0, 2, 1], port))),
        certificate: cert,
        at: Instant::now(),
    }
}

/// A well-formed token signed by a key the verifier does not hold under the same `kid`:
/// it passes every check before the signature and fails that one.
fn forged() -> String {
    static FORGER: OnceLock<TestKey> = OnceLock::new();
    mint(FORGER.get_or_init(|| ec_key("ec1")), &claims())
}

/// Verifies a forged token charged to `c`: it fails its signature.
fn fails_signature(v: &TokenVerifier, c: &Charge<'_>) {
    assert_eq!(
        v.verify_charged(&forged(), NOW, c).unwrap_err(),
        TokenError::BadSignature
    );
}

/// A valid token with its own `jti` (so the cache has not seen it).
fn valid(jti: &str) -> String {
    let mut c = claims();
    c["jti"] = json!(jti);
    mint(&keys().ec, &c)
}

#[test]
fn failed_signatures_are_bounded_per_connection_then_not_verified() {
    let v = verifier(3, 100);
    let c = charge(1, &TP);
    for _ in 0..3 {
        fails_signature(&v, &c);
    }
    let throttled = v.verify_charged(&forged(), NOW, &c).unwrap_err();
    let TokenError::Throttled(limited) = throttled else {
        panic!("not throttled: {throttled:?}");
    };
    assert_eq!(limited.kind, LimitKind::TokenFailuresConnection);
    assert!(limited.retry_after_secs >= 1);
    assert_eq!(throttled.code(), Code::RateLimited);
    assert_eq!(Code::from(throttled), Code::RateLimited);
    // The refused one was never verified: three signature checks in all.
    assert_eq!(v.cache_misses(), 3);
    // The same certificate on another connection still has budget left.
    fails_signature(&v, &charge(2, &TP));
}

#[test]
fn a_certificate_is_bounded_across_its_connections() {
    let v = verifier(100, 4);
    for port in 0..4 {
        fails_signature(&v, &charge(port, &TP));
    }
    let fresh = charge(99, &TP);
    match v.verify_charged(&forged(), NOW, &fresh) {
        Err(TokenError::Throttled(l)) => assert_eq!(l.kind, LimitKind::TokenFailuresCertificate),
        other => panic!("not throttled by the certificate: {other:?}"),
    }
    // Another certificate is not affected.
    fails_signature(&v, &charge(99, &[0x5A; 32]));
}

#[test]
fn cache_hits_and_valid_tokens_never_charge() {
    let v = verifier(1, 1);
    let c = charge(1, &TP);
    // Many fresh valid tokens and their cache hits: nothing is charged.
    let tokens: Vec<String> = (0..20).map(|i| valid(&format!("jti-{i}"))).collect();
    for t in tokens.iter().chain(tokens.iter()) {
        v.verify_charged(t, NOW, &c).expect("valid");
    }
    assert_eq!((v.cache_misses(), v.cache_hits()), (20, 20));
    assert_eq!(v.budget().tracked(), (0, 0));
    // One failure spends the whole budget of one …
    fails_signature(&v, &c);
    assert!(matches!(
        v.verify_charged(&forged(), NOW, &c),
        Err(TokenError::Throttled(_))
    ));
    // … yet a token already verified is still served from the cache.
    v.verify_charged(&tokens[0], NOW, &c)
        .expect("a cache hit is never throttled");
    // A token the cache has not seen waits for the budget, like any other.
    assert!(matches!(
        v.verify_charged(&valid("jti-new"), NOW, &c),
        Err(TokenError::Throttled(_))
    ));
}

#[test]
fn refusals_before_the_signature_are_free_and_after_it_are_charged() {
    let v = verifier(1, 1);
    let c = charge(1, &TP);
    let k = keys();
    let no_typ = sign_raw(
        r#"{"alg":"ES256","kid":"ec1"}"#,
        &claims().to_string(),
        &k.ec.enc,
        jsonwebtoken::Algorithm::ES256,
    );
    let unknown_kid = mint(&ec_key("nope"), &claims());
    for _ in 0..10 {
        for (t, e) in [
            ("a.b", TokenError::Malformed),
            (no_typ.as_str(), TokenError::BadTyp),
            (unknown_kid.as_str(), TokenError::UnknownKid),
        ] {
            assert_eq!(v.verify_charged(t, NOW, &c).unwrap_err(), e);
        }
    }
    assert_eq!(v.budget().tracked(), (0, 0));
    // A genuine but expired token costs a signature check: it is charged.
    let mut expired = claims();
    expired["exp"] = json!(NOW - 3600);
    let expired = mint(&k.ec, &expired);
    assert_eq!(
        v.verify_charged(&expired, NOW, &c).unwrap_err(),
        TokenError::Expired
    );
    assert_eq!(v.budget().tracked(), (1, 1));
    assert!(matches!(
        v.verify_charged(&expired, NOW, &c),
        Err(TokenError::Throttled(_))
    ));
    // The plain verifier is not charged (the gateway's identification of refusals uses it).
    assert_eq!(v.verify(&expired, NOW).unwrap_err(), TokenError::Expired);
}

#[test]
fn the_decision_answers_a_spent_budget_with_rate_limited() {
    let dir = one_user_one_provider();
    let consent = StaticConsent::new();
    let v = verifier(1, 10);
    let path = format!("/v1/providers/{PROVIDER}/accounts");
    let route = match_route(&http::Method::GET, &path, None).unwrap();
    let ask = |token: &str| {
        let auth = format!("Bearer {token}");
        let facts = facts(&route, auth.as_bytes());
        let charged = Charged {
            verifier: &v,
            charge: charge(7, &TP),
        };
        decide(&dir, &charged, |_| Some(&consent), &facts).map(|g| g.api_user.bin)
    };
    let first = ask(&forged()).unwrap_err();
    assert_eq!((first.code, first.limited()), (Code::InvalidToken, None));
    let second = ask(&forged()).unwrap_err();
    assert_eq!(second.code, Code::RateLimited);
    let limited = second.limited().expect("which budget refused");
    assert_eq!(limited.kind, LimitKind::TokenFailuresConnection);
    assert_eq!(ask(&valid("jti-ok")).unwrap_err().code, Code::RateLimited);
    // The plain verifier (no sources to charge) decides as before.
    let auth = format!("Bearer {}", valid("jti-plain"));
    let plain = decide(
        &dir,
        &v,
        |_| Some(&consent),
        &facts(&route, auth.as_bytes()),
    );
    assert!(plain.is_ok());
}
