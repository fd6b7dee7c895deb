//! The HTTP API: routing, caller authentication (client certificate or customer
//! session), request decoding, and the one place that maps [`Error`]s to RFC 9457
//! problem responses and [`OAuthError`]s to RFC 6749 §5.2 answers.

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use consent_cache::Bin;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::app::{App, OAuthError};
use crate::billing_routes;
use crate::error::{Error, OtpState};
use crate::feed::{self, FeedRefusal};
use crate::listener::Exposure;
use crate::login;
use crate::participants::{self, ParticipantInput, StatusInput};
use crate::rollups;
use crate::sla;
use crate::wire::rollup::RollupBatch;
use crate::wire::{ParticipantRecord, Role, NDJSON};

/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;

/// This API's OpenAPI 3.1 document (`docs/openapi/trust.json`), built into the binary so
/// that what is served is what this build implements.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi/trust.json");

/// Response body: a full buffer or a stream.
pub type Body = BoxBody<Bytes, Infallible>;
/// A response.
pub type Resp = Response<Body>;

/// What the connection established about the client.
#[derive(Debug, Clone)]
pub struct Peer {
    /// SHA-256 of the client's leaf certificate, when it presented one (already
    /// verified against the platform CA by the handshake).
    pub thumbprint: Option<[u8; 32]>,
    /// The source address (the per-address limit of unauthenticated routes).
    pub addr: IpAddr,
    /// Which routes the listener serves.
    pub exposure: Exposure,
    /// A request body must arrive within this.
    pub body_read_timeout: Duration,
}

/// A body fed by a channel: each received chunk is one data frame; the stream ends
/// when the sender is dropped.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub(crate) fn with_headers(mut r: Resp, content_type: &'static str, cache: &'static str) -> Resp {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(v) => {
            let mut r = Response::new(full(v));
            *r.status_mut() = status;
            with_headers(r, "application/json", "no-store")
        }
        Err(e) => problem(&Error::Internal(format!("encoding: {e}"))),
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts_left: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    codes_left: Option<u32>,
}

/// Maps an [`Error`] to its problem+json answer.
pub fn problem(e: &Error) -> Resp {
    let (status, code, detail, otp): (StatusCode, &str, Option<String>, Option<OtpState>) = match e
    {
        Error::BadRequest(d) => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some(d.clone()),
            None,
        ),
        Error::TooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            Some(e.to_string()),
            None,
        ),
        Error::Unprocessable { code, detail } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            Some(detail.clone()),
            None,
        ),
        Error::Unauthenticated(code) => (StatusCode::UNAUTHORIZED, code, None, None),
        Error::Forbidden(code) => (StatusCode::FORBIDDEN, code, None, None),
        Error::NotFound(code) => (StatusCode::NOT_FOUND, code, None, None),
        Error::Conflict { code, detail } => {
            (StatusCode::CONFLICT, code, Some(detail.clone()), None)
        }
        Error::Limit { code, otp } => {
            let status = if *code == "otp_resend_limit" {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::FORBIDDEN
            };
            (status, code, None, *otp)
        }
        Error::Otp { code, otp } => (StatusCode::BAD_REQUEST, code, None, Some(*otp)),
        Error::RateLimited { detail, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            Some(detail.clone()),
            None,
        ),
        Error::Timeout => (
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            Some(e.to_string()),
            None,
        ),
        Error::Unavailable { code, detail } => (
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            Some(detail.clone()),
            None,
        ),
        Error::LoginFailed(why) => (
            StatusCode::UNAUTHORIZED,
            "login_failed",
            Some((*why).to_owned()),
            None,
        ),
        Error::Notifier(d) => (
            StatusCode::BAD_GATEWAY,
            "notifier_failed",
            Some(d.clone()),
            None,
        ),
        Error::Signing(_) | Error::Store(_) | Error::Internal(_) => {
            tracing::error!(error = %e, "request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                None,
                None,
            )
        }
    };
    let mut r = problem_response(status, code, detail.as_deref(), otp);
    if let Error::RateLimited { retry_after, .. } = e {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
    }
    r
}

