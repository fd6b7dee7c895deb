//! Prometheus metrics of the hub. Labels are bounded and never carry customer ids,
//! tokens or account ids: route *templates*, decision codes, provider BINs (participants,
//! a configured set), reload outcomes and the names of the hub's own certificates only.
//!
//! `docs/ops/grafana-hub.json` and `conf/alerts/hub-alerts.yml` use these names: the test
//! `ops_tests::the_dashboard_and_the_alerts_use_only_metrics_the_hub_renders` checks every
//! name they use against what `/metrics` renders, and `scripts/check-ops` against the
//! declarations here and in `limits`.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::tls::{CertificateExpiry, CertificateRole};

/// The hub's metric families.
pub struct Metrics {
    registry: Registry,
    /// Requests by route template, decision code and provider.
    pub requests: IntCounterVec,
    /// End-to-end latency by route template.
    pub latency: HistogramVec,
    /// Time spent waiting for providers, by provider.
    pub upstream_latency: HistogramVec,
    /// Records in the consent cache.
    pub consents: IntGauge,
    /// The consent cache's change-feed version.
    pub consent_version: IntGauge,
    /// `[trust]` mode: the change-feed position the follower has applied.
    pub feed_version: IntGauge,
    /// `[trust]` mode: seconds since the sidecar was last heard from (at scrape).
    pub feed_staleness: Gauge,
    /// `[trust]` mode: snapshot reloads after the first (gap, resync, 410).
    pub feed_resyncs: IntCounter,
    /// `[trust]` mode: feed connections lost or refused.
    pub feed_reconnects: IntCounter,
    /// `[trust]` mode: times the follower moved to another trust endpoint.
    pub trust_endpoint_switches: IntCounter,
    /// `[trust]` mode: participant changes applied from the feed.
    pub participant_changes: IntCounter,
    /// Registry records that could not be applied (those participants are kept inactive).
    pub participants_refused: IntGauge,
    /// Configuration reloads by result.
    pub reloads: IntCounterVec,
    /// Token cache hits / misses (mirrored from the verifier at scrape time).
    pub token_cache: IntCounterVec,
    /// Tokens not verified (`429`) because their connection or client certificate spent
    /// its budget of failed verifications, by budget.
    pub token_budget_refusals: IntCounterVec,
    /// Audit records the journal could not take (its queue full, its writer gone); never
    /// a consent route's record, which reserves its place before it is admitted.
    pub audit_dropped: IntCounter,
    /// File mode: loads of a changed consent file, by result.
    pub consent_file_loads: IntCounterVec,
    /// Requests whose client went away before the answer was complete.
    pub client_gone: IntCounter,
    /// Upstream targets ejected right now.
    pub ejected: IntGauge,
    /// Handshake-level: requests whose TLS digest was missing (should stay 0).
    pub no_tls_digest: IntCounter,
    /// Config generation currently serving.
    pub generation: IntGauge,
    /// Upstream connections used for a request that came from the keep-alive pool.
    pub upstream_reused: IntCounter,
    /// Upstream connections that had to be opened (TCP + TLS handshake) for a request.
    pub upstream_new: IntCounter,
    /// Seconds per reload build.
    pub reload_seconds: Histogram,
    /// API connections the hub closed on its own account, by reason (`over_capacity`,
    /// `handshake_timeout`, `untrusted_certificate`).
    pub connections_closed: IntCounterVec,
    /// `notAfter` (Unix seconds) of the hub's own certificates, by
    /// [`CertificateRole::label`]; for a chain or a CA bundle the earliest.
    pub certificate_expiry: IntGaugeVec,
    /// Each provider's SLA (`timeout_ms`) in seconds, by provider (at scrape).
    pub provider_timeout: GaugeVec,
    /// `[rollups]`: closed minutes not yet acknowledged by the control plane.
    pub rollup_pending: IntGauge,
    /// `[rollups]`: pushes by result (`ok`, `failed`, `rejected`).
    pub rollup_pushes: IntCounterVec,
    /// `[rollups]`: minutes given up, by reason (`bound`: the oldest beyond
    /// `max_pending_minutes`; `rejected`: refused by the control plane as invalid;
    /// `not_spooled`: left unacknowledged at shutdown and not written to the spool).
    pub rollup_dropped: IntCounterVec,
    /// `[live_checks]`: sampled provider answers by provider, route and result (`pass`,
    /// `violation`, `unchecked`).
    pub live_checks: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error found at start-up.
    #[allow(clippy::expect_used)]
    r.expect("static metric definition")
}

/// Registers a collector and hands it back (start-up).
fn registered<C: prometheus::core::Collector + Clone + 'static>(reg: &Registry, c: C) -> C {
    must(reg.register(Box::new(c.clone())));
    c
}

fn counter(reg: &Registry, name: &str, help: &str) -> IntCounter {
    registered(reg, must(IntCounter::new(name, help)))
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    registered(reg, must(IntGauge::new(name, help)))
}

fn counters(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(reg, must(IntCounterVec::new(Opts::new(name, help), labels)))
}

fn histograms(reg: &Registry, name: &str, help: &str, label: &str) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    registered(reg, must(HistogramVec::new(opts, &[label])))
}

