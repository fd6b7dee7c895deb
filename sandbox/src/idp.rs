//! A development OpenID Connect identity provider, standing in for the national one in
//! tests and the demo. It speaks the real protocol over HTTPS: a discovery document
//! (`/.well-known/openid-configuration`), an authorize endpoint that redirects back with
//! a one-time code (authorization code flow, PKCE S256 required), a token endpoint that
//! checks the client, the redirect URI and the PKCE verifier and returns an ES256-signed
//! ID token, and its JWKS.
//!
//! Whoever is named by `login_hint` (a 12-digit IIN) is "authenticated" at once; without
//! one, the authorize endpoint shows a form asking for it. Development material only.
//! [`Fault`] makes the next ID tokens wrong in one way each, so relying parties can be
//! tested against every check they must make.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::ServerConfig;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::tokens::{DevAlg, DevIssuer, TokenError};

/// How long an authorization code may wait for its redemption.
const CODE_TTL_SECS: u64 = 60;
/// Lifetime of an ID token.
const ID_TOKEN_TTL_SECS: u64 = 300;

/// A relying party registered at the provider.
#[derive(Debug, Clone)]
pub struct IdpClient {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (`client_secret_basic`); `None`: a public client.
    pub client_secret: Option<String>,
    /// Redirect URIs, matched exactly.
    pub redirect_uris: Vec<String>,
}

/// What the provider serves with.
#[derive(Debug, Clone)]
pub struct IdpConfig {
    /// Listener address (port 0: ephemeral).
    pub listen: SocketAddr,
    /// Server certificate chain (PEM), e.g. the dev PKI's hub server certificate.
    pub server_cert_chain_pem: Vec<u8>,
    /// Server private key (PEM).
    pub server_key_pem: Vec<u8>,
    /// Registered clients (more with [`DevIdp::register`]).
    pub clients: Vec<IdpClient>,
    /// The ID token claim carrying the IIN (default `iin`).
    pub iin_claim: String,
}

/// A deliberate defect of the next ID tokens (for testing relying parties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Correct tokens.
    None,
    /// `nonce` is not the one the relying party sent.
    WrongNonce,
    /// `exp` has passed.
    Expired,
    /// `aud` is another client.
    WrongAudience,
    /// `iss` is another issuer.
    WrongIssuer,
    /// Signed with a key the JWKS does not publish.
    ForeignKey,
    /// The IIN claim is missing.
    NoIin,
}

/// Why the provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The TLS identity was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The signing key could not be made.
    #[error(transparent)]
    Key(#[from] TokenError),
}

struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    iin: String,
    expires_at: u64,
}

struct State {
    issuer: String,
    config: IdpConfig,
    signer: DevIssuer,
    foreign: DevIssuer,
    clients: Mutex<Vec<IdpClient>>,
    fault: Mutex<Fault>,
    codes: Mutex<HashMap<String, Grant>>,
    rng: SystemRandom,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running provider.
pub struct DevIdp {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.state.issuer)
            .finish_non_exhaustive()
    }
}

impl DevIdp {
    /// Starts the provider on the current runtime.
    pub async fn start(config: IdpConfig) -> Result<DevIdp, IdpError> {
        Self::start_on(&tokio::runtime::Handle::current(), config)
    }