fn problem_response(
    status: StatusCode,
    code: &str,
    detail: Option<&str>,
    otp: Option<OtpState>,
) -> Resp {
    let body = Problem {
        // The hub's scheme (policy::code): one URN per code, nothing to dereference.
        kind: format!("urn:openapi-hub:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        code,
        detail: detail.unwrap_or(code_detail(code)),
        attempts_left: otp.map(|o| o.attempts_left),
        codes_left: otp.map(|o| o.codes_left),
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    if status == StatusCode::UNAUTHORIZED && code == "customer_session_required" {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    with_headers(r, "application/problem+json", "no-store")
}

/// The `detail` of a problem that has no more precise one: what its code means, in words
/// (never request data).
fn code_detail(code: &str) -> &'static str {
    match code {
        "route_not_found" => "no route of the sidecar's API has this path",
        "method_not_allowed" => "this route does not allow this method (see Allow)",
        "consent_not_found" => "no consent with this id is visible to the caller",
        "authorisation_not_found" => "no authorisation session with this id",
        "participant_not_found" => "no participant with this BIN",
        "provider_not_found" => "no participant with the provider role has this BIN",
        "client_certificate_required" => "this route needs a client certificate of the platform CA",
        "customer_session_required" => {
            "this route needs a customer session (Bearer token from the login)"
        }
        "participant_unknown" => "the client certificate is not registered to a participant",
        "participant_inactive" => "the calling participant is not active",
        "operator_certificate_required" => "this route needs the operator's certificate",
        "hub_certificate_required" => "this route needs the hub's certificate",
        "otp_invalid" => "the one-time code is wrong",
        "otp_expired" => "the one-time code has expired; ask for a new one",
        "otp_attempts_exhausted" => "no attempts are left for this one-time code",
        "otp_resend_limit" => "no more one-time codes may be sent for this authorisation",
        "authorisation_sessions_exhausted" => {
            "no more authorisation sessions may be opened for this consent"
        }
        "internal_error" => "a failure inside the trust sidecar",
        _ => "see the code",
    }
}

fn oauth_error(e: &OAuthError) -> Resp {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        error_description: &'a str,
    }
    let mut r = json(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
        &Body {
            error: e.error,
            error_description: &e.description,
        },
    );
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = problem_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
        None,
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Reads a body of at most [`MAX_BODY`] bytes that arrives within `timeout` (a slow
/// sender would otherwise hold the connection and its task).
async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Bytes, Error> {
    read_body_up_to(req, timeout, MAX_BODY).await
}

/// [`read_body`] with another bound (`413 payload_too_large` past it).
async fn read_body_up_to(
    req: Request<Incoming>,
    timeout: Duration,
    max: usize,
) -> Result<Bytes, Error> {
    let collect = Limited::new(req.into_body(), max).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(Error::Timeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge(max)),
        Ok(Err(e)) => Err(Error::BadRequest(format!("reading the body: {e}"))),
    }
}

pub(crate) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<T, Error> {
    from_json(&read_body(req, timeout).await?)
}

fn from_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("JSON body: {}", without_values(&e.to_string()))))
}

/// A serde message with the request's own values taken out (`invalid type: string "…"`,
/// ``integer `…` ``), field and variant names kept: a problem's `detail` never repeats a
/// value, which could be a customer id or an account.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(['"', '`']) {
        let quote = rest[i..].chars().next().unwrap_or('"');
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find(quote) else {
            out.push_str(&rest[i..]);
            return out;
        };
        let inner = &after[..end];
        // A quoted string is always a value; in backticks, names are kept and
        // numbers (values) are not, nor the variant a request named that does not exist
        // (serde's `unknown variant `…`, expected one of …`: the value sent).
        let is_value = quote == '"'
            || inner.chars().any(|c| c.is_ascii_digit())
            || out.ends_with("unknown variant ");
        out.push(quote);
        out.push_str(if is_value { "…" } else { inner });
        out.push(quote);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The calling participant, any role: an active one, by its client certificate.
pub(crate) fn participant(app: &App, peer: &Peer) -> Result<ParticipantRecord, Error> {
    let Some(tp) = &peer.thumbprint else {
        return Err(Error::Unauthenticated("client_certificate_required"));
    };
    let dir = app.directory();
    let Some(p) = dir.by_thumbprint(tp) else {
        return Err(Error::Forbidden("participant_unknown"));
    };
    if !p.is_active() {
        return Err(Error::Forbidden("participant_inactive"));
    }
    Ok(p.clone())
}

/// The calling API user: an active participant with the `user` role.
fn api_user(app: &App, peer: &Peer) -> Result<ParticipantRecord, Error> {
    let p = participant(app, peer)?;
    if !p.has_role(Role::User) {
        return Err(Error::Forbidden("participant_inactive"));
    }
    Ok(p)
}

/// The operator, as the actor string of the history.
pub(crate) fn operator(app: &App, peer: &Peer) -> Result<String, Error> {
    let Some(tp) = &peer.thumbprint else {
        return Err(Error::Unauthenticated("client_certificate_required"));
    };
    if !app.settings.operators.iter().any(|o| constant_eq(o, tp)) {
        return Err(Error::Forbidden("operator_certificate_required"));
    }
    Ok(crate::history::operator(&participants::encode_thumbprint(
        tp,
    )))
}

