//! Issue 14, "How it is shown": the SLA report equals the figures recomputed from the
//! audit journals of two gateways. A cluster (`devhub::cluster`: PostgreSQL, two trust
//! replicas, two gateways pushing their rollups every second, the sandbox banks) serves
//! traffic of several outcomes through both gateways — successes at both banks, the
//! bank's own 404s, its 500s (fault mode `error`), an unreachable bank (`down`), hub
//! refusals — then both gateways stop (SIGTERM: the partial minute is pushed); the
//! sidecar's `GET /v1/admin/sla` (day rows) must then equal, per provider × route × day,
//! what this test recounts from the two journals alone: calls by outcome, availability,
//! error rate, and the bank's and the hub's p50/p95/p99 bucketed as the rollups are.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_support::*;
use e2e::demo::switch_to;
use e2e::*;
use feed_wire::rollup::Histogram;
use serde_json::Value;

/// Per provider × route × day (UTC): calls by outcome and the two histograms.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    calls: BTreeMap<String, u64>,
    bank: Histogram,
    hub: Histogram,
}

type Key = (String, String, String);

/// The journals' recount (calls without a provider are not in the SLA report).
fn recount(lines: &[Value]) -> BTreeMap<Key, Tally> {
    let mut out: BTreeMap<Key, Tally> = BTreeMap::new();
    for l in lines {
        let Some(provider) = l["provider"].as_str() else {
            continue;
        };
        let minute = journal_minute(l);
        let day = time::OffsetDateTime::from_unix_timestamp(minute)
            .expect("minute")
            .date()
            .to_string();
        let route = l["route"].as_str().expect("route");
        let route = route.strip_prefix("GET ").unwrap_or(route).to_owned();
        let outcome = l["outcome"].as_str().expect("outcome").to_owned();
        let t = out.entry((provider.to_owned(), route, day)).or_default();
        *t.calls.entry(outcome.clone()).or_default() += 1;
        if outcome != "refused" {
            let (bank, total) = (
                l["bank_us"].as_u64().expect("bank_us"),
                l["latency_us"].as_u64().expect("latency_us"),
            );
            t.bank.record(bank);
            t.hub.record(total.saturating_sub(bank));
        }
    }
    out
}

/// A quantile as the report writes it.
fn quantile(h: &Histogram, q: f64) -> Value {
    match (h.count(), h.quantile_bound_us(q)) {
        (0, _) => Value::Null,
        (_, Some(us)) => Value::from(us / 1000),
        (_, None) => Value::from(">30000"),
    }
}

/// The report row a tally should be.
fn expected_row(t: &Tally) -> Value {
    let n = |o: &str| t.calls.get(o).copied().unwrap_or(0);
    let total: u64 = t.calls.values().sum();
    let reached = total - n("refused");
    let failures = n("server_error") + n("timeout") + n("unreachable") + n("bad_response");
    let ratio = |x: u64| {
        if reached == 0 {
            Value::Null
        } else {
            Value::from(x as f64 / reached as f64)
        }
    };
    let availability = if reached == 0 {
        Value::Null
    } else {
        Value::from(1.0 - failures as f64 / reached as f64)
    };
    let q = |h: &Histogram| serde_json::json!({"p50": quantile(h, 0.5), "p95": quantile(h, 0.95), "p99": quantile(h, 0.99)});
    let outcomes = [
        "success",
        "client_error",
        "server_error",
        "timeout",
        "unreachable",
        "bad_response",
        "refused",
    ];
    let calls: serde_json::Map<String, Value> = outcomes
        .iter()
        .map(|o| (o.to_string(), Value::from(n(o))))
        .collect();
    serde_json::json!({
        "total": total,
        "reached_provider": reached,
        "failures": failures,
        "availability": availability,
        "error_rate": ratio(failures + n("client_error")),
        "bank_ms": q(&t.bank),
        "hub_ms": q(&t.hub),
        "calls": calls,
    })
}

