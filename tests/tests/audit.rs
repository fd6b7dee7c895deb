//! The audit journal (contract §8): one JSON line per request, allowed or refused, with the
//! contract's fields, and never a token, key material, customer id or account number.
//! Each test owns its hub, so the journal holds exactly the test's requests.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::*;
use sandbox::bank::Behaviour;
use serde_json::Value;

/// The contract §8 fields every record carries.
const FIELDS: [&str; 10] = [
    "time",
    "interaction_id",
    "api_user",
    "provider",
    "consent_id",
    "route",
    "code",
    "status",
    "upstream_status",
    "latency_us",
];

/// Waits (bounded) until the journal holds at least `n` lines; returns them parsed.
fn journal(hub: &Hub, n: usize) -> Vec<Value> {
    let text = poll_until(Duration::from_secs(10), || {
        let t = hub.audit_text();
        (t.lines().count() >= n).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "the journal has {} lines, expected {n}:\n{}",
            hub.audit_text().lines().count(),
            hub.audit_text()
        )
    });
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

struct Sent {
    iid: String,
    status: u16,
    code: &'static str,
    route: Option<&'static str>,
    api_user: Option<&'static str>,
    provider: Option<&'static str>,
    consent: Option<&'static str>,
}

const ACCOUNTS: &str = "/v1/providers/{provider_id}/accounts";
const BALANCES: &str = "/v1/providers/{provider_id}/accounts/{account_id}/balances";
const TRANSACTIONS: &str = "/v1/providers/{provider_id}/accounts/{account_id}/transactions";
const OPEN_DATA: &str = "/v1/open-data/{provider_id}/{dataset}";

