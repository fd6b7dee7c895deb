//! Traffic rollups (issue 14 point 3): a gateway in `[trust]` mode counts every request
//! of its audit journal per minute and pushes the rollups to a real HTTPS receiver over
//! its mTLS identity. Traffic of every outcome (success, the provider's 4xx and 5xx, a
//! timeout, an unreachable provider, an answer that is not HTTP, refusals, row 15's
//! unpublished provider); the control plane is down when the gateway stops, so the
//! minutes go to the spool; the next process (a new epoch) pushes the spool, retried
//! after a failure with the same key and rows; and what was stored equals, minute by
//! minute, a recount of the journal alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::receiver::{rollup_rig, RollupRig};
use e2e::*;
use feed_wire::rollup::{Histogram, RollupBatch};
use sandbox::bank::Behaviour;
use serde_json::Value;

/// A provider whose only base URL is a closed port (row 18: `unreachable`).
const CLOSED: &str = "990340000055";
/// An unpublished provider (row 15: `refused`).
const UNPUBLISHED: &str = "990340000066";
/// Bank 2's SLA.
const SLA_MS: u64 = 300;
const GATEWAY: &str = "gw-e2e";

/// Sends one request of each kind and checks the answer the API user got.
async fn traffic(hub: &Hub) {
    let user = hub.client_as(USER_B);
    let data = |p: &str| open_data_path(p, "exchange-rates");
    for _ in 0..2 {
        user.get(&data(BANK_1), None).await.ok_json();
    }
    user.get(&accounts_path(BANK_1), None)
        .await
        .assert_problem(401, "invalid_token");
    user.get(&data(UNPUBLISHED), None)
        .await
        .assert_problem(503, "provider_unavailable");
    user.get(&data(CLOSED), None)
        .await
        .assert_problem(503, "provider_unavailable");
    let bank2 = hub.bank(BANK_2);
    for (behaviour, status) in [(Behaviour::Status(500), 500), (Behaviour::Status(404), 404)] {
        bank2.set_behaviour(behaviour);
        assert_eq!(user.get(&data(BANK_2), None).await.status, status);
    }
    bank2.set_behaviour(Behaviour::Hang);
    user.get(&data(BANK_2), None)
        .await
        .assert_problem(504, "provider_timeout");
    bank2.set_behaviour(Behaviour::Garbage);
    user.get(&data(BANK_2), None)
        .await
        .assert_problem(502, "provider_bad_response");
    bank2.set_behaviour(Behaviour::Normal);
}

type CallKey = (i64, Option<String>, Option<String>, String, String);
type LatencyKey = (i64, String, String);

/// Calls and histograms recounted from journal lines alone.
fn recount(
    lines: &[Value],
) -> (
    BTreeMap<CallKey, u64>,
    BTreeMap<LatencyKey, (Histogram, Histogram)>,
) {
    let (mut calls, mut latency) = (BTreeMap::new(), BTreeMap::new());
    for l in lines {
        let minute = journal_minute(l);
        let s = |k: &str| l[k].as_str().map(str::to_string);
        let outcome = s("outcome").expect("outcome");
        let route = s("route").expect("route");
        *calls
            .entry((
                minute,
                s("api_user"),
                s("provider"),
                route.clone(),
                outcome.clone(),
            ))
            .or_insert(0) += 1;
        if let (Some(provider), true) = (s("provider"), outcome != "refused") {
            let (bank_us, total) = (
                l["bank_us"].as_u64().expect("bank_us"),
                l["latency_us"].as_u64().expect("latency"),
            );
            let (b, h) = latency
                .entry((minute, provider, route))
                .or_insert_with(|| (Histogram::new(), Histogram::new()));
            b.record(bank_us);
            h.record(total.saturating_sub(bank_us));
        }
    }
    (calls, latency)
}

