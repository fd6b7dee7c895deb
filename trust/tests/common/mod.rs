//! Test harness: a development PKI, a sidecar on an ephemeral loopback port, and an
//! HTTPS client (rustls, optional client certificate) that speaks to it. The sidecar's
//! store is SQLite, or a fresh PostgreSQL database when `TRUST_TEST_POSTGRES_URL` is set
//! (see [`store`]).
#![allow(dead_code)]

pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use consent_cache::Bin;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use sandbox::pki::{DevPki, Identity, PkiSpec};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use trust::clock::ManualClock;
use trust::Config;

pub const USER_A: &str = "100140000001";
pub const USER_B: &str = "100140000002";
pub const BANK_1: &str = "990340000011";
pub const BANK_2: &str = "990340000012";
pub const CUSTOMER: &str = "900101300123";
pub const OTHER_CUSTOMER: &str = "850505400777";

pub fn bin(s: &str) -> Bin {
    Bin::parse(s).unwrap()
}

/// The development PKI, paths and the store every test uses.
pub struct Fixture {
    /// Dropped first: the PostgreSQL database goes before the directory.
    pub store: store::Store,
    pub dir: tempfile::TempDir,
    pub pki: DevPki,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let spec = PkiSpec {
            operator: true,
            ..PkiSpec::new(
                vec![bin(USER_A), bin(USER_B)],
                vec![bin(BANK_1), bin(BANK_2)],
            )
        };
        let pki = DevPki::generate(&dir.path().join("pki"), &spec).unwrap();
        let store = store::Store::from_env(dir.path().join("trust.db"));
        Fixture { store, dir, pki }
    }

    /// The SQLite file (unused when the store is PostgreSQL).
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("trust.db")
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("otp_outbox")
    }

    /// A configuration with the defaults of the tests: hub and operator certificates,
    /// dev customer sessions, the outbox, fast heartbeats.
    pub fn config(&self, clock: &ManualClock) -> Config {
        let mut c = Config::new(
            "127.0.0.1:0".parse().unwrap(),
            self.db(),
            self.pki.hub_server().cert_path.clone(),
            self.pki.hub_server().key_path.clone(),
            self.pki.ca_cert_path().to_owned(),
        );
        c.operator_certs = vec![self.pki.operator().unwrap().cert_path.clone()];
        c.hub_certs = vec![self.pki.hub_client().cert_path.clone()];
        c.audience = "open-api-hub".into();
        c.otp_outbox = Some(self.outbox());
        c.dev_customer_sessions = true;
        c.heartbeat = Duration::from_millis(200);
        c.housekeeping = Duration::from_millis(50);
        c.clock = Arc::new(clock.clone());
        self.store.apply(&mut c);
        c
    }

    pub fn user(&self, b: &str) -> &Identity {
        self.pki.api_user(bin(b)).unwrap()
    }

    pub fn operator(&self) -> &Identity {
        self.pki.operator().unwrap()
    }

    pub fn hub(&self) -> &Identity {
        self.pki.hub_client()
    }

    pub fn client(&self, addr: SocketAddr) -> Client {
        Client::new(addr, self.pki.ca_cert_path())
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

/// An HTTPS client with a fresh connection per request.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    roots: Arc<RootCertStore>,
}

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path) -> Client {
        let mut roots = RootCertStore::empty();
        let pem = std::fs::read(ca).unwrap();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.unwrap()).unwrap();
        }
        Client {
            addr,
            roots: Arc::new(roots),
        }
    }

    fn tls(&self, id: Option<&Identity>) -> Arc<ClientConfig> {
        self.tls_with_alpn(id, b"http/1.1")
    }

    /// A client TLS configuration trusting the dev CA, presenting `id`, offering `alpn`.
    pub fn tls_with_alpn(&self, id: Option<&Identity>, alpn: &[u8]) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots.clone());
        let mut c = match id {
            Some(id) => b
                .with_client_auth_cert(id.chain_der().unwrap(), id.key_der().unwrap())
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    }

    /// Sends a request and returns the response head with its streaming body.
    pub async fn open(
        &self,
        id: Option<&Identity>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<http::Response<Incoming>, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(self.tls(id))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())
    }

    pub async fn try_send(
        &self,
        id: Option<&Identity>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let resp = self.open(id, method, path, headers, body).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn send(
        &self,
        id: Option<&Identity>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.try_send(id, method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, id: Option<&Identity>, path: &str) -> Reply {
        self.send(id, "GET", path, &[], Vec::new()).await
    }

    pub async fn json(
        &self,
        id: Option<&Identity>,
        method: &str,
        path: &str,
        body: Value,
    ) -> Reply {
        self.send(
            id,
            method,
            path,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
    }

    /// A request as a customer with a development session.
    pub async fn customer(
        &self,
        session: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let auth = format!("Bearer {session}");
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.send(
            None,
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
    }

    pub async fn token(&self, id: Option<&Identity>, form: &str) -> Reply {
        self.send(
            id,
            "POST",
            "/oauth2/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form.as_bytes().to_vec(),
        )
        .await
    }
}

/// What `value` breaks of `docs/openapi/trust.json`'s schema `name`.
pub fn violations(name: &str, value: &Value) -> Vec<String> {
    let doc: Value = serde_json::from_str(trust::http::OPENAPI_JSON).unwrap();
    let schema = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"],
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect()
}

/// Panics unless `value` is valid against the schema `name`.
#[track_caller]
pub fn conforms(name: &str, value: &Value) {
    let errors = violations(name, value);
    assert!(errors.is_empty(), "{name}: {errors:?}\n{value}");
}

/// Registers the two API users and the two banks.
pub async fn register_all(f: &Fixture, c: &Client) {
    for (b, name) in [(USER_A, "Fintech A"), (USER_B, "Fintech B")] {
        c.json(
            Some(f.operator()),
            "PUT",
            &format!("/v1/participants/{b}"),
            json!({"name": name, "roles": ["user"], "thumbprints": [f.user(b).x5t_s256]}),
        )
        .await
        .expect(201);
    }
    for (b, port) in [(BANK_1, 1), (BANK_2, 2)] {
        c.json(
            Some(f.operator()),
            "PUT",
            &format!("/v1/participants/{b}"),
            json!({"name": format!("Bank {b}"), "roles": ["provider"],
                   "provider_urls": [format!("https://127.0.0.1:{port}")]}),
        )
        .await
        .expect(201);
    }
}

/// Creates a consent as `user` for `customer`; returns its id.
pub async fn create_consent(c: &Client, user: &Identity, customer: &str, extra: Value) -> String {
    let mut body = json!({
        "customer": customer,
        "providers": [BANK_1],
        "permissions": ["accounts", "balances", "transactions"],
        "purpose": "Personal finance overview",
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let v = c
        .json(Some(user), "POST", "/v1/consents", body)
        .await
        .expect(201);
    assert_eq!(v["status"], "awaiting_authorisation");
    v["id"].as_str().unwrap().to_owned()
}

/// Opens a development customer session.
pub async fn session(c: &Client, customer: &str) -> String {
    let v = c
        .json(
            None,
            "POST",
            "/v1/customer/sessions",
            json!({ "customer": customer }),
        )
        .await
        .expect(201);
    v["session"].as_str().unwrap().to_owned()
}

/// The last code the outbox holds for a consent.
pub fn last_code(outbox: &Path, consent_id: &str) -> String {
    let text = std::fs::read_to_string(outbox).unwrap();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["consent_id"] == consent_id)
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no code for {consent_id} in the outbox"))
}

/// Starts an authorisation and verifies it with the code from the outbox.
pub async fn authorise(c: &Client, outbox: &Path, customer: &str, consent_id: &str) -> Value {
    let s = session(c, customer).await;
    authorise_in(c, outbox, &s, consent_id).await
}

/// As [`authorise`], with a customer session `s` however it was opened.
pub async fn authorise_in(c: &Client, outbox: &Path, s: &str, consent_id: &str) -> Value {
    let s = s.to_owned();
    let a = c
        .customer(
            &s,
            "POST",
            &format!("/v1/customer/consents/{consent_id}/authorisations"),
            None,
        )
        .await
        .expect(201);
    let aid = a["id"].as_str().unwrap();
    let code = last_code(outbox, consent_id);
    c.customer(
        &s,
        "POST",
        &format!("/v1/customer/authorisations/{aid}/verify"),
        Some(json!({ "code": code })),
    )
    .await
    .expect(200)
}

/// A sidecar on the fixture's settings as `tweak` changes them, and a client of it.
pub async fn start_with(
    f: &Fixture,
    clock: &ManualClock,
    tweak: impl FnOnce(&mut Config),
) -> (trust::Running, Client) {
    let mut config = f.config(clock);
    tweak(&mut config);
    let running = trust::start(config, None).await.unwrap();
    let c = f.client(running.addr());
    (running, c)
}

/// Reads NDJSON lines from a streaming body.
pub struct Lines {
    body: Incoming,
    buf: BytesMut,
}

impl Lines {
    pub fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: BytesMut::new(),
        }
    }

    /// The next line, or `None` when the stream ends; panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(i + 1);
                return Some(serde_json::from_slice(&line[..i]).unwrap());
            }
            let frame = tokio::time::timeout(timeout, self.body.frame())
                .await
                .expect("no line in time");
            match frame {
                None => return None,
                Some(f) => {
                    if let Ok(d) = f.unwrap().into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }

    /// Whether the stream ends (cleanly or not) within `timeout`, discarding data.
    pub async fn ended(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                match self.body.frame().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}
