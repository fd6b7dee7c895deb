//! Configuration reloads (`POST /admin/reload` and SIGHUP) pick up changed consents,
//! participant statuses and CRLs on the next request, lose no request under load, and
//! refuse a broken configuration (naming file, line and field) while the old one keeps
//! serving. Each test owns its hub.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::*;
use gateway::config::{at, FileConfig};
use policy::directory::ParticipantStatus;
use serde_json::Value;

fn set_consent_status(consents: &mut [Value], id: &str, status: &str) {
    let c = consents
        .iter_mut()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no consent {id}"));
    c["status"] = status.into();
}

fn set_participant_status(config: &mut FileConfig, bin: &str, status: ParticipantStatus) {
    let p = config
        .participants
        .iter_mut()
        .find(|p| p.bin.get_ref() == bin)
        .expect("participant");
    p.status = status;
}

/// Waits (bounded) until `/readyz` reports a generation above `than`.
async fn generation_above(hub: &Hub, than: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let g = hub.generation().await;
        if g > than {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "generation stayed {g}; stderr:\n{}",
            hub.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_full(hub: &Hub) -> Response {
    hub.client_as(USER_A)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.token("c-authorised-full")),
        )
        .await
}

async fn b_bank2(hub: &Hub) -> Response {
    hub.client_as(USER_B)
        .get(
            &accounts_path(BANK_2),
            Some(&hub.token("c-authorised-bank2")),
        )
        .await
}

// The hub also reloads by itself within about a second when the consent snapshot file
// changes (its consent watcher). So that a test proves the reload *it* triggers, the
// participant change (in hub.toml, which is not watched) comes alone first; a consent
// change is then checked on the very next request after the trigger.

#[tokio::test]
async fn admin_reload_applies_participant_and_consent_changes_on_the_next_request() {
    let hub = Hub::start(hub_exe!());
    a_full(&hub).await.ok_json();
    b_bank2(&hub).await.ok_json();
    let g0 = hub.generation().await;

    hub.edit_config(|t| set_participant_status(t, USER_B, ParticipantStatus::Suspended));
    let (status, body) = hub.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(hub.generation().await, g0 + 1);
    b_bank2(&hub)
        .await
        .assert_problem(403, "participant_inactive");
    a_full(&hub).await.ok_json();

    hub.edit_consents(|c| set_consent_status(c, "c-authorised-full", "revoked"));
    let (status, body) = hub.reload().await;
    assert_eq!(status, 200, "{body}");
    a_full(&hub).await.assert_problem(403, "consent_revoked");

    // And back.
    hub.edit_consents(|c| set_consent_status(c, "c-authorised-full", "authorised"));
    hub.edit_config(|t| set_participant_status(t, USER_B, ParticipantStatus::Active));
    let (status, body) = hub.reload().await;
    assert_eq!(status, 200, "{body}");
    a_full(&hub).await.ok_json();
    b_bank2(&hub).await.ok_json();
}

#[tokio::test]
async fn sighup_applies_participant_and_consent_changes() {
    let hub = Hub::start(hub_exe!());
    a_full(&hub).await.ok_json();
    b_bank2(&hub).await.ok_json();
    let g0 = hub.generation().await;

    hub.edit_config(|t| set_participant_status(t, USER_A, ParticipantStatus::Isolated));
    hub.signal("HUP");
    assert_eq!(generation_above(&hub, g0).await, g0 + 1);
    a_full(&hub)
        .await
        .assert_problem(403, "participant_inactive");
    b_bank2(&hub).await.ok_json();

    let g1 = g0 + 1;
    hub.edit_consents(|c| set_consent_status(c, "c-authorised-bank2", "revoked"));
    hub.signal("HUP");
    generation_above(&hub, g1).await;
    b_bank2(&hub).await.assert_problem(403, "consent_revoked");
    // Still the same process, still serving.
    hub.client_as(USER_B)
        .get(&open_data_path(BANK_1, "atms"), None)
        .await
        .ok_json();
}

