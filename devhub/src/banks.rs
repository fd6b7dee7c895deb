//! The demo's sandbox banks: one per entry of `PROVIDERS`, on an ephemeral loopback port,
//! accepting only the hub's client certificate, with deterministic data (the seed of
//! bank `i` is [`bank_seed`]`(i)`, so another process generates the same customers and
//! accounts with [`bank_data`]), and a fault control listener on another ephemeral port
//! (the manifest's `faults_url`), told the SLA the hub holds the bank to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sandbox::bank::{BankConfig, BankHandle};
use sandbox::data::BankData;

use crate::hubconfig::PROVIDER_TIMEOUT_MS;
use crate::identities::{Identities, PROVIDERS};
use crate::DemoError;

/// An ephemeral loopback port.
pub(crate) const LOOPBACK_ANY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The SLA the hub holds every demo bank to (`[[providers]] timeout_ms`).
pub(crate) fn provider_sla() -> Duration {
    Duration::from_millis(PROVIDER_TIMEOUT_MS)
}

/// The data seed of the `i`-th bank.
pub(crate) fn bank_seed(i: usize) -> u64 {
    0x5EED_0000 + i as u64
}

/// The configuration of the `i`-th bank (of `PROVIDERS`).
fn bank_config(ids: &Identities, i: usize, customers: usize) -> Result<BankConfig, DemoError> {
    let pki = &ids.pki;
    let (bin, (_, name)) = ids
        .providers
        .get(i)
        .zip(PROVIDERS.get(i))
        .ok_or_else(|| DemoError::Bank("too few providers".into()))?;
    let id = pki
        .provider_server(*bin)
        .ok_or_else(|| DemoError::Bank("no certificate for provider".into()))?;
    Ok(BankConfig {
        bin: *bin,
        name: name.to_string(),
        listen: LOOPBACK_ANY,
        server_cert_chain_pem: id.chain_pem().into_bytes(),
        server_key_pem: id.key_pem.clone().into_bytes(),
        client_ca_pem: pki.ca_cert_pem().as_bytes().to_vec(),
        customers,
        seed: bank_seed(i),
        allowed_client_thumbprints: Some(vec![pki.hub_client().thumbprint]),
        sla: provider_sla(),
        faults_listen: Some(LOOPBACK_ANY),
    })
}

/// One sandbox bank per provider, on ephemeral loopback ports, accepting only the hub,
/// driven by `runtime`.
pub(crate) fn start_banks(
    runtime: &tokio::runtime::Runtime,
    ids: &Identities,
    customers: usize,
) -> Result<Vec<BankHandle>, DemoError> {
    let mut banks = Vec::new();
    for i in 0..ids.providers.len() {
        let cfg = bank_config(ids, i, customers)?;
        let h = runtime
            .block_on(sandbox::bank::start(cfg))
            .map_err(|e| DemoError::Bank(e.to_string()))?;
        banks.push(h);
    }
    Ok(banks)
}

/// The data of the `i`-th bank as its process generates it. Only the first `customers`
/// are generated (a prefix of a larger bank's: the demo consents use the first few).
pub(crate) fn bank_data(
    ids: &Identities,
    i: usize,
    customers: usize,
) -> Result<BankData, DemoError> {
    let bin = ids
        .providers
        .get(i)
        .ok_or_else(|| DemoError::Bank("too few providers".into()))?;
    Ok(BankData::generate(*bin, bank_seed(i), customers))
}

/// The data of running banks, in order.
pub(crate) fn data_of(banks: &[BankHandle]) -> Vec<Arc<BankData>> {
    banks.iter().map(|b| b.data().clone()).collect()
}
