//! Access-token verification (contract §4, RFC 9068 shape, RFC 8705 certificate binding)
//! on top of `jsonwebtoken`'s signature primitives, with a bounded cache of successful
//! verifications.
//!
//! Header and claims are parsed here rather than by `jsonwebtoken::decode`, because the
//! contract asks for more strictness than it offers:
//!
//! * every member name of the header, of the claims and of `cnf` must be unique (RFC 7515
//!   §4 allows "reject" and the hub rejects), including names it does not know;
//! * `alg` must be `ES256`, `PS256` or `EdDSA` **and** equal the algorithm the JWKS pins
//!   for the `kid` (so a key can never be used with another algorithm);
//! * `crit` is never understood, so its presence rejects the token (RFC 7515 §4.1.11);
//! * `typ` must be `at+jwt` or `application/at+jwt`, compared case-insensitively (RFC 9068
//!   §2.1, §4): a token without `typ`, or with `JWT` (an ID token or any other JWT), is not
//!   an access token;
//! * NumericDates (`exp`, `nbf`, `iat`) must be JSON integers; fractional values are refused;
//! * `client_id` must be a 12-digit BIN; `consent_id` 1–128 visible ASCII characters (it
//!   travels upstream in a header); `jti` 1–256 bytes; `cnf.x5t#S256` the unpadded
//!   base64url of exactly 32 bytes;
//! * `sub` and other claims are not required: the contract's list is the authority.
//!
//! Time checks use the configured leeway `L`: a token is expired when `now - L >= exp`, not
//! yet valid when `now + L < nbf`, and refused when `iat > now + L`. They run on every call,
//! also for cached tokens, so a cached entry is never served past `exp` (+ leeway, exactly
//! like an uncached one).
//!
//! A signature verification that fails is never cached, so a flood of invalid tokens would
//! cost one each: [`TokenVerifier::verify_charged`] charges failed verifications to the
//! request's connection and certificate ([`budget`]) and refuses to verify, with
//! `429 rate_limited`, once either has spent its budget.

pub mod budget;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use consent_cache::{Bin, Permission, Permissions};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub use budget::{Charge, VerifyBudget};

use crate::code::Code;
use crate::limits::Limited;

/// Default clock-skew tolerance (contract §4).
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Default cap on the size of a bearer token.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Default number of verified tokens kept.
pub const DEFAULT_CACHE_CAPACITY: usize = 16_384;
/// The largest clock-skew tolerance a configuration may set: past a few minutes, a leeway
/// stops absorbing clock skew and starts extending every token's life.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Default budget of failed signature verifications per connection and second.
pub const DEFAULT_FAILED_VERIFICATIONS_PER_CONNECTION: NonZeroU32 =
    NonZeroU32::MIN.saturating_add(9);
/// Default budget of failed signature verifications per client certificate and second.
pub const DEFAULT_FAILED_VERIFICATIONS_PER_CERTIFICATE: NonZeroU32 =
    NonZeroU32::MIN.saturating_add(49);

/// The `typ` values of an access token (RFC 9068 §2.1; the media type form of §4).
const ACCESS_TOKEN_TYPES: [&str; 2] = ["at+jwt", "application/at+jwt"];

const MAX_CONSENT_ID_LEN: usize = 128;
const MAX_JTI_LEN: usize = 256;
/// Header or claims objects with more members than this are refused outright.
const MAX_MEMBERS: usize = 64;

/// Token-verification settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Required `iss`, compared exactly.
    pub issuer: String,
    /// The hub's audience; `aud` must be it or an array containing it.
    pub audience: String,
    /// Clock-skew tolerance in seconds (default 30).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Tokens longer than this are refused before any parsing (default 8192).
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// Number of successfully verified tokens kept (0 disables the cache). Worst-case memory
    /// is about `cache_capacity × (max_token_bytes + 200)` bytes.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: usize,
    /// Failed signature verifications allowed per connection: this many at once, then
    /// this many a second; past them row 4 answers `429` to tokens not in the cache.
    #[serde(default = "default_failures_per_connection")]
    pub max_failed_verifications_per_connection_per_sec: NonZeroU32,
    /// The same per client certificate, across all its connections.
    #[serde(default = "default_failures_per_certificate")]
    pub max_failed_verifications_per_certificate_per_sec: NonZeroU32,
}

fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}
fn default_max_token() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_cache_capacity() -> usize {
    DEFAULT_CACHE_CAPACITY
}
fn default_failures_per_connection() -> NonZeroU32 {
    DEFAULT_FAILED_VERIFICATIONS_PER_CONNECTION
}
fn default_failures_per_certificate() -> NonZeroU32 {
    DEFAULT_FAILED_VERIFICATIONS_PER_CERTIFICATE
}

impl TokenSettings {
    /// Settings with the defaults for everything but issuer and audience.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        TokenSettings {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            max_failed_verifications_per_connection_per_sec:
                DEFAULT_FAILED_VERIFICATIONS_PER_CONNECTION,
            max_failed_verifications_per_certificate_per_sec:
                DEFAULT_FAILED_VERIFICATIONS_PER_CERTIFICATE,
        }
    }
}

