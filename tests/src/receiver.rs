//! A stand-in for the trust control plane's rollup route (`POST /v1/rollups`): a real
//! HTTPS listener with the development PKI that requires a client certificate of the
//! platform CA, records every push (the client's certificate, the batch, what it
//! answered), stores minutes by `(gateway, epoch, minute)` as the control plane does
//! (`{"stored": n, "duplicates": m}`), and can be told to fail (`503`) or to refuse
//! batches as invalid (`422`) meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use feed_wire::rollup::{MinuteRollup, RollupBatch, ROLLUP_PATH};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use sandbox::pki::DevPki;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A hub with `[rollups]` started by [`rollup_rig`], and its control plane.
pub struct RollupRig {
    /// The runtime the sidecar and the receiver run on.
    pub rt: tokio::runtime::Runtime,
    /// The sidecar, kept running for the rig's life.
    pub peers: Arc<Mutex<Option<trust::Running>>>,
    /// The hub.
    pub hub: crate::Hub,
    /// Where its rollups are pushed.
    pub receiver: Receiver,
}

/// Starts the hub `exe` in `[trust]` mode with its rollups pushed to a receiver every
/// 100 ms under the name `gateway`: a trust sidecar (heartbeat 200 ms) and the receiver
/// run on the rig's runtime. `edit` changes the setup further, with the sidecar started.
pub fn rollup_rig(
    exe: &str,
    gateway: &'static str,
    edit: impl Fn(&mut crate::Setup<'_>, &tokio::runtime::Handle, &trust::Running) + Send + 'static,
) -> RollupRig {
    let rt = crate::peers_runtime();
    let peers = Arc::new(Mutex::new(None));
    let received = Arc::new(Mutex::new(None));
    let (handle, p, r) = (rt.handle().clone(), peers.clone(), received.clone());
    let hub = crate::Hub::start_with(exe, move |setup| {
        let (sidecar, receiver) = rollup_peers(setup, &handle, gateway);
        edit(setup, &handle, &sidecar);
        *p.lock().expect("peers") = Some(sidecar);
        *r.lock().expect("receiver") = Some(receiver);
    });
    let receiver = received.lock().expect("receiver").take().expect("started");
    RollupRig {
        rt,
        peers,
        hub,
        receiver,
    }
}

fn rollup_peers(
    setup: &mut crate::Setup<'_>,
    rt: &tokio::runtime::Handle,
    gateway: &str,
) -> (trust::Running, Receiver) {
    use gateway::config::{at, ConsentSection, RollupSection, TrustSection};
    let pki = &setup.prepared.pki;
    let mut c = setup.trust_config();
    c.heartbeat = std::time::Duration::from_millis(200);
    let sidecar = rt.block_on(trust::start(c, None)).expect("sidecar starts");
    let receiver = Receiver::start(rt, pki);
    setup.config.consents = ConsentSection::default();
    setup.config.trust = Some(TrustSection::new(
        sidecar.url(),
        &[pki.ca_cert_path().to_owned()],
    ));
    setup.config.rollups = Some(RollupSection {
        gateway: Some(at(gateway.to_string())),
        push_interval_ms: 100,
        url: Some(at(receiver.url())),
        ..RollupSection::default()
    });
    (sidecar, receiver)
}

/// One push as received.
#[derive(Debug, Clone)]
pub struct Push {
    /// The client certificate it came with (DER).
    pub client_cert: Vec<u8>,
    /// The batch (`None`: the body did not parse).
    pub batch: Option<RollupBatch>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    pushes: Mutex<Vec<Push>>,
    stored: Mutex<BTreeMap<(String, String, i64), MinuteRollup>>,
    failing: AtomicBool,
    rejecting: AtomicBool,
    fail_next: AtomicUsize,
}

/// The running receiver (stops with the runtime it was started on).
#[derive(Clone)]
pub struct Receiver {
    /// Its address (loopback, ephemeral port).
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    /// Starts on `rt` with the hub's server identity of `pki` (valid for 127.0.0.1).
    pub fn start(rt: &tokio::runtime::Handle, pki: &DevPki) -> Receiver {
        let config = Arc::new(server_config(pki));
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner::default());
        let shared = inner.clone();
        rt.spawn(async move {
            let acceptor = TlsAcceptor::from(config);
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, inner) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.as_ref().to_vec())
                        .unwrap_or_default();
                    let service = hyper::service::service_fn(move |req| {
                        let (inner, cert) = (inner.clone(), cert.clone());
                        async move { Ok::<_, hyper::Error>(answer(&inner, cert, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Receiver { addr, inner }
    }

    /// The base URL to configure (`[rollups] url`).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Answer every push `503` (`true`) or take them (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// Answer every push `422` (a batch the control plane will never take).
    pub fn set_rejecting(&self, rejecting: bool) {
        self.inner.rejecting.store(rejecting, Ordering::SeqCst);
    }

    /// Answer the next `n` pushes `503`.
    pub fn fail_next(&self, n: usize) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every push so far.
    pub fn pushes(&self) -> Vec<Push> {
        self.inner.pushes.lock().expect("pushes").clone()
    }

    /// The minutes stored, by `(gateway, epoch, minute)`.
    pub fn stored(&self) -> BTreeMap<(String, String, i64), MinuteRollup> {
        self.inner.stored.lock().expect("stored").clone()
    }
}

fn server_config(pki: &DevPki) -> ServerConfig {
    let pem = |s: &str| -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut s.as_bytes())
            .collect::<Result<_, _>>()
            .expect("pem")
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in pem(pki.ca_cert_pem()) {
        roots.add(ca).expect("ca");
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("client verifier");
    let id = pki.hub_server();
    let key = rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
        .expect("key pem")
        .expect("a key");
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem(&id.cert_pem), key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn answer(
    inner: &Inner,
    client_cert: Vec<u8>,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let right_route = req.method() == http::Method::POST && req.uri().path() == ROLLUP_PATH;
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let batch = serde_json::from_slice::<RollupBatch>(&body).ok();
    let fail_next = inner
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let (status, text) = match &batch {
        _ if !right_route => (404, String::new()),
        None => (400, r#"{"code":"invalid_batch"}"#.to_string()),
        Some(_) if fail_next || inner.failing.load(Ordering::SeqCst) => (503, String::new()),
        Some(_) if inner.rejecting.load(Ordering::SeqCst) => {
            (422, r#"{"code":"invalid_batch"}"#.to_string())
        }
        Some(b) => (200, store(inner, b)),
    };
    inner.pushes.lock().expect("pushes").push(Push {
        client_cert,
        batch,
        status,
    });
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("response")
}

/// Stores the minutes not yet held; the answer's counts.
fn store(inner: &Inner, b: &RollupBatch) -> String {
    let mut stored = inner.stored.lock().expect("stored");
    let (mut new, mut dup) = (0, 0);
    for m in &b.minutes {
        let key = (b.gateway.clone(), b.epoch.clone(), m.minute);
        match stored.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => dup += 1,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(m.clone());
                new += 1;
            }
        }
    }
    format!(r#"{{"stored":{new},"duplicates":{dup}}}"#)
}
