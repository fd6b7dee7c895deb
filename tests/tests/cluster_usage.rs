//! Issue 15, "How it is shown": usage and a month's statements equal what this test
//! recomputes on its own from the audit journals of two gateways and its own tariff. A
//! cluster (`devhub::cluster`: PostgreSQL, two trust replicas with billing on, two
//! gateways pushing their rollups every second, the sandbox banks) runs with this test's
//! tariff (three versions: one long before today, the one in force today, one from
//! tomorrow, each with other prices and class rules). Both API users call through both
//! gateways over several consents and customers (two consents of one customer, so the
//! free threshold is per customer): every account data route, transactions over several
//! pages, open data, hub refusals (a bad token, a permission the consent lacks), the
//! bank's 404s, its 500s (fault mode `error`) and an unreachable bank (`down`); gateway 0
//! restarts between bursts (SIGTERM, same journal, a new rollup epoch). Then both
//! gateways stop and the test compares, each computed here with a few lines of
//! classification and integer tiyn arithmetic (never the billing crate's pricing):
//! (a) `GET /v1/admin/usage` with the journals' recount, (b) the month's draft statements
//! of every participant with the test's pricing, (c) `hub-billing reconcile` (exit 0;
//! exit 1 naming the difference once a journal line is removed), (d) what an API user
//! may read of usage and statements, (e) the version in force today pricing today.

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use cluster_support::*;
use e2e::demo::switch_to;
use e2e::*;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{json, Value};

const ACCOUNTS: &str = "/v1/providers/{provider_id}/accounts";
const ACCOUNT: &str = "/v1/providers/{provider_id}/accounts/{account_id}";
const BALANCES: &str = "/v1/providers/{provider_id}/accounts/{account_id}/balances";
const TRANSACTIONS: &str = "/v1/providers/{provider_id}/accounts/{account_id}/transactions";
const OPEN_DATA: &str = "/v1/open-data/{provider_id}/{dataset}";
/// Account data routes: a successful call of these is chargeable by default.
const DATA_ROUTES: [&str; 4] = [ACCOUNTS, ACCOUNT, BALANCES, TRANSACTIONS];
const USER_A: &str = "100140000001";
const USER_B: &str = "100140000002";
const BANK_2: &str = "990340000022";
/// The consent of the same customer as `c-authorised-full` (first user, first bank).
const EXTRA: &str = "c-extra-0001";

