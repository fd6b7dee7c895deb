//! `loadgen`: the hub's contract-aware load generator. Reads a contract §9 manifest
//! (e.g. `gateway demo`'s `target/demo/manifest.json`), drives closed- or open-loop load
//! with many virtual users (each its own consent and token, on the API users' client
//! certificates), and prints latency percentiles, throughput and answers by status and
//! problem `code`; `--json` writes the same as JSON.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use benches::engine::{self, RunOptions, RunResult};
use benches::manifest::{self, Manifest, ManifestPlan, RouteKind, TargetKind};
use benches::stats;
use benches::workload::Plan;
use clap::Parser;

/// Contract-aware load generator of the hub.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Args {
    /// The contract §9 manifest (gateway demo writes target/demo/manifest.json).
    #[arg(long, default_value = "target/demo/manifest.json")]
    manifest: PathBuf,
    /// hub: contract requests with bearer tokens; proxy: the same plus the x-hub-*
    /// context headers (for a plain proxy); bank: the provider API directly.
    #[arg(long, value_enum, default_value_t = TargetKind::Hub)]
    target: TargetKind,
    /// Send to this URL instead of the manifest's (https://host:port).
    #[arg(long)]
    url: Option<String>,
    /// The route every virtual user calls.
    #[arg(long, value_enum, default_value_t = RouteKind::Accounts)]
    route: RouteKind,
    /// Virtual users (each with its own consent and token; they cycle over the
    /// manifest's usable consents when it has fewer).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// A new token on every request (pre-minted with the manifest's development key).
    #[arg(long)]
    cold: bool,
    /// Tokens to pre-mint in --cold mode (default: rate × duration, or 50,000).
    #[arg(long)]
    cold_pool: Option<usize>,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// HTTP/2 (else HTTP/1.1 keep-alive).
    #[arg(long)]
    http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Open loop at this many requests per second (else closed loop).
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Seconds to measure.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unmeasured warm-up first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the summary as JSON to this file ("-" for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(ok) if ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(a: &Args) -> benches::Result<bool> {
    if !(a.duration > 0.0 && a.timeout > 0.0 && a.warmup >= 0.0) {
        return Err(benches::HarnessError::Plan(
            "duration and timeout must be > 0, warmup >= 0".into(),
        ));
    }
    let m = Manifest::load(&a.manifest)?;
    let plan = manifest::plan(&m, &plan_options(a))?;
    let result = drive(a, &plan)?;
    let summaries: Vec<stats::GroupSummary> = result.groups.iter().map(stats::summarize).collect();
    for s in &summaries {
        print!("{}", stats::render(s));
    }
    if let Some(pool) = plan.groups.first().and_then(|g| g.tokens.as_ref()) {
        if pool.reused() > 0 {
            println!(
                "  token pool ran dry: {} requests reused a token (raise --cold-pool)",
                pool.reused()
            );
        }
    }
    if let Some(path) = &a.json {
        write_json(a, &plan, &summaries, path)?;
    }
    Ok(summaries
        .iter()
        .all(|s| s.requests > 0 && s.ok == s.requests))
}

/// The manifest plan's options from the arguments (the cold pool sized for the run).
fn plan_options(a: &Args) -> ManifestPlan {
    let cold_pool = a.cold_pool.unwrap_or_else(|| match a.rate {
        Some(r) => ((r * (a.duration + a.warmup)) * 1.05) as usize + 100,
        None => 50_000,
    });
    if a.cold {
        eprintln!("minting {cold_pool} single-use tokens …");
    }
    ManifestPlan {
        target: a.target,
        url: a.url.clone(),
        route: a.route,
        users: a.users,
        cold: a.cold,
        cold_pool,
        connections: a.connections,
        streams: a.streams,
        http2: a.http2,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        timeout: Duration::from_secs_f64(a.timeout),
    }
}

/// The warm-up (unmeasured), then the measured run.
fn drive(a: &Args, plan: &Plan) -> benches::Result<RunResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
        .map_err(benches::error::os("runtime"))?;
    rt.block_on(async {
        if a.warmup > 0.0 {
            let mut w = plan.clone();
            w.duration = Duration::from_secs_f64(a.warmup);
            engine::run(
                &w,
                RunOptions {
                    progress: Some("warm-up".into()),
                    ..RunOptions::default()
                },
            )
            .await?;
        }
        engine::run(
            plan,
            RunOptions {
                progress: Some(format!("{:?} {:?}", a.target, a.route).to_lowercase()),
                ..RunOptions::default()
            },
        )
        .await
    })
}

/// The summary as JSON, to `path` ("-": standard output).
fn write_json(
    a: &Args,
    plan: &Plan,
    summaries: &[stats::GroupSummary],
    path: &Path,
) -> benches::Result<()> {
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "manifest": a.manifest,
        "target": format!("{:?}", a.target).to_lowercase(),
        "url": plan.endpoint.addr.to_string(),
        "http2": a.http2,
        "cold_tokens": a.cold,
        "virtual_users": a.users,
        "groups": summaries,
    }))?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        std::fs::write(path, text).map_err(benches::error::io_at(path))?;
    }
    Ok(())
}
