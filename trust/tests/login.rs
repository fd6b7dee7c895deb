//! The customer's first factor over real TLS: the sidecar logs a customer in at the
//! development identity provider (`sandbox::idp`: discovery, authorize redirect with a
//! code, token endpoint, ES256 ID token, JWKS), authorization code flow with PKCE; the
//! session then authorises a consent with the one-time code. Every ID token check
//! (signature, `iss`, `aud`, `exp`, `nonce`, the IIN claim), the browser binding, replay
//! and an unreachable provider each refuse the login.

mod common;

use common::*;
use sandbox::idp::{DevIdp, Fault, IdpClient, IdpConfig};
use serde_json::json;
use trust::clock::ManualClock;
use trust::oidc::{OidcConfig, Secret};

const CLIENT_ID: &str = "trust-sidecar";
const SECRET: &str = "dev-client-secret";

struct World {
    f: Fixture,
    idp: DevIdp,
    running: trust::Running,
    c: Client,
    idp_client: Client,
}

async fn world() -> World {
    let f = Fixture::new();
    let server = f.pki.hub_server();
    let idp = DevIdp::start(IdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        server_cert_chain_pem: std::fs::read(&server.cert_path).unwrap(),
        server_key_pem: std::fs::read(&server.key_path).unwrap(),
        clients: Vec::new(),
        iin_claim: "iin".into(),
    })
    .await
    .unwrap();
    let clock = ManualClock::new(now());
    let mut config = f.config(&clock);
    config.dev_customer_sessions = false;
    let mut oidc = OidcConfig::new(idp.issuer(), CLIENT_ID, vec![f.pki.ca_cert_path().into()]);
    oidc.client_secret = Some(Secret(SECRET.into()));
    config.oidc = Some(oidc);
    let running = trust::start(config, None).await.unwrap();
    idp.register(IdpClient {
        client_id: CLIENT_ID.into(),
        client_secret: Some(SECRET.into()),
        redirect_uris: vec![format!("{}/v1/customer/login/callback", running.url())],
    });
    let c = f.client(running.addr());
    let idp_client = f.client(idp.addr());
    World {
        f,
        idp,
        running,
        c,
        idp_client,
    }
}

/// The path and query of an absolute URL.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or("/".into(), |i| rest[i..].to_owned())
}

fn header(r: &Reply, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name}: {r:?}"))
        .to_owned()
}

/// A login in a browser: start at the sidecar, through the provider, the callback's
/// path and the browser's cookie.
async fn through_the_provider(w: &World, hint: &str) -> (String, String) {
    let start =
        w.c.get(None, &format!("/v1/customer/login?login_hint={hint}"))
            .await;
    assert_eq!(start.status, 302, "{start:?}");
    let location = header(&start, "location");
    assert_eq!(start.json()["authorization_url"], location.as_str());
    let cookie = header(&start, "set-cookie");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let at_idp = w.idp_client.get(None, &path_of(&location)).await;
    assert_eq!(at_idp.status, 302, "{at_idp:?}");
    (path_of(&header(&at_idp, "location")), cookie)
}

async fn callback(w: &World, path: &str, cookie: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    w.c.send(None, "GET", path, &headers, Vec::new()).await
}

