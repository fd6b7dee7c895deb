//! Resilience of hubs following the trust sidecar (issue 4), with everything as real
//! processes: the sidecar is the `trust` binary (`trust-under-test`, a child process on a
//! real SQLite file, killed with SIGKILL or stopped with SIGTERM and restarted on the same
//! address and database) and two gateway processes follow it over mTLS.
//!
//! - `kill_9_mid_burst_…`: a burst of concurrent revocations, the sidecar SIGKILLed in the
//!   middle; while it is down no consent route answers an allow past the staleness bound
//!   (`503 consent_state_stale`); after the restart both gateways answer every revocation
//!   acknowledged before the kill with `503` until they hear the sidecar, then `403
//!   consent_revoked`, never `200`, and agree with the registry on every consent of the
//!   burst, with no snapshot reload (the feed resumed without a gap).
//! - `two_gateways_…`: each revocation, one after another, is enforced by both gateways
//!   (bounded poll on keep-alive connections, not a sleep).
//!
//! Every revocation's feed version comes from the sidecar's answer; a `200` for a revoked
//! consent from a gateway whose `hub_consent_feed_version` (read just before the request)
//! had reached it fails any test here (a late allow), and every answer is checked whole
//! (the bank's JSON, or the hub's exact problem for its code).
//! - `restart_while_serving_…`: a graceful sidecar restart under steady load through both
//!   gateways: no `503` (the restart is shorter than the bound), the feed version on
//!   `/metrics` never goes back and ends at the registry's head, no resync, revoked
//!   consents stay refused throughout, revocations after the restart are enforced.
//!
//! `trust_feed.rs` covers the single-gateway journey with the sidecar in-process (token
//! endpoint, key rotation, staleness after a clean stop, a replaced database); this file
//! does not repeat it. Tokens here are minted by the demo issuer (`[trust] jwks = false`),
//! so only the consent state depends on the sidecar.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::http::TlsConn;
use e2e::*;
use gateway::config::{at, AuditSection, ConsentSection, TrustSection};
use serde_json::{json, Value};

/// Feed heartbeat interval of the sidecar.
const HEARTBEAT_MS: u64 = 200;
/// How long a sidecar may take to start (debug build, busy 2-core machine).
const SIDECAR_START: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The sidecar as a child process

/// How to run the sidecar; kept so that a restart uses the same address and database.
#[derive(Debug, Clone)]
struct SidecarSpec {
    port: u16,
    dir: PathBuf,
    db: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    operator: PathBuf,
    hub: PathBuf,
    outbox: PathBuf,
}

/// A running sidecar. A watchdog shell sits between the test and the sidecar and ends it
/// when its standard input closes (the test dropped it, or the test process died), so a
/// sidecar never outlives the test binary.
struct Sidecar {
    pid: u32,
    watchdog: Option<Child>,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
}

impl SidecarSpec {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// Starts the sidecar and waits until it listens (its `--ready-file` is written).
    fn start(&self) -> Sidecar {
        let ready = self.dir.join("trust.ready");
        let _ = std::fs::remove_file(&ready);
        let stdout = self.dir.join("trust.stdout");
        let stderr = self.dir.join("trust.stderr");
        let script = r#"out=$1; err=$2; shift 2
"$0" "$@" >>"$out" 2>>"$err" &
pid=$!
echo "$pid"
read -r _ignored
kill -TERM "$pid" 2>/dev/null
wait "$pid""#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_trust-under-test"))
            .arg(&stdout)
            .arg(&stderr)
            .arg("serve")
            .args(["--listen", &self.addr().to_string()])
            .arg("--db")
            .arg(&self.db)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .arg("--client-ca")
            .arg(&self.ca)
            .arg("--operator-cert")
            .arg(&self.operator)
            .arg("--hub-cert")
            .arg(&self.hub)
            .arg("--otp-outbox")
            .arg(&self.outbox)
            .arg("--dev-customer-sessions")
            .args(["--codes-per-customer-hour", "99999"])
            .args(["--codes-per-customer-day", "99999"])
            .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut watchdog = cmd.spawn().expect("spawn the sidecar's watchdog");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("watchdog stdout"))
            .read_line(&mut line)
            .expect("sidecar pid");
        let pid: u32 = line.trim().parse().expect("sidecar pid");
        let mut sidecar = Sidecar {
            pid,
            stdin: watchdog.stdin.take(),
            watchdog: Some(watchdog),
            stderr,
        };
        let up = poll_until(SIDECAR_START, || {
            if !alive(pid) {
                return Some(false);
            }
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|t| t.ends_with('\n'))
                .map(|_| true)
        });
        if up != Some(true) {
            let text = sidecar.stderr_text();
            sidecar.kill9();
            panic!("the sidecar did not start ({up:?}); stderr:\n{text}");
        }
        sidecar
    }
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

