//! Starting and stopping the sidecar: TLS (client certificates optional at the
//! handshake, required per route), the listeners (public, and internal when configured;
//! `listener`), the housekeeping task (expiry, key rotation, feed pruning; run by the one
//! replica that holds the store's leadership), and the task that keeps the in-memory
//! registry and keys in step with the database.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::app::blocking;
use crate::app::{App, Settings};
use crate::breach;
use crate::config::Config;
use crate::db::{Db, Leadership, StoreError};
use crate::error::Error;
use crate::keys::{self, Alg, Policy};
use crate::listener::{self, stopped, Exposure, ListenerLimits, Serving};
use crate::notify::{FileNotifier, Notifier};
use crate::oidc;
use crate::participants::decode_thumbprint;
use crate::prober;

/// Housekeeping runs pruning once per this many ticks.
const PRUNE_EVERY_TICKS: u64 = 60;
/// How often every replica compares its signing keys with the stored ones. Far shorter
/// than the publication lead and the retirement period, so a replica never signs with a
/// key the others no longer publish, nor misses one they started publishing.
const KEYS_REFRESH: Duration = Duration::from_secs(1);

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
    /// A setting is refused (`field` names the `trust serve` flag).
    #[error("{field}: {what}")]
    Config {
        /// The flag.
        field: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The identity provider's settings are refused.
    #[error("identity provider: {0}")]
    Oidc(#[from] oidc::SetupError),
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
    internal: Option<SocketAddr>,
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

    /// The bound address of the internal listener, when one is configured.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal
    }

    /// The internal listener's base URL (`https://{addr}`), when one is configured.
    pub fn internal_url(&self) -> Option<String> {
        self.internal.map(|a| format!("https://{a}"))
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
    check(&config)?;
    let tls = tls_config(&config)?;
    let operators = thumbprints(&config.operator_certs, &config.operator_thumbprints)?;
    let hubs = thumbprints(&config.hub_certs, &config.hub_thumbprints)?;
    let imported = key_files(&config.signing_keys)?;
    let notifier = notifier_for(notifier, &config)?;
    let db = open_db(&config).await?;
    let (listener, addr) = bind(config.listen).await?;
    let internal = match config.internal_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let settings = settings(&config, addr, operators, hubs);
    let provider = match &config.oidc {
        Some(o) => Some(oidc::Provider::new(
            o.clone(),
            &settings.public_url,
            config.clock.clone(),
        )?),
        None => None,
    };
    // App::new reads the registry and the keys: blocking calls (PostgreSQL drives its
    // client with `block_on`, which must not run on an async worker).
    let clock = config.clock.clone();
    let app = Arc::new(
        blocking(move || App::new(Arc::new(db), settings, clock, notifier, provider)).await?,
    );
    activate_keys(&app, &imported).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let internal_addr = internal.as_ref().map(|(_, a)| *a);
    let mut tasks = serve(
        &app,
        tls,
        &config,
        listener,
        internal.map(|(l, _)| l),
        &shutdown_rx,
    );
    let leading = Arc::new(AtomicBool::new(false));
    tasks.extend(background(
        &app,
        config.housekeeping,
        &leading,
        &shutdown_rx,
    ));
    tasks.extend(oversight_tasks(&app, &config, &leading, &shutdown_rx));
    tracing::info!(%addr, internal = ?internal_addr, url = %app.settings.public_url, store_id = %app.db.store_id(), head = app.db.head(), "trust sidecar listening");
    Ok(Running {
        addr,
        internal: internal_addr,
        app,
        shutdown,
        tasks,
    })
}

/// Provider oversight's tasks, each acting only while this replica leads housekeeping:
/// the sustained-breach evaluation (unless off) and the probes (when configured); both
/// notify providers through the same outbox.
fn oversight_tasks(
    app: &Arc<App>,
    config: &Config,
    leading: &Arc<AtomicBool>,
    shutdown_rx: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let notifier = config
        .probe
        .as_ref()
        .and_then(|p| p.outbox.clone())
        .map(|p| Arc::new(prober::FileOutbox::new(p)) as Arc<dyn prober::ProviderNotifier>);
    if config.breach.enabled {
        let cfg = breach::BreachConfig {
            settings: config.breach,
            hysteresis: config
                .probe
                .as_ref()
                .map(|p| p.hysteresis)
                .unwrap_or_default(),
            probing: config.probe.is_some(),
        };
        tracing::info!(
            every_ms = cfg.settings.every.as_millis() as u64,
            window_minutes = cfg.settings.window_minutes,
            "SLA breach evaluation on (on the housekeeping leader)"
        );
        tasks.push(tokio::spawn(breach::run(
            app.clone(),
            cfg,
            leading.clone(),
            notifier.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let Some(probe) = config.probe.clone() {
        tracing::info!(
            interval_ms = probe.interval.as_millis() as u64,
            "provider probing on (on the housekeeping leader)"
        );
        tasks.push(tokio::spawn(prober::run(
            app.clone(),
            probe,
            leading.clone(),
            notifier,
            shutdown_rx.clone(),
        )));
    }
    tasks
}

/// Serves the public listener, and the internal one when configured, until shutdown.
fn serve(
    app: &Arc<App>,
    tls: Arc<ServerConfig>,
    config: &Config,
    public: TcpListener,
    internal: Option<TcpListener>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let acceptor = TlsAcceptor::from(tls);
    let serving = |exposure, limits| Serving {
        acceptor: acceptor.clone(),
        app: app.clone(),
        exposure,
        limits,
    };
    let public_exposure = match internal {
        Some(_) => Exposure::Public,
        None => Exposure::All,
    };
    let mut tasks = vec![tokio::spawn(listener::accept_loop(
        public,
        serving(public_exposure, config.public_limits),
        shutdown.clone(),
    ))];
    if let Some(l) = internal {
        tasks.push(tokio::spawn(listener::accept_loop(
            l,
            serving(Exposure::Internal, config.internal_limits),
            shutdown.clone(),
        )));
    }
    tasks
}

/// The background tasks until shutdown: housekeeping (run while this replica leads)
/// and following the store (the registry and keys other replicas change).
fn background(
    app: &Arc<App>,
    every: Duration,
    leading: &Arc<AtomicBool>,
    shutdown: &watch::Receiver<bool>,
) -> [JoinHandle<()>; 2] {
    let mut stop = shutdown.clone();
    [
        tokio::spawn(housekeeping(
            app.clone(),
            every,
            leading.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(
            app.clone()
                .follow_store(KEYS_REFRESH, async move { stopped(&mut stop).await }),
        ),
    ]
}

/// Refuses settings that would serve something unsafe or nothing at all.
/// Opens (and migrates) the configured database: PostgreSQL when set, else the SQLite file.
async fn open_db(config: &Config) -> Result<Db, StartError> {
    let (db_path, postgres) = (config.db.clone(), config.postgres.clone());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || match postgres {
        Some(pg) => {
            let engine = trust_store::PgEngine::open(&pg, handle)?;
            Db::from_engine(Box::new(engine))
        }
        None => Db::open(&db_path),
    })
    .await
    .map_err(|e| StartError::App(Error::Internal(e.to_string())))?
    .map_err(StartError::from)
}

fn check(config: &Config) -> Result<(), StartError> {
    // Development sessions open a session for any customer id: never reachable from
    // beyond this machine.
    if config.dev_customer_sessions && !config.listen.ip().is_loopback() {
        return Err(StartError::Config {
            field: "dev-customer-sessions",
            what: format!(
                "refused on the non-loopback listener {}: development sessions authenticate nobody",
                config.listen
            ),
        });
    }
    let zero = |limits: &ListenerLimits, prefix: &'static str| {
        limits.zero_field().map(|f| StartError::Config {
            field: prefix,
            what: format!("{f} must be greater than 0"),
        })
    };
    if let Some(e) = zero(&config.public_limits, "public listener") {
        return Err(e);
    }
    if let Some(e) = zero(&config.internal_limits, "internal listener") {
        return Err(e);
    }
    if let Some(f) = config.abuse.zero_field() {
        return Err(StartError::Config {
            field: f,
            what: "must be greater than 0".into(),
        });
    }
    if config.breach.enabled && config.breach.every.is_zero() {
        return Err(StartError::Config {
            field: "breach-interval-ms",
            what: "must be greater than 0".into(),
        });
    }
    if config.internal_listen == Some(config.listen) && config.listen.port() != 0 {
        return Err(StartError::Config {
            field: "internal-listen",
            what: "must differ from --listen".into(),
        });
    }
    Ok(())
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

/// Binds a listener; the bound address matters when the configuration asks for port 0.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = listener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
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
        abuse: config.abuse,
        dev_customer_sessions: config.dev_customer_sessions,
        operators,
        hubs,
        heartbeat: config.heartbeat,
        feed_retention: config.feed_retention,
        sla: config.sla.clone(),
        billing: config.billing.clone(),
    }
}

/// Imports the configured signing keys and runs one rotation step; refuses to start
/// without an active signer, since every token request would fail.
async fn activate_keys(app: &Arc<App>, imported: &[(Alg, Vec<u8>)]) -> Result<(), StartError> {
    if !imported.is_empty() {
        let (a, keys) = (app.clone(), imported.to_vec());
        let kids = blocking(move || a.import_keys(&keys)).await?;
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

/// Whether this replica leads housekeeping: keeps the leadership it holds while the
/// store says it is held, else tries to take it (SQLite: always granted; PostgreSQL: an
/// advisory lock, so exactly one replica runs housekeeping).
async fn leads(app: &Arc<App>, lead: &mut Option<Box<dyn Leadership>>) -> bool {
    if lead.as_ref().is_some_and(|l| l.held()) {
        return true;
    }
    if lead.take().is_some() {
        tracing::warn!("housekeeping leadership lost");
    }
    let a = app.clone();
    match blocking(move || a.db.engine().try_lead().map_err(Error::from)).await {
        Ok(Some(l)) => {
            tracing::info!("this replica runs housekeeping");
            *lead = Some(l);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, "taking the housekeeping leadership failed");
            false
        }
    }
}

/// One housekeeping round on the leading replica: expiry, key rotation, and (when
/// `prune`) pruning.
async fn housekeeping_round(app: &Arc<App>, prune: bool) {
    match app.expire_due().await {
        Ok(0) => {}
        Ok(k) => tracing::info!(expired = k, "consents expired"),
        Err(e) => tracing::error!(error = %e, "expiry failed"),
    }
    if let Err(e) = app.rotate_keys(false).await {
        tracing::error!(error = %e, "key rotation failed");
    }
    match app.issue_due_statements().await {
        Ok(Some(i)) if i.issued_now => {
            tracing::info!(month = %i.month, statements = i.statements, "statements issued");
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "issuing statements failed"),
    }
    if prune {
        match app.prune_store().await {
            Ok(0) => {}
            Ok(k) => tracing::info!(pruned = k, "feed history pruned"),
            Err(e) => tracing::error!(error = %e, "pruning failed"),
        }
    }
}

/// Housekeeping until shutdown; `leading` tells the prober whether this replica leads.
async fn housekeeping(
    app: Arc<App>,
    every: Duration,
    leading: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut lead = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stopped(&mut shutdown) => return,
        }
        if n == 0 {
            // In memory, per replica.
            app.addresses.forget_idle();
        }
        // Leadership is checked every round: lost with its connection, it stops here.
        let leads = leads(&app, &mut lead).await;
        leading.store(leads, Ordering::Release);
        if leads {
            housekeeping_round(&app, n == 0).await;
        }
        n = (n + 1) % PRUNE_EVERY_TICKS;
    }
}
