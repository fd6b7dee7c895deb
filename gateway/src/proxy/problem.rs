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

/// The head and body of the problem answering `code`; `limited` says which limit refused
/// a `429`.
pub(super) fn problem(
    code: Code,
    iid: &[u8; 36],
    limited: Option<&Limited>,
) -> Result<(ResponseHeader, Bytes)> {
    let body = Bytes::from(problem_json(code, iid_str(iid), None));
    let head = problem_head(code, iid, limited, body.len())?;
    Ok((head, body))
}

/// Writes the problem answering `code` as the response to `session`'s request.
pub(super) async fn write_problem(
    session: &mut Session,
    code: Code,
    iid: &[u8; 36],
    limited: Option<&Limited>,
) -> Result<()> {
    let (head, body) = problem(code, iid, limited)?;
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
                limited_headers(&mut resp, l)?;
            }
        }
        _ => {}
    }
    Ok(resp)
}
