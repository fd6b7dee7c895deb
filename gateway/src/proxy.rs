//! The Pingora `ProxyHttp` implementation: a thin adapter that feeds each request to
//! `policy` and maps its decision to HTTP. One place (`respond_problem`) writes every
//! rejection and failure as problem+json; one place (`failure_code`) maps proxy errors
//! to the contract's codes.

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader, StaticHeaderName};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use consent_cache::{Bin, Consent};
use policy::code::{problem_json, Code, PROBLEM_CONTENT_TYPE};
use policy::decision::{decide, Facts};
use policy::limits::{Limited, RateInfo};
use policy::route::{match_route, upstream_path, RouteId};
use policy::token::VerifiedToken;

use crate::audit::AuditRecord;
use crate::network::Network;
use crate::snapshot::Snapshot;
pub use crate::state::State;

/// The proxy.
pub struct Hub {
    state: Arc<State>,
}

impl Hub {
    /// Wraps the shared state.
    pub fn new(state: Arc<State>) -> Hub {
        Hub { state }
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    arrived: SystemTime,
    snap: Option<Arc<Snapshot>>,
    /// The directory and upstream pools the decision used (kept for the upstream phases).
    net: Option<Arc<Network>>,
    iid: [u8; 36],
    route: Option<RouteId>,
    code: Option<Code>,
    status: u16,
    api_user: Option<Bin>,
    provider: Option<Bin>,
    provider_index: usize,
    target: Option<usize>,
    token: Option<Arc<VerifiedToken>>,
    consent: Option<Consent>,
    rate: Option<RateInfo>,
    limited: Option<Limited>,
    upstream_path: String,
    upstream_start: Option<Instant>,
    upstream_status: u16,
    upstream_us: u64,
    body_bytes: usize,
    body_discarded: bool,
}

/// How long a request body may take to arrive.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Ctx {
    /// Records the outcome of the call to the chosen base URL (passive health checking);
    /// after a failure, returns whether another base URL of the provider is in rotation.
    fn report_upstream(&self, ok: bool) -> bool {
        let (Some(net), Some(idx)) = (self.net.as_ref(), self.target) else {
            return false;
        };
        net.upstreams.get(self.provider_index).is_some_and(|up| {
            up.report(idx, ok);
            up.has_alternative(idx)
        })
    }
}

static X_FAPI_INTERACTION_ID: StaticHeaderName = StaticHeaderName::new("x-fapi-interaction-id");
const X_FAPI_CUSTOMER_IP: HeaderName = HeaderName::from_static("x-fapi-customer-ip-address");
static X_HUB_API_USER: StaticHeaderName = StaticHeaderName::new("x-hub-api-user");
static X_HUB_CONSENT_ID: StaticHeaderName = StaticHeaderName::new("x-hub-consent-id");
static X_HUB_CUSTOMER: StaticHeaderName = StaticHeaderName::new("x-hub-customer");
static X_HUB_PERMISSIONS: StaticHeaderName = StaticHeaderName::new("x-hub-permissions");
static X_HUB_ACCOUNTS: StaticHeaderName = StaticHeaderName::new("x-hub-accounts");
static RATELIMIT_POLICY: StaticHeaderName = StaticHeaderName::new("ratelimit-policy");
static RATELIMIT: StaticHeaderName = StaticHeaderName::new("ratelimit");

/// Hop-by-hop and proxy-control headers never forwarded upstream (RFC 9110 §7.6.1), plus
/// headers whose client-supplied values would mislead a bank.
const STRIP_UPSTREAM: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "cookie",
];

/// Response headers a provider may pass to API users; everything else (server software,
/// internal host names, cookies, redirects) is dropped: deny by default.
const PASS_DOWNSTREAM: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "transfer-encoding",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "vary",
    "retry-after",
];

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

thread_local! {
    static DATE: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
}

/// The `Date` header value, formatted at most once per second per thread.
fn date_header() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if let Ok(v) = HeaderValue::from_str(&s) {
                *d = (secs, v);
            }
        }
        d.1.clone()
    })
}

