//! The customer's side: development customer sessions (the first factor), and
//! authorisation sessions in which a one-time code (the second factor) is sent and
//! checked under the operator's limits.
//!
//! Limits per authorisation session: at most [`Limits::max_codes`] codes sent (the
//! first plus resends; a resend replaces the previous code), at most
//! [`Limits::max_attempts`] verification attempts in all (a malformed, wrong or
//! expired code each counts), each code valid for [`Limits::code_ttl_secs`]. Starting
//! a new session supersedes the open one; at most [`Limits::max_sessions`] sessions
//! per consent, so the limits cannot be reset by starting over. Every counter is
//! committed before the answer, so a restart resets nothing.

use serde::Serialize;
use time::OffsetDateTime;

use consent_cache::ConsentStatus;

use crate::clock::to_datetime;
use crate::consents::{self, ConsentView};
use crate::db::{Sql, StoreError, Tx, Value};
use crate::error::{Error, OtpState};
use crate::otp;

/// The operator's rules for authorisation sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Codes sent per session (default 2).
    pub max_codes: u32,
    /// Verification attempts per session (default 4).
    pub max_attempts: u32,
    /// Lifetime of a code in seconds (default 300).
    pub code_ttl_secs: i64,
    /// Authorisation sessions per consent (default 3).
    pub max_sessions: u32,
    /// Lifetime of a development customer session in seconds (default 1800).
    pub customer_session_secs: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_codes: 2,
            max_attempts: 4,
            code_ttl_secs: 300,
            max_sessions: 3,
            customer_session_secs: 1800,
        }
    }
}

/// An authorisation session as the customer sees it.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorisationView {
    /// The session id.
    pub id: String,
    /// The consent being authorised.
    pub consent_id: String,
    /// `open`, `succeeded`, `failed`, `superseded` or `closed`.
    pub state: String,
    /// Codes sent so far.
    pub codes_sent: u32,
    /// Codes that can still be sent.
    pub codes_left: u32,
    /// Verification attempts left.
    pub attempts_left: u32,
    /// When the current code stops being accepted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub code_expires_at: Option<OffsetDateTime>,
}

/// A code to deliver after the transaction that stored its hash committed.
#[derive(Debug)]
pub struct Outgoing {
    /// The session as it now stands.
    pub view: AuthorisationView,
    /// The customer to notify.
    pub customer: String,
    /// The code in clear.
    pub code: otp::Issued,
}

/// What a verification did; a failure is committed too (the attempt counts).
#[derive(Debug)]
pub enum Verified {
    /// The consent is now `authorised`.
    Authorised(ConsentView),
    /// The attempt failed; the error says why and what is left.
    Failed(Error),
}

/// An authorisation session as stored.
struct Session {
    id: String,
    consent_id: String,
    customer: String,
    state: String,
    codes_sent: u32,
    attempts: u32,
    salt: Option<Vec<u8>>,
    hash: Option<Vec<u8>>,
    code_expires_at: Option<i64>,
}

impl Session {
    fn view(&self, limits: &Limits) -> AuthorisationView {
        AuthorisationView {
            id: self.id.clone(),
            consent_id: self.consent_id.clone(),
            state: self.state.clone(),
            codes_sent: self.codes_sent,
            codes_left: limits.max_codes.saturating_sub(self.codes_sent),
            attempts_left: limits.max_attempts.saturating_sub(self.attempts),
            code_expires_at: self.code_expires_at.map(to_datetime),
        }
    }

    fn otp_state(&self, limits: &Limits) -> OtpState {
        OtpState {
            attempts_left: limits.max_attempts.saturating_sub(self.attempts),
            codes_left: limits.max_codes.saturating_sub(self.codes_sent),
        }
    }
}

/// A stored counter (never negative, never past `u32`).
fn counter(r: &crate::db::Row, i: usize) -> Result<u32, StoreError> {
    let v = r.int(i)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {i}: counter {v}")))
}

fn load(sql: &mut dyn Sql, id: &str) -> Result<Option<Session>, StoreError> {
    let Some(r) = sql.query_opt(
        "SELECT id, consent_id, customer, state, codes_sent, attempts, code_salt, code_hash,
                code_expires_at FROM authorisations WHERE id = $1",
        &[id.into()],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Session {
        id: r.text(0)?,
        consent_id: r.text(1)?,
        customer: r.text(2)?,
        state: r.text(3)?,
        codes_sent: counter(&r, 4)?,
        attempts: counter(&r, 5)?,
        salt: r.opt_bytes(6)?,
        hash: r.opt_bytes(7)?,
        code_expires_at: r.opt_int(8)?,
    }))
}

