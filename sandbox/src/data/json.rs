//! The response envelopes of the sandbox bank (shapes documented on the parent
//! module), serialised straight into bytes.

use super::{Account, AS_OF_TIMESTAMP};
use bytes::Bytes;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// What is written when serialisation itself fails (it cannot for these types, but
/// the server must answer something well-formed rather than panic).
const SERIALISE_FAILED: &[u8] =
    br#"{"error":"internal_error","message":"response serialisation failed"}"#;

#[derive(Serialize)]
struct Links<'a> {
    #[serde(rename = "self")]
    self_: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<&'a str>,
}

#[derive(Serialize)]
struct Meta<'a> {
    total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<&'a str>,
}

#[derive(Serialize)]
struct Collection<'a, T> {
    data: &'a [T],
    links: Links<'a>,
    meta: Meta<'a>,
}

#[derive(Serialize)]
struct Single<'a, T> {
    data: &'a T,
    links: Links<'a>,
}

#[derive(Serialize)]
struct Error<'a> {
    error: &'a str,
    message: &'a str,
}

/// The next page of a collection: its relative link and its cursor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Next<'a> {
    pub(crate) link: &'a str,
    pub(crate) cursor: &'a str,
}

fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    match serde_json::to_vec(v) {
        Ok(v) => Bytes::from(v),
        Err(_) => Bytes::from_static(SERIALISE_FAILED),
    }
}

/// `{"data": [...], "links": {"self", "next"?}, "meta": {"total", "next_cursor"?}}`.
pub(crate) fn collection<T: Serialize>(
    items: &[T],
    self_link: &str,
    next: Option<Next<'_>>,
    total: usize,
) -> Bytes {
    to_bytes(&Collection {
        data: items,
        links: Links {
            self_: self_link,
            next: next.map(|n| n.link),
        },
        meta: Meta {
            total,
            next_cursor: next.map(|n| n.cursor),
        },
    })
}

/// `{"data": {...}, "links": {"self"}}`.
pub(crate) fn single<T: Serialize>(item: &T, self_link: &str) -> Bytes {
    to_bytes(&Single {
        data: item,
        links: Links {
            self_: self_link,
            next: None,
        },
    })
}

/// `{"error": code, "message": message}`.
pub(crate) fn error(code: &str, message: &str) -> Bytes {
    to_bytes(&Error {
        error: code,
        message,
    })
}

/// The balances object of one account.
pub(crate) struct BalanceView<'a>(pub(crate) &'a Account);

impl Serialize for BalanceView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut st = s.serialize_struct("Balances", 6)?;
        st.serialize_field("account_id", &a.id)?;
        st.serialize_field("currency", &a.currency)?;
        st.serialize_field("booked", &a.balance.booked)?;
        st.serialize_field("available", &a.balance.available)?;
        match a.balance.credit_limit {
            Some(limit) => st.serialize_field("credit_limit", &limit)?,
            None => st.skip_field("credit_limit")?,
        }
        st.serialize_field("as_of", AS_OF_TIMESTAMP)?;
        st.end()
    }
}
