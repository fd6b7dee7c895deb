//! Connections to PostgreSQL: TLS with rustls (the `ring` provider, the CA from a PEM
//! file, the server's name or IP address verified), or plaintext for a loopback host or
//! a unix socket only; the pool's connection manager; and dedicated connections (the
//! `LISTEN` connection, the housekeeping lock's connection) whose driver task reports
//! notifications and the connection's end.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::api::StoreError;

/// How connections are secured.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Plaintext: only for a loopback host or a unix socket.
    Plain,
    /// TLS (rustls), the server verified against the configured CA.
    Rustls(MakeRustlsConnect),
}

impl Connector {
    /// TLS with the CA in `ca` (PEM) when given; otherwise plaintext, refused unless
    /// every host of `cfg` is a loopback address or a unix socket. Sets `cfg`'s sslmode.
    pub(crate) fn new(cfg: &mut Config, ca: Option<&Path>) -> Result<Connector, StoreError> {
        match ca {
            Some(ca) => {
                cfg.ssl_mode(SslMode::Require);
                Ok(Connector::Rustls(rustls_connector(ca)?))
            }
            None => {
                if !only_local_hosts(cfg) {
                    return Err(StoreError::Postgres(
                        "plaintext connections are allowed only to a loopback host or a unix \
                         socket: configure the database's CA file to use TLS"
                            .into(),
                    ));
                }
                cfg.ssl_mode(SslMode::Disable);
                Ok(Connector::Plain)
            }
        }
    }

    /// The pool's connection manager (recycling: a closed connection is replaced).
    pub(crate) fn manager(&self, cfg: Config) -> Manager {
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        match self {
            Connector::Plain => Manager::from_config(cfg, NoTls, mc),
            Connector::Rustls(tls) => Manager::from_config(cfg, tls.clone(), mc),
        }
    }

    /// Opens a dedicated connection (not pooled); its driver task runs on the current
    /// runtime, forwards notifications to `signals` and marks the end of the connection.
    pub(crate) async fn dedicated(
        &self,
        cfg: &Config,
        signals: Signals,
    ) -> Result<Client, tokio_postgres::Error> {
        match self {
            Connector::Plain => {
                let (client, conn) = cfg.connect(NoTls).await?;
                tokio::spawn(drive(conn, signals));
                Ok(client)
            }
            Connector::Rustls(tls) => {
                let (client, conn) = cfg.connect(tls.clone()).await?;
                tokio::spawn(drive(conn, signals));
                Ok(client)
            }
        }
    }
}

/// What a dedicated connection's driver reports.
pub(crate) struct Signals {
    /// Counts the notifications received (`LISTEN`).
    pub(crate) notes: Option<watch::Sender<u64>>,
    /// Set when the connection has ended, for whatever reason.
    pub(crate) closed: Arc<AtomicBool>,
}

/// Drives a dedicated connection until it ends.
async fn drive<S, T>(mut conn: Connection<S, T>, signals: Signals)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                if let Some(notes) = &signals.notes {
                    notes.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "dedicated PostgreSQL connection ended");
                break;
            }
            None => break,
        }
    }
    signals.closed.store(true, Ordering::Release);
}

/// Whether every host `cfg` names is a loopback address (or `localhost`) or a unix socket.
fn only_local_hosts(cfg: &Config) -> bool {
    let hosts_local = cfg.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    });
    let addrs_local = cfg.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    hosts_local && addrs_local && !cfg.get_hosts().is_empty()
}

/// A rustls client configuration trusting only the CA certificates in `ca` (PEM).
fn rustls_connector(ca: &Path) -> Result<MakeRustlsConnect, StoreError> {
    let bad = |e: &dyn std::fmt::Display| {
        StoreError::Postgres(format!("database CA file {}: {e}", ca.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(source) => StoreError::Io {
            path: ca.to_owned(),
            source,
        },
        other => bad(&other),
    })?;
    for cert in certs {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> Config {
        url.parse().unwrap()
    }

    #[test]
    fn plaintext_only_to_loopback_or_unix_sockets() {
        assert!(only_local_hosts(&cfg("postgres://u@127.0.0.1:5432/d")));
        assert!(only_local_hosts(&cfg("postgres://u@localhost/d")));
        assert!(only_local_hosts(&cfg("postgres://u@[::1]:5432/d")));
        assert!(only_local_hosts(&cfg("postgres://u@%2Frun%2Fpostgresql/d")));
        assert!(!only_local_hosts(&cfg("postgres://u@db.example:5432/d")));
        assert!(!only_local_hosts(&cfg("postgres://u@10.0.0.5/d")));
        assert!(!only_local_hosts(&cfg(
            "postgres://u@127.0.0.1,db.example/d"
        )));
        let mut c = cfg("postgres://u@db.example/d");
        assert!(Connector::new(&mut c, None).is_err());
    }
}
