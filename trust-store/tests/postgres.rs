//! The PostgreSQL engine against a real server (started per test, see `support::pg`):
//! the feed sequencer under concurrent writers and its negative control (a naive
//! SEQUENCE-based feed that a follower catches with a gap), the conformance suite,
//! migrations, two replicas on one database, leadership, epochs, and an outage.

mod conformance;
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::pg::{PgServer, PASSWORD};
use support::{engine, handle, open, settings, wait_for};
use trust_store::{Db, Engine, PgEngine, PgSettings, Sql, StoreError, Tx, PG_SCHEMA_VERSION};

// ---------------------------------------------------------------------------------------
// The sequencer and its negative control.

#[derive(Debug)]
enum LoadError {
    Store(StoreError),
    Rollback,
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        LoadError::Store(e)
    }
}

/// Appends one change to the feed under test; returns nothing (the version is the feed's).
type Append = fn(&mut Tx<'_>) -> Result<(), StoreError>;

const WRITERS: usize = 8;
const TXNS_PER_WRITER: usize = 40;

/// What the follower saw.
#[derive(Debug, Default)]
struct Followed {
    polls: usize,
    /// Every version, in the order seen.
    seen: Vec<i64>,
    /// The versions that were missing when a higher one was seen.
    missing: Vec<i64>,
}

/// Reads `versions above last` in READ COMMITTED until `done` (one last read after it).
fn follow(db: &Db, table: &str, done: &AtomicBool) -> Followed {
    let sql = format!("SELECT version FROM {table} WHERE version > $1 ORDER BY version");
    let mut out = Followed::default();
    let mut last = 0i64;
    loop {
        let finished = done.load(Ordering::Acquire);
        let rows = db
            .write(0, |tx| tx.query(&sql, &[last.into()]))
            .expect("follower read");
        out.polls += 1;
        for row in rows {
            let v = row.int(0).expect("version");
            out.missing.extend(last + 1..v);
            out.seen.push(v);
            last = v;
        }
        if finished {
            return out;
        }
    }
}

/// One writer: transactions with random delays, 1–3 appends, ~20% rolled back.
/// Returns the number of appends committed.
fn writer(db: &Db, seed: u64, append: Append) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut committed = 0;
    for _ in 0..TXNS_PER_WRITER {
        let r = db.write(0, |tx| {
            std::thread::sleep(Duration::from_micros(rng.random_range(0..1500)));
            let n = rng.random_range(1..=3);
            for _ in 0..n {
                append(tx)?;
                std::thread::sleep(Duration::from_micros(rng.random_range(0..1500)));
            }
            if rng.random_bool(0.2) {
                return Err(LoadError::Rollback);
            }
            Ok(n)
        });
        match r {
            Ok(n) => committed += n,
            Err(LoadError::Rollback) => {}
            Err(LoadError::Store(e)) => panic!("writer {seed}: {e}"),
        }
    }
    committed
}

/// Runs the writers and the follower; returns what the follower saw, every version in
/// the table at the end, and the number of appends committed.
fn run_load(db: Arc<Db>, table: &str, append: Append) -> (Followed, Vec<i64>, usize) {
    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let (db, done, table) = (db.clone(), done.clone(), table.to_owned());
        std::thread::spawn(move || follow(&db, &table, &done))
    };
    let committed = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (db, committed) = (db.clone(), committed.clone());
            std::thread::spawn(move || {
                committed.fetch_add(writer(&db, 1000 + i as u64, append), Ordering::Relaxed);
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    done.store(true, Ordering::Release);
    let followed = follower.join().expect("follower");
    let sql = format!("SELECT version FROM {table} ORDER BY version");
    let all = db
        .read(|s| s.query(&sql, &[]))
        .expect("final read")
        .iter()
        .map(|r| r.int(0).expect("version"))
        .collect();
    (followed, all, committed.load(Ordering::Relaxed))
}

fn emit(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))).map(drop)
}

fn naive_append(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    let v = tx.query_one("SELECT nextval('naive_seq')", &[])?.int(0)?;
    tx.execute(
        "INSERT INTO naive_changes (version, at, line) VALUES ($1, $2, $3)",
        &[v.into(), 0.into(), "{}".into()],
    )
    .map(drop)
}

