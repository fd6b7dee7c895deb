//! Issue 11, "How it is shown": kill -9 a trust replica during a burst of revocations
//! sent to it — none it acknowledged is lost. A cluster of real processes; concurrent
//! revocations go to the first replica, which is SIGKILLed once some were acknowledged
//! (`200`) and while others are in flight. Shown, for every acknowledged revocation:
//!
//! - the other replica reads it from the database as `revoked`;
//! - both gateways refuse the consent (`403 consent_revoked`, bounded wait; a `200` once a
//!   gateway's feed position had reached the revocation fails the test).
//!
//! The kill is checked to have interrupted the burst (some revocations were not
//! answered), and a revocation that was not acknowledged may have happened or not: the
//! gateways and the registry agree on it either way.

mod cluster_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::*;
use e2e::*;

/// Consents in the burst.
const BURST: usize = 200;
/// Concurrent revokers.
const REVOKERS: usize = 6;
/// Acknowledged revocations before the kill.
const KILL_AFTER: usize = 20;

/// Each revoker takes the next consent of the burst until none is left or a request
/// fails (the replica is gone); acknowledged ones are recorded with their feed version.
async fn revoker(
    trust: Client,
    next: Arc<AtomicUsize>,
    acked: Arc<Mutex<Vec<(String, u64)>>>,
) -> Vec<String> {
    let mut unanswered = Vec::new();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed) + 1;
        if n > BURST {
            return unanswered;
        }
        let id = devhub::extra_consent_id(n);
        match revoke(&trust, &id).await {
            Ok(a) if a.status == 200 => {
                let v = revoked_version(&a);
                acked.lock().expect("acked").push((id, v));
            }
            _ => unanswered.push(id),
        }
    }
}

#[test]
fn kill_9_a_replica_during_a_burst_of_revocations_loses_none_it_acknowledged() {
    let mut r = start(BURST, |_| {});
    let rt = runtime();
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..REVOKERS)
        .map(|_| rt.spawn(revoker(r.trust_as(0, USER_A), next.clone(), acked.clone())))
        .collect();
    let end = Instant::now() + Duration::from_secs(60);
    while acked.lock().expect("acked").len() < KILL_AFTER {
        assert!(
            Instant::now() < end,
            "the burst did not start\n{}",
            r.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = r.cluster.kill_trust(0).expect("kill -9 trust-1");
    let unanswered: Vec<String> = tasks
        .into_iter()
        .flat_map(|t| rt.block_on(t).expect("revoker"))
        .collect();
    let acked = acked.lock().expect("acked").clone();
    assert!(
        !unanswered.is_empty(),
        "the kill of trust-1 (pid {killed}) came after the whole burst ({} acknowledged)",
        acked.len()
    );
    eprintln!(
        "{} revocations acknowledged before trust-1 died, {} not answered",
        acked.len(),
        unanswered.len()
    );
    rt.block_on(async {
        let survivor = r.trust_as(1, USER_A);
        for (id, _) in &acked {
            assert_eq!(status_at(&survivor, id).await, "revoked", "{id}");
        }
        for i in 0..r.gateways() {
            for (id, version) in &acked {
                assert_refused(&r, i, id, *version, Duration::from_secs(10)).await;
            }
        }
        // Not acknowledged: the registry decides, the gateways follow it.
        for id in unanswered.iter().take(10) {
            let status = status_at(&survivor, id).await;
            for i in 0..r.gateways() {
                let want = if status == "revoked" {
                    REVOKED
                } else {
                    (200, "")
                };
                until_answer(&r, i, id, want).await;
            }
        }
    });
    assert_eq!(r.cluster.check(), Vec::<String>::new(), "nothing else died");
}

/// Polls gateway `i` on consent `id` until it answers `want` (bounded).
async fn until_answer(r: &Running, i: usize, id: &str, want: (u16, &str)) {
    let (client, path, token) = (r.gateway_for(i, id), r.accounts_path(id), r.token(id));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = answer(&client, &path, &token).await.expect("transport");
        if (got.0, got.1.as_str()) == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "gateway {i} answers {got:?} for {id}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
