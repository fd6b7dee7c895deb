//! The sandbox bank's provider API over real mTLS: happy paths, pagination, the
//! checks a provider makes on the hub's headers, open data and request recording.

mod bank_support;

use bank_support::*;
use std::collections::HashSet;

#[tokio::test]
async fn account_list_returns_only_the_named_customers_accounts() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let r = h
        .get("/v1/accounts", &hub_headers(&alice.iin, "accounts"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-internal-host"), Some("bank-node-7.internal"));
    assert!(r.header("server").is_some());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-fapi-interaction-id"), Some(INTERACTION_ID));
    let v = r.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|a| a["account_id"].as_str().expect("id"))
        .collect();
    let expected: Vec<&str> = alice.accounts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, expected);
    assert_eq!(v["meta"]["total"], alice.accounts.len());
    assert_eq!(v["links"]["self"], "/v1/accounts");
    assert!(v["links"].get("next").is_none());
    let first = &v["data"][0];
    for field in ["iban", "currency", "type", "name", "opened", "status"] {
        assert!(first[field].is_string(), "account field {field}: {first}");
    }
    assert!(first["iban"]
        .as_str()
        .is_some_and(sandbox::data::is_valid_kz_iban));
}

#[tokio::test]
async fn account_and_balances_happy_path() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let acc = &alice.accounts[1];
    let r = h
        .get(
            &format!("/v1/accounts/{}", acc.id),
            &hub_headers(&alice.iin, "accounts"),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"]["account_id"], acc.id.as_str());
    assert_eq!(v["data"]["iban"], acc.iban.as_str());
    assert_eq!(v["data"]["currency"], acc.currency.as_str());
    assert_eq!(v["links"]["self"], format!("/v1/accounts/{}", acc.id));

    let r = h
        .get(
            &format!("/v1/accounts/{}/balances", acc.id),
            &hub_headers(&alice.iin, "balances"),
        )
        .await;
    assert_eq!(r.status, 200);
    let b = &r.json()["data"];
    assert_eq!(b["account_id"], acc.id.as_str());
    assert_eq!(b["booked"], acc.balance.booked.to_string());
    assert_eq!(b["available"], acc.balance.available.to_string());
    let booked = b["booked"].as_str().expect("booked is a string");
    let (_, decimals) = booked.split_once('.').expect("two decimals");
    assert_eq!(decimals.len(), 2);
    assert_eq!(b["as_of"], sandbox::data::AS_OF_TIMESTAMP);
}

#[tokio::test]
async fn http2_is_negotiated_and_served() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let r = h
        .get_h2("/v1/accounts", &hub_headers(&alice.iin, "accounts"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["meta"]["total"], alice.accounts.len());
    assert_eq!(r.header("x-fapi-interaction-id"), Some(INTERACTION_ID));
    let rec = h.bank.recent_requests();
    assert_eq!(rec.last().map(|r| r.version.as_str()), Some("HTTP/2.0"));
}

#[tokio::test]
async fn transactions_pagination_walks_every_page_without_duplicates() {
    let h = Harness::new().await;
    let (owner, acc) = {
        let (c, a) = h.bank.data().busiest_account().expect("busy account");
        (c.clone(), a.clone())
    };
    assert_eq!(
        acc.transactions.len(),
        sandbox::data::BUSY_ACCOUNT_TRANSACTIONS
    );
    let headers = hub_headers(&owner.iin, "transactions");
    let mut conn = H1Conn::open(&h.h1, h.bank.addr()).await.expect("connect");
    let mut next = Some(format!("/v1/accounts/{}/transactions?limit=500", acc.id));
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = conn.get(&path, &headers).await.expect("page");
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert_eq!(v["meta"]["total"], 3000);
        for t in v["data"].as_array().expect("data") {
            let id = t["transaction_id"].as_str().expect("id").to_owned();
            assert!(seen.insert(id.clone()), "duplicate {id} on page {pages}");
            order.push(t["booking_date"].as_str().expect("date").to_owned());
            assert!(t["amount"]
                .as_str()
                .is_some_and(|a| a.split_once('.').is_some_and(|(_, d)| d.len() == 2)));
        }
        assert_eq!(
            v["links"]["next"].as_str().is_some(),
            v["meta"]["next_cursor"].as_str().is_some()
        );
        next = v["links"]["next"]
            .as_str()
            .map(|n| format!("/v1/accounts/{}/transactions{n}", acc.id));
        pages += 1;
        assert!(pages <= 6, "too many pages");
    }
    assert_eq!(pages, 6);
    assert_eq!(seen.len(), 3000);
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "newest booking date first");

    // Default page size is 50.
    let r = conn
        .get(&format!("/v1/accounts/{}/transactions", acc.id), &headers)
        .await
        .expect("default page");
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(50));
}

