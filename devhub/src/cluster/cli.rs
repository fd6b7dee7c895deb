//! The `hub-cluster` command (`scripts/cluster`): starts the cluster (optionally with
//! more or fewer gateways, a failure policy for every limit class, monthly quotas),
//! prints the manifest's path, the pieces with their process ids and ready-to-paste
//! `curl` lines, reports any piece that dies (the cluster keeps running: tests kill
//! pieces on purpose), and stops everything on SIGINT or SIGTERM. `hub-cluster bank
//! --spec FILE` is one sandbox bank process (the cluster starts its banks that way).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use policy::limits::{CappedRoute, LimitSettings, OnFailure};
use serde::de::{value, Deserialize, IntoDeserializer};

use super::{Binaries, Cluster, ClusterError, ClusterOptions};

/// `hub-cluster` options.
#[derive(Debug, clap::Parser)]
#[command(
    name = "hub-cluster",
    version,
    about = "The hub as a cluster on loopback: PostgreSQL, two trust replicas, Redis, N gateways sharing their limits on it, and the sandbox banks, each its own process."
)]
pub struct ClusterArgs {
    /// A sandbox bank process (what the cluster runs for each bank).
    #[command(subcommand)]
    pub command: Option<Sub>,
    /// `--log-format json|text`.
    #[command(flatten)]
    pub log: hub_log::LogArgs,
    /// Where to write the manifest (default: <dir>/manifest.json).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Directory for generated files and logs (default: <target>/cluster).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Replace the default rate limits by this many requests per second (burst twice
    /// that) for every limit kind, e.g. for load tests.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Gateways (at least 1), all sharing their rate limits and monthly quotas on the
    /// cluster's Redis (`[limits.store] gateways` = this number).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub gateways: u32,
    /// The failure policy of every limit class when Redis is slow or gone: `deny`
    /// (503 limits_unavailable), `allow`, or `local` (in-process, the quota divided by the
    /// number of gateways; the gateway's default).
    #[arg(long, value_parser = by_name::<OnFailure>)]
    pub limits_on_failure: Option<OnFailure>,
    /// Calendar-month quotas per consent × route, e.g. `balances=7,accounts=420`
    /// (routes: accounts, account, balances, transactions).
    #[arg(long, value_delimiter = ',', value_parser = monthly_quota)]
    pub monthly: Vec<(CappedRoute, u32)>,
    /// The time zone of the monthly quotas' months (IANA name, e.g. `Asia/Almaty`).
    #[arg(long)]
    pub monthly_time_zone: Option<String>,
    /// Customers per sandbox bank.
    #[arg(long, default_value_t = 200)]
    pub customers: usize,
    /// Worker threads of each gateway (default: the machine's cores).
    #[arg(long)]
    pub gateway_threads: Option<usize>,
    /// The trust replicas' feed heartbeat, in milliseconds (the gateways' stall bound is
    /// twice this, rounded up to whole seconds).
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Between two conformance probe rounds of the banks, in milliseconds (the replica
    /// that leads housekeeping probes; docs/oversight.md).
    #[arg(long, default_value_t = 45_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub probe_interval_ms: u64,
    /// The gateways' `max_staleness_secs` (default 30).
    #[arg(long)]
    pub max_staleness_secs: Option<u64>,
    /// Also run a synchronous standby; the replicas reach whichever is the primary.
    #[arg(long)]
    pub standby: bool,
    /// The trust replicas' tariff file (docs/billing.md; default: the demo's,
    /// conf/tariff.example.toml).
    #[arg(long)]
    pub tariff: Option<PathBuf>,
}

/// A serde enum (`deny`, `balances`, …) from its name.
fn by_name<T: for<'de> Deserialize<'de>>(name: &str) -> Result<T, String> {
    T::deserialize(IntoDeserializer::<value::Error>::into_deserializer(name))
        .map_err(|e| e.to_string())
}

/// `route=N`.
fn monthly_quota(s: &str) -> Result<(CappedRoute, u32), String> {
    let (route, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ROUTE=N, e.g. balances=240"))?;
    let n = n
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: the quota: {e}"))?;
    Ok((by_name(route.trim())?, n))
}

/// The gateways' `[limits]` when a flag changes them: the flat `--rate-limit` quotas (or
/// the defaults), every class's failure policy, the monthly quotas.
fn limits(args: &ClusterArgs) -> Result<Option<LimitSettings>, ClusterError> {
    let monthly_zone = args.monthly_time_zone.as_ref();
    if args.limits_on_failure.is_none() && args.monthly.is_empty() && monthly_zone.is_none() {
        return Ok(None);
    }
    let mut l = match args.rate_limit {
        Some(r) => crate::hubconfig::flat_limits(r)?,
        None => LimitSettings::default(),
    };
    if let Some(policy) = args.limits_on_failure {
        for class in l.classes.all_mut() {
            class.on_failure = policy;
        }
    }
    l.monthly.routes.extend(args.monthly.iter().copied());
    if let Some(zone) = monthly_zone {
        l.monthly.time_zone.clone_from(zone);
    }
    Ok(Some(l))
}

/// The hidden subcommand.
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Runs one sandbox bank from its spec (started by the cluster).
    #[command(hide = true)]
    Bank {
        /// The bank's spec (JSON), written by the cluster.
        #[arg(long)]
        spec: PathBuf,
    },
}

/// Resolves at SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The command: exit code 0 when stopped by a signal, 1 when the cluster failed.
pub fn main(args: ClusterArgs) -> ExitCode {
    let result = match args.command {
        Some(Sub::Bank { ref spec }) => super::run_bank(spec),
        None => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The options from the flags, with the programs beside this executable.
fn options(args: &ClusterArgs) -> Result<ClusterOptions, ClusterError> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| crate::target_dir().join("cluster"));
    let mut o = ClusterOptions::new(dir, Binaries::beside_current_exe()?);
    o.manifest = args.manifest.clone();
    o.rate_limit = args.rate_limit;
    o.limits = limits(args)?;
    o.gateways = args.gateways.max(1) as usize;
    o.customers = args.customers.max(crate::consents::CUSTOMERS_USED);
    o.gateway_threads = args.gateway_threads;
    o.heartbeat_ms = args.heartbeat_ms.max(100);
    o.probe_interval_ms = args.probe_interval_ms;
    o.max_staleness_secs = args.max_staleness_secs;
    o.standby = args.standby;
    o.tariff = args.tariff.clone();
    Ok(o)
}

/// Starts the cluster and runs it until SIGINT or SIGTERM.
fn run(args: ClusterArgs) -> Result<(), ClusterError> {
    let opts = options(&args)?;
    println!("starting the cluster in {} …", opts.dir.display());
    let mut cluster = super::start(&opts)?;
    println!("{}", summary(&cluster));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::io(cluster.dir()))?;
    runtime.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    for line in cluster.check() {
                        eprintln!("hub-cluster: {line}\n(the cluster keeps running; Ctrl-C stops it)");
                    }
                }
            }
        }
    });
    println!("stopping the cluster …");
    cluster.stop();
    println!("stopped");
    Ok(())
}

