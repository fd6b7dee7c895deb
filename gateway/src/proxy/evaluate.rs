//! The decision adapter: reads what `policy` needs from the request and its connection,
//! runs contract §6 rows 1–16 (row 16 awaits the shared limit store when one is
//! configured) and makes the result the request's [`Outcome`]. A refusal
//! carries what the rows passed before it had identified; an admitted request's body is
//! drained here, before anything goes upstream.

use http::header;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use consent_cache::Consent;
use policy::code::Code;
use policy::decision::{decide, Facts, Grant, Rejection};
use policy::limits::{Limited, RateInfo};
use policy::route::{parse_route, upstream_path, Route, RouteId};
use policy::token::{Charge, Charged, TokenError, TokenVerifier};

use super::ctx::{Admitted, Outcome, Refused, UpstreamCall};
use crate::limits::{Limits, Refusal, Target};
use crate::metrics::Metrics;
use crate::network::Network;
use crate::snapshot::Snapshot;

/// How long a request body may take to arrive.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides the request read on `session` with `snap` (rows 1–16), then drains an
/// admitted request's body. Records the matched route in `route` (refusals have one too).
pub(super) async fn admission(
    session: &mut Session,
    snap: &Snapshot,
    metrics: &Metrics,
    route: &mut Option<RouteId>,
) -> Outcome {
    let mut admitted = match evaluate(session, snap, metrics, route) {
        Ok(a) => a,
        Err(r) => return Outcome::Refused(r),
    };
    match rate_limit(session, snap.limits(), &admitted, *route).await {
        Ok(rate) => admitted.rate = Some(rate),
        Err((code, limited)) => {
            return Outcome::Refused(Refused {
                limited,
                ..admitted.refuse(code)
            })
        }
    }
    if !session.is_body_empty() {
        if let Err(code) = discard_body(session, admitted.max_body_bytes).await {
            return Outcome::Refused(admitted.refuse(code));
        }
        admitted.body_discarded = true;
    }
    Outcome::Admitted(admitted)
}

/// Runs the decision (contract §6 rows 1–15) without touching the response.
fn evaluate(
    session: &Session,
    snap: &Snapshot,
    metrics: &Metrics,
    route_id: &mut Option<RouteId>,
) -> Result<Admitted, Refused> {
    let req = session.req_header();
    check_sizes(req, snap)?;
    let raw = std::str::from_utf8(req.raw_path())
        .map_err(|_| Refused::because(Code::BadRequest, "the request target is not UTF-8"))?;
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let route =
        parse_route(&req.method, path, query).map_err(|e| Refused::because(e.code, e.detail))?;
    *route_id = Some(route.id);
    // No customer data unrecorded: a consent route holds its journal record's place first.
    let journal = snap.journal_slot(route.id).map_err(Refused::anonymous)?;
    let thumb = cert_thumbprint(session);
    if thumb.is_none() {
        metrics.no_tls_digest.inc();
    }
    let facts = Facts {
        route: &route,
        cert_thumbprint: thumb.as_ref(),
        authorization: single_authorization(req),
        now_unix: now_unix(),
        consent_state_fresh: snap.consent_state_fresh(),
    };
    let net = snap.network();
    let tokens = snap.tokens();
    let Grant {
        api_user,
        provider,
        token,
        consent,
    } = decide_charged(session, snap, &net, &tokens, &facts)
        .map_err(|rej| refused_by_policy(snap, metrics, &net, &tokens, &facts, rej))?;
    let (api_user, provider, provider_index) = (api_user.bin, provider.bin, provider.index);
    Ok(Admitted {
        net,
        api_user,
        provider,
        provider_index,
        token,
        consent,
        rate: None,
        api: route.api(),
        sampling: snap.live_sampling(),
        upstream_path: upstream_target(&route, query),
        max_body_bytes: snap.max_body_bytes(),
        body_discarded: false,
        call: UpstreamCall::default(),
        failed: None,
        journal,
    })
}

/// Rows 2–15 (`policy::decision::decide`), a failed token verification charged to this
/// connection and client certificate (row 4's budget: `429` once either has spent it).
fn decide_charged<'n>(
    session: &Session,
    snap: &Snapshot,
    net: &'n Network,
    tokens: &TokenVerifier,
    facts: &Facts<'_>,
) -> Result<Grant<'n, Consent>, Rejection> {
    let consents = snap.consents();
    let Some(certificate) = facts.cert_thumbprint else {
        // Row 2 refuses a connection without a certificate before any token is read.
        return decide(&net.directory, tokens, |id| consents.get(id), facts);
    };
    let charged = Charged {
        verifier: tokens,
        charge: Charge {
            connection: client_socket(session),
            certificate,
            at: Instant::now(),
        },
    };
    decide(&net.directory, &charged, |id| consents.get(id), facts)
}