/// The same sums from stored minutes (all epochs together).
fn summed(
    stored: &[(i64, &feed_wire::rollup::MinuteRollup)],
) -> (
    BTreeMap<CallKey, u64>,
    BTreeMap<LatencyKey, (Histogram, Histogram)>,
) {
    let (mut calls, mut latency) = (BTreeMap::new(), BTreeMap::new());
    for (minute, m) in stored {
        for c in &m.calls {
            let key = (
                *minute,
                c.api_user.map(|b| b.to_string()),
                c.provider.map(|b| b.to_string()),
                c.route.clone(),
                c.outcome.as_str().to_string(),
            );
            *calls.entry(key).or_insert(0) += c.calls;
        }
        for r in &m.latency {
            let (b, h) = latency
                .entry((*minute, r.provider.to_string(), r.route.clone()))
                .or_insert_with(|| (Histogram::new(), Histogram::new()));
            b.merge(&r.bank);
            h.merge(&r.hub);
        }
    }
    (calls, latency)
}

fn spool_of(audit: &Path) -> PathBuf {
    let mut p = audit.as_os_str().to_owned();
    p.push(".rollups");
    PathBuf::from(p)
}

fn read_spool(path: &Path) -> Vec<RollupBatch> {
    std::fs::read_to_string(path)
        .expect("spool")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a batch"))
        .collect()
}

/// The process has exited (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

