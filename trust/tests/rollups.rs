//! Rollups and SLA reports over real TLS (SQLite, or PostgreSQL when
//! `TRUST_TEST_POSTGRES_URL` is set): gateways push per-minute rollups, each minute stored
//! once per (gateway, epoch, minute); the operator's report equals a recount of the calls
//! the batches were made of, done here without the sidecar's code.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use consent_cache::Bin;
use serde_json::{json, Value};
use trust::clock::ManualClock;
use trust::wire::rollup::{
    CallRow, Histogram, LatencyRow, LiveRow, MinuteRollup, Outcome, RollupBatch, BUCKET_BOUNDS_US,
};

const ROLLUPS: &str = "/v1/rollups";
/// 2026-11-03T00:00:00Z: after every minute the tests push.
const NOW: i64 = 1_793_664_000;
/// 2026-10-31T19:00:00Z: local midnight of 2026-11-01 in Asia/Almaty (UTC+5).
const NOV_1_LOCAL: i64 = 1_793_473_200;
/// Asia/Almaty's offset since 2024-03-01 (no daylight saving time).
const ALMATY_OFFSET: i64 = 5 * 3600;

const ACCOUNTS: &str = "GET /v1/providers/{provider_id}/accounts";
const BALANCES: &str = "GET /v1/providers/{provider_id}/accounts/{account_id}/balances";
const TRANSACTIONS: &str = "GET /v1/providers/{provider_id}/accounts/{account_id}/transactions";

/// The SLA section the tests run with: Almaty days, BANK_2 held to tighter targets.
fn sla_file() -> String {
    format!(
        "[sla]\ntime_zone = \"Asia/Almaty\"\n\n[[sla.providers]]\nbin = \"{BANK_2}\"\n\
         availability_percent = 99.9\nbank_p95_ms = 100\n"
    )
}

async fn start(f: &Fixture) -> (trust::Running, Client) {
    let clock = ManualClock::new(NOW);
    let sla = trust::config_file::parse(std::path::Path::new("sla.toml"), &sla_file())
        .unwrap()
        .sla;
    start_with(f, &clock, |c| c.sla = sla).await
}

/// One call as a gateway saw it.
#[derive(Debug, Clone)]
struct Call {
    gateway: &'static str,
    epoch: &'static str,
    minute: i64,
    api_user: Option<&'static str>,
    provider: Option<&'static str>,
    route: &'static str,
    outcome: Outcome,
    lines: u64,
    bank_us: Option<u64>,
    hub_us: Option<u64>,
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Calls around Almaty's midnight of 2026-11-01 (a month boundary) and on 2026-11-02,
/// from two gateways, one of which restarted (a second epoch in the same minutes).
/// BANK_1 never fails and answers within 250 ms; BANK_2 fails about one call in ten and
/// is slow (some calls beyond the last bucket bound).
fn traffic() -> Vec<Call> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let minutes: Vec<i64> = (-6..6)
        .map(|k| NOV_1_LOCAL + 60 * k)
        .chain((0..4).map(|k| NOV_1_LOCAL + 86_400 + 3_600 + 60 * k))
        .collect();
    let sources = [("gw-a", "a1"), ("gw-a", "a2"), ("gw-b", "b1")];
    let mut out = Vec::new();
    for &(gateway, epoch) in &sources {
        for &minute in &minutes {
            for _ in 0..(5 + rng.below(25)) {
                out.push(call(&mut rng, gateway, epoch, minute));
            }
        }
    }
    out
}

