//! The SQLite database: opening it durably (WAL, `synchronous=FULL`), versioned schema
//! migrations, the single writer with its change versions, and a small pool of
//! read connections.
//!
//! Every mutation runs in one `BEGIN IMMEDIATE` transaction on the writer connection;
//! the API answers only after `COMMIT` returned, and with `synchronous=FULL` in WAL
//! mode a returned `COMMIT` has been fsynced: kill -9 (or power loss) after the
//! answer loses nothing. Change versions are allocated inside the transaction from
//! the writer's in-memory head, so they are contiguous (1, 2, 3, …) and a rolled back
//! transaction leaves no hole.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::watch;

/// Why the database could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON value could not be read back.
    #[error("database: stored JSON is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value breaks an invariant.
    #[error("database: corrupt value: {0}")]
    Corrupt(String),
    /// The database was written by a newer version of the sidecar.
    #[error("database schema version {found} is newer than this binary knows ({known}); refusing to open it")]
    NewerSchema {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest schema this binary knows.
        known: i64,
    },
    /// The database refused WAL mode (e.g. a network file system).
    #[error("database: journal mode is {0:?}, WAL is required")]
    NotWal(String),
    /// Setting the file's permissions failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A lock was poisoned by a panic in another thread.
    #[error("database: a lock was poisoned")]
    Poisoned,
    /// Another sidecar process has the database open.
    #[error("{}: another process holds the database's lock", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

