//! Transactions on PostgreSQL, and the change feed's sequencer.
//!
//! A write transaction runs READ COMMITTED. Its first [`WriteTxn::head`] (or
//! [`WriteTxn::next_version`]) runs `SELECT version FROM feed_head FOR UPDATE`: the row
//! lock is held until COMMIT or ROLLBACK. Versions are allocated from it in memory and
//! `feed_head` is updated just before COMMIT. Why that is gap-free and ordered:
//!
//! - A later emitter blocks on the row lock until the earlier one has committed or rolled
//!   back. PostgreSQL releases a transaction's locks only after its commit is visible to
//!   new snapshots (and, with synchronous replication, after the standby confirmed it),
//!   so the waiter then reads (READ COMMITTED re-reads the locked row's newest version)
//!   the head the earlier one left: its versions follow without a hole, and a rolled
//!   back transaction's versions are simply reused.
//! - Emitters therefore commit strictly in version order, one after the other: any
//!   snapshot a follower takes contains versions 1..=k for some k and nothing above k —
//!   the feed is visible as a prefix. A SEQUENCE (`nextval`) would not do: its values are
//!   handed out at once and commit in any order (and a rollback leaves a hole for good),
//!   so a follower reading "versions above V" could skip a change that commits later.
//! - READ COMMITTED is enough (stricter levels would only add serialization failures):
//!   the lock, not the snapshot, orders the emitters, and other rows are written with
//!   `ON CONFLICT`/`RETURNING` statements that are safe under it.
//!
//! `commit` sends `NOTIFY trust_changes` (delivered only if the transaction commits)
//! when versions were allocated: a wake-up for the other replicas' head watchers,
//! never the source of truth.
//!
//! A read transaction is REPEATABLE READ, READ ONLY: one snapshot for all its queries.
//! Dropping a transaction without commit rolls it back (asynchronously, on the engine's
//! runtime); a connection in an unknown state (a failed COMMIT, a lost answer) is
//! discarded instead of returned to the pool.

use std::pin::pin;
use std::time::Duration;

use deadpool_postgres::Object;
use futures_util::StreamExt;
use tokio_postgres::types::ToSql;

use crate::api::{Dialect, ReadTxn, Row, Sql, StoreError, Value, WriteTxn};
use crate::pg_value::to_row;
use crate::postgres::{pg_error, pool_error, PgEngine};

/// The channel `commit` notifies when it allocated versions.
pub(crate) const FEED_CHANNEL: &str = "trust_changes";

/// One pooled connection inside a transaction.
struct Session<'e> {
    engine: &'e PgEngine,
    client: Option<Object>,
    /// The transaction is open (ROLLBACK on drop).
    open: bool,
    /// The connection's state is unknown: discard it.
    broken: bool,
    /// A statement failed: PostgreSQL has aborted the transaction.
    failed: bool,
}

fn param_refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl<'e> Session<'e> {
    fn begin(engine: &'e PgEngine, begin: &'static str) -> Result<Session<'e>, StoreError> {
        let client = engine.block(async {
            // Discarded, not pooled, if BEGIN fails or this future is dropped half way.
            let mut conn = Discard(Some(engine.pool.get().await.map_err(pool_error)?));
            if let Some(c) = &conn.0 {
                c.batch_execute(begin).await.map_err(pg_error)?;
            }
            Ok(conn.0.take())
        })?;
        Ok(Session {
            engine,
            client,
            open: true,
            broken: false,
            failed: false,
        })
    }

    fn client(&self) -> Result<&Object, StoreError> {
        match &self.client {
            Some(c) if !self.broken => Ok(c),
            _ => Err(StoreError::Unavailable(
                "the transaction's connection was lost".into(),
            )),
        }
    }

    /// Records the outcome of a statement.
    fn note<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.failed = true;
            if matches!(e, StoreError::Unavailable(_)) {
                self.broken = true;
            }
        }
        r
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let r = self.client().and_then(|c| {
            self.engine.block(async move {
                let st = c.prepare_cached(sql).await.map_err(pg_error)?;
                c.execute(&st, &param_refs(params)).await.map_err(pg_error)
            })
        });
        self.note(r)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let r = self.client().and_then(|c| {
            self.engine.block(async move {
                let st = c.prepare_cached(sql).await.map_err(pg_error)?;
                let rows = c.query(&st, &param_refs(params)).await.map_err(pg_error)?;
                rows.iter().map(to_row).collect()
            })
        });
        self.note(r)
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let r = self.client().and_then(|c| {
            self.engine.block(async move {
                let st = c.prepare_cached(sql).await.map_err(pg_error)?;
                let refs = param_refs(params);
                let stream = c
                    .query_raw(&st, refs.iter().copied())
                    .await
                    .map_err(pg_error)?;
                let mut stream = pin!(stream);
                let mut n = 0u64;
                while let Some(row) = stream.next().await {
                    each(&to_row(&row.map_err(pg_error)?)?)?;
                    n += 1;
                }
                Ok(n)
            })
        });
        self.note(r)
    }

    /// Runs the final statements and COMMIT; a failed COMMIT discards the connection.
    fn commit(&mut self, before: Option<i64>) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Postgres(
                "the transaction was aborted by an earlier error; rolled back".into(),
            ));
        }
        if let Some(head) = before {
            self.execute("UPDATE feed_head SET version = $1", &[head.into()])?;
            self.execute(
                "SELECT pg_notify($1, $2)",
                &[FEED_CHANNEL.into(), head.to_string().into()],
            )?;
        }
        let r = self.client().and_then(|c| {
            self.engine
                .block(async move { c.batch_execute("COMMIT").await.map_err(pg_error) })
        });
        match r {
            Ok(()) => self.open = false,
            Err(_) => self.broken = true,
        }
        r
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.broken {
            drop(Object::take(client));
        } else if self.open {
            self.engine
                .handle
                .spawn(rollback(Discard(Some(client)), self.engine.limit));
        }
    }
}

