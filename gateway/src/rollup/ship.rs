//! Shipping: pushes the outbox's minutes to the control plane (`POST /v1/rollups`, JSON
//! `RollupBatch`, the gateway's mTLS identity of `[trust]`), every `push_interval`, the
//! oldest first; a minute leaves the outbox only once acknowledged (`2xx`). A failure
//! (no endpoint answers, `5xx`, `408`, `429`) keeps everything and backs off (doubling
//! up to [`MAX_BACKOFF`]); a `4xx` otherwise is a batch the control plane will never
//! take: logged, counted and dropped, so it cannot block the minutes behind it. A retry
//! sends the same minutes under the same `(gateway, epoch)`: the control plane keeps
//! the first and ignores the rest. A batch is kept under the control plane's body bound
//! ([`MAX_BATCH_BYTES`]) by sending fewer minutes, and a `413` (a control plane with a
//! smaller bound) halves the minutes per push instead of dropping them; only a single
//! minute larger than the bound is given up (counted `too_large`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::sync::Arc;
use std::time::Duration;

use feed_wire::rollup::{RollupBatch, MAX_BATCH_BYTES, ROLLUP_PATH};

use super::Rollups;
use crate::plane::{ConnectError, Endpoint, TrustPlane};

/// Minutes per push (a long outage's backlog goes in several pushes).
pub const MAX_BATCH_MINUTES: usize = 60;
/// The longest wait between failed pushes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// One push, from connecting to the end of the answer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer's body read at most (a count; more is not the control plane's answer).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How a push ended.
#[derive(Debug)]
pub enum Pushed {
    /// Acknowledged (`2xx`).
    Acked,
    /// Refused as invalid (`4xx` other than `408` and `429`): never retried.
    Rejected(u16, String),
    /// Not acknowledged: kept and retried.
    Failed(String),
}

