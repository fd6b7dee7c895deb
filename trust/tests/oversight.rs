//! Sustained SLA breaches over real TLS (SQLite, or PostgreSQL when
//! `TRUST_TEST_POSTGRES_URL` is set): gateways push rollups, the sidecar evaluates every
//! provider API over a sliding window of closed minutes on its (manual) clock, and a
//! breach sustained over the window delists the API in the registry the gateways follow,
//! with an event naming the rule, the window and the numbers; clearing relists only with
//! the probes' relisting rule (M passes); a pin holds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use trust::breach::BreachSettings;
use trust::clock::{Clock, ManualClock};
use trust::grade::Hysteresis;
use trust::oversight::Observation;
use trust::wire::rollup::{
    CallRow, Histogram, LatencyRow, LiveRow, MinuteRollup, Outcome, RollupBatch,
};
use trust::wire::{ProviderApi, SnapshotLine};

/// 2026-11-03T00:00:00Z, a minute's start.
const NOW: i64 = 1_793_664_000;
const ACCOUNTS: &str = "GET /v1/providers/{provider_id}/accounts";
const BALANCES: &str = "GET /v1/providers/{provider_id}/accounts/{account_id}/balances";
const TRANSACTIONS: &str = "GET /v1/providers/{provider_id}/accounts/{account_id}/transactions";
/// K and M of the probes.
const H: Hysteresis = Hysteresis {
    fail_after: 3,
    pass_after: 2,
};

/// Windows of 5 minutes, settled 60 s, evaluated every 50 ms (of real time: the window
/// itself follows the manual clock).
fn settings() -> BreachSettings {
    BreachSettings {
        every: Duration::from_millis(50),
        window_minutes: 5,
        ..BreachSettings::default()
    }
}

/// A sidecar whose probes are configured (K, M, the provider outbox) but cannot run (no
/// client identity): the tests stand in for the prober through `App::record_probe`.
async fn start(f: &Fixture, clock: &ManualClock) -> (trust::Running, Client) {
    let missing = f.dir.path().join("missing.pem");
    let outbox = f.dir.path().join("provider_outbox");
    let (running, c) = start_with(f, clock, |c| {
        c.breach = settings();
        c.probe = Some(trust::prober::ProbeConfig {
            interval: Duration::from_secs(3600),
            client_cert: missing.clone(),
            client_key: missing.clone(),
            ca: missing,
            hysteresis: H,
            outbox: Some(outbox),
        });
    })
    .await;
    register_all(f, &c).await;
    (running, c)
}

/// One minute of one provider × route: calls by outcome, the bank's time of each, live
/// checks `[sampled, violations]`.
fn minute(
    at: i64,
    provider: &str,
    route: &str,
    outcomes: &[(Outcome, u64)],
    bank_ms: u64,
    live: [u64; 2],
) -> MinuteRollup {
    let mut bank = Histogram::new();
    let mut calls = Vec::new();
    for &(outcome, n) in outcomes {
        calls.push(CallRow {
            api_user: Some(bin(USER_A)),
            provider: Some(bin(provider)),
            route: route.to_owned(),
            outcome,
            calls: n,
            lines: 0,
        });
        for _ in 0..n {
            bank.record(bank_ms * 1000);
        }
    }
    MinuteRollup {
        minute: at,
        calls,
        latency: vec![LatencyRow {
            provider: bin(provider),
            route: route.to_owned(),
            bank: bank.clone(),
            hub: bank,
        }],
        live: (live[0] > 0)
            .then(|| LiveRow {
                provider: bin(provider),
                route: route.to_owned(),
                sampled: live[0],
                violations: live[1],
                unchecked: 0,
            })
            .into_iter()
            .collect(),
        consents: vec![],
    }
}

