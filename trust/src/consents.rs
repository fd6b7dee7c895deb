//! Consent records (contract §5): creation by an API user, status transitions with
//! their history and feed changes, listings, and expiry.
//!
//! Status machine:
//!
//! ```text
//! awaiting_authorisation ──customer: code verified──▶ authorised
//!          │  └──customer: refuses──▶ rejected
//!          └──API user or customer: withdraws──▶ revoked ◀──API user or customer── authorised
//! awaiting_authorisation / authorised ──expires_at reached──▶ expired
//! ```
//!
//! `rejected`, `revoked` and `expired` are final.

use consent_cache::{Bin, Change, ChangeOp, ConsentRecord, ConsentStatus, Permission};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::to_datetime;
use crate::db::{Sql, StoreError, Tx};
use crate::error::Error;
use crate::history::HistoryEntry;
use crate::participants::Directory;
use crate::wire::{FeedLine, Role};

/// `POST /v1/consents`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConsent {
    /// The customer whose data is asked for (e.g. IIN); only this customer can
    /// authorise the consent.
    pub customer: String,
    /// Providers (BINs) whose data is asked for.
    pub providers: Vec<Bin>,
    /// Permissions asked for (`accounts`, `balances`, `transactions`).
    pub permissions: Vec<Permission>,
    /// Account ids to restrict the consent to; absent = all accounts.
    #[serde(default)]
    pub accounts: Option<Vec<String>>,
    /// Why, as shown to the customer.
    pub purpose: String,
    /// When the consent stops allowing access; absent = until revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A consent with its history, as the API answers.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentView {
    /// The contract §5 record.
    #[serde(flatten)]
    pub record: ConsentRecord,
    /// The feed version of its last change.
    pub version: u64,
    /// Every status change, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// Creates a consent in `awaiting_authorisation` for `api_user`.
pub fn create(
    tx: &mut Tx<'_>,
    api_user: Bin,
    directory: &Directory,
    input: CreateConsent,
) -> Result<ConsentView, Error> {
    let now = tx.now();
    if input.permissions.contains(&Permission::Payments) {
        return Err(Error::invalid(
            "permissions",
            "payments is reserved and cannot be granted yet",
        ));
    }
    if input.purpose.trim().is_empty() {
        return Err(Error::invalid("purpose", "must not be empty"));
    }
    if input.purpose.chars().any(char::is_control) {
        return Err(Error::invalid("purpose", "no control characters"));
    }
    let expires_at = match input.expires_at {
        Some(t) if t.unix_timestamp() <= now => {
            return Err(Error::invalid("expires_at", "must be in the future"))
        }
        Some(t) => Some(to_datetime(t.unix_timestamp())),
        None => None,
    };
    for (i, p) in input.providers.iter().enumerate() {
        match directory.get(*p) {
            Some(r) if r.has_role(Role::Provider) && r.is_active() => {}
            Some(r) if r.has_role(Role::Provider) => {
                return Err(Error::Unprocessable {
                    code: "provider_inactive",
                    detail: format!("providers[{i}]: {p} is {}", r.status.as_str()),
                })
            }
            _ => {
                return Err(Error::Unprocessable {
                    code: "provider_unknown",
                    detail: format!("providers[{i}]: {p} is not a registered provider"),
                })
            }
        }
    }
    let record = ConsentRecord {
        id: uuid::Uuid::new_v4().to_string(),
        api_user,
        customer: input.customer,
        providers: input.providers,
        permissions: input.permissions,
        accounts: input.accounts,
        purpose: input.purpose,
        created_at: to_datetime(now),
        expires_at,
        status: ConsentStatus::AwaitingAuthorisation,
    };
    record.validate().map_err(|e| Error::Unprocessable {
        code: "invalid_field",
        detail: e.to_string(),
    })?;
    let view = insert_new(tx, record, now, &crate::history::api_user(api_user))?;
    crate::usage::count_event(tx, api_user, now, crate::usage::Event::ConsentCreated)?;
    Ok(view)
}