/// A connection that is closed, not returned to the pool, unless [`Discard::keep`].
struct Discard(Option<Object>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            drop(Object::take(client));
        }
    }
}

/// Rolls back; the connection goes back to the pool only if that worked in time.
async fn rollback(mut conn: Discard, limit: Duration) {
    let done = match &conn.0 {
        Some(c) => matches!(
            tokio::time::timeout(limit, c.batch_execute("ROLLBACK")).await,
            Ok(Ok(()))
        ),
        None => false,
    };
    if done {
        drop(conn.0.take()); // back to the pool
    }
}

macro_rules! sql_via_session {
    ($t:ty) => {
        impl Sql for $t {
            fn dialect(&self) -> Dialect {
                Dialect::Postgres
            }
            fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
                self.s.execute(sql, params)
            }
            fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
                self.s.query(sql, params)
            }
            fn query_each(
                &mut self,
                sql: &str,
                params: &[Value],
                each: &mut dyn FnMut(&Row) -> Result<(), StoreError>,
            ) -> Result<u64, StoreError> {
                self.s.query_each(sql, params, each)
            }
        }
    };
}

/// A write transaction (READ COMMITTED) with the feed head's lock once taken.
pub(crate) struct PgWrite<'e> {
    s: Session<'e>,
    /// The head, once the lock is held (including the versions allocated).
    head: Option<u64>,
    allocated: bool,
}

impl<'e> PgWrite<'e> {
    pub(crate) fn begin(engine: &'e PgEngine) -> Result<PgWrite<'e>, StoreError> {
        Ok(PgWrite {
            s: Session::begin(engine, "BEGIN ISOLATION LEVEL READ COMMITTED")?,
            head: None,
            allocated: false,
        })
    }
}

sql_via_session!(PgWrite<'_>);

impl WriteTxn for PgWrite<'_> {
    fn head(&mut self) -> Result<u64, StoreError> {
        if let Some(head) = self.head {
            return Ok(head);
        }
        let row = self
            .s
            .query_one("SELECT version FROM feed_head FOR UPDATE", &[])?;
        let v = row.int(0)?;
        let head = u64::try_from(v)
            .map_err(|_| StoreError::Corrupt(format!("feed_head.version = {v}")))?;
        self.head = Some(head);
        Ok(head)
    }

    fn next_version(&mut self) -> Result<u64, StoreError> {
        let next = self.head()? + 1;
        self.head = Some(next);
        self.allocated = true;
        Ok(next)
    }

    fn commit(mut self: Box<Self>) -> Result<u64, StoreError> {
        let new_head = match (self.allocated, self.head) {
            (true, Some(h)) => {
                Some(i64::try_from(h).map_err(|_| StoreError::Corrupt(format!("version {h}")))?)
            }
            _ => None,
        };
        self.s.commit(new_head)?;
        let engine = self.s.engine;
        Ok(match self.head {
            Some(h) => engine.saw_head(h),
            // Without the lock this transaction saw no head: the newest one known.
            None => engine.known_head(),
        })
    }
}

/// A read transaction: REPEATABLE READ, READ ONLY.
pub(crate) struct PgRead<'e> {
    s: Session<'e>,
}

impl<'e> PgRead<'e> {
    pub(crate) fn begin(engine: &'e PgEngine) -> Result<PgRead<'e>, StoreError> {
        Ok(PgRead {
            s: Session::begin(engine, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?,
        })
    }
}

sql_via_session!(PgRead<'_>);

impl ReadTxn for PgRead<'_> {}

/// `Sql` for a session (the trait's provided `query_one`).
impl Session<'_> {
    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query(sql, params)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("expected one row, got none".into()))
    }
}
