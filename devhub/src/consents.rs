//! The demo consents: consents in every status over real sandbox customers and
//! accounts, as contract records (imported into the trust sidecar), snapshot lines
//! (`consents.jsonl`) and manifest entries with a pre-minted token. A cluster may add
//! extra authorised consents (`c-extra-NNNN`) for tests that revoke many.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use consent_cache::{ConsentRecord, ConsentStatus, Permission};
use sandbox::data::BankData;
use sandbox::tokens::AccessClaims;
use serde_json::json;

use crate::identities::{Identities, AUDIENCE, ISSUER};
use crate::DemoError;

const ALL: [Permission; 3] = [
    Permission::Accounts,
    Permission::Balances,
    Permission::Transactions,
];

/// One demo consent: indices into `API_USERS`, `PROVIDERS` (and the banks) and the
/// bank's customers, what it grants and its state.
#[derive(Clone, Copy)]
struct Plan {
    id: &'static str,
    user: usize,
    bank: usize,
    customer: usize,
    perms: &'static [Permission],
    /// Restricted to the customer's first account.
    restrict: bool,
    status: ConsentStatus,
    /// Seconds from now; negative for a consent already past its expiry.
    expires_in: Option<i64>,
}

impl Plan {
    /// A consent of the first user at the first bank over `ALL`, expiring in a day.
    const fn new(id: &'static str, customer: usize, status: ConsentStatus) -> Plan {
        Plan {
            id,
            user: 0,
            bank: 0,
            customer,
            perms: &ALL,
            restrict: false,
            status,
            expires_in: Some(86400),
        }
    }
}

/// Consents in every status over real sandbox customers and accounts.
const PLANS: [Plan; 9] = [
    Plan {
        expires_in: Some(90 * 86400),
        ..Plan::new("c-authorised-full", 0, ConsentStatus::Authorised)
    },
    Plan {
        restrict: true,
        expires_in: Some(90 * 86400),
        ..Plan::new("c-authorised-restricted", 1, ConsentStatus::Authorised)
    },
    Plan {
        user: 1,
        bank: 1,
        perms: &[Permission::Accounts],
        expires_in: None,
        ..Plan::new("c-authorised-accounts-only", 2, ConsentStatus::Authorised)
    },
    Plan {
        user: 1,
        bank: 1,
        expires_in: Some(30 * 86400),
        ..Plan::new("c-authorised-bank2", 0, ConsentStatus::Authorised)
    },
    Plan::new("c-awaiting", 3, ConsentStatus::AwaitingAuthorisation),
    Plan::new("c-rejected", 4, ConsentStatus::Rejected),
    Plan::new("c-revoked", 5, ConsentStatus::Revoked),
    Plan {
        user: 1,
        bank: 1,
        expires_in: Some(-86400),
        ..Plan::new("c-expired", 6, ConsentStatus::Expired)
    },
    Plan {
        user: 1,
        bank: 1,
        expires_in: Some(-3600),
        ..Plan::new("c-lapsed", 7, ConsentStatus::Authorised)
    },
];

/// The customers the plans use: every bank needs at least this many.
pub(crate) const CUSTOMERS_USED: usize = 8;

/// The template of the extra consents: the first user at the first bank, every
/// permission, authorised for a day.
const EXTRA: Plan = Plan::new("", 0, ConsentStatus::Authorised);

/// The id of the `n`-th extra consent (from 1).
pub fn extra_consent_id(n: usize) -> String {
    format!("c-extra-{n:04}")
}

/// The demo consents in the forms the next steps need.
pub(crate) struct DemoConsents {
    /// `consents.jsonl`, the hub's snapshot with `--consents-from file`.
    pub jsonl: String,
    /// The contract records, imported into the trust sidecar.
    pub records: Vec<ConsentRecord>,
    /// The manifest's entries: each record with a token and the customer's account ids.
    pub manifest: Vec<serde_json::Value>,
}

/// The `PLANS` (then `extra` extra consents) as contract records, snapshot lines and
/// manifest entries with tokens, over the banks' data (in `PROVIDERS` order).
pub(crate) fn demo_consents(
    ids: &Identities,
    banks: &[Arc<BankData>],
    extra: usize,
) -> Result<DemoConsents, DemoError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out = DemoConsents {
        jsonl: String::new(),
        records: Vec::new(),
        manifest: Vec::new(),
    };
    let extras = (1..=extra).map(|n| (extra_consent_id(n), EXTRA));
    let plans = PLANS.iter().map(|p| (p.id.to_string(), *p)).chain(extras);
    for (id, p) in plans {
        let data = banks
            .get(p.bank)
            .ok_or_else(|| DemoError::Bank("too few sandbox banks".into()))?;
        let customer = data
            .customers()
            .nth(p.customer)
            .ok_or_else(|| DemoError::Bank("too few sandbox customers".into()))?;
        let record = consent_json(&id, &p, ids, customer, now);
        let _ = writeln!(out.jsonl, "{record}");
        out.records
            .push(serde_json::from_value(record.clone()).map_err(|e| {
                DemoError::Bank(format!("demo consent {id} is not a contract record: {e}"))
            })?);
        out.manifest
            .push(manifest_entry(record, &id, &p, ids, customer, now)?);
    }
    Ok(out)
}

/// A manifest entry: the record with a token for its API user and the customer's
/// account ids.
fn manifest_entry(
    record: serde_json::Value,
    id: &str,
    p: &Plan,
    ids: &Identities,
    customer: &sandbox::data::Customer,
    now: i64,
) -> Result<serde_json::Value, DemoError> {
    let user = ids.users[p.user];
    let claims = AccessClaims::for_consent(
        ISSUER,
        AUDIENCE,
        user,
        id,
        p.perms,
        &ids.api_user(user)?.thumbprint,
        now,
        24 * 3600,
    )?;
    let token = ids.issuer.mint(&claims)?;
    let mut m = record;
    if let Some(o) = m.as_object_mut() {
        o.insert("token".into(), json!(token));
        o.insert(
            "account_ids".into(),
            json!(customer
                .accounts
                .iter()
                .map(|a| a.id.clone())
                .collect::<Vec<_>>()),
        );
    }
    Ok(m)
}

/// The contract record (§8) of one planned consent, created a day before `now`.
fn consent_json(
    id: &str,
    p: &Plan,
    ids: &Identities,
    customer: &sandbox::data::Customer,
    now: i64,
) -> serde_json::Value {
    let accounts: Option<Vec<String>> = p.restrict.then(|| {
        customer
            .accounts
            .iter()
            .take(1)
            .map(|a| a.id.clone())
            .collect()
    });
    json!({
        "id": id,
        "api_user": ids.users[p.user].to_string(),
        "customer": customer.iin,
        "providers": [ids.providers[p.bank].to_string()],
        "permissions": p.perms.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
        "accounts": accounts,
        "purpose": "Personal finance overview (demo)",
        "created_at": rfc3339(now - 86400),
        "expires_at": p.expires_in.map(|s| rfc3339(now + s)),
        "status": p.status.as_str(),
    })
}

/// Unix seconds as RFC 3339 (empty when out of range, which the demo's times never are).
fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
