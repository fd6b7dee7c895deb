//! The audit journal (contract §8): one JSON line per request, allowed or refused, with the
//! contract's fields, and never a token, key material, customer id or account number.
//! Each test owns its hub, so the journal holds exactly the test's requests.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::*;
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