/// One tariff version, money in tiyn.
#[derive(Debug, Clone)]
struct Version {
    from: Date,
    free_per_customer_day: u64,
    chargeable: i64,
    /// `BANK_2`'s own chargeable price (a provider override).
    chargeable_bank2: i64,
    refused: i64,
    per_100_lines: i64,
    monthly_cap: i64,
    /// `(route, outcome, class)`, first match wins.
    rules: Vec<(&'static str, &'static str, &'static str)>,
}

/// Version 1 long before today, version 2 in force today (from the month's first local
/// day), version 3 from tomorrow: other prices, thresholds and rules each, so that a
/// wrong choice of version shows in the classes, the free calls and the amounts.
fn versions(today: Date) -> Vec<Version> {
    let v2_from = today.first_of_month();
    let tomorrow = today.tomorrow().expect("tomorrow");
    vec![
        Version {
            from: Date::new(2020, 1, 1).expect("date"),
            free_per_customer_day: 1,
            chargeable: 999,
            chargeable_bank2: 999,
            refused: 0,
            per_100_lines: 700,
            monthly_cap: 10_000_000,
            rules: vec![(ACCOUNTS, "success", "free")],
        },
        Version {
            from: v2_from,
            free_per_customer_day: 3,
            chargeable: 250,
            chargeable_bank2: 310,
            refused: 10,
            per_100_lines: 125,
            monthly_cap: 4_000,
            rules: vec![],
        },
        Version {
            from: tomorrow,
            free_per_customer_day: 0,
            chargeable: 500,
            chargeable_bank2: 500,
            refused: 0,
            per_100_lines: 400,
            monthly_cap: 4_000,
            rules: vec![(OPEN_DATA, "success", "chargeable")],
        },
    ]
}

/// Tiyn as KZT with two decimals.
fn kzt(tiyn: i64) -> String {
    format!("{}.{:02}", tiyn / 100, tiyn % 100)
}

/// The tariff file of `versions`.
fn tariff_toml(vs: &[Version]) -> String {
    let mut t = String::from("currency = \"KZT\"\ntime_zone = \"Asia/Almaty\"\n");
    for v in vs {
        t.push_str(&format!(
            "\n[[versions]]\neffective_from = {}\nfree_per_customer_day = {}\n\
             monthly_cap = \"{}\"\n[versions.prices]\nchargeable = \"{}\"\nrefused = \"{}\"\n\
             per_100_lines = \"{}\"\n",
            v.from,
            v.free_per_customer_day,
            kzt(v.monthly_cap),
            kzt(v.chargeable),
            kzt(v.refused),
            kzt(v.per_100_lines),
        ));
        for (route, outcome, class) in &v.rules {
            t.push_str(&format!(
                "[[versions.rules]]\nroute = \"GET {route}\"\noutcome = \"{outcome}\"\nclass = \"{class}\"\n"
            ));
        }
        t.push_str(&format!(
            "[[versions.overrides]]\nprovider = \"{BANK_2}\"\nchargeable = \"{}\"\n",
            kzt(v.chargeable_bank2)
        ));
    }
    t
}

fn almaty() -> TimeZone {
    TimeZone::get("Asia/Almaty").expect("Asia/Almaty")
}

/// The local day of a Unix minute.
fn local_day(minute: i64) -> Date {
    jiff::Timestamp::from_second(minute)
        .expect("minute")
        .to_zoned_datetime(almaty())
        .date()
}

/// The version in force on `day`.
fn version_on(vs: &[Version], day: Date) -> &Version {
    vs.iter()
        .rev()
        .find(|v| v.from <= day)
        .expect("a version in force")
}

/// The class of a call: the version's rules, else the default (docs/billing.md).
fn class_of(v: &Version, route: &str, outcome: &str) -> &'static str {
    if let Some((_, _, class)) = v
        .rules
        .iter()
        .find(|(r, o, _)| *r == route && *o == outcome)
    {
        return class;
    }
    match outcome {
        "success" if DATA_ROUTES.contains(&route) => "chargeable",
        "refused" => "refused",
        "server_error" | "timeout" | "unreachable" | "bad_response" => "provider_failed",
        _ => "free",
    }
}

/// A route as the test compares it: the template without its method.
fn norm(route: &str) -> String {
    route.strip_prefix("GET ").unwrap_or(route).to_owned()
}

/// One journal line as this test counts it.
#[derive(Debug, Clone)]
struct Call {
    day: Date,
    api_user: Option<String>,
    provider: Option<String>,
    route: String,
    outcome: String,
    lines: u64,
    consent: Option<String>,
}

fn calls_of(journal: &[Value]) -> Vec<Call> {
    journal
        .iter()
        .map(|l| Call {
            day: local_day(journal_minute(l)),
            api_user: l["api_user"].as_str().map(str::to_owned),
            provider: l["provider"].as_str().map(str::to_owned),
            route: norm(l["route"].as_str().expect("route")),
            outcome: l["outcome"].as_str().expect("outcome").to_owned(),
            lines: l["lines"].as_u64().unwrap_or(0),
            consent: l["consent_id"].as_str().map(str::to_owned),
        })
        .collect()
}

type UsageKey = (Option<String>, Option<String>, String, String);

/// (a) The usage rows of the journals: calls and lines per API user × provider × route ×
/// class, each call classified by the version of its day.
fn recount(vs: &[Version], calls: &[Call]) -> BTreeMap<UsageKey, (u64, u64)> {
    let mut out: BTreeMap<UsageKey, (u64, u64)> = BTreeMap::new();
    for c in calls {
        let class = class_of(version_on(vs, c.day), &c.route, &c.outcome);
        let e = out
            .entry((
                c.api_user.clone(),
                c.provider.clone(),
                c.route.clone(),
                class.to_owned(),
            ))
            .or_default();
        e.0 += 1;
        e.1 += c.lines;
    }
    out
}