/// Starts an authorisation session for `customer`'s consent and stores the first code.
pub fn start(
    tx: &mut Tx<'_>,
    customer: &str,
    consent_id: &str,
    limits: &Limits,
    rng: &ring::rand::SystemRandom,
) -> Result<Outgoing, Error> {
    let now = tx.now();
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let Some((record, _)) = consents::load(tx, consent_id)? else {
        return Err(Error::NotFound("consent_not_found"));
    };
    if record.customer != customer {
        return Err(Error::NotFound("consent_not_found"));
    }
    if record.status != ConsentStatus::AwaitingAuthorisation || consents::is_past(&record, now) {
        return Err(consents::not_awaiting(record.status, &record, now));
    }
    let sessions = crate::db::count(
        tx,
        "SELECT COUNT(*) FROM authorisations WHERE consent_id = $1",
        &[consent_id.into()],
    )?;
    if sessions >= u64::from(limits.max_sessions) {
        return Err(Error::Limit {
            code: "authorisation_sessions_exhausted",
            otp: None,
        });
    }
    tx.execute(
        "UPDATE authorisations SET state = 'superseded' WHERE consent_id = $1 AND state = 'open'",
        &[consent_id.into()],
    )?;
    let code = otp::issue(rng).map_err(|e| Error::Signing(e.to_string()))?;
    let row = Session {
        id: uuid::Uuid::new_v4().to_string(),
        consent_id: consent_id.to_owned(),
        customer: customer.to_owned(),
        state: "open".into(),
        codes_sent: 1,
        attempts: 0,
        salt: Some(code.salt.to_vec()),
        hash: Some(code.hash.to_vec()),
        code_expires_at: Some(now + limits.code_ttl_secs),
    };
    insert(tx, &row, now)?;
    Ok(Outgoing {
        view: row.view(limits),
        customer: customer.to_owned(),
        code,
    })
}

/// Stores a new open session with its first code.
fn insert(tx: &mut Tx<'_>, row: &Session, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO authorisations(id, consent_id, customer, created_at, state, codes_sent,
             attempts, code_salt, code_hash, code_expires_at)
         VALUES ($1, $2, $3, $4, 'open', 1, 0, $5, $6, $7)",
        &[
            row.id.as_str().into(),
            row.consent_id.as_str().into(),
            row.customer.as_str().into(),
            now.into(),
            row.salt.clone().into(),
            row.hash.clone().into(),
            row.code_expires_at.into(),
        ],
    )?;
    Ok(())
}

fn open_session(
    tx: &mut Tx<'_>,
    customer: &str,
    id: &str,
    limits: &Limits,
) -> Result<Session, Error> {
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let Some(row) = load(tx, id)? else {
        return Err(Error::NotFound("authorisation_not_found"));
    };
    if row.customer != customer {
        return Err(Error::NotFound("authorisation_not_found"));
    }
    match row.state.as_str() {
        "open" => Ok(row),
        "failed" => Err(Error::Limit {
            code: "otp_attempts_exhausted",
            otp: Some(row.otp_state(limits)),
        }),
        other => Err(Error::Conflict {
            code: "authorisation_closed",
            detail: format!("the authorisation session is {other}"),
        }),
    }
}

/// Sends another code in an open session (it replaces the previous one).
pub fn resend(
    tx: &mut Tx<'_>,
    customer: &str,
    id: &str,
    limits: &Limits,
    rng: &ring::rand::SystemRandom,
) -> Result<Outgoing, Error> {
    let now = tx.now();
    let mut row = open_session(tx, customer, id, limits)?;
    if row.codes_sent >= limits.max_codes {
        return Err(Error::Limit {
            code: "otp_resend_limit",
            otp: Some(row.otp_state(limits)),
        });
    }
    let Some((record, _)) = consents::load(tx, &row.consent_id)? else {
        return Err(Error::NotFound("consent_not_found"));
    };
    if record.status != ConsentStatus::AwaitingAuthorisation || consents::is_past(&record, now) {
        return Err(consents::not_awaiting(record.status, &record, now));
    }
    let code = otp::issue(rng).map_err(|e| Error::Signing(e.to_string()))?;
    row.codes_sent += 1;
    row.code_expires_at = Some(now + limits.code_ttl_secs);
    tx.execute(
        "UPDATE authorisations SET codes_sent = $2, code_salt = $3, code_hash = $4,
             code_expires_at = $5 WHERE id = $1",
        &[
            row.id.as_str().into(),
            row.codes_sent.into(),
            code.salt.to_vec().into(),
            code.hash.to_vec().into(),
            row.code_expires_at.into(),
        ],
    )?;
    Ok(Outgoing {
        view: row.view(limits),
        customer: customer.to_owned(),
        code,
    })
}

