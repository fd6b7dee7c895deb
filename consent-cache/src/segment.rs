//! Compact, immutable storage for many consent records: one fixed-size row per
//! record plus shared text and provider arenas, and an index keyed by the id's hash.
//!
//! A record costs a 48-byte row, its id, customer and account text, 8 bytes per
//! provider and ~12 bytes of index; purposes are stored once per segment when
//! they repeat. Segments never change after they are built (except for the
//! `dead` bits, which only the store's single writer flips while it holds the
//! shard's write lock), so a [`crate::Consent`] handle can point into one.

use crate::record::RecordView;
use crate::types::{Bin, ConsentStatus, Permissions};
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many distinct purposes a builder deduplicates before it stops trying
/// (free-text purposes that never repeat must not grow a map without bound).
const MAX_INTERNED_PURPOSES: usize = 4096;

/// One record's fixed-size part. Text lives in the segment's arena:
/// `[text_start..)` holds the id, then the customer, then the joined accounts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub api_user: Bin,
    pub created_at: i64,
    /// Unix seconds, or [`NO_EXPIRY`]; an `Option<i64>` would cost 8 more bytes a row.
    expires: i64,
    text_start: u32,
    accounts_len: u32,
    prov_start: u32,
    purpose_start: u32,
    purpose_len: u16,
    id_len: u8,
    customer_len: u8,
    prov_len: u8,
    pub status: ConsentStatus,
    pub permissions: Permissions,
    restricted: bool,
}

/// Marks a record without `expires_at`; valid timestamps (years -9999..=9999)
/// never come near it.
const NO_EXPIRY: i64 = i64::MIN;

impl Row {
    #[inline]
    pub(crate) fn expires_at(&self) -> Option<i64> {
        (self.expires != NO_EXPIRY).then_some(self.expires)
    }
}

/// A segment's text, provider lists or row count outgrew its 32-bit offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a store shard outgrew its 4 GiB arena")]
pub struct CapacityError;

/// An id found twice while building a segment; `first`/`second` are the origins
/// the builder was given for the two records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuplicateId {
    pub id: String,
    pub first: u64,
    pub second: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Segment {
    rows: Box<[Row]>,
    text: Box<str>,
    providers: Box<[Bin]>,
    index: Index,
    dead: Box<[AtomicU64]>,
}

/// The id index of a segment: linear probing over one array of 8-byte slots,
/// each `tag << 32 | (row + 1)` (0 = empty), where `tag` is the high half of the
/// id's hash. One slot read usually settles a probe, so a lookup costs one cache
/// miss here (a hashbrown table costs two: control bytes, then the bucket) and
/// touches a row only when the 32-bit tag matches.
#[derive(Debug, Default)]
struct Index {
    slots: Box<[u64]>,
}

impl Index {
    /// Capacity for `n` rows: load factor at most ~0.7 keeps probe runs short.
    fn with_rows(n: usize) -> Self {
        let cap = if n == 0 { 0 } else { n + n / 2 + 1 };
        Index {
            slots: vec![0; cap].into_boxed_slice(),
        }
    }

    /// The first slot to probe: the low half of the hash scaled to the capacity
    /// (capacities need not be powers of two).
    #[inline]
    fn start(&self, hash: u64) -> usize {
        (((hash & 0xffff_ffff) * self.slots.len() as u64) >> 32) as usize
    }

    /// Finds the row whose tag matches and for which `is_row` holds.
    #[inline]
    fn find(&self, hash: u64, mut is_row: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = hash >> 32;
        let mut pos = self.start(hash);
        // The table is never full, so every probe run ends at an empty slot.
        loop {
            let slot = *self.slots.get(pos)?;
            if slot == 0 {
                return None;
            }
            if slot >> 32 == tag {
                let row = (slot as u32).wrapping_sub(1);
                if is_row(row) {
                    return Some(row);
                }
            }
            pos += 1;
            if pos == self.slots.len() {
                pos = 0;
            }
        }
    }

