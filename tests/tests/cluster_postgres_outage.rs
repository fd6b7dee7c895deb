//! Issue 11, "How it is shown": stop PostgreSQL — the gateways keep serving from their
//! caches until the bound, then fail closed, and recover without manual action when it
//! returns. A cluster of real processes with `max_staleness_secs = 3` and 1 s feed
//! heartbeats; PostgreSQL is stopped (`pg_ctl stop -m fast`). The trust replicas send
//! heartbeats only while they have read their database within the heartbeat interval
//! (`trust/src/feed.rs`), so the gateways stop hearing from them. Shown:
//!
//! - right after the stop, consent routes still answer `200` through both gateways (the
//!   cache is within the bound), and only `200` until the first `503`;
//! - then `503 consent_state_stale` through both gateways (fail closed), not before a
//!   second has passed;
//! - PostgreSQL started again (same port and data), both gateways answer `200` again
//!   with nothing restarted, and a revocation made after the outage is enforced by both;
//! - no trust replica or gateway died.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::*;
use devhub::cluster::StopMode;
use e2e::*;

/// `[trust] max_staleness_secs` in this test.
const BOUND_SECS: u64 = 3;
/// A consent route served.
const OK: (u16, &str) = (200, "");

/// Polls gateway `i` with the served consent until it answers `want`; every other
/// answer before it must be one of `meanwhile`. Returns when it was first seen.
async fn until(
    r: &Running,
    i: usize,
    want: (u16, &str),
    meanwhile: &[(u16, &str)],
    bound: Duration,
) -> Instant {
    let (client, path, token) = (
        r.gateway_for(i, SERVED),
        r.accounts_path(SERVED),
        r.token(SERVED),
    );
    let end = Instant::now() + bound;
    loop {
        let got = answer(&client, &path, &token).await.expect("transport");
        let got = (got.0, got.1.as_str());
        if got == want {
            return Instant::now();
        }
        assert!(
            meanwhile.contains(&got),
            "gateway {i} answered {got:?} while waiting for {want:?}\n{}",
            r.logs()
        );
        assert!(
            Instant::now() < end,
            "gateway {i} did not answer {want:?} within {bound:?}\n{}",
            r.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Right after the stop: `200` through every gateway; then, after at least a second,
/// `503 consent_state_stale`, with only `200` before it.
async fn serves_then_fails_closed(r: &Running, stopped: Instant) {
    for i in 0..r.gateways() {
        let (client, path, token) = (
            r.gateway_for(i, SERVED),
            r.accounts_path(SERVED),
            r.token(SERVED),
        );
        let got = answer(&client, &path, &token).await.expect("transport");
        assert_eq!(
            got.0, 200,
            "gateway {i} serves from its cache right after the stop: {got:?}"
        );
    }
    for i in 0..r.gateways() {
        let stale_at = until(r, i, STALE, &[OK], Duration::from_secs(30)).await;
        let served_for = stale_at - stopped;
        assert!(
            served_for >= Duration::from_secs(1),
            "gateway {i} failed closed {served_for:?} after the stop, before its cache's bound"
        );
        eprintln!("gateway {i}: stale {served_for:?} after PostgreSQL stopped");
    }
}

/// PostgreSQL is back: `200` through every gateway again (only `503` before it), and a
/// revocation made now is enforced by every gateway.
async fn recovers(r: &Running) {
    for i in 0..r.gateways() {
        until(r, i, OK, &[STALE], Duration::from_secs(60)).await;
    }
    let id = devhub::extra_consent_id(1);
    let version = revoke_retrying(r, &r.trust_as(0, USER_A), &id, Duration::from_secs(30)).await;
    for i in 0..r.gateways() {
        assert_refused(r, i, &id, version, Duration::from_secs(10)).await;
    }
}

#[test]
fn postgres_stopped_gateways_serve_from_cache_then_fail_closed_then_recover() {
    let mut r = start(1, |o| o.max_staleness_secs = Some(BOUND_SECS));
    let rt = runtime();
    for i in 0..r.gateways() {
        rt.block_on(until(&r, i, OK, &[], Duration::from_secs(10)));
    }
    r.cluster
        .stop_postgres(StopMode::Fast)
        .expect("pg_ctl stop -m fast");
    let stopped = Instant::now();
    rt.block_on(serves_then_fails_closed(&r, stopped));
    r.cluster.start_postgres().expect("PostgreSQL again");
    rt.block_on(recovers(&r));
    assert_eq!(r.cluster.check(), Vec::<String>::new(), "no piece died");
}
