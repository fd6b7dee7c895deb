//! The provider APIs of the contract (§2) as units of conformance and publication: each
//! consent route and each open-data dataset. Conformance monitoring grades each one, and
//! the registry publishes a provider's API or not (`ParticipantRecord::delisted`).

use consent_cache::Permission;
use serde::{Deserialize, Serialize};

/// One provider API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProviderApi {
    /// `GET …/accounts`
    #[serde(rename = "accounts")]
    Accounts,
    /// `GET …/accounts/{account_id}`
    #[serde(rename = "account")]
    Account,
    /// `GET …/accounts/{account_id}/balances`
    #[serde(rename = "balances")]
    Balances,
    /// `GET …/accounts/{account_id}/transactions`
    #[serde(rename = "transactions")]
    Transactions,
    /// `GET /v1/open-data/{provider_id}/exchange-rates`
    #[serde(rename = "open-data/exchange-rates")]
    ExchangeRates,
    /// `GET /v1/open-data/{provider_id}/branches`
    #[serde(rename = "open-data/branches")]
    Branches,
    /// `GET /v1/open-data/{provider_id}/atms`
    #[serde(rename = "open-data/atms")]
    Atms,
    /// `GET /v1/open-data/{provider_id}/products`
    #[serde(rename = "open-data/products")]
    Products,
}

impl ProviderApi {
    /// Every API, in wire order.
    pub const ALL: [ProviderApi; 8] = [
        ProviderApi::Accounts,
        ProviderApi::Account,
        ProviderApi::Balances,
        ProviderApi::Transactions,
        ProviderApi::ExchangeRates,
        ProviderApi::Branches,
        ProviderApi::Atms,
        ProviderApi::Products,
    ];

    /// The wire name (`accounts`, `open-data/atms`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderApi::Accounts => "accounts",
            ProviderApi::Account => "account",
            ProviderApi::Balances => "balances",
            ProviderApi::Transactions => "transactions",
            ProviderApi::ExchangeRates => "open-data/exchange-rates",
            ProviderApi::Branches => "open-data/branches",
            ProviderApi::Atms => "open-data/atms",
            ProviderApi::Products => "open-data/products",
        }
    }

    /// Parses a wire name (exact), or an open-data set's bare name (`atms`).
    pub fn parse(s: &str) -> Option<ProviderApi> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s || a.dataset() == Some(s))
    }

    /// The consent permission the API needs (`None`: open data).
    pub const fn permission(self) -> Option<Permission> {
        match self {
            ProviderApi::Accounts | ProviderApi::Account => Some(Permission::Accounts),
            ProviderApi::Balances => Some(Permission::Balances),
            ProviderApi::Transactions => Some(Permission::Transactions),
            _ => None,
        }
    }

    /// The open-data set's path segment, for the open-data APIs.
    pub const fn dataset(self) -> Option<&'static str> {
        match self {
            ProviderApi::ExchangeRates => Some("exchange-rates"),
            ProviderApi::Branches => Some("branches"),
            ProviderApi::Atms => Some("atms"),
            ProviderApi::Products => Some("products"),
            _ => None,
        }
    }

    /// The provider-side path template (`docs/openapi/provider.json`).
    pub const fn template(self) -> &'static str {
        match self {
            ProviderApi::Accounts => "/v1/accounts",
            ProviderApi::Account => "/v1/accounts/{account_id}",
            ProviderApi::Balances => "/v1/accounts/{account_id}/balances",
            ProviderApi::Transactions => "/v1/accounts/{account_id}/transactions",
            _ => "/v1/open-data/{dataset}",
        }
    }

    /// Its bit in an [`ApiSet`].
    pub const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl std::fmt::Display for ProviderApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of provider APIs (a bit each), cheap to copy and to test on the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ApiSet(u16);

impl ApiSet {
    /// No API.
    pub const EMPTY: ApiSet = ApiSet(0);

    /// Whether `api` is in the set.
    pub const fn contains(self, api: ProviderApi) -> bool {
        self.0 & api.bit() != 0
    }

    /// Adds `api`.
    pub fn insert(&mut self, api: ProviderApi) {
        self.0 |= api.bit();
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The APIs in the set, in wire order.
    pub fn iter(self) -> impl Iterator<Item = ProviderApi> {
        ProviderApi::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }
}

impl FromIterator<ProviderApi> for ApiSet {
    fn from_iter<I: IntoIterator<Item = ProviderApi>>(iter: I) -> Self {
        let mut set = ApiSet::EMPTY;
        for api in iter {
            set.insert(api);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets_hold_what_was_inserted() {
        for api in ProviderApi::ALL {
            assert_eq!(ProviderApi::parse(api.as_str()), Some(api));
            let json = serde_json::to_string(&api).expect("serialise");
            assert_eq!(json, format!("\"{}\"", api.as_str()));
        }
        assert_eq!(ProviderApi::parse("Accounts"), None);
        assert_eq!(ProviderApi::parse("atms"), Some(ProviderApi::Atms));
        let set: ApiSet = [ProviderApi::Balances, ProviderApi::Atms]
            .into_iter()
            .collect();
        assert!(set.contains(ProviderApi::Balances) && set.contains(ProviderApi::Atms));
        assert!(!set.contains(ProviderApi::Accounts));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![ProviderApi::Balances, ProviderApi::Atms]
        );
        assert!(ApiSet::EMPTY.is_empty() && !set.is_empty());
    }
}