/// Echoes the caller's interaction id if it is a UUID (canonical 36-char form), else makes one.
fn interaction_id(given: Option<&HeaderValue>) -> [u8; 36] {
    let mut out = [0u8; 36];
    if let Some(v) = given {
        let b = v.as_bytes();
        if b.len() == 36 && uuid::Uuid::try_parse_ascii(b).is_ok() {
            out.copy_from_slice(b);
            return out;
        }
    }
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut out);
    out
}

fn iid_str(iid: &[u8; 36]) -> &str {
    std::str::from_utf8(iid).unwrap_or("00000000-0000-0000-0000-000000000000")
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .as_downstream()
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.raw_path().len()
}

impl Hub {
    /// Runs the decision (contract §6 rows 1–16) without touching the response.
    fn evaluate(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        snap: &Snapshot,
        net: &Network,
    ) -> Result<(), Code> {
        let req = session.req_header();
        if header_bytes(req) > snap.max_header_bytes {
            return Err(Code::RequestHeaderFieldsTooLarge);
        }
        if let Some(cl) = req.headers.get(header::CONTENT_LENGTH) {
            let n: usize = std::str::from_utf8(cl.as_bytes())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(Code::BadRequest)?;
            if n > snap.max_body_bytes {
                return Err(Code::PayloadTooLarge);
            }
        }
        let raw = std::str::from_utf8(req.raw_path()).map_err(|_| Code::BadRequest)?;
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        let route = match_route(&req.method, path, query)?;
        ctx.route = Some(route.id);

        let thumb: Option<[u8; 32]> = session
            .as_downstream()
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| <[u8; 32]>::try_from(s.cert_digest.as_slice()).ok());
        if thumb.is_none() {
            self.state.metrics.no_tls_digest.inc();
        }
        // More than one Authorization field is not a well-formed bearer token (RFC 9110
        // §5.3): treat it as absent, which row 4 refuses.
        let mut auth_fields = req.headers.get_all(header::AUTHORIZATION).iter();
        let authorization = match (auth_fields.next(), auth_fields.next()) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        };
        let facts = Facts {
            route: &route,
            cert_thumbprint: thumb.as_ref(),
            authorization,
            now_unix: now_unix(),
            consent_state_fresh: snap.consent_state_fresh(),
        };
        let consents = snap.consents.load();
        let tokens = snap.tokens.load();
        let grant = match decide(&net.directory, &tokens, |id| consents.get(id), &facts) {
            Ok(g) => g,
            Err(rej) => {
                if rej.is_unknown_kid() {
                    if let Some(plane) = &snap.trust {
                        plane.status.want_jwks();
                    }
                }
                tracing::debug!(reason = rej.reason, code = rej.code.as_str(), "rejected");
                self.identify_refused(ctx, snap, net, &facts, rej.code);
                return Err(rej.code);
            }
        };
        let user = grant.api_user.bin;
        let provider = grant.provider.bin;
        ctx.api_user = Some(user);
        ctx.provider = Some(provider);
        ctx.provider_index = grant.provider.index;
        ctx.token = grant.token;
        ctx.consent = grant.consent;

        // Row 16: rate limits.
        let checked = match (&ctx.consent, route.id.is_open_data()) {
            (Some(c), false) => snap
                .limiter
                .check_consent_route(user, provider, c.id(), route.id),
            _ => match client_ip(session) {
                Some(ip) => snap.limiter.check_open_data(ip, user),
                None => return Err(Code::BadRequest),
            },
        };
        match checked {
            Ok(info) => ctx.rate = Some(info),
            Err(limited) => {
                ctx.limited = Some(limited);
                return Err(Code::RateLimited);
            }
        }

        ctx.upstream_path.clear();
        upstream_path(&route, &mut ctx.upstream_path);
        if let Some(q) = query {
            if !q.is_empty() {
                ctx.upstream_path.push('?');
                ctx.upstream_path.push_str(q);
            }
        }
        Ok(())
    }

    /// Fills in, for the journal and metrics, what the rows passed before a refusal had
    /// established: the participant (row 2), the verified token (row 4), a *registered*
    /// provider (never a raw path value, which would let callers invent metric labels).
    /// Runs on refusals only; the token lookup hits the verifier's cache.
    fn identify_refused(
        &self,
        ctx: &mut Ctx,
        snap: &Snapshot,
        net: &Network,
        facts: &Facts<'_>,
        code: Code,
    ) {
        if let Some(p) = facts
            .cert_thumbprint
            .and_then(|t| net.directory.participant_by_thumbprint(t))
        {
            ctx.api_user = Some(p.bin);
        }
        if let Some(entry) = facts
            .route
            .provider_bin()
            .and_then(|b| net.directory.provider(b))
        {
            ctx.provider = Some(entry.bin);
        }
        let past_token_checks = !matches!(
            code,
            Code::ParticipantUnknown | Code::ParticipantInactive | Code::InvalidToken
        );
        if past_token_checks && !facts.route.id.is_open_data() {
            ctx.token = facts
                .authorization
                .and_then(policy::token::bearer)
                .and_then(|t| snap.tokens.load().verify(t, facts.now_unix).ok());
        }
    }

    /// Reads and drops an allowed request's body before anything goes upstream. Every
    /// contract route is a `GET`, whose body has no meaning (RFC 9110 §9.3.1); reading it
    /// here, bounded in size and time, means an oversized body always gets `413` instead of
    /// racing the bank's answer, and the bank never receives it.
    async fn discard_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        max: usize,
    ) -> Result<(), Code> {
        let read_all = async {
            let mut total = 0usize;
            while let Some(chunk) = session
                .read_request_body()
                .await
                .map_err(|_| Code::BadRequest)?
            {
                total += chunk.len();
                if total > max {
                    return Err(Code::PayloadTooLarge);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(BODY_READ_TIMEOUT, read_all).await {
            Ok(r) => r?,
            Err(_) => return Err(Code::BadRequest),
        }
        ctx.body_discarded = true;
        Ok(())
    }

    /// Writes a problem+json answer; the single place rejections become HTTP.
    async fn respond_problem(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        code: Code,
    ) -> Result<()> {
        ctx.code = Some(code);
        ctx.status = code.status();
        let body = Bytes::from(problem_json(code, iid_str(&ctx.iid), None));
        let resp = self.problem_header(ctx, code, body.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }

    fn problem_header(&self, ctx: &Ctx, code: Code, body_len: usize) -> Result<ResponseHeader> {
        problem_head(code, &ctx.iid, ctx.limited.as_ref(), body_len)
    }
}

/// The response head of every problem+json answer.
fn problem_head(
    code: Code,
    iid: &[u8; 36],
    limited: Option<&Limited>,
    body_len: usize,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code.status(), Some(10))?;
    resp.insert_header(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)?;
    resp.insert_header(header::CONTENT_LENGTH, body_len)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(header::DATE, date_header())?;
    resp.insert_static_header(&X_FAPI_INTERACTION_ID, iid_str(iid))?;
    match code {
        Code::InvalidToken | Code::TokenBindingMismatch => {
            resp.insert_header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")?;
        }
        Code::InsufficientScope => {
            resp.insert_header(
                header::WWW_AUTHENTICATE,
                "Bearer error=\"insufficient_scope\"",
            )?;
        }
        Code::MethodNotAllowed => {
            resp.insert_header(header::ALLOW, "GET")?;
        }
        Code::RateLimited => {
            if let Some(l) = limited {
                let (mut policy, mut state) = (String::new(), String::new());
                l.write_headers(&mut policy, &mut state);
                resp.insert_header(header::RETRY_AFTER, l.retry_after_secs)?;
                resp.insert_static_header(&RATELIMIT_POLICY, policy)?;
                resp.insert_static_header(&RATELIMIT, state)?;
            }
        }
        _ => {}
    }
    Ok(resp)
}

/// The client went away while its request was in flight: it closed or reset the
/// connection (e.g. without TLS close_notify), stopped reading, or stopped sending. Nothing
/// can be answered and it is no fault of the hub or the provider.
fn client_gone(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::WriteError
                | ErrorType::ReadError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        )
}

/// Maps a proxying error to the contract's code (rows 17–19 and request-level failures).
/// `None` means the downstream connection is gone and nothing can be answered.
fn failure_code(e: &Error) -> Option<Code> {
    if let ErrorType::HTTPStatus(s) = e.etype() {
        return Some(match *s {
            413 => Code::PayloadTooLarge,
            431 => Code::RequestHeaderFieldsTooLarge,
            400 => Code::BadRequest,
            _ => Code::InternalError,
        });
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Code::ProviderTimeout
            }
            ErrorType::InvalidHTTPHeader
            | ErrorType::H1Error
            | ErrorType::H2Error
            | ErrorType::InvalidH2
            | ErrorType::H2Downgrade => Code::ProviderBadResponse,
            _ => Code::ProviderUnavailable,
        }),
        ErrorSource::Downstream if client_gone(e) => None,
        ErrorSource::Downstream => Some(Code::BadRequest),
        ErrorSource::Internal | ErrorSource::Unset => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Code::ProviderTimeout
            }
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::ConnectionClosed => Code::ProviderUnavailable,
            _ => Code::InternalError,
        }),
    }
}