/// The trust sidecar's usage rows in the same shape.
fn usage_of(answer: &Value) -> BTreeMap<UsageKey, (u64, u64)> {
    let mut out = BTreeMap::new();
    for r in answer["rows"].as_array().expect("rows") {
        let key = (
            r["api_user"].as_str().map(str::to_owned),
            r["provider"].as_str().map(str::to_owned),
            norm(r["route"].as_str().expect("route")),
            r["class"].as_str().expect("class").to_owned(),
        );
        let v = (
            r["calls"].as_u64().expect("calls"),
            r["lines"].as_u64().expect("lines"),
        );
        assert!(out.insert(key.clone(), v).is_none(), "{key:?} twice");
    }
    out
}

/// A statement line's key: API user, provider, route, class, version's first day.
type LineKey = (Option<String>, Option<String>, String, &'static str, Date);

/// A line's counts.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    calls: u64,
    free: u64,
    lines: u64,
}

/// Free calls per day × API user × provider × route: per customer, the first N chargeable
/// successful calls of the day, given to the routes in their contract order.
fn free_calls(
    vs: &[Version],
    calls: &[Call],
    customer_of: &BTreeMap<String, String>,
) -> BTreeMap<(Date, String, String, String), u64> {
    type CustomerKey = (Date, String, String, String);
    let mut per_customer: BTreeMap<CustomerKey, BTreeMap<usize, (String, u64)>> = BTreeMap::new();
    for c in calls {
        let (Some(u), Some(p), Some(consent)) = (&c.api_user, &c.provider, &c.consent) else {
            continue;
        };
        let v = version_on(vs, c.day);
        if c.outcome != "success" || class_of(v, &c.route, "success") != "chargeable" {
            continue;
        }
        let order = DATA_ROUTES
            .iter()
            .position(|r| *r == c.route)
            .unwrap_or(usize::MAX);
        let key = (c.day, u.clone(), p.clone(), customer_of[consent].clone());
        let e = per_customer
            .entry(key)
            .or_default()
            .entry(order)
            .or_default();
        e.0 = c.route.clone();
        e.1 += 1;
    }
    let mut free = BTreeMap::new();
    for ((day, u, p, _), routes) in per_customer {
        let mut left = version_on(vs, day).free_per_customer_day;
        for (route, n) in routes.into_values() {
            let k = left.min(n);
            left -= k;
            *free.entry((day, u.clone(), p.clone(), route)).or_default() += k;
        }
    }
    free
}

/// The priced lines: (calls − free) × price + lines × per-100 price ÷ 100, rounded once
/// half away from zero to the tiyn; unidentified callers priced at 0.
fn priced_lines(
    vs: &[Version],
    calls: &[Call],
    customer_of: &BTreeMap<String, String>,
) -> BTreeMap<LineKey, (Counts, i64, i64, i64)> {
    let free = free_calls(vs, calls, customer_of);
    let mut counts: BTreeMap<LineKey, Counts> = BTreeMap::new();
    let mut free_taken: BTreeSet<(Date, String, String, String)> = BTreeSet::new();
    for c in calls {
        let v = version_on(vs, c.day);
        let class = class_of(v, &c.route, &c.outcome);
        let key = (
            c.api_user.clone(),
            c.provider.clone(),
            c.route.clone(),
            class,
            v.from,
        );
        let e = counts.entry(key).or_default();
        e.calls += 1;
        e.lines += c.lines;
        if let (Some(u), Some(p), "success", "chargeable") =
            (&c.api_user, &c.provider, c.outcome.as_str(), class)
        {
            let fk = (c.day, u.clone(), p.clone(), c.route.clone());
            if free_taken.insert(fk.clone()) {
                e.free += free.get(&fk).copied().unwrap_or(0);
            }
        }
    }
    counts
        .into_iter()
        .map(|(key, c)| {
            let v = vs.iter().find(|v| v.from == key.4).expect("version");
            let (unit, per_100) = match &key.0 {
                None => (0, 0),
                Some(_) => {
                    let unit = match key.3 {
                        "chargeable" if key.1.as_deref() == Some(BANK_2) => v.chargeable_bank2,
                        "chargeable" => v.chargeable,
                        "refused" => v.refused,
                        _ => 0,
                    };
                    let lines_priced = key.3 == "chargeable" && key.2 == TRANSACTIONS;
                    (unit, if lines_priced { v.per_100_lines } else { 0 })
                }
            };
            // In hundredths of a tiyn, then rounded half up (amounts are never negative).
            let exact = (c.calls - c.free) as i64 * unit * 100 + c.lines as i64 * per_100;
            (key, (c, unit, per_100, (exact + 50) / 100))
        })
        .collect()
}

