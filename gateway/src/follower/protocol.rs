//! The feed protocol as a pure state machine: which request comes next, what each line
//! of `GET /v1/snapshot` and `GET /v1/feed` means, and when what was read may be applied
//! and called fresh. No I/O and no clock: the loop in [`super`] connects, hands the
//! machine what arrived and carries out what it answers through the state's seams.
//!
//! The rules it keeps:
//! - A snapshot is a header, participants, consents and an end line whose counts must
//!   match what was read; the store id is `[A-Za-z0-9_-]*`.
//! - A position is (store id, epoch, version): versions count within one history
//!   branch (epoch) of one database (store id). A sidecar without epochs is epoch 0.
//! - Feed versions are contiguous: a change that is not `position + 1` is a gap, and a
//!   gap, a `resync` line, a `410`, a heartbeat naming another store id, another epoch
//!   or another version than the position, or a change the store cannot apply reloads
//!   the snapshot.
//! - What a pass read (the lines buffered at once) is applied together, even when the
//!   pass ended on an error: the position has already moved past it.
//! - Fresh only once what was read is applied and, on a new connection, only after the
//!   heartbeat the sidecar sends when that connection's backlog is drained: a gateway
//!   that went stale during an outage must not turn fresh on the first replayed line
//!   while revocations made during the outage are still further down the stream.
//! - A participant line that does not decode but names a BIN is applied as
//!   "undecodable" (kept inactive, fail closed) with the thumbprints known for it; a line
//!   that does not even name a BIN, like any unreadable line, ends the connection.
//!
//! The machine knows nothing of endpoints: the replicas of one database serve one
//! history, so the loop may open the next connection on any of them and the machine
//! resumes from its position there (the endpoint choice lives in `super::endpoints`).

use std::sync::Arc;

use consent_cache::{BatchError, Bin, Change, ConsentRecord, ConsentStore};
use feed_wire::{FeedLine, ParticipantOp, SnapshotHeader, SnapshotLine, SnapshotTrailer};

use crate::network::Registry;

/// Where the follower is in the sidecar's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The sidecar database the versions belong to.
    pub(crate) store_id: String,
    /// The database's history branch (0: a sidecar without epochs).
    pub(crate) epoch: u64,
    /// The last version read.
    pub(crate) version: u64,
}

/// What the next connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `GET /v1/snapshot`.
    Snapshot,
    /// `GET /v1/feed` after this position.
    Feed(Position),
}

impl Request {
    /// The path and query to request.
    pub(crate) fn path(&self) -> String {
        match self {
            Request::Snapshot => "/v1/snapshot".into(),
            Request::Feed(p) if p.epoch == 0 => {
                format!("/v1/feed?since={}&store_id={}", p.version, p.store_id)
            }
            Request::Feed(p) => format!(
                "/v1/feed?since={}&store_id={}&epoch={}",
                p.version, p.store_id, p.epoch
            ),
        }
    }
}

/// What the sidecar sent that breaks the protocol; the connection ends and is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Fault {
    /// A response status other than those the protocol expects.
    #[error("unexpected status {0}")]
    Status(u16),
    /// A line that does not read (number, why).
    #[error("line {0}: {1}")]
    Parse(u64, String),
    /// The feed's body ended.
    #[error("stream ended")]
    Ended,
    /// The snapshot ended early or does not add up.
    #[error("snapshot cut short or inconsistent: {0}")]
    BadSnapshot(String),
}

/// Why the snapshot has to be loaded again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Reload {
    /// The feed cannot continue from the position (pruned, another store, ahead).
    #[error("410 from the feed")]
    Gone,
    /// A change that does not follow the position.
    #[error("gap: change {got} after {after}")]
    Gap {
        /// The position.
        after: u64,
        /// The change's version.
        got: u64,
    },
    /// The sidecar said so (`resync` line).
    #[error("resync: {0}")]
    Resync(String),
    /// A heartbeat names another store id: the sidecar's database was replaced.
    #[error("store id changed")]
    StoreChanged,
    /// A heartbeat names another epoch: the database was promoted or restored, and the
    /// position's versions may belong to a branch that no longer exists.
    #[error("epoch {heartbeat} but position in epoch {position}")]
    EpochChanged {
        /// The heartbeat's epoch.
        heartbeat: u64,
        /// The position's epoch.
        position: u64,
    },
    /// A heartbeat's version is not the position.
    #[error("heartbeat at {heartbeat} but position {position}")]
    Heartbeat {
        /// The heartbeat's version.
        heartbeat: u64,
        /// The position.
        position: u64,
    },
    /// The store refused a change.
    #[error("apply: {0}")]
    Apply(BatchError),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Connect again after a pause; the position (if any) is kept.
    Reconnect(Fault),
    /// The position is dropped: the next request is the snapshot.
    Reload(Reload),
}

