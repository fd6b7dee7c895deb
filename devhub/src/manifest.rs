//! The contract §9 manifest (what an outside client or test needs to drive the running
//! hub: URLs, the CA, the issuer's key, the identities, the banks, the consents with
//! tokens, the trust sidecar) and the ready-to-paste `curl` lines printed from it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::identities::{abs, Identities, API_USERS, AUDIENCE, ISSUER, PROVIDERS};
use crate::DemoError;

/// The trust sidecar's entries of the manifest.
pub(crate) struct TrustInfo {
    /// `trust_url`: the (first) sidecar's base URL.
    pub url: String,
    /// `otp_outbox`: the development one-time-code outbox.
    pub otp_outbox: PathBuf,
    /// `trust_db`: the SQLite file, or the PostgreSQL URL (without a password).
    pub db: Value,
    /// `provider_outbox`: where the development notifier appends providers' notices
    /// (grade and publication changes of their APIs).
    pub provider_outbox: PathBuf,
    /// `billing`: the tariff, the sidecar's configuration file and the usage and
    /// statement routes (when billing is on).
    pub billing: Option<Value>,
}

/// What the manifest names.
pub(crate) struct ManifestInputs<'a> {
    pub ids: &'a Identities,
    /// `gateway_url`: the (first) hub's API.
    pub gateway_url: String,
    /// `admin_url`: the (first) hub's admin listener.
    pub admin_url: String,
    /// The banks' URLs.
    pub banks: BankUrls<'a>,
    /// `config`: the (first) hub's configuration file.
    pub config: &'a Path,
    /// `audit_log`: the (first) hub's audit journal.
    pub audit: &'a Path,
    /// The sidecar, when consents come from it.
    pub trust: Option<TrustInfo>,
    /// The consents with their tokens.
    pub consents: Vec<Value>,
}

/// The banks' URLs, in `PROVIDERS` order: the API (`url`) and the fault control route
/// (`faults_url`).
#[derive(Clone, Copy)]
pub(crate) struct BankUrls<'a> {
    pub api: &'a [String],
    pub faults: &'a [String],
}

/// The manifest's `providers`: id, name, the bank's URL and its `faults_url`.
fn providers_json(banks: BankUrls<'_>) -> Vec<Value> {
    PROVIDERS
        .iter()
        .zip(banks.api.iter().zip(banks.faults))
        .map(|(p, (url, faults))| json!({"id": p.0, "name": p.1, "url": url, "faults_url": faults}))
        .collect()
}

/// The contract §9 manifest.
pub(crate) fn manifest_json(m: ManifestInputs<'_>) -> Value {
    let (ids, pki) = (m.ids, &m.ids.pki);
    let mut manifest = json!({
        "gateway_url": m.gateway_url,
        "admin_url": m.admin_url,
        "ca_cert": abs(pki.ca_cert_path()),
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "token_signing_key": abs(&ids.issuer_key),
        "token_kid": ids.issuer.kid(),
        "token_alg": "ES256",
        "jwks": abs(&ids.jwks),
        "api_users": API_USERS.iter().enumerate().filter_map(|(i, u)| {
            let id = pki.api_user(ids.users[i])?;
            Some(json!({"id": u.0, "name": u.1, "status": u.2, "cert": abs(&id.cert_path), "key": abs(&id.key_path), "x5t#S256": id.x5t_s256}))
        }).collect::<Vec<_>>(),
        "providers": providers_json(m.banks),
        "hub_client_cert": abs(&pki.hub_client().cert_path),
        "hub_client_key": abs(&pki.hub_client().key_path),
        "untrusted_client": {"cert": abs(&pki.untrusted_client().cert_path), "key": abs(&pki.untrusted_client().key_path)},
        "config": abs(m.config),
        "audit_log": m.audit,
        "consents_from": if m.trust.is_some() { "trust" } else { "file" },
        "consents": m.consents,
    });
    if let (Some(t), Some(o)) = (m.trust, manifest.as_object_mut()) {
        o.insert("trust_url".into(), json!(t.url));
        o.insert("otp_outbox".into(), json!(t.otp_outbox));
        o.insert("trust_db".into(), t.db);
        o.insert("provider_outbox".into(), json!(t.provider_outbox));
        if let Some(b) = t.billing {
            o.insert("billing".into(), b);
        }
        if let Some(op) = pki.operator() {
            o.insert(
                "operator".into(),
                json!({"cert": abs(&op.cert_path), "key": abs(&op.key_path)}),
            );
        }
    }
    manifest
}

/// Writes the manifest (creating its directory, which may be outside the demo's).
pub(crate) fn write_manifest(path: &Path, manifest: &Value) -> Result<(), DemoError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(crate::io(parent))?;
    }
    let text = serde_json::to_string_pretty(manifest).unwrap_or_default();
    std::fs::write(path, text).map_err(crate::io(path))
}

