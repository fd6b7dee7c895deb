//! Traffic rollups: what every gateway counts per API user × provider × route × outcome ×
//! minute, and the latency histograms per provider × route × minute, pushed to the trust
//! control plane (`POST /v1/rollups`) for SLA accounting (provider oversight) and usage
//! statistics (billing).
//!
//! Idempotence: a batch names its gateway and the process's `epoch` (a random id drawn at
//! start), and a minute is pushed only once it is closed (or at shutdown, the partial
//! minute of a process that will not count again). The control plane stores a minute
//! keyed by `(gateway, epoch, minute)` and ignores a minute it already holds, so a
//! retried push never double-counts, and a restarted gateway (a new epoch) never merges
//! with, nor replaces, what its previous process counted in the same minute.
//!
//! No customer data: API users and providers are participants' BINs (public registry
//! identifiers), routes are the contract's route templates, never a path with ids.

use consent_cache::Bin;
use serde::{Deserialize, Serialize};

/// The trust sidecar's route that receives pushes (JSON body, gateway's mTLS identity).
pub const ROLLUP_PATH: &str = "/v1/rollups";

/// The largest push body the control plane accepts (`413` beyond): a gateway sends fewer
/// minutes per push when a batch would be larger. One minute of a busy gateway with tens
/// of thousands of active consents (the `consents` rows, about 200 bytes each) fits.
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Upper bounds of the latency histograms' buckets, in microseconds; the last bucket
/// (beyond the last bound) is unbounded. Fixed, so histograms from every gateway and
/// every minute add up bucket by bucket.
pub const BUCKET_BOUNDS_US: [u64; 18] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000,
    500_000, 750_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000,
];

/// Number of buckets: one per bound and the unbounded one.
pub const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

/// One push: a gateway process's closed minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupBatch {
    /// The gateway's configured name (stable across restarts).
    pub gateway: String,
    /// This process's id, drawn at start (hex); a restart gets a new one.
    pub epoch: String,
    /// Closed minutes, oldest first, each at most once per batch.
    pub minutes: Vec<MinuteRollup>,
}

/// Everything one gateway process counted in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinuteRollup {
    /// The minute's start, Unix seconds (UTC, a multiple of 60), by the audit record's
    /// time of the request.
    pub minute: i64,
    /// Calls by API user × provider × route × outcome.
    pub calls: Vec<CallRow>,
    /// Latency histograms by provider × route (requests that reached the provider).
    pub latency: Vec<LatencyRow>,
    /// Live-traffic checks: sampled answers validated against the provider schema, by
    /// provider × route (issue 14 point 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub live: Vec<LiveRow>,
    /// Successful calls by consent × route, for tariffs that count per customer per day
    /// (free thresholds, billing): the consent id is the control plane's own opaque
    /// identifier, which it maps to the customer itself; no customer id leaves the hub.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consents: Vec<ConsentRow>,
}

/// Live-traffic schema checks of one provider × route in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveRow {
    /// The provider.
    pub provider: Bin,
    /// The contract's route template.
    pub route: String,
    /// Answers sampled and validated.
    pub sampled: u64,
    /// Of those, answers that violated the provider schema.
    pub violations: u64,
    /// Answers sampled but not validated (content-encoded, over the size bound, or dropped
    /// because the validator was behind): counted so that a gap is visible, never guessed.
    #[serde(default)]
    pub unchecked: u64,
}

/// Successful calls of one consent on one route in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRow {
    /// The API user holding the consent.
    pub api_user: Bin,
    /// The provider called.
    pub provider: Bin,
    /// The consent id (the control plane's opaque identifier).
    pub consent: String,
    /// The contract's route template.
    pub route: String,
    /// Calls with outcome `success`.
    pub calls: u64,
}

/// A count of calls with the same key in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRow {
    /// The API user (absent when the caller was not identified, e.g. a refused
    /// certificate or an open-data call without one).
    pub api_user: Option<Bin>,
    /// The provider in the path (absent when the path named none or no route matched).
    pub provider: Option<Bin>,
    /// The contract's route template (`GET /v1/providers/{provider_id}/accounts`), or
    /// `-` when no route matched.
    pub route: String,
    /// How the call ended.
    pub outcome: Outcome,
    /// Number of calls.
    pub calls: u64,
    /// For transactions: the number of transaction lines returned (0 otherwise).
    #[serde(default)]
    pub lines: u64,
}

