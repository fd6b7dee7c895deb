//! Issue 11, "How it is shown": kill -9 one trust replica under load. A cluster of real
//! processes (PostgreSQL, two trust replicas, two gateways following both, the banks);
//! a steady stream of consent-route requests through both gateways and a stream of
//! revocations through the second replica; the first replica — the one both gateways
//! follow, being first in `[trust] urls` — is SIGKILLed in the middle. Shown:
//!
//! - zero failed requests through the gateways: every request on a consent that stays
//!   authorised is answered `200` (no transport error, no `503 consent_state_stale`);
//! - every revocation the surviving replica acknowledged is refused by every gateway
//!   (`403 consent_revoked`, bounded wait; a `200` once a gateway's feed position had
//!   reached the revocation fails the test);
//! - the gateways resumed on the survivor without reloading the snapshot;
//! - nothing else in the cluster died.

mod cluster_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_support::*;
use e2e::*;

/// Extra consents, revoked one after another during the test.
const REVOCATIONS: usize = 40;

/// What the load saw.
#[derive(Default)]
struct Seen {
    ok: usize,
    failures: Vec<String>,
}

/// One stream of requests: a consent through one gateway.
struct Stream {
    gateway: usize,
    consent: &'static str,
    client: Client,
    path: String,
    token: String,
}

impl Stream {
    fn new(r: &Running, gateway: usize, consent: &'static str) -> Stream {
        Stream {
            gateway,
            consent,
            client: r.gateway_for(gateway, consent),
            path: r.accounts_path(consent),
            token: r.token(consent),
        }
    }

    /// Requests, a fresh connection each, until `stop`.
    async fn run(self, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
        while !stop.load(Ordering::Relaxed) {
            let got = answer(&self.client, &self.path, &self.token).await;
            let mut s = seen.lock().expect("seen");
            match got {
                Ok((200, _)) => s.ok += 1,
                other => s.failures.push(format!(
                    "gateway {} {}: {other:?}",
                    self.gateway, self.consent
                )),
            }
        }
    }
}

/// Revokes the extra consents one by one through `trust`, every 100 ms: the
/// acknowledged ones with their feed versions.
async fn revocations(trust: Client) -> Vec<(String, u64)> {
    let mut acked = Vec::new();
    for n in 1..=REVOCATIONS {
        let id = devhub::extra_consent_id(n);
        let answer = revoke(&trust, &id)
            .await
            .expect("the surviving replica answers");
        acked.push((id, revoked_version(&answer)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acked
}

#[test]
fn kill_9_one_trust_replica_under_load_no_request_fails_and_revocations_are_enforced() {
    let mut r = start(REVOCATIONS, |_| {});
    let rt = runtime();
    let resyncs_before: Vec<f64> = (0..2).map(|i| rt.block_on(r.resyncs(i))).collect();
    let (stop, seen) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Seen::default())),
    );
    let loads: Vec<_> = [(0, SERVED), (1, SERVED), (0, SERVED_2), (1, SERVED_2)]
        .into_iter()
        .map(|(i, c)| rt.spawn(Stream::new(&r, i, c).run(stop.clone(), seen.clone())))
        .collect();
    let revoker = rt.spawn(revocations(r.trust_as(1, USER_A)));

    std::thread::sleep(Duration::from_secs(2));
    let before_kill = seen.lock().expect("seen").ok;
    let killed = r.cluster.kill_trust(0).expect("kill -9 trust-1");
    let acked = rt.block_on(revoker).expect("revocations");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        rt.block_on(l).expect("load");
    }

    let seen = seen.lock().expect("seen");
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed after trust-1 (pid {killed}) was killed:\n{}\n{}",
        seen.failures.len(),
        seen.ok + seen.failures.len(),
        seen.failures.join("\n"),
        r.logs()
    );
    assert!(
        before_kill > 0 && seen.ok > before_kill,
        "requests flowed before and after the kill ({before_kill} then {})",
        seen.ok
    );
    assert_eq!(acked.len(), REVOCATIONS);
    eprintln!(
        "{} requests answered 200 through the gateways ({before_kill} before the kill), \
         {} revocations acknowledged by trust-2",
        seen.ok,
        acked.len()
    );
    rt.block_on(async {
        for (i, before) in resyncs_before.iter().enumerate() {
            for (id, version) in &acked {
                assert_refused(&r, i, id, *version, Duration::from_secs(10)).await;
            }
            let after = r.resyncs(i).await;
            assert_eq!(
                after, *before,
                "gateway {i} resumed on the survivor without a snapshot reload"
            );
        }
    });
    assert_eq!(r.cluster.check(), Vec::<String>::new(), "nothing else died");
}