/// (b) The month's statements as this test prices them: participant × role → the
/// statement's `lines`, `caps` and `totals` as JSON.
fn expected_statements(
    vs: &[Version],
    last_day: Date,
    calls: &[Call],
    customer_of: &BTreeMap<String, String>,
) -> BTreeMap<(String, &'static str), Value> {
    let priced = priced_lines(vs, calls, customer_of);
    type Parts = (
        Vec<Value>,
        Vec<Value>,
        Vec<(&'static str, u64, u64, u64, i64)>,
    );
    let mut parts: BTreeMap<(String, &'static str), Parts> = BTreeMap::new();
    let mut charged: BTreeMap<(String, String), i64> = BTreeMap::new();
    for ((user, provider, route, class, from), (c, unit, per_100, amount)) in &priced {
        if let (Some(u), Some(p)) = (user, provider) {
            *charged.entry((u.clone(), p.clone())).or_default() += amount;
        }
        let line = |counterparty: &Option<String>| {
            json!({
                "counterparty": counterparty, "route": route, "class": class,
                "tariff_from": from.to_string(), "calls": c.calls, "free_calls": c.free,
                "lines": c.lines, "unit_price": kzt(*unit), "per_100_lines": kzt(*per_100),
                "amount": kzt(*amount),
            })
        };
        let sums = (*class, c.calls, c.free, c.lines, *amount);
        for (who, role, other) in [(user, "api_user", provider), (provider, "provider", user)] {
            if let Some(who) = who {
                let e = parts.entry((who.clone(), role)).or_default();
                e.0.push(line(other));
                e.2.push(sums);
            }
        }
    }
    let cap = version_on(vs, last_day).monthly_cap;
    for ((u, p), sum) in charged.into_iter().filter(|(_, s)| *s > cap) {
        for (who, role, other) in [(&u, "api_user", &p), (&p, "provider", &u)] {
            let e = parts.entry((who.clone(), role)).or_default();
            e.1.push(json!({"counterparty": other, "cap": kzt(cap), "charged": kzt(sum), "reduction": kzt(sum - cap)}));
        }
    }
    parts
        .into_iter()
        .map(|(k, (mut lines, caps, sums))| {
            lines.sort_by_key(|l| l.to_string());
            let totals = totals_of(&sums, &caps);
            (k, json!({"lines": lines, "caps": caps, "totals": totals}))
        })
        .collect()
}

/// A statement's totals from its lines' (class, calls, free calls, lines, amount) and
/// its caps.
fn totals_of(sums: &[(&str, u64, u64, u64, i64)], caps: &[Value]) -> Value {
    let of = |class: &str| -> u64 { sums.iter().filter(|s| s.0 == class).map(|s| s.1).sum() };
    let gross: i64 = sums.iter().map(|s| s.4).sum();
    let reduction: i64 = caps
        .iter()
        .map(|c| {
            let r = c["reduction"].as_str().expect("reduction").replace('.', "");
            r.parse::<i64>().expect("tiyn")
        })
        .sum();
    json!({
        "calls": sums.iter().map(|s| s.1).sum::<u64>(),
        "free_calls": sums.iter().map(|s| s.2).sum::<u64>(),
        "chargeable": of("chargeable"), "provider_failed": of("provider_failed"),
        "refused": of("refused"), "lines": sums.iter().map(|s| s.3).sum::<u64>(),
        "gross": kzt(gross), "cap_reduction": kzt(reduction),
        "amount": kzt(gross - reduction),
    })
}

/// The parts of a draft statement the test compares.
fn compared(statement: &Value) -> Value {
    let mut lines = statement["lines"].as_array().expect("lines").clone();
    for l in &mut lines {
        l["route"] = json!(norm(l["route"].as_str().expect("route")));
    }
    lines.sort_by_key(|l| l.to_string());
    json!({"lines": lines, "caps": statement["caps"], "totals": statement["totals"]})
}

/// Traffic of every kind through gateway `i`: both API users, four consents (two of one
/// customer), every account data route, transactions over several pages, open data,
/// refusals, the bank's 404, and (`faults`) its 500s and an unreachable bank.
async fn burst(r: &Running, i: usize, bank1_faults: Option<&Client>) {
    for (consent, extra_reads) in [
        ("c-authorised-full", 2),
        (EXTRA, 1),
        ("c-authorised-restricted", 1),
        ("c-authorised-bank2", 1),
    ] {
        reads(r, i, consent, extra_reads).await;
    }
    refusals_and_failures(r, i, bank1_faults).await;
}

/// Through gateway `i` with consent `consent`: the account list and balances `1 +
/// extra_reads` and `extra_reads` times, one account, up to three transactions pages,
/// the bank's 404, and an open data call.
async fn reads(r: &Running, i: usize, consent: &str, extra_reads: usize) {
    let hub = r.gateway_for(i, consent).api(None);
    let token = r.token(consent);
    let provider = r.consent(consent)["providers"][0]
        .as_str()
        .expect("provider")
        .to_owned();
    let account = r.account(consent);
    for _ in 0..=extra_reads {
        hub.get(&r.accounts_path(consent), Some(&token))
            .await
            .ok_json();
    }
    let base = format!("/v1/providers/{provider}/accounts/{account}");
    hub.get(&base, Some(&token)).await.ok_json();
    for _ in 0..extra_reads {
        hub.get(&format!("{base}/balances"), Some(&token))
            .await
            .ok_json();
    }
    // Transactions, page after page (lines counted per page).
    let mut query = "limit=3".to_owned();
    for _ in 0..3 {
        let page = hub
            .get(
                &transactions_path(&provider, &account, &query),
                Some(&token),
            )
            .await
            .ok_json();
        match page["meta"]["next_cursor"].as_str() {
            Some(c) => query = format!("limit=3&cursor={c}"),
            None => break,
        }
    }
    // The bank's 404, and an open data call.
    hub.get(
        &format!("/v1/providers/{provider}/accounts/no-such-account/balances"),
        Some(&token),
    )
    .await;
    let open = hub
        .get(&format!("/v1/open-data/{provider}/atms"), None)
        .await;
    assert_eq!(open.status, 200, "{}", open.describe());
}

/// Through gateway `i`: refusals (a bad token, a permission the consent lacks), and with
/// `bank1_faults` the first bank failing (`error`), then unreachable (`down`).
async fn refusals_and_failures(r: &Running, i: usize, bank1_faults: Option<&Client>) {
    let hub_a = r.gateway_for(i, "c-authorised-full").api(None);
    let r1 = hub_a
        .get(&r.accounts_path("c-authorised-full"), Some("not-a-token"))
        .await;
    assert_eq!(r1.status, 401, "{}", r1.describe());
    let only = "c-authorised-accounts-only";
    let hub_b = r.gateway_for(i, only).api(None);
    hub_b
        .get(&r.accounts_path(only), Some(&r.token(only)))
        .await
        .ok_json();
    let provider = r.consent(only)["providers"][0].as_str().expect("provider");
    let lacking = format!(
        "/v1/providers/{provider}/accounts/{}/balances",
        r.account(only)
    );
    let r2 = hub_b.get(&lacking, Some(&r.token(only))).await;
    assert_eq!(r2.status, 403, "{}", r2.describe());
    // The bank failing, then unreachable.
    if let Some(faults) = bank1_faults {
        let full = "c-authorised-full";
        for (mode, n) in [("error", 2), ("down", 1)] {
            assert_eq!(faults.send(&switch_to(mode)).await.status, 200);
            for _ in 0..n {
                hub_a
                    .get(&r.accounts_path(full), Some(&r.token(full)))
                    .await;
            }
        }
        assert_eq!(faults.send(&switch_to("ok")).await.status, 200);
    }
}

/// A trust sidecar's `200` answer's JSON.
#[track_caller]
fn ok_answer(r: Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.describe());
    r.json()
}

fn client_cert(m: &Value, at: &str) -> ClientCert {
    let read = |k: &str| std::fs::read_to_string(m[at][k].as_str().expect(k)).expect(k);
    ClientCert {
        cert_pem: read("cert"),
        key_pem: read("key"),
    }
}

/// `hub-billing reconcile` over the journals and a saved usage answer: exit status and
/// output.
fn reconcile(
    journals: &[&std::path::PathBuf],
    usage: &Path,
    tariff: &Path,
    from: Date,
    to: Date,
) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_billing-under-test"));
    cmd.arg("reconcile");
    for j in journals {
        cmd.arg("--journal").arg(j);
    }
    cmd.args(["--from", &from.to_string(), "--to", &to.to_string()])
        .arg("--usage")
        .arg(usage)
        .arg("--tariff")
        .arg(tariff);
    let out = cmd.output().expect("hub-billing");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the traffic: gateway 0, restarted mid-minute (its partial minute pushed under the
/// old epoch, the rest of the minute under the new one), then gateway 1; then both stop
/// (SIGTERM: the partial minute is pushed). Returns the journals and whether the restart
/// fell within one minute of calls.
fn traffic(r: &mut Running, rt: &tokio::runtime::Runtime) -> ([std::path::PathBuf; 2], bool) {
    let faults = r.faults_of("c-authorised-full");
    // Start early in a minute, so that the restart falls within it (the bursts take a
    // second or two): a clock condition, not synchronisation.
    poll_until(Duration::from_secs(30), || {
        (jiff::Timestamp::now().as_second().rem_euclid(60) < 30).then_some(())
    })
    .expect("a minute's first half");
    let dir = r.cluster.dir().to_owned();
    let journals = [dir.join("audit-1.jsonl"), dir.join("audit-2.jsonl")];
    rt.block_on(burst(r, 0, Some(&faults)));
    r.cluster.restart_gateway(0).expect("restart gateway 0");
    let before = journal_requests(&journals[0]);
    rt.block_on(async {
        burst(r, 0, None).await;
        burst(r, 1, Some(&faults)).await;
    });
    r.stop_gateways();
    let after = journal_requests(&journals[0]);
    let last_before = before.last().map(journal_minute);
    let first_after = after.get(before.len()).map(journal_minute);
    (
        journals,
        last_before.is_some() && last_before == first_after,
    )
}

/// (a) The usage route, polled until its calls reach the journals' (the last pushes land
/// within the gateways' shutdown), then equal to the recount row by row. Returns the
/// answer.
fn check_usage(
    r: &Running,
    rt: &tokio::runtime::Runtime,
    trust: &Client,
    (from, to): (Date, Date),
    want: &BTreeMap<UsageKey, (u64, u64)>,
) -> Value {
    let total: u64 = want.values().map(|c| c.0).sum();
    let path = format!("/v1/admin/usage?from={from}&to={to}");
    let usage = poll_until(Duration::from_secs(30), || {
        let v = ok_answer(rt.block_on(trust.send(&Req::get(path.as_str()))));
        let sum: u64 = usage_of(&v).values().map(|c| c.0).sum();
        (sum >= total).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "usage never held the {total} calls of the journals:\n{}",
            r.logs()
        )
    });
    assert_eq!(&usage_of(&usage), want);
    usage
}

/// (b) and (e): every participant's draft of the month equals the test's pricing, and
/// today's lines are priced by the version in force today.
fn check_drafts(
    rt: &tokio::runtime::Runtime,
    trust: &Client,
    (vs, today): (&[Version], Date),
    calls: &[Call],
    customer_of: &BTreeMap<String, String>,
) {
    let month = format!("{:04}-{:02}", today.year(), today.month());
    let expected = expected_statements(vs, today.last_of_month(), calls, customer_of);
    let drafts = ok_answer(rt.block_on(trust.send(&Req::get(format!(
        "/v1/admin/statements/draft?month={month}"
    )))));
    let drafts = drafts.as_array().expect("drafts");
    let got: BTreeMap<(String, String), Value> = drafts
        .iter()
        .map(|d| {
            assert_eq!(d["draft"], true);
            let key = (
                d["participant"].as_str().expect("participant").to_owned(),
                d["role"].as_str().expect("role").to_owned(),
            );
            (key, compared(&d["statement"]))
        })
        .collect();
    let expected: BTreeMap<(String, String), Value> = expected
        .into_iter()
        .map(|((p, role), v)| ((p, role.to_owned()), v))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (k, w) in &expected {
        assert_eq!(&got[k], w, "{k:?}");
    }
    // The comparison is of something: free calls, lines, a cap, money.
    let totals = |p: &str| &expected[&(p.to_owned(), "api_user".to_owned())]["totals"];
    assert!(totals(USER_A)["free_calls"].as_u64() > Some(0));
    assert!(totals(USER_A)["lines"].as_u64() > Some(0));
    assert!(totals(USER_B)["lines"].as_u64() > Some(0));
    assert_ne!(totals(USER_B)["amount"], "0.00");
    assert!(expected
        .values()
        .any(|s| !s["caps"].as_array().expect("caps").is_empty()));
    // (e) Calls of today priced by today's version (the test's calls are all of today
    // unless it ran across local midnight).
    let in_force = version_on(vs, today).from.to_string();
    if calls.iter().all(|c| c.day == today) {
        for d in drafts {
            for l in d["statement"]["lines"].as_array().expect("lines") {
                assert_eq!(l["tariff_from"], in_force.as_str(), "{l}");
            }
        }
    }
}

/// (c) `hub-billing reconcile` agrees with the saved usage answer, and names the
/// difference once one successful balances call is removed from a copy of journal 1.
fn check_reconcile(
    journals: &[std::path::PathBuf; 2],
    usage: &Value,
    tariff: &Path,
    (from, to): (Date, Date),
    want: &BTreeMap<UsageKey, (u64, u64)>,
) {
    let work = tempfile::tempdir().expect("temp dir");
    let saved = work.path().join("usage.json");
    std::fs::write(&saved, usage.to_string()).expect("usage.json");
    let (ok, out) = reconcile(&[&journals[0], &journals[1]], &saved, tariff, from, to);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&journals[0]).expect("journal");
    let is_removed = |l: &str| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["outcome"] == "success" && v["route"].as_str().map(norm).as_deref() == Some(BALANCES)
        })
    };
    let removed = text.lines().position(is_removed).expect("a balances call");
    let line: Value = serde_json::from_str(text.lines().nth(removed).expect("line")).expect("json");
    let cut: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(n, _)| *n != removed)
        .map(|(_, l)| l)
        .collect();
    let copy = work.path().join("audit-1-cut.jsonl");
    std::fs::write(&copy, cut.join("\n") + "\n").expect("copy");
    let (ok, out) = reconcile(&[&copy, &journals[1]], &saved, tariff, from, to);
    assert!(!ok, "a missing line reconciled:\n{out}");
    let user = line["api_user"].as_str().expect("api_user");
    let key = (
        Some(user.to_owned()),
        line["provider"].as_str().map(str::to_owned),
        BALANCES.to_owned(),
        "chargeable".to_owned(),
    );
    let n = want[&key].0;
    let named = format!("calls expected {} reported {n}", n - 1);
    assert!(
        out.contains(&named) && out.contains(user) && out.contains("balances"),
        "{out}"
    );
}