impl Sidecar {
    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status();
    }

    /// SIGKILL: no handler runs, nothing is flushed; returns once the process is gone.
    fn kill9(&mut self) {
        self.signal("KILL");
        let gone = poll_until(Duration::from_secs(10), || (!alive(self.pid)).then_some(()));
        assert!(gone.is_some(), "the sidecar survived SIGKILL");
        self.finish();
    }

    /// SIGTERM (graceful stop); returns once the process is gone.
    fn stop(&mut self) {
        self.signal("TERM");
        let gone = poll_until(Duration::from_secs(15), || (!alive(self.pid)).then_some(()));
        if gone.is_none() {
            self.signal("KILL");
        }
        self.finish();
    }

    fn finish(&mut self) {
        drop(self.stdin.take());
        if let Some(mut w) = self.watchdog.take() {
            if poll_until(Duration::from_secs(5), || w.try_wait().ok().flatten()).is_none() {
                let _ = w.kill();
                let _ = w.wait();
            }
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.watchdog.is_some() && alive(self.pid) {
            self.signal("KILL");
        }
        self.finish();
    }
}

// ---------------------------------------------------------------------------------------
// Hubs following the sidecar

/// The row 7 bound and the sidecar slot the hub's configuration step fills.
type Slot = Arc<Mutex<Option<(SidecarSpec, Sidecar)>>>;

/// Starts a hub whose `[trust]` follows a sidecar child process started on the hub's
/// development PKI (the hub's server identity, its client identity as the hub allowed on
/// the feed, the demo's operator certificate).
fn hub_with_sidecar(staleness_secs: u64) -> (Hub, SidecarSpec, Sidecar) {
    let slot: Slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let hub = Hub::start_with(env!("CARGO_BIN_EXE_hub-under-test"), move |setup| {
        setup.unlimited();
        let pki = &setup.prepared.pki;
        let dir = setup.prepared.dir.clone();
        let spec = SidecarSpec {
            port: free_port(),
            db: dir.join("trust.db"),
            cert: pki.hub_server().cert_path.clone(),
            key: pki.hub_server().key_path.clone(),
            ca: pki.ca_cert_path().to_owned(),
            operator: pki.operator().expect("operator").cert_path.clone(),
            hub: pki.hub_client().cert_path.clone(),
            outbox: dir.join("otp_outbox"),
            dir,
        };
        let sidecar = spec.start();
        setup.config.consents = ConsentSection::default();
        setup.config.trust = Some(TrustSection {
            max_staleness_secs: staleness_secs,
            ..TrustSection::new(&spec.url(), &[pki.ca_cert_path().to_owned()])
        });
        // A retried start-up leaves the earlier sidecar here: it is dropped (killed).
        let _ = s.lock().expect("slot").replace((spec, sidecar));
    });
    let (spec, sidecar) = slot.lock().expect("slot").take().expect("a sidecar");
    (hub, spec, sidecar)
}

/// Another gateway process on the first hub's configuration (same PKI, banks, sidecar),
/// with its own ports and audit journal; ended through a watchdog like the hub.
struct SecondGateway {
    addr: SocketAddr,
    admin: SocketAddr,
    pid: u32,
    watchdog: Option<Child>,
    stdin: Option<ChildStdin>,
    stderr: PathBuf,
}

impl SecondGateway {
    /// Starts it and waits until its `/readyz` answers 200.
    fn start(hub: &Hub) -> SecondGateway {
        let mut g = SecondGateway::spawn(hub);
        if g.readyz_until(Duration::from_secs(30), 200).is_none() {
            let text = std::fs::read_to_string(&g.stderr).unwrap_or_default();
            g.shutdown();
            panic!("the second gateway did not start; stderr:\n{text}");
        }
        g
    }

    /// Polls `/readyz` until it answers `status` (its body), the process exits or
    /// `deadline` passes (`None`).
    fn readyz_until(&self, deadline: Duration, status: u16) -> Option<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        poll_until(deadline, || {
            if !alive(self.pid) {
                return Some(None);
            }
            match rt.block_on(e2e::http::admin_request(self.admin, "GET", "/readyz")) {
                Ok((s, body)) if s == status => Some(Some(body)),
                _ => None,
            }
        })
        .flatten()
    }

    /// Starts it without waiting for readiness.
    fn spawn(hub: &Hub) -> SecondGateway {
        SecondGateway::spawn_with(hub, &[])
    }

    /// [`SecondGateway::spawn`] with extra environment variables.
    fn spawn_with(hub: &Hub, env: &[(&str, &Path)]) -> SecondGateway {
        let mut config = e2e::hub::read_config(&hub.config_path);
        let (port, admin_port) = (free_port(), free_port());
        config.server.listen = at(format!("127.0.0.1:{port}"));
        config.server.admin_listen = at(format!("127.0.0.1:{admin_port}"));
        config.audit = AuditSection::file(hub.dir.join("audit-2.jsonl"));
        let path = hub.dir.join("hub-2.toml");
        e2e::hub::write_config(&path, &config);
        let stderr = hub.dir.join("hub-2.stderr");
        let script = r#"RUST_LOG=info "$0" run --config "$1" >/dev/null 2>"$2" &
pid=$!
echo "$pid"
read -r _ignored
kill -TERM "$pid" 2>/dev/null
wait "$pid""#;
        let mut watchdog = Command::new("sh")
            .envs(env.iter().copied())
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_hub-under-test"))
            .arg(&path)
            .arg(&stderr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the second gateway");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("pid");
        let pid: u32 = line.trim().parse().expect("pid");
        SecondGateway {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            pid,
            stdin: watchdog.stdin.take(),
            watchdog: Some(watchdog),
            stderr,
        }
    }

    fn shutdown(&mut self) {
        drop(self.stdin.take());
        if let Some(mut w) = self.watchdog.take() {
            if poll_until(Duration::from_secs(15), || w.try_wait().ok().flatten()).is_none() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(self.pid.to_string())
                    .status();
                let _ = w.kill();
                let _ = w.wait();
            }
        }
    }
}

