//! Contract §6 rows 1–15, one shared hub for rows 1–6 and 8–15: strict paths and routes,
//! mTLS and the participant directory, every access-token refusal, certificate binding,
//! scope, each consent check and the provider catalogue — plus the transport-level answers
//! (431, 413, malformed HTTP) and the order in which rows answer. Every refusal is checked
//! whole: status, code, the code's own `type` and `title`, the interaction id, `Date`.
//!
//! Row 7 (`consent_state_stale`) needs a pushed control plane (with a consent file the
//! cache is always fresh): its hub follows a trust sidecar that never answers, and row 7
//! gets the same full problem checks as the others.

use std::sync::OnceLock;

use e2e::*;
use gateway::config::{at, ConsentSection, TrustSection};
use policy::directory::ParticipantStatus;
use serde_json::{json, Value};

/// A provider participant that is configured but not published (delisted).
const DELISTED: &str = "990340000033";
/// A provider BIN the hub does not know at all.
const UNKNOWN: &str = "990340000044";
/// A published provider whose participant is suspended.
const SUSPENDED_PROVIDER: &str = "990340000066";
/// File stem of a second registered certificate of user A (rotation).
const ROTATED: &str = "api-user-a-rotated";

static HUB: OnceLock<Hub> = OnceLock::new();

fn hub() -> &'static Hub {
    HUB.get_or_init(|| {
        Hub::start_with(hub_exe!(), |s| {
            s.unlimited();
            let bank1 = s.prepared.banks[0].url();
            s.add_provider(DELISTED, &bank1, false);
            let iin = s.consents[0]["customer"]
                .as_str()
                .expect("customer")
                .to_string();
            s.add_consent(
                "c-e2e-delisted",
                USER_A,
                &iin,
                &[DELISTED],
                &ALL_PERMISSIONS,
            );
            s.add_provider(SUSPENDED_PROVIDER, &bank1, true);
            s.participant_mut(SUSPENDED_PROVIDER).status = ParticipantStatus::Suspended;
            s.add_consent(
                "c-e2e-suspended-provider",
                USER_A,
                &iin,
                &[SUSPENDED_PROVIDER],
                &ALL_PERMISSIONS,
            );
            // A second certificate registered for user A, as during a rotation.
            let rotated = s
                .prepared
                .pki
                .issue_client(bin(USER_A), ROTATED, &s.prepared.dir.join("rotated"))
                .expect("issue");
            s.participant_mut(USER_A)
                .thumbprints
                .push(at(rotated.x5t_s256.clone()));
            s.add_consent(
                "c-e2e-unknown-provider",
                USER_A,
                &iin,
                &[UNKNOWN],
                &ALL_PERMISSIONS,
            );
        })
    })
}

fn a_client() -> Client {
    hub().client_as(USER_A)
}

fn full_token() -> String {
    hub().token("c-authorised-full")
}

fn account() -> String {
    hub().accounts_of("c-authorised-full").remove(0)
}

// ---------------------------------------------------------------- row 1: routes and paths

