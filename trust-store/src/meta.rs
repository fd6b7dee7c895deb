//! The change log's bounds as the database records them, in SQL both engines run: the
//! head (the newest change) and the pruning floor (`meta.pruned_through`). Read them
//! inside the transaction whose view they must describe.

use crate::api::{Sql, StoreError};

/// The head of the change log as seen by `sql`: the newest change, or the pruning floor
/// when every change has been pruned (never the case once one exists).
pub fn read_head(sql: &mut dyn Sql) -> Result<u64, StoreError> {
    let max = sql
        .query_one("SELECT MAX(version) FROM changes", &[])?
        .opt_int(0)?;
    let floor = read_floor(sql)?;
    Ok(floor.max(max.map_or(0, |v| u64::try_from(v).unwrap_or(0))))
}

/// The highest version pruned from the change log (0 = nothing pruned).
pub fn read_floor(sql: &mut dyn Sql) -> Result<u64, StoreError> {
    let row = sql.query_opt("SELECT value FROM meta WHERE key = 'pruned_through'", &[])?;
    match row {
        None => Ok(0),
        Some(r) => {
            let s = r.text(0)?;
            s.parse()
                .map_err(|_| StoreError::Corrupt(format!("meta.pruned_through = {s:?}")))
        }
    }
}