#[tokio::test]
async fn journal_has_one_line_per_request_with_contract_fields_and_no_secrets() {
    let hub = Hub::start(hub_exe!());
    let a = hub.client_as(USER_A);
    let full = hub.token("c-authorised-full");
    let acc = hub.accounts_of("c-authorised-full").remove(0);
    let mut sent = Vec::new();
    let mut minted = Vec::new();

    let mut go = |r: Response, expect: Sent| {
        assert_eq!(r.status, expect.status, "{}", r.describe());
        assert_eq!(r.interaction_id(), expect.iid);
        sent.push(expect);
    };
    let iid = || uuid::Uuid::new_v4().to_string();
    let ok = |iid: String, route, consent| Sent {
        iid,
        status: 200,
        code: "ok",
        route: Some(route),
        api_user: Some(USER_A),
        provider: Some(BANK_1),
        consent,
    };
    let refused = |iid: String, status, code, route| Sent {
        iid,
        status,
        code,
        route,
        api_user: None,
        provider: None,
        consent: None,
    };

    for (path, route) in [
        (accounts_path(BANK_1), ACCOUNTS),
        (balances_path(BANK_1, &acc), BALANCES),
        (transactions_path(BANK_1, &acc, "limit=3"), TRANSACTIONS),
    ] {
        let i = iid();
        go(
            a.send(&Req::get(path).bearer(&full).interaction_id(&i))
                .await,
            ok(i, route, Some("c-authorised-full")),
        );
    }
    let i = iid();
    go(
        a.send(&Req::get(open_data_path(BANK_1, "products")).interaction_id(&i))
            .await,
        ok(i, OPEN_DATA, None),
    );
    // HTTP/2 is journaled the same way.
    let i = iid();
    let mut h2 = a.h2().await.expect("h2");
    go(
        h2.get(
            &accounts_path(BANK_1),
            &[
                ("authorization", &format!("Bearer {full}")),
                ("x-fapi-interaction-id", &i),
            ],
        )
        .await
        .expect("h2 answer"),
        ok(i, ACCOUNTS, Some("c-authorised-full")),
    );
    // A non-UUID interaction id: the journal has the replacement the client got back.
    let r = a
        .send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&full)
                .interaction_id("my-own-id"),
        )
        .await;
    let i = r.interaction_id().to_string();
    go(r, ok(i, ACCOUNTS, Some("c-authorised-full")));

    // Refusals.
    let bad_token = sandbox::tokens::forge_unsigned(
        "{\"alg\":\"none\",\"kid\":\"x\"}",
        &serde_json::to_string(&hub.claims(USER_A, "c-authorised-full", &ALL_PERMISSIONS))
            .expect("claims"),
    );
    minted.push(bad_token.clone());
    let i = iid();
    go(
        a.send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&bad_token)
                .interaction_id(&i),
        )
        .await,
        refused(i, 401, "invalid_token", Some(ACCOUNTS)),
    );
    let i = iid();
    go(
        a.send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&hub.token("c-revoked"))
                .interaction_id(&i),
        )
        .await,
        refused(i, 403, "consent_revoked", Some(ACCOUNTS)),
    );
    let i = iid();
    go(
        a.send(&Req::get("/v1/nowhere").interaction_id(&i)).await,
        refused(i, 404, "route_not_found", None),
    );
    let i = iid();
    go(
        a.send(
            &Req::get(format!("/v1/providers/{BANK_1}/accounts/../accounts"))
                .bearer(&full)
                .interaction_id(&i),
        )
        .await,
        refused(i, 400, "bad_request", None),
    );
    let unregistered = hub
        .pki
        .issue_client(bin(USER_A), "audit-unregistered", &hub.dir.join("extra"))
        .expect("issue");
    let i = iid();
    go(
        hub.client_with(Some(&ClientCert::of(&unregistered)))
            .send(
                &Req::get(accounts_path(BANK_1))
                    .bearer(&full)
                    .interaction_id(&i),
            )
            .await,
        refused(i, 403, "participant_unknown", Some(ACCOUNTS)),
    );
    let i = iid();
    let b_acc = hub.accounts_of("c-authorised-accounts-only").remove(0);
    go(
        hub.client_as(USER_B)
            .send(
                &Req::get(balances_path(BANK_2, &b_acc))
                    .bearer(&hub.token("c-authorised-accounts-only"))
                    .interaction_id(&i),
            )
            .await,
        refused(i, 403, "insufficient_scope", Some(BALANCES)),
    );

    let lines = journal(&hub, sent.len());
    assert_eq!(
        lines.len(),
        sent.len(),
        "one line per request:\n{}",
        hub.audit_text()
    );
    let by_iid: BTreeMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["interaction_id"].as_str().expect("interaction_id"), l))
        .collect();
    assert_eq!(by_iid.len(), lines.len(), "duplicate interaction ids");
    for line in &lines {
        for f in FIELDS {
            assert!(line.get(f).is_some(), "record lacks {f}: {line}");
        }
        let t = line["time"].as_str().expect("time");
        assert!(t.len() >= 20 && t.contains('T'), "time {t:?}");
        assert!(line["latency_us"].is_u64(), "{line}");
    }
    for s in &sent {
        let line = by_iid
            .get(s.iid.as_str())
            .unwrap_or_else(|| panic!("no record for {}", s.iid));
        assert_eq!(line["code"], s.code, "{line}");
        assert_eq!(line["status"].as_u64(), Some(u64::from(s.status)), "{line}");
        if let Some(route) = s.route {
            assert_eq!(line["route"], route, "{line}");
        }
        if s.status == 200 {
            assert_eq!(line["upstream_status"].as_u64(), Some(200), "{line}");
            assert_eq!(line["api_user"].as_str(), s.api_user, "{line}");
            assert_eq!(line["provider"].as_str(), s.provider, "{line}");
            assert_eq!(line["consent_id"].as_str(), s.consent, "{line}");
        } else {
            assert_eq!(line["upstream_status"].as_u64(), Some(0), "{line}");
        }
    }

    // Nothing secret or personal anywhere in the journal.
    let text = hub.audit_text();
    let mut secrets: Vec<(String, String)> = Vec::new();
    for c in hub.manifest["consents"].as_array().expect("consents") {
        let token = c["token"].as_str().expect("token");
        secrets.push(("token".into(), token.to_string()));
        for part in token.split('.') {
            secrets.push(("token part".into(), part.to_string()));
        }
        for a in c["account_ids"].as_array().expect("account_ids") {
            secrets.push(("account id".into(), a.as_str().expect("id").to_string()));
        }
    }
    for t in &minted {
        secrets.push(("forged token".into(), t.clone()));
    }
    for line in std::fs::read_to_string(&hub.consents_path)
        .expect("consents")
        .lines()
    {
        let v: Value = serde_json::from_str(line).expect("consent");
        let iin = v["customer"].as_str().expect("customer").to_string();
        for bank in [BANK_1, BANK_2] {
            if let Some(c) = hub.bank(bank).data().customer(&iin) {
                for acct in &c.accounts {
                    secrets.push(("IBAN".into(), acct.iban.clone()));
                    secrets.push(("account id".into(), acct.id.clone()));
                }
            }
        }
        secrets.push(("customer id".into(), iin));
    }
    let mut pems = vec![
        ("issuer key", hub.issuer.key_pem().to_string()),
        ("hub server key", hub.pki.hub_server().key_pem.clone()),
        ("hub client key", hub.pki.hub_client().key_pem.clone()),
        ("API user key", hub.identity(USER_A).key_pem.clone()),
        (
            "API user certificate",
            hub.identity(USER_A).cert_pem.clone(),
        ),
        ("unregistered key", unregistered.key_pem.clone()),
    ];
    pems.push(("API user B key", hub.identity(USER_B).key_pem.clone()));
    for (what, pem) in pems {
        for l in pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        {
            secrets.push((what.to_string(), l.to_string()));
        }
    }
    for (what, s) in &secrets {
        if s.len() >= 8 {
            assert!(!text.contains(s.as_str()), "the journal contains a {what}");
        }
    }
}