#[tokio::test]
async fn transactions_date_filter_is_inclusive_and_paginates_within_the_filter() {
    let h = Harness::new().await;
    let (owner, acc) = {
        let (c, a) = h.bank.data().busiest_account().expect("busy account");
        (c.clone(), a.clone())
    };
    let from = "2025-03-01";
    let to = "2025-03-31";
    let expected: Vec<String> = acc
        .transactions
        .iter()
        .filter(|t| {
            let d = t.booking_date.to_string();
            d.as_str() >= from && d.as_str() <= to
        })
        .map(|t| t.id.to_string())
        .collect();
    assert!(expected.len() > 20, "the filter selects a real month");
    let headers = hub_headers(&owner.iin, "accounts,transactions");
    let mut next = Some(format!(
        "/v1/accounts/{}/transactions?from={from}&to={to}&limit=20",
        acc.id
    ));
    let mut got = Vec::new();
    while let Some(path) = next.take() {
        let r = h.get(&path, &headers).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["meta"]["total"], expected.len());
        for t in v["data"].as_array().expect("data") {
            let d = t["booking_date"].as_str().expect("date");
            assert!(d >= from && d <= to, "{d} outside the filter");
            got.push(t["transaction_id"].as_str().expect("id").to_owned());
        }
        next = v["links"]["next"]
            .as_str()
            .map(|n| format!("/v1/accounts/{}/transactions{n}", acc.id));
        if let Some(n) = &next {
            assert!(
                n.contains("from=2025-03-01") && n.contains("to=2025-03-31"),
                "{n}"
            );
        }
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn bad_transaction_parameters_are_400() {
    let h = Harness::new().await;
    let (owner, acc) = {
        let (c, a) = h.bank.data().busiest_account().expect("busy account");
        (c.clone(), a.clone())
    };
    let headers = hub_headers(&owner.iin, "transactions");
    let base = format!("/v1/accounts/{}/transactions", acc.id);
    // A real cursor for the unfiltered list, to replay it where it does not belong.
    let first = h.get(&format!("{base}?limit=10"), &headers).await.json();
    let cursor = first["meta"]["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let mut tampered = cursor.clone().into_bytes();
    tampered[1] = if tampered[1] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for (query, code) in [
        ("limit=0", "invalid_query"),
        ("limit=501", "invalid_query"),
        ("limit=ten", "invalid_query"),
        ("from=2025-02-30", "invalid_query"),
        ("from=yesterday", "invalid_query"),
        ("from=2025-05-01&to=2025-04-01", "invalid_query"),
        ("limit=5&limit=6", "invalid_query"),
        (&format!("cursor={tampered}"), "invalid_cursor"),
        ("cursor=not-a-cursor", "invalid_cursor"),
        (
            &format!("from=2025-01-01&cursor={cursor}"),
            "invalid_cursor",
        ),
    ] {
        let r = h.get(&format!("{base}?{query}"), &headers).await;
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.error_code(), code, "{query}");
    }
    // The same cursor on another account of the same customer is refused as well.
    if let Some(other) = owner.accounts.iter().find(|a| a.id != acc.id) {
        let r = h
            .get(
                &format!("/v1/accounts/{}/transactions?cursor={cursor}", other.id),
                &headers,
            )
            .await;
        assert_eq!(r.status, 400);
    }
    // A valid cursor continues.
    let r = h
        .get(&format!("{base}?limit=10&cursor={cursor}"), &headers)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn another_customers_account_is_404() {
    let h = Harness::new().await;
    let (alice, bob) = h.two_customers();
    let bobs = &bob.accounts[0].id;
    for (path, perm) in [
        (format!("/v1/accounts/{bobs}"), "accounts"),
        (format!("/v1/accounts/{bobs}/balances"), "balances"),
        (format!("/v1/accounts/{bobs}/transactions"), "transactions"),
        ("/v1/accounts/acc-0000000000000000".to_owned(), "accounts"),
    ] {
        let r = h.get(&path, &hub_headers(&alice.iin, perm)).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "account_not_found", "{path}");
        assert!(!String::from_utf8_lossy(&r.body).contains(&bob.accounts[0].iban));
    }
    // The owner gets it.
    let r = h
        .get(
            &format!("/v1/accounts/{bobs}"),
            &hub_headers(&bob.iin, "accounts"),
        )
        .await;
    assert_eq!(r.status, 200);
    // An unknown customer.
    let r = h
        .get("/v1/accounts", &hub_headers("900101300017", "accounts"))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "customer_not_found");
}