/// How a call ended, from the provider's side of the SLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The provider answered 1xx–3xx and the API user received it.
    Success,
    /// The provider answered 4xx (not a failure of the provider).
    ClientError,
    /// The provider answered 5xx.
    ServerError,
    /// The provider did not answer within its SLA (`504 provider_timeout`).
    Timeout,
    /// TLS or connection failure towards the provider, or its circuit open
    /// (`503 provider_unavailable` after the hub tried, row 18).
    Unreachable,
    /// The provider's answer was not valid HTTP (`502 provider_bad_response`).
    BadResponse,
    /// The hub refused the call before any provider was involved (rows 1–16, including
    /// an unpublished or inactive provider).
    Refused,
}

impl Outcome {
    /// Every outcome, in wire order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::Unreachable,
        Outcome::BadResponse,
        Outcome::Refused,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
            Outcome::BadResponse => "bad_response",
            Outcome::Refused => "refused",
        }
    }

    /// Whether the call reached the provider (counted in its SLA).
    pub const fn reached_provider(self) -> bool {
        !matches!(self, Outcome::Refused)
    }

    /// Whether it counts against the provider's availability (5xx, timeouts, TLS or
    /// connection failures, invalid answers; 4xx do not).
    pub const fn is_provider_failure(self) -> bool {
        matches!(
            self,
            Outcome::ServerError | Outcome::Timeout | Outcome::Unreachable | Outcome::BadResponse
        )
    }
}

/// Latency histograms of one provider × route in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyRow {
    /// The provider.
    pub provider: Bin,
    /// The contract's route template.
    pub route: String,
    /// The bank's time: from the request sent upstream to the answer's last byte.
    pub bank: Histogram,
    /// The hub's own time: the whole request's time less the bank's.
    pub hub: Histogram,
}

/// Counts per bucket of [`BUCKET_BOUNDS_US`] (exactly [`BUCKETS`] entries).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram(pub Vec<u64>);

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram(vec![0; BUCKETS])
    }

    /// The bucket of a duration in microseconds.
    pub fn bucket_of(us: u64) -> usize {
        BUCKET_BOUNDS_US.partition_point(|&b| b < us)
    }

    /// Counts one duration.
    pub fn record(&mut self, us: u64) {
        if self.0.len() != BUCKETS {
            self.0.resize(BUCKETS, 0);
        }
        self.0[Self::bucket_of(us)] += 1;
    }

    /// Adds `other` bucket by bucket.
    pub fn merge(&mut self, other: &Histogram) {
        if self.0.len() != BUCKETS {
            self.0.resize(BUCKETS, 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a += b;
        }
    }

    /// Number of durations counted.
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile (0 < q ≤ 1) as the upper bound of the bucket holding it, in
    /// microseconds (`None` when empty or in the unbounded bucket): the same answer from
    /// the rollups and from the audit journals bucketed the same way.
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based (nearest-rank method).
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return BUCKET_BOUNDS_US.get(i).copied();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_upper_bound() {
        assert_eq!(Histogram::bucket_of(0), 0);
        assert_eq!(Histogram::bucket_of(1_000), 0);
        assert_eq!(Histogram::bucket_of(1_001), 1);
        assert_eq!(Histogram::bucket_of(500_000), 11);
        assert_eq!(Histogram::bucket_of(30_000_001), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_bucket_bounds_by_nearest_rank() {
        let mut h = Histogram::new();
        for us in [900, 1_500, 1_600, 4_000, 400_000] {
            h.record(us);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile_bound_us(0.5), Some(2_000));
        assert_eq!(h.quantile_bound_us(0.8), Some(5_000));
        assert_eq!(h.quantile_bound_us(0.99), Some(500_000));
        let mut slow = Histogram::new();
        slow.record(60_000_000);
        assert_eq!(slow.quantile_bound_us(0.5), None);
        h.merge(&slow);
        assert_eq!(h.count(), 6);
        assert_eq!(Histogram::new().quantile_bound_us(0.5), None);
    }

    #[test]
    fn a_batch_round_trips_and_refuses_unknown_members() {
        let batch = RollupBatch {
            gateway: "gw-a".into(),
            epoch: "9f1c".into(),
            minutes: vec![MinuteRollup {
                minute: 1_764_000_000,
                calls: vec![CallRow {
                    api_user: None,
                    provider: None,
                    route: "-".into(),
                    outcome: Outcome::Refused,
                    calls: 3,
                    lines: 0,
                }],
                latency: vec![],
                live: vec![],
                consents: vec![],
            }],
        };
        let json = serde_json::to_string(&batch).expect("serialise");
        assert!(json.contains("\"outcome\":\"refused\""), "{json}");
        let back: RollupBatch = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, batch);
        let extra = json.replacen("{\"gateway\"", "{\"x\":1,\"gateway\"", 1);
        assert!(serde_json::from_str::<RollupBatch>(&extra).is_err());
    }
}