fn call(rng: &mut Rng, gateway: &'static str, epoch: &'static str, minute: i64) -> Call {
    let provider = if rng.below(2) == 0 { BANK_1 } else { BANK_2 };
    let route = [ACCOUNTS, BALANCES, TRANSACTIONS][rng.below(3) as usize];
    let api_user = [USER_A, USER_B][rng.below(2) as usize];
    let roll = rng.below(100);
    let outcome = match (provider == BANK_2, roll) {
        (_, 0..=4) => Outcome::Refused,
        (_, 5..=9) => Outcome::ClientError,
        (true, 10..=13) => Outcome::ServerError,
        (true, 14..=15) => Outcome::Timeout,
        (true, 16..=17) => Outcome::Unreachable,
        (true, 18) => Outcome::BadResponse,
        _ => Outcome::Success,
    };
    let answered = matches!(
        outcome,
        Outcome::Success | Outcome::ClientError | Outcome::ServerError
    );
    let bank_us = answered.then(|| match provider {
        BANK_1 => 500 + rng.below(250_000),
        _ if rng.below(20) == 0 => 31_000_000 + rng.below(1_000_000),
        _ => 500 + rng.below(900_000),
    });
    let lines = if route == TRANSACTIONS && outcome == Outcome::Success {
        rng.below(50)
    } else {
        0
    };
    Call {
        gateway,
        epoch,
        minute,
        api_user: (outcome != Outcome::Refused || rng.below(2) == 0).then_some(api_user),
        provider: Some(provider),
        route,
        outcome,
        lines,
        bank_us,
        hub_us: bank_us.map(|_| 100 + rng.below(3_000)),
    }
}

/// What one gateway process pushes: its calls aggregated per minute (the gateway's
/// side, built here from the wire types). `gw-b` writes routes without the method, as
/// the audit journal does.
fn batches(calls: &[Call]) -> BTreeMap<(&'static str, &'static str), RollupBatch> {
    type Key = (Option<Bin>, Option<Bin>, String, Outcome);
    /// One minute: (calls, lines) by key; (bank, hub) by provider and route.
    type Minute = (
        BTreeMap<Key, (u64, u64)>,
        BTreeMap<(Bin, String), (Histogram, Histogram)>,
    );
    let mut grouped: BTreeMap<(&str, &str), BTreeMap<i64, Minute>> = BTreeMap::new();
    for c in calls {
        let route = if c.gateway == "gw-b" {
            c.route.trim_start_matches("GET ").to_owned()
        } else {
            c.route.to_owned()
        };
        let m = grouped
            .entry((c.gateway, c.epoch))
            .or_default()
            .entry(c.minute)
            .or_default();
        let provider = c.provider.map(bin);
        let e =
            m.0.entry((c.api_user.map(bin), provider, route.clone(), c.outcome))
                .or_default();
        e.0 += 1;
        e.1 += c.lines;
        if let (Some(p), Some(b), Some(h)) = (provider, c.bank_us, c.hub_us) {
            let l =
                m.1.entry((p, route))
                    .or_insert_with(|| (Histogram::new(), Histogram::new()));
            l.0.record(b);
            l.1.record(h);
        }
    }
    grouped
        .into_iter()
        .map(|((gateway, epoch), minutes)| {
            let minutes = minutes
                .into_iter()
                .map(|(minute, (calls, latency))| MinuteRollup {
                    minute,
                    calls: calls
                        .into_iter()
                        .map(
                            |((api_user, provider, route, outcome), (n, lines))| CallRow {
                                api_user,
                                provider,
                                route,
                                outcome,
                                calls: n,
                                lines,
                            },
                        )
                        .collect(),
                    latency: latency
                        .into_iter()
                        .map(|((provider, route), (bank, hub))| LatencyRow {
                            provider,
                            route,
                            bank,
                            hub,
                        })
                        .collect(),
                    live: vec![],
                    consents: vec![],
                })
                .collect();
            let batch = RollupBatch {
                gateway: gateway.into(),
                epoch: epoch.into(),
                minutes,
            };
            ((gateway, epoch), batch)
        })
        .collect()
}

async fn push(c: &Client, f: &Fixture, batch: &RollupBatch) -> Value {
    let body = serde_json::to_value(batch).unwrap();
    conforms("RollupBatch", &body);
    push_value(c, f, body).await
}

/// The local (Almaty) day of a minute, by plain arithmetic on the fixed offset.
fn local_day(minute: i64) -> String {
    let d = time::OffsetDateTime::from_unix_timestamp(minute + ALMATY_OFFSET)
        .unwrap()
        .date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The nearest-rank quantile of raw durations, as the upper bound (ms) of the bucket
/// holding it; `">30000"` beyond the last bound; `null` without durations.
fn quantile(values: &[u64], q: f64) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    let x = v[rank - 1];
    match BUCKET_BOUNDS_US.iter().find(|b| **b >= x) {
        Some(b) => json!(b / 1000),
        None => json!(">30000"),
    }
}

