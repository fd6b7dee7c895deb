//! The hub under test as a real child process: `devhub::prepare` generates the PKI,
//! the token issuer, the sandbox banks (in this process) and `hub.toml`; a test may edit
//! the configuration and the consents before the hub binary is spawned; readiness is
//! polled on `/readyz`. A watchdog shell between the test process and the hub ends the hub
//! (and removes its directory) when the test process goes away, so hubs kept in statics
//! never outlive the test binary.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use consent_cache::{Bin, Permission};
use devhub::{DemoArgs, Prepared};
use gateway::config::{FileConfig, ParticipantSection, ProviderSection, ServerSection};
use policy::directory::{ParticipantStatus, Role};
use policy::QuotaSettings;
use rustls::ClientConfig;
use sandbox::bank::BankHandle;
use sandbox::pki::{DevPki, Identity};
use sandbox::tokens::{AccessClaims, DevIssuer};
use serde_json::{json, Value};

use crate::http::{
    admin_request, connect_tls, connect_tls_from, tls_config, ClientCert, Conn, H2Conn, Req,
    Response, TlsConn, TlsVersions,
};
use crate::openapi::Api;

/// The demo's first API user (active).
pub const USER_A: &str = "100140000001";
/// The demo's second API user (active).
pub const USER_B: &str = "100140000002";
/// The demo's suspended API user.
pub const USER_SUSPENDED: &str = "100140000003";
/// The demo's first provider bank.
pub const BANK_1: &str = "990340000011";
/// The demo's second provider bank.
pub const BANK_2: &str = "990340000022";
/// Every permission a consent route needs.
pub const ALL_PERMISSIONS: [Permission; 3] = [
    Permission::Accounts,
    Permission::Balances,
    Permission::Transactions,
];

