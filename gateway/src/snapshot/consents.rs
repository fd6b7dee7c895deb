//! The consent file (`[consents] snapshot`) as its own input of the publisher: loaded by
//! the watcher and by a reload apart from the rest of the configuration, so that a slow
//! or failing compile of the other sections (a bank's host name that does not resolve)
//! never holds a revocation back; retried with back-off while it cannot be loaded, even
//! when it does not change again; and, once a change on disk has gone unloaded for longer
//! than `[consents] max_staleness_secs`, the reason consent routes answer
//! `503 consent_state_stale` (contract §6 row 7 in file mode).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use consent_cache::ConsentStore;

use crate::config::ConfigError;

use super::FileStamp;

/// A consent file as loaded.
pub struct ConsentFile {
    /// Its identity (path, length, modification time) when it was read.
    pub stamp: FileStamp,
    /// Its consents.
    pub store: Arc<ConsentStore>,
}

impl ConsentFile {
    /// Reads and validates `path` (blocking: run it off the request path). The stamp is
    /// taken first, so a file replaced while it is read looks changed at the next look.
    pub fn load(path: &Path) -> Result<ConsentFile, ConfigError> {
        let stamp = FileStamp::of(path).ok_or_else(|| ConfigError::Read {
            file: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let store = Arc::new(ConsentStore::load(path)?);
        Ok(ConsentFile { stamp, store })
    }
}

/// What the file on disk is now: its stamp, or `None` when it cannot be read.
pub type OnDisk = Option<FileStamp>;

/// The consent file in force and how long a change on disk has failed to load; shared by
/// the publisher (which installs files), the watcher and the request path (row 7).
pub struct ConsentFileStatus {
    epoch: Instant,
    /// 1 + milliseconds from `epoch` to the first failed load of a change on disk not yet
    /// in force; 0 when none is pending.
    failing_since: AtomicU64,
    /// The stamp of the file in force (`None` in `[trust]` mode).
    in_force: Mutex<Option<FileStamp>>,
}

impl Default for ConsentFileStatus {
    fn default() -> Self {
        ConsentFileStatus {
            epoch: Instant::now(),
            failing_since: AtomicU64::new(0),
            in_force: Mutex::new(None),
        }
    }
}

impl ConsentFileStatus {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Row 7 in file mode: fresh unless a change on disk has failed to load for longer
    /// than `bound` (`now` is read only then: the request path pays one atomic load).
    pub fn is_fresh(&self, bound: Duration, now: impl FnOnce() -> Instant) -> bool {
        match self.failing_since.load(Ordering::Acquire) {
            0 => true,
            since => self.ms(now()).saturating_sub(since - 1) <= bound.as_millis() as u64,
        }
    }

    /// A load of the change on disk failed at `now` (the first failure starts the clock).
    pub fn load_failed(&self, now: Instant) {
        let since = self.ms(now).saturating_add(1);
        let _ = self
            .failing_since
            .compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The stamp of the file in force.
    pub fn in_force(&self) -> Option<FileStamp> {
        self.lock().clone()
    }

    /// What is on disk, when it is not the file in force (`None`: in sync, or no file).
    pub fn changed_on_disk(&self) -> Option<OnDisk> {
        let loaded = self.in_force()?;
        let now = FileStamp::of(&loaded.path);
        (now.as_ref() != Some(&loaded)).then_some(now)
    }

    /// Makes `stamp` the file in force if `accept` agrees with the one in force now,
    /// calling `install` (which swaps the store) under the same lock, so that two loads
    /// never interleave. A load accepted ends any staleness. `Ok(false)`: that very file
    /// is in force already (nothing installed).
    pub(super) fn replace<E>(
        &self,
        stamp: FileStamp,
        accept: impl FnOnce(Option<&FileStamp>) -> Result<(), E>,
        install: impl FnOnce(),
    ) -> Result<bool, E> {
        let mut in_force = self.lock();
        accept(in_force.as_ref())?;
        self.failing_since.store(0, Ordering::Release);
        if in_force.as_ref() == Some(&stamp) {
            return Ok(false);
        }
        install();
        *in_force = Some(stamp);
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FileStamp>> {
        self.in_force.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When the watcher tries a consent file that failed to load again: at once when the
/// file changes again, otherwise after a delay doubling from [`Backoff::FIRST`] to
/// [`Backoff::MAX`].
#[derive(Debug, Default)]
pub struct Backoff {
    /// The file as it was when it last failed, and when to try it again.
    failed: Option<(OnDisk, Instant)>,
    delay: Duration,
}

impl Backoff {
    /// The first delay after a failure.
    pub const FIRST: Duration = Duration::from_secs(1);
    /// The longest delay.
    pub const MAX: Duration = Duration::from_secs(30);

    /// Whether to try loading `on_disk` at `now`.
    pub fn due(&self, now: Instant, on_disk: &OnDisk) -> bool {
        match &self.failed {
            Some((file, retry_at)) if file == on_disk => now >= *retry_at,
            _ => true,
        }
    }

    /// Loading `on_disk` failed at `now`; returns the delay before the next try.
    pub fn failed(&mut self, now: Instant, on_disk: OnDisk) -> Duration {
        let again = matches!(&self.failed, Some((file, _)) if *file == on_disk);
        self.delay = if again {
            (self.delay * 2).min(Self::MAX)
        } else {
            Self::FIRST
        };
        self.failed = Some((on_disk, now + self.delay));
        self.delay
    }

    /// The file in force is the one on disk: nothing to retry.
    pub fn reset(&mut self) {
        self.failed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn stamp(len: u64) -> OnDisk {
        Some(FileStamp {
            path: PathBuf::from("consents.jsonl"),
            len,
            modified: None,
        })
    }

    #[test]
    fn a_failed_file_is_retried_with_a_doubling_delay_even_unchanged() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let broken = stamp(10);
        assert!(b.due(t0, &broken));
        assert_eq!(b.failed(t0, broken.clone()), Backoff::FIRST);
        assert!(!b.due(t0 + Duration::from_millis(999), &broken));
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.due(t1, &broken), "retried although unchanged");
        assert_eq!(b.failed(t1, broken.clone()), Duration::from_secs(2));
        let mut t = t1;
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            t += Backoff::MAX;
            assert!(b.due(t, &broken));
            last = b.failed(t, broken.clone());
        }
        assert_eq!(last, Backoff::MAX, "the delay is bounded");
        // A file that changes again is tried at once, from the first delay.
        assert!(b.due(t, &stamp(11)));
        assert_eq!(b.failed(t, stamp(11)), Backoff::FIRST);
        assert!(b.due(t, &None), "a vanished file is a change too");
        b.reset();
        assert!(b.due(t, &stamp(11)));
    }

    #[test]
    fn stale_only_once_a_change_has_failed_for_longer_than_the_bound() {
        let s = ConsentFileStatus::default();
        let bound = Duration::from_secs(300);
        let t0 = s.epoch + Duration::from_secs(5);
        assert!(
            s.is_fresh(bound, || t0 + Duration::from_secs(3600)),
            "nothing pending"
        );
        s.load_failed(t0);
        s.load_failed(t0 + Duration::from_secs(200)); // the clock runs from the first failure
        assert!(s.is_fresh(bound, || t0 + bound));
        assert!(!s.is_fresh(bound, || t0 + bound + Duration::from_millis(1)));
        let loaded = stamp(1).expect("stamp");
        let r: Result<bool, ()> = s.replace(loaded.clone(), |_| Ok(()), || {});
        assert_eq!(r, Ok(true));
        assert!(
            s.is_fresh(bound, || t0 + bound * 10),
            "a load ends staleness"
        );
        assert_eq!(s.in_force(), Some(loaded));
    }
}
