//! The trust sidecar on the demo's PKI and its seed: the sidecar's configuration (the
//! hub's server certificate, the hub's client certificate reads the feed, the operator
//! certificate runs the registry, the demo issuer's key signs tokens), the demo
//! participants put into its registry, the demo consents imported through its storage,
//! and the manifest's consents read back as the sidecar holds them. The single-process
//! demo seeds its SQLite sidecar; the cluster seeds its PostgreSQL database once, through
//! a sidecar it runs in-process for that alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use consent_cache::{ConsentRecord, Permission};
use sandbox::data::BankData;
use serde_json::json;
use trust::app::App;
use trust::grade::Hysteresis;
use trust::oversight::ProbeSubject;
use trust::prober::ProbeConfig;

use crate::hubconfig::PROVIDER_TIMEOUT_MS;
use crate::identities::{bin, Identities, API_USERS, AUDIENCE, ISSUER, PROVIDERS};
use crate::DemoError;

/// The trust sidecar's configuration on the demo's PKI, listening on `listen`, with its
/// SQLite file `db` (unused when the caller sets `postgres`) and the development
/// one-time-code outbox.
pub(crate) fn trust_config(
    ids: &Identities,
    listen: SocketAddr,
    db: PathBuf,
    otp_outbox: PathBuf,
) -> Result<trust::Config, DemoError> {
    let pki = &ids.pki;
    let mut c = trust::Config::new(
        listen,
        db,
        pki.hub_server().cert_path.clone(),
        pki.hub_server().key_path.clone(),
        pki.ca_cert_path().to_path_buf(),
    );
    c.operator_certs = vec![ids.operator()?.cert_path.clone()];
    c.hub_certs = vec![pki.hub_client().cert_path.clone()];
    c.issuer = Some(ISSUER.to_string());
    c.audience = AUDIENCE.to_string();
    c.signing_keys = vec![ids.issuer_key.clone()];
    c.otp_outbox = Some(otp_outbox);
    c.dev_customer_sessions = true;
    Ok(c)
}

/// Seeds a started sidecar: the demo participants (through the registry, as the
/// operator; each provider at its bank's URL), then the demo consents (imported through
/// its storage, each with a feed version and a history entry), then one expiry pass.
pub(crate) async fn seed(
    app: &Arc<App>,
    ids: &Identities,
    provider_urls: &[String],
    banks: &[&BankData],
    records: Vec<ConsentRecord>,
) -> Result<(), DemoError> {
    let actor = trust::history::operator(&ids.operator()?.x5t_s256);
    seed_participants(app, ids, provider_urls, &actor).await?;
    for (p, subject) in PROVIDERS.iter().zip(probe_subjects(banks)) {
        app.put_probe_subject(actor.clone(), bin(p.0), subject)
            .await?;
    }
    app.import_consents(records).await?;
    app.expire_due().await?;
    Ok(())
}

/// The test subject each demo provider registers for conformance probing: its first
/// customer with an account, called for the first active API user with every permission,
/// under the provider's own test consent id, held to the hub's default SLA.
pub(crate) fn probe_subjects(banks: &[&BankData]) -> Vec<ProbeSubject> {
    let api_user = API_USERS
        .iter()
        .find(|u| u.2 == "active")
        .map_or(API_USERS[0].0, |u| u.0);
    banks
        .iter()
        .zip(PROVIDERS)
        .filter_map(|(data, p)| {
            let customer = data.customers().find(|c| !c.accounts.is_empty())?;
            Some(ProbeSubject {
                api_user: bin(api_user),
                consent_id: format!("probe-{}", p.0),
                customer: customer.iin.clone(),
                permissions: vec![
                    Permission::Accounts,
                    Permission::Balances,
                    Permission::Transactions,
                ],
                accounts: None,
                sla_ms: PROVIDER_TIMEOUT_MS,
            })
        })
        .collect()
}

/// Probing of the demo's banks by the sidecar: the hub's client identity, every
/// `interval`, notices to `outbox`.
pub(crate) fn probe_config(ids: &Identities, interval: Duration, outbox: PathBuf) -> ProbeConfig {
    let hub = ids.pki.hub_client();
    ProbeConfig {
        interval,
        client_cert: hub.cert_path.clone(),
        client_key: hub.key_path.clone(),
        ca: ids.pki.ca_cert_path().to_path_buf(),
        hysteresis: Hysteresis::default(),
        outbox: Some(outbox),
    }
}

/// The demo's API users and providers, put into the sidecar's registry by `actor`.
async fn seed_participants(
    app: &Arc<App>,
    ids: &Identities,
    provider_urls: &[String],
    actor: &str,
) -> Result<(), DemoError> {
    use trust::participants::ParticipantInput;
    use trust::wire::{ParticipantStatus, Role};

    for (i, u) in API_USERS.iter().enumerate() {
        let id = ids
            .pki
            .api_user(bin(u.0))
            .ok_or_else(|| DemoError::Bank(format!("no certificate for api user {i}")))?;
        let input = ParticipantInput {
            name: u.1.to_string(),
            roles: vec![Role::User],
            thumbprints: vec![id.x5t_s256.clone()],
            provider_urls: Vec::new(),
            status: ParticipantStatus::parse(u.2),
        };
        app.put_participant(actor.to_owned(), bin(u.0), input)
            .await?;
    }
    for (i, p) in PROVIDERS.iter().enumerate() {
        let url = provider_urls
            .get(i)
            .ok_or_else(|| DemoError::Bank("too few sandbox banks".into()))?;
        let input = ParticipantInput {
            name: p.1.to_string(),
            roles: vec![Role::Provider],
            thumbprints: Vec::new(),
            provider_urls: vec![url.clone()],
            status: Some(ParticipantStatus::Active),
        };
        app.put_participant(actor.to_owned(), bin(p.0), input)
            .await?;
    }
    Ok(())
}

/// The manifest's consents as the sidecar holds them (status and feed version; the
/// consent past its expiry was expired by it).
pub(crate) async fn held_states(
    app: &Arc<App>,
    manifest_consents: &mut [serde_json::Value],
) -> Result<(), DemoError> {
    for m in manifest_consents {
        let Some(id) = m["id"].as_str().map(str::to_string) else {
            continue;
        };
        let view = app.consent(id).await?;
        m["status"] = json!(view.record.status.as_str());
        m["version"] = json!(view.version);
    }
    Ok(())
}
