//! What the suite probes: the provider's base URL, the hub's client identity towards it,
//! the CA that verifies the provider, its SLA, and the test customer (with its test
//! consent) the provider registered; and the APIs of the contract, one probe each.

use std::fmt;
use std::time::Duration;

use consent_cache::{Bin, Permissions};

/// The shortest bound on one call: a call may take this long even under a tight SLA, so a
/// slow answer is measured (and fails the latency rule) rather than cut off.
pub const MIN_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// An API of the contract (§2, §3): the four account routes and each open-data set; the
/// registry's unit of publication, shared with the trust sidecar and the gateways.
pub use feed_wire::ProviderApi as Api;

/// The designated test customer and test consent a provider registers for probing: what
/// the hub would send for a real consent (`x-hub-*`, contract §3).
#[derive(Clone, PartialEq, Eq)]
pub struct TestCustomer {
    /// The API user the probes call for (`x-hub-api-user`).
    pub api_user: Bin,
    /// The test consent's id (`x-hub-consent-id`).
    pub consent_id: String,
    /// The test customer's id at the provider (`x-hub-customer`).
    pub customer: String,
    /// What the test consent grants (`x-hub-permissions`).
    pub permissions: Permissions,
    /// The accounts the test consent is restricted to (`x-hub-accounts`), if any.
    pub accounts: Option<Vec<String>>,
}

impl fmt::Debug for TestCustomer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The customer id and the account ids stay out of debug output.
        f.debug_struct("TestCustomer")
            .field("api_user", &self.api_user)
            .field("permissions", &self.permissions.comma_list())
            .field("accounts", &self.accounts.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// A provider to probe, and how.
#[derive(Clone)]
pub struct Target {
    /// The provider's base URL (`https://host:port[/prefix]`), what the hub forwards to.
    pub base_url: String,
    /// PEM: the hub's client certificate towards providers (leaf first, then any
    /// intermediates).
    pub client_cert_pem: Vec<u8>,
    /// PEM: the private key of that certificate.
    pub client_key_pem: Vec<u8>,
    /// PEM: the CA bundle that verifies the provider's server certificate.
    pub ca_pem: Vec<u8>,
    /// The provider's SLA: a call slower than this fails the latency rule.
    pub sla: Duration,
    /// The longest one call may take before it is abandoned (a typed failure, never a
    /// hang); see [`Target::new`] for the default.
    pub call_timeout: Duration,
    /// The test customer and its consent.
    pub customer: TestCustomer,
}

impl Target {
    /// A target with the default call timeout: four times the SLA, at least
    /// [`MIN_CALL_TIMEOUT`], so that a slow answer is still measured.
    pub fn new(
        base_url: impl Into<String>,
        client_cert_pem: impl Into<Vec<u8>>,
        client_key_pem: impl Into<Vec<u8>>,
        ca_pem: impl Into<Vec<u8>>,
        sla: Duration,
        customer: TestCustomer,
    ) -> Target {
        Target {
            base_url: base_url.into(),
            client_cert_pem: client_cert_pem.into(),
            client_key_pem: client_key_pem.into(),
            ca_pem: ca_pem.into(),
            sla,
            call_timeout: sla.saturating_mul(4).max(MIN_CALL_TIMEOUT),
            customer,
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("Target")
            .field("base_url", &self.base_url)
            .field("sla", &self.sla)
            .field("call_timeout", &self.call_timeout)
            .field("customer", &self.customer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_ids_round_trip_and_match_serde() {
        for api in Api::ALL {
            assert_eq!(Api::parse(api.as_str()), Some(api));
            let json = serde_json::to_string(&api).expect("serialises");
            assert_eq!(json, format!("\"{}\"", api.as_str()));
        }
        assert_eq!(Api::parse("payments"), None);
    }

    #[test]
    fn the_default_timeout_leaves_room_to_measure_a_slow_answer() {
        let customer = TestCustomer {
            api_user: Bin::parse("100140000001").expect("bin"),
            consent_id: "c".into(),
            customer: "990101300001".into(),
            permissions: Permissions::EMPTY,
            accounts: None,
        };
        let with_sla = |sla| Target::new("https://b", "", "", "", sla, customer.clone());
        assert_eq!(
            with_sla(Duration::from_millis(100)).call_timeout,
            MIN_CALL_TIMEOUT
        );
        let t = with_sla(Duration::from_secs(3));
        assert_eq!(t.call_timeout, Duration::from_secs(12));
        let shown = format!("{t:?}");
        assert!(!shown.contains("990101300001"), "{shown}");
    }
}
