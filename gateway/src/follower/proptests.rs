//! Property tests of the feed protocol ([`super::protocol`]) against a model sidecar.
//!
//! The model keeps a log per sidecar database branch (consent creations, authorisations
//! and revocations, participant upserts, some of them undecodable by the hub), prunes
//! its history, is replaced by a database restored from an earlier point (another store
//! id), and is promoted from an earlier point (the same store id, a new epoch). The
//! database is served by several endpoints (replicas); the follower uses one at a time
//! as the loop does ([`super::endpoints`]): when it fails (down, the connection dropped,
//! refused, stalled past its bound on a virtual clock) the next one is used, resuming
//! from the position. A generated run interleaves those changes with what the network
//! does to the follower's connections: snapshots and feed backlogs served, heartbeats,
//! lines delivered a few at a time, connections dropped mid-stream, lines lost (gaps),
//! replayed from earlier in the stream, unreadable lines, `resync` lines, heartbeats from
//! another store, another epoch or ahead of the sidecar, refused connections (`410`,
//! `503`), endpoints going down and up, streams that freeze, time passing. The harness
//! performs the machine's answers on an in-memory `ConsentStore` and registry, as the
//! loop does through the state, and checks:
//! - after every install and every applied pass, the store and the registry are exactly
//!   the sidecar's at the version reported;
//! - a feed connection turns the follower fresh only at or past the sidecar's head as of
//!   when it opened (its backlog's heartbeat);
//! - never a wrong allow: a consent revoked at or before the last version marked fresh
//!   is never `authorised` in the follower's store;
//! - a failed endpoint hands over to the next one with the position kept: the next
//!   request resumes the feed from it (over a clean network, with endpoints failing and
//!   streams stalling, the snapshot is never reloaded);
//! - a clean tail (reconnect, full backlog, heartbeat) ends fresh in the sidecar's state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consent_cache::{
    Bin, Change, ChangeOp, ConsentRecord, ConsentStatus, ConsentStore, Permission,
};
use feed_wire::{
    FeedLine, Heartbeat, ParticipantChange, ParticipantOp, ParticipantRecord, ParticipantStatus,
    Resync, Role, SnapshotHeader, SnapshotLine, SnapshotTrailer,
};
use proptest::prelude::*;
use time::OffsetDateTime;

use super::endpoints::{Rotation, Stall};
use super::protocol::{Commit, Ended, Fault, Install, Position, Protocol, Reload, Request, Step};
use crate::network::{Entry, Registry};

fn bin(n: u64) -> Bin {
    Bin::new(n).unwrap()
}

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

/// Consent `c-{i}` as created, with `status`.
fn consent(i: u8, status: ConsentStatus) -> ConsentRecord {
    ConsentRecord {
        id: format!("c-{i}"),
        api_user: bin(180_340_000_000 + u64::from(i)),
        customer: format!("9000000000{i:02}"),
        providers: vec![bin(990_140_000_011)],
        permissions: vec![Permission::Accounts],
        accounts: None,
        purpose: "model".into(),
        created_at: at(1_767_225_600),
        expires_at: None,
        status,
    }
}

/// A participant's record; `readable` is whether the hub can decode it.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    record: ParticipantRecord,
    readable: bool,
}

impl Member {
    fn new(n: u8, status: u8, thumb: u8, readable: bool) -> Member {
        let status = [
            ParticipantStatus::Active,
            ParticipantStatus::Suspended,
            ParticipantStatus::Isolated,
            ParticipantStatus::Terminated,
        ][usize::from(status % 4)];
        let record = ParticipantRecord {
            bin: bin(100_140_000_000 + u64::from(n)),
            name: format!("bank {n}"),
            roles: vec![Role::User],
            status,
            thumbprints: vec![format!("tp-{n}-{thumb}")],
            provider_urls: vec![],
            delisted: Vec::new(),
            updated_at: at(1_800_000_000),
        };
        Member { record, readable }
    }

    /// `{"participant": …}` with an `op`/`version` (feed) or without (snapshot); an
    /// unreadable one names a role the hub does not know.
    fn line(&self, version: Option<u64>) -> String {
        let mut v = match version {
            Some(version) => serde_json::to_value(FeedLine::Participant(ParticipantChange {
                version,
                op: ParticipantOp::Upsert(self.record.clone()),
            })),
            None => serde_json::to_value(SnapshotLine::Participant(self.record.clone())),
        }
        .unwrap();
        if !self.readable {
            v["participant"]["roles"] = serde_json::json!(["auditor"]);
        }
        v.to_string()
    }
}

