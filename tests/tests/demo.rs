//! The development hub (the `devhub` binary) as shipped (issue 4): one command starts
//! the sandbox banks, the trust sidecar and the hub; the manifest names the sidecar
//! (`trust_url`, `otp_outbox`) and lists the consents the sidecar holds, in every
//! status; the manifest's pre-minted tokens and the sidecar's own tokens both verify at
//! the hub; participants come from the sidecar's registry. The demo runs as a real
//! child process on free ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::http::admin_request;
use e2e::*;
use serde_json::Value;

/// The demo process, stopped (with everything it runs) when dropped.
struct Demo {
    child: Child,
    dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Demo {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("demo.log")).unwrap_or_default()
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn client_of(m: &Value, addr: std::net::SocketAddr, user: &Value) -> Client {
    let cert = ClientCert {
        cert_pem: read(Path::new(user["cert"].as_str().expect("cert"))),
        key_pem: read(Path::new(user["key"].as_str().expect("key"))),
    };
    Client::new(
        addr,
        &read(Path::new(m["ca_cert"].as_str().expect("ca"))),
        Some(&cert),
    )
}

fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .parse()
        .expect("an ip:port URL")
}

#[test]
fn the_demo_runs_the_sidecar_and_the_hub_follows_it() {
    let dir = tempfile::Builder::new()
        .prefix("demo-e2e-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let (port, admin, trust_port) = (free_port(), free_port(), free_port());
    let log = std::fs::File::create(dir.join("demo.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_devhub-under-test"))
        .arg("--dir")
        .arg(&dir)
        .args([
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin.to_string(),
            "--trust-port",
            &trust_port.to_string(),
            "--customers",
            "20",
            "--threads",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn the demo");
    let mut demo = Demo { child, dir };
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Ready: the admin listener says so.
        let t0 = Instant::now();
        loop {
            if let Ok((200, _)) = admin_request(admin_addr, "GET", "/readyz").await {
                break;
            }
            if let Ok(Some(status)) = demo.child.try_wait() {
                panic!("the demo exited ({status}):\n{}", demo.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "not ready:\n{}",
                demo.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let m: Value =
            serde_json::from_str(&read(&demo.dir.join("manifest.json"))).expect("manifest");

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
