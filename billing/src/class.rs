//! Call classes: what a call is for billing, from its route and outcome. A tariff version
//! may set rules of its own (first match wins); what no rule matches gets the default.

use feed_wire::rollup::Outcome;
use serde::{Deserialize, Serialize};

use crate::routes::DATA_ROUTES;

/// What a call is for billing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallClass {
    /// A technically successful data call: priced.
    Chargeable,
    /// Counted, not charged (open data, a provider's 4xx, anything unmatched).
    Free,
    /// Refused by the hub before any provider was involved.
    Refused,
    /// Failed by the provider (5xx, timeout, unreachable, invalid answer).
    ProviderFailed,
}

impl CallClass {
    /// Every class, in order.
    pub const ALL: [CallClass; 4] = [
        CallClass::Chargeable,
        CallClass::Free,
        CallClass::Refused,
        CallClass::ProviderFailed,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CallClass::Chargeable => "chargeable",
            CallClass::Free => "free",
            CallClass::Refused => "refused",
            CallClass::ProviderFailed => "provider_failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<CallClass> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The class when no tariff rule matches: refused by the hub → `refused`; the provider's
/// failures (the SLA's definition) → `provider_failed`; a successful call on an account
/// data route → `chargeable`; everything else (open data, a provider's 4xx — the API
/// user's mistake, not a technically successful call —, no route) → `free`.
pub fn default_class(route: &str, outcome: Outcome) -> CallClass {
    match outcome {
        Outcome::Refused => CallClass::Refused,
        o if o.is_provider_failure() => CallClass::ProviderFailed,
        Outcome::Success if DATA_ROUTES.contains(&route) => CallClass::Chargeable,
        _ => CallClass::Free,
    }
}

/// One rule of a tariff version: calls on `route` (any when `None`) with `outcome` (any
/// when `None`) are of `class`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The canonical route, or any.
    pub route: Option<&'static str>,
    /// The outcome, or any.
    pub outcome: Option<Outcome>,
    /// The class.
    pub class: CallClass,
}

impl Rule {
    /// Whether the rule covers the call.
    pub fn matches(&self, route: &str, outcome: Outcome) -> bool {
        self.route.is_none_or(|r| r == route) && self.outcome.is_none_or(|o| o == outcome)
    }
}

/// The class of a call under `rules` (first match), else [`default_class`].
pub fn classify(rules: &[Rule], route: &str, outcome: Outcome) -> CallClass {
    rules
        .iter()
        .find(|r| r.matches(route, outcome))
        .map_or_else(|| default_class(route, outcome), |r| r.class)
}
