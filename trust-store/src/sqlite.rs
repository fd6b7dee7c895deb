//! The SQLite engine: the embedded default (the demo, a single machine). One process owns
//! the database file (a lock file beside it), opened durably: WAL with
//! `synchronous=FULL`, so a returned `COMMIT` has been fsynced and kill -9 (or power
//! loss) after an answer loses nothing. Mode 0600: the file holds signing keys and
//! customer ids.
//!
//! Every write runs in one `BEGIN IMMEDIATE` … `COMMIT` on the single writer connection,
//! checked out of its slot for the life of the transaction (so the transaction owns the
//! connection and can move between threads; dropped uncommitted, it rolls back and puts
//! the connection back). Change versions are allocated from the writer's in-memory head
//! inside the transaction, so they are contiguous (1, 2, 3, …) and a rolled back
//! transaction leaves no hole. Reads run on pooled read-only connections, `BEGIN` …
//! `COMMIT`: one consistent WAL view while the writer goes on.
//!
//! # The SQL domain code writes (the portable subset)
//!
//! Domain code is written once and runs unchanged on SQLite and PostgreSQL
//! (`trust-store/README.md` says the same, with the reasons):
//!
//! 1. Placeholders are `$1, $2, …` (rewritten to `?1, ?2, …` here; a bare `?` is refused).
//!    A placeholder may appear several times and in any order.
//! 2. Parameters are [`Value`]s: integers are `i64` (`Value::Int`), text is text, bytes are
//!    bytes; compare a column only with a value of its own type (text with text, never a
//!    number with a text column), and never rely on an implicit cast.
//! 3. No `INSERT OR IGNORE` / `OR REPLACE`: `INSERT … ON CONFLICT (key) DO NOTHING` or
//!    `DO UPDATE SET col = excluded.col`. No `last_insert_rowid()`: `RETURNING`. No `rowid`.
//! 4. No engine-specific functions (`ifnull`, `strftime`, `datetime`, `json_*`, `||` on
//!    numbers, `GLOB`, …); `COUNT`, `MAX`, `MIN`, `COALESCE`, `LIMIT $n OFFSET $m`,
//!    `IN ('a', 'b')`, `IS NULL` are fine. `COUNT(*)` and `MAX` come back as integers.
//! 5. No booleans: flags are integers compared with integers, or states held as text.
//! 6. `ORDER BY` names every column the order depends on, with an explicit tie-breaker;
//!    NULL sorts first in SQLite and last in PostgreSQL, so order by `col IS NULL` first
//!    where NULLs occur.
//! 7. A write transaction that decides what to write from what it read calls
//!    [`crate::Tx::head`] before reading: on PostgreSQL that takes the feed head's lock,
//!    serialising it with every other writer (SQLite has one writer anyway).
//! 8. Only `INTEGER`/`BIGINT`, `TEXT` and `BLOB`/`BYTEA` columns; no `REAL`.
//! 9. Where a statement really must differ, branch on [`Sql::dialect`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{
    params_from_iter, Connection, ErrorCode, OpenFlags, OptionalExtension, ToSql,
    TransactionBehavior,
};

use crate::api::{Dialect, Engine, Leadership, ReadTxn, Row, Sql, StoreError, Value, WriteTxn};
use crate::db::Db;
use crate::meta::read_head;
use crate::sqlite_migrations::migrate;
pub use crate::sqlite_migrations::SCHEMA_VERSION;

/// Most idle read connections kept.
const MAX_IDLE_READERS: usize = 8;
/// Prepared statements cached per connection (the domain code has about sixty).
const STATEMENT_CACHE: usize = 128;
/// How long a statement waits for a lock held by another connection before the store
/// answers `Unavailable`.
const BUSY_TIMEOUT_MS: u32 = 10_000;

impl Db {
    /// Opens (creating if needed) the SQLite database at `path`, migrates it, and loads
    /// the head. Fails with `Locked` while another process has it open.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        Db::from_engine(Box::new(SqliteEngine::open(path)?))
    }
}

/// A rusqlite error as a store error: a lock still held after the busy timeout is
/// `Unavailable`; anything else is `Sqlite` with SQLite's message (which never holds
/// parameter values).
pub(crate) fn store_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable("the database is locked by another connection".into())
        }
        _ => StoreError::Sqlite(e.to_string()),
    }
}

/// Rewrites `$n` placeholders to SQLite's `?n`, leaving quoted strings, quoted
/// identifiers and comments alone. A bare `?` outside them is refused: it would not run
/// on PostgreSQL.
pub fn rewrite_placeholders(sql: &str) -> Result<Cow<'_, str>, StoreError> {
    if !sql.contains(['$', '?']) {
        return Ok(Cow::Borrowed(sql));
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '\'' | '"' => {
                // Up to the closing quote; a doubled quote is an escaped one and simply
                // closes and reopens.
                for q in chars.by_ref() {
                    out.push(q);
                    if q == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for q in chars.by_ref() {
                    out.push(q);
                    if q == '\n' {
                        break;
                    }
                }
            }
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.pop();
                out.push('?');
            }
            '?' => {
                return Err(StoreError::Sqlite(
                    "a `?` placeholder: write `$1, $2, …` (portable SQL)".into(),
                ))
            }
            _ => {}
        }
    }
    Ok(Cow::Owned(out))
}