/// Imports a consent as it stands elsewhere (a registry being migrated, development
/// seeds): id, customer, times and status are kept. It goes through the same storage as
/// a created one: one feed change (an `upsert` carrying its status) and one history
/// entry by `system:import`. Refused: an id already stored (`409 consent_exists`), a
/// record that breaks the contract §5 rules, an API user that is not a registered
/// participant with the `user` role, a provider that is not one with the `provider`
/// role (any status: the registry's past may hold inactive participants), `payments`.
/// A consent imported as `awaiting_authorisation` or `authorised` whose `expires_at`
/// has passed is expired by the next housekeeping run.
pub fn import(
    tx: &mut Tx<'_>,
    directory: &Directory,
    record: ConsentRecord,
) -> Result<ConsentView, Error> {
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    if load(tx, &record.id)?.is_some() {
        return Err(Error::Conflict {
            code: "consent_exists",
            detail: format!("a consent with id {} is already stored", record.id),
        });
    }
    record.validate().map_err(|e| Error::Unprocessable {
        code: "invalid_field",
        detail: e.to_string(),
    })?;
    if record.permissions.contains(&Permission::Payments) {
        return Err(Error::invalid(
            "permissions",
            "payments is reserved and cannot be granted yet",
        ));
    }
    if record.purpose.trim().is_empty() || record.purpose.chars().any(char::is_control) {
        return Err(Error::invalid(
            "purpose",
            "must not be empty nor hold control characters",
        ));
    }
    if !directory
        .get(record.api_user)
        .is_some_and(|p| p.has_role(Role::User))
    {
        return Err(Error::Unprocessable {
            code: "api_user_unknown",
            detail: format!("{} is not a registered API user", record.api_user),
        });
    }
    for (i, p) in record.providers.iter().enumerate() {
        if !directory
            .get(*p)
            .is_some_and(|r| r.has_role(Role::Provider))
        {
            return Err(Error::Unprocessable {
                code: "provider_unknown",
                detail: format!("providers[{i}]: {p} is not a registered provider"),
            });
        }
    }
    let now = tx.now();
    insert_new(tx, record, now, crate::history::IMPORT)
}

/// Stores a consent not stored before: one feed change (an `upsert` carrying its
/// status), its row, and its first history entry by `actor`.
fn insert_new(
    tx: &mut Tx<'_>,
    record: ConsentRecord,
    at: i64,
    actor: &str,
) -> Result<ConsentView, Error> {
    let version = tx.emit(|version| {
        serde_json::to_string(&FeedLine::Consent(Change {
            version,
            op: ChangeOp::Upsert(record.clone()),
        }))
    })?;
    tx.execute(
        "INSERT INTO consents(id, api_user, customer, status, expires_at, record, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            record.id.as_str().into(),
            record.api_user.to_string().into(),
            record.customer.as_str().into(),
            record.status.as_str().into(),
            record.expires_at.map(OffsetDateTime::unix_timestamp).into(),
            serde_json::to_string(&record)?.into(),
            version.into(),
        ],
    )?;
    append_history(tx, &record.id, at, actor, None, record.status, version)?;
    let history = history(tx, &record.id)?;
    Ok(ConsentView {
        record,
        version,
        history,
    })
}

fn append_history(
    sql: &mut dyn Sql,
    id: &str,
    at: i64,
    actor: &str,
    from: Option<ConsentStatus>,
    to: ConsentStatus,
    version: u64,
) -> Result<(), StoreError> {
    sql.execute(
        "INSERT INTO consent_history(consent_id, at, actor, from_status, to_status, version)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            id.into(),
            at.into(),
            actor.into(),
            from.map(ConsentStatus::as_str).into(),
            to.as_str().into(),
            version.into(),
        ],
    )?;
    Ok(())
}

/// A consent and the version of its last change.
pub fn load(sql: &mut dyn Sql, id: &str) -> Result<Option<(ConsentRecord, u64)>, StoreError> {
    let row = sql.query_opt(
        "SELECT record, version FROM consents WHERE id = $1",
        &[id.into()],
    )?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some((
            serde_json::from_str(&r.text(0)?)?,
            crate::db::version(&r, 1)?,
        ))),
    }
}

