//! The `leased` mode's cells held by this gateway: batches charged in the shared store
//! and spent here, one per request, until they run out or their lease ends.
//!
//! A lease ends `lease_ms` after the call that charged it was *sent* (so before the store
//! charged it): every cell is spent less than `lease_ms` after its charge, which is what
//! `policy::limits::QuotaSettings::lease` lowers the store's burst by. Two leases of one
//! key merge into one with the earlier end, which keeps that bound for both. Cells taken
//! by a request that a later limit refuses are given back (a refused request spends
//! nothing); cells left when a lease ends are lost, never carried over.
//!
//! A busy key's lease is renewed ahead, off the request path: once half its cells are
//! spent, the request that notices asks for a renewal
//! (one at a time per key), which a background task takes from the store and holds as the
//! *next* batch, spent when the current one runs out or ends. So in steady state no
//! request waits for the store. Each batch keeps its own end.
//!
//! A lease asks for what this gateway is likely to spend in one lifetime, not always the
//! largest batch: one cell at first, twice the last batch when that ran out, what the
//! last lease spent (plus one) when it ended with cells left; never more than the quota's
//! batch. Otherwise a gateway with little traffic would charge the store for cells it
//! lets expire, and the gateways together would be refused below the quota.

use std::time::{Duration, Instant};

use consent_cache::Bin;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use policy::limits::LimitClass;

use super::plan::Key;
use super::store::ItemState;

/// Which limit a lease belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct LeaseKey {
    pub class: LimitClass,
    pub user: Bin,
    pub key: Key,
}

/// Cells held for one limit.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Cells left to spend.
    cells: u32,
    /// When they may no longer be spent.
    ends: Instant,
    /// The store's `remaining` when the cells were charged (what headers advertise
    /// besides the cells held here).
    store_remaining: u32,
    /// The store's reset (µs) when the cells were charged.
    reset_us: u64,
    /// Cells the store granted for this lease (merged leases: together).
    granted: u32,
    /// Cells spent from it.
    spent: u32,
    /// A renewal charged ahead: its cells, end and grant.
    next: Option<Batch>,
    /// A renewal is on its way.
    renewing: bool,
}

/// A renewal's cells, held until the current batch runs out or ends.
#[derive(Debug, Clone, Copy)]
struct Batch {
    cells: u32,
    ends: Instant,
}

impl Lease {
    /// Whether a cell can be spent at `now`.
    fn live(&self, now: Instant) -> bool {
        self.cells > 0 && now < self.ends
    }

    /// Moves a live next batch in when the current one is spent or ended.
    fn promote(&mut self, now: Instant) {
        if let Some(next) = self.next.take().filter(|n| n.cells > 0 && now < n.ends) {
            self.cells = next.cells;
            self.ends = next.ends;
            self.granted = next.cells;
            self.spent = 0;
        }
    }

    /// The batch to renew with now (at most `cap`), if a renewal is due: half the cells
    /// spent, none on its way and none held. (A batch spent more slowly is not renewed
    /// ahead: its key is quiet, and a renewal would charge cells likely to expire.)
    fn renewal(&mut self, now: Instant, lifetime: Duration, cap: u32) -> Option<u32> {
        if self.renewing || self.next.is_some() {
            return None;
        }
        if self.cells.saturating_mul(2) > self.granted {
            return None;
        }
        let left = self.ends.saturating_duration_since(now);
        let elapsed = lifetime.saturating_sub(left).max(Duration::from_millis(1));
        self.renewing = true;
        // What this key spends here in one lifetime, at the rate seen so far.
        let rate = f64::from(self.spent) * lifetime.as_secs_f64() / elapsed.as_secs_f64();
        Some((rate.ceil() as u32).clamp(1, cap.max(1)))
    }

    /// What a request spending from this lease advertises.
    fn advertised(&self) -> Spent {
        Spent {
            remaining: self.store_remaining.saturating_add(self.cells),
            reset_us: self.reset_us,
        }
    }
}

/// A cell spent from a lease: what headers may advertise for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spent {
    /// The store's remaining at the charge plus the cells still held.
    pub remaining: u32,
    /// The store's reset at the charge, in microseconds.
    pub reset_us: u64,
}

/// Every lease of one [`Limits`](super::Limits).
#[derive(Debug)]
pub(super) struct Leases {
    held: DashMap<LeaseKey, Lease>,
    lifetime: Duration,
}

impl Leases {
    /// Leases that last `lifetime` from their call's sending.
    pub(super) fn new(lifetime: Duration) -> Leases {
        Leases {
            held: DashMap::new(),
            lifetime,
        }
    }

