//! Development token issuer: signs RFC 9068-shaped access tokens (contract §4) with a
//! development key, publishes the matching JWKS, and forges malformed or wrongly signed
//! tokens for negative tests.
//!
//! ES256 and EdDSA keys are generated with `ring`. `ring` cannot generate RSA keys (nor
//! can `rcgen` without aws-lc), so PS256 always uses the fixed 2048-bit development key
//! committed as `sandbox/fixtures/dev-issuer-rsa-2048.pem`: public, never for production.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use consent_cache::{Bin, Permission};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::pki::write_private;

/// The committed development RSA key used for every PS256 issuer (see `fixtures/README.md`).
const DEV_RSA_KEY_PEM: &str = include_str!("../fixtures/dev-issuer-rsa-2048.pem");
/// Smallest RSA modulus accepted, in bytes (2048 bits, RFC 7518 §3.5).
const MIN_RSA_MODULUS_BYTES: usize = 256;
/// The `typ` header of RFC 9068 access tokens.
const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The signature algorithms the development issuer can use (contract §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevAlg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// RSASSA-PSS with SHA-256 (fixed development key).
    Ps256,
    /// Ed25519.
    EdDsa,
}

impl DevAlg {
    /// The JOSE name: `ES256`, `PS256` or `EdDSA`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DevAlg::Es256 => "ES256",
            DevAlg::Ps256 => "PS256",
            DevAlg::EdDsa => "EdDSA",
        }
    }

    /// The same algorithm as `jsonwebtoken` names it.
    pub const fn algorithm(self) -> Algorithm {
        match self {
            DevAlg::Es256 => Algorithm::ES256,
            DevAlg::Ps256 => Algorithm::PS256,
            DevAlg::EdDsa => Algorithm::EdDSA,
        }
    }

    /// Parses a JOSE name (case-sensitive, as in a JWS header).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(DevAlg::Es256),
            "PS256" => Some(DevAlg::Ps256),
            "EdDSA" => Some(DevAlg::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for DevAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a development key could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// The PEM input holds no PKCS#8 private key.
    #[error("expected a PKCS#8 private key (\"-----BEGIN PRIVATE KEY-----\")")]
    NotPkcs8,
    /// The PEM input could not be parsed.
    #[error("malformed PEM: {0}")]
    MalformedPem(#[source] std::io::Error),
    /// The key is not a valid key for the requested algorithm.
    #[error("the private key is not a valid {alg} key: {reason}")]
    KeyRejected {
        /// The algorithm the key was meant for.
        alg: DevAlg,
        /// What the crypto library said.
        reason: String,
    },
    /// A `kid` is required by contract §4.
    #[error("kid must not be empty")]
    EmptyKid,
    /// `now + lifetime` does not fit a timestamp.
    #[error("token lifetime overflows the timestamp range")]
    TimeOverflow,
    /// `jsonwebtoken` failed to encode or sign.
    #[error("JWT encoding failed: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// Writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Public parameters of the signing key, base64url-encoded as in a JWK (RFC 7518 §6).
#[derive(Clone, PartialEq, Eq)]
enum PublicParams {
    Ec { x: String, y: String },
    Rsa { n: String, e: String },
    Okp { x: String },
}

/// A development token issuer: one signing key, its `kid`, and the `iss` it mints for.
#[derive(Clone)]
pub struct DevIssuer {
    alg: DevAlg,
    kid: String,
    issuer: String,
    key_pem: String,
    encoding: EncodingKey,
    public: PublicParams,
}

impl fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signing key stays out of debug output, even for a development key.
        f.debug_struct("DevIssuer")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// A new issuer with a fresh key (ES256, EdDSA) or the fixed development RSA key (PS256).
    pub fn generate(alg: DevAlg, kid: &str, issuer: &str) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            DevAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| TokenError::Random)?,
            DevAlg::EdDsa => {
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| TokenError::Random)?
            }
            DevAlg::Ps256 => return Self::load(DEV_RSA_KEY_PEM, kid, issuer, alg),
        };
        Self::from_pkcs8(pkcs8.as_ref(), kid, issuer, alg)
    }

    /// An issuer from an existing PKCS#8 PEM private key (as written by [`DevIssuer::write_files`]).
    pub fn load(key_pem: &str, kid: &str, issuer: &str, alg: DevAlg) -> Result<Self, TokenError> {
        match rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(TokenError::MalformedPem)?
        {
            Some(rustls_pki_types::PrivateKeyDer::Pkcs8(der)) => {
                Self::from_pkcs8(der.secret_pkcs8_der(), kid, issuer, alg)
            }
            _ => Err(TokenError::NotPkcs8),
        }
    }

    fn from_pkcs8(pkcs8: &[u8], kid: &str, issuer: &str, alg: DevAlg) -> Result<Self, TokenError> {
        if kid.is_empty() {
            return Err(TokenError::EmptyKid);
        }
        let rejected = |reason: String| TokenError::KeyRejected { alg, reason };
        let public = match alg {
            DevAlg::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8,
                    &SystemRandom::new(),
                )
                .map_err(|e| rejected(e.to_string()))?;
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                match pair.public_key().as_ref() {
                    [0x04, xy @ ..] if xy.len() == 64 => PublicParams::Ec {
                        x: URL_SAFE_NO_PAD.encode(&xy[..32]),
                        y: URL_SAFE_NO_PAD.encode(&xy[32..]),
                    },
                    _ => return Err(rejected("not an uncompressed P-256 point".to_owned())),
                }
            }
            DevAlg::EdDsa => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|e| rejected(e.to_string()))?;
                PublicParams::Okp {
                    x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                }
            }
            DevAlg::Ps256 => {
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| rejected(e.to_string()))?;
                if pair.public().modulus_len() < MIN_RSA_MODULUS_BYTES {
                    return Err(rejected("RSA modulus shorter than 2048 bits".to_owned()));
                }
                let parts = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                PublicParams::Rsa {
                    n: URL_SAFE_NO_PAD.encode(strip_leading_zeros(&parts.n)),
                    e: URL_SAFE_NO_PAD.encode(strip_leading_zeros(&parts.e)),
                }
            }
        };
        // Re-encoded, so whatever surrounded the key in the input PEM is dropped.
        let key_pem = pem_encode("PRIVATE KEY", pkcs8);
        let encoding = match alg {
            DevAlg::Es256 => EncodingKey::from_ec_pem(key_pem.as_bytes())?,
            DevAlg::EdDsa => EncodingKey::from_ed_pem(key_pem.as_bytes())?,
            // jsonwebtoken signs RSA from PKCS#1; its PEM loader extracts it from PKCS#8.
            DevAlg::Ps256 => EncodingKey::from_rsa_pem(key_pem.as_bytes())?,
        };
        Ok(DevIssuer {
            alg,
            kid: kid.to_owned(),
            issuer: issuer.to_owned(),
            key_pem,
            encoding,
            public,
        })
    }

    /// The signature algorithm.
    pub fn alg(&self) -> DevAlg {
        self.alg
    }

    /// The key id written into every token header and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `iss` this issuer stands for.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The public key as a JWK object: `kty`, `crv`/`x`/`y` (EC), `n`/`e` (RSA) or
    /// `crv`/`x` (OKP), plus `kid`, `alg` and `use: sig`.
    pub fn jwk(&self) -> serde_json::Value {
        let (kid, alg) = (self.kid.as_str(), self.alg.as_str());
        match &self.public {
            PublicParams::Ec { x, y } => json!({
                "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": alg, "use": "sig",
            }),
            PublicParams::Rsa { n, e } => json!({
                "kty": "RSA", "n": n, "e": e, "kid": kid, "alg": alg, "use": "sig",
            }),
            PublicParams::Okp { x } => json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": alg, "use": "sig",
            }),
        }
    }

    /// A JWKS (`{"keys":[…]}`) holding this issuer's public key.
    pub fn jwks_json(&self) -> String {
        jwks_json_for(&[self])
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), e.g. to use as the
    /// HMAC secret of an "HS256 signed with the public key" forgery.
    pub fn public_key_pem(&self) -> Result<String, TokenError> {
        rcgen::KeyPair::from_pem(&self.key_pem)
            .map(|pair| pair.public_key_pem())
            .map_err(|e| TokenError::KeyRejected {
                alg: self.alg,
                reason: e.to_string(),
            })
    }

    /// Writes `issuer-{kid}-key.pem` (PKCS#8, mode 0600 on unix) and `issuer-{kid}-jwks.json`
    /// into `dir` (created if needed); characters of the `kid` other than ASCII letters,
    /// digits, `-`, `_` and `.` become `_` in the file names. Returns (key path, JWKS path),
    /// both absolute.
    pub fn write_files(&self, dir: &Path) -> Result<(PathBuf, PathBuf), TokenError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| TokenError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dir = std::path::absolute(dir).map_err(io_err(dir))?;
        let stem = format!("issuer-{}", file_safe(&self.kid));
        let key_path = dir.join(format!("{stem}-key.pem"));
        let jwks_path = dir.join(format!("{stem}-jwks.json"));
        write_private(&key_path, self.key_pem.as_bytes()).map_err(io_err(&key_path))?;
        fs::write(&jwks_path, self.jwks_json()).map_err(io_err(&jwks_path))?;
        Ok((key_path, jwks_path))
    }

    /// The header every minted token carries: `{"typ":"at+jwt","alg":…,"kid":…}`.
    pub fn header_json(&self) -> String {
        json!({ "typ": ACCESS_TOKEN_TYP, "alg": self.alg.as_str(), "kid": self.kid }).to_string()
    }

    /// Signs `claims` as an access token with header `{"typ":"at+jwt","alg","kid"}`.
    pub fn mint(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let mut header = Header::new(self.alg.algorithm());
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Test tooling: signs the exact bytes of `header_json` and `claims_json` with this
    /// issuer's key and algorithm, whatever the header says, without parsing either (so
    /// duplicated or missing claims and wrong `alg` names survive as written).
    pub fn mint_raw(&self, header_json: &str, claims_json: &str) -> Result<String, TokenError> {
        let input = signing_input(header_json, claims_json);
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg.algorithm())?;
        Ok(format!("{input}.{signature}"))
    }
}