/// A complete snapshot, to be put in force (which also makes the follower fresh).
#[derive(Debug)]
pub(crate) struct Install {
    /// The consents.
    pub(crate) store: ConsentStore,
    /// The participants.
    pub(crate) registry: Arc<Registry>,
    /// The version the snapshot reflects.
    pub(crate) version: u64,
}

/// What to do after a line.
#[derive(Debug)]
pub(crate) enum Step {
    /// Read the next line.
    Read,
    /// Stop reading: apply what this pass read ([`Protocol::end_pass`], then
    /// [`Protocol::commit`], which says whether the connection goes on).
    EndPass,
    /// The snapshot is complete: install it; the connection is done, the next
    /// [`Protocol::connect`] follows the feed.
    Install(Install),
    /// The connection is over.
    Ended(Ended),
}

/// What a pass read, to be applied in this order: consent changes, then the registry.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    /// Consent changes for `ConsentStore::apply_batch`.
    pub(crate) changes: Vec<Change>,
    /// The registry to publish, when participants changed.
    pub(crate) registry: Option<Arc<Registry>>,
    /// Participant changes read (for the counter).
    pub(crate) participant_changes: u64,
}

/// What the pass just applied means.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Commit {
    /// The version the store now reflects (none when the apply failed).
    pub(crate) version: Option<u64>,
    /// The follower is fresh as of now.
    pub(crate) fresh: bool,
    /// The connection is over.
    pub(crate) ended: Option<Ended>,
}

/// The follower's protocol state.
#[derive(Debug)]
pub(crate) struct Protocol {
    phase: Phase,
    /// The registry as the follower has read it (the one last handed out to publish).
    registry: Arc<Registry>,
    /// Whether the current (or last) connection delivered a line.
    heard: bool,
}

#[derive(Debug)]
enum Phase {
    /// No position: the next connection loads the snapshot.
    NeedSnapshot,
    /// Reading a snapshot.
    LoadingSnapshot(Box<SnapshotLoad>),
    /// A position to follow the feed from, and the feed connection if one is open.
    Following {
        position: Position,
        conn: Option<FeedConn>,
    },
}

/// A snapshot being read.
#[derive(Debug, Default)]
struct SnapshotLoad {
    header: Option<SnapshotHeader>,
    records: Vec<ConsentRecord>,
    registry: Registry,
    participants: u64,
}

/// An open feed connection.
#[derive(Debug, Default)]
struct FeedConn {
    /// This connection's backlog has been drained (its first heartbeat arrived).
    caught_up: bool,
    /// Consent changes read in this pass.
    changes: Vec<Change>,
    registry_changed: bool,
    participant_changes: u64,
    /// Why this pass stopped early; reported once what it read is applied.
    stop: Option<Ended>,
}

impl Protocol {
    /// Nothing loaded: the first request is the snapshot.
    pub(crate) fn new() -> Protocol {
        Protocol {
            phase: Phase::NeedSnapshot,
            registry: Arc::new(Registry::new()),
            heard: false,
        }
    }

    /// The position the feed is followed from (none while a snapshot is needed).
    pub(crate) fn position(&self) -> Option<&Position> {
        match &self.phase {
            Phase::Following { position, .. } => Some(position),
            Phase::NeedSnapshot | Phase::LoadingSnapshot(_) => None,
        }
    }

    /// Whether the connection that just ended (or is open) delivered any feed line.
    pub(crate) fn heard_on_connection(&self) -> bool {
        self.heard
    }

    /// A connection is being opened: what to ask for. Anything left of an earlier
    /// connection is dropped.
    pub(crate) fn connect(&mut self) -> Request {
        self.heard = false;
        match &mut self.phase {
            Phase::Following { position, conn } => {
                *conn = None;
                Request::Feed(position.clone())
            }
            Phase::NeedSnapshot | Phase::LoadingSnapshot(_) => {
                self.phase = Phase::NeedSnapshot;
                Request::Snapshot
            }
        }
    }

