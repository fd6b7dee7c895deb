//! The PostgreSQL engine: several trust replicas on one database.
//!
//! - Connections: a `deadpool-postgres` pool of `tokio-postgres` clients, TLS with
//!   rustls (or plaintext to a loopback host / unix socket), every session with
//!   `synchronous_commit=on` (a COMMIT returns once the WAL is flushed locally and, with
//!   `synchronous_standby_names` configured on the server, on the synchronous standby),
//!   a `statement_timeout` and an `idle_in_transaction_session_timeout`.
//! - Synchronous interface: the engine captures a multi-thread runtime's `Handle` when
//!   opened and drives each call with `Handle::block_on` from the caller's (blocking)
//!   thread, bounded by a client-side deadline so a vanished server cannot hang a caller.
//! - The change feed's sequencer is the `feed_head` row (see [`crate::pg_txn`]);
//!   `LISTEN/NOTIFY` only wakes the head watcher, housekeeping leadership is a
//!   session advisory lock, and epochs follow the server's WAL timeline
//!   (see [`crate::pg_cluster`]).
//! - Errors: pool exhaustion and connection failures are [`StoreError::Unavailable`],
//!   serialization failures and deadlocks [`StoreError::Conflict`], anything else
//!   [`StoreError::Postgres`] with the SQLSTATE and the server's message (never the
//!   DETAIL, which can quote values, and never parameters or the password).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{Pool, PoolError, Runtime};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio_postgres::Config;

use crate::api::{Dialect, Engine, Leadership, ReadTxn, StoreError, WriteTxn};
use crate::pg_cluster::{self, Listener};
use crate::pg_migrations;
use crate::pg_tls::Connector;
use crate::pg_txn::{PgRead, PgWrite};

/// How to reach the database.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/dbname?…` (or the key=value form). A unix
    /// socket: `postgres://user@%2Frun%2Fpostgresql/dbname`.
    pub url: String,
    /// Most pooled connections (the `LISTEN` and leadership connections are extra).
    pub pool_size: usize,
    /// Connecting (and waiting for a pooled connection) gives up after this.
    pub connect_timeout: Duration,
    /// The server cancels a statement running longer (waiting for the feed head's lock
    /// included); also the limit for a session idle inside a transaction.
    pub statement_timeout: Duration,
    /// The CA certificate(s) (PEM) that signed the server's certificate: TLS required.
    /// `None`: plaintext, accepted only for a loopback host or a unix socket.
    pub tls: Option<PathBuf>,
    /// The password, when it is not in `url` (read from a file, so that it is on no
    /// command line). Never shown by `Debug`.
    pub password: Option<String>,
}

