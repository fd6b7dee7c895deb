//! The trust sidecar's storage: one SQL-level interface ([`Sql`], [`WriteTxn`],
//! [`Engine`]) with two engines, and the [`Db`] facade that the domain code uses.
//!
//! Domain code is written once, against [`Db::write`] / [`Db::read`], with SQL both
//! engines accept (`$1` placeholders, `ON CONFLICT`, `RETURNING`; the rules are in
//! `README.md` and [`sqlite`]). The change feed's guarantee holds on both: versions are
//! contiguous and become visible as a prefix.
#![forbid(unsafe_code)]

mod api;
mod db;
mod meta;
mod pg_cluster;
mod pg_migrations;
#[cfg(feature = "pg-server")]
pub mod pg_server;
mod pg_tls;
mod pg_txn;
mod pg_value;
mod postgres;
pub mod sqlite;
mod sqlite_migrations;

pub use api::{Dialect, Engine, Leadership, ReadTxn, Row, Sql, StoreError, Value, WriteTxn};
pub use db::{Db, Tx};
pub use meta::{read_floor, read_head};
pub use pg_cluster::LEAD_LOCK;
pub use pg_migrations::PG_SCHEMA_VERSION;
pub use postgres::{redact_url, PgEngine, PgSettings};
pub use sqlite::SqliteEngine;
