//! The documented deployment path (docs/deploy.md) over real processes: `scripts/pki`
//! makes the material, `gateway check` accepts the shipped examples with it, and a hub run
//! on `conf/hub.example.toml` (ports, the bank's URL and one consent set) admits a request
//! made with a participant certificate from the PKI step and a token from `hubtool token`,
//! and refuses a token for another audience, saying in its log which claim differed. Also:
//! the trust sidecar's defaults and the examples agree on `iss` and `aud`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::http::admin_request;
use e2e::{accounts_path, bin, free_port, Client, ClientCert, Req, BANK_1, USER_A};
use sandbox::bank::{BankConfig, BankHandle};
use sandbox::pki::{thumbprint_of_pem, x5t_s256};

const HUB: &str = env!("CARGO_BIN_EXE_hub-under-test");
const HUBTOOL: &str = env!("CARGO_BIN_EXE_hubtool-under-test");
const TRUST: &str = env!("CARGO_BIN_EXE_trust-under-test");
const API_USER_FILE: &str = "api-user-100140000001";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A copy of the shipped examples beside `pki/` made by `scripts/pki` as docs/deploy.md
/// says; returns what the script printed.
fn deployment(dir: &Path) -> String {
    for file in [
        "hub.example.toml",
        "hub-trust.example.toml",
        "consents.jsonl",
    ] {
        std::fs::copy(root().join("conf").join(file), dir.join(file)).expect("copy conf/");
    }
    let out = run(Command::new(root().join("scripts/pki"))
        .arg("--dir")
        .arg(dir.join("pki"))
        .args(["--server", "bank=localhost,127.0.0.1"])
        .args(["--server", "trust=localhost,127.0.0.1"])
        .args([API_USER_FILE, "operator"]));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn scripts_pki_makes_what_the_examples_name_and_prints_the_hubs_thumbprints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let printed = deployment(dir.path());
    let pki = dir.path().join("pki");

    // The printed x5t#S256 is the hub's: SHA-256 of the leaf's DER, base64url unpadded.
    for name in [API_USER_FILE, "operator", "hub-client"] {
        let pem = std::fs::read(pki.join(format!("{name}.pem"))).expect("certificate");
        let expected = x5t_s256(&thumbprint_of_pem(&pem).expect("a certificate"));
        let line = format!("x5t#S256 {name} {expected}");
        assert!(
            printed.lines().any(|l| l == line),
            "{line:?} not in:\n{printed}"
        );
    }
    for entry in std::fs::read_dir(&pki).expect("pki dir") {
        let path = entry.expect("entry").path();
        let mode = path.metadata().expect("metadata").permissions().mode() & 0o777;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let want = if name.ends_with("-key.pem") {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode, want, "{name}: mode {mode:o}");
    }
    // Both examples pass `gateway check` as shipped, with nothing but that material.
    for example in ["hub.example.toml", "hub-trust.example.toml"] {
        run(Command::new(HUB)
            .args(["check", "--config"])
            .arg(dir.path().join(example)));
    }

    // A second run keeps every key and certificate, adds a participant with the same CA
    // and publishes a second token key beside the first.
    let ca_key = std::fs::read(pki.join("ca-key.pem")).expect("CA key");
    let user_cert = std::fs::read(pki.join(format!("{API_USER_FILE}.pem"))).expect("cert");
    run(Command::new(root().join("scripts/pki"))
        .arg("--dir")
        .arg(&pki)
        .args(["--token-kid", "k2", "fintech-x"]));
    assert_eq!(
        std::fs::read(pki.join("ca-key.pem")).expect("CA key"),
        ca_key
    );
    assert_eq!(
        std::fs::read(pki.join(format!("{API_USER_FILE}.pem"))).expect("cert"),
        user_cert
    );
    assert!(pki.join("fintech-x.pem").exists());
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pki.join("jwks.json")).expect("jwks")).expect("json");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, ["k1", "k2"]);
}

/// The example hub configuration as a TOML value.
fn example(name: &str) -> toml::Value {
    let text = std::fs::read_to_string(root().join("conf").join(name)).expect("example");
    toml::from_str(&text).expect("TOML")
}

