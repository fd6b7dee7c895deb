//! The trust sidecar and its gateways for `trust-bench`: the `trust` binary as a child
//! process (its own process group, SIGTERM to stop, CPU from `/proc`), gateways following
//! it (`gateway run` with `[trust]`), a keep-alive HTTP/1.1 client over mTLS, and the
//! registry set-up through the sidecar's own API: participants (operator), consents
//! created by API users and authorised by their customers with the one-time code from the
//! development outbox, tokens from the token endpoint, revocations.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use rustls::ClientConfig;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{io_at, os, HarnessError, Result};
use crate::fixture::{BenchEnv, ConsentSource, HubSettings};
use crate::procs::{self, Proc};
use crate::workload::Endpoint;

/// Longest a single exchange with the sidecar or a gateway may take.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a sidecar or a gateway may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn trust_err(what: impl std::fmt::Display) -> HarnessError {
    HarnessError::Trust(what.to_string())
}

// ---------------------------------------------------------------------------------------
// Processes

/// How to run the sidecar; kept so that a restart reuses the address and the database.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// The `trust` binary.
    pub exe: PathBuf,
    /// Loopback port (fixed, so that gateways find a restarted sidecar).
    pub port: u16,
    /// Folder for its log and outbox.
    pub dir: PathBuf,
    /// SQLite database (unused with `postgres`).
    pub db: PathBuf,
    /// The PostgreSQL database instead of `db` (several replicas may share it).
    pub postgres: Option<PgTarget>,
    /// Server certificate and key (the hub's development server identity: `localhost`).
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// Platform CA (client certificates must chain to it).
    pub ca: PathBuf,
    /// The operator's client certificate.
    pub operator_cert: PathBuf,
    /// The hub's client certificate (allowed on the snapshot and the feed).
    pub hub_cert: PathBuf,
    /// Token `iss`.
    pub issuer: String,
    /// Token `aud`.
    pub audience: String,
    /// Feed heartbeat interval.
    pub heartbeat_ms: u64,
    /// Token lifetime.
    pub token_lifetime_secs: i64,
}

/// A PostgreSQL database for `trust serve --postgres-url`: the URL has no password, the
/// password is in a file (never on a command line).
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// `postgres://role@127.0.0.1:port/db`.
    pub url: String,
    /// The role's password, in a file readable by its owner only.
    pub password_file: PathBuf,
}

