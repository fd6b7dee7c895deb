//! The contract's routes (contract §2) as usage names them: the rollups' spelling, a
//! template with its method (`GET /v1/providers/{provider_id}/accounts`); the audit
//! journal writes the template alone, and a tariff may use either.

/// Every contract route, in the contract's order.
pub const ROUTES: [&str; 5] = [
    "GET /v1/providers/{provider_id}/accounts",
    "GET /v1/providers/{provider_id}/accounts/{account_id}",
    "GET /v1/providers/{provider_id}/accounts/{account_id}/balances",
    "GET /v1/providers/{provider_id}/accounts/{account_id}/transactions",
    "GET /v1/open-data/{provider_id}/{dataset}",
];

/// The route whose answers carry transaction lines (priced per 100 lines).
pub const TRANSACTIONS: &str = ROUTES[3];

/// The open-data route.
pub const OPEN_DATA: &str = ROUTES[4];

/// What a call that matched no route is filed under.
pub const NO_ROUTE: &str = "-";

/// The routes that return a customer's account data (chargeable when successful, by
/// default).
pub const DATA_ROUTES: [&str; 4] = [ROUTES[0], ROUTES[1], ROUTES[2], ROUTES[3]];

/// The canonical spelling of a route (with its method, or `-`); `None` for anything else.
pub fn canonical_route(route: &str) -> Option<&'static str> {
    if route == NO_ROUTE {
        return Some(NO_ROUTE);
    }
    ROUTES
        .iter()
        .find(|r| **r == route || r.strip_prefix("GET ") == Some(route))
        .copied()
}