/// How long a hub may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of the hub binary as Cargo built it for this package's integration tests.
#[macro_export]
macro_rules! hub_exe {
    () => {
        env!("CARGO_BIN_EXE_hub-under-test")
    };
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A BIN from a literal.
pub fn bin(s: &str) -> Bin {
    Bin::parse(s).expect("a 12-digit BIN")
}

/// A free loopback port for the hub to bind (checked free, then released). Ports are taken
/// below the kernel's ephemeral range (where the banks' listeners and every client socket
/// get theirs), from a random start, and never handed out twice by this process.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let seed = uuid::Uuid::new_v4().as_u128();
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let taken = taken.get_or_insert_with(HashSet::new);
    for i in 0..SPAN {
        let port = LOW + ((seed as u16 % SPAN) + i) % SPAN;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// A port where nothing listens (for an unreachable provider).
pub fn closed_port() -> u16 {
    free_port()
}

/// A two-worker runtime for what a test runs in-process beside the hub (a sidecar, a
/// receiver), so that it keeps serving while the test thread blocks.
pub fn peers_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Polls `f` every 20 ms until it yields `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an unlabelled sample (`name value`) in a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

/// The consent feed position a gateway reports on its admin listener
/// (`hub_consent_feed_version`): every change of the trust sidecar's feed up to it is in
/// the consent store its requests read.
pub async fn feed_version(admin: SocketAddr) -> u64 {
    let (status, body) = admin_request(admin, "GET", "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200, "{body}");
    let v = metric(&body, "hub_consent_feed_version")
        .unwrap_or_else(|| panic!("no hub_consent_feed_version in\n{body}"));
    v as u64
}

/// Fails on a late allow: a `200` for a revoked consent, from a request sent when the
/// gateway's feed position (read just before sending it) had already reached the
/// revocation's feed version (`revoked_at`, from the sidecar's answer to the revocation).
/// A `200` before that is the feed's delay, not a fault.
#[track_caller]
pub fn assert_no_late_allow(who: &str, status: u16, position: u64, revoked_at: u64) {
    assert!(
        status != 200 || position < revoked_at,
        "{who}: allowed a consent revoked at feed version {revoked_at} although its feed \
         position was already {position}"
    );
}

/// The feed version the trust sidecar's answer to a revocation names (`version`: the
/// change that carries it), after checking the answer says `revoked`.
#[track_caller]
pub fn revoked_version(answer: &Response) -> u64 {
    assert_eq!(answer.status, 200, "{}", answer.text());
    let v = answer.json();
    assert_eq!(v["status"], "revoked", "{v}");
    v["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no feed version in the revocation's answer: {v}"))
}

/// The options as the `devhub` command line would give them to `devhub::prepare` (parsed
/// by clap, so options the development hub gains later keep their defaults).
fn demo_args(port: u16, admin_port: u16, dir: &Path) -> DemoArgs {
    use clap::{Args, FromArgMatches};
    let cmd = DemoArgs::augment_args(clap::Command::new("demo").no_binary_name(true));
    let matches = cmd
        .try_get_matches_from([
            "--port".to_string(),
            port.to_string(),
            "--admin-port".to_string(),
            admin_port.to_string(),
            "--dir".to_string(),
            dir.display().to_string(),
            "--customers".to_string(),
            "50".to_string(),
            "--threads".to_string(),
            "1".to_string(),
            // Consents from `consents.jsonl`, which tests edit; the trust feed tests
            // start their own sidecar and switch the configuration to `[trust]`.
            "--consents-from".to_string(),
            "file".to_string(),
            "--prepare-only".to_string(),
        ])
        .expect("demo arguments");
    DemoArgs::from_arg_matches(&matches).expect("demo arguments")
}

/// What a test may change before the hub starts.
pub struct Setup<'a> {
    /// Everything the demo generated (PKI, issuer, banks, paths).
    pub prepared: &'a Prepared,
    /// `hub.toml`, parsed into the hub's own configuration type; written back before the
    /// hub starts.
    pub config: FileConfig,
    /// `consents.jsonl`, one JSON value per record; written back before the hub starts.
    pub consents: Vec<Value>,
}

impl Setup<'_> {
    /// The `[[providers]]` entry of a provider.
    pub fn provider_mut(&mut self, bin: &str) -> &mut ProviderSection {
        self.config
            .providers
            .iter_mut()
            .find(|p| p.bin.get_ref() == bin)
            .unwrap_or_else(|| panic!("no [[providers]] with bin {bin}"))
    }

    /// The `[[participants]]` entry of a participant.
    pub fn participant_mut(&mut self, bin: &str) -> &mut ParticipantSection {
        self.config
            .participants
            .iter_mut()
            .find(|p| p.bin.get_ref() == bin)
            .unwrap_or_else(|| panic!("no [[participants]] with bin {bin}"))
    }

    /// A trust sidecar's configuration on this world's development PKI (the hub's server
    /// identity, the platform CA), its database in the hub's directory, listening on an
    /// ephemeral loopback port, the hub's client certificate allowed to read the feed.
    pub fn trust_config(&self) -> trust::Config {
        let pki = &self.prepared.pki;
        let mut c = trust::Config::new(
            "127.0.0.1:0".parse().expect("addr"),
            self.prepared.dir.join("trust.db"),
            pki.hub_server().cert_path.clone(),
            pki.hub_server().key_path.clone(),
            pki.ca_cert_path().to_owned(),
        );
        c.hub_certs = vec![pki.hub_client().cert_path.clone()];
        c
    }

    /// The `[server]` section.
    pub fn server_mut(&mut self) -> &mut ServerSection {
        &mut self.config.server
    }

    /// Adds a provider participant and its `[[providers]]` entry.
    pub fn add_provider(&mut self, bin: &str, upstream: &str, published: bool) {
        self.config.participants.push(ParticipantSection::new(
            bin,
            &format!("E2E provider {bin}"),
            &[Role::Provider],
            ParticipantStatus::Active,
        ));
        let mut p = ProviderSection::new(bin, &[upstream.to_string()]);
        p.published = published;
        p.sni = Some("localhost".into());
        p.timeout_ms = 2000;
        p.connect_timeout_ms = 500;
        self.config.providers.push(p);
    }

    /// Sets one rate limit (`per_user`, `per_user_provider`, `per_consent_route`,
    /// `per_ip_open_data`).
    pub fn set_limit(&mut self, kind: &str, per_second: u32, burst: u32) {
        let quota = QuotaSettings::new(per_second, burst).expect("a non-zero quota");
        let limits = &mut self.config.limits;
        let slot = match kind {
            "per_user" => &mut limits.per_user,
            "per_user_provider" => &mut limits.per_user_provider,
            "per_consent_route" => &mut limits.per_consent_route,
            "per_ip_open_data" => &mut limits.per_ip_open_data,
            other => panic!("no rate limit {other:?}"),
        };
        *slot = quota;
    }

    /// Limits high enough never to interfere with a test.
    pub fn unlimited(&mut self) {
        for kind in [
            "per_user",
            "per_user_provider",
            "per_consent_route",
            "per_ip_open_data",
        ] {
            self.set_limit(kind, 100_000, 100_000);
        }
    }

    /// Appends an authorised consent record (no expiry).
    pub fn add_consent(
        &mut self,
        id: &str,
        api_user: &str,
        customer: &str,
        providers: &[&str],
        permissions: &[Permission],
    ) {
        self.consents.push(json!({
            "id": id,
            "api_user": api_user,
            "customer": customer,
            "providers": providers,
            "permissions": permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "accounts": null,
            "purpose": "e2e",
            "created_at": "2024-01-01T00:00:00Z",
            "expires_at": null,
            "status": "authorised",
        }));
    }
}

/// A client identity towards the hub plus the trust anchor for its server certificate.
/// Every answer it receives is held to the hub's OpenAPI document unless [`Client::api`]
/// names another server's (the trust sidecar, a sandbox bank).
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    api: Option<Api>,
}

impl Client {
    /// A client presenting `cert` (or none) and trusting `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: &str, cert: Option<&ClientCert>) -> Client {
        Client::with_versions(addr, ca_pem, cert, TlsVersions::Default)
    }

    /// Same, with a choice of TLS versions.
    pub fn with_versions(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&ClientCert>,
        versions: TlsVersions,
    ) -> Client {
        Client {
            addr,
            h1: tls_config(ca_pem, cert, &[b"http/1.1"], versions),
            h2: tls_config(ca_pem, cert, &[b"h2"], versions),
            api: Some(Api::Hub),
        }
    }

    /// A client of the trust sidecar at `addr`: its answers are held to the sidecar's
    /// OpenAPI document.
    pub fn trust(addr: SocketAddr, ca_pem: &str, cert: Option<&ClientCert>) -> Client {
        Client::new(addr, ca_pem, cert).api(Some(Api::Trust))
    }

    /// Holds this client's answers to `api`'s OpenAPI document instead of the hub's
    /// (`None`: to none, for a server no document describes).
    pub fn api(mut self, api: Option<Api>) -> Client {
        self.api = api;
        self
    }

    /// Opens an HTTP/1.1 connection (keep-alive: send several requests on it).
    pub async fn connect(&self) -> std::io::Result<TlsConn> {
        let conn = Conn::new(connect_tls(self.addr, self.h1.clone()).await?);
        Ok(conn.checked_against(self.api))
    }

    /// Opens an HTTP/1.1 connection from the local address `local` (e.g. 127.0.0.2: another
    /// client IP to the hub, which listens on 127.0.0.1).
    pub async fn connect_from(&self, local: IpAddr) -> std::io::Result<TlsConn> {
        let conn = Conn::new(connect_tls_from(local, self.addr, self.h1.clone()).await?);
        Ok(conn.checked_against(self.api))
    }

    /// Opens an HTTP/2 connection.
    pub async fn h2(&self) -> std::io::Result<H2Conn> {
        let conn = H2Conn::connect(self.addr, self.h2.clone()).await?;
        Ok(conn.checked_against(self.api))
    }

    /// Sends one request on a fresh connection.
    pub async fn try_send(&self, req: &Req) -> std::io::Result<Response> {
        self.connect().await?.send(req).await
    }

    /// Sends one request on a fresh connection; panics on transport errors.
    pub async fn send(&self, req: &Req) -> Response {
        self.try_send(req)
            .await
            .unwrap_or_else(|e| panic!("{} {}: transport error {e}", req.method(), req.target()))
    }

    /// `GET path`, with a bearer token when given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut req = Req::get(path);
        if let Some(t) = token {
            req = req.bearer(t);
        }
        self.send(&req).await
    }
}

