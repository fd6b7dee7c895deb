//! The development hub (the `devhub` binary) as a child process on free ports, for the
//! end-to-end suites that drive it from its manifest: start it, wait until it is ready,
//! read the manifest, and the clients the manifest's identities make.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::admin_request;
use crate::{free_port, Client, ClientCert, Req};

/// The demo process, stopped (with everything it runs) when dropped.
pub struct Demo {
    /// The demo process.
    pub child: Child,
    /// Its directory (removed when dropped).
    pub dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Demo {
    /// The demo's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("demo.log")).unwrap_or_default()
    }
}

/// A file's text (panics naming the file).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A client of the hub at `addr` with the manifest's API user `user`.
pub fn client_of(m: &Value, addr: std::net::SocketAddr, user: &Value) -> Client {
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

/// The `ip:port` of an `https://ip:port` URL.
pub fn addr_of(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .parse()
        .expect("an ip:port URL")
}

/// The demo's ports: the hub's API, its admin listener, the trust sidecar.
pub struct Ports {
    /// The hub's API.
    pub port: u16,
    /// The hub's admin listener.
    pub admin: u16,
    /// The trust sidecar.
    pub trust: u16,
}

/// The demo binary as Cargo built it for this package's integration tests.
#[macro_export]
macro_rules! devhub_exe {
    () => {
        env!("CARGO_BIN_EXE_devhub-under-test")
    };
}

/// Starts the demo binary `exe` ([`devhub_exe!`]) on free ports (20 customers per bank,
/// one gateway thread).
pub fn spawn_demo(exe: &str) -> (Demo, Ports) {
    spawn_demo_with(exe, &[])
}

/// [`spawn_demo`] with more arguments.
pub fn spawn_demo_with(exe: &str, extra: &[&str]) -> (Demo, Ports) {
    let dir = tempfile::Builder::new()
        .prefix("demo-e2e-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let (port, admin, trust_port) = (free_port(), free_port(), free_port());
    let log = std::fs::File::create(dir.join("demo.log")).expect("log");
    let child = Command::new(exe)
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
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn the demo");
    let ports = Ports {
        port,
        admin,
        trust: trust_port,
    };
    (Demo { child, dir }, ports)
}

/// Waits until the demo's admin listener says it is ready (and, with the sidecar, the hub
/// has loaded its first snapshot); its manifest.
pub async fn ready_manifest(demo: &mut Demo, admin: u16) -> Value {
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let t0 = Instant::now();
    loop {
        if let Ok((200, _)) = admin_request(admin_addr, "GET", "/readyz").await {
            if sidecar_snapshot_loaded(demo, admin_addr).await {
                break;
            }
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
    serde_json::from_str(&read(&demo.dir.join("manifest.json"))).expect("manifest")
}

/// With the trust sidecar, whether the hub has loaded its first snapshot (consents and
/// participants), read from its feed metrics: `/readyz` waits for that snapshot too, and
/// this is the test's own check of it. Always true with a file.
async fn sidecar_snapshot_loaded(demo: &Demo, admin: std::net::SocketAddr) -> bool {
    let manifest = std::fs::read_to_string(demo.dir.join("manifest.json")).unwrap_or_default();
    let from_trust =
        serde_json::from_str::<Value>(&manifest).is_ok_and(|m| m["consents_from"] == "trust");
    if !from_trust {
        return true;
    }
    match admin_request(admin, "GET", "/metrics").await {
        Ok((200, text)) => {
            crate::hub::metric(&text, "hub_consent_feed_version").is_some_and(|v| v >= 1.0)
        }
        _ => false,
    }
}

/// A plain client (no document describes the development route) of a bank's control
/// route, with the hub's client certificate as the manifest names it.
pub fn faults_client(m: &Value, faults_url: &str) -> Client {
    let hub = ClientCert {
        cert_pem: read(Path::new(m["hub_client_cert"].as_str().expect("hub cert"))),
        key_pem: read(Path::new(m["hub_client_key"].as_str().expect("hub key"))),
    };
    let addr = addr_of(faults_url.strip_suffix("/faults").expect("…/faults"));
    let ca = read(Path::new(m["ca_cert"].as_str().expect("ca")));
    Client::new(addr, &ca, Some(&hub)).api(None)
}

/// `POST /faults` switching to `mode`.
pub fn switch_to(mode: &str) -> Req {
    Req::new("POST", "/faults")
        .header("content-type", "application/json")
        .body(format!(r#"{{"mode":"{mode}"}}"#))
}
