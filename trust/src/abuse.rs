//! Abuse limits: how many one-time codes one customer is sent, how many consents one API
//! user creates and keeps waiting, how many unauthenticated requests one source address
//! makes. Every refusal is `429 rate_limited` with `Retry-After`.
//!
//! The customer and API-user limits are sliding windows counted in the database, inside
//! the transaction that does the work, so they hold across restarts and are exact under
//! concurrency (the single writer serialises them). Subjects are stored as keyed hashes:
//! the table holds no customer id. The per-address limit is a GCRA in memory (a restart
//! forgets it, which is harmless at a per-minute scale).

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::db::{Sql, StoreError, Tx, Value};
use crate::error::Error;
use crate::otp;

/// Seconds in the longest window; older events are pruned.
pub const LONGEST_WINDOW_SECS: i64 = 24 * 3600;

/// Retry-After of the open-consent cap: it frees when the customer answers or the API user
/// withdraws, which no clock predicts.
const OPEN_CONSENTS_RETRY_SECS: u64 = 60;

/// The operator's abuse limits (all `> 0`; `trust serve --help` lists the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbuseLimits {
    /// One-time codes sent to one customer in any hour (default 10).
    pub codes_per_customer_hour: u32,
    /// One-time codes sent to one customer in any 24 hours (default 30).
    pub codes_per_customer_day: u32,
    /// Consents one API user creates in any minute (default 120).
    pub consents_per_user_minute: u32,
    /// Consents of one API user in `awaiting_authorisation` at once (default 10,000).
    pub open_consents_per_user: u32,
    /// Unauthenticated requests per source address per minute, sustained (default 120).
    pub address_per_minute: u32,
    /// Unauthenticated requests one source address may make at once (default 60).
    pub address_burst: u32,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        AbuseLimits {
            codes_per_customer_hour: 10,
            codes_per_customer_day: 30,
            consents_per_user_minute: 120,
            open_consents_per_user: 10_000,
            address_per_minute: 120,
            address_burst: 60,
        }
    }
}

impl AbuseLimits {
    /// The first limit that is zero, by its flag name (a zero limit would refuse everything).
    pub fn zero_field(&self) -> Option<&'static str> {
        [
            (self.codes_per_customer_hour, "codes-per-customer-hour"),
            (self.codes_per_customer_day, "codes-per-customer-day"),
            (self.consents_per_user_minute, "consents-per-user-minute"),
            (self.open_consents_per_user, "open-consents-per-user"),
            (self.address_per_minute, "address-per-minute"),
            (self.address_burst, "address-burst"),
        ]
        .into_iter()
        .find(|(v, _)| *v == 0)
        .map(|(_, name)| name)
    }
}

/// What is counted.
#[derive(Debug, Clone, Copy)]
enum Kind {
    CodeSent,
    ConsentCreated,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::CodeSent => "code_sent",
            Kind::ConsentCreated => "consent_created",
        }
    }
}

/// A sliding window: at most `limit` events in any `secs` seconds.
struct Window {
    limit: u32,
    secs: i64,
    what: &'static str,
}

fn subject(kind: Kind, value: &str) -> [u8; 32] {
    otp::hash(kind.as_str().as_bytes(), value)
}

fn limited(retry_after: u64, detail: String) -> Error {
    Error::RateLimited {
        retry_after: retry_after.max(1),
        detail,
    }
}

/// Refuses when any window is full; otherwise records one event (in `tx`, so it counts
/// only if the work commits).
fn charge(
    tx: &mut Tx<'_>,
    kind: Kind,
    subject: &[u8; 32],
    windows: &[Window],
) -> Result<(), Error> {
    let now = tx.now();
    // Exact under concurrency: counted under the feed head's lock (portable SQL rule 7).
    tx.head()?;
    for w in windows {
        // The `limit`-th newest event in the window: once it leaves, one more fits.
        let params: [Value; 4] = [
            kind.as_str().into(),
            subject.to_vec().into(),
            (now - w.secs).into(),
            (i64::from(w.limit) - 1).into(),
        ];
        let nth = tx.query_opt(
            "SELECT at FROM rate_events WHERE kind = $1 AND subject = $2 AND at > $3
             ORDER BY at DESC LIMIT 1 OFFSET $4",
            &params,
        )?;
        if let Some(row) = nth {
            let at = row.int(0)?;
            let retry = u64::try_from(at + w.secs - now).unwrap_or(1);
            return Err(limited(retry, format!("{} ({})", w.what, w.limit)));
        }
    }
    tx.execute(
        "INSERT INTO rate_events(kind, subject, at) VALUES ($1, $2, $3)",
        &[kind.as_str().into(), subject.to_vec().into(), now.into()],
    )?;
    Ok(())
}