/// What one version of a sidecar database's log carries.
#[derive(Debug, Clone)]
enum Logged {
    Consent(ChangeOp),
    Participant(Member),
}

/// The sidecar's state at some version.
#[derive(Debug, Default, Clone)]
struct World {
    consents: BTreeMap<String, ConsentRecord>,
    participants: BTreeMap<Bin, Member>,
}

impl World {
    fn apply(&mut self, entry: &Logged) {
        match entry {
            Logged::Consent(ChangeOp::Upsert(r)) => {
                self.consents.insert(r.id.clone(), r.clone());
            }
            Logged::Consent(ChangeOp::SetStatus { id, status }) => {
                if let Some(r) = self.consents.get_mut(id) {
                    r.status = *status;
                }
            }
            Logged::Consent(ChangeOp::Remove { id }) => {
                self.consents.remove(id);
            }
            Logged::Participant(m) => {
                self.participants.insert(m.record.bin, m.clone());
            }
        }
    }

    fn status(&self, i: u8) -> Option<ConsentStatus> {
        self.consents.get(&format!("c-{i}")).map(|r| r.status)
    }
}

/// The endpoints serving the sidecar's database.
const ENDPOINTS: usize = 3;
/// Twice the heartbeat interval the follower is configured with.
const STALL: Duration = Duration::from_secs(2);

/// A database's history branch: its store id and epoch.
type Branch = (String, u64);

/// One sidecar database branch: its store id and epoch, its change log (index `v - 1` is
/// version `v`), and the oldest version its feed still resumes from.
#[derive(Debug, Clone)]
struct Database {
    id: String,
    epoch: u64,
    log: Vec<Logged>,
    floor: u64,
}

impl Database {
    fn branch(&self) -> Branch {
        (self.id.clone(), self.epoch)
    }

    fn head(&self) -> u64 {
        self.log.len() as u64
    }

    fn state_at(&self, version: u64) -> World {
        let mut w = World::default();
        let upto = usize::try_from(version).unwrap();
        assert!(
            upto <= self.log.len(),
            "version {version} past {}'s head",
            self.id
        );
        for e in &self.log[..upto] {
            w.apply(e);
        }
        w
    }

    fn change_line(&self, version: u64) -> String {
        match &self.log[usize::try_from(version - 1).unwrap()] {
            Logged::Consent(op) => serde_json::to_string(&FeedLine::Consent(Change {
                version,
                op: op.clone(),
            }))
            .unwrap(),
            Logged::Participant(m) => m.line(Some(version)),
        }
    }

    fn snapshot_lines(&self) -> VecDeque<Item> {
        let w = self.state_at(self.head());
        let header = SnapshotLine::Snapshot(SnapshotHeader {
            store_id: self.id.clone(),
            version: self.head(),
            participants: w.participants.len() as u64,
            consents: w.consents.len() as u64,
            time: at(1_800_000_000),
            epoch: self.epoch,
        });
        let end = SnapshotLine::End(SnapshotTrailer {
            version: self.head(),
            participants: w.participants.len() as u64,
            consents: w.consents.len() as u64,
        });
        let mut lines = vec![serde_json::to_string(&header).unwrap()];
        lines.extend(w.participants.values().map(|m| m.line(None)));
        lines.extend(
            w.consents
                .values()
                .map(|c| serde_json::to_string(&SnapshotLine::Consent(c.clone())).unwrap()),
        );
        lines.push(serde_json::to_string(&end).unwrap());
        lines.into_iter().map(Item::Line).collect()
    }
}

/// A change to the sidecar.
#[derive(Debug, Clone)]
enum Op {
    Create(u8),
    Authorise(u8),
    Revoke(u8),
    Participant {
        n: u8,
        status: u8,
        thumb: u8,
        readable: bool,
    },
    /// History up to the head is pruned: older positions get `410`.
    Prune,
    /// The database is replaced by one restored from version `keep` (another store id).
    Replace {
        keep: u8,
    },
    /// A standby that had replicated up to version `keep` is promoted: the same store id,
    /// a new epoch, the history after `keep` lost.
    Promote {
        keep: u8,
    },
}

/// Every database the sidecar has had; the last one serves.
struct Sidecar {
    dbs: Vec<Database>,
}

