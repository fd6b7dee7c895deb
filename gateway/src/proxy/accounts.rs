//! The account list of a consent restricted to some accounts (contract §3: the API user
//! receives only those accounts, whatever the provider answered). Row 14 covers the routes
//! with an account id in the path; for `GET /v1/providers/{provider_id}/accounts` the hub
//! filters the provider's answer itself, so a bank that ignores `x-hub-accounts` leaks
//! nothing. Only such answers are buffered (at most [`MAX_LIST_BYTES`]) and held back until
//! the whole list has been checked; a list that cannot be checked is the provider's bad
//! response (`502 provider_bad_response`, row 19). Every other answer streams untouched.

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::{json, Value};

use consent_cache::Consent;
use policy::route::RouteId;

/// The largest account list the hub buffers: about a thousand accounts of the contract's
/// shape, far more than one customer holds at one bank.
const MAX_LIST_BYTES: usize = 256 * 1024;

/// Why a provider's account list cannot be filtered (each one a `502`). The messages name
/// the rule, never an account id or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ListError {
    /// `Content-Encoding` other than `identity`: the hub does not decode bodies.
    #[error("the provider's account list is content-encoded")]
    Encoded,
    /// A successful answer declared empty.
    #[error("the provider's account list is empty")]
    Empty,
    /// Declared or received over [`MAX_LIST_BYTES`].
    #[error("the provider's account list is over the hub's bound")]
    TooLarge,
    /// Not JSON.
    #[error("the provider's account list is not JSON")]
    NotJson,
    /// JSON, but not an object with a `data` array.
    #[error("the provider's account list has no data array")]
    NoData,
    /// The entry at this index is not an object with a string `account_id`.
    #[error("entry {0} of the provider's account list has no string account_id")]
    NoAccountId(usize),
}

/// One restricted account list on its way through: the consent that decides which
/// accounts stay, and the body received so far.
pub(super) struct ListFilter {
    consent: Consent,
    body: Vec<u8>,
}

/// Sets the filter up from the provider's response head, for the account list of a consent
/// restricted to some accounts and a successful answer: drops the `Content-Length` (the
/// filtered list is shorter) and holds the response back until its end. `None`: the answer
/// streams as it is (another route, an unrestricted consent, an error answer).
pub(super) fn list_filter(
    session: &mut Session,
    resp: &mut ResponseHeader,
    route: Option<RouteId>,
    consent: Option<&Consent>,
) -> Result<Option<Box<ListFilter>>> {
    let Some(consent) =
        consent.filter(|c| route == Some(RouteId::Accounts) && c.accounts_restricted())
    else {
        return Ok(None);
    };
    let Head::List { declared } = list_head(resp).map_err(bad_response)? else {
        return Ok(None);
    };
    resp.remove_header(&CONTENT_LENGTH);
    session.hold_response_until_end();
    Ok(Some(Box::new(ListFilter {
        consent: consent.clone(),
        body: Vec::with_capacity(declared.unwrap_or(4096)),
    })))
}

/// What the head of the provider's answer says.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Nothing to filter: an error status (the answer passes as it is) or `204`.
    Passes,
    /// A list to filter, with its declared length, if any.
    List { declared: Option<usize> },
}

fn list_head(resp: &ResponseHeader) -> Result<Head, ListError> {
    if !resp.status.is_success() || resp.status.as_u16() == 204 {
        return Ok(Head::Passes);
    }
    let encoded = resp
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(ListError::Encoded);
    }
    let declared = resp
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|s| s.trim().parse::<usize>().ok());
    match declared {
        Some(0) => Err(ListError::Empty),
        Some(n) if n > MAX_LIST_BYTES => Err(ListError::TooLarge),
        _ => Ok(Head::List { declared }),
    }
}

impl ListFilter {
    /// Takes one piece of the provider's body in (the client gets nothing yet); at the end,
    /// puts the filtered list in its place.
    pub(super) fn take(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        if let Some(piece) = body.take() {
            if self.body.len() + piece.len() > MAX_LIST_BYTES {
                return Err(bad_response(ListError::TooLarge));
            }
            self.body.extend_from_slice(&piece);
        }
        if end {
            let received = std::mem::take(&mut self.body);
            let kept = filter_list(&received, |id| self.consent.covers_account(id))
                .map_err(bad_response)?;
            *body = Some(Bytes::from(kept));
        }
        Ok(())
    }
}

