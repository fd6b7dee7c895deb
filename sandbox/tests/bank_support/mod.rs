//! Shared fixtures of the sandbox bank tests: a throwaway PKI made with rcgen, a
//! bank started on 127.0.0.1:0, and a small hyper client over tokio-rustls that
//! presents (or does not present) a client certificate.
#![allow(dead_code)]

use bytes::Bytes;
use consent_cache::Bin;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use sandbox::bank::{self, BankConfig, BankHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const BANK_BIN: &str = "180340012345";
pub const API_USER: &str = "190440054321";
pub const INTERACTION_ID: &str = "3f1c2a9e-8b7d-4c6e-9f01-23456789abcd";

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// A throwaway PKI: the platform CA, the bank's server certificate, two hub client
/// certificates from that CA, and a client certificate from an unrelated CA.
pub struct Pki {
    pub ca_pem: String,
    pub server: Identity,
    pub client: Identity,
    pub other_client: Identity,
    pub rogue_client: Identity,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, cn: &str, server: bool) -> Identity {
    let sans = if server {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    }
}

pub fn pki() -> Pki {
    let (ca_pem, issuer) = ca("Sandbox Platform CA");
    let (_, rogue) = ca("Rogue CA");
    Pki {
        ca_pem,
        server: leaf(&issuer, "bank.sandbox", true),
        client: leaf(&issuer, "hub.sandbox", false),
        other_client: leaf(&issuer, "other.sandbox", false),
        rogue_client: leaf(&rogue, "hub.sandbox", false),
    }
}

pub fn bank_config(pki: &Pki, customers: usize, seed: u64) -> BankConfig {
    let mut cfg = BankConfig::new(
        Bin::parse(BANK_BIN).expect("bin"),
        "Sandbox Bank",
        pki.server.cert_pem.clone(),
        pki.server.key_pem.clone(),
        pki.ca_pem.clone(),
    );
    cfg.customers = customers;
    cfg.seed = seed;
    cfg
}

/// A bank with 30 customers (customers 0, 10, 20 have a 3,000-transaction account).
pub async fn start_bank(pki: &Pki) -> BankHandle {
    bank::start(bank_config(pki, 30, 7))
        .await
        .expect("bank starts")
}

/// Which protocol the client offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub fn connector(pki: &Pki, client: Option<&Identity>, proto: Proto) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca root");
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut id.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("client pem");
            let key: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
                    .expect("key pem")
                    .expect("a key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match proto {
        Proto::H1 => vec![b"http/1.1".to_vec()],
        Proto::H2 => vec![b"h2".to_vec()],
    };
    TlsConnector::from(Arc::new(config))
}

pub async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    connector.connect(name, tcp).await
}

/// A response, body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error` code of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

fn request(path: &str, headers: &[(&str, String)], proto: Proto) -> Request<Empty<Bytes>> {
    let uri = match proto {
        Proto::H1 => path.to_owned(),
        Proto::H2 => format!("https://localhost{path}"),
    };
    let mut b = Request::get(uri);
    if proto == Proto::H1 {
        b = b.header("host", "localhost");
    }
    for (n, v) in headers {
        b = b.header(*n, v.as_str());
    }
    b.body(Empty::new()).expect("request")
}

/// One request on a new connection.
pub async fn get(
    connector: &TlsConnector,
    addr: SocketAddr,
    proto: Proto,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Resp, BoxError> {
    let tls = tls_connect(connector, addr).await?;
    let negotiated_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    assert_eq!(negotiated_h2, proto == Proto::H2, "ALPN outcome");
    let req = request(path, headers, proto);
    let resp = if negotiated_h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A keep-alive HTTP/1.1 connection for many sequential requests.
pub struct H1Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl H1Conn {
    pub async fn open(connector: &TlsConnector, addr: SocketAddr) -> Result<Self, BoxError> {
        let tls = tls_connect(connector, addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(H1Conn { sender })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, String)]) -> Result<Resp, BoxError> {
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(request(path, headers, Proto::H1))
            .await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// The headers the hub sets on an account route.
pub fn hub_headers(customer: &str, permissions: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-fapi-interaction-id", INTERACTION_ID.to_owned()),
        ("x-hub-api-user", API_USER.to_owned()),
        ("x-hub-consent-id", "cns-0001".to_owned()),
        ("x-hub-customer", customer.to_owned()),
        ("x-hub-permissions", permissions.to_owned()),
    ]
}

pub const ALL_PERMISSIONS: &str = "accounts,balances,transactions";

/// A started bank with an HTTP/1.1 and an HTTP/2 client presenting the hub's cert.
pub struct Harness {
    pub pki: Pki,
    pub bank: BankHandle,
    pub h1: TlsConnector,
    pub h2: TlsConnector,
}

impl Harness {
    pub async fn new() -> Self {
        let pki = pki();
        let bank = start_bank(&pki).await;
        let h1 = connector(&pki, Some(&pki.client), Proto::H1);
        let h2 = connector(&pki, Some(&pki.client), Proto::H2);
        Harness { pki, bank, h1, h2 }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, String)]) -> Resp {
        get(&self.h1, self.bank.addr(), Proto::H1, path, headers)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn get_h2(&self, path: &str, headers: &[(&str, String)]) -> Resp {
        get(&self.h2, self.bank.addr(), Proto::H2, path, headers)
            .await
            .unwrap_or_else(|e| panic!("GET {path} (h2): {e}"))
    }

    /// A customer with at least two accounts, and a different customer.
    pub fn two_customers(&self) -> (sandbox::data::Customer, sandbox::data::Customer) {
        let data = self.bank.data();
        let a = data
            .customers()
            .find(|c| c.accounts.len() >= 2)
            .expect("a customer with two accounts")
            .clone();
        let b = data
            .customers()
            .find(|c| c.iin != a.iin)
            .expect("another customer")
            .clone();
        (a, b)
    }
}
