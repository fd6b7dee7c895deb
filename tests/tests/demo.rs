//! The development hub (the `devhub` binary) as shipped (issue 4): one command starts
//! the sandbox banks, the trust sidecar and the hub; the manifest names the sidecar
//! (`trust_url`, `otp_outbox`, `billing`) and lists the consents the sidecar holds, in every
//! status; the manifest's pre-minted tokens and the sidecar's own tokens both verify at
//! the hub; participants come from the sidecar's registry; each provider's `faults_url`
//! breaks its bank and mends it (issue 14). The demo runs as a real child process on free
//! ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::demo::*;
use e2e::*;
use serde_json::Value;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn the_demo_runs_the_sidecar_and_the_hub_follows_it() {
    let (mut demo, ports) = spawn_demo(devhub_exe!());
    let Ports {
        port,
        admin,
        trust: trust_port,
    } = ports;
    runtime().block_on(async {
        let m = ready_manifest(&mut demo, admin).await;

        // The manifest names the sidecar, and the consents it holds, in every status.
        let trust_url = m["trust_url"].as_str().expect("trust_url");
        assert_eq!(trust_url, format!("https://127.0.0.1:{trust_port}"));
        let outbox = PathBuf::from(m["otp_outbox"].as_str().expect("otp_outbox"));
        assert!(outbox.is_absolute(), "{}", outbox.display());
        assert_eq!(m["consents_from"], "trust");
        let consents = m["consents"].as_array().expect("consents");
        for status in [
            "authorised",
            "awaiting_authorisation",
            "rejected",
            "revoked",
            "expired",
        ] {
            assert!(
                consents.iter().any(|c| c["status"] == status),
                "no {status} consent"
            );
        }
        assert!(consents
            .iter()
            .any(|c| c["status"] == "authorised" && c["accounts"].is_array()));
        let config = read(Path::new(m["config"].as_str().expect("config")));
        assert!(config.contains("[trust]") && !config.contains("[consents]"));
        assert!(
            !config.contains("[[participants]]"),
            "participants come from the registry"
        );

        let hub = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let users: Vec<Value> = m["api_users"].as_array().expect("users").clone();
        let user_of = |bin: &str| {
            users
                .iter()
                .find(|u| u["id"] == bin)
                .cloned()
                .expect("a manifest user")
        };

        // Every manifest consent answers as its status says, once the hub has loaded the
        // sidecar's snapshot.
        for c in consents {
            let user = user_of(c["api_user"].as_str().expect("api_user"));
            let provider = c["providers"][0].as_str().expect("provider");
            let token = c["token"].as_str().expect("token");
            let want = match c["status"].as_str().expect("status") {
                "authorised" => (200, ""),
                "revoked" => (403, "consent_revoked"),
                "expired" => (403, "consent_expired"),
                _ => (403, "consent_not_authorised"),
            };
            let client = client_of(&m, hub, &user);
            let t0 = Instant::now();
            loop {
                let r = client.get(&accounts_path(provider), Some(token)).await;
                let code = if r.status == 200 {
                    String::new()
                } else {
                    r.code()
                };
                if (r.status, code.as_str()) == want {
                    break;
                }
                assert_eq!(
                    (r.status, code.as_str()),
                    (503, "consent_state_stale"),
                    "{}: {}",
                    c["id"],
                    r.text()
                );
                assert!(t0.elapsed() < Duration::from_secs(15), "{}", demo.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        // A token from the sidecar's token endpoint verifies at the hub as the demo's own.
        let c = consents
            .iter()
            .find(|c| c["id"] == "c-authorised-full")
            .expect("c-authorised-full");
        let bin = c["api_user"].as_str().expect("api_user");
        let user = user_of(bin);
        let form = format!(
            "grant_type=client_credentials&client_id={bin}&consent_id={}",
            c["id"].as_str().expect("id")
        );
        let r = client_of(&m, addr_of(trust_url), &user)
            .api(Some(Api::Trust))
            .send(
                &Req::new("POST", "/oauth2/token")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("content-length", form.len().to_string())
                    .body(form),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let token = r.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        let provider = c["providers"][0].as_str().expect("provider");
        let r = client_of(&m, hub, &user)
            .get(&accounts_path(provider), Some(&token))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());

        // Billing is on: the manifest names the tariff and the sidecar its usage and
        // statement routes (usage shows a minute's calls once the minute has closed, so
        // the cluster test checks the figures; here the routes answer, not 503).
        let tariff = PathBuf::from(m["billing"]["tariff"].as_str().expect("billing.tariff"));
        assert!(
            read(&tariff).contains("[[versions]]"),
            "{}",
            tariff.display()
        );
        let zone = jiff::tz::TimeZone::get("Asia/Almaty").expect("Asia/Almaty");
        let today = jiff::Timestamp::now().to_zoned_datetime(zone).date();
        let trust = client_of(&m, addr_of(trust_url), &user).api(Some(Api::Trust));
        let billing = &m["billing"];
        for path in [
            format!(
                "{}?from={today}&to={today}",
                billing["usage"].as_str().expect("usage")
            ),
            format!(
                "{}?month={:04}-{:02}",
                billing["draft_statements"]
                    .as_str()
                    .expect("draft_statements"),
                today.year(),
                today.month()
            ),
        ] {
            let r = trust.send(&Req::get(path.as_str())).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }

        // The suspended API user is suspended in the registry, hence at the hub.
        let r = client_of(&m, hub, &user_of(USER_SUSPENDED))
            .get(&open_data_path(provider, "atms"), None)
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "participant_inactive"),
            "{}",
            r.text()
        );
    });
    start_up_summaries_say_what_is_loaded(&demo.log());
}

/// Each provider's `faults_url` (contract §9) switches its sandbox bank, with the hub's
/// client certificate from the manifest: in `error`, a call through the hub answers the
/// bank's `500` (a provider's error answer passes through, docs/contract-deviations.md);
/// back in `ok`, `200` again.
#[test]
fn a_providers_faults_url_breaks_its_bank_and_mends_it() {
    let (mut demo, ports) = spawn_demo(devhub_exe!());
    runtime().block_on(async {
        let m = ready_manifest(&mut demo, ports.admin).await;
        let providers = m["providers"].as_array().expect("providers");
        assert_eq!(providers.len(), 2);
        for p in providers {
            let faults = p["faults_url"].as_str().unwrap_or_default();
            assert!(
                faults.starts_with("https://127.0.0.1:")
                    && faults.ends_with("/faults")
                    && !faults.starts_with(p["url"].as_str().unwrap_or("-")),
                "{p}"
            );
        }
        let c = m["consents"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == "c-authorised-full"))
            .expect("c-authorised-full")
            .clone();
        let provider = c["providers"][0].as_str().expect("provider");
        let user = m["api_users"]
            .as_array()
            .and_then(|us| us.iter().find(|u| u["id"] == c["api_user"]))
            .expect("its API user")
            .clone();
        let hub = client_of(&m, SocketAddr::from(([127, 0, 0, 1], ports.port)), &user);
        let token = c["token"].as_str().expect("token");
        let path = accounts_path(provider);
        let accounts = || hub.get(&path, Some(token));
        // 200 once the hub has the sidecar's consent state.
        let t0 = Instant::now();
        while accounts().await.status != 200 {
            assert!(t0.elapsed() < Duration::from_secs(15), "{}", demo.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let bank = providers
            .iter()
            .find(|p| p["id"] == provider)
            .expect("the consent's provider");
        let faults_url = bank["faults_url"].as_str().expect("faults_url");
        let control = faults_client(&m, faults_url);
        let r = control.send(&switch_to("error")).await;
        assert_eq!((r.status, r.json()["mode"].as_str()), (200, Some("error")));
        // The hub's client holds this answer to docs/openapi/hub.json as well.
        let r = accounts().await;
        assert_eq!(r.status, 500, "{}", r.describe());
        assert_eq!(r.json()["error"], "internal_error", "{}", r.describe());
        assert!(is_uuid(r.interaction_id()), "{}", r.describe());

        let r = control.send(&switch_to("ok")).await;
        assert_eq!((r.status, r.json()["mode"].as_str()), (200, Some("ok")));
        accounts().await.ok_json();
    });
}

/// The log's events (JSON lines: standard error is a file) with `message`.
fn events_of(log: &str, message: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["message"] == message)
        .collect()
}

/// The configuration has no participants of its own: the start-up summary must not pass
/// that off as the hub's (it counts the file's, and says the registry's arrive later); once the
/// sidecar's snapshot is in force, the summary counts the registry's participants.
fn start_up_summaries_say_what_is_loaded(log: &str) {
    let loaded = events_of(log, "configuration loaded");
    let first = loaded.first().and_then(|e| e["summary"].as_str());
    let first = first.unwrap_or_else(|| panic!("no start-up summary:\n{log}"));
    assert!(
        first.starts_with("0 participants and 0 providers from the file (the trust registry's"),
        "{first}"
    );
    let installed = events_of(log, "snapshot loaded from the trust sidecar");
    let event = installed
        .first()
        .unwrap_or_else(|| panic!("no snapshot loaded:\n{log}"));
    let n = event["participants"].as_u64().expect("participants");
    assert!(n > 0, "{event}");
    let summary = event["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("{n} participants ({n} from the trust registry)")),
        "{summary}"
    );
}