/// The schema, one entry per version: entry `i` brings `user_version` from `i` to
/// `i + 1`. Never edit an entry once released; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE participants (
        bin        TEXT PRIMARY KEY,
        record     TEXT NOT NULL,          -- wire::ParticipantRecord as JSON
        status     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        version    INTEGER NOT NULL        -- feed version of the last change
    ) STRICT;

    CREATE TABLE participant_thumbprints (
        thumbprint TEXT PRIMARY KEY,       -- x5t#S256
        bin        TEXT NOT NULL REFERENCES participants(bin)
    ) STRICT;

    CREATE TABLE participant_history (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        bin     TEXT NOT NULL,
        at      INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        from_status TEXT,
        to_status   TEXT NOT NULL,
        version INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE consents (
        id         TEXT PRIMARY KEY,
        api_user   TEXT NOT NULL,
        customer   TEXT NOT NULL,
        status     TEXT NOT NULL,
        expires_at INTEGER,
        record     TEXT NOT NULL,          -- consent_cache::ConsentRecord as JSON
        version    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX consents_by_customer ON consents(customer);
    CREATE INDEX consents_due ON consents(expires_at) WHERE expires_at IS NOT NULL
        AND status IN ('awaiting_authorisation', 'authorised');

    CREATE TABLE consent_history (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        consent_id TEXT NOT NULL,
        at         INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        from_status TEXT,                  -- NULL for the creation
        to_status  TEXT NOT NULL,
        version    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX consent_history_by_consent ON consent_history(consent_id, seq);

    -- History is append-only: the database itself refuses to rewrite it.
    CREATE TRIGGER consent_history_no_update BEFORE UPDATE ON consent_history
        BEGIN SELECT RAISE(ABORT, 'consent_history is append-only'); END;
    CREATE TRIGGER consent_history_no_delete BEFORE DELETE ON consent_history
        BEGIN SELECT RAISE(ABORT, 'consent_history is append-only'); END;
    CREATE TRIGGER participant_history_no_update BEFORE UPDATE ON participant_history
        BEGIN SELECT RAISE(ABORT, 'participant_history is append-only'); END;
    CREATE TRIGGER participant_history_no_delete BEFORE DELETE ON participant_history
        BEGIN SELECT RAISE(ABORT, 'participant_history is append-only'); END;

    CREATE TABLE changes (
        version INTEGER PRIMARY KEY,       -- contiguous from 1
        at      INTEGER NOT NULL,
        line    TEXT NOT NULL              -- the feed line (wire::FeedLine JSON, no newline)
    ) STRICT;

    CREATE TABLE authorisations (
        id              TEXT PRIMARY KEY,
        consent_id      TEXT NOT NULL,
        customer        TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        state           TEXT NOT NULL,     -- open | succeeded | failed | superseded | closed
        codes_sent      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL,
        code_salt       BLOB,
        code_hash       BLOB,
        code_expires_at INTEGER
    ) STRICT;
    CREATE INDEX authorisations_by_consent ON authorisations(consent_id);

    CREATE TABLE customer_sessions (
        token_hash BLOB PRIMARY KEY,       -- SHA-256 of the bearer value
        customer   TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE signing_keys (
        kid            TEXT PRIMARY KEY,
        alg            TEXT NOT NULL,
        pkcs8          BLOB NOT NULL,
        published_at   INTEGER NOT NULL,   -- in the JWKS from then on
        activated_at   INTEGER,            -- signing from then on (NULL: the next key)
        deactivated_at INTEGER,            -- superseded then
        drop_after     INTEGER             -- leaves the JWKS then
    ) STRICT;
    "#,
    // 2: abuse limits (sliding windows) and customer logins through the identity provider.
    r#"
    CREATE TABLE rate_events (
        kind    TEXT NOT NULL,             -- code_sent | consent_created
        subject BLOB NOT NULL,             -- keyed SHA-256 of the customer id or BIN
        at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX rate_events_by_subject ON rate_events(kind, subject, at);
    CREATE INDEX rate_events_by_time ON rate_events(at);
    CREATE INDEX consents_by_api_user_status ON consents(api_user, status);

    CREATE TABLE customer_logins (
        state_hash    BLOB PRIMARY KEY,    -- SHA-256 of the OAuth state
        browser_hash  BLOB NOT NULL,       -- SHA-256 of the browser-binding cookie
        nonce         TEXT NOT NULL,
        pkce_verifier TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL
    ) STRICT;
    "#,
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Most idle read connections kept.
const MAX_IDLE_READERS: usize = 8;

/// The writer connection with the last committed change version.
pub(crate) struct Writer {
    conn: Connection,
    head: u64,
}

/// The database: one writer, pooled readers, the committed head version broadcast
/// to feed streams.
pub struct Db {
    path: PathBuf,
    /// Held (locked) for the life of the `Db`: one writer process per database.
    _lock: std::fs::File,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    store_id: String,
    head: watch::Sender<u64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .field("store_id", &self.store_id)
            .field("head", &*self.head.borrow())
            .finish_non_exhaustive()
    }
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotWal(mode));
    }
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;",
    )?;
    Ok(())
}

/// Applies the missing migrations, each in its own transaction with the version bump.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

/// Takes the exclusive lock of `{db}.lock`, waiting a few seconds for a previous
/// owner that is shutting down. The in-memory head assumes a single writer process;
/// the operating system drops the lock when its owner dies, even by SIGKILL.
fn lock(db: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::Io { path, source })
            }
        }
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    // The database holds signing keys and customer ids: owner only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database at `path`, migrates it, and loads the head.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        let lock = lock(path)?;
        let mut conn = Connection::open(path)?;
        restrict_permissions(path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let store_id = {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let id = uuid::Uuid::new_v4().to_string();
                    tx.execute(
                        "INSERT INTO meta(key, value) VALUES ('store_id', ?1)",
                        params![id],
                    )?;
                    id
                }
            };
            tx.commit()?;
            id
        };
        let head = read_head(&conn)?;
        Ok(Db {
            path: path.to_owned(),
            _lock: lock,
            writer: Mutex::new(Writer { conn, head }),
            readers: Mutex::new(Vec::new()),
            store_id,
            head: watch::Sender::new(head),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The random id fixed when the database was created.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The last committed change version.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that sees every new committed head.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, StoreError> {
        self.writer.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs `f` in one immediate transaction and commits it; on any error nothing is
    /// kept, including the versions `f` allocated. Blocking: call from a blocking task.
    pub fn write<T, E>(&self, now: i64, f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut w = self.lock_writer()?;
        let head = w.head;
        let (out, new_head) = {
            let tx = w
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::from)?;
            let mut t = Tx { tx, head, now };
            let out = f(&mut t)?;
            let new_head = t.head;
            t.tx.commit().map_err(StoreError::from)?;
            (out, new_head)
        };
        w.head = new_head;
        drop(w);
        if new_head != head {
            self.head.send_replace(new_head);
        }
        Ok(out)
    }

    /// Runs `f` on a read connection (its own consistent view inside a transaction).
    /// Blocking: call from a blocking task.
    pub fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = {
            let mut idle = self.readers.lock().map_err(|_| StoreError::Poisoned)?;
            idle.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => self.open_reader()?,
        };
        conn.execute_batch("BEGIN").map_err(StoreError::from)?;
        let out = f(&conn);
        // A failed COMMIT of a read transaction leaves nothing to undo; drop the connection.
        if conn.execute_batch("COMMIT").is_ok() {
            if let Ok(mut idle) = self.readers.lock() {
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
            }
        }
        out
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch("PRAGMA busy_timeout=10000; PRAGMA query_only=ON;")?;
        Ok(conn)
    }

    /// Opens a dedicated read connection (for long reads such as a snapshot).
    pub fn reader(&self) -> Result<Connection, StoreError> {
        self.open_reader()
    }
}