impl Drop for SecondGateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One gateway as the probes see it.
#[derive(Clone)]
struct Gate {
    name: &'static str,
    client: Client,
    admin: SocketAddr,
}

fn gates(hub: &Hub, second: &SecondGateway) -> Vec<Gate> {
    let cert = ClientCert::of(hub.identity(USER_A));
    vec![
        Gate {
            name: "gateway-1",
            client: hub.client_as(USER_A),
            admin: hub.admin,
        },
        Gate {
            name: "gateway-2",
            client: Client::new(second.addr, hub.ca_pem(), Some(&cert)),
            admin: second.admin,
        },
    ]
}

impl Gate {
    async fn metrics(&self) -> String {
        let (status, body) = e2e::http::admin_request(self.admin, "GET", "/metrics")
            .await
            .expect("metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn metric(&self, name: &str) -> f64 {
        let m = self.metrics().await;
        metric(&m, name).unwrap_or_else(|| panic!("{}: no {name} in\n{m}", self.name))
    }
}

/// A keep-alive connection to one gateway that reconnects when the gateway closes it.
struct Prober {
    gate: Gate,
    conn: Option<TlsConn>,
}

impl Prober {
    fn new(gate: &Gate) -> Prober {
        Prober {
            gate: gate.clone(),
            conn: None,
        }
    }

    /// `GET /v1/providers/BANK_1/accounts` with `token`: (status, code). Every answer is
    /// checked whole: a bank's JSON, or the hub's exact problem for its code.
    async fn probe(&mut self, token: &str) -> (u16, String) {
        let req = Req::get(accounts_path(BANK_1)).bearer(token);
        for _ in 0..3 {
            if self.conn.is_none() {
                self.conn = self.gate.client.connect().await.ok();
            }
            if let Some(c) = self.conn.as_mut() {
                match c.send(&req).await {
                    Ok(r) => {
                        if r.header("connection") == Some("close") {
                            self.conn = None;
                        }
                        return r.assert_answer();
                    }
                    Err(_) => self.conn = None,
                }
            }
        }
        panic!("{}: no answer over three connections", self.gate.name)
    }

    /// Waits (≤ 10 s each) until this gateway serves every consent, which it may not know
    /// yet (`consent_not_found` meanwhile).
    async fn serves_all(&mut self, consents: &[Consent]) {
        for c in consents {
            self.until(
                &c.token,
                OK,
                &[NOT_FOUND],
                None,
                Instant::now(),
                Duration::from_secs(10),
            )
            .await;
        }
    }

    /// This gateway's feed position (`hub_consent_feed_version`).
    async fn position(&self) -> u64 {
        feed_version(self.gate.admin).await
    }

