//! Process wiring: loads the configuration, builds the Pingora server (mTLS API
//! listener, admin listener, background tasks), runs it until a signal, then drains
//! the audit journal. Also the reload path shared by SIGHUP and `POST /admin/reload`.

use async_trait::async_trait;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{ListenerConfig, ListenerLimits};
use pingora::prelude::*;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::listening::Service;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Admin;
use crate::audit::{AuditLog, Counters, Takeover};
use crate::config::ConfigError;
use crate::live::LiveChecks;
use crate::metrics::Metrics;
use crate::plane::FeedStatus;
use crate::proxy::Hub;
use crate::rollup::Rollups;
use crate::snapshot::{self, sections, Publisher, UpgradeSock};
use crate::state::State;
use crate::tls::{ConnectionTrust, ListenerCounters};

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
    /// A binary upgrade cannot be attempted safely.
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// The live checks' validator thread could not be started.
    #[error("live checks: cannot start the validator thread: {0}")]
    LiveChecks(std::io::Error),
}

/// How `run` gets its listening sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// Binds them (a port in use is an error).
    #[default]
    Fresh,
    /// Receives them from the running hub over `[server] upgrade_sock` once it is sent
    /// SIGQUIT (`gateway run --upgrade`); takes its audit journal over when it has closed it.
    Upgrade,
}

/// Validates a configuration without starting anything; returns its summary.
pub fn check(config: &Path) -> Result<String, ConfigError> {
    snapshot::check(config)
}

/// [`check`] with the file's warnings (what the trust registry replaces).
pub fn check_report(config: &Path) -> Result<snapshot::Checked, ConfigError> {
    snapshot::check_report(config)
}

/// Installs the log subscriber (stderr, `RUST_LOG` or the default below, `format` or the
/// default for where stderr goes; see `hub_log`). Idempotent.
///
/// The default silences pingora's connector log: with several worker threads it logs
/// "failed to acquire reusable stream" at error level whenever a pooled upstream
/// connection is handed between threads (thousands per second under load), and every
/// real upstream failure is already counted and journalled by the hub itself.
pub fn init_logging(format: Option<hub_log::LogFormat>) {
    hub_log::init(format, DEFAULT_LOG_FILTER);
}

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info,pingora_core::connectors=off";

/// Runs the hub until SIGINT/SIGTERM. Returns once shut down and the journal is flushed.
pub fn run(config: &Path) -> Result<(), RunError> {
    run_as(config, Start::Fresh)
}

