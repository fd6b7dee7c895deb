//! The budget of failed token verifications: what a flood of invalid tokens may cost.
//!
//! A signature verification is the most expensive step of row 4, and a token that fails it
//! is never cached, so without a bound every forged or replayed token costs one. The
//! budget counts, per connection and per client certificate, the verifications that ran
//! and then failed, with a GCRA of `n` cells replenished at `n` a second (`n` failures at
//! once, then `n` a second). A source whose budget is spent gets `429 rate_limited` for
//! every token the cache cannot answer, until a cell is back; cached tokens and
//! successful verifications never charge it, so a well-behaved client is never throttled.
//!
//! Choices:
//!
//! * The check (is a cell left?) and the charge (a verification failed) are separate, so
//!   successful verifications cost nothing. Between the two the caller verifies
//!   synchronously; a source can overshoot its budget only by the verifications other
//!   threads run at the same moment (at most one per worker thread).
//! * Only sources that failed are tracked. A key whose next cell is already due is
//!   indistinguishable from an unknown one and is swept; a key lives at most about one
//!   second after its last failure. When the table has swept and still holds
//!   [`MAX_KEYS`], a new source is not tracked (the other table still bounds it): the
//!   certificate table, whose keys are registered certificates, is the bound that holds.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::limits::{LimitKind, Limited};

/// Keys a table holds before it first sweeps those whose cells are all back.
const SWEEP_FROM: usize = 1024;
/// Keys a table holds at most.
pub const MAX_KEYS: usize = 65_536;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Who a token verification is charged to.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The client's address and port, which name the connection among the listener's open
    /// ones (`None`: not an IP connection; the certificate's budget still applies).
    pub connection: Option<SocketAddr>,
    /// SHA-256 thumbprint of the connection's client certificate.
    pub certificate: &'a [u8; 32],
    /// When the request is decided (monotonic clock).
    pub at: Instant,
}

/// Per-connection and per-certificate budgets of failed verifications (Send + Sync).
pub struct VerifyBudget {
    origin: Instant,
    connection: Gcra<SocketAddr>,
    certificate: Gcra<[u8; 32]>,
}

