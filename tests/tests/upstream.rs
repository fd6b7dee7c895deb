//! Contract §6 rows 17–19 with a misbehaving sandbox bank (hang, reset, garbage, slow but
//! in time) and a provider whose port is closed; after each failure the hub keeps serving.
//! One shared hub; the tests that switch bank 2's behaviour run one at a time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::*;
use sandbox::bank::Behaviour;

/// Bank 2's SLA in this hub.
const SLA_MS: u64 = 500;
/// A provider whose only base URL is a closed port.
const CLOSED: &str = "990340000055";

static HUB: OnceLock<Hub> = OnceLock::new();
/// Serialises the tests that change bank 2's behaviour.
static BANK2: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn hub() -> &'static Hub {
    HUB.get_or_init(|| {
        Hub::start_with(hub_exe!(), |s| {
            s.unlimited();
            s.provider_mut(BANK_2).timeout_ms = SLA_MS;
            let url = format!("https://127.0.0.1:{}", closed_port());
            s.add_provider(CLOSED, &url, true);
            let iin = s.consents[0]["customer"]
                .as_str()
                .expect("customer")
                .to_string();
            s.add_consent("c-e2e-closed", USER_A, &iin, &[CLOSED], &ALL_PERMISSIONS);
        })
    })
}

async fn bank2_accounts() -> Response {
    let hub = hub();
    hub.client_as(USER_B)
        .get(
            &accounts_path(BANK_2),
            Some(&hub.token("c-authorised-bank2")),
        )
        .await
}

/// The hub still serves both banks normally.
async fn still_serving() {
    let hub = hub();
    hub.client_as(USER_A)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.token("c-authorised-full")),
        )
        .await
        .ok_json();
    bank2_accounts().await.ok_json();
    hub.client_as(USER_B)
        .get(&open_data_path(BANK_2, "exchange-rates"), None)
        .await
        .ok_json();
}

/// Puts bank 2 back to normal even when the test fails half-way.
struct Restore;
impl Drop for Restore {
    fn drop(&mut self) {
        hub().bank(BANK_2).set_behaviour(Behaviour::Normal);
    }
}

#[tokio::test]
async fn hanging_bank_is_provider_timeout_within_its_sla() {
    let _serial = BANK2.lock().await;
    let _restore = Restore;
    let hub = hub();
    hub.bank(BANK_2).set_behaviour(Behaviour::Hang);
    let t0 = Instant::now();
    // The client waits at most 6 × the SLA; the hub must answer long before.
    let r = tokio::time::timeout(Duration::from_millis(6 * SLA_MS), bank2_accounts())
        .await
        .expect("the hub did not answer within 6 x the provider's SLA");
    let took = t0.elapsed();
    r.assert_problem(504, "provider_timeout");
    assert!(
        took >= Duration::from_millis(SLA_MS - 50),
        "answered 504 after {took:?}, before the SLA of {SLA_MS} ms"
    );
    // Open data of the same bank times out the same way.
    let r = tokio::time::timeout(
        Duration::from_millis(6 * SLA_MS),
        hub.client_as(USER_B)
            .get(&open_data_path(BANK_2, "atms"), None),
    )
    .await
    .expect("no answer within 6 x the SLA");
    r.assert_problem(504, "provider_timeout");
    hub.bank(BANK_2).set_behaviour(Behaviour::Normal);
    still_serving().await;
}

#[tokio::test]
async fn slow_bank_within_its_sla_is_served() {
    let _serial = BANK2.lock().await;
    let _restore = Restore;
    let hub = hub();
    hub.bank(BANK_2)
        .set_behaviour(Behaviour::Delay(Duration::from_millis(SLA_MS / 5)));
    bank2_accounts().await.ok_json();
    hub.bank(BANK_2).set_behaviour(Behaviour::Normal);
}

#[tokio::test]
async fn resetting_bank_is_provider_unavailable() {
    let _serial = BANK2.lock().await;
    let _restore = Restore;
    let hub = hub();
    hub.bank(BANK_2).set_behaviour(Behaviour::Reset);
    for _ in 0..2 {
        bank2_accounts()
            .await
            .assert_problem(503, "provider_unavailable");
    }
    hub.bank(BANK_2).set_behaviour(Behaviour::Normal);
    still_serving().await;
}

#[tokio::test]
async fn garbage_answer_is_provider_bad_response() {
    let _serial = BANK2.lock().await;
    let _restore = Restore;
    let hub = hub();
    hub.bank(BANK_2).set_behaviour(Behaviour::Garbage);
    for _ in 0..2 {
        bank2_accounts()
            .await
            .assert_problem(502, "provider_bad_response");
    }
    hub.bank(BANK_2).set_behaviour(Behaviour::Normal);
    still_serving().await;
}

#[tokio::test]
async fn closed_port_is_provider_unavailable() {
    let hub = hub();
    let a = hub.client_as(USER_A);
    let token = hub.mint_for(USER_A, "c-e2e-closed");
    for _ in 0..4 {
        a.get(&accounts_path(CLOSED), Some(&token))
            .await
            .assert_problem(503, "provider_unavailable");
        a.get(&open_data_path(CLOSED, "branches"), None)
            .await
            .assert_problem(503, "provider_unavailable");
    }
    hub.client_as(USER_A)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.token("c-authorised-full")),
        )
        .await
        .ok_json();
}

#[tokio::test]
async fn oversized_chunked_body_to_a_slow_bank_is_payload_too_large() {
    // With the bank answering only after 200 ms, the hub has read the whole body first.
    let _serial = BANK2.lock().await;
    let _restore = Restore;
    let hub = hub();
    hub.bank(BANK_2)
        .set_behaviour(Behaviour::Delay(Duration::from_millis(200)));
    let mut raw = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
        open_data_path(BANK_2, "atms")
    )
    .into_bytes();
    let chunk = vec![b'a'; 8 * 1024];
    for _ in 0..12 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut conn = hub.client_as(USER_B).connect().await.expect("connect");
    let r = conn.send_raw(&raw).await.expect("an answer");
    r.assert_problem(413, "payload_too_large");
    hub.bank(BANK_2).set_behaviour(Behaviour::Normal);
    still_serving().await;
}

/// `hub_client_gone_total` from the hub's `/metrics`.
async fn client_gone_count() -> u64 {
    let text = hub().metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("hub_client_gone_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_client_that_hangs_up_while_the_bank_thinks_is_counted_not_failed() {
    let _serial = BANK2.lock().await;
    let _restore = Restore;
    let hub = hub();
    let before = client_gone_count().await;
    hub.bank(BANK_2).set_behaviour(Behaviour::Hang);
    // The client gives up (its connection is dropped, no TLS close_notify) long before the
    // provider's SLA would answer 504.
    let gave_up = tokio::time::timeout(Duration::from_millis(SLA_MS / 5), bank2_accounts()).await;
    assert!(gave_up.is_err(), "a hanging bank was answered: {gave_up:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = client_gone_count().await;
    while after <= before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = client_gone_count().await;
    }
    assert_eq!(
        after,
        before + 1,
        "client_gone_total before {before}, after {after}"
    );
    hub.bank(BANK_2).set_behaviour(Behaviour::Normal);
    still_serving().await;
}