#[tokio::test]
async fn path_tricks_are_bad_requests_and_never_reach_a_bank() {
    let hub = hub();
    let acc = account();
    let token = full_token();
    let b = BANK_1;
    let paths = [
        format!("/v1/providers/{b}/accounts/../accounts"),
        format!("/v1/providers/{b}/accounts/{acc}/../../accounts"),
        format!("/v1/providers/{b}/accounts/%2e%2e/accounts"),
        format!("/v1/providers/{b}/accounts/%2E%2E"),
        format!("/v1/providers/{b}%2faccounts"),
        format!("/v1/providers/{b}/accounts%2F{acc}"),
        format!("/v1//providers/{b}/accounts"),
        format!("//v1/providers/{b}/accounts"),
        format!("/v1/providers/{b}/accounts//{acc}"),
        format!("/v1/providers/{b}/accounts/./{acc}"),
        format!("/v1/providers/{b}/accounts/{acc}/.."),
        format!("/v1/providers/{b}/accounts/{acc};jsessionid=1"),
        format!("/v1/providers/{b}/accounts/{acc}%00"),
        format!("/v1/providers/{b}/accounts\\{acc}"),
        format!("/v1/open-data/{b}/../{b}/atms"),
        format!("/v1/open-data/{b}/%61tms"),
    ];
    let client = a_client();
    let mut iids = Vec::new();
    for p in &paths {
        let iid = uuid::Uuid::new_v4().to_string();
        let r = client
            .send(&Req::get(p.as_str()).bearer(&token).interaction_id(&iid))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "bad_request".to_string()),
            "{p}: {}",
            r.describe()
        );
        r.assert_problem(400, "bad_request");
        assert_eq!(r.interaction_id(), iid);
        iids.push(iid);
    }
    let seen = hub.bank(BANK_1).recent_requests();
    for iid in &iids {
        assert!(
            !seen
                .iter()
                .any(|r| r.header("x-fapi-interaction-id") == Some(iid)),
            "a path trick reached the bank"
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_route_not_found() {
    let b = BANK_1;
    let token = full_token();
    let client = a_client();
    for p in [
        "/".to_string(),
        "/v1".to_string(),
        "/v1/nothing".to_string(),
        format!("/v2/providers/{b}/accounts"),
        format!("/V1/providers/{b}/accounts"),
        format!("/v1/providers/{b}/Accounts"),
        format!("/v1/providers/{b}/accounts/"),
        format!("/v1/providers/{b}/payments"),
        format!("/v1/providers/{b}/accounts/a/b/c/d"),
        format!("/v1/open-data/{b}/mortgages"),
        format!("/v1/open-data/{b}"),
    ] {
        let r = client.send(&Req::get(p.as_str()).bearer(&token)).await;
        assert_eq!(
            (r.status, r.code()),
            (404, "route_not_found".to_string()),
            "{p}: {}",
            r.describe()
        );
        r.assert_problem(404, "route_not_found");
    }
}

#[tokio::test]
async fn other_methods_on_a_route_are_method_not_allowed() {
    let acc = account();
    let token = full_token();
    let client = a_client();
    for (method, path) in [
        ("POST", accounts_path(BANK_1)),
        ("PUT", account_path(BANK_1, &acc)),
        ("DELETE", account_path(BANK_1, &acc)),
        ("PATCH", balances_path(BANK_1, &acc)),
        ("POST", transactions_path(BANK_1, &acc, "")),
        ("POST", open_data_path(BANK_1, "atms")),
        ("OPTIONS", accounts_path(BANK_1)),
    ] {
        let r = client
            .send(&Req::new(method, path.as_str()).bearer(&token).body("{}"))
            .await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.describe());
        r.assert_problem(405, "method_not_allowed");
    }
    // HEAD: same status and Allow, no body by definition.
    let r = client
        .send(&Req::new("HEAD", accounts_path(BANK_1)).bearer(&token))
        .await;
    assert_eq!(r.status, 405, "{}", r.describe());
    assert!(r.header("allow").is_some_and(|a| a.contains("GET")));
}

#[tokio::test]
async fn malformed_http_is_a_problem_json_bad_request() {
    // Contract §6: "Malformed HTTP gets 400 bad_request ... with the same body shape".
    let client = a_client();
    let cases: [(&str, &[u8]); 4] = [
        (
            "header line without a colon",
            b"GET /v1/open-data/990340000011/atms HTTP/1.1\r\nHost: localhost\r\nNo colon here\r\n\r\n",
        ),
        (
            "unknown HTTP version",
            b"GET /v1/open-data/990340000011/atms HTTP/9.9\r\nHost: localhost\r\n\r\n",
        ),
        (
            "non-numeric Content-Length",
            b"GET /v1/open-data/990340000011/atms HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
        ),
        (
            "space inside the request target",
            b"GET /v1/open-data/990340000011/a tms HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, raw) in cases {
        let mut conn = client.connect().await.expect("connect");
        match conn.send_raw(raw).await {
            Ok(r) if (r.status, r.code().as_str()) == (400, "bad_request") => {
                r.assert_problem(400, "bad_request");
            }
            Ok(r) => wrong.push(format!("{name}: {}", r.describe())),
            Err(e) => wrong.push(format!("{name}: no answer ({e})")),
        }
    }
    assert!(
        wrong.is_empty(),
        "not a problem+json 400:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn oversized_headers_and_bodies_have_their_own_codes() {
    let client = a_client();
    let r = client
        .send(&Req::get(open_data_path(BANK_1, "atms")).header("x-filler", "a".repeat(20 * 1024)))
        .await;
    r.assert_problem(431, "request_header_fields_too_large");
    let r = client
        .send(&Req::get(open_data_path(BANK_1, "atms")).header("Content-Length", "1000000"))
        .await;
    r.assert_problem(413, "payload_too_large");
}

#[tokio::test]
async fn oversized_chunked_body_is_payload_too_large() {
    let client = a_client();
    let mut raw = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
        open_data_path(BANK_1, "atms")
    )
    .into_bytes();
    let chunk = vec![b'a'; 8 * 1024];
    for _ in 0..12 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut conn = client.connect().await.expect("connect");
    let r = conn.send_raw(&raw).await.expect("an answer");
    r.assert_problem(413, "payload_too_large");
}

// ------------------------------------------------------------ rows 2–3: mTLS, participants

#[tokio::test]
async fn no_client_certificate_fails_the_handshake() {
    let hub = hub();
    let req = Req::get(open_data_path(BANK_1, "atms"));
    let r = hub.client_with(None).try_send(&req).await;
    assert!(r.is_err(), "answered without a client certificate: {r:?}");
    let tls12 = Client::with_versions(hub.addr, hub.ca_pem(), None, TlsVersions::Tls12Only);
    assert!(
        tls12.connect().await.is_err(),
        "TLS 1.2 handshake completed without a client certificate"
    );
}

#[tokio::test]
async fn untrusted_ca_certificate_fails_the_handshake() {
    let hub = hub();
    let untrusted = ClientCert::of(hub.pki.untrusted_client());
    let req = Req::get(open_data_path(BANK_1, "atms"));
    let r = hub.client_with(Some(&untrusted)).try_send(&req).await;
    assert!(r.is_err(), "answered an untrusted certificate: {r:?}");
    let tls12 = Client::with_versions(
        hub.addr,
        hub.ca_pem(),
        Some(&untrusted),
        TlsVersions::Tls12Only,
    );
    assert!(tls12.connect().await.is_err());
}

#[tokio::test]
async fn expired_certificate_fails_the_handshake() {
    let hub = hub();
    let expired = hub
        .pki
        .issue_expired_client(bin(USER_A), &hub.dir.join("extra-expired"))
        .expect("issue");
    let req = Req::get(open_data_path(BANK_1, "atms"));
    let r = hub
        .client_with(Some(&ClientCert::of(&expired)))
        .try_send(&req)
        .await;
    assert!(r.is_err(), "answered an expired certificate: {r:?}");
}

#[tokio::test]
async fn valid_but_unregistered_certificate_is_participant_unknown() {
    let hub = hub();
    let id = hub
        .pki
        .issue_client(
            bin(USER_A),
            "e2e-unregistered",
            &hub.dir.join("extra-unreg"),
        )
        .expect("issue");
    let client = hub.client_with(Some(&ClientCert::of(&id)));
    // Even a token bound to this very certificate does not help: row 2 answers first.
    let mut claims = hub.claims(USER_A, "c-authorised-full", &ALL_PERMISSIONS);
    claims.cnf_x5t_s256 = id.x5t_s256.clone();
    let token = hub.mint(&claims);
    client
        .get(&accounts_path(BANK_1), Some(&token))
        .await
        .assert_problem(403, "participant_unknown");
    client
        .get(&open_data_path(BANK_1, "atms"), None)
        .await
        .assert_problem(403, "participant_unknown");
    // Row 1 still comes first.
    client
        .get(&format!("/v1//providers/{BANK_1}/accounts"), Some(&token))
        .await
        .assert_problem(400, "bad_request");
    client
        .get("/v1/nothing", None)
        .await
        .assert_problem(404, "route_not_found");
}

#[tokio::test]
async fn suspended_participant_is_participant_inactive() {
    let hub = hub();
    let client = hub.client_as(USER_SUSPENDED);
    // Row 3 answers before any token check (none sent, or a valid one of another user).
    client
        .get(&accounts_path(BANK_1), None)
        .await
        .assert_problem(403, "participant_inactive");
    client
        .get(&accounts_path(BANK_1), Some(&full_token()))
        .await
        .assert_problem(403, "participant_inactive");
    client
        .get(&open_data_path(BANK_1, "atms"), None)
        .await
        .assert_problem(403, "participant_inactive");
}

// ------------------------------------------------------------------ row 4: invalid_token

fn valid_claims() -> Value {
    let hub = hub();
    serde_json::to_value(hub.claims(USER_A, "c-authorised-full", &ALL_PERMISSIONS))
        .expect("claims JSON")
}

fn header() -> String {
    hub().issuer.header_json()
}

fn sign(header: &str, claims: &str) -> String {
    hub().issuer.mint_raw(header, claims).expect("sign")
}

/// Sends each token to a consent route and lists the cases not answered `401 invalid_token`.
async fn expect_invalid(cases: Vec<(String, String)>) {
    let client = a_client();
    let path = accounts_path(BANK_1);
    let mut wrong = Vec::new();
    for (name, token) in &cases {
        let r = client.send(&Req::get(path.as_str()).bearer(token)).await;
        if (r.status, r.code().as_str()) == (401, "invalid_token") {
            r.assert_problem(401, "invalid_token");
        } else {
            wrong.push(format!("{name}: {} {}", r.status, r.text()));
        }
    }
    assert!(
        wrong.is_empty(),
        "accepted or misclassified:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn missing_or_non_bearer_authorization_is_invalid_token() {
    let client = a_client();
    let path = accounts_path(BANK_1);
    let token = full_token();
    client
        .get(&path, None)
        .await
        .assert_problem(401, "invalid_token");
    for value in [
        format!("Basic {token}"),
        format!("Bearer  {token}"),
        format!("Bearer {token} extra"),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        token.clone(),
    ] {
        client
            .send(&Req::get(path.as_str()).header("Authorization", value.as_str()))
            .await
            .assert_problem(401, "invalid_token");
    }
}

#[tokio::test]
async fn forged_algorithms_are_invalid_token() {
    let hub = hub();
    let kid = hub.issuer.kid().to_string();
    let claims = valid_claims().to_string();
    let public_pem = hub.issuer.public_key_pem().expect("public key");
    let none_header = json!({"alg": "none", "typ": "at+jwt", "kid": kid}).to_string();
    let hs_header = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}).to_string();
    let rs_header = json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}).to_string();
    let cases = vec![
        (
            "alg none, empty signature".into(),
            sandbox::tokens::forge_unsigned(&none_header, &claims),
        ),
        (
            "alg none, signature kept".into(),
            format!(
                "{}{}",
                sandbox::tokens::forge_unsigned(&none_header, &claims),
                hub.mint_for(USER_A, "c-authorised-full")
                    .rsplit('.')
                    .next()
                    .expect("signature")
            ),
        ),
        (
            "HS256 keyed with the public key PEM".into(),
            sandbox::tokens::forge_hs256(&hs_header, &claims, public_pem.as_bytes()),
        ),
        (
            "HS256 keyed with the JWKS".into(),
            sandbox::tokens::forge_hs256(&hs_header, &claims, hub.issuer.jwks_json().as_bytes()),
        ),
        (
            "RS256 header over an ES256 signature".into(),
            sign(&rs_header, &claims),
        ),
        (
            "crit header".into(),
            sign(
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid, "crit": ["exp"]}).to_string(),
                &claims,
            ),
        ),
    ];
    expect_invalid(cases).await;
}