/// The signature algorithms the hub accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// RSASSA-PSS with SHA-256 (modulus 2048–8192 bits).
    Ps256,
    /// Ed25519.
    EdDsa,
}

impl SigAlg {
    /// The JOSE name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SigAlg::Es256 => "ES256",
            SigAlg::Ps256 => "PS256",
            SigAlg::EdDsa => "EdDSA",
        }
    }

    fn parse(s: &str) -> Option<SigAlg> {
        match s {
            "ES256" => Some(SigAlg::Es256),
            "PS256" => Some(SigAlg::Ps256),
            "EdDSA" => Some(SigAlg::EdDsa),
            _ => None,
        }
    }

    const fn jwt(self) -> Algorithm {
        match self {
            SigAlg::Es256 => Algorithm::ES256,
            SigAlg::Ps256 => Algorithm::PS256,
            SigAlg::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// A JWKS that cannot be used. Messages name keys by `kid` (public) or index, never key material.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON, or not `{"keys":[…]}` with well-typed members (duplicate members included).
    #[error("JWKS is not a valid JSON key set: {0}")]
    Json(#[from] serde_json::Error),
    /// A key has no `kid` (or an empty one).
    #[error("JWKS key #{index} has no kid")]
    MissingKid {
        /// Position in `keys`.
        index: usize,
    },
    /// Two keys share a `kid`.
    #[error("JWKS has two keys with kid {kid:?}")]
    DuplicateKid {
        /// The repeated kid.
        kid: String,
    },
    /// The key publishes private material (`d`, `p`, `q`, … or a symmetric `k`).
    #[error("JWKS key {kid:?} contains private or symmetric key material")]
    PrivateKeyMaterial {
        /// The key's kid.
        kid: String,
    },
    /// A key of a supported type whose parameters are wrong.
    #[error("JWKS key {kid:?} is invalid: {reason}")]
    InvalidKey {
        /// The key's kid.
        kid: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No key is usable for ES256, PS256 or EdDSA.
    #[error("JWKS has no key usable for ES256, PS256 or EdDSA")]
    NoUsableKeys,
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<JwkDoc>,
}

#[derive(Deserialize)]
struct JwkDoc {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<IgnoredAny>,
    p: Option<IgnoredAny>,
    q: Option<IgnoredAny>,
    dp: Option<IgnoredAny>,
    dq: Option<IgnoredAny>,
    qi: Option<IgnoredAny>,
    oth: Option<IgnoredAny>,
    k: Option<IgnoredAny>,
}

struct VerifyKey {
    kid: Box<str>,
    alg: SigAlg,
    key: DecodingKey,
}

/// The token-signing keys, each pinned to exactly one algorithm.
///
/// Parsing rules: every key needs a `kid`, and kids are unique. EC `P-256` keys are ES256,
/// RSA keys are PS256 (modulus ≥ 2048 bits), OKP `Ed25519` keys are EdDSA; a key's `alg`,
/// when present, must be that algorithm. Keys of other types, curves or algorithms (e.g. an
/// RS256 key), and keys whose `use` is not `sig` or whose `key_ops` lack `verify`, are
/// skipped (counted in [`Jwks::skipped`]): they can never verify a token the hub accepts.
/// Private or symmetric material in the set is an error, since it means a secret leaked.
pub struct Jwks {
    keys: Vec<VerifyKey>,
    skipped: usize,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|k| (&*k.kid, k.alg))
                    .collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl Jwks {
    /// Parses a JWKS document (`{"keys":[…]}`).
    pub fn from_json(json: &[u8]) -> Result<Jwks, JwksError> {
        let doc: JwksDoc = serde_json::from_slice(json)?;
        let mut kids: HashSet<&str> = HashSet::new();
        for (index, k) in doc.keys.iter().enumerate() {
            let kid = k
                .kid
                .as_deref()
                .filter(|kid| !kid.is_empty())
                .ok_or(JwksError::MissingKid { index })?;
            if !kids.insert(kid) {
                return Err(JwksError::DuplicateKid {
                    kid: kid.to_owned(),
                });
            }
        }
        let mut keys = Vec::new();
        let mut skipped = 0;
        for k in &doc.keys {
            match parse_jwk(k)? {
                Some(key) => keys.push(key),
                None => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(Jwks { keys, skipped })
    }

    /// A set with no key: verifies no token (where a set must stand in, failing closed).
    pub fn none() -> Jwks {
        Jwks {
            keys: Vec::new(),
            skipped: 0,
        }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no usable keys (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys present in the document but unusable by the hub (see the type docs).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The usable keys' ids and algorithms.
    pub fn kids(&self) -> impl Iterator<Item = (&str, SigAlg)> {
        self.keys.iter().map(|k| (&*k.kid, k.alg))
    }

    fn find(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.iter().find(|k| &*k.kid == kid)
    }
}

fn b64_len(s: Option<&String>) -> Option<usize> {
    s.and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .map(|v| v.len())
}

fn parse_jwk(k: &JwkDoc) -> Result<Option<VerifyKey>, JwksError> {
    let kid = k.kid.clone().unwrap_or_default();
    if has_private_material(k) {
        return Err(JwksError::PrivateKeyMaterial { kid });
    }
    let Some(alg) = usable_alg(k) else {
        return Ok(None);
    };
    let invalid = |reason: &'static str| JwksError::InvalidKey {
        kid: kid.clone(),
        reason,
    };
    let key = match alg {
        SigAlg::Es256 => {
            if b64_len(k.x.as_ref()) != Some(32) || b64_len(k.y.as_ref()) != Some(32) {
                return Err(invalid("EC P-256 x and y must be base64url of 32 bytes"));
            }
            let (x, y) = (k.x.as_deref(), k.y.as_deref());
            DecodingKey::from_ec_components(x.unwrap_or(""), y.unwrap_or(""))
                .map_err(|_| invalid("bad EC coordinates"))?
        }
        SigAlg::EdDsa => {
            if b64_len(k.x.as_ref()) != Some(32) {
                return Err(invalid("Ed25519 x must be base64url of 32 bytes"));
            }
            DecodingKey::from_ed_components(k.x.as_deref().unwrap_or(""))
                .map_err(|_| invalid("bad Ed25519 key"))?
        }
        SigAlg::Ps256 => rsa_key(k).map_err(invalid)?,
    };
    Ok(Some(VerifyKey {
        kid: kid.into_boxed_str(),
        alg,
        key,
    }))
}

/// Whether the JWK carries private or symmetric material (a leaked secret).
fn has_private_material(k: &JwkDoc) -> bool {
    k.d.is_some()
        || k.p.is_some()
        || k.q.is_some()
        || k.dp.is_some()
        || k.dq.is_some()
        || k.qi.is_some()
        || k.oth.is_some()
        || k.k.is_some()
}

/// The algorithm the key is pinned to, or `None` when the hub can never use it to verify
/// (wrong `use`, `key_ops`, type, curve or `alg`): such keys are skipped, not errors.
fn usable_alg(k: &JwkDoc) -> Option<SigAlg> {
    if k.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = &k.key_ops {
        if !ops.iter().any(|o| o == "verify") {
            return None;
        }
    }
    let alg = match (k.kty.as_str(), k.crv.as_deref()) {
        ("EC", Some("P-256")) => SigAlg::Es256,
        ("RSA", _) => SigAlg::Ps256,
        ("OKP", Some("Ed25519")) => SigAlg::EdDsa,
        _ => return None,
    };
    if k.alg.as_deref().is_some_and(|a| a != alg.as_str()) {
        return None;
    }
    Some(alg)
}

/// A PS256 key from `n` and `e`; the error is the reason the key is invalid.
fn rsa_key(k: &JwkDoc) -> Result<DecodingKey, &'static str> {
    let n =
        k.n.as_deref()
            .and_then(|n| URL_SAFE_NO_PAD.decode(n).ok())
            .ok_or("RSA n must be base64url")?;
    let e =
        k.e.as_deref()
            .and_then(|e| URL_SAFE_NO_PAD.decode(e).ok())
            .ok_or("RSA e must be base64url")?;
    let bits = bit_len(&n);
    if bits < 2048 {
        return Err("RSA modulus shorter than 2048 bits");
    }
    if bits > 8192 {
        return Err("RSA modulus longer than 8192 bits");
    }
    let e_bits = bit_len(&e);
    if !(2..=33).contains(&e_bits) || e.last().is_none_or(|b| b & 1 == 0) {
        return Err("RSA exponent must be odd, at least 3 and at most 33 bits");
    }
    Ok(DecodingKey::from_rsa_raw_components(&n, &e))
}

fn bit_len(be: &[u8]) -> usize {
    let mut it = be.iter().skip_while(|b| **b == 0);
    match it.next() {
        None => 0,
        Some(first) => (8 - first.leading_zeros() as usize) + 8 * it.count(),
    }
}

/// A verified access token: only what the hub needs, no raw token text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `client_id`: the API user's BIN.
    pub client_id: Bin,
    /// `consent_id`.
    pub consent_id: Box<str>,
    /// The known permissions in `scope` (unknown words are ignored).
    pub scope: Permissions,
    /// `cnf.x5t#S256`: SHA-256 thumbprint of the certificate the token is bound to.
    pub cnf_x5t_s256: [u8; 32],
    /// `exp` (Unix seconds).
    pub exp: i64,
    /// `nbf` (Unix seconds), when present.
    pub nbf: Option<i64>,
    /// `iat` (Unix seconds).
    pub iat: i64,
    /// `jti`.
    pub jti: Box<str>,
}

impl VerifiedToken {
    /// Whether `scope` grants `p`.
    pub fn grants(&self, p: Permission) -> bool {
        self.scope.contains(p)
    }
}

/// Why a token was refused. Every variant answers `invalid_token`; none carries token data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than `max_token_bytes`.
    #[error("token larger than the configured maximum")]
    TooLarge,
    /// Not three non-empty dot-separated parts.
    #[error("token is not three dot-separated parts")]
    Malformed,
    /// A part is not unpadded base64url.
    #[error("token {0} is not unpadded base64url")]
    Base64(&'static str),
    /// The header is not a JSON object.
    #[error("token header is not a JSON object")]
    HeaderJson,
    /// The header repeats a member or has too many members.
    #[error("token header repeats a member or has too many")]
    HeaderDuplicate,
    /// `alg` missing or not ES256/PS256/EdDSA (`none`, `HS*`, `RS*`, …).
    #[error("token alg not accepted")]
    UnsupportedAlg,
    /// No `kid` in the header.
    #[error("token header has no kid")]
    MissingKid,
    /// `kid` not in the JWKS.
    #[error("token kid not in the key set")]
    UnknownKid,
    /// `alg` differs from the algorithm the key is pinned to.
    #[error("token alg does not match its key")]
    AlgKeyMismatch,
    /// `typ` missing, or not `at+jwt` / `application/at+jwt` (`JWT` included).
    #[error("token typ not accepted")]
    BadTyp,
    /// `crit` present.
    #[error("token header has crit")]
    Crit,
    /// The signature does not verify.
    #[error("token signature invalid")]
    BadSignature,
    /// The claims are not a JSON object.
    #[error("token claims are not a JSON object")]
    ClaimsJson,
    /// A claim appears twice, or there are too many claims.
    #[error("token repeats a claim or has too many")]
    DuplicateClaim,
    /// A required claim is absent.
    #[error("token claim {0} missing")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or shape.
    #[error("token claim {0} invalid")]
    InvalidClaim(&'static str),
    /// `iss` is not the configured issuer.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// `aud` does not name the hub.
    #[error("token audience not accepted")]
    WrongAudience,
    /// Past `exp` (+ leeway).
    #[error("token expired")]
    Expired,
    /// Before `nbf` (− leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` in the future beyond the leeway.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// Not verified: the connection or the certificate has spent its budget of failed
    /// verifications (`429 rate_limited`, not `invalid_token`).
    #[error("token not verified: too many failed verifications")]
    Throttled(Limited),
}

impl TokenError {
    /// The contract code: `invalid_token`, or `rate_limited` when not verified at all.
    pub const fn code(self) -> Code {
        match self {
            TokenError::Throttled(_) => Code::RateLimited,
            _ => Code::InvalidToken,
        }
    }

    /// A static label for logs and metrics.
    pub const fn reason(self) -> &'static str {
        match self {
            TokenError::TooLarge => "token too large",
            TokenError::Malformed => "token malformed",
            TokenError::Base64(_) => "token base64 invalid",
            TokenError::HeaderJson => "token header not json",
            TokenError::HeaderDuplicate => "token header duplicate member",
            TokenError::UnsupportedAlg => "token alg not accepted",
            TokenError::MissingKid => "token kid missing",
            TokenError::UnknownKid => "token kid unknown",
            TokenError::AlgKeyMismatch => "token alg does not match key",
            TokenError::BadTyp => "token typ not accepted",
            TokenError::Crit => "token crit present",
            TokenError::BadSignature => "token signature invalid",
            TokenError::ClaimsJson => "token claims not json",
            TokenError::DuplicateClaim => "token duplicate claim",
            TokenError::MissingClaim(_) => "token claim missing",
            TokenError::InvalidClaim(_) => "token claim invalid",
            TokenError::WrongIssuer => "token issuer wrong",
            TokenError::WrongAudience => "token audience wrong",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::IssuedInFuture => "token issued in future",
            TokenError::Throttled(_) => "token verifications over budget",
        }
    }
}

impl TokenError {
    /// Which rule refused the token, in words, for the problem's `detail` (names of
    /// claims and header members only, never their values).
    pub fn detail(self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow::{Borrowed, Owned};
        match self {
            TokenError::TooLarge => Borrowed("the bearer token is larger than the hub accepts"),
            TokenError::Malformed => {
                Borrowed("the bearer token is not a compact JWS (three dot-separated base64url parts)")
            }
            TokenError::Base64(part) => Owned(format!("the token's {part} is not unpadded base64url")),
            TokenError::UnsupportedAlg => {
                Borrowed("the token's alg is not accepted (ES256, PS256 or EdDSA)")
            }
            TokenError::MissingKid => Borrowed("the token's header has no kid"),
            TokenError::UnknownKid => Borrowed("the token's kid names no key of the hub's key set"),
            TokenError::AlgKeyMismatch => {
                Borrowed("the token's alg is not the algorithm of the key its kid names")
            }
            TokenError::BadTyp => Borrowed("the token's typ must be at+jwt (RFC 9068)"),
            TokenError::BadSignature => Borrowed("the token's signature does not verify"),
            TokenError::MissingClaim(c) => Owned(format!("the token has no {c} claim")),
            TokenError::InvalidClaim(c) => {
                Owned(format!("the token's {c} claim has the wrong type or form"))
            }
            TokenError::WrongIssuer => Borrowed("the token's iss is not the issuer the hub trusts"),
            TokenError::WrongAudience => Borrowed("the token's aud does not name the hub's audience"),
            TokenError::Expired => Borrowed("the token is past its exp (beyond the clock skew allowed)"),
            TokenError::NotYetValid => Borrowed("the token's nbf is in the future"),
            TokenError::IssuedInFuture => Borrowed("the token's iat is in the future"),
            TokenError::Throttled(_) => Borrowed(
                "too many failed token verifications on this connection or certificate; retry later",
            ),
            other => Owned(other.to_string()),
        }
    }
}

impl From<TokenError> for Code {
    fn from(e: TokenError) -> Code {
        e.code()
    }
}

/// Token-cache lookups (hits, misses). A verifier counts into its own, or into one that
/// outlives it ([`TokenVerifier::with_counters`]): a gateway replaces its verifier when
/// keys change and keeps counting across verifiers.
#[derive(Debug, Default)]
pub struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheCounters {
    /// Verifications answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Verifications that had to check the signature (including failed ones).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

/// Verifies access tokens and caches successful verifications (Send + Sync; share it).
pub struct TokenVerifier {
    settings: TokenSettings,
    leeway: i64,
    jwks: Jwks,
    cache: Option<quick_cache::sync::Cache<Box<str>, Arc<VerifiedToken>>>,
    counters: Arc<CacheCounters>,
    budget: VerifyBudget,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("settings", &self.settings)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for `settings` trusting the keys of `jwks`.
    pub fn new(settings: TokenSettings, jwks: Jwks) -> Self {
        TokenVerifier::with_counters(settings, jwks, Arc::default())
    }

    /// The same, counting cache lookups into `counters`.
    pub fn with_counters(
        settings: TokenSettings,
        jwks: Jwks,
        counters: Arc<CacheCounters>,
    ) -> Self {
        let cache = (settings.cache_capacity > 0)
            .then(|| quick_cache::sync::Cache::new(settings.cache_capacity));
        let budget = VerifyBudget::new(
            settings.max_failed_verifications_per_connection_per_sec,
            settings.max_failed_verifications_per_certificate_per_sec,
        );
        TokenVerifier {
            leeway: i64::try_from(settings.leeway_secs).unwrap_or(i64::MAX),
            settings,
            jwks,
            cache,
            counters,
            budget,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Verifications answered from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.counters.hits()
    }

    /// Verifications that had to check the signature (including failed ones).
    pub fn cache_misses(&self) -> u64 {
        self.counters.misses()
    }

    /// Verifies `token` (the bearer value) at `now_unix`.
    ///
    /// A cache hit costs one hash lookup and an `Arc` clone; the time checks run either way.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        if let Some(answer) = self.cached(token, now_unix) {
            return answer;
        }
        self.verify_fresh(token, now_unix, &mut false)
    }

    /// Verifies `token` like [`Self::verify`], charging a failed signature verification to
    /// the connection and certificate of `charge`. A token the cache cannot answer is not
    /// verified at all, and refused with [`TokenError::Throttled`], while either has spent
    /// its budget (see [`budget`]). Cache hits and successful verifications are free.
    pub fn verify_charged(
        &self,
        token: &str,
        now_unix: i64,
        charge: &Charge<'_>,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        if let Some(answer) = self.cached(token, now_unix) {
            return answer;
        }
        self.budget.admit(charge).map_err(TokenError::Throttled)?;
        let mut signature_checked = false;
        let verified = self.verify_fresh(token, now_unix, &mut signature_checked);
        if verified.is_err() && signature_checked {
            self.budget.charge(charge);
        }
        verified
    }

    /// The budget of failed verifications (what it tracks, for tests and diagnostics).
    pub fn budget(&self) -> &VerifyBudget {
        &self.budget
    }

    /// The answer the size limit or the cache gives without a signature check, if any.
    fn cached(&self, token: &str, now_unix: i64) -> Option<Result<Arc<VerifiedToken>, TokenError>> {
        if token.len() > self.settings.max_token_bytes {
            return Some(Err(TokenError::TooLarge));
        }
        let cache = self.cache.as_ref()?;
        let hit = cache.get(token)?;
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.check_times(&hit, now_unix) {
            if e == TokenError::Expired {
                cache.remove(token);
            }
            return Some(Err(e));
        }
        Some(Ok(hit))
    }

    /// Verifies a token the cache did not hold and caches it when valid;
    /// `signature_checked` says whether the verification got as far as the signature.
    fn verify_fresh(
        &self,
        token: &str,
        now_unix: i64,
        signature_checked: &mut bool,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let verified = self.verify_uncached(token, signature_checked)?;
        self.check_times(&verified, now_unix)?;
        let verified = Arc::new(verified);
        if let Some(cache) = &self.cache {
            cache.insert(Box::from(token), Arc::clone(&verified));
        }
        Ok(verified)
    }

    fn check_times(&self, t: &VerifiedToken, now: i64) -> Result<(), TokenError> {
        if now.saturating_sub(self.leeway) >= t.exp {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = t.nbf {
            if now.saturating_add(self.leeway) < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        if t.iat > now.saturating_add(self.leeway) {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(())
    }

    fn verify_uncached(
        &self,
        token: &str,
        signature_checked: &mut bool,
    ) -> Result<VerifiedToken, TokenError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(TokenError::Malformed);
        }
        let header = b64_json(h64, "header")?;
        let key = self.check_header(&header)?;

        let signed_len = h64.len() + 1 + p64.len();
        let message = token.get(..signed_len).ok_or(TokenError::Malformed)?;
        if !is_b64url(s64) {
            return Err(TokenError::Base64("signature"));
        }
        *signature_checked = true;
        match jsonwebtoken::crypto::verify(s64, message.as_bytes(), &key.key, key.alg.jwt()) {
            Ok(true) => {}
            _ => return Err(TokenError::BadSignature),
        }

        let claims = b64_json(p64, "payload")?;
        self.check_claims(&claims)
    }

    fn check_header(&self, header: &str) -> Result<&VerifyKey, TokenError> {
        const ALG: usize = 0;
        const KID: usize = 1;
        const TYP: usize = 2;
        const CRIT: usize = 3;
        let m = scan_members(header, &["alg", "kid", "typ", "crit"]).map_err(|e| match e {
            ScanError::Json => TokenError::HeaderJson,
            ScanError::Duplicate => TokenError::HeaderDuplicate,
        })?;
        if m.get(CRIT).is_some() {
            return Err(TokenError::Crit);
        }
        let alg = m
            .get(ALG)
            .and_then(json_string)
            .as_deref()
            .and_then(SigAlg::parse)
            .ok_or(TokenError::UnsupportedAlg)?;
        // RFC 9068 §4: the resource server MUST check `typ`, so that no other kind of JWT
        // signed by the same issuer (an ID token, a logout token) passes as an access token.
        let typ = m.get(TYP).and_then(json_string).ok_or(TokenError::BadTyp)?;
        if !ACCESS_TOKEN_TYPES
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&typ))
        {
            return Err(TokenError::BadTyp);
        }
        let kid = m.get(KID).ok_or(TokenError::MissingKid)?;
        let kid = json_string(kid)
            .filter(|kid| !kid.is_empty())
            .ok_or(TokenError::MissingKid)?;
        let key = self.jwks.find(&kid).ok_or(TokenError::UnknownKid)?;
        if key.alg != alg {
            return Err(TokenError::AlgKeyMismatch);
        }
        Ok(key)
    }

    fn check_claims(&self, claims: &str) -> Result<VerifiedToken, TokenError> {
        let m = scan_members(claims, &CLAIM_NAMES).map_err(|e| match e {
            ScanError::Json => TokenError::ClaimsJson,
            ScanError::Duplicate => TokenError::DuplicateClaim,
        })?;
        let c = Claims { m };
        // Presence first, in a fixed order, so "missing" is reported before "invalid".
        for i in [ISS, AUD, EXP, IAT, JTI, CLIENT_ID, CONSENT_ID, SCOPE, CNF] {
            c.req(i)?;
        }
        self.check_iss_aud(&c)?;
        let exp = c.int(EXP)?;
        let nbf =
            c.m.get(NBF)
                .map(|raw| Claims::int_value(raw, NBF))
                .transpose()?;
        let iat = c.int(IAT)?;
        let jti = c.string(JTI)?;
        if jti.is_empty() || jti.len() > MAX_JTI_LEN {
            return Err(TokenError::InvalidClaim("jti"));
        }
        let client_id =
            Bin::parse(&c.string(CLIENT_ID)?).map_err(|_| TokenError::InvalidClaim("client_id"))?;
        let consent_id = c.string(CONSENT_ID)?;
        if consent_id.is_empty()
            || consent_id.len() > MAX_CONSENT_ID_LEN
            || !consent_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(TokenError::InvalidClaim("consent_id"));
        }
        let scope: Permissions = c
            .string(SCOPE)?
            .split(' ')
            .filter_map(Permission::parse)
            .collect();
        let cnf_x5t_s256 = parse_cnf(c.req(CNF)?.get())?;
        Ok(VerifiedToken {
            client_id,
            consent_id: consent_id.into_boxed_str(),
            scope,
            cnf_x5t_s256,
            exp,
            nbf,
            iat,
            jti: jti.into_boxed_str(),
        })
    }

    /// `iss` is the configured issuer and `aud` names the hub (a string or an array).
    fn check_iss_aud(&self, c: &Claims<'_>) -> Result<(), TokenError> {
        let iss = c.string(ISS)?;
        if iss != self.settings.issuer {
            return Err(TokenError::WrongIssuer);
        }
        let aud = c.req(AUD)?;
        let aud_ok = if let Some(one) = json_string(aud) {
            one == self.settings.audience
        } else {
            let many: Vec<String> =
                serde_json::from_str(aud.get()).map_err(|_| TokenError::InvalidClaim("aud"))?;
            many.contains(&self.settings.audience)
        };
        if !aud_ok {
            return Err(TokenError::WrongAudience);
        }
        Ok(())
    }
}

/// Row 4's verification as [`crate::decision::decide`] asks for it: plain
/// ([`TokenVerifier`]) or charged to the request's sources ([`Charged`]).
pub trait Verify {
    /// Verifies `token` (the bearer value) at `now_unix`.
    fn verify_token(&self, token: &str, now_unix: i64) -> Result<Arc<VerifiedToken>, TokenError>;
}

impl Verify for TokenVerifier {
    fn verify_token(&self, token: &str, now_unix: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        self.verify(token, now_unix)
    }
}

impl<T: Verify + ?Sized> Verify for Arc<T> {
    fn verify_token(&self, token: &str, now_unix: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        (**self).verify_token(token, now_unix)
    }
}

impl<T: Verify + ?Sized> Verify for &T {
    fn verify_token(&self, token: &str, now_unix: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        (**self).verify_token(token, now_unix)
    }
}

/// A verifier whose failed verifications are charged to one request's connection and
/// certificate ([`TokenVerifier::verify_charged`]).
#[derive(Debug, Clone, Copy)]
pub struct Charged<'a> {
    /// The verifier.
    pub verifier: &'a TokenVerifier,
    /// Who pays for a failed verification.
    pub charge: Charge<'a>,
}