fn hub(app: &App, peer: &Peer) -> Result<(), Error> {
    let Some(tp) = &peer.thumbprint else {
        return Err(Error::Unauthenticated("client_certificate_required"));
    };
    if !app.settings.hubs.iter().any(|h| constant_eq(h, tp)) {
        return Err(Error::Forbidden("hub_certificate_required"));
    }
    Ok(())
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// The customer of a development session (`Authorization: Bearer …`).
async fn customer(app: &Arc<App>, req: &Request<Incoming>) -> Result<String, Error> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(Error::Unauthenticated("customer_session_required"))?;
    app.customer_of(token.to_owned()).await
}

/// The `{bin}` path parameter; a malformed one is the caller's error, named as such.
fn parse_bin(s: &str) -> Result<Bin, Error> {
    Bin::parse(s).map_err(|_| Error::invalid("bin", "a BIN is exactly 12 ASCII digits"))
}

/// Answers one request.
pub async fn handle(app: Arc<App>, peer: Arc<Peer>, req: Request<Incoming>) -> Resp {
    match route(&app, &peer, req).await {
        Ok(r) => r,
        Err(e) => problem(&e),
    }
}

/// One request on its way through the routers, with what every route needs.
struct Call<'a> {
    app: &'a Arc<App>,
    peer: &'a Peer,
    method: Method,
    req: Request<Incoming>,
}

impl Call<'_> {
    fn api_user(&self) -> Result<ParticipantRecord, Error> {
        api_user(self.app, self.peer)
    }

    fn operator(&self) -> Result<String, Error> {
        operator(self.app, self.peer)
    }

    async fn customer(&self) -> Result<String, Error> {
        customer(self.app, &self.req).await
    }
}

/// Whether a listener with `exposure` serves the route `segs` starts with: gateways' and
/// operators' routes are not on the public listener, and API users' and customers' routes
/// not on the internal one, once there are two.
fn served(exposure: Exposure, segs: &[&str]) -> bool {
    match segs {
        ["healthz"] | ["openapi.json"] | [".well-known", ..] => true,
        ["metrics"] => exposure != Exposure::Public,
        ["v1", "snapshot" | "feed" | "rollups" | "participants" | "admin", ..] => {
            exposure != Exposure::Public
        }
        _ => exposure != Exposure::Internal,
    }
}

/// Routes anyone may call without a credential: limited per source address. Not
/// `/healthz`, which reads one number from memory and which probes and load balancers
/// poll.
fn unauthenticated(segs: &[&str]) -> bool {
    matches!(
        segs,
        [".well-known", ..] | ["v1", "customer", "sessions" | "login", ..]
    )
}

