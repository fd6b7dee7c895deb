//! The suite against real TLS: a conformant sandbox bank passes every rule; a bank that
//! breaks one rule (the sandbox's own misbehaviour switches, or a small HTTPS server that
//! answers a deliberately wrong body) fails exactly that rule.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{
    Api, ApiReport, CallFailure, Outcome, Prober, Purpose, Rule, SuiteReport, Target, Verdict,
};
use sandbox::bank::Behaviour;
use serde_json::json;
use support::{fake_bank, sandbox, Handler, Sandbox, API_USER, CONSENT};

/// Generous: these tests are about rules, not speed, on a loaded machine.
const SLA: Duration = Duration::from_secs(10);

fn failed(report: &SuiteReport, api: Api) -> Vec<Rule> {
    report.api(api).expect("probed").failed().collect()
}

/// One API's probe with a prober of its own.
async fn probe(target: &Target, api: Api) -> ApiReport {
    Prober::new(target).expect("prober").probe(api).await
}

/// The failure of a probe's first call (panics, showing the calls, when it has none).
fn first_failure(report: &ApiReport) -> &CallFailure {
    report.calls[0]
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("{:?}", report.calls))
}

fn outcome(report: &SuiteReport, api: Api, rule: Rule) -> Outcome {
    report
        .api(api)
        .and_then(|a| a.rule(rule))
        .map(|r| r.outcome)
        .unwrap_or_else(|| panic!("{api}: no {rule:?}"))
}

