//! `hub-conformance` end to end: the real binary against a sandbox bank over mTLS exits 0
//! with a passing report, and 1 with the failing rule named when the bank breaks one.

mod support;

use std::process::{Command, Output};

use sandbox::bank::Behaviour;
use support::{sandbox, Sandbox, API_USER, CONSENT};

/// Runs the binary against the sandbox bank (off the runtime: the bank keeps serving).
async fn self_test(sb: &Sandbox, extra: &[&str]) -> Output {
    self_test_at(sb, &sb.bank.url(), extra).await
}

async fn self_test_at(sb: &Sandbox, base_url: &str, extra: &[&str]) -> Output {
    let hub = sb.pki.hub_client();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub-conformance"));
    cmd.arg("--base-url")
        .arg(base_url)
        .arg("--cert")
        .arg(&hub.cert_path)
        .arg("--key")
        .arg(&hub.key_path)
        .arg("--ca")
        .arg(sb.pki.ca_cert_path())
        .args(["--api-user", API_USER, "--consent-id", CONSENT])
        .args(["--customer", &sb.customer])
        .args(["--accounts", &sb.accounts[0]])
        .args(["--sla-ms", "10000"])
        .args(extra);
    tokio::task::spawn_blocking(move || cmd.output().expect("runs"))
        .await
        .expect("joins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_test_passes_a_conformant_bank_and_fails_a_broken_one() {
    let sb = sandbox().await;
    let out = self_test(&sb, &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("conformance: pass"), "{text}");
    for api in [
        "accounts",
        "transactions",
        "open-data/exchange-rates",
        "open-data/products",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(api) && l.contains("pass")),
            "{api}: {text}"
        );
    }
    assert!(!text.contains(&sb.customer), "{text}");

    let out = self_test(&sb, &["--json", "--only", "balances,atms"]).await;
    assert_eq!(out.status.code(), Some(0));
    let report: conformance::SuiteReport =
        serde_json::from_slice(&out.stdout).expect("a JSON report");
    let apis: Vec<_> = report.apis.iter().map(|a| a.api).collect();
    assert_eq!(
        apis,
        vec![conformance::Api::Balances, conformance::Api::Atms]
    );

    sb.bank.ignore_accounts_header(true);
    let out = self_test(&sb, &["--only", "accounts"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("allow-list") && l.contains("FAIL")),
        "{text}"
    );
    sb.bank.ignore_accounts_header(false);
    sb.bank.set_behaviour(Behaviour::Status(500));
    let out = self_test(&sb, &["--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let report: conformance::SuiteReport =
        serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report.verdict, conformance::Verdict::Fail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_test_refuses_to_run_without_usable_inputs() {
    let sb = sandbox().await;
    let out = self_test(&sb, &["--permissions", "accounts,loans"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loans"));
    let out = self_test_at(&sb, "http://127.0.0.1:1", &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("https"));
}
