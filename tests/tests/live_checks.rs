//! Live-traffic checks (issue 14 point 2) and transaction lines (issue 15 point 1) over
//! real processes: a gateway in `[trust]` mode sampling every successful provider answer
//! (`[live_checks] sample_rate = 1`), pushing its rollups to a real HTTPS receiver. A bank
//! answering normally yields passes and no violation; switched to fault mode `schema`, its
//! answers are counted as violations on the gateway's `/metrics` and in the rollups, while
//! the API user receives exactly the bytes the bank sent. The lines of several pages of
//! transactions the API user received equal the journal's `lines` and the rollups'; every
//! successful consent call is counted by its consent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use e2e::receiver::{rollup_rig, RollupRig};
use e2e::*;
use feed_wire::rollup::MinuteRollup;
use gateway::config::{at, LiveCheckSection};
use sandbox::bank::FaultMode;
use serde_json::Value;

const ACCOUNTS: &str = "/v1/providers/{provider_id}/accounts";
const TRANSACTIONS: &str = "/v1/providers/{provider_id}/accounts/{account_id}/transactions";
const OPEN_DATA: &str = "/v1/open-data/{provider_id}/{dataset}";
const CONSENT: &str = "c-authorised-full";

/// The hub sampling every answer, its sidecar holding the consent used here.
fn rig() -> RollupRig {
    rollup_rig(hub_exe!(), "gw-live", |setup, rt, sidecar| {
        setup.unlimited();
        let user = setup.prepared.pki.api_user(bin(USER_A)).expect("user");
        let user_thumbprint = user.x5t_s256.clone();
        let bank_url = setup.provider_mut(BANK_1).upstreams[0].get_ref().clone();
        rt.block_on(register(sidecar.app(), user_thumbprint, bank_url));
        let records = setup
            .consents
            .iter()
            .filter(|v| v["id"] == CONSENT)
            .map(|v| serde_json::from_value(v.clone()).expect("a consent record"))
            .collect();
        rt.block_on(sidecar.app().import_consents(records))
            .expect("consents imported");
        setup.config.live_checks = LiveCheckSection {
            sample_rate: at(1.0),
            ..LiveCheckSection::default()
        };
    })
}

/// Registers the consent's API user and provider in the sidecar, as the hub's file has
/// them (the registry is authoritative for the BINs it knows).
async fn register(app: &Arc<trust::app::App>, user_thumbprint: String, bank_url: String) {
    use trust::participants::ParticipantInput;
    use trust::wire::{ParticipantStatus, Role};
    let actor = trust::history::operator("e2e-operator");
    let user = ParticipantInput {
        name: "API user A".into(),
        roles: vec![Role::User],
        thumbprints: vec![user_thumbprint],
        provider_urls: Vec::new(),
        status: Some(ParticipantStatus::Active),
    };
    app.put_participant(actor.clone(), bin(USER_A), user)
        .await
        .expect("user registered");
    let provider = ParticipantInput {
        name: "Bank 1".into(),
        roles: vec![Role::Provider],
        thumbprints: Vec::new(),
        provider_urls: vec![bank_url],
        status: Some(ParticipantStatus::Active),
    };
    app.put_participant(actor, bin(BANK_1), provider)
        .await
        .expect("provider registered");
}

