//! The trust feed follower (`[trust]` mode): loads `GET /v1/snapshot` from a trust
//! sidecar into a fresh `ConsentStore` and participant
//! [`Registry`](crate::network::Registry), then follows
//! `GET /v1/feed?since=…` (NDJSON) and applies consent changes to that store, which the
//! request path reads through `Snapshot::consents`, and participant changes to the
//! registry, from which the state rebuilds the participant directory and provider pools
//! (`Snapshot::network`, see `network` for how the registry and the file combine) before
//! the follower reads further: a participant suspended in the sidecar is refused from
//! the request after the change arrives. It tracks when a sidecar was last heard from,
//! for contract §6 row 7 (`503 consent_state_stale`), and the feed position (store id,
//! epoch, version), so a disconnect resumes with no gap and no duplicate. A gap, a
//! `resync` line, a `410`, a heartbeat of another store or epoch, or a change the store
//! cannot apply reloads the snapshot (the previous store keeps serving meanwhile).
//!
//! `[trust] urls` names several sidecars serving one database: the follower uses one at
//! a time, and when it fails — refused, timed out, an HTTP error other than `410`, the
//! stream ended, or stalled (no line for twice `heartbeat_secs`) — moves to the next
//! (round robin) and resumes there from its position, without reloading the snapshot;
//! it waits before retrying only once a whole round has failed (`endpoints`;
//! `docs/trust-failover.md`).
//!
//! The rules live in `protocol`, a pure state machine, and `endpoints` (rotation and
//! stall bound, pure too); this module is the loop around them: connect (`client`), hand
//! the machine the lines, carry out what it answers through the state's seams, move on
//! or wait before retrying.
//!
//! Authentication: the hub's `[upstream_tls]` client certificate; the sidecars' server
//! certificates are verified against `[trust] ca`.
//!
//! With `[trust] jwks = true` the same service also keeps the token keys (`jwks`).
//!
//! A participant line that does not decode (an unknown role or status, say) but names a
//! BIN is applied as "undecodable": that participant is kept inactive (fail closed) and
//! the feed goes on. A line that does not even name a BIN ends the connection like any
//! other unreadable line.

mod client;
mod endpoints;
mod jwks;
#[cfg(test)]
mod proptests;
mod protocol;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

pub use crate::plane::{FeedStatus, TrustPlane};
use crate::state::State;
use client::{ClientError, Lines};
use endpoints::{Rotation, Stall};
use protocol::{Ended, Install, Protocol, Request, Step};

/// First wait after a round of failed connections; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between rounds of connection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// A snapshot body may pause this long between lines (it sends no heartbeats), or the
/// feed's stall bound when that is longer.
const MIN_SNAPSHOT_IDLE: Duration = Duration::from_secs(15);

/// The pingora background service that runs the follower until shutdown.
pub struct Follower {
    state: Arc<State>,
}

impl Follower {
    /// Follows the sidecars of the state's `[trust]` configuration.
    pub fn new(state: Arc<State>) -> Follower {
        Follower { state }
    }
}

#[async_trait]
impl BackgroundService for Follower {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = async {
                tokio::join!(follow(self.state.clone()), jwks::keep_keys(self.state.clone()))
            } => {}
        }
    }
}

/// How one connection to a sidecar ended.
enum Outcome {
    /// A snapshot was loaded and is in force: follow the feed at once.
    Installed,
    /// The protocol ended it.
    Ended(Ended),
    /// The transport failed.
    Failed(ClientError),
}

/// The wait between rounds of connection attempts: doubles while they fail, resets once
/// the feed delivers.
struct Backoff(Duration);

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

/// Follows the sidecars while `[trust]` is configured.
async fn follow(state: Arc<State>) {
    let mut machine = Protocol::new();
    let mut rotation = Rotation::new(1);
    let mut backoff = Backoff(MIN_BACKOFF);
    while let Some(plane) = state.trust_plane() {
        rotation.resize(plane.endpoints.len());
        let index = rotation.current();
        let Some(endpoint) = plane.endpoints.get(index) else {
            // A plane always has an endpoint; should one have none, do not spin.
            backoff.wait().await;
            continue;
        };
        plane.status.follow_endpoint(index, &endpoint.name(), false);
        let request = machine.connect();
        let outcome = connection(&state, &plane, index, &mut machine, &request).await;
        if machine.heard_on_connection() || matches!(outcome, Outcome::Installed) {
            backoff = Backoff(MIN_BACKOFF);
            rotation.heard();
        }
        let failure = match outcome {
            Outcome::Installed => continue,
            Outcome::Ended(Ended::Reload(why)) => {
                tracing::warn!(reason = %why, endpoint = %endpoint.name(), "consent feed: reloading the snapshot");
                if !machine.heard_on_connection() {
                    // E.g. a 410 right after a fresh snapshot: do not spin.
                    backoff.wait().await;
                }
                continue;
            }
            Outcome::Ended(Ended::Reconnect(fault)) => ClientError::from(fault),
            Outcome::Failed(e) => e,
        };
        plane.status.count_reconnect();
        let next = move_on(
            &plane,
            &mut rotation,
            machine.position().map(|p| p.version),
            &failure,
        );
        if next.back_off {
            backoff.wait().await;
        }
    }
    tracing::warn!("no [trust] section any more: the consent feed follower stops");
}