impl std::fmt::Debug for VerifyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyBudget")
            .field("connection_per_sec", &self.connection.per_sec)
            .field("certificate_per_sec", &self.certificate.per_sec)
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl VerifyBudget {
    /// Budgets of `per_connection` and `per_certificate` failed verifications a second.
    pub fn new(per_connection: NonZeroU32, per_certificate: NonZeroU32) -> VerifyBudget {
        VerifyBudget {
            origin: Instant::now(),
            connection: Gcra::new(LimitKind::TokenFailuresConnection, per_connection),
            certificate: Gcra::new(LimitKind::TokenFailuresCertificate, per_certificate),
        }
    }

    /// Whether the sources of `charge` may pay for one more verification; the refusal
    /// says which budget is spent and when a cell is back.
    pub fn admit(&self, charge: &Charge<'_>) -> Result<(), Limited> {
        let now = self.nanos(charge.at);
        if let Some(conn) = &charge.connection {
            self.connection.admit(conn, now)?;
        }
        self.certificate.admit(charge.certificate, now)
    }

    /// A verification charged to `charge` ran and failed: one cell of each budget is gone.
    pub fn charge(&self, charge: &Charge<'_>) {
        let now = self.nanos(charge.at);
        if let Some(conn) = &charge.connection {
            self.connection.spend(conn, now);
        }
        self.certificate.spend(charge.certificate, now);
    }

    /// Sources tracked right now (connections, certificates).
    pub fn tracked(&self) -> (usize, usize) {
        (self.connection.len(), self.certificate.len())
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One GCRA table: for each key, the theoretical arrival time of its next cell (TAT, in
/// nanoseconds since the budget's origin).
struct Gcra<K> {
    kind: LimitKind,
    per_sec: u32,
    /// Nanoseconds between cells.
    interval: u64,
    /// How far ahead of now a TAT may be and still admit (`per_sec - 1` cells).
    tolerance: u64,
    table: Mutex<Table<K>>,
    /// `table`'s length, read without the lock: an empty table admits everyone.
    len: AtomicUsize,
}

struct Table<K> {
    tats: HashMap<K, u64>,
    /// Sweep when the table reaches this many keys (doubles past live keys, so sweeping
    /// stays amortised).
    sweep_at: usize,
}

impl<K: Hash + Eq + Copy> Gcra<K> {
    fn new(kind: LimitKind, per_sec: NonZeroU32) -> Gcra<K> {
        let interval = NANOS_PER_SEC / u64::from(per_sec.get());
        Gcra {
            kind,
            per_sec: per_sec.get(),
            interval,
            tolerance: interval * u64::from(per_sec.get() - 1),
            table: Mutex::new(Table {
                tats: HashMap::new(),
                sweep_at: SWEEP_FROM,
            }),
            len: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<K>> {
        // The table holds plain numbers: a panic elsewhere cannot leave it inconsistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn admit(&self, key: &K, now: u64) -> Result<(), Limited> {
        if self.len() == 0 {
            return Ok(());
        }
        let Some(tat) = self.lock().tats.get(key).copied() else {
            return Ok(());
        };
        let allowed_until = now.saturating_add(self.tolerance);
        if tat <= allowed_until {
            return Ok(());
        }
        let wait = Duration::from_nanos(tat - allowed_until);
        Err(Limited {
            kind: self.kind,
            quota: self.per_sec,
            window_secs: 1,
            retry_after_secs: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
        })
    }

    fn spend(&self, key: &K, now: u64) {
        let mut t = self.lock();
        let tat = t.tats.get(key).copied().unwrap_or(now).max(now);
        let next = tat.saturating_add(self.interval);
        if let Some(slot) = t.tats.get_mut(key) {
            *slot = next;
            return;
        }
        if t.tats.len() >= t.sweep_at {
            t.tats.retain(|_, tat| *tat > now);
            t.sweep_at = (t.tats.len() * 2).clamp(SWEEP_FROM, MAX_KEYS);
        }
        if t.tats.len() < MAX_KEYS {
            t.tats.insert(*key, next);
        }
        self.len.store(t.tats.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(conn: u32, cert: u32) -> VerifyBudget {
        VerifyBudget::new(
            NonZeroU32::new(conn).unwrap(),
            NonZeroU32::new(cert).unwrap(),
        )
    }

    /// A charge to loopback `port` (none: no connection key) and `cert`, `millis` after
    /// the budget's origin.
    fn charge<'a>(
        b: &VerifyBudget,
        port: Option<u16>,
        cert: &'a [u8; 32],
        millis: u64,
    ) -> Charge<'a> {
        Charge {
            connection: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            certificate: cert,
            at: b.origin + Duration::from_millis(millis),
        }
    }

    /// Admits and charges `n` failures of `c`.
    fn fail(b: &VerifyBudget, c: &Charge<'_>, n: usize) {
        for _ in 0..n {
            b.admit(c).expect("within the budget");
            b.charge(c);
        }
    }

    #[test]
    fn a_connection_gets_its_burst_then_one_cell_per_interval() {
        let b = budget(4, 100);
        let cert = [1; 32];
        let c = charge(&b, Some(1000), &cert, 0);
        fail(&b, &c, 4);
        let refused = b.admit(&c).unwrap_err();
        assert_eq!(refused.kind, LimitKind::TokenFailuresConnection);
        assert_eq!((refused.quota, refused.window_secs), (4, 1));
        assert_eq!(refused.retry_after_secs, 1);
        // 250 ms later one cell is back, and only one.
        let later = charge(&b, Some(1000), &cert, 250);
        fail(&b, &later, 1);
        assert!(b.admit(&later).is_err());
        // Another connection with the same certificate has its own budget.
        assert!(b.admit(&charge(&b, Some(1001), &cert, 250)).is_ok());
        // A second after the last failure everything is back.
        assert!(b.admit(&charge(&b, Some(1000), &cert, 1250)).is_ok());
    }

    #[test]
    fn a_certificate_is_bounded_across_its_connections() {
        let b = budget(10, 5);
        let cert = [2; 32];
        for port in 0..5 {
            fail(&b, &charge(&b, Some(2000 + port), &cert, 0), 1);
        }
        let refused = b.admit(&charge(&b, Some(3000), &cert, 10)).unwrap_err();
        assert_eq!(refused.kind, LimitKind::TokenFailuresCertificate);
        // Without a connection key only the certificate counts.
        assert!(b.admit(&charge(&b, None, &cert, 10)).is_err());
        assert!(b.admit(&charge(&b, Some(3000), &[3; 32], 10)).is_ok());
    }

    #[test]
    fn admitting_costs_nothing_and_spent_keys_are_swept() {
        let b = budget(1, 1);
        let cert = [4; 32];
        let c = charge(&b, Some(4000), &cert, 0);
        for _ in 0..100 {
            b.admit(&c).expect("admission alone never spends");
        }
        assert_eq!(b.tracked(), (0, 0));
        // Fill up to the first sweep with keys whose cells are back a second later.
        for port in 0..SWEEP_FROM as u16 {
            b.charge(&charge(&b, Some(port), &cert, 0));
        }
        assert_eq!(b.tracked(), (SWEEP_FROM, 1));
        b.charge(&charge(&b, Some(60_000), &cert, 5_000));
        assert_eq!(b.tracked(), (1, 1), "expired sources were not swept");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let b = budget(1, 1);
        let cert = [5; 32];
        let c = charge(&b, None, &cert, 0);
        fail(&b, &c, 1);
        b.charge(&c);
        b.charge(&c);
        // Three cells spent at once with one a second and no tolerance: the next is due
        // in 3 s.
        assert_eq!(b.admit(&c).unwrap_err().retry_after_secs, 3);
        let soon = charge(&b, None, &cert, 2_100);
        assert_eq!(b.admit(&soon).unwrap_err().retry_after_secs, 1);
    }
}
