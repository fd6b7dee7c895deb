//! Breakable sandbox banks (issue 14, point 7; contract §9 `faults_url`): a bank's fault
//! mode switched through its control listener, and each mode observed from a real HTTPS
//! client holding the hub's client identity — `schema` answers that fail
//! `docs/openapi/provider.json`, `slow` answers later than twice the SLA, `error` `500`s,
//! `down` a refused API port that listens again on the same port. The control listener
//! admits the hub's certificate only. Also the cluster's bank process (`hub-cluster bank`)
//! with its `faults_addr`.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::openapi::check;
use e2e::*;
use sandbox::bank::{self, BankConfig, BankError, BankHandle, FaultMode};
use sandbox::pki::{DevPki, PkiSpec};
use serde_json::Value;

/// The SLA the test banks are told: `slow` answers after 2.5 × this.
const SLA: Duration = Duration::from_millis(200);

/// A development PKI (the hub's client certificate, an API user's, a bank's server
/// certificate) in a temporary directory.
struct World {
    _dir: tempfile::TempDir,
    pki: DevPki,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = DevPki::generate(
            dir.path(),
            &PkiSpec::new(vec![bin(USER_A)], vec![bin(BANK_1)]),
        )
        .expect("dev PKI");
        World { _dir: dir, pki }
    }

    /// The bank's configuration: pinned to the hub's certificate, with a control listener.
    fn config(&self) -> BankConfig {
        let server = self.pki.provider_server(bin(BANK_1)).expect("bank cert");
        let mut cfg = BankConfig::new(
            bin(BANK_1),
            "Faulty Bank",
            server.chain_pem(),
            server.key_pem.clone(),
            self.pki.ca_cert_pem(),
        );
        cfg.customers = 5;
        cfg.allowed_client_thumbprints = Some(vec![self.pki.hub_client().thumbprint]);
        cfg.sla = SLA;
        cfg.faults_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        cfg
    }

    async fn bank(&self) -> BankHandle {
        bank::start(self.config()).await.expect("bank starts")
    }

    fn hub_cert(&self) -> ClientCert {
        ClientCert::of(self.pki.hub_client())
    }

    /// A client of `addr` presenting `cert`, holding its answers to no document.
    fn client(&self, addr: SocketAddr, cert: Option<&ClientCert>) -> Client {
        Client::new(addr, self.pki.ca_cert_pem(), cert).api(None)
    }
}

/// A started bank, with clients of its control route and of its API, both presenting the
/// hub's certificate.
async fn started() -> (World, BankHandle, Client, Client) {
    let w = World::new();
    let bank = w.bank().await;
    let control = w.client(bank.faults_addr().expect("addr"), Some(&w.hub_cert()));
    let api = w.client(bank.addr(), Some(&w.hub_cert()));
    (w, bank, control, api)
}