/// `/v1/providers/{p}/accounts`
pub fn accounts_path(provider: &str) -> String {
    format!("/v1/providers/{provider}/accounts")
}

/// `/v1/providers/{p}/accounts/{a}`
pub fn account_path(provider: &str, account: &str) -> String {
    format!("/v1/providers/{provider}/accounts/{account}")
}

/// `/v1/providers/{p}/accounts/{a}/balances`
pub fn balances_path(provider: &str, account: &str) -> String {
    format!("/v1/providers/{provider}/accounts/{account}/balances")
}

/// `/v1/providers/{p}/accounts/{a}/transactions[?query]`
pub fn transactions_path(provider: &str, account: &str, query: &str) -> String {
    if query.is_empty() {
        format!("/v1/providers/{provider}/accounts/{account}/transactions")
    } else {
        format!("/v1/providers/{provider}/accounts/{account}/transactions?{query}")
    }
}

/// `/v1/open-data/{p}/{dataset}`
pub fn open_data_path(provider: &str, dataset: &str) -> String {
    format!("/v1/open-data/{provider}/{dataset}")
}

/// A running hub, its sandbox banks and everything needed to talk to it.
pub struct Hub {
    /// The mTLS API listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The directory holding every generated file (removed when the hub stops).
    pub dir: PathBuf,
    /// `hub.toml`.
    pub config_path: PathBuf,
    /// `consents.jsonl`.
    pub consents_path: PathBuf,
    /// The audit journal.
    pub audit_path: PathBuf,
    /// The demo manifest (contract §9), with a token per consent.
    pub manifest: Value,
    /// The development PKI.
    pub pki: DevPki,
    /// The development token issuer (its key is in the hub's JWKS).
    pub issuer: DevIssuer,
    banks: Vec<BankHandle>,
    runtime: Option<tokio::runtime::Runtime>,
    pid: u32,
    watchdog: Option<Child>,
    watchdog_stdin: Option<ChildStdin>,
    stderr_path: PathBuf,
}