    /// Spends one cell of `key`'s lease at `now`, if it has one left and has not ended
    /// (with the batch to renew with, when a renewal is due); else the batch to ask the
    /// store for (1 to `cap`).
    pub(super) fn take(
        &self,
        key: &LeaseKey,
        now: Instant,
        cap: u32,
    ) -> Result<(Spent, Option<u32>), u32> {
        let Some(mut lease) = self.held.get_mut(key) else {
            return Err(1);
        };
        if !lease.live(now) {
            lease.promote(now);
        }
        if lease.live(now) {
            lease.cells -= 1;
            lease.spent += 1;
            let renew = lease.renewal(now, self.lifetime, cap);
            return Ok((lease.advertised(), renew));
        }
        let want = if lease.cells == 0 {
            lease.granted.saturating_mul(2)
        } else {
            lease.spent.saturating_add(1)
        };
        Err(want.clamp(1, cap.max(1)))
    }

    /// Holds a renewal's cells, charged by a call sent at `sent`, as the next batch (or as
    /// the current one when that is spent or ended at `now`).
    pub(super) fn renewed(&self, key: LeaseKey, state: &ItemState, sent: Instant, now: Instant) {
        let batch = Batch {
            cells: state.granted,
            ends: sent + self.lifetime,
        };
        let mut lease = self.held.entry(key).or_insert(Lease {
            cells: 0,
            ends: now,
            store_remaining: state.remaining,
            reset_us: state.reset_us,
            granted: 0,
            spent: 0,
            next: None,
            renewing: false,
        });
        lease.renewing = false;
        lease.store_remaining = state.remaining;
        lease.reset_us = state.reset_us;
        lease.next = Some(match lease.next.filter(|n| n.cells > 0 && now < n.ends) {
            Some(n) => Batch {
                cells: n.cells.saturating_add(batch.cells),
                ends: n.ends.min(batch.ends),
            },
            None => batch,
        });
        if !lease.live(now) {
            lease.promote(now);
        }
    }

    /// A renewal failed: the next request due may ask again.
    pub(super) fn renew_failed(&self, key: &LeaseKey) {
        if let Some(mut lease) = self.held.get_mut(key) {
            lease.renewing = false;
        }
    }

    /// Returns a cell taken by [`take`](Self::take) for a request then refused; nothing
    /// when the lease has ended meanwhile (the cell is lost, as unspent cells are).
    pub(super) fn give_back(&self, key: &LeaseKey, now: Instant) {
        if let Some(mut lease) = self.held.get_mut(key) {
            if now < lease.ends {
                lease.cells = lease.cells.saturating_add(1);
                lease.spent = lease.spent.saturating_sub(1);
            }
        }
    }

    /// Holds the `state.granted - 1` cells left of a batch the store charged for a call
    /// sent at `sent` (one went to the request that asked), at `now`; what the request
    /// advertises.
    pub(super) fn grant(
        &self,
        key: LeaseKey,
        state: &ItemState,
        sent: Instant,
        now: Instant,
    ) -> Spent {
        let fresh = Lease {
            cells: state.granted.saturating_sub(1),
            ends: sent + self.lifetime,
            store_remaining: state.remaining,
            reset_us: state.reset_us,
            granted: state.granted,
            spent: 1,
            next: None,
            renewing: false,
        };
        match self.held.entry(key) {
            Entry::Vacant(v) => {
                v.insert(fresh);
                fresh.advertised()
            }
            Entry::Occupied(mut o) => {
                let lease = o.get_mut();
                if lease.ends <= now || lease.cells == 0 {
                    *lease = Lease {
                        next: lease.next,
                        renewing: lease.renewing,
                        ..fresh
                    };
                } else {
                    // Another call's lease is live: hold both batches until the earlier end.
                    lease.cells = lease.cells.saturating_add(fresh.cells);
                    lease.granted = lease.granted.saturating_add(fresh.granted);
                    lease.spent = lease.spent.saturating_add(1);
                    lease.ends = lease.ends.min(fresh.ends);
                    lease.store_remaining = fresh.store_remaining;
                    lease.reset_us = fresh.reset_us;
                }
                lease.advertised()
            }
        }
    }

    /// Forgets ended leases (and ended next batches).
    pub(super) fn retain_live(&self, now: Instant) {
        self.held
            .retain(|_, lease| now < lease.ends || lease.next.is_some_and(|n| now < n.ends));
    }

