//! `hub-billing` as a process: tariff checks with file:line: field, reconciliation's exit
//! status and printed differences, and a month's statements from a journal file.

use std::path::Path;
use std::process::{Command, Output};

const HASH: &str = "9f2c6a0e4b1d7c3f5a8e2b6d0c4f8a1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a";
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/tariff.example.toml");

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hub-billing"))
        .args(args)
        .output()
        .expect("hub-billing runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A successful accounts call (journal spelling) at `time`.
fn record(time: &str, consent: &str, route: &str, outcome: &str) -> String {
    format!(
        "{{\"time\":\"{time}\",\"interaction_id\":\"6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f\",\"api_user\":\"100140000001\",\"provider\":\"990340000011\",\"consent_id\":\"{consent}\",\"token_jti\":\"j\",\"route\":\"{route}\",\"code\":\"ok\",\"status\":200,\"upstream_status\":200,\"latency_us\":10,\"upstream_latency_us\":5,\"outcome\":\"{outcome}\",\"bank_us\":5,\"prev\":\"{HASH}\",\"hash\":\"{HASH}\"}}\n"
    )
}

fn write_journal(dir: &Path) -> String {
    let accounts = "/v1/providers/{provider_id}/accounts";
    let mut j = String::new();
    for i in 0..7 {
        j += &record(
            &format!("2026-02-03T10:00:{i:02}Z"),
            "c-1",
            accounts,
            "success",
        );
    }
    j += &record("2026-02-03T10:01:00Z", "c-1", accounts, "timeout");
    let path = dir.join("audit.jsonl");
    std::fs::write(&path, j).unwrap();
    path.display().to_string()
}

#[test]
fn check_tariff_accepts_the_example_and_names_a_broken_files_line_and_field() {
    let ok = run(&["check-tariff", EXAMPLE]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("ok (2 versions, time zone Asia/Almaty)"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tariff.toml");
    std::fs::write(
        &bad,
        "[[versions]]\neffective_from = 2026-01-01\n[versions.prices]\nchargeable = \"1.001\"\n",
    )
    .unwrap();
    let out = run(&["check-tariff", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:4: versions[0].prices.chargeable: at most two decimals",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn reconcile_exits_non_zero_and_prints_each_difference() {
    let dir = tempfile::tempdir().unwrap();
    let journal = write_journal(dir.path());
    let usage = dir.path().join("usage.json");
    let rows = |calls: u64| {
        format!(
            "{{\"rows\":[{{\"api_user\":\"100140000001\",\"provider\":\"990340000011\",\"route\":\"GET /v1/providers/{{provider_id}}/accounts\",\"class\":\"chargeable\",\"calls\":{calls},\"lines\":0}},\
             {{\"api_user\":\"100140000001\",\"provider\":\"990340000011\",\"route\":\"GET /v1/providers/{{provider_id}}/accounts\",\"class\":\"provider_failed\",\"calls\":1,\"lines\":0}}]}}"
        )
    };
    let args = |usage: &str| {
        [
            "reconcile",
            "--journal",
            &journal,
            "--from",
            "2026-02-01",
            "--to",
            "2026-02-28",
            "--usage",
            usage,
            "--tariff",
            EXAMPLE,
        ]
        .map(str::to_string)
    };
    std::fs::write(&usage, rows(7)).unwrap();
    let out = run(&args(usage.to_str().unwrap()).each_ref().map(String::as_str));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("0 differences"));
    std::fs::write(&usage, rows(6)).unwrap();
    let out = run(&args(usage.to_str().unwrap()).each_ref().map(String::as_str));
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("period api_user=100140000001 provider=990340000011 route=\"GET /v1/providers/{provider_id}/accounts\" chargeable: calls expected 7 reported 6"),
        "{stdout}"
    );
    assert!(stdout.contains("1 differences"), "{stdout}");
}

#[test]
fn statement_prices_a_month_from_journals_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let journal = write_journal(dir.path());
    let base = [
        "statement",
        "--tariff",
        EXAMPLE,
        "--journal",
        &journal,
        "--month",
        "2026-02",
    ];
    let json = run(&base);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let all: Vec<billing::Statement> = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(all.len(), 2);
    // The example: API user 100140000001 pays 2.00 a call with 10 free per customer a day.
    let user = &all[0];
    assert_eq!((user.totals.calls, user.totals.free_calls), (8, 7));
    assert_eq!(user.totals.amount.to_string(), "0.00");
    // Two consents of one customer share one threshold.
    let map = dir.path().join("customers.json");
    std::fs::write(&map, "{\"c-1\": \"k\"}").unwrap();
    let csv = run(&[
        &base[..],
        &["--format", "csv", "--customers", map.to_str().unwrap()],
    ]
    .concat());
    assert!(csv.status.success(), "{}", text(&csv.stderr));
    let csv = text(&csv.stdout);
    assert_eq!(
        csv.matches("statement,kind").count(),
        1,
        "one header: {csv}"
    );
    assert!(csv.contains("2026-02/provider/990340000011,total"), "{csv}");
    let printed = run(&[&base[..], &["--format", "text"]].concat());
    assert!(text(&printed.stdout).contains("Amount owed to the provider: 0.00 KZT"));
    let mut bad_month = base;
    bad_month[6] = "2026-13";
    let bad = run(&bad_month);
    assert_eq!(bad.status.code(), Some(1));
}