impl Verify for Charged<'_> {
    fn verify_token(&self, token: &str, now_unix: i64) -> Result<Arc<VerifiedToken>, TokenError> {
        self.verifier.verify_charged(token, now_unix, &self.charge)
    }
}

/// The claims the hub reads, by index into [`Claims`].
const CLAIM_NAMES: [&str; 10] = [
    "iss",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "consent_id",
    "scope",
    "cnf",
];
const ISS: usize = 0;
const AUD: usize = 1;
const EXP: usize = 2;
const NBF: usize = 3;
const IAT: usize = 4;
const JTI: usize = 5;
const CLIENT_ID: usize = 6;
const CONSENT_ID: usize = 7;
const SCOPE: usize = 8;
const CNF: usize = 9;

/// The scanned claims object, with typed accessors that name the claim in their errors.
struct Claims<'a> {
    m: Members<'a, 10>,
}

impl<'a> Claims<'a> {
    fn name(i: usize) -> &'static str {
        CLAIM_NAMES.get(i).copied().unwrap_or("?")
    }

    fn req(&self, i: usize) -> Result<&'a RawValue, TokenError> {
        self.m.get(i).ok_or(TokenError::MissingClaim(Self::name(i)))
    }

    fn string(&self, i: usize) -> Result<String, TokenError> {
        json_string(self.req(i)?).ok_or(TokenError::InvalidClaim(Self::name(i)))
    }

    fn int(&self, i: usize) -> Result<i64, TokenError> {
        Self::int_value(self.req(i)?, i)
    }

    /// NumericDates must be JSON integers: fractional values are refused.
    fn int_value(raw: &RawValue, i: usize) -> Result<i64, TokenError> {
        serde_json::from_str::<i64>(raw.get()).map_err(|_| TokenError::InvalidClaim(Self::name(i)))
    }
}

