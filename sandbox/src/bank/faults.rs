//! Fault modes of a sandbox bank (contract §9, `providers[].faults_url`): switched at run
//! time through the bank's control listener ([`super::control`]), they make the provider
//! API misbehave in the ways provider oversight must notice — answers that break the
//! provider schema (`docs/openapi/provider.json`), answers slower than twice the SLA,
//! `500`s, and an API port that refuses connections. Each mode breaks one thing only, so
//! that what a monitor reports can be traced to the mode that caused it.

use super::routes::{self, Resp};
use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The provider's SLA when the bank is not told one: the hub's default
/// `[[providers]] timeout_ms` (5 s).
pub const DEFAULT_SLA: Duration = Duration::from_secs(5);

/// How the bank's provider API misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// Normal answers.
    #[default]
    Ok,
    /// Every `200` answer's body breaks the provider schema: `links` (required on every
    /// answer) is left out and, on collections, `meta.total` is a string. Error answers
    /// are unchanged.
    Schema,
    /// Every answer waits [`slow_delay`] (2.5 × the SLA) first.
    Slow,
    /// Every request answers `500` with a provider error body
    /// (`{"error": "internal_error", "message": …}`, as documented for providers).
    Error,
    /// The API port refuses connections: the bank stops listening on it and closes the
    /// connections it has, and listens again on the same port once switched to another
    /// mode.
    Down,
}

impl FaultMode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [FaultMode; 5] = [
        FaultMode::Ok,
        FaultMode::Schema,
        FaultMode::Slow,
        FaultMode::Error,
        FaultMode::Down,
    ];

    /// The mode's name on the control route (`"ok"`, `"schema"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            FaultMode::Ok => "ok",
            FaultMode::Schema => "schema",
            FaultMode::Slow => "slow",
            FaultMode::Error => "error",
            FaultMode::Down => "down",
        }
    }

    fn from_u8(v: u8) -> FaultMode {
        FaultMode::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or_default()
    }
}

impl fmt::Display for FaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a `slow` bank waits before each answer: 2.5 × `sla`, so that the hub (which
/// gives up at the SLA) times out and a probe measures more than twice the SLA with room
/// to spare.
pub fn slow_delay(sla: Duration) -> Duration {
    sla.saturating_mul(5) / 2
}

/// The longest a switch into or out of `down` waits for the API port to follow.
const LISTENER_FOLLOWS_WITHIN: Duration = Duration::from_secs(5);

/// The fault state of one bank: read once per request on the hot path (an atomic), and
/// watched by the API accept loop (which closes and reopens the port for `down`).
pub(crate) struct Faults {
    mode: AtomicU8,
    changes: watch::Sender<FaultMode>,
    /// Whether the API port is listening (published by the accept loop).
    listening: watch::Sender<bool>,
    slow_delay: Duration,
}

impl Faults {
    pub(crate) fn new(sla: Duration) -> Faults {
        Faults {
            mode: AtomicU8::new(FaultMode::Ok as u8),
            changes: watch::Sender::new(FaultMode::Ok),
            listening: watch::Sender::new(true),
            slow_delay: slow_delay(sla),
        }
    }

    /// The mode in force.
    pub(crate) fn mode(&self) -> FaultMode {
        FaultMode::from_u8(self.mode.load(Ordering::SeqCst))
    }

    pub(crate) fn slow_delay(&self) -> Duration {
        self.slow_delay
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<FaultMode> {
        self.changes.subscribe()
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.listening.send_replace(listening);
    }

    /// Switches to `mode` and waits (bounded) until the API port follows it: closed for
    /// `down`, listening otherwise. `false` when it did not within the bound (the bank
    /// keeps trying, e.g. to listen again on a port another process took meanwhile).
    pub(crate) async fn switch(&self, mode: FaultMode) -> bool {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.changes.send_replace(mode);
        let want = mode != FaultMode::Down;
        let mut rx = self.listening.subscribe();
        let followed = tokio::time::timeout(LISTENER_FOLLOWS_WITHIN, async {
            rx.wait_for(|l| *l == want).await.is_ok()
        })
        .await;
        followed.unwrap_or(false)
    }
}

/// Completes once the mode satisfies `pred` (never, should the sender be gone, so that a
/// `select!` over it does not spin).
pub(crate) async fn mode_is(rx: &mut watch::Receiver<FaultMode>, pred: fn(FaultMode) -> bool) {
    // The guard `wait_for` returns must not live across another await (it is not Send).
    let reached = rx.wait_for(|m| pred(*m)).await.is_ok();
    if !reached {
        std::future::pending::<()>().await;
    }
}

/// The answer of the `error` mode.
pub(crate) fn error_answer(interaction_id: Option<&HeaderValue>) -> Resp {
    routes::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "sandbox fault mode error: every request fails",
        interaction_id,
    )
}

/// `resp` as the `schema` mode answers it: a `200`'s body broken (see
/// [`FaultMode::Schema`]), any other answer unchanged.
pub(crate) async fn break_schema(resp: Resp) -> Resp {
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // A `Full` body is already whole: this completes at once and cannot fail.
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Resp::from_parts(parts, Full::new(broken(&bytes)))
}

/// The body with `links` removed and `meta.total` turned into a string; a body that is
/// not a JSON object (none of the bank's `200`s) becomes `{"data": null}`, which breaks
/// the schema as well.
fn broken(body: &[u8]) -> Bytes {
    let mut value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(obj) = value.as_object_mut() else {
        return Bytes::from_static(br#"{"data":null}"#);
    };
    obj.remove("links");
    if let Some(total) = obj.get_mut("meta").and_then(|m| m.get_mut("total")) {
        *total = Value::String(total.to_string());
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(br#"{"data":null}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_through_their_names_and_u8() {
        for m in FaultMode::ALL {
            assert_eq!(FaultMode::from_u8(m as u8), m);
            let json = serde_json::to_string(&m).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(serde_json::from_str::<FaultMode>(&json).ok(), Some(m));
        }
        assert!(serde_json::from_str::<FaultMode>("\"Ok\"").is_err());
    }

    #[test]
    fn slow_is_more_than_twice_the_sla() {
        assert_eq!(
            slow_delay(Duration::from_millis(200)),
            Duration::from_millis(500)
        );
        assert!(slow_delay(DEFAULT_SLA) > DEFAULT_SLA * 2);
    }

    #[test]
    fn a_broken_collection_lacks_links_and_has_a_string_total() {
        let body = br#"{"data":[{"a":1}],"links":{"self":"/v1/accounts"},"meta":{"total":1}}"#;
        let v: Value = serde_json::from_slice(&broken(body)).unwrap_or(Value::Null);
        assert_eq!(v["data"][0]["a"], 1);
        assert!(v.get("links").is_none(), "{v}");
        assert_eq!(v["meta"]["total"], "1");
        let single = br#"{"data":{"account_id":"a"},"links":{"self":"/v1/accounts/a"}}"#;
        let v: Value = serde_json::from_slice(&broken(single)).unwrap_or(Value::Null);
        assert!(
            v.get("links").is_none() && v["data"]["account_id"] == "a",
            "{v}"
        );
        assert_eq!(&broken(b"not json")[..], br#"{"data":null}"#);
    }
}
