//! The customer's first factor: the sidecar as an OpenID Connect relying party of the
//! national identity provider (authorization code flow with PKCE). Discovery document
//! and JWKS are fetched from the configured issuer and cached; the ID token is verified
//! by the `openidconnect` crate (signature against the provider's JWKS, `iss`, `aud`,
//! `exp`, `nonce`), and a configured claim names the customer's IIN.
//!
//! The provider is reached with the sidecar's own HTTP client (hyper over rustls, the
//! configured CA bundle, one connection per request, no redirects followed — following
//! them would let a provider's answer point the sidecar anywhere).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, StandardErrorResponse, StandardTokenResponse,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::clock::Clock;

/// Largest answer read from the identity provider.
const MAX_RESPONSE: usize = 256 * 1024;
/// How long a fetched discovery document and JWKS are used before fetching them again.
const METADATA_TTL: Duration = Duration::from_secs(300);

/// A secret that never appears in debug output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The identity provider and how the sidecar is registered with it.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The provider's issuer (`https://…`); discovery is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The sidecar's client id at the provider (also the ID token's expected `aud`).
    pub client_id: String,
    /// The client secret (`client_secret_basic` at the token endpoint); `None`: a public
    /// client (PKCE alone).
    pub client_secret: Option<Secret>,
    /// CA bundles (PEM) that verify the provider's TLS certificate.
    pub ca: Vec<PathBuf>,
    /// The ID token claim that holds the customer's IIN (default `iin`).
    pub iin_claim: String,
    /// Scopes asked for besides `openid` (default none).
    pub scopes: Vec<String>,
    /// The redirect URI registered at the provider (default
    /// `{public_url}/v1/customer/login/callback`).
    pub redirect_url: Option<String>,
    /// How long a started login may take, in seconds (default 600).
    pub login_ttl_secs: i64,
    /// Timeout of each request to the provider (default 10 s).
    pub timeout: Duration,
}