/// The endpoint in use failed: logs it, moves the rotation on and reports a switch.
fn move_on(
    plane: &TrustPlane,
    rotation: &mut Rotation,
    position: Option<u64>,
    failure: &ClientError,
) -> endpoints::Advance {
    let failed = rotation.current();
    let name = |i: usize| plane.endpoints.get(i).map(|e| e.name()).unwrap_or_default();
    let next = rotation.failed();
    match position {
        None => {
            tracing::warn!(error = %failure, endpoint = %name(failed), "consent snapshot load failed; retrying")
        }
        Some(version) => {
            tracing::info!(error = %failure, endpoint = %name(failed), version, "consent feed disconnected; resuming")
        }
    }
    if next.switched {
        plane
            .status
            .follow_endpoint(next.next, &name(next.next), true);
        tracing::warn!(
            from = %name(failed),
            to = %name(next.next),
            index = next.next,
            switches = plane.status.endpoint_switches(),
            "trust endpoint switched"
        );
    }
    next
}

/// One request to endpoint `index`, read until the protocol or the transport ends it.
async fn connection(
    state: &Arc<State>,
    plane: &TrustPlane,
    index: usize,
    machine: &mut Protocol,
    request: &Request,
) -> Outcome {
    let Some(endpoint) = plane.endpoints.get(index) else {
        return Outcome::Failed(ClientError::Timeout);
    };
    // The sender keeps the connection open while the body is read.
    let (_sender, resp) = match client::get(plane, endpoint, &request.path()).await {
        Ok(r) => r,
        Err(e) => {
            machine.on_disconnect();
            return Outcome::Failed(e);
        }
    };
    if let Err(end) = machine.on_response(resp.status().as_u16()) {
        return Outcome::Ended(end);
    }
    let stall = Stall::bound_for(plane.heartbeat);
    let bound = match request {
        Request::Snapshot => stall.max(MIN_SNAPSHOT_IDLE),
        Request::Feed(_) => stall,
    };
    let mut lines = Lines::new(resp.into_body(), bound);
    loop {
        match read_pass(machine, &mut lines) {
            Step::Install(install) => {
                put_in_force(state, &plane.status, install).await;
                return Outcome::Installed;
            }
            Step::Ended(end) => return Outcome::Ended(end),
            Step::Read | Step::EndPass => {}
        }
        if let Some(end) = apply_pass(state, &plane.status, machine).await {
            return Outcome::Ended(end);
        }
        match lines.fill().await {
            Ok(true) => {}
            Ok(false) => return Outcome::Ended(machine.on_stream_end()),
            Err(e) => {
                machine.on_disconnect();
                return Outcome::Failed(e);
            }
        }
    }
}

/// Hands the machine the lines already received, until it or the buffer says stop.
fn read_pass(machine: &mut Protocol, lines: &mut Lines) -> Step {
    loop {
        let step = match lines.buffered() {
            Ok(Some((n, line))) => machine.on_line(n, line),
            Ok(None) => return Step::EndPass,
            Err(fault) => machine.on_fault(fault),
        };
        if !matches!(step, Step::Read) {
            return step;
        }
    }
}

/// Applies what the pass read: consent changes, then the registry; then the position
/// and, when the machine says so, freshness. `Some` when the connection is over.
async fn apply_pass(
    state: &Arc<State>,
    status: &FeedStatus,
    machine: &mut Protocol,
) -> Option<Ended> {
    let pass = machine.end_pass();
    status.count_participant_changes(pass.participant_changes);
    let applied = if pass.changes.is_empty() {
        Ok(())
    } else {
        state.apply_consent_changes(pass.changes).map(drop)
    };
    if let Some(registry) = pass.registry {
        state.publish_registry(registry).await;
    }
    let commit = machine.commit(applied);
    if let Some(version) = commit.version {
        status.set_version(version);
    }
    if commit.fresh {
        status.heard();
    }
    commit.ended
}

/// Puts a loaded snapshot in force: registry, consents, then position and freshness.
async fn put_in_force(state: &Arc<State>, status: &FeedStatus, install: Install) {
    let (version, consents) = (install.version, install.store.len());
    let participants = install.registry.len();
    state.publish_registry(install.registry).await;
    state.replace_consents(install.store);
    status.snapshot_installed(version);
    // With the registry in force, the summary counts what the hub now serves (the one at
    // start-up could count only the file's entries).
    tracing::info!(
        version,
        consents,
        participants,
        summary = %state.snapshot().summary(),
        "snapshot loaded from the trust sidecar"
    );
}
