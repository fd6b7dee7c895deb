//! `compare`: the hub side by side with HAProxy (equivalent policy), nginx (plain TLS
//! proxy) and the bare sandbox bank, in one run, interleaved, on this machine. Writes
//! `target/bench-report/` (report.json, report.md, latency charts). `--smoke` runs a few
//! seconds per system and exits non-zero when a system does not answer correctly.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use benches::report::{self, Machine, Report, ScenarioReport};
use benches::runner::{Runner, Settings};
use benches::scenario::{Scenario, System};
use benches::{chart, peers, procs, HarnessError, Result};
use clap::{Parser, Subcommand};

/// The hub side by side with HAProxy, nginx and the bare bank.
#[derive(Debug, Parser)]
#[command(name = "compare", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Scenario to run (repeatable; default: all).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Systems to include (repeatable; default: all).
    #[arg(long = "system", value_enum)]
    systems: Vec<System>,
    /// A few seconds per system (for CI); exits non-zero on any wrong answer.
    #[arg(long)]
    smoke: bool,
    /// Seconds per measurement window (default 20; smoke 1).
    #[arg(long)]
    duration: Option<f64>,
    /// Open-loop offered load in requests/s (repeatable; default 1000, 2500, 5000; smoke 300).
    #[arg(long = "rate")]
    rates: Vec<f64>,
    /// Interleaved rounds (at least 2).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Skip the closed-loop point (max throughput).
    #[arg(long)]
    no_closed: bool,
    /// Seconds of unmeasured warm-up per system and scenario (default 3; smoke 0.3).
    #[arg(long)]
    warmup: Option<f64>,
    /// Connections of the measured stream.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// HTTP/2 to the systems under test (default HTTP/1.1 keep-alive).
    #[arg(long)]
    http2: bool,
    /// Streams per HTTP/2 connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Report folder (default: <target>/bench-report).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The gateway binary (default: build it with `cargo build --release -p gateway`).
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// The hub's worker threads (default: its own default, the machine's cores).
    #[arg(long)]
    hub_threads: Option<usize>,
    /// HAProxy nbthread and nginx worker_processes (default: the machine's cores).
    #[arg(long)]
    proxy_threads: Option<usize>,
    /// Worker threads of the bank process.
    #[arg(long, default_value_t = 1)]
    bank_threads: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    loadgen_threads: usize,
    /// Consents loaded in big-cache.
    #[arg(long, default_value_t = 1_000_000)]
    big_cache_consents: usize,
    /// Virtual users of big-cache, spread over all its consents (default 20,000; smoke 2,000).
    #[arg(long)]
    big_cache_users: Option<usize>,
    /// Largest pool of single-use tokens minted for cold-tokens.
    #[arg(long, default_value_t = 3_000_000)]
    cold_pool_max: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Do not install HAProxy / nginx when missing.
    #[arg(long)]
    no_install: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: run the sandbox banks of a spec file (started by compare itself).
    #[command(hide = true)]
    Bank {
        /// The spec file.
        #[arg(long)]
        spec: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Bank { spec }) = &args.command {
        return match benches::bankproc::main(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bank: {e}");
                ExitCode::from(2)
            }
        };
    }
    procs::install_cleanup_handlers();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            procs::cleanup_all();
            eprintln!("compare: {e}");
            ExitCode::from(2)
        }
    }
}

