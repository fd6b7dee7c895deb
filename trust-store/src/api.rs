//! The storage interface of the trust sidecar: one SQL-level interface, two engines.
//! Domain code (consents, participants, keys, …) is written once against [`Sql`] and
//! [`WriteTxn`], with SQL text that both engines accept: placeholders `$1, $2, …`
//! (rewritten to `?1, ?2, …` for SQLite), `ON CONFLICT … DO …`, `RETURNING`, no engine
//! specific functions; where a statement must differ, branch on [`Sql::dialect`].
//! Column types: integers are BIGINT/INTEGER (`i64`), text is TEXT, bytes are BYTEA/BLOB.
//!
//! The interface is synchronous and object-safe: it runs on blocking threads
//! (`tokio::task::spawn_blocking`). The PostgreSQL engine drives its async client
//! (tokio-postgres through a deadpool pool) from there with `Handle::block_on`.

use std::fmt;

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer (SQLite INTEGER, PostgreSQL BIGINT; INTEGER/SMALLINT columns are converted).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Bytes(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
        }
    }
}

// Conversions used at call sites: `&[id.into(), now.into(), record.into()]`.
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    /// Versions and counts: saturates at `i64::MAX` (never reached).
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// One result row; columns by position (the order of the SELECT list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> Result<&Value, StoreError> {
        self.0.get(i).ok_or_else(|| {
            StoreError::Corrupt(format!("no column {i} in a row of {}", self.0.len()))
        })
    }

    fn wrong(&self, i: usize, want: &str) -> StoreError {
        let got = self.0.get(i).map_or("nothing", Value::kind);
        StoreError::Corrupt(format!("column {i}: expected {want}, found {got}"))
    }

    /// Column `i` as an integer (`Corrupt` if NULL or another type).
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?.ok_or_else(|| self.wrong(i, "an integer"))
    }
    /// Column `i` as an integer or NULL.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.get(i)? {
            Value::Int(v) => Ok(Some(*v)),
            Value::Null => Ok(None),
            _ => Err(self.wrong(i, "an integer")),
        }
    }
    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?.ok_or_else(|| self.wrong(i, "text"))
    }
    /// Column `i` as text or NULL.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.get(i)? {
            Value::Text(v) => Ok(Some(v.clone())),
            Value::Null => Ok(None),
            _ => Err(self.wrong(i, "text")),
        }
    }
    /// Column `i` as bytes.
    pub fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.opt_bytes(i)?.ok_or_else(|| self.wrong(i, "bytes"))
    }
    /// Column `i` as bytes or NULL.
    pub fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(i)? {
            Value::Bytes(v) => Ok(Some(v.clone())),
            Value::Null => Ok(None),
            _ => Err(self.wrong(i, "bytes")),
        }
    }
}

/// Which SQL dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.46 (bundled).
    Sqlite,
    /// PostgreSQL 15+.
    Postgres,
}

/// Why the store failed. Engine errors carry the engine's message (never parameters:
/// they may hold customer ids).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(String),
    /// PostgreSQL failed (query, connection or pool).
    #[error("database: {0}")]
    Postgres(String),
    /// The database cannot be reached (pool timeout, connection refused): callers map it
    /// to 503, not 500.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored JSON value could not be read back.
    #[error("database: stored JSON is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value breaks an invariant (or a column had an unexpected type).
    #[error("database: corrupt value: {0}")]
    Corrupt(String),
    /// The database was written by a newer version of the sidecar.
    #[error("database schema version {found} is newer than this binary knows ({known}); refusing to open it")]
    NewerSchema {
        /// The schema version found in the database.
        found: i64,
        /// The newest schema this binary knows.
        known: i64,
    },
    /// SQLite refused WAL mode (e.g. a network file system).
    #[error("database: journal mode is {0:?}, WAL is required")]
    NotWal(String),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A lock was poisoned by a panic in another thread.
    #[error("database: a lock was poisoned")]
    Poisoned,
    /// Another sidecar process has the SQLite database open.
    #[error("{}: another process holds the database's lock", path.display())]
    Locked {
        /// The lock file.
        path: std::path::PathBuf,
    },
    /// A write conflicted with a concurrent one (PostgreSQL serialization failure /
    /// deadlock); the caller may retry the whole transaction.
    #[error("database: write conflict, retry")]
    Conflict,
}