fn is_upstream_failure(code: Code) -> bool {
    matches!(
        code,
        Code::ProviderTimeout | Code::ProviderUnavailable | Code::ProviderBadResponse
    )
}

#[async_trait]
impl ProxyHttp for Hub {
    type CTX = Ctx;

    /// No downstream modules: pingora's default adds a (disabled) response compression
    /// module, which still costs a context and filter calls on every request. The hub
    /// passes the bank's answer through as it is.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            arrived: SystemTime::now(),
            snap: None,
            net: None,
            iid: [b'0'; 36],
            route: None,
            code: None,
            status: 0,
            api_user: None,
            provider: None,
            provider_index: 0,
            target: None,
            token: None,
            consent: None,
            rate: None,
            limited: None,
            upstream_path: String::new(),
            upstream_start: None,
            upstream_status: 0,
            upstream_us: 0,
            body_bytes: 0,
            body_discarded: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.arrived = SystemTime::now();
        ctx.iid = interaction_id(
            session
                .req_header()
                .headers
                .get(X_FAPI_INTERACTION_ID.name()),
        );
        // In-flight requests keep the snapshot they started with, whatever reloads do.
        let snap = self.state.snapshot.load_full();
        // The participant directory may change under a snapshot (trust feed): the request
        // decides and routes with the one it loads here.
        let net = snap.network.load_full();
        let mut outcome = self.evaluate(session, ctx, &snap, &net);
        let max_body = snap.max_body_bytes;
        ctx.snap = Some(snap);
        ctx.net = Some(net);
        if outcome.is_ok() && !session.is_body_empty() {
            outcome = self.discard_body(session, ctx, max_body).await;
        }
        match outcome {
            Ok(()) => Ok(false),
            Err(code) => {
                self.respond_problem(session, ctx, code).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Some(snap)) = (body.as_ref(), ctx.snap.as_ref()) {
            ctx.body_bytes += b.len();
            if ctx.body_bytes > snap.max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let net = ctx
            .net
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no snapshot"))?;
        let up = net
            .upstreams
            .get(ctx.provider_index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream"))?;
        let idx = up.pick();
        ctx.target = Some(idx);
        ctx.upstream_start = Some(Instant::now());
        Ok(up.peer(idx, up.timeout))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        let m = &self.state.metrics;
        if reused {
            m.upstream_reused.inc();
        } else {
            m.upstream_new.inc();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Another base URL may serve: a connect failure sent nothing, so retrying is safe.
        if ctx.report_upstream(false) {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let net = ctx
            .net
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no snapshot"))?;
        let up = net
            .upstreams
            .get(ctx.provider_index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream"))?;
        let target = &up.targets[ctx.target.unwrap_or(0).min(up.targets.len() - 1)];
        // The base URL's path prefix is per target (a retry may pick another one).
        if target.prefix.is_empty() {
            upstream.set_raw_path(ctx.upstream_path.as_bytes())?;
        } else {
            let mut full = Vec::with_capacity(target.prefix.len() + ctx.upstream_path.len());
            full.extend_from_slice(target.prefix.as_bytes());
            full.extend_from_slice(ctx.upstream_path.as_bytes());
            upstream.set_raw_path(&full)?;
        }
        upstream.insert_header(header::HOST, target.authority.as_str())?;

        // Strip hop-by-hop headers, headers named by Connection, and every client x-hub-*.
        let mut doomed: Vec<HeaderName> = Vec::new();
        if let Some(conn) = upstream.headers.get(header::CONNECTION) {
            if let Ok(s) = conn.to_str() {
                for name in s.split(',') {
                    if let Ok(h) = HeaderName::from_bytes(name.trim().as_bytes()) {
                        doomed.push(h);
                    }
                }
            }
        }
        for name in upstream.headers.keys() {
            let n = name.as_str();
            if n.starts_with("x-hub-") || STRIP_UPSTREAM.contains(&n) {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            upstream.remove_header(name);
        }
        if ctx.body_discarded {
            // The body was read and dropped by `discard_body`; its framing must not travel.
            upstream.remove_header(&header::CONTENT_LENGTH);
            upstream.remove_header(&header::TRANSFER_ENCODING);
        }

        let ip_ok = session
            .req_header()
            .headers
            .get(X_FAPI_CUSTOMER_IP)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|s| s.trim().parse::<IpAddr>().is_ok());
        if !ip_ok {
            upstream.remove_header(&X_FAPI_CUSTOMER_IP);
        }

        upstream.insert_static_header(&X_FAPI_INTERACTION_ID, iid_str(&ctx.iid))?;
        if let Some(u) = ctx.api_user {
            let d = u.digits();
            upstream.insert_static_header(
                &X_HUB_API_USER,
                HeaderValue::from_bytes(&d)
                    .map_err(|_| Error::explain(ErrorType::InternalError, "api user header"))?,
            )?;
        }
        if let Some(c) = &ctx.consent {
            upstream.insert_static_header(&X_HUB_CONSENT_ID, c.id())?;
            upstream.insert_static_header(&X_HUB_CUSTOMER, c.customer())?;
            // What the bank may serve: granted by the consent and by the token's scope.
            let granted = match &ctx.token {
                Some(t) => {
                    consent_cache::Permissions::from_bits(c.permissions().bits() & t.scope.bits())
                        .unwrap_or(consent_cache::Permissions::EMPTY)
                }
                None => c.permissions(),
            };
            upstream.insert_static_header(&X_HUB_PERMISSIONS, granted.comma_list())?;
            if let Some(accounts) = c.accounts() {
                // Extension to contract §3: lets the bank filter the account list of a
                // consent restricted to some accounts.
                let mut list = String::new();
                for (i, a) in accounts.enumerate() {
                    if i > 0 {
                        list.push(',');
                    }
                    list.push_str(a);
                }
                upstream.insert_static_header(&X_HUB_ACCOUNTS, list)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = upstream.status.as_u16();
        if let Some(t0) = ctx.upstream_start {
            ctx.upstream_us = t0.elapsed().as_micros() as u64;
        }
        ctx.report_upstream(true);
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in upstream.headers.keys() {
            if !PASS_DOWNSTREAM.contains(&name.as_str()) {
                doomed.push(name.clone());
            }
        }
        for name in &doomed {
            upstream.remove_header(name);
        }
        upstream.insert_static_header(&X_FAPI_INTERACTION_ID, iid_str(&ctx.iid))?;
        upstream.insert_header(header::DATE, date_header())?;
        if ctx.consent.is_some() {
            // Customer data is never cached on the way (contract §3).
            upstream.insert_header(header::CACHE_CONTROL, "no-store")?;
        }
        if let Some(info) = &ctx.rate {
            let (mut policy, mut state) = (String::with_capacity(64), String::with_capacity(64));
            info.write_headers(&mut policy, &mut state);
            upstream.insert_static_header(&RATELIMIT_POLICY, policy)?;
            upstream.insert_static_header(&RATELIMIT, state)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if client_gone(e) {
            self.state.metrics.client_gone.inc();
        }
        let code = failure_code(e);
        if let Some(code) = code {
            if is_upstream_failure(code) {
                ctx.report_upstream(false);
            }
            ctx.code = Some(code);
            ctx.status = code.status();
            let body = Bytes::from(problem_json(code, iid_str(&ctx.iid), None));
            if let Ok(resp) = self.problem_header(ctx, code, body.len()) {
                let _ = session
                    .as_downstream_mut()
                    .write_error_response(resp, body)
                    .await;
            }
        }
        FailToProxy {
            error_code: code.map_or(0, Code::status),
            can_reuse_downstream: false,
        }
    }

    /// A client that went away mid-request is logged at debug, not as pingora's ERROR
    /// line ("Fail to proxy: Downstream ReadError …"): load balancers and load generators
    /// drop keep-alive connections routinely, and ERROR is for what an operator must look
    /// at. Such requests are counted (`hub_client_gone_total`, in `fail_to_proxy`) and
    /// keep their audit record.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        if client_gone(e) {
            tracing::debug!(
                route = ctx.route.map_or("-", RouteId::template),
                interaction_id = iid_str(&ctx.iid),
                error = %e,
                "client went away mid-request"
            );
            return true;
        }
        false
    }

    /// What pingora's own error log says about a request: the route template and the
    /// interaction id, never the path (it carries account ids) or headers.
    fn malformed_request_response(&self, e: &Error) -> Option<(ResponseHeader, Bytes)> {
        // Pingora reports an over-long header block as a parse error; tell them apart.
        let too_large = e
            .context
            .as_ref()
            .is_some_and(|c| c.as_str().contains("larger than"));
        let code = if too_large {
            Code::RequestHeaderFieldsTooLarge
        } else {
            Code::BadRequest
        };
        let iid = interaction_id(None);
        let body = Bytes::from(problem_json(code, iid_str(&iid), None));
        let head = problem_head(code, &iid, None, body.len()).ok()?;
        self.state
            .metrics
            .requests
            .with_label_values(&["-", code.as_str(), "-"])
            .inc();
        self.state.audit(AuditRecord {
            time: SystemTime::now(),
            interaction_id: iid,
            api_user: None,
            provider: None,
            token: None,
            route: "-",
            code: code.as_str(),
            status: code.status(),
            upstream_status: 0,
            latency_us: 0,
            upstream_latency_us: 0,
        });
        Some((head, body))
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        format!(
            "{} {} interaction_id={}",
            session.req_header().method,
            ctx.route.map_or("-", RouteId::template),
            iid_str(&ctx.iid)
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = if ctx.status != 0 {
            ctx.status
        } else {
            session
                .as_downstream()
                .response_written()
                .map_or(0, |r| r.status.as_u16())
        };
        let code = ctx.code.map_or("ok", Code::as_str);
        let route = ctx.route.map_or("-", RouteId::template);
        let elapsed = ctx.start.elapsed();
        let m = &self.state.metrics;
        let provider_digits = ctx.provider.map(Bin::digits);
        let provider = provider_digits
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .unwrap_or("-");
        m.requests.with_label_values(&[route, code, provider]).inc();
        m.latency
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if ctx.upstream_start.is_some() && ctx.upstream_us > 0 {
            m.upstream_latency
                .with_label_values(&[provider])
                .observe(ctx.upstream_us as f64 / 1e6);
        }
        self.state.audit(AuditRecord {
            time: ctx.arrived,
            interaction_id: ctx.iid,
            api_user: ctx.api_user,
            provider: ctx.provider,
            token: ctx.token.take(),
            route,
            code,
            status,
            upstream_status: ctx.upstream_status,
            latency_us: elapsed.as_micros() as u64,
            upstream_latency_us: ctx.upstream_us,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(etype: ErrorType, source: ErrorSource) -> Box<Error> {
        let mut e = Error::new(etype);
        match source {
            ErrorSource::Upstream => e.as_up(),
            ErrorSource::Downstream => e.as_down(),
            _ => e.as_in(),
        }
        e
    }

    #[test]
    fn a_client_that_went_away_is_no_failure_to_answer() {
        for t in [
            ErrorType::ReadError,
            ErrorType::WriteError,
            ErrorType::ConnectionClosed,
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
        ] {
            let e = err(t.clone(), ErrorSource::Downstream);
            assert!(client_gone(&e), "{t:?}");
            assert_eq!(failure_code(&e), None, "{t:?}");
        }
    }

    #[test]
    fn the_same_errors_from_the_provider_or_a_bad_request_are_failures() {
        let e = err(ErrorType::ReadError, ErrorSource::Upstream);
        assert!(!client_gone(&e));
        assert_eq!(failure_code(&e), Some(Code::ProviderUnavailable));
        let e = err(ErrorType::ReadTimedout, ErrorSource::Upstream);
        assert!(!client_gone(&e));
        assert_eq!(failure_code(&e), Some(Code::ProviderTimeout));
        let e = err(ErrorType::InvalidHTTPHeader, ErrorSource::Downstream);
        assert!(!client_gone(&e));
        assert_eq!(failure_code(&e), Some(Code::BadRequest));
    }
}
