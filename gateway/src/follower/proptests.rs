//! Property tests of the feed protocol ([`super::protocol`]) against a model sidecar.
//!
//! The model keeps a log per sidecar database (consent creations, authorisations and
//! revocations, participant upserts, some of them undecodable by the hub), prunes its
//! history, and is replaced by a database restored from an earlier point. A generated
//! run interleaves those changes with what the network does to the follower's
//! connections: snapshots and feed backlogs served, heartbeats, lines delivered a few at
//! a time, connections dropped mid-stream, lines lost (gaps), replayed from earlier in
//! the stream, unreadable lines, `resync` lines, heartbeats from another store or ahead
//! of the sidecar, refused connections (`410`, `503`). The harness performs the
//! machine's answers on an in-memory `ConsentStore` and registry, as the loop does
//! through the state, and checks:
//! - after every install and every applied pass, the store and the registry are exactly
//!   the sidecar's at the version reported;
//! - a feed connection turns the follower fresh only at or past the sidecar's head as of
//!   when it opened (its backlog's heartbeat);
//! - never a wrong allow: a consent revoked at or before the last version marked fresh
//!   is never `authorised` in the follower's store;
//! - a clean tail (reconnect, full backlog, heartbeat) ends fresh in the sidecar's state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use consent_cache::{
    Bin, Change, ChangeOp, ConsentRecord, ConsentStatus, ConsentStore, Permission,
};
use feed_wire::{
    FeedLine, Heartbeat, ParticipantChange, ParticipantOp, ParticipantRecord, ParticipantStatus,
    Resync, Role, SnapshotHeader, SnapshotLine, SnapshotTrailer,
};
use proptest::prelude::*;
use time::OffsetDateTime;

use super::protocol::{Commit, Ended, Fault, Install, Protocol, Reload, Request, Step};
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

/// One sidecar database: its store id, its change log (index `v - 1` is version `v`),
/// and the oldest version its feed still resumes from.
#[derive(Debug, Clone)]
struct Database {
    id: String,
    log: Vec<Logged>,
    floor: u64,
}