/// What goes wrong talking to one endpoint.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("answer: {0}")]
    Body(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One `POST` of `body` to `endpoint`: the status and the start of the answer's body.
async fn post(
    tls: &Arc<rustls::ClientConfig>,
    endpoint: &Endpoint,
    body: Bytes,
) -> Result<(u16, String), PostError> {
    let exchange = async {
        let mut sender = endpoint.connect(tls).await?;
        let req = http::Request::post(format!("{}{}", endpoint.prefix, ROLLUP_PATH))
            .header(http::header::HOST, endpoint.authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let answer = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| PostError::Body(e.to_string()))?
            .to_bytes();
        Ok::<_, PostError>((status, String::from_utf8_lossy(&answer).into_owned()))
    };
    tokio::time::timeout(PUSH_TIMEOUT, exchange)
        .await
        .map_err(|_| PostError::Timeout(PUSH_TIMEOUT))?
}

/// A status that will not change by retrying the same batch.
fn rejected(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// `batch` serialised, with as many of its minutes (from the oldest) as fit in `bound`
/// bytes; `None` when not even its first minute fits (or it cannot be serialised).
fn sized(mut batch: RollupBatch, bound: usize) -> Option<(RollupBatch, Bytes)> {
    loop {
        let body = serde_json::to_vec(&batch).ok()?;
        if body.len() <= bound {
            return Some((batch, Bytes::from(body)));
        }
        if batch.minutes.len() <= 1 {
            return None;
        }
        let half = batch.minutes.len() / 2;
        batch.minutes.truncate(half);
    }
}

impl Rollups {
    /// Pushes `body` (a serialised batch) to the first endpoint that takes it (the
    /// `[rollups] url`, else the `[trust]` endpoints in order).
    pub async fn push(&self, plane: &TrustPlane, body: Bytes) -> Pushed {
        let endpoints = match self.settings.endpoints.as_slice() {
            [] => plane.endpoints.as_slice(),
            given => given,
        };
        let mut why = String::from("no endpoint");
        for endpoint in endpoints {
            match post(&plane.tls, endpoint, body.clone()).await {
                Ok((status, _)) if (200..300).contains(&status) => return Pushed::Acked,
                Ok((status, answer)) if rejected(status) => {
                    return Pushed::Rejected(status, answer)
                }
                Ok((status, _)) => why = format!("{}: status {status}", endpoint.name()),
                Err(e) => why = format!("{}: {e}", endpoint.name()),
            }
        }
        Pushed::Failed(why)
    }

    /// Pushes everything the outbox holds (re-reading the spool if it changed); `false`
    /// when a push failed (the rest waits for the next round).
    pub async fn push_all(&self, plane: &TrustPlane) -> bool {
        self.read_spool();
        let mut per_push = MAX_BATCH_MINUTES;
        while let Some(batch) = self.outbox.batch(per_push) {
            let Some((batch, body)) = sized(batch.clone(), MAX_BATCH_BYTES) else {
                tracing::error!(
                    epoch = %batch.epoch,
                    "a rollup minute is larger than a push may be; it is dropped"
                );
                let first = RollupBatch {
                    minutes: batch.minutes.into_iter().take(1).collect(),
                    ..batch
                };
                self.outbox.remove(&first, Some("too_large"));
                continue;
            };
            match self.push(plane, body).await {
                Pushed::Acked => {
                    self.pushes.with_label_values(&["ok"]).inc();
                    self.outbox.remove(&batch, None);
                    per_push = MAX_BATCH_MINUTES;
                }
                // A control plane with a smaller bound: fewer minutes per push.
                Pushed::Rejected(413, _) if batch.minutes.len() > 1 => {
                    per_push = batch.minutes.len() / 2;
                }
                Pushed::Rejected(status, answer) => {
                    self.pushes.with_label_values(&["rejected"]).inc();
                    tracing::error!(
                        status,
                        answer = %answer.chars().take(512).collect::<String>(),
                        epoch = %batch.epoch,
                        minutes = batch.minutes.len(),
                        "the control plane refused a rollup batch; its minutes are dropped"
                    );
                    self.outbox.remove(&batch, Some("rejected"));
                }
                Pushed::Failed(why) => {
                    self.pushes.with_label_values(&["failed"]).inc();
                    tracing::warn!(
                        error = %why,
                        pending = self.outbox.len(),
                        "rollup push failed; minutes kept for the next attempt"
                    );
                    return false;
                }
            }
        }
        true
    }

    /// The pushing loop until `stop` resolves: every `push_interval`, backing off after
    /// failures. `plane` is the `[trust]` plane in force (its TLS follows reloads).
    pub async fn run(
        &self,
        plane: impl Fn() -> Option<Arc<TrustPlane>>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let interval = self.settings.push_interval;
        let mut delay = interval;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let ok = match plane() {
                Some(p) => self.push_all(&p).await,
                None => true,
            };
            delay = if ok {
                interval
            } else {
                (delay * 2).min(MAX_BACKOFF.max(interval))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(m: i64, calls: usize) -> feed_wire::rollup::MinuteRollup {
        use feed_wire::rollup::{CallRow, MinuteRollup, Outcome};
        let row = CallRow {
            api_user: None,
            provider: None,
            route: "-".into(),
            outcome: Outcome::Refused,
            calls: 1,
            lines: 0,
        };
        MinuteRollup {
            minute: m,
            calls: vec![row; calls],
            latency: vec![],
            live: vec![],
            consents: vec![],
        }
    }

    #[test]
    fn a_batch_is_cut_to_the_bound_from_its_oldest_minutes() {
        let batch = RollupBatch {
            gateway: "gw".into(),
            epoch: "e".into(),
            minutes: (1..=8).map(|i| minute(60 * i, 100)).collect(),
        };
        let whole = serde_json::to_vec(&batch).expect("json").len();
        let (same, body) = sized(batch.clone(), whole).expect("fits");
        assert_eq!((same.minutes.len(), body.len()), (8, whole));
        let (cut, body) = sized(batch.clone(), whole / 3).expect("some fit");
        assert!(body.len() <= whole / 3);
        assert_eq!(cut.minutes.len(), 2, "halved until it fits: 8, 4, 2");
        assert_eq!(cut.minutes[0].minute, 60, "the oldest first");
        assert!(sized(batch, 100).is_none(), "not even one minute fits");
    }

    #[test]
    fn only_a_client_error_that_retrying_cannot_change_is_a_rejection() {
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert!(rejected(s), "{s}");
        }
        for s in [200, 408, 429, 500, 502, 503, 504] {
            assert!(!rejected(s), "{s}");
        }
    }
}