#[tokio::test]
async fn refused_requests_name_the_api_user_provider_and_consent_once_known() {
    // Contract §8 asks every record for API user, provider and consent id. Once row 2 has
    // identified the participant, and once row 4 has verified the token, a refusal is
    // attributable: an investigator needs to see who tried which consent at which bank.
    let hub = Hub::start(hub_exe!());
    let a = hub.client_as(USER_A);
    let mut cases = Vec::new();
    for (consent, code) in [
        ("c-revoked", "consent_revoked"),
        ("c-awaiting", "consent_not_authorised"),
    ] {
        let i = uuid::Uuid::new_v4().to_string();
        a.send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&hub.token(consent))
                .interaction_id(&i),
        )
        .await
        .assert_problem(403, code);
        cases.push((i, Some(consent)));
    }
    let i = uuid::Uuid::new_v4().to_string();
    a.send(&Req::get(accounts_path(BANK_1)).interaction_id(&i))
        .await
        .assert_problem(401, "invalid_token");
    cases.push((i, None));

    let lines = journal(&hub, cases.len());
    let mut wrong = Vec::new();
    for (iid, consent) in &cases {
        let line = lines
            .iter()
            .find(|l| l["interaction_id"] == iid.as_str())
            .unwrap_or_else(|| panic!("no record for {iid}"));
        if line["api_user"] != USER_A {
            wrong.push(format!("api_user missing: {line}"));
        }
        if line["provider"] != BANK_1 {
            wrong.push(format!("provider missing: {line}"));
        }
        if let Some(c) = consent {
            if line["consent_id"] != *c {
                wrong.push(format!("consent_id missing: {line}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn sigterm_exits_zero_with_every_record_written() {
    let outside = tempfile::tempdir().expect("tempdir");
    let journal_path = outside.path().join("audit.jsonl");
    let jp = journal_path.clone();
    let mut hub = Hub::start_with(hub_exe!(), move |s| {
        s.unlimited();
        s.config.audit.path = jp.clone();
    });
    let a = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    let n = 25;
    for _ in 0..n {
        a.get(&accounts_path(BANK_1), Some(&token)).await.ok_json();
    }
    let status = hub.stop().expect("the hub exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    let text = std::fs::read_to_string(&journal_path).expect("journal");
    assert_eq!(text.lines().count(), n, "{text}");
}

/// A provider whose only base URL is a closed port (`503 provider_unavailable`).
const CLOSED: &str = "990340000055";
/// Bank 2's SLA in the hub of `every_kind_of_answer_is_journaled`.
const SLA_MS: u64 = 400;

/// Runs `gateway audit verify` (the hub binary) on `files`: (exit code, standard output).
fn verify(files: &[&std::path::Path]) -> (i32, String) {
    audit_verify(hub_exe!(), files)
}

/// One request of `every_kind_of_answer_is_journaled`, as the journal must show it.
struct Expect {
    iid: String,
    status: u16,
    code: &'static str,
}

/// Sends `req` with a fresh interaction id on a new connection and checks the answer.
async fn answered(client: &Client, req: Req, status: u16, code: &'static str) -> Expect {
    let iid = uuid::Uuid::new_v4().to_string();
    let r = client.send(&req.interaction_id(&iid)).await;
    r.assert_problem(status, code);
    assert_eq!(r.interaction_id(), iid, "{}", r.describe());
    Expect { iid, status, code }
}

#[tokio::test]
async fn every_kind_of_answer_is_journaled() {
    let hub = Hub::start_with(hub_exe!(), |s| {
        s.provider_mut(BANK_2).timeout_ms = SLA_MS;
        s.set_limit("per_ip_open_data", 1, 2);
        let url = format!("https://127.0.0.1:{}", closed_port());
        s.add_provider(CLOSED, &url, true);
        let iin = s.consents[0]["customer"]
            .as_str()
            .expect("customer")
            .to_string();
        s.add_consent("c-e2e-closed", USER_A, &iin, &[CLOSED], &ALL_PERMISSIONS);
    });
    let (a, b) = (hub.client_as(USER_A), hub.client_as(USER_B));
    let bank2 = || Req::get(accounts_path(BANK_2)).bearer(&hub.token("c-authorised-bank2"));
    let atms = || Req::get(open_data_path(BANK_1, "atms"));
    let mut sent = vec![
        answered(
            &a,
            Req::new("POST", accounts_path(BANK_1)).body("{}"),
            405,
            "method_not_allowed",
        )
        .await,
        answered(
            &a,
            atms().header("Content-Length", "1000000"),
            413,
            "payload_too_large",
        )
        .await,
        answered(
            &a,
            atms().header("x-filler", "a".repeat(20 * 1024)),
            431,
            "request_header_fields_too_large",
        )
        .await,
        answered(
            &a,
            Req::get(accounts_path(CLOSED)).bearer(&hub.mint_for(USER_A, "c-e2e-closed")),
            503,
            "provider_unavailable",
        )
        .await,
    ];
    hub.bank(BANK_2).set_behaviour(Behaviour::Garbage);
    sent.push(answered(&b, bank2(), 502, "provider_bad_response").await);
    hub.bank(BANK_2).set_behaviour(Behaviour::Hang);
    sent.push(answered(&b, bank2(), 504, "provider_timeout").await);
    // A client that goes away while the bank thinks: no answer, still a record.
    let gone = uuid::Uuid::new_v4().to_string();
    let waited = Duration::from_millis(SLA_MS / 4);
    let gave_up = tokio::time::timeout(waited, b.send(&bank2().interaction_id(&gone))).await;
    assert!(gave_up.is_err(), "a hanging bank was answered");
    hub.bank(BANK_2).set_behaviour(Behaviour::Normal);
    // Malformed HTTP never reaches a phase: the hub makes the interaction id.
    let mut conn = a.connect().await.expect("connect");
    let r = conn
        .send_raw(b"GET /v1/open-data/990340000011/atms HTTP/1.1\r\nHost: localhost\r\nNo colon here\r\n\r\n")
        .await
        .expect("an answer");
    r.assert_problem(400, "bad_request");
    sent.push(Expect {
        iid: r.interaction_id().to_string(),
        status: 400,
        code: "bad_request",
    });
    // Open data last: its per-IP quota (burst 2) is then spent on purpose.
    let mut limited = None;
    for _ in 0..5 {
        let iid = uuid::Uuid::new_v4().to_string();
        let r = a.send(&atms().interaction_id(&iid)).await;
        let status = r.status;
        sent.push(Expect {
            iid,
            status,
            code: if status == 200 { "ok" } else { "rate_limited" },
        });
        if status == 429 {
            r.assert_problem(429, "rate_limited");
            limited = Some(());
            break;
        }
        assert_eq!(status, 200, "{}", r.describe());
    }
    assert!(limited.is_some(), "the open-data quota never answered 429");

    let lines = journal(&hub, sent.len() + 1);
    assert_eq!(
        lines.len(),
        sent.len() + 1,
        "one line per request:\n{}",
        hub.audit_text()
    );
    let find = |iid: &str| {
        lines
            .iter()
            .find(|l| l["interaction_id"] == iid)
            .unwrap_or_else(|| panic!("no record for {iid}:\n{}", hub.audit_text()))
    };
    for s in &sent {
        let line = find(&s.iid);
        assert_eq!(line["code"], s.code, "{line}");
        assert_eq!(line["status"].as_u64(), Some(u64::from(s.status)), "{line}");
    }
    let line = find(&gone);
    assert_eq!(line["code"], "client_gone", "{line}");
    assert_eq!(line["status"], 0, "no answer was written: {line}");
    assert_eq!(line["consent_id"], "c-authorised-bank2", "{line}");
    for line in &lines {
        assert!(
            line["prev"].is_string() && line["hash"].is_string(),
            "unsealed: {line}"
        );
    }
    let (code, out) = verify(&[hub.audit_path.as_path()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("OK, {} records", lines.len())),
        "{out}"
    );
}

#[tokio::test]
async fn sigusr1_reopens_the_journal_and_the_chain_links_the_files() {
    let hub = Hub::start(hub_exe!());
    let a = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    for _ in 0..3 {
        a.get(&accounts_path(BANK_1), Some(&token)).await.ok_json();
    }
    journal(&hub, 3);
    let rotated = hub.audit_path.with_extension("jsonl.1");
    std::fs::rename(&hub.audit_path, &rotated).expect("rotate");
    hub.signal("USR1");
    let reopened = poll_until(Duration::from_secs(10), || {
        hub.audit_path.exists().then_some(())
    });
    assert!(
        reopened.is_some(),
        "the journal was not reopened:\n{}",
        hub.stderr_text()
    );
    for _ in 0..2 {
        a.get(&accounts_path(BANK_1), Some(&token)).await.ok_json();
    }
    journal(&hub, 2);
    let (code, out) = verify(&[rotated.as_path(), hub.audit_path.as_path()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("OK, 3 records") && out.contains("OK, 2 records"),
        "{out}"
    );
    // The files are linked: out of order, the second's first record is a broken link.
    let (code, out) = verify(&[hub.audit_path.as_path(), rotated.as_path()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":1: broken"), "{out}");

    // Tampering is reported at its line, with a failing exit code.
    let text = std::fs::read_to_string(&rotated).expect("rotated journal");
    let lines: Vec<&str> = text.lines().collect();
    let altered = format!(
        "{}\n{}\n{}\n",
        lines[0],
        lines[1].replace("\"status\":200", "\"status\":403"),
        lines[2]
    );
    assert_ne!(altered, text, "nothing was altered");
    let removed = format!("{}\n{}\n", lines[0], lines[2]);
    for (tampered, what) in [(altered, "altered"), (removed, "does not link")] {
        let path = hub.dir.join("tampered.jsonl");
        std::fs::write(&path, tampered).expect("write");
        let (code, out) = verify(&[path.as_path()]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("tampered.jsonl:2: broken") && out.contains(what),
            "{out}"
        );
    }
}

/// A named pipe as the journal, held open by the test (so the hub can open it) and read
/// only once `drain` is called: until then the hub's writer blocks when the pipe is full.
struct Pipe {
    path: std::path::PathBuf,
    end: Option<std::fs::File>,
    _dir: tempfile::TempDir,
}

impl Pipe {
    fn new() -> Pipe {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // Read and write: opening never blocks, and the hub's open finds a reader.
        let end = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        Pipe {
            path,
            end: Some(end),
            _dir: dir,
        }
    }

    /// Starts reading the pipe into the returned buffer.
    fn drain(&mut self) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
        use std::io::Read;
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut end, sink) = (self.end.take().expect("drained once"), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = end.read(&mut buf) {
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        out
    }
}

/// `hub_audit_dropped_total` from `/metrics`.
async fn dropped(hub: &Hub) -> u64 {
    hub.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("hub_audit_dropped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_stalled_journal_refuses_consent_routes_and_records_every_one_it_served() {
    let mut pipe = Pipe::new();
    let fifo = pipe.path.clone();
    let hub = Hub::start_with(hub_exe!(), move |s| {
        s.unlimited();
        s.config.audit.path = fifo.clone();
        s.config.audit.buffer = 32;
    });
    let a = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    let mut conn = a.connect().await.expect("connect");
    let mut served = Vec::new();
    // Nobody reads the pipe: once it is full and 32 records wait, the hub refuses. On a
    // busy machine the 32 places can fill before the writer's next round (every 20 ms) has
    // moved them into the pipe: a refusal counts only once it holds after such a round.
    let refusal = loop {
        assert!(served.len() < 5_000, "the journal never filled up");
        let iid = uuid::Uuid::new_v4().to_string();
        let req = Req::get(accounts_path(BANK_1))
            .bearer(&token)
            .interaction_id(&iid);
        let r = conn.send(&req).await.expect("an answer");
        if r.status == 200 {
            served.push(iid);
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let iid = uuid::Uuid::new_v4().to_string();
        let again = Req::get(accounts_path(BANK_1))
            .bearer(&token)
            .interaction_id(&iid);
        let r = conn.send(&again).await.expect("an answer");
        if r.status != 200 {
            break r;
        }
        served.push(iid);
    };
    refusal.assert_problem(503, "audit_unavailable");
    assert_eq!(
        refusal.header("retry-after"),
        Some("1"),
        "{}",
        refusal.describe()
    );
    // Open data goes on; its record cannot be taken and is counted.
    let before = dropped(&hub).await;
    a.get(&open_data_path(BANK_1, "atms"), None).await.ok_json();
    assert!(
        dropped(&hub).await > before,
        "the dropped record was not counted"
    );
    a.get(&accounts_path(BANK_1), Some(&token))
        .await
        .assert_problem(503, "audit_unavailable");

    // Read again, the journal takes records and consent routes are served.
    let written = pipe.drain();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let iid = uuid::Uuid::new_v4().to_string();
        let req = Req::get(accounts_path(BANK_1))
            .bearer(&token)
            .interaction_id(&iid);
        let r = a.send(&req).await;
        if r.status == 200 {
            served.push(iid);
            break;
        }
        r.assert_problem(503, "audit_unavailable");
        assert!(
            std::time::Instant::now() < deadline,
            "still refused after the journal was read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut hub = hub;
    assert!(
        hub.stop().is_some_and(|s| s.success()),
        "the hub did not exit cleanly"
    );
    // Everything the hub wrote, once the reader has taken it off the pipe.
    let text = poll_until(Duration::from_secs(10), || {
        let text = String::from_utf8(written.lock().expect("lock").clone()).expect("utf-8");
        let whole = text.ends_with('\n') && served.iter().all(|iid| text.contains(iid.as_str()));
        whole.then_some(text)
    })
    .unwrap_or_else(|| panic!("consent requests were served without a record"));
    let copy = hub_journal_copy(&text);
    let (code, out) = verify(&[copy.path()]);
    assert_eq!(code, 0, "{out}");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    for iid in &served {
        let r = records
            .iter()
            .find(|r| r["interaction_id"] == iid.as_str())
            .unwrap_or_else(|| panic!("served without a record: {iid}"));
        assert_eq!(r["code"], "ok");
        assert_eq!(r["consent_id"], "c-authorised-full");
    }
    assert!(
        records.iter().any(|r| r["event"] == "records_dropped"),
        "no mark of the records the journal could not take"
    );
}

/// The journal text in a file `audit verify` can read.
fn hub_journal_copy(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().expect("tempfile");
    f.write_all(text.as_bytes()).expect("write");
    f
}