/// `POST /faults {"mode": mode}` with the hub's certificate.
async fn switch(control: &Client, mode: &str) -> Response {
    control
        .send(&switch_req(&format!(r#"{{"mode":"{mode}"}}"#)))
        .await
}

fn switch_req(body: &str) -> Req {
    Req::new("POST", "/faults")
        .header("content-type", "application/json")
        .body(body.to_owned())
}

/// Every route of the provider API, with the hub's headers for one of the bank's customers.
fn every_route(bank: &BankHandle) -> Vec<Req> {
    let customer = bank.data().customers().next().expect("a customer");
    let account = &customer.accounts[0].id;
    let with_hub = |path: String, permission: &str| {
        Req::get(path)
            .interaction_id("0b5e7c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b")
            .header("x-hub-api-user", USER_A)
            .header("x-hub-consent-id", "c-faults")
            .header("x-hub-customer", customer.iin.as_str())
            .header("x-hub-permissions", permission)
    };
    let mut routes = vec![
        with_hub("/v1/accounts".into(), "accounts"),
        with_hub(format!("/v1/accounts/{account}"), "accounts"),
        with_hub(format!("/v1/accounts/{account}/balances"), "balances"),
        with_hub(
            format!("/v1/accounts/{account}/transactions?limit=2"),
            "transactions",
        ),
    ];
    for ds in ["exchange-rates", "branches", "atms", "products"] {
        routes.push(Req::get(format!("/v1/open-data/{ds}")));
    }
    routes
}

/// Each answer to `routes` from `api` (status and whether it conforms to provider.json).
async fn answers(api: &Client, routes: &[Req]) -> Vec<(String, Response, Result<(), String>)> {
    let mut out = Vec::new();
    for req in routes {
        let r = api.send(req).await;
        let conforms = check(Api::Provider, "GET", req.target(), &r);
        out.push((req.target().to_owned(), r, conforms));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_answers_the_mode_and_bad_bodies_are_refused_with_problems() {
    let w = World::new();
    let bank = w.bank().await;
    let url = bank.faults_url().expect("faults_url");
    assert_eq!(
        url,
        format!("https://{}/faults", bank.faults_addr().expect("addr"))
    );
    let control = w.client(bank.faults_addr().expect("addr"), Some(&w.hub_cert()));

    let r = control.send(&Req::get("/faults")).await;
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"mode": "ok"}))
    );
    for (body, says) in [
        (r#"{"mode":"broken"}"#, "unknown variant `broken`"),
        (r#"{"mode":"ok","extra":1}"#, "unknown field `extra`"),
        (r#"{}"#, "missing field `mode`"),
        ("mode=ok", "expected value"),
    ] {
        let r = control.send(&switch_req(body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.describe());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let p = r.json();
        assert_eq!(
            (p["status"].as_u64(), p["title"].as_str()),
            (Some(400), Some("Bad Request"))
        );
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(r#""ok" | "schema" | "slow" | "error" | "down""#)
                && detail.contains(says),
            "{body}: {detail}"
        );
    }
    let r = control
        .send(&switch_req(&format!(
            r#"{{"mode":"{}"}}"#,
            "x".repeat(2000)
        )))
        .await;
    assert_eq!(r.status, 413, "{}", r.describe());
    let r = control.send(&Req::new("PUT", "/faults").body("{}")).await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST")));
    let r = control.send(&Req::get("/other")).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        bank.fault_mode(),
        FaultMode::Ok,
        "a refused switch changes nothing"
    );

    let r = switch(&control, "error").await;
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"mode": "error"}))
    );
    let r = control.send(&Req::get("/faults")).await;
    assert_eq!(r.json()["mode"], "error");
    assert_eq!(bank.fault_mode(), FaultMode::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_mode_breaks_the_provider_schema_on_every_route() {
    let (_w, bank, control, api) = started().await;
    let routes = every_route(&bank);

    for (path, r, conforms) in answers(&api, &routes).await {
        assert_eq!(r.status, 200, "{path}: {}", r.describe());
        conforms.unwrap_or_else(|e| panic!("ok mode, {path}: {e}"));
    }
    assert_eq!(switch(&control, "schema").await.status, 200);
    for (path, r, conforms) in answers(&api, &routes).await {
        assert_eq!(r.status, 200, "{path}: {}", r.describe());
        let e = conforms.expect_err(&format!("schema mode, {path} conforms: {}", r.describe()));
        assert!(e.contains("links"), "{path}: {e}");
        let body = r.json();
        assert!(body.get("links").is_none(), "{path}: {body}");
        assert!(body.get("data").is_some(), "{path}: {body}");
        if let Some(total) = body.get("meta").and_then(|m| m.get("total")) {
            assert!(total.is_string(), "{path}: {body}");
        }
    }
    // A request the bank refuses is refused as before: only answers that succeed break.
    let r = api.send(&Req::get("/v1/accounts")).await;
    assert_eq!(r.status, 400, "{}", r.describe());
    check(Api::Provider, "GET", "/v1/accounts", &r).expect("an error answer conforms");

    assert_eq!(switch(&control, "ok").await.status, 200);
    for (path, _, conforms) in answers(&api, &routes).await {
        conforms.unwrap_or_else(|e| panic!("back to ok, {path}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_mode_answers_later_than_twice_the_sla() {
    let (_w, bank, control, api) = started().await;
    assert_eq!(switch(&control, "slow").await.json()["mode"], "slow");
    for req in every_route(&bank).iter().take(2) {
        let t0 = Instant::now();
        let r = api.send(req).await;
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(took > 2 * SLA, "{}: answered in {took:?}", req.target());
    }
    // Back to ok (only lower bounds are asserted on timings: the machine may be busy).
    assert_eq!(switch(&control, "ok").await.json()["mode"], "ok");
    assert_eq!(api.send(&every_route(&bank)[0]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_mode_answers_500_on_every_route() {
    let (_w, bank, control, api) = started().await;
    assert_eq!(switch(&control, "error").await.status, 200);
    let routes = every_route(&bank);
    for (path, r, conforms) in answers(&api, &routes).await {
        assert_eq!(r.status, 500, "{path}: {}", r.describe());
        assert_eq!(r.json()["error"], "internal_error", "{path}");
        // The provider's documented error shape: a 500 says "failed", not "malformed".
        conforms.unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    assert_eq!(switch(&control, "ok").await.status, 200);
    assert_eq!(api.send(&routes[0]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_mode_refuses_connections_and_ok_listens_again_on_the_same_port() {
    let (_w, bank, control, api) = started().await;
    let addr = bank.addr();
    let open_data = Req::get("/v1/open-data/atms");
    // A keep-alive connection that has been served.
    let mut kept = api.connect().await.expect("connect");
    assert_eq!(kept.send(&open_data).await.expect("served").status, 200);

    let r = switch(&control, "down").await;
    assert_eq!((r.status, r.json()["mode"].as_str()), (200, Some("down")));
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert_eq!(
        refused.as_ref().map_err(std::io::Error::kind).err(),
        Some(ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    assert!(
        kept.closed_within(Duration::from_secs(5)).await,
        "the kept-alive connection is closed"
    );
    // The control listener stays up.
    assert_eq!(
        control.send(&Req::get("/faults")).await.json()["mode"],
        "down"
    );

    assert_eq!(switch(&control, "ok").await.json()["mode"], "ok");
    let r = api.send(&open_data).await;
    assert_eq!(r.status, 200, "served again on {addr}");
    assert_eq!(bank.addr(), addr);
    // And down again, up again: the port follows every switch.
    assert_eq!(switch(&control, "down").await.status, 200);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(switch(&control, "schema").await.status, 200);
    assert_eq!(api.send(&open_data).await.status, 200);
    bank.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_route_admits_only_the_hub_certificate() {
    let w = World::new();
    let bank = w.bank().await;
    let faults = bank.faults_addr().expect("addr");
    let user = ClientCert::of(w.pki.api_user(bin(USER_A)).expect("user cert"));
    let untrusted = ClientCert::of(w.pki.untrusted_client());
    for (who, cert) in [
        ("no certificate", None),
        ("an API user's certificate", Some(&user)),
        ("a certificate of another CA", Some(&untrusted)),
    ] {
        let r = w
            .client(faults, cert)
            .try_send(&switch_req(r#"{"mode":"error"}"#))
            .await;
        assert!(r.is_err(), "{who} was served: {r:?}");
    }
    assert_eq!(bank.fault_mode(), FaultMode::Ok);
    let api = w.client(bank.addr(), Some(&w.hub_cert()));
    assert_eq!(api.send(&Req::get("/v1/open-data/atms")).await.status, 200);
    let hub = w.client(faults, Some(&w.hub_cert()));
    assert_eq!(switch(&hub, "error").await.status, 200);
}

#[tokio::test]
async fn a_control_listener_without_pinned_certificates_is_refused() {
    let w = World::new();
    let mut cfg = w.config();
    cfg.allowed_client_thumbprints = None;
    assert!(matches!(
        bank::start(cfg).await,
        Err(BankError::FaultsUnpinned)
    ));
    let mut cfg = w.config();
    cfg.allowed_client_thumbprints = Some(Vec::new());
    assert!(matches!(
        bank::start(cfg).await,
        Err(BankError::FaultsUnpinned)
    ));
    // Without a control listener, nothing changes for an unpinned bank.
    let mut cfg = w.config();
    cfg.allowed_client_thumbprints = None;
    cfg.faults_listen = None;
    let b = bank::start(cfg).await.expect("starts");
    assert_eq!((b.faults_addr(), b.faults_url()), (None, None));
}

/// The cluster's bank process, started by its pid and stopped by it.
struct BankProcess(Child);

impl Drop for BankProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hub-cluster bank --spec FILE` (the cluster's bank process) runs the control listener
/// and names it in its ready file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_bank_process_writes_and_serves_its_faults_addr() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = w.pki.provider_server(bin(BANK_1)).expect("bank cert");
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, server.chain_pem()).expect("chain");
    let spec = devhub::cluster::BankSpec {
        bin: BANK_1.into(),
        name: "Cluster Bank".into(),
        chain,
        key: server.key_path.clone(),
        client_ca: w.pki.ca_cert_path().to_path_buf(),
        hub_client_cert: w.pki.hub_client().cert_path.clone(),
        customers: 3,
        seed: 1,
        sla_ms: 200,
        ready_file: dir.path().join("bank.ready"),
    };
    let spec_file = dir.path().join("bank.json");
    std::fs::write(&spec_file, serde_json::to_string(&spec).expect("spec")).expect("write spec");
    let child = Command::new(env!("CARGO_BIN_EXE_cluster-under-test"))
        .arg("bank")
        .arg("--spec")
        .arg(&spec_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the bank process");
    let mut process = BankProcess(child);
    let ready = ready_line(&mut process, &spec.ready_file);
    let addr_of = |key: &str| -> SocketAddr {
        ready[key]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{key}: {ready}"))
    };
    let (api, faults) = (addr_of("addr"), addr_of("faults_addr"));
    assert!(faults.ip().is_loopback() && faults != api, "{ready}");

    let control = w.client(faults, Some(&w.hub_cert()));
    let api = w.client(api, Some(&w.hub_cert()));
    assert_eq!(switch(&control, "error").await.status, 200);
    assert_eq!(
        api.send(&Req::get("/v1/open-data/products")).await.status,
        500
    );
    assert_eq!(switch(&control, "slow").await.status, 200);
    let t0 = Instant::now();
    assert_eq!(
        api.send(&Req::get("/v1/open-data/products")).await.status,
        200
    );
    assert!(
        t0.elapsed() > Duration::from_millis(400),
        "the spec's SLA: {:?}",
        t0.elapsed()
    );
}

/// The JSON of the ready file, once written (fails if the process exits first).
fn ready_line(process: &mut BankProcess, file: &Path) -> Value {
    let path: PathBuf = file.to_path_buf();
    let line = poll_until(Duration::from_secs(30), || {
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("the bank process exited: {status}");
        }
        std::fs::read_to_string(&path).ok()
    })
    .expect("the bank process wrote its ready file");
    serde_json::from_str(&line).expect("ready file JSON")
}
