//! Entries of the append-only status histories of consents and participants: who
//! changed what, when, from which status to which.
//!
//! Actors are written as `api_user:{bin}`, `customer`, `operator:{x5t#S256}` or
//! `system:expiry`, `system:import`. The customer is not named again: a consent has one customer.

use serde::Serialize;
use time::OffsetDateTime;

use crate::clock::to_datetime;

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
    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(HistoryEntry {
            at: to_datetime(r.get(0)?),
            actor: r.get(1)?,
            from: r.get(2)?,
            to: r.get(3)?,
            version: r.get::<_, i64>(4)? as u64,
        })
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