/// SQL inside one transaction (read or write), the same for both engines.
pub trait Sql {
    /// The dialect, for the rare statement that must differ.
    fn dialect(&self) -> Dialect;
    /// Runs a statement; returns the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs a query and hands each row to `each` as it is read, without collecting them
    /// (large reads: the snapshot). Returns the number of rows.
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError>;
    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    /// Exactly one row (`Corrupt` when none).
    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Corrupt("expected one row, got none".into()))
    }
}

/// A write transaction. Dropped without [`WriteTxn::commit`], it rolls back, taking
/// every version it allocated with it.
pub trait WriteTxn: Sql + Send {
    /// The newest change version, including those allocated in this transaction. On
    /// PostgreSQL the first call takes the feed head's row lock (held to commit), so
    /// writers that emit changes commit in version order.
    fn head(&mut self) -> Result<u64, StoreError>;
    /// Allocates the next change version (head + 1) for a row this transaction inserts
    /// into `changes`. Contiguous: no other transaction can take a version until this
    /// one commits or rolls back.
    fn next_version(&mut self) -> Result<u64, StoreError>;
    /// Commits durably (SQLite: WAL + synchronous=FULL; PostgreSQL: synchronous_commit
    /// on, i.e. flushed locally and on the synchronous standbys when configured) and
    /// returns the head after the commit.
    fn commit(self: Box<Self>) -> Result<u64, StoreError>;
}

/// A read transaction: one consistent view (SQLite: a read transaction on a WAL
/// reader; PostgreSQL: REPEATABLE READ, READ ONLY). Ends when dropped.
pub trait ReadTxn: Sql + Send {}

/// Held by the one replica that runs housekeeping (expiry, key rotation, pruning,
/// session cleanup). Released when dropped or when its connection dies.
pub trait Leadership: Send + Sync {
    /// `false` once the lock is known lost (the connection died): stop housekeeping.
    fn held(&self) -> bool;
}

/// A storage engine.
pub trait Engine: Send + Sync + fmt::Debug {
    /// The dialect of this engine's connections.
    fn dialect(&self) -> Dialect;
    /// The random id fixed when the database was created (`[A-Za-z0-9_-]`).
    fn store_id(&self) -> &str;
    /// The current epoch: 1 for a new database; a new epoch starts when the database is
    /// promoted from a standby or restored (PostgreSQL: the WAL timeline moved on since
    /// the epoch was recorded; SQLite: always 1). Feed positions are (store_id, epoch, version).
    fn epoch(&self) -> Result<u64, StoreError>;
    /// Starts a write transaction.
    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>, StoreError>;
    /// Starts a read transaction.
    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>, StoreError>;
    /// The newest committed change version, read from the database (other replicas'
    /// commits included).
    fn committed_head(&self) -> Result<u64, StoreError>;
    /// Tries to become the housekeeping leader; `None` while another replica is.
    /// SQLite: always granted (one process owns the file).
    fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError>;
    /// Blocks until another process may have committed a change (PostgreSQL: a NOTIFY
    /// on channel `trust_changes`, sent by every committing writer that emitted one)
    /// or `timeout` passes (SQLite: sleeps `timeout`; one process owns the file and
    /// announces its own commits in memory). Used by the [`crate::Db`] head watcher,
    /// which then reads `committed_head`: a wake-up, never the source of truth.
    fn wait_for_change(&self, timeout: std::time::Duration) -> Result<(), StoreError>;
}
