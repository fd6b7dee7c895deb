//! The hub following the trust sidecar (issue 4, `[trust]` mode): the customer journey
//! through the sidecar (consent, one-time code from the outbox, token) and then through
//! the hub; a revocation refused by the hub as soon as the feed delivers it, and never
//! allowed once the hub's feed position (`/metrics`) has reached its version; row 7
//! (`503 consent_state_stale`) once the sidecar has been silent past the bound, and
//! fresh again after it restarts on the same database; a replaced database makes the
//! hub reload the snapshot. The sidecar runs in-process
//! (`trust::start`), the hub as a real process.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use e2e::*;
use gateway::config::{ConsentSection, TrustSection};
use serde_json::{json, Value};

/// The row 7 bound the hub is configured with.
const STALENESS: Duration = Duration::from_secs(2);

/// The sidecar's configuration and the running instance.
struct Sidecar {
    config: trust::Config,
    running: Option<trust::Running>,
    outbox: PathBuf,
}

type Slot = Arc<Mutex<Option<Sidecar>>>;

/// Starts a sidecar on the hub's development PKI and points the hub's configuration
/// at it (`[trust]` instead of `[consents]`, with `jwks = true`).
fn with_sidecar(setup: &mut Setup<'_>, rt: &tokio::runtime::Handle, slot: &Slot) {
    let pki = &setup.prepared.pki;
    let dir = &setup.prepared.dir;
    let outbox = dir.join("otp_outbox");
    let mut c = setup.trust_config();
    c.operator_certs = vec![pki.operator().expect("operator").cert_path.clone()];
    c.issuer = Some(setup.config.tokens.issuer.get_ref().clone());
    c.audience = setup.config.tokens.audience.get_ref().clone();
    c.otp_outbox = Some(outbox.clone());
    c.dev_customer_sessions = true;
    c.heartbeat = Duration::from_millis(200);
    // Keys can be rotated at once (the test rotates to a key the hub has not seen).
    c.key_publish_lead_secs = 0;
    let running = rt
        .block_on(trust::start(c.clone(), None))
        .expect("sidecar starts");
    // Restarts reuse the address.
    c.listen = running.addr();

    // Consents and token keys both from the sidecar (the JWKS file keeps the demo
    // issuer's keys: the start-up set, replaced once the sidecar's is fetched).
    setup.config.consents = ConsentSection::default();
    setup.config.trust = Some(TrustSection {
        max_staleness_secs: STALENESS.as_secs(),
        jwks: true,
        jwks_refresh_secs: 3600,
        ..TrustSection::new(running.url(), &[pki.ca_cert_path().to_owned()])
    });

    let old = slot.lock().expect("slot").replace(Sidecar {
        config: c,
        running: Some(running),
        outbox,
    });
    if let Some(Sidecar {
        running: Some(r), ..
    }) = old
    {
        rt.block_on(r.stop());
    }
}

fn json_req(method: &str, path: &str, body: &Value) -> Req {
    let b = body.to_string();
    Req::new(method, path)
        .header("content-type", "application/json")
        .header("content-length", b.len().to_string())
        .body(b)
}

fn thumbprint(id: &sandbox::pki::Identity) -> String {
    let t = sandbox::pki::thumbprint_of_pem(id.cert_pem.as_bytes()).expect("thumbprint");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
}

/// The latest one-time code the outbox notifier wrote for a consent.
fn code_from_outbox(outbox: &std::path::Path, consent: &str) -> String {
    let text = std::fs::read_to_string(outbox).expect("outbox");
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["consent_id"] == consent)
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .expect("a code for the consent")
}

/// A hub (no rate limits) following a sidecar that runs in-process on `rt`.
struct Rig {
    rt: tokio::runtime::Runtime,
    slot: Slot,
    hub: Hub,
    addr: std::net::SocketAddr,
    outbox: std::path::PathBuf,
}