    /// Starts the provider on `rt` from synchronous code (the demo).
    pub fn start_on(rt: &tokio::runtime::Handle, config: IdpConfig) -> Result<DevIdp, IdpError> {
        let tls = server_tls(&config)?;
        let bind = |source| IdpError::Bind {
            addr: config.listen,
            source,
        };
        let std_listener = std::net::TcpListener::bind(config.listen).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let listener = {
            let _guard = rt.enter();
            TcpListener::from_std(std_listener).map_err(bind)?
        };
        let addr = listener.local_addr().map_err(bind)?;
        let issuer = format!("https://{addr}");
        let state = Arc::new(State {
            signer: DevIssuer::generate(DevAlg::Es256, "dev-idp-1", &issuer)?,
            foreign: DevIssuer::generate(DevAlg::Es256, "dev-idp-1", &issuer)?,
            issuer,
            clients: Mutex::new(config.clients.clone()),
            config,
            fault: Mutex::new(Fault::None),
            codes: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        });
        let (shutdown, rx) = watch::channel(false);
        let task = rt.spawn(accept(listener, TlsAcceptor::from(tls), state.clone(), rx));
        Ok(DevIdp {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer (`https://{addr}`).
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// Registers a client (e.g. once the relying party knows its redirect URI).
    pub fn register(&self, client: IdpClient) {
        lock(&self.state.clients).push(client);
    }

    /// Makes the next ID tokens wrong in one way (or right again with [`Fault::None`]).
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = fault;
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

fn server_tls(config: &IdpConfig) -> Result<Arc<ServerConfig>, IdpError> {
    let tls = |e: &dyn std::fmt::Display| IdpError::Tls(e.to_string());
    let chain = rustls_pemfile::certs(&mut &config.server_cert_chain_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut &config.server_key_pem[..])
        .map_err(|e| tls(&e))?
        .ok_or_else(|| IdpError::Tls("no private key".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((tcp, _)) = r else { continue };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                conns.spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    conns.shutdown().await;
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_reply(status: StatusCode, v: &Value) -> Resp {
    reply(status, "application/json", v.to_string())
}

fn oauth_error(status: StatusCode, error: &str) -> Resp {
    json_reply(status, &json!({ "error": error }))
}

fn redirect(to: &str) -> Resp {
    let mut r = reply(StatusCode::FOUND, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn pairs(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn handle(state: &State, req: Request<Incoming>) -> Resp {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/.well-known/openid-configuration") => discovery(state),
        (&Method::GET, "/jwks") => reply(
            StatusCode::OK,
            "application/jwk-set+json",
            state.signer.jwks_json(),
        ),
        (&Method::GET, "/authorize") => authorize(state, req.uri().query().unwrap_or("")),
        (&Method::POST, "/token") => token(state, req).await,
        _ => oauth_error(StatusCode::NOT_FOUND, "not_found"),
    }
}

fn discovery(state: &State) -> Resp {
    let i = &state.issuer;
    json_reply(
        StatusCode::OK,
        &json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "jwks_uri": format!("{i}/jwks"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": ["openid"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", state.config.iin_claim],
        }),
    )
}

/// `GET /authorize`: the client and redirect URI are checked before anything is sent
/// back to the redirect URI (an unregistered one gets a plain `400`, never a redirect).
fn authorize(state: &State, query: &str) -> Resp {
    let q = pairs(query);
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let Some(client) = lock(&state.clients)
        .iter()
        .find(|c| c.client_id == get("client_id"))
        .cloned()
    else {
        return reply(StatusCode::BAD_REQUEST, "text/plain", "unknown client_id");
    };
    let redirect_uri = get("redirect_uri");
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "unregistered redirect_uri",
        );
    }
    let back = |params: &[(&str, &str)]| {
        let mut url = form_urlencoded::Serializer::new(String::new());
        url.extend_pairs(params);
        url.append_pair("state", get("state"));
        redirect(&format!("{redirect_uri}?{}", url.finish()))
    };
    if get("response_type") != "code" {
        return back(&[("error", "unsupported_response_type")]);
    }
    if !get("scope").split(' ').any(|s| s == "openid") {
        return back(&[("error", "invalid_scope")]);
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() < 43 {
        return back(&[("error", "invalid_request")]);
    }
    let iin = get("login_hint");
    if iin.is_empty() {
        return login_form(query);
    }
    if iin.len() != 12 || !iin.bytes().all(|b| b.is_ascii_digit()) {
        return back(&[("error", "access_denied")]);
    }
    let code = random(&state.rng);
    let grant = Grant {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        challenge: get("code_challenge").to_owned(),
        nonce: q.get("nonce").cloned(),
        iin: iin.to_owned(),
        expires_at: now() + CODE_TTL_SECS,
    };
    lock(&state.codes).insert(code.clone(), grant);
    back(&[("code", &code)])
}

/// Asks who logs in, then comes back to `/authorize` with the same parameters and a
/// `login_hint`.
fn login_form(query: &str) -> Resp {
    let hidden: String = pairs(query)
        .iter()
        .filter(|(k, _)| k.as_str() != "login_hint")
        .map(|(k, v)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                html_escape(k),
                html_escape(v)
            )
        })
        .collect();
    let page = format!(
        "<!doctype html><title>Development identity provider</title>\
         <form method=get action=/authorize>{hidden}\
         <label>IIN <input name=login_hint pattern=\"[0-9]{{12}}\" required></label>\
         <button>Log in</button></form>"
    );
    reply(StatusCode::OK, "text/html; charset=utf-8", page)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn random(rng: &SystemRandom) -> String {
    let mut b = [0u8; 32];
    // A failing system RNG leaves zeros: development material, and the code is then
    // merely guessable, never reused across providers.
    let _ = rng.fill(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The client authenticated by `Authorization: Basic` (or, for a public client, named by
/// `client_id` in the form).
fn client(
    state: &State,
    headers: &http::HeaderMap,
    form: &HashMap<String, String>,
) -> Option<IdpClient> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let (id, secret) = match &basic {
        Some(pair) => {
            let (id, secret) = pair.split_once(':')?;
            (decode_component(id), Some(decode_component(secret)))
        }
        None => (form.get("client_id")?.clone(), None),
    };
    let clients = lock(&state.clients);
    let c = clients.iter().find(|c| c.client_id == id)?;
    (c.client_secret == secret).then(|| c.clone())
}

/// RFC 6749 §2.3.1: the Basic credentials are form-encoded first.
fn decode_component(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `POST /token`: redeems a code once, for its client, redirect URI and PKCE verifier.
async fn token(state: &State, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, 64 * 1024).collect().await else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let form = pairs(&String::from_utf8_lossy(&body.to_bytes()));
    let Some(client) = client(state, &parts.headers, &form) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let code = form.get("code").cloned().unwrap_or_default();
    // Taken out whatever happens next: a code is good for one attempt.
    let Some(grant) = lock(&state.codes).remove(&code) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    if grant.client_id != client.client_id
        || Some(&grant.redirect_uri) != form.get("redirect_uri")
        || grant.challenge != challenge
        || now() >= grant.expires_at
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    match id_token(state, &grant) {
        Ok(id_token) => json_reply(
            StatusCode::OK,
            &json!({
                "access_token": random(&state.rng),
                "token_type": "Bearer",
                "expires_in": ID_TOKEN_TTL_SECS,
                "scope": "openid",
                "id_token": id_token,
            }),
        ),
        Err(_) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

/// The ID token for `grant`, with the configured fault.
fn id_token(state: &State, grant: &Grant) -> Result<String, TokenError> {
    let fault = *lock(&state.fault);
    let now = now();
    let mut claims = json!({
        "iss": if fault == Fault::WrongIssuer { "https://impostor.example" } else { state.issuer.as_str() },
        "sub": format!("dev-{}", &URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, grant.iin.as_bytes()))[..16]),
        "aud": if fault == Fault::WrongAudience { "another-client" } else { grant.client_id.as_str() },
        "iat": now,
        "auth_time": now,
        "exp": if fault == Fault::Expired { now - 600 } else { now + ID_TOKEN_TTL_SECS },
    });
    if let Some(o) = claims.as_object_mut() {
        match (&grant.nonce, fault) {
            (_, Fault::WrongNonce) => {
                o.insert("nonce".into(), json!("not-the-nonce"));
            }
            (Some(n), _) => {
                o.insert("nonce".into(), json!(n));
            }
            (None, _) => {}
        }
        if fault != Fault::NoIin {
            o.insert(state.config.iin_claim.clone(), json!(grant.iin));
        }
    }
    let signer = if fault == Fault::ForeignKey {
        &state.foreign
    } else {
        &state.signer
    };
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": signer.kid()}).to_string();
    signer.mint_raw(&header, &claims.to_string())
}
