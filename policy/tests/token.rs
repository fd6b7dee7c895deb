//! Token verification against real ES256 / PS256 / EdDSA keys, and the malformed,
//! mis-signed and out-of-time tokens the verifier must refuse.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use policy::token::SigAlg;
use policy::{Code, Jwks, JwksError, Permission, Permissions, TokenError};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::OnceLock;

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(Keys::new)
}

fn err(token: &str) -> TokenError {
    keys().verifier().verify(token, NOW).unwrap_err()
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    c
}

#[test]
fn valid_tokens_of_every_algorithm_verify() {
    let k = keys();
    let v = k.verifier();
    for key in [&k.ec, &k.rsa, &k.ed] {
        let t = v.verify(&mint(key, &claims()), NOW).unwrap();
        assert_eq!(t.client_id, bin(USER));
        assert_eq!(&*t.consent_id, "c-1");
        assert_eq!(&*t.jti, "jti-1");
        assert_eq!(t.cnf_x5t_s256, TP);
        assert_eq!(t.exp, NOW + 600);
        assert_eq!(t.iat, NOW - 10);
        assert_eq!(t.nbf, None);
        assert!(t.grants(Permission::Accounts) && t.grants(Permission::Transactions));
    }
}

#[test]
fn jwks_pins_algorithms() {
    let jwks = Jwks::from_json(&keys().jwks_json()).unwrap();
    let mut kids: Vec<(&str, SigAlg)> = jwks.kids().collect();
    kids.sort_by_key(|k| k.0);
    assert_eq!(
        kids,
        vec![
            ("ec1", SigAlg::Es256),
            ("ed1", SigAlg::EdDsa),
            ("rsa1", SigAlg::Ps256)
        ]
    );
    assert_eq!(jwks.skipped(), 0);
}

#[test]
fn alg_none_is_refused() {
    let h = r#"{"typ":"at+jwt","alg":"none","kid":"ec1"}"#;
    let unsigned = format!("{}.{}.", b64(h), b64(claims().to_string()));
    assert_eq!(err(&unsigned), TokenError::Malformed);
    let with_sig = format!("{}.{}.c2ln", b64(h), b64(claims().to_string()));
    assert_eq!(err(&with_sig), TokenError::UnsupportedAlg);
    let h = r#"{"typ":"at+jwt","alg":"None","kid":"ec1"}"#;
    assert_eq!(
        err(&format!("{}.{}.c2ln", b64(h), b64(claims().to_string()))),
        TokenError::UnsupportedAlg
    );
}

#[test]
fn hs256_signed_with_public_key_bytes_is_refused() {
    let k = keys();
    // The classic confusion attack: HMAC keyed with what the verifier holds as public key.
    for secret in [k.jwks_json(), serde_json::to_vec(&k.ec.jwk).unwrap()] {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let name = format!("{alg:?}");
            let t = sign_raw(
                &format!(r#"{{"typ":"at+jwt","alg":"{name}","kid":"ec1"}}"#),
                &claims().to_string(),
                &EncodingKey::from_secret(&secret),
                alg,
            );
            assert_eq!(err(&t), TokenError::UnsupportedAlg, "{name}");
        }
    }
}

