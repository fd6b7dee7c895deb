//! `GET /v1/snapshot` and `GET /v1/feed`: what gateways load and follow. Both stream
//! NDJSON (formats in [`crate::wire`]) through a bounded channel, so a slow gateway
//! slows its own stream and nothing else.
//!
//! The snapshot is read inside one read transaction (SQLite WAL or PostgreSQL
//! REPEATABLE READ: a consistent view while writers go on), streamed row by row from
//! stored JSON without re-encoding. The feed reads the change log after `since` in
//! batches, then waits for the committed head to move, sending a heartbeat whenever it
//! has been quiet for the heartbeat interval.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::{blocking, App};
use crate::clock::to_datetime;
use crate::db::{read_floor, read_head, Sql, StoreError};
use crate::error::Error;
use crate::wire::{FeedLine, Heartbeat, Resync, SnapshotHeader, SnapshotLine, SnapshotTrailer};

/// Bytes gathered before a chunk is handed to the connection.
const CHUNK: usize = 64 * 1024;
/// Chunks buffered per stream.
const CHANNEL_DEPTH: usize = 16;
/// Changes read per feed batch.
const BATCH: usize = 2000;

/// Streams a consistent snapshot. Errors after the first line end the stream early;
/// the missing `end` line tells the gateway the transfer is incomplete.
pub fn snapshot(app: &Arc<App>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = write_snapshot(&app, &tx) {
            tracing::warn!(error = %e, "snapshot stream ended early");
        }
    });
    rx
}

struct Sink<'a> {
    tx: &'a mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl Sink<'_> {
    fn line(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.buf.extend_from_slice(b"\n");
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // Not `blocking_send`: with PostgreSQL this runs inside the engine's `block_on`
        // (a runtime context), where blocking on a channel panics. Wait for room instead.
        let mut chunk = self.buf.split().freeze();
        loop {
            match self.tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    chunk = back;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(Error::Internal("the client went away".into()))
                }
            }
        }
    }
}

fn write_snapshot(app: &App, tx: &mpsc::Sender<Bytes>) -> Result<(), Error> {
    let mut sink = Sink {
        tx,
        buf: BytesMut::with_capacity(CHUNK + 4096),
    };
    // Header, rows and trailer from one read transaction: one consistent view.
    let epoch = app.db.epoch()?;
    let (version, participants, consents) = app.db.read(|sql| {
        let version = read_head(sql)?;
        let participants = crate::db::count(sql, "SELECT COUNT(*) FROM participants", &[])?;
        let consents = crate::db::count(sql, "SELECT COUNT(*) FROM consents", &[])?;
        let header = serde_json::to_vec(&SnapshotLine::Snapshot(SnapshotHeader {
            store_id: app.db.store_id().to_owned(),
            version,
            participants,
            consents,
            time: to_datetime(app.now()),
            epoch,
        }))?;
        sink.line(&[&header])?;
        // Stored records are the wire JSON already: wrap them without re-encoding.
        let seen_p = stream_records(
            sql,
            &mut sink,
            "SELECT record FROM participants ORDER BY bin",
            b"{\"participant\":",
        )?;
        let seen_c = stream_records(
            sql,
            &mut sink,
            "SELECT record FROM consents",
            b"{\"consent\":",
        )?;
        if (seen_p, seen_c) != (participants, consents) {
            return Err(StoreError::Corrupt(
                "snapshot counts changed inside a read transaction".into(),
            )
            .into());
        }
        Ok::<_, Error>((version, participants, consents))
    })?;
    let trailer = serde_json::to_vec(&SnapshotLine::End(SnapshotTrailer {
        version,
        participants,
        consents,
    }))?;
    sink.line(&[&trailer])?;
    sink.flush()
}

/// Streams the one-column `query` as snapshot lines `{prefix}{record}}`; returns how
/// many. A failing sink (the client went away) ends the query with its error.
fn stream_records(
    sql: &mut dyn Sql,
    sink: &mut Sink<'_>,
    query: &str,
    prefix: &[u8],
) -> Result<u64, Error> {
    let mut failed = None;
    let n = sql.query_each(query, &[], &mut |r| {
        let json = r.text(0)?;
        sink.line(&[prefix, json.as_bytes(), b"}"]).map_err(|e| {
            failed = Some(e);
            StoreError::Unavailable("the snapshot stream was closed".into())
        })
    });
    match (n, failed) {
        (_, Some(e)) => Err(e),
        (n, None) => Ok(n?),
    }
}

/// Why a feed cannot start at `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedRefusal {
    /// History after `since` was pruned; `floor` is the oldest resumable version.
    Pruned {
        /// The lowest `since` the feed still serves.
        floor: u64,
    },
    /// `since` is beyond the head (the gateway followed another database).
    Ahead {
        /// The registry's head.
        head: u64,
    },
}

/// Checks where a feed may start.
pub async fn check_since(app: &Arc<App>, since: u64) -> Result<Result<(), FeedRefusal>, Error> {
    let app = app.clone();
    blocking(move || {
        app.db.read(|c| {
            let floor = read_floor(c)?;
            let head = read_head(c)?;
            Ok::<_, Error>(if since < floor {
                Err(FeedRefusal::Pruned { floor })
            } else if since > head {
                Err(FeedRefusal::Ahead { head })
            } else {
                Ok(())
            })
        })
    })
    .await
}