    /// Cells held now for `key` (tests).
    #[cfg(test)]
    pub(super) fn held(&self, key: &LeaseKey) -> u32 {
        self.held.get(key).map_or(0, |l| l.cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LeaseKey {
        LeaseKey {
            class: LimitClass::User,
            user: Bin::parse("990340000011").expect("bin"),
            key: Key::User,
        }
    }

    fn state(granted: u32) -> ItemState {
        ItemState {
            remaining: 7,
            reset_us: 1_000,
            granted,
        }
    }

    #[test]
    fn a_lease_is_spent_cell_by_cell_until_it_ends() {
        let leases = Leases::new(Duration::from_millis(20));
        let t0 = Instant::now();
        assert_eq!(
            leases.take(&key(), t0, 8),
            Err(1),
            "no lease yet: one cell first"
        );
        let first = leases.grant(key(), &state(3), t0, t0);
        assert_eq!(first.remaining, 7 + 2);
        assert_eq!(leases.take(&key(), t0, 8).map(|s| s.0.remaining), Ok(8));
        assert_eq!(leases.take(&key(), t0, 8).map(|s| s.0.remaining), Ok(7));
        // Three cells, one per request; all spent: twice as many next time.
        assert_eq!(leases.take(&key(), t0, 8), Err(6));
        assert_eq!(leases.take(&key(), t0, 4), Err(4), "never over the batch");
        // A refused request's cell comes back; at the lease's end nothing is spent.
        leases.give_back(&key(), t0);
        let end = t0 + Duration::from_millis(20);
        // Two of three spent when it ended: ask for what was spent, plus one.
        assert_eq!(leases.take(&key(), end, 8), Err(3));
        leases.give_back(&key(), end);
        assert_eq!(
            leases.held(&key()),
            1,
            "a cell given back after the end is lost"
        );
        leases.retain_live(end);
        assert_eq!(leases.held(&key()), 0);
    }

    #[test]
    fn a_busy_lease_is_renewed_ahead_and_the_renewal_spent_after_it() {
        let leases = Leases::new(Duration::from_millis(20));
        let t0 = Instant::now();
        leases.grant(key(), &state(8), t0, t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        // More than half the cells left: no renewal yet.
        assert_eq!(leases.take(&key(), at(1), 100).map(|s| s.1), Ok(None));
        assert_eq!(leases.take(&key(), at(2), 100).map(|s| s.1), Ok(None));
        // The fourth of eight cells: due. 4 cells in 2 ms is 40 in a lifetime.
        assert_eq!(leases.take(&key(), at(2), 100).map(|s| s.1), Ok(Some(40)));
        // One renewal at a time.
        assert_eq!(leases.take(&key(), at(3), 100).map(|s| s.1), Ok(None));
        let sent = at(3);
        leases.renewed(key(), &state(40), sent, at(4));
        assert_eq!(leases.held(&key()), 3, "the current batch first");
        for ms in 4..7 {
            assert!(leases.take(&key(), at(ms), 100).is_ok());
        }
        // The renewal takes over when the current batch is spent, and ends 20 ms after
        // its own call was sent, not with the first batch.
        assert!(matches!(leases.take(&key(), at(21), 100), Ok((_, None))));
        assert_eq!(leases.held(&key()), 39);
        assert!(leases.take(&key(), at(23), 100).is_err());
        // A failed renewal lets the next request due ask again; one at a time.
        leases.grant(key(), &state(4), at(30), at(30));
        assert!(matches!(leases.take(&key(), at(40), 100), Ok((_, Some(_)))));
        assert!(matches!(leases.take(&key(), at(41), 100), Ok((_, None))));
        leases.renew_failed(&key());
        assert!(matches!(leases.take(&key(), at(42), 100), Ok((_, Some(_)))));
    }

    #[test]
    fn two_live_leases_merge_and_end_with_the_earlier() {
        let leases = Leases::new(Duration::from_millis(20));
        let t0 = Instant::now();
        leases.grant(key(), &state(5), t0, t0);
        let later = t0 + Duration::from_millis(5);
        leases.grant(key(), &state(4), later, later);
        assert_eq!(leases.held(&key()), 4 + 3);
        // The merged cells end with the first lease: none is spent 20 ms after its charge.
        assert!(leases
            .take(&key(), t0 + Duration::from_millis(19), 8)
            .is_ok());
        assert!(leases
            .take(&key(), t0 + Duration::from_millis(20), 8)
            .is_err());
        // A lease after the end replaces the ended one.
        let fresh = t0 + Duration::from_millis(30);
        leases.grant(key(), &state(2), fresh, fresh);
        assert_eq!(leases.held(&key()), 1);
        assert!(leases
            .take(&key(), fresh + Duration::from_millis(19), 8)
            .is_ok());
    }
}