#[track_caller]
fn refused(r: &Reply, detail: &str) {
    assert_eq!(
        (r.status, r.code()),
        (401, "login_failed".to_string()),
        "{r:?}"
    );
    let d = r.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(d.contains(detail), "{d}");
    assert!(!String::from_utf8_lossy(&r.body).contains(CUSTOMER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_logs_in_at_the_identity_provider_then_authorises_with_the_code() {
    let w = world().await;
    register_all(&w.f, &w.c).await;
    let id = create_consent(&w.c, w.f.user(USER_A), CUSTOMER, json!({})).await;

    let start =
        w.c.get(None, &format!("/v1/customer/login?login_hint={CUSTOMER}"))
            .await;
    let location = header(&start, "location");
    for part in [
        "response_type=code",
        "code_challenge_method=S256",
        "code_challenge=",
        "nonce=",
        "state=",
        "scope=openid",
        &format!("client_id={CLIENT_ID}"),
    ] {
        assert!(location.contains(part), "{part} in {location}");
    }
    let cookie = header(&start, "set-cookie");
    for attr in [
        "__Host-trust_login=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
    ] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }

    let (back, cookie) = through_the_provider(&w, CUSTOMER).await;
    let r = callback(&w, &back, Some(&cookie)).await;
    let v = r.expect(201);
    let s = v["session"].as_str().unwrap().to_owned();
    // The session is the customer's: their consent, and the one-time code as second factor.
    let list =
        w.c.customer(&s, "GET", "/v1/customer/consents", None)
            .await
            .expect(200);
    assert_eq!(list["consents"][0]["id"], id.as_str());
    let done = authorise_in(&w.c, &w.f.outbox(), &s, &id).await;
    assert_eq!(done["status"], "authorised");

    // The callback cannot be replayed, and the development route stays off.
    refused(&callback(&w, &back, Some(&cookie)).await, "unknown, used");
    let dev =
        w.c.json(
            None,
            "POST",
            "/v1/customer/sessions",
            json!({"customer": CUSTOMER}),
        )
        .await;
    assert_eq!(dev.status, 404);
    w.running.stop().await;
    w.idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_token_check_refuses_a_wrong_token() {
    let w = world().await;
    for (fault, detail) in [
        (Fault::WrongNonce, "nonce"),
        (Fault::Expired, "exp"),
        (Fault::WrongAudience, "aud"),
        (Fault::WrongIssuer, "iss"),
        (Fault::ForeignKey, "signature"),
        (Fault::NoIin, "IIN claim"),
    ] {
        w.idp.set_fault(fault);
        let (back, cookie) = through_the_provider(&w, CUSTOMER).await;
        let r = callback(&w, &back, Some(&cookie)).await;
        refused(&r, detail);
    }
    // The same login flow with a correct token works.
    w.idp.set_fault(Fault::None);
    let (back, cookie) = through_the_provider(&w, CUSTOMER).await;
    callback(&w, &back, Some(&cookie)).await.expect(201);
    w.running.stop().await;
    w.idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_bound_to_its_browser_and_state() {
    let w = world().await;
    // No cookie, or another browser's.
    let (back, _) = through_the_provider(&w, CUSTOMER).await;
    refused(&callback(&w, &back, None).await, "cookie is missing");
    let (back, _) = through_the_provider(&w, CUSTOMER).await;
    let (_, other_browser) = through_the_provider(&w, CUSTOMER).await;
    refused(
        &callback(&w, &back, Some(&other_browser)).await,
        "another browser",
    );
    // A state nobody issued.
    let (back, cookie) = through_the_provider(&w, CUSTOMER).await;
    let forged = back.replace("state=", "state=x");
    refused(&callback(&w, &forged, Some(&cookie)).await, "unknown");
    // The provider refused to authenticate (not an IIN): the login ends there.
    let (back, cookie) = through_the_provider(&w, "not-an-iin").await;
    assert!(back.contains("error=access_denied"), "{back}");
    refused(
        &callback(&w, &back, Some(&cookie)).await,
        "did not authenticate",
    );
    // A login hint that is not a header-safe value is refused before anything is sent.
    let r = w.c.get(None, "/v1/customer/login?login_hint=%0Aevil").await;
    assert_eq!((r.status, r.code()), (422, "invalid_field".to_string()));
    w.running.stop().await;
    w.idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_answers_503_and_no_provider_404() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = f.config(&clock);
    config.oidc = Some(OidcConfig::new(
        &format!("https://127.0.0.1:{port}"),
        CLIENT_ID,
        vec![f.pki.ca_cert_path().into()],
    ));
    let running = trust::start(config, None).await.unwrap();
    let c = f.client(running.addr());
    let r = c.get(None, "/v1/customer/login").await;
    assert_eq!(
        (r.status, r.code()),
        (503, "identity_provider_unavailable".to_string())
    );
    running.stop().await;

    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    assert_eq!(c.get(None, "/v1/customer/login").await.status, 404);
    running.stop().await;
}