/// Runs the hub, started fresh or as the new process of a binary upgrade, until a signal:
/// SIGTERM drains (`grace_period_secs`, then up to `shutdown_timeout_secs`), SIGQUIT hands
/// the listening sockets to a process started with `--upgrade` and then drains, SIGINT
/// stops at once. Returns once shut down and the journal is flushed.
pub fn run_as(config: &Path, start: Start) -> Result<(), RunError> {
    let state = Arc::new(start_state(config, start)?);
    let process = state.process.clone();
    let conf = ServerConf {
        threads: process.threads,
        work_stealing: process.work_stealing,
        grace_period_seconds: Some(process.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(process.shutdown_timeout_secs),
        upstream_keepalive_pool_size: process.upstream_keepalive_pool_size,
        max_retries: 2,
        // Never pingora's shared default in /tmp: without a socket of its own, SIGQUIT
        // finds no new process and ends in a graceful stop.
        upgrade_sock: process
            .upgrade_sock
            .path()
            .map_or_else(String::new, |p| p.display().to_string()),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: start == Start::Upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if start == Start::Upgrade {
        tracing::info!(
            upgrade_sock = %server.configuration.upgrade_sock,
            "waiting for the running hub's listening sockets: send it SIGQUIT (within 5 s)"
        );
    }
    // With `--upgrade`, blocks until the old process has sent its listening sockets (the
    // API and admin listeners), or exits the process when none arrive.
    server.bootstrap();
    add_services(&mut server, &state)?;
    server.run(pingora::server::RunArgs::default());

    tracing::info!("shut down; flushing the audit journal");
    // A sink that blocks (a pipe nobody reads) must not hold the process forever.
    let wait = Duration::from_secs(process.shutdown_timeout_secs.max(1));
    state.close_journal(wait);
    // The journal's writer closed every minute: a last push, then the spool.
    if let Some(rollups) = &state.rollups {
        rollups.finish(state.trust_plane(), wait);
    }
    Ok(())
}

/// The API listener with the proxy, the admin listener and the background services.
fn add_services(server: &mut Server, state: &Arc<State>) -> Result<(), RunError> {
    server.add_service(proxy_service(server, state)?);
    let mut admin = Service::new("admin".to_string(), Admin::new(state.clone()));
    admin.add_tcp(&state.process.admin_listen.to_string());
    server.add_service(admin);
    server.add_service(pingora::services::background::background_service(
        "maintenance",
        Maintenance {
            state: state.clone(),
        },
    ));
    if state.rollups.is_some() {
        server.add_service(pingora::services::background::background_service(
            "rollups",
            RollupPusher {
                state: state.clone(),
            },
        ));
    }
    if let Some(plane) = state.trust_plane() {
        tracing::info!(url = %plane.url, "consents follow the trust sidecar");
        server.add_service(pingora::services::background::background_service(
            "consent-feed",
            crate::follower::Follower::new(state.clone()),
        ));
    }
    Ok(())
}

/// Loads the configuration, checks the listeners can bind, publishes the first snapshot
/// and opens the journal.
fn start_state(config: &Path, start: Start) -> Result<State, RunError> {
    let feed = Arc::new(FeedStatus::new());
    let file = sections::load(config, None, &feed)?;
    let process = file.process.clone();
    check_listeners(&process, start)?;
    check_upgrade_sock(&process.upgrade_sock, start)?;
    let publisher = Publisher::new(file, feed);
    tracing::info!(summary = %publisher.current().summary(), "configuration loaded");
    let metrics = Metrics::new();
    metrics.generation.set(1);
    let takeover = match start {
        Start::Fresh => Takeover::Refuse,
        Start::Upgrade => Takeover::Wait,
    };
    let rollups = process
        .rollups
        .clone()
        .map(|settings| Arc::new(Rollups::start(settings, &metrics)));
    let live = publisher.current().file().live;
    let counters = Counters {
        rollups: rollups.as_ref().map(|r| r.aggregator()),
        live: Some(
            LiveChecks::start(live.queue, metrics.live_checks.clone())
                .map_err(RunError::LiveChecks)?,
        ),
    };
    let audit = AuditLog::open_with(
        &process.audit_path,
        process.audit_buffer,
        takeover,
        counters,
    )?;
    let mut state = State::new(publisher, metrics, audit, config.to_path_buf());
    state.rollups = rollups;
    Ok(state)
}

/// Pingora retries a busy port for 30 s and then panics; find out now, and say so. In an
/// upgrade a busy port is the old process's, about to be handed over.
fn check_listeners(process: &snapshot::ProcessSettings, start: Start) -> Result<(), RunError> {
    for addr in [process.listen, process.admin_listen] {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => {}
            Err(e) if start == Start::Upgrade && e.kind() == ErrorKind::AddrInUse => {}
            Err(e) => return Err(RunError::Listener(format!("cannot listen on {addr}: {e}"))),
        }
    }
    Ok(())
}

/// The upgrade socket is where listening sockets change hands. The new process makes it
/// connectable by anyone (pingora sets mode 0666), so in an upgrade its directory must be
/// closed to other users, and a path that is not a socket (pingora would delete it) is
/// refused. The old process sends its sockets to whatever listens there on SIGQUIT, so a
/// fresh start warns when other users could create that socket (a directory they can
/// write); it may never be upgraded, so it does not refuse.
fn check_upgrade_sock(sock: &UpgradeSock, start: Start) -> Result<(), RunError> {
    let sock = match (sock, start) {
        (UpgradeSock::At(p), _) => p,
        (UpgradeSock::Unavailable { reason, .. }, Start::Upgrade) => {
            return Err(RunError::Upgrade(format!("no upgrade socket: {reason}")))
        }
        (UpgradeSock::Unavailable { reason, warn }, Start::Fresh) => {
            if *warn {
                tracing::warn!(problem = %reason, "binary upgrades are unavailable");
            }
            return Ok(());
        }
    };
    match (upgrade_sock_problem(sock, start), start) {
        (None, _) => Ok(()),
        (Some(p), Start::Upgrade) => Err(RunError::Upgrade(p)),
        (Some(p), Start::Fresh) => {
            tracing::warn!(problem = %p, "SIGQUIT would hand the listening sockets over unsafely");
            Ok(())
        }
    }
}

/// Why `sock` is not a safe place for the upgrade socket of a `start`, if it is not.
fn upgrade_sock_problem(sock: &Path, start: Start) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = match sock.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mode = match std::fs::metadata(dir) {
        Ok(m) => m.permissions().mode() & 0o777,
        Err(e) => return Some(format!("upgrade_sock directory {}: {e}", dir.display())),
    };
    // Others may create a socket there (write), or connect to the new process's (search).
    let others = match start {
        Start::Fresh => 0o002,
        Start::Upgrade => 0o007,
    };
    if mode & others != 0 {
        return Some(format!(
            "upgrade_sock {}: its directory is open to other users (mode {mode:o}); use one only the hub's user can enter (e.g. 0700)",
            sock.display()
        ));
    }
    match std::fs::symlink_metadata(sock) {
        Ok(m) if !m.file_type().is_socket() => Some(format!(
            "upgrade_sock {} exists and is not a socket",
            sock.display()
        )),
        _ => None,
    }
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
    client.ca_certs = Some(upstream_ca_bundle(&process.upstream_ca)?);
    client.cert_key_file = Some((
        process.upstream_cert.display().to_string(),
        process.upstream_key.display().to_string(),
    ));
    let mut proxy = ProxyServiceBuilder::new(&server.configuration, Hub::new(state.clone()))
        .name("hub")
        .client_options(client)
        .build();
    proxy.add_listener(api_listener(state)?);
    Ok(proxy)
}