/// The history of a consent, oldest first.
pub fn history(sql: &mut dyn Sql, id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
    HistoryEntry::all(
        sql,
        "SELECT at, actor, from_status, to_status, version FROM consent_history
         WHERE consent_id = $1 ORDER BY seq",
        &[id.into()],
    )
}

/// A consent with its history.
pub fn view(sql: &mut dyn Sql, id: &str) -> Result<Option<ConsentView>, StoreError> {
    let Some((record, version)) = load(sql, id)? else {
        return Ok(None);
    };
    let history = history(sql, id)?;
    Ok(Some(ConsentView {
        record,
        version,
        history,
    }))
}

/// Every consent of a customer, newest first, with histories.
pub fn list_by_customer(sql: &mut dyn Sql, customer: &str) -> Result<Vec<ConsentView>, StoreError> {
    let ids = sql.query(
        "SELECT id FROM consents WHERE customer = $1 ORDER BY version DESC",
        &[customer.into()],
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for row in ids {
        if let Some(v) = view(sql, &row.text(0)?)? {
            out.push(v);
        }
    }
    Ok(out)
}

/// What a transition rule decides for the current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Move to the target status.
    Apply,
    /// Already there: answer success, change nothing.
    Noop,
}

/// Moves consent `id` to `to` if `rule` allows it, recording history and a feed
/// change, and closes any open authorisation session once it leaves
/// `awaiting_authorisation`. `rule` sees the current record and decides (it also
/// checks who may see the consent: answer `NotFound` for others).
pub fn transition(
    tx: &mut Tx<'_>,
    id: &str,
    to: ConsentStatus,
    actor: &str,
    rule: impl FnOnce(&ConsentRecord) -> Result<Step, Error>,
) -> Result<ConsentView, Error> {
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let Some((mut record, _)) = load(tx, id)? else {
        return Err(Error::NotFound("consent_not_found"));
    };
    if rule(&record)? == Step::Apply {
        set_status(tx, &mut record, to, actor)?;
    }
    Ok(view(tx, id)?.ok_or_else(|| StoreError::Corrupt(format!("consent {id} vanished")))?)
}

fn set_status(
    tx: &mut Tx<'_>,
    record: &mut ConsentRecord,
    to: ConsentStatus,
    actor: &str,
) -> Result<u64, StoreError> {
    let from = record.status;
    record.status = to;
    let version = tx.emit(|version| {
        serde_json::to_string(&FeedLine::Consent(Change {
            version,
            op: ChangeOp::SetStatus {
                id: record.id.clone(),
                status: to,
            },
        }))
    })?;
    tx.execute(
        "UPDATE consents SET status = $2, record = $3, version = $4 WHERE id = $1",
        &[
            record.id.as_str().into(),
            to.as_str().into(),
            serde_json::to_string(&*record)?.into(),
            version.into(),
        ],
    )?;
    let now = tx.now();
    append_history(tx, &record.id, now, actor, Some(from), to, version)?;
    if let Some(event) = crate::usage::Event::of_status(to) {
        crate::usage::count_event(tx, record.api_user, now, event)?;
    }
    if from == ConsentStatus::AwaitingAuthorisation {
        tx.execute(
            "UPDATE authorisations SET state = 'closed' WHERE consent_id = $1 AND state = 'open'",
            &[record.id.as_str().into()],
        )?;
    }
    Ok(version)
}

/// The rule for withdrawing a consent (API user or customer): awaiting or authorised
/// → revoked; revoked again is a no-op; rejected and expired cannot be revoked.
pub fn revoke_rule(record: &ConsentRecord) -> Result<Step, Error> {
    match record.status {
        ConsentStatus::AwaitingAuthorisation | ConsentStatus::Authorised => Ok(Step::Apply),
        ConsentStatus::Revoked => Ok(Step::Noop),
        s @ (ConsentStatus::Rejected | ConsentStatus::Expired) => Err(Error::Conflict {
            code: "consent_not_revocable",
            detail: format!("the consent is {}", s.as_str()),
        }),
    }
}