/// A running sidecar (stopped with SIGTERM on drop).
pub struct Sidecar {
    /// The process group.
    pub proc: Proc,
    /// The listener.
    pub addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl SidecarSpec {
    /// The listener address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// The development notifier's outbox.
    pub fn outbox(&self) -> PathBuf {
        self.dir.join("otp_outbox")
    }

    /// Starts `trust serve` and waits for its start-up line (printed once it listens).
    pub fn start(&self) -> Result<Sidecar> {
        let log = self.dir.join("trust.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_at(&log))?;
        let mut cmd = self.command();
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        Self::spawn(&mut cmd, &log)
    }

    /// `trust serve` with this spec's flags (secrets in files, never on the line).
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .args(["--listen", &self.addr().to_string()]);
        match &self.postgres {
            Some(pg) => cmd
                .args(["--postgres-url", &pg.url])
                .arg("--postgres-password-file")
                .arg(&pg.password_file),
            None => cmd.arg("--db").arg(&self.db),
        };
        cmd.arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .arg("--client-ca")
            .arg(&self.ca)
            .arg("--operator-cert")
            .arg(&self.operator_cert)
            .arg("--hub-cert")
            .arg(&self.hub_cert)
            .arg("--otp-outbox")
            .arg(self.outbox())
            .arg("--dev-customer-sessions")
            // A load harness: thousands of consents, codes and customer sessions from one
            // machine, well past the per-customer, per-API-user and per-address limits.
            .args(["--codes-per-customer-hour", "1000000"])
            .args(["--codes-per-customer-day", "1000000"])
            .args(["--consents-per-user-minute", "1000000"])
            .args(["--open-consents-per-user", "1000000"])
            .args([
                "--address-per-minute",
                "1000000",
                "--address-burst",
                "1000000",
            ])
            .args(["--issuer", &self.issuer])
            .args(["--audience", &self.audience])
            .args(["--heartbeat-ms", &self.heartbeat_ms.to_string()])
            .args([
                "--token-lifetime-secs",
                &self.token_lifetime_secs.to_string(),
            ]);
        cmd
    }

    /// Spawns `cmd` and reads its start-up line (printed once it listens).
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Sidecar> {
        let mut proc = Proc::spawn("trust", cmd, Signal::SIGTERM)?;
        let stdout = proc
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| HarnessError::Process {
                name: "trust".into(),
                reason: "no stdout".into(),
            })?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(os("reading the sidecar's start-up line"))?;
        let v: Value = serde_json::from_str(&line).map_err(|_| HarnessError::Process {
            name: "trust".into(),
            reason: format!("did not start (see {})", log.display()),
        })?;
        let addr = v["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| trust_err(format!("start-up line {line:?}")))?;
        Ok(Sidecar {
            proc,
            addr,
            _stdout: reader,
        })
    }
}

/// A gateway process following the sidecar.
pub struct Gateway {
    /// Its name in reports.
    pub name: String,
    /// The process group.
    pub proc: Proc,
    /// The mTLS API listener.
    pub endpoint: Endpoint,
    /// The admin listener (`/metrics`).
    pub admin: SocketAddr,
    /// Its log.
    pub log: PathBuf,
}

/// Starts `gateway run` on a fresh configuration in `dir/name/` and waits for `/readyz`.
pub fn start_gateway(
    exe: &Path,
    env: &BenchEnv,
    dir: &Path,
    name: &str,
    threads: Option<usize>,
    banks: [SocketAddr; 2],
    consents: ConsentSource<'_>,
) -> Result<Gateway> {
    let gdir = dir.join(name);
    std::fs::create_dir_all(&gdir).map_err(io_at(&gdir))?;
    let (port, admin_port) = (procs::free_port()?, procs::free_port()?);
    let config = gdir.join("hub.toml");
    crate::fixture::write_hub_config(
        env,
        &HubSettings {
            port,
            admin_port,
            threads,
            consents,
            bank_urls: banks.map(|a| format!("https://{a}")),
            token_cache: 100_000,
        },
        &config,
    )?;
    let log = gdir.join("hub.log");
    let out = std::fs::File::create(&log).map_err(io_at(&log))?;
    let err = out.try_clone().map_err(io_at(&log))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut proc = Proc::spawn(name, &mut cmd, Signal::SIGINT)?;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let deadline = Instant::now() + START_TIMEOUT;
    while !matches!(procs::http_get(admin, "/readyz"), Ok((200, _))) {
        proc.ensure_running().map_err(|e| HarnessError::Process {
            name: name.into(),
            reason: format!("{e} (see {})", log.display()),
        })?;
        if Instant::now() > deadline {
            return Err(HarnessError::Process {
                name: name.into(),
                reason: format!("not ready after {START_TIMEOUT:?} (see {})", log.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(Gateway {
        name: name.into(),
        proc,
        endpoint: Endpoint::localhost(SocketAddr::from(([127, 0, 0, 1], port)))?,
        admin,
        log,
    })
}

/// One sample of a gateway's metric (a plain gauge or counter line), if present.
pub fn gateway_metric(admin: SocketAddr, name: &str) -> Result<Option<f64>> {
    let (status, body) = procs::http_get(admin, "/metrics")?;
    if status != 200 {
        return Err(HarnessError::Process {
            name: format!("{admin}"),
            reason: format!("/metrics answered {status}"),
        });
    }
    Ok(metric_value(&body, name))
}

/// The value of `name` in a Prometheus exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

/// Waits until the gateway's feed position reaches `version`.
pub fn wait_feed_version(g: &Gateway, version: u64, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let v = gateway_metric(g.admin, "hub_consent_feed_version")?.unwrap_or(0.0);
        if v >= version as f64 {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return Err(HarnessError::Process {
                name: g.name.clone(),
                reason: format!("feed version {v} < {version} after {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A TLS client configuration trusting `ca` and presenting no certificate (customers).
pub fn anonymous_config(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::load_certs(ca)? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The problem `code` (or OAuth `error`) of an error answer.
    pub fn code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v.get("code")
            .or_else(|| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// `status code` for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
        )
    }

    fn expect(self, status: u16, what: &str) -> Result<Reply> {
        if self.status == status {
            Ok(self)
        } else {
            Err(trust_err(format!("{what}: {}", self.describe())))
        }
    }
}

/// One keep-alive HTTP/1.1 connection over TLS, reopened when the server closed it.
pub struct HttpConn {
    endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    /// Connections opened so far.
    pub opened: u64,
}

impl HttpConn {
    /// A connection (opened on first use) to `endpoint` with `tls`.
    pub fn new(endpoint: Endpoint, tls: Arc<ClientConfig>) -> HttpConn {
        HttpConn {
            endpoint,
            tls,
            sender: None,
            opened: 0,
        }
    }

    async fn ready(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>> {
        if let Some(s) = self.sender.as_mut() {
            if s.ready().await.is_err() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let fail = |reason: String| HarnessError::Connect {
                addr: self.endpoint.addr,
                reason,
            };
            let connect = async {
                let tcp = TcpStream::connect(self.endpoint.addr)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                let tls = TlsConnector::from(self.tls.clone())
                    .connect(self.endpoint.server_name.clone(), tcp)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let (sender, conn) = http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok::<_, HarnessError>(sender)
            };
            let sender = tokio::time::timeout(IO_TIMEOUT, connect)
                .await
                .map_err(|_| fail("connect timed out".into()))??;
            self.opened += 1;
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| trust_err("no connection"))
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Reply> {
        let addr = self.endpoint.addr;
        let authority = HeaderValue::from_str(&self.endpoint.authority)
            .map_err(|e| HarnessError::Plan(format!("authority: {e}")))?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = path
            .parse()
            .map_err(|e| HarnessError::Plan(format!("path {path}: {e}")))?;
        let h = req.headers_mut();
        h.insert(HOST, authority);
        for (n, v) in headers {
            h.insert(n.clone(), v.clone());
        }
        let sender = self.ready().await?;
        let exchange = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Reply { status, body })
        };
        match tokio::time::timeout(IO_TIMEOUT, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(HarnessError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                self.sender = None;
                Err(HarnessError::Connect {
                    addr,
                    reason: "no answer in time".into(),
                })
            }
        }
    }

    /// `GET path` with a prepared `Authorization` value.
    pub async fn get_with(&mut self, path: &str, authorization: &HeaderValue) -> Result<Reply> {
        self.send(
            Method::GET,
            path,
            &[(AUTHORIZATION, authorization.clone())],
            Bytes::new(),
        )
        .await
    }

    /// A JSON request.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        body: &Value,
        bearer: Option<&str>,
    ) -> Result<Reply> {
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        if let Some(b) = bearer {
            headers.push((AUTHORIZATION, bearer_value(b)?));
        }
        self.send(method, path, &headers, Bytes::from(body.to_string()))
            .await
    }
}

/// `Bearer <token>` as a header value.
pub fn bearer_value(token: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| HarnessError::Plan(format!("token: {e}")))
}

/// The token request body for `client_id` and `consent_id`.
pub fn token_form(client_id: &str, consent_id: &str) -> Bytes {
    Bytes::from(format!(
        "grant_type=client_credentials&client_id={client_id}&consent_id={consent_id}"
    ))
}

/// `application/x-www-form-urlencoded`.
pub const FORM: HeaderValue = HeaderValue::from_static("application/x-www-form-urlencoded");

// ---------------------------------------------------------------------------------------
// The registry through the sidecar's API

/// The development notifier's outbox, read incrementally.
struct Outbox {
    path: PathBuf,
    read: usize,
    codes: HashMap<String, String>,
}

impl Outbox {
    async fn code_for(&mut self, consent: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(c) = self.codes.remove(consent) {
                return Ok(c);
            }
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            if let Some(end) = text.rfind('\n') {
                if end + 1 > self.read {
                    for l in text[self.read..end].lines() {
                        if let Ok(v) = serde_json::from_str::<Value>(l) {
                            if let (Some(id), Some(code)) =
                                (v["consent_id"].as_str(), v["code"].as_str())
                            {
                                self.codes.insert(id.to_string(), code.to_string());
                            }
                        }
                    }
                    self.read = end + 1;
                    continue;
                }
            }
            if Instant::now() > deadline {
                return Err(trust_err(format!(
                    "no one-time code for {consent} in the outbox"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Keep-alive connections to the sidecar as each of its callers, and what the set-up
/// created.
pub struct Registry {
    operator: HttpConn,
    users: Vec<HttpConn>,
    user_bins: Vec<String>,
    customer: HttpConn,
    anonymous: HttpConn,
    sessions: HashMap<String, String>,
    outbox: Outbox,
}

impl Registry {
    /// Connections to the sidecar at `addr` for the environment's users, the operator
    /// identity and customers.
    pub fn new(
        env: &BenchEnv,
        spec: &SidecarSpec,
        operator: &sandbox::pki::Identity,
    ) -> Result<Registry> {
        let ep = Endpoint::localhost(spec.addr())?;
        let ca = env.pki.ca_cert_path();
        let mut users = Vec::new();
        let mut user_bins = Vec::new();
        for (i, bin) in env.users.iter().enumerate() {
            let id = env.user_identity(i)?;
            users.push(HttpConn::new(
                ep.clone(),
                crate::tls::client_config(ca, &id.cert_path, &id.key_path, false)?,
            ));
            user_bins.push(bin.to_string());
        }
        let anonymous_tls = anonymous_config(ca)?;
        Ok(Registry {
            operator: HttpConn::new(
                ep.clone(),
                crate::tls::client_config(ca, &operator.cert_path, &operator.key_path, false)?,
            ),
            users,
            user_bins,
            customer: HttpConn::new(ep.clone(), anonymous_tls.clone()),
            anonymous: HttpConn::new(ep, anonymous_tls),
            sessions: HashMap::new(),
            outbox: Outbox {
                path: spec.outbox(),
                read: 0,
                codes: HashMap::new(),
            },
        })
    }

    /// Registers every API user of the environment (with its certificate's thumbprint)
    /// and both banks (with their URLs).
    pub async fn register(&mut self, env: &BenchEnv, banks: [SocketAddr; 2]) -> Result<()> {
        for (i, bin) in env.users.iter().enumerate() {
            let id = env.user_identity(i)?;
            let body = json!({"name": format!("Bench user {i}"), "roles": ["user"],
                              "thumbprints": [id.x5t_s256]});
            let r = self
                .operator
                .json(Method::PUT, &format!("/v1/participants/{bin}"), &body, None)
                .await?;
            if !matches!(r.status, 200 | 201) {
                return Err(trust_err(format!("register {bin}: {}", r.describe())));
            }
        }
        for (i, bin) in env.providers.iter().enumerate() {
            let body = json!({"name": format!("Bench bank {i}"), "roles": ["provider"],
                              "thumbprints": [], "provider_urls": [format!("https://{}", banks[i])]});
            let r = self
                .operator
                .json(Method::PUT, &format!("/v1/participants/{bin}"), &body, None)
                .await?;
            if !matches!(r.status, 200 | 201) {
                return Err(trust_err(format!("register {bin}: {}", r.describe())));
            }
        }
        Ok(())
    }

    fn user(&mut self, user: usize) -> Result<&mut HttpConn> {
        self.users
            .get_mut(user)
            .ok_or_else(|| HarnessError::Plan(format!("no user {user}")))
    }

    /// The BIN of user `user`.
    pub fn user_bin(&self, user: usize) -> &str {
        self.user_bins.get(user).map_or("", String::as_str)
    }

    async fn session(&mut self, customer: &str) -> Result<String> {
        if let Some(s) = self.sessions.get(customer) {
            return Ok(s.clone());
        }
        let r = self
            .customer
            .json(
                Method::POST,
                "/v1/customer/sessions",
                &json!({ "customer": customer }),
                None,
            )
            .await?
            .expect(201, "customer session")?;
        let s = r.json()?["session"]
            .as_str()
            .ok_or_else(|| trust_err("no session in the answer"))?
            .to_string();
        self.sessions.insert(customer.to_string(), s.clone());
        Ok(s)
    }

    /// Creates a consent as `user` for `customer` at `provider` (every permission) and
    /// has the customer authorise it with the code from the outbox; returns its id.
    pub async fn authorised_consent(
        &mut self,
        user: usize,
        provider: &str,
        customer: &str,
    ) -> Result<String> {
        let body = json!({"customer": customer, "providers": [provider],
                          "permissions": ["accounts", "balances", "transactions"],
                          "purpose": "trust-bench"});
        let r = self
            .user(user)?
            .json(Method::POST, "/v1/consents", &body, None)
            .await?
            .expect(201, "create consent")?;
        let id = r.json()?["id"]
            .as_str()
            .ok_or_else(|| trust_err("no consent id"))?
            .to_string();
        let session = self.session(customer).await?;
        let r = self
            .customer
            .json(
                Method::POST,
                &format!("/v1/customer/consents/{id}/authorisations"),
                &json!({}),
                Some(&session),
            )
            .await?
            .expect(201, "start authorisation")?;
        let aid = r.json()?["id"]
            .as_str()
            .ok_or_else(|| trust_err("no authorisation id"))?
            .to_string();
        let code = self.outbox.code_for(&id).await?;
        let r = self
            .customer
            .json(
                Method::POST,
                &format!("/v1/customer/authorisations/{aid}/verify"),
                &json!({ "code": code }),
                Some(&session),
            )
            .await?
            .expect(200, "verify code")?;
        if r.json()?["status"] != "authorised" {
            return Err(trust_err(format!("verify: {}", r.describe())));
        }
        Ok(id)
    }

    /// A token for `user`'s consent from the token endpoint.
    pub async fn token(&mut self, user: usize, consent: &str) -> Result<String> {
        let form = token_form(self.user_bin(user), consent);
        let r = self
            .user(user)?
            .send(Method::POST, "/oauth2/token", &[(CONTENT_TYPE, FORM)], form)
            .await?
            .expect(200, "token")?;
        Ok(r.json()?["access_token"]
            .as_str()
            .ok_or_else(|| trust_err("no access_token"))?
            .to_string())
    }

    /// Revokes `user`'s consent (`DELETE /v1/consents/{id}`); returns the answer.
    pub async fn revoke(&mut self, user: usize, consent: &str) -> Result<Reply> {
        self.user(user)?
            .send(
                Method::DELETE,
                &format!("/v1/consents/{consent}"),
                &[],
                Bytes::new(),
            )
            .await
    }

    /// `user`'s consent as the API answers it (`GET /v1/consents/{id}`).
    pub async fn consent(&mut self, user: usize, consent: &str) -> Result<Reply> {
        self.user(user)?
            .send(
                Method::GET,
                &format!("/v1/consents/{consent}"),
                &[],
                Bytes::new(),
            )
            .await
    }

    /// The registry's head version (`GET /healthz`).
    pub async fn head(&mut self) -> Result<u64> {
        let r = self
            .anonymous
            .send(Method::GET, "/healthz", &[], Bytes::new())
            .await?
            .expect(200, "healthz")?;
        r.json()?["version"]
            .as_u64()
            .ok_or_else(|| trust_err("no version in /healthz"))
    }
}