/// Counts one one-time code sent to `customer`, or refuses it.
pub fn charge_code(tx: &mut Tx<'_>, customer: &str, limits: &AbuseLimits) -> Result<(), Error> {
    charge(
        tx,
        Kind::CodeSent,
        &subject(Kind::CodeSent, customer),
        &[
            Window {
                limit: limits.codes_per_customer_hour,
                secs: 3600,
                what: "one-time codes per customer per hour",
            },
            Window {
                limit: limits.codes_per_customer_day,
                secs: LONGEST_WINDOW_SECS,
                what: "one-time codes per customer per day",
            },
        ],
    )
}

/// Counts one consent created by `api_user` (a BIN), or refuses it; also refuses while the
/// API user has too many consents awaiting authorisation.
pub fn charge_consent(tx: &mut Tx<'_>, api_user: &str, limits: &AbuseLimits) -> Result<(), Error> {
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let open = open_consents(tx, api_user)?;
    if open >= u64::from(limits.open_consents_per_user) {
        return Err(limited(
            OPEN_CONSENTS_RETRY_SECS,
            format!(
                "consents awaiting authorisation per API user ({})",
                limits.open_consents_per_user
            ),
        ));
    }
    charge(
        tx,
        Kind::ConsentCreated,
        &subject(Kind::ConsentCreated, api_user),
        &[Window {
            limit: limits.consents_per_user_minute,
            secs: 60,
            what: "consents created per API user per minute",
        }],
    )
}

fn open_consents(sql: &mut dyn Sql, api_user: &str) -> Result<u64, StoreError> {
    crate::db::count(
        sql,
        "SELECT COUNT(*) FROM consents WHERE api_user = $1 AND status = 'awaiting_authorisation'",
        &[api_user.into()],
    )
}

/// Deletes events older than the longest window.
pub fn prune(tx: &mut Tx<'_>) -> Result<usize, StoreError> {
    let before = tx.now() - LONGEST_WINDOW_SECS;
    let n = tx.execute("DELETE FROM rate_events WHERE at <= $1", &[before.into()])?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The per-source-address limit of unauthenticated routes (GCRA, in memory).
pub struct AddressLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for AddressLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressLimiter")
            .field("addresses", &self.limiter.len())
            .finish()
    }
}

impl AddressLimiter {
    /// A limiter of `per_minute` sustained with bursts of `burst` (both at least 1).
    pub fn new(per_minute: u32, burst: u32) -> AddressLimiter {
        let one = NonZeroU32::MIN;
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(one))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(one));
        AddressLimiter {
            limiter: RateLimiter::dashmap(quota),
        }
    }

    /// Admits one request from `addr`, or says when to come back.
    pub fn check(&self, addr: IpAddr) -> Result<(), Error> {
        self.limiter.check_key(&addr).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            limited(
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                "unauthenticated requests per source address".into(),
            )
        })
    }

    /// Forgets addresses whose allowance is whole again (bounds the memory).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_limit_refuses_past_the_burst_and_says_when() {
        let l = AddressLimiter::new(60, 3);
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        let b: IpAddr = "127.0.0.10".parse().unwrap();
        for _ in 0..3 {
            l.check(a).unwrap();
        }
        match l.check(a) {
            Err(Error::RateLimited { retry_after, .. }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        l.check(b).expect("another address has its own allowance");
    }

    #[test]
    fn a_zero_limit_is_named() {
        let mut l = AbuseLimits::default();
        assert_eq!(l.zero_field(), None);
        l.address_burst = 0;
        assert_eq!(l.zero_field(), Some("address-burst"));
    }
}
