//! The storage conformance suite (`tests/conformance`) on the SQLite engine: every check
//! of [`conformance::ALL`], each on a fresh database file (`Db::open`). PostgreSQL runs
//! the same checks in `tests/postgres.rs`: one suite, two engines.

mod conformance;

use std::panic::{catch_unwind, AssertUnwindSafe};

use trust_store::{Db, Dialect};

/// A fresh, migrated SQLite database in its own temporary directory.
fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Db::open(&dir.path().join("conformance.db")).expect("open SQLite");
    assert_eq!(db.dialect(), Dialect::Sqlite);
    (dir, db)
}

#[test]
fn conformance_suite_on_sqlite() {
    assert!(!conformance::ALL.is_empty());
    let mut failed = Vec::new();
    for (name, check) in conformance::ALL {
        let (dir, db) = fresh();
        // Every check runs, even after one fails; the failures are listed together.
        match catch_unwind(AssertUnwindSafe(|| check(&db))) {
            Ok(()) => eprintln!("conformance on SQLite: {name} ok"),
            Err(_) => failed.push(*name),
        }
        drop(db);
        drop(dir);
    }
    assert!(
        failed.is_empty(),
        "conformance checks failed on SQLite: {failed:?}"
    );
}