#[test]
fn the_feed_head_sequencer_is_gap_free_under_concurrent_writers() {
    let server = PgServer::start();
    server.create_db("seq");
    let db = Arc::new(open(&server, "seq"));
    let started = Instant::now();
    let (followed, all, committed) = run_load(db.clone(), "changes", emit);
    eprintln!(
        "sequencer: {committed} changes committed by {WRITERS} writers in {:?}; \
         follower polled {} times",
        started.elapsed(),
        followed.polls
    );
    let want: Vec<i64> = (1..=committed as i64).collect();
    assert!(committed > 100, "enough load: {committed}");
    assert!(
        followed.missing.is_empty(),
        "the follower saw gaps: {:?}",
        followed.missing
    );
    assert_eq!(all, want, "the table holds exactly 1..n");
    assert_eq!(
        followed.seen, want,
        "the follower saw exactly 1..n, in order"
    );
    assert_eq!(
        db.engine().committed_head().expect("head"),
        committed as u64
    );
    let announced = wait_for(Duration::from_secs(5), || {
        (db.head() == committed as u64).then_some(())
    });
    assert!(announced.is_some(), "the head is announced");
}

#[test]
fn negative_control_a_sequence_based_feed_shows_gaps() {
    let server = PgServer::start();
    server.create_db("naive");
    let db = Arc::new(open(&server, "naive"));
    conformance::ddl(&db, "CREATE SEQUENCE naive_seq", "");
    conformance::ddl(
        &db,
        "CREATE TABLE naive_changes (version BIGINT PRIMARY KEY, at BIGINT NOT NULL, line TEXT NOT NULL)",
        "",
    );
    let (followed, all, committed) = run_load(db, "naive_changes", naive_append);
    let filled: Vec<i64> = followed
        .missing
        .iter()
        .copied()
        .filter(|v| all.binary_search(v).is_ok())
        .collect();
    let skipped = followed.missing.len() - filled.len();
    eprintln!(
        "negative control: {committed} changes; the follower ({} polls) found {} versions \
         missing, {} of them filled in later (a follower at \"above V\" lost them for ever), \
         {skipped} never committed (holes)",
        followed.polls,
        followed.missing.len(),
        filled.len()
    );
    assert_eq!(all.len(), committed);
    assert!(
        !followed.missing.is_empty(),
        "the naive design must fail this test: the follower saw no gap"
    );
    assert!(
        !filled.is_empty(),
        "the naive design must fail this test: no gap the follower saw was filled in later"
    );
    let contiguous: Vec<i64> = (1..=committed as i64).collect();
    assert_ne!(
        all, contiguous,
        "a sequence leaves holes where transactions rolled back"
    );
}

// ---------------------------------------------------------------------------------------
// The conformance suite, on PostgreSQL.

#[test]
fn conformance_suite_on_postgres() {
    let server = PgServer::start();
    for (i, (name, check)) in conformance::ALL.iter().enumerate() {
        let db_name = format!("conf_{i}");
        server.create_db(&db_name);
        let db = open(&server, &db_name);
        check(&db);
        eprintln!("conformance on PostgreSQL: {name} ok");
    }
}

// ---------------------------------------------------------------------------------------
// Migrations.