impl Sidecar {
    fn new() -> Sidecar {
        Sidecar {
            dbs: vec![Database {
                id: "store-0".into(),
                epoch: 0,
                log: Vec::new(),
                floor: 0,
            }],
        }
    }

    fn current(&self) -> &Database {
        self.dbs.last().unwrap()
    }

    fn db(&self, branch: &Branch) -> &Database {
        self.dbs.iter().find(|d| d.branch() == *branch).unwrap()
    }

    /// Applies `op`; the version it logged, if it logged one.
    fn apply(&mut self, op: &Op) -> Option<u64> {
        let now = self.current().state_at(self.current().head());
        let entry = match *op {
            Op::Create(i) if now.status(i).is_none() => Logged::Consent(ChangeOp::Upsert(consent(
                i,
                ConsentStatus::AwaitingAuthorisation,
            ))),
            Op::Authorise(i) if now.status(i) == Some(ConsentStatus::AwaitingAuthorisation) => {
                set_status(i, ConsentStatus::Authorised)
            }
            Op::Revoke(i)
                if matches!(
                    now.status(i),
                    Some(ConsentStatus::Authorised | ConsentStatus::AwaitingAuthorisation)
                ) =>
            {
                set_status(i, ConsentStatus::Revoked)
            }
            Op::Participant {
                n,
                status,
                thumb,
                readable,
            } => Logged::Participant(Member::new(n, status, thumb, readable)),
            Op::Prune => {
                let db = self.dbs.last_mut().unwrap();
                db.floor = db.head();
                return None;
            }
            Op::Replace { keep } | Op::Promote { keep } => {
                let current = self.current();
                let keep = usize::from(keep).min(current.log.len());
                let (id, epoch) = match op {
                    Op::Replace { .. } => (format!("store-{}", self.dbs.len()), 0),
                    _ => (current.id.clone(), current.epoch + 1),
                };
                let log = current.log[..keep].to_vec();
                self.dbs.push(Database {
                    id,
                    epoch,
                    log,
                    floor: 0,
                });
                return None;
            }
            _ => return None,
        };
        let db = self.dbs.last_mut().unwrap();
        db.log.push(entry);
        Some(db.head())
    }

    /// The status the feed answers a request with.
    fn status_for(&self, request: &Request) -> u16 {
        let db = self.current();
        match request {
            Request::Snapshot => 200,
            // Another database, or a branch the database has left: `410`.
            Request::Feed(p) if p.store_id != db.id || p.epoch != db.epoch => 410,
            Request::Feed(p) if p.version < db.floor || p.version > db.head() => 410,
            Request::Feed(_) => 200,
        }
    }
}

fn heartbeat((store_id, epoch): &Branch, version: u64) -> String {
    serde_json::to_string(&FeedLine::Heartbeat(Heartbeat {
        version,
        store_id: store_id.clone(),
        time: at(1_800_000_000),
        epoch: *epoch,
    }))
    .unwrap()
}

/// Whether reading `line` must drop the position: a `resync`, or a heartbeat of
/// another database or branch than the one followed.
fn breaks_the_feed(machine: &Protocol, line: &str) -> bool {
    let Some(position) = machine.position() else {
        return false;
    };
    match FeedLine::parse(line) {
        Ok(FeedLine::Resync(_)) => true,
        Ok(FeedLine::Heartbeat(h)) => h.store_id != position.store_id || h.epoch != position.epoch,
        _ => false,
    }
}

/// A change that follows the position but names a consent no store holds.
fn unappliable(machine: &Protocol) -> String {
    let next = machine.position().map_or(1, |p| p.version + 1);
    serde_json::to_string(&FeedLine::Consent(Change {
        version: next,
        op: ChangeOp::SetStatus {
            id: "ghost".into(),
            status: ConsentStatus::Revoked,
        },
    }))
    .unwrap()
}

fn set_status(i: u8, status: ConsentStatus) -> Logged {
    Logged::Consent(ChangeOp::SetStatus {
        id: format!("c-{i}"),
        status,
    })
}

