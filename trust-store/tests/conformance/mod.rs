//! The storage conformance suite: checks written once against [`Db`], for every engine.
//! Each takes a freshly opened, migrated, empty database (its own tables are created
//! with the `conf_` prefix). PostgreSQL runs them in `tests/postgres.rs`; an engine
//! adds its case by calling each function on a `Db` of its own (see [`ALL`]).

#![allow(dead_code)]

use trust_store::{Db, Dialect, Row, Sql, StoreError, Value};

/// One conformance check.
pub type Check = fn(&Db);

/// Every check, by name, for engines that run them in a loop.
pub const ALL: &[(&str, Check)] = &[
    ("values_round_trip", values_round_trip),
    ("upsert_and_returning", upsert_and_returning),
    ("query_each_streams_10k_rows", query_each_streams_10k_rows),
    ("rollback_keeps_nothing", rollback_keeps_nothing),
    ("history_is_append_only", history_is_append_only),
    (
        "statements_are_never_rewritten",
        statements_are_never_rewritten,
    ),
    ("feed_is_contiguous", feed_is_contiguous),
];

/// Runs DDL in its own write transaction: `pg` on PostgreSQL, `sqlite` on SQLite.
pub fn ddl(db: &Db, pg: &str, sqlite: &str) {
    let sql = match db.dialect() {
        Dialect::Postgres => pg,
        Dialect::Sqlite => sqlite,
    };
    db.write(0, |tx| tx.execute(sql, &[]).map(drop))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// NULL, the integer extremes, unicode text and every byte value survive a round trip,
/// and the row accessors read them.
pub fn values_round_trip(db: &Db) {
    ddl(
        db,
        "CREATE TABLE conf_values (id BIGINT PRIMARY KEY, i BIGINT, t TEXT, b BYTEA)",
        "CREATE TABLE conf_values (id INTEGER PRIMARY KEY, i INTEGER, t TEXT, b BLOB) STRICT",
    );
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let rows = vec![
        vec![1.into(), Value::Null, Value::Null, Value::Null],
        vec![
            2.into(),
            i64::MIN.into(),
            "".into(),
            Vec::<u8>::new().into(),
        ],
        vec![
            3.into(),
            i64::MAX.into(),
            "façade ✓ 日本語 🦀 \"'\\".into(),
            all_bytes.clone().into(),
        ],
        vec![
            4.into(),
            0.into(),
            Option::<&str>::None.into(),
            vec![0u8].into(),
        ],
    ];
    db.write(0, |tx| {
        for r in &rows {
            tx.execute(
                "INSERT INTO conf_values (id, i, t, b) VALUES ($1, $2, $3, $4)",
                r,
            )?;
        }
        Ok::<_, StoreError>(())
    })
    .expect("insert");
    let back = db
        .read(|sql| sql.query("SELECT id, i, t, b FROM conf_values ORDER BY id", &[]))
        .expect("select");
    let want: Vec<Row> = rows.into_iter().map(Row).collect();
    assert_eq!(back, want);
    assert_eq!(back[0].opt_int(1).unwrap(), None);
    assert_eq!(back[0].opt_text(2).unwrap(), None);
    assert_eq!(back[1].int(1).unwrap(), i64::MIN);
    assert_eq!(back[2].int(1).unwrap(), i64::MAX);
    assert_eq!(back[2].bytes(3).unwrap(), all_bytes);
    assert!(back[2].int(2).is_err(), "text is not an integer");
    assert!(back[0].int(1).is_err(), "NULL is not an integer");
    // A parameter compared with an integer column.
    let n = db
        .read(|sql| sql.query_one("SELECT COUNT(*) FROM conf_values WHERE i > $1", &[0.into()]))
        .expect("count");
    assert_eq!(n.int(0).unwrap(), 1);
}

/// `ON CONFLICT … DO UPDATE … RETURNING` and `DO NOTHING`.
pub fn upsert_and_returning(db: &Db) {
    ddl(
        db,
        "CREATE TABLE conf_kv (k TEXT PRIMARY KEY, v BIGINT NOT NULL)",
        "CREATE TABLE conf_kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL) STRICT",
    );
    let upsert = "INSERT INTO conf_kv (k, v) VALUES ($1, $2)
                  ON CONFLICT (k) DO UPDATE SET v = conf_kv.v + excluded.v RETURNING v";
    for (i, want) in [5i64, 12, 19].into_iter().enumerate() {
        let got = db
            .write(0, |tx| {
                tx.query_one(
                    upsert,
                    &["a".into(), Value::Int(if i == 0 { 5 } else { 7 })],
                )
            })
            .expect("upsert");
        assert_eq!(got.int(0).unwrap(), want);
    }
    let none = db
        .write(0, |tx| {
            tx.query_opt(
                "INSERT INTO conf_kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING RETURNING v",
                &["a".into(), 1.into()],
            )
        })
        .expect("insert or nothing");
    assert_eq!(none, None);
    let changed = db
        .write(0, |tx| {
            tx.execute("UPDATE conf_kv SET v = v + 1 WHERE k = $1", &["a".into()])
        })
        .expect("update");
    assert_eq!(changed, 1);
    let v = db
        .read(|sql| sql.query_one("SELECT v FROM conf_kv WHERE k = $1", &["a".into()]))
        .expect("select");
    assert_eq!(v.int(0).unwrap(), 20);
}

/// `query_each` hands over 10,000 rows in order without collecting them, and an error
/// from the callback stops it.
pub fn query_each_streams_10k_rows(db: &Db) {
    ddl(
        db,
        "CREATE TABLE conf_many (i BIGINT PRIMARY KEY, t TEXT NOT NULL)",
        "CREATE TABLE conf_many (i INTEGER PRIMARY KEY, t TEXT NOT NULL) STRICT",
    );
    db.write(0, |tx| {
        tx.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
             INSERT INTO conf_many (i, t) SELECT i, 'row ' || i FROM n",
            &[10_000.into()],
        )
    })
    .expect("insert 10k");
    let mut next = 1i64;
    let n = db
        .read(|sql| {
            sql.query_each("SELECT i, t FROM conf_many ORDER BY i", &[], &mut |row| {
                assert_eq!(row.int(0)?, next);
                assert_eq!(row.text(1)?, format!("row {next}"));
                next += 1;
                Ok(())
            })
        })
        .expect("query_each");
    assert_eq!((n, next), (10_000, 10_001));
    let mut seen = 0;
    let stopped = db.read(|sql| {
        sql.query_each("SELECT i FROM conf_many ORDER BY i", &[], &mut |_| {
            seen += 1;
            if seen == 100 {
                return Err(StoreError::Corrupt("stop here".into()));
            }
            Ok(())
        })
    });
    assert!(matches!(stopped, Err(StoreError::Corrupt(m)) if m == "stop here"));
    assert_eq!(seen, 100);
}