    /// The response's status arrived.
    pub(crate) fn on_response(&mut self, status: u16) -> Result<(), Ended> {
        match (&mut self.phase, status) {
            (Phase::Following { conn, .. }, 200) => *conn = Some(FeedConn::default()),
            (Phase::Following { .. }, 410) => {
                self.phase = Phase::NeedSnapshot;
                return Err(Ended::Reload(Reload::Gone));
            }
            (Phase::NeedSnapshot | Phase::LoadingSnapshot(_), 200) => {
                self.phase = Phase::LoadingSnapshot(Box::default());
            }
            (_, s) => {
                self.drop_connection();
                return Err(Ended::Reconnect(Fault::Status(s)));
            }
        }
        Ok(())
    }

    /// One line of the body (`n` counts from 1).
    pub(crate) fn on_line(&mut self, n: u64, line: &str) -> Step {
        match &mut self.phase {
            Phase::LoadingSnapshot(load) => match load.read(&self.registry, n, line) {
                Ok(None) => Step::Read,
                Ok(Some((install, position))) => {
                    self.registry = install.registry.clone();
                    self.phase = Phase::Following {
                        position,
                        conn: None,
                    };
                    Step::Install(install)
                }
                Err(fault) => self.fail(fault),
            },
            Phase::Following {
                position,
                conn: Some(conn),
            } => {
                if conn.stop.is_none() {
                    if let Err(end) =
                        conn.read(position, &mut self.registry, &mut self.heard, n, line)
                    {
                        conn.stop = Some(end);
                    }
                }
                match conn.stop {
                    None => Step::Read,
                    Some(_) => Step::EndPass,
                }
            }
            Phase::NeedSnapshot | Phase::Following { conn: None, .. } => Step::EndPass,
        }
    }

    /// A line that could not even be split out (not UTF-8): like an unreadable line.
    pub(crate) fn on_fault(&mut self, fault: Fault) -> Step {
        match &mut self.phase {
            Phase::Following {
                conn: Some(conn), ..
            } => {
                conn.stop.get_or_insert(Ended::Reconnect(fault));
                Step::EndPass
            }
            _ => self.fail(fault),
        }
    }

    /// What the pass read, to apply now (nothing outside a feed connection).
    pub(crate) fn end_pass(&mut self) -> Pass {
        let Phase::Following {
            conn: Some(conn), ..
        } = &mut self.phase
        else {
            return Pass::default();
        };
        Pass {
            changes: std::mem::take(&mut conn.changes),
            registry: std::mem::take(&mut conn.registry_changed).then(|| self.registry.clone()),
            participant_changes: std::mem::take(&mut conn.participant_changes),
        }
    }

    /// How applying the pass's consent changes went (`Ok` when there were none).
    pub(crate) fn commit(&mut self, applied: Result<(), BatchError>) -> Commit {
        let Phase::Following {
            position,
            conn: Some(conn),
        } = &mut self.phase
        else {
            return Commit::default();
        };
        let (version, ended) = match applied {
            Ok(()) => (Some(position.version), conn.stop.take()),
            Err(e) => (None, Some(Ended::Reload(Reload::Apply(e)))),
        };
        let fresh = version.is_some() && conn.caught_up && ended.is_none();
        match &ended {
            Some(Ended::Reload(_)) => self.phase = Phase::NeedSnapshot,
            Some(Ended::Reconnect(_)) => self.drop_connection(),
            None => {}
        }
        Commit {
            version,
            fresh,
            ended,
        }
    }

    /// The body ended (the sidecar closed the stream).
    pub(crate) fn on_stream_end(&mut self) -> Ended {
        let fault = match self.phase {
            Phase::LoadingSnapshot(_) => Fault::BadSnapshot("no end line".into()),
            _ => Fault::Ended,
        };
        self.drop_connection();
        Ended::Reconnect(fault)
    }

    /// The connection failed (transport error, timeout): the position is kept.
    pub(crate) fn on_disconnect(&mut self) {
        self.drop_connection();
    }

    fn drop_connection(&mut self) {
        match &mut self.phase {
            Phase::Following { conn, .. } => *conn = None,
            Phase::LoadingSnapshot(_) => self.phase = Phase::NeedSnapshot,
            Phase::NeedSnapshot => {}
        }
    }