fn terminate(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// A hub process this test started; killed if the test ends before it stopped it.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the hub again on the same configuration (the same journal and spool).
fn restart(hub: &Hub, rt: &tokio::runtime::Runtime) -> Started {
    let stderr = std::fs::File::create(hub.dir.join("hub2.stderr")).expect("stderr");
    let child = Command::new(hub_exe!())
        .args(["run", "--config"])
        .arg(&hub.config_path)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("second hub");
    let child = Started(child);
    let ready = poll_until(Duration::from_secs(20), || {
        matches!(
            rt.block_on(e2e::http::admin_request(hub.admin, "GET", "/readyz")),
            Ok((200, _))
        )
        .then_some(())
    });
    assert!(
        ready.is_some(),
        "the second hub was not ready: {}",
        std::fs::read_to_string(hub.dir.join("hub2.stderr")).unwrap_or_default()
    );
    child
}

/// A hub in `[trust]` mode with `[rollups]` pushing to a receiver, with providers of
/// every outcome.
fn rig() -> RollupRig {
    rollup_rig(hub_exe!(), GATEWAY, |setup, _, _| {
        setup.unlimited();
        setup.provider_mut(BANK_2).timeout_ms = SLA_MS;
        let closed = format!("https://127.0.0.1:{}", closed_port());
        setup.add_provider(CLOSED, &closed, true);
        setup.add_provider(UNPUBLISHED, &closed, false);
    })
}

/// Stops the rig's first hub process with SIGTERM and waits until it has exited.
fn stop_first(hub: &Hub) {
    let first = hub.pid();
    terminate(first);
    assert!(
        poll_until(Duration::from_secs(20), || exited(first).then_some(())).is_some(),
        "the hub did not stop"
    );
}

/// A batch the control plane refuses as invalid (`4xx`) is not retried: dropped, logged,
/// and not spooled either.
#[test]
fn a_rejected_batch_is_not_retried_nor_spooled() {
    let RollupRig {
        rt,
        peers: _peers,
        hub,
        receiver,
    } = rig();
    receiver.set_rejecting(true);
    rt.block_on(async {
        hub.client_as(USER_B)
            .get(&open_data_path(BANK_1, "exchange-rates"), None)
            .await
            .ok_json();
    });
    stop_first(&hub);
    let pushes = receiver.pushes();
    assert_eq!(pushes.len(), 1, "one attempt, never retried");
    assert_eq!(pushes[0].status, 422);
    assert!(
        !spool_of(&hub.audit_path).exists(),
        "a rejected batch is not spooled"
    );
    let log = hub.stderr_text();
    assert!(log.contains("refused a rollup batch"), "{log}");
}

#[test]
fn rollups_reconcile_with_the_journal_across_an_outage_and_a_restart() {
    let RollupRig {
        rt,
        peers: _peers,
        mut hub,
        receiver,
    } = rig();
    let hub_cert = rustls_pemfile::certs(&mut hub.pki.hub_client().cert_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("pem")
        .as_ref()
        .to_vec();

    // The control plane is down while the first process serves and stops.
    receiver.set_failing(true);
    rt.block_on(traffic(&hub));
    stop_first(&hub);
    let lines = journal_requests(&hub.audit_path);
    let outcomes: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["code"].as_str().unwrap_or("").into(),
                l["outcome"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    for expected in [
        ("ok", "success"),
        ("ok", "server_error"),
        ("ok", "client_error"),
        ("invalid_token", "refused"),
        ("provider_unavailable", "refused"),
        ("provider_unavailable", "unreachable"),
        ("provider_timeout", "timeout"),
        ("provider_bad_response", "bad_response"),
    ] {
        let found = outcomes
            .iter()
            .any(|(c, o)| (c.as_str(), o.as_str()) == expected);
        assert!(found, "no journal line {expected:?} in {outcomes:?}");
    }
    // The bank's time runs from the call to the last byte: at least the time to the
    // answer's head, at most the whole request.
    for l in lines.iter().filter(|l| l["upstream_status"] != 0) {
        let (bank, head, total) = (&l["bank_us"], &l["upstream_latency_us"], &l["latency_us"]);
        let (bank, head, total) = (bank.as_u64(), head.as_u64(), total.as_u64());
        assert!(head <= bank && bank <= total && bank > Some(0), "{l}");
    }
    let failed = receiver.pushes();
    assert!(!failed.is_empty(), "the last push was not even tried");
    assert!(failed
        .iter()
        .all(|p| p.status == 503 && p.client_cert == hub_cert));
    let spool = read_spool(&spool_of(&hub.audit_path));
    assert_eq!(spool.len(), 1, "one process's minutes");
    let epoch1 = spool[0].epoch.clone();
    assert_eq!(spool[0].gateway, GATEWAY);
    let last_try = failed
        .last()
        .and_then(|p| p.batch.clone())
        .expect("a batch");
    assert_eq!(
        last_try, spool[0],
        "the spool holds what the last push carried"
    );
    let spooled: Vec<_> = spool[0].minutes.iter().map(|m| (m.minute, m)).collect();
    assert_eq!(
        summed(&spooled),
        recount(&lines),
        "the spool equals the journal's recount"
    );

    // The next process: a new epoch; it pushes the spool, once refused, then retried.
    receiver.set_failing(false);
    receiver.fail_next(1);
    let mut second = restart(&hub, &rt);
    let stored_spool = poll_until(Duration::from_secs(20), || {
        let stored = receiver.stored();
        spool[0]
            .minutes
            .iter()
            .all(|m| stored.contains_key(&(GATEWAY.to_string(), epoch1.clone(), m.minute)))
            .then_some(())
    });
    assert!(
        stored_spool.is_some(),
        "the spool was not pushed after the restart"
    );
    let after: Vec<_> = receiver.pushes().into_iter().skip(failed.len()).collect();
    assert_eq!(after[0].status, 503);
    let retried: Vec<_> = after
        .iter()
        .filter(|p| p.batch.as_ref().is_some_and(|b| b.epoch == epoch1))
        .collect();
    assert!(retried.len() >= 2, "{retried:?}");
    for p in &retried {
        assert_eq!(
            p.batch.as_ref(),
            Some(&spool[0]),
            "a retry carries the same key and rows"
        );
    }
    rt.block_on(async {
        hub.client_as(USER_B)
            .get(&open_data_path(BANK_1, "exchange-rates"), None)
            .await
            .ok_json();
    });
    terminate(second.0.id());
    let status = second.0.wait().expect("second hub exits");
    assert!(status.success(), "{status}");
    assert!(
        !spool_of(&hub.audit_path).exists(),
        "everything acknowledged: no spool"
    );

    let stored = receiver.stored();
    let epochs: std::collections::BTreeSet<&str> =
        stored.keys().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(epochs.len(), 2, "a restart is a new epoch: {epochs:?}");
    assert!(stored.keys().all(|(g, _, _)| g == GATEWAY));
    let all: Vec<_> = stored.iter().map(|((_, _, m), r)| (*m, r)).collect();
    let lines = journal_requests(&hub.audit_path);
    assert_eq!(
        summed(&all),
        recount(&lines),
        "the stored rollups equal the journal's recount"
    );
    hub.stop();
}