#[tokio::test]
async fn unknown_kid_and_wrong_key_are_invalid_token() {
    let hub = hub();
    let claims = valid_claims().to_string();
    let other = sandbox::tokens::DevIssuer::generate(
        sandbox::tokens::DevAlg::Es256,
        hub.issuer.kid(),
        devhub::ISSUER,
    )
    .expect("second issuer");
    let stranger = sandbox::tokens::DevIssuer::generate(
        sandbox::tokens::DevAlg::Es256,
        "not-in-the-jwks",
        devhub::ISSUER,
    )
    .expect("third issuer");
    let no_kid = json!({"alg": "ES256", "typ": "at+jwt"}).to_string();
    let cases = vec![
        (
            "unknown kid".into(),
            sign(
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": "nope"}).to_string(),
                &claims,
            ),
        ),
        ("no kid".into(), sign(&no_kid, &claims)),
        (
            "same kid, other key".into(),
            other.mint_raw(&header(), &claims).expect("sign"),
        ),
        (
            "key not in the JWKS".into(),
            stranger
                .mint_raw(&stranger.header_json(), &claims)
                .expect("sign"),
        ),
        ("signature of another token".into(), {
            let good = hub.mint_for(USER_A, "c-authorised-full");
            let other_sig = hub
                .mint_for(USER_A, "c-authorised-restricted")
                .rsplit('.')
                .next()
                .expect("sig")
                .to_string();
            let (input, _) = good.rsplit_once('.').expect("three parts");
            format!("{input}.{other_sig}")
        }),
    ];
    expect_invalid(cases).await;
}