/// The API listener: mTLS with the reloadable trust and certificate, sessions and
/// connections revoked with the trust they were verified under, the handshake timeout
/// and the connection cap.
fn api_listener(state: &Arc<State>) -> Result<ListenerConfig, RunError> {
    let process = &state.process;
    let mut tls =
        TlsSettings::intermediate("", "").map_err(|e| RunError::Listener(e.to_string()))?;
    tls.set_cert_resolver(state.tls_cert.clone());
    tls.set_client_cert_verifier(state.tls_verifier.clone());
    tls.set_session_storage(state.tls_verifier.sessions());
    let closed = &state.metrics.connections_closed;
    tls.set_peer_revalidation(ConnectionTrust::new(
        state.tls_verifier.clone(),
        closed.with_label_values(&["untrusted_certificate"]),
    ));
    if process.http2 {
        tls.enable_h2();
    }
    let limits = ListenerLimits {
        handshake_timeout: process.tls_handshake_timeout,
        max_connections: Some(process.max_connections),
        observer: Some(ListenerCounters::new(closed)),
    };
    Ok(ListenerConfig::tcp(process.listen.to_string())
        .tls(tls)
        .limits(limits))
}

/// The banks' CA certificates (DER), handed to the connector in memory: no bundle is
/// assembled in a file anyone could predict, replace or read.
fn upstream_ca_bundle(files: &[std::path::PathBuf]) -> Result<Vec<Vec<u8>>, RunError> {
    let read = |f: &std::path::PathBuf| {
        std::fs::read(f)
            .map_err(|e| RunError::Listener(format!("upstream_tls.ca: {}: {e}", f.display())))
    };
    let pems = files.iter().map(read).collect::<Result<Vec<_>, _>>()?;
    let ders = crate::tls::ca_ders(&pems)
        .map_err(|e| RunError::Listener(format!("upstream_tls.ca: {e}")))?;
    Ok(ders.into_iter().map(|c| c.as_ref().to_vec()).collect())
}

/// `[rollups]`: pushes closed minutes to the control plane until shutdown (the last
/// push and the spool happen after the journal is closed, in `run_as`).
struct RollupPusher {
    state: Arc<State>,
}

#[async_trait]
impl BackgroundService for RollupPusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(rollups) = &self.state.rollups else {
            return;
        };
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        rollups.run(|| self.state.trust_plane(), stop).await;
    }
}

/// Background duties: SIGHUP reloads, SIGUSR1 reopens the journal, the consent file's
/// watcher, rate-limiter housekeeping, readiness.
struct Maintenance {
    state: Arc<State>,
}

/// A signal stream, or none (logged) when it cannot be installed.
fn watch_signal(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, signal = name, "cannot watch the signal");
            None
        }
    }
}