    /// Inserts `row` (which must be below `u32::MAX`) unless `is_same` matches a
    /// row already there; returns that row.
    fn insert(&mut self, hash: u64, row: u32, is_same: impl FnMut(u32) -> bool) -> Result<(), u32> {
        if let Some(existing) = self.find(hash, is_same) {
            return Err(existing);
        }
        let mut pos = self.start(hash);
        while let Some(slot) = self.slots.get_mut(pos) {
            if *slot == 0 {
                *slot = ((hash >> 32) << 32) | u64::from(row + 1);
                return Ok(());
            }
            pos = if pos + 1 == self.slots.len() {
                0
            } else {
                pos + 1
            };
        }
        Ok(())
    }
}

impl Row {
    #[inline]
    fn id<'a>(&self, text: &'a str) -> &'a str {
        let start = self.text_start as usize;
        &text[start..start + usize::from(self.id_len)]
    }

    #[inline]
    fn customer<'a>(&self, text: &'a str) -> &'a str {
        let start = self.text_start as usize + usize::from(self.id_len);
        &text[start..start + usize::from(self.customer_len)]
    }

    /// The joined account list, `None` when the consent covers all accounts.
    #[inline]
    fn accounts<'a>(&self, text: &'a str) -> Option<&'a str> {
        if !self.restricted {
            return None;
        }
        let start =
            self.text_start as usize + usize::from(self.id_len) + usize::from(self.customer_len);
        Some(&text[start..start + self.accounts_len as usize])
    }

    #[inline]
    fn purpose<'a>(&self, text: &'a str) -> &'a str {
        let start = self.purpose_start as usize;
        &text[start..start + usize::from(self.purpose_len)]
    }

    #[inline]
    fn providers<'a>(&self, providers: &'a [Bin]) -> &'a [Bin] {
        let start = self.prov_start as usize;
        &providers[start..start + usize::from(self.prov_len)]
    }

    fn view<'a>(&self, text: &'a str, providers: &'a [Bin]) -> RecordView<'a> {
        RecordView {
            id: self.id(text),
            api_user: self.api_user,
            customer: self.customer(text),
            providers: self.providers(providers),
            permissions: self.permissions,
            accounts: self.accounts(text),
            purpose: self.purpose(text),
            created_at: self.created_at,
            expires_at: self.expires_at(),
            status: self.status,
        }
    }
}

impl Segment {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn text_len(&self) -> usize {
        self.text.len()
    }

    #[inline]
    pub(crate) fn row(&self, i: u32) -> &Row {
        &self.rows[i as usize]
    }

    #[inline]
    pub(crate) fn id(&self, i: u32) -> &str {
        self.row(i).id(&self.text)
    }

    #[inline]
    pub(crate) fn customer(&self, i: u32) -> &str {
        self.row(i).customer(&self.text)
    }

    /// The joined account list, `None` when the consent covers all accounts.
    #[inline]
    pub(crate) fn accounts(&self, i: u32) -> Option<&str> {
        self.row(i).accounts(&self.text)
    }

    #[inline]
    pub(crate) fn purpose(&self, i: u32) -> &str {
        self.row(i).purpose(&self.text)
    }

    #[inline]
    pub(crate) fn providers(&self, i: u32) -> &[Bin] {
        self.row(i).providers(&self.providers)
    }