/// A parameter bound without copying.
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Bytes(v) => ValueRef::Blob(v),
        }))
    }
}

/// One SQLite row as a [`Row`] (REAL is not used by the schema: refused).
fn to_row(r: &rusqlite::Row<'_>, columns: usize) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(columns);
    for i in 0..columns {
        values.push(match r.get_ref(i).map_err(store_error)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(t) => Value::Text(
                String::from_utf8(t.to_vec())
                    .map_err(|_| StoreError::Corrupt(format!("column {i}: text is not UTF-8")))?,
            ),
            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            ValueRef::Real(_) => {
                return Err(StoreError::Sqlite(format!(
                    "column {i}: a REAL value (the schema has none)"
                )))
            }
        });
    }
    Ok(Row(values))
}

/// [`Sql::execute`] on a connection.
fn execute(conn: &Connection, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
    let sql = rewrite_placeholders(sql)?;
    let mut stmt = conn.prepare_cached(&sql).map_err(store_error)?;
    let n = stmt
        .execute(params_from_iter(params.iter().map(Param)))
        .map_err(store_error)?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

/// [`Sql::query_each`] on a connection: rows are converted and handed over one by one.
fn query_each(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let sql = rewrite_placeholders(sql)?;
    let mut stmt = conn.prepare_cached(&sql).map_err(store_error)?;
    let columns = stmt.column_count();
    let mut rows = stmt
        .query(params_from_iter(params.iter().map(Param)))
        .map_err(store_error)?;
    let mut n = 0u64;
    while let Some(r) = rows.next().map_err(store_error)? {
        each(&to_row(r, columns)?)?;
        n += 1;
    }
    Ok(n)
}

/// [`Sql::query`] on a connection.
fn query(conn: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    query_each(conn, sql, params, &mut |r| {
        out.push(r.clone());
        Ok(())
    })?;
    Ok(out)
}

/// Implements [`Sql`] for a type with `fn conn(&self) -> Result<&Connection, StoreError>`.
macro_rules! sql_on_connection {
    ($t:ty) => {
        impl Sql for $t {
            fn dialect(&self) -> Dialect {
                Dialect::Sqlite
            }
            fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
                execute(self.conn()?, sql, params)
            }
            fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
                query(self.conn()?, sql, params)
            }
            fn query_each(
                &mut self,
                sql: &str,
                params: &[Value],
                each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
            ) -> Result<u64, StoreError> {
                query_each(self.conn()?, sql, params, each)
            }
        }
    };
}

/// The writer connection with the last committed change version.
struct Writer {
    conn: Connection,
    head: u64,
}

/// The SQLite engine (see the module documentation).
pub struct SqliteEngine {
    path: PathBuf,
    /// Held (locked) for the life of the engine: one writer process per database.
    _lock: std::fs::File,
    /// The writer, `None` while a write transaction has it checked out.
    writer: Mutex<Option<Writer>>,
    /// Signalled when the writer is put back.
    writer_free: Condvar,
    readers: Mutex<Vec<Connection>>,
    store_id: String,
}

impl std::fmt::Debug for SqliteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEngine")
            .field("path", &self.path)
            .field("store_id", &self.store_id)
            .finish_non_exhaustive()
    }
}

/// Sets WAL (refusing a file system that cannot have it), full synchronisation, foreign
/// keys and the busy timeout.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(store_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotWal(mode));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout={BUSY_TIMEOUT_MS};"
    ))
    .map_err(store_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
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

/// The database's random id, created once (in the first open's transaction).
fn ensure_store_id(conn: &mut Connection) -> Result<String, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(store_error)?;
    let existing: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(store_error)?;
    let id = match existing {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('store_id', ?1)",
                [&id],
            )
            .map_err(store_error)?;
            id
        }
    };
    tx.commit().map_err(store_error)?;
    Ok(id)
}