/// A write that fails keeps nothing: not its rows, not its feed versions; a transaction
/// dropped without commit likewise.
pub fn rollback_keeps_nothing(db: &Db) {
    ddl(
        db,
        "CREATE TABLE conf_rb (k TEXT PRIMARY KEY)",
        "CREATE TABLE conf_rb (k TEXT PRIMARY KEY) STRICT",
    );
    let head = db.engine().committed_head().expect("head");
    let failed: Result<(), StoreError> = db.write(1, |tx| {
        tx.emit(|v| Ok(format!("{{\"v\":{v}}}")))?;
        tx.execute("INSERT INTO conf_rb (k) VALUES ($1)", &["x".into()])?;
        Err(StoreError::Corrupt("abort".into()))
    });
    assert!(failed.is_err());
    {
        let mut txn = db.engine().begin_write().expect("begin");
        assert_eq!(txn.next_version().expect("version"), head + 1);
        txn.execute("INSERT INTO conf_rb (k) VALUES ($1)", &["y".into()])
            .expect("insert");
    } // dropped: rolled back
    let v = db
        .write(2, |tx| tx.emit(|v| Ok(format!("{{\"v\":{v}}}"))))
        .expect("emit");
    assert_eq!(v, head + 1, "the rolled back versions are reused");
    let rows = db
        .read(|sql| sql.query("SELECT k FROM conf_rb", &[]))
        .expect("select");
    assert!(
        rows.is_empty(),
        "nothing of the rolled back writes: {rows:?}"
    );
    assert_eq!(db.engine().committed_head().expect("head"), head + 1);
}

