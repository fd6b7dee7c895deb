//! Usage, the platform report and monthly statements over real TLS (SQLite, or
//! PostgreSQL when `TRUST_TEST_POSTGRES_URL` is set): gateways push rollups, the usage
//! routes answer them summed and classified by the tariff in force each day, the
//! sidecar's own events are counted with the actions, and a closed month's statements
//! equal what `billing` prices from the same calls recounted here.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use consent_cache::Bin;
use serde_json::{json, Value};
use trust::clock::ManualClock;
use trust::wire::rollup::{CallRow, ConsentRow, MinuteRollup, Outcome, RollupBatch};

/// 2026-11-03T00:00:00Z.
const NOW: i64 = 1_793_664_000;
/// 2026-10-31T19:00:00Z: local midnight of 2026-11-01 in Asia/Almaty (UTC+5).
const NOV_1_LOCAL: i64 = 1_793_473_200;
/// Local midnight of 2026-12-01 in Asia/Almaty.
const DEC_1_LOCAL: i64 = NOV_1_LOCAL + 30 * 86_400;
const ALMATY_OFFSET: i64 = 5 * 3600;

const ACCOUNTS: &str = "GET /v1/providers/{provider_id}/accounts";
const BALANCES: &str = "GET /v1/providers/{provider_id}/accounts/{account_id}/balances";
const TRANSACTIONS: &str = "GET /v1/providers/{provider_id}/accounts/{account_id}/transactions";
const OPEN_DATA: &str = "GET /v1/open-data/{provider_id}/{dataset}";

/// Two versions: from 2026-11-02 successful account listings are free and data calls
/// cost more; two free calls per customer per day; lines priced per 100.
const TARIFF: &str = r#"
time_zone = "Asia/Almaty"

[[versions]]
effective_from = 2026-01-01
free_per_customer_day = 2
[versions.prices]
chargeable = "3.00"
per_100_lines = "1.00"

[[versions]]
effective_from = 2026-11-02
free_per_customer_day = 2
[versions.prices]
chargeable = "4.50"
per_100_lines = "1.00"
[[versions.rules]]
route = "GET /v1/providers/{provider_id}/accounts"
outcome = "success"
class = "free"
"#;

fn billing_settings(f: &Fixture) -> trust::statements::BillingSettings {
    std::fs::write(f.dir.path().join("tariff.toml"), TARIFF).unwrap();
    let conf = f.dir.path().join("trust.toml");
    std::fs::write(&conf, "[billing]\ntariff = \"tariff.toml\"\n").unwrap();
    trust::config_file::load(&conf).unwrap().billing.unwrap()
}

async fn start(f: &Fixture, clock: &ManualClock) -> (trust::Running, Client) {
    let b = billing_settings(f);
    let (running, c) = start_with(f, clock, |c| c.billing = Some(b)).await;
    register_all(f, &c).await;
    (running, c)
}

/// One call as a gateway saw it; `consent` for successful calls of an API user.
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
    consent: Option<String>,
}

/// Deterministic calls over local 2026-10-31 .. 2026-11-02 from two gateway processes:
/// every route, every kind of outcome, consents of two customers per API user.
fn traffic(consents: &HashMap<&'static str, Vec<String>>) -> Vec<Call> {
    let mut out = Vec::new();
    let mut n: u64 = 0;
    let minutes = [-120, -1, 0, 1, 600, 1440, 1441, 2000].map(|m| NOV_1_LOCAL + 60 * m);
    for (gateway, epoch) in [("gw-a", "a1"), ("gw-b", "b1")] {
        for minute in minutes {
            for _ in 0..12 {
                n += 1;
                let api_user = [USER_A, USER_B][(n % 2) as usize];
                let provider = [BANK_1, BANK_2][((n / 2) % 2) as usize];
                let route = [ACCOUNTS, BALANCES, TRANSACTIONS, OPEN_DATA][((n / 3) % 4) as usize];
                let outcome = match n % 7 {
                    0 => Outcome::Refused,
                    1 => Outcome::ClientError,
                    2 => Outcome::ServerError,
                    _ => Outcome::Success,
                };
                let ok = outcome == Outcome::Success;
                let consent = (ok && route != OPEN_DATA)
                    .then(|| consents[api_user][(n / 5 % 2) as usize].clone());
                out.push(Call {
                    gateway,
                    epoch,
                    minute,
                    api_user: (outcome != Outcome::Refused || n.is_multiple_of(3))
                        .then_some(api_user),
                    provider: Some(provider),
                    route,
                    outcome,
                    lines: if ok && route == TRANSACTIONS {
                        n % 170
                    } else {
                        0
                    },
                    consent,
                });
            }
        }
    }
    out
}