/// What the command prints once the cluster is up.
fn summary(cluster: &Cluster) -> String {
    let m = cluster.manifest();
    let pids = cluster.pids();
    let mut out = String::new();
    let _ = writeln!(out, "manifest: {}", cluster.manifest_path().display());
    let _ = writeln!(out, "logs:     {}", cluster.dir().join("logs").display());
    let _ = writeln!(
        out,
        "postgres: pid {}  {}",
        pids.postgres,
        m["postgres"]["url"].as_str().unwrap_or_default()
    );
    let _ = writeln!(out, "redis:    pid {}  {}", pids.redis, cluster.redis_url());
    if let Some(pid) = pids.postgres_standby {
        let _ = writeln!(out, "standby:  pid {pid}");
    }
    for (url, pid) in cluster.trust_urls().iter().zip(&pids.trust) {
        let _ = writeln!(out, "trust:    pid {pid}  {url}");
    }
    for ((url, admin), pid) in cluster
        .gateway_urls()
        .iter()
        .zip(cluster.admin_urls())
        .zip(&pids.gateways)
    {
        let _ = writeln!(out, "gateway:  pid {pid}  {url}  (admin {admin})");
    }
    for (p, pid) in m["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(&pids.banks)
    {
        let _ = writeln!(
            out,
            "bank:     pid {pid}  {}  {}",
            p["url"].as_str().unwrap_or_default(),
            p["id"].as_str().unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "\nTry it (Ctrl-C stops the cluster; `kill -9 PID` any piece to watch the rest carry on):\n\n{}",
        crate::curl_lines(m)
    );
    out.push_str(&other_gateways(m));
    out
}

/// The first consent's accounts through every other gateway.
fn other_gateways(m: &serde_json::Value) -> String {
    let mut out = String::new();
    let first = crate::curl_lines(m);
    let Some(line) = first.lines().find(|l| l.contains("/accounts")) else {
        return out;
    };
    let gw = m["gateway_url"].as_str().unwrap_or_default();
    for other in m["gateway_urls"].as_array().into_iter().flatten().skip(1) {
        let other = other.as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "# the same through {other}\n{}\n",
            line.replace(gw, other)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use policy::limits::{CappedRoute, OnFailure};

    use super::{limits, ClusterArgs};

    fn args(flags: &[&str]) -> Result<ClusterArgs, clap::Error> {
        ClusterArgs::try_parse_from(["hub-cluster"].iter().chain(flags))
    }

    #[test]
    fn limit_flags_become_the_gateways_limits() {
        let a = args(&[
            "--gateways",
            "3",
            "--rate-limit",
            "7",
            "--limits-on-failure",
            "deny",
            "--monthly",
            "balances=7,accounts=420",
            "--monthly-time-zone",
            "Asia/Almaty",
        ])
        .unwrap();
        assert_eq!(a.gateways, 3);
        let l = limits(&a).unwrap().unwrap();
        assert_eq!(l.per_user.per_second.get(), 7);
        assert_eq!(l.classes.user.on_failure, OnFailure::Deny);
        assert_eq!(l.classes.monthly.on_failure, OnFailure::Deny);
        assert_eq!(l.monthly.routes[&CappedRoute::Balances], 7);
        assert_eq!(l.monthly.routes[&CappedRoute::Accounts], 420);
        assert_eq!(l.monthly.time_zone, "Asia/Almaty");
        assert!(l.validate().is_ok());
    }

    #[test]
    fn without_limit_flags_the_defaults_stay() {
        let a = args(&[]).unwrap();
        assert_eq!(a.gateways, 2);
        assert!(limits(&a).unwrap().is_none());
    }

    #[test]
    fn bad_limit_flags_are_refused() {
        for bad in [
            &["--gateways", "0"][..],
            &["--limits-on-failure", "retry"],
            &["--monthly", "open_data=3"],
            &["--monthly", "balances"],
            &["--monthly", "balances=-1"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
