//! Usage recomputed from audit journal lines written the gateway's way
//! (`gateway/src/audit/writer.rs`: the same fields in the same order, sealed with `prev`
//! and `hash`), and reconciliation finding a missing and a double-counted call.

mod support;
use support::{day, usage};

use billing::journal::Journals;
use billing::routes::{ROUTES, TRANSACTIONS};
use billing::{reconcile, usage_from_journal, Bin, ConsentDay, Outcome, UsageRow};
use jiff::tz::TimeZone;

const HASH: &str = "9f2c6a0e4b1d7c3f5a8e2b6d0c4f8a1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a";

/// A request record as the gateway's writer serialises it.
#[allow(clippy::too_many_arguments)]
fn line(
    time: &str,
    api_user: Option<&str>,
    provider: Option<&str>,
    consent: Option<&str>,
    route: &str,
    outcome: &str,
    extra: &str,
) -> String {
    let q = |v: Option<&str>| v.map_or("null".to_string(), |s| format!("\"{s}\""));
    let (code, status, upstream) = match outcome {
        "success" => ("ok", 200, 200),
        "refused" => ("consent_revoked", 403, 0),
        "timeout" => ("provider_timeout", 504, 0),
        _ => ("ok", 404, 404),
    };
    format!(
        "{{\"time\":\"{time}\",\"interaction_id\":\"6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f\",\"api_user\":{},\"provider\":{},\"consent_id\":{},\"token_jti\":{},\"route\":\"{route}\",\"code\":\"{code}\",\"status\":{status},\"upstream_status\":{upstream},\"latency_us\":1834,\"upstream_latency_us\":1202,\"outcome\":\"{outcome}\",\"bank_us\":1500{extra},\"prev\":\"{HASH}\",\"hash\":\"{HASH}\"}}",
        q(api_user),
        q(provider),
        q(consent),
        q(consent.map(|_| "jti-1")),
    )
}

const USER: &str = "100140000001";
const BANK: &str = "990340000011";
const ACCOUNTS: &str = "/v1/providers/{provider_id}/accounts";
const TX: &str = "/v1/providers/{provider_id}/accounts/{account_id}/transactions";

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").unwrap()
}

fn journal() -> String {
    [
        // 2026-02-03 local (UTC+5).
        line("2026-02-03T10:00:01.5Z", Some(USER), Some(BANK), Some("c-1"), ACCOUNTS, "success", ""),
        line("2026-02-03T10:00:02Z", Some(USER), Some(BANK), Some("c-1"), TX, "success", ",\"lines\":120"),
        line("2026-02-03T10:00:03Z", Some(USER), Some(BANK), Some("c-2"), TX, "success", ""),
        line("2026-02-03T10:00:04Z", Some(USER), Some(BANK), Some("c-1"), ACCOUNTS, "refused", ""),
        line("2026-02-03T10:00:05Z", None, None, None, "-", "refused", ""),
        "{\"time\":\"2026-02-03T10:00:06Z\",\"event\":\"records_dropped\",\"count\":3,\"prev\":\"x\",\"hash\":\"y\"}".to_string(),
        line("2026-02-03T10:00:07Z", Some(USER), Some(BANK), Some("c-1"), ACCOUNTS, "timeout", ""),
        // 23:59 local, but counted in the next minute by the rollups: the next local day.
        line("2026-02-03T18:59:59Z", Some(USER), Some(BANK), Some("c-1"), ACCOUNTS, "success", ",\"rollup_minute\":1770145200"),
        // 23:59 local, counted in its own minute: still the 3rd.
        line("2026-02-03T18:59:30Z", Some(USER), Some(BANK), Some("c-1"), ACCOUNTS, "success", ""),
        // Outside the period.
        line("2026-02-10T10:00:00Z", Some(USER), Some(BANK), Some("c-1"), ACCOUNTS, "success", ""),
        // The cut-short record of a process that died mid-write.
        "{\"time\":\"2026-02-03T11:00:00Z\",\"interaction_id\":\"6f1c".to_string(),
    ]
    .join("\n")
        + "\n"
}

fn row(
    d: &str,
    user: Option<&str>,
    bank: Option<&str>,
    route: &str,
    outcome: Outcome,
    calls: u64,
    lines: u64,
) -> UsageRow {
    let bin = |b: &str| Bin::parse(b).unwrap();
    usage(
        d,
        user.map(bin),
        bank.map(bin),
        route,
        outcome,
        (calls, lines),
    )
}