fn parse_cnf(json: &str) -> Result<[u8; 32], TokenError> {
    let m = scan_members(json, &["x5t#S256"]).map_err(|e| match e {
        ScanError::Json => TokenError::InvalidClaim("cnf"),
        ScanError::Duplicate => TokenError::DuplicateClaim,
    })?;
    let raw = m.get(0).ok_or(TokenError::MissingClaim("cnf.x5t#S256"))?;
    let s = json_string(raw).ok_or(TokenError::InvalidClaim("cnf.x5t#S256"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| TokenError::InvalidClaim("cnf.x5t#S256"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| TokenError::InvalidClaim("cnf.x5t#S256"))
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn b64_json(part: &str, name: &'static str) -> Result<String, TokenError> {
    if !is_b64url(part) {
        return Err(TokenError::Base64(name));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(part.as_bytes())
        .map_err(|_| TokenError::Base64(name))?;
    String::from_utf8(bytes).map_err(|_| match name {
        "header" => TokenError::HeaderJson,
        _ => TokenError::ClaimsJson,
    })
}

fn json_string(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

enum ScanError {
    Json,
    Duplicate,
}

/// The raw values of the members named in `known`, found in a JSON object whose every
/// member name (known or not) must be unique.
struct Members<'a, const N: usize> {
    slots: [Option<&'a RawValue>; N],
}

impl<'a, const N: usize> Members<'a, N> {
    fn get(&self, i: usize) -> Option<&'a RawValue> {
        self.slots.get(i).copied().flatten()
    }
}

struct MemberVisitor<'k, const N: usize> {
    known: &'k [&'static str; N],
    duplicate: &'k mut bool,
}

impl<'de, const N: usize> Visitor<'de> for MemberVisitor<'_, N> {
    type Value = Members<'de, N>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Members { slots: [None; N] };
        let mut others: HashSet<String> = HashSet::new();
        let mut count = 0usize;
        while let Some(key) = map.next_key::<String>()? {
            count += 1;
            let raw: &'de RawValue = map.next_value()?;
            if count > MAX_MEMBERS {
                *self.duplicate = true;
                continue;
            }
            match self.known.iter().position(|k| *k == key) {
                Some(i) => match out.slots.get_mut(i) {
                    Some(slot @ None) => *slot = Some(raw),
                    _ => *self.duplicate = true,
                },
                None => {
                    if !others.insert(key) {
                        *self.duplicate = true;
                    }
                }
            }
        }
        Ok(out)
    }
}