    /// A connection-ending fault outside a feed pass.
    fn fail(&mut self, fault: Fault) -> Step {
        self.drop_connection();
        Step::Ended(Ended::Reconnect(fault))
    }
}

impl SnapshotLoad {
    /// Reads one snapshot line; at the end line, the snapshot and its position.
    fn read(
        &mut self,
        previous: &Registry,
        n: u64,
        line: &str,
    ) -> Result<Option<(Install, Position)>, Fault> {
        let parsed = match SnapshotLine::parse(line) {
            Ok(p) => p,
            Err(e) => match undecodable_participant(line) {
                Some((_, bin, thumbprints)) if self.header.is_some() => {
                    // Fail closed: kept inactive, recognised by the thumbprints it had
                    // before and any readable now.
                    let mut known = previous.thumbprints_of(bin);
                    known.extend(thumbprints);
                    tracing::warn!(participant = %bin, "snapshot participant not decodable: kept inactive");
                    self.registry.undecodable(bin, known);
                    self.participants += 1;
                    return Ok(None);
                }
                _ => return Err(parse_error(n, &e)),
            },
        };
        match (parsed, &self.header) {
            (SnapshotLine::Snapshot(h), None) => self.header = Some(h),
            (SnapshotLine::Participant(p), Some(_)) => {
                self.participants += 1;
                self.registry.upsert(p);
            }
            (SnapshotLine::Consent(c), Some(_)) => self.records.push(c),
            (SnapshotLine::End(t), Some(_)) => return self.finish(&t).map(Some),
            _ => return Err(Fault::BadSnapshot(format!("line {n} out of order"))),
        }
        Ok(None)
    }

    /// Checks the end line against what was read and builds the store.
    fn finish(&mut self, end: &SnapshotTrailer) -> Result<(Install, Position), Fault> {
        let Some(h) = &self.header else {
            return Err(Fault::BadSnapshot("no header".into()));
        };
        if end.version != h.version
            || end.consents != self.records.len() as u64
            || end.participants != self.participants
            || self.registry.len() as u64 != self.participants
        {
            return Err(Fault::BadSnapshot("counts differ from the end line".into()));
        }
        let position = Position {
            store_id: h.store_id.clone(),
            epoch: h.epoch,
            version: h.version,
        };
        // It goes into the feed's query string unescaped.
        if !position
            .store_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Fault::BadSnapshot("store id".into()));
        }
        let store = ConsentStore::from_records(std::mem::take(&mut self.records))
            .map_err(|e| Fault::BadSnapshot(e.to_string()))?;
        let install = Install {
            store,
            registry: Arc::new(std::mem::take(&mut self.registry)),
            version: position.version,
        };
        Ok((install, position))
    }
}

impl FeedConn {
    /// Reads one feed line at `position`, moving it past each change read.
    fn read(
        &mut self,
        position: &mut Position,
        registry: &mut Arc<Registry>,
        heard: &mut bool,
        n: u64,
        line: &str,
    ) -> Result<(), Ended> {
        let parsed = match FeedLine::parse(line) {
            Ok(p) => p,
            Err(e) => {
                return match undecodable_participant(line) {
                    Some((Some(v), bin, thumbprints)) => {
                        *heard = true;
                        advance(position, v)?;
                        tracing::warn!(participant = %bin, version = v, "participant change not decodable: kept inactive");
                        Arc::make_mut(registry).undecodable(bin, thumbprints);
                        self.participant_changed();
                        Ok(())
                    }
                    _ => Err(Ended::Reconnect(parse_error(n, &e))),
                }
            }
        };
        *heard = true;
        match parsed {
            FeedLine::Consent(c) => {
                advance(position, c.version)?;
                self.changes.push(c);
            }
            FeedLine::Participant(p) => {
                advance(position, p.version)?;
                let ParticipantOp::Upsert(record) = p.op;
                tracing::info!(
                    participant = %record.bin,
                    status = record.status.as_str(),
                    version = p.version,
                    "participant change from the trust registry"
                );
                Arc::make_mut(registry).upsert(record);
                self.participant_changed();
            }
            FeedLine::Heartbeat(h) => {
                if h.store_id != position.store_id {
                    return Err(Ended::Reload(Reload::StoreChanged));
                }
                if h.epoch != position.epoch {
                    return Err(Ended::Reload(Reload::EpochChanged {
                        heartbeat: h.epoch,
                        position: position.epoch,
                    }));
                }
                if h.version != position.version {
                    return Err(Ended::Reload(Reload::Heartbeat {
                        heartbeat: h.version,
                        position: position.version,
                    }));
                }
                // The sidecar sends one at once when this connection's backlog is
                // drained: from here on, what is applied is the registry's present.
                self.caught_up = true;
            }
            FeedLine::Resync(r) => return Err(Ended::Reload(Reload::Resync(r.reason))),
        }
        Ok(())
    }

