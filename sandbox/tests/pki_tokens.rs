//! Tests of the development token issuer: minted tokens verify with `jsonwebtoken`
//! through the published JWKS for every algorithm, keys round-trip through files, and
//! the forging helpers produce exactly the attacks they promise.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use consent_cache::{Bin, Permission};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use sandbox::tokens::{
    forge_hs256, forge_unsigned, jwks_json_for, random_jti, AccessClaims, DevAlg, DevIssuer,
    TokenError,
};
use serde_json::Value;

const ISS: &str = "https://trust.sandbox.test";
const AUD: &str = "open-api-hub";
const ALL: [DevAlg; 3] = [DevAlg::Es256, DevAlg::Ps256, DevAlg::EdDsa];

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn claims(thumb: &[u8; 32]) -> AccessClaims {
    AccessClaims::for_consent(
        ISS,
        AUD,
        Bin::parse("180340012345").unwrap(),
        "c-0001",
        &[Permission::Accounts, Permission::Balances],
        thumb,
        now(),
        3600,
    )
    .unwrap()
}

fn decoding_key(jwks_json: &str, kid: &str) -> DecodingKey {
    let set: JwkSet = serde_json::from_str(jwks_json).unwrap();
    DecodingKey::from_jwk(set.find(kid).expect("kid in JWKS")).unwrap()
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_audience(&[AUD]);
    v.set_issuer(&[ISS]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    v
}

fn segment(token: &str, i: usize) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(token.split('.').nth(i).unwrap())
        .unwrap()
}

#[test]
fn minted_tokens_verify_through_the_jwks_for_every_algorithm() {
    let thumb = [7u8; 32];
    for alg in ALL {
        let issuer = DevIssuer::generate(alg, &format!("kid-{alg}"), ISS).unwrap();
        let expected = claims(&thumb);
        let token = issuer.mint(&expected).unwrap();

        let header = decode_header(&token).unwrap();
        assert_eq!(header.alg, alg.algorithm());
        assert_eq!(header.kid.as_deref(), Some(issuer.kid()));
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));

        let key = decoding_key(&issuer.jwks_json(), issuer.kid());
        let data = decode::<Value>(&token, &key, &validation(alg.algorithm())).unwrap();
        let c = data.claims;
        assert_eq!(c["iss"], ISS);
        assert_eq!(c["aud"], AUD);
        assert_eq!(c["client_id"], "180340012345");
        assert_eq!(c["consent_id"], "c-0001");
        assert_eq!(c["scope"], "accounts balances");
        assert_eq!(c["cnf"]["x5t#S256"], URL_SAFE_NO_PAD.encode(thumb));
        assert_eq!(
            c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
            3600
        );
        assert!(c.get("nbf").is_none(), "no nbf unless asked for");
        assert_eq!(
            c.as_object().unwrap().len(),
            9,
            "exactly the claims of contract §4: {c}"
        );

        let typed = decode::<AccessClaims>(&token, &key, &validation(alg.algorithm())).unwrap();
        assert_eq!(typed.claims, expected);
    }
}

#[test]
fn a_token_does_not_verify_under_another_issuers_key() {
    let a = DevIssuer::generate(DevAlg::Es256, "a", ISS).unwrap();
    let b = DevIssuer::generate(DevAlg::Es256, "b", ISS).unwrap();
    let token = a.mint(&claims(&[1; 32])).unwrap();
    let err = decode::<Value>(
        &token,
        &decoding_key(&b.jwks_json(), "b"),
        &validation(Algorithm::ES256),
    )
    .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidSignature);

    let e1 = DevIssuer::generate(DevAlg::EdDsa, "e1", ISS).unwrap();
    let e2 = DevIssuer::generate(DevAlg::EdDsa, "e2", ISS).unwrap();
    assert_ne!(
        e1.jwks_json().replace("e1", ""),
        e2.jwks_json().replace("e2", "")
    );

    // A combined JWKS serves both keys, each under its kid.
    let both = jwks_json_for(&[&a, &b]);
    let token_b = b.mint(&claims(&[1; 32])).unwrap();
    decode::<Value>(
        &token,
        &decoding_key(&both, "a"),
        &validation(Algorithm::ES256),
    )
    .unwrap();
    decode::<Value>(
        &token_b,
        &decoding_key(&both, "b"),
        &validation(Algorithm::ES256),
    )
    .unwrap();
}