#[tokio::test]
async fn time_issuer_and_audience_checks_are_invalid_token() {
    let now = now_unix();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = valid_claims();
        f(&mut c);
        sign(&header(), &c.to_string())
    };
    let cases = vec![
        (
            "expired".into(),
            with(&|c| {
                c["exp"] = json!(now - 300);
                c["iat"] = json!(now - 3600);
            }),
        ),
        (
            "nbf in the future".into(),
            with(&|c| c["nbf"] = json!(now + 600)),
        ),
        (
            "iat in the future".into(),
            with(&|c| c["iat"] = json!(now + 600)),
        ),
        (
            "fractional exp".into(),
            with(&|c| c["exp"] = json!(now as f64 + 3600.5)),
        ),
        (
            "wrong iss".into(),
            with(&|c| c["iss"] = json!("https://evil.example")),
        ),
        (
            "wrong aud".into(),
            with(&|c| c["aud"] = json!("https://other-hub.example")),
        ),
        (
            "aud array without the hub".into(),
            with(&|c| c["aud"] = json!(["https://a.example", "https://b.example"])),
        ),
    ];
    expect_invalid(cases).await;
}

/// Issue 13: each refusal's `detail` names its rule (the parameter, the claim), distinct
/// rules get distinct details, and none repeats the request's token, customer or account.
#[tokio::test]
async fn problem_details_name_the_rule_and_never_the_request() {
    let client = a_client();
    let (token, acct) = (full_token(), account());
    let tx = transactions_path(BANK_1, &acct, "");
    let mut details = Vec::new();
    let mut ask = |r: &Response, status: u16, code: &str, says: &str| {
        r.assert_problem(status, code);
        let d = r.json()["detail"].as_str().unwrap_or("").to_string();
        assert!(
            d.contains(says),
            "{code} detail {d:?} does not name {says:?}"
        );
        details.push(d);
    };
    for (query, says) in [
        ("limit=501", "limit"),
        ("from=yesterday", "from"),
        ("foo=1", "unknown or repeated query parameter"),
    ] {
        let r = client
            .send(&Req::get(format!("{tx}?{query}")).bearer(&token))
            .await;
        ask(&r, 400, "bad_request", says);
    }
    let path = accounts_path(BANK_1);
    let r = client.send(&Req::get(path.as_str())).await;
    ask(&r, 401, "invalid_token", "Authorization");
    let r = client.send(&Req::get(path.as_str()).bearer("abc")).await;
    ask(&r, 401, "invalid_token", "compact JWS");
    let mut wrong_aud = valid_claims();
    wrong_aud["aud"] = json!("https://other-hub.example");
    let wrong_aud = sign(&header(), &wrong_aud.to_string());
    let r = client
        .send(&Req::get(path.as_str()).bearer(&wrong_aud))
        .await;
    ask(&r, 401, "invalid_token", "aud");
    let unique: std::collections::HashSet<&String> = details.iter().collect();
    assert_eq!(unique.len(), details.len(), "{details:#?}");
    let customer = hub().customer_of("c-authorised-full");
    for d in &details {
        for secret in [
            &token,
            &wrong_aud,
            &acct,
            &customer,
            &"yesterday".to_string(),
        ] {
            assert!(!d.contains(secret.as_str()), "{d:?} repeats the request");
        }
    }
}

