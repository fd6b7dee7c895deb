//! The versioned tariff: the time zone of months and days, and versions that apply from
//! their `effective_from` day until the next version's. Each version sets the class
//! rules, the prices per class (and per 100 transaction lines), the free threshold per
//! customer per day, the monthly cap, and per-participant overrides of those. Built only
//! by [`Tariff::parse`] / [`Tariff::load`], which refuse a broken file with its file, line
//! and field (`file`).

mod file;

use std::collections::BTreeMap;
use std::path::Path;

use consent_cache::Bin;
use feed_wire::rollup::Outcome;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use rust_decimal::Decimal;

use crate::class::{classify, CallClass, Rule};

/// The time zone when the file names none.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Almaty";

/// A tariff file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TariffError {
    /// The file cannot be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A value is missing, unknown or wrong.
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line (0 when the field is written nowhere).
        line: usize,
        /// Dotted path of the field (`versions[1].prices.chargeable`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A validated tariff.
#[derive(Debug, Clone)]
pub struct Tariff {
    time_zone: TimeZone,
    zone_name: String,
    /// Ordered by `effective_from`, strictly increasing.
    versions: Vec<TariffVersion>,
}

/// One version of the tariff.
#[derive(Debug, Clone, PartialEq)]
pub struct TariffVersion {
    /// The first local day it applies to.
    pub effective_from: Date,
    /// Class rules, first match wins; unmatched calls get the default class.
    pub rules: Vec<Rule>,
    /// The prices for everyone without an override.
    pub prices: Prices,
    /// API users' own terms (they win over a provider's).
    pub api_users: BTreeMap<Bin, Terms>,
    /// Providers' own terms.
    pub providers: BTreeMap<Bin, Terms>,
}

/// The prices that apply to one API user × provider pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    /// Per chargeable call.
    pub chargeable: Decimal,
    /// Per free call (normally 0).
    pub free: Decimal,
    /// Per call refused by the hub (normally 0).
    pub refused: Decimal,
    /// Per call failed by the provider (normally 0).
    pub provider_failed: Decimal,
    /// Per 100 transaction lines returned by chargeable transactions calls (pro rata).
    pub per_100_lines: Decimal,
    /// The first N chargeable calls of one customer with one API user at one provider
    /// in one local day are free.
    pub free_per_customer_day: u32,
    /// An API user's charge at one provider in a month is at most this.
    pub monthly_cap: Option<Decimal>,
}

/// A participant's own terms: each field set replaces the version's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Terms {
    /// See [`Prices::chargeable`].
    pub chargeable: Option<Decimal>,
    /// See [`Prices::free`].
    pub free: Option<Decimal>,
    /// See [`Prices::refused`].
    pub refused: Option<Decimal>,
    /// See [`Prices::provider_failed`].
    pub provider_failed: Option<Decimal>,
    /// See [`Prices::per_100_lines`].
    pub per_100_lines: Option<Decimal>,
    /// See [`Prices::free_per_customer_day`].
    pub free_per_customer_day: Option<u32>,
    /// See [`Prices::monthly_cap`].
    pub monthly_cap: Option<Decimal>,
}

impl Prices {
    /// The price of one call of `class`.
    pub fn per_call(&self, class: CallClass) -> Decimal {
        match class {
            CallClass::Chargeable => self.chargeable,
            CallClass::Free => self.free,
            CallClass::Refused => self.refused,
            CallClass::ProviderFailed => self.provider_failed,
        }
    }

    fn with(mut self, t: &Terms) -> Prices {
        self.chargeable = t.chargeable.unwrap_or(self.chargeable);
        self.free = t.free.unwrap_or(self.free);
        self.refused = t.refused.unwrap_or(self.refused);
        self.provider_failed = t.provider_failed.unwrap_or(self.provider_failed);
        self.per_100_lines = t.per_100_lines.unwrap_or(self.per_100_lines);
        self.free_per_customer_day = t
            .free_per_customer_day
            .unwrap_or(self.free_per_customer_day);
        self.monthly_cap = t.monthly_cap.or(self.monthly_cap);
        self
    }
}

impl TariffVersion {
    /// The class of a call on `route` (either spelling) that ended with `outcome`.
    pub fn class_of(&self, route: &str, outcome: Outcome) -> CallClass {
        let route = crate::routes::canonical_route(route).unwrap_or(route);
        classify(&self.rules, route, outcome)
    }

    /// The prices for calls of `api_user` at `provider`: the version's, replaced field by
    /// field by the provider's terms, then by the API user's (a negotiated price is the
    /// payer's).
    pub fn prices_for(&self, api_user: Option<Bin>, provider: Option<Bin>) -> Prices {
        let mut p = self.prices;
        if let Some(t) = provider.and_then(|b| self.providers.get(&b)) {
            p = p.with(t);
        }
        if let Some(t) = api_user.and_then(|b| self.api_users.get(&b)) {
            p = p.with(t);
        }
        p
    }
}

impl Tariff {
    /// Parses and validates a tariff; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Tariff, TariffError> {
        file::compile(text, file)
    }

    /// Reads, parses and validates a tariff file.
    pub fn load(path: &Path) -> Result<Tariff, TariffError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TariffError::Read {
            file: name.clone(),
            source,
        })?;
        Tariff::parse(&text, &name)
    }

    /// The time zone of months and days.
    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// The time zone's name (`Asia/Almaty`).
    pub fn time_zone_name(&self) -> &str {
        &self.zone_name
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> &[TariffVersion] {
        &self.versions
    }

    /// The version in force on `day`: the last one whose `effective_from` is not after it.
    pub fn version_at(&self, day: Date) -> Option<&TariffVersion> {
        let after = self.versions.partition_point(|v| v.effective_from <= day);
        after.checked_sub(1).map(|i| &self.versions[i])
    }
}

#[cfg(test)]
mod tests;