#[test]
fn migrations_are_idempotent_run_once_and_refuse_a_newer_schema() {
    let server = PgServer::start();
    server.create_db("mig");
    // Four replicas start at once on an empty database: one migrates, all agree.
    let ids: Vec<String> = (0..4)
        .map(|_| {
            let url = server.url("mig");
            std::thread::spawn(move || {
                let e = PgEngine::open(&settings(url), handle()).expect("open");
                e.store_id().to_owned()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("opener"))
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "one store id: {ids:?}");
    assert!(
        !ids[0].is_empty()
            && ids[0]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
    );
    let versions = server.psql(
        "mig",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
    );
    let want: Vec<String> = (1..=PG_SCHEMA_VERSION).map(|v| v.to_string()).collect();
    assert_eq!(versions, want.join(","));
    // Reopening changes nothing.
    let again = engine(&server, "mig");
    assert_eq!(again.store_id(), ids[0]);
    assert_eq!(
        server.psql("mig", "SELECT COUNT(*) FROM schema_migrations"),
        PG_SCHEMA_VERSION.to_string()
    );
    drop(again);
    // A newer binary's schema is refused.
    server.psql(
        "mig",
        &format!(
            "INSERT INTO schema_migrations(version) VALUES ({})",
            PG_SCHEMA_VERSION + 1
        ),
    );
    match PgEngine::open(&settings(server.url("mig")), handle()) {
        Err(StoreError::NewerSchema { found, known }) => {
            assert_eq!((found, known), (PG_SCHEMA_VERSION + 1, PG_SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn the_schema_matches_the_sqlite_tables() {
    let server = PgServer::start();
    server.create_db("schema");
    drop(engine(&server, "schema"));
    let tables = server.psql(
        "schema",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables
         WHERE table_schema = 'public'",
    );
    assert_eq!(
        tables,
        "adjustment_keys,authorisations,changes,consent_history,consents,customer_logins,\
         customer_sessions,epochs,feed_head,meta,oversight_apis,oversight_events,participant_history,\
         participant_thumbprints,participants,probe_results,probe_subjects,rate_events,\
         rollup_calls,rollup_consents,rollup_latency,rollup_live,rollup_minutes,\
         schema_migrations,signing_keys,statement_adjustments,statement_months,statements,\
         usage_events"
    );
    let types = server.psql(
        "schema",
        "SELECT string_agg(DISTINCT data_type, ',' ORDER BY data_type) FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> 'schema_migrations'",
    );
    assert_eq!(
        types, "bigint,boolean,bytea,text",
        "feed_head's key is the one boolean"
    );
}

// ---------------------------------------------------------------------------------------
// Two replicas on one database.

#[test]
fn two_replicas_see_each_others_commits_woken_by_notify() {
    let server = PgServer::start();
    server.create_db("two");
    let a = open(&server, "two");
    let b = open(&server, "two");
    assert_eq!(a.store_id(), b.store_id());
    let mut rx = b.subscribe();
    for round in 1..=3u64 {
        let v = a
            .write(1, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))))
            .expect("emit on a");
        assert_eq!(v, round);
        let seen = wait_for(Duration::from_secs(5), || {
            (*rx.borrow_and_update() >= v).then_some(())
        });
        assert!(seen.is_some(), "b's head watcher announces a's version {v}");
        let line = b
            .read(|s| s.query_one("SELECT line FROM changes WHERE version = $1", &[v.into()]))
            .expect("b reads a's change");
        assert_eq!(line.text(0).unwrap(), format!("{{\"v\":{v}}}"));
    }
    // b writes next: the versions go on from a's.
    let v = b
        .write(1, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))))
        .expect("emit on b");
    assert_eq!(v, 4);
    assert!(wait_for(Duration::from_secs(5), || (a.head() == 4).then_some(())).is_some());

    // NOTIFY wakes a bare engine's wait long before its timeout.
    let waiter = Arc::new(engine(&server, "two"));
    waiter
        .wait_for_change(Duration::from_millis(10))
        .expect("listening");
    let w = waiter.clone();
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        w.wait_for_change(Duration::from_secs(30)).expect("wait");
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    a.write(1, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))))
        .expect("emit");
    let waited = t.join().expect("waiter");
    assert!(
        waited < Duration::from_secs(5),
        "woken by NOTIFY after {waited:?}"
    );
    assert_eq!(waiter.committed_head().expect("head"), 5);
}

fn terminate_advisory_holders(server: &PgServer, db: &str) -> String {
    server.psql(
        db,
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted",
    )
}