#[tokio::test]
async fn each_missing_required_claim_is_invalid_token() {
    let mut cases = Vec::new();
    for claim in [
        "iss",
        "aud",
        "exp",
        "iat",
        "jti",
        "client_id",
        "consent_id",
        "scope",
        "cnf",
    ] {
        let mut c = valid_claims();
        c.as_object_mut().expect("object").remove(claim);
        cases.push((format!("without {claim}"), sign(&header(), &c.to_string())));
    }
    let mut c = valid_claims();
    c["cnf"] = json!({});
    cases.push((
        "cnf without x5t#S256".into(),
        sign(&header(), &c.to_string()),
    ));
    expect_invalid(cases).await;
}

#[tokio::test]
async fn malformed_oversized_and_duplicated_tokens_are_invalid_token() {
    let hub = hub();
    let good = hub.mint_for(USER_A, "c-authorised-full");
    let parts: Vec<&str> = good.split('.').collect();
    let mut big = valid_claims();
    big["padding"] = json!("x".repeat(9 * 1024));
    let big = sign(&header(), &big.to_string());
    assert!(big.len() > 8 * 1024);
    // Duplicate members whose values are both valid: only a strict parser refuses them.
    let claims = valid_claims().to_string();
    let dup_iss = claims.replacen('{', &format!("{{\"iss\":\"{}\",", devhub::ISSUER), 1);
    let dup_consent = claims.replacen('{', "{\"consent_id\":\"c-authorised-restricted\",", 1);
    let dup_header = format!(
        "{{\"alg\":\"ES256\",\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"{}\"}}",
        hub.issuer.kid()
    );
    let cases = vec![
        ("larger than 8 KiB".into(), big),
        (
            "payload not base64url".into(),
            format!("{}.{}+/x.{}", parts[0], &parts[1][..20], parts[2]),
        ),
        (
            "payload base64 of length 1 mod 4".into(),
            format!("{}.{}a.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "payload not JSON".into(),
            sign(&header(), "not json at all"),
        ),
        ("two parts".into(), format!("{}.{}", parts[0], parts[1])),
        ("four parts".into(), format!("{good}.{}", parts[2])),
        (
            "empty signature".into(),
            format!("{}.{}.", parts[0], parts[1]),
        ),
        ("duplicated iss".into(), sign(&header(), &dup_iss)),
        (
            "duplicated consent_id".into(),
            sign(&header(), &dup_consent),
        ),
        ("duplicated header alg".into(), sign(&dup_header, &claims)),
    ];
    expect_invalid(cases).await;
}

#[tokio::test]
async fn tolerated_token_variants_are_accepted() {
    // The refusals above must not come from over-strictness: these are all valid.
    let now = now_unix();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = valid_claims();
        f(&mut c);
        sign(&header(), &c.to_string())
    };
    let cases = [
        (
            "aud array containing the hub",
            with(&|c| c["aud"] = json!(["https://other.example", devhub::AUDIENCE])),
        ),
        ("nbf in the past", with(&|c| c["nbf"] = json!(now - 10))),
        (
            "exp just past, within the leeway",
            with(&|c| c["exp"] = json!(now - 5)),
        ),
        (
            "iat just ahead, within the leeway",
            with(&|c| c["iat"] = json!(now + 5)),
        ),
        (
            "unknown scope words",
            with(&|c| c["scope"] = json!("openid accounts balances transactions payments")),
        ),
        ("an extra claim", with(&|c| c["sub"] = json!("someone"))),
    ];
    let client = a_client();
    let mut refused = Vec::new();
    for (name, token) in &cases {
        let r = client.get(&accounts_path(BANK_1), Some(token)).await;
        if r.status != 200 {
            refused.push(format!("{name}: {} {}", r.status, r.code()));
        }
    }
    let r = client
        .send(
            &Req::get(accounts_path(BANK_1))
                .header("Authorization", format!("bearer {}", full_token())),
        )
        .await;
    if r.status != 200 {
        refused.push(format!("lower-case scheme: {} {}", r.status, r.code()));
    }
    assert!(refused.is_empty(), "valid tokens refused: {refused:?}");
}