/// A string field of a JSON value ("" when absent).
fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// `curl` with the CA and an API user's certificate.
fn curl_as(ca: &str, user: &Value) -> String {
    format!(
        "curl --cacert {ca} --cert {} --key {}",
        s(user, "cert"),
        s(user, "key")
    )
}

/// Ready-to-paste commands for the first consents, open data and, with a sidecar, a
/// consent's whole journey.
pub fn curl_lines(m: &Value) -> String {
    let mut out = consent_lines(m);
    if let Some(u) = m["api_users"].get(0) {
        let p = s(&m["providers"][0], "id");
        let _ = writeln!(
            out,
            "# open data (no token)\n{} {}/v1/open-data/{p}/exchange-rates",
            curl_as(s(m, "ca_cert"), u),
            s(m, "gateway_url")
        );
    }
    out.push_str(&faults_lines(m));
    out.push_str(&journey_lines(m));
    out
}

/// Breaking the first bank through its `faults_url` with the hub's client certificate
/// ("" without one).
fn faults_lines(m: &Value) -> String {
    let Some(url) = m["providers"][0]["faults_url"].as_str() else {
        return String::new();
    };
    let hub_identity = json!({"cert": s(m, "hub_client_cert"), "key": s(m, "hub_client_key")});
    let hub = curl_as(s(m, "ca_cert"), &hub_identity);
    format!(
        "# break the first bank (modes ok, schema, slow, error, down; docs/demo.md), then mend it\n\
         {hub} -H 'content-type: application/json' -d '{{\"mode\":\"error\"}}' {url}\n\
         {hub} -H 'content-type: application/json' -d '{{\"mode\":\"ok\"}}' {url}\n"
    )
}

/// Accounts, balances and transactions of the first three consents.
fn consent_lines(m: &Value) -> String {
    let mut out = String::new();
    let (gw, ca) = (s(m, "gateway_url"), s(m, "ca_cert"));
    let find_user = |id: &str| {
        m["api_users"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    for c in m["consents"].as_array().into_iter().flatten().take(3) {
        let u = find_user(s(c, "api_user"));
        let base = format!(
            "{} -H \"Authorization: Bearer {}\"",
            curl_as(ca, &u),
            s(c, "token")
        );
        let provider = c["providers"][0].as_str().unwrap_or_default();
        let account = c["account_ids"][0].as_str().unwrap_or_default();
        let _ = writeln!(out, "# consent {} ({})", s(c, "id"), s(c, "status"));
        let _ = writeln!(out, "{base} {gw}/v1/providers/{provider}/accounts");
        let _ = writeln!(
            out,
            "{base} {gw}/v1/providers/{provider}/accounts/{account}/balances"
        );
        let _ = writeln!(
            out,
            "{base} '{gw}/v1/providers/{provider}/accounts/{account}/transactions?limit=5'\n"
        );
    }
    out
}

/// A new consent through the sidecar: created, authorised with the one-time code, a
/// token, revoked ("" without a sidecar).
fn journey_lines(m: &Value) -> String {
    let (Some(trust), Some(outbox), Some(u), Some(c)) = (
        m["trust_url"].as_str(),
        m["otp_outbox"].as_str(),
        m["api_users"].get(0),
        m["consents"].get(0),
    ) else {
        return String::new();
    };
    let ca = s(m, "ca_cert");
    let user = curl_as(ca, u);
    let customer = s(c, "customer");
    let provider = c["providers"][0].as_str().unwrap_or_default();
    let bin = s(u, "id");
    format!(
        "\n# a new consent through the trust sidecar: the API user asks, the customer \
         authorises with the one-time code, the API user gets a token\n\
         {user} -H 'content-type: application/json' -d '{{\"customer\":\"{customer}\",\"providers\":[\"{provider}\"],\"permissions\":[\"accounts\",\"balances\"],\"purpose\":\"Demo\"}}' {trust}/v1/consents     # -> id\n\
         curl --cacert {ca} -H 'content-type: application/json' -d '{{\"customer\":\"{customer}\"}}' {trust}/v1/customer/sessions     # -> session\n\
         curl --cacert {ca} -X POST -H 'Authorization: Bearer SESSION' {trust}/v1/customer/consents/ID/authorisations     # -> authorisation id\n\
         tail -n 1 {outbox}     # the code\n\
         curl --cacert {ca} -H 'Authorization: Bearer SESSION' -H 'content-type: application/json' -d '{{\"code\":\"CODE\"}}' {trust}/v1/customer/authorisations/AID/verify\n\
         {user} -d 'grant_type=client_credentials&client_id={bin}&consent_id=ID' {trust}/oauth2/token     # -> access_token\n\
         {user} -X DELETE {trust}/v1/consents/ID     # revoke: the hub refuses the token at once\n"
    )
}