/// The expected figures of one provider × route × period, recounted from the calls.
#[derive(Default)]
struct Recount {
    by_outcome: BTreeMap<&'static str, u64>,
    bank: Vec<u64>,
    hub: Vec<u64>,
    days: BTreeSet<String>,
}

fn recount(
    calls: &[Call],
    period: fn(&str) -> String,
) -> BTreeMap<(String, String, String), Recount> {
    let mut out: BTreeMap<(String, String, String), Recount> = BTreeMap::new();
    for c in calls {
        let Some(p) = c.provider else { continue };
        let day = local_day(c.minute);
        let r = out
            .entry((p.to_owned(), c.route.to_owned(), period(&day)))
            .or_default();
        *r.by_outcome.entry(c.outcome.as_str()).or_default() += 1;
        r.bank.extend(c.bank_us);
        r.hub.extend(c.hub_us);
        r.days.insert(day);
    }
    out
}

/// Checks a report row against the recount (calls, availability, quantiles).
fn check_row(row: &Value, want: &Recount) {
    let n = |o: &str| want.by_outcome.get(o).copied().unwrap_or(0);
    for o in Outcome::ALL {
        assert_eq!(row["calls"][o.as_str()], json!(n(o.as_str())), "{row}");
    }
    let total: u64 = want.by_outcome.values().sum();
    let reached = total - n("refused");
    let failures = n("server_error") + n("timeout") + n("unreachable") + n("bad_response");
    assert_eq!(row["total"], json!(total));
    assert_eq!(row["reached_provider"], json!(reached));
    assert_eq!(row["failures"], json!(failures));
    // JSON numbers are read back to the nearest f64 but one: compared within 1e-12.
    match row["availability"].as_f64() {
        None => assert!(reached == 0 && row["availability"].is_null(), "{row}"),
        Some(a) => {
            let want = (reached - failures) as f64 / reached as f64;
            assert!((a - want).abs() < 1e-12, "{a} != {want}: {row}");
        }
    }
    for (name, values) in [("bank_ms", &want.bank), ("hub_ms", &want.hub)] {
        for (p, q) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
            assert_eq!(row[name][p], quantile(values, q), "{name}.{p} of {row}");
        }
    }
}

fn bank_p95_breached(want: &Recount, target_ms: u64) -> bool {
    match quantile(&want.bank, 0.95) {
        Value::Null => false,
        Value::Number(ms) => ms.as_u64().unwrap() > target_ms,
        _ => true,
    }
}

fn target_ms(provider: &str) -> u64 {
    if provider == BANK_2 {
        100
    } else {
        500
    }
}

async fn report(c: &Client, f: &Fixture, query: &str) -> Value {
    let r = c
        .get(Some(f.operator()), &format!("/v1/admin/sla?{query}"))
        .await
        .expect(200);
    conforms("SlaReport", &r);
    r
}