#[tokio::test]
async fn token_in_the_query_string_is_never_used() {
    let token = full_token();
    let acc = account();
    let client = a_client();
    // The hub's strict query rules refuse unknown parameters on consent routes (row 1),
    // so the token is never even looked at: a bad request, never an answer.
    for path in [
        format!("{}?access_token={token}", accounts_path(BANK_1)),
        transactions_path(BANK_1, &acc, &format!("access_token={token}")),
        transactions_path(BANK_1, &acc, &format!("limit=5&access_token={token}")),
    ] {
        client
            .get(&path, None)
            .await
            .assert_problem(400, "bad_request");
    }
    // Without any query parameter to refuse, a token that is not in the header is absent.
    client
        .send(&Req::get(accounts_path(BANK_1)).header("Cookie", format!("access_token={token}")))
        .await
        .assert_problem(401, "invalid_token");
}

// --------------------------------------------------------- rows 5–6: binding and scope

#[tokio::test]
async fn token_bound_to_another_certificate_or_client_is_a_binding_mismatch() {
    let hub = hub();
    let client = a_client();
    let path = accounts_path(BANK_1);
    // cnf of user B, client_id A, presented by A.
    let mut c = hub.claims(USER_A, "c-authorised-full", &ALL_PERMISSIONS);
    c.cnf_x5t_s256 = hub.identity(USER_B).x5t_s256.clone();
    client
        .get(&path, Some(&hub.mint(&c)))
        .await
        .assert_problem(401, "token_binding_mismatch");
    // client_id B, cnf of A's certificate, presented by A.
    let mut c = hub.claims(USER_A, "c-authorised-full", &ALL_PERMISSIONS);
    c.client_id = USER_B.to_string();
    client
        .get(&path, Some(&hub.mint(&c)))
        .await
        .assert_problem(401, "token_binding_mismatch");
    // User B's own token replayed by user A.
    client
        .get(
            &accounts_path(BANK_2),
            Some(&hub.token("c-authorised-bank2")),
        )
        .await
        .assert_problem(401, "token_binding_mismatch");
    // Row 5 answers before row 6: a stolen token lacking the scope is still a mismatch.
    let c = hub.claims(
        USER_B,
        "c-authorised-bank2",
        &[consent_cache::Permission::Accounts],
    );
    client
        .get(&balances_path(BANK_2, "acc-x"), Some(&hub.mint(&c)))
        .await
        .assert_problem(401, "token_binding_mismatch");
}