/// Traffic through gateway `i` of every kind the test wants counted.
async fn traffic(r: &Running, i: usize, bank0_faults: &Client) {
    let (full, bank2) = ("c-authorised-full", "c-authorised-bank2");
    let hub = r.gateway_for(i, full).api(None);
    let token = r.token(full);
    for _ in 0..5 {
        hub.get(&r.accounts_path(full), Some(&token)).await;
    }
    let hub2 = r.gateway_for(i, bank2);
    for _ in 0..3 {
        hub2.get(&r.accounts_path(bank2), Some(&r.token(bank2)))
            .await
            .ok_json();
    }
    let provider = r.consent(full)["providers"][0].as_str().expect("provider");
    let unknown = format!("/v1/providers/{provider}/accounts/no-such-account/balances");
    for _ in 0..2 {
        hub.get(&unknown, Some(&token)).await;
    }
    hub.get(&r.accounts_path(full), Some("not-a-token")).await;
    for (mode, n) in [("error", 2), ("down", 1)] {
        assert_eq!(bank0_faults.send(&switch_to(mode)).await.status, 200);
        for _ in 0..n {
            hub.get(&r.accounts_path(full), Some(&token)).await;
        }
    }
    assert_eq!(bank0_faults.send(&switch_to("ok")).await.status, 200);
}

#[test]
fn the_sla_report_equals_the_recount_of_two_gateways_journals() {
    let r = start(0, |o| o.gateways = 2);
    let rt = runtime();
    let m = &r.manifest;
    let faults = r.faults_of("c-authorised-full");
    rt.block_on(async {
        for i in 0..2 {
            traffic(&r, i, &faults).await;
        }
    });
    // Both gateways stop (SIGTERM: the partial minute is closed and pushed).
    r.stop_gateways();
    let dir = r.cluster.dir().to_owned();
    let mut lines = journal_requests(&dir.join("audit-1.jsonl"));
    lines.extend(journal_requests(&dir.join("audit-2.jsonl")));
    let want = recount(&lines);
    assert!(want.len() >= 3, "{want:?}");
    let (from, to) = (
        want.keys().map(|k| k.2.clone()).min().expect("a day"),
        want.keys().map(|k| k.2.clone()).max().expect("a day"),
    );
    let op = ClientCert {
        cert_pem: std::fs::read_to_string(m["operator"]["cert"].as_str().expect("operator"))
            .expect("cert"),
        key_pem: std::fs::read_to_string(m["operator"]["key"].as_str().expect("operator"))
            .expect("key"),
    };
    let ca = std::fs::read_to_string(m["ca_cert"].as_str().expect("ca")).expect("ca");
    let trust = Client::trust(addr_of(&r.cluster.trust_urls()[0]), &ca, Some(&op));
    let path = format!("/v1/admin/sla?from={from}&to={to}&period=day");
    // The last pushes land within the gateways' shutdown; poll until the totals agree.
    let total: u64 = want.values().map(|t| t.calls.values().sum::<u64>()).sum();
    let report = poll_until(Duration::from_secs(30), || {
        let got = rt.block_on(trust.send(&Req::new("GET", path.as_str())));
        assert_eq!(got.status, 200, "{}", got.describe());
        let rows = got.json()["rows"].as_array().cloned().unwrap_or_default();
        let sum: u64 = rows.iter().map(|r| r["total"].as_u64().unwrap_or(0)).sum();
        (sum == total).then_some(rows)
    })
    .unwrap_or_else(|| {
        panic!(
            "the report never held the {total} calls of the journals:\n{}",
            r.logs()
        )
    });
    let mut got: BTreeMap<Key, Value> = BTreeMap::new();
    for row in report {
        let route = row["route"].as_str().expect("route");
        let route = route.strip_prefix("GET ").unwrap_or(route).to_owned();
        let key = (
            row["provider"].as_str().expect("provider").to_owned(),
            route,
            row["period"].as_str().expect("period").to_owned(),
        );
        let fields = [
            "total",
            "reached_provider",
            "failures",
            "availability",
            "error_rate",
            "bank_ms",
            "hub_ms",
            "calls",
        ];
        got.insert(
            key,
            fields
                .iter()
                .map(|f| (f.to_string(), row[*f].clone()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
    let want: BTreeMap<Key, Value> = want
        .iter()
        .map(|(k, t)| (k.clone(), expected_row(t)))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, w) in &want {
        assert_eq!(&got[k], w, "{k:?}");
    }
    // The traffic was of every kind wanted.
    assert_every_outcome(&lines);
}
