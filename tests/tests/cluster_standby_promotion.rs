//! Issue 11, "How it is shown": a promoted standby — every acknowledged revocation is
//! present, and the gateways past the fork resync. A cluster of real processes whose
//! PostgreSQL has a synchronous standby (`synchronous_standby_names = '*'`); the trust
//! replicas reach the database through a multi-host URL with
//! `target_session_attrs=read-write` (no restart at the fail-over). Revocations are
//! acknowledged through both replicas; the primary is killed (`pg_ctl stop -m
//! immediate`) and the standby promoted; more revocations follow on the new primary.
//! Shown:
//!
//! - every revocation acknowledged before the fail-over is on the promoted server (read
//!   through a replica), and every one, before and after, is refused by both gateways;
//! - the database recorded a new epoch, and each gateway reloaded its snapshot
//!   (`hub_consent_feed_resyncs_total` grew: a `410 epoch_changed` or a heartbeat of the
//!   new epoch made it resync);
//! - no trust replica or gateway died.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::*;
use e2e::*;

/// Revocations before, and after, the fail-over.
const EACH: usize = 10;

/// Revokes extra consents `from..from + EACH` alternately through both replicas,
/// retrying (bounded) while the database is not reachable yet.
async fn revoke_some(r: &Running, from: usize) -> Vec<(String, u64)> {
    let mut acked = Vec::new();
    for n in from..from + EACH {
        let id = devhub::extra_consent_id(n);
        let trust = r.trust_as(n % 2, USER_A);
        let version = revoke_retrying(r, &trust, &id, Duration::from_secs(60)).await;
        acked.push((id, version));
    }
    acked
}

/// Every gateway refuses every revocation in `acked`.
async fn all_refused(r: &Running, acked: &[(String, u64)]) {
    for i in 0..r.gateways() {
        for (id, v) in acked {
            assert_refused(r, i, id, *v, Duration::from_secs(30)).await;
        }
    }
}

/// Waits (bounded) until every gateway reloaded its snapshot since `before` (told by a
/// heartbeat of the new epoch, or a `410` when it reconnects).
async fn resynced(r: &Running, before: &[f64]) {
    for (i, before_fork) in before.iter().enumerate() {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let now = r.resyncs(i).await;
            if now > *before_fork {
                break;
            }
            assert!(
                Instant::now() < end,
                "gateway {i} did not reload its snapshot past the fork ({before_fork} → {now})\n{}",
                r.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The gateways' log lines about snapshots and epochs (the test's evidence).
fn show_resyncs(r: &Running) {
    for name in ["gateway-1", "gateway-2"] {
        let log = r.cluster.log_of(name);
        let told: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("epoch") || l.contains("snapshot"))
            .collect();
        eprintln!("{name}:\n{}", told.join("\n"));
    }
}

#[test]
fn a_promoted_standby_has_every_acknowledged_revocation_and_gateways_resync() {
    let mut r = start(2 * EACH, |o| o.standby = true);
    assert!(
        r.cluster.pids().postgres_standby.is_some(),
        "a standby runs"
    );
    let rt = runtime();
    let before = rt.block_on(revoke_some(&r, 1));
    rt.block_on(all_refused(&r, &before));
    let resyncs: Vec<f64> = (0..r.gateways())
        .map(|i| rt.block_on(r.resyncs(i)))
        .collect();

    r.cluster
        .fail_over()
        .expect("primary killed, standby promoted");
    let after = rt.block_on(revoke_some(&r, 1 + EACH));
    // The first replica to ask for the epoch on the promoted server records it.
    let epochs = poll_until(Duration::from_secs(30), || {
        let n = r
            .cluster
            .psql("SELECT COUNT(*) FROM epochs")
            .expect("epochs");
        (n == "2").then_some(n)
    });
    assert!(
        epochs.is_some(),
        "the promotion started a new epoch\n{}",
        r.logs()
    );
    rt.block_on(async {
        let survivor = r.trust_as(0, USER_A);
        for (id, _) in &before {
            assert_eq!(status_at(&survivor, id).await, "revoked", "{id}");
        }
        all_refused(&r, &[before.clone(), after].concat()).await;
        resynced(&r, &resyncs).await;
    });
    show_resyncs(&r);
    assert_eq!(r.cluster.check(), Vec::<String>::new(), "no piece died");
}