/// Checks a code. Counts the attempt whatever the outcome; on success authorises
/// the consent in the same transaction.
pub fn verify(
    tx: &mut Tx<'_>,
    customer: &str,
    id: &str,
    code: &str,
    limits: &Limits,
) -> Result<Verified, Error> {
    let now = tx.now();
    let mut row = open_session(tx, customer, id, limits)?;
    let Some((record, _)) = consents::load(tx, &row.consent_id)? else {
        return Err(Error::NotFound("consent_not_found"));
    };
    if record.status != ConsentStatus::AwaitingAuthorisation || consents::is_past(&record, now) {
        tx.execute(
            "UPDATE authorisations SET state = 'closed' WHERE id = $1",
            &[row.id.as_str().into()],
        )?;
        return Ok(Verified::Failed(consents::not_awaiting(
            record.status,
            &record,
            now,
        )));
    }
    row.attempts += 1;
    let expired = row.code_expires_at.is_none_or(|e| now >= e);
    let right = !expired
        && match (&row.salt, &row.hash) {
            (Some(salt), Some(hash)) => otp::matches(salt, hash, code),
            _ => false,
        };
    if right {
        tx.execute(
            "UPDATE authorisations SET attempts = $2, state = 'succeeded', code_salt = NULL,
                 code_hash = NULL WHERE id = $1",
            &[row.id.as_str().into(), row.attempts.into()],
        )?;
        return Ok(Verified::Authorised(consents::authorise(
            tx,
            &row.consent_id,
        )?));
    }
    let exhausted = row.attempts >= limits.max_attempts;
    if exhausted {
        row.state = "failed".into();
    }
    tx.execute(
        "UPDATE authorisations SET attempts = $2, state = $3 WHERE id = $1",
        &[
            row.id.as_str().into(),
            row.attempts.into(),
            row.state.as_str().into(),
        ],
    )?;
    Ok(Verified::Failed(failed_attempt(
        row.otp_state(limits),
        exhausted,
        expired,
    )))
}

/// The answer to a failed verification: the attempts are used up, or the code expired,
/// or it was wrong.
fn failed_attempt(otp: OtpState, exhausted: bool, expired: bool) -> Error {
    if exhausted {
        Error::Limit {
            code: "otp_attempts_exhausted",
            otp: Some(otp),
        }
    } else if expired {
        Error::Otp {
            code: "otp_expired",
            otp,
        }
    } else {
        Error::Otp {
            code: "otp_invalid",
            otp,
        }
    }
}

/// An authorisation session, if it is this customer's.
pub fn view(
    sql: &mut dyn Sql,
    customer: &str,
    id: &str,
    limits: &Limits,
) -> Result<Option<AuthorisationView>, StoreError> {
    Ok(load(sql, id)?
        .filter(|r| r.customer == customer)
        .map(|r| r.view(limits)))
}

/// Whether `customer` is an acceptable customer id (as in a consent record).
pub fn valid_customer(customer: &str) -> bool {
    !customer.is_empty()
        && customer.len() <= consent_cache::MAX_CUSTOMER_LEN
        && customer.bytes().all(|b| b.is_ascii_graphic())
}

fn token_hash(token: &str) -> [u8; 32] {
    otp::hash(b"customer-session", token)
}

/// A new development customer session: a random bearer value, stored hashed.
pub fn create_customer_session(
    tx: &mut Tx<'_>,
    customer: &str,
    limits: &Limits,
    rng: &ring::rand::SystemRandom,
) -> Result<(String, OffsetDateTime), Error> {
    use base64::Engine as _;
    let now = tx.now();
    let bytes = otp::random_bytes::<32>(rng).map_err(|e| Error::Signing(e.to_string()))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let expires = now + limits.customer_session_secs;
    tx.execute(
        "INSERT INTO customer_sessions(token_hash, customer, created_at, expires_at)
         VALUES ($1, $2, $3, $4)",
        &[
            token_hash(&token).to_vec().into(),
            customer.into(),
            now.into(),
            expires.into(),
        ],
    )?;
    Ok((token, to_datetime(expires)))
}

/// The customer a session bearer value belongs to, if it is live at `now`.
pub fn customer_of_session(
    sql: &mut dyn Sql,
    token: &str,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let params: [Value; 2] = [token_hash(token).to_vec().into(), now.into()];
    sql.query_opt(
        "SELECT customer FROM customer_sessions WHERE token_hash = $1 AND expires_at > $2",
        &params,
    )?
    .map(|r| r.text(0))
    .transpose()
}

/// Deletes customer sessions that ended before `now`.
pub fn purge_customer_sessions(tx: &mut Tx<'_>) -> Result<usize, StoreError> {
    let now = tx.now();
    let n = tx.execute(
        "DELETE FROM customer_sessions WHERE expires_at <= $1",
        &[now.into()],
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}