#[test]
fn rs256_and_unknown_algorithms_are_refused() {
    let k = keys();
    let rs = sign_raw(
        r#"{"typ":"at+jwt","alg":"RS256","kid":"rsa1"}"#,
        &claims().to_string(),
        &k.rsa.enc,
        Algorithm::RS256,
    );
    assert_eq!(err(&rs), TokenError::UnsupportedAlg);
    for alg in ["ES384", "PS512", "ES256K", "", "es256"] {
        let t = format!(
            "{}.{}.c2ln",
            b64(format!(r#"{{"typ":"at+jwt","alg":"{alg}","kid":"ec1"}}"#)),
            b64("{}")
        );
        assert_eq!(err(&t), TokenError::UnsupportedAlg, "{alg}");
    }
    let t = format!(
        "{}.{}.c2ln",
        b64(r#"{"typ":"at+jwt","alg":256,"kid":"ec1"}"#),
        b64("{}")
    );
    assert_eq!(err(&t), TokenError::UnsupportedAlg);
    let t = format!(
        "{}.{}.c2ln",
        b64(r#"{"typ":"at+jwt","kid":"ec1"}"#),
        b64("{}")
    );
    assert_eq!(err(&t), TokenError::UnsupportedAlg);
}

#[test]
fn a_key_is_only_used_with_its_own_algorithm() {
    let k = keys();
    // EdDSA signature, header claiming the EC key's kid.
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"EdDSA","kid":"ec1"}"#,
        &claims().to_string(),
        &k.ed.enc,
        Algorithm::EdDSA,
    );
    assert_eq!(err(&t), TokenError::AlgKeyMismatch);
}

#[test]
fn kid_is_required_and_must_be_known() {
    let k = keys();
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256"}"#,
        &claims().to_string(),
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert_eq!(err(&t), TokenError::MissingKid);
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256","kid":"nope"}"#,
        &claims().to_string(),
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert_eq!(err(&t), TokenError::UnknownKid);
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256","kid":7}"#,
        &claims().to_string(),
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert_eq!(err(&t), TokenError::MissingKid);
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256","kid":""}"#,
        &claims().to_string(),
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert_eq!(err(&t), TokenError::MissingKid);
}

#[test]
fn wrong_key_and_tampering_fail_the_signature() {
    let other = ec_key("ec1");
    assert_eq!(err(&mint(&other, &claims())), TokenError::BadSignature);

    let good = mint(&keys().ec, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = b64(with(|c| {
        c.insert(
            "scope".into(),
            json!("accounts balances transactions payments"),
        );
    })
    .to_string());
    let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    assert_eq!(err(&forged), TokenError::BadSignature);
    // A signature of the right shape but from another token.
    let other_sig = mint(
        &keys().ec,
        &with(|c| {
            c.insert("jti".into(), json!("x"));
        }),
    );
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        other_sig.split('.').nth(2).unwrap()
    );
    assert_eq!(err(&swapped), TokenError::BadSignature);
}

#[test]
fn time_claims_with_leeway() {
    let k = keys();
    let v = k.verifier();
    let at = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let c = with(|m| f(m));
        v.verify(&mint(&k.ec, &c), NOW).map(|_| ())
    };
    assert_eq!(
        at(&|c| {
            c.insert("exp".into(), json!(NOW - 31));
        }),
        Err(TokenError::Expired)
    );
    assert_eq!(
        at(&|c| {
            c.insert("exp".into(), json!(NOW - 30));
        }),
        Err(TokenError::Expired)
    );
    assert_eq!(
        at(&|c| {
            c.insert("exp".into(), json!(NOW - 29));
        }),
        Ok(())
    );
    assert_eq!(
        at(&|c| {
            c.insert("nbf".into(), json!(NOW + 31));
        }),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(
        at(&|c| {
            c.insert("nbf".into(), json!(NOW + 30));
        }),
        Ok(())
    );
    assert_eq!(
        at(&|c| {
            c.insert("iat".into(), json!(NOW + 31));
        }),
        Err(TokenError::IssuedInFuture)
    );
    assert_eq!(
        at(&|c| {
            c.insert("iat".into(), json!(NOW + 30));
        }),
        Ok(())
    );
    assert_eq!(
        at(&|c| {
            c.insert("nbf".into(), json!(null));
        }),
        Err(TokenError::InvalidClaim("nbf"))
    );
    assert_eq!(
        at(&|c| {
            c.insert("exp".into(), json!(1.75e9));
        }),
        Err(TokenError::InvalidClaim("exp"))
    );
    assert_eq!(
        at(&|c| {
            c.insert("iat".into(), json!("0"));
        }),
        Err(TokenError::InvalidClaim("iat"))
    );

    let strict = k.verifier_with(|s| s.leeway_secs = 0);
    let c = with(|c| {
        c.insert("exp".into(), json!(NOW + 1));
    });
    assert!(strict.verify(&mint(&k.ec, &c), NOW).is_ok());
    assert_eq!(
        strict.verify(&mint(&k.ec, &c), NOW + 1).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn issuer_and_audience() {
    let k = keys();
    let v = k.verifier();
    let t = |c: Value| v.verify(&mint(&k.ec, &c), NOW).map(|_| ());
    assert_eq!(
        t(with(|c| {
            c.insert("iss".into(), json!("https://evil.test"));
        })),
        Err(TokenError::WrongIssuer)
    );
    assert_eq!(
        t(with(|c| {
            c.insert("iss".into(), json!(format!("{ISSUER}/")));
        })),
        Err(TokenError::WrongIssuer)
    );
    assert_eq!(
        t(with(|c| {
            c.insert("aud".into(), json!("other"));
        })),
        Err(TokenError::WrongAudience)
    );
    assert_eq!(
        t(with(|c| {
            c.insert("aud".into(), json!(["a", AUDIENCE]));
        })),
        Ok(())
    );
    assert_eq!(
        t(with(|c| {
            c.insert("aud".into(), json!(["a", "b"]));
        })),
        Err(TokenError::WrongAudience)
    );
    assert_eq!(
        t(with(|c| {
            c.insert("aud".into(), json!([]));
        })),
        Err(TokenError::WrongAudience)
    );
    assert_eq!(
        t(with(|c| {
            c.insert("aud".into(), json!(1));
        })),
        Err(TokenError::InvalidClaim("aud"))
    );
    assert_eq!(
        t(with(|c| {
            c.insert("aud".into(), json!([1]));
        })),
        Err(TokenError::InvalidClaim("aud"))
    );
    assert_eq!(
        t(with(|c| {
            c.insert("iss".into(), json!(null));
        })),
        Err(TokenError::InvalidClaim("iss"))
    );
}

#[test]
fn every_required_claim_is_required() {
    let k = keys();
    for name in [
        "iss",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "consent_id",
        "scope",
        "cnf",
    ] {
        let c = with(|c| {
            c.remove(name);
        });
        assert_eq!(
            err(&mint(&k.ec, &c)),
            TokenError::MissingClaim(name),
            "{name}"
        );
    }
    let c = with(|c| {
        c.insert("cnf".into(), json!({"jkt": "abc"}));
    });
    assert_eq!(
        err(&mint(&k.ec, &c)),
        TokenError::MissingClaim("cnf.x5t#S256")
    );
    // `sub` and `nbf` are not required.
    let c = with(|c| {
        c.remove("sub");
        c.remove("nbf");
    });
    assert!(k.verifier().verify(&mint(&k.ec, &c), NOW).is_ok());
}

#[test]
fn claim_shapes_are_checked() {
    let k = keys();
    let bad: &[(&str, Value, &str)] = &[
        ("client_id", json!("18034001234"), "client_id"),
        ("client_id", json!(180340012345u64), "client_id"),
        ("client_id", json!("18034001234x"), "client_id"),
        ("consent_id", json!(""), "consent_id"),
        ("consent_id", json!("c 1"), "consent_id"),
        ("consent_id", json!("c\r\nx-hub-api-user: 1"), "consent_id"),
        ("consent_id", json!("c-é"), "consent_id"),
        ("consent_id", json!("c".repeat(129)), "consent_id"),
        ("jti", json!(""), "jti"),
        ("jti", json!(5), "jti"),
        ("scope", json!(["accounts"]), "scope"),
        ("cnf", json!({"x5t#S256": b64([1u8; 31])}), "cnf.x5t#S256"),
        ("cnf", json!({"x5t#S256": b64([1u8; 33])}), "cnf.x5t#S256"),
        (
            "cnf",
            json!({"x5t#S256": format!("{}=", b64([1u8; 32]))}),
            "cnf.x5t#S256",
        ),
        (
            "cnf",
            json!({"x5t#S256": base64_std([1u8; 32])}),
            "cnf.x5t#S256",
        ),
        ("cnf", json!("x"), "cnf"),
    ];
    for (name, value, reported) in bad {
        let c = with(|c| {
            c.insert((*name).into(), value.clone());
        });
        assert_eq!(
            err(&mint(&k.ec, &c)),
            TokenError::InvalidClaim(reported),
            "{name} = {value}"
        );
    }
    let ok = with(|c| {
        c.insert("consent_id".into(), json!("c".repeat(128)));
    });
    assert!(k.verifier().verify(&mint(&k.ec, &ok), NOW).is_ok());
}

fn base64_std(b: [u8; 32]) -> String {
    use base64::Engine;
    // 32 bytes in standard alphabet with padding; chosen so it contains '+' or '/'.
    let mut bytes = b;
    bytes[0] = 0xfb;
    bytes[1] = 0xff;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn scope_words_are_parsed_and_unknown_ones_ignored() {
    let k = keys();
    let v = k.verifier();
    let cases: &[(&str, Permissions)] = &[
        ("", Permissions::EMPTY),
        ("accounts", Permissions::EMPTY.with(Permission::Accounts)),
        (
            "openid accounts  payments foo:bar",
            Permissions::EMPTY
                .with(Permission::Accounts)
                .with(Permission::Payments),
        ),
        (
            "ACCOUNTS balances",
            Permissions::EMPTY.with(Permission::Balances),
        ),
        ("accounts,balances", Permissions::EMPTY),
    ];
    for (scope, expected) in cases {
        let c = with(|c| {
            c.insert("scope".into(), json!(scope));
        });
        assert_eq!(
            v.verify(&mint(&k.ec, &c), NOW).unwrap().scope,
            *expected,
            "{scope:?}"
        );
    }
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let k = keys();
    let v = k.verifier_with(|s| s.max_token_bytes = 600);
    let big = with(|c| {
        c.insert("pad".into(), json!("x".repeat(600)));
    });
    assert_eq!(
        v.verify(&mint(&k.ec, &big), NOW).unwrap_err(),
        TokenError::TooLarge
    );
    assert_eq!(err(&"a".repeat(8193)), TokenError::TooLarge);
    assert!(v.verify(&mint(&k.ec, &claims()), NOW).is_ok());
}

#[test]
fn structure_and_base64_are_strict() {
    let good = mint(&keys().ec, &claims());
    let p: Vec<&str> = good.split('.').collect();
    assert_eq!(err(&format!("{}.{}", p[0], p[1])), TokenError::Malformed);
    assert_eq!(err(&format!("{good}.x")), TokenError::Malformed);
    assert_eq!(err(&format!("{}..{}", p[0], p[2])), TokenError::Malformed);
    assert_eq!(err(""), TokenError::Malformed);
    assert_eq!(err(".."), TokenError::Malformed);
    assert_eq!(
        err(&format!("{}=.{}.{}", p[0], p[1], p[2])),
        TokenError::Base64("header")
    );
    assert_eq!(
        err(&format!("+{}.{}.{}", p[0], p[1], p[2])),
        TokenError::Base64("header")
    );
    assert_eq!(
        err(&format!("{}.{}.{}=", p[0], p[1], p[2])),
        TokenError::Base64("signature")
    );
    assert_eq!(
        err(&format!("{}.{}.{}/", p[0], p[1], p[2])),
        TokenError::Base64("signature")
    );
    // Impossible base64 length (one char left over).
    assert_eq!(
        err(&format!("{}a.{}.{}", p[0], p[1], p[2])),
        TokenError::Base64("header")
    );
    // Non-canonical trailing bits: "e30" is "{}", "e31" decodes to it only by ignoring bits.
    assert_eq!(b64("{}"), "e30");
    assert_eq!(
        err(&format!("e31.{}.{}", p[1], p[2])),
        TokenError::Base64("header")
    );
    assert_eq!(
        err(&format!("{}.{}.{}", b64("[]"), p[1], p[2])),
        TokenError::HeaderJson
    );
    assert_eq!(
        err(&format!("{}.{}.{}", b64("{"), p[1], p[2])),
        TokenError::HeaderJson
    );
    assert_eq!(
        err(&format!("{}.{}.{}", b64([0xffu8, 0xfe]), p[1], p[2])),
        TokenError::HeaderJson
    );
    // Payload that is not JSON, correctly signed.
    let k = keys();
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1"}"#,
        "not json",
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert_eq!(err(&t), TokenError::ClaimsJson);
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1"}"#,
        "[1]",
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert_eq!(err(&t), TokenError::ClaimsJson);
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1"}"#,
        &format!("{} ", claims()),
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert!(
        keys().verifier().verify(&t, NOW).is_ok(),
        "trailing whitespace is valid JSON"
    );
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1"}"#,
        &format!("{}{{}}", claims()),
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert_eq!(err(&t), TokenError::ClaimsJson);
}

#[test]
fn duplicated_claims_are_refused() {
    let k = keys();
    let h = r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1"}"#;
    for extra in [
        format!(r#""exp":{}"#, NOW + 9999),
        r#""scope":"accounts balances transactions payments""#.to_owned(),
        r#""client_id":"180340012346""#.to_owned(),
        r#""sub":"x""#.to_owned(),
        r#""\u0069ss":"x""#.to_owned(),
    ] {
        let t = sign_raw(h, &claims_text_with(&extra), &k.ec.enc, Algorithm::ES256);
        assert_eq!(err(&t), TokenError::DuplicateClaim, "{extra}");
    }
    let dup_cnf = claims().to_string().replace(
        r#""cnf":{"#,
        &format!(r#""cnf":{{"x5t#S256":"{}","#, b64([9u8; 32])),
    );
    let t = sign_raw(h, &dup_cnf, &k.ec.enc, Algorithm::ES256);
    assert_eq!(err(&t), TokenError::DuplicateClaim);
    // Sanity: the splice itself produces a valid token when nothing is duplicated.
    let t = sign_raw(
        h,
        &claims_text_with(r#""extra":1"#),
        &k.ec.enc,
        Algorithm::ES256,
    );
    assert!(k.verifier().verify(&t, NOW).is_ok());
}

#[test]
fn header_is_strict() {
    let k = keys();
    let c = claims().to_string();
    let t = |h: &str| sign_raw(h, &c, &k.ec.enc, Algorithm::ES256);
    assert_eq!(
        err(&t(
            r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1","alg":"ES256"}"#
        )),
        TokenError::HeaderDuplicate
    );
    assert_eq!(
        err(&t(
            r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1","x":1,"x":2}"#
        )),
        TokenError::HeaderDuplicate
    );
    assert_eq!(
        err(&t(
            r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1","kid":"ed1"}"#
        )),
        TokenError::HeaderDuplicate
    );
    assert_eq!(
        err(&t(
            r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1","crit":["exp"]}"#
        )),
        TokenError::Crit
    );
    assert_eq!(
        err(&t(
            r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1","crit":null}"#
        )),
        TokenError::Crit
    );
    assert_eq!(
        err(&t(r#"{"alg":"ES256","kid":"ec1","typ":"JOSE"}"#)),
        TokenError::BadTyp
    );
    assert_eq!(
        err(&t(r#"{"alg":"ES256","kid":"ec1","typ":"id_token+jwt"}"#)),
        TokenError::BadTyp
    );
    assert_eq!(
        err(&t(r#"{"alg":"ES256","kid":"ec1","typ":1}"#)),
        TokenError::BadTyp
    );
    // RFC 9068 §4: only an access token's `typ` passes; a plain JWT (an ID token, say)
    // or a token without `typ` does not.
    for h in [
        r#"{"alg":"ES256","kid":"ec1"}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":"JWT"}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":"jwt"}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":null}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":""}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":"at+jwt "}"#,
    ] {
        assert_eq!(err(&t(h)), TokenError::BadTyp, "{h}");
    }
    let v = k.verifier();
    for h in [
        r#"{"alg":"ES256","kid":"ec1","typ":"at+jwt"}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":"application/at+jwt"}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":"AT+JWT"}"#,
        r#"{"alg":"ES256","kid":"ec1","typ":"Application/AT+JWT"}"#,
        r#"{"typ":"at+jwt","alg":"ES256","kid":"ec1","jku":"https://evil.test/jwks"}"#,
    ] {
        assert!(v.verify(&t(h), NOW).is_ok(), "{h}");
    }
}

#[test]
fn cache_hits_then_expiry() {
    let k = keys();
    let v = k.verifier();
    let c = with(|c| {
        c.insert("exp".into(), json!(NOW + 100));
    });
    let t = mint(&k.ec, &c);
    let a = v.verify(&t, NOW).unwrap();
    assert_eq!((v.cache_hits(), v.cache_misses()), (0, 1));
    let b = v.verify(&t, NOW + 50).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "second call served from the cache"
    );
    assert_eq!((v.cache_hits(), v.cache_misses()), (1, 1));
    // Past exp + leeway: refused even though cached, and evicted.
    assert_eq!(v.verify(&t, NOW + 130).unwrap_err(), TokenError::Expired);
    assert_eq!((v.cache_hits(), v.cache_misses()), (2, 1));
    assert_eq!(v.verify(&t, NOW + 130).unwrap_err(), TokenError::Expired);
    assert_eq!((v.cache_hits(), v.cache_misses()), (2, 2));
    // Time checks on a hit: before nbf.
    let c = with(|c| {
        c.insert("nbf".into(), json!(NOW + 100));
        c.insert("iat".into(), json!(NOW + 100));
    });
    let t = mint(&k.ec, &c);
    v.verify(&t, NOW + 100).unwrap();
    assert_eq!(v.verify(&t, NOW).unwrap_err(), TokenError::NotYetValid);
    // Failures are not cached.
    let bad = mint(&ec_key("ec1"), &claims());
    let misses = v.cache_misses();
    let _ = v.verify(&bad, NOW);
    let _ = v.verify(&bad, NOW);
    assert_eq!(v.cache_misses(), misses + 2);
}

#[test]
fn cache_can_be_disabled() {
    let k = keys();
    let v = k.verifier_with(|s| s.cache_capacity = 0);
    let t = mint(&k.ed, &claims());
    v.verify(&t, NOW).unwrap();
    v.verify(&t, NOW).unwrap();
    assert_eq!((v.cache_hits(), v.cache_misses()), (0, 2));
}

#[test]
fn every_token_error_is_invalid_token() {
    for e in [
        TokenError::TooLarge,
        TokenError::BadSignature,
        TokenError::MissingClaim("iss"),
        TokenError::Expired,
    ] {
        assert_eq!(e.code(), Code::InvalidToken);
        assert_eq!(Code::from(e), Code::InvalidToken);
        assert!(!e.reason().is_empty());
    }
}

#[test]
fn errors_never_echo_token_content() {
    let k = keys();
    let c = with(|c| {
        c.insert("consent_id".into(), json!("SECRET-CONSENT zz"));
        c.insert("iss".into(), json!("SECRET-ISS"));
    });
    let e = k.verifier().verify(&mint(&k.ec, &c), NOW).unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
}

// ---------------------------------------------------------------- JWKS

fn jwks(keys: Value) -> Result<Jwks, JwksError> {
    Jwks::from_json(&serde_json::to_vec(&json!({ "keys": keys })).unwrap())
}

#[test]
fn jwks_rules() {
    let k = keys();
    let ec = k.ec.jwk.clone();
    let mut no_kid = ec.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let mut empty_kid = ec.clone();
    empty_kid["kid"] = json!("");
    assert!(matches!(
        jwks(json!([empty_kid])),
        Err(JwksError::MissingKid { index: 0 })
    ));
    assert!(matches!(
        jwks(json!([no_kid])),
        Err(JwksError::MissingKid { index: 0 })
    ));
    assert!(matches!(
        jwks(json!([ec.clone(), k.ed.jwk.clone(), ec.clone()])),
        Err(JwksError::DuplicateKid { .. })
    ));
    let mut private = ec.clone();
    private["d"] = json!(b64([1u8; 32]));
    assert!(matches!(
        jwks(json!([private])),
        Err(JwksError::PrivateKeyMaterial { .. })
    ));
    assert!(matches!(
        jwks(json!([{"kty":"oct","kid":"h","k":"c2VjcmV0"}, ec.clone()])),
        Err(JwksError::PrivateKeyMaterial { .. })
    ));
    // RSA below 2048 bits.
    let mut n = vec![0xc1u8; 128];
    n[127] |= 1;
    assert!(matches!(
        jwks(json!([{"kty":"RSA","kid":"small","n": b64(&n),"e":"AQAB"}])),
        Err(JwksError::InvalidKey { .. })
    ));
    let mut even_e = k.rsa.jwk.clone();
    even_e["e"] = json!(b64([2u8]));
    assert!(matches!(
        jwks(json!([even_e])),
        Err(JwksError::InvalidKey { .. })
    ));
    let mut bad_x = ec.clone();
    bad_x["x"] = json!(b64([1u8; 31]));
    assert!(matches!(
        jwks(json!([bad_x])),
        Err(JwksError::InvalidKey { .. })
    ));
    let mut bad_ed = k.ed.jwk.clone();
    bad_ed["x"] = json!("!!");
    assert!(matches!(
        jwks(json!([bad_ed])),
        Err(JwksError::InvalidKey { .. })
    ));
    // Unusable-but-harmless keys are skipped.
    let mut rs256 = k.rsa.jwk.clone();
    rs256["alg"] = json!("RS256");
    rs256["kid"] = json!("rs");
    let mut enc = ec.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("enc");
    let mut es384 = ec.clone();
    es384["crv"] = json!("P-384");
    es384["kid"] = json!("p384");
    let mut ops = ec.clone();
    ops["key_ops"] = json!(["sign"]);
    ops["kid"] = json!("ops");
    let mut wrong_alg = ec.clone();
    wrong_alg["alg"] = json!("ES384");
    wrong_alg["kid"] = json!("walg");
    let set = jwks(json!([rs256, enc, es384, ops, wrong_alg, ec.clone()])).unwrap();
    assert_eq!((set.len(), set.skipped()), (1, 5));
    assert!(matches!(jwks(json!([])), Err(JwksError::NoUsableKeys)));
    assert!(matches!(Jwks::from_json(b"{}"), Err(JwksError::Json(_))));
    assert!(matches!(Jwks::from_json(b"nope"), Err(JwksError::Json(_))));
    // A token whose kid names a skipped key is an unknown kid.
    let v = policy::TokenVerifier::new(
        policy::TokenSettings::new(ISSUER, AUDIENCE),
        jwks(json!([ec.clone(), {
            "kty":"RSA","kid":"rs","alg":"RS256","n":k.rsa.jwk["n"],"e":"AQAB"
        }]))
        .unwrap(),
    );
    let t = sign_raw(
        r#"{"typ":"at+jwt","alg":"PS256","kid":"rs"}"#,
        &claims().to_string(),
        &k.rsa.enc,
        Algorithm::PS256,
    );
    assert_eq!(v.verify(&t, NOW).unwrap_err(), TokenError::UnknownKid);
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn time_checks_match_the_rule(
        exp_off in -200i64..200,
        nbf_off in proptest::option::of(-200i64..200),
        iat_off in -200i64..200,
        later in 0i64..200,
        leeway in 0u64..60,
    ) {
        let k = keys();
        let c = with(|c| {
            c.insert("exp".into(), json!(NOW + exp_off));
            c.insert("iat".into(), json!(NOW + iat_off));
            match nbf_off {
                Some(n) => { c.insert("nbf".into(), json!(NOW + n)); }
                None => { c.remove("nbf"); }
            }
        });
        let token = mint(&k.ec, &c);
        let l = leeway as i64;
        let expect = |now: i64| -> Result<(), TokenError> {
            if now - l >= NOW + exp_off { return Err(TokenError::Expired); }
            if let Some(n) = nbf_off { if now + l < NOW + n { return Err(TokenError::NotYetValid); } }
            if NOW + iat_off > now + l { return Err(TokenError::IssuedInFuture); }
            Ok(())
        };
        let v = k.verifier_with(|s| s.leeway_secs = leeway);
        prop_assert_eq!(v.verify(&token, NOW).map(|_| ()), expect(NOW));
        // Same answer later, whether or not the first call populated the cache.
        prop_assert_eq!(v.verify(&token, NOW + later).map(|_| ()), expect(NOW + later));
        let uncached = k.verifier_with(|s| { s.leeway_secs = leeway; s.cache_capacity = 0; });
        prop_assert_eq!(uncached.verify(&token, NOW + later).map(|_| ()), expect(NOW + later));
    }

    #[test]
    fn garbage_never_verifies(s in "[A-Za-z0-9_.=+/-]{0,300}") {
        prop_assert!(keys().verifier().verify(&s, NOW).is_err());
    }
}

#[test]
fn bearer_round_trip_with_real_token() {
    let t = mint(&keys().ec, &claims());
    let header = format!("Bearer {t}");
    assert_eq!(policy::bearer(header.as_bytes()), Some(t.as_str()));
}
