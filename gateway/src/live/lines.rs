//! Counting a transactions page's lines: the length of the `data` array of the provider
//! schema's `TransactionPage` (docs/openapi/provider.json), read with a serde visitor that
//! skips every element (`IgnoredAny`): nothing of the page is allocated or kept.

use serde::de::{Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};

/// The lines of a transactions page, or `None` when the body is not such a page (not JSON,
/// no `data` array): then nobody can say how many lines the API user received.
pub fn count_lines(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Page>(body).ok().map(|p| p.data.0)
}

/// The page's members the count needs (others are skipped).
#[derive(serde::Deserialize)]
struct Page {
    data: Lines,
}

/// The number of elements of an array, each skipped unread.
struct Lines(u64);

impl<'de> Deserialize<'de> for Lines {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lines, D::Error> {
        d.deserialize_seq(LinesVisitor)
    }
}

struct LinesVisitor;

impl<'de> Visitor<'de> for LinesVisitor {
    type Value = Lines;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of transactions")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lines, A::Error> {
        let mut n = 0u64;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(Lines(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as the sandbox banks answer it (two lines, a `next` link).
    const PAGE: &str = r#"{"data":[{"transaction_id":"tx-00000000000004d2","booking_date":"2025-06-30","value_date":"2025-06-30","amount":"1250.00","currency":"KZT","credit_debit":"debit","status":"booked","counterparty":"Magnum [Almaty]","description":"card {purchase}","mcc":"5411"},{"transaction_id":"tx-00000000000004d1","booking_date":"2025-06-29","value_date":"2025-06-29","amount":"90000.00","currency":"KZT","credit_debit":"credit","status":"booked","counterparty":"Employer","description":"salary"}],"links":{"self":"/v1/accounts/KZ01/transactions?limit=2","next":"?limit=2&cursor=AAAA"},"meta":{"total":7,"next_cursor":"AAAA"}}"#;

    #[test]
    fn counts_the_data_array_of_real_pages() {
        assert_eq!(count_lines(PAGE.as_bytes()), Some(2));
        let empty =
            r#"{"data":[],"links":{"self":"/v1/accounts/KZ01/transactions"},"meta":{"total":0}}"#;
        assert_eq!(count_lines(empty.as_bytes()), Some(0));
        // Members in any order, `data` last; an escaped member name is still `data`.
        let reordered =
            r#"{"meta":{"total":1},"links":{"self":"/"},"d\u0061ta":[{"a":[1,2,{"b":[]}]}]}"#;
        assert_eq!(count_lines(reordered.as_bytes()), Some(1));
    }

    #[test]
    fn a_body_that_is_not_a_page_has_no_count() {
        for body in [
            &b"<html>busy</html>"[..],
            b"",
            b"{\"data\":{}}",
            b"{\"links\":{}}",
            b"{\"data\":[1,2]} trailing",
            b"\x1f\x8b\x08\x00gzip",
        ] {
            assert_eq!(
                count_lines(body),
                None,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
