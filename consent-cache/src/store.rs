//! [`ConsentStore`]: the shared, concurrently readable consent map.
//!
//! Layout: 256 shards chosen by the id's hash. Each shard holds a compact,
//! immutable base [`Segment`] (built at load or compaction) and a small overlay
//! table of single-record segments for consents changed since, with the replaced
//! base rows marked dead. Readers take a shard's read lock only for one probe and
//! leave with a refcounted [`Consent`]; the single writer (deltas, expiry) takes a
//! shard's write lock only to swap table entries. When a shard's overlay and dead
//! rows grow past an eighth of it, the writer rebuilds that shard's base outside
//! the lock and swaps it in, so memory stays compact under a long-running feed.

use crate::change::{Applied, ApplyError, BatchError, BatchSummary, Change, ChangeOp};
use crate::consent::Consent;
use crate::record::{ConsentRecord, RecordError, RecordView};
use crate::segment::{
    build_shards, shard_of, BuildError, Segment, SegmentBuilder, ShardBuilders, SHARDS,
};
use crate::types::ConsentStatus;
use foldhash::fast::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Compaction runs when a shard's overlay plus dead rows exceed
/// `COMPACT_MIN + live / COMPACT_DIV`.
const COMPACT_MIN: usize = 64;
const COMPACT_DIV: usize = 8;

/// Why a store could not be built from records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The record at `index` (0-based position in the input) is invalid.
    #[error("record #{index}: {source}")]
    Invalid {
        /// Position in the input.
        index: usize,
        /// What is wrong.
        #[source]
        source: RecordError,
    },
    /// The record at `index` repeats the id of the record at `first`.
    #[error("record #{index}: duplicate consent id {id:?} (first seen at record #{first})")]
    Duplicate {
        /// The repeated id.
        id: String,
        /// Position of the first record with this id.
        first: usize,
        /// Position of the repeat.
        index: usize,
    },
    /// A shard's arena would pass 4 GiB.
    #[error("store capacity exceeded")]
    Capacity,
}

/// Keeps each shard's lock on its own cache lines, so readers of neighbouring
/// shards on different cores do not invalidate each other.
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Default)]
struct Shard {
    base: Arc<Segment>,
    /// Rows of `base` marked dead.
    dead: usize,
    /// Consents changed since `base` was built, keyed by the id's hash.
    overlay: HashTable<Consent>,
}

impl Shard {
    #[inline]
    fn lookup(&self, hash: u64, id: &str) -> Option<Consent> {
        if !self.overlay.is_empty() {
            if let Some(c) = self.overlay.find(hash, |c| c.id() == id) {
                return Some(c.clone());
            }
        }
        let i = self.base.find(hash, id)?;
        Some(Consent::new(Arc::clone(&self.base), i))
    }

    fn needs_compaction(&self) -> bool {
        let live = self.base.len() - self.dead;
        self.overlay.len() + self.dead > COMPACT_MIN + live / COMPACT_DIV
    }
}

/// Proof that the caller holds the writer lock.
type Writer<'a> = MutexGuard<'a, ()>;

/// The hub's in-memory consent store. Share it behind an `Arc`; every method takes `&self`.
pub struct ConsentStore {
    shards: Box<[Padded<RwLock<Shard>>]>,
    hasher: RandomState,
    version: AtomicU64,
    len: AtomicUsize,
    /// Serialises writers (deltas, expiry, consistent views); readers never take it.
    writer: Mutex<()>,
}

/// A consistent copy of the store's structure: shares the segments, copies the
/// dead bits, so later changes do not show through.
pub(crate) struct View {
    pub version: u64,
    shards: Vec<ShardView>,
}

struct ShardView {
    base: Arc<Segment>,
    dead: Vec<u64>,
    overlay: Vec<Consent>,
}

impl View {
    /// Calls `f` with every consent of the view.
    pub(crate) fn for_each<E>(
        &self,
        mut f: impl FnMut(&RecordView<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for sv in &self.shards {
            for i in live_rows(&sv.base, &sv.dead) {
                f(&sv.base.view(i))?;
            }
            for c in &sv.overlay {
                f(&c.segment().view(c.index()))?;
            }
        }
        Ok(())
    }

    fn into_consents(self) -> impl Iterator<Item = Consent> {
        self.shards.into_iter().flat_map(|sv| {
            let ShardView {
                base,
                dead,
                overlay,
            } = sv;
            let rows: Vec<u32> = live_rows(&base, &dead).collect();
            rows.into_iter()
                .map(move |i| Consent::new(Arc::clone(&base), i))
                .chain(overlay)
        })
    }
}

fn live_rows<'a>(base: &'a Segment, dead: &'a [u64]) -> impl Iterator<Item = u32> + 'a {
    // A segment's row count fits u32 (checked when it was built).
    (0..base.len() as u32).filter(move |&i| {
        dead.get(i as usize / 64)
            .is_none_or(|w| w & (1 << (i % 64)) == 0)
    })
}

fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
}