#[test]
fn housekeeping_leadership_is_exclusive_and_handed_over() {
    let server = PgServer::start();
    server.create_db("lead");
    let a = engine(&server, "lead");
    let b = engine(&server, "lead");
    let lead_a = a.try_lead().expect("try a").expect("a leads");
    assert!(lead_a.held());
    assert!(
        b.try_lead().expect("try b").is_none(),
        "one leader at a time"
    );
    assert!(
        a.try_lead().expect("try a again").is_none(),
        "not even twice in one process"
    );
    // Released when dropped: b takes over.
    drop(lead_a);
    let lead_b = wait_for(Duration::from_secs(5), || b.try_lead().expect("try b"));
    let lead_b = lead_b.expect("b leads once a let go");
    assert!(a.try_lead().expect("try a").is_none());
    // b's connection dies: b knows it lost the lock, a can take it.
    assert_eq!(terminate_advisory_holders(&server, "lead"), "1");
    let lost = wait_for(Duration::from_secs(5), || (!lead_b.held()).then_some(()));
    assert!(lost.is_some(), "b sees it lost leadership");
    let lead_a = wait_for(Duration::from_secs(5), || a.try_lead().expect("try a"));
    assert!(
        lead_a.is_some_and(|l| l.held()),
        "a leads after b's connection died"
    );
}

#[test]
fn the_epoch_is_stable_across_reopening_and_moves_on_with_the_timeline() {
    let server = PgServer::start();
    server.create_db("ep");
    let a = engine(&server, "ep");
    assert_eq!(a.epoch().expect("epoch"), 1);
    drop(a);
    let a = engine(&server, "ep");
    assert_eq!(a.epoch().expect("epoch"), 1, "same server, same epoch");
    assert_eq!(server.psql("ep", "SELECT COUNT(*) FROM epochs"), "1");
    // The recorded lineage no longer matches the server (as after a promotion).
    server.psql("ep", "UPDATE epochs SET timeline = timeline + 1");
    std::thread::sleep(Duration::from_millis(1100)); // the cached epoch expires
    assert_eq!(a.epoch().expect("epoch"), 2, "a new epoch");
    assert_eq!(a.epoch().expect("epoch"), 2);
    drop(a);
    assert_eq!(engine(&server, "ep").epoch().expect("epoch"), 2);
    assert_eq!(server.psql("ep", "SELECT COUNT(*) FROM epochs"), "2");
}

fn emit_n(db: &Db, n: usize) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        last = db
            .write(1, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))))
            .expect("emit");
    }
    last
}

#[test]
fn a_promoted_synchronous_standby_has_every_acknowledged_change_in_a_new_epoch() {
    let mut primary = PgServer::start();
    primary.create_db("fo");
    let db = open(&primary, "fo");
    assert_eq!(emit_n(&db, 5), 5);
    let standby = PgServer::standby_of(&primary);
    primary.psql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    );
    primary.psql("postgres", "SELECT pg_reload_conf()");
    let sync = wait_for(Duration::from_secs(20), || {
        let state = primary.psql(
            "postgres",
            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
        );
        (state == "sync").then_some(())
    });
    assert!(sync.is_some(), "the standby is synchronous");
    // Acknowledged with the synchronous standby: each is on the standby before the answer.
    assert_eq!(emit_n(&db, 5), 10);
    assert_eq!(db.epoch().expect("epoch"), 1);
    // The primary dies; the standby is promoted.
    primary.stop();
    drop(db);
    standby.promote();
    let promoted = engine(&standby, "fo");
    assert_eq!(
        promoted.epoch().expect("epoch"),
        2,
        "a promotion starts a new epoch"
    );
    assert_eq!(
        promoted.committed_head().expect("head"),
        10,
        "every acknowledged change"
    );
    let db = Db::from_engine(Box::new(promoted)).expect("db");
    assert_eq!(emit_n(&db, 1), 11, "the feed goes on without a hole");
    let versions = db
        .read(|s| {
            s.query_one(
                "SELECT COUNT(*), MIN(version), MAX(version) FROM changes",
                &[],
            )
        })
        .expect("changes");
    assert_eq!(versions.0, vec![11.into(), 1.into(), 11.into()]);
    let epochs = standby.psql(
        "fo",
        "SELECT string_agg(epoch || ':' || timeline, ',' ORDER BY epoch) FROM epochs",
    );
    assert_eq!(epochs, "1:1,2:2", "epoch 2 on the standby's new timeline");
}

// ---------------------------------------------------------------------------------------
// Outage, connections, secrets.