impl PgSettings {
    /// Settings for `url` with the defaults: 16 connections, 5 s to connect, 15 s per
    /// statement, no TLS.
    pub fn new(url: impl Into<String>) -> PgSettings {
        PgSettings {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(15),
            tls: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// `url` without its password (in the userinfo or a `password=` parameter).
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let Some(i) = url.find("://") else {
        return redact_password_param(url); // the key=value form
    };
    let (scheme, rest) = url.split_at(i + 3);
    out.push_str(scheme);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let user = &authority[..at];
            match user.find(':') {
                Some(colon) => {
                    out.push_str(&user[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(user),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(&redact_password_param(tail));
    out
}

/// Replaces the value of every `password=` parameter (URL query or key=value form).
fn redact_password_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.to_ascii_lowercase().find("password") {
        let after = &rest[i + "password".len()..];
        let trimmed = after.trim_start();
        if let Some(value) = trimmed.strip_prefix('=') {
            out.push_str(&rest[..i]);
            out.push_str("password=***");
            let value = value.trim_start();
            let end = match value.strip_prefix('\'') {
                // A quoted value (key=value form): up to the closing quote.
                Some(quoted) => quoted.find('\'').map_or(value.len(), |q| q + 2),
                None => value.find(['&', ' ']).unwrap_or(value.len()),
            };
            rest = &value[end..];
        } else {
            out.push_str(&rest[..i + "password".len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The PostgreSQL engine (see the module documentation).
pub struct PgEngine {
    pub(crate) handle: Handle,
    pub(crate) pool: Pool,
    pub(crate) cfg: Config,
    pub(crate) connector: Connector,
    /// The client-side deadline of one call (statement timeout + connect timeout + 1 s).
    pub(crate) limit: Duration,
    pub(crate) connect_timeout: Duration,
    database: String,
    store_id: String,
    /// The newest head this engine has seen committed.
    known_head: AtomicU64,
    epoch: Mutex<Option<(Instant, u64)>>,
    listener: Listener,
}

impl std::fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEngine")
            .field("database", &self.database)
            .field("store_id", &self.store_id)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// The session settings every connection starts with.
fn session_options(s: &PgSettings) -> String {
    let st = s.statement_timeout.as_millis().max(1);
    format!(
        "-c synchronous_commit=on -c statement_timeout={st} \
         -c idle_in_transaction_session_timeout={st} -c lock_timeout=0"
    )
}

/// The client configuration and connector for `s`.
fn client_config(s: &PgSettings) -> Result<(Config, Connector), StoreError> {
    let mut cfg: Config = s.url.parse().map_err(|e: tokio_postgres::Error| {
        StoreError::Postgres(format!("the database url: {}", message_chain(&e)))
    })?;
    if let Some(password) = &s.password {
        cfg.password(password.as_bytes());
    }
    cfg.connect_timeout(s.connect_timeout);
    cfg.keepalives_idle(Duration::from_secs(10));
    cfg.keepalives_interval(Duration::from_secs(5));
    cfg.keepalives_retries(3);
    if cfg.get_application_name().is_none() {
        cfg.application_name("trust");
    }
    let options = match cfg.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {}", session_options(s)),
        _ => session_options(s),
    };
    cfg.options(options);
    let connector = Connector::new(&mut cfg, s.tls.as_deref())?;
    Ok((cfg, connector))
}

impl PgEngine {
    /// Connects, migrates the schema (one replica at a time), reads or creates the
    /// store id, records the epoch and starts listening for other replicas' commits.
    /// `handle` must belong to a multi-thread runtime that outlives the engine; call
    /// from a thread that is not running async code (e.g. `spawn_blocking`).
    pub fn open(settings: &PgSettings, handle: Handle) -> Result<PgEngine, StoreError> {
        if handle.runtime_flavor() == RuntimeFlavor::CurrentThread {
            return Err(StoreError::Postgres(
                "the PostgreSQL engine needs a multi-thread tokio runtime".into(),
            ));
        }
        let (cfg, connector) = client_config(settings)?;
        let pool = Pool::builder(connector.manager(cfg.clone()))
            .max_size(settings.pool_size.max(1))
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Postgres(format!("connection pool: {e}")))?;
        let limit = settings.statement_timeout + settings.connect_timeout + Duration::from_secs(1);
        let mut engine = PgEngine {
            handle,
            pool,
            cfg,
            connector,
            limit,
            connect_timeout: settings.connect_timeout,
            database: redact_url(&settings.url),
            store_id: String::new(),
            known_head: AtomicU64::new(0),
            epoch: Mutex::new(None),
            listener: Listener::default(),
        };
        engine.store_id = engine.prepare()?;
        engine.epoch()?;
        if let Err(e) = engine.listener.connect(&engine) {
            tracing::warn!(error = %e, "LISTEN for other replicas' changes failed; retrying");
        }
        Ok(engine)
    }

    /// Migrates and returns the store id.
    fn prepare(&self) -> Result<String, StoreError> {
        let migrate = async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            pg_migrations::migrate(&mut client).await.map(drop)
        };
        // Waiting for another replica's migration can take longer than one statement.
        self.block_for(self.limit * 4, migrate)?;
        self.block(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            pg_migrations::store_id(&client).await
        })
    }

    /// Runs `fut` to completion on the engine's runtime from this (blocking) thread,
    /// within the client-side deadline.
    pub(crate) fn block<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.block_for(self.limit, fut)
    }

    pub(crate) fn block_for<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.handle
            .block_on(async { tokio::time::timeout(limit, fut).await })
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "no answer from PostgreSQL within {limit:?}"
                )))
            })
    }

    /// Raises the newest head this engine knows of; returns it.
    pub(crate) fn saw_head(&self, head: u64) -> u64 {
        self.known_head.fetch_max(head, Ordering::AcqRel).max(head)
    }

    /// The newest head this engine knows of (without asking the database).
    pub(crate) fn known_head(&self) -> u64 {
        self.known_head.load(Ordering::Acquire)
    }
}