impl Database {
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
                log: Vec::new(),
                floor: 0,
            }],
        }
    }

    fn current(&self) -> &Database {
        self.dbs.last().unwrap()
    }

    fn db(&self, id: &str) -> &Database {
        self.dbs.iter().find(|d| d.id == id).unwrap()
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
            Op::Replace { keep } => {
                let log = self.current().log.clone();
                let keep = usize::from(keep).min(log.len());
                let id = format!("store-{}", self.dbs.len());
                self.dbs.push(Database {
                    id,
                    log: log[..keep].to_vec(),
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
            Request::Feed(p) if p.store_id != db.id => 410,
            Request::Feed(p) if p.version < db.floor || p.version > db.head() => 410,
            Request::Feed(_) => 200,
        }
    }
}

fn heartbeat(store_id: &str, version: u64) -> String {
    serde_json::to_string(&FeedLine::Heartbeat(Heartbeat {
        version,
        store_id: store_id.into(),
        time: at(1_800_000_000),
    }))
    .unwrap()
}

/// Whether reading `line` must drop the position: a `resync`, or a heartbeat of
/// another database than the one followed.
fn breaks_the_feed(machine: &Protocol, line: &str) -> bool {
    let Some(position) = machine.position() else {
        return false;
    };
    match FeedLine::parse(line) {
        Ok(FeedLine::Resync(_)) => true,
        Ok(FeedLine::Heartbeat(h)) => h.store_id != position.store_id,
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

/// An open connection: which database serves it, whether it is a feed, the lines not
/// yet delivered and those already delivered (for replays).
struct Conn {
    db: String,
    feed: bool,
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
    /// The version the store reflects, and the database it belongs to.
    version: u64,
    store_id: Option<String>,
    /// The last point marked fresh.
    fresh_at: Option<(String, u64)>,
}

struct Harness {
    sidecar: Sidecar,
    follower: Follower,
    conn: Option<Conn>,
    refuse: Option<u16>,
    /// Fresh marks and reloads seen (so a test can tell the run went somewhere).
    fresh_marks: usize,
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
                store_id: None,
                fresh_at: None,
            },
            conn: None,
            refuse: None,
            fresh_marks: 0,
        }
    }

    fn step(&mut self, net: &Net) {
        match net {
            Net::Sidecar(op) => self.sidecar_changes(op),
            Net::Connect => {
                self.close(true);
                self.open();
            }
            Net::Deliver(n) => {
                if self.conn.is_none() {
                    self.open();
                }
                self.deliver(usize::from(*n));
            }
            Net::Close { error } => self.close(*error),
            Net::Refuse(status) => self.refuse = Some(*status),
            Net::Heartbeat => {
                if let Some(conn) = self.conn.as_mut().filter(|c| c.feed) {
                    let db = self.sidecar.db(&conn.db);
                    let line = heartbeat(&db.id, db.head());
                    conn.queue.push_back(Item::Line(line));
                }
            }
            Net::Tamper(t, ahead) => self.tamper(t, usize::from(*ahead)),
        }
        self.check_no_wrong_allow();
    }

    fn sidecar_changes(&mut self, op: &Op) {
        let logged = self.sidecar.apply(op);
        if matches!(op, Op::Replace { .. }) {
            // The old database's connections go away with it.
            self.close(true);
        }
        let (Some(version), Some(conn)) = (logged, self.conn.as_mut()) else {
            return;
        };
        if conn.feed && conn.db == self.sidecar.current().id {
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
            Tamper::ForeignHeartbeat => Item::Line(heartbeat("elsewhere", db.head())),
            Tamper::AheadHeartbeat(k) => {
                Item::Line(heartbeat(&db.id, db.head() + 1 + u64::from(*k)))
            }
            Tamper::Unappliable => Item::Unappliable,
        };
        conn.queue.insert(at, item);
    }

    /// The follower connects; the sidecar answers as it is now.
    fn open(&mut self) {
        let request = self.follower.machine.connect();
        let status = self
            .refuse
            .take()
            .unwrap_or_else(|| self.sidecar.status_for(&request));
        if let Err(end) = self.follower.machine.on_response(status) {
            let feed = matches!(request, Request::Feed(_));
            match end {
                Ended::Reload(Reload::Gone) => assert!(feed && status == 410),
                Ended::Reconnect(Fault::Status(s)) => assert!(s == status && (s != 410 || !feed)),
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
                q.push_back(Item::Line(heartbeat(&db.id, db.head())));
                (true, q)
            }
        };
        self.conn = Some(Conn {
            db: db.id.clone(),
            feed,
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
        let mut must_reload = false;
        for _ in 0..n {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let Some(item) = conn.queue.pop_front() else {
                break;
            };
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
        f.store_id = Some(position.store_id.clone());
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
        assert_eq!(Some(&position.store_id), f.store_id.as_ref());
        assert_eq!(position.version, f.version);
        f.fresh_at = Some((position.store_id.clone(), f.version));
        self.fresh_marks += 1;
    }

    /// The store and the registry are the sidecar's at the version reported.
    fn check_in_step(&self, what: &str) {
        let f = &self.follower;
        let id = f.store_id.as_deref().unwrap();
        let world = self.sidecar.db(id).state_at(f.version);
        let mut held: Vec<ConsentRecord> = f.consents.iter().map(|c| c.to_record()).collect();
        held.sort_by(|a, b| a.id.cmp(&b.id));
        let want: Vec<ConsentRecord> = world.consents.values().cloned().collect();
        assert_eq!(held, want, "{what}: consents at {id}@{}", f.version);
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
                    "{cid} revoked at {id}@{version}"
                );
            }
        }
    }

    /// Reconnects with a clean network until a feed connection reports fresh.
    fn clean_tail(&mut self) {
        self.refuse = None;
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
        let want = Some((db.id.clone(), db.head()));
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

/// Changes, pruned history and replaced databases.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => change(),
        1 => Just(Op::Prune),
        1 => (0u8..12).prop_map(|keep| Op::Replace { keep }),
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
    ]
}

/// Neither faults nor lost history: only the sidecar's changes, (re)connections,
/// deliveries and heartbeats.
fn clean_net() -> impl Strategy<Value = Net> {
    prop_oneof![
        3 => change().prop_map(Net::Sidecar),
        1 => Just(Net::Connect),
        3 => (1u8..6).prop_map(Net::Deliver),
        1 => Just(Net::Heartbeat),
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
            // Once a snapshot is in, nothing on a clean network drops the position.
            if h.follower.store_id.is_some() {
                assert!(h.follower.machine.position().is_some());
            }
        });
    }
}
