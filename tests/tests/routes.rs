//! Happy paths of every route and permission over HTTP/1.1 and HTTP/2, interaction ids,
//! header hygiene as the sandbox bank sees it, provider headers kept from API users, and
//! the metrics exposition — against one shared hub (these tests only read).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use e2e::*;
use serde_json::Value;

static HUB: OnceLock<Hub> = OnceLock::new();

fn hub() -> &'static Hub {
    HUB.get_or_init(|| Hub::start_with(hub_exe!(), |s| s.unlimited()))
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {v}"))
        .iter()
        .map(|x| x[key].as_str().expect("id").to_string())
        .collect()
}

/// The request the bank recorded with this interaction id.
fn at_bank(bank: &str, iid: &str) -> sandbox::bank::RecordedRequest {
    let hub = hub();
    poll_until(std::time::Duration::from_secs(5), || {
        hub.bank(bank)
            .recent_requests()
            .into_iter()
            .find(|r| r.header("x-fapi-interaction-id") == Some(iid))
    })
    .unwrap_or_else(|| panic!("bank {bank} never saw interaction {iid}"))
}

fn new_iid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn accounts_list_is_the_consent_customers_accounts() {
    let hub = hub();
    let r = hub
        .client_as(USER_A)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.token("c-authorised-full")),
        )
        .await;
    let v = r.ok_json();
    let got: BTreeSet<String> = ids(&v, "account_id").into_iter().collect();
    let want: BTreeSet<String> = hub.accounts_of("c-authorised-full").into_iter().collect();
    assert_eq!(got, want);
    // Customer data is never cacheable on the way (contract §3).
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "{}",
        r.describe()
    );
    // Rate-limited routes advertise their limits (contract §7).
    assert!(r.header("ratelimit-policy").is_some(), "{}", r.describe());
    assert!(r.header("ratelimit").is_some(), "{}", r.describe());
}

#[tokio::test]
async fn one_account_and_its_balances() {
    let hub = hub();
    let token = hub.token("c-authorised-full");
    let client = hub.client_as(USER_A);
    for acc in hub.accounts_of("c-authorised-full") {
        let v = client
            .get(&account_path(BANK_1, &acc), Some(&token))
            .await
            .ok_json();
        assert_eq!(v["data"]["account_id"], acc.as_str(), "{v}");
        assert!(v["data"]["iban"].is_string(), "{v}");
        let v = client
            .get(&balances_path(BANK_1, &acc), Some(&token))
            .await
            .ok_json();
        assert_eq!(v["data"]["account_id"], acc.as_str(), "{v}");
        assert!(v["data"]["booked"].is_string(), "{v}");
        assert!(v["data"]["available"].is_string(), "{v}");
    }
}