    fn participant_changed(&mut self) {
        self.registry_changed = true;
        self.participant_changes += 1;
    }
}

/// Moves the position to a change's version, which must be the next one.
fn advance(position: &mut Position, version: u64) -> Result<(), Ended> {
    if position.version.checked_add(1) != Some(version) {
        return Err(Ended::Reload(Reload::Gap {
            after: position.version,
            got: version,
        }));
    }
    position.version = version;
    Ok(())
}

/// A line that does not parse. serde_json's message may quote the offending value
/// (which could be a customer id), so only its category and column are kept.
fn parse_error(line: u64, e: &serde_json::Error) -> Fault {
    Fault::Parse(
        line,
        format!("{:?} error at column {}", e.classify(), e.column()),
    )
}

/// The parts of a participant line that did not decode as a whole: its version (on
/// the feed), BIN and thumbprints. `None` when the line names no BIN.
fn undecodable_participant(line: &str) -> Option<(Option<u64>, Bin, Vec<String>)> {
    #[derive(serde::Deserialize)]
    struct Line {
        participant: Lenient,
    }
    #[derive(serde::Deserialize)]
    struct Lenient {
        #[serde(default)]
        version: Option<u64>,
        bin: Bin,
        #[serde(default)]
        thumbprints: Vec<serde_json::Value>,
    }
    let l: Line = serde_json::from_str(line).ok()?;
    let thumbprints = l
        .participant
        .thumbprints
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    Some((l.participant.version, l.participant.bin, thumbprints))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Entry;
    use consent_cache::{ApplyError, BatchSummary};

    const TIME: &str = "2026-11-01T10:00:00Z";

    fn header(version: u64, participants: u64, consents: u64) -> String {
        format!(
            r#"{{"snapshot":{{"store_id":"s-1","version":{version},"participants":{participants},"consents":{consents},"time":"{TIME}"}}}}"#
        )
    }

    fn end(version: u64, participants: u64, consents: u64) -> String {
        format!(
            r#"{{"end":{{"version":{version},"participants":{participants},"consents":{consents}}}}}"#
        )
    }

    fn change(version: u64) -> String {
        format!(r#"{{"consent":{{"version":{version},"op":"remove","id":"c-{version}"}}}}"#)
    }

    fn heartbeat(store_id: &str, version: u64) -> String {
        format!(
            r#"{{"heartbeat":{{"version":{version},"store_id":"{store_id}","time":"{TIME}"}}}}"#
        )
    }

    fn participant(roles: &str, thumbprint: &str) -> String {
        format!(
            r#"{{"participant":{{"bin":"100140000001","name":"A","roles":{roles},"status":"active","thumbprints":["{thumbprint}"],"provider_urls":[],"updated_at":"{TIME}"}}}}"#
        )
    }

    /// Feeds `lines` as one connection's body; the last step.
    fn read(p: &mut Protocol, lines: &[String]) -> Step {
        let mut last = Step::Read;
        for (i, l) in lines.iter().enumerate() {
            last = p.on_line(i as u64 + 1, l);
            if !matches!(last, Step::Read) {
                break;
            }
        }
        last
    }

    /// A machine following `s-1` from `version` (an empty snapshot).
    fn following(version: u64) -> Protocol {
        let mut p = Protocol::new();
        assert_eq!(p.connect(), Request::Snapshot);
        p.on_response(200).unwrap();
        let step = read(&mut p, &[header(version, 0, 0), end(version, 0, 0)]);
        assert!(matches!(step, Step::Install(Install { version: v, .. }) if v == version));
        p
    }

    /// Opens a feed connection and reads `lines` as one pass; the pass and its commit.
    fn pass(p: &mut Protocol, lines: &[String]) -> (Vec<u64>, Commit) {
        read(p, lines);
        let pass = p.end_pass();
        let versions = pass.changes.iter().map(|c| c.version).collect();
        (versions, p.commit(Ok(())))
    }

    fn open_feed(p: &mut Protocol) -> Request {
        let r = p.connect();
        p.on_response(200).unwrap();
        r
    }

    #[test]
    fn the_feed_follows_from_the_snapshots_version_and_store() {
        let mut p = following(2);
        let r = open_feed(&mut p);
        assert_eq!(r.path(), "/v1/feed?since=2&store_id=s-1");
        let (read, commit) = pass(&mut p, &[change(3), change(4)]);
        assert_eq!((read, commit.version), (vec![3, 4], Some(4)));
        // A dropped connection resumes from the position, no gap, no duplicate.
        p.on_disconnect();
        assert_eq!(p.connect().path(), "/v1/feed?since=4&store_id=s-1");
    }

    #[test]
    fn a_new_connection_turns_fresh_only_at_its_backlog_heartbeat() {
        let mut p = following(2);
        open_feed(&mut p);
        let (_, c) = pass(&mut p, &[change(3)]);
        assert!(!c.fresh, "backlog still being read");
        let (_, c) = pass(&mut p, &[heartbeat("s-1", 3)]);
        assert!(c.fresh && c.ended.is_none());
        let (_, c) = pass(&mut p, &[change(4)]);
        assert!(c.fresh, "caught up: each applied pass is the present");
        open_feed(&mut p);
        let (_, c) = pass(&mut p, &[change(5)]);
        assert!(!c.fresh, "a new connection starts with its backlog again");
        assert!(p.heard_on_connection());
    }

    /// A machine following `s-1` in `epoch` from `version` (an empty snapshot).
    fn following_in(epoch: u64, version: u64) -> Protocol {
        let mut p = Protocol::new();
        p.connect();
        p.on_response(200).unwrap();
        let h = header(version, 0, 0).replace(r#""time""#, &format!(r#""epoch":{epoch},"time""#));
        let step = read(&mut p, &[h, end(version, 0, 0)]);
        assert!(matches!(step, Step::Install(_)), "{step:?}");
        p
    }

    fn heartbeat_in(epoch: u64, version: u64) -> String {
        heartbeat("s-1", version).replace(r#""time""#, &format!(r#""epoch":{epoch},"time""#))
    }

    #[test]
    fn the_position_carries_the_snapshots_epoch_into_the_feed_query() {
        let mut p = following_in(3, 2);
        assert_eq!(
            p.position(),
            Some(&Position {
                store_id: "s-1".into(),
                epoch: 3,
                version: 2
            })
        );
        let r = open_feed(&mut p);
        assert_eq!(r.path(), "/v1/feed?since=2&store_id=s-1&epoch=3");
        // A heartbeat of the same epoch is the backlog's end, as without epochs.
        let (read, c) = pass(&mut p, &[change(3), heartbeat_in(3, 3)]);
        assert_eq!((read, c.version, c.fresh), (vec![3], Some(3), true));
        // Resumed after a disconnect (on this endpoint or another): same epoch, no reload.
        p.on_disconnect();
        assert_eq!(p.connect().path(), "/v1/feed?since=3&store_id=s-1&epoch=3");
    }

    #[test]
    fn a_heartbeat_of_another_epoch_reloads_the_snapshot() {
        // Epoch 0 (a sidecar without epochs) against a heartbeat naming one, a promoted
        // database (a later epoch), and a position ahead of the sidecar's epoch.
        for (mine, theirs) in [(0, 1), (1, 2), (2, 1)] {
            let mut p = following_in(mine, 5);
            open_feed(&mut p);
            let (applied, c) = pass(&mut p, &[change(6), heartbeat_in(theirs, 6)]);
            assert_eq!(applied, vec![6], "applied before the heartbeat was read");
            assert_eq!(
                c.ended,
                Some(Ended::Reload(Reload::EpochChanged {
                    heartbeat: theirs,
                    position: mine
                }))
            );
            assert!(!c.fresh, "never fresh on a heartbeat of another branch");
            assert_eq!(p.position(), None);
            assert_eq!(p.connect(), Request::Snapshot);
            // The reloaded snapshot names the new epoch; the feed follows it.
            p.on_response(200).unwrap();
            let h = header(9, 0, 0).replace(r#""time""#, &format!(r#""epoch":{theirs},"time""#));
            assert!(matches!(read(&mut p, &[h, end(9, 0, 0)]), Step::Install(_)));
            let want = match theirs {
                0 => "/v1/feed?since=9&store_id=s-1".to_string(),
                e => format!("/v1/feed?since=9&store_id=s-1&epoch={e}"),
            };
            assert_eq!(p.connect().path(), want);
        }
    }

    #[test]
    fn what_a_pass_read_before_a_gap_is_applied_then_the_snapshot_reloads() {
        let mut p = following(2);
        open_feed(&mut p);
        let (read, c) = pass(&mut p, &[change(3), change(5), change(6)]);
        assert_eq!((read, c.version), (vec![3], Some(3)));
        assert_eq!(
            c.ended,
            Some(Ended::Reload(Reload::Gap { after: 3, got: 5 }))
        );
        assert!(!c.fresh);
        assert_eq!(p.position(), None);
        assert_eq!(p.connect(), Request::Snapshot);
    }

    #[test]
    fn resync_and_heartbeats_of_another_store_or_version_reload() {
        let resync = r#"{"resync":{"version":2,"reason":"history_pruned"}}"#.to_string();
        for (line, why) in [
            (resync, Reload::Resync("history_pruned".into())),
            (heartbeat("s-2", 2), Reload::StoreChanged),
            (
                heartbeat("s-1", 7),
                Reload::Heartbeat {
                    heartbeat: 7,
                    position: 2,
                },
            ),
        ] {
            let mut p = following(2);
            open_feed(&mut p);
            let (_, c) = pass(&mut p, &[line]);
            assert_eq!(c.ended, Some(Ended::Reload(why)));
            assert_eq!(p.connect(), Request::Snapshot);
        }
    }

    #[test]
    fn an_unreadable_line_ends_the_connection_after_what_came_before() {
        let mut p = following(2);
        open_feed(&mut p);
        let (read, c) = pass(&mut p, &[change(3), "not json".into(), change(4)]);
        assert_eq!((read, c.version), (vec![3], Some(3)));
        assert!(matches!(
            c.ended,
            Some(Ended::Reconnect(Fault::Parse(2, _)))
        ));
        assert_eq!(p.connect().path(), "/v1/feed?since=3&store_id=s-1");
        // Not UTF-8 likewise.
        p.on_response(200).unwrap();
        assert!(matches!(
            p.on_fault(Fault::Parse(1, "not UTF-8".into())),
            Step::EndPass
        ));
        let c = pass(&mut p, &[]).1;
        assert!(matches!(
            c.ended,
            Some(Ended::Reconnect(Fault::Parse(1, _)))
        ));
    }

    #[test]
    fn a_change_the_store_refuses_reloads_without_moving_the_version() {
        let mut p = following(2);
        open_feed(&mut p);
        read(&mut p, &[change(3), heartbeat("s-1", 3)]);
        assert_eq!(p.end_pass().changes.len(), 1);
        let refused = BatchError {
            index: 0,
            done: BatchSummary::default(),
            source: ApplyError::UnknownConsent {
                version: 3,
                id: "c-3".into(),
            },
        };
        let c = p.commit(Err(refused.clone()));
        assert_eq!(
            c,
            Commit {
                version: None,
                fresh: false,
                ended: Some(Ended::Reload(Reload::Apply(refused))),
            }
        );
        assert_eq!(p.connect(), Request::Snapshot);
    }

    #[test]
    fn a_410_reloads_and_other_statuses_retry_from_the_same_place() {
        let mut p = following(2);
        p.connect();
        assert_eq!(
            p.on_response(503),
            Err(Ended::Reconnect(Fault::Status(503)))
        );
        p.connect();
        assert_eq!(p.on_response(410), Err(Ended::Reload(Reload::Gone)));
        assert!(!p.heard_on_connection());
        assert_eq!(p.connect(), Request::Snapshot);
        assert_eq!(
            p.on_response(410),
            Err(Ended::Reconnect(Fault::Status(410)))
        );
        assert_eq!(p.connect(), Request::Snapshot);
    }

    #[test]
    fn a_snapshot_must_add_up() {
        let bad_store = header(2, 0, 0).replace("s-1", "s/1");
        for (lines, want) in [
            (vec![header(2, 0, 0), end(2, 0, 1)], "counts differ"),
            (vec![header(2, 0, 0), end(3, 0, 0)], "counts differ"),
            (vec![bad_store, end(2, 0, 0)], "store id"),
            (vec![end(2, 0, 0)], "line 1 out of order"),
            (
                vec![header(2, 0, 0), header(2, 0, 0)],
                "line 2 out of order",
            ),
        ] {
            let mut p = Protocol::new();
            p.connect();
            p.on_response(200).unwrap();
            match read(&mut p, &lines) {
                Step::Ended(Ended::Reconnect(Fault::BadSnapshot(why))) => {
                    assert!(why.contains(want), "{why} for {lines:?}")
                }
                other => panic!("{other:?} for {lines:?}"),
            }
            assert_eq!(p.connect(), Request::Snapshot);
        }
        let mut p = Protocol::new();
        p.connect();
        p.on_response(200).unwrap();
        read(&mut p, &[header(2, 0, 0)]);
        assert_eq!(
            p.on_stream_end(),
            Ended::Reconnect(Fault::BadSnapshot("no end line".into()))
        );
    }

    #[test]
    fn an_undecodable_snapshot_participant_keeps_the_thumbprints_known_before() {
        let mut p = Protocol::new();
        let snapshot = |p: &mut Protocol, line: String| {
            if p.position().is_some() {
                // The feed answers 410: the snapshot is loaded again.
                p.connect();
                assert_eq!(p.on_response(410), Err(Ended::Reload(Reload::Gone)));
            }
            assert_eq!(p.connect(), Request::Snapshot);
            p.on_response(200).unwrap();
            match read(p, &[header(2, 1, 0), line, end(2, 1, 0)]) {
                Step::Install(i) => i.registry,
                other => panic!("{other:?}"),
            }
        };
        let bin = Bin::parse("100140000001").unwrap();
        let first = snapshot(&mut p, participant(r#"["user"]"#, "old"));
        assert!(matches!(first.get(bin), Some(Entry::Record(_))));
        let second = snapshot(&mut p, participant(r#"["auditor"]"#, "new"));
        assert_eq!(
            second.get(bin),
            Some(&Entry::Undecodable {
                thumbprints: vec!["old".into(), "new".into()]
            })
        );
    }

    #[test]
    fn an_undecodable_feed_participant_is_applied_inactive_and_published() {
        let mut p = following(2);
        open_feed(&mut p);
        let line = participant(r#"["auditor"]"#, "t")
            .replace(r#"{"bin""#, r#"{"version":3,"op":"upsert","bin""#);
        read(&mut p, &[line]);
        let pass = p.end_pass();
        assert_eq!(pass.participant_changes, 1);
        let registry = pass.registry.unwrap();
        let bin = Bin::parse("100140000001").unwrap();
        assert!(matches!(registry.get(bin), Some(Entry::Undecodable { .. })));
        assert_eq!(p.commit(Ok(())).version, Some(3));
    }

    #[test]
    fn an_undecodable_participant_line_still_names_its_bin_and_thumbprints() {
        // A role this hub does not know: the line does not decode as a feed line …
        let line = r#"{"participant":{"version":9,"op":"upsert","bin":"100140000001","name":"A","roles":["auditor"],"status":"active","thumbprints":["abc",7],"provider_urls":[],"updated_at":"2026-11-22T20:00:00Z"}}"#;
        assert!(FeedLine::parse(line).is_err());
        // … but names enough to keep the participant refused.
        let (version, bin, thumbprints) = undecodable_participant(line).unwrap();
        assert_eq!(version, Some(9));
        assert_eq!(bin, Bin::parse("100140000001").unwrap());
        assert_eq!(thumbprints, vec!["abc".to_string()]);
        // Snapshot lines carry no version.
        let snap = r#"{"participant":{"bin":"100140000001","status":"dormant"}}"#;
        assert_eq!(undecodable_participant(snap).unwrap().0, None);
        for other in [
            r#"{"participant":{"version":9}}"#,
            r#"{"participant":{"bin":"12"}}"#,
            r#"{"consent":{"version":9,"op":"frobnicate"}}"#,
            "not json",
        ] {
            assert!(undecodable_participant(other).is_none(), "{other}");
        }
    }
}