    pub(crate) fn view(&self, i: u32) -> RecordView<'_> {
        self.row(i).view(&self.text, &self.providers)
    }

    /// The live row holding `id`, whose hash (by the store's hasher) is `hash`.
    #[inline]
    pub(crate) fn find(&self, hash: u64, id: &str) -> Option<u32> {
        let i = self.index.find(hash, |i| self.id(i) == id)?;
        (!self.is_dead(i)).then_some(i)
    }

    pub(crate) fn is_dead(&self, i: u32) -> bool {
        // Relaxed is enough: dead bits are written and read under the shard's lock.
        self.dead
            .get(i as usize / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (i % 64)) != 0)
    }

    /// Hides row `i` from lookups; handles already given out keep reading it.
    pub(crate) fn mark_dead(&self, i: u32) {
        if let Some(w) = self.dead.get(i as usize / 64) {
            w.fetch_or(1 << (i % 64), Ordering::Relaxed);
        }
    }

    /// A copy of the dead bits, so a consistent view survives later changes.
    pub(crate) fn dead_bits(&self) -> Vec<u64> {
        self.dead
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }

    /// Builds a one-record segment without an index (the store indexes it in its overlay).
    pub(crate) fn single(view: &RecordView<'_>) -> Result<Segment, CapacityError> {
        let text_len = view.id.len()
            + view.customer.len()
            + view.accounts.map_or(0, str::len)
            + view.purpose.len();
        let mut b = SegmentBuilder::with_capacity(1, text_len, view.providers.len());
        b.push(view, 0)?;
        Ok(b.finish_unindexed())
    }
}

/// Accumulates records for one segment.
#[derive(Debug, Default)]
pub(crate) struct SegmentBuilder {
    rows: Vec<Row>,
    text: String,
    providers: Vec<Bin>,
    /// Where each record came from (line or record number), for duplicate errors.
    origins: Vec<u64>,
    purposes: HashMap<Box<str>, (u32, u16), RandomState>,
}

impl SegmentBuilder {
    pub(crate) fn with_capacity(rows: usize, text: usize, providers: usize) -> Self {
        SegmentBuilder {
            rows: Vec::with_capacity(rows),
            text: String::with_capacity(text),
            providers: Vec::with_capacity(providers),
            origins: Vec::with_capacity(rows),
            purposes: HashMap::default(),
        }
    }

    /// Appends a record that has already been validated.
    pub(crate) fn push(&mut self, v: &RecordView<'_>, origin: u64) -> Result<(), CapacityError> {
        let narrow = |n: usize| u32::try_from(n).map_err(|_| CapacityError);
        let accounts = v.accounts.unwrap_or("");
        let text_start = narrow(self.text.len())?;
        let text_end =
            self.text.len() + v.id.len() + v.customer.len() + accounts.len() + v.purpose.len();
        narrow(text_end)?;
        narrow(self.rows.len() + 1)?;
        let prov_start = narrow(self.providers.len())?;
        narrow(self.providers.len() + v.providers.len())?;
        let id_len = u8::try_from(v.id.len()).map_err(|_| CapacityError)?;
        let customer_len = u8::try_from(v.customer.len()).map_err(|_| CapacityError)?;
        let prov_len = u8::try_from(v.providers.len()).map_err(|_| CapacityError)?;
        let purpose_len = u16::try_from(v.purpose.len()).map_err(|_| CapacityError)?;
        let accounts_len = narrow(accounts.len())?;

        self.text.push_str(v.id);
        self.text.push_str(v.customer);
        self.text.push_str(accounts);
        let purpose_start = match self.purposes.get(v.purpose) {
            Some(&(start, _)) => start,
            None => {
                let start = narrow(self.text.len())?;
                self.text.push_str(v.purpose);
                if self.purposes.len() < MAX_INTERNED_PURPOSES {
                    self.purposes.insert(v.purpose.into(), (start, purpose_len));
                }
                start
            }
        };
        self.providers.extend_from_slice(v.providers);
        self.rows.push(Row {
            api_user: v.api_user,
            created_at: v.created_at,
            expires: v.expires_at.unwrap_or(NO_EXPIRY),
            text_start,
            accounts_len,
            prov_start,
            purpose_start,
            purpose_len,
            id_len,
            customer_len,
            prov_len,
            status: v.status,
            permissions: v.permissions,
            restricted: v.accounts.is_some(),
        });
        self.origins.push(origin);
        Ok(())
    }