#[tokio::test]
async fn transactions_with_limit_cursor_and_date_range() {
    let hub = hub();
    let token = hub.token("c-authorised-full");
    let client = hub.client_as(USER_A);
    let iin = hub.customer_of("c-authorised-full");
    let data = hub.bank(BANK_1).data().clone();
    let account = data
        .customer(&iin)
        .and_then(|c| c.busiest_account())
        .expect("an account");
    let all: Vec<String> = account
        .transactions
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    assert!(
        all.len() >= 12,
        "the busiest account has {} transactions",
        all.len()
    );

    // Page 1.
    let p1 = client
        .get(
            &transactions_path(BANK_1, &account.id, "limit=5"),
            Some(&token),
        )
        .await
        .ok_json();
    assert_eq!(ids(&p1, "transaction_id"), all[..5].to_vec(), "{p1}");
    assert_eq!(p1["meta"]["total"].as_u64(), Some(all.len() as u64));
    let cursor = p1["meta"]["next_cursor"]
        .as_str()
        .expect("next_cursor")
        .to_string();

    // Page 2 through the cursor; the query reaches the bank unchanged.
    let iid = new_iid();
    let query = format!("limit=5&cursor={cursor}");
    let r = client
        .send(
            &Req::get(transactions_path(BANK_1, &account.id, &query))
                .bearer(&token)
                .interaction_id(&iid),
        )
        .await;
    let p2 = r.ok_json();
    assert_eq!(ids(&p2, "transaction_id"), all[5..10].to_vec(), "{p2}");
    let seen = at_bank(BANK_1, &iid);
    assert_eq!(
        seen.path_and_query,
        format!("/v1/accounts/{}/transactions?{query}", account.id)
    );

    // A date range.
    let (newer, older) = (&account.transactions[2], &account.transactions[10]);
    let (from, to) = (
        older.booking_date.to_string(),
        newer.booking_date.to_string(),
    );
    let want: Vec<String> = account
        .transactions_between(Some(older.booking_date), Some(newer.booking_date))
        .iter()
        .map(|t| t.id.to_string())
        .collect();
    let v = client
        .get(
            &transactions_path(
                BANK_1,
                &account.id,
                &format!("from={from}&to={to}&limit=500"),
            ),
            Some(&token),
        )
        .await
        .ok_json();
    assert_eq!(ids(&v, "transaction_id"), want, "{v}");
    for t in v["data"].as_array().expect("data") {
        let d = t["booking_date"].as_str().expect("booking_date");
        assert!(
            d >= from.as_str() && d <= to.as_str(),
            "{d} outside {from}..{to}"
        );
    }

    // Out-of-range limits are refused by the hub itself (row 1, strict query parsing).
    for bad in ["limit=0", "limit=501", "from=2024-13-01", "limit=5&limit=6"] {
        client
            .get(&transactions_path(BANK_1, &account.id, bad), Some(&token))
            .await
            .assert_problem(400, "bad_request");
    }
}

#[tokio::test]
async fn restricted_consent_lists_and_serves_only_its_accounts() {
    let hub = hub();
    let token = hub.token("c-authorised-restricted");
    let allowed: Vec<String> = hub.consent("c-authorised-restricted")["accounts"]
        .as_array()
        .expect("restricted accounts")
        .iter()
        .map(|a| a.as_str().expect("id").to_string())
        .collect();
    let client = hub.client_as(USER_A);
    let v = client
        .get(&accounts_path(BANK_1), Some(&token))
        .await
        .ok_json();
    assert_eq!(ids(&v, "account_id"), allowed, "{v}");
    client
        .get(&balances_path(BANK_1, &allowed[0]), Some(&token))
        .await
        .ok_json();
}

#[tokio::test]
async fn second_api_user_on_second_bank() {
    let hub = hub();
    let token = hub.token("c-authorised-bank2");
    let client = hub.client_as(USER_B);
    let v = client
        .get(&accounts_path(BANK_2), Some(&token))
        .await
        .ok_json();
    let acc = ids(&v, "account_id").remove(0);
    client
        .get(&transactions_path(BANK_2, &acc, "limit=3"), Some(&token))
        .await
        .ok_json();
}

#[tokio::test]
async fn open_data_serves_all_four_datasets_without_a_token() {
    let hub = hub();
    for (user, bank) in [(USER_A, BANK_1), (USER_B, BANK_2)] {
        let client = hub.client_as(user);
        for ds in ["exchange-rates", "branches", "atms", "products"] {
            let r = client.get(&open_data_path(bank, ds), None).await;
            let v = r.ok_json();
            assert!(
                v["data"].as_array().is_some_and(|a| !a.is_empty()),
                "{ds}: {v}"
            );
        }
    }
}