impl OidcConfig {
    /// A configuration with the defaults for everything but the provider and the client.
    pub fn new(issuer: &str, client_id: &str, ca: Vec<PathBuf>) -> OidcConfig {
        OidcConfig {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: None,
            ca,
            iin_claim: "iin".to_owned(),
            scopes: Vec::new(),
            redirect_url: None,
            login_ttl_secs: 600,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why the provider could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A URL is malformed or not `https`.
    #[error("{field}: {what}")]
    Url {
        /// Which setting.
        field: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The CA bundle is unreadable or empty.
    #[error("{}: {what}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The provider could not be reached or answered nonsense (`503`).
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The provider or its ID token refused the login (`401`); says which check failed.
    #[error("login refused: {0}")]
    Refused(&'static str),
}

/// Every claim of the ID token beyond the standard ones, so the configured IIN claim can
/// be read (after verification).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for OtherClaims {}

type Tokens = StandardTokenResponse<
    IdTokenFields<
        OtherClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type Client = openidconnect::Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A started login: where to send the customer, and what the callback must match.
pub struct Authorization {
    /// The provider's authorization URL (with `state`, `nonce`, the PKCE challenge).
    pub url: String,
    /// The `state` parameter.
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier.
    pub pkce_verifier: String,
}

/// The identity provider, as the sidecar's client of it.
pub struct Provider {
    config: OidcConfig,
    issuer: IssuerUrl,
    redirect: RedirectUrl,
    http: IdpHttp,
    clock: Arc<dyn Clock>,
    cached: tokio::sync::Mutex<Option<(Instant, Arc<Client>)>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

fn https_url(field: &'static str, url: &str) -> Result<openidconnect::url::Url, SetupError> {
    let parsed = openidconnect::url::Url::parse(url).map_err(|e| SetupError::Url {
        field,
        what: e.to_string(),
    })?;
    if parsed.scheme() != "https" {
        return Err(SetupError::Url {
            field,
            what: "must be an https URL".into(),
        });
    }
    Ok(parsed)
}

impl Provider {
    /// Checks the configuration and loads the CA bundle; nothing is fetched yet (a provider
    /// that is down must not keep the sidecar from starting).
    pub fn new(
        config: OidcConfig,
        public_url: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Provider, SetupError> {
        https_url("oidc-issuer", &config.issuer)?;
        let redirect = config.redirect_url.clone().unwrap_or_else(|| {
            format!(
                "{}/v1/customer/login/callback",
                public_url.trim_end_matches('/')
            )
        });
        https_url("oidc-redirect-url", &redirect)?;
        let http = IdpHttp::new(&config.ca, config.timeout)?;
        Ok(Provider {
            issuer: IssuerUrl::new(config.issuer.clone()).map_err(|e| SetupError::Url {
                field: "oidc-issuer",
                what: e.to_string(),
            })?,
            redirect: RedirectUrl::new(redirect).map_err(|e| SetupError::Url {
                field: "oidc-redirect-url",
                what: e.to_string(),
            })?,
            config,
            http,
            clock,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// How long a started login may take.
    pub fn login_ttl_secs(&self) -> i64 {
        self.config.login_ttl_secs
    }

    /// The client built from the provider's discovery document and JWKS: the cached one,
    /// or fetched again when older than the TTL or when `fresh` (an unknown signing key).
    async fn client(&self, fresh: bool) -> Result<Arc<Client>, LoginError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, client)) = cached.as_ref() {
            if !fresh && at.elapsed() < METADATA_TTL {
                return Ok(client.clone());
            }
        }
        let send = self.http.sender();
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &send)
            .await
            .map_err(|e| LoginError::Unavailable(format!("discovery: {e}")))?;
        let client: Client = openidconnect::Client::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.0.clone())),
        )
        .set_redirect_uri(self.redirect.clone());
        let client = Arc::new(client);
        *cached = Some((Instant::now(), client.clone()));
        Ok(client)
    }

    /// Starts a login: a fresh `state`, `nonce` and PKCE (S256) verifier, and the URL that
    /// carries them (and the customer's `login_hint`, when given) to the provider.
    pub async fn authorize(&self, login_hint: Option<&str>) -> Result<Authorization, LoginError> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &self.config.scopes {
            request = request.add_scope(Scope::new(s.clone()));
        }
        if let Some(hint) = login_hint {
            request = request.add_extra_param("login_hint", hint.to_owned());
        }
        let (url, state, nonce) = request.url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Redeems `code` (with the PKCE verifier), verifies the ID token against `nonce` and
    /// returns the customer's IIN from the configured claim.
    pub async fn identify(
        &self,
        code: String,
        pkce_verifier: String,
        nonce: String,
    ) -> Result<String, LoginError> {
        let client = self.client(false).await?;
        let send = self.http.sender();
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| LoginError::Unavailable(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&send)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(_) => {
                    LoginError::Refused("the identity provider refused the authorization code")
                }
                other => LoginError::Unavailable(format!("token endpoint: {other}")),
            })?;
        let Some(id_token) = tokens.extra_fields().id_token() else {
            return Err(LoginError::Refused(
                "the identity provider sent no ID token",
            ));
        };
        let nonce = Nonce::new(nonce);
        let claims = match id_token.claims(&self.verifier(&client), &nonce) {
            // A key the cached JWKS lacks: the provider rotated; fetch once more.
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                let fresh = self.client(true).await?;
                let verifier = self.verifier(&fresh);
                let claims = id_token.claims(&verifier, &nonce).map_err(refusal)?;
                claims.clone()
            }
            other => other.map_err(refusal)?.clone(),
        };
        iin(&claims.additional_claims().rest, &self.config.iin_claim)
    }

    fn verifier<'a>(
        &self,
        client: &'a Client,
    ) -> openidconnect::IdTokenVerifier<'a, CoreJsonWebKey> {
        let clock = self.clock.clone();
        client.id_token_verifier().set_time_fn(move || {
            chrono::DateTime::from_timestamp(clock.now(), 0).unwrap_or_default()
        })
    }
}

/// Which ID token check failed, without echoing any value from the token.
fn refusal(e: ClaimsVerificationError) -> LoginError {
    LoginError::Refused(match e {
        ClaimsVerificationError::Expired(_) => "ID token: exp has passed",
        ClaimsVerificationError::InvalidAudience(_) => "ID token: aud is not this client",
        ClaimsVerificationError::InvalidIssuer(_) => "ID token: iss is not the provider",
        ClaimsVerificationError::InvalidNonce(_) => "ID token: nonce does not match the login",
        ClaimsVerificationError::SignatureVerification(_) => "ID token: signature",
        ClaimsVerificationError::InvalidSubject(_) => "ID token: sub",
        _ => "ID token: invalid",
    })
}

