//! The sidecar's Prometheus metrics (`GET /metrics`: operator certificate, internal
//! listener when there is one): provider oversight — probes by result, and each provider
//! API's grade, publication and sustained SLA breach; billing — calls stored too late for
//! their month's issued statements. Labels are participants' BINs (public registry ids) and
//! API names; never a customer, a consent or an account.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::grade::Grade;
use crate::oversight::ApiStatus;

/// The metrics of one sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `hub_probe_results_total{provider,api,result}`: probes run, `pass` or `fail`.
    pub probes: IntCounterVec,
    /// `hub_provider_api_listed{provider,api}`: 1 published, 0 delisted.
    pub listed: IntGaugeVec,
    /// `hub_provider_api_grade{provider,api}`: 0 conformant, 1 degraded, 2 failing.
    pub grade: IntGaugeVec,
    /// `hub_provider_api_sla_breach{provider,api}`: 1 while the SLA window breaches.
    pub breach: IntGaugeVec,
    /// `hub_usage_late_calls_total{participant}`: calls stored for a month whose
    /// statements were already issued (not in them: an adjustment may be due), counted
    /// under each participant whose statement they concern (API user and provider).
    pub late_calls: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics. Called at start-up; the names and labels are fixed and
    /// valid, so creating them cannot fail.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let labels = ["provider", "api"];
        let probes = IntCounterVec::new(
            Opts::new(
                "hub_probe_results_total",
                "Conformance probes run, by result",
            ),
            &["provider", "api", "result"],
        )
        .expect("a valid metric");
        let listed = IntGaugeVec::new(
            Opts::new(
                "hub_provider_api_listed",
                "1 when the provider API is published",
            ),
            &labels,
        )
        .expect("a valid metric");
        let grade = IntGaugeVec::new(
            Opts::new(
                "hub_provider_api_grade",
                "0 conformant, 1 degraded, 2 failing (delisted unless pinned)",
            ),
            &labels,
        )
        .expect("a valid metric");
        let breach = IntGaugeVec::new(
            Opts::new(
                "hub_provider_api_sla_breach",
                "1 while the provider API's SLA window breaches (sustained breach: failing)",
            ),
            &labels,
        )
        .expect("a valid metric");
        let late_calls = IntCounterVec::new(
            Opts::new(
                "hub_usage_late_calls_total",
                "Calls stored for a month whose statements were already issued",
            ),
            &["participant"],
        )
        .expect("a valid metric");
        for c in [
            Box::new(probes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(late_calls.clone()),
            Box::new(listed.clone()),
            Box::new(grade.clone()),
            Box::new(breach.clone()),
        ] {
            registry.register(c).expect("distinct metric names");
        }
        Metrics {
            registry,
            probes,
            listed,
            grade,
            breach,
            late_calls,
        }
    }

    /// Sets the gauges of every graded API.
    pub fn observe(&self, statuses: &[ApiStatus]) {
        for s in statuses {
            let (p, a) = (s.provider.to_string(), s.api.as_str());
            self.listed
                .with_label_values(&[p.as_str(), a])
                .set(i64::from(s.listed));
            let g = match s.grade {
                Grade::Conformant => 0,
                Grade::Degraded => 1,
                Grade::Failing => 2,
            };
            self.grade.with_label_values(&[p.as_str(), a]).set(g);
            self.breach
                .with_label_values(&[p.as_str(), a])
                .set(i64::from(s.breaching));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