/// A JWKS holding the public keys of several issuers (e.g. to test key rotation).
pub fn jwks_json_for(issuers: &[&DevIssuer]) -> String {
    let keys: Vec<serde_json::Value> = issuers.iter().map(|i| i.jwk()).collect();
    json!({ "keys": keys }).to_string()
}

/// Test tooling: an unsigned token (`header.claims.` with an empty signature, the
/// `alg: none` shape) from the exact JSON given.
pub fn forge_unsigned(header_json: &str, claims_json: &str) -> String {
    let mut token = signing_input(header_json, claims_json);
    token.push('.');
    token
}

/// Test tooling: a token MACed with HMAC-SHA256 under `secret` from the exact JSON given,
/// e.g. the "HS256 signed with the issuer's public key" attack.
pub fn forge_hs256(header_json: &str, claims_json: &str, secret: &[u8]) -> String {
    let input = signing_input(header_json, claims_json);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The claims of an access token (contract §4); serialises with `cnf: {"x5t#S256": …}`
/// and without `nbf` when it is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireClaims", from = "WireClaims")]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience: the hub's configured audience.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not before, seconds since the epoch (optional).
    pub nbf: Option<i64>,
    /// Unique token id.
    pub jti: String,
    /// The API user's BIN.
    pub client_id: String,
    /// The consent the token was issued for.
    pub consent_id: String,
    /// Space-separated permissions.
    pub scope: String,
    /// `cnf.x5t#S256`: the thumbprint of the client certificate the token is bound to.
    pub cnf_x5t_s256: String,
}