#[tokio::test]
async fn consent_snapshot_replaced_on_disk_is_followed_without_a_signal() {
    let hub = Hub::start(hub_exe!());
    b_bank2(&hub).await.ok_json();
    hub.edit_consents(|c| set_consent_status(c, "c-authorised-bank2", "revoked"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = b_bank2(&hub).await;
        if r.status == 403 {
            r.assert_problem(403, "consent_revoked");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(
            Instant::now() < deadline,
            "the replaced consent snapshot was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let hub = Hub::start_with(hub_exe!(), |s| s.unlimited());
    let g0 = hub.generation().await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let acc = hub.accounts_of("c-authorised-full").remove(0);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let client = hub.client_as(USER_A);
        let token = hub.token("c-authorised-full");
        let path = if i % 2 == 0 {
            accounts_path(BANK_1)
        } else {
            balances_path(BANK_1, &acc)
        };
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let req = Req::get(path).bearer(&token);
            let mut conn = None;
            let mut connections = 0u32;
            while !stop.load(Ordering::SeqCst) {
                if conn.is_none() {
                    connections += 1;
                    match client.connect().await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failures.lock().expect("lock").push(format!("connect: {e}"));
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                match c.send(&req).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        if r.header("connection") == Some("close") {
                            conn = None;
                        }
                    }
                    Ok(r) => {
                        failures.lock().expect("lock").push(r.describe());
                        conn = None;
                    }
                    Err(e) => {
                        failures.lock().expect("lock").push(format!("request: {e}"));
                        conn = None;
                    }
                }
            }
            connections
        }));
    }
    let progress = |at_least: u64| {
        let ok = ok.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while ok.load(Ordering::SeqCst) < at_least {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for i in 0..5 {
        progress(ok.load(Ordering::SeqCst) + 20).await;
        // Each reload swaps in a really new snapshot: new consents and a renamed participant.
        hub.edit_consents(|c| {
            let mut extra = c[0].clone();
            extra["id"] = format!("c-e2e-load-{i}").into();
            c.push(extra);
        });
        hub.edit_config(|t| {
            t.participants[0].name = format!("Qazaq Fintech LLP ({i})");
        });
        let (status, body) = hub.reload().await;
        assert_eq!(status, 200, "reload {i}: {body}");
    }
    progress(ok.load(Ordering::SeqCst) + 20).await;
    stop.store(true, Ordering::SeqCst);
    let mut connections = 0;
    for t in tasks {
        connections += t.await.expect("load task");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // At least the five triggered here (the consent watcher may add its own).
    assert!(hub.generation().await >= g0 + 5);
    assert!(ok.load(Ordering::SeqCst) >= 120);
    // Keep-alive connections survived the reloads.
    assert_eq!(connections, 4, "connections were dropped by reloads");
}

#[tokio::test]
async fn broken_configuration_is_refused_at_reload_and_the_old_one_keeps_serving() {
    let hub = Hub::start(hub_exe!());
    let g0 = hub.generation().await;
    let good = std::fs::read_to_string(&hub.config_path).expect("hub.toml");
    let path = hub.config_path.display().to_string();
    let cases = [
        (
            good.replacen("bin = \"100140000002\"", "bin = \"12345\"", 1),
            "bin = \"12345\"",
            "participants[1].bin",
        ),
        (
            good.replacen("timeout_ms = 5000", "timeout_ms = \"fast\"", 1),
            "timeout_ms = \"fast\"",
            "timeout_ms",
        ),
        (
            good.replacen("[server]\n", "[server]\nbogus_key = 1\n", 1),
            "bogus_key = 1",
            "bogus_key",
        ),
    ];
    for (text, marker, field) in &cases {
        replace_file(&hub.config_path, text.as_bytes());
        let line = line_of(text, marker);
        let (status, body) = hub.reload().await;
        assert_eq!(status, 422, "{marker}: {body}");
        assert_eq!(body["status"], "refused", "{body}");
        let error = body["error"].as_str().unwrap_or("");
        assert!(
            error.contains(&format!("{path}:{line}")),
            "{marker}: error does not name {path}:{line}: {error}"
        );
        assert!(
            error.contains(field),
            "{marker}: error does not name {field}: {error}"
        );
        a_full(&hub).await.ok_json();
        b_bank2(&hub).await.ok_json();
    }
    // A broken consent snapshot is refused too, naming the file and the line.
    replace_file(&hub.config_path, good.as_bytes());
    let consents = std::fs::read_to_string(&hub.consents_path).expect("consents");
    let mut lines: Vec<&str> = consents.lines().collect();
    lines.insert(2, "{\"id\": \"broken\", this is not JSON");
    replace_file(&hub.consents_path, (lines.join("\n") + "\n").as_bytes());
    let (status, body) = hub.reload().await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap_or("");
    assert!(
        error.contains("consents.jsonl") && error.contains("line 3"),
        "{error}"
    );
    a_full(&hub).await.ok_json();
    assert_eq!(
        hub.generation().await,
        g0,
        "a refused reload changed the generation"
    );
    assert_eq!(hub.admin("GET", "/readyz").await.0, 200);
}

#[tokio::test]
async fn reload_applies_a_new_crl_to_new_connections() {
    let hub = Hub::start(hub_exe!());
    b_bank2(&hub).await.ok_json();
    let crl = hub
        .pki
        .revoke_client(bin(USER_B), &hub.dir.join("crl"))
        .expect("CRL");
    hub.edit_config(|t| t.tls.crl = vec![at(crl)]);
    let (status, body) = hub.reload().await;
    assert_eq!(status, 200, "{body}");
    let req = Req::get(accounts_path(BANK_2)).bearer(&hub.token("c-authorised-bank2"));
    let r = hub.client_as(USER_B).try_send(&req).await;
    assert!(r.is_err(), "a revoked certificate was served: {r:?}");
    a_full(&hub).await.ok_json();
}
