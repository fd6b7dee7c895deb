//! Which trust endpoint the follower uses, and when a stream counts as stalled: pure
//! rules with explicit instants, no I/O and no clock, carried out by the loop in
//! [`super`].
//!
//! - [`Rotation`]: the endpoints of `[trust] urls` are replicas of one database, so the
//!   follower uses one at a time and, when it fails (refused, timed out, an HTTP error
//!   other than `410`, the stream ended or stalled), moves to the next one (round robin)
//!   at once and resumes there from its position. It waits before retrying only once a
//!   whole round of endpoints has failed without a line being read.
//! - [`Stall`]: a feed sends a line (a change or a heartbeat) at least every heartbeat
//!   interval; a stream with no complete line for twice that long is stalled, however
//!   many bytes trickle in, and is treated like a dropped connection.

use std::time::{Duration, Instant};

/// The endpoint in use and how many failed in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotation {
    count: usize,
    current: usize,
    /// Endpoints that failed one after the other without a line being read.
    failed_in_a_row: usize,
}

/// What to do after the endpoint in use failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advance {
    /// The endpoint to use next.
    pub(crate) next: usize,
    /// It is another endpoint than the one that failed.
    pub(crate) switched: bool,
    /// A whole round failed: wait before trying again.
    pub(crate) back_off: bool,
}

impl Rotation {
    /// Starts with the first of `count` endpoints (at least one).
    pub(crate) fn new(count: usize) -> Rotation {
        Rotation {
            count: count.max(1),
            current: 0,
            failed_in_a_row: 0,
        }
    }

    /// The endpoint to use.
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// The configuration now names `count` endpoints: keeps the one in use if it still
    /// exists (by position in the list), else starts over at the first.
    pub(crate) fn resize(&mut self, count: usize) {
        let count = count.max(1);
        if count != self.count {
            self.count = count;
            if self.current >= count {
                self.current = 0;
            }
            self.failed_in_a_row = 0;
        }
    }

    /// The endpoint in use answered (a snapshot, a feed line): a new round starts.
    pub(crate) fn heard(&mut self) {
        self.failed_in_a_row = 0;
    }

    /// The endpoint in use failed: the next one, and whether to wait first.
    pub(crate) fn failed(&mut self) -> Advance {
        self.failed_in_a_row += 1;
        let back_off = self.failed_in_a_row >= self.count;
        if back_off {
            self.failed_in_a_row = 0;
        }
        let previous = self.current;
        self.current = (self.current + 1) % self.count;
        Advance {
            next: self.current,
            switched: self.current != previous,
            back_off,
        }
    }

    /// The order in which to try the endpoints for a one-off request (the JWKS): the one
    /// in use first, then the others in rotation order.
    pub(crate) fn order_from(start: usize, count: usize) -> impl Iterator<Item = usize> {
        let count = count.max(1);
        (0..count).map(move |i| (start % count + i) % count)
    }
}

/// The stall bound of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stall {
    bound: Duration,
    last_line: Instant,
}

impl Stall {
    /// A stream opened at `now` that must deliver a line within every `bound`.
    pub(crate) fn new(bound: Duration, now: Instant) -> Stall {
        Stall {
            bound,
            last_line: now,
        }
    }

    /// Twice the heartbeat interval: what a live feed never stays silent for.
    pub(crate) fn bound_for(heartbeat: Duration) -> Duration {
        heartbeat.saturating_mul(2)
    }

    /// How long the stream may go without a line.
    pub(crate) fn bound(&self) -> Duration {
        self.bound
    }

    /// A complete line arrived at `now`.
    pub(crate) fn line(&mut self, now: Instant) {
        self.last_line = self.last_line.max(now);
    }

    /// When the stream counts as stalled unless a line arrives first.
    pub(crate) fn deadline(&self) -> Instant {
        self.last_line + self.bound
    }

    /// Whether the stream is stalled at `now`.
    pub(crate) fn stalled(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_endpoint_hands_over_to_the_next_at_once_in_round_robin() {
        let mut r = Rotation::new(3);
        assert_eq!(r.current(), 0);
        let a = r.failed();
        assert_eq!(
            a,
            Advance {
                next: 1,
                switched: true,
                back_off: false
            }
        );
        assert_eq!(r.failed().next, 2);
        // The third failure in a row completes a round: wait, then start again.
        assert_eq!(
            r.failed(),
            Advance {
                next: 0,
                switched: true,
                back_off: true
            }
        );
        assert!(!r.failed().back_off, "a new round");
    }

    #[test]
    fn an_endpoint_that_answered_starts_a_new_round() {
        let mut r = Rotation::new(2);
        assert!(!r.failed().back_off); // 0 failed → 1
        r.heard(); // 1 served for a while …
        let a = r.failed(); // … then failed: 0 is tried at once.
        assert_eq!(
            a,
            Advance {
                next: 0,
                switched: true,
                back_off: false
            }
        );
        assert!(r.failed().back_off, "0 and 1 both failed in a row");
    }

    #[test]
    fn one_endpoint_backs_off_after_each_failure_and_never_switches() {
        let mut r = Rotation::new(1);
        for _ in 0..3 {
            assert_eq!(
                r.failed(),
                Advance {
                    next: 0,
                    switched: false,
                    back_off: true
                }
            );
        }
        assert_eq!(Rotation::new(0).current(), 0, "never an empty rotation");
    }

    #[test]
    fn a_reload_with_fewer_endpoints_keeps_a_valid_one() {
        let mut r = Rotation::new(3);
        r.failed();
        r.failed();
        assert_eq!(r.current(), 2);
        r.resize(3);
        assert_eq!(r.current(), 2, "unchanged list: same endpoint");
        r.resize(2);
        assert_eq!(r.current(), 0);
        r.failed();
        r.resize(4);
        assert_eq!(r.current(), 1, "still there");
        assert!(!r.failed().back_off, "the count started over");
    }

    #[test]
    fn one_off_requests_try_the_endpoint_in_use_first() {
        let order: Vec<usize> = Rotation::order_from(1, 3).collect();
        assert_eq!(order, vec![1, 2, 0]);
        let order: Vec<usize> = Rotation::order_from(5, 2).collect();
        assert_eq!(order, vec![1, 0]);
        let order: Vec<usize> = Rotation::order_from(0, 1).collect();
        assert_eq!(order, vec![0]);
    }

    #[test]
    fn a_stream_is_stalled_after_twice_the_heartbeat_without_a_line() {
        let t0 = Instant::now();
        let bound = Stall::bound_for(Duration::from_secs(5));
        assert_eq!(bound, Duration::from_secs(10));
        let mut s = Stall::new(bound, t0);
        assert!(!s.stalled(t0 + Duration::from_millis(9_999)));
        assert!(s.stalled(t0 + bound));
        // Each line moves the deadline: a live feed (a heartbeat every 5 s) never stalls.
        for beat in 1..=10 {
            let at = t0 + Duration::from_secs(5 * beat);
            assert!(!s.stalled(at));
            s.line(at);
        }
        assert_eq!(s.deadline(), t0 + Duration::from_secs(60));
        // A line stamped earlier than the last one does not move the deadline back.
        s.line(t0);
        assert_eq!(s.deadline(), t0 + Duration::from_secs(60));
        assert!(s.stalled(t0 + Duration::from_secs(60)));
    }
}