/// (d) An API user reads only its own usage and drafts.
fn check_access(
    r: &Running,
    rt: &tokio::runtime::Runtime,
    (from, to): (Date, Date),
    month: &str,
    want: &BTreeMap<UsageKey, (u64, u64)>,
) {
    let a = r.trust_as(0, USER_A);
    let get = |path: String| rt.block_on(a.send(&Req::get(path)));
    let own = ok_answer(get(format!("/v1/usage?from={from}&to={to}")));
    let mine: BTreeMap<UsageKey, (u64, u64)> = want
        .iter()
        .filter(|(k, _)| k.0.as_deref() == Some(USER_A) || k.1.as_deref() == Some(USER_A))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert!(!mine.is_empty() && mine.len() < want.len());
    assert_eq!(usage_of(&own), mine);
    let refused = get(format!(
        "/v1/usage?from={from}&to={to}&participant={USER_B}"
    ));
    assert_eq!(
        (refused.status, refused.code()),
        (403, "not_your_usage".to_owned())
    );
    let refused = get(format!(
        "/v1/statements/draft?month={month}&participant={USER_B}"
    ));
    assert_eq!(
        (refused.status, refused.code()),
        (403, "not_your_statements".to_owned())
    );
    let theirs = get(format!("/v1/statements/draft/{month}-api_user-{USER_B}"));
    assert_eq!(
        (theirs.status, theirs.code()),
        (404, "statement_not_found".to_owned())
    );
    let own_drafts = ok_answer(get(format!("/v1/statements/draft?month={month}")));
    let own_drafts = own_drafts.as_array().expect("drafts");
    assert!(!own_drafts.is_empty());
    assert!(own_drafts.iter().all(|d| d["participant"] == USER_A));
}