impl Hub {
    /// Starts a hub on the demo configuration.
    pub fn start(exe: &str) -> Hub {
        Hub::start_with(exe, |_| {})
    }

    /// Starts a hub after `edit` changed the generated configuration and consents. A hub
    /// that dies during start-up (e.g. a port taken meanwhile) is retried on new ports.
    pub fn start_with(exe: &str, edit: impl Fn(&mut Setup<'_>) + Send + 'static) -> Hub {
        let exe = exe.to_string();
        // `prepare` drives its own runtime with `block_on`, which must not happen on a
        // thread that already runs one (the calling test may be async).
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            for _ in 0..3 {
                match Hub::start_blocking(&exe, &edit) {
                    Ok(hub) => return hub,
                    Err(e) => errors.push(e),
                }
            }
            panic!("the hub did not start:\n{}", errors.join("\n---\n"))
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    fn start_blocking(exe: &str, edit: &dyn Fn(&mut Setup<'_>)) -> Result<Hub, String> {
        let dir = tempfile::Builder::new()
            .prefix("hub-e2e-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let port = free_port();
        let admin_port = free_port();
        let prepared = devhub::prepare(&demo_args(port, admin_port, &dir)).expect("demo prepare");
        let config_path = prepared.config.clone();
        let consents_path = prepared.dir.join("consents.jsonl");
        let config = read_config(&config_path);
        let consents: Vec<Value> = std::fs::read_to_string(&consents_path)
            .expect("consents.jsonl")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("consent line"))
            .collect();
        let mut setup = Setup {
            prepared: &prepared,
            config,
            consents,
        };
        // Stop fast: the tests never rely on the shutdown grace period.
        setup.server_mut().grace_period_secs = 0;
        setup.server_mut().shutdown_timeout_secs = 2;
        edit(&mut setup);
        let Setup {
            config, consents, ..
        } = setup;
        write_config(&config_path, &config);
        write_consents(&consents_path, &consents);
        let audit_path = config.audit.path.clone();

        let stderr_path = dir.join("hub.stderr");
        let stdout_path = dir.join("hub.stdout");
        // The watchdog: runs the hub, prints its pid, and ends it (then removes the
        // directory) once its standard input closes, i.e. when the test drops the hub
        // or the test process exits for any reason.
        let script = r#"RUST_LOG="${RUST_LOG:-info}" "$0" run --config "$1" >"$2" 2>"$3" &
hub=$!
echo "$hub"
read -r _ignored
kill -TERM "$hub" 2>/dev/null
wait "$hub"
status=$?
[ -n "$4" ] && rm -rf "$4"
exit "$status""#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(exe)
            .arg(&config_path)
            .arg(&stdout_path)
            .arg(&stderr_path)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the hub");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("watchdog stdout"))
            .read_line(&mut line)
            .expect("hub pid");
        let pid: u32 = line.trim().parse().expect("hub pid");
        let watchdog_stdin = watchdog.stdin.take();

        let Prepared {
            manifest_json,
            banks,
            runtime,
            pki,
            issuer,
            dir: canonical_dir,
            ..
        } = prepared;
        let mut hub = Hub {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            // The same directory as `dir`, as the demo names it in every generated path.
            dir: canonical_dir,
            config_path,
            consents_path,
            audit_path,
            manifest: manifest_json,
            pki,
            issuer,
            banks,
            runtime: Some(runtime),
            pid,
            watchdog: Some(watchdog),
            watchdog_stdin,
            stderr_path,
        };
        hub.wait_ready()?;
        Ok(hub)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(w) = self.watchdog.as_mut() {
                if let Ok(Some(status)) = w.try_wait() {
                    return Err(format!(
                        "the hub exited during start-up ({status}); stderr:\n{}",
                        self.stderr_text()
                    ));
                }
            }
            if self.started(&rt) {
                // Another process may hold a port we picked (pingora then keeps retrying
                // the bind instead of failing), and would have answered for us.
                for port in [self.addr.port(), self.admin.port()] {
                    if !owns_listener(self.pid, port) {
                        return Err(format!(
                            "port {port} is listened on by another process than the hub"
                        ));
                    }
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the hub was not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                    self.stderr_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ready (`/readyz` 200), or serving while it waits for its control plane: a hub
    /// following a sidecar is not ready until the first snapshot, and tests of contract
    /// row 7 point it at no sidecar at all; such a hub is started once its API port
    /// accepts (tests with a sidecar wait for the feed themselves).
    fn started(&self, rt: &tokio::runtime::Runtime) -> bool {
        match rt.block_on(admin_request(self.admin, "GET", "/readyz")) {
            Ok((200, _)) => true,
            Ok((503, body)) => {
                body.contains("the first snapshot of the control plane")
                    && std::net::TcpStream::connect(self.addr).is_ok()
            }
            _ => false,
        }
    }

    /// The hub process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the hub with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// What the hub wrote to standard error so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The audit journal as written so far.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_path).unwrap_or_default()
    }

    /// The platform CA (PEM) that issued the hub's server certificate.
    pub fn ca_pem(&self) -> &str {
        self.pki.ca_cert_pem()
    }

    /// A PKI identity of an API user.
    pub fn identity(&self, user: &str) -> &Identity {
        self.pki.api_user(bin(user)).expect("a demo API user")
    }

    /// A client presenting the API user's registered certificate.
    pub fn client_as(&self, user: &str) -> Client {
        self.client_with(Some(&ClientCert::of(self.identity(user))))
    }

    /// A client presenting `cert` (or none).
    pub fn client_with(&self, cert: Option<&ClientCert>) -> Client {
        Client::new(self.addr, self.ca_pem(), cert)
    }

    /// A sandbox bank by BIN.
    pub fn bank(&self, provider: &str) -> &BankHandle {
        self.banks
            .iter()
            .find(|b| b.bin() == bin(provider))
            .expect("a demo bank")
    }

    /// The manifest's record of a consent (with `token` and `account_ids`).
    pub fn consent(&self, id: &str) -> &Value {
        self.manifest["consents"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no consent {id} in the manifest"))
    }

    /// The token the demo minted for a consent.
    pub fn token(&self, consent: &str) -> String {
        self.consent(consent)["token"]
            .as_str()
            .expect("token")
            .to_string()
    }

    /// Every account id of the consent's customer at its bank.
    pub fn accounts_of(&self, consent: &str) -> Vec<String> {
        self.consent(consent)["account_ids"]
            .as_array()
            .expect("account_ids")
            .iter()
            .map(|v| v.as_str().expect("account id").to_string())
            .collect()
    }

    /// The customer id (IIN) of a consent.
    pub fn customer_of(&self, consent: &str) -> String {
        self.consent(consent)["customer"]
            .as_str()
            .expect("customer")
            .to_string()
    }

    /// Valid claims for `user` on `consent`, bound to the user's registered certificate,
    /// issued now for an hour.
    pub fn claims(&self, user: &str, consent: &str, permissions: &[Permission]) -> AccessClaims {
        AccessClaims::for_consent(
            devhub::ISSUER,
            devhub::AUDIENCE,
            bin(user),
            consent,
            permissions,
            &self.identity(user).thumbprint,
            now_unix(),
            3600,
        )
        .expect("claims")
    }

    /// Signs claims with the hub's trusted issuer key.
    pub fn mint(&self, claims: &AccessClaims) -> String {
        self.issuer.mint(claims).expect("mint")
    }

    /// A fresh valid token for `user` on `consent` with every permission.
    pub fn mint_for(&self, user: &str, consent: &str) -> String {
        self.mint(&self.claims(user, consent, &ALL_PERMISSIONS))
    }

    /// One admin request: `(status, body)`.
    pub async fn admin(&self, method: &str, path: &str) -> (u16, String) {
        admin_request(self.admin, method, path)
            .await
            .expect("admin listener answers")
    }

    /// `POST /admin/reload`: `(status, JSON body)`.
    pub async fn reload(&self) -> (u16, Value) {
        let (status, body) = self.admin("POST", "/admin/reload").await;
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("reload answer is not JSON ({e}): {body}"));
        (status, v)
    }

    /// The configuration generation `/readyz` reports.
    pub async fn generation(&self) -> u64 {
        let (status, body) = self.admin("GET", "/readyz").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("readyz JSON");
        v["generation"].as_u64().expect("generation")
    }

    /// The `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin("GET", "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Rewrites `hub.toml` through `f` (for reload tests).
    pub fn edit_config(&self, f: impl FnOnce(&mut FileConfig)) {
        let mut config = read_config(&self.config_path);
        f(&mut config);
        write_config(&self.config_path, &config);
    }

    /// Rewrites `consents.jsonl` through `f` (for reload tests).
    pub fn edit_consents(&self, f: impl FnOnce(&mut Vec<Value>)) {
        let mut v: Vec<Value> = std::fs::read_to_string(&self.consents_path)
            .expect("consents.jsonl")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("consent line"))
            .collect();
        f(&mut v);
        write_consents(&self.consents_path, &v);
    }

    /// Stops the hub (SIGTERM through the watchdog, SIGKILL if it does not exit in time);
    /// returns the hub's exit status when it exited by itself.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        drop(self.watchdog_stdin.take());
        let mut status = None;
        if let Some(mut w) = self.watchdog.take() {
            status = poll_until(Duration::from_secs(15), || w.try_wait().ok().flatten());
            if status.is_none() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(self.pid.to_string())
                    .status();
                let _ = w.kill();
                let _ = w.wait();
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
        status
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
        for b in &self.banks {
            b.stop();
        }
        if let Some(rt) = self.runtime.take() {
            // Allowed inside an async context, unlike dropping the runtime.
            rt.shutdown_background();
        }
    }
}

/// Replaces a file atomically (write a temporary sibling, then rename), as a control
/// plane does: the hub, which watches the consent snapshot, never sees half a file.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".e2e-tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Reads a hub configuration file into the hub's own configuration type.
pub fn read_config(path: &Path) -> FileConfig {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    toml::from_str::<FileConfig>(&text)
        .unwrap_or_else(|e| panic!("{} parses as a hub configuration: {e}", path.display()))
}

/// Writes a configuration as the TOML file the hub reads (atomically).
pub fn write_config(path: &Path, config: &FileConfig) {
    let text = config.to_toml().expect("config serialises");
    replace_file(path, text.as_bytes());
}

/// Writes consent records as JSON Lines (atomically).
pub fn write_consents(path: &Path, consents: &[Value]) {
    let mut text = String::new();
    for c in consents {
        text.push_str(&c.to_string());
        text.push('\n');
    }
    replace_file(path, text.as_bytes());
}

/// The 1-based line of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
}

/// Runs `gateway audit verify` (the hub binary `exe`) on `files`, oldest first:
/// (exit code, standard output).
pub fn audit_verify(exe: &str, files: &[&Path]) -> (i32, String) {
    let out = Command::new(exe)
        .args(["audit", "verify"])
        .args(files)
        .output()
        .expect("run audit verify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Whether process `pid` holds the listening TCP socket of `127.0.0.1:port` or
/// `0.0.0.0:port` (Linux `/proc`; elsewhere assumed true).
pub fn owns_listener(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
            let (ip, p) = addr.split_once(':')?;
            let listening = *state == "0A"
                && u16::from_str_radix(p, 16).ok()? == port
                && (ip == "0100007F" || ip == "00000000");
            listening.then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}
