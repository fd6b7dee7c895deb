//! Starting and stopping the sidecar: TLS (client certificates optional at the
//! handshake, required per route), the accept loop, HTTP/1.1 and HTTP/2, and the
//! housekeeping task (expiry, key rotation, feed pruning).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::app::{App, Settings};
use crate::config::Config;
use crate::db::{Db, StoreError};
use crate::error::Error;
use crate::http::{self, Peer};
use crate::keys::{self, Alg, Policy};
use crate::notify::{FileNotifier, Notifier};
use crate::participants::decode_thumbprint;

/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Housekeeping runs pruning once per this many ticks.
const PRUNE_EVERY_TICKS: u64 = 60;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        what: &'static str,
    },
    /// The TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// A configured thumbprint is malformed.
    #[error("thumbprint {0:?}: expected x5t#S256 (base64url of 32 bytes, unpadded)")]
    Thumbprint(String),
    /// The listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A signing key could not be imported or none is usable.
    #[error("signing keys: {0}")]
    Keys(String),
    /// Start-up state could not be built.
    #[error(transparent)]
    App(#[from] Error),
}

fn read(path: &Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|source| StartError::Io {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| StartError::Pem {
            path: path.to_owned(),
            what: "malformed PEM",
        })?;
    if certs.is_empty() {
        return Err(StartError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block",
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, StartError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut &pem[..])
        .ok()
        .flatten()
        .ok_or(StartError::Pem {
            path: path.to_owned(),
            what: "no private key",
        })
}

/// SHA-256 of a certificate's DER.
pub fn thumbprint(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

fn thumbprints(files: &[PathBuf], values: &[String]) -> Result<Vec<[u8; 32]>, StartError> {
    let mut out = Vec::new();
    for f in files {
        let leaf = certs(f)?.remove(0);
        out.push(thumbprint(leaf.as_ref()));
    }
    for v in values {
        out.push(decode_thumbprint(v).ok_or_else(|| StartError::Thumbprint(v.clone()))?);
    }
    Ok(out)
}

/// The server's TLS configuration: a client certificate is *optional* at the
/// handshake (customers have none) but, when presented, must chain to the platform
/// CA; each route then requires the identity it needs.
fn tls_config(config: &Config) -> Result<Arc<ServerConfig>, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&config.server_cert)?;
    let key = private_key(&config.server_key)?;
    let mut roots = RootCertStore::empty();
    for path in &config.client_ca {
        for ca in certs(path)? {
            roots
                .add(ca)
                .map_err(|e| StartError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Reads PKCS#8 PEM key files, telling ES256 from PS256 keys by trying both.
fn key_files(files: &[PathBuf]) -> Result<Vec<(Alg, Vec<u8>)>, StartError> {
    let mut out = Vec::new();
    for f in files {
        let der = keys::pkcs8_from_pem(&read(f)?)
            .map_err(|e| StartError::Keys(format!("{}: {e}", f.display())))?;
        let alg = [Alg::Es256, Alg::Ps256]
            .into_iter()
            .find(|a| keys::SigningKey::from_pkcs8(*a, &der).is_ok())
            .ok_or_else(|| {
                StartError::Keys(format!(
                    "{}: neither a P-256 (ES256) nor a ≥2048-bit RSA (PS256) key",
                    f.display()
                ))
            })?;
        out.push((alg, der));
    }
    Ok(out)
}

/// A running sidecar.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL (`https://…`).
    pub fn url(&self) -> &str {
        &self.app.settings.public_url
    }

    /// The shared state (for in-process tests and embedding).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops accepting, closes every connection and the housekeeping task.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens the database, loads keys and starts serving.
pub async fn start(
    config: Config,
    notifier: Option<Arc<dyn Notifier>>,
) -> Result<Running, StartError> {
    let tls = tls_config(&config)?;
    let operators = thumbprints(&config.operator_certs, &config.operator_thumbprints)?;
    let hubs = thumbprints(&config.hub_certs, &config.hub_thumbprints)?;
    let imported = key_files(&config.signing_keys)?;
    let notifier = notifier_for(notifier, &config)?;
    let db_path = config.db.clone();
    let db = tokio::task::spawn_blocking(move || Db::open(&db_path))
        .await
        .map_err(|e| StartError::App(Error::Internal(e.to_string())))??;
    let (listener, addr) = bind(&config).await?;
    let settings = settings(&config, addr, operators, hubs);
    let app = Arc::new(App::new(
        Arc::new(db),
        settings,
        config.clock.clone(),
        notifier,
    )?);
    activate_keys(&app, &imported).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let acceptor = TlsAcceptor::from(tls);
    let accept = tokio::spawn(accept_loop(
        listener,
        acceptor,
        app.clone(),
        shutdown_rx.clone(),
    ));
    let house = tokio::spawn(housekeeping(app.clone(), config.housekeeping, shutdown_rx));
    tracing::info!(%addr, url = %app.settings.public_url, store_id = %app.db.store_id(), head = app.db.head(), "trust sidecar listening");
    Ok(Running {
        addr,
        app,
        shutdown,
        tasks: vec![accept, house],
    })
}

/// The notifier given by the embedder, else a file outbox when one is configured.
fn notifier_for(
    given: Option<Arc<dyn Notifier>>,
    config: &Config,
) -> Result<Option<Arc<dyn Notifier>>, StartError> {
    Ok(match (given, &config.otp_outbox) {
        (Some(n), _) => Some(n),
        (None, Some(path)) => Some(Arc::new(FileNotifier::open(path).map_err(|source| {
            StartError::Io {
                path: path.clone(),
                source,
            }
        })?)),
        (None, None) => None,
    })
}

/// Binds the listener; the bound address matters when the configuration asks for port 0.
async fn bind(config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: config.listen,
        source,
    };
    let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

/// The application settings; the public URL (and so the default issuer) defaults to the
/// bound address.
fn settings(
    config: &Config,
    addr: SocketAddr,
    operators: Vec<[u8; 32]>,
    hubs: Vec<[u8; 32]>,
) -> Settings {
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{addr}"));
    Settings {
        issuer: config.issuer.clone().unwrap_or_else(|| public_url.clone()),
        audience: config.audience.clone(),
        public_url,
        token_lifetime_secs: config.token_lifetime_secs,
        key_policy: Policy {
            alg: config.token_alg,
            rotate_after_secs: config.key_rotate_after_secs,
            publish_lead_secs: config.key_publish_lead_secs,
            retire_after_secs: config.token_lifetime_secs + config.token_leeway_secs,
        },
        limits: config.limits,
        dev_customer_sessions: config.dev_customer_sessions,
        operators,
        hubs,
        heartbeat: config.heartbeat,
        feed_retention: config.feed_retention,
    }
}

/// Imports the configured signing keys and runs one rotation step; refuses to start
/// without an active signer, since every token request would fail.
async fn activate_keys(app: &Arc<App>, imported: &[(Alg, Vec<u8>)]) -> Result<(), StartError> {
    if !imported.is_empty() {
        let kids = app.import_keys(imported)?;
        tracing::info!(?kids, "signing keys imported");
    }
    app.rotate_keys(false).await?;
    if app.keys().signer.is_none() {
        return Err(StartError::Keys(
            "no signing key is active: with PS256, pass --signing-key".into(),
        ));
    }
    Ok(())
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

async fn housekeeping(app: Arc<App>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut shutdown) => return,
        }
        match app.expire_due().await {
            Ok(0) => {}
            Ok(k) => tracing::info!(expired = k, "consents expired"),
            Err(e) => tracing::error!(error = %e, "expiry failed"),
        }
        if let Err(e) = app.rotate_keys(false).await {
            tracing::error!(error = %e, "key rotation failed");
        }
        if n == 0 {
            match app.prune().await {
                Ok(0) => {}
                Ok(k) => tracing::info!(pruned = k, "feed history pruned"),
                Err(e) => tracing::error!(error = %e, "pruning failed"),
            }
        }
        n = (n + 1) % PRUNE_EVERY_TICKS;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    http.http2().timer(TokioTimer::new());
    let http = Arc::new(http);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(serve(tcp, acceptor.clone(), app.clone(), http.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    http: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let peer = Arc::new(Peer {
        thumbprint: tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| thumbprint(leaf.as_ref())),
    });
    let service = service_fn(move |req| {
        let app = app.clone();
        let peer = peer.clone();
        async move { Ok::<_, std::convert::Infallible>(http::handle(app, peer, req).await) }
    });
    let conn = http.serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = stopped(&mut shutdown) => {}
    }
}