fn scan_members<'a, const N: usize>(
    json: &'a str,
    known: &[&'static str; N],
) -> Result<Members<'a, N>, ScanError> {
    let mut duplicate = false;
    let mut de = serde_json::Deserializer::from_str(json);
    let members = (&mut de)
        .deserialize_map(MemberVisitor {
            known,
            duplicate: &mut duplicate,
        })
        .map_err(|_| ScanError::Json)?;
    de.end().map_err(|_| ScanError::Json)?;
    if duplicate {
        return Err(ScanError::Duplicate);
    }
    Ok(members)
}

/// Checks RFC 8705 binding: the token's `client_id` is the mTLS participant and its
/// `cnf.x5t#S256` is this connection's certificate thumbprint (compared in constant time).
pub fn check_binding(
    token: &VerifiedToken,
    participant: Bin,
    cert_thumbprint: &[u8; 32],
) -> Result<(), Code> {
    let same_cert: bool = token.cnf_x5t_s256.ct_eq(cert_thumbprint).into();
    if same_cert && token.client_id == participant {
        Ok(())
    } else {
        Err(Code::TokenBindingMismatch)
    }
}

/// Extracts the token from an `Authorization` value of the exact form `Bearer <token68>`
/// (scheme case-insensitive, exactly one space, RFC 9110 `token68` characters, no
/// surrounding whitespace).
pub fn bearer(authorization_header: &[u8]) -> Option<&str> {
    let (scheme, rest) = authorization_header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") || rest.is_empty() {
        return None;
    }
    let body_len = rest
        .iter()
        .position(|b| !TOKEN68_BODY[usize::from(*b)])
        .unwrap_or(rest.len());
    let (body, pad) = rest.split_at(body_len);
    if body.is_empty() || !pad.iter().all(|b| *b == b'=') {
        return None;
    }
    std::str::from_utf8(rest).ok()
}