/// The history tables refuse UPDATE and DELETE (the database's own triggers).
pub fn history_is_append_only(db: &Db) {
    db.write(1, |tx| {
        tx.execute(
            "INSERT INTO consent_history (consent_id, at, actor, from_status, to_status, version)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                "c1".into(),
                1.into(),
                "tpp".into(),
                Value::Null,
                "authorised".into(),
                1.into(),
            ],
        )?;
        tx.execute(
            "INSERT INTO participant_history (bin, at, actor, from_status, to_status, version)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                "B1".into(),
                1.into(),
                "ops".into(),
                Value::Null,
                "active".into(),
                1.into(),
            ],
        )
    })
    .expect("append");
    for table in ["consent_history", "participant_history"] {
        for sql in [
            format!("UPDATE {table} SET actor = 'rewritten'"),
            format!("DELETE FROM {table}"),
        ] {
            let r = db.write(2, |tx| tx.execute(&sql, &[]));
            let e = r.expect_err(&sql).to_string();
            assert!(e.contains("append-only"), "{sql}: {e}");
        }
        let n = db
            .read(|sql| sql.query_one(&format!("SELECT COUNT(*), MIN(actor) FROM {table}"), &[]))
            .expect("count");
        assert_eq!(n.int(0).unwrap(), 1);
        assert_ne!(n.text(1).unwrap(), "rewritten");
    }
}

/// Issued statements and their adjustments refuse UPDATE and DELETE (the database's own
/// triggers), and a second statement of the same participant, role and month is refused.
pub fn statements_are_never_rewritten(db: &Db) {
    let statement = |id: &str| {
        format!(
            "INSERT INTO statements(id, participant, role, month, body, digest, issued_at)
             VALUES ('{id}', '100140000001', 'api_user', '2026-11', '{{}}', 'd', 1)"
        )
    };
    db.write(1, |tx| {
        tx.execute(&statement("s1"), &[])?;
        tx.execute(
            "INSERT INTO statement_adjustments(statement_id, amount, reason, actor, at)
             VALUES ('s1', '-1.00', 'r', 'operator:x', 1)",
            &[],
        )
    })
    .expect("issue");
    for sql in [
        "UPDATE statements SET digest = 'rewritten'",
        "DELETE FROM statements",
        "UPDATE statement_adjustments SET amount = '1.00'",
        "DELETE FROM statement_adjustments",
        statement("s2").as_str(),
    ] {
        let r = db.write(2, |tx| tx.execute(sql, &[]));
        assert!(r.is_err(), "{sql}");
    }
    let n = db
        .read(|sql| sql.query_one("SELECT COUNT(*), MIN(digest) FROM statements", &[]))
        .expect("count");
    assert_eq!(n.int(0).unwrap(), 1);
    assert_eq!(n.text(1).unwrap(), "d");
}

/// Sequential emits get 1, 2, 3, …; the head and the subscription follow; several
/// emits in one transaction are consecutive.
pub fn feed_is_contiguous(db: &Db) {
    let start = db.engine().committed_head().expect("head");
    let mut rx = db.subscribe();
    for i in 1..=5u64 {
        let v = db
            .write(i as i64, |tx| {
                let a = tx.emit(|v| Ok(format!("{{\"v\":{v}}}")))?;
                let b = tx.emit(|v| Ok(format!("{{\"v\":{v}}}")))?;
                assert_eq!(b, a + 1);
                assert_eq!(tx.head()?, b);
                Ok::<_, StoreError>(b)
            })
            .expect("emit");
        assert_eq!(v, start + 2 * i);
        assert_eq!(db.head(), v);
    }
    assert!(rx.has_changed().unwrap_or(false));
    assert_eq!(*rx.borrow_and_update(), start + 10);
    let versions: Vec<i64> = db
        .read(|sql| sql.query("SELECT version FROM changes ORDER BY version", &[]))
        .expect("changes")
        .iter()
        .map(|r| r.int(0).unwrap())
        .collect();
    let want: Vec<i64> = (1..=(start as i64 + 10)).collect();
    assert_eq!(versions, want);
    assert_eq!(db.engine().committed_head().expect("head"), start + 10);
}