/// What the network does.
#[derive(Debug, Clone)]
enum Net {
    Sidecar(Op),
    /// The follower (re)connects.
    Connect,
    /// Up to this many lines arrive at once (one pass), connecting first if needed.
    Deliver(u8),
    /// The connection drops: a transport error, or the body ends.
    Close {
        error: bool,
    },
    /// The sidecar sends a heartbeat at its head.
    Heartbeat,
    /// The stream is tampered with this many lines ahead.
    Tamper(Tamper, u8),
    /// The next connection is answered with this status.
    Refuse(u16),
    /// An endpoint stops answering (its open connection drops, new ones are refused).
    Down(u8),
    /// An endpoint answers again.
    Up(u8),
    /// The open connection stays open but delivers nothing more (a stalled stream).
    Freeze,
    /// Time passes (milliseconds): a stream silent past its stall bound is left.
    Wait(u16),
}

/// A fault in the stream.
#[derive(Debug, Clone)]
enum Tamper {
    /// The line is lost.
    Lose,
    /// A line already sent on this connection arrives again.
    Replay(u8),
    /// A `resync` line.
    Resync,
    /// A line that is not JSON.
    Garbage,
    /// A line that is not UTF-8.
    NotUtf8,
    /// A heartbeat naming another store id.
    ForeignHeartbeat,
    /// A heartbeat naming another epoch of the same store (this many ahead, or behind
    /// when the database's epoch allows).
    ForeignEpoch(u8),
    /// A heartbeat ahead of the sidecar's head.
    AheadHeartbeat(u8),
    /// The next change, as versions go, but one the store cannot apply.
    Unappliable,
}

/// One line in flight.
#[derive(Debug, Clone)]
enum Item {
    Line(String),
    NotUtf8,
    /// Becomes a `set_status` of an unknown consent at the follower's next version.
    Unappliable,
}

/// An open connection: the endpoint and database branch serving it, whether it is a
/// feed, the lines not yet delivered and those already delivered (for replays).
struct Conn {
    endpoint: usize,
    db: Branch,
    feed: bool,
    /// Delivers nothing any more.
    frozen: bool,
    /// When it last delivered a line.
    stall: Stall,
    queue: VecDeque<Item>,
    sent: Vec<Item>,
    /// The sidecar's head when the feed connection opened.
    head_at_open: u64,
}

/// The follower as the loop runs it, with what it serves.
struct Follower {
    machine: Protocol,
    consents: ConsentStore,
    registry: Arc<Registry>,
    /// The version the store reflects, and the database branch it belongs to.
    version: u64,
    db: Option<Branch>,
    /// The last point marked fresh.
    fresh_at: Option<(Branch, u64)>,
}

