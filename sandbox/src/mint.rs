//! The token tool's work (`hubtool token`, docs/deploy.md): mints an access token the hub
//! accepts from the files an operator has after the PKI step (`scripts/pki`): the signing
//! key, the JWKS the hub trusts (which names the key's `kid`), the API user's certificate
//! (its `x5t#S256` becomes `cnf`), and the hub's configuration (`[tokens] issuer` and
//! `audience`), so the claims cannot drift from what the hub checks. For testing a
//! deployment only: real tokens come from the trust sidecar's `/oauth2/token`.

use std::path::{Path, PathBuf};

use consent_cache::{Bin, Permission};
use serde::Deserialize;

use crate::pki::{thumbprint_of_pem, PkiError};
use crate::tokens::{AccessClaims, DevAlg, DevIssuer, TokenError};

/// Longest lifetime the tool mints: a test token, not a credential to keep.
pub const MAX_LIFETIME_SECS: i64 = 24 * 3600;

/// The public members that identify a key in a JWK (RFC 7638's required members).
const KEY_MEMBERS: [&str; 6] = ["kty", "crv", "x", "y", "n", "e"];

/// Why no token could be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The hub configuration has no readable `[tokens]` issuer, audience and jwks.
    #[error("{}: [tokens] issuer, audience and jwks: {source}", path.display())]
    HubConfig {
        /// The configuration file.
        path: PathBuf,
        /// What the TOML parser said.
        #[source]
        source: toml::de::Error,
    },
    /// The key is none of the algorithms the hub accepts.
    #[error(
        "the signing key is not an ES256 (P-256), EdDSA (Ed25519) or PS256 (RSA ≥ 2048) PKCS#8 key"
    )]
    UnusableKey,
    /// The JWKS is not a `{"keys": [...]}` document.
    #[error("the JWKS is not a {{\"keys\": [...]}} document: {0}")]
    Jwks(#[source] serde_json::Error),
    /// The signing key's public half is not in the JWKS: the hub would refuse the token.
    #[error("the signing key's public key is not in the JWKS the hub trusts (run scripts/pki again to rewrite jwks.json)")]
    KeyNotPublished,
    /// The client certificate could not be read.
    #[error("client certificate: {0}")]
    Certificate(#[from] PkiError),
    /// A scope entry is not a permission.
    #[error("scope {0:?} is not a permission (accounts, balances, transactions, payments)")]
    Scope(String),
    /// The scope is empty.
    #[error("the scope names no permission")]
    EmptyScope,
    /// The lifetime is out of range.
    #[error("lifetime must be 1..={MAX_LIFETIME_SECS} seconds")]
    Lifetime,
    /// Signing failed.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// `iss`, `aud` and the JWKS path as the hub's configuration sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubTokens {
    /// `[tokens] issuer`.
    pub issuer: String,
    /// `[tokens] audience`.
    pub audience: String,
    /// `[tokens] jwks`, resolved against the configuration file's directory.
    pub jwks: PathBuf,
}

/// Reads `[tokens]` from a hub configuration file (other sections are ignored here; the
/// hub itself validates the whole file).
pub fn hub_tokens(config: &Path) -> Result<HubTokens, MintError> {
    #[derive(Deserialize)]
    struct File {
        tokens: Section,
    }
    #[derive(Deserialize)]
    struct Section {
        issuer: String,
        audience: String,
        jwks: PathBuf,
    }
    let text = read(config)?;
    let file: File = toml::from_str(&text).map_err(|source| MintError::HubConfig {
        path: config.to_owned(),
        source,
    })?;
    let base = config.parent().unwrap_or_else(|| Path::new("."));
    Ok(HubTokens {
        issuer: file.tokens.issuer,
        audience: file.tokens.audience,
        jwks: base.join(file.tokens.jwks),
    })
}

/// Everything one token needs.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The signing key (PKCS#8 PEM).
    pub key_pem: String,
    /// The JWKS the hub trusts (JSON), where the key's `kid` is looked up.
    pub jwks_json: String,
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `client_id`: the API user's BIN.
    pub client_id: Bin,
    /// The API user's certificate (PEM, leaf first): `cnf.x5t#S256`.
    pub cert_pem: Vec<u8>,
    /// `consent_id`.
    pub consent_id: String,
    /// `scope`, space-separated permissions.
    pub scope: String,
    /// `exp - iat`.
    pub lifetime_secs: i64,
    /// `iat`, Unix seconds.
    pub now_unix: i64,
}

/// Mints the token: the key's algorithm, its `kid` from the JWKS, every claim of contract §4.
pub fn mint(req: &TokenRequest) -> Result<String, MintError> {
    if !(1..=MAX_LIFETIME_SECS).contains(&req.lifetime_secs) {
        return Err(MintError::Lifetime);
    }
    let permissions = parse_scope(&req.scope)?;
    let (alg, kid) = published_key(&req.key_pem, &req.jwks_json)?;
    let issuer = DevIssuer::load(&req.key_pem, &kid, &req.issuer, alg)?;
    let claims = AccessClaims::for_consent(
        &req.issuer,
        &req.audience,
        req.client_id,
        &req.consent_id,
        &permissions,
        &thumbprint_of_pem(&req.cert_pem)?,
        req.now_unix,
        req.lifetime_secs,
    )?;
    Ok(issuer.mint(&claims)?)
}