enum Batch {
    Lines(Vec<(u64, String)>),
    Gap,
}

fn read_batch(app: &App, after: u64) -> Result<Batch, Error> {
    app.db.read(|c| {
        let mut rows = Vec::with_capacity(BATCH);
        c.query_each(
            "SELECT version, line FROM changes WHERE version > $1 ORDER BY version LIMIT $2",
            &[
                after.into(),
                i64::try_from(BATCH).unwrap_or(i64::MAX).into(),
            ],
            &mut |r| {
                rows.push((crate::db::version(r, 0)?, r.text(1)?));
                Ok(())
            },
        )?;
        if rows.is_empty() && read_floor(c)? > after {
            return Ok(Batch::Gap);
        }
        // Versions are contiguous; anything else means history was pruned under us.
        if (after + 1..)
            .zip(&rows)
            .any(|(expect, (v, _))| *v != expect)
        {
            return Ok(Batch::Gap);
        }
        Ok(Batch::Lines(rows))
    })
}

/// Streams the feed from `since` (checked with [`check_since`]) until the client goes
/// away or the sidecar stops.
/// `epoch` is the database's epoch the position belongs to: the stream ends when the
/// database moves to another one (a promotion), and the gateway's next request is
/// refused with `410`.
pub fn follow(app: &Arc<App>, since: u64, epoch: u64) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = run_feed(&app, since, epoch, &tx).await {
            tracing::debug!(error = %e, "feed stream ended");
        }
    });
    rx
}

/// The shortest window [`heartbeat_line`] accepts: the head watcher reads the database
/// about every half second (PostgreSQL), so a heartbeat interval shorter than that would
/// end every stream.
const REACHABLE_FLOOR: Duration = Duration::from_secs(2);

/// A heartbeat vouches that the gateway has every change up to `version`: only sent
/// while the database has been read within `window` (a replica cut off from its
/// database must not keep gateways fresh) and the epoch is still `epoch`. Otherwise
/// the stream ends, and the gateway moves to another replica or goes stale.
fn heartbeat_line(app: &App, version: u64, epoch: u64, window: Duration) -> Result<Bytes, Error> {
    if !app.db.reachable_within(window.max(REACHABLE_FLOOR)) {
        return Err(Error::Unavailable {
            code: "database_unavailable",
            detail: "the database has not been read recently".into(),
        });
    }
    if app.db.cached_epoch() != epoch {
        return Err(Error::Internal(
            "the database moved to another epoch".into(),
        ));
    }
    let mut v = serde_json::to_vec(&FeedLine::Heartbeat(Heartbeat {
        version,
        store_id: app.db.store_id().to_owned(),
        time: to_datetime(app.now()),
        epoch,
    }))?;
    v.push(b'\n');
    Ok(Bytes::from(v))
}

async fn run_feed(
    app: &Arc<App>,
    since: u64,
    epoch: u64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Error> {
    let gone = || Error::Internal("the client went away".into());
    let mut head = app.db.subscribe();
    let interval: Duration = app.settings.heartbeat;
    let mut pos = since;
    let mut first = true;
    loop {
        // Mark the head seen *before* reading, so a commit during the read wakes us again.
        head.borrow_and_update();
        loop {
            let a = app.clone();
            let batch = blocking(move || read_batch(&a, pos)).await?;
            let lines = match batch {
                Batch::Gap => {
                    let mut v = serde_json::to_vec(&FeedLine::Resync(Resync {
                        version: pos,
                        reason: "history_pruned".into(),
                    }))?;
                    v.push(b'\n');
                    let _ = tx.send(Bytes::from(v)).await;
                    return Ok(());
                }
                Batch::Lines(l) => l,
            };
            let full = lines.len() == BATCH;
            if app.db.cached_epoch() != epoch {
                return Ok(()); // promoted or restored: the gateway comes back and gets 410
            }
            if let Some((last, _)) = lines.last() {
                pos = *last;
                let mut buf = BytesMut::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
                for (_, l) in &lines {
                    buf.extend_from_slice(l.as_bytes());
                    buf.extend_from_slice(b"\n");
                }
                tx.send(buf.freeze()).await.map_err(|_| gone())?;
            }
            if !full {
                break;
            }
        }
        if first {
            // Caught up with the backlog: say so at once.
            tx.send(heartbeat_line(app, pos, epoch, interval)?)
                .await
                .map_err(|_| gone())?;
            first = false;
        }
        let mut deadline = Instant::now() + interval;
        loop {
            tokio::select! {
                biased;
                changed = head.changed() => {
                    if changed.is_err() {
                        return Ok(()); // the database is gone: the sidecar is stopping
                    }
                    break;
                }
                () = tx.closed() => return Err(gone()),
                () = tokio::time::sleep_until(deadline) => {
                    tx.send(heartbeat_line(app, pos, epoch, interval)?).await.map_err(|_| gone())?;
                    deadline = Instant::now() + interval;
                }
            }
        }
    }
}