/// Pushes `minutes` as one gateway process (`epoch`), the rows of the same minute
/// merged into one.
async fn push(c: &Client, f: &Fixture, epoch: &str, minutes: Vec<MinuteRollup>) {
    let mut merged: std::collections::BTreeMap<i64, MinuteRollup> = Default::default();
    for m in minutes {
        match merged.get_mut(&m.minute) {
            Some(into) => {
                into.calls.extend(m.calls);
                into.latency.extend(m.latency);
                into.live.extend(m.live);
            }
            None => {
                merged.insert(m.minute, m);
            }
        }
    }
    let batch = RollupBatch {
        gateway: "gw-a".into(),
        epoch: epoch.into(),
        minutes: merged.into_values().collect(),
    };
    let body = serde_json::to_value(&batch).unwrap();
    conforms("RollupBatch", &body);
    let r = c
        .json(Some(f.hub()), "POST", "/v1/rollups", body)
        .await
        .expect(200);
    assert_eq!(r["duplicates"], 0, "{r}");
}

/// The five minutes of the window at `NOW + 1 s` (`[NOW - 360, NOW - 60)`).
fn window_minutes() -> impl Iterator<Item = i64> {
    (0..5).map(|k| NOW - 360 + 60 * k)
}

/// Moves the clock by `secs` and waits for an evaluation at the new time; returns the
/// provider's oversight then.
async fn evaluate(c: &Client, f: &Fixture, clock: &ManualClock, bank: &str, secs: i64) -> Value {
    clock.advance(secs);
    let at = clock.now();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = c
            .get(Some(f.operator()), &format!("/v1/admin/oversight/{bank}"))
            .await
            .expect(200);
        let done = v["apis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["evaluation"]["evaluated_at"] == at);
        if done {
            conforms("ProviderOversight", &v);
            return v;
        }
        assert!(Instant::now() < deadline, "no evaluation at {at}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it holds (a deadline of 20 s).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn api<'a>(oversight: &'a Value, name: &str) -> &'a Value {
    oversight["apis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["api"] == name)
        .unwrap_or_else(|| panic!("no {name} in {oversight}"))
}

/// The `delisted` list the gateways read for `bank` in the snapshot.
async fn delisted(c: &Client, f: &Fixture, bank: &str) -> Value {
    let r = c.get(Some(f.hub()), "/v1/snapshot").await;
    assert_eq!(r.status, 200);
    let text = std::str::from_utf8(&r.body).unwrap();
    for line in text.lines() {
        if let Ok(SnapshotLine::Participant(p)) = SnapshotLine::parse(line) {
            if p.bin == bin(bank) {
                return json!(p.delisted);
            }
        }
    }
    panic!("{bank} not in the snapshot");
}

async fn probe(running: &trust::Running, bank: &str, api: ProviderApi, passed: bool) {
    let o = Observation {
        provider: bin(bank),
        api,
        passed,
        latency_us: 1_000,
        report: json!({"api": api, "verdict": if passed { "pass" } else { "fail" }}),
        failed_rules: if passed {
            vec![]
        } else {
            vec!["status".into()]
        },
    };
    running.app().record_probe(o, H).await.unwrap();
}

async fn register_subject(c: &Client, f: &Fixture, bank: &str) {
    c.json(
        Some(f.operator()),
        "PUT",
        &format!("/v1/admin/oversight/{bank}/subject"),
        json!({"api_user": USER_A, "consent_id": "probe-1", "customer": CUSTOMER,
               "permissions": ["accounts", "balances", "transactions"]}),
    )
    .await
    .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_availability_breach_delists_and_relists_only_with_passing_probes() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    register_subject(&c, &f, BANK_1).await;
    // Every minute of the window: half of BANK_1's account lists fail (5xx); its
    // balances and BANK_2 are healthy; 4xx are not failures of the provider.
    let mut minutes = Vec::new();
    for m in window_minutes() {
        let bad = [(Outcome::Success, 5), (Outcome::ServerError, 5)];
        minutes.push(minute(m, BANK_1, ACCOUNTS, &bad, 100, [0, 0]));
    }
    push(&c, &f, "a1", minutes).await;
    let healthy = [(Outcome::Success, 10), (Outcome::ClientError, 10)];
    let mut others = Vec::new();
    for m in window_minutes() {
        others.push(minute(m, BANK_1, BALANCES, &healthy, 100, [0, 0]));
    }
    push(&c, &f, "a2", others).await;
    push(
        &c,
        &f,
        "b1",
        window_minutes()
            .map(|m| minute(m, BANK_2, ACCOUNTS, &healthy, 100, [0, 0]))
            .collect(),
    )
    .await;

    let v = evaluate(&c, &f, &clock, BANK_1, 1).await;
    let accounts = api(&v, "accounts");
    assert_eq!(
        (
            &accounts["grade"],
            &accounts["listed"],
            &accounts["breaching"]
        ),
        (&json!("failing"), &json!(false), &json!(true)),
        "{accounts}"
    );
    let e = &accounts["evaluation"];
    assert_eq!(e["rules"], json!(["availability"]));
    assert_eq!(
        e["window"],
        json!({"from": NOW - 360, "to": NOW - 60, "minutes": 5})
    );
    assert_eq!(e["availability"]["calls"], 50);
    assert_eq!(e["availability"]["failures"], 25);
    assert_eq!(e["availability"]["availability_percent"], 50.0);
    assert_eq!(e["availability"]["minutes_missed"], 5);
    let balances = api(&v, "balances");
    assert_eq!(balances["evaluation"]["availability"]["calls"], 100);
    assert_eq!(
        (&balances["grade"], &balances["listed"]),
        (&json!("conformant"), &json!(true))
    );
    // The event names the rule, the window and the numbers.
    let event = &v["events"][0];
    assert_eq!(
        (
            &event["api"],
            &event["actor"],
            &event["to"],
            &event["listed"]
        ),
        (
            &json!("accounts"),
            &json!("sla"),
            &json!("failing"),
            &json!(false)
        ),
        "{event}"
    );
    assert_eq!(event["evidence"]["rules"], json!(["availability"]));
    assert_eq!(event["evidence"]["availability"]["failures"], 25);
    assert_eq!(event["evidence"]["window"]["to"], NOW - 60);
    // Published to every gateway: the registry's delisted list, BANK_2 untouched.
    assert_eq!(delisted(&c, &f, BANK_1).await, json!(["accounts"]));
    assert_eq!(delisted(&c, &f, BANK_2).await, json!([]));
    // The provider is told, and the metrics show it, once the round ends.
    let notice = json!({"provider": BANK_1, "api": "accounts", "grade": "failing",
                        "listed": false, "failed_rules": ["sla_availability"]});
    let outbox = f.dir.path().join("provider_outbox");
    eventually("the provider notice", || {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let done = lines == [notice.clone()];
        async move { done }
    })
    .await;
    let gauge = format!("hub_provider_api_sla_breach{{api=\"accounts\",provider=\"{BANK_1}\"}} 1");
    eventually("the breach gauge", || async {
        let metrics = c.get(Some(f.operator()), "/metrics").await;
        String::from_utf8_lossy(&metrics.body).contains(&gauge)
    })
    .await;

    // Passing probes while the window still breaches do not relist.
    probe(&running, BANK_1, ProviderApi::Accounts, true).await;
    probe(&running, BANK_1, ProviderApi::Accounts, true).await;
    let v = evaluate(&c, &f, &clock, BANK_1, 1).await;
    assert_eq!(api(&v, "accounts")["listed"], false);
    // A failed probe restarts the count; then the window slides past the bad minutes
    // (no traffic since: nothing concluded) and clears, but one pass is not M.
    probe(&running, BANK_1, ProviderApi::Accounts, false).await;
    probe(&running, BANK_1, ProviderApi::Accounts, true).await;
    let v = evaluate(&c, &f, &clock, BANK_1, 360).await;
    let accounts = api(&v, "accounts");
    assert_eq!(accounts["breaching"], false, "{accounts}");
    assert_eq!(accounts["evaluation"]["traffic"], false);
    assert_eq!(
        accounts["listed"], false,
        "cleared, but fewer than M passes"
    );
    assert_eq!(delisted(&c, &f, BANK_1).await, json!(["accounts"]));
    // The M-th pass relists.
    probe(&running, BANK_1, ProviderApi::Accounts, true).await;
    assert_eq!(delisted(&c, &f, BANK_1).await, json!([]));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_calls_or_one_bad_minute_conclude_nothing() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let mut minutes = Vec::new();
    for (k, m) in window_minutes().enumerate() {
        // Account lists: every call fails, but 15 calls in the window (minimum 20).
        minutes.push(minute(
            m,
            BANK_1,
            ACCOUNTS,
            &[(Outcome::Timeout, 3)],
            100,
            [0, 0],
        ));
        // Balances: one minute of 5xx in an otherwise good window (80 % available).
        let outcome = if k == 2 {
            Outcome::ServerError
        } else {
            Outcome::Success
        };
        minutes.push(minute(m, BANK_1, BALANCES, &[(outcome, 10)], 100, [0, 0]));
    }
    push(&c, &f, "a1", minutes).await;
    let v = evaluate(&c, &f, &clock, BANK_1, 1).await;
    let accounts = api(&v, "accounts");
    assert_eq!(accounts["evaluation"]["availability"]["calls"], 15);
    assert_eq!(accounts["evaluation"]["availability"]["failures"], 15);
    let balances = api(&v, "balances");
    assert_eq!(balances["evaluation"]["availability"]["failures"], 10);
    assert_eq!(balances["evaluation"]["availability"]["minutes_missed"], 1);
    for a in [accounts, balances] {
        assert_eq!(
            (&a["grade"], &a["listed"], &a["breaching"]),
            (&json!("conformant"), &json!(true), &json!(false)),
            "{a}"
        );
        assert_eq!(a["evaluation"]["rules"], json!([]));
    }
    assert!(v["events"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(delisted(&c, &f, BANK_1).await, json!([]));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_violations_over_the_share_delist_and_a_pin_holds() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    // BANK_2 pinned listed for every API before anything happens.
    c.json(
        Some(f.operator()),
        "PUT",
        &format!("/v1/admin/oversight/{BANK_2}/pin"),
        json!({"listed": true, "reason": "incident 42: kept published"}),
    )
    .await
    .expect(200);
    let mut minutes = Vec::new();
    for m in window_minutes() {
        // BANK_1's transactions answer, but 2 of each 10 sampled answers break the schema.
        let ok = [(Outcome::Success, 10)];
        minutes.push(minute(m, BANK_1, TRANSACTIONS, &ok, 100, [10, 2]));
        // Its account lists are slow (p95 above 500 ms), but too few are sampled.
        minutes.push(minute(m, BANK_1, ACCOUNTS, &ok, 750, [3, 3]));
        // BANK_2 fails every call.
        let bad = [(Outcome::Unreachable, 10)];
        minutes.push(minute(m, BANK_2, ACCOUNTS, &bad, 100, [0, 0]));
    }
    push(&c, &f, "a1", minutes).await;
    let v = evaluate(&c, &f, &clock, BANK_1, 1).await;
    let tx = api(&v, "transactions");
    assert_eq!(
        (&tx["grade"], &tx["listed"]),
        (&json!("failing"), &json!(false))
    );
    let live = &tx["evaluation"]["live"];
    assert_eq!(
        (&live["sampled"], &live["violations"], &live["breached"]),
        (&json!(50), &json!(10), &json!(true)),
        "{tx}"
    );
    assert_eq!(tx["evaluation"]["rules"], json!(["live_schema"]));
    let accounts = api(&v, "accounts");
    assert_eq!(accounts["evaluation"]["rules"], json!(["bank_p95"]));
    assert_eq!(accounts["evaluation"]["bank_p95"]["p95_ms"], 750);
    assert_eq!(accounts["evaluation"]["live"]["breached"], false);
    assert_eq!(
        delisted(&c, &f, BANK_1).await,
        json!(["accounts", "transactions"])
    );

    // BANK_2 breaches too: graded failing, the event recorded, but published as pinned.
    let v = evaluate(&c, &f, &clock, BANK_2, 0).await;
    let accounts = api(&v, "accounts");
    assert_eq!(
        (
            &accounts["grade"],
            &accounts["listed"],
            &accounts["breaching"]
        ),
        (&json!("failing"), &json!(true), &json!(true)),
        "{accounts}"
    );
    assert_eq!(accounts["evaluation"]["availability"]["failures"], 50);
    let sla_event = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["actor"] == "sla")
        .unwrap_or_else(|| panic!("no sla event: {v}"));
    assert_eq!(
        (&sla_event["to"], &sla_event["listed"]),
        (&json!("failing"), &json!(true))
    );
    assert_eq!(delisted(&c, &f, BANK_2).await, json!([]));
    let all = c
        .get(Some(f.operator()), "/v1/admin/oversight")
        .await
        .expect(200);
    conforms("OversightList", &all);
    running.stop().await;
}
