//! Test helpers shared by the integration tests: signing keys, a JWKS for them, token
//! minting (well-formed via `jsonwebtoken::encode`, hand-crafted for the malformed cases),
//! and a one-user, one-provider world for the decision.
#![allow(dead_code)]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use policy::{
    Bin, ConsentStatus, ConsentView, Directory, DirectoryBuilder, Facts, Jwks, Participant,
    ParticipantStatus, Permission, Permissions, ProviderEntry, Roles, Route, TokenSettings,
    TokenVerifier,
};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://as.hub.test";
pub const AUDIENCE: &str = "openapi-hub";
pub const USER: &str = "180340012345";
pub const TP: [u8; 32] = [0xA5; 32];
pub const NOW: i64 = 1_750_000_000;

/// A 2048-bit RSA key generated once for these tests only, with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-2048-test-only.pem`.
pub const RSA_PEM: &[u8] = include_bytes!("../fixtures/rsa-2048-test-only.pem");

pub fn bin(s: &str) -> Bin {
    Bin::parse(s).unwrap()
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One signing key and its public JWK.
pub struct TestKey {
    pub kid: &'static str,
    pub alg: Algorithm,
    pub enc: EncodingKey,
    pub jwk: Value,
}

pub fn ec_key(kid: &'static str) -> TestKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = kp.public_key().as_ref();
    assert_eq!(point.len(), 65);
    TestKey {
        kid,
        alg: Algorithm::ES256,
        enc: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty":"EC","crv":"P-256","kid":kid,"use":"sig",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
    }
}

pub fn ed_key(kid: &'static str) -> TestKey {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    TestKey {
        kid,
        alg: Algorithm::EdDSA,
        enc: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty":"OKP","crv":"Ed25519","kid":kid,"alg":"EdDSA",
                    "x": b64(kp.public_key().as_ref())}),
    }
}

pub fn rsa_der() -> Vec<u8> {
    let pem = std::str::from_utf8(RSA_PEM).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

pub fn rsa_key(kid: &'static str) -> TestKey {
    let kp = RsaKeyPair::from_pkcs8(&rsa_der()).unwrap();
    let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public());
    TestKey {
        kid,
        alg: Algorithm::PS256,
        enc: EncodingKey::from_rsa_pem(RSA_PEM).unwrap(),
        jwk: json!({"kty":"RSA","kid":kid,"alg":"PS256","n": b64(&c.n),"e": b64(&c.e)}),
    }
}

/// The keys the hub trusts in most tests: `ec1` (ES256), `rsa1` (PS256), `ed1` (EdDSA).
pub struct Keys {
    pub ec: TestKey,
    pub rsa: TestKey,
    pub ed: TestKey,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            ec: ec_key("ec1"),
            rsa: rsa_key("rsa1"),
            ed: ed_key("ed1"),
        }
    }

    pub fn jwks_json(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"keys":[self.ec.jwk, self.rsa.jwk, self.ed.jwk]})).unwrap()
    }

    pub fn verifier(&self) -> TokenVerifier {
        self.verifier_with(|_| {})
    }

    pub fn verifier_with(&self, f: impl FnOnce(&mut TokenSettings)) -> TokenVerifier {
        let mut s = TokenSettings::new(ISSUER, AUDIENCE);
        f(&mut s);
        TokenVerifier::new(s, Jwks::from_json(&self.jwks_json()).unwrap())
    }
}

/// The default claims: valid at [`NOW`], bound to [`USER`] / [`TP`].
pub fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 600,
        "iat": NOW - 10,
        "jti": "jti-1",
        "client_id": USER,
        "consent_id": "c-1",
        "scope": "accounts balances transactions",
        "cnf": {"x5t#S256": b64(TP)},
        "sub": "180340012345",
    })
}

/// Mints a well-formed token with `jsonwebtoken::encode`.
pub fn mint(key: &TestKey, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.to_owned());
    h.typ = Some("at+jwt".to_owned());
    jsonwebtoken::encode(&h, claims, &key.enc).unwrap()
}

/// Signs raw header and payload JSON text (for malformed and duplicate-member cases).
pub fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

/// The default claims as JSON text with `extra` spliced in before the closing brace.
pub fn claims_text_with(extra: &str) -> String {
    let base = claims().to_string();
    format!("{},{}}}", &base[..base.len() - 1], extra)
}

/// The provider of [`one_user_one_provider`].
pub const PROVIDER: &str = "200000000001";

/// A directory of [`USER`] (certificate [`TP`]) and one published provider, [`PROVIDER`].
pub fn one_user_one_provider() -> Directory {
    let participant = |b: &str, name: &str, roles| Participant {
        bin: bin(b),
        name: name.into(),
        roles,
        status: ParticipantStatus::Active,
    };
    let mut d = DirectoryBuilder::new();
    d.add_participant(participant(USER, "User", Roles::USER), [TP])
        .unwrap();
    d.add_participant(participant(PROVIDER, "Bank", Roles::PROVIDER), [])
        .unwrap();
    d.add_provider(ProviderEntry {
        bin: bin(PROVIDER),
        published: true,
        delisted: policy::directory::ApiSet::EMPTY,
        index: 0,
    })
    .unwrap();
    d.build().unwrap()
}

/// [`USER`]'s authorised consent `c-1` at [`PROVIDER`]: every permission, account `A1` only.
pub struct StaticConsent {
    providers: [Bin; 1],
}

impl StaticConsent {
    pub fn new() -> StaticConsent {
        StaticConsent {
            providers: [bin(PROVIDER)],
        }
    }
}

impl ConsentView for StaticConsent {
    fn id(&self) -> &str {
        "c-1"
    }
    fn api_user(&self) -> Bin {
        bin(USER)
    }
    fn customer(&self) -> &str {
        "900101300123"
    }
    fn providers(&self) -> &[Bin] {
        &self.providers
    }
    fn covers_provider(&self, provider: Bin) -> bool {
        self.providers.contains(&provider)
    }
    fn permissions(&self) -> Permissions {
        Permissions::EMPTY
            .with(Permission::Accounts)
            .with(Permission::Balances)
            .with(Permission::Transactions)
    }
    fn accounts_restricted(&self) -> bool {
        true
    }
    fn covers_account(&self, account: &str) -> bool {
        account == "A1"
    }
    fn expires_at(&self) -> Option<i64> {
        None
    }
    fn status(&self) -> ConsentStatus {
        ConsentStatus::Authorised
    }
}

/// The facts of a request of [`USER`]'s connection (certificate [`TP`]) at [`NOW`] with
/// `authorization`, the consent state fresh.
pub fn facts<'a>(route: &'a Route<'a>, authorization: &'a [u8]) -> Facts<'a> {
    Facts {
        route,
        cert_thumbprint: Some(&TP),
        authorization: Some(authorization),
        now_unix: NOW,
        consent_state_fresh: true,
    }
}
