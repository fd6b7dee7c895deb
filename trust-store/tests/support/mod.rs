//! Shared test support: a real PostgreSQL server ([`pg`]), one tokio runtime for the
//! engines of a test binary, and bounded waits.

#![allow(dead_code)]

pub mod pg;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use trust_store::{Db, PgEngine, PgSettings};

/// The runtime the engines run on: multi-thread, kept for the whole test binary (the
/// head watcher threads of dropped `Db`s may still use it for a moment).
pub fn handle() -> tokio::runtime::Handle {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
    .handle()
    .clone()
}

/// Settings for `url` with short timeouts for the tests.
pub fn settings(url: String) -> PgSettings {
    PgSettings {
        pool_size: 12,
        connect_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(10),
        ..PgSettings::new(url)
    }
}

/// Opens an engine on database `db` of `server`.
pub fn engine(server: &pg::PgServer, db: &str) -> PgEngine {
    PgEngine::open(&settings(server.url(db)), handle()).expect("open the PostgreSQL engine")
}

/// Opens a `Db` on database `db` of `server`.
pub fn open(server: &pg::PgServer, db: &str) -> Db {
    Db::from_engine(Box::new(engine(server, db))).expect("Db over PostgreSQL")
}

/// Polls `f` every 20 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
