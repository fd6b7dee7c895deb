//! The tap on one answer: the chunks the provider sent, as `Bytes` clones (a reference
//! count each, never a copy), bounded; what the writer thread makes of it once the answer
//! has ended: the transaction lines, and the sample to validate.

use bytes::{Bytes, BytesMut};
use feed_wire::ProviderApi;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::lines::count_lines;

/// The most answer bytes all taps of the process hold at once: taps wait in the audit
/// journal's queue with their records, and a stalled journal (up to `[audit] buffer`
/// records) must not turn them into unbounded memory. Past it a tap lets go of its chunks
/// (like one over `max_body_bytes`: its sample `unchecked`, its lines unknown).
pub const MAX_TAPPED_BYTES: usize = 64 << 20;

/// Bytes held by every tap of the process.
static TAPPED: AtomicUsize = AtomicUsize::new(0);

/// What a tap holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The answer's chunks so far.
    Chunks,
    /// Nothing: the answer is content-encoded (not decoded here).
    Encoded,
    /// Nothing: the answer outgrew the bound.
    Over,
}

/// A tap on a provider's successful answer.
#[derive(Debug)]
pub struct Tap {
    api: ProviderApi,
    /// Count its transaction lines (the transactions route).
    lines: bool,
    /// Validate it against the provider schema (sampled).
    validate: bool,
    chunks: Vec<Bytes>,
    len: usize,
    max: usize,
    held: Held,
    /// The provider's last byte was seen.
    ended: bool,
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.held == Held::Chunks {
            TAPPED.fetch_sub(self.len, Ordering::Relaxed);
        }
    }
}

/// A sampled answer, as the writer thread hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    /// Not sampled.
    NotSampled,
    /// Sampled but not checkable (content-encoded, over the bound, not complete).
    Unchecked,
    /// The whole answer, to validate.
    Body(Bytes),
}

/// What the writer thread makes of an ended tap.
#[derive(Debug)]
pub struct Finished {
    /// The provider API answered.
    pub api: ProviderApi,
    /// The transaction lines, on the transactions route when they could be counted.
    pub lines: Option<u64>,
    /// The sample to validate.
    pub sample: Sample,
}

impl Tap {
    pub(super) fn new(
        api: ProviderApi,
        lines: bool,
        validate: bool,
        encoded: bool,
        max: usize,
    ) -> Box<Tap> {
        Box::new(Tap {
            api,
            lines,
            validate,
            chunks: Vec::new(),
            len: 0,
            max,
            held: if encoded { Held::Encoded } else { Held::Chunks },
            ended: false,
        })
    }

    /// Keeps a chunk of the answer as it streams (a reference, not a copy); past the bound
    /// the chunks are let go and the tap only notes the end.
    pub fn take(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) {
        if let (Some(b), Held::Chunks) = (chunk, self.held) {
            let held = TAPPED.fetch_add(b.len(), Ordering::Relaxed) + b.len();
            self.len += b.len();
            if self.len > self.max || held > MAX_TAPPED_BYTES {
                self.let_go();
            } else if !b.is_empty() {
                self.chunks.push(b.clone());
            }
        }
        self.ended |= end_of_stream;
    }

    /// Lets go of the chunks (and of their share of the process's budget).
    fn let_go(&mut self) {
        TAPPED.fetch_sub(self.len, Ordering::Relaxed);
        self.held = Held::Over;
        self.chunks = Vec::new();
    }

    /// Whether the provider's answer was seen to its end.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The whole answer, when held and ended (one chunk is shared as it is; several are
    /// joined here, on the writer thread).
    fn body(&self) -> Option<Bytes> {
        if !self.ended || self.held != Held::Chunks {
            return None;
        }
        match self.chunks.as_slice() {
            [] => Some(Bytes::new()),
            [one] => Some(one.clone()),
            many => {
                let mut all = BytesMut::with_capacity(self.len);
                for c in many {
                    all.extend_from_slice(c);
                }
                Some(all.freeze())
            }
        }
    }

    /// The tap's results: lines counted (transactions), the sample (validation).
    pub fn finish(&self) -> Finished {
        let body = self.body();
        let lines = match (&body, self.lines) {
            (Some(b), true) => count_lines(b),
            _ => None,
        };
        let sample = match (body, self.validate) {
            (_, false) => Sample::NotSampled,
            (Some(b), true) => Sample::Body(b),
            (None, true) => Sample::Unchecked,
        };
        Finished {
            api: self.api,
            lines,
            sample,
        }
    }

    /// The sample alone (tests).
    #[cfg(test)]
    pub fn sample(&self) -> Sample {
        self.finish().sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &[u8] = br#"{"data":[{"transaction_id":"a"},{"transaction_id":"b"}],"links":{"self":"/"},"meta":{"total":2}}"#;

    fn tap(validate: bool, encoded: bool, max: usize) -> Box<Tap> {
        Tap::new(ProviderApi::Transactions, true, validate, encoded, max)
    }

    #[test]
    fn chunks_are_shared_not_copied_and_joined_at_the_end() {
        let mut t = tap(true, false, 1024);
        let whole = Bytes::from_static(PAGE);
        let (a, b) = (whole.slice(..10), whole.slice(10..));
        t.take(Some(&a), false);
        assert_eq!(t.chunks[0].as_ptr(), a.as_ptr(), "a reference, not a copy");
        t.take(Some(&b), false);
        assert!(matches!(t.sample(), Sample::Unchecked), "not ended yet");
        t.take(None, true);
        let f = t.finish();
        assert_eq!(f.lines, Some(2));
        assert_eq!(f.sample, Sample::Body(whole));
    }

    #[test]
    fn an_answer_over_the_bound_or_encoded_is_unchecked_and_its_lines_unknown() {
        let mut over = tap(true, false, PAGE.len() - 1);
        over.take(Some(&Bytes::from_static(PAGE)), true);
        assert!(over.chunks.is_empty(), "let go");
        let f = over.finish();
        assert_eq!((f.lines, f.sample), (None, Sample::Unchecked));
        let mut encoded = tap(true, true, 1024);
        encoded.take(Some(&Bytes::from_static(b"\x1f\x8b\x08")), true);
        let f = encoded.finish();
        assert_eq!((f.lines, f.sample), (None, Sample::Unchecked));
        // Over the process's budget (taps held elsewhere): let go, and the budget back.
        let mut big = tap(true, false, usize::MAX);
        big.take(Some(&Bytes::from(vec![b' '; MAX_TAPPED_BYTES + 1])), true);
        assert_eq!(big.finish().sample, Sample::Unchecked);
        drop(big);
        assert!(
            TAPPED.load(Ordering::Relaxed) < MAX_TAPPED_BYTES,
            "given back"
        );
        // Not sampled: lines only.
        let mut lines_only = tap(false, false, 1024);
        lines_only.take(Some(&Bytes::from_static(PAGE)), true);
        let f = lines_only.finish();
        assert_eq!((f.lines, f.sample), (Some(2), Sample::NotSampled));
    }
}
