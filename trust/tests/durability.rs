//! kill -9 of the `trust` binary during a burst of revocations: after a restart on
//! the same database, every revocation that was acknowledged is there, and the feed
//! still runs contiguously from version 1.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use trust::wire::FeedLine;

/// The sidecar as a child process; killed with SIGKILL when dropped.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

impl Sidecar {
    fn start(f: &Fixture) -> Sidecar {
        let pki = &f.pki;
        let mut child = Command::new(env!("CARGO_BIN_EXE_trust"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(f.store.flags())
            .arg("--cert")
            .arg(&pki.hub_server().cert_path)
            .arg("--key")
            .arg(&pki.hub_server().key_path)
            .arg("--client-ca")
            .arg(pki.ca_cert_path())
            .arg("--operator-cert")
            .arg(&f.operator().cert_path)
            .arg("--hub-cert")
            .arg(&f.hub().cert_path)
            .arg("--otp-outbox")
            .arg(f.outbox())
            .arg("--dev-customer-sessions")
            // One customer authorises every consent of the burst.
            .args(["--codes-per-customer-hour", "1000"])
            .args(["--codes-per-customer-day", "1000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the trust binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let addr = v["addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(v["trust_url"], format!("https://{addr}"));
        Sidecar { child, addr }
    }

    fn kill9(&mut self) {
        // std's kill() is SIGKILL on unix: no handler runs, nothing is flushed.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_of_revocations_loses_no_acknowledged_one() {
    const CONSENTS: usize = 120;
    const KILL_AFTER: usize = 30;
    let f = Fixture::new();
    let mut sidecar = Sidecar::start(&f);
    let c = f.client(sidecar.addr);
    register_all(&f, &c).await;
    let a = f.user(USER_A);
    let mut ids = Vec::new();
    for i in 0..CONSENTS {
        let id = create_consent(&c, a, CUSTOMER, json!({})).await;
        if i % 2 == 0 {
            authorise(&c, &f.outbox(), CUSTOMER, &id).await;
        }
        ids.push(id);
    }

    // Four clients revoke as fast as they can; the sidecar is killed mid-burst.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel::<()>();
    let enough_tx = Arc::new(Mutex::new(Some(enough_tx)));
    let mut tasks = Vec::new();
    for chunk in ids.chunks(CONSENTS / 4) {
        let (c, chunk, acked, enough) =
            (c.clone(), chunk.to_vec(), acked.clone(), enough_tx.clone());
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                match c
                    .try_send(
                        Some(&a),
                        "DELETE",
                        &format!("/v1/consents/{id}"),
                        &[],
                        vec![],
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        assert_eq!(r.json()["status"], "revoked");
                        let mut acked = acked.lock().unwrap();
                        acked.push(id);
                        if acked.len() >= KILL_AFTER {
                            if let Some(tx) = enough.lock().unwrap().take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Ok(r) => panic!("unexpected answer {}: {:?}", r.status, r.body),
                    Err(_) => return, // the sidecar is gone
                }
            }
        }));
    }
    enough_rx.await.unwrap();
    sidecar.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    eprintln!(
        "{} of {CONSENTS} revocations acknowledged before SIGKILL",
        acked.len()
    );
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        acked.len() < CONSENTS,
        "the kill landed mid-burst ({} acknowledged)",
        acked.len()
    );

    // Restart on the same database: every acknowledged revocation is there.
    let sidecar = Sidecar::start(&f);
    let c = f.client(sidecar.addr);
    for id in &acked {
        let v = c
            .get(Some(a), &format!("/v1/consents/{id}"))
            .await
            .expect(200);
        assert_eq!(v["status"], "revoked", "{id}");
        let last = v["history"].as_array().unwrap().last().unwrap();
        assert_eq!(last["to"], "revoked");
        assert_eq!(last["actor"], format!("api_user:{USER_A}"));
    }

    // And the feed has each of them, with versions contiguous from 1.
    let r = c
        .open(Some(f.hub()), "GET", "/v1/feed?since=0", &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut lines = Lines::new(r.into_body());
    let mut revoked = HashSet::new();
    let mut expect = 1;
    loop {
        let l: FeedLine =
            serde_json::from_value(lines.next(Duration::from_secs(10)).await.unwrap()).unwrap();
        match l {
            FeedLine::Heartbeat(_) => break,
            FeedLine::Consent(ch) => {
                assert_eq!(ch.version, expect);
                expect += 1;
                if let consent_cache::ChangeOp::SetStatus {
                    id,
                    status: consent_cache::ConsentStatus::Revoked,
                } = ch.op
                {
                    revoked.insert(id);
                }
            }
            FeedLine::Participant(p) => {
                assert_eq!(p.version, expect);
                expect += 1;
            }
            FeedLine::Resync(r) => panic!("{r:?}"),
        }
    }
    for id in &acked {
        assert!(revoked.contains(id), "{id} is on the feed");
    }
    eprintln!(
        "{} revocations committed (acknowledged or not)",
        revoked.len()
    );
    // Nothing half-written: every consent is in exactly one state.
    let snap = c.get(Some(f.hub()), "/v1/snapshot").await.expect_text(200);
    let end: Value = serde_json::from_str(snap.lines().last().unwrap()).unwrap();
    assert_eq!(end["end"]["consents"], CONSENTS);
    assert_eq!(end["end"]["version"], expect - 1);
}

trait ExpectText {
    fn expect_text(&self, status: u16) -> String;
}

impl ExpectText for Reply {
    fn expect_text(&self, status: u16) -> String {
        assert_eq!(self.status, status);
        String::from_utf8(self.body.to_vec()).unwrap()
    }
}