/// The consents' customers, from the manifest.
fn customers(m: &Value) -> BTreeMap<String, String> {
    let customer_of: BTreeMap<String, String> = m["consents"]
        .as_array()
        .expect("consents")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().expect("id").to_owned(),
                c["customer"].as_str().expect("customer").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        customer_of[EXTRA], customer_of["c-authorised-full"],
        "the extra consent is the same customer's"
    );
    customer_of
}

#[test]
fn usage_and_draft_statements_equal_the_journals_priced_by_the_tariff() {
    let today = jiff::Timestamp::now().to_zoned_datetime(almaty()).date();
    let vs = versions(today);
    let tariff_dir = tempfile::tempdir().expect("temp dir");
    let tariff = tariff_dir.path().join("tariff.toml");
    std::fs::write(&tariff, tariff_toml(&vs)).expect("tariff");
    let mut r = start(1, |o| {
        o.gateways = 2;
        o.tariff = Some(tariff.clone());
    });
    let rt = runtime();
    let m = r.manifest.clone();
    assert_eq!(
        m["billing"]["tariff"].as_str().map(Path::new),
        Some(std::fs::canonicalize(&tariff).expect("tariff").as_path())
    );
    assert_eq!(m["billing"]["admin_usage"], "/v1/admin/usage");
    let (journals, mid_minute) = traffic(&mut r, &rt);
    let mut lines = journal_requests(&journals[0]);
    lines.extend(journal_requests(&journals[1]));
    let calls = calls_of(&lines);
    let days = (
        calls.iter().map(|c| c.day).min().expect("calls"),
        calls.iter().map(|c| c.day).max().expect("calls"),
    );
    let want = recount(&vs, &calls);
    let ca = std::fs::read_to_string(m["ca_cert"].as_str().expect("ca")).expect("ca");
    let op = client_cert(&m, "operator");
    let trust = Client::trust(addr_of(&r.cluster.trust_urls()[0]), &ca, Some(&op));
    let usage = check_usage(&r, &rt, &trust, days, &want);
    check_drafts(&rt, &trust, (&vs, today), &calls, &customers(&m));
    check_reconcile(&journals, &usage, &tariff, days, &want);
    let month = format!("{:04}-{:02}", today.year(), today.month());
    check_access(&r, &rt, days, &month, &want);

    // The traffic was of every kind wanted, and the restart fell within a minute.
    assert_every_outcome(&lines);
    let routes: BTreeSet<&str> = calls.iter().map(|c| c.route.as_str()).collect();
    for route in DATA_ROUTES.iter().chain([&OPEN_DATA]) {
        assert!(routes.contains(route), "no {route} in {routes:?}");
    }
    assert!(
        mid_minute,
        "the restart did not fall within one minute of calls"
    );
}