impl SqliteEngine {
    /// Opens (creating if needed) the database at `path`: takes the process lock, sets
    /// the file's permissions, WAL and synchronisation, migrates, and reads the store id
    /// and the head.
    pub fn open(path: &Path) -> Result<SqliteEngine, StoreError> {
        let lock = lock(path)?;
        let mut conn = Connection::open(path).map_err(store_error)?;
        restrict_permissions(path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let store_id = ensure_store_id(&mut conn)?;
        let mut writer = Writer { conn, head: 0 };
        writer.head = {
            let mut view = WriterView(&writer.conn);
            read_head(&mut view)?
        };
        Ok(SqliteEngine {
            path: path.to_owned(),
            _lock: lock,
            writer: Mutex::new(Some(writer)),
            writer_free: Condvar::new(),
            readers: Mutex::new(Vec::new()),
            store_id,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer_slot(&self) -> MutexGuard<'_, Option<Writer>> {
        // The slot only holds the writer between transactions; nothing can panic while
        // it is locked, so a poisoned lock still holds a consistent value.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the writer, waiting while another transaction has it.
    fn check_out(&self) -> Writer {
        let mut slot = self.writer_slot();
        loop {
            if let Some(w) = slot.take() {
                return w;
            }
            slot = self
                .writer_free
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn check_in(&self, writer: Writer) {
        *self.writer_slot() = Some(writer);
        self.writer_free.notify_one();
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(store_error)?;
        conn.execute_batch(&format!(
            "PRAGMA busy_timeout={BUSY_TIMEOUT_MS}; PRAGMA query_only=ON;"
        ))
        .map_err(store_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    fn idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        // A pool of idle connections: any state it is left in is valid.
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer connection outside any transaction (at open).
struct WriterView<'c>(&'c Connection);

impl WriterView<'_> {
    fn conn(&self) -> Result<&Connection, StoreError> {
        Ok(self.0)
    }
}

sql_on_connection!(WriterView<'_>);

/// A write transaction: owns the checked-out writer until it commits or is dropped.
struct SqliteWrite<'e> {
    engine: &'e SqliteEngine,
    writer: Option<Writer>,
    /// The head including the versions allocated in this transaction.
    head: u64,
}

impl SqliteWrite<'_> {
    fn conn(&self) -> Result<&Connection, StoreError> {
        self.writer
            .as_ref()
            .map(|w| &w.conn)
            .ok_or_else(|| StoreError::Sqlite("the write transaction has ended".into()))
    }
}

sql_on_connection!(SqliteWrite<'_>);

impl WriteTxn for SqliteWrite<'_> {
    fn head(&mut self) -> Result<u64, StoreError> {
        Ok(self.head)
    }

    fn next_version(&mut self) -> Result<u64, StoreError> {
        self.head += 1;
        Ok(self.head)
    }

    fn commit(mut self: Box<Self>) -> Result<u64, StoreError> {
        let head = self.head;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| StoreError::Sqlite("the write transaction has ended".into()))?;
        writer.conn.execute_batch("COMMIT").map_err(store_error)?;
        writer.head = head;
        Ok(head)
    }
}

impl Drop for SqliteWrite<'_> {
    /// Rolls back whatever did not commit (the versions it allocated go with it) and puts
    /// the writer back.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            if !writer.conn.is_autocommit() {
                if let Err(e) = writer.conn.execute_batch("ROLLBACK") {
                    tracing::error!(error = %store_error(e), "rolling back a write transaction failed");
                }
            }
            self.engine.check_in(writer);
        }
    }
}

/// A read transaction on a pooled connection; returned to the pool when dropped.
struct SqliteRead<'e> {
    engine: &'e SqliteEngine,
    conn: Option<Connection>,
}

impl SqliteRead<'_> {
    fn conn(&self) -> Result<&Connection, StoreError> {
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError::Sqlite("the read transaction has ended".into()))
    }
}

sql_on_connection!(SqliteRead<'_>);

impl ReadTxn for SqliteRead<'_> {}

impl Drop for SqliteRead<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // A failed COMMIT of a read transaction leaves nothing to undo; drop the connection.
        if conn.execute_batch("COMMIT").is_ok() {
            let mut idle = self.engine.idle_readers();
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

/// Housekeeping leadership on SQLite: one process owns the file, so it always leads.
struct SoleProcess;

impl Leadership for SoleProcess {
    fn held(&self) -> bool {
        true
    }
}

impl Engine for SqliteEngine {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn epoch(&self) -> Result<u64, StoreError> {
        Ok(1)
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>, StoreError> {
        let writer = self.check_out();
        let head = writer.head;
        let txn = SqliteWrite {
            engine: self,
            writer: Some(writer),
            head,
        };
        // On error, dropping `txn` puts the writer back.
        let conn = txn.conn()?;
        if !conn.is_autocommit() {
            // Left open by a failed ROLLBACK: start clean.
            conn.execute_batch("ROLLBACK").map_err(store_error)?;
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(store_error)?;
        Ok(Box::new(txn))
    }

    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>, StoreError> {
        let idle = self.idle_readers().pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open_reader()?,
        };
        conn.execute_batch("BEGIN").map_err(store_error)?;
        Ok(Box::new(SqliteRead {
            engine: self,
            conn: Some(conn),
        }))
    }

    fn committed_head(&self) -> Result<u64, StoreError> {
        let mut txn = self.begin_read()?;
        read_head(&mut *txn)
    }

    fn try_lead(&self) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        Ok(Some(Box::new(SoleProcess)))
    }

    fn wait_for_change(&self, timeout: Duration) -> Result<(), StoreError> {
        // This process is the only writer and announces its own commits in memory.
        std::thread::sleep(timeout);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
