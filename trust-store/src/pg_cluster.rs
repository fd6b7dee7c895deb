//! What several replicas on one PostgreSQL database share besides the tables:
//!
//! - **Epochs.** A feed position is (store id, epoch, version). The `epochs` table keeps
//!   one row per lineage of the database: the server's WAL timeline (the first 8 hex
//!   digits of `pg_walfile_name(pg_current_wal_lsn())`, which moves on at once when a
//!   standby is promoted, unlike `pg_control_checkpoint()` which lags until the next
//!   checkpoint) and its system identifier (`pg_control_system()`, new for a database
//!   restored into a new cluster). When either differs from the newest row, a replica
//!   inserts the next epoch (under an advisory lock, so two replicas insert it once).
//!   This runs when the engine opens and whenever [`crate::Engine::epoch`] is asked
//!   (the answer is cached for one second). On a standby (read only) the newest row is
//!   returned as it is.
//! - **Housekeeping leadership.** A session advisory lock
//!   (`pg_try_advisory_lock(`[`LEAD_LOCK`]`)`) on a dedicated connection. The server
//!   releases it when that connection ends; the holder pings the connection every
//!   second and reports the lock lost ([`Leadership::held`] false) as soon as the
//!   connection ended or a ping did not answer within the connect timeout.
//! - **Wake-ups.** A dedicated connection runs `LISTEN trust_changes`; a committing
//!   emitter's `NOTIFY` wakes the head watcher, which then reads the head. After a
//!   reconnect the watcher is woken at once (notifications may have been missed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, GenericClient};

use crate::api::{Leadership, StoreError};
use crate::pg_tls::Signals;
use crate::pg_txn::FEED_CHANNEL;
use crate::postgres::{pg_error, PgEngine};

/// The advisory lock key of the housekeeping leader.
pub const LEAD_LOCK: i64 = 0x7472_7573_745f_6c64; // "trust_ld"
/// The advisory lock key (transaction scope) that serialises new epochs.
const EPOCH_LOCK: i64 = 0x7472_7573_745f_6570; // "trust_ep"
/// How often the leader pings its lock's connection.
const LEAD_PING: Duration = Duration::from_secs(1);

/// Where the server is: its timeline and system identifier, or a standby.
struct Lineage {
    standby: bool,
    timeline: i64,
    system_id: String,
}

async fn lineage(client: &Client) -> Result<Lineage, StoreError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE pg_walfile_name(pg_current_wal_lsn()) END",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let standby: bool = row.try_get(0).map_err(pg_error)?;
    let system_id: String = row.try_get(1).map_err(pg_error)?;
    let walfile: Option<String> = row.try_get(2).map_err(pg_error)?;
    let timeline = match walfile {
        Some(name) => name
            .get(..8)
            .and_then(|hex| i64::from_str_radix(hex, 16).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("WAL file name {name:?}")))?,
        None => 0,
    };
    Ok(Lineage {
        standby,
        timeline,
        system_id,
    })
}