#[test]
fn jwks_has_the_documented_shape() {
    let parse = |issuer: &DevIssuer| -> Value {
        let v: Value = serde_json::from_str(&issuer.jwks_json()).unwrap();
        assert_eq!(v["keys"].as_array().unwrap().len(), 1);
        let k = v["keys"][0].clone();
        assert_eq!(k["kid"], issuer.kid());
        assert_eq!(k["alg"], issuer.alg().as_str());
        assert_eq!(k["use"], "sig");
        k
    };
    let b64len = |v: &Value| URL_SAFE_NO_PAD.decode(v.as_str().unwrap()).unwrap().len();

    let ec = parse(&DevIssuer::generate(DevAlg::Es256, "ec", ISS).unwrap());
    assert_eq!(
        (ec["kty"].as_str(), ec["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!((b64len(&ec["x"]), b64len(&ec["y"])), (32, 32));

    let rsa = parse(&DevIssuer::generate(DevAlg::Ps256, "rsa", ISS).unwrap());
    assert_eq!(rsa["kty"], "RSA");
    assert_eq!(
        b64len(&rsa["n"]),
        256,
        "2048-bit modulus without a leading zero"
    );
    assert_eq!(rsa["e"], "AQAB");

    let okp = parse(&DevIssuer::generate(DevAlg::EdDsa, "ed", ISS).unwrap());
    assert_eq!(
        (okp["kty"].as_str(), okp["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(b64len(&okp["x"]), 32);
}

#[test]
fn ps256_uses_the_committed_development_key() {
    let one = DevIssuer::generate(DevAlg::Ps256, "k", ISS).unwrap();
    let two = DevIssuer::generate(DevAlg::Ps256, "k", ISS).unwrap();
    assert_eq!(one.key_pem(), two.key_pem());
    assert_eq!(
        one.key_pem(),
        include_str!("../fixtures/dev-issuer-rsa-2048.pem")
    );
}

#[test]
fn key_files_round_trip_and_the_key_is_private() {
    let tmp = tempfile::tempdir().unwrap();
    for alg in ALL {
        let original = DevIssuer::generate(alg, &format!("dev/{alg} 1"), ISS).unwrap();
        let (key_path, jwks_path) = original.write_files(&tmp.path().join("keys")).unwrap();
        assert!(key_path.is_absolute());
        assert_eq!(
            key_path.file_name().unwrap().to_str().unwrap(),
            format!("issuer-dev_{alg}_1-key.pem")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let pem = std::fs::read_to_string(&key_path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(
            std::fs::read_to_string(&jwks_path).unwrap(),
            original.jwks_json()
        );

        let loaded = DevIssuer::load(&pem, original.kid(), ISS, alg).unwrap();
        assert_eq!(loaded.jwks_json(), original.jwks_json());
        let token = loaded.mint(&claims(&[3; 32])).unwrap();
        decode::<Value>(
            &token,
            &decoding_key(&original.jwks_json(), original.kid()),
            &validation(alg.algorithm()),
        )
        .unwrap();
    }
}

#[test]
fn load_refuses_keys_that_do_not_fit() {
    let ec = DevIssuer::generate(DevAlg::Es256, "ec", ISS).unwrap();
    assert!(matches!(
        DevIssuer::load(ec.key_pem(), "ec", ISS, DevAlg::Ps256),
        Err(TokenError::KeyRejected {
            alg: DevAlg::Ps256,
            ..
        })
    ));
    assert!(matches!(
        DevIssuer::load(ec.key_pem(), "ec", ISS, DevAlg::EdDsa),
        Err(TokenError::KeyRejected { .. })
    ));
    assert!(matches!(
        DevIssuer::load("not a key", "ec", ISS, DevAlg::Es256),
        Err(TokenError::NotPkcs8)
    ));
    assert!(matches!(
        DevIssuer::load(ec.key_pem(), "", ISS, DevAlg::Es256),
        Err(TokenError::EmptyKid)
    ));
    assert!(matches!(
        DevIssuer::generate(DevAlg::EdDsa, "", ISS),
        Err(TokenError::EmptyKid)
    ));
}

#[test]
fn mint_raw_signs_the_exact_json_given() {
    for alg in ALL {
        let issuer = DevIssuer::generate(alg, "raw", ISS).unwrap();
        let key = decoding_key(&issuer.jwks_json(), "raw");
        // Duplicated `iss` and a header that lies about the algorithm survive verbatim.
        let header = r#"{"alg":"RS256","kid":"raw","typ":"at+jwt"}"#;
        let claims = r#"{"iss":"a","iss":"b","aud":"open-api-hub"}"#;
        let token = issuer.mint_raw(header, claims).unwrap();
        assert_eq!(segment(&token, 0), header.as_bytes());
        assert_eq!(segment(&token, 1), claims.as_bytes());
        let (message, signature) = token.rsplit_once('.').unwrap();
        assert!(
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg.algorithm())
                .unwrap()
        );

        // With the issuer's own header the token is an ordinary, verifiable token.
        let now = now();
        let body = format!(
            r#"{{"iss":"{ISS}","aud":"{AUD}","exp":{},"iat":{now},"jti":"j","client_id":"180340012345","consent_id":"c","scope":"accounts","cnf":{{"x5t#S256":"x"}}}}"#,
            now + 60
        );
        let token = issuer.mint_raw(&issuer.header_json(), &body).unwrap();
        let data = decode::<AccessClaims>(&token, &key, &validation(alg.algorithm())).unwrap();
        assert_eq!(data.claims.cnf_x5t_s256, "x");
        assert_eq!(
            decode_header(&token).unwrap().typ.as_deref(),
            Some("at+jwt")
        );
    }
}

#[test]
fn forged_tokens_are_well_formed_and_refused_by_an_es256_only_decoder() {
    let issuer = DevIssuer::generate(DevAlg::Es256, "k1", ISS).unwrap();
    let good = claims(&[9; 32]);
    let body = serde_json::to_string(&good).unwrap();
    let es256_key = decoding_key(&issuer.jwks_json(), "k1");

    // HS256 keyed with the issuer's public key: a genuine HMAC, so an HS256 verifier
    // holding that "secret" accepts it...
    let public_pem = issuer.public_key_pem().unwrap();
    assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let forged = forge_hs256(
        r#"{"alg":"HS256","kid":"k1","typ":"at+jwt"}"#,
        &body,
        public_pem.as_bytes(),
    );
    let hs = decode::<AccessClaims>(
        &forged,
        &DecodingKey::from_secret(public_pem.as_bytes()),
        &validation(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(hs.claims, good);
    // ...and a decoder that only allows ES256 refuses it.
    let err = decode::<Value>(&forged, &es256_key, &validation(Algorithm::ES256)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidAlgorithm);
    // Also when the header claims ES256 over an HMAC tag.
    let forged = forge_hs256(&issuer.header_json(), &body, public_pem.as_bytes());
    assert!(decode::<Value>(&forged, &es256_key, &validation(Algorithm::ES256)).is_err());

    let unsigned = forge_unsigned(r#"{"alg":"none","typ":"at+jwt"}"#, &body);
    assert!(unsigned.ends_with('.'));
    assert_eq!(unsigned.split('.').count(), 3);
    assert_eq!(segment(&unsigned, 1), body.as_bytes());
    assert!(decode::<Value>(&unsigned, &es256_key, &validation(Algorithm::ES256)).is_err());
    // An unsigned token under the issuer's own header still fails: the signature is missing.
    let unsigned = forge_unsigned(&issuer.header_json(), &body);
    assert!(decode::<Value>(&unsigned, &es256_key, &validation(Algorithm::ES256)).is_err());
}

#[test]
fn claims_serialise_as_contract_section_4() {
    let mut c = AccessClaims::for_consent(
        ISS,
        AUD,
        Bin::parse("180340012345").unwrap(),
        "c-9",
        &[
            Permission::Transactions,
            Permission::Accounts,
            Permission::Transactions,
        ],
        &[0xff; 32],
        1_700_000_000,
        300,
    )
    .unwrap();
    assert_eq!(c.scope, "transactions accounts");
    assert_eq!((c.iat, c.exp, c.nbf), (1_700_000_000, 1_700_000_300, None));
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(
        v["cnf"],
        serde_json::json!({ "x5t#S256": URL_SAFE_NO_PAD.encode([0xff; 32]) })
    );
    assert!(v.get("cnf_x5t_s256").is_none() && v.get("nbf").is_none());

    c.nbf = Some(1_700_000_010);
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["nbf"], 1_700_000_010);
    assert_eq!(serde_json::from_value::<AccessClaims>(v).unwrap(), c);

    assert!(matches!(
        AccessClaims::for_consent(
            ISS,
            AUD,
            Bin::parse("180340012345").unwrap(),
            "c",
            &[],
            &[0; 32],
            i64::MAX,
            1
        ),
        Err(TokenError::TimeOverflow)
    ));
}

#[test]
fn jti_is_a_random_uuid_v4() {
    let a = random_jti().unwrap();
    let b = random_jti().unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), 36);
    let parts: Vec<&str> = a.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(parts[2].starts_with('4'));
    assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    assert!(a
        .bytes()
        .all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_ne!(claims(&[0; 32]).jti, claims(&[0; 32]).jti);
    assert_eq!(DevAlg::parse("EdDSA"), Some(DevAlg::EdDsa));
    assert_eq!(DevAlg::parse("HS256"), None);
}