/// The head of a database as seen by `conn`: the newest change, or the pruning
/// floor when every change has been pruned (never the case once one exists).
pub(crate) fn read_head(conn: &Connection) -> Result<u64, StoreError> {
    let max: Option<i64> = conn.query_row("SELECT MAX(version) FROM changes", [], |r| r.get(0))?;
    let floor = read_floor(conn)?;
    Ok(floor.max(max.map_or(0, |v| v as u64)))
}

/// The highest version pruned from the change log (0 = nothing pruned).
pub(crate) fn read_floor(conn: &Connection) -> Result<u64, StoreError> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'pruned_through'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    match v {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("meta.pruned_through = {s:?}"))),
    }
}

/// One write transaction: SQL access plus change-version allocation.
pub struct Tx<'c> {
    tx: rusqlite::Transaction<'c>,
    head: u64,
    now: i64,
}

impl Tx<'_> {
    /// The connection inside the transaction.
    pub fn conn(&self) -> &Connection {
        &self.tx
    }

    /// The newest change version, including those allocated in this transaction.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The time this write is stamped with (unix seconds).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Appends a change to the feed: `line` gets the next version and returns the
    /// feed line's JSON. Returns the version.
    pub fn emit(
        &mut self,
        line: impl FnOnce(u64) -> Result<String, serde_json::Error>,
    ) -> Result<u64, StoreError> {
        let version = self.head + 1;
        let json = line(version)?;
        self.tx.execute(
            "INSERT INTO changes(version, at, line) VALUES (?1, ?2, ?3)",
            params![version as i64, self.now, json],
        )?;
        self.head = version;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let db = Db::open(&path).unwrap();
        let id = db.store_id().to_owned();
        assert_eq!(db.head(), 0);
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.store_id(), id, "the store id survives reopening");
        let v: i64 = db
            .read(|c| {
                c.query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(StoreError::from)
            })
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        drop(db);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            Db::open(&path),
            Err(StoreError::NewerSchema { .. })
        ));
    }

    #[test]
    fn versions_are_contiguous_and_a_failed_write_leaves_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let v1 = db
            .write(1, |tx| tx.emit(|v| Ok(format!("{{\"n\":{v}}}"))))
            .unwrap();
        let failed: Result<u64, StoreError> = db.write(2, |tx| {
            tx.emit(|v| Ok(format!("{{\"n\":{v}}}")))?;
            Err(StoreError::Corrupt("boom".into()))
        });
        assert!(failed.is_err());
        let v2 = db
            .write(3, |tx| tx.emit(|v| Ok(format!("{{\"n\":{v}}}"))))
            .unwrap();
        assert_eq!((v1, v2), (1, 2));
        assert_eq!(db.head(), 2);
    }

    #[test]
    fn history_is_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        db.write(1, |tx| {
            tx.conn().execute(
                "INSERT INTO consent_history(consent_id, at, actor, to_status, version) VALUES ('c', 1, 'x', 'authorised', 1)",
                [],
            )?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
        for sql in [
            "UPDATE consent_history SET actor = 'y'",
            "DELETE FROM consent_history",
        ] {
            let r: Result<(), StoreError> = db.write(2, |tx| {
                tx.conn().execute(sql, [])?;
                Ok(())
            });
            assert!(r.is_err(), "{sql}");
        }
    }
}