/// The batches the gateways push: calls and consents rows per minute.
fn batches(calls: &[Call]) -> Vec<RollupBatch> {
    type CallKey = (Option<Bin>, Option<Bin>, String, Outcome);
    type ConsentKey = (Bin, Bin, String, String);
    /// One minute: (calls, lines) by call key; calls by consent key.
    type Minute = (BTreeMap<CallKey, (u64, u64)>, BTreeMap<ConsentKey, u64>);
    let mut grouped: BTreeMap<(&str, &str), BTreeMap<i64, Minute>> = BTreeMap::new();
    for c in calls {
        let m = grouped
            .entry((c.gateway, c.epoch))
            .or_default()
            .entry(c.minute)
            .or_default();
        let e =
            m.0.entry((
                c.api_user.map(bin),
                c.provider.map(bin),
                c.route.into(),
                c.outcome,
            ))
            .or_default();
        e.0 += 1;
        e.1 += c.lines;
        if let (Some(id), Some(u), Some(p)) = (&c.consent, c.api_user, c.provider) {
            *m.1.entry((bin(u), bin(p), id.clone(), c.route.into()))
                .or_default() += 1;
        }
    }
    grouped
        .into_iter()
        .map(|((gateway, epoch), minutes)| RollupBatch {
            gateway: gateway.into(),
            epoch: epoch.into(),
            minutes: minutes
                .into_iter()
                .map(|(minute, (calls, consents))| MinuteRollup {
                    minute,
                    calls: calls
                        .into_iter()
                        .map(
                            |((api_user, provider, route, outcome), (calls, lines))| CallRow {
                                api_user,
                                provider,
                                route,
                                outcome,
                                calls,
                                lines,
                            },
                        )
                        .collect(),
                    latency: vec![],
                    live: vec![],
                    consents: consents
                        .into_iter()
                        .map(|((api_user, provider, consent, route), calls)| ConsentRow {
                            api_user,
                            provider,
                            consent,
                            route,
                            calls,
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

async fn push(c: &Client, f: &Fixture, batch: &RollupBatch) -> Value {
    let body = serde_json::to_value(batch).unwrap();
    conforms("RollupBatch", &body);
    c.json(Some(f.hub()), "POST", "/v1/rollups", body)
        .await
        .expect(200)
}

fn local_day(minute: i64) -> jiff::civil::Date {
    let d = time::OffsetDateTime::from_unix_timestamp(minute + ALMATY_OFFSET)
        .unwrap()
        .date();
    jiff::civil::date(d.year() as i16, u8::from(d.month()) as i8, d.day() as i8)
}

/// The calls as billing's usage rows, one per call (billing sums them itself).
fn usage_rows(calls: &[Call]) -> Vec<billing::UsageRow> {
    calls
        .iter()
        .map(|c| billing::UsageRow {
            day: local_day(c.minute),
            api_user: c.api_user.map(bin),
            provider: c.provider.map(bin),
            route: c.route.into(),
            outcome: c.outcome,
            calls: 1,
            lines: c.lines,
        })
        .collect()
}

/// The expected usage answer's rows, recounted from the calls and classified with the
/// tariff version in force on each call's local day.
fn expected_usage(calls: &[Call], keep: impl Fn(&Call) -> bool) -> Vec<Value> {
    let tariff = billing::Tariff::parse(TARIFF, "tariff.toml").unwrap();
    let mut sums: BTreeMap<(String, String, String, String), (u64, u64)> = BTreeMap::new();
    for c in calls.iter().filter(|c| keep(c)) {
        let class = tariff
            .version_at(local_day(c.minute))
            .unwrap()
            .class_of(c.route, c.outcome);
        let key = (
            c.api_user.unwrap_or("").to_owned(),
            c.provider.unwrap_or("").to_owned(),
            c.route.to_owned(),
            class.as_str().to_owned(),
        );
        let e = sums.entry(key).or_default();
        e.0 += 1;
        e.1 += c.lines;
    }
    sums.into_iter()
        .map(|((u, p, route, class), (calls, lines))| {
            let nul = |s: String| if s.is_empty() { Value::Null } else { json!(s) };
            json!({"api_user": nul(u), "provider": nul(p), "route": route, "class": class,
                   "calls": calls, "lines": lines})
        })
        .collect()
}

fn sorted(rows: &Value) -> Vec<Value> {
    let mut v = rows.as_array().unwrap().clone();
    v.sort_by_key(|r| r.to_string());
    v
}

fn sorted_vec(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|r| r.to_string());
    v
}

/// Two consents per API user (two customers), both banks, authorised.
async fn consents(f: &Fixture, c: &Client) -> HashMap<&'static str, Vec<String>> {
    let mut out = HashMap::new();
    for user in [USER_A, USER_B] {
        let mut ids = Vec::new();
        for customer in [CUSTOMER, OTHER_CUSTOMER] {
            let id = create_consent(
                c,
                f.user(user),
                customer,
                json!({"providers": [BANK_1, BANK_2]}),
            )
            .await;
            authorise(c, &f.outbox(), customer, &id).await;
            ids.push(id);
        }
        out.insert(user, ids);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_the_pushed_rollups_summed_and_classified_once() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let consents = consents(&f, &c).await;
    let calls = traffic(&consents);
    let batches = batches(&calls);
    for b in &batches {
        assert_eq!(push(&c, &f, b).await["stored"], json!(b.minutes.len()));
    }
    // A retried push (the gateway did not see the answer) counts nothing twice.
    let again = push(&c, &f, &batches[0]).await;
    assert_eq!(again["stored"], 0);
    assert_eq!(again["duplicates"], json!(batches[0].minutes.len()));

    let q = "from=2026-10-31&to=2026-11-02";
    let v = c
        .get(Some(f.operator()), &format!("/v1/admin/usage?{q}"))
        .await
        .expect(200);
    conforms("Usage", &v);
    assert_eq!(v["time_zone"], "Asia/Almaty");
    assert_eq!(
        sorted(&v["rows"]),
        sorted_vec(expected_usage(&calls, |_| true))
    );
    // Both versions' classes appear: listings are chargeable on Nov 1, free from Nov 2.
    let rows = v["rows"].as_array().unwrap();
    for class in ["chargeable", "free", "refused", "provider_failed"] {
        assert!(rows.iter().any(|r| r["class"] == class), "{class}: {v}");
    }

    // Only Nov 2 (the second version).
    let v = c
        .get(
            Some(f.operator()),
            "/v1/admin/usage?from=2026-11-02&to=2026-11-02",
        )
        .await
        .expect(200);
    let nov2 = local_day(NOV_1_LOCAL + 86_400);
    assert_eq!(
        sorted(&v["rows"]),
        sorted_vec(expected_usage(&calls, |c| local_day(c.minute) == nov2))
    );

    // Per day: every row names its day, and the days add up to the range.
    let days = c
        .get(
            Some(f.operator()),
            &format!("/v1/admin/usage?{q}&group=day"),
        )
        .await
        .expect(200);
    conforms("Usage", &days);
    let total = |v: &Value| -> u64 {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["calls"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total(&days), calls.len() as u64);
    assert!(days["rows"].as_array().unwrap().iter().all(|r| [
        "2026-10-31",
        "2026-11-01",
        "2026-11-02"
    ]
    .contains(&r["period"].as_str().unwrap())));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consents_row_beyond_the_minutes_successful_calls_is_refused() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let batch = RollupBatch {
        gateway: "gw-a".into(),
        epoch: "a1".into(),
        minutes: vec![MinuteRollup {
            minute: NOV_1_LOCAL,
            calls: vec![CallRow {
                api_user: Some(bin(USER_A)),
                provider: Some(bin(BANK_1)),
                route: BALANCES.into(),
                outcome: Outcome::Success,
                calls: 2,
                lines: 0,
            }],
            latency: vec![],
            live: vec![],
            consents: vec![ConsentRow {
                api_user: bin(USER_A),
                provider: bin(BANK_1),
                consent: "c-1".into(),
                route: BALANCES.into(),
                calls: 3,
            }],
        }],
    };
    let r = c
        .json(
            Some(f.hub()),
            "POST",
            "/v1/rollups",
            serde_json::to_value(&batch).unwrap(),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("minutes[0].consents[0].calls:"),
        "{}",
        r.json()
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_reads_only_its_own_usage_and_statements() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let consents = consents(&f, &c).await;
    let calls = traffic(&consents);
    for b in &batches(&calls) {
        push(&c, &f, b).await;
    }
    let q = "from=2026-10-31&to=2026-11-02";
    let a = f.user(USER_A);
    let v = c.get(Some(a), &format!("/v1/usage?{q}")).await.expect(200);
    let mine = |c: &Call| c.api_user == Some(USER_A) || c.provider == Some(USER_A);
    assert_eq!(sorted(&v["rows"]), sorted_vec(expected_usage(&calls, mine)));
    assert!(v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["api_user"] == USER_A));
    // Naming itself is fine; naming another is refused.
    c.get(Some(a), &format!("/v1/usage?{q}&participant={USER_A}"))
        .await
        .expect(200);
    let r = c
        .get(Some(a), &format!("/v1/usage?{q}&participant={USER_B}"))
        .await;
    assert_eq!((r.status, r.code()), (403, "not_your_usage".to_owned()));
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/problem+json"));
    // The operator's routes are not a participant's.
    assert_eq!(
        c.get(Some(a), &format!("/v1/admin/usage?{q}")).await.status,
        403
    );
    assert_eq!(c.get(None, &format!("/v1/usage?{q}")).await.status, 401);

    // Statements: November issued; each API user sees its own, never the other's.
    clock.set(DEC_1_LOCAL + 3600);
    c.send(
        Some(f.operator()),
        "POST",
        "/v1/admin/statements/issue?month=2026-11",
        &[],
        vec![],
    )
    .await
    .expect(200);
    let own = c
        .get(Some(a), "/v1/statements?month=2026-11")
        .await
        .expect(200);
    let own = own.as_array().unwrap();
    assert!(!own.is_empty());
    assert!(own.iter().all(|s| s["participant"] == USER_A));
    let theirs = format!("2026-11-api_user-{USER_B}");
    let r = c.get(Some(a), &format!("/v1/statements/{theirs}")).await;
    assert_eq!(
        (r.status, r.code()),
        (404, "statement_not_found".to_owned())
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(USER_B));
    let r = c
        .get(Some(a), &format!("/v1/statements?participant={USER_B}"))
        .await;
    assert_eq!(r.status, 403);
    c.get(Some(f.user(USER_B)), &format!("/v1/statements/{theirs}"))
        .await
        .expect(200);
    running.stop().await;
}

/// The sidecar's own events per API user, as the platform report sums them, equal what was
/// done and what the consents' history says of the same facts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_counted_with_the_actions() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let a = f.user(USER_A);
    let authorised = create_consent(&c, a, CUSTOMER, json!({})).await;
    authorise(&c, &f.outbox(), CUSTOMER, &authorised).await;
    let rejected = create_consent(&c, a, CUSTOMER, json!({})).await;
    let s = session(&c, CUSTOMER).await;
    c.customer(
        &s,
        "POST",
        &format!("/v1/customer/consents/{rejected}/reject"),
        None,
    )
    .await
    .expect(200);
    let revoked = create_consent(&c, a, OTHER_CUSTOMER, json!({})).await;
    c.send(
        Some(a),
        "DELETE",
        &format!("/v1/consents/{revoked}"),
        &[],
        vec![],
    )
    .await
    .expect(200);
    // Revoking again changes nothing and counts nothing.
    c.send(
        Some(a),
        "DELETE",
        &format!("/v1/consents/{revoked}"),
        &[],
        vec![],
    )
    .await
    .expect(200);
    create_consent(&c, f.user(USER_B), CUSTOMER, json!({})).await;
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={authorised}");
    for _ in 0..3 {
        c.token(Some(a), &form).await.expect(200);
    }
    // A refused token request is not counted.
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={rejected}");
    assert_eq!(c.token(Some(a), &form).await.status, 400);

    let v = c
        .get(
            Some(f.operator()),
            "/v1/admin/report?from=2026-11-03&to=2026-11-03",
        )
        .await
        .expect(200);
    let row = |who: &str| {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["participant"] == who)
            .cloned()
            .unwrap_or_else(|| panic!("{who}: {v}"))
    };
    conforms("PlatformReport", &v);
    let ra = row(USER_A);
    assert_eq!(ra["consents_created"], 3);
    assert_eq!(ra["consents_authorised"], 1);
    assert_eq!(ra["consents_rejected"], 1);
    assert_eq!(ra["consents_revoked"], 1);
    assert_eq!(ra["consents_expired"], 0);
    assert_eq!(ra["tokens_issued"], 3);
    // The same facts as the consents' own history says them.
    let mut history: BTreeMap<String, u64> = BTreeMap::new();
    for id in [&authorised, &rejected, &revoked] {
        let v = c
            .get(Some(a), &format!("/v1/consents/{id}"))
            .await
            .expect(200);
        for h in v["history"].as_array().unwrap() {
            *history
                .entry(h["to"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for (status, field) in [
        ("awaiting_authorisation", "consents_created"),
        ("authorised", "consents_authorised"),
        ("rejected", "consents_rejected"),
        ("revoked", "consents_revoked"),
    ] {
        assert_eq!(ra[field], json!(history[status]), "{field}: {history:?}");
    }
    assert_eq!(row(USER_B)["consents_created"], 1);
    assert_eq!(v["totals"][0]["consents_created"], 4);
    // Another local day holds none of them.
    let v = c
        .get(
            Some(f.operator()),
            "/v1/admin/report?from=2026-11-04&to=2026-11-04",
        )
        .await
        .expect(200);
    assert_eq!(v["rows"], json!([]));

    // Expiry is counted too, by the housekeeping that expires.
    let expiring = (time::OffsetDateTime::from_unix_timestamp(NOW + 120).unwrap())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let id = create_consent(&c, a, CUSTOMER, json!({"expires_at": expiring})).await;
    clock.advance(180);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = c
            .get(Some(a), &format!("/v1/consents/{id}"))
            .await
            .expect(200);
        if v["status"] == "expired" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not expired: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let v = c
        .get(
            Some(f.operator()),
            &format!("/v1/admin/report?from=2026-11-03&to=2026-11-03&participant={USER_A}"),
        )
        .await
        .expect(200);
    assert_eq!(v["rows"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["rows"][0]["consents_expired"], 1);
    assert_eq!(v["rows"][0]["consents_created"], 4);
    // The totals are that participant's alone (USER_B's consent is not in them).
    assert_eq!(v["totals"][0]["consents_created"], 4);
    running.stop().await;
}

/// November's calls of the deterministic traffic, pushed: the consents by API user and
/// the calls.
async fn november_pushed(
    f: &Fixture,
    c: &Client,
) -> (HashMap<&'static str, Vec<String>>, Vec<Call>) {
    let consents_by_user = consents(f, c).await;
    let calls: Vec<Call> = traffic(&consents_by_user)
        .into_iter()
        .filter(|c| c.minute >= NOV_1_LOCAL)
        .collect();
    for b in &batches(&calls) {
        push(c, f, b).await;
    }
    (consents_by_user, calls)
}

/// Sets the clock past November's close and grace and waits (bounded) until the
/// housekeeping leader has issued it: the listed statements.
async fn issued_by_housekeeping(f: &Fixture, c: &Client, clock: &ManualClock) -> Value {
    clock.set(DEC_1_LOCAL + 11 * 60);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = c
            .get(Some(f.operator()), "/v1/admin/statements?month=2026-11")
            .await
            .expect(200);
        if !v.as_array().unwrap().is_empty() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "no statements issued");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_month_is_issued_once_priced_as_billing_prices_it() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let (consents_by_user, calls) = november_pushed(&f, &c).await;
    let op = f.operator();
    let issue = "/v1/admin/statements/issue?month=2026-11";
    // Open, then within the grace period: refused.
    for at in [NOW, DEC_1_LOCAL + 5 * 60] {
        clock.set(at);
        let r = c.send(Some(op), "POST", issue, &[], vec![]).await;
        assert_eq!((r.status, r.code()), (409, "month_not_closed".to_owned()));
    }
    // Past the grace: the housekeeping leader issues it on its own.
    let listed = issued_by_housekeeping(&f, &c, &clock).await;
    // The operator's run finds it issued: nothing changes.
    let again = c
        .send(Some(op), "POST", issue, &[], vec![])
        .await
        .expect(200);
    conforms("StatementList", &listed);
    conforms("StatementsIssued", &again);
    assert_eq!(again["issued_now"], false);
    assert_eq!(
        c.get(Some(op), "/v1/admin/statements?month=2026-11")
            .await
            .expect(200),
        listed
    );

    // Billing's pricing of the same calls, recounted here, customers as opaque keys.
    let tariff = billing::Tariff::parse(TARIFF, "tariff.toml").unwrap();
    let customer_of: HashMap<&String, &str> = consents_by_user
        .values()
        .flat_map(|ids| ids.iter().zip([CUSTOMER, OTHER_CUSTOMER]))
        .collect();
    let customers: Vec<billing::CustomerDay> = calls
        .iter()
        .filter_map(|c| {
            let id = c.consent.as_ref()?;
            Some(billing::CustomerDay {
                day: local_day(c.minute),
                api_user: bin(c.api_user?),
                provider: bin(c.provider?),
                customer: format!("k-{}", customer_of[id]),
                route: c.route.into(),
                calls: 1,
            })
        })
        .collect();
    let want = billing::statements(&tariff, 2026, 11, &usage_rows(&calls), &customers).unwrap();
    let got = listed.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{listed}");
    for w in &want {
        let id = w.id.replace('/', "-");
        let g = got
            .iter()
            .find(|g| g["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(g["statement"], serde_json::to_value(w).unwrap(), "{id}");
        assert_eq!(g["digest"], w.digest());
    }
    // Somebody owes something: the comparison is not of zeros.
    assert!(want
        .iter()
        .any(|s| s.totals.amount > billing::Decimal::ZERO));

    // An adjustment is listed with the statement and leaves it as issued.
    let id = format!("2026-11-api_user-{USER_A}");
    let before = c
        .get(Some(op), &format!("/v1/admin/statements/{id}"))
        .await
        .expect(200);
    let adjusted = c
        .json(
            Some(op),
            "POST",
            &format!("/v1/admin/statements/{id}/adjustments"),
            json!({"amount": "-150.00", "reason": "goodwill credit for the outage of 12 Nov"}),
        )
        .await
        .expect(201);
    conforms("IssuedStatement", &adjusted);
    assert_eq!(adjusted["adjustments"][0]["amount"], "-150.00");
    assert!(adjusted["adjustments"][0]["by"]
        .as_str()
        .unwrap()
        .starts_with("operator:"));
    assert_eq!(adjusted["digest"], before["digest"]);
    assert_eq!(adjusted["statement"], before["statement"]);
    for (bad, field) in [
        (json!({"amount": "1.005", "reason": "x"}), "amount:"),
        (json!({"amount": "0.00", "reason": "x"}), "amount:"),
        (json!({"amount": "-1", "reason": " "}), "reason:"),
    ] {
        let r = c
            .json(
                Some(op),
                "POST",
                &format!("/v1/admin/statements/{id}/adjustments"),
                bad,
            )
            .await;
        assert_eq!((r.status, r.code()), (422, "invalid_field".to_owned()));
        assert!(r.json()["detail"].as_str().unwrap().starts_with(field));
    }
    let listed = c
        .get(Some(op), &format!("/v1/admin/statements/{id}"))
        .await
        .expect(200);
    assert_eq!(listed["adjustments"].as_array().unwrap().len(), 1);
    assert_eq!(listed["digest"], before["digest"]);
    // CSV and the printable form are billing's own renderings of the stored statement.
    let w = want.iter().find(|s| s.id.replace('/', "-") == id).unwrap();
    let csv = c
        .send(
            Some(op),
            "GET",
            &format!("/v1/admin/statements/{id}"),
            &[("accept", "text/csv")],
            vec![],
        )
        .await;
    assert_eq!(csv.status, 200);
    assert_eq!(String::from_utf8_lossy(&csv.body), w.to_csv());
    let text = c
        .get(Some(op), &format!("/v1/admin/statements/{id}?format=text"))
        .await;
    assert_eq!(text.status, 200);
    let text = String::from_utf8_lossy(&text.body).into_owned();
    assert!(text.starts_with(&w.to_text()), "{text}");
    assert!(text.contains("goodwill credit"), "{text}");
    running.stop().await;
}

/// A month's draft (computed on request, never stored) is what issuing that month then
/// stores: the same statements, bodies and digests, in the same forms; a participant sees
/// only its own drafts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_is_what_issuing_the_month_stores() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    november_pushed(&f, &c).await;
    let op = f.operator();
    // November is open: its drafts exist, and asking for them stores nothing.
    let drafts = c
        .get(Some(op), "/v1/admin/statements/draft?month=2026-11")
        .await
        .expect(200);
    conforms("DraftStatementList", &drafts);
    let drafts = drafts.as_array().unwrap().clone();
    assert!(drafts.len() >= 4, "{drafts:?}");
    assert!(drafts.iter().all(|d| d["draft"] == true));
    assert!(drafts
        .iter()
        .any(|d| d["statement"]["totals"]["amount"] != "0.00"));
    let none = c
        .get(Some(op), "/v1/admin/statements?month=2026-11")
        .await
        .expect(200);
    assert_eq!(none, json!([]));
    let r = c.get(Some(op), "/v1/admin/statements/draft").await;
    assert_eq!((r.status, r.code()), (400, "bad_request".to_owned()));

    // A participant: its own drafts only; another's refused or not found.
    let a = f.user(USER_A);
    let own = c
        .get(Some(a), "/v1/statements/draft?month=2026-11")
        .await
        .expect(200);
    let mine: Vec<&Value> = drafts
        .iter()
        .filter(|d| d["participant"] == USER_A)
        .collect();
    assert_eq!(own.as_array().unwrap().iter().collect::<Vec<_>>(), mine);
    let r = c
        .get(
            Some(a),
            &format!("/v1/statements/draft?month=2026-11&participant={USER_B}"),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "not_your_statements".to_owned())
    );
    let theirs = format!("2026-11-api_user-{USER_B}");
    let r = c
        .get(Some(a), &format!("/v1/statements/draft/{theirs}"))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (404, "statement_not_found".to_owned())
    );
    assert_eq!(
        c.get(Some(a), "/v1/admin/statements/draft?month=2026-11")
            .await
            .status,
        403
    );

    // Closed and issued (by the housekeeping leader once past the grace): the same.
    let issued = issued_by_housekeeping(&f, &c, &clock).await;
    let issued = issued.as_array().unwrap();
    assert_eq!(issued.len(), drafts.len());
    for (d, i) in drafts.iter().zip(issued) {
        assert_eq!(d["id"], i["id"]);
        assert_eq!(d["statement"], i["statement"], "{}", d["id"]);
        assert_eq!(d["digest"], i["digest"], "{}", d["id"]);
    }
    // The forms: billing's CSV as issued; the text is the issued one's, headed DRAFT.
    let id = format!("2026-11-api_user-{USER_A}");
    for (q, header) in [("?format=csv", None), ("", Some(("accept", "text/csv")))] {
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        let draft = c
            .send(
                Some(op),
                "GET",
                &format!("/v1/admin/statements/draft/{id}{q}"),
                &headers,
                vec![],
            )
            .await;
        let issued = c
            .send(
                Some(op),
                "GET",
                &format!("/v1/admin/statements/{id}{q}"),
                &headers,
                vec![],
            )
            .await;
        assert_eq!((draft.status, issued.status), (200, 200));
        assert_eq!(draft.body, issued.body);
    }
    let text = c
        .get(Some(a), &format!("/v1/statements/draft/{id}?format=text"))
        .await;
    assert_eq!(text.status, 200);
    let text = String::from_utf8_lossy(&text.body).into_owned();
    assert!(text.starts_with("DRAFT, not issued"), "{text}");
    let issued_text = c
        .get(Some(op), &format!("/v1/admin/statements/{id}?format=text"))
        .await;
    let issued_text = String::from_utf8_lossy(&issued_text.body).into_owned();
    let body = issued_text.split("\nStatement ").next().unwrap();
    assert!(text.ends_with(body), "{text}\n---\n{issued_text}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dates_and_months_are_refused_naming_the_parameter() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let op = f.operator();
    for (query, field) in [
        ("from=2026-11-1&to=2026-11-02", "from:"),
        ("from=2026-11-01&to=2026-13-01", "to:"),
        ("from=2026-11-01", "to:"),
        ("from=2026-11-03&to=2026-11-02", "from:"),
        ("from=2025-01-01&to=2026-11-02", "to:"),
        ("from=2026-11-01&to=2026-11-02&group=week", "group:"),
        (
            "from=2026-11-01&to=2026-11-02&participant=12",
            "participant:",
        ),
        ("from=2026-11-01&to=2026-11-02&x=1", "query parameter x"),
    ] {
        for path in ["/v1/admin/usage", "/v1/admin/report"] {
            let r = c.get(Some(op), &format!("{path}?{query}")).await;
            assert_eq!(r.status, 400, "{path}?{query}");
            assert!(r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/problem+json"));
            conforms("Problem", &r.json());
            let detail = r.json()["detail"].as_str().unwrap().to_owned();
            assert!(detail.starts_with(field), "{path}?{query}: {detail}");
        }
        let r = c
            .get(Some(f.user(USER_A)), &format!("/v1/usage?{query}"))
            .await;
        assert_eq!(r.status, 400, "{query}");
    }
    // 366 days inclusive is the longest range.
    c.get(Some(op), "/v1/admin/usage?from=2025-11-03&to=2026-11-03")
        .await
        .expect(200);
    for month in ["2026-13", "2026-1", "26-11", "2026/11"] {
        let r = c
            .send(
                Some(op),
                "POST",
                &format!("/v1/admin/statements/issue?month={month}"),
                &[],
                vec![],
            )
            .await;
        assert_eq!(r.status, 400, "{month}");
        assert!(r.json()["detail"].as_str().unwrap().starts_with("month:"));
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tariff_billing_routes_say_so() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start_with(&f, &clock, |_| {}).await;
    for path in [
        "/v1/admin/usage?from=2026-11-01&to=2026-11-02",
        "/v1/admin/statements?month=2026-11",
    ] {
        let r = c.get(Some(f.operator()), path).await;
        assert_eq!(
            (r.status, r.code()),
            (503, "billing_not_configured".to_owned()),
            "{path}"
        );
    }
    // The platform report needs no tariff (the SLA's time zone).
    c.get(
        Some(f.operator()),
        "/v1/admin/report?from=2026-11-01&to=2026-11-02",
    )
    .await
    .expect(200);
    running.stop().await;
}

/// Issuing runs at once (several operator requests, the housekeeping leader as well):
/// the month is issued once, every answer is that one issue, and one set of statements
/// is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issuing_issues_a_month_once() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    november_pushed(&f, &c).await;
    let op = f.operator();
    let issue = "/v1/admin/statements/issue?month=2026-11";
    clock.set(DEC_1_LOCAL + 11 * 60);
    let (a, b, d, e) = tokio::join!(
        c.send(Some(op), "POST", issue, &[], vec![]),
        c.send(Some(op), "POST", issue, &[], vec![]),
        c.send(Some(op), "POST", issue, &[], vec![]),
        c.send(Some(op), "POST", issue, &[], vec![]),
    );
    let answers: Vec<Value> = [a, b, d, e].into_iter().map(|r| r.expect(200)).collect();
    let now_count = answers.iter().filter(|a| a["issued_now"] == true).count();
    assert!(now_count <= 1, "issued {now_count} times: {answers:?}");
    for a in &answers {
        assert_eq!(a["issued_at"], answers[0]["issued_at"], "{answers:?}");
        assert_eq!(a["statements"], answers[0]["statements"], "{answers:?}");
    }
    let listed = c
        .get(Some(op), "/v1/admin/statements?month=2026-11")
        .await
        .expect(200);
    let listed = listed.as_array().unwrap();
    assert!(!listed.is_empty());
    assert_eq!(answers[0]["statements"], listed.len());
    running.stop().await;
}

/// One successful call of USER_A to BANK_1 at `minute`, as gateway process `gw`/`epoch`
/// pushes it.
fn one_call(gw: &str, epoch: &str, minutes: &[i64], calls: u64, lines: u64) -> RollupBatch {
    RollupBatch {
        gateway: gw.into(),
        epoch: epoch.into(),
        minutes: minutes
            .iter()
            .map(|&minute| MinuteRollup {
                minute,
                calls: vec![CallRow {
                    api_user: Some(bin(USER_A)),
                    provider: Some(bin(BANK_1)),
                    route: TRANSACTIONS.into(),
                    outcome: Outcome::Success,
                    calls,
                    lines,
                }],
                latency: vec![],
                live: vec![],
                consents: vec![],
            })
            .collect(),
    }
}

/// A sidecar that was not issuing when months closed (down, or billing enabled late)
/// issues every closed month from the first holding usage, oldest first, skipping none
/// and issuing no open month.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_closed_months_are_issued_too() {
    let f = Fixture::new();
    let clock = ManualClock::new(NOW);
    let (running, c) = start(&f, &clock).await;
    let aug_10 = NOV_1_LOCAL - 83 * 86_400;
    let oct_5 = NOV_1_LOCAL - 27 * 86_400;
    push(
        &c,
        &f,
        &one_call("gw-old", "0a", &[aug_10, oct_5, NOW], 2, 10),
    )
    .await;
    let op = f.operator();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for month in ["2026-08", "2026-10"] {
        loop {
            let v = c
                .get(Some(op), &format!("/v1/admin/statements?month={month}"))
                .await
                .expect(200);
            if let Some(s) = v.as_array().unwrap().first() {
                assert_eq!(s["statement"]["totals"]["calls"], 2, "{month}: {v}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{month} not issued");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // September, between them and without usage, was issued (empty) on the way.
    let sep = c
        .send(
            Some(op),
            "POST",
            "/v1/admin/statements/issue?month=2026-09",
            &[],
            vec![],
        )
        .await
        .expect(200);
    assert_eq!(
        (sep["issued_now"].clone(), sep["statements"].clone()),
        (json!(false), json!(0))
    );
    // July (before the first usage) and November (open) are not issued.
    let nov = c
        .get(Some(op), "/v1/admin/statements?month=2026-11")
        .await
        .expect(200);
    assert_eq!(nov, json!([]));
    let jul = c
        .send(
            Some(op),
            "POST",
            "/v1/admin/statements/issue?month=2026-07",
            &[],
            vec![],
        )
        .await
        .expect(200);
    assert_eq!(jul["issued_now"], true, "{jul}");
    // The longest range (366 days) is one query: every pushed call, by day and in total.
    let year = "from=2025-11-03&to=2026-11-03";
    let all = c
        .get(Some(op), &format!("/v1/admin/usage?{year}&group=day"))
        .await
        .expect(200);
    let days: Vec<(&str, u64)> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["period"].as_str().unwrap(), r["calls"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        days,
        [("2026-08-10", 2), ("2026-10-05", 2), ("2026-11-03", 2)],
        "{all}"
    );
    let report = c
        .get(Some(op), &format!("/v1/admin/report?{year}"))
        .await
        .expect(200);
    assert_eq!(report["totals"][0]["requests"], 6, "{report}");
    running.stop().await;
}

/// A sidecar whose November (the deterministic traffic) the housekeeping leader has
/// issued.
async fn november_issued(f: &Fixture) -> (trust::Running, Client) {
    let clock = ManualClock::new(NOW);
    let (running, c) = start(f, &clock).await;
    november_pushed(f, &c).await;
    issued_by_housekeeping(f, &c, &clock).await;
    (running, c)
}

/// A rollup of a month already issued is stored (usage stays exact) but changes no
/// statement: it is flagged as late on the statements it concerns and counted in the
/// late-usage metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_of_an_issued_month_is_flagged_not_lost() {
    let f = Fixture::new();
    let (running, c) = november_issued(&f).await;
    let op = f.operator();
    let ids = [
        format!("2026-11-api_user-{USER_A}"),
        format!("2026-11-provider-{BANK_1}"),
    ];
    let mut before = Vec::new();
    for id in &ids {
        let s = c
            .get(Some(op), &format!("/v1/admin/statements/{id}"))
            .await
            .expect(200);
        assert_eq!(s["late"], json!({"calls": 0, "lines": 0}), "{id}");
        before.push(s);
    }
    let usage = |c: Client| async move {
        c.get(Some(op), "/v1/admin/usage?from=2026-11-01&to=2026-11-30")
            .await
            .expect(200)
    };
    let usage_before = usage(c.clone()).await;
    let late_minute = NOV_1_LOCAL + 60 * 3000;
    push(&c, &f, &one_call("gw-late", "1c", &[late_minute], 3, 40)).await;
    for (id, b) in ids.iter().zip(&before) {
        let s = c
            .get(Some(op), &format!("/v1/admin/statements/{id}"))
            .await
            .expect(200);
        conforms("IssuedStatement", &s);
        assert_eq!(s["late"], json!({"calls": 3, "lines": 40}), "{id}");
        assert_eq!(
            (&s["statement"], &s["digest"]),
            (&b["statement"], &b["digest"])
        );
    }
    let listed = c
        .get(
            Some(op),
            &format!("/v1/admin/statements?month=2026-11&participant={USER_A}"),
        )
        .await
        .expect(200);
    conforms("StatementList", &listed);
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == ids[0].as_str());
    assert_eq!(mine.unwrap()["late"]["calls"], 3);
    // The usage report still counts them.
    let total = |v: &Value| -> u64 {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["calls"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total(&usage(c.clone()).await), total(&usage_before) + 3);
    let metrics = c.get(Some(op), "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for who in [USER_A, BANK_1] {
        let line = format!("hub_usage_late_calls_total{{participant=\"{who}\"}} 3");
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    running.stop().await;
}

/// An adjustment POST with an `Idempotency-Key`: the same key and body answer the first
/// adjustment again (200, nothing recorded twice), the same key with another body is
/// refused; without a key every POST records one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_records_an_adjustment_once() {
    let f = Fixture::new();
    let (running, c) = november_issued(&f).await;
    let op = f.operator();
    let path = format!("/v1/admin/statements/2026-11-api_user-{USER_A}/adjustments");
    let post = |key: Option<&'static str>, body: Value| {
        let (c, path) = (c.clone(), path.clone());
        async move {
            let mut headers = vec![("content-type", "application/json")];
            headers.extend(key.map(|k| ("idempotency-key", k)));
            c.send(
                Some(op),
                "POST",
                &path,
                &headers,
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let a = json!({"amount": "-150.00", "reason": "goodwill credit"});
    let b = json!({"amount": "-150.00", "reason": "another credit"});
    let first = post(Some("k-1"), a.clone()).await.expect(201);
    let again = post(Some("k-1"), a.clone()).await.expect(200);
    conforms("IssuedStatement", &again);
    assert_eq!(again["adjustments"], first["adjustments"]);
    assert_eq!(again["adjustments"].as_array().unwrap().len(), 1);
    let r = post(Some("k-1"), b.clone()).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "idempotency_key_reused".to_owned())
    );
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("Idempotency-Key:"));
    // Another key, and no key, each record one.
    let other = post(Some("k-2"), a.clone()).await.expect(201);
    assert_eq!(other["adjustments"].as_array().unwrap().len(), 2);
    let keyless = post(None, a.clone()).await.expect(201);
    assert_eq!(keyless["adjustments"].as_array().unwrap().len(), 3);
    for bad in ["has space", ""] {
        let r = post(Some(bad), a.clone()).await;
        assert_eq!(r.status, 400, "{bad:?}");
        assert!(r.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("Idempotency-Key:"));
    }
    let long: &'static str = Box::leak("k".repeat(256).into_boxed_str());
    assert_eq!(post(Some(long), a).await.status, 400);
    running.stop().await;
}