/// The rule for a customer's refusal: awaiting → rejected; rejected again is a no-op.
pub fn reject_rule(record: &ConsentRecord, now: i64) -> Result<Step, Error> {
    match record.status {
        ConsentStatus::AwaitingAuthorisation if !is_past(record, now) => Ok(Step::Apply),
        ConsentStatus::Rejected => Ok(Step::Noop),
        s => Err(not_awaiting(s, record, now)),
    }
}

/// Whether the consent's `expires_at` has been reached at `now`.
pub fn is_past(record: &ConsentRecord, now: i64) -> bool {
    record.expires_at.is_some_and(|e| now >= e.unix_timestamp())
}

/// The error for an authorisation step on a consent that no longer awaits one.
pub fn not_awaiting(status: ConsentStatus, record: &ConsentRecord, now: i64) -> Error {
    if status == ConsentStatus::AwaitingAuthorisation && is_past(record, now) {
        return Error::Conflict {
            code: "consent_expired",
            detail: "the consent expired before it was authorised".into(),
        };
    }
    Error::Conflict {
        code: "consent_not_awaiting_authorisation",
        detail: format!("the consent is {}", status.as_str()),
    }
}

/// Marks the customer's successful authorisation (inside the verifying transaction).
pub(crate) fn authorise(tx: &mut Tx<'_>, id: &str) -> Result<ConsentView, Error> {
    let now = tx.now();
    transition(
        tx,
        id,
        ConsentStatus::Authorised,
        crate::history::CUSTOMER,
        |r| {
            if r.status == ConsentStatus::AwaitingAuthorisation && !is_past(r, now) {
                Ok(Step::Apply)
            } else {
                Err(not_awaiting(r.status, r, now))
            }
        },
    )
}

/// Moves up to `limit` consents whose `expires_at` has been reached from
/// `awaiting_authorisation` or `authorised` to `expired`. Returns how many.
pub fn expire_due(tx: &mut Tx<'_>, limit: usize) -> Result<usize, Error> {
    let now = tx.now();
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let ids = tx.query(
        "SELECT id FROM consents WHERE expires_at IS NOT NULL AND expires_at <= $1
         AND status IN ('awaiting_authorisation', 'authorised') ORDER BY expires_at, id LIMIT $2",
        &[now.into(), i64::try_from(limit).unwrap_or(i64::MAX).into()],
    )?;
    for row in &ids {
        let id = row.text(0)?;
        if let Some((mut record, _)) = load(tx, &id)? {
            set_status(
                tx,
                &mut record,
                ConsentStatus::Expired,
                crate::history::EXPIRY,
            )?;
        }
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: ConsentStatus) -> ConsentRecord {
        ConsentRecord {
            id: "c".into(),
            api_user: Bin::parse("180340012345").unwrap(),
            customer: "900101300123".into(),
            providers: vec![Bin::parse("990340000011").unwrap()],
            permissions: vec![Permission::Accounts],
            accounts: None,
            purpose: "p".into(),
            created_at: to_datetime(100),
            expires_at: Some(to_datetime(200)),
            status,
        }
    }

    #[test]
    fn rules_follow_the_status_machine() {
        use ConsentStatus::*;
        assert_eq!(revoke_rule(&record(Authorised)).unwrap(), Step::Apply);
        assert_eq!(
            revoke_rule(&record(AwaitingAuthorisation)).unwrap(),
            Step::Apply
        );
        assert_eq!(revoke_rule(&record(Revoked)).unwrap(), Step::Noop);
        assert!(revoke_rule(&record(Rejected)).is_err());
        assert!(revoke_rule(&record(Expired)).is_err());
        assert_eq!(
            reject_rule(&record(AwaitingAuthorisation), 150).unwrap(),
            Step::Apply
        );
        assert!(matches!(
            reject_rule(&record(AwaitingAuthorisation), 200),
            Err(Error::Conflict {
                code: "consent_expired",
                ..
            })
        ));
        assert!(reject_rule(&record(Authorised), 150).is_err());
    }
}