#[tokio::test]
async fn http2_serves_routes_and_problems() {
    let hub = hub();
    let mut h2 = hub.client_as(USER_A).h2().await.expect("h2 connection");
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]), "ALPN h2 not chosen");
    let token = hub.token("c-authorised-full");
    let auth = format!("Bearer {token}");
    let acc = hub.accounts_of("c-authorised-full").remove(0);
    // Several streams on one connection.
    for path in [
        accounts_path(BANK_1),
        account_path(BANK_1, &acc),
        balances_path(BANK_1, &acc),
        transactions_path(BANK_1, &acc, "limit=2"),
    ] {
        let r = h2
            .get(&path, &[("authorization", &auth)])
            .await
            .expect("h2 response");
        assert_eq!(r.version, "HTTP/2.0");
        r.ok_json();
    }
    let r = h2
        .get(&open_data_path(BANK_1, "atms"), &[])
        .await
        .expect("h2 response");
    r.ok_json();
    // Client x-hub-* headers are replaced over HTTP/2 too.
    let iid = new_iid();
    let r = h2
        .get(
            &accounts_path(BANK_1),
            &[
                ("authorization", &auth),
                ("x-fapi-interaction-id", &iid),
                ("x-hub-customer", "000000000000"),
                ("x-hub-api-user", "999999999999"),
            ],
        )
        .await
        .expect("h2 response");
    r.ok_json();
    let seen = at_bank(BANK_1, &iid);
    assert_eq!(
        seen.header("x-hub-customer"),
        Some(hub.customer_of("c-authorised-full").as_str())
    );
    assert_eq!(seen.header("x-hub-api-user"), Some(USER_A));
    assert!(!seen.has_header("authorization"));
    let revoked = format!("Bearer {}", hub.token("c-revoked"));
    let iid = new_iid();
    let r = h2
        .get(
            &accounts_path(BANK_1),
            &[("authorization", &revoked), ("x-fapi-interaction-id", &iid)],
        )
        .await
        .expect("h2 response");
    r.assert_problem(403, "consent_revoked");
    assert_eq!(r.interaction_id(), iid);
}

#[tokio::test]
async fn interaction_id_is_echoed_when_a_uuid_and_replaced_otherwise() {
    let hub = hub();
    let client = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");

    // A UUID is echoed, downstream and upstream.
    let iid = new_iid();
    let r = client
        .send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&token)
                .interaction_id(&iid),
        )
        .await;
    r.ok_json();
    assert_eq!(r.interaction_id(), iid);
    assert_eq!(
        at_bank(BANK_1, &iid).header("x-fapi-interaction-id"),
        Some(iid.as_str())
    );

    // Upper-case hex is still a UUID, echoed as sent.
    let upper = new_iid().to_ascii_uppercase();
    let r = client
        .send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&token)
                .interaction_id(&upper),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("x-fapi-interaction-id"), Some(upper.as_str()));

    // Also on a problem answer.
    let iid = new_iid();
    client
        .send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&hub.token("c-revoked"))
                .interaction_id(&iid),
        )
        .await
        .assert_problem(403, "consent_revoked");

    // A non-UUID is replaced by a fresh UUID, the same one upstream.
    for bogus in [
        "not-a-uuid",
        "12345",
        "' OR 1=1 --",
        "{00000000-0000-0000-0000-000000000000}",
    ] {
        let r = client
            .send(
                &Req::get(accounts_path(BANK_1))
                    .bearer(&token)
                    .interaction_id(bogus),
            )
            .await;
        r.ok_json();
        let got = r.interaction_id().to_string();
        assert!(is_uuid(&got) && got != bogus, "{bogus:?} -> {got:?}");
        at_bank(BANK_1, &got);
        let p = client
            .send(&Req::get("/v1/nowhere").interaction_id(bogus))
            .await;
        p.assert_problem(404, "route_not_found");
        assert_ne!(p.interaction_id(), bogus);
    }

    // Absent: a fresh one each time.
    let a = client.get(&accounts_path(BANK_1), Some(&token)).await;
    let b = client.get(&accounts_path(BANK_1), Some(&token)).await;
    assert!(is_uuid(a.interaction_id()) && is_uuid(b.interaction_id()));
    assert_ne!(a.interaction_id(), b.interaction_id());
}