impl Default for ConsentStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ConsentStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsentStore")
            .field("len", &self.len())
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl ConsentStore {
    /// An empty store at version 0.
    pub fn new() -> Self {
        Self::from_segments(Vec::new(), RandomState::default(), 0)
    }

    /// Builds a store (at version 0) from records, validating each one.
    pub fn from_records(
        records: impl IntoIterator<Item = ConsentRecord>,
    ) -> Result<Self, StoreError> {
        let hasher = RandomState::default();
        let records = records.into_iter();
        let mut builders = ShardBuilders::new(records.size_hint().0);
        let mut scratch = String::new();
        for (index, r) in records.enumerate() {
            let view = r
                .view(&mut scratch)
                .and_then(|v| v.validate().map(|()| v))
                .map_err(|source| StoreError::Invalid { index, source })?;
            builders
                .push(&hasher, &view, index as u64)
                .map_err(|_| StoreError::Capacity)?;
        }
        let segments =
            build_shards(vec![builders], &hasher, worker_threads()).map_err(|e| match e {
                BuildError::Duplicate(d) => StoreError::Duplicate {
                    id: d.id,
                    first: d.first as usize,
                    index: d.second as usize,
                },
                BuildError::Capacity | BuildError::Panicked => StoreError::Capacity,
            })?;
        Ok(Self::from_segments(segments, hasher, 0))
    }

    /// Assembles a store from built shard segments (empty = an empty store).
    pub(crate) fn from_segments(segments: Vec<Segment>, hasher: RandomState, version: u64) -> Self {
        let len = segments.iter().map(Segment::len).sum();
        let mut segments = segments.into_iter();
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(RwLock::new(Shard {
                    base: Arc::new(segments.next().unwrap_or_default()),
                    dead: 0,
                    overlay: HashTable::new(),
                }))
            })
            .collect();
        ConsentStore {
            shards,
            hasher,
            version: AtomicU64::new(version),
            len: AtomicUsize::new(len),
            writer: Mutex::new(()),
        }
    }

    pub(crate) fn worker_threads() -> usize {
        worker_threads()
    }

    #[inline]
    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[shard]
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard]
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> Writer<'_> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks a consent up by id. Allocation-free: one hash, one shard read lock,
    /// one probe, one reference-count increment.
    #[inline]
    pub fn get(&self, id: &str) -> Option<Consent> {
        let hash = self.hasher.hash_one(id);
        self.read(shard_of(hash)).lookup(hash, id)
    }

    /// Number of consents held (any status).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the store holds no consent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The change-feed version the store reflects (0 for a store built from records).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Every consent, as of one consistent moment (the iterator holds no lock;
    /// changes applied meanwhile do not show; taking the view waits for a batch
    /// being applied). Allocates; not for the request path.
    pub fn iter(&self) -> impl Iterator<Item = Consent> {
        self.view().into_consents()
    }

    /// A consistent view: taken under the writer lock, so it matches `version`.
    pub(crate) fn view(&self) -> View {
        let _w = self.lock_writer();
        let shards = (0..SHARDS)
            .map(|s| {
                let g = self.read(s);
                ShardView {
                    base: Arc::clone(&g.base),
                    dead: g.base.dead_bits(),
                    overlay: g.overlay.iter().cloned().collect(),
                }
            })
            .collect();
        View {
            version: self.version(),
            shards,
        }
    }

    /// Applies one change of the feed. A change whose version is not newer than
    /// [`ConsentStore::version`] is ignored and reported as [`Applied::Stale`], so
    /// replaying a feed is harmless. On error nothing changes, not even the version.
    pub fn apply(&self, change: Change) -> Result<Applied, ApplyError> {
        let w = self.lock_writer();
        self.apply_locked(&w, change)
    }

    /// Applies changes in order under one writer lock; stops at the first error
    /// (see [`BatchError`] for what was applied by then).
    pub fn apply_batch(
        &self,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<BatchSummary, BatchError> {
        let w = self.lock_writer();
        let mut done = BatchSummary::default();
        for (index, change) in changes.into_iter().enumerate() {
            match self.apply_locked(&w, change) {
                Ok(Applied::Stale) => done.stale += 1,
                Ok(_) => done.applied += 1,
                Err(source) => {
                    return Err(BatchError {
                        index,
                        done,
                        source,
                    })
                }
            }
        }
        Ok(done)
    }

    fn apply_locked(&self, w: &Writer<'_>, change: Change) -> Result<Applied, ApplyError> {
        let version = change.version;
        if version <= self.version() {
            return Ok(Applied::Stale);
        }
        let applied = match change.op {
            ChangeOp::Upsert(record) => {
                let mut scratch = String::new();
                let view = record
                    .view(&mut scratch)
                    .and_then(|v| v.validate().map(|()| v))
                    .map_err(|source| ApplyError::Invalid {
                        version,
                        id: record.id.clone(),
                        source,
                    })?;
                let seg = Segment::single(&view).map_err(|_| ApplyError::Capacity { version })?;
                self.put(w, Consent::new(Arc::new(seg), 0))
            }
            ChangeOp::Remove { id } => self.remove(w, &id),
            ChangeOp::SetStatus { id, status } => {
                let current = self
                    .get(&id)
                    .ok_or(ApplyError::UnknownConsent { version, id })?;
                self.restatus(w, &current, status)
                    .map_err(|_| ApplyError::Capacity { version })?;
                Applied::StatusSet
            }
        };
        self.version.store(version, Ordering::Release);
        Ok(applied)
    }

    /// Stores `consent` in its shard's overlay, hiding any base row with its id.
    fn put(&self, w: &Writer<'_>, consent: Consent) -> Applied {
        let key = consent.clone();
        let id = key.id();
        let hash = self.hasher.hash_one(id);
        let s = shard_of(hash);
        let (applied, replaced) = {
            let mut g = self.write(s);
            let shard = &mut *g;
            let hasher = &self.hasher;
            match shard
                .overlay
                .entry(hash, |c| c.id() == id, |c| hasher.hash_one(c.id()))
            {
                Entry::Occupied(mut e) => (
                    Applied::Replaced,
                    Some(std::mem::replace(e.get_mut(), consent)),
                ),
                Entry::Vacant(e) => {
                    e.insert(consent);
                    match shard.base.find(hash, id) {
                        Some(i) => {
                            shard.base.mark_dead(i);
                            shard.dead += 1;
                            (Applied::Replaced, None)
                        }
                        None => (Applied::Inserted, None),
                    }
                }
            }
        };
        // The replaced handle may be the last reference to its segment: free it outside the lock.
        drop(replaced);
        if applied == Applied::Inserted {
            self.len.fetch_add(1, Ordering::AcqRel);
        }
        self.maybe_compact(w, s);
        applied
    }

    fn remove(&self, w: &Writer<'_>, id: &str) -> Applied {
        let hash = self.hasher.hash_one(id);
        let s = shard_of(hash);
        let (applied, removed) = {
            let mut g = self.write(s);
            let shard = &mut *g;
            if let Ok(e) = shard.overlay.find_entry(hash, |c| c.id() == id) {
                (Applied::Removed, Some(e.remove().0))
            } else if let Some(i) = shard.base.find(hash, id) {
                shard.base.mark_dead(i);
                shard.dead += 1;
                (Applied::Removed, None)
            } else {
                (Applied::Absent, None)
            }
        };
        drop(removed);
        if applied == Applied::Removed {
            self.len.fetch_sub(1, Ordering::AcqRel);
            self.maybe_compact(w, s);
        }
        applied
    }

    /// Replaces `current` by a copy with another status.
    fn restatus(
        &self,
        w: &Writer<'_>,
        current: &Consent,
        status: ConsentStatus,
    ) -> Result<(), crate::segment::CapacityError> {
        let mut view = current.segment().view(current.index());
        view.status = status;
        let seg = Segment::single(&view)?;
        self.put(w, Consent::new(Arc::new(seg), 0));
        Ok(())
    }

    /// Marks every `authorised` consent whose `expires_at` is at or before
    /// `now_unix` as `expired`; returns how many changed. For the control plane:
    /// the request path compares `expires_at` with its own clock and does not
    /// depend on this having run. The feed version does not change.
    pub fn expire_due(&self, now_unix: i64) -> usize {
        let w = self.lock_writer();
        let is_due = |status: ConsentStatus, expires_at: Option<i64>| {
            status == ConsentStatus::Authorised && expires_at.is_some_and(|e| now_unix >= e)
        };
        let mut flipped = 0;
        for s in 0..SHARDS {
            let (due, bulk): (Vec<Consent>, bool) = {
                let g = self.read(s);
                let base = &g.base;
                let from_base = (0..base.len() as u32)
                    .filter(|&i| {
                        let row = base.row(i);
                        is_due(row.status, row.expires_at()) && !base.is_dead(i)
                    })
                    .map(|i| Consent::new(Arc::clone(base), i));
                let from_overlay = g
                    .overlay
                    .iter()
                    .filter(|c| is_due(c.status(), c.expires_at()))
                    .cloned();
                let due: Vec<Consent> = from_base.chain(from_overlay).collect();
                // Past the compaction threshold, rebuilding the shard once is cheaper
                // than one overlay entry per consent followed by a compaction.
                let bulk = due.len() > COMPACT_MIN + (g.base.len() - g.dead) / COMPACT_DIV;
                (due, bulk)
            };
            if due.is_empty() {
                continue;
            }
            if bulk
                && self.rebuild(&w, s, |v| {
                    is_due(v.status, v.expires_at).then_some(ConsentStatus::Expired)
                })
            {
                flipped += due.len();
                continue;
            }
            for c in &due {
                if self.restatus(&w, c, ConsentStatus::Expired).is_ok() {
                    flipped += 1;
                }
            }
        }
        flipped
    }

    /// Rebuilds shard `s`'s base when its overlay and dead rows have drifted far
    /// enough from it.
    fn maybe_compact(&self, w: &Writer<'_>, s: usize) {
        if self.read(s).needs_compaction() {
            self.rebuild(w, s, |_| None);
        }
    }

    /// Rebuilds shard `s`'s base from its live rows and overlay, giving records the
    /// status `new_status` returns for them (if any). The segment is built without
    /// holding the shard lock (the writer lock keeps the shard from changing
    /// meanwhile); readers wait only for the swap. Returns false if the shard
    /// could not be rebuilt (past 4 GiB of text) and was left as it was.
    fn rebuild(
        &self,
        _w: &Writer<'_>,
        s: usize,
        new_status: impl Fn(&RecordView<'_>) -> Option<ConsentStatus>,
    ) -> bool {
        let (base, overlay) = {
            let g = self.read(s);
            (
                Arc::clone(&g.base),
                g.overlay.iter().cloned().collect::<Vec<_>>(),
            )
        };
        let live = (0..base.len() as u32).filter(|&i| !base.is_dead(i));
        let rows = base.len() + overlay.len();
        let mut b = SegmentBuilder::with_capacity(
            rows,
            base.text_len() + overlay.len() * 96,
            rows + rows / 2,
        );
        let pushed = live
            .map(|i| base.view(i))
            .chain(overlay.iter().map(|c| c.segment().view(c.index())))
            .try_for_each(|mut v| {
                if let Some(status) = new_status(&v) {
                    v.status = status;
                }
                b.push(&v, 0)
            });
        let Ok(()) = pushed else { return false };
        let Ok(seg) = b.finish(&self.hasher) else {
            return false;
        };
        let old = {
            let mut g = self.write(s);
            g.dead = 0;
            (
                std::mem::replace(&mut g.base, Arc::new(seg)),
                std::mem::take(&mut g.overlay),
            )
        };
        drop(old);
        true
    }

    /// Counts used by tests to see compaction happen.
    #[cfg(test)]
    pub(crate) fn overlay_len(&self) -> usize {
        (0..SHARDS).map(|s| self.read(s).overlay.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn compaction_keeps_the_overlay_small() {
        let store = ConsentStore::new();
        let n = 20_000u64;
        for v in 1..=n {
            let change = Change {
                version: v,
                op: ChangeOp::Upsert(sample(&format!("c{v}"))),
            };
            assert_eq!(store.apply(change).unwrap(), Applied::Inserted);
        }
        assert_eq!(store.len(), n as usize);
        // Each shard compacts once its overlay passes 64 + live/8.
        let bound = SHARDS * COMPACT_MIN + n as usize / COMPACT_DIV + SHARDS;
        assert!(
            store.overlay_len() <= bound,
            "{} > {bound}",
            store.overlay_len()
        );
        assert!(store.overlay_len() < n as usize / 2);
        for v in (1..=n).step_by(97) {
            assert_eq!(store.get(&format!("c{v}")).unwrap().id(), format!("c{v}"));
        }
    }
}