    /// Appends every record of `other` (used to merge per-thread builders).
    pub(crate) fn append(&mut self, other: &SegmentBuilder) -> Result<(), CapacityError> {
        for (row, &origin) in other.rows.iter().zip(&other.origins) {
            self.push(&row.view(&other.text, &other.providers), origin)?;
        }
        Ok(())
    }

    fn finish_unindexed_keep_origins(self) -> (Segment, Vec<u64>) {
        let seg = Segment {
            rows: self.rows.into_boxed_slice(),
            text: self.text.into_boxed_str(),
            providers: self.providers.into_boxed_slice(),
            index: Index::default(),
            dead: Box::default(),
        };
        (seg, self.origins)
    }

    pub(crate) fn finish_unindexed(self) -> Segment {
        self.finish_unindexed_keep_origins().0
    }

    /// Builds the segment and its id index; fails on the first repeated id.
    pub(crate) fn finish(self, hasher: &RandomState) -> Result<Segment, DuplicateId> {
        let (mut seg, origins) = self.finish_unindexed_keep_origins();
        let n = seg.rows.len();
        if n >= u32::MAX as usize {
            // Unreachable: push() keeps rows below u32::MAX.
            return Err(DuplicateId {
                id: String::new(),
                first: 0,
                second: 0,
            });
        }
        let mut index = Index::with_rows(n);
        for i in 0..n as u32 {
            let id = seg.id(i);
            if let Err(first) = index.insert(hasher.hash_one(id), i, |j| seg.id(j) == id) {
                return Err(DuplicateId {
                    id: id.to_owned(),
                    first: origins.get(first as usize).copied().unwrap_or_default(),
                    second: origins.get(i as usize).copied().unwrap_or_default(),
                });
            }
        }
        seg.index = index;
        seg.dead = (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Ok(seg)
    }
}

/// Number of shards of a store (a power of two).
pub(crate) const SHARDS: usize = 256;

/// Picks the shard from hash bits 40..48, which the tables inside a shard do not
/// rely on: the base index probes from the low 32 bits, the overlay's hashbrown
/// table from the low bits with a tag from the top 7.
#[inline]
pub(crate) fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize & (SHARDS - 1)
}

/// One builder per shard; records are routed by the hash of their id.
#[derive(Debug)]
pub(crate) struct ShardBuilders {
    pub builders: Vec<SegmentBuilder>,
}

impl ShardBuilders {
    /// Builders sized for about `expected` records in all.
    pub(crate) fn new(expected: usize) -> Self {
        let per = expected.div_ceil(SHARDS) + expected.div_ceil(SHARDS) / 16;
        ShardBuilders {
            builders: (0..SHARDS)
                .map(|_| SegmentBuilder::with_capacity(per, per * 56, per + per / 2))
                .collect(),
        }
    }

    pub(crate) fn push(
        &mut self,
        hasher: &RandomState,
        v: &RecordView<'_>,
        origin: u64,
    ) -> Result<(), CapacityError> {
        let shard = shard_of(hasher.hash_one(v.id));
        match self.builders.get_mut(shard) {
            Some(b) => b.push(v, origin),
            None => Err(CapacityError),
        }
    }
}

/// Why shards could not be built.
#[derive(Debug)]
pub(crate) enum BuildError {
    Duplicate(DuplicateId),
    Capacity,
    /// A build thread panicked (a bug); the load fails instead of the process.
    Panicked,
}

/// One builder holding the records of all of `parts`, allocated once at its final size.
fn merge(mut parts: Vec<SegmentBuilder>) -> Result<SegmentBuilder, CapacityError> {
    if parts.len() <= 1 {
        return Ok(parts.pop().unwrap_or_default());
    }
    let rows = parts.iter().map(|b| b.rows.len()).sum();
    let text = parts.iter().map(|b| b.text.len()).sum();
    let providers = parts.iter().map(|b| b.providers.len()).sum();
    let mut acc = SegmentBuilder::with_capacity(rows, text, providers);
    for part in parts {
        acc.append(&part)?;
    }
    Ok(acc)
}

