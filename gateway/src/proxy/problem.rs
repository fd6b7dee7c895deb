//! The one problem+json writer: every answer the hub gives itself (a refusal, a failure to
//! proxy, a request pingora could not read) is built here, as an RFC 9457 body with the
//! contract's code and a head carrying the interaction id and the code's own headers.

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use policy::code::{problem_json, Code, PROBLEM_CONTENT_TYPE};
use policy::limits::Limited;

use super::headers::{date_header, iid_str, limited_headers, X_FAPI_INTERACTION_ID};

/// Whether the request carried credentials, which decides the shape of a `401`'s challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    /// An `Authorization` field (one or several) was sent.
    Sent,
    /// None at all: RFC 6750 §3.1 asks for a bare `Bearer` challenge, without an error code.
    Absent,
}

/// The head and body of the problem answering `code`; `limited` says which limit refused
/// a `429` (or denied a `503 limits_unavailable`), `detail` which rule failed (the
/// limit's numbers, or the code's own words, when `None`).
pub(super) fn problem(
    code: Code,
    iid: &[u8; 36],
    limited: Option<&Limited>,
    detail: Option<&str>,
) -> Result<(ResponseHeader, Bytes)> {
    answer(code, iid, (limited, detail), Credentials::Sent)
}

/// The problem's `detail`: the one given, else what the limit says, else none (the code's).
fn detail_of(code: Code, limited: Option<&Limited>, detail: Option<&str>) -> Option<String> {
    match (detail, limited) {
        (Some(d), _) => Some(d.to_string()),
        (None, Some(l)) if code == Code::LimitsUnavailable => Some(l.unavailable_detail()),
        (None, Some(l)) => Some(l.detail()),
        (None, None) => None,
    }
}

fn answer(
    code: Code,
    iid: &[u8; 36],
    (limited, detail): (Option<&Limited>, Option<&str>),
    credentials: Credentials,
) -> Result<(ResponseHeader, Bytes)> {
    let detail = detail_of(code, limited, detail);
    let body = Bytes::from(problem_json(code, iid_str(iid), detail.as_deref()));
    let head = problem_head(code, iid, limited, body.len(), credentials)?;
    Ok((head, body))
}

/// Writes the problem answering `code` as the response to `session`'s request. A request
/// body still unread is never drained: the connection closes after the answer, so a
/// refused request costs no more than its header block, whatever body it announces.
pub(super) async fn write_problem(
    session: &mut Session,
    code: Code,
    iid: &[u8; 36],
    limited: Option<&Limited>,
    detail: Option<&str>,
) -> Result<()> {
    let credentials = if session
        .req_header()
        .headers
        .contains_key(header::AUTHORIZATION)
    {
        Credentials::Sent
    } else {
        Credentials::Absent
    };
    // Pingora 0.9 closes such a connection by default (its session's
    // `close_on_response_before_downstream_finish`); said here, it holds whatever that
    // default becomes. HTTP/2 is not drained either: unread data is bounded by the stream's
    // flow-control window, and the stream ends with the session.
    if !session.is_body_done() {
        session.set_keepalive(None);
    }
    let (head, body) = answer(code, iid, (limited, detail), credentials)?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The response head of every problem+json answer.
fn problem_head(
    code: Code,
    iid: &[u8; 36],
    limited: Option<&Limited>,
    body_len: usize,
    credentials: Credentials,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(code.status(), Some(10))?;
    resp.insert_header(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)?;
    resp.insert_header(header::CONTENT_LENGTH, body_len)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(header::DATE, date_header())?;
    resp.insert_static_header(&X_FAPI_INTERACTION_ID, iid_str(iid))?;
    match code {
        Code::InvalidToken if credentials == Credentials::Absent => {
            resp.insert_header(header::WWW_AUTHENTICATE, "Bearer")?;
        }
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
                limited_headers(&mut resp, l)?;
            }
        }
        // The journal catches up within moments once its sink takes writes again.
        Code::AuditUnavailable => {
            resp.insert_header(header::RETRY_AFTER, "1")?;
        }
        // The limits' store is probed again when its circuit half-opens.
        Code::LimitsUnavailable => {
            let secs = limited.map_or(1, |l| l.retry_after_secs.max(1));
            resp.insert_header(header::RETRY_AFTER, secs)?;
        }
        _ => {}
    }
    Ok(resp)
}
