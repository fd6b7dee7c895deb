//! The sidecar's storage, from the `trust-store` crate: [`Db`] (SQLite with
//! [`Db::open`], or any [`Engine`]), write transactions ([`Tx`]: SQL plus the change
//! feed) and the SQL interface ([`Sql`], [`Row`], [`Value`]) the domain modules use.
//! Every statement they run is written in the portable subset both engines accept
//! (`trust-store/README.md`).

pub use trust_store::{
    read_floor, read_head, Db, Dialect, Engine, Leadership, ReadTxn, Row, Sql, StoreError, Tx,
    Value, WriteTxn,
};

/// Column `i` as a feed version or a count (a non-negative integer).
pub fn version(row: &Row, i: usize) -> Result<u64, StoreError> {
    let v = row.int(i)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {i}: {v} is negative")))
}

/// The one integer a `SELECT COUNT(*) …` returns.
pub fn count(sql: &mut dyn Sql, query: &str, params: &[Value]) -> Result<u64, StoreError> {
    version(&sql.query_one(query, params)?, 0)
}
