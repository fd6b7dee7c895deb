//! Process wiring: loads the configuration, builds the Pingora server (mTLS API
//! listener, admin listener, background tasks), runs it until a signal, then drains
//! the audit journal. Also the reload path shared by SIGHUP and `POST /admin/reload`.

use async_trait::async_trait;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Admin;
use crate::audit::AuditLog;
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::plane::FeedStatus;
use crate::proxy::Hub;
use crate::snapshot::{self, sections, Publisher};
use crate::state::State;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The audit journal cannot be opened.
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Pingora refused a listener setting.
    #[error("listener: {0}")]
    Listener(String),
}

/// Validates a configuration without starting anything; returns its summary.
pub fn check(config: &Path) -> Result<String, ConfigError> {
    snapshot::check(config)
}

/// Installs the log subscriber (stderr, `RUST_LOG` or the default below). Idempotent.
///
/// The default silences pingora's connector log: with several worker threads it logs
/// "failed to acquire reusable stream" at error level whenever a pooled upstream
/// connection is handed between threads (thousands per second under load), and every
/// real upstream failure is already counted and journalled by the hub itself.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info,pingora_core::connectors=off";

/// Runs the hub until SIGINT/SIGTERM. Returns once shut down and the journal is flushed.
pub fn run(config: &Path) -> Result<(), RunError> {
    let state = Arc::new(start_state(config)?);
    let process = state.process.clone();
    let conf = ServerConf {
        threads: process.threads,
        work_stealing: process.work_stealing,
        grace_period_seconds: Some(process.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(process.shutdown_timeout_secs),
        upstream_keepalive_pool_size: process.upstream_keepalive_pool_size,
        max_retries: 2,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server.add_service(proxy_service(&server, &state)?);
    let mut admin = Service::new("admin".to_string(), Admin::new(state.clone()));
    admin.add_tcp(&process.admin_listen.to_string());
    server.add_service(admin);
    server.add_service(pingora::services::background::background_service(
        "maintenance",
        Maintenance {
            state: state.clone(),
        },
    ));
    if let Some(plane) = state.trust_plane() {
        tracing::info!(url = %plane.url, "consents follow the trust sidecar");
        server.add_service(pingora::services::background::background_service(
            "consent-feed",
            crate::follower::Follower::new(state.clone()),
        ));
    }
    server.run(pingora::server::RunArgs::default());

    tracing::info!("shut down; flushing the audit journal");
    if let Ok(mut a) = state.audit.lock() {
        if let Some(mut log) = a.take() {
            log.close();
        }
    }
    Ok(())
}

/// Loads the configuration, checks the listeners can bind, publishes the first snapshot
/// and opens the journal.
fn start_state(config: &Path) -> Result<State, RunError> {
    let feed = Arc::new(FeedStatus::new());
    let file = sections::load(config, None, &feed)?;
    let process = file.process.clone();
    // Pingora retries a busy port for 30 s and then panics; find out now, and say so.
    for addr in [process.listen, process.admin_listen] {
        std::net::TcpListener::bind(addr)
            .map_err(|e| RunError::Listener(format!("cannot listen on {addr}: {e}")))?;
    }
    let publisher = Publisher::new(file, feed);
    tracing::info!(summary = %publisher.current().summary(), "configuration loaded");
    let metrics = Metrics::new();
    metrics.generation.set(1);
    let audit = AuditLog::open(&process.audit_path, process.audit_buffer)?;
    Ok(State::new(publisher, metrics, audit, config.to_path_buf()))
}

/// The mTLS API listener and the proxy behind it.
fn proxy_service(
    server: &Server,
    state: &Arc<State>,
) -> Result<Service<pingora::proxy::HttpProxy<Hub>>, RunError> {
    let process = &state.process;
    // The hub's identity towards banks and the banks' CA are built once, into the
    // connector's TLS configuration, rather than per peer: pingora would otherwise
    // rebuild the client configuration per connection and hash the certificate per request.
    let mut client = ConnectorOptions::from_server_conf(&server.configuration);
    client.ca_file = Some(upstream_ca_bundle(&process.upstream_ca)?);
    client.cert_key_file = Some((
        process.upstream_cert.display().to_string(),
        process.upstream_key.display().to_string(),
    ));
    let mut proxy = ProxyServiceBuilder::new(&server.configuration, Hub::new(state.clone()))
        .name("hub")
        .client_options(client)
        .build();
    let mut tls =
        TlsSettings::intermediate("", "").map_err(|e| RunError::Listener(e.to_string()))?;
    tls.set_cert_resolver(state.tls_cert.clone());
    tls.set_client_cert_verifier(state.tls_verifier.clone());
    if process.http2 {
        tls.enable_h2();
    }
    proxy.add_tls_with_settings(&process.listen.to_string(), None, tls);
    Ok(proxy)
}

/// The banks' CA bundle as one file (pingora's connector takes a single path).
fn upstream_ca_bundle(files: &[std::path::PathBuf]) -> Result<String, RunError> {
    if let [one] = files {
        return Ok(one.display().to_string());
    }
    let mut all = Vec::new();
    for f in files {
        all.extend(
            std::fs::read(f).map_err(|e| RunError::Listener(format!("{}: {e}", f.display())))?,
        );
        all.push(b'\n');
    }
    let path = std::env::temp_dir().join(format!("hub-upstream-ca-{}.pem", std::process::id()));
    std::fs::write(&path, all)
        .map_err(|e| RunError::Listener(format!("{}: {e}", path.display())))?;
    Ok(path.display().to_string())
}

/// Background duties: SIGHUP reloads, rate-limiter housekeeping, readiness.
struct Maintenance {
    state: Arc<State>,
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP; reload via the admin listener only");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        // The consent snapshot is watched: a control plane that replaces the file (write to
        // a temporary name, then rename) is followed within a second, as if by SIGHUP.
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        let mut refused = None;
        let mut ready_probe = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = self.state.reload().await;
                }
                _ = tick.tick() => {
                    self.state.snapshot().limiter().retain_recent();
                }
                _ = watch.tick() => {
                    let changed = self.state.snapshot().consents_changed_on_disk();
                    // A file that was refused is not retried every second, only once it changes again.
                    if changed.is_some() && changed != refused {
                        tracing::info!("consent snapshot changed on disk: reloading");
                        refused = if self.state.reload().await.is_err() { changed } else { None };
                    }
                }
                _ = ready_probe.tick(), if !self.state.ready.load(Ordering::Relaxed) => {
                    if tokio::net::TcpStream::connect(self.state.process.listen).await.is_ok() {
                        self.state.ready.store(true, Ordering::Relaxed);
                        tracing::info!(listen = %self.state.process.listen, "ready");
                    }
                }
            }
        }
    }
}