#[tokio::test]
async fn missing_or_malformed_hub_headers_are_400() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let full = hub_headers(&alice.iin, "accounts");
    for skip in 0..full.len() {
        let headers: Vec<_> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, h)| h.clone())
            .collect();
        let r = h.get("/v1/accounts", &headers).await;
        assert_eq!(r.status, 400, "without {}", full[skip].0);
        assert_eq!(r.error_code(), "missing_header");
        assert!(r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains(full[skip].0)));
    }
    let with = |name: &str, value: &str| -> Vec<(&'static str, String)> {
        full.iter()
            .map(|(n, v)| {
                (
                    *n,
                    if *n == name {
                        value.to_owned()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };
    for (name, value) in [
        ("x-fapi-interaction-id", "not-a-uuid"),
        ("x-hub-api-user", "12345"),
        ("x-hub-api-user", "18034001234X"),
    ] {
        let r = h.get("/v1/accounts", &with(name, value)).await;
        assert_eq!(r.status, 400, "{name}: {value}");
        assert_eq!(r.error_code(), "invalid_header");
    }
    // A client-supplied x-hub-* header that the hub appended to instead of replacing.
    let mut dup = full.clone();
    dup.push(("x-hub-customer", "000000000000".to_owned()));
    let r = h.get("/v1/accounts", &dup).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "duplicate_header");
}

#[tokio::test]
async fn permission_not_in_header_is_403() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let id = &alice.accounts[0].id;
    for (path, perms) in [
        ("/v1/accounts".to_owned(), "balances,transactions"),
        (format!("/v1/accounts/{id}"), "balances"),
        (
            format!("/v1/accounts/{id}/balances"),
            "accounts,transactions",
        ),
        (
            format!("/v1/accounts/{id}/transactions"),
            "accounts, balances",
        ),
        (format!("/v1/accounts/{id}/transactions"), "transaction"),
    ] {
        let r = h.get(&path, &hub_headers(&alice.iin, perms)).await;
        assert_eq!(r.status, 403, "{path} with {perms}");
        assert_eq!(r.error_code(), "permission_missing");
    }
    // Spaces around the comma list are tolerated.
    let r = h
        .get(
            &format!("/v1/accounts/{id}/balances"),
            &hub_headers(&alice.iin, "accounts , balances"),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn x_hub_accounts_restricts_the_list_and_the_account_routes() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let allowed = &alice.accounts[1].id;
    let denied = &alice.accounts[0].id;
    let mut headers = hub_headers(&alice.iin, ALL_PERMISSIONS);
    headers.push(("x-hub-accounts", format!("acc-unrelated, {allowed}")));
    let r = h.get("/v1/accounts", &headers).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["meta"]["total"], 1);
    assert_eq!(v["data"][0]["account_id"], allowed.as_str());
    let r = h
        .get(&format!("/v1/accounts/{allowed}/balances"), &headers)
        .await;
    assert_eq!(r.status, 200);
    let r = h
        .get(&format!("/v1/accounts/{denied}/balances"), &headers)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "account_not_in_consent");
}

#[tokio::test]
async fn forwarded_authorization_is_refused_and_counted() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let mut headers = hub_headers(&alice.iin, "accounts");
    headers.push((
        "authorization",
        "Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig".to_owned(),
    ));
    let r = h.get("/v1/accounts", &headers).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "authorization_forwarded");
    let r = h.get("/v1/open-data/atms", &headers[4..]).await;
    assert_eq!(r.status, 400);
    assert_eq!(h.bank.authorization_forwarded_count(), 2);
    let last = h.bank.recent_requests().pop().expect("recorded");
    assert!(last.has_header("authorization"));
}