impl AccessClaims {
    /// Claims for `client` acting on `consent_id`, bound to the certificate with
    /// `cnf_thumbprint`, issued at `now_unix` and valid for `lifetime_secs`; a random
    /// UUID-shaped `jti`, no `nbf`, `scope` from `permissions` in the order given
    /// (duplicates dropped).
    #[allow(clippy::too_many_arguments)] // one argument per claim keeps call sites readable
    pub fn for_consent(
        issuer: &str,
        audience: &str,
        client: Bin,
        consent_id: &str,
        permissions: &[Permission],
        cnf_thumbprint: &[u8; 32],
        now_unix: i64,
        lifetime_secs: i64,
    ) -> Result<Self, TokenError> {
        let mut scope = String::new();
        for (i, p) in permissions.iter().enumerate() {
            if permissions[..i].contains(p) {
                continue;
            }
            if !scope.is_empty() {
                scope.push(' ');
            }
            scope.push_str(p.as_str());
        }
        Ok(AccessClaims {
            iss: issuer.to_owned(),
            aud: audience.to_owned(),
            exp: now_unix
                .checked_add(lifetime_secs)
                .ok_or(TokenError::TimeOverflow)?,
            iat: now_unix,
            nbf: None,
            jti: random_jti()?,
            client_id: client.to_string(),
            consent_id: consent_id.to_owned(),
            scope,
            cnf_x5t_s256: crate::pki::x5t_s256(cnf_thumbprint),
        })
    }
}

/// A random UUID v4 string from the system random generator, for `jti`.
pub fn random_jti() -> Result<String, TokenError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| TokenError::Random)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The JSON shape of [`AccessClaims`] on the wire.
#[derive(Serialize, Deserialize)]
struct WireClaims {
    iss: String,
    aud: String,
    exp: i64,
    iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    jti: String,
    client_id: String,
    consent_id: String,
    scope: String,
    cnf: Confirmation,
}

/// RFC 8705 `cnf` with the certificate thumbprint.
#[derive(Serialize, Deserialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

impl From<AccessClaims> for WireClaims {
    fn from(c: AccessClaims) -> Self {
        WireClaims {
            iss: c.iss,
            aud: c.aud,
            exp: c.exp,
            iat: c.iat,
            nbf: c.nbf,
            jti: c.jti,
            client_id: c.client_id,
            consent_id: c.consent_id,
            scope: c.scope,
            cnf: Confirmation {
                x5t_s256: c.cnf_x5t_s256,
            },
        }
    }
}

impl From<WireClaims> for AccessClaims {
    fn from(w: WireClaims) -> Self {
        AccessClaims {
            iss: w.iss,
            aud: w.aud,
            exp: w.exp,
            iat: w.iat,
            nbf: w.nbf,
            jti: w.jti,
            client_id: w.client_id,
            consent_id: w.consent_id,
            scope: w.scope,
            cnf_x5t_s256: w.cnf.x5t_s256,
        }
    }
}

fn signing_input(header_json: &str, claims_json: &str) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    )
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[start..]
}

fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so 64-byte chunks are valid UTF-8 boundaries.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}