/// Nothing of the test customer reaches a report: not its id, account ids, IBANs.
fn assert_no_customer_data(sb: &Sandbox, report: &SuiteReport) {
    let text = serde_json::to_string(report).expect("serialises");
    assert!(!text.contains(&sb.customer), "customer id in {text}");
    for secret in sb.accounts.iter().chain(&sb.ibans) {
        assert!(!text.contains(secret.as_str()), "account data in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conformant_bank_passes_every_rule() {
    let sb = sandbox().await;
    let prober = Prober::new(&sb.target(sb.allow_first(), SLA)).expect("prober");
    let report = prober.run().await;
    for a in &report.apis {
        assert_eq!(a.verdict, Verdict::Pass, "{}: {:?}", a.api, a.rules);
        assert!(a.failed().next().is_none(), "{}: {:?}", a.api, a.rules);
    }
    assert_eq!(report.verdict, Verdict::Pass);
    // The semantic rules were checked, not skipped.
    for rule in [Rule::Pagination, Rule::DateRange, Rule::AllowList] {
        assert_eq!(
            outcome(&report, Api::Transactions, rule),
            Outcome::Pass,
            "{rule:?}"
        );
    }
    for api in [Api::Accounts, Api::Account, Api::Balances] {
        assert_eq!(
            outcome(&report, api, Rule::AllowList),
            Outcome::Pass,
            "{api}"
        );
    }
    let walk = report.api(Api::Transactions).expect("transactions");
    assert!(
        walk.calls
            .iter()
            .filter(|c| c.purpose == Purpose::NextPage)
            .count()
            >= 1,
        "the walk followed links.next: {:?}",
        walk.calls
    );
    assert_no_customer_data(&sb, &report);
    // The bank saw the hub's headers exactly as the gateway sends them.
    let seen = sb.bank.recent_requests();
    let balances = seen
        .iter()
        .find(|r| {
            r.path_and_query
                .ends_with(&format!("{}/balances", sb.accounts[0]))
        })
        .expect("a balances call");
    assert_eq!(balances.header("x-hub-api-user"), Some(API_USER));
    assert_eq!(balances.header("x-hub-consent-id"), Some(CONSENT));
    assert_eq!(
        balances.header("x-hub-customer"),
        Some(sb.customer.as_str())
    );
    assert_eq!(
        balances.header("x-hub-permissions"),
        Some("accounts,balances,transactions")
    );
    assert_eq!(
        balances.header("x-hub-accounts"),
        Some(sb.accounts[0].as_str())
    );
    let iid = balances
        .header("x-fapi-interaction-id")
        .expect("interaction id");
    assert!(uuid::Uuid::try_parse(iid).is_ok(), "{iid}");
    assert!(!balances.has_header("authorization"));
    let open = seen
        .iter()
        .find(|r| r.path_and_query == "/v1/open-data/atms")
        .expect("an open-data call");
    assert!(!open.has_header("x-hub-customer") && !open.has_header("x-hub-consent-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_allow_list_the_probe_finds_its_account_and_skips_that_rule() {
    let sb = sandbox().await;
    let report = Prober::new(&sb.target(None, SLA))
        .expect("prober")
        .run()
        .await;
    assert_eq!(report.verdict, Verdict::Pass, "{report:#?}");
    for api in [Api::Account, Api::Balances, Api::Transactions] {
        assert_eq!(outcome(&report, api, Rule::Prerequisite), Outcome::Pass);
        assert_eq!(outcome(&report, api, Rule::AllowList), Outcome::Skip);
    }
    assert_no_customer_data(&sb, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_ignoring_x_hub_accounts_fails_only_the_allow_list_rule() {
    let sb = sandbox().await;
    sb.bank.ignore_accounts_header(true);
    let report = Prober::new(&sb.target(sb.allow_first(), SLA))
        .expect("prober")
        .run()
        .await;
    for api in [
        Api::Accounts,
        Api::Account,
        Api::Balances,
        Api::Transactions,
    ] {
        assert_eq!(failed(&report, api), vec![Rule::AllowList], "{api}");
    }
    for api in [Api::ExchangeRates, Api::Branches, Api::Atms, Api::Products] {
        assert_eq!(failed(&report, api), vec![], "{api}");
    }
    assert_eq!(report.verdict, Verdict::Fail);
    assert_no_customer_data(&sb, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bank_fails_only_the_latency_rule() {
    let sb = sandbox().await;
    let sla = Duration::from_millis(200);
    sb.bank
        .set_behaviour(Behaviour::Delay(Duration::from_millis(500)));
    let prober = Prober::new(&sb.target(sb.allow_first(), sla)).expect("prober");
    for api in [Api::Balances, Api::ExchangeRates] {
        let report = prober.probe(api).await;
        assert_eq!(
            report.failed().collect::<Vec<_>>(),
            vec![Rule::Latency],
            "{report:#?}"
        );
        let detail = &report.rule(Rule::Latency).expect("latency").detail;
        assert!(detail.contains("over the SLA of 200 ms"), "{detail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_bank_is_a_bounded_typed_timeout() {
    let sb = sandbox().await;
    sb.bank.set_behaviour(Behaviour::Hang);
    let mut target = sb.target(None, Duration::from_millis(100));
    target.call_timeout = Duration::from_millis(400);
    let prober = Prober::new(&target).expect("prober");
    let started = Instant::now();
    let report = prober.probe(Api::ExchangeRates).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.calls[0].failure, Some(CallFailure::Timeout(400)));
    assert_eq!(
        report.failed().collect::<Vec<_>>(),
        vec![Rule::Status, Rule::Latency]
    );
    assert_eq!(
        report.rule(Rule::Tls).map(|r| r.outcome),
        Some(Outcome::Pass)
    );
    assert_eq!(
        report.rule(Rule::Schema).map(|r| r.outcome),
        Some(Outcome::Skip)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_stuck_in_the_handshake_fails_tls_within_the_bound() {
    let sb = sandbox().await;
    // Accepts TCP connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let mut target = sb.target_at(url, None, SLA);
    target.call_timeout = Duration::from_millis(600);
    let started = Instant::now();
    let report = probe(&target, Api::Branches).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        first_failure(&report),
        &CallFailure::Tls("no TLS connection within 300 ms".into())
    );
    assert_eq!(report.failed().collect::<Vec<_>>(), vec![Rule::Tls]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_http_is_a_typed_failure() {
    let sb = sandbox().await;
    sb.bank.set_behaviour(Behaviour::Garbage);
    let report = probe(&sb.target(None, SLA), Api::Atms).await;
    assert!(matches!(first_failure(&report), CallFailure::NotHttp(_)));
    assert_eq!(report.failed().collect::<Vec<_>>(), vec![Rule::Status]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_that_refuses_the_hub_certificate_fails_tls() {
    let sb = sandbox().await;
    let mut target = sb.target(None, SLA);
    let stranger = sb.pki.untrusted_client();
    target.client_cert_pem = stranger.cert_pem.clone().into_bytes();
    target.client_key_pem = stranger.key_pem.clone().into_bytes();
    let report = probe(&target, Api::Products).await;
    // In TLS 1.3 the bank refuses the certificate after the client's side of the handshake
    // is done, then closes with the client's request unread: the alert usually arrives
    // first (a TLS failure), but the closing side's RST may reach the client before it
    // reads the alert, and Linux then discards the alert (the connection was reset). Either
    // way the call fails at the connection, never with an answer.
    let failed: Vec<Rule> = report.failed().collect();
    match first_failure(&report) {
        CallFailure::Tls(_) => assert_eq!(failed, vec![Rule::Tls]),
        CallFailure::NotHttp(why) if why.contains("connection") => {
            assert_eq!(failed, vec![Rule::Status], "{why}")
        }
        other => panic!("not a connection-level failure: {other:?}"),
    }
    // And a provider certificate the CA does not vouch for.
    let mut target = sb.target(None, SLA);
    target.ca_pem = sb.pki.untrusted_ca().cert_pem.clone().into_bytes();
    let report = probe(&target, Api::Products).await;
    assert_eq!(report.failed().collect::<Vec<_>>(), vec![Rule::Tls]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_answering_errors_fails_the_status_rule() {
    let sb = sandbox().await;
    sb.bank.set_behaviour(Behaviour::Status(503));
    let report = probe(&sb.target(sb.allow_first(), SLA), Api::Balances).await;
    let status = report.rule(Rule::Status).expect("status");
    assert_eq!(status.outcome, Outcome::Fail);
    assert!(status.detail.contains("answered 503"), "{}", status.detail);
    // The bank's error body is the documented error shape: the schema rule holds.
    assert_eq!(
        report.rule(Rule::Schema).map(|r| r.outcome),
        Some(Outcome::Pass)
    );
}

// ---- a stand-in for banks the sandbox cannot imitate ----

fn open_data_set(items: serde_json::Value, path: &str) -> String {
    json!({"data": items, "links": {"self": path}, "meta": {"total": 1}}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_body_fails_only_the_schema_rule() {
    let sb = sandbox().await;
    let handler: Handler = Arc::new(|pq: &str| match pq {
        // An ATM without its required members.
        "/v1/open-data/atms" => (
            200,
            "application/json",
            open_data_set(json!([{"atm_id": "A1"}]), pq),
        ),
        "/v1/open-data/branches" => (200, "text/html", "<html>maintenance</html>".into()),
        "/v1/open-data/products" => (200, "application/json", "{\"data\": [".into()),
        _ => (404, "application/json", r#"{"error":"not_found"}"#.into()),
    });
    let url = fake_bank(&sb.pki, handler).await;
    let prober = Prober::new(&sb.target_at(url, None, SLA)).expect("prober");
    let atms = prober.probe(Api::Atms).await;
    assert_eq!(
        atms.failed().collect::<Vec<_>>(),
        vec![Rule::Schema],
        "{atms:#?}"
    );
    let detail = &atms.rule(Rule::Schema).expect("schema").detail;
    assert!(
        detail.contains("/data/0") && detail.contains("`required`"),
        "{detail}"
    );
    let branches = prober.probe(Api::Branches).await;
    assert_eq!(branches.failed().collect::<Vec<_>>(), vec![Rule::Schema]);
    let detail = &branches.rule(Rule::Schema).expect("schema").detail;
    assert!(detail.contains("content-type"), "{detail}");
    let products = prober.probe(Api::Products).await;
    assert_eq!(products.failed().collect::<Vec<_>>(), vec![Rule::Schema]);
    let detail = &products.rule(Rule::Schema).expect("schema").detail;
    assert!(detail.contains("not JSON"), "{detail}");
}

/// How the fake transactions bank misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// `from`/`to` ignored.
    IgnoreRange,
    /// `links.next` always points at the first page.
    LoopCursor,
    /// Pages larger than `limit`.
    IgnoreLimit,
}

const ACCOUNT: &str = "acc-1";

fn account_list() -> String {
    json!({
        "data": [{"account_id": ACCOUNT, "iban": "KZ000000000000000001", "currency": "KZT",
                  "type": "current", "name": "Current", "opened": "2020-01-01", "status": "enabled"}],
        "links": {"self": "/v1/accounts"},
        "meta": {"total": 1}
    })
    .to_string()
}

/// Twelve transactions, one a day from 2025-03-12 back to 2025-03-01, paged by offset.
fn transaction_page(fault: Fault, query: &str) -> String {
    let arg = |k: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_owned())
    };
    let (from, to) = (arg("from"), arg("to"));
    let limit: usize = arg("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    let offset: usize = arg("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let all: Vec<String> = (1..=12).rev().map(|d| format!("2025-03-{d:02}")).collect();
    let within = |d: &String| {
        fault == Fault::IgnoreRange
            || (from.as_ref().is_none_or(|f| d >= f) && to.as_ref().is_none_or(|t| d <= t))
    };
    let dates: Vec<&String> = all.iter().filter(|d| within(d)).collect();
    let size = if fault == Fault::IgnoreLimit {
        limit + 1
    } else {
        limit
    };
    let end = (offset + size).min(dates.len());
    let items: Vec<serde_json::Value> = dates[offset.min(end)..end]
        .iter()
        .map(|d| {
            json!({"transaction_id": format!("tx-{d}"), "booking_date": d, "value_date": d,
                   "amount": "10.00", "currency": "KZT", "credit_debit": "debit",
                   "status": "booked", "counterparty": "Shop", "description": "Purchase"})
        })
        .collect();
    let mut links = json!({"self": format!("/v1/accounts/{ACCOUNT}/transactions")});
    if end < dates.len() {
        let next = if fault == Fault::LoopCursor { 0 } else { end };
        let mut link = String::from("?");
        if let (Some(f), Some(t)) = (&from, &to) {
            link.push_str(&format!("from={f}&to={t}&"));
        }
        link.push_str(&format!("limit={limit}&cursor={next}"));
        links["next"] = json!(link);
    }
    json!({"data": items, "links": links, "meta": {"total": dates.len()}}).to_string()
}

fn transactions_bank(fault: Fault) -> Handler {
    Arc::new(move |pq: &str| {
        let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
        match path {
            "/v1/accounts" => (200, "application/json", account_list()),
            "/v1/accounts/acc-1/transactions" => {
                (200, "application/json", transaction_page(fault, query))
            }
            _ => (404, "application/json", r#"{"error":"not_found"}"#.into()),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_transaction_rule_fails_exactly_that_rule() {
    let sb = sandbox().await;
    for (fault, expected) in [
        (Fault::None, vec![]),
        (Fault::IgnoreRange, vec![Rule::DateRange]),
        (Fault::LoopCursor, vec![Rule::Pagination]),
        (Fault::IgnoreLimit, vec![Rule::Pagination]),
    ] {
        let url = fake_bank(&sb.pki, transactions_bank(fault)).await;
        let prober = Prober::new(&sb.target_at(url, None, SLA)).expect("prober");
        let report = prober.probe(Api::Transactions).await;
        assert_eq!(
            report.failed().collect::<Vec<_>>(),
            expected,
            "{fault:?}: {report:#?}"
        );
        assert_eq!(
            report
                .rule(Rule::Pagination)
                .map(|r| r.outcome == Outcome::Skip),
            Some(false),
            "{fault:?}"
        );
    }
}