/// `hub_live_checks_total` of one provider, route and result (0 when not yet counted).
fn live_metric(text: &str, provider: &str, route: &str, result: &str) -> u64 {
    let labels = [
        format!("provider=\"{provider}\""),
        format!("route=\"{route}\""),
        format!("result=\"{result}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("hub_live_checks_total{"))
        .find(|l| labels.iter().all(|p| l.contains(p.as_str())))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Pages through an account's transactions (3 a page) as the API user; the number of
/// lines of each page received.
async fn page_through(hub: &Hub, account: &str) -> Vec<u64> {
    let (user, token) = (hub.client_as(USER_A), hub.token(CONSENT));
    let mut query = "limit=3".to_string();
    let mut pages = Vec::new();
    for _ in 0..4 {
        let r = user
            .get(&transactions_path(BANK_1, account, &query), Some(&token))
            .await;
        assert_eq!(r.status, 200, "{}", r.describe());
        let page = r.json();
        let n = page["data"].as_array().expect("data").len() as u64;
        pages.push(n);
        match page["meta"]["next_cursor"].as_str() {
            Some(c) => query = format!("limit=3&cursor={c}"),
            None => break,
        }
    }
    pages
}

/// Live rows summed over the stored minutes: (provider, route) → [sampled, violations,
/// unchecked].
fn live_rows(
    stored: &BTreeMap<(String, String, i64), MinuteRollup>,
) -> BTreeMap<(String, String), [u64; 3]> {
    let mut out: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    for m in stored.values() {
        for r in &m.live {
            let e = out
                .entry((r.provider.to_string(), r.route.clone()))
                .or_default();
            e[0] += r.sampled;
            e[1] += r.violations;
            e[2] += r.unchecked;
        }
    }
    out
}

#[test]
fn live_answers_are_validated_off_the_request_path_and_lines_counted() {
    let RollupRig {
        rt,
        peers: _peers,
        mut hub,
        receiver,
    } = rig();
    let account = hub.accounts_of(CONSENT).remove(0);

    // Mode `ok`: transactions over several pages, bank 2's open data.
    let pages = rt.block_on(page_through(&hub, &account));
    assert!(pages.len() >= 2, "several pages: {pages:?}");
    let received: u64 = pages.iter().sum();
    let user_b = hub.client_as(USER_B).api(None);
    for _ in 0..2 {
        rt.block_on(user_b.get(&open_data_path(BANK_2, "exchange-rates"), None))
            .ok_json();
    }

    // Mode `schema`: bank 1's answers break the provider schema and reach the API user
    // exactly as the bank sent them.
    assert!(rt.block_on(hub.bank(BANK_1).set_fault_mode(FaultMode::Schema)));
    let bank = Client::new(
        hub.bank(BANK_1).addr(),
        hub.ca_pem(),
        Some(&ClientCert::of(hub.pki.hub_client())),
    )
    .api(None);
    let direct = rt.block_on(bank.get("/v1/open-data/exchange-rates", None));
    assert_eq!(direct.status, 200);
    assert!(serde_json::from_slice::<Value>(&direct.body).expect("json")["links"].is_null());
    for _ in 0..2 {
        let via_hub = rt.block_on(user_b.get(&open_data_path(BANK_1, "exchange-rates"), None));
        assert_eq!(via_hub.status, 200);
        assert_eq!(
            via_hub.body, direct.body,
            "the API user gets the bank's bytes"
        );
    }
    let accounts = rt.block_on(
        hub.client_as(USER_A)
            .api(None)
            .get(&accounts_path(BANK_1), Some(&hub.token(CONSENT))),
    );
    assert_eq!(accounts.status, 200);

    // The gateway's /metrics: violations for bank 1, passes and no violation otherwise.
    let counted = poll_until(Duration::from_secs(10), || {
        let text = rt.block_on(hub.metrics());
        let v = |p, r| live_metric(&text, p, r, "violation");
        (v(BANK_1, OPEN_DATA) == 2 && v(BANK_1, ACCOUNTS) == 1).then_some(text)
    })
    .expect("the violations were counted on /metrics");
    let m = |p, r, res| live_metric(&counted, p, r, res);
    assert_eq!(m(BANK_1, TRANSACTIONS, "pass"), pages.len() as u64);
    assert_eq!(m(BANK_1, TRANSACTIONS, "violation"), 0);
    assert_eq!(m(BANK_2, OPEN_DATA, "pass"), 2);
    assert_eq!(m(BANK_2, OPEN_DATA, "violation"), 0);
    assert_eq!(m(BANK_1, OPEN_DATA, "pass"), 0);
    for (p, r) in [
        (BANK_1, TRANSACTIONS),
        (BANK_1, OPEN_DATA),
        (BANK_2, OPEN_DATA),
    ] {
        assert_eq!(m(p, r, "unchecked"), 0, "{p} {r}");
    }

    // Every request journalled (the writer seals within milliseconds), then a graceful
    // stop closes the last minute and pushes it.
    let requests = pages.len() + 2 + 2 + 1;
    let journal = poll_until(Duration::from_secs(10), || {
        let lines = journal_requests(&hub.audit_path);
        (lines.len() == requests).then_some(lines)
    })
    .expect("every request journalled");
    assert!(hub.stop().is_some(), "the hub stopped by itself");
    let stored = receiver.stored();
    let live = live_rows(&stored);
    let row = |p: &str, r: &str| live.get(&(p.to_string(), r.to_string())).copied();
    assert_eq!(row(BANK_1, TRANSACTIONS), Some([pages.len() as u64, 0, 0]));
    assert_eq!(row(BANK_2, OPEN_DATA), Some([2, 0, 0]));
    assert_eq!(row(BANK_1, OPEN_DATA), Some([2, 2, 0]));
    assert_eq!(row(BANK_1, ACCOUNTS), Some([1, 1, 0]));

    // Lines: what the API user received = the journal's `lines` = the rollups'.
    let tx_lines: Vec<&Value> = journal
        .iter()
        .filter(|l| l["route"] == TRANSACTIONS)
        .collect();
    assert_eq!(tx_lines.len(), pages.len());
    let journalled: u64 = tx_lines
        .iter()
        .map(|l| l["lines"].as_u64().expect("lines"))
        .sum();
    assert_eq!(journalled, received);
    assert!(tx_lines.iter().all(|l| l["consent_id"] == CONSENT));
    assert!(journal
        .iter()
        .filter(|l| l["route"] != TRANSACTIONS)
        .all(|l| l.get("lines").is_none()));
    let rolled: u64 = stored
        .values()
        .flat_map(|m| &m.calls)
        .filter(|c| c.route.ends_with(TRANSACTIONS))
        .map(|c| c.lines)
        .sum();
    assert_eq!(rolled, received);

    // Successful consent calls by consent: the pages and the accounts call.
    let mut by_consent: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in stored.values().flat_map(|m| &m.consents) {
        assert_eq!(c.api_user.to_string(), USER_A);
        *by_consent
            .entry((c.consent.clone(), c.route.clone()))
            .or_default() += c.calls;
    }
    let expected = BTreeMap::from([
        ((CONSENT.to_string(), ACCOUNTS.to_string()), 1),
        (
            (CONSENT.to_string(), TRANSACTIONS.to_string()),
            pages.len() as u64,
        ),
    ]);
    assert_eq!(by_consent, expected);
}
