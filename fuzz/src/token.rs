//! The token scanner (`policy::token`): `bearer` on an `Authorization` value,
//! `TokenVerifier::verify` on raw tokens and on tokens signed over fuzzed header and
//! claims JSON (so the claim scanner is reached past the signature), and the JWKS parser.
//!
//! Input: one byte choosing the mode, then
//! * 0: an `Authorization` value for `bearer`, whose token is then verified;
//! * 1: a raw token for `verify`;
//! * 2: header JSON, a `0xFF` byte, claims JSON: signed with the fixed fuzzing key;
//! * 3: a JWKS document for `Jwks::from_json`.
//!
//! What must hold: `bearer` returns exactly the text after `Bearer ` and only `token68`;
//! verifying twice gives the same answer (the second comes from the cache); an accepted
//! token's header and claims, read independently with `serde_json::Value`, carry exactly
//! what the verifier reports and pass every rule of contract §4.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use policy::token::{bearer, Jwks, TokenSettings, TokenVerifier, VerifiedToken};
use sandbox::tokens::{DevAlg, DevIssuer};
use serde_json::Value;

/// The issuer the verifier expects.
pub const ISSUER: &str = "https://trust.hub.local.test";
/// The audience the verifier expects.
pub const AUDIENCE: &str = "https://hub.local.test";
/// The fixed key's id.
pub const KID: &str = "fuzz-ed25519";
/// The verifier's clock: 2027-01-15T08:00:00Z.
pub const NOW: i64 = 1_800_000_000;
/// The default leeway, as configured.
const LEEWAY: i64 = 30;

/// The fuzzing issuer: an Ed25519 key from a fixed seed (a fuzzing fixture that signs
/// nothing anyone trusts), so seed tokens written once stay valid across runs.
///
/// # Panics
///
/// At start-up, if the fixed key does not load.
pub fn issuer() -> &'static DevIssuer {
    static ISSUER_KEY: OnceLock<DevIssuer> = OnceLock::new();
    ISSUER_KEY.get_or_init(|| {
        // PKCS#8 v1 for Ed25519 (RFC 8410): a fixed prefix, then the 32-byte seed.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&[0x5a; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        match DevIssuer::load(&pem, KID, ISSUER, DevAlg::EdDsa) {
            Ok(i) => i,
            Err(e) => panic!("the fixed fuzzing key does not load: {e}"),
        }
    })
}

fn verifier() -> TokenVerifier {
    static JWKS: OnceLock<String> = OnceLock::new();
    let json = JWKS.get_or_init(|| issuer().jwks_json());
    let jwks = match Jwks::from_json(json.as_bytes()) {
        Ok(j) => j,
        Err(e) => panic!("the fuzzing JWKS does not parse: {e}"),
    };
    let mut settings = TokenSettings::new(ISSUER, AUDIENCE);
    settings.cache_capacity = 16;
    TokenVerifier::new(settings, jwks)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => authorization(rest),
        1 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                verify_twice(token);
            }
        }
        2 => signed(rest),
        _ => jwks(rest),
    }
}

fn authorization(value: &[u8]) {
    let Some(token) = bearer(value) else {
        return;
    };
    assert!(value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "));
    assert_eq!(token.as_bytes(), &value[7..], "bearer returned other text");
    let body = token.trim_end_matches('=');
    assert!(!body.is_empty(), "bearer accepted an empty token");
    assert!(
        body.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)),
        "bearer accepted a non-token68 value"
    );
    verify_twice(token);
}

fn signed(rest: &[u8]) {
    let Some(cut) = rest.iter().position(|&b| b == 0xFF) else {
        return;
    };
    let (Ok(header), Ok(claims)) = (
        std::str::from_utf8(&rest[..cut]),
        std::str::from_utf8(&rest[cut + 1..]),
    ) else {
        return;
    };
    let Ok(token) = issuer().mint_raw(header, claims) else {
        return;
    };
    verify_twice(&token);
}

fn verify_twice(token: &str) {
    let v = verifier();
    let first = v.verify(token, NOW);
    let second = v.verify(token, NOW);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the cached answer differs"),
        (Err(a), Err(b)) => assert_eq!(a, b, "the second refusal differs"),
        _ => panic!("verify changed its mind: {first:?} then {second:?}"),
    }
    if let Ok(t) = first {
        check_accepted(token, &t);
    }
}

fn part(token: &str, i: usize) -> Value {
    let text = token.split('.').nth(i).unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD.decode(text).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// An accepted token, read again without the verifier: it must say what was reported.
fn check_accepted(token: &str, t: &VerifiedToken) {
    let header = part(token, 0);
    assert_eq!(header["alg"], "EdDSA", "{header}");
    assert_eq!(header["kid"], KID, "{header}");
    assert!(header.get("crit").is_none(), "crit accepted: {header}");
    let c = part(token, 1);
    assert_eq!(c["iss"], ISSUER, "{c}");
    let aud_ok = c["aud"] == AUDIENCE
        || c["aud"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == AUDIENCE));
    assert!(aud_ok, "aud {}", c["aud"]);
    assert_eq!(c["exp"].as_i64(), Some(t.exp), "{c}");
    assert_eq!(c["iat"].as_i64(), Some(t.iat), "{c}");
    assert_eq!(c.get("nbf").and_then(Value::as_i64), t.nbf, "{c}");
    assert!(NOW - LEEWAY < t.exp && t.iat <= NOW + LEEWAY, "times {t:?}");
    assert!(t.nbf.is_none_or(|n| n <= NOW + LEEWAY), "nbf {t:?}");
    assert_eq!(c["client_id"], t.client_id.to_string(), "{c}");
    assert_eq!(c["consent_id"], &*t.consent_id, "{c}");
    assert!((1..=128).contains(&t.consent_id.len()));
    assert!(t.consent_id.bytes().all(|b| b.is_ascii_graphic()));
    assert_eq!(c["jti"], &*t.jti, "{c}");
    assert!((1..=256).contains(&t.jti.len()));
    assert!(c["scope"].is_string(), "{c}");
    let cnf = c["cnf"]["x5t#S256"].as_str().unwrap_or_default();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(cnf).ok().as_deref(),
        Some(&t.cnf_x5t_s256[..]),
        "{c}"
    );
}

fn jwks(doc: &[u8]) {
    if let Ok(set) = Jwks::from_json(doc) {
        assert!(!set.is_empty(), "a parsed JWKS without a usable key");
        let kids: Vec<&str> = set.kids().map(|(k, _)| k).collect();
        let mut unique = kids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(kids.len(), unique.len(), "duplicate kids accepted");
    }
}