#[tokio::test]
async fn scope_lacking_the_permission_is_insufficient_scope() {
    let hub = hub();
    let client = hub.client_as(USER_B);
    let token = hub.token("c-authorised-accounts-only");
    let acc = hub.accounts_of("c-authorised-accounts-only").remove(0);
    client
        .get(&balances_path(BANK_2, &acc), Some(&token))
        .await
        .assert_problem(403, "insufficient_scope");
    client
        .get(&transactions_path(BANK_2, &acc, ""), Some(&token))
        .await
        .assert_problem(403, "insufficient_scope");
    // Row 6 answers before the consent rows: a scope-less token for no consent at all.
    let c = hub.claims(
        USER_B,
        "c-does-not-exist",
        &[consent_cache::Permission::Accounts],
    );
    client
        .get(&balances_path(BANK_2, &acc), Some(&hub.mint(&c)))
        .await
        .assert_problem(403, "insufficient_scope");
    // The same token is fine where its scope reaches.
    client
        .get(&accounts_path(BANK_2), Some(&token))
        .await
        .ok_json();
}

// ---------------------------------------------------------------- row 7: consent state

/// Row 7: a hub whose consents come from a trust sidecar it has never heard from answers
/// every consent route with the full `503 consent_state_stale` problem (after rows 1–6,
/// before the consent rows), never reaching a bank; open data does not depend on consents.
#[tokio::test]
async fn stale_consent_state_is_consent_state_stale() {
    let hub = Hub::start_with(hub_exe!(), |s| {
        s.config.consents = ConsentSection::default();
        s.config.trust = Some(TrustSection::new(
            &format!("https://127.0.0.1:{}", closed_port()),
            &[s.prepared.pki.ca_cert_path().to_owned()],
        ));
    });
    let a = hub.client_as(USER_A);
    let token = hub.token("c-authorised-full");
    let acc = hub.accounts_of("c-authorised-full").remove(0);
    let routes = [
        accounts_path(BANK_1),
        account_path(BANK_1, &acc),
        balances_path(BANK_1, &acc),
        transactions_path(BANK_1, &acc, "limit=5"),
    ];
    let before = hub.bank(BANK_1).request_count();
    for path in &routes {
        // A consent the hub has never seen answers the same: row 7 comes before row 8.
        for token in [token.clone(), hub.mint_for(USER_A, "c-does-not-exist")] {
            let iid = uuid::Uuid::new_v4().to_string();
            let r = a
                .send(&Req::get(path.as_str()).bearer(&token).interaction_id(&iid))
                .await;
            r.assert_problem(503, "consent_state_stale");
            assert_eq!(r.interaction_id(), iid, "{path}");
            assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        }
    }
    // Rows 1 and 4 still answer first.
    a.get(&format!("{}/", accounts_path(BANK_1)), Some(&token))
        .await
        .assert_problem(404, "route_not_found");
    a.get(&accounts_path(BANK_1), None)
        .await
        .assert_problem(401, "invalid_token");
    assert_eq!(
        hub.bank(BANK_1).request_count(),
        before,
        "a stale hub reached the bank"
    );
    a.get(&open_data_path(BANK_1, "atms"), None).await.ok_json();
}

// ---------------------------------------------------------------- rows 8–14: consents

#[tokio::test]
async fn consent_not_found_and_not_owned() {
    let hub = hub();
    hub.client_as(USER_A)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.mint_for(USER_A, "c-does-not-exist")),
        )
        .await
        .assert_problem(403, "consent_not_found");
    // User B with a proper token of its own for user A's consent.
    hub.client_as(USER_B)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.mint_for(USER_B, "c-authorised-full")),
        )
        .await
        .assert_problem(403, "consent_not_owned");
}

#[tokio::test]
async fn consent_status_rows() {
    let hub = hub();
    let a = hub.client_as(USER_A);
    let b = hub.client_as(USER_B);
    let cases = [
        (&a, "c-revoked", BANK_1, "consent_revoked"),
        (&a, "c-awaiting", BANK_1, "consent_not_authorised"),
        (&a, "c-rejected", BANK_1, "consent_not_authorised"),
        (&b, "c-expired", BANK_2, "consent_expired"),
        (&b, "c-lapsed", BANK_2, "consent_expired"),
    ];
    for (client, consent, bank, code) in cases {
        // The demo's own token and a freshly minted one answer the same.
        for token in [
            hub.token(consent),
            hub.mint_for(
                hub.consent(consent)["api_user"].as_str().expect("user"),
                consent,
            ),
        ] {
            let r = client.get(&accounts_path(bank), Some(&token)).await;
            assert_eq!(r.code(), code, "{consent}: {}", r.describe());
            r.assert_problem(403, code);
        }
    }
}