#[test]
fn the_examples_accept_what_the_trust_sidecar_issues_with_its_unit() {
    // `trust serve`'s own default audience, from its real command line.
    let help = run(Command::new(TRUST).args(["serve", "--help"])).stdout;
    let help = String::from_utf8_lossy(&help);
    let audience = help
        .split("--audience <AUDIENCE>")
        .nth(1)
        .and_then(|rest| rest.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .expect("trust serve --audience has a default");
    // The unit's sidecar: iss is its public URL.
    let args = trust_unit_args();
    let arg = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    let listen = arg("--listen").expect("the unit sets --listen");
    let issuer = arg("--public-url").unwrap_or_else(|| format!("https://{listen}"));
    assert_eq!(arg("--audience").as_deref().unwrap_or(audience), audience);
    for name in ["hub.example.toml", "hub-trust.example.toml"] {
        let tokens = &example(name)["tokens"];
        assert_eq!(tokens["audience"].as_str(), Some(audience), "{name}");
        assert_eq!(tokens["issuer"].as_str(), Some(issuer.as_str()), "{name}");
    }
    // The gateway follows the sidecar's internal listener.
    let internal = arg("--internal-listen").expect("the unit sets --internal-listen");
    assert_eq!(
        example("hub-trust.example.toml")["trust"]["url"].as_str(),
        Some(format!("https://{internal}").as_str())
    );
}

/// A process this test started; killed (by its pid, through `Child`) when dropped.
struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// `conf/{example}` listening on free ports, `edit` applied, written to `dir/hub.toml`;
/// returns its path and the API and admin ports.
fn hub_config(
    dir: &Path,
    example_name: &str,
    edit: impl FnOnce(&mut toml::Value),
) -> (PathBuf, u16, u16) {
    let mut cfg = example(example_name);
    let (port, admin) = (free_port(), free_port());
    let server = cfg["server"].as_table_mut().expect("[server]");
    server.insert("listen".into(), format!("127.0.0.1:{port}").into());
    server.insert("admin_listen".into(), format!("127.0.0.1:{admin}").into());
    server.insert("grace_period_secs".into(), toml::Value::Integer(0));
    edit(&mut cfg);
    let path = dir.join("hub.toml");
    std::fs::write(&path, toml::to_string(&cfg).expect("TOML")).expect("write hub.toml");
    (path, port, admin)
}

/// `conf/hub.example.toml` routed to `bank`, with one consent for its first customer.
fn configure(dir: &Path, bank: &BankHandle) -> (PathBuf, u16, u16) {
    let (path, port, admin) = hub_config(dir, "hub.example.toml", |cfg| {
        let provider = &mut cfg["providers"].as_array_mut().expect("providers")[0];
        assert_eq!(provider["bin"].as_str(), Some(BANK_1));
        provider["upstreams"] = vec![toml::Value::from(bank.url())].into();
    });
    let customer = first_customer(bank);
    let consent = serde_json::json!({
        "id": "c-deploy", "api_user": USER_A, "customer": customer, "providers": [BANK_1],
        "permissions": ["accounts"], "accounts": null, "purpose": "deploy test",
        "created_at": "2024-01-01T00:00:00Z", "expires_at": null, "status": "authorised",
    });
    let mut consents = std::fs::read_to_string(dir.join("consents.jsonl")).expect("consents");
    consents.push_str(&format!("{consent}\n"));
    std::fs::write(dir.join("consents.jsonl"), consents).expect("write consents");
    (path, port, admin)
}

/// Starts `cmd` with its standard error in `dir/{name}.stderr`.
fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Running {
    let stderr = dir.join(format!("{name}.stderr"));
    let child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start a process");
    Running { child, stderr }
}

async fn start_hub(dir: &Path, config: &Path, admin: u16) -> Running {
    let mut hub = spawn(
        dir,
        "hub",
        Command::new(HUB).args(["run", "--config"]).arg(config),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    loop {
        if let Ok((200, _)) = admin_request(admin, "GET", "/readyz").await {
            return hub;
        }
        if let Ok(Some(status)) = hub.child.try_wait() {
            panic!("the hub exited ({status}):\n{}", hub.stderr());
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", hub.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hubtool_token(dir: &Path, config: &Path, extra: &[&str]) -> String {
    let pki = dir.join("pki");
    let out = run(Command::new(HUBTOOL)
        .args(["token", "--hub-config"])
        .arg(config)
        .arg("--key")
        .arg(pki.join("token-k1-key.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{API_USER_FILE}.pem")))
        .args([
            "--client-id",
            USER_A,
            "--consent",
            "c-deploy",
            "--scope",
            "accounts",
        ])
        .args(extra));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_on_the_example_admits_the_pki_steps_participant_with_the_token_tools_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    deployment(dir.path());
    let pki = dir.path().join("pki");
    let read = |name: &str| std::fs::read(pki.join(name)).expect("PKI file");
    let bank = start_bank(&pki).await;
    let (config, port, admin) = configure(dir.path(), &bank);
    let hub = start_hub(dir.path(), &config, admin).await;

    let cert = client_cert(&pki, API_USER_FILE);
    let ca = String::from_utf8(read("ca.pem")).expect("PEM");
    let client = Client::new(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &ca,
        Some(&cert),
    );
    let token = hubtool_token(dir.path(), &config, &[]);
    let answer = client.get(&accounts_path(BANK_1), Some(&token)).await;
    assert_eq!(answer.status, 200, "{}", answer.describe());
    assert_eq!(bank.request_count(), 1);

    // A token for another audience: refused, and the log says which claim and both values.
    let other = "https://other-hub.example";
    let wrong = hubtool_token(dir.path(), &config, &["--audience", other]);
    client
        .get(&accounts_path(BANK_1), Some(&wrong))
        .await
        .assert_problem(401, "invalid_token");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = hub.stderr();
        if let Some(l) = text.lines().find(|l| l.contains("its aud is not")) {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no aud mismatch logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        line.contains("open-api-hub") && line.contains(other),
        "{line}"
    );
    let stderr = hub.stderr();
    for t in [&token, &wrong] {
        let signature = t.rsplit('.').next().expect("signature");
        assert!(!stderr.contains(signature), "a token reached the log");
    }
    assert_eq!(
        bank.request_count(),
        1,
        "the refused request reached the bank"
    );
}

/// The sandbox bank with the server certificate `scripts/pki --server bank=…` made, trusting
/// the platform CA (which issued the hub's client certificate).
async fn start_bank(pki: &Path) -> BankHandle {
    let read = |name: &str| std::fs::read(pki.join(name)).expect("PKI file");
    sandbox::bank::start(BankConfig::new(
        bin(BANK_1),
        "Altyn Bank JSC",
        read("bank.pem"),
        read("bank-key.pem"),
        read("ca.pem"),
    ))
    .await
    .expect("sandbox bank")
}

/// The customer id (IIN) of the bank's first customer.
fn first_customer(bank: &BankHandle) -> String {
    let customer = bank.data().customers().next().expect("a customer");
    customer.iin.clone()
}

/// `NAME.pem` and `NAME-key.pem` of the PKI step.
fn client_cert(pki: &Path, name: &str) -> ClientCert {
    let read = |file: String| std::fs::read_to_string(pki.join(file)).expect("PKI file");
    ClientCert {
        cert_pem: read(format!("{name}.pem")),
        key_pem: read(format!("{name}-key.pem")),
    }
}

/// The arguments conf/systemd/hub-trust.service gives `/usr/local/bin/trust`.
fn trust_unit_args() -> Vec<String> {
    let unit = std::fs::read_to_string(root().join("conf/systemd/hub-trust.service"))
        .expect("unit")
        .replace("\\\n", " ");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/trust"));
    words.collect()
}

/// The sidecar exactly as conf/systemd/hub-trust.service runs it, its paths moved into
/// `dir`, its listeners on ephemeral loopback ports (its `--public-url`, hence its `iss`,
/// unchanged) and, to authorise a consent without an identity provider, development
/// customer sessions with codes in an outbox. Returns its public address and internal URL.
async fn start_trust(dir: &Path) -> (Running, SocketAddr, String) {
    let pki = format!("{}/", dir.join("pki").display());
    let state = format!("{}/", dir.display());
    let mut args: Vec<String> = trust_unit_args()
        .iter()
        .map(|w| {
            w.replace("/etc/hub/pki/", &pki)
                .replace("/var/lib/hub-trust/", &state)
        })
        .collect();
    for flag in ["--listen", "--internal-listen"] {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1] = "127.0.0.1:0".to_owned();
    }
    let ready = dir.join("trust.ready");
    let mut trust = spawn(
        dir,
        "trust",
        Command::new(TRUST)
            .args(&args)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--otp-outbox")
            .arg(dir.join("otp_outbox"))
            .arg("--dev-customer-sessions"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line: Option<serde_json::Value> = std::fs::read(&ready)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(line) = line {
            let addr = line["addr"].as_str().expect("addr").parse().expect("addr");
            let internal = line["internal_url"].as_str().expect("internal_url");
            return (trust, addr, internal.to_owned());
        }
        if let Ok(Some(status)) = trust.child.try_wait() {
            panic!("the sidecar exited ({status}):\n{}", trust.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "sidecar not ready:\n{}",
            trust.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json_req(method: &str, path: &str, body: serde_json::Value) -> Req {
    Req::new(method, path)
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// A consent of `customer` created by the API user and authorised by the customer with
/// the one-time code from the sidecar's outbox; returns its id.
async fn authorised_consent(dir: &Path, as_user: &Client, anon: &Client, customer: &str) -> String {
    let body = serde_json::json!({
        "customer": customer, "providers": [BANK_1], "permissions": ["accounts"],
        "purpose": "deploy test",
    });
    let consent = as_user.send(&json_req("POST", "/v1/consents", body)).await;
    assert_eq!(consent.status, 201, "{}", consent.describe());
    let id = consent.json()["id"].as_str().expect("id").to_owned();
    let session = anon
        .send(&json_req(
            "POST",
            "/v1/customer/sessions",
            serde_json::json!({ "customer": customer }),
        ))
        .await;
    assert_eq!(session.status, 201, "{}", session.describe());
    let session = session.json()["session"]
        .as_str()
        .expect("session")
        .to_owned();
    let started = anon
        .send(
            &Req::new("POST", format!("/v1/customer/consents/{id}/authorisations"))
                .bearer(&session)
                .body(""),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.describe());
    let aid = started.json()["id"].as_str().expect("id").to_owned();
    let outbox = std::fs::read_to_string(dir.join("otp_outbox")).expect("outbox");
    let code = outbox
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["consent_id"].as_str() == Some(id.as_str()))
        .and_then(|l| l["code"].as_str().map(str::to_owned))
        .expect("a one-time code in the outbox");
    let path = format!("/v1/customer/authorisations/{aid}/verify");
    let verified = anon
        .send(&json_req("POST", &path, serde_json::json!({ "code": code })).bearer(&session))
        .await;
    assert_eq!(verified.status, 200, "{}", verified.describe());
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_on_the_trust_example_admits_a_token_from_the_sidecar_its_unit_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    deployment(dir.path());
    let pki = dir.path().join("pki");
    let bank = start_bank(&pki).await;
    let ca = std::fs::read_to_string(pki.join("ca.pem")).expect("CA");
    let (_trust, public, internal_url) = start_trust(dir.path()).await;
    let internal: SocketAddr = internal_url
        .trim_start_matches("https://")
        .parse()
        .expect("internal address");

    // The operator registers the API user (its thumbprint from the PKI step) and the bank.
    let operator = Client::trust(internal, &ca, Some(&client_cert(&pki, "operator")));
    let user_cert = client_cert(&pki, API_USER_FILE);
    let x5t = x5t_s256(&thumbprint_of_pem(user_cert.cert_pem.as_bytes()).expect("cert"));
    for (bin, record) in [
        (
            USER_A,
            serde_json::json!({"name": "Qazaq Fintech LLP", "roles": ["user"], "thumbprints": [x5t]}),
        ),
        (
            BANK_1,
            serde_json::json!({"name": "Altyn Bank JSC", "roles": ["provider"], "provider_urls": [bank.url()]}),
        ),
    ] {
        let put = operator
            .send(&json_req("PUT", &format!("/v1/participants/{bin}"), record))
            .await;
        assert_eq!(put.status, 201, "{}", put.describe());
    }

    // The hub on conf/hub-trust.example.toml, [trust] url the sidecar's internal listener.
    let (config, port, admin) = hub_config(dir.path(), "hub-trust.example.toml", |cfg| {
        cfg["trust"]["url"] = internal_url.clone().into();
    });
    let hub = start_hub(dir.path(), &config, admin).await;

    // A consent authorised by the customer, and a token from the sidecar's token endpoint.
    let as_user = Client::trust(public, &ca, Some(&user_cert));
    let anon = Client::trust(public, &ca, None);
    let customer = first_customer(&bank);
    let consent = authorised_consent(dir.path(), &as_user, &anon, &customer).await;
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={consent}");
    let token = as_user
        .send(
            &Req::new("POST", "/oauth2/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form),
        )
        .await;
    assert_eq!(token.status, 200, "{}", token.describe());
    let token = token.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Through the hub, once its feed has the consent and its key set the sidecar's key.
    let client = Client::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &ca,
        Some(&user_cert),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = client.get(&accounts_path(BANK_1), Some(&token)).await;
        if answer.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\nhub:\n{}",
            answer.describe(),
            hub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bank.request_count() >= 1);
}