/// Merges per-thread builders shard by shard and builds every shard's index,
/// spreading the work over `threads` threads.
pub(crate) fn build_shards(
    parts: Vec<ShardBuilders>,
    hasher: &RandomState,
    threads: usize,
) -> Result<Vec<Segment>, BuildError> {
    let mut per_shard: Vec<Vec<SegmentBuilder>> = (0..SHARDS).map(|_| Vec::new()).collect();
    for part in parts {
        for (slot, b) in per_shard.iter_mut().zip(part.builders) {
            slot.push(b);
        }
    }
    let threads = threads.clamp(1, SHARDS);
    let mut jobs: Vec<Vec<(usize, Vec<SegmentBuilder>)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (shard, bs) in per_shard.into_iter().enumerate() {
        jobs[shard % threads].push((shard, bs));
    }
    let results: Vec<Result<Vec<(usize, Segment)>, BuildError>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                s.spawn(move || {
                    job.into_iter()
                        .map(|(shard, bs)| {
                            merge(bs)
                                .map_err(|_| BuildError::Capacity)?
                                .finish(hasher)
                                .map(|seg| (shard, seg))
                                .map_err(BuildError::Duplicate)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BuildError::Panicked)))
            .collect()
    });
    let mut out: Vec<Option<Segment>> = (0..SHARDS).map(|_| None).collect();
    let mut first_dup: Option<DuplicateId> = None;
    for r in results {
        match r {
            Ok(segs) => {
                for (shard, seg) in segs {
                    out[shard] = Some(seg);
                }
            }
            Err(BuildError::Duplicate(d)) => {
                // Report the duplicate met earliest in the input, whichever thread saw it.
                if first_dup.as_ref().is_none_or(|f| d.second < f.second) {
                    first_dup = Some(d);
                }
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(d) = first_dup {
        return Err(BuildError::Duplicate(d));
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn row_stays_small() {
        assert_eq!(std::mem::size_of::<Row>(), 48);
    }

    #[test]
    fn builder_dedups_purposes_and_finds_ids() {
        let hasher = RandomState::default();
        let mut b = SegmentBuilder::default();
        let mut scratch = String::new();
        let mut records = Vec::new();
        for i in 0..100 {
            let mut r = sample(&format!("c-{i}"));
            if i % 3 == 0 {
                r.accounts = Some(vec![format!("KZ{i}"), "KZ-common".into()]);
            }
            records.push(r);
        }
        for (i, r) in records.iter().enumerate() {
            b.push(&r.view(&mut scratch).unwrap(), i as u64).unwrap();
        }
        let purpose_bytes = "personal finance management".len();
        assert!(b.text.len() < 100 * (5 + 12 + 20) + purpose_bytes);
        let seg = b.finish(&hasher).unwrap();
        for r in &records {
            let i = seg.find(hasher.hash_one(r.id.as_str()), &r.id).unwrap();
            assert_eq!(&seg.view(i).to_record(), r);
        }
        assert!(seg.find(hasher.hash_one("nope"), "nope").is_none());
        let i = seg.find(hasher.hash_one("c-7"), "c-7").unwrap();
        seg.mark_dead(i);
        assert!(seg.find(hasher.hash_one("c-7"), "c-7").is_none());
        assert_eq!(seg.id(i), "c-7");
    }

    #[test]
    fn finish_names_both_origins_of_a_duplicate() {
        let hasher = RandomState::default();
        let mut b = SegmentBuilder::default();
        let mut scratch = String::new();
        for (origin, id) in [(10, "a"), (11, "b"), (12, "a")] {
            b.push(&sample(id).view(&mut scratch).unwrap(), origin)
                .unwrap();
        }
        let dup = b.finish(&hasher).unwrap_err();
        assert_eq!(
            dup,
            DuplicateId {
                id: "a".into(),
                first: 10,
                second: 12
            }
        );
    }
}