struct Harness {
    sidecar: Sidecar,
    follower: Follower,
    conn: Option<Conn>,
    refuse: Option<u16>,
    /// Fresh marks and reloads seen (so a test can tell the run went somewhere).
    fresh_marks: usize,
    /// The endpoint in use, as the loop chooses it.
    rotation: Rotation,
    down: [bool; ENDPOINTS],
    /// The virtual clock.
    now: Instant,
    /// The position held when the endpoint in use last failed: the next request must
    /// resume from it.
    resume_from: Option<Position>,
    /// Endpoint switches (so a test can tell the run switched).
    switches: usize,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            sidecar: Sidecar::new(),
            follower: Follower {
                machine: Protocol::new(),
                consents: ConsentStore::new(),
                registry: Arc::new(Registry::new()),
                version: 0,
                db: None,
                fresh_at: None,
            },
            conn: None,
            refuse: None,
            fresh_marks: 0,
            rotation: Rotation::new(ENDPOINTS),
            down: [false; ENDPOINTS],
            now: Instant::now(),
            resume_from: None,
            switches: 0,
        }
    }

    fn step(&mut self, net: &Net) {
        match net {
            Net::Sidecar(op) => self.sidecar_changes(op),
            Net::Connect => {
                if self.conn.is_some() {
                    self.endpoint_failed(true);
                }
                self.open();
            }
            Net::Deliver(n) => {
                if self.conn.is_none() {
                    self.open();
                }
                self.deliver(usize::from(*n));
            }
            Net::Close { error } => {
                if self.conn.is_some() {
                    self.endpoint_failed(*error);
                }
            }
            Net::Refuse(status) => self.refuse = Some(*status),
            Net::Heartbeat => {
                if let Some(conn) = self.conn.as_mut().filter(|c| c.feed) {
                    let db = self.sidecar.db(&conn.db);
                    let line = heartbeat(&conn.db, db.head());
                    conn.queue.push_back(Item::Line(line));
                }
            }
            Net::Tamper(t, ahead) => self.tamper(t, usize::from(*ahead)),
            Net::Down(k) => {
                let k = usize::from(*k) % ENDPOINTS;
                self.down[k] = true;
                if self.conn.as_ref().is_some_and(|c| c.endpoint == k) {
                    self.endpoint_failed(true);
                }
            }
            Net::Up(k) => self.down[usize::from(*k) % ENDPOINTS] = false,
            Net::Freeze => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.frozen = true;
                }
            }
            Net::Wait(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                if self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.stall.stalled(self.now))
                {
                    self.endpoint_failed(true);
                }
            }
        }
        self.check_no_wrong_allow();
    }

    /// The endpoint in use failed (the connection, if any, dropped): as the loop does,
    /// the next one is used, and the position is kept for it.
    fn endpoint_failed(&mut self, error: bool) {
        let before = self.follower.machine.position().cloned();
        if self.conn.is_some() {
            self.close(error);
        } else {
            self.follower.machine.on_disconnect();
        }
        assert_eq!(
            self.follower.machine.position(),
            before.as_ref(),
            "a failed endpoint keeps the position"
        );
        let failed = self.rotation.current();
        let next = self.rotation.failed();
        assert_eq!(next.next, (failed + 1) % ENDPOINTS, "round robin");
        self.switches += usize::from(next.switched);
        self.resume_from = before;
    }

    fn sidecar_changes(&mut self, op: &Op) {
        let logged = self.sidecar.apply(op);
        if matches!(op, Op::Replace { .. } | Op::Promote { .. }) && self.conn.is_some() {
            // The old database's connections go away with it.
            self.endpoint_failed(true);
        }
        let (Some(version), Some(conn)) = (logged, self.conn.as_mut()) else {
            return;
        };
        if conn.feed && conn.db == self.sidecar.current().branch() {
            let line = self.sidecar.current().change_line(version);
            conn.queue.push_back(Item::Line(line));
        }
    }

    /// Lines the network adds, drops or repeats on the open connection.
    fn tamper(&mut self, t: &Tamper, ahead: usize) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let db = self.sidecar.db(&conn.db);
        let at = ahead.min(conn.queue.len());
        let item = match t {
            Tamper::Lose => {
                conn.queue.remove(at);
                return;
            }
            Tamper::Replay(_) if conn.sent.is_empty() => return,
            Tamper::Replay(k) => {
                conn.sent[conn.sent.len() - 1 - usize::from(*k) % conn.sent.len()].clone()
            }
            Tamper::Resync => Item::Line(
                serde_json::to_string(&FeedLine::Resync(Resync {
                    version: db.head(),
                    reason: "history_pruned".into(),
                }))
                .unwrap(),
            ),
            Tamper::Garbage => Item::Line("not json".into()),
            Tamper::NotUtf8 => Item::NotUtf8,
            Tamper::ForeignHeartbeat => {
                Item::Line(heartbeat(&("elsewhere".into(), db.epoch), db.head()))
            }
            Tamper::ForeignEpoch(k) => {
                let k = u64::from(*k);
                let epoch = if k % 2 == 1 && db.epoch > 0 {
                    db.epoch - 1
                } else {
                    db.epoch + 1 + k
                };
                Item::Line(heartbeat(&(db.id.clone(), epoch), db.head()))
            }
            Tamper::AheadHeartbeat(k) => {
                Item::Line(heartbeat(&conn.db, db.head() + 1 + u64::from(*k)))
            }
            Tamper::Unappliable => Item::Unappliable,
        };
        conn.queue.insert(at, item);
    }

    /// The follower connects to the endpoint in use; the sidecar answers as it is now.
    fn open(&mut self) {
        let request = self.follower.machine.connect();
        if let Some(p) = self.resume_from.take() {
            // Whichever endpoint it is: the feed resumes, no snapshot.
            assert_eq!(request, Request::Feed(p), "resumed from the position");
        }
        let endpoint = self.rotation.current();
        if self.down[endpoint] {
            return self.endpoint_failed(true);
        }
        let status = self
            .refuse
            .take()
            .unwrap_or_else(|| self.sidecar.status_for(&request));
        if let Err(end) = self.follower.machine.on_response(status) {
            let feed = matches!(request, Request::Feed(_));
            match end {
                Ended::Reload(Reload::Gone) => assert!(feed && status == 410),
                Ended::Reconnect(Fault::Status(s)) => {
                    assert!(s == status && (s != 410 || !feed));
                    self.endpoint_failed(true);
                }
                other => panic!("{other:?} for status {status}"),
            }
            return;
        }
        assert_eq!(status, 200);
        let db = self.sidecar.current();
        let (feed, queue) = match &request {
            Request::Snapshot => (false, db.snapshot_lines()),
            Request::Feed(p) => {
                let mut q: VecDeque<Item> = (p.version + 1..=db.head())
                    .map(|v| Item::Line(db.change_line(v)))
                    .collect();
                q.push_back(Item::Line(heartbeat(&db.branch(), db.head())));
                (true, q)
            }
        };
        self.conn = Some(Conn {
            endpoint,
            db: db.branch(),
            feed,
            frozen: false,
            stall: Stall::new(STALL, self.now),
            queue,
            sent: Vec::new(),
            head_at_open: db.head(),
        });
    }

    fn close(&mut self, error: bool) {
        if self.conn.take().is_none() {
            return;
        }
        if error {
            self.follower.machine.on_disconnect();
        } else {
            let end = self.follower.machine.on_stream_end();
            assert!(matches!(end, Ended::Reconnect(_)), "{end:?}");
        }
    }

    /// Up to `n` lines arrive; the machine reads them as one pass, which is then
    /// applied (as the loop does once the buffer is drained).
    fn deliver(&mut self, n: usize) {
        if self.conn.as_ref().is_some_and(|c| c.frozen) {
            return;
        }
        let mut must_reload = false;
        for _ in 0..n {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let Some(item) = conn.queue.pop_front() else {
                break;
            };
            conn.stall.line(self.now);
            self.rotation.heard();
            conn.sent.push(item.clone());
            let count = conn.sent.len() as u64;
            let machine = &mut self.follower.machine;
            let step = match &item {
                Item::Line(l) => {
                    must_reload |= conn.feed && breaks_the_feed(machine, l);
                    machine.on_line(count, l)
                }
                Item::NotUtf8 => machine.on_fault(Fault::Parse(count, "not UTF-8".into())),
                Item::Unappliable => {
                    let l = unappliable(machine);
                    must_reload |= conn.feed;
                    machine.on_line(count, &l)
                }
            };
            match step {
                Step::Read => {}
                Step::EndPass => break,
                Step::Install(install) => {
                    self.conn = None;
                    return self.install(install);
                }
                Step::Ended(end) => {
                    assert!(matches!(end, Ended::Reconnect(_)), "{end:?}");
                    self.conn = None;
                    return;
                }
            }
        }
        if self.conn.is_some() {
            self.apply_pass(must_reload);
        }
    }

    fn install(&mut self, install: Install) {
        let f = &mut self.follower;
        let position = f.machine.position().cloned().unwrap();
        assert_eq!(position.version, install.version);
        f.consents = install.store;
        f.registry = install.registry;
        f.version = install.version;
        f.db = Some((position.store_id.clone(), position.epoch));
        self.check_in_step("install");
        self.mark_fresh();
    }

    /// Applies a pass; `must_reload` when it read a line that drops the position.
    fn apply_pass(&mut self, must_reload: bool) {
        let f = &mut self.follower;
        let pass = f.machine.end_pass();
        let applied = if pass.changes.is_empty() {
            Ok(())
        } else {
            f.consents.apply_batch(pass.changes).map(drop)
        };
        if let Some(r) = pass.registry {
            f.registry = r;
        }
        let commit: Commit = f.machine.commit(applied);
        if let Some(v) = commit.version {
            f.version = v;
            self.check_in_step("pass");
        }
        if commit.fresh {
            let conn = self.conn.as_ref().unwrap();
            assert!(conn.feed);
            assert!(
                self.follower.version >= conn.head_at_open,
                "fresh at {} before the backlog up to {} was read",
                self.follower.version,
                conn.head_at_open
            );
            self.mark_fresh();
        }
        if must_reload {
            assert!(matches!(commit.ended, Some(Ended::Reload(_))), "{commit:?}");
            assert!(self.follower.machine.position().is_none());
        }
        if commit.ended.is_some() {
            self.conn = None;
        }
    }

    fn mark_fresh(&mut self) {
        let f = &mut self.follower;
        let position = f.machine.position().unwrap();
        let branch = (position.store_id.clone(), position.epoch);
        assert_eq!(Some(&branch), f.db.as_ref());
        assert_eq!(position.version, f.version);
        f.fresh_at = Some((branch, f.version));
        self.fresh_marks += 1;
    }

    /// The store and the registry are the sidecar's at the version reported.
    fn check_in_step(&self, what: &str) {
        let f = &self.follower;
        let id = f.db.as_ref().unwrap();
        let world = self.sidecar.db(id).state_at(f.version);
        let mut held: Vec<ConsentRecord> = f.consents.iter().map(|c| c.to_record()).collect();
        held.sort_by(|a, b| a.id.cmp(&b.id));
        let want: Vec<ConsentRecord> = world.consents.values().cloned().collect();
        assert_eq!(held, want, "{what}: consents at {id:?}@{}", f.version);
        assert_eq!(
            f.registry.len(),
            world.participants.len(),
            "{what}: registry"
        );
        for (b, m) in &world.participants {
            match (f.registry.get(*b), m.readable) {
                (Some(Entry::Record(r)), true) => assert_eq!(r, &m.record, "{what}"),
                (Some(Entry::Undecodable { thumbprints }), false) => {
                    for t in &m.record.thumbprints {
                        assert!(thumbprints.contains(t), "{what}: {b} lost {t}");
                    }
                }
                (other, _) => panic!("{what}: {b} is {other:?}, the sidecar has {m:?}"),
            }
        }
    }

    /// No consent revoked at or before the last version marked fresh is authorised.
    fn check_no_wrong_allow(&self) {
        let f = &self.follower;
        let Some((id, version)) = &f.fresh_at else {
            return;
        };
        let world = self.sidecar.db(id).state_at(*version);
        for (cid, r) in &world.consents {
            if r.status == ConsentStatus::Revoked {
                let held = f.consents.get(cid).map(|c| c.status());
                assert_ne!(
                    held,
                    Some(ConsentStatus::Authorised),
                    "{cid} revoked at {id:?}@{version}"
                );
            }
        }
    }

    /// Reconnects with a clean network until a feed connection reports fresh.
    fn clean_tail(&mut self) {
        self.refuse = None;
        self.down = [false; ENDPOINTS];
        self.close(true);
        for _ in 0..4 {
            self.open();
            let fresh_before = self.fresh_marks;
            let feed = self.conn.as_ref().is_some_and(|c| c.feed);
            self.deliver(usize::MAX);
            if feed && self.fresh_marks > fresh_before {
                break;
            }
        }
        let db = self.sidecar.current();
        let want = Some((db.branch(), db.head()));
        assert_eq!(
            self.follower.fresh_at, want,
            "a clean tail ends fresh at the head"
        );
        self.check_in_step("clean tail");
    }
}