/// The hub's answer for a restricted consent: `{"data": [entries], "meta": {"total": n}}`
/// with only the entries whose `account_id` is `allowed`. Everything else the provider put
/// beside `data` is dropped, since it describes the customer's whole list (a count, a
/// paging link). An entry without a string `account_id` cannot be checked: the list is
/// refused rather than guessed at.
fn filter_list(body: &[u8], allowed: impl Fn(&str) -> bool) -> Result<Vec<u8>, ListError> {
    let list: Value = serde_json::from_slice(body).map_err(|_| ListError::NotJson)?;
    let Value::Object(mut members) = list else {
        return Err(ListError::NoData);
    };
    let Some(Value::Array(entries)) = members.remove("data") else {
        return Err(ListError::NoData);
    };
    let mut kept = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let id = entry
            .get("account_id")
            .and_then(Value::as_str)
            .ok_or(ListError::NoAccountId(i))?;
        if allowed(id) {
            kept.push(entry);
        }
    }
    let total = kept.len();
    serde_json::to_vec(&json!({ "data": kept, "meta": { "total": total } }))
        .map_err(|_| ListError::NotJson)
}

/// A list the hub cannot filter, as the proxy error the rescue table answers with
/// `502 provider_bad_response` (and counts against the provider's base URL).
fn bad_response(e: ListError) -> Box<Error> {
    Error::explain(ErrorType::H1Error, e.to_string()).into_up()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::rescue::failure_code;
    use policy::code::Code;

    fn only(ids: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |id| ids.contains(&id)
    }

    fn filtered(body: &str, ids: &'static [&'static str]) -> Value {
        let out = filter_list(body.as_bytes(), only(ids)).expect("a list");
        serde_json::from_slice(&out).expect("JSON out")
    }

    #[test]
    fn keeps_only_the_consents_accounts_and_drops_what_describes_the_whole_list() {
        let bank = r#"{"data":[
            {"account_id":"KZ-1","iban":"KZ001","currency":"KZT"},
            {"account_id":"KZ-2","iban":"KZ002"},
            {"account_id":"KZ-3","iban":"KZ003","nested":{"a":[1,2]}}],
            "links":{"self":"/v1/accounts","next":"?cursor=abc"},
            "meta":{"total":3,"next_cursor":"abc"},"customer":"900101300123"}"#;
        let v = filtered(bank, &["KZ-1", "KZ-3"]);
        assert_eq!(
            v,
            json!({"data":[
                {"account_id":"KZ-1","iban":"KZ001","currency":"KZT"},
                {"account_id":"KZ-3","iban":"KZ003","nested":{"a":[1,2]}}],
                "meta":{"total":2}})
        );
        assert_eq!(
            filtered(bank, &["KZ-9"]),
            json!({"data":[],"meta":{"total":0}})
        );
    }

    /// An id is compared whole and decoded: no prefix, case or escape trick matches.
    #[test]
    fn ids_match_exactly() {
        let bank = r#"{"data":[{"account_id":"KZ-1 "},{"account_id":"kz-1"},
            {"account_id":"KZ-10"},{"account_id":"KZ-1,KZ-2"},{"account_id":"KZ\u002d1"}]}"#;
        assert_eq!(
            filtered(bank, &["KZ-1"]),
            json!({"data":[{"account_id":"KZ-1"}],"meta":{"total":1}})
        );
    }

    /// A duplicated `account_id` member is read once, and only that value is written back,
    /// so the client cannot see another id than the one checked.
    #[test]
    fn a_duplicated_member_is_written_back_as_the_value_checked() {
        let bank = r#"{"data":[{"account_id":"KZ-2","account_id":"KZ-1"},
                               {"account_id":"KZ-1","account_id":"KZ-2"}]}"#;
        let v = filtered(bank, &["KZ-1"]);
        assert_eq!(
            v,
            json!({"data":[{"account_id":"KZ-1"}],"meta":{"total":1}})
        );
    }

    #[test]
    fn what_cannot_be_checked_is_refused() {
        let cases: &[(&str, ListError)] = &[
            ("", ListError::NotJson),
            ("{\"data\":[", ListError::NotJson),
            ("<html></html>", ListError::NotJson),
            ("[]", ListError::NoData),
            ("{}", ListError::NoData),
            ("{\"data\":{}}", ListError::NoData),
            ("{\"data\":null}", ListError::NoData),
            (
                "{\"data\":[{\"account_id\":\"KZ-1\"},{\"id\":\"KZ-2\"}]}",
                ListError::NoAccountId(1),
            ),
            ("{\"data\":[{\"account_id\":7}]}", ListError::NoAccountId(0)),
            ("{\"data\":[\"KZ-1\"]}", ListError::NoAccountId(0)),
        ];
        for (body, want) in cases {
            assert_eq!(
                filter_list(body.as_bytes(), only(&["KZ-1", "KZ-2"])).as_ref(),
                Err(want),
                "{body}"
            );
        }
    }

    fn head(status: u16, headers: &[(&'static str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).expect("head");
        for (n, v) in headers {
            h.insert_header(*n, *v).expect("header");
        }
        h
    }

    #[test]
    fn the_head_decides_what_is_filtered_and_what_is_refused_at_once() {
        let big = (MAX_LIST_BYTES + 1).to_string();
        let list = |declared| Ok(Head::List { declared });
        let cases = [
            (head(200, &[]), list(None)),
            (head(200, &[("content-length", "120")]), list(Some(120))),
            (head(203, &[("content-encoding", "identity")]), list(None)),
            (head(204, &[]), Ok(Head::Passes)),
            (head(404, &[("content-length", "40")]), Ok(Head::Passes)),
            (head(503, &[("content-encoding", "gzip")]), Ok(Head::Passes)),
            (
                head(200, &[("content-encoding", "gzip")]),
                Err(ListError::Encoded),
            ),
            (head(200, &[("content-length", "0")]), Err(ListError::Empty)),
            (
                head(200, &[("content-length", big.as_str())]),
                Err(ListError::TooLarge),
            ),
        ];
        for (h, want) in cases {
            assert_eq!(list_head(&h), want, "{} {:?}", h.status, h.headers);
        }
    }

    fn restricted_to(accounts: &[&str]) -> Consent {
        let record: consent_cache::ConsentRecord = serde_json::from_value(json!({
            "id": "c-1", "api_user": "100140000001", "customer": "900101300123",
            "providers": ["990340000011"], "permissions": ["accounts"],
            "accounts": accounts, "purpose": "test",
            "created_at": "2026-01-01T00:00:00Z", "status": "authorised"
        }))
        .expect("record");
        consent_cache::ConsentStore::from_records(vec![record])
            .expect("store")
            .get("c-1")
            .expect("consent")
    }

    /// Pieces are kept back (the client gets nothing) until the end, which carries the
    /// filtered list; the bound counts what was received, not what was declared.
    #[test]
    fn pieces_are_held_until_the_end_and_bounded() {
        let bank = r#"{"data":[{"account_id":"KZ-1"},{"account_id":"KZ-2"}],"meta":{"total":2}}"#;
        let mut f = ListFilter {
            consent: restricted_to(&["KZ-2"]),
            body: Vec::new(),
        };
        let (a, b) = bank.split_at(17);
        for (piece, end) in [(Some(a), false), (None, false), (Some(b), false)] {
            let mut body = piece.map(|p| Bytes::copy_from_slice(p.as_bytes()));
            f.take(&mut body, end).expect("taken");
            assert_eq!(body, None, "nothing reaches the client before the end");
        }
        let mut body = None;
        f.take(&mut body, true).expect("filtered");
        let out: Value = serde_json::from_slice(&body.expect("the list")).expect("JSON");
        assert_eq!(
            out,
            json!({"data":[{"account_id":"KZ-2"}],"meta":{"total":1}})
        );

        let mut f = ListFilter {
            consent: restricted_to(&["KZ-2"]),
            body: Vec::new(),
        };
        let mut body = Some(Bytes::from(vec![b' '; MAX_LIST_BYTES]));
        f.take(&mut body, false).expect("at the bound");
        let mut body = Some(Bytes::from_static(b" "));
        let err = f.take(&mut body, false).expect_err("over the bound");
        assert_eq!(failure_code(&err), Some(Code::ProviderBadResponse));
    }

    /// Every refusal is the provider's bad response in the rescue table.
    #[test]
    fn a_list_that_cannot_be_filtered_is_provider_bad_response() {
        for e in [
            ListError::Encoded,
            ListError::TooLarge,
            ListError::NoAccountId(3),
        ] {
            assert_eq!(
                failure_code(&bad_response(e)),
                Some(Code::ProviderBadResponse)
            );
        }
    }
}