#[tokio::test]
async fn provider_permission_and_account_coverage_rows() {
    let hub = hub();
    let a = hub.client_as(USER_A);
    // Row 12: c-authorised-full covers bank 1 only.
    a.get(&accounts_path(BANK_2), Some(&full_token()))
        .await
        .assert_problem(403, "provider_not_in_consent");
    // A provider segment that is not even a BIN.
    a.get(&accounts_path("not-a-bin"), Some(&full_token()))
        .await
        .assert_problem(403, "provider_not_in_consent");
    // Row 13: c-authorised-accounts-only grants accounts only; the token's scope has all.
    let b = hub.client_as(USER_B);
    let acc = hub.accounts_of("c-authorised-accounts-only").remove(0);
    let token = hub.mint_for(USER_B, "c-authorised-accounts-only");
    b.get(&balances_path(BANK_2, &acc), Some(&token))
        .await
        .assert_problem(403, "permission_not_granted");
    b.get(&transactions_path(BANK_2, &acc, ""), Some(&token))
        .await
        .assert_problem(403, "permission_not_granted");
    // Row 14: c-authorised-restricted covers one account of its customer.
    let restricted = hub.token("c-authorised-restricted");
    let other = account(); // an account of another customer
    for path in [
        account_path(BANK_1, &other),
        balances_path(BANK_1, &other),
        transactions_path(BANK_1, &other, "limit=1"),
    ] {
        a.get(&path, Some(&restricted))
            .await
            .assert_problem(403, "account_not_in_consent");
    }
    let all = hub.accounts_of("c-authorised-restricted");
    let allowed = hub.consent("c-authorised-restricted")["accounts"][0]
        .as_str()
        .expect("allowed account")
        .to_string();
    for acc in all.iter().filter(|x| **x != allowed) {
        a.get(&balances_path(BANK_1, acc), Some(&restricted))
            .await
            .assert_problem(403, "account_not_in_consent");
    }
}

// ------------------------------------------------------------------ row 15: providers

#[tokio::test]
async fn unknown_provider_is_provider_not_found() {
    let hub = hub();
    let a = hub.client_as(USER_A);
    a.get(
        &accounts_path(UNKNOWN),
        Some(&hub.mint_for(USER_A, "c-e2e-unknown-provider")),
    )
    .await
    .assert_problem(404, "provider_not_found");
    a.get(&open_data_path(UNKNOWN, "atms"), None)
        .await
        .assert_problem(404, "provider_not_found");
    a.get(&open_data_path("not-a-bin", "atms"), None)
        .await
        .assert_problem(404, "provider_not_found");
    // An API user is not a provider.
    a.get(&open_data_path(USER_B, "atms"), None)
        .await
        .assert_problem(404, "provider_not_found");
}

#[tokio::test]
async fn delisted_provider_is_provider_unavailable() {
    let hub = hub();
    let a = hub.client_as(USER_A);
    a.get(
        &accounts_path(DELISTED),
        Some(&hub.mint_for(USER_A, "c-e2e-delisted")),
    )
    .await
    .assert_problem(503, "provider_unavailable");
    a.get(&open_data_path(DELISTED, "atms"), None)
        .await
        .assert_problem(503, "provider_unavailable");
}

#[tokio::test]
async fn suspended_provider_is_provider_unavailable() {
    let hub = hub();
    let a = hub.client_as(USER_A);
    a.get(
        &accounts_path(SUSPENDED_PROVIDER),
        Some(&hub.mint_for(USER_A, "c-e2e-suspended-provider")),
    )
    .await
    .assert_problem(503, "provider_unavailable");
    a.get(&open_data_path(SUSPENDED_PROVIDER, "atms"), None)
        .await
        .assert_problem(503, "provider_unavailable");
}

#[tokio::test]
async fn rotated_certificate_is_the_same_participant_with_its_own_binding() {
    let hub = hub();
    let dir = hub.dir.join("rotated");
    let cert = ClientCert {
        cert_pem: std::fs::read_to_string(dir.join(format!("{ROTATED}.pem"))).expect("cert"),
        key_pem: std::fs::read_to_string(dir.join(format!("{ROTATED}-key.pem"))).expect("key"),
    };
    let thumb = sandbox::pki::thumbprint_of_pem(cert.cert_pem.as_bytes()).expect("thumbprint");
    let client = hub.client_with(Some(&cert));
    // A token bound to the new certificate works over it.
    let mut c = hub.claims(USER_A, "c-authorised-full", &ALL_PERMISSIONS);
    c.cnf_x5t_s256 = sandbox::pki::x5t_s256(&thumb);
    client
        .get(&accounts_path(BANK_1), Some(&hub.mint(&c)))
        .await
        .ok_json();
    // A token bound to the old certificate does not, and vice versa.
    client
        .get(&accounts_path(BANK_1), Some(&full_token()))
        .await
        .assert_problem(401, "token_binding_mismatch");
    a_client()
        .get(&accounts_path(BANK_1), Some(&hub.mint(&c)))
        .await
        .assert_problem(401, "token_binding_mismatch");
}