#[tokio::test]
async fn bank_sees_only_the_hubs_headers() {
    let hub = hub();
    let token = hub.token("c-authorised-full");
    let iid = new_iid();
    let req = Req::get(accounts_path(BANK_1))
        .bearer(&token)
        .interaction_id(&iid)
        .header("x-hub-api-user", "999999999999")
        .header("x-hub-consent-id", "c-forged")
        .header("x-hub-customer", "000000000000")
        .header(
            "x-hub-permissions",
            "accounts,balances,transactions,payments",
        )
        .header("x-hub-accounts", "acc-forged")
        .header("X-Hub-Evil", "1")
        .header("Connection", "keep-alive, X-Secret-Hop")
        .header("X-Secret-Hop", "must-not-travel")
        .header("Keep-Alive", "timeout=5")
        .header("TE", "trailers")
        .header("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA==")
        .header("x-fapi-customer-ip-address", "203.0.113.7");
    let r = hub.client_as(USER_A).send(&req).await;
    r.ok_json();
    assert_eq!(r.interaction_id(), iid);

    let seen = at_bank(BANK_1, &iid);
    let names: Vec<&str> = seen.headers.iter().map(|(n, _)| n.as_str()).collect();
    let count = |name: &str| names.iter().filter(|n| **n == name).count();
    assert!(!seen.has_header("authorization"), "{:?}", seen.headers);
    assert_eq!(hub.bank(BANK_1).authorization_forwarded_count(), 0);
    for (name, want) in [
        ("x-hub-api-user", USER_A.to_string()),
        ("x-hub-consent-id", "c-authorised-full".to_string()),
        ("x-hub-customer", hub.customer_of("c-authorised-full")),
    ] {
        assert_eq!(
            count(name),
            1,
            "{name} must appear once: {:?}",
            seen.headers
        );
        assert_eq!(seen.header(name), Some(want.as_str()), "{name}");
    }
    assert_eq!(count("x-hub-permissions"), 1, "{:?}", seen.headers);
    let perms: BTreeSet<&str> = seen
        .header("x-hub-permissions")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(
        perms,
        BTreeSet::from(["accounts", "balances", "transactions"]),
        "x-hub-permissions"
    );
    // The consent is unrestricted: no account list, and the client's forged one is gone.
    assert!(!seen.has_header("x-hub-accounts"), "{:?}", seen.headers);
    assert!(!seen.has_header("x-hub-evil"), "{:?}", seen.headers);
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!seen.has_header(hop), "{hop} forwarded: {:?}", seen.headers);
    }
    if let Some(c) = seen.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-secret-hop"),
            "client Connection forwarded: {c}"
        );
    }
    assert_eq!(seen.header("x-fapi-interaction-id"), Some(iid.as_str()));
    assert_eq!(
        seen.header("x-fapi-customer-ip-address"),
        Some("203.0.113.7")
    );
}

#[tokio::test]
async fn upgrade_header_is_not_forwarded() {
    let hub = hub();
    let iid = new_iid();
    let r = hub
        .client_as(USER_A)
        .send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&hub.token("c-authorised-full"))
                .interaction_id(&iid)
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = at_bank(BANK_1, &iid);
    assert!(!seen.has_header("upgrade"), "{:?}", seen.headers);
}

#[tokio::test]
async fn invalid_customer_ip_is_dropped_not_an_error() {
    let hub = hub();
    let client = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    for (sent, want) in [
        ("2001:db8::1", Some("2001:db8::1")),
        ("not-an-ip", None),
        ("203.0.113.7, 10.0.0.1", None),
        ("999.1.1.1", None),
    ] {
        let iid = new_iid();
        let r = client
            .send(
                &Req::get(accounts_path(BANK_1))
                    .bearer(&token)
                    .interaction_id(&iid)
                    .header("x-fapi-customer-ip-address", sent),
            )
            .await;
        assert_eq!(r.status, 200, "{sent}: {}", r.describe());
        assert_eq!(
            at_bank(BANK_1, &iid).header("x-fapi-customer-ip-address"),
            want,
            "{sent}"
        );
    }
}