/// The IIN in `claim`: exactly 12 ASCII digits (as a string).
fn iin(
    claims: &serde_json::Map<String, serde_json::Value>,
    claim: &str,
) -> Result<String, LoginError> {
    match claims.get(claim).and_then(|v| v.as_str()) {
        Some(s) if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(s.to_owned()),
        _ => Err(LoginError::Refused(
            "ID token: the IIN claim is missing or not 12 digits",
        )),
    }
}

/// Why a request to the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an `https` URL with a host.
    #[error("not an https URL with a host")]
    NotHttps,
    /// No answer within the timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// Connecting failed.
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The answer is over the size limit or unreadable.
    #[error("reading the answer: {0}")]
    Body(String),
}

/// The HTTPS client towards the provider.
#[derive(Clone)]
struct IdpHttp {
    tls: TlsConnector,
    timeout: Duration,
}

impl IdpHttp {
    fn new(ca: &[PathBuf], timeout: Duration) -> Result<IdpHttp, SetupError> {
        let mut roots = RootCertStore::empty();
        for path in ca {
            let bad = |what: String| SetupError::Ca {
                path: path.clone(),
                what,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(SetupError::Ca {
                path: ca.first().cloned().unwrap_or_default(),
                what: "no CA certificate to verify the identity provider".into(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SetupError::Url {
                field: "oidc-ca",
                what: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(IdpHttp {
            tls: TlsConnector::from(Arc::new(tls)),
            timeout,
        })
    }

    /// The client as `openidconnect` takes it: a function from request to a future that
    /// owns what it needs (so it stays `Send` whatever borrows the caller holds).
    fn sender(
        &self,
    ) -> impl Fn(
        HttpRequest,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<HttpResponse, HttpError>> + Send>,
    > {
        let http = self.clone();
        move |r| {
            let http = http.clone();
            Box::pin(async move { http.send(r).await })
        }
    }

    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        tokio::time::timeout(self.timeout, self.exchange(req))
            .await
            .map_err(|_| HttpError::Timeout)?
    }

    async fn exchange(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let uri = req.uri().clone();
        let (Some("https"), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return Err(HttpError::NotHttps);
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.clone()).map_err(|_| HttpError::NotHttps)?;
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let tls = self.tls.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = req.into_parts();
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|_| HttpError::NotHttps)?;
        if let Some(authority) = uri.authority() {
            if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        let resp = sender
            .send_request(http::Request::from_parts(
                parts,
                Full::new(Bytes::from(body)),
            ))
            .await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| HttpError::Body(e.to_string()))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iin_claim_is_twelve_digits() {
        let claims = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let ok = claims(serde_json::json!({"iin": "900101300123"}));
        assert_eq!(iin(&ok, "iin").unwrap(), "900101300123");
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"iin": 900101300123u64}),
            serde_json::json!({"iin": "90010130012"}),
            serde_json::json!({"iin": "9001013001234"}),
            serde_json::json!({"iin": "90010130012x"}),
            serde_json::json!({"other": "900101300123"}),
        ] {
            assert!(iin(&claims(bad.clone()), "iin").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_stays_out_of_debug_output() {
        let mut c = OidcConfig::new("https://idp.example", "trust", Vec::new());
        c.client_secret = Some(Secret("hunter2".into()));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_issuer_and_redirect_must_be_https() {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let c = OidcConfig::new("http://idp.example", "trust", Vec::new());
        let e = Provider::new(c, "https://127.0.0.1:1", clock.clone()).unwrap_err();
        assert!(e.to_string().starts_with("oidc-issuer"), "{e}");
        let c = OidcConfig::new("https://idp.example", "trust", Vec::new());
        let e = Provider::new(c, "http://127.0.0.1:1", clock).unwrap_err();
        assert!(e.to_string().starts_with("oidc-redirect-url"), "{e}");
    }
}