/// Consent and participant changes.
fn change() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6).prop_map(Op::Create),
        3 => (0u8..6).prop_map(Op::Authorise),
        3 => (0u8..6).prop_map(Op::Revoke),
        2 => (0u8..4, 0u8..4, 0u8..3, prop::bool::weighted(0.8)).prop_map(
            |(n, status, thumb, readable)| Op::Participant { n, status, thumb, readable }
        ),
    ]
}

/// Changes, pruned history, replaced and promoted databases.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => change(),
        1 => Just(Op::Prune),
        1 => (0u8..12).prop_map(|keep| Op::Replace { keep }),
        1 => (0u8..12).prop_map(|keep| Op::Promote { keep }),
    ]
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::Lose),
        (0u8..8).prop_map(Tamper::Replay),
        Just(Tamper::Resync),
        Just(Tamper::Garbage),
        Just(Tamper::NotUtf8),
        Just(Tamper::ForeignHeartbeat),
        (0u8..3).prop_map(Tamper::ForeignEpoch),
        (0u8..3).prop_map(Tamper::AheadHeartbeat),
        Just(Tamper::Unappliable),
    ]
}

fn net() -> impl Strategy<Value = Net> {
    prop_oneof![
        10 => op().prop_map(Net::Sidecar),
        3 => Just(Net::Connect),
        10 => (1u8..6).prop_map(Net::Deliver),
        1 => any::<bool>().prop_map(|error| Net::Close { error }),
        2 => Just(Net::Heartbeat),
        6 => (tamper(), 0u8..6).prop_map(|(t, ahead)| Net::Tamper(t, ahead)),
        1 => prop_oneof![Just(410u16), Just(503)].prop_map(Net::Refuse),
        3 => endpoint_trouble(),
    ]
}

