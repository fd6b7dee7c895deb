//! The report of a `compare` run: `report.json` (everything, per round), `report.md`
//! (one markdown table per scenario, hub-to-peer ratios, probes, revocation counts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::{io_at, Result};
use crate::stats::GroupSummary;

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC time the report was written.
    pub generated_at: String,
    /// The command that produced it.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// The settings used.
    pub settings: serde_json::Value,
    /// Versions of the peers.
    pub peers: BTreeMap<String, String>,
    /// Per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// Everything that made the run fail.
    pub failures: Vec<String>,
    /// No failure.
    pub ok: bool,
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model.
    pub cpu_model: String,
    /// `uname -srm`.
    pub kernel: String,
    /// Load averages at the start.
    pub load_at_start: String,
    /// Load averages at the end.
    pub load_at_end: String,
}

impl Machine {
    /// This machine now: logical CPUs, `/proc/cpuinfo` model, `uname -srm`, load averages.
    pub fn current(load_at_start: String) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        let kernel = std::process::Command::new("uname")
            .arg("-srm")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel,
            load_at_start,
            load_at_end: loadavg(),
        }
    }
}

/// `/proc/loadavg`, trimmed (empty where there is none).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A correctness probe.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The system.
    pub system: String,
    /// What was sent.
    pub probe: String,
    /// What the contract requires.
    pub expected: String,
    /// What came back.
    pub got: String,
    /// Whether it matched.
    pub pass: bool,
}

/// One round of one point.
#[derive(Debug, Clone, Serialize)]
pub struct RoundSummary {
    /// 1-based.
    pub round: usize,
    /// The group's numbers.
    pub stats: GroupSummary,
    /// CPU µs of the proxy per answered request (all groups).
    pub proxy_cpu_us_per_req: Option<f64>,
    /// CPU µs of the bank process per answered request.
    pub bank_cpu_us_per_req: f64,
    /// CPU µs of the load generator per answered request.
    pub loadgen_cpu_us_per_req: f64,
}

/// One system at one load, merged over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct PointReport {
    /// The system.
    pub system: String,
    /// `open 5000/s` or `closed c=64`.
    pub load: String,
    /// Offered rate (open loop).
    pub offered_rps: Option<f64>,
    /// The group (`main`; slow-bank also `slow-provider`).
    pub group: String,
    /// All rounds merged (histograms added, counts summed).
    pub merged: GroupSummary,
    /// Proxy CPU µs per answered request over all rounds (none for the bank alone).
    pub proxy_cpu_us_per_req: Option<f64>,
    /// Bank CPU µs per answered request.
    pub bank_cpu_us_per_req: f64,
    /// Load generator CPU µs per answered request.
    pub loadgen_cpu_us_per_req: f64,
    /// Open loop that fell behind the offered rate (answers < 97% of offered, or unsent tickets).
    pub saturated: bool,
    /// Per round.
    pub rounds: Vec<RoundSummary>,
}

/// Hub ÷ peer at one load.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The load.
    pub load: String,
    /// The peer.
    pub peer: String,
    /// Hub CPU per request ÷ peer's (the bank: its own process's CPU is not a proxy's, so none).
    pub cpu_per_request: Option<f64>,
    /// Hub p99 ÷ peer p99.
    pub p99: Option<f64>,
    /// Hub throughput ÷ peer's (closed loop only: in open loop both carry the offered rate).
    pub throughput: Option<f64>,
}

/// One revocation wave.
#[derive(Debug, Clone, Serialize)]
pub struct RevocationWave {
    /// The system.
    pub system: String,
    /// 1-based round.
    pub round: usize,
    /// 1-based wave.
    pub wave: usize,
    /// Consents revoked in this wave.
    pub revoked_consents: usize,
    /// When the revocation was written (ms after the window started).
    pub written_at_ms: f64,
    /// When it took effect (ms after the window started), if it did.
    pub effect_at_ms: Option<f64>,
    /// How the effect was detected.
    pub effect_source: String,
    /// Effect minus write.
    pub lag_ms: Option<f64>,
    /// Requests on those consents answered 2xx before the effect.
    pub served_before_effect: u64,
    /// Requests on those consents sent after the effect and refused `403 consent_revoked`.
    pub refused_after_effect: u64,
    /// Requests on those consents sent after the effect and still served: must be 0.
    pub served_after_effect: u64,
}

/// One scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Its name.
    pub name: String,
    /// What it measures.
    pub what: String,
    /// Consents loaded.
    pub consents: usize,
    /// Virtual users.
    pub virtual_users: usize,
    /// Systems run.
    pub systems: Vec<String>,
    /// Probes before measuring.
    pub checks: Vec<Check>,
    /// Every system × load × group.
    pub points: Vec<PointReport>,
    /// Hub ÷ peers.
    pub ratios: Vec<Ratio>,
    /// Revocation waves (revocation only).
    pub revocation: Vec<RevocationWave>,
    /// Peak RSS per system (MiB; summed over the system's processes).
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// Caveats and events worth knowing.
    pub notes: Vec<String>,
    /// Charts written (file names in the report folder).
    pub charts: Vec<String>,
}

fn f(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), f)
}

