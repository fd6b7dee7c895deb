//! Summaries of what the engine measured: percentiles from the HDR histograms,
//! throughput, answers by status and code; serialisable for JSON output and reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::engine::GroupResult;
use crate::workload::Load;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// Percentiles of a histogram of µs.
pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
    }
}

/// One group's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub name: String,
    /// `open 5000/s` or `closed c=64`.
    pub load: String,
    /// Offered rate (open loop).
    pub offered_rps: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// Answers (any status).
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Answers per second (open loop: over the window; closed loop: window and drain).
    pub rps: f64,
    /// 2xx answers per second.
    pub ok_rps: f64,
    /// Latency.
    pub latency: Latency,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Every non-2xx outcome by status and code (and transport failures).
    pub errors: BTreeMap<String, u64>,
    /// Open loop: tickets never sent (the generator had no free connection).
    pub unsent: u64,
    /// Connections re-opened.
    pub reconnects: u64,
    /// Response body bytes.
    pub bytes: u64,
    /// Window plus drain, seconds.
    pub elapsed_s: f64,
}

/// Summarises one group.
pub fn summarize(g: &GroupResult) -> GroupSummary {
    let secs = g.elapsed.as_secs_f64().max(1e-9);
    let rate_secs = g.responses as f64 / g.rps().max(1e-9);
    GroupSummary {
        name: g.name.clone(),
        load: g.load.label(g.connections),
        offered_rps: match g.load {
            Load::Open { rate } => Some(rate),
            Load::Closed => None,
        },
        connections: g.connections,
        requests: g.responses,
        ok: g.ok,
        rps: round1(g.rps()),
        ok_rps: round1(g.ok as f64 / rate_secs.max(1e-9)),
        latency: latency(&g.histogram),
        statuses: g.statuses.clone(),
        errors: g.errors.clone(),
        unsent: g.unsent,
        reconnects: g.reconnects,
        bytes: g.bytes,
        elapsed_s: round3(secs),
    }
}

/// Rounded to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounded to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A human summary block of one group.
pub fn render(s: &GroupSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({}, {} connections): {} answers in {:.2} s = {:.1}/s, {} ok ({:.1}/s)",
        s.name, s.load, s.connections, s.requests, s.elapsed_s, s.rps, s.ok, s.ok_rps
    );
    let l = &s.latency;
    let _ = writeln!(
        out,
        "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
    let statuses: Vec<String> = s
        .statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let _ = writeln!(out, "  statuses: {}", statuses.join(", "));
    if !s.errors.is_empty() {
        let _ = writeln!(out, "  not 2xx:");
        for (k, v) in &s.errors {
            let _ = writeln!(out, "    {v:>9}  {k}");
        }
    }
    if s.unsent > 0 {
        let _ = writeln!(
            out,
            "  unsent: {} (open loop could not keep the offered rate: the system saturated)",
            s.unsent
        );
    }
    if s.reconnects > 0 {
        let _ = writeln!(out, "  reconnects: {}", s.reconnects);
    }
    out
}