#[tokio::test]
async fn provider_internal_headers_do_not_reach_the_api_user() {
    let hub = hub();
    // The bank does send them (so this test is not vacuous): ask it directly, as the hub.
    let direct = Client::new(
        hub.bank(BANK_1).addr(),
        hub.ca_pem(),
        Some(&ClientCert::of(hub.pki.hub_client())),
    )
    .api(Some(Api::Provider))
    .get("/v1/open-data/atms", None)
    .await;
    assert_eq!(direct.status, 200, "{}", direct.describe());
    assert!(direct.header("server").is_some() && direct.header("x-internal-host").is_some());

    let client = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    let acc = hub.accounts_of("c-authorised-full").remove(0);
    for r in [
        client.get(&accounts_path(BANK_1), Some(&token)).await,
        client.get(&balances_path(BANK_1, &acc), Some(&token)).await,
        client.get(&open_data_path(BANK_1, "atms"), None).await,
    ] {
        assert_eq!(r.status, 200, "{}", r.describe());
        for (n, v) in &r.headers {
            assert!(n != "server" && n != "x-internal-host", "{n}: {v} leaked");
            assert!(!v.contains("internal"), "{n}: {v} reveals an internal host");
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_code_and_provider_without_secrets() {
    let hub = hub();
    let client = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    client
        .get(&accounts_path(BANK_1), Some(&token))
        .await
        .ok_json();
    client
        .get(&accounts_path(BANK_1), Some(&hub.token("c-revoked")))
        .await
        .assert_problem(403, "consent_revoked");
    client
        .get(&open_data_path(BANK_1, "branches"), None)
        .await
        .ok_json();
    let text = hub.metrics().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("hub_requests_total{"))
        .collect();
    let has = |route: &str, code: &str, provider: &str| {
        series.iter().any(|l| {
            l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("code=\"{code}\""))
                && l.contains(&format!("provider=\"{provider}\""))
        })
    };
    assert!(
        has("/v1/providers/{provider_id}/accounts", "ok", BANK_1),
        "{series:#?}"
    );
    // A rejection is counted by route and code; its provider label is not asserted (the
    // hub labels rejected requests `provider="-"`; see the audit test for the journal).
    assert!(
        series.iter().any(
            |l| l.contains("route=\"/v1/providers/{provider_id}/accounts\"")
                && l.contains("code=\"consent_revoked\"")
        ),
        "{series:#?}"
    );
    assert!(
        has("/v1/open-data/{provider_id}/{dataset}", "ok", BANK_1),
        "{series:#?}"
    );
    // Nothing identifying a customer, an account or a token anywhere in the exposition.
    for c in hub.manifest["consents"].as_array().expect("consents") {
        let token = c["token"].as_str().expect("token");
        assert!(!text.contains(token), "a token is in /metrics");
        let sig = token.rsplit('.').next().expect("signature");
        assert!(!text.contains(sig), "a token signature is in /metrics");
        let iin = c["customer"].as_str().expect("customer");
        assert!(!text.contains(iin), "customer {iin} is in /metrics");
        for a in c["account_ids"].as_array().expect("account_ids") {
            let a = a.as_str().expect("account");
            assert!(!text.contains(a), "account {a} is in /metrics");
        }
    }
}

#[tokio::test]
async fn open_data_never_forwards_authorization() {
    let hub = hub();
    let iid = new_iid();
    let r = hub
        .client_as(USER_A)
        .send(
            &Req::get(open_data_path(BANK_1, "branches"))
                .bearer(&hub.token("c-authorised-full"))
                .interaction_id(&iid)
                .header("x-hub-customer", "000000000000"),
        )
        .await;
    r.ok_json();
    let seen = at_bank(BANK_1, &iid);
    assert!(!seen.has_header("authorization"), "{:?}", seen.headers);
    assert!(!seen.has_header("x-hub-customer"), "{:?}", seen.headers);
    assert_eq!(seen.path_and_query, "/v1/open-data/branches");
}

#[tokio::test]
async fn keep_alive_connection_survives_refusals() {
    let hub = hub();
    let mut conn = hub.client_as(USER_A).connect().await.expect("connect");
    let ok = Req::get(accounts_path(BANK_1)).bearer(&hub.token("c-authorised-full"));
    let refused = Req::get(accounts_path(BANK_1)).bearer(&hub.token("c-revoked"));
    let lost = Req::get("/v1/nowhere");
    let tricky = Req::get(format!("/v1//providers/{BANK_1}/accounts"));
    let no_token = Req::get(accounts_path(BANK_1));
    for (req, status) in [
        (&ok, 200),
        (&refused, 403),
        (&ok, 200),
        (&lost, 404),
        (&ok, 200),
        (&tricky, 400),
        (&ok, 200),
        (&no_token, 401),
        (&ok, 200),
    ] {
        let r = conn
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{} on a kept-alive connection: {e}", req.target()));
        assert_eq!(r.status, status, "{}: {}", req.target(), r.describe());
    }
}

#[tokio::test]
async fn a_full_page_of_500_transactions_streams_through() {
    let hub = hub();
    let iin = hub.customer_of("c-authorised-full");
    let data = hub.bank(BANK_1).data().clone();
    let account = data
        .customer(&iin)
        .and_then(|c| c.busiest_account())
        .expect("an account");
    let v = hub
        .client_as(USER_A)
        .get(
            &transactions_path(BANK_1, &account.id, "limit=500"),
            Some(&hub.token("c-authorised-full")),
        )
        .await
        .ok_json();
    assert_eq!(
        v["data"].as_array().map(Vec::len),
        Some(account.transactions.len().min(500))
    );
}

#[tokio::test]
async fn duplicated_authorization_headers_are_refused() {
    // Two Authorization field lines are not a well-formed bearer credential (RFC 9110
    // §5.3: the field is not a list); taking either one invites confusion between hops.
    let hub = hub();
    let client = hub.client_as(USER_A);
    let good = hub.token("c-authorised-full");
    let other = hub.token("c-authorised-restricted");
    let mut accepted = Vec::new();
    for (name, first, second) in [
        ("the same token twice", &good, &good),
        ("two valid tokens", &good, &other),
        ("two valid tokens, swapped", &other, &good),
    ] {
        let r = client
            .send(&Req::get(accounts_path(BANK_1)).bearer(first).bearer(second))
            .await;
        if (r.status, r.code().as_str()) == (401, "invalid_token") {
            r.assert_problem(401, "invalid_token");
        } else {
            accepted.push(format!("{name}: {}", r.status));
        }
    }
    assert!(
        accepted.is_empty(),
        "duplicated Authorization accepted: {accepted:?}"
    );
}

/// The admin listener serves the API users' OpenAPI document (`docs/openapi/hub.json`),
/// the one every answer of these suites is held to, as JSON; other methods are `405`.
#[tokio::test]
async fn the_admin_listener_serves_the_openapi_document() {
    let hub = hub();
    let tcp = tokio::net::TcpStream::connect(hub.admin)
        .await
        .expect("admin listener");
    let mut conn = e2e::http::Conn::new(tcp);
    let r = conn
        .send(&Req::get("/openapi.json"))
        .await
        .expect("an answer");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let committed: Value =
        serde_json::from_str(include_str!("../../docs/openapi/hub.json")).expect("JSON");
    assert_eq!(r.json(), committed);
    assert_eq!(r.json()["openapi"], "3.1.0");
    let (status, _) = hub.admin("POST", "/openapi.json").await;
    assert_eq!(status, 405);
}