#[test]
fn a_stopped_server_is_unavailable_at_once_and_recovers_without_reopening() {
    let mut server = PgServer::start();
    server.create_db("down");
    let db = open(&server, "down");
    db.write(1, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))))
        .expect("emit");
    server.stop();
    let start = Instant::now();
    let r = db.write(2, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))));
    let took = start.elapsed();
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(
        took < Duration::from_secs(3),
        "within the connect timeout: {took:?}"
    );
    assert!(matches!(
        db.engine().committed_head(),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        db.read(|s| s.query("SELECT 1", &[])),
        Err(StoreError::Unavailable(_))
    ));
    eprintln!(
        "outage: refused in {took:?}, all checks by {:?}",
        start.elapsed()
    );
    server.start_again();
    eprintln!("outage: restarted by {:?}", start.elapsed());
    let mut attempts = 0;
    let v = wait_for(Duration::from_secs(10), || {
        attempts += 1;
        db.write(3, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))))
            .ok()
    });
    eprintln!(
        "writes work again after {attempts} attempt(s), by {:?}",
        start.elapsed()
    );
    assert_eq!(v, Some(2));
    assert!(wait_for(Duration::from_secs(5), || (db.head() == 2).then_some(())).is_some());
}

#[test]
fn the_password_is_never_shown() {
    let server = PgServer::start();
    server.create_db("pw");
    let e = engine(&server, "pw");
    assert!(!format!("{e:?}").contains(PASSWORD), "{e:?}");
    assert!(!format!("{:?}", settings(server.url("pw"))).contains(PASSWORD));
    let wrong = server.url("pw").replace(PASSWORD, "wrong-s3cret");
    let err = PgEngine::open(&settings(wrong), handle()).expect_err("wrong password");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("wrong-s3cret"), "{text}");
    assert!(text.contains("28P01"), "authentication failure: {text}");
}

#[test]
fn unix_socket_and_value_type_errors() {
    let server = PgServer::start();
    server.create_db("sock");
    let db = Db::from_engine(Box::new(
        PgEngine::open(&settings(server.socket_url("sock")), handle())
            .expect("open over the socket"),
    ))
    .expect("db");
    let row = db
        .read(|s| {
            s.query_one(
                "SELECT $1::INT4 + 1, $2::INT2, TRUE",
                &[41.into(), 7.into()],
            )
        })
        .expect("int4 / int2 parameters");
    assert_eq!(row.0, vec![42.into(), 7.into(), 1.into()]);
    let too_big = db.read(|s| s.query("SELECT $1::INT4", &[i64::MAX.into()]));
    assert!(
        matches!(too_big, Err(StoreError::Postgres(_))),
        "{too_big:?}"
    );
    let wrong = db.read(|s| s.query("SELECT $1::BIGINT", &["text".into()]));
    let msg = format!("{wrong:?}");
    assert!(msg.contains("int8") && !msg.contains("\"text\""), "{msg}");
    let unknown = db.read(|s| s.query("SELECT 1.5::NUMERIC", &[]));
    assert!(
        matches!(unknown, Err(StoreError::Corrupt(_))),
        "{unknown:?}"
    );
}

#[test]
fn tls_to_the_database_with_a_ca_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca_pem, cert_pem, key_pem) = test_pki();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).expect("ca");
    let server = PgServer::start_with(
        "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server-key.pem'\n",
        &[("server.pem", &cert_pem), ("server-key.pem", &key_pem)],
    );
    server.create_db("tls");
    let s = PgSettings {
        tls: Some(ca.clone()),
        ..settings(server.url("tls"))
    };
    let e = PgEngine::open(&s, handle())
        .unwrap_or_else(|e| panic!("open over TLS: {e}\n{}", server.log()));
    let db = Db::from_engine(Box::new(e)).expect("db");
    let ssl = db
        .read(|s| {
            s.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
        })
        .expect("pg_stat_ssl");
    assert_eq!(ssl.int(0).unwrap(), 1, "the session is encrypted");
    // Another CA: refused.
    let (other_ca, _, _) = test_pki();
    let other = dir.path().join("other.pem");
    std::fs::write(&other, other_ca).expect("other ca");
    let s = PgSettings {
        tls: Some(other),
        ..settings(server.url("tls"))
    };
    assert!(
        PgEngine::open(&s, handle()).is_err(),
        "a server the CA did not sign is refused"
    );
}

/// A CA and a server certificate for 127.0.0.1 (PEM): (ca, cert, key).
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
