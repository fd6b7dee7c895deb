//! Entries of the append-only status histories of consents and participants: who
//! changed what, when, from which status to which.
//!
//! Actors are written as `api_user:{bin}`, `customer`, `operator:{x5t#S256}` or
//! `system:expiry`, `system:import`. The customer is not named again: a consent has one customer.

use serde::Serialize;
use time::OffsetDateTime;

use crate::clock::to_datetime;
use crate::db::{Row, Sql, StoreError, Value};

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// The status before; `null` for the creation.
    pub from: Option<String>,
    /// The status after.
    pub to: String,
    /// The feed version of the change.
    pub version: u64,
}

impl HistoryEntry {
    /// Reads `at, actor, from_status, to_status, version`.
    pub(crate) fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(HistoryEntry {
            at: to_datetime(r.int(0)?),
            actor: r.text(1)?,
            from: r.opt_text(2)?,
            to: r.text(3)?,
            version: crate::db::version(r, 4)?,
        })
    }

    /// Every entry a query of `at, actor, from_status, to_status, version` returns.
    pub(crate) fn all(
        sql: &mut dyn Sql,
        query: &str,
        params: &[Value],
    ) -> Result<Vec<Self>, StoreError> {
        sql.query(query, params)?
            .iter()
            .map(HistoryEntry::from_row)
            .collect()
    }
}

/// The actor string of an API user.
pub fn api_user(bin: consent_cache::Bin) -> String {
    format!("api_user:{bin}")
}

/// The actor string of the customer.
pub const CUSTOMER: &str = "customer";

/// The actor string of the expiry task.
pub const EXPIRY: &str = "system:expiry";

/// The actor string of consents imported as they stood (`App::import_consents`).
pub const IMPORT: &str = "system:import";

/// The actor string of an operator certificate.
pub fn operator(x5t: &str) -> String {
    format!("operator:{x5t}")
}