    /// Probes until `want` answers (each earlier answer must be one of `allowed`);
    /// returns how long it took after `since` and what came before. For a consent revoked
    /// at feed version `revoked_at`, the gateway's feed position is read before each probe
    /// and a `200` once it has reached that version fails the test (a late allow).
    async fn until(
        &mut self,
        token: &str,
        want: (u16, &str),
        allowed: &[(u16, &str)],
        revoked_at: Option<u64>,
        since: Instant,
        deadline: Duration,
    ) -> Waited {
        let (mut before, mut allows) = (0, 0);
        loop {
            let position = match revoked_at {
                Some(_) => Some(self.position().await),
                None => None,
            };
            let got = self.probe(token).await;
            if let (Some(position), Some(revoked_at)) = (position, revoked_at) {
                assert_no_late_allow(self.gate.name, got.0, position, revoked_at);
            }
            if got.0 == want.0 && got.1 == want.1 {
                return Waited {
                    after: since.elapsed(),
                    before,
                    allows,
                };
            }
            if got.0 == 200 {
                allows += 1;
            }
            assert!(
                allowed.iter().any(|a| a.0 == got.0 && a.1 == got.1),
                "{}: unexpected {got:?} while waiting for {want:?}",
                self.gate.name
            );
            assert!(
                since.elapsed() < deadline,
                "{}: no {want:?} within {deadline:?} (last {got:?})",
                self.gate.name
            );
            before += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What [`Prober::until`] saw.
#[derive(Debug, Clone, Copy)]
struct Waited {
    /// From `since` to the wanted answer.
    after: Duration,
    /// Answers before it.
    before: usize,
    /// Of which `200`s.
    allows: usize,
}

// ---------------------------------------------------------------------------------------
// The registry side: participants, consents authorised by the customer, revocations

/// A keep-alive connection to the sidecar as one caller.
struct TrustConn {
    client: Client,
    conn: Option<TlsConn>,
}

impl TrustConn {
    fn new(addr: SocketAddr, hub: &Hub, cert: Option<ClientCert>) -> TrustConn {
        TrustConn {
            client: Client::trust(addr, hub.ca_pem(), cert.as_ref()),
            conn: None,
        }
    }

    async fn try_send(&mut self, req: &Req) -> std::io::Result<Response> {
        if self.conn.is_none() {
            self.conn = Some(self.client.connect().await?);
        }
        let Some(c) = self.conn.as_mut() else {
            unreachable!("connected above")
        };
        match c.send(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    async fn send(&mut self, req: &Req) -> Response {
        match self.try_send(req).await {
            Ok(r) => r,
            // One retry on a fresh connection (the server may close an idle one).
            Err(_) => self.try_send(req).await.expect("the sidecar answers"),
        }
    }
}

fn json_req(method: &str, path: &str, body: &Value) -> Req {
    Req::new(method, path)
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// The consents of a test: id and a token minted by the demo issuer for `USER_A`.
struct Consent {
    id: String,
    token: String,
}

/// Registers `USER_A` and `BANK_1`, then creates `n` consents as `USER_A` for a customer
/// the sandbox bank knows and has the customer authorise each with the code from the
/// outbox.
async fn authorised_consents(hub: &Hub, spec: &SidecarSpec, n: usize) -> Vec<Consent> {
    let addr = spec.addr();
    let mut operator = TrustConn::new(
        addr,
        hub,
        Some(ClientCert::of(hub.pki.operator().expect("operator"))),
    );
    let user = hub.identity(USER_A).clone();
    let r = operator
        .send(&json_req(
            "PUT",
            &format!("/v1/participants/{USER_A}"),
            &json!({"name": "Fintech A", "roles": ["user"], "thumbprints": [user.x5t_s256]}),
        ))
        .await;
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
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
    assert!(matches!(r.status, 200 | 201), "{}", r.text());

    let customer_id = hub.customer_of("c-authorised-full");
    let mut api_user = TrustConn::new(addr, hub, Some(ClientCert::of(&user)));
    let mut customer = TrustConn::new(addr, hub, None);
    let r = customer
        .send(&json_req(
            "POST",
            "/v1/customer/sessions",
            &json!({"customer": customer_id}),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let session = r.json()["session"].as_str().expect("session").to_string();
    let mut outbox = Outbox::new(&spec.outbox);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = api_user
            .send(&json_req(
                "POST",
                "/v1/consents",
                &json!({"customer": customer_id, "providers": [BANK_1],
                        "permissions": ["accounts", "balances", "transactions"],
                        "purpose": "resilience"}),
            ))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().expect("id").to_string();
        let r = customer
            .send(
                &json_req(
                    "POST",
                    &format!("/v1/customer/consents/{id}/authorisations"),
                    &json!({}),
                )
                .bearer(&session),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let authorisation = r.json()["id"].as_str().expect("id").to_string();
        let code = outbox.code_for(&id);
        let r = customer
            .send(
                &json_req(
                    "POST",
                    &format!("/v1/customer/authorisations/{authorisation}/verify"),
                    &json!({ "code": code }),
                )
                .bearer(&session),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["status"], "authorised");
        let token = hub.mint_for(USER_A, &id);
        out.push(Consent { id, token });
    }
    out
}

/// The development notifier's outbox, read incrementally.
struct Outbox {
    path: PathBuf,
    codes: HashMap<String, String>,
    read: usize,
}

impl Outbox {
    fn new(path: &Path) -> Outbox {
        Outbox {
            path: path.to_owned(),
            codes: HashMap::new(),
            read: 0,
        }
    }

    fn code_for(&mut self, consent: &str) -> String {
        let found = poll_until(Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            if let Some(end) = text.rfind('\n') {
                if end + 1 > self.read {
                    for l in text[self.read..end].lines() {
                        if let Ok(v) = serde_json::from_str::<Value>(l) {
                            if let (Some(c), Some(code)) =
                                (v["consent_id"].as_str(), v["code"].as_str())
                            {
                                self.codes.insert(c.to_string(), code.to_string());
                            }
                        }
                    }
                    self.read = end + 1;
                }
            }
            self.codes.get(consent).cloned()
        });
        found.unwrap_or_else(|| panic!("no code for {consent} in the outbox"))
    }
}

/// The registry's head version (`GET /healthz`).
async fn head(hub: &Hub, spec: &SidecarSpec) -> u64 {
    let mut c = TrustConn::new(spec.addr(), hub, None);
    let r = c.send(&Req::get("/healthz")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["version"].as_u64().expect("version")
}

/// The registry's status of a consent.
async fn registry_status(hub: &Hub, spec: &SidecarSpec, id: &str) -> String {
    let mut c = TrustConn::new(spec.addr(), hub, Some(ClientCert::of(hub.identity(USER_A))));
    let r = c.send(&Req::get(format!("/v1/consents/{id}"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["status"].as_str().expect("status").to_string()
}

/// Waits until every gateway's feed position reaches `version`.
async fn caught_up(gates: &[Gate], version: u64, deadline: Duration) {
    let t0 = Instant::now();
    for g in gates {
        loop {
            let v = g.metric("hub_consent_feed_version").await;
            if v >= version as f64 {
                break;
            }
            assert!(
                t0.elapsed() < deadline,
                "{}: feed version {v} < {version} after {deadline:?}",
                g.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Revokes each consent as `USER_A` and waits until every gateway refuses it, with no
/// allow once a gateway's feed position has reached the revocation.
async fn revoke_and_wait(set: &[Consent], api_user: &mut TrustConn, gates: &[Gate]) {
    for c in set {
        let r = api_user
            .send(&Req::new("DELETE", format!("/v1/consents/{}", c.id)))
            .await;
        let revoked_at = revoked_version(&r);
        let answered = Instant::now();
        for g in gates {
            Prober::new(g)
                .until(
                    &c.token,
                    REVOKED,
                    &[OK],
                    Some(revoked_at),
                    answered,
                    Duration::from_secs(5),
                )
                .await;
        }
    }
}

const STALE: (u16, &str) = (503, "consent_state_stale");
const REVOKED: (u16, &str) = (403, "consent_revoked");
const OK: (u16, &str) = (200, "");
const NOT_FOUND: (u16, &str) = (403, "consent_not_found");

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn kill_9_mid_burst_loses_no_acknowledged_revocation_and_never_allows_past_the_bound() {
    const STALENESS: Duration = Duration::from_secs(2);
    const BURST: usize = 48;
    const CONTROLS: usize = 4;
    const KILL_AFTER: usize = 12;
    let rt = runtime();
    let (hub, spec, sidecar) = hub_with_sidecar(STALENESS.as_secs());
    let second = SecondGateway::start(&hub);
    let gates = gates(&hub, &second);
    let mut sidecar = Some(sidecar);

    rt.block_on(async {
        let consents = authorised_consents(&hub, &spec, BURST + CONTROLS).await;
        let (burst, controls) = consents.split_at(BURST);
        caught_up(&gates, head(&hub, &spec).await, Duration::from_secs(20)).await;
        for g in &gates {
            let mut p = Prober::new(g);
            for c in &consents {
                p.until(
                    &c.token,
                    OK,
                    &[STALE, NOT_FOUND],
                    None,
                    Instant::now(),
                    Duration::from_secs(10),
                )
                .await;
            }
        }

        // Four clients revoke as fast as the sidecar answers; SIGKILL once enough did. Each
        // acknowledged revocation is kept with the feed version the answer names.
        let acked = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
        let in_flight = Arc::new(Mutex::new(Vec::<String>::new()));
        let enough = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for chunk in burst.chunks(BURST / 4) {
            let ids: Vec<String> = chunk.iter().map(|c| c.id.clone()).collect();
            let (acked, in_flight, enough) = (acked.clone(), in_flight.clone(), enough.clone());
            let mut conn = TrustConn::new(
                spec.addr(),
                &hub,
                Some(ClientCert::of(hub.identity(USER_A))),
            );
            tasks.push(tokio::spawn(async move {
                for id in ids {
                    let req = Req::new("DELETE", format!("/v1/consents/{id}"));
                    match conn.try_send(&req).await {
                        Ok(r) if r.status == 200 => {
                            let version = revoked_version(&r);
                            let mut a = acked.lock().expect("acked");
                            a.insert(id, version);
                            if a.len() >= KILL_AFTER {
                                enough.notify_one();
                            }
                        }
                        Ok(r) => panic!("revocation answered {}: {}", r.status, r.text()),
                        Err(_) => {
                            // The sidecar is gone: committed or not, nobody was told.
                            in_flight.lock().expect("in flight").push(id);
                            return;
                        }
                    }
                }
            }));
        }
        enough.notified().await;
        sidecar.as_mut().expect("sidecar").kill9();
        let killed = Instant::now();
        for t in tasks {
            t.await.expect("revoking task");
        }
        let acked: HashMap<String, u64> = acked.lock().expect("acked").clone();
        let in_flight: Vec<String> = in_flight.lock().expect("in flight").clone();
        eprintln!(
            "{} of {BURST} revocations acknowledged before SIGKILL, {} cut off",
            acked.len(),
            in_flight.len()
        );
        assert!(acked.len() >= KILL_AFTER);
        assert!(acked.len() < BURST, "the kill landed mid-burst");

        // Sidecar down: every consent route answers 503 once the bound has passed, for
        // revoked and untouched consents alike; before that, an acknowledged revocation
        // may still be allowed by a gateway the feed had not reached yet (its feed position,
        // read before each probe, below the revocation's version), but once a gateway
        // refused it, it never allows it again.
        let watch: Vec<&Consent> = burst
            .iter()
            .filter(|c| acked.contains_key(&c.id))
            .chain(controls)
            .collect();
        let bound = killed + STALENESS + Duration::from_millis(500);
        let mut early_allows = 0usize;
        let mut probers: Vec<Prober> = gates.iter().map(Prober::new).collect();
        let mut refused: HashSet<(usize, String)> = HashSet::new();
        let mut sent_after_bound = 0usize;
        while Instant::now() < bound + Duration::from_secs(1) {
            for (gi, p) in probers.iter_mut().enumerate() {
                for c in &watch {
                    let position = p.position().await;
                    let sent = Instant::now();
                    let got = p.probe(&c.token).await;
                    let revoked = acked.contains_key(&c.id);
                    if let Some(&revoked_at) = acked.get(&c.id) {
                        assert_no_late_allow(p.gate.name, got.0, position, revoked_at);
                    }
                    if sent > bound {
                        sent_after_bound += 1;
                        assert_eq!(
                            (got.0, got.1.as_str()),
                            STALE,
                            "{} answered {got:?} {:?} after the sidecar died (bound {STALENESS:?})",
                            p.gate.name,
                            sent - killed
                        );
                        continue;
                    }
                    match (got.0, got.1.as_str()) {
                        REVOKED if revoked => {
                            refused.insert((gi, c.id.clone()));
                        }
                        OK => {
                            assert!(
                                !refused.contains(&(gi, c.id.clone())),
                                "{} allowed {} again after refusing it",
                                p.gate.name,
                                c.id
                            );
                            if revoked {
                                early_allows += 1;
                            }
                        }
                        STALE => {}
                        other => panic!("{}: unexpected {other:?}", p.gate.name),
                    }
                }
            }
        }
        assert!(sent_after_bound > 0, "probed past the bound");
        eprintln!(
            "sidecar down: {early_allows} allows of acknowledged revocations within the bound \
             (feed not delivered before the kill), {sent_after_bound} answers past it, all 503"
        );

        // Restart on the same database. The controls are revoked at once, most likely
        // while the gateways are still in their reconnect back-off: those revocations then
        // reach them in the backlog of the resumed feed. Every acknowledged revocation
        // must end up refused by both gateways.
        let restarted = Instant::now();
        sidecar = Some(spec.start());
        let mut api_user = TrustConn::new(
            spec.addr(),
            &hub,
            Some(ClientCert::of(hub.identity(USER_A))),
        );
        let mut control_versions = HashMap::new();
        for c in controls {
            let r = api_user
                .send(&Req::new("DELETE", format!("/v1/consents/{}", c.id)))
                .await;
            control_versions.insert(c.id.clone(), revoked_version(&r));
        }
        let head_after = head(&hub, &spec).await;
        let (mut before, mut allows) = (0usize, 0usize);
        for p in &mut probers {
            // Revocations acknowledged before the kill: 503 until the gateway hears the
            // sidecar again, then 403. A gateway counts itself fresh only once the resumed
            // feed's backlog is applied, so no 200 is acceptable.
            for c in burst.iter().filter(|c| acked.contains_key(&c.id)) {
                let w = p
                    .until(
                        &c.token,
                        REVOKED,
                        &[STALE],
                        Some(acked[&c.id]),
                        restarted,
                        Duration::from_secs(15),
                    )
                    .await;
                before += w.before;
            }
            // The controls, revoked after the restart: a gateway that reconnected before
            // a control's revocation serves it until the feed delivers it, never once its
            // feed position has reached that revocation's version.
            for c in controls {
                let w = p
                    .until(
                        &c.token,
                        REVOKED,
                        &[STALE, OK],
                        Some(control_versions[&c.id]),
                        restarted,
                        Duration::from_secs(15),
                    )
                    .await;
                before += w.before;
                allows += w.allows;
            }
        }
        caught_up(&gates, head_after, Duration::from_secs(10)).await;
        eprintln!(
            "after restart: head {head_after}; {before} answers before 403, of which {allows} \
             allows of controls (revoked after the restart) before their feed version arrived"
        );

        // After the resync both gateways agree with the registry on every consent: the
        // burst's (acknowledged, cut off, never sent) and the controls.
        let mut committed_unacked = 0;
        for c in &consents {
            let status = registry_status(&hub, &spec, &c.id).await;
            let want = match status.as_str() {
                "revoked" => REVOKED,
                "authorised" => OK,
                s => panic!("{}: registry says {s}", c.id),
            };
            let in_burst = burst.iter().any(|b| b.id == c.id);
            if in_burst && status == "revoked" && !acked.contains_key(&c.id) {
                committed_unacked += 1;
            }
            assert!(
                !(acked.contains_key(&c.id) && status != "revoked"),
                "acknowledged revocation of {} lost by the registry",
                c.id
            );
            for p in &mut probers {
                let got = p.probe(&c.token).await;
                assert_eq!(
                    (got.0, got.1.as_str()),
                    want,
                    "{} disagrees with the registry ({status}) on {}",
                    p.gate.name,
                    c.id
                );
            }
        }
        eprintln!("{committed_unacked} revocations committed but not acknowledged (in flight at the kill)");
        for g in &gates {
            let m = g.metrics().await;
            assert_eq!(
                metric(&m, "hub_consent_feed_resyncs_total"),
                Some(0.0),
                "{}: the feed resumed without a snapshot reload (no gap)\n{m}",
                g.name
            );
            assert!(
                metric(&m, "hub_consent_feed_reconnects_total").is_some_and(|n| n >= 1.0),
                "{}\n{m}",
                g.name
            );
            assert_eq!(
                metric(&m, "hub_consent_feed_version"),
                Some(head_after as f64),
                "{}\n{m}",
                g.name
            );
        }
    });
    drop(sidecar);
    drop(second);
    drop(hub);
}

#[test]
fn two_gateways_follow_one_sidecar_and_both_enforce_each_revocation() {
    const N: usize = 10;
    let rt = runtime();
    let (hub, spec, sidecar) = hub_with_sidecar(30);
    let second = SecondGateway::start(&hub);
    let gates = gates(&hub, &second);

    rt.block_on(async {
        let consents = authorised_consents(&hub, &spec, N).await;
        caught_up(&gates, head(&hub, &spec).await, Duration::from_secs(20)).await;
        let mut probers: Vec<Prober> = gates.iter().map(Prober::new).collect();
        for p in &mut probers {
            p.serves_all(&consents).await;
        }
        let mut api_user = TrustConn::new(
            spec.addr(),
            &hub,
            Some(ClientCert::of(hub.identity(USER_A))),
        );
        let mut worst = [Duration::ZERO; 2];
        for (i, c) in consents.iter().enumerate() {
            let r = api_user
                .send(&Req::new("DELETE", format!("/v1/consents/{}", c.id)))
                .await;
            let answered = Instant::now();
            // Both gateways are probed at the same time, each on its own connection; an
            // allow once a gateway's feed position has reached the revocation fails.
            let (a, b) = probers.split_at_mut(1);
            let at = Some(revoked_version(&r));
            let limit = Duration::from_secs(2);
            let (wa, wb) = tokio::join!(
                a[0].until(&c.token, REVOKED, &[OK], at, answered, limit),
                b[0].until(&c.token, REVOKED, &[OK], at, answered, limit),
            );
            worst[0] = worst[0].max(wa.after);
            worst[1] = worst[1].max(wb.after);
            eprintln!(
                "revocation {i}: gateway-1 refuses after {:?} ({} allows), gateway-2 after {:?} ({} allows)",
                wa.after, wa.allows, wb.after, wb.allows
            );
            // Every earlier revocation stays refused on both.
            for earlier in &consents[..=i] {
                for p in &mut probers {
                    let got = p.probe(&earlier.token).await;
                    assert_eq!((got.0, got.1.as_str()), REVOKED, "{}", p.gate.name);
                }
            }
        }
        eprintln!("slowest: gateway-1 {:?}, gateway-2 {:?}", worst[0], worst[1]);
        let head = head(&hub, &spec).await;
        caught_up(&gates, head, Duration::from_secs(5)).await;
        for g in &gates {
            let m = g.metrics().await;
            assert_eq!(metric(&m, "hub_consent_feed_version"), Some(head as f64));
            let staleness =
                metric(&m, "hub_consent_feed_staleness_seconds").expect("staleness gauge");
            assert!(staleness < 2.0, "{}: staleness {staleness}", g.name);
        }
    });
    drop(sidecar);
    drop(second);
    drop(hub);
}

#[test]
fn restart_while_serving_leaves_no_version_gap_and_no_stale_allow() {
    // Longer than a restart takes (stop, start, the follower's reconnect back-off ≤ 2 s),
    // so the gateways must stay fresh throughout.
    const STALENESS_SECS: u64 = 10;
    let rt = runtime();
    let (hub, spec, sidecar) = hub_with_sidecar(STALENESS_SECS);
    let second = SecondGateway::start(&hub);
    let gates = gates(&hub, &second);
    let mut sidecar = Some(sidecar);

    rt.block_on(async {
        let consents = authorised_consents(&hub, &spec, 12).await;
        let (load, rest) = consents.split_at(4);
        let (before, after) = rest.split_at(4);
        caught_up(&gates, head(&hub, &spec).await, Duration::from_secs(20)).await;
        for g in &gates {
            Prober::new(g).serves_all(&consents).await;
        }
        let mut api_user = TrustConn::new(
            spec.addr(),
            &hub,
            Some(ClientCert::of(hub.identity(USER_A))),
        );
        revoke_and_wait(before, &mut api_user, &gates).await;

        // Steady load through both gateways: the load consents must be allowed, the
        // revoked ones refused, on every answer, and /metrics sampled all along.
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for g in &gates {
            let tokens: Vec<(String, (u16, &'static str))> = load
                .iter()
                .map(|c| (c.token.clone(), OK))
                .chain(before.iter().map(|c| (c.token.clone(), REVOKED)))
                .collect();
            let (gate, halt) = (g.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let (g, stop) = (gate, halt);
                let mut p = Prober::new(&g);
                let mut answers = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    for (token, want) in &tokens {
                        let got = p.probe(token).await;
                        assert_eq!(
                            (got.0, got.1.as_str()),
                            *want,
                            "{} during the restart",
                            g.name
                        );
                        answers += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                answers
            }));
            let (g, stop) = (g.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut last = 0.0f64;
                let mut samples = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let m = g.metrics().await;
                    let v = metric(&m, "hub_consent_feed_version").expect("version");
                    let s = metric(&m, "hub_consent_feed_staleness_seconds").expect("staleness");
                    assert!(
                        v >= last,
                        "{}: feed version went back from {last} to {v}",
                        g.name
                    );
                    assert!(
                        s <= STALENESS_SECS as f64,
                        "{}: staleness {s} s past the bound",
                        g.name
                    );
                    last = v;
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                samples
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reconnects_before = {
            let mut r = Vec::new();
            for g in &gates {
                r.push(g.metric("hub_consent_feed_reconnects_total").await);
            }
            r
        };

        // Graceful restart on the same address and database.
        let t0 = Instant::now();
        sidecar.as_mut().expect("sidecar").stop();
        let down = t0.elapsed();
        sidecar = Some(spec.start());
        let restarted = t0.elapsed();
        eprintln!("sidecar stopped in {down:?}, back after {restarted:?}");

        // Revocations after the restart are enforced by both gateways.
        revoke_and_wait(after, &mut api_user, &gates).await;
        let head = head(&hub, &spec).await;
        caught_up(&gates, head, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let n = w.await.expect("load worker");
            assert!(n > 0);
        }
        for (g, before) in gates.iter().zip(reconnects_before) {
            let m = g.metrics().await;
            assert_eq!(
                metric(&m, "hub_consent_feed_resyncs_total"),
                Some(0.0),
                "{}: no snapshot reload (no gap)\n{m}",
                g.name
            );
            assert_eq!(metric(&m, "hub_consent_feed_version"), Some(head as f64));
            assert!(
                metric(&m, "hub_consent_feed_reconnects_total").is_some_and(|n| n > before),
                "{}: the restart was noticed\n{m}",
                g.name
            );
        }
    });
    drop(sidecar);
    drop(second);
    drop(hub);
}

/// A gateway whose sidecar cannot be reached at start is not ready (`/readyz` 503, saying
/// what it waits for) until the first snapshot is loaded; then it is, without a restart.
#[test]
fn a_gateway_is_ready_only_once_it_holds_the_control_plane_s_first_snapshot() {
    let (hub, spec, mut sidecar) = hub_with_sidecar(10);
    sidecar.stop();
    let notify = hub.dir.join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify).expect("notify socket");
    let mut second = SecondGateway::spawn_with(&hub, &[("NOTIFY_SOCKET", &notify)]);
    let waiting = second
        .readyz_until(Duration::from_secs(30), 503)
        .expect("/readyz 503 while the sidecar is down");
    // systemd hears of it as soon as it listens, sidecar or not (a binary upgrade's new
    // process must become the unit's main one while the sidecar is unreachable too).
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut note = [0u8; 256];
    let n = systemd
        .recv(&mut note)
        .expect("READY=1 while the sidecar is down");
    assert_eq!(
        String::from_utf8_lossy(&note[..n]),
        format!("READY=1\nMAINPID={}", second.pid)
    );
    let v: Value = serde_json::from_str(&waiting).expect("readyz JSON");
    assert_eq!(v["status"], "starting", "{waiting}");
    assert_eq!(
        v["waiting"], "the first snapshot of the control plane",
        "{waiting}"
    );
    // Still not ready a while later: nothing but the snapshot makes it so.
    assert!(
        second
            .readyz_until(Duration::from_millis(700), 200)
            .is_none(),
        "ready without a snapshot"
    );
    let _sidecar = spec.start();
    let ready = second.readyz_until(Duration::from_secs(30), 200);
    let text = std::fs::read_to_string(&second.stderr).unwrap_or_default();
    second.shutdown();
    let ready = ready.unwrap_or_else(|| panic!("not ready after the sidecar came up:\n{text}"));
    assert!(ready.contains("\"ready\""), "{ready}");
}