/// The next delivery of a watched signal (never, when it is not watched).
async fn next_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s.as_mut() {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

impl Maintenance {
    /// Two steps of start-up. Once the API listener accepts, systemd is told (`READY=1`,
    /// `MAINPID`): the process serves (open data, row 7's answers), and a binary upgrade's
    /// new process must become the unit's main one before the old one exits, whether or
    /// not the sidecar answers. Then, once the control plane's first snapshot is loaded
    /// (at once in file mode), `/readyz` turns 200 for load balancers.
    async fn probe_readiness(&self, listening: &mut bool) {
        let listen = self.state.process.listen;
        if !*listening {
            if tokio::net::TcpStream::connect(listen).await.is_err() {
                return;
            }
            *listening = true;
            tracing::info!(%listen, "listening");
            crate::systemd::ready();
        }
        if !self.state.awaits_control_plane() {
            self.state.ready.store(true, Ordering::Relaxed);
            tracing::info!(%listen, "ready");
        }
    }
}

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::SignalKind;
        let mut hup = watch_signal(SignalKind::hangup(), "SIGHUP");
        let mut usr1 = watch_signal(SignalKind::user_defined1(), "SIGUSR1");
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        // The consent file is watched: a control plane that replaces it (write to a
        // temporary name, then rename) is followed within a second; a file that cannot be
        // loaded is retried with back-off.
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        let mut backoff = crate::snapshot::Backoff::default();
        let mut ready_probe = tokio::time::interval(Duration::from_millis(50));
        let mut listening = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = next_signal(&mut hup) => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = self.state.reload().await;
                }
                Some(()) = next_signal(&mut usr1) => {
                    tracing::info!("SIGUSR1: reopening the audit journal");
                    self.state.reopen_journal();
                }
                _ = tick.tick() => {
                    self.state.snapshot().limits().retain_recent();
                }
                _ = watch.tick() => self.state.follow_consent_file(&mut backoff).await,
                _ = ready_probe.tick(), if !self.state.ready.load(Ordering::Relaxed) => {
                    self.probe_readiness(&mut listening).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir_with_mode(mode: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).expect("chmod");
        dir
    }

    #[test]
    fn an_upgrade_socket_is_refused_where_other_users_could_reach_it() {
        let private = dir_with_mode(0o700);
        let sock = private.path().join("upgrade.sock");
        assert_eq!(upgrade_sock_problem(&sock, Start::Upgrade), None);
        assert_eq!(upgrade_sock_problem(&sock, Start::Fresh), None);
        // Others may enter: they could connect to the new process's socket (mode 0666).
        let searchable = dir_with_mode(0o755);
        let sock = searchable.path().join("upgrade.sock");
        let problem = upgrade_sock_problem(&sock, Start::Upgrade).expect("refused");
        assert!(problem.contains("mode 755"), "{problem}");
        assert_eq!(upgrade_sock_problem(&sock, Start::Fresh), None);
        assert!(matches!(
            check_upgrade_sock(&UpgradeSock::At(sock.clone()), Start::Upgrade),
            Err(RunError::Upgrade(_))
        ));
        assert!(check_upgrade_sock(&UpgradeSock::At(sock), Start::Fresh).is_ok());
        // Others may write: they could plant the socket the old process sends to.
        let writable = dir_with_mode(0o733);
        let sock = writable.path().join("upgrade.sock");
        assert!(upgrade_sock_problem(&sock, Start::Fresh).is_some());
        assert!(upgrade_sock_problem(&sock, Start::Upgrade).is_some());
    }

    #[test]
    fn an_upgrade_never_replaces_a_file_that_is_not_a_socket() {
        let dir = dir_with_mode(0o700);
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, "not a socket").expect("write");
        let problem = upgrade_sock_problem(&path, Start::Upgrade).expect("refused");
        assert!(problem.contains("not a socket"), "{problem}");
        let sock = dir.path().join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        assert_eq!(upgrade_sock_problem(&sock, Start::Upgrade), None);
    }

    #[test]
    fn an_upgrade_needs_a_socket_path() {
        for warn in [false, true] {
            let none = UpgradeSock::Unavailable {
                reason: "set server.upgrade_sock".into(),
                warn,
            };
            let err = check_upgrade_sock(&none, Start::Upgrade).expect_err("refused");
            assert!(
                err.to_string()
                    .contains("no upgrade socket: set server.upgrade_sock"),
                "{err}"
            );
            assert!(check_upgrade_sock(&none, Start::Fresh).is_ok());
        }
    }
}