#[tokio::test]
async fn open_data_needs_no_consent_headers() {
    let h = Harness::new().await;
    for ds in ["exchange-rates", "branches", "atms", "products"] {
        let r = h.get(&format!("/v1/open-data/{ds}"), &[]).await;
        assert_eq!(r.status, 200, "{ds}");
        assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
        let v = r.json();
        let n = v["data"].as_array().map_or(0, Vec::len);
        assert!(n > 0, "{ds} is empty");
        assert_eq!(v["meta"]["total"], n);
    }
    let rates = h.get("/v1/open-data/exchange-rates", &[]).await.json();
    let usd = rates["data"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["currency"] == "USD"))
        .expect("USD rate")
        .clone();
    let buy: f64 = usd["buy"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("buy");
    let sell: f64 = usd["sell"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sell");
    assert!(buy < sell && buy > 300.0 && sell < 800.0, "{usd}");
    let branches = h.get("/v1/open-data/branches", &[]).await.json();
    let cities: HashSet<&str> = branches["data"]
        .as_array()
        .expect("branches")
        .iter()
        .filter_map(|b| b["city"].as_str())
        .collect();
    assert!(cities
        .iter()
        .all(|c| ["Almaty", "Astana", "Shymkent"].contains(c)));

    let r = h.get("/v1/open-data/mortgages", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "dataset_not_found");
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let h = Harness::new().await;
    for path in [
        "/v1/customers",
        "/v1/accounts/x/statements",
        "/",
        "/v1/accounts//balances",
    ] {
        let r = h.get(path, &[]).await;
        assert_eq!(r.status, 404, "{path}");
    }
    // POST on a known path: 405 with Allow.
    let tls = tls_connect(&h.h1, h.bank.addr()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("h1");
    tokio::spawn(conn);
    let req = http::Request::post("/v1/accounts")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("req");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 405);
    assert_eq!(
        resp.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
}

#[tokio::test]
async fn requests_are_recorded_in_a_bounded_ring() {
    let h = Harness::new().await;
    let (alice, _) = h.two_customers();
    let headers = hub_headers(&alice.iin, "accounts");
    let mut conn = H1Conn::open(&h.h1, h.bank.addr()).await.expect("connect");
    for i in 0..260 {
        let r = conn
            .get(&format!("/v1/accounts?n={i}"), &headers)
            .await
            .expect("request");
        assert_eq!(r.status, 200);
    }
    assert_eq!(h.bank.request_count(), 260);
    let rec = h.bank.recent_requests();
    assert_eq!(rec.len(), sandbox::bank::RECENT_REQUESTS);
    assert_eq!(rec[0].path_and_query, "/v1/accounts?n=4");
    let last = rec.last().expect("last");
    assert_eq!(last.method, "GET");
    assert_eq!(last.path_and_query, "/v1/accounts?n=259");
    assert_eq!(last.version, "HTTP/1.1");
    assert_eq!(last.header("x-hub-customer"), Some(alice.iin.as_str()));
    assert_eq!(last.header("x-hub-permissions"), Some("accounts"));
    assert_eq!(last.header("host"), Some("localhost"));
    h.bank.clear_recent_requests();
    assert!(h.bank.recent_requests().is_empty());
    assert_eq!(h.bank.request_count(), 260);
}

#[tokio::test]
async fn two_banks_with_the_same_seed_answer_the_same_bytes() {
    let pki = pki();
    let a = sandbox::bank::start(bank_config(&pki, 12, 99))
        .await
        .expect("a");
    let b = sandbox::bank::start(bank_config(&pki, 12, 99))
        .await
        .expect("b");
    let c = connector(&pki, Some(&pki.client), Proto::H1);
    let (owner, acc) = a.data().busiest_account().expect("busy");
    let headers = hub_headers(&owner.iin, ALL_PERMISSIONS);
    for path in [
        "/v1/accounts".to_owned(),
        format!("/v1/accounts/{}/balances", acc.id),
        format!("/v1/accounts/{}/transactions?limit=100", acc.id),
        "/v1/open-data/branches".to_owned(),
    ] {
        let ra = get(&c, a.addr(), Proto::H1, &path, &headers)
            .await
            .expect("a");
        let rb = get(&c, b.addr(), Proto::H1, &path, &headers)
            .await
            .expect("b");
        assert_eq!(ra.status, 200, "{path}");
        assert_eq!(ra.body, rb.body, "{path}");
    }
}