async fn route(app: &Arc<App>, peer: &Peer, req: Request<Incoming>) -> Result<Resp, Error> {
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    if !served(peer.exposure, &segs) {
        return Err(Error::NotFound("route_not_found"));
    }
    if unauthenticated(&segs) {
        app.addresses.check(peer.addr)?;
    }
    let call = Call {
        app,
        peer,
        method: req.method().clone(),
        req,
    };
    match segs.as_slice() {
        ["healthz"] => match call.method {
            Method::GET => Ok(json(
                StatusCode::OK,
                &serde_json::json!({"status": "ok", "version": app.db.head()}),
            )),
            _ => Ok(method_not_allowed("GET")),
        },
        // Public, like the metadata: no certificate needed to read what the API is.
        ["openapi.json"] => match call.method {
            Method::GET => Ok(with_headers(
                Response::new(full(OPENAPI_JSON)),
                "application/json",
                "no-cache",
            )),
            _ => Ok(method_not_allowed("GET")),
        },
        [".well-known", rest @ ..] => well_known_routes(call, rest),
        ["metrics"] => match call.method {
            Method::GET => {
                call.operator()?;
                Ok(with_headers(
                    Response::new(full(Bytes::from(app.metrics.render()))),
                    "text/plain; version=0.0.4",
                    "no-store",
                ))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        ["oauth2", "token"] => match call.method {
            Method::POST => Ok(token(app, peer, call.req).await),
            _ => Ok(method_not_allowed("POST")),
        },
        ["v1", "consents", rest @ ..] => consent_routes(call, rest).await,
        ["v1", "customer", rest @ ..] => customer_routes(call, rest).await,
        ["v1", "participants", rest @ ..] => participant_routes(call, rest).await,
        ["v1", "admin", "keys", rest @ ..] => key_routes(call, rest).await,
        ["v1", "admin", "oversight", rest @ ..] => oversight_routes(call, rest).await,
        ["v1", "admin", "sla"] => match call.method {
            Method::GET => {
                call.operator()?;
                sla_report(call.app, &call.req).await
            }
            _ => Ok(method_not_allowed("GET")),
        },
        ["v1", "admin", "usage"] => billing_routes::usage_route(app, peer, call.req, "admin").await,
        ["v1", "admin", "report"] => {
            billing_routes::usage_route(app, peer, call.req, "report").await
        }
        ["v1", "usage"] => billing_routes::usage_route(app, peer, call.req, "own").await,
        ["v1", "admin", "statements", rest @ ..] => {
            billing_routes::admin_statements(app, peer, call.req, rest, peer.body_read_timeout)
                .await
        }
        ["v1", "statements", rest @ ..] => {
            billing_routes::own_statements(app, peer, call.req, rest).await
        }
        ["v1", "rollups"] => match call.method {
            Method::POST => {
                hub(app, peer)?;
                push_rollups(app, call.req, peer.body_read_timeout).await
            }
            _ => Ok(method_not_allowed("POST")),
        },
        ["v1", "snapshot"] => match call.method {
            Method::GET => {
                hub(app, peer)?;
                Ok(stream(app, feed::snapshot(app)))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        ["v1", "feed"] => match call.method {
            Method::GET => {
                hub(app, peer)?;
                feed_route(app, call.req.uri().query().unwrap_or("")).await
            }
            _ => Ok(method_not_allowed("GET")),
        },
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `/.well-known/…`: the key set and the authorisation-server metadata (public).
fn well_known_routes(call: Call<'_>, rest: &[&str]) -> Result<Resp, Error> {
    match rest {
        ["jwks.json"] => match call.method {
            Method::GET => {
                let mut r = Response::new(full(call.app.keys().jwks.clone()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/jwk-set+json"),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                Ok(r)
            }
            _ => Ok(method_not_allowed("GET")),
        },
        ["oauth-authorization-server"] => match call.method {
            Method::GET => Ok(metadata(call.app)),
            _ => Ok(method_not_allowed("GET")),
        },
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `/v1/consents/…`: the API user's side of consents.
async fn consent_routes(call: Call<'_>, rest: &[&str]) -> Result<Resp, Error> {
    let app = call.app;
    match rest {
        [] => match call.method {
            Method::POST => {
                let user = call.api_user()?;
                let input = read_json(call.req, call.peer.body_read_timeout).await?;
                let view = app.create_consent(user.bin, input).await?;
                let mut r = json(StatusCode::CREATED, &view);
                if let Ok(v) = HeaderValue::from_str(&format!("/v1/consents/{}", view.record.id)) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                Ok(r)
            }
            _ => Ok(method_not_allowed("POST")),
        },
        [id] => {
            let id = (*id).to_owned();
            match call.method {
                Method::GET => {
                    let user = call.api_user()?;
                    ok(&app.consent_for_user(user.bin, id).await?)
                }
                Method::DELETE => {
                    let user = call.api_user()?;
                    ok(&app.revoke_by_user(user.bin, id).await?)
                }
                _ => Ok(method_not_allowed("GET, DELETE")),
            }
        }
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `/v1/participants/…`: the registry, for operators.
async fn participant_routes(call: Call<'_>, rest: &[&str]) -> Result<Resp, Error> {
    let app = call.app;
    match rest {
        [] => match call.method {
            Method::GET => {
                call.operator()?;
                let all = app.participants().await?;
                ok(&serde_json::json!({ "participants": all }))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        // The caller first, then the body (read whole before any answer, so an HTTP/2
        // client still sending it gets the answer rather than a reset stream), then the BIN.
        [bin] => match call.method {
            Method::GET => {
                call.operator()?;
                ok(&app.participant(parse_bin(bin)?).await?)
            }
            Method::PUT => {
                let actor = call.operator()?;
                let body = read_body(call.req, call.peer.body_read_timeout).await?;
                let bin = parse_bin(bin)?;
                let input: ParticipantInput = from_json(&body)?;
                let (view, created) = app.put_participant(actor, bin, input).await?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json(status, &view))
            }
            _ => Ok(method_not_allowed("GET, PUT")),
        },
        [bin, "status"] => match call.method {
            Method::PUT => {
                let actor = call.operator()?;
                let body = read_body(call.req, call.peer.body_read_timeout).await?;
                let bin = parse_bin(bin)?;
                let input: StatusInput = from_json(&body)?;
                ok(&app.set_participant_status(actor, bin, input.status).await?)
            }
            _ => Ok(method_not_allowed("PUT")),
        },
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `/v1/admin/oversight/…`: providers' conformance grades, history, test subjects and
/// the operator's pins (issue 14 point 6).
async fn oversight_routes(call: Call<'_>, rest: &[&str]) -> Result<Resp, Error> {
    let app = call.app;
    match rest {
        [] => match call.method {
            Method::GET => {
                call.operator()?;
                ok(&serde_json::json!({ "apis": app.oversight().await? }))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        [bin] => match call.method {
            Method::GET => {
                call.operator()?;
                ok(&app.provider_oversight(parse_bin(bin)?).await?)
            }
            _ => Ok(method_not_allowed("GET")),
        },
        [bin, "subject"] => match call.method {
            Method::PUT => {
                let actor = call.operator()?;
                let body = read_body(call.req, call.peer.body_read_timeout).await?;
                let bin = parse_bin(bin)?;
                app.put_probe_subject(actor, bin, from_json(&body)?).await?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "provider": bin }),
                ))
            }
            _ => Ok(method_not_allowed("PUT")),
        },
        [bin, "pin"] => match call.method {
            Method::PUT => {
                let actor = call.operator()?;
                let body = read_body(call.req, call.peer.body_read_timeout).await?;
                let bin = parse_bin(bin)?;
                let input: crate::oversight::PinInput = from_json(&body)?;
                let apis = app.pin_provider(actor, bin, Some(input), None).await?;
                ok(&serde_json::json!({ "apis": apis }))
            }
            Method::DELETE => {
                let actor = call.operator()?;
                let bin = parse_bin(bin)?;
                let apis = app.pin_provider(actor, bin, None, None).await?;
                ok(&serde_json::json!({ "apis": apis }))
            }
            _ => Ok(method_not_allowed("PUT, DELETE")),
        },
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `/v1/admin/keys/…`: the token-signing keys, for operators.
async fn key_routes(call: Call<'_>, rest: &[&str]) -> Result<Resp, Error> {
    match rest {
        [] => match call.method {
            Method::GET => {
                call.operator()?;
                ok(&serde_json::json!({ "keys": call.app.keys().keys }))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        ["rotate"] => match call.method {
            Method::POST => {
                call.operator()?;
                let keys = call.app.rotate_keys(true).await?;
                ok(&serde_json::json!({ "keys": keys }))
            }
            _ => Ok(method_not_allowed("POST")),
        },
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `POST /v1/rollups`: a gateway's closed minutes, stored once each (`rollups`).
async fn push_rollups(
    app: &Arc<App>,
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Resp, Error> {
    let body = read_body_up_to(req, timeout, rollups::MAX_BATCH_BYTES).await?;
    let mut batch: RollupBatch = from_json(&body)?;
    rollups::validate(&mut batch, app.now())?;
    ok(&app.store_rollups(batch).await?)
}

/// Whether the `Accept` header asks for CSV (`text/csv` among its media ranges, with a
/// non-zero weight); anything else is answered with JSON.
pub(crate) fn wants_csv(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let csv = parts
                .next()
                .is_some_and(|m| m.eq_ignore_ascii_case("text/csv"));
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            csv && !refused
        })
}

/// `GET /v1/admin/sla?from=…&to=…[&period=day|month][&provider=…]`: JSON, or CSV when
/// asked for (`Accept: text/csv`).
async fn sla_report(app: &Arc<App>, req: &Request<Incoming>) -> Result<Resp, Error> {
    let query = sla::ReportQuery::parse(query_strings(req.uri().query().unwrap_or(""))?)?;
    let report = app.sla_report(query).await?;
    let mut r = if wants_csv(req) {
        let mut r = Response::new(full(sla::to_csv(&report)?));
        *r.status_mut() = StatusCode::OK;
        with_headers(r, "text/csv; charset=utf-8", "no-store")
    } else {
        json(StatusCode::OK, &report)
    };
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    Ok(r)
}

/// A 200 JSON answer.
pub(crate) fn ok<T: Serialize>(value: &T) -> Result<Resp, Error> {
    Ok(json(StatusCode::OK, value))
}

fn stream(app: &App, rx: mpsc::Receiver<Bytes>) -> Resp {
    let mut r = Response::new(ChannelBody(rx).boxed());
    if let Ok(v) = HeaderValue::from_str(app.db.store_id()) {
        r.headers_mut().insert("x-trust-store-id", v);
    }
    with_headers(r, NDJSON, "no-store")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    since: u64,
    #[serde(default)]
    store_id: Option<String>,
    /// The epoch of the gateway's position; absent from gateways without epochs.
    #[serde(default)]
    epoch: Option<u64>,
}

async fn feed_route(app: &Arc<App>, query: &str) -> Result<Resp, Error> {
    let q: FeedQuery = parse_query(query)?;
    // 410: whatever the gateway holds cannot be continued; it reloads the snapshot.
    let gone =
        |code: &str, detail: &str| problem_response(StatusCode::GONE, code, Some(detail), None);
    if q.store_id
        .as_deref()
        .is_some_and(|s| s != app.db.store_id())
    {
        return Ok(gone(
            "store_mismatch",
            "the registry's database is another one",
        ));
    }
    let db = app.clone();
    let epoch = crate::app::blocking(move || db.db.epoch().map_err(Error::from)).await?;
    if q.epoch.is_some_and(|e| e != epoch) {
        return Ok(gone(
            "epoch_changed",
            &format!("the registry's database is in epoch {epoch} (promoted or restored)"),
        ));
    }
    match feed::check_since(app, q.since).await? {
        Ok(()) => Ok(stream(app, feed::follow(app, q.since, epoch))),
        Err(FeedRefusal::Pruned { floor }) => Ok(gone(
            "feed_history_pruned",
            &format!("changes up to version {floor} were pruned"),
        )),
        Err(FeedRefusal::Ahead { head }) => Ok(gone(
            "feed_version_ahead",
            &format!("the registry's head is version {head}"),
        )),
    }
}

/// Decodes `application/x-www-form-urlencoded` (also query strings) into pairs.
pub fn form_pairs(s: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for part in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let bad = || Error::BadRequest("malformed percent-encoding".into());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Exactly two hex digits: `from_str_radix` alone would also take `+A`.
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, Error> {
    let mut map = serde_json::Map::new();
    for (k, v) in form_pairs(query)? {
        if map.contains_key(&k) {
            return Err(Error::BadRequest(format!(
                "query parameter {k} is repeated"
            )));
        }
        // Numbers stay numbers so that `since=5` fills a u64.
        let value = v
            .parse::<u64>()
            .map(serde_json::Value::from)
            .unwrap_or(serde_json::Value::String(v));
        map.insert(k, value);
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| Error::BadRequest(format!("query: {}", without_values(&e.to_string()))))
}

fn metadata(app: &App) -> Resp {
    let base = app.settings.public_url.trim_end_matches('/');
    json(
        StatusCode::OK,
        &serde_json::json!({
            "issuer": app.settings.issuer,
            "token_endpoint": format!("{base}/oauth2/token"),
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "grant_types_supported": ["client_credentials"],
            // REQUIRED by RFC 8414 §2 even without an authorization endpoint; `none` (OAuth
            // 2.0 Multiple Response Type Encoding Practices §4) is the registered value
            // that issues nothing there. An empty array is read as absent by validators.
            "response_types_supported": ["none"],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": true,
            "scopes_supported": ["accounts", "balances", "transactions"],
            "access_token_signing_alg_values_supported": ["ES256", "PS256"],
        }),
    )
}

async fn token(app: &Arc<App>, peer: &Peer, req: Request<Incoming>) -> Resp {
    match token_inner(app, peer, req).await {
        Ok(t) => {
            let mut r = json(StatusCode::OK, &t);
            r.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => oauth_error(&e),
    }
}

async fn token_inner(
    app: &Arc<App>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<crate::app::TokenResponse, OAuthError> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(OAuthError::bad(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    if req.uri().query().is_some() {
        return Err(OAuthError::bad(
            "invalid_request",
            "parameters go in the body, not the query string",
        ));
    }
    let body = read_body(req, peer.body_read_timeout)
        .await
        .map_err(|_| OAuthError::bad("invalid_request", "unreadable body"))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| OAuthError::bad("invalid_request", "the body is not UTF-8"))?;
    let pairs =
        form_pairs(text).map_err(|_| OAuthError::bad("invalid_request", "malformed body"))?;
    let mut grant_type = None;
    let mut client_id = None;
    let mut consent_id = None;
    let mut scope = None;
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "grant_type" => &mut grant_type,
            "client_id" => &mut client_id,
            "consent_id" => &mut consent_id,
            "scope" => &mut scope,
            _ => continue, // RFC 6749 §3.2: unknown parameters are ignored
        };
        if slot.is_some() {
            return Err(OAuthError::bad(
                "invalid_request",
                format!("{k} is repeated"),
            ));
        }
        *slot = Some(v);
    }
    match grant_type.as_deref() {
        None => {
            return Err(OAuthError::bad("invalid_request", "grant_type is missing"));
        }
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::bad(
                "unsupported_grant_type",
                "only client_credentials is supported",
            ))
        }
    }
    let Some(client_id) = client_id else {
        return Err(OAuthError::bad(
            "invalid_request",
            "client_id is missing (RFC 8705 §2)",
        ));
    };
    let Some(consent_id) = consent_id.filter(|c| !c.is_empty()) else {
        return Err(OAuthError::bad("invalid_request", "consent_id is missing"));
    };
    app.issue_token(peer.thumbprint, client_id, consent_id, scope)
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionInput {
    customer: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeInput {
    code: String,
}

/// `/v1/customer/…`: the customer's side (development sessions, consents, authorisations).
async fn customer_routes(call: Call<'_>, rest: &[&str]) -> Result<Resp, Error> {
    match rest {
        ["login"] => match call.method {
            Method::GET => start_login(call.app, call.req.uri().query().unwrap_or("")).await,
            _ => Ok(method_not_allowed("GET")),
        },
        ["login", "callback"] => match call.method {
            Method::GET => finish_login(call.app, &call.req).await,
            _ => Ok(method_not_allowed("GET")),
        },
        ["sessions"] => match call.method {
            Method::POST => open_session(call.app, call.req, call.peer.body_read_timeout).await,
            _ => Ok(method_not_allowed("POST")),
        },
        ["consents", rest @ ..] => customer_consent_routes(call, rest).await,
        ["authorisations", id, rest @ ..] => {
            authorisation_routes(call, (*id).to_owned(), rest).await
        }
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `POST /v1/customer/sessions` (development only: the app answers 404 otherwise).
async fn open_session(
    app: &Arc<App>,
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Resp, Error> {
    let input: SessionInput = read_json(req, timeout).await?;
    let (token, expires_at) = app.open_customer_session(input.customer.clone()).await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "session": token,
            "customer": input.customer,
            "expires_at": rfc3339(expires_at),
        }),
    ))
}

/// Query parameters as text (numbers too), each at most once.
pub(crate) fn query_strings(
    query: &str,
) -> Result<std::collections::HashMap<String, String>, Error> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in form_pairs(query)? {
        if out.insert(k.clone(), v).is_some() {
            return Err(Error::BadRequest(format!(
                "query parameter {k} is repeated"
            )));
        }
    }
    Ok(out)
}

/// `GET /v1/customer/login[?login_hint=…]`: `302` to the identity provider, with the
/// browser-binding cookie; the body names the URL too (for apps that do not follow).
async fn start_login(app: &Arc<App>, query: &str) -> Result<Resp, Error> {
    let mut q = query_strings(query)?;
    let hint = q.remove("login_hint").filter(|h| !h.is_empty());
    if let Some(other) = q.keys().next() {
        return Err(Error::BadRequest(format!(
            "query parameter {other} is unknown"
        )));
    }
    if hint
        .as_deref()
        .is_some_and(|h| h.len() > 64 || !h.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Error::invalid(
            "login_hint",
            "1 to 64 visible ASCII characters",
        ));
    }
    let started = app.start_login(hint).await?;
    let mut r = json(
        StatusCode::FOUND,
        &serde_json::json!({ "authorization_url": started.url }),
    );
    let h = r.headers_mut();
    let location = HeaderValue::from_str(&started.url)
        .map_err(|_| Error::Internal("the authorization URL is not a header value".into()))?;
    h.insert(header::LOCATION, location);
    let cookie = login::browser_cookie(&started.browser, started.max_age);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `GET /v1/customer/login/callback?code=…&state=…` (or `?error=…&state=…`): `201` with a
/// customer session, as the development route answers.
async fn finish_login(app: &Arc<App>, req: &Request<Incoming>) -> Result<Resp, Error> {
    // Unknown parameters (`iss`, `session_state`, …) are the provider's business.
    let mut q = query_strings(req.uri().query().unwrap_or(""))?;
    let state = q
        .remove("state")
        .filter(|s| !s.is_empty() && s.len() <= 512)
        .ok_or_else(|| Error::BadRequest("state: missing".into()))?;
    let code = match (q.remove("code"), q.remove("error")) {
        (Some(c), None) if !c.is_empty() && c.len() <= 2048 => Some(c),
        (None, Some(_)) => None,
        _ => {
            return Err(Error::BadRequest(
                "code: missing (or given with error)".into(),
            ))
        }
    };
    let browser = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(login::browser_from_cookies)
        .ok_or(Error::LoginFailed(
            "the login cookie is missing: start the login in this browser",
        ))?
        .to_owned();
    let (session, expires_at) = app.finish_login(state, browser, code).await?;
    let mut r = json(
        StatusCode::CREATED,
        &serde_json::json!({ "session": session, "expires_at": rfc3339(expires_at) }),
    );
    // The binding has served its purpose.
    let cookie = login::browser_cookie("", 0);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `/v1/customer/consents/…`.
async fn customer_consent_routes(call: Call<'_>, rest: &[&str]) -> Result<Resp, Error> {
    let app = call.app;
    match rest {
        [] => match call.method {
            Method::GET => {
                let list = app.customer_consents(call.customer().await?).await?;
                ok(&serde_json::json!({ "consents": list }))
            }
            _ => Ok(method_not_allowed("GET")),
        },
        [id] => {
            let id = (*id).to_owned();
            match call.method {
                Method::GET => ok(&app.customer_consent(call.customer().await?, id).await?),
                Method::DELETE => ok(&app.revoke_by_customer(call.customer().await?, id).await?),
                _ => Ok(method_not_allowed("GET, DELETE")),
            }
        }
        [id, "authorisations"] => match call.method {
            Method::POST => {
                let c = call.customer().await?;
                let view = app.start_authorisation(c, (*id).to_owned()).await?;
                Ok(json(StatusCode::CREATED, &view))
            }
            _ => Ok(method_not_allowed("POST")),
        },
        [id, "reject"] => match call.method {
            Method::POST => ok(&app.reject(call.customer().await?, (*id).to_owned()).await?),
            _ => Ok(method_not_allowed("POST")),
        },
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// `/v1/customer/authorisations/{id}/…`.
async fn authorisation_routes(call: Call<'_>, id: String, rest: &[&str]) -> Result<Resp, Error> {
    let app = call.app;
    match rest {
        [] => match call.method {
            Method::GET => ok(&app.authorisation(call.customer().await?, id).await?),
            _ => Ok(method_not_allowed("GET")),
        },
        ["resend"] => match call.method {
            Method::POST => ok(&app.resend_code(call.customer().await?, id).await?),
            _ => Ok(method_not_allowed("POST")),
        },
        ["verify"] => match call.method {
            Method::POST => {
                let c = call.customer().await?;
                let input: CodeInput = read_json(call.req, call.peer.body_read_timeout).await?;
                ok(&app.verify_code(c, id, input.code).await?)
            }
            _ => Ok(method_not_allowed("POST")),
        },
        _ => Err(Error::NotFound("route_not_found")),
    }
}

/// The query decoder of `GET /v1/feed` (`since`, `store_id`), without a request: the entry
/// point of the `trust_body` fuzz target (`fuzz/`).
#[doc(hidden)]
pub fn parse_feed_query(query: &str) -> Result<(u64, Option<String>), Error> {
    parse_query::<FeedQuery>(query).map(|q| (q.since, q.store_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_details_never_repeat_the_values_sent() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            customer: String,
            days: u32,
            kind: Kind,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        #[allow(dead_code)]
        enum Kind {
            A,
        }
        for body in [
            r#"{"customer": 900101300123, "days": 1, "kind": "a"}"#,
            r#"{"customer": "x", "days": "900101300123", "kind": "a"}"#,
            r#"{"customer": "x", "days": 1, "kind": "900101300123"}"#,
            r#"{"customer": "x", "days": 1, "kind": "a", "KZ900101300123": 1}"#,
        ] {
            let Err(Error::BadRequest(detail)) = from_json::<Body>(body.as_bytes()) else {
                panic!("{body} must be refused");
            };
            assert!(!detail.contains("900101300123"), "{detail}");
            assert!(detail.starts_with("JSON body: "), "{detail}");
        }
        // An enum value that is no variant is a value too (found by the rollup tests).
        let Err(Error::BadRequest(d)) =
            from_json::<Body>(br#"{"customer": "x", "days": 1, "kind": "secret"}"#)
        else {
            panic!("an unknown variant must be refused");
        };
        assert!(!d.contains("secret") && d.contains("expected `a`"), "{d}");
        // Names stay: the detail still says which member is wrong.
        let Err(Error::BadRequest(d)) =
            from_json::<Body>(br#"{"customer": "x", "days": 1, "kind": "a", "extra": 1}"#)
        else {
            panic!("an unknown member must be refused");
        };
        assert!(d.contains("`extra`"), "{d}");
    }

    #[test]
    fn form_decoding() {
        let p = form_pairs("grant_type=client_credentials&consent_id=a%2Db+c&x").unwrap();
        assert_eq!(
            p,
            [
                ("grant_type".into(), "client_credentials".into()),
                ("consent_id".into(), "a-b c".into()),
                ("x".into(), String::new())
            ]
        );
        assert!(form_pairs("a=%zz").is_err());
        assert!(form_pairs("a=%4").is_err());
    }

    /// Found by the `trust_body` fuzz target: `u8::from_str_radix` takes a leading `+`,
    /// so `%+A` decoded to a line feed instead of being refused.
    #[test]
    fn percent_escape_is_exactly_two_hex_digits() {
        for bad in ["a=%+A", "%+1=b", "a=%+f&b=1", "a=%-1"] {
            assert!(form_pairs(bad).is_err(), "{bad} was decoded");
        }
        assert_eq!(
            form_pairs("a=%0A%7e").unwrap(),
            [("a".into(), "\n~".into())]
        );
    }

    #[test]
    fn query_parsing() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Q {
            since: u64,
        }
        assert_eq!(parse_query::<Q>("since=42").unwrap().since, 42);
        assert!(parse_query::<Q>("since=42&since=43").is_err());
        assert!(parse_query::<Q>("since=x").is_err());
        assert!(parse_query::<Q>("").is_err());
        assert!(parse_query::<Q>("since=1&other=2").is_err());
    }
}