/// `<target>`: CARGO_TARGET_DIR, else the folder above this binary's profile folder.
fn target_dir(exe: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    exe.parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

fn build_gateway(target: &Path) -> Result<PathBuf> {
    let mut bins = benches::build::release_binaries(target, &["gateway"])?;
    bins.pop()
        .ok_or_else(|| HarnessError::Plan("no gateway binary".into()))
}

fn utc_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The windows, warm-up and rates of the run, as given (or their defaults), checked.
struct Timing {
    /// Seconds per measurement window.
    duration: f64,
    /// Seconds of warm-up.
    warmup: f64,
    /// Open-loop rates.
    rates: Vec<f64>,
}

impl Timing {
    fn of(a: &Args) -> Result<Timing> {
        if a.rounds < 2 {
            return Err(HarnessError::Plan(
                "--rounds must be at least 2 (A B A B …)".into(),
            ));
        }
        let duration = a.duration.unwrap_or(if a.smoke { 1.0 } else { 20.0 });
        let warmup = a.warmup.unwrap_or(if a.smoke { 0.3 } else { 3.0 });
        let mut rates = a.rates.clone();
        if rates.is_empty() {
            rates = if a.smoke {
                vec![300.0]
            } else {
                vec![1000.0, 2500.0, 5000.0]
            };
        }
        if !(duration > 0.0 && warmup >= 0.0 && a.timeout > 0.0)
            || rates.iter().any(|r| r.is_nan() || *r <= 0.0)
        {
            return Err(HarnessError::Plan(
                "duration, rates and timeout must be > 0, warmup >= 0".into(),
            ));
        }
        Ok(Timing {
            duration,
            warmup,
            rates,
        })
    }
}

fn run(a: &Args) -> Result<bool> {
    let load_at_start = report::loadavg();
    if cfg!(debug_assertions) {
        eprintln!("warning: compare is a debug build; its load generator is slow (use --release)");
    }
    let timing = Timing::of(a)?;
    let exe = std::env::current_exe().map_err(benches::error::os("current executable"))?;
    let target = target_dir(&exe);
    let out = report_folder(a, &target)?;
    let gateway = match &a.gateway {
        Some(g) => g.clone(),
        None => build_gateway(&target)?,
    };
    let peers = peers::ensure(!a.no_install)?;
    let settings = settings(a, &timing, out.clone(), gateway, exe, peers.clone());
    let settings_json = settings_json(a, &timing, &settings);
    let mut peers_versions = std::collections::BTreeMap::new();
    peers_versions.insert("haproxy".to_string(), peers::version_of(&peers.haproxy));
    peers_versions.insert("nginx".to_string(), peers::version_of(&peers.nginx));

    let scenarios = settings.scenarios.clone();
    let mut runner = Runner::new(settings, a.loadgen_threads)?;
    let (reports, failures) = run_scenarios(&mut runner, &scenarios, &out);
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let report = Report {
        generated_at: utc_now(),
        command: format!("cargo run --release -p benches --bin compare -- {command}"),
        machine: Machine::current(load_at_start),
        settings: settings_json,
        peers: peers_versions,
        scenarios: reports,
        ok: failures.is_empty(),
        failures: failures.clone(),
    };
    report::write(&report, &out)?;
    println!("{}", report::markdown(&report));
    eprintln!("report: {}", out.join("report.md").display());
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    Ok(failures.is_empty())
}

/// The report folder (created), without an earlier run's report and charts: it must
/// describe this run only.
fn report_folder(a: &Args, target: &Path) -> Result<PathBuf> {
    let out = a.out.clone().unwrap_or_else(|| target.join("bench-report"));
    std::fs::create_dir_all(&out).map_err(benches::error::io_at(&out))?;
    let out = std::fs::canonicalize(&out).map_err(benches::error::io_at(&out))?;
    if let Ok(entries) = std::fs::read_dir(&out) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("latency-") || name == "report.json" || name == "report.md" {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(out)
}

/// The runner's settings from the arguments.
fn settings(
    a: &Args,
    t: &Timing,
    out: PathBuf,
    gateway: PathBuf,
    self_exe: PathBuf,
    peers: peers::PeerBinaries,
) -> Settings {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let scenarios = if a.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        a.scenarios.clone()
    };
    let systems = if a.systems.is_empty() {
        System::ALL.to_vec()
    } else {
        a.systems.clone()
    };
    Settings {
        scenarios,
        systems,
        smoke: a.smoke,
        duration: Duration::from_secs_f64(t.duration),
        warmup: Duration::from_secs_f64(t.warmup),
        rates: t.rates.clone(),
        closed: !a.no_closed && !a.smoke,
        rounds: a.rounds,
        connections: a.connections.max(1),
        http2: a.http2,
        streams: a.streams.max(1),
        hub_threads: a.hub_threads,
        proxy_threads: a.proxy_threads.unwrap_or(cores),
        bank_threads: a.bank_threads.max(1),
        big_consents: a.big_cache_consents.max(1),
        big_users: a
            .big_cache_users
            .unwrap_or(if a.smoke { 2_000 } else { 20_000 }),
        cold_pool_max: a.cold_pool_max,
        request_timeout: Duration::from_secs_f64(a.timeout),
        out,
        gateway,
        self_exe,
        peers,
    }
}

/// The settings as the report records them.
fn settings_json(a: &Args, t: &Timing, s: &Settings) -> serde_json::Value {
    serde_json::json!({
        "scenarios": s.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "systems": s.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "smoke": a.smoke,
        "duration_s": t.duration,
        "warmup_s": t.warmup,
        "rates": t.rates,
        "closed_loop": s.closed,
        "rounds": a.rounds,
        "connections": s.connections,
        "http2": a.http2,
        "streams_per_connection": if a.http2 { s.streams } else { 1 },
        "hub_threads": a.hub_threads.map_or_else(|| "default (cores)".to_string(), |t| t.to_string()),
        "proxy_threads": s.proxy_threads,
        "bank_threads": s.bank_threads,
        "loadgen_threads": a.loadgen_threads,
        "big_cache_consents": s.big_consents,
        "big_cache_users": s.big_users,
        "gateway": s.gateway,
    })
}

/// Runs every scenario (a failed one does not stop the others), draws its charts and
/// judges it: the reports and everything that failed.
fn run_scenarios(
    runner: &mut Runner,
    scenarios: &[Scenario],
    out: &Path,
) -> (Vec<ScenarioReport>, Vec<String>) {
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for sc in scenarios {
        let started = std::time::Instant::now();
        let outcome = runner.scenario(*sc);
        eprintln!("   {sc}: {:.1} s", started.elapsed().as_secs_f64());
        match outcome {
            Ok(mut r) => {
                match chart::write(&r, out) {
                    Ok((files, note)) => {
                        r.charts = files
                            .iter()
                            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
                            .collect();
                        r.notes.extend(note);
                    }
                    Err(e) => r.notes.push(format!("chart not drawn: {e}")),
                }
                failures.extend(judge(&r));
                reports.push(r);
            }
            Err(e) => {
                procs::cleanup_all();
                failures.push(format!("{sc}: {e}"));
                eprintln!("   {sc} failed: {e}");
            }
        }
    }
    (reports, failures)
}

/// What makes a scenario fail: a wrong probe answer, a system that answered nothing or
/// answered something else than 2xx (beyond the revocation scenario's expected 403s),
/// a revoked consent served after its revocation took effect.
fn judge(r: &ScenarioReport) -> Vec<String> {
    let mut out = Vec::new();
    for c in r.checks.iter().filter(|c| !c.pass) {
        out.push(format!(
            "{}: {} {}: expected {}, got {}",
            r.name, c.system, c.probe, c.expected, c.got
        ));
    }
    for p in &r.points {
        let m = &p.merged;
        if m.requests == 0 {
            out.push(format!(
                "{}: {} {} {}: no answer",
                r.name, p.system, p.load, p.group
            ));
            continue;
        }
        let unexpected: u64 = m
            .errors
            .iter()
            .filter(|(k, _)| !(r.name == "revocation" && k.as_str() == "403 consent_revoked"))
            .map(|(_, v)| *v)
            .sum();
        if unexpected as f64 > (m.requests as f64 * 0.001).max(0.0) {
            out.push(format!(
                "{}: {} {} {}: {} unexpected failures ({:?})",
                r.name, p.system, p.load, p.group, unexpected, m.errors
            ));
        }
    }
    for w in &r.revocation {
        if w.served_after_effect > 0 {
            out.push(format!(
                "{}: {} round {} wave {}: {} requests served after the revocation took effect",
                r.name, w.system, w.round, w.wave, w.served_after_effect
            ));
        }
        if w.effect_at_ms.is_none() {
            out.push(format!(
                "{}: {} round {} wave {}: the revocation never took effect",
                r.name, w.system, w.round, w.wave
            ));
        }
    }
    out
}