async fn newest_epoch(
    client: &impl GenericClient,
) -> Result<Option<(i64, i64, String)>, StoreError> {
    let row = client
        .query_opt(
            "SELECT epoch, timeline, system_id FROM epochs ORDER BY epoch DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(pg_error)?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .transpose()
        .map_err(pg_error)
}

fn to_epoch(e: i64) -> Result<u64, StoreError> {
    u64::try_from(e).map_err(|_| StoreError::Corrupt(format!("epoch {e}")))
}

/// The current epoch; records a new one when the lineage moved on (see the module
/// documentation).
pub(crate) async fn current_epoch(client: &mut Client) -> Result<u64, StoreError> {
    let here = lineage(client).await?;
    let newest = newest_epoch(client).await?;
    let same = |n: &(i64, i64, String)| n.1 == here.timeline && n.2 == here.system_id;
    match newest {
        Some(n) if here.standby || same(&n) => return to_epoch(n.0),
        None if here.standby => return Ok(1),
        _ => {}
    }
    // A transaction object: rolled back if this future is dropped half way.
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EPOCH_LOCK])
        .await
        .map_err(pg_error)?;
    let newest = newest_epoch(&tx).await?;
    if let Some(n) = newest.as_ref().filter(|n| same(n)) {
        return to_epoch(n.0);
    }
    let epoch = newest.map_or(1, |n| n.0 + 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    tx.execute(
        "INSERT INTO epochs(epoch, timeline, system_id, started_at) VALUES ($1, $2, $3, $4)",
        &[&epoch, &here.timeline, &here.system_id, &now],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    tracing::info!(
        epoch,
        timeline = here.timeline,
        "new feed epoch: the database was created, promoted or restored"
    );
    to_epoch(epoch)
}

/// The housekeeping lock, held by a task that pings its connection.
struct PgLeader {
    lost: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Leadership for PgLeader {
    fn held(&self) -> bool {
        !self.lost.load(Ordering::Acquire) && !self.closed.load(Ordering::Acquire)
    }
}

impl Drop for PgLeader {
    fn drop(&mut self) {
        // Dropping the task's client closes the connection: the server releases the lock.
        self.task.abort();
    }
}

/// Pings the lock's connection until it fails; then marks the lock lost.
async fn keep_lead(client: Client, lost: Arc<AtomicBool>, limit: Duration) {
    loop {
        tokio::time::sleep(LEAD_PING).await;
        let ping = tokio::time::timeout(limit, client.simple_query("SELECT 1")).await;
        if !matches!(ping, Ok(Ok(_))) {
            lost.store(true, Ordering::Release);
            tracing::warn!("the housekeeping lock's connection failed: leadership lost");
            return;
        }
    }
}

/// Tries to take the housekeeping lock on a new dedicated connection.
pub(crate) fn try_lead(engine: &PgEngine) -> Result<Option<Box<dyn Leadership>>, StoreError> {
    let closed = Arc::new(AtomicBool::new(false));
    let signals = Signals {
        notes: None,
        closed: closed.clone(),
    };
    let client = engine.block(async {
        let client = engine
            .connector
            .dedicated(&engine.cfg, signals)
            .await
            .map_err(connect_error)?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEAD_LOCK])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_error)?;
        Ok(got.then_some(client))
    })?;
    let Some(client) = client else {
        return Ok(None);
    };
    let lost = Arc::new(AtomicBool::new(false));
    let task = engine
        .handle
        .spawn(keep_lead(client, lost.clone(), engine.connect_timeout));
    Ok(Some(Box::new(PgLeader { lost, closed, task })))
}

/// A failure to open a dedicated connection: the database is unavailable.
fn connect_error(e: tokio_postgres::Error) -> StoreError {
    match pg_error(e) {
        StoreError::Postgres(m) => StoreError::Unavailable(m),
        other => other,
    }
}

/// The `LISTEN` connection.
struct Listening {
    _client: Client,
    closed: Arc<AtomicBool>,
    notes: watch::Receiver<u64>,
}

/// The wake-up source of the head watcher (see the module documentation).
#[derive(Default)]
pub(crate) struct Listener {
    conn: Mutex<Option<Listening>>,
}

impl Listener {
    /// (Re)connects and listens.
    pub(crate) fn connect(&self, engine: &PgEngine) -> Result<(), StoreError> {
        let (tx, notes) = watch::channel(0);
        let closed = Arc::new(AtomicBool::new(false));
        let signals = Signals {
            notes: Some(tx),
            closed: closed.clone(),
        };
        let client = engine.block(async {
            let client = engine
                .connector
                .dedicated(&engine.cfg, signals)
                .await
                .map_err(connect_error)?;
            let listen = format!("LISTEN {FEED_CHANNEL}");
            client.batch_execute(&listen).await.map_err(pg_error)?;
            Ok(client)
        })?;
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        *conn = Some(Listening {
            _client: client,
            closed,
            notes,
        });
        Ok(())
    }

    /// Waits for a notification or `timeout`; reconnects (and returns at once) when
    /// the connection was lost.
    pub(crate) fn wait(&self, engine: &PgEngine, timeout: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        let Some(live) = conn.as_mut().filter(|l| !l.closed.load(Ordering::Acquire)) else {
            *conn = None;
            drop(conn);
            return self.connect(engine);
        };
        let woke = engine
            .handle
            .block_on(async { tokio::time::timeout(timeout, live.notes.changed()).await });
        if matches!(woke, Ok(Err(_))) {
            // The connection's driver ended: reconnect on the next call.
            *conn = None;
        }
        Ok(())
    }
}
