//! The token keys (`[trust] jwks = true`): fetches `{url}/.well-known/jwks.json` at
//! start, every `jwks_refresh_secs`, and when a token names an unknown `kid` (one fetch
//! at a time, at most one a second), and hands each document to `State::publish_jwks`,
//! which keeps the last good keys when a set is unusable. With several endpoints the
//! document comes from the first that answers, trying the one the feed follows first.

use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

use super::client::{self, ClientError};
use super::endpoints::Rotation;
use super::protocol::Fault;
use crate::plane::{Endpoint, TrustPlane};
use crate::state::State;

/// Retry of a failed JWKS fetch (the keys change rarely; an unknown `kid` asks at once).
const JWKS_RETRY: Duration = Duration::from_secs(2);
/// Least time between two JWKS fetches (an unknown `kid` is chosen by the caller).
const MIN_JWKS_INTERVAL: Duration = Duration::from_secs(1);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Keeps the token verifier's keys in step with the sidecar's JWKS.
pub(super) async fn keep_keys(state: Arc<State>) {
    loop {
        let Some(plane) = state.trust_plane() else {
            return;
        };
        if !plane.jwks {
            // Turned on by a later reload, perhaps.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let (status, refresh) = (plane.status.clone(), plane.jwks_refresh);
        let wait = match fetch_jwks(&plane).await {
            Ok(bytes) => {
                state.publish_jwks(bytes).await;
                refresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS fetch from the trust sidecar failed; keeping the last good keys");
                refresh.min(JWKS_RETRY)
            }
        };
        drop(plane);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = status.jwks_wanted().notified() => {}
        }
        tokio::time::sleep(MIN_JWKS_INTERVAL).await;
    }
}

/// The JWKS from the first endpoint that answers, starting with the one the feed
/// follows; the last error when none does.
async fn fetch_jwks(plane: &TrustPlane) -> Result<Vec<u8>, ClientError> {
    let (following, _) = plane.status.endpoint();
    let mut last = ClientError::Timeout;
    for i in Rotation::order_from(following, plane.endpoints.len()) {
        let Some(endpoint) = plane.endpoints.get(i) else {
            continue;
        };
        match fetch_from(plane, endpoint).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) => {
                tracing::debug!(error = %e, endpoint = %endpoint.name(), "JWKS fetch failed; trying the next endpoint");
                last = e;
            }
        }
    }
    Err(last)
}

async fn fetch_from(plane: &TrustPlane, endpoint: &Endpoint) -> Result<Vec<u8>, ClientError> {
    let (_sender, resp) = client::get(plane, endpoint, "/.well-known/jwks.json").await?;
    if resp.status() != http::StatusCode::OK {
        return Err(Fault::Status(resp.status().as_u16()).into());
    }
    let mut body = resp.into_body();
    let mut out = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if out.len() + data.len() > MAX_JWKS_BYTES {
                    return Err(Fault::Parse(1, "JWKS too large".into()).into());
                }
                out.extend_from_slice(&data);
            }
        }
        Ok::<_, ClientError>(())
    };
    tokio::time::timeout(client::CONNECT_TIMEOUT, read)
        .await
        .map_err(|_| ClientError::Timeout)??;
    Ok(out)
}