/// Endpoints going down and up, streams freezing, time passing.
fn endpoint_trouble() -> BoxedStrategy<Net> {
    prop_oneof![
        1 => (0u8..3).prop_map(Net::Down),
        1 => (0u8..3).prop_map(Net::Up),
        1 => Just(Net::Freeze),
        2 => (0u16..2_500).prop_map(Net::Wait),
    ]
    .boxed()
}

/// Neither faults in the data nor lost history: the sidecar's changes, (re)connections,
/// deliveries, heartbeats, and endpoints failing, stalling and coming back.
fn clean_net() -> impl Strategy<Value = Net> {
    prop_oneof![
        3 => change().prop_map(Net::Sidecar),
        1 => Just(Net::Connect),
        3 => (1u8..6).prop_map(Net::Deliver),
        1 => Just(Net::Heartbeat),
        2 => endpoint_trouble(),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

/// Plays `run`, checking `each` after every event, then a clean tail.
fn play(run: &[Net], each: impl Fn(&Harness)) {
    let mut h = Harness::new();
    for net in run {
        h.step(net);
        each(&h);
    }
    h.clean_tail();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_interleaving_stays_exact_or_stale_and_a_clean_tail_catches_up(
        run in prop::collection::vec(net(), 0..120),
    ) {
        play(&run, |_| {});
    }

    #[test]
    fn over_a_clean_network_the_follower_never_reloads_and_catches_up(
        run in prop::collection::vec(clean_net(), 0..80),
    ) {
        play(&run, |h| {
            // Once a snapshot is in, nothing on a clean network drops the position: not
            // a dropped or refused connection, not a stalled stream, not a switch.
            if h.follower.db.is_some() {
                assert!(h.follower.machine.position().is_some());
            }
        });
    }
}

/// The e2e scenario in miniature: following endpoint 0, which freezes while a consent is
/// revoked; past the stall bound the follower moves to endpoint 1, resumes from its
/// position (no snapshot), reads the revocation and is fresh again.
#[test]
fn a_stalled_endpoint_is_left_for_the_next_which_resumes_the_feed() {
    let mut h = Harness::new();
    for op in [Op::Create(1), Op::Authorise(1)] {
        h.step(&Net::Sidecar(op));
    }
    h.step(&Net::Deliver(u8::MAX)); // the snapshot, on endpoint 0
    h.step(&Net::Deliver(u8::MAX)); // the feed: its backlog's heartbeat
    let fresh = h.fresh_marks;
    assert_eq!(
        h.conn.as_ref().map(|c| (c.endpoint, c.feed)),
        Some((0, true))
    );
    let position = h.follower.machine.position().cloned().unwrap();

    h.step(&Net::Freeze);
    h.step(&Net::Sidecar(Op::Revoke(1)));
    h.step(&Net::Deliver(u8::MAX)); // nothing arrives
    assert_eq!(h.follower.version, position.version);
    h.step(&Net::Wait(1_999));
    assert_eq!(
        h.conn.as_ref().map(|c| c.endpoint),
        Some(0),
        "within the bound"
    );
    h.step(&Net::Wait(1));
    assert!(h.conn.is_none(), "stalled: left");
    assert_eq!((h.rotation.current(), h.switches), (1, 1));

    h.step(&Net::Deliver(u8::MAX)); // reconnects on 1: resumes (checked in `open`)
    assert_eq!(h.conn.as_ref().map(|c| c.endpoint), Some(1));
    assert_eq!(h.follower.version, position.version + 1);
    assert!(
        h.fresh_marks > fresh,
        "fresh again at the backlog's heartbeat"
    );
    assert_eq!(
        h.follower.consents.get("c-1").map(|c| c.status()),
        Some(ConsentStatus::Revoked)
    );
    assert_eq!(h.follower.db, Some(("store-0".to_string(), 0)), "no reload");
}

/// A promoted standby (same store, new epoch) answers the old branch's position with
/// `410`: the follower reloads and follows the new branch.
#[test]
fn a_promoted_database_is_followed_after_a_reload() {
    let mut h = Harness::new();
    for op in [Op::Create(1), Op::Authorise(1), Op::Create(2)] {
        h.step(&Net::Sidecar(op));
    }
    h.step(&Net::Deliver(u8::MAX));
    h.step(&Net::Deliver(u8::MAX));
    h.step(&Net::Sidecar(Op::Promote { keep: 1 }));
    h.step(&Net::Sidecar(Op::Revoke(1)));
    h.clean_tail();
    assert_eq!(h.follower.db, Some(("store-0".to_string(), 1)));
    assert_eq!(h.follower.version, 2);
}