/// Reads a file as UTF-8, naming it on failure.
pub fn read(path: &Path) -> Result<String, MintError> {
    std::fs::read_to_string(path).map_err(|source| MintError::Io {
        path: path.to_owned(),
        source,
    })
}

fn parse_scope(scope: &str) -> Result<Vec<Permission>, MintError> {
    let permissions = scope
        .split_ascii_whitespace()
        .map(|s| Permission::parse(s).ok_or_else(|| MintError::Scope(s.to_owned())))
        .collect::<Result<Vec<_>, _>>()?;
    if permissions.is_empty() {
        return Err(MintError::EmptyScope);
    }
    Ok(permissions)
}

/// The key's algorithm (the first whose parser accepts it) and the `kid` of the JWKS entry
/// holding its public key.
fn published_key(key_pem: &str, jwks_json: &str) -> Result<(DevAlg, String), MintError> {
    let (alg, probe) = [DevAlg::Es256, DevAlg::EdDsa, DevAlg::Ps256]
        .into_iter()
        .find_map(|alg| Some((alg, DevIssuer::load(key_pem, "probe", "", alg).ok()?)))
        .ok_or(MintError::UnusableKey)?;
    let public = probe.jwk();
    let jwks: JwksDoc = serde_json::from_str(jwks_json).map_err(MintError::Jwks)?;
    let same_key =
        |jwk: &serde_json::Value| KEY_MEMBERS.iter().all(|m| jwk.get(m) == public.get(m));
    jwks.keys
        .iter()
        .find(|jwk| same_key(jwk))
        .and_then(|jwk| jwk.get("kid")?.as_str().map(str::to_owned))
        .map(|kid| (alg, kid))
        .ok_or(MintError::KeyNotPublished)
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::jwks_json_for;

    fn request(issuer: &DevIssuer, jwks_json: String) -> TokenRequest {
        let cert = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap();
        TokenRequest {
            key_pem: issuer.key_pem().to_owned(),
            jwks_json,
            issuer: "https://trust.example".to_owned(),
            audience: "open-api-hub".to_owned(),
            client_id: Bin::parse("100140000001").unwrap(),
            cert_pem: cert.cert.pem().into_bytes(),
            consent_id: "c-1".to_owned(),
            scope: "accounts balances".to_owned(),
            lifetime_secs: 300,
            now_unix: 1_800_000_000,
        }
    }

    fn claims_of(token: &str) -> serde_json::Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn the_kid_is_the_one_the_jwks_gives_the_key() {
        let other = DevIssuer::generate(DevAlg::Es256, "old", "x").unwrap();
        let signer = DevIssuer::generate(DevAlg::EdDsa, "new", "x").unwrap();
        let jwks = jwks_json_for(&[&other, &signer]);
        let token = mint(&request(&signer, jwks)).unwrap();
        let header = token.split('.').next().unwrap();
        use base64::Engine as _;
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["kid"], "new");
        assert_eq!(header["alg"], "EdDSA");
        assert_eq!(header["typ"], "at+jwt");
        let c = claims_of(&token);
        assert_eq!(c["aud"], "open-api-hub");
        assert_eq!(c["scope"], "accounts balances");
        assert_eq!(c["exp"], 1_800_000_300);
        assert_eq!(c["cnf"]["x5t#S256"].as_str().unwrap().len(), 43);
    }

    #[test]
    fn a_key_missing_from_the_jwks_or_a_bad_scope_is_refused() {
        let published = DevIssuer::generate(DevAlg::Es256, "k1", "x").unwrap();
        let unpublished = DevIssuer::generate(DevAlg::Es256, "k1", "x").unwrap();
        let err = mint(&request(&unpublished, published.jwks_json())).unwrap_err();
        assert!(matches!(err, MintError::KeyNotPublished), "{err}");
        let mut req = request(&published, published.jwks_json());
        req.scope = "accounts everything".to_owned();
        assert!(matches!(mint(&req), Err(MintError::Scope(s)) if s == "everything"));
        req.scope = " ".to_owned();
        assert!(matches!(mint(&req), Err(MintError::EmptyScope)));
    }

    #[test]
    fn hub_tokens_resolves_the_jwks_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("hub.toml");
        std::fs::write(
            &cfg,
            "[server]\nlisten = \"x\"\n[tokens]\njwks = \"pki/jwks.json\"\nissuer = \"https://t\"\naudience = \"open-api-hub\"\n",
        )
        .unwrap();
        let t = hub_tokens(&cfg).unwrap();
        assert_eq!(t.jwks, dir.path().join("pki/jwks.json"));
        assert_eq!(
            (t.issuer.as_str(), t.audience.as_str()),
            ("https://t", "open-api-hub")
        );
    }
}
