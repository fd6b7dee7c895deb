//! Shared fixtures of the conformance tests: the development PKI, a sandbox bank that
//! accepts only the hub's client certificate, a test customer of that bank, and a small
//! HTTPS server that answers whatever a test wants (a stand-in for a misbehaving bank).
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conformance::{Bin, Permissions, Target, TestCustomer};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sandbox::bank::{BankConfig, BankHandle};
use sandbox::pki::{DevPki, PkiSpec};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const API_USER: &str = "100140000001";
pub const PROVIDER: &str = "990340000011";
pub const CONSENT: &str = "consent-probe-1";

pub fn bin(s: &str) -> Bin {
    Bin::parse(s).expect("a BIN")
}

/// The PKI and a sandbox bank with a test customer that has two accounts or more.
pub struct Sandbox {
    pub dir: TempDir,
    pub pki: DevPki,
    pub bank: BankHandle,
    /// The test customer's id (IIN).
    pub customer: String,
    /// Its account ids, the busiest (most transactions) first.
    pub accounts: Vec<String>,
    /// Its IBANs, to show they never reach a report.
    pub ibans: Vec<String>,
}

pub async fn sandbox() -> Sandbox {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = PkiSpec::new(vec![bin(API_USER)], vec![bin(PROVIDER)]);
    let pki = DevPki::generate(dir.path(), &spec).expect("dev PKI");
    let server = pki
        .provider_server(bin(PROVIDER))
        .expect("provider identity");
    let mut cfg = BankConfig::new(
        bin(PROVIDER),
        "Probe Bank",
        server.chain_pem(),
        server.key_pem.clone(),
        pki.ca_cert_pem(),
    );
    cfg.customers = 20;
    cfg.allowed_client_thumbprints = Some(vec![pki.hub_client().thumbprint]);
    let bank = sandbox::bank::start(cfg).await.expect("sandbox bank");
    let c = bank
        .data()
        .customers()
        .find(|c| {
            c.accounts.len() >= 2
                && c.busiest_account()
                    .is_some_and(|a| a.transactions.len() >= 2 * conformance::FIRST_LIMIT)
        })
        .expect("a customer with two accounts and transactions");
    let busiest = c.busiest_account().map(|a| a.id.clone()).expect("busiest");
    let mut accounts = vec![busiest.clone()];
    accounts.extend(
        c.accounts
            .iter()
            .map(|a| a.id.clone())
            .filter(|a| *a != busiest),
    );
    Sandbox {
        customer: c.iin.clone(),
        ibans: c.accounts.iter().map(|a| a.iban.clone()).collect(),
        accounts,
        dir,
        pki,
        bank,
    }
}

impl Sandbox {
    /// The test customer with every permission and the given allow-list.
    pub fn customer(&self, allow: Option<Vec<String>>) -> TestCustomer {
        TestCustomer {
            api_user: bin(API_USER),
            consent_id: CONSENT.to_owned(),
            customer: self.customer.clone(),
            permissions: Permissions::EMPTY
                .with(conformance::Permission::Accounts)
                .with(conformance::Permission::Balances)
                .with(conformance::Permission::Transactions),
            accounts: allow,
        }
    }

    /// A target at `url` with the hub's client identity and the platform CA.
    pub fn target_at(&self, url: String, allow: Option<Vec<String>>, sla: Duration) -> Target {
        let hub = self.pki.hub_client();
        Target::new(
            url,
            hub.cert_pem.clone(),
            hub.key_pem.clone(),
            self.pki.ca_cert_pem(),
            sla,
            self.customer(allow),
        )
    }

    /// A target at the sandbox bank.
    pub fn target(&self, allow: Option<Vec<String>>, sla: Duration) -> Target {
        self.target_at(self.bank.url(), allow, sla)
    }

    /// The consent restricted to the busiest account.
    pub fn allow_first(&self) -> Option<Vec<String>> {
        Some(vec![self.accounts[0].clone()])
    }
}

/// What a fake bank answers to a path and query: status, content type, body.
pub type Handler = Arc<dyn Fn(&str) -> (u16, &'static str, String) + Send + Sync>;

/// An HTTPS server with the provider's certificate that answers with `handler`; its URL.
pub async fn fake_bank(pki: &DevPki, handler: Handler) -> String {
    let id = pki
        .provider_server(bin(PROVIDER))
        .expect("provider identity");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(id.chain_der().expect("chain"), id.key_der().expect("key"))
    .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let (status, ct, body) = handler(pq);
                    async move {
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).expect("a status");
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(ct),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    format!("https://{addr}")
}
