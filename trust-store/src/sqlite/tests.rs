//! The SQLite engine: placeholders, migrations, the writer's contiguous versions, reads,
//! value mapping, and when the head is announced.

use super::*;

fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    (dir, db)
}

fn line(v: u64) -> Result<String, serde_json::Error> {
    Ok(format!("{{\"n\":{v}}}"))
}

fn tables(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )
        .unwrap();
    let names = stmt.query_map([], |r| r.get(0)).unwrap();
    names.map(Result::unwrap).collect()
}

fn user_version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn placeholders_are_rewritten_outside_quotes_and_comments() {
    let cases = [
        ("SELECT 1", "SELECT 1"),
        ("WHERE a = $1 AND b = $12", "WHERE a = ?1 AND b = ?12"),
        ("SET x = $2 WHERE id = $1", "SET x = ?2 WHERE id = ?1"),
        (
            "SELECT '$1', \"c$2\" FROM t WHERE v = $3",
            "SELECT '$1', \"c$2\" FROM t WHERE v = ?3",
        ),
        (
            "SELECT 'it''s $1' WHERE a = $1",
            "SELECT 'it''s $1' WHERE a = ?1",
        ),
        (
            "SELECT a -- $1 is a comment\n FROM t WHERE b = $1",
            "SELECT a -- $1 is a comment\n FROM t WHERE b = ?1",
        ),
        ("SELECT '?' WHERE a = $1", "SELECT '?' WHERE a = ?1"),
        ("SELECT $ , $a", "SELECT $ , $a"),
        ("SELECT a - $1", "SELECT a - ?1"),
    ];
    for (sql, want) in cases {
        assert_eq!(rewrite_placeholders(sql).unwrap(), want, "{sql}");
    }
    assert!(matches!(
        rewrite_placeholders("SELECT * FROM t WHERE a = ?"),
        Err(StoreError::Sqlite(_))
    ));
    assert!(matches!(
        rewrite_placeholders("SELECT 1"),
        Ok(Cow::Borrowed(_))
    ));
}

#[test]
fn a_fresh_file_gets_the_schema_the_sidecar_always_had() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(Db::open(&path).unwrap());
    assert_eq!(user_version(&path), 7);
    assert_eq!(SCHEMA_VERSION, 7);
    assert_eq!(
        tables(&path),
        [
            "adjustment_keys",
            "authorisations",
            "changes",
            "consent_history",
            "consents",
            "customer_logins",
            "customer_sessions",
            "meta",
            "oversight_apis",
            "oversight_events",
            "participant_history",
            "participant_thumbprints",
            "participants",
            "probe_results",
            "probe_subjects",
            "rate_events",
            "rollup_calls",
            "rollup_consents",
            "rollup_latency",
            "rollup_live",
            "rollup_minutes",
            "signing_keys",
            "statement_adjustments",
            "statement_months",
            "statements",
            "usage_events",
        ]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn migrates_once_and_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let db = Db::open(&path).unwrap();
    let id = db.store_id().to_owned();
    assert_eq!(db.head(), 0);
    assert_eq!(db.epoch().unwrap(), 1);
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.store_id(), id, "the store id survives reopening");
    drop(db);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    assert!(matches!(
        Db::open(&path),
        Err(StoreError::NewerSchema { .. })
    ));
}

/// A database as the first release left it (schema 1, a store id, changes, a pruning
/// floor) opens: migrated to 2, its rows, id and head kept.
#[test]
fn a_database_written_by_an_earlier_release_opens_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            .unwrap();
        conn.execute_batch(crate::sqlite_migrations::MIGRATIONS[0])
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO meta(key, value) VALUES ('store_id', 'old-store');
             INSERT INTO meta(key, value) VALUES ('pruned_through', '3');
             INSERT INTO changes(version, at, line) VALUES (4, 10, '{\"n\":4}');
             INSERT INTO changes(version, at, line) VALUES (5, 11, '{\"n\":5}');",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.store_id(), "old-store");
    assert_eq!(db.head(), 5);
    assert_eq!(db.write(20, |tx| tx.emit(line)).unwrap(), 6);
    let lines = db
        .read(|sql| sql.query("SELECT version, line FROM changes ORDER BY version", &[]))
        .unwrap();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0].text(1).unwrap(), "{\"n\":4}");
    drop(db);
    assert_eq!(user_version(&path), 7);
    assert!(tables(&path).contains(&"rate_events".to_owned()));
    assert!(tables(&path).contains(&"statements".to_owned()));
    assert!(tables(&path).contains(&"oversight_apis".to_owned()));
    assert!(tables(&path).contains(&"rollup_live".to_owned()));
}