/// The title, the run's command, machine, peers and result, and how to read the tables.
fn header(s: &mut String, r: &Report) {
    let _ = writeln!(s, "# Hub side by side: hub, HAProxy, nginx, bank\n");
    let _ = writeln!(s, "- command: `{}`", r.command);
    let _ = writeln!(s, "- generated: {}", r.generated_at);
    let _ = writeln!(
        s,
        "- machine: {} CPUs ({}), {}; load average at start {}, at end {}",
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.kernel,
        r.machine.load_at_start,
        r.machine.load_at_end
    );
    for (k, v) in &r.peers {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- result: {}\n",
        if r.ok {
            "ok".to_string()
        } else {
            format!("FAILED ({})", r.failures.join("; "))
        }
    );
    let _ = writeln!(
        s,
        "CPU µs/req: CPU time (user + system, every process and thread of the system, from `/proc/PID/stat`) spent during the window, divided by the answers in it. Latency in ms; in open loop it counts from the intended send time. All systems run on the same 2 cores as the load generator and the bank.\n"
    );
}

/// The markdown report.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    header(&mut s, r);
    for sc in &r.scenarios {
        let _ = writeln!(s, "## {}\n\n{}\n", sc.name, sc.what);
        let _ = writeln!(
            s,
            "{} consents loaded, {} virtual users.\n",
            sc.consents, sc.virtual_users
        );
        points_table(&mut s, &sc.points);
        if !sc.ratios.is_empty() {
            let _ = writeln!(s, "\nHub ÷ peer (below 1: the hub does better):\n");
            let _ = writeln!(s, "| load | peer | CPU/req | p99 | throughput |");
            let _ = writeln!(s, "|---|---|---:|---:|---:|");
            for q in &sc.ratios {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    q.load,
                    q.peer,
                    opt(q.cpu_per_request),
                    opt(q.p99),
                    opt(q.throughput)
                );
            }
        }
        if !sc.peak_rss_mib.is_empty() {
            let rss: Vec<String> = sc
                .peak_rss_mib
                .iter()
                .map(|(k, v)| format!("{k} {v:.0} MiB"))
                .collect();
            let _ = writeln!(s, "\nPeak RSS: {}.", rss.join(", "));
        }
        if !sc.revocation.is_empty() {
            let _ = writeln!(s, "\n| system | round | wave | revoked | written at ms | effect at ms | lag ms | detected by | served before | refused after | **served after effect** |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|");
            for w in &sc.revocation {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | **{}** |",
                    w.system,
                    w.round,
                    w.wave,
                    w.revoked_consents,
                    w.written_at_ms,
                    w.effect_at_ms.map_or("never".into(), |x| format!("{x:.0}")),
                    w.lag_ms.map_or("–".into(), |x| format!("{x:.0}")),
                    w.effect_source,
                    w.served_before_effect,
                    w.refused_after_effect,
                    w.served_after_effect
                );
            }
        }
        probes_line(&mut s, &sc.checks);
        for n in &sc.notes {
            let _ = writeln!(s, "\n- {n}");
        }
        for c in &sc.charts {
            if c.ends_with(".svg") {
                let _ = writeln!(s, "\n![{}: latency against offered load]({c})", sc.name);
            }
        }
        let _ = writeln!(s);
    }
    s
}

/// One row per system × load × group.
fn points_table(s: &mut String, points: &[PointReport]) {
    let _ = writeln!(s, "| system | load | group | answers | ok | req/s | p50 | p90 | p99 | p99.9 | max | proxy CPU µs/req | bank CPU µs/req | loadgen CPU µs/req | not 2xx |");
    let _ = writeln!(
        s,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for p in points {
        let m = &p.merged;
        let errs: Vec<String> = m.errors.iter().map(|(k, v)| format!("{v}× {k}")).collect();
        let mut errs = errs.join(", ");
        if m.unsent > 0 {
            if !errs.is_empty() {
                errs.push_str(", ");
            }
            let _ = write!(errs, "{} unsent", m.unsent);
        }
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.system,
            p.load,
            if p.saturated { " (saturated)" } else { "" },
            p.group,
            m.requests,
            m.ok,
            f(m.rps),
            f(m.latency.p50_ms),
            f(m.latency.p90_ms),
            f(m.latency.p99_ms),
            f(m.latency.p999_ms),
            f(m.latency.max_ms),
            opt(p.proxy_cpu_us_per_req),
            f(p.bank_cpu_us_per_req),
            f(p.loadgen_cpu_us_per_req),
            if errs.is_empty() { "–".into() } else { errs }
        );
    }
}

/// How many probes answered as the contract requires, naming those that did not.
fn probes_line(s: &mut String, checks: &[Check]) {
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.pass).collect();
    let _ = writeln!(
        s,
        "\nProbes before measuring: {} of {} as the contract requires{}.",
        checks.len() - failed.len(),
        checks.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(
                "; FAILED: {}",
                failed
                    .iter()
                    .map(|c| format!(
                        "{} {} (expected {}, got {})",
                        c.system, c.probe, c.expected, c.got
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write(r: &Report, dir: &Path) -> Result<()> {
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(r)?).map_err(io_at(&json))?;
    let md = dir.join("report.md");
    std::fs::write(&md, markdown(r)).map_err(io_at(&md))
}