fn rig() -> Rig {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let slot: Slot = Arc::new(Mutex::new(None));
    let (handle, s) = (rt.handle().clone(), slot.clone());
    let hub = Hub::start_with(env!("CARGO_BIN_EXE_hub-under-test"), move |setup| {
        setup.unlimited();
        with_sidecar(setup, &handle, &s);
    });
    let (addr, outbox) = {
        let g = slot.lock().expect("slot");
        let s = g.as_ref().expect("sidecar");
        (
            s.running.as_ref().expect("running").addr(),
            s.outbox.clone(),
        )
    };
    Rig {
        rt,
        slot,
        hub,
        addr,
        outbox,
    }
}

/// Registers the participants, creates a consent as `USER_A`, has the customer
/// authorise it with the code from the outbox, and gets a token for it.
async fn journey(
    hub: &Hub,
    sidecar: std::net::SocketAddr,
    outbox: &std::path::Path,
) -> (String, String) {
    journey_with(hub, sidecar, outbox, json!({})).await
}

/// [`journey`], with `extra` fields in the consent request (e.g. `expires_at`).
async fn journey_with(
    hub: &Hub,
    sidecar: std::net::SocketAddr,
    outbox: &std::path::Path,
    extra: Value,
) -> (String, String) {
    let ca = hub.pki.ca_cert_pem();
    // A customer the sandbox bank knows (USER_A's demo consent on BANK_1).
    let customer_id = hub.customer_of("c-authorised-full");
    let operator = Client::trust(
        sidecar,
        ca,
        Some(&ClientCert::of(hub.pki.operator().expect("operator"))),
    );
    let user = hub.identity(USER_A).clone();
    let r = operator
        .send(&json_req(
            "PUT",
            &format!("/v1/participants/{USER_A}"),
            &json!({"name": "Fintech A", "roles": ["user"], "thumbprints": [thumbprint(&user)]}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let bank_url = hub.manifest["providers"][0]["url"]
        .as_str()
        .expect("bank url")
        .to_string();
    let r = operator
        .send(&json_req(
            "PUT",
            &format!("/v1/participants/{BANK_1}"),
            &json!({"name": "Bank 1", "roles": ["provider"], "thumbprints": [], "provider_urls": [bank_url]}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    let api_user = Client::trust(sidecar, ca, Some(&ClientCert::of(&user)));
    let mut body = json!({"customer": customer_id, "providers": [BANK_1],
                    "permissions": ["accounts", "balances", "transactions"], "purpose": "e2e"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = api_user
        .send(&json_req("POST", "/v1/consents", &body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let consent = r.json()["id"].as_str().expect("id").to_string();
    assert_eq!(r.json()["status"], "awaiting_authorisation");

    let customer = Client::trust(sidecar, ca, None);
    let r = customer
        .send(&json_req(
            "POST",
            "/v1/customer/sessions",
            &json!({"customer": customer_id}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let session = r.json()["session"].as_str().expect("session").to_string();
    let r = customer
        .send(
            &json_req(
                "POST",
                &format!("/v1/customer/consents/{consent}/authorisations"),
                &json!({}),
            )
            .bearer(&session),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let authorisation = r.json()["id"].as_str().expect("id").to_string();
    let code = code_from_outbox(outbox, &consent);
    let r = customer
        .send(
            &json_req(
                "POST",
                &format!("/v1/customer/authorisations/{authorisation}/verify"),
                &json!({"code": code}),
            )
            .bearer(&session),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "authorised");

    let token = token_for(&api_user, &consent).await;
    (consent, token)
}

/// A token from the sidecar's token endpoint for `USER_A`'s consent.
async fn token_for(api_user: &Client, consent: &str) -> String {
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={consent}");
    let r = api_user
        .send(
            &Req::new("POST", "/oauth2/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("content-length", form.len().to_string())
                .body(form),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Polls the hub until `want` (status, code) answers, or the deadline; returns how long
/// it took and how many answers (each one of `allowed`) came before. Every answer is
/// checked whole: a bank's JSON, or the hub's exact problem for its code.
async fn until(
    hub: &Hub,
    token: &str,
    want: (u16, &str),
    allowed: &[(u16, &str)],
    deadline: Duration,
) -> (Duration, usize) {
    poll(hub, token, want, allowed, None, deadline).await
}

/// Polls the hub until it refuses a consent the sidecar acknowledged revoking at feed
/// version `revoked_at` (`403 consent_revoked`). A `200` is the feed's delay only while the
/// hub's feed position, read before each request, is below `revoked_at`: once it has
/// reached it, an allow is a late allow and fails the test. Returns how long it took and
/// how many allows came before.
async fn until_revoked(
    hub: &Hub,
    token: &str,
    revoked_at: u64,
    deadline: Duration,
) -> (Duration, usize) {
    let revoked = (403, "consent_revoked");
    poll(
        hub,
        token,
        revoked,
        &[(200, "")],
        Some(revoked_at),
        deadline,
    )
    .await
}

/// [`until`], and with `revoked_at` the late-allow check of [`until_revoked`].
async fn poll(
    hub: &Hub,
    token: &str,
    want: (u16, &str),
    allowed: &[(u16, &str)],
    revoked_at: Option<u64>,
    deadline: Duration,
) -> (Duration, usize) {
    let t0 = Instant::now();
    let mut before = 0;
    loop {
        let position = match revoked_at {
            Some(_) => Some(feed_version(hub.admin).await),
            None => None,
        };
        let r = hub
            .client_as(USER_A)
            .get(&accounts_path(BANK_1), Some(token))
            .await;
        let got = r.assert_answer();
        if let (Some(position), Some(revoked_at)) = (position, revoked_at) {
            assert_no_late_allow("the hub", got.0, position, revoked_at);
        }
        if got.0 == want.0 && got.1 == want.1 {
            return (t0.elapsed(), before);
        }
        assert!(
            allowed.iter().any(|a| a.0 == got.0 && a.1 == got.1),
            "unexpected {got:?} while waiting for {want:?}: {}",
            r.text()
        );
        assert!(
            t0.elapsed() < deadline,
            "no {want:?} within {deadline:?} (last {got:?}); hub stderr:\n{}",
            hub.stderr_text()
        );
        before += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url");
    serde_json::from_slice::<Value>(&raw).expect("header JSON")["kid"]
        .as_str()
        .expect("kid")
        .to_string()
}

#[test]
fn journey_revocation_staleness_and_restart_through_the_hub() {
    let Rig {
        rt,
        slot,
        hub,
        addr,
        outbox,
    } = rig();

    rt.block_on(async {
        let (consent, token) = journey(&hub, addr, &outbox).await;
        // The hub learns of the new consent from the feed (it may still be loading the
        // snapshot at first: stale, or not found yet).
        let before = [(503, "consent_state_stale"), (403, "consent_not_found")];
        until(&hub, &token, (200, ""), &before, Duration::from_secs(10)).await;
        for path in [accounts_path(BANK_1)] {
            let r = hub.client_as(USER_A).get(&path, Some(&token)).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }

        let api_user = Client::trust(
            addr,
            hub.pki.ca_cert_pem(),
            Some(&ClientCert::of(hub.identity(USER_A))),
        );

        // Contract §5: the sidecar creates no consent with an account id outside
        // `A-Z a-z 0-9 - _ .` (its creation goes through the consent store's record
        // validation): a comma or a space would make one id read as two in the hub's
        // comma-joined `x-hub-accounts`. The id is not echoed.
        let customer = hub.customer_of("c-authorised-full");
        for bad in ["KZ01,KZ02", "KZ01 KZ02", "KZ01\"", &"7".repeat(65)] {
            let body = json!({"customer": customer, "providers": [BANK_1],
                "permissions": ["accounts"], "purpose": "e2e", "accounts": ["KZ-ok", bad]});
            let r = api_user
                .send(&json_req("POST", "/v1/consents", &body))
                .await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (422, "invalid_field"),
                "{}",
                r.text()
            );
            assert!(r.text().contains("accounts[1]"), "{}", r.text());
            assert!(!r.text().contains(bad), "{}", r.text());
        }

        // Key rotation to a key the hub has never fetched (its refresh interval is an
        // hour): the unknown kid makes it fetch the JWKS, and the token is accepted.
        let operator = Client::trust(
            addr,
            hub.pki.ca_cert_pem(),
            Some(&ClientCert::of(hub.pki.operator().expect("operator"))),
        );
        for _ in 0..2 {
            let r = operator
                .send(&json_req("POST", "/v1/admin/keys/rotate", &json!({})))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let rotated = token_for(&api_user, &consent).await;
        assert_ne!(kid_of(&rotated), kid_of(&token), "the signing key changed");
        until(
            &hub,
            &rotated,
            (200, ""),
            &[(401, "invalid_token")],
            Duration::from_secs(5),
        )
        .await;
        let token = rotated;
        let updates = hub
            .stderr_text()
            .matches("token keys updated from the trust sidecar")
            .count();
        assert!(
            updates >= 2,
            "keys fetched at start and on the unknown kid: {updates}"
        );

        // Revocation by the API user: refused by the hub as soon as the feed delivers it,
        // and never allowed once the hub's feed position has reached the revocation.
        let r = api_user
            .send(&Req::new("DELETE", format!("/v1/consents/{consent}")))
            .await;
        let revoked_at = revoked_version(&r);
        let (delay, earlier) =
            until_revoked(&hub, &token, revoked_at, Duration::from_secs(2)).await;
        eprintln!("revocation answered → hub refuses: {delay:?} ({earlier} earlier 200s)");

        let m = hub.metrics().await;
        let version = metric(&m, "hub_consent_feed_version").expect("feed version gauge");
        assert!(version >= revoked_at as f64, "feed version {version}\n{m}");
        assert!(version >= 5.0, "feed version {version}\n{m}");
        let staleness = metric(&m, "hub_consent_feed_staleness_seconds").expect("staleness gauge");
        assert!(staleness < STALENESS.as_secs_f64(), "{staleness}");
        assert!(
            metric(&m, "hub_consent_feed_reconnects_total").is_some(),
            "{m}"
        );
        assert!(
            metric(&m, "hub_consent_feed_resyncs_total").is_some(),
            "{m}"
        );

        // The sidecar stops: once the bound has passed, consent routes answer 503.
        let running = slot
            .lock()
            .expect("slot")
            .as_mut()
            .and_then(|s| s.running.take())
            .expect("running");
        let stopped = Instant::now();
        running.stop().await;
        until(
            &hub,
            &token,
            (503, "consent_state_stale"),
            &[(403, "consent_revoked")],
            STALENESS + Duration::from_secs(3),
        )
        .await;
        let after = stopped.elapsed();
        assert!(
            after >= STALENESS - Duration::from_millis(300),
            "stale after {after:?}"
        );
        // Open data does not depend on consents.
        let r = hub
            .client_as(USER_A)
            .get(&open_data_path(BANK_1, "atms"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());

        // Restarted on the same database: fresh again, and the revocation is still there.
        let config = slot
            .lock()
            .expect("slot")
            .as_ref()
            .expect("s")
            .config
            .clone();
        let config_again = config.clone();
        let running = trust::start(config, None).await.expect("sidecar restarts");
        until(
            &hub,
            &token,
            (403, "consent_revoked"),
            &[(503, "consent_state_stale")],
            Duration::from_secs(10),
        )
        .await;
        running.stop().await;

        // Another database behind the same address (the registry was replaced): the
        // feed refuses the old store id (410), the hub reloads the snapshot, and the
        // consent is gone.
        let mut config = config_again.clone();
        config.db = config.db.with_file_name("trust-replaced.db");
        let running = trust::start(config, None)
            .await
            .expect("new sidecar starts");
        until(
            &hub,
            &token,
            (403, "consent_not_found"),
            &[(403, "consent_revoked"), (503, "consent_state_stale")],
            Duration::from_secs(10),
        )
        .await;
        let m = hub.metrics().await;
        let resyncs = metric(&m, "hub_consent_feed_resyncs_total").expect("resyncs");
        assert!(resyncs >= 1.0, "{m}");
        running.stop().await;
    });
    drop(hub);
}

/// Contract §5 and §6 (expiry): a consent created through the sidecar with an expiry
/// serves until then and is refused at the hub once it has passed (`403
/// consent_expired`: the token, which never outlives its consent, is still inside the
/// hub's clock-skew leeway), never before.
#[test]
fn a_consent_from_the_sidecar_stops_at_the_hub_when_it_expires() {
    let Rig {
        rt,
        slot: _slot,
        hub,
        addr,
        outbox,
    } = rig();
    rt.block_on(async {
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 3;
        let expires_at = time::OffsetDateTime::from_unix_timestamp(expires)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("rfc3339");
        let (_consent, token) =
            journey_with(&hub, addr, &outbox, json!({ "expires_at": expires_at })).await;
        let before = [(503, "consent_state_stale"), (403, "consent_not_found")];
        until(&hub, &token, (200, ""), &before, Duration::from_secs(10)).await;
        // Allowed before the expiry, refused from the expiry's second on (the hub's clock is
        // this machine's): a 200 for a request sent at or after it is a late allow.
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused_at = loop {
            let sent = now_unix();
            let r = hub
                .client_as(USER_A)
                .get(&accounts_path(BANK_1), Some(&token))
                .await;
            match r.assert_answer() {
                (200, _) => assert!(
                    sent < expires,
                    "allowed a request sent at {sent}, at or after the expiry {expires}"
                ),
                (403, code) if code == "consent_expired" => break sent,
                other => panic!("unexpected {other:?}: {}", r.text()),
            }
            assert!(Instant::now() < deadline, "not refused within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(
            now_unix() >= expires,
            "refused (request sent at {refused_at}) before the expiry {expires}"
        );
        // And it stays refused.
        hub.client_as(USER_A)
            .get(&accounts_path(BANK_1), Some(&token))
            .await
            .assert_problem(403, "consent_expired");
    });
    drop(hub);
}

#[test]
fn consent_routes_fail_closed_until_the_first_snapshot() {
    let hub = Hub::start_with(env!("CARGO_BIN_EXE_hub-under-test"), |setup| {
        setup.config.consents = ConsentSection::default();
        setup.config.trust = Some(TrustSection::new(
            &format!("https://127.0.0.1:{}", closed_port()),
            &[setup.prepared.pki.ca_cert_path().to_owned()],
        ));
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let token = hub.token("c-authorised-full");
        let iid = uuid::Uuid::new_v4().to_string();
        let r = hub
            .client_as(USER_A)
            .send(
                &Req::get(accounts_path(BANK_1))
                    .bearer(&token)
                    .interaction_id(&iid),
            )
            .await;
        // Row 7 with the same full problem checks as every other row, and the caller's
        // interaction id echoed.
        r.assert_problem(503, "consent_state_stale");
        assert_eq!(r.interaction_id(), iid);
        assert_eq!(
            r.header("cache-control"),
            Some("no-store"),
            "{}",
            r.describe()
        );
        let r = hub
            .client_as(USER_A)
            .get(&open_data_path(BANK_1, "atms"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let m = hub.metrics().await;
        assert!(
            metric(&m, "hub_consent_feed_reconnects_total").is_some_and(|n| n >= 1.0)
                || metric(&m, "hub_consent_feed_version") == Some(0.0),
            "{m}"
        );
    });
}

/// Contract §1 and §6 rows 2, 3 and 15 with the registry in the sidecar: the operator's
/// participant changes reach the hub over the feed and apply from the next request, with
/// no reload — an API user suspended, reactivated, isolated; its certificate replaced
/// (unknown to the hub); its provider suspended.
#[test]
fn participant_changes_in_the_sidecar_apply_at_the_hub() {
    let Rig {
        rt,
        slot,
        hub,
        addr,
        outbox,
    } = rig();

    rt.block_on(async {
        let (_consent, token) = journey(&hub, addr, &outbox).await;
        let before = [(503, "consent_state_stale"), (403, "consent_not_found")];
        until(&hub, &token, (200, ""), &before, Duration::from_secs(10)).await;

        let operator = Client::trust(
            addr,
            hub.pki.ca_cert_pem(),
            Some(&ClientCert::of(hub.pki.operator().expect("operator"))),
        );
        let set_status = |bin: &'static str, status: &'static str| {
            let operator = operator.clone();
            async move {
                let r = operator
                    .send(&json_req(
                        "PUT",
                        &format!("/v1/participants/{bin}/status"),
                        &json!({ "status": status }),
                    ))
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
                assert_eq!(r.json()["status"], status);
            }
        };
        let limit = Duration::from_secs(5);

        // Suspended: refused at once (row 3), no reload, no token change.
        set_status(USER_A, "suspended").await;
        let (delay, _) = until(
            &hub,
            &token,
            (403, "participant_inactive"),
            &[(200, "")],
            limit,
        )
        .await;
        eprintln!("suspension in the registry → hub refuses: {delay:?}");
        // Open data too: only active participants exchange data.
        hub.client_as(USER_A)
            .get(&open_data_path(BANK_1, "atms"), None)
            .await
            .assert_problem(403, "participant_inactive");

        // Reactivated: served again.
        set_status(USER_A, "active").await;
        until(
            &hub,
            &token,
            (200, ""),
            &[(403, "participant_inactive")],
            limit,
        )
        .await;

        // Isolated: refused.
        set_status(USER_A, "isolated").await;
        until(
            &hub,
            &token,
            (403, "participant_inactive"),
            &[(200, "")],
            limit,
        )
        .await;
        set_status(USER_A, "active").await;
        until(
            &hub,
            &token,
            (200, ""),
            &[(403, "participant_inactive")],
            limit,
        )
        .await;

        // The registry replaces USER_A's certificate: the old one is unknown to the hub
        // (row 2), although the hub's configuration file still lists it for USER_A.
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let user = hub.identity(USER_A).clone();
        let put_user = |thumbprint: String| {
            let operator = operator.clone();
            async move {
                let r = operator
                    .send(&json_req(
                        "PUT",
                        &format!("/v1/participants/{USER_A}"),
                        &json!({"name": "Fintech A", "roles": ["user"], "thumbprints": [thumbprint]}),
                    ))
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        };
        put_user(other).await;
        until(
            &hub,
            &token,
            (403, "participant_unknown"),
            &[(200, "")],
            limit,
        )
        .await;
        put_user(thumbprint(&user)).await;
        until(
            &hub,
            &token,
            (200, ""),
            &[(403, "participant_unknown")],
            limit,
        )
        .await;

        // The provider suspended in the registry: unavailable (row 15); back when active.
        set_status(BANK_1, "suspended").await;
        until(
            &hub,
            &token,
            (503, "provider_unavailable"),
            &[(200, "")],
            limit,
        )
        .await;
        set_status(BANK_1, "active").await;
        until(
            &hub,
            &token,
            (200, ""),
            &[(503, "provider_unavailable")],
            limit,
        )
        .await;

        let m = hub.metrics().await;
        let changes = metric(&m, "hub_participant_feed_changes_total").expect("changes");
        assert!(changes >= 9.0, "{m}");
        assert_eq!(metric(&m, "hub_participants_refused"), Some(0.0), "{m}");
        assert!(
            !hub.stderr_text().contains("configuration reloaded"),
            "no reload was involved"
        );

        let running = slot
            .lock()
            .expect("slot")
            .as_mut()
            .and_then(|s| s.running.take());
        if let Some(r) = running {
            r.stop().await;
        }
    });
    drop(hub);
}
