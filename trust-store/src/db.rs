//! The facade the domain code uses: [`Db::write`] runs a closure in one write
//! transaction and commits it, [`Db::read`] in one consistent read view; [`Tx::emit`]
//! appends a line to the change feed with the next contiguous version. The committed
//! head is broadcast to feed streams; with PostgreSQL a watcher thread also picks up the
//! versions other replicas commit (woken by `NOTIFY`, confirmed by reading the head).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::{Dialect, Engine, Row, Sql, StoreError, Value, WriteTxn};

/// How long the head watcher waits for a wake-up before reading the head anyway.
const WATCH_POLL: Duration = Duration::from_millis(500);

/// The database, whichever engine holds it.
pub struct Db {
    engine: Arc<dyn Engine>,
    head: Arc<watch::Sender<u64>>,
    /// The epoch last read (at open, then by the head watcher).
    epoch: Arc<AtomicU64>,
    /// When the head watcher last read the database (milliseconds since `opened`);
    /// `None` for an engine without a watcher (SQLite: one local file).
    confirmed: Option<Arc<AtomicU64>>,
    opened: Instant,
    /// Stops the head watcher (PostgreSQL) when the `Db` is dropped.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("engine", &self.engine)
            .field("head", &*self.head.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Raises the announced head to `head` (never lowers it).
fn announce(sender: &watch::Sender<u64>, head: u64) {
    sender.send_if_modified(|h| {
        let moved = head > *h;
        if moved {
            *h = head;
        }
        moved
    });
}

impl Db {
    /// Wraps an opened, migrated engine; reads its head. For an engine other processes
    /// also write (PostgreSQL), starts the head watcher thread.
    pub fn from_engine(engine: Box<dyn Engine>) -> Result<Db, StoreError> {
        let engine: Arc<dyn Engine> = Arc::from(engine);
        let head = Arc::new(watch::Sender::new(engine.committed_head()?));
        let epoch = Arc::new(AtomicU64::new(engine.epoch()?));
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Instant::now();
        let mut confirmed = None;
        if engine.dialect() == Dialect::Postgres {
            let at = Arc::new(AtomicU64::new(0));
            confirmed = Some(at.clone());
            let watched = Watched {
                engine: engine.clone(),
                head: head.clone(),
                epoch: epoch.clone(),
                confirmed: at,
                opened,
                stop: stop.clone(),
            };
            std::thread::Builder::new()
                .name("trust-head-watch".into())
                .spawn(move || watched.run())
                .map_err(|e| StoreError::Unavailable(format!("head watcher: {e}")))?;
        }
        Ok(Db {
            engine,
            head,
            epoch,
            confirmed,
            opened,
            stop,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    /// The engine's dialect.
    pub fn dialect(&self) -> Dialect {
        self.engine.dialect()
    }

    /// The random id fixed when the database was created.
    pub fn store_id(&self) -> &str {
        self.engine.store_id()
    }

    /// The current epoch (see [`Engine::epoch`]), read from the database. Blocking.
    pub fn epoch(&self) -> Result<u64, StoreError> {
        let epoch = self.engine.epoch()?;
        self.epoch.store(epoch, Ordering::Release);
        Ok(epoch)
    }

    /// The epoch last read (at open, by [`Db::epoch`], or by the head watcher within
    /// about a second of a change): cheap, for async code and feed heartbeats.
    pub fn cached_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the database was read within `window` (by the head watcher, which reads it
    /// at least every half second): a feed may vouch for freshness (send a heartbeat) only
    /// then. Always `true` for SQLite (a local file, no watcher).
    pub fn reachable_within(&self, window: Duration) -> bool {
        let Some(at) = &self.confirmed else {
            return true;
        };
        let last = Duration::from_millis(at.load(Ordering::Acquire));
        self.opened.elapsed().saturating_sub(last) <= window
    }

    /// The newest committed change version this process knows of.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// A receiver that sees every new committed head.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Runs `f` in one write transaction and commits it; on any error nothing is kept,
    /// including the versions `f` allocated. Blocking: call from a blocking task.
    pub fn write<T, E>(&self, now: i64, f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut tx = Tx {
            inner: self.engine.begin_write()?,
            now,
            emitted: false,
        };
        let out = f(&mut tx)?;
        let Tx { inner, emitted, .. } = tx;
        let head = inner.commit()?;
        if emitted {
            announce(&self.head, head);
        }
        Ok(out)
    }

    /// Runs `f` in one consistent read view. Blocking: call from a blocking task.
    pub fn read<T, E>(&self, f: impl FnOnce(&mut dyn Sql) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut txn = self.engine.begin_read()?;
        f(&mut *txn)
    }
}

/// What the head watcher thread keeps up to date.
struct Watched {
    engine: Arc<dyn Engine>,
    head: Arc<watch::Sender<u64>>,
    epoch: Arc<AtomicU64>,
    confirmed: Arc<AtomicU64>,
    opened: Instant,
    stop: Arc<AtomicBool>,
}

impl Watched {
    /// Reads the committed head and the epoch.
    fn read(&self) -> Result<(u64, u64), StoreError> {
        Ok((self.engine.committed_head()?, self.engine.epoch()?))
    }

    /// The watcher loop: wait for a wake-up (or the poll interval), read the committed
    /// head and the epoch, announce them. Errors are logged once per outage; the loop
    /// goes on.
    fn run(self) {
        let mut failing = false;
        while !self.stop.load(Ordering::Acquire) {
            let woke = self.engine.wait_for_change(WATCH_POLL);
            match woke.and_then(|()| self.read()) {
                Ok((h, e)) => {
                    if failing {
                        tracing::info!("database reachable again");
                    }
                    failing = false;
                    self.epoch.store(e, Ordering::Release);
                    announce(&self.head, h);
                    let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                    self.confirmed.store(ms, Ordering::Release);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "reading the change feed's head failed");
                    }
                    failing = true;
                    std::thread::sleep(WATCH_POLL);
                }
            }
        }
    }
}

/// One write transaction: SQL (it implements [`Sql`]) plus the change feed.
pub struct Tx<'e> {
    inner: Box<dyn WriteTxn + 'e>,
    now: i64,
    emitted: bool,
}

impl Tx<'_> {
    /// The newest change version, including those allocated in this transaction
    /// (PostgreSQL: takes the feed head's lock, see [`WriteTxn::head`]).
    pub fn head(&mut self) -> Result<u64, StoreError> {
        self.inner.head()
    }

    /// The time this write is stamped with (unix seconds).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Appends a change to the feed: `line` gets the next version and returns the
    /// feed line's JSON (no newline). Returns the version.
    pub fn emit(
        &mut self,
        line: impl FnOnce(u64) -> Result<String, serde_json::Error>,
    ) -> Result<u64, StoreError> {
        let version = self.inner.next_version()?;
        let json = line(version)?;
        self.inner.execute(
            "INSERT INTO changes(version, at, line) VALUES ($1, $2, $3)",
            &[version.into(), self.now.into(), json.into()],
        )?;
        self.emitted = true;
        Ok(version)
    }
}

impl Sql for Tx<'_> {
    fn dialect(&self) -> Dialect {
        self.inner.dialect()
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.inner.execute(sql, params)
    }
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.inner.query(sql, params)
    }
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.inner.query_each(sql, params, each)
    }
}