impl Metrics {
    /// Registers every family (start-up).
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("hub".into()), None).unwrap_or_default();
        let upstream_connections = counters(
            &r,
            "upstream_connections_total",
            "Upstream connections used by requests, by whether they came from the pool",
            &["reused"],
        );
        let reload_opts = HistogramOpts::new(
            "config_reload_seconds",
            "Time to build and validate a snapshot",
        )
        .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0]);
        // The limits' families are the process's (every generation of the limits counts
        // into them); this registry exposes them.
        must(crate::limits::LimitMetrics::global().register(&r));
        Metrics {
            requests: counters(&r, "requests_total", "Requests by route template, decision code and provider", &["route", "code", "provider"]),
            latency: histograms(&r, "request_duration_seconds", "Hub end-to-end latency", "route"),
            upstream_latency: histograms(&r, "upstream_duration_seconds", "Time waiting for the provider", "provider"),
            consents: gauge(&r, "consent_cache_records", "Consents in the cache"),
            consent_version: gauge(&r, "consent_cache_version", "Change-feed version reflected by the consent cache"),
            feed_version: gauge(&r, "consent_feed_version", "Trust sidecar change-feed position applied by the follower"),
            feed_staleness: registered(&r, must(Gauge::new("consent_feed_staleness_seconds", "Seconds since the trust sidecar was last heard from"))),
            feed_resyncs: counter(&r, "consent_feed_resyncs_total", "Consent snapshot reloads after a gap, a resync line or a 410"),
            feed_reconnects: counter(&r, "consent_feed_reconnects_total", "Consent feed connections lost or refused"),
            trust_endpoint_switches: counter(&r, "trust_endpoint_switches_total", "Times the consent feed follower moved to another [trust] endpoint"),
            participant_changes: counter(&r, "participant_feed_changes_total", "Participant changes applied from the trust sidecar's feed"),
            participants_refused: gauge(&r, "participants_refused", "Registry records the hub could not apply (participants kept inactive)"),
            reloads: counters(&r, "config_reloads_total", "Configuration reloads by result", &["result"]),
            token_cache: counters(&r, "token_cache_total", "Token verification cache lookups by result", &["result"]),
            token_budget_refusals: counters(&r, "token_budget_refusals_total", "Tokens refused unverified (429) once their connection or certificate spent its budget of failed verifications", &["budget"]),
            audit_dropped: counter(&r, "audit_dropped_total", "Audit records the journal could not take (consent routes are refused instead)"),
            consent_file_loads: counters(&r, "consent_file_loads_total", "Loads of a changed consent file, by result", &["result"]),
            client_gone: counter(&r, "client_gone_total", "Requests whose client closed, reset or stopped reading its connection before the answer was complete"),
            ejected: gauge(&r, "upstream_ejected", "Provider base URLs out of rotation"),
            no_tls_digest: counter(&r, "requests_without_tls_digest_total", "Requests that arrived without a TLS client certificate digest"),
            generation: gauge(&r, "config_generation", "Configuration generation serving"),
            upstream_reused: upstream_connections.with_label_values(&["true"]),
            upstream_new: upstream_connections.with_label_values(&["false"]),
            reload_seconds: registered(&r, must(Histogram::with_opts(reload_opts))),
            connections_closed: counters(&r, "downstream_connections_closed_total", "API connections closed by the hub: over max_connections at accept, handshake timeout, client certificate refused after a change of trust", &["reason"]),
            certificate_expiry: registered(&r, must(IntGaugeVec::new(Opts::new("certificate_expiry_timestamp_seconds", "notAfter (Unix time) of the hub's own certificates, by certificate; for a chain or a CA bundle the earliest"), &["certificate"]))),
            provider_timeout: registered(&r, must(GaugeVec::new(Opts::new("provider_timeout_seconds", "Each provider's SLA: how long the hub waits for its answer (timeout_ms), in seconds"), &["provider"]))),
            rollup_pending: gauge(&r, "rollup_minutes_pending", "Closed rollup minutes not yet acknowledged by the control plane"),
            rollup_pushes: counters(&r, "rollup_pushes_total", "Rollup pushes to the control plane by result", &["result"]),
            rollup_dropped: counters(&r, "rollup_minutes_dropped_total", "Rollup minutes given up, by reason (bound, rejected, not_spooled)", &["reason"]),
            live_checks: counters(&r, "live_checks_total", "Sampled provider answers held to the provider schema, by provider, route and result (pass, violation, unchecked)", &["provider", "route", "result"]),
            registry: r,
        }
    }

    /// Text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let enc = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = enc.encode(&self.registry.gather(), &mut buf);
        buf
    }

    /// Sets `hub_certificate_expiry_timestamp_seconds` from a configuration load; a
    /// certificate the configuration no longer has loses its series. At start every role
    /// is set; after a reload only the roles a reload puts in force
    /// ([`CertificateRole::reloadable`]): the others keep what the process started with.
    pub fn set_certificate_expiry(&self, expiry: &CertificateExpiry, at_start: bool) {
        for role in CertificateRole::ALL {
            if !at_start && !role.reloadable() {
                continue;
            }
            match expiry.get(role) {
                Some(t) => self
                    .certificate_expiry
                    .with_label_values(&[role.label()])
                    .set(t),
                None => {
                    // Absent already is fine.
                    let _ = self.certificate_expiry.remove_label_values(&[role.label()]);
                }
            }
        }
    }

    /// Brings a monotonic counter up to an externally tracked total.
    pub fn sync_counter(counter: &IntCounter, total: u64) {
        let cur = counter.get();
        if total > cur {
            counter.inc_by(total - cur);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