#[test]
fn versions_are_contiguous_and_a_failed_write_leaves_no_hole() {
    let (_dir, db) = fresh();
    let v1 = db.write(1, |tx| tx.emit(line)).unwrap();
    let failed: Result<u64, StoreError> = db.write(2, |tx| {
        tx.emit(line)?;
        tx.emit(line)?;
        Err(StoreError::Corrupt("boom".into()))
    });
    assert!(failed.is_err());
    let v2 = db.write(3, |tx| tx.emit(line)).unwrap();
    assert_eq!((v1, v2), (1, 2));
    assert_eq!(db.head(), 2);
    // A panic inside the transaction rolls back too, and the writer is usable after.
    let db = std::sync::Arc::new(db);
    let d = db.clone();
    let panicked = std::thread::spawn(move || {
        d.write(4, |tx| {
            tx.emit(line)?;
            if tx.head()? == 3 {
                panic!("inside a write");
            }
            Ok::<_, StoreError>(())
        })
    })
    .join();
    assert!(panicked.is_err());
    assert_eq!(db.write(5, |tx| tx.emit(line)).unwrap(), 3);
    let versions: Vec<i64> = db
        .read(|sql| sql.query("SELECT version FROM changes ORDER BY version", &[]))
        .unwrap()
        .iter()
        .map(|r| r.int(0).unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert_eq!(db.engine().committed_head().unwrap(), 3);
}

#[test]
fn concurrent_writers_get_contiguous_versions() {
    let (_dir, db) = fresh();
    let db = std::sync::Arc::new(db);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let _ = db.write(i, |tx| {
                        tx.emit(line)?;
                        if (t + i) % 3 == 0 {
                            return Err(StoreError::Corrupt("rolled back".into()));
                        }
                        Ok(())
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let versions: Vec<i64> = db
        .read(|sql| sql.query("SELECT version FROM changes ORDER BY version", &[]))
        .unwrap()
        .iter()
        .map(|r| r.int(0).unwrap())
        .collect();
    let n = i64::try_from(versions.len()).unwrap();
    assert!(n > 50);
    assert_eq!(versions, (1..=n).collect::<Vec<_>>());
    assert_eq!(db.head(), u64::try_from(n).unwrap());
}

#[test]
fn history_is_append_only() {
    let (_dir, db) = fresh();
    db.write(1, |tx| {
        tx.execute(
            "INSERT INTO consent_history(consent_id, at, actor, to_status, version)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                "c".into(),
                1i64.into(),
                "x".into(),
                "authorised".into(),
                1i64.into(),
            ],
        )
    })
    .unwrap();
    for sql in [
        "UPDATE consent_history SET actor = 'y'",
        "DELETE FROM consent_history",
    ] {
        let r: Result<u64, StoreError> = db.write(2, |tx| tx.execute(sql, &[]));
        assert!(r.is_err(), "{sql}");
    }
}

#[test]
fn query_each_streams_rows_in_order_and_stops_at_an_error() {
    let (_dir, db) = fresh();
    db.write(1, |tx| {
        for i in 0..100i64 {
            tx.execute(
                "INSERT INTO rate_events(kind, subject, at) VALUES ($1, $2, $3)",
                &["k".into(), vec![1u8].into(), i.into()],
            )?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    let mut seen = Vec::new();
    let n = db
        .read(|sql| {
            sql.query_each(
                "SELECT at FROM rate_events WHERE kind = $1 AND at >= $2 ORDER BY at",
                &["k".into(), 10i64.into()],
                &mut |r| {
                    seen.push(r.int(0)?);
                    Ok(())
                },
            )
        })
        .unwrap();
    assert_eq!(n, 90);
    assert_eq!(seen, (10..100).collect::<Vec<i64>>());
    let mut calls = 0;
    let stopped = db.read(|sql| {
        sql.query_each("SELECT at FROM rate_events ORDER BY at", &[], &mut |_| {
            calls += 1;
            if calls == 3 {
                return Err(StoreError::Corrupt("enough".into()));
            }
            Ok(())
        })
    });
    assert!(matches!(stopped, Err(StoreError::Corrupt(m)) if m == "enough"));
    assert_eq!(calls, 3);
    // The connection went back to the pool in a usable state.
    let count = db
        .read(|sql| sql.query_one("SELECT COUNT(*) FROM rate_events", &[]))
        .unwrap();
    assert_eq!(count.int(0).unwrap(), 100);
}

#[test]
fn nulls_bytes_text_and_integers_round_trip() {
    let (_dir, db) = fresh();
    let salt: Vec<u8> = (0..=255).collect();
    db.write(1, |tx| {
        tx.execute(
            "INSERT INTO authorisations(id, consent_id, customer, created_at, state, codes_sent,
                 attempts, code_salt, code_hash, code_expires_at)
             VALUES ($1, $2, $3, $4, 'open', $5, 0, $6, $7, $8)",
            &[
                "a".into(),
                "c".into(),
                "ü-customer".into(),
                i64::MIN.into(),
                Value::Int(i64::MAX),
                salt.clone().into(),
                Value::Null,
                Option::<i64>::None.into(),
            ],
        )
    })
    .unwrap();
    let row = db
        .read(|sql| {
            sql.query_one(
                "SELECT customer, created_at, codes_sent, code_salt, code_hash, code_expires_at
                 FROM authorisations WHERE id = $1",
                &["a".into()],
            )
        })
        .unwrap();
    assert_eq!(row.text(0).unwrap(), "ü-customer");
    assert_eq!(row.int(1).unwrap(), i64::MIN);
    assert_eq!(row.int(2).unwrap(), i64::MAX);
    assert_eq!(row.bytes(3).unwrap(), salt);
    assert_eq!(row.opt_bytes(4).unwrap(), None);
    assert_eq!(row.opt_int(5).unwrap(), None);
    assert!(matches!(row.int(5), Err(StoreError::Corrupt(_))));
    assert!(matches!(row.text(1), Err(StoreError::Corrupt(_))));
}

#[test]
fn returning_gives_rows_and_wrong_types_are_refused() {
    let (_dir, db) = fresh();
    let back = db
        .write(2, |tx| {
            tx.query(
                "INSERT INTO meta(key, value) VALUES ($1, $2) RETURNING key, value",
                &["k".into(), "v".into()],
            )
        })
        .unwrap();
    assert_eq!(back, [Row(vec!["k".into(), "v".into()])]);
    let real = db.read(|sql| sql.query("SELECT 1.5", &[]));
    assert!(matches!(real, Err(StoreError::Sqlite(_))));
    // A strict table refuses a value of the wrong type.
    let wrong: Result<u64, StoreError> = db.write(3, |tx| {
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ($1, $2)",
            &["x".into(), vec![1u8].into()],
        )
    });
    assert!(matches!(wrong, Err(StoreError::Sqlite(_))));
}

#[test]
fn the_head_is_announced_after_the_commit_only() {
    let (_dir, db) = fresh();
    let mut rx = db.subscribe();
    db.write(1, |tx| {
        tx.emit(line)?;
        assert_eq!(tx.head()?, 1);
        assert_eq!(db.head(), 0, "not announced inside the transaction");
        assert!(!rx.has_changed().unwrap());
        // Readers do not see it either.
        let seen = db.read(|sql| read_head(sql))?;
        assert_eq!(seen, 0);
        Ok::<_, StoreError>(())
    })
    .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 1);
    // A rolled back write announces nothing; a write that emits nothing neither.
    let _ = db.write(2, |tx| {
        tx.emit(line)?;
        Err::<(), _>(StoreError::Corrupt("no".into()))
    });
    db.write(3, |tx| {
        tx.execute("INSERT INTO meta(key, value) VALUES ('a', 'b')", &[])
    })
    .unwrap();
    assert!(!rx.has_changed().unwrap());
    assert_eq!(db.head(), 1);
}

#[test]
fn a_read_sees_one_view_while_the_writer_goes_on() {
    let (_dir, db) = fresh();
    db.write(1, |tx| tx.emit(line)).unwrap();
    let engine = db.engine();
    let mut view = engine.begin_read().unwrap();
    assert_eq!(read_head(&mut *view).unwrap(), 1);
    db.write(2, |tx| tx.emit(line)).unwrap();
    assert_eq!(read_head(&mut *view).unwrap(), 1, "the same view");
    drop(view);
    assert_eq!(engine.committed_head().unwrap(), 2);
}

#[test]
fn pruning_keeps_the_head_at_the_floor() {
    let (_dir, db) = fresh();
    for i in 0..3 {
        db.write(i, |tx| tx.emit(line)).unwrap();
    }
    db.write(9, |tx| {
        tx.execute("DELETE FROM changes WHERE version <= $1", &[3i64.into()])?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('pruned_through', $1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            &["3".into()],
        )
    })
    .unwrap();
    assert_eq!(db.engine().committed_head().unwrap(), 3);
    assert_eq!(db.read(|sql| crate::read_floor(sql)).unwrap(), 3);
    assert_eq!(db.write(10, |tx| tx.emit(line)).unwrap(), 4);
}

#[test]
fn busy_is_unavailable_and_leadership_is_always_held() {
    let busy = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("database is locked".into()),
    );
    assert!(matches!(store_error(busy), StoreError::Unavailable(_)));
    let other = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
        Some("UNIQUE constraint failed: meta.key".into()),
    );
    assert!(matches!(store_error(other), StoreError::Sqlite(_)));
    let (_dir, db) = fresh();
    assert_eq!(db.dialect(), Dialect::Sqlite);
    let lead = db.engine().try_lead().unwrap().unwrap();
    assert!(lead.held());
    let t = std::time::Instant::now();
    db.engine()
        .wait_for_change(Duration::from_millis(20))
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(20));
}
