//! Usage billing for the hub (issue 15, `docs/billing.md`): the call classes, the
//! versioned tariff (a validated TOML file), the monthly statement of every participant
//! (an API user's charges, a provider's served calls, failures and what it is owed), their
//! JSON, CSV and printable forms with a digest that proves them unchanged, adjustments, and
//! the reconciliation of usage with the gateways' audit journals.
//!
//! Pure: no network, no database. The trust sidecar stores usage and issues statements
//! with it; `hub-billing` recomputes the same figures straight from journals.

#![forbid(unsafe_code)]

pub mod class;
pub mod journal;
pub mod money;
mod pricing;
pub mod reconcile;
pub mod routes;
pub mod statement;
pub mod tariff;

pub use class::CallClass;
pub use journal::{usage_from_journal, ConsentDay, JournalError, JournalUsage};
pub use pricing::statements;
pub use reconcile::{
    period_rows, reconcile, reconcile_periods, Difference, PeriodRow, UsageReport,
};
pub use statement::{sha256_hex, Adjustment, Role, Statement, StatementLine};
pub use tariff::{Tariff, TariffError, TariffVersion};

pub use consent_cache::Bin;
pub use feed_wire::rollup::Outcome;
pub use jiff::civil::Date;
pub use rust_decimal::Decimal;

/// Calls of one API user × provider × route × outcome on one local day (the rollups'
/// rows summed per day of the tariff's time zone).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageRow {
    /// The local day (the tariff's time zone).
    pub day: Date,
    /// The API user, when the caller was identified.
    pub api_user: Option<Bin>,
    /// The provider, when the path named a registered one.
    pub provider: Option<Bin>,
    /// The contract's route template, spelt as the rollups spell it
    /// (`GET /v1/providers/{provider_id}/accounts`; see [`routes::canonical_route`]), or `-`.
    pub route: String,
    /// How the calls ended.
    pub outcome: Outcome,
    /// Number of calls.
    pub calls: u64,
    /// Transaction lines returned (transactions route; 0 otherwise).
    pub lines: u64,
}

/// Successful calls of one customer with one API user at one provider on one route on one
/// local day (the caller maps consents to customers).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CustomerDay {
    /// The local day.
    pub day: Date,
    /// The API user.
    pub api_user: Bin,
    /// The provider.
    pub provider: Bin,
    /// An opaque key of the customer: compared, never shown in a statement.
    pub customer: String,
    /// The route, as in [`UsageRow::route`].
    pub route: String,
    /// Successful calls.
    pub calls: u64,
}

/// Why a statement cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    /// `year`/`month` is not a calendar month.
    #[error("{year}-{month:02} is not a calendar month")]
    Month {
        /// The year asked for.
        year: i16,
        /// The month asked for.
        month: i8,
    },
    /// Usage on a day no tariff version covers (before the first `effective_from`).
    #[error("no tariff version is in force on {day} (the first one starts later)")]
    NoTariff {
        /// The day.
        day: Date,
    },
    /// A sum or a product of amounts beyond what `Decimal` holds (usage far beyond any
    /// real month's, since prices and caps are bounded at parse): refused, never wrapped.
    #[error("{what}: the amounts exceed what a statement can hold")]
    Overflow {
        /// Which amount.
        what: &'static str,
    },
    /// An adjustment that cannot be recorded.
    #[error("invalid adjustment: {0}")]
    Adjustment(&'static str),
}