/// How long an epoch read from the database is reused.
const EPOCH_CACHE: Duration = Duration::from_secs(1);

impl Engine for PgEngine {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn epoch(&self) -> Result<u64, StoreError> {
        let mut cache = self.epoch.lock().map_err(|_| StoreError::Poisoned)?;
        if let Some((at, epoch)) = *cache {
            if at.elapsed() < EPOCH_CACHE {
                return Ok(epoch);
            }
        }
        let epoch = self.block(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            pg_cluster::current_epoch(&mut client).await
        })?;
        *cache = Some((Instant::now(), epoch));
        Ok(epoch)
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>, StoreError> {
        Ok(Box::new(PgWrite::begin(self)?))
    }

    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>, StoreError> {
        Ok(Box::new(PgRead::begin(self)?))
    }

    fn committed_head(&self) -> Result<u64, StoreError> {
        let v: i64 = self.block(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let st = client
                .prepare_cached("SELECT version FROM feed_head")
                .await
                .map_err(pg_error)?;
            let row = client.query_one(&st, &[]).await.map_err(pg_error)?;
            row.try_get(0).map_err(pg_error)
        })?;
        let head = u64::try_from(v)
            .map_err(|_| StoreError::Corrupt(format!("feed_head.version = {v}")))?;
        Ok(self.saw_head(head))
    }

    fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        pg_cluster::try_lead(self)
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<(), StoreError> {
        self.listener.wait(self, timeout)
    }
}

/// The error's message and its sources, joined (no DETAIL: it can quote values).
pub(crate) fn message_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether `e` means the server could not be reached or the connection broke.
fn is_connection_failure(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    let text = e.to_string();
    text.starts_with("error connecting") || text.starts_with("timeout waiting")
}

/// Maps a client error (see the module documentation).
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let msg = format!("{code}: {}", db.message());
        return match code {
            "40001" | "40P01" => StoreError::Conflict,
            c if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300") => {
                StoreError::Unavailable(msg)
            }
            _ => StoreError::Postgres(msg),
        };
    }
    if is_connection_failure(&e) {
        StoreError::Unavailable(message_chain(&e))
    } else {
        StoreError::Postgres(message_chain(&e))
    }
}

/// Maps a pool error: no connection (timeout, refused, any failure to connect) is
/// `Unavailable`.
pub(crate) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => match pg_error(e) {
            StoreError::Postgres(m) => StoreError::Unavailable(m),
            other => other,
        },
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "no database connection in time ({kind:?}): the pool is exhausted or the server is unreachable"
        )),
        other => StoreError::Unavailable(format!("database connection pool: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        let cases = [
            (
                "postgres://trust:s3cret@db:5432/trust",
                "postgres://trust:***@db:5432/trust",
            ),
            ("postgres://trust@db/trust", "postgres://trust@db/trust"),
            (
                "postgres://db/trust?password=s3cret&x=1",
                "postgres://db/trust?password=***&x=1",
            ),
            (
                "host=db user=t password=s3cret dbname=t",
                "host=db user=t password=*** dbname=t",
            ),
            ("postgres://u:p%40ss@db/t", "postgres://u:***@db/t"),
            (
                "host=db password='a b' user=t",
                "host=db password=*** user=t",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
        }
        let s = PgSettings::new("postgres://trust:s3cret@db/trust");
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn a_bad_url_error_does_not_show_the_password() {
        let s = PgSettings::new("postgres://trust:s3cret@db:notaport/trust");
        let e = client_config(&s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.is_empty() && !e.contains("s3cret"), "{e}");
    }
}