const fn is_token68_body(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// [`is_token68_body`] for every byte, looked up: one load per byte of a token that every
/// request carries (a few hundred bytes), instead of a chain of range tests.
static TOKEN68_BODY: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_token68_body(b as u8);
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token68_table_is_the_predicate() {
        for b in 0..=u8::MAX {
            assert_eq!(TOKEN68_BODY[usize::from(b)], is_token68_body(b), "byte {b}");
        }
        assert_eq!(TOKEN68_BODY.iter().filter(|x| **x).count(), 62 + 6);
    }

    #[test]
    fn bearer_is_strict() {
        assert_eq!(bearer(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer(b"bearer abc"), Some("abc"));
        assert_eq!(bearer(b"BEARER a+/~_-.=="), Some("a+/~_-.=="));
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer  abc",
            b"Bearer\tabc",
            b"Basic abc",
            b"Bearerabc",
            b"Bearer abc ",
            b" Bearer abc",
            b"Bearer a=b",
            b"Bearer ==",
            b"Bearer a,b",
            b"Bearer \xff",
            b"Bearer abc\r\n",
        ] {
            assert_eq!(bearer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert_eq!(bit_len(&[1]), 1);
        assert_eq!(bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x01, 0, 1]), 17);
    }

    #[test]
    fn member_scan_rejects_duplicates_and_garbage() {
        assert!(scan_members(r#"{"a":1,"b":{"a":1,"a":2}}"#, &["a"]).is_ok());
        assert!(matches!(
            scan_members(r#"{"a":1,"a":2}"#, &["a"]),
            Err(ScanError::Duplicate)
        ));
        assert!(matches!(
            scan_members(r#"{"x":1,"x":2}"#, &["a"]),
            Err(ScanError::Duplicate)
        ));
        assert!(matches!(
            scan_members(r#"{"a":1,"\u0061":2}"#, &["a"]),
            Err(ScanError::Duplicate)
        ));
        for bad in ["[]", "1", "\"a\"", "{", r#"{"a":1} x"#, "", "null"] {
            assert!(
                matches!(scan_members(bad, &["a"]), Err(ScanError::Json)),
                "{bad}"
            );
        }
        let many: String = (0..=MAX_MEMBERS)
            .map(|i| format!("\"k{i}\":0"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(matches!(
            scan_members(&format!("{{{many}}}"), &["a"]),
            Err(ScanError::Duplicate)
        ));
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TokenVerifier>();
        assert_send_sync::<VerifiedToken>();
    }

    #[test]
    fn binding_compares_both_parts() {
        let t = VerifiedToken {
            client_id: Bin::parse("180340012345").unwrap(),
            consent_id: "c1".into(),
            scope: Permissions::EMPTY,
            cnf_x5t_s256: [7; 32],
            exp: 10,
            nbf: None,
            iat: 0,
            jti: "j".into(),
        };
        let me = Bin::parse("180340012345").unwrap();
        let other = Bin::parse("180340012346").unwrap();
        assert_eq!(check_binding(&t, me, &[7; 32]), Ok(()));
        assert_eq!(
            check_binding(&t, other, &[7; 32]),
            Err(Code::TokenBindingMismatch)
        );
        let mut tp = [7; 32];
        tp[31] = 8;
        assert_eq!(check_binding(&t, me, &tp), Err(Code::TokenBindingMismatch));
    }
}