fn expected() -> Vec<UsageRow> {
    let (u, b) = (Some(USER), Some(BANK));
    let accounts = ROUTES[0];
    vec![
        row("2026-02-03", None, None, "-", Outcome::Refused, 1, 0),
        row("2026-02-03", u, b, accounts, Outcome::Success, 2, 0),
        row("2026-02-03", u, b, accounts, Outcome::Timeout, 1, 0),
        row("2026-02-03", u, b, accounts, Outcome::Refused, 1, 0),
        row("2026-02-03", u, b, TRANSACTIONS, Outcome::Success, 2, 120),
        row("2026-02-04", u, b, accounts, Outcome::Success, 1, 0),
    ]
}

#[test]
fn journal_lines_are_counted_on_the_local_day_of_their_rollup_minute() {
    let text = journal();
    let (usage, consents) = usage_from_journal(
        text.as_bytes(),
        day("2026-02-03"),
        day("2026-02-04"),
        &almaty(),
    )
    .unwrap();
    assert_eq!(usage, expected());
    let c = |d: &str, consent: &str, route: &str, calls: u64| ConsentDay {
        day: day(d),
        api_user: Bin::parse(USER).unwrap(),
        provider: Bin::parse(BANK).unwrap(),
        consent: consent.to_string(),
        route: route.to_string(),
        calls,
    };
    assert_eq!(
        consents,
        vec![
            c("2026-02-03", "c-1", ROUTES[0], 2),
            c("2026-02-03", "c-1", TRANSACTIONS, 1),
            c("2026-02-03", "c-2", TRANSACTIONS, 1),
            c("2026-02-04", "c-1", ROUTES[0], 1),
        ]
    );
}

#[test]
fn cut_lines_and_gaps_are_reported_and_a_broken_record_refused() {
    let text = journal();
    let mut j = Journals::new(day("2026-02-01"), day("2026-02-28"), almaty());
    j.read(text.as_bytes()).unwrap();
    let out = j.finish();
    assert_eq!(out.unreadable, vec![(1, 11)]);
    assert_eq!(out.dropped, 3);
    assert_eq!(out.records, 9);
    let broken = line(
        "2026-02-03T10:00:00Z",
        Some("not-a-bin"),
        Some(BANK),
        None,
        ACCOUNTS,
        "success",
        "",
    );
    let e = usage_from_journal(
        broken.as_bytes(),
        day("2026-02-01"),
        day("2026-02-28"),
        &almaty(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("journal line 1:"), "{e}");
    let no_outcome = broken
        .replace("not-a-bin", USER)
        .replace(",\"outcome\":\"success\"", "");
    let e = usage_from_journal(
        no_outcome.as_bytes(),
        day("2026-02-01"),
        day("2026-02-28"),
        &almaty(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("outcome"), "{e}");
}

#[test]
fn reconcile_finds_a_missing_call_and_a_double_counted_one() {
    let text = journal();
    let (journalled, _) = usage_from_journal(
        text.as_bytes(),
        day("2026-02-03"),
        day("2026-02-04"),
        &almaty(),
    )
    .unwrap();
    assert!(reconcile(&journalled, &expected()).is_empty());
    let mut reported = expected();
    reported[1].calls -= 1; // a lost call
    reported.push(reported[4].clone()); // a double-counted transactions row
    let diffs = reconcile(&journalled, &reported);
    assert_eq!(diffs.len(), 2, "{diffs:#?}");
    assert_eq!(
        (diffs[0].route.as_str(), diffs[0].kind.as_str()),
        (ROUTES[0], "success")
    );
    assert_eq!((diffs[0].calls, diffs[0].lines), ((2, 1), (0, 0)));
    assert_eq!(
        (diffs[1].route.as_str(), diffs[1].calls, diffs[1].lines),
        (TRANSACTIONS, (2, 4), (120, 240))
    );
    assert!(
        diffs[0].to_string().contains("calls expected 2 reported 1"),
        "{}",
        diffs[0]
    );
    // Lines alone differing is a difference.
    let mut reported = expected();
    reported[4].lines += 1;
    let diffs = reconcile(&journalled, &reported);
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert_eq!((diffs[0].calls, diffs[0].lines), ((2, 2), (120, 121)));
    // A key only one side has is a difference too.
    let diffs = reconcile(&journalled, &reported[..5]);
    assert_eq!(
        diffs
            .iter()
            .filter(|d| d.day == Some(day("2026-02-04")))
            .count(),
        1
    );
}