/// The transport-level limits checked before routing: the header block (`431`) and a
/// declared body (`413`; an unreadable `Content-Length` is `400`).
fn check_sizes(req: &RequestHeader, snap: &Snapshot) -> Result<(), Refused> {
    if header_bytes(req) > snap.max_header_bytes() {
        return Err(Refused::anonymous(Code::RequestHeaderFieldsTooLarge));
    }
    if let Some(cl) = req.headers.get(header::CONTENT_LENGTH) {
        let n: usize = std::str::from_utf8(cl.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(Refused::because(
                Code::BadRequest,
                "Content-Length is not a decimal number",
            ))?;
        if n > snap.max_body_bytes() {
            return Err(Refused::anonymous(Code::PayloadTooLarge));
        }
    }
    Ok(())
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.raw_path().len()
}

/// SHA-256 of the client certificate, from the TLS digest of the connection.
fn cert_thumbprint(session: &Session) -> Option<[u8; 32]> {
    session
        .as_downstream()
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| <[u8; 32]>::try_from(s.cert_digest.as_slice()).ok())
}

/// The `Authorization` value. More than one such field is not a well-formed bearer token
/// (RFC 9110 §5.3): treated as absent, which row 4 refuses.
fn single_authorization(req: &RequestHeader) -> Option<&[u8]> {
    let mut fields = req.headers.get_all(header::AUTHORIZATION).iter();
    match (fields.next(), fields.next()) {
        (Some(v), None) => Some(v.as_bytes()),
        _ => None,
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The client's address and port: they name the connection among the listener's open ones.
fn client_socket(session: &Session) -> Option<SocketAddr> {
    session
        .as_downstream()
        .client_addr()
        .and_then(|a| a.as_inet())
        .copied()
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    client_socket(session).map(|a| a.ip())
}

/// Row 16: the limits of a consent route (user, user × provider, consent × route, the
/// month's quota) or of open data (user, client IP), in this process or the shared store.
/// Open data from no IP address is a bad request.
async fn rate_limit(
    session: &Session,
    limits: &Limits,
    a: &Admitted,
    route: Option<RouteId>,
) -> Result<RateInfo, (Code, Option<Limited>)> {
    let target = match (&a.consent, route) {
        (Some(c), Some(route)) if !route.is_open_data() => Target::Consent {
            provider: a.provider,
            consent_id: c.id(),
            route,
        },
        _ => match client_ip(session) {
            Some(ip) => Target::OpenData { ip },
            None => return Err((Code::BadRequest, None)),
        },
    };
    match limits.check(a.api_user, target).await {
        Ok(rate) => Ok(rate),
        Err(Refusal::Limited(limited)) => Err((Code::RateLimited, Some(limited))),
        Err(Refusal::Unavailable(named)) => Err((Code::LimitsUnavailable, Some(named))),
    }
}

/// The provider-side path and query of an admitted request.
fn upstream_target(route: &Route<'_>, query: Option<&str>) -> String {
    let mut out = String::new();
    upstream_path(route, &mut out);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A refusal by rows 2–15. A token naming an unknown key asks the trust sidecar for
/// fresh keys (they may have rotated); a token not verified because its connection or
/// certificate spent its budget of failed verifications is a `429` and counted.
fn refused_by_policy(
    snap: &Snapshot,
    metrics: &Metrics,
    net: &Network,
    tokens: &TokenVerifier,
    facts: &Facts<'_>,
    rej: Rejection,
) -> Refused {
    if rej.is_unknown_kid() {
        snap.want_jwks();
    }
    tracing::debug!(reason = rej.reason, code = rej.code.as_str(), "rejected");
    if let Some(e) = rej.token_error {
        log_claim_mismatch(tokens.settings(), facts, e);
    }
    let limited = rej.limited();
    if let Some(l) = &limited {
        metrics
            .token_budget_refusals
            .with_label_values(&[l.kind.name()])
            .inc();
    }
    Refused {
        limited,
        detail: Some(rej.detail()),
        ..identify_refused(net, tokens, facts, &rej)
    }
}

/// A token that verified under a trusted key but names another issuer or audience is a
/// deployment mismatch (the authorization server's `iss`/`aud` against `[tokens]`), which
/// the bare `401` cannot tell the operator: said at info, at most once a second per
/// process, with the claim, the configured value and the token's value of that claim
/// (signed by a trusted key, so not attacker-chosen), never the token itself.
fn log_claim_mismatch(settings: &policy::token::TokenSettings, facts: &Facts<'_>, e: TokenError) {
    static LAST_LOGGED: AtomicI64 = AtomicI64::new(i64::MIN);
    let (claim, setting, expected) = match e {
        TokenError::WrongIssuer => ("iss", "[tokens] issuer", settings.issuer.as_str()),
        TokenError::WrongAudience => ("aud", "[tokens] audience", settings.audience.as_str()),
        _ => return,
    };
    let last = LAST_LOGGED.load(Ordering::Relaxed);
    if facts.now_unix <= last
        || LAST_LOGGED
            .compare_exchange(last, facts.now_unix, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let found = facts
        .authorization
        .and_then(policy::token::bearer)
        .and_then(|token| claim_json(token, claim))
        .unwrap_or_default();
    tracing::info!(
        claim,
        expected,
        found = %found,
        "access token refused (401 invalid_token): its {claim} is not {setting}"
    );
}

/// The JSON text of one claim of a token's payload, at most 256 bytes of it.
fn claim_json(token: &str, claim: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let mut text = claims.get(claim)?.to_string();
    if text.len() > 256 {
        let cut = (0..=256).rev().find(|&i| text.is_char_boundary(i))?;
        text.truncate(cut);
        text.push('…');
    }
    Some(text)
}

/// What the rows passed before a refusal had established, for the journal and metrics:
/// the participant (row 2), the verified token (row 4), a *registered* provider (never a
/// raw path value, which would let callers invent metric labels). Runs on refusals only;
/// the token lookup hits the verifier's cache.
fn identify_refused(
    net: &Network,
    tokens: &TokenVerifier,
    facts: &Facts<'_>,
    rej: &Rejection,
) -> Refused {
    let code = rej.code;
    let api_user = facts
        .cert_thumbprint
        .and_then(|t| net.directory.participant_by_thumbprint(t))
        .map(|p| p.bin);
    let provider = facts
        .route
        .provider_bin()
        .and_then(|b| net.directory.provider(b))
        .map(|entry| entry.bin);
    // A refusal of row 4 itself (`invalid_token`, or a token not verified at all because
    // of its budget) has no token to journal; looking it up would verify it uncharged.
    let past_token_checks = rej.token_error.is_none()
        && !matches!(
            code,
            Code::ParticipantUnknown | Code::ParticipantInactive | Code::InvalidToken
        );
    let token = if past_token_checks && !facts.route.id.is_open_data() {
        facts
            .authorization
            .and_then(policy::token::bearer)
            .and_then(|t| tokens.verify(t, facts.now_unix).ok())
    } else {
        None
    };
    Refused {
        code,
        api_user,
        provider,
        token,
        limited: None,
        detail: None,
    }
}

/// Reads and drops an allowed request's body before anything goes upstream. Every
/// contract route is a `GET`, whose body has no meaning (RFC 9110 §9.3.1); reading it
/// here, bounded in size and time, means an oversized body always gets `413` instead of
/// racing the bank's answer, and the bank never receives it.
async fn discard_body(session: &mut Session, max: usize) -> Result<(), Code> {
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
        Ok(r) => r,
        Err(_) => Err(Code::BadRequest),
    }
}

#[cfg(test)]
mod claim_log_tests {
    use super::claim_json;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    fn token(claims: &str) -> String {
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(claims))
    }

    #[test]
    fn the_logged_claim_is_its_json_bounded_at_a_character() {
        let aud = token(r#"{"aud":["a","b"],"sub":"x"}"#);
        assert_eq!(claim_json(&aud, "aud").as_deref(), Some(r#"["a","b"]"#));
        let long = token(&format!(r#"{{"iss":"{}"}}"#, "é".repeat(300)));
        let got = claim_json(&long, "iss").expect("a value");
        assert!(
            got.ends_with('…') && got.len() <= 256 + '…'.len_utf8(),
            "{got}"
        );
        assert_eq!(claim_json(&aud, "iss"), None);
        assert_eq!(claim_json("not a token", "iss"), None);
    }
}