/// Days: every provider × route × local day, as recounted.
fn check_days(days: &Value, calls: &[Call]) {
    assert_eq!(days["time_zone"], "Asia/Almaty");
    let want = recount(calls, |d| d.to_owned());
    let rows = days["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{days}");
    for row in rows {
        let key = (
            row["provider"].as_str().unwrap().to_owned(),
            row["route"].as_str().unwrap().to_owned(),
            row["period"].as_str().unwrap().to_owned(),
        );
        let w = want
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected row {row}"));
        check_row(row, w);
        assert_eq!((&row["from"], &row["to"]), (&row["period"], &row["period"]));
        let breached = bank_p95_breached(w, target_ms(&key.0));
        let flagged = row["breaches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["target"] == "bank_p95" && b["day"] == key.2.as_str());
        assert_eq!(flagged, breached, "{row}");
        // Availability is judged per month, never on a day row.
        assert!(!row["breaches"].to_string().contains("\"availability\""));
    }
    // The recount has BANK_2 breaching somewhere, and BANK_1 nowhere.
    assert!(rows
        .iter()
        .any(|r| r["provider"] == BANK_2 && !r["breaches"].as_array().unwrap().is_empty()));
    assert!(rows
        .iter()
        .all(|r| r["provider"] != BANK_1 || r["breaches"].as_array().unwrap().is_empty()));
}

/// Months: every provider × route × month, as recounted, with its breaches.
fn check_months(months: &Value, calls: &[Call]) {
    let want = recount(calls, |d| d[..7].to_owned());
    let rows = months["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len(), "{months}");
    for row in rows {
        let provider = row["provider"].as_str().unwrap();
        let key = (
            provider.to_owned(),
            row["route"].as_str().unwrap().to_owned(),
            row["period"].as_str().unwrap().to_owned(),
        );
        let w = &want[&key];
        check_row(row, w);
        let (reached, failures) = (
            row["reached_provider"].as_u64().unwrap(),
            row["failures"].as_u64().unwrap(),
        );
        let target_ppm = if provider == BANK_2 { 999_000 } else { 995_000 };
        let below = u128::from(reached - failures) * 1_000_000 < u128::from(reached) * target_ppm;
        let breaches = row["breaches"].as_array().unwrap();
        assert_eq!(
            breaches.iter().any(|b| b["target"] == "availability"),
            reached > 0 && below,
            "{row}"
        );
        // The month row names each of its days whose bank p95 missed the target.
        let day_breaches: BTreeSet<String> = breaches
            .iter()
            .filter(|b| b["target"] == "bank_p95")
            .map(|b| b["day"].as_str().unwrap().to_owned())
            .collect();
        let day_want: BTreeSet<String> = recount(calls, |d| d.to_owned())
            .into_iter()
            .filter(|((p, r, d), w)| {
                p == provider
                    && *r == key.1
                    && d.starts_with(&key.2)
                    && bank_p95_breached(w, target_ms(p))
            })
            .map(|((_, _, d), _)| d)
            .collect();
        assert_eq!(day_breaches, day_want, "{row}");
        assert_eq!(row["from"], w.days.first().unwrap().as_str());
        assert_eq!(row["to"], w.days.last().unwrap().as_str());
    }
    assert!(rows.iter().any(|r| r["provider"] == BANK_2
        && r["breaches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["target"] == "availability")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_stored_once_and_the_report_equals_a_recount() {
    let f = Fixture::new();
    let (running, c) = start(&f).await;
    let calls = traffic();
    let batches = batches(&calls);

    // Each process's minutes in two pushes; the first push retried.
    for batch in batches.values() {
        let half = batch.minutes.len() / 2;
        let first = &batch.minutes[..half];
        let part = |m: &[MinuteRollup]| RollupBatch {
            minutes: m.to_vec(),
            ..batch.clone()
        };
        let r = push(&c, &f, &part(first)).await;
        assert_eq!(r, json!({"stored": half, "duplicates": 0}));
        let r = push(&c, &f, &part(first)).await;
        assert_eq!(r, json!({"stored": 0, "duplicates": half}));
        // The whole batch: only its second half is new.
        let r = push(&c, &f, batch).await;
        assert_eq!(
            r,
            json!({"stored": batch.minutes.len() - half, "duplicates": half})
        );
    }

    let days = report(&c, &f, "from=2026-10-31&to=2026-11-02&period=day").await;
    check_days(&days, &calls);
    // Months: October's last local day and November's first two.
    let months = report(&c, &f, "from=2026-10-31&to=2026-11-02&period=month").await;
    check_months(&months, &calls);

    // One provider only.
    let one = report(
        &c,
        &f,
        &format!("from=2026-11-01&to=2026-11-01&provider={BANK_1}"),
    )
    .await;
    let rows = one["rows"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["provider"] == BANK_1));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_gateways_push_and_only_operators_read_reports() {
    let f = Fixture::new();
    let (running, c) = start(&f).await;
    let body = json!({"gateway": "gw-a", "epoch": "ab", "minutes": []});
    let r = c.json(None, "POST", ROLLUPS, body.clone()).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "client_certificate_required".into())
    );
    for who in [f.user(USER_A), f.operator()] {
        let r = c.json(Some(who), "POST", ROLLUPS, body.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "hub_certificate_required".into())
        );
    }
    let r = c.get(Some(f.hub()), ROLLUPS).await;
    assert_eq!(r.status, 405);
    let ok = c
        .json(Some(f.hub()), "POST", ROLLUPS, body)
        .await
        .expect(200);
    assert_eq!(ok, json!({"stored": 0, "duplicates": 0}));
    // The schema the answers are held to does refuse what the route never answers.
    assert!(!violations("RollupStored", &json!({"stored": 1})).is_empty());

    let path = "/v1/admin/sla?from=2026-11-01&to=2026-11-01";
    for who in [f.user(USER_A), f.hub()] {
        let r = c.get(Some(who), path).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "operator_certificate_required".into())
        );
    }
    let r = c.get(None, path).await;
    assert_eq!(r.status, 401);
    running.stop().await;

    // With an internal listener, both routes are there only, like the feed.
    let clock = ManualClock::new(NOW);
    let (running, public) = start_with(&f, &clock, |c| {
        c.internal_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let internal = f.client(running.internal_addr().unwrap());
    let batch = json!({"gateway": "gw-a", "epoch": "ab", "minutes": []});
    let r = public
        .json(Some(f.hub()), "POST", ROLLUPS, batch.clone())
        .await;
    assert_eq!((r.status, r.code()), (404, "route_not_found".into()));
    let r = public.get(Some(f.operator()), path).await;
    assert_eq!((r.status, r.code()), (404, "route_not_found".into()));
    internal
        .json(Some(f.hub()), "POST", ROLLUPS, batch)
        .await
        .expect(200);
    internal.get(Some(f.operator()), path).await.expect(200);
    running.stop().await;
}

/// A valid one-minute batch to break in the table below.
fn valid() -> Value {
    let mut bank = vec![0u64; 19];
    bank[3] = 2;
    json!({
        "gateway": "gw-a",
        "epoch": "0badc0de",
        "minutes": [{
            "minute": NOW - 600,
            "calls": [
                {"api_user": USER_A, "provider": BANK_1, "route": ACCOUNTS, "outcome": "success", "calls": 2},
                {"api_user": null, "provider": null, "route": "-", "outcome": "refused", "calls": 1}
            ],
            "latency": [{"provider": BANK_1, "route": ACCOUNTS, "bank": bank, "hub": bank}]
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_with_the_rule_and_nothing_is_stored() {
    let f = Fixture::new();
    let (running, c) = start(&f).await;
    type Edit = fn(&mut Value);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |v| v["minutes"][0]["minute"] = json!(NOW - 593),
            "minutes[0].minute: the minute's start",
        ),
        (
            |v| v["minutes"][0]["minute"] = json!(NOW + 3600),
            "minutes[0].minute: starts in the future",
        ),
        (
            |v| v["gateway"] = json!("gw a"),
            "gateway: 1 to 64 characters",
        ),
        (
            |v| v["epoch"] = json!("zz"),
            "epoch: 1 to 64 hexadecimal digits",
        ),
        (
            |v| {
                v["minutes"][0]["calls"][0]["route"] =
                    json!(format!("GET /v1/providers/{BANK_1}/accounts"))
            },
            "minutes[0].calls[0].route: a route template of the contract",
        ),
        (
            |v| v["minutes"][0]["latency"][0]["bank"] = json!([1, 2, 3]),
            "minutes[0].latency[0].bank: exactly 19 bucket counts",
        ),
        (
            |v| v["minutes"][0]["latency"][0]["route"] = json!("-"),
            "minutes[0].latency[0].route",
        ),
        (
            |v| v["minutes"][0]["calls"][0]["provider"] = Value::Null,
            "minutes[0].calls[0].provider: required",
        ),
        (
            |v| v["minutes"][0]["calls"][0]["calls"] = json!(0),
            "minutes[0].calls[0].calls",
        ),
        (
            |v| v["minutes"][0]["calls"][0]["lines"] = json!(7),
            "only the transactions route returns lines",
        ),
        (
            |v| {
                let row = v["minutes"][0]["calls"][0].clone();
                v["minutes"][0]["calls"].as_array_mut().unwrap().push(row);
            },
            "minutes[0].calls[2]: api_user, provider, route and outcome repeat",
        ),
        (
            |v| {
                let m = v["minutes"][0].clone();
                v["minutes"].as_array_mut().unwrap().push(m);
            },
            "minutes[1].minute: minutes oldest first, each at most once",
        ),
        (
            |v| {
                v["minutes"][0]["live"] =
                    json!([{"provider": BANK_1, "route": ACCOUNTS, "sampled": 1, "violations": 2}])
            },
            "minutes[0].live[0].violations: at most sampled",
        ),
        (
            |v| {
                v["minutes"][0]["live"] =
                    json!([{"provider": BANK_1, "route": "-", "sampled": 1, "violations": 0}])
            },
            "minutes[0].live[0].route: a route template of the contract",
        ),
        (
            |v| {
                let row =
                    json!({"provider": BANK_1, "route": ACCOUNTS, "sampled": 1, "violations": 0});
                v["minutes"][0]["live"] = json!([row, row]);
            },
            "minutes[0].live[1]: provider and route repeat",
        ),
        (
            |v| v["minutes"][0]["calls"][0]["outcome"] = json!("teapot"),
            "JSON body: unknown variant",
        ),
        (
            |v| v["minutes"][0]["calls"][0]["colour"] = json!("990340000011"),
            "JSON body: unknown field `colour`",
        ),
    ];
    for (edit, rule) in cases {
        let mut body = valid();
        edit(&mut body);
        let r = c.json(Some(f.hub()), "POST", ROLLUPS, body.clone()).await;
        assert_eq!(
            r.status,
            400,
            "{rule}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.headers["content-type"], "application/problem+json");
        conforms("Problem", &r.json());
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(rule), "{rule} not in {detail}");
        for value in [BANK_1, USER_A, "teapot", "zz", "gw a"] {
            assert!(!detail.contains(value), "{detail} repeats {value}");
        }
    }
    // A batch whose second minute is refused stores nothing, not even its first minute.
    let mut two = valid();
    let mut later = two["minutes"][0].clone();
    later["minute"] = json!(NOW - 540);
    later["calls"][0]["calls"] = json!(0);
    two["minutes"].as_array_mut().unwrap().push(later);
    let r = c.json(Some(f.hub()), "POST", ROLLUPS, two).await;
    assert_eq!(r.status, 400);
    let r = push_value(&c, &f, valid()).await;
    assert_eq!(r, json!({"stored": 1, "duplicates": 0}));

    // Over the size bound: 413 before any parsing.
    let huge = vec![b' '; trust::rollups::MAX_BATCH_BYTES + 1];
    let r = c
        .send(
            Some(f.hub()),
            "POST",
            ROLLUPS,
            &[("content-type", "application/json")],
            huge,
        )
        .await;
    assert_eq!((r.status, r.code()), (413, "payload_too_large".into()));
    running.stop().await;
}

async fn push_value(c: &Client, f: &Fixture, body: Value) -> Value {
    let answer = c
        .json(Some(f.hub()), "POST", ROLLUPS, body)
        .await
        .expect(200);
    conforms("RollupStored", &answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_refuse_bad_dates_and_answer_csv_when_asked() {
    let f = Fixture::new();
    let (running, c) = start(&f).await;
    push_value(&c, &f, valid()).await;
    for (query, rule) in [
        ("from=2026-11-02&to=2026-11-01", "from: after to"),
        ("from=2025-01-01&to=2026-01-02", "at most 366 days"),
        ("from=2026-13-01&to=2026-12-01", "from: a date YYYY-MM-DD"),
        ("to=2026-11-01", "from: required"),
        (
            "from=2026-11-01&to=2026-11-01&period=week",
            "period: day or month",
        ),
        (
            "from=2026-11-01&to=2026-11-01&provider=42",
            "provider: a BIN",
        ),
    ] {
        let r = c
            .get(Some(f.operator()), &format!("/v1/admin/sla?{query}"))
            .await;
        assert_eq!((r.status, r.code()), (400, "bad_request".into()), "{query}");
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains(rule), "{query}: {detail}");
    }

    let path = "/v1/admin/sla?from=2026-11-03&to=2026-11-03&period=day";
    let json_report = report(&c, &f, "from=2026-11-03&to=2026-11-03&period=day").await;
    let row = &json_report["rows"][0];
    assert_eq!(row["calls"]["success"], 2);
    assert_eq!(row["bank_ms"]["p95"], 10);
    let (client, operator) = (&c, f.operator());
    let accepting = |accept: &'static str| async move {
        let headers = [("accept", accept)];
        client
            .send(Some(operator), "GET", path, &headers, Vec::new())
            .await
    };
    let r = accepting("text/csv").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    let mut csv = csv::Reader::from_reader(&r.body[..]);
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
    let records: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), json_report["rows"].as_array().unwrap().len());
    let cell = |name: &str| records[0][header.iter().position(|h| h == name).unwrap()].to_owned();
    assert_eq!(cell("provider"), BANK_1);
    assert_eq!(cell("route"), ACCOUNTS);
    assert_eq!(cell("success"), "2");
    assert_eq!(cell("availability"), "1");
    assert_eq!(cell("bank_p95_ms"), "10");
    assert_eq!(cell("target_bank_p95_ms"), "500");
    assert_eq!(cell("availability_breached"), "false");
    // Any other Accept is JSON.
    let r = accepting("text/csv;q=0, application/json").await;
    assert_eq!(r.headers["content-type"], "application/json");
    let r = accepting("application/json, TEXT/CSV").await;
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    running.stop().await;
}

/// One minute of BANK_1's transactions: `calls` successes and the live checks.
fn live_minute(minute: i64, route: &str, calls: u64, live: [u64; 3]) -> MinuteRollup {
    MinuteRollup {
        minute,
        calls: vec![CallRow {
            api_user: Some(bin(USER_A)),
            provider: Some(bin(BANK_1)),
            route: route.to_owned(),
            outcome: Outcome::Success,
            calls,
            lines: 0,
        }],
        latency: vec![],
        live: vec![LiveRow {
            provider: bin(BANK_1),
            route: route.to_owned(),
            sampled: live[0],
            violations: live[1],
            unchecked: live[2],
        }],
        consents: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_checks_are_stored_once_per_minute_and_reported_per_day() {
    let f = Fixture::new();
    let (running, c) = start(&f).await;
    // 2026-11-02T14:00Z: 19:00 on 2026-11-02 in Almaty.
    let m0 = NOW - 36_000;
    let first = RollupBatch {
        gateway: "gw-a".into(),
        epoch: "a1".into(),
        minutes: vec![
            live_minute(m0, TRANSACTIONS, 12, [10, 2, 1]),
            live_minute(m0 + 60, TRANSACTIONS, 23, [20, 0, 3]),
        ],
    };
    assert_eq!(
        push(&c, &f, &first).await,
        json!({"stored": 2, "duplicates": 0})
    );
    // Retried: nothing counted twice, live rows included.
    assert_eq!(
        push(&c, &f, &first).await,
        json!({"stored": 0, "duplicates": 2})
    );
    // A restarted gateway (a new epoch) in the same minute adds up; the journal's
    // spelling of the route is stored with its method.
    let restarted = RollupBatch {
        epoch: "a2".into(),
        minutes: vec![live_minute(m0, &TRANSACTIONS[4..], 5, [5, 5, 0])],
        ..first.clone()
    };
    assert_eq!(
        push(&c, &f, &restarted).await,
        json!({"stored": 1, "duplicates": 0})
    );

    let query = format!("from=2026-11-02&to=2026-11-02&provider={BANK_1}");
    let day = report(&c, &f, &query).await;
    let rows = day["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{day}");
    assert_eq!(rows[0]["route"], TRANSACTIONS);
    assert_eq!(rows[0]["calls"]["success"], 40);
    assert_eq!(
        rows[0]["live"],
        json!({"sampled": 35, "violations": 7, "unchecked": 4})
    );
    let r = c
        .send(
            Some(f.operator()),
            "GET",
            &format!("/v1/admin/sla?{query}"),
            &[("accept", "text/csv")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut csv = csv::Reader::from_reader(&r.body[..]);
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
    let record = csv.records().next().unwrap().unwrap();
    let cell = |name: &str| record[header.iter().position(|h| h == name).unwrap()].to_owned();
    assert_eq!(
        [
            cell("live_sampled"),
            cell("live_violations"),
            cell("live_unchecked")
        ],
        ["35", "7", "4"]
    );
    running.stop().await;
}
