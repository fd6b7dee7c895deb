//! `trust-bench`: benchmarks of the trust sidecar and the gateways that follow it (issue
//! 4), recorded, not asserted. Every process is real: the `trust` binary on a SQLite file,
//! `gateway run` with `[trust]`, the sandbox banks in their own process, all on loopback
//! over mTLS.
//!
//! - `revocation-latency`: one sidecar, two gateways, background load through both; N
//!   revocations one after another, each timed from the arrival of the `DELETE` answer to
//!   the moment both gateways refuse the consent (`403 consent_revoked`), measured by
//!   probing each gateway in a tight loop with that consent's token.
//! - `token-endpoint`: `POST /oauth2/token` (client_credentials, mTLS client auth) from N
//!   concurrent keep-alive clients for D seconds: throughput, latency, sidecar CPU/token.
//! - `feed-apply`: how fast a gateway's follower applies feed changes: N changes loaded
//!   into a stopped sidecar's database through its storage API, then the gateway's
//!   `hub_consent_feed_version` timed from the first sample past the old head (the start
//!   mark) to the last change, counting only the changes applied after the mark; plus the
//!   follower's steps (transfer, parse, apply) measured in this process on the same stream,
//!   and a cold gateway loading the same registry as a snapshot.
//! - `revocation-latency --postgres`: the same as `revocation-latency`, with two trust
//!   replicas (processes) on one PostgreSQL server started by the bench, revocations
//!   sent to each in turn, and each gateway following both (`[trust] urls`).
//! - `failover`: two replicas on PostgreSQL, two gateways following both, steady load
//!   through both gateways; N times: the replica the gateways follow is killed (SIGKILL),
//!   a consent is revoked through the survivor and both gateways are probed until they
//!   refuse it (the time from the kill), then the killed replica is restarted.
//! - `write-throughput`: consent creations per second over the sidecar's API from N
//!   concurrent API-user clients: SQLite, one PostgreSQL replica, two PostgreSQL replicas
//!   sharing the clients; and single-consent transactions through the storage API on
//!   each engine; interleaved rounds.
//!
//! Writes `<target>/bench-report/trust/<scenario>.json` and `.txt`; `--smoke` runs each in
//! a few seconds (for CI).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::bankproc::{self, BankProcess};
use benches::error::{io_at, os};
use benches::fixture::{BenchEnv, ConsentSource, AUDIENCE, ISSUER};
use benches::pgrig::PgRig;
use benches::procs;
use benches::report::{loadavg, Machine};
use benches::sidecar::{
    bearer_value, start_gateway, token_form, wait_feed_version, Gateway, HttpConn, Registry, Reply,
    Sidecar, SidecarSpec, FORM,
};
use benches::stats::{latency, round1, round3, Latency};
use benches::{HarnessError, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use consent_cache::{Bin, Change, ConsentStatus, ConsentStore, Permission};
use hdrhistogram::Histogram;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method};
use serde::Serialize;
use serde_json::{json, Value};

/// Benchmarks of the trust sidecar and its gateways.
#[derive(Debug, Parser)]
#[command(name = "trust-bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
    /// A few seconds per benchmark (for CI).
    #[arg(long, global = true)]
    smoke: bool,
    /// The gateway binary (default: `cargo build --release -p gateway -p trust`).
    #[arg(long, global = true)]
    gateway: Option<PathBuf>,
    /// The trust binary (default: built as above).
    #[arg(long, global = true)]
    trust: Option<PathBuf>,
    /// Report folder (default: <target>/bench-report/trust).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Worker threads of each gateway.
    #[arg(long, global = true, default_value_t = 1)]
    hub_threads: usize,
    /// Worker threads of this process's clients (probes, load).
    #[arg(long, global = true, default_value_t = 2)]
    client_threads: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Revocation → both gateways refuse: p50/p90/p99/max over N revocations.
    RevocationLatency(RevocationArgs),
    /// Token endpoint throughput, latency and sidecar CPU per token.
    TokenEndpoint(TokenArgs),
    /// The follower's feed apply rate (changes/s), end to end and step by step.
    FeedApply(FeedArgs),
    /// Replica death → both gateways resume on the other (two replicas on PostgreSQL).
    Failover(failover::FailoverArgs),
    /// Trust writes per second: SQLite against PostgreSQL (one and two replicas).
    WriteThroughput(writes::WriteArgs),
    /// All of them, in this order, with their defaults (revocation-latency twice: SQLite,
    /// then PostgreSQL).
    All,
    /// Internal: run the sandbox banks of a spec file (started by trust-bench itself).
    #[command(hide = true)]
    Bank {
        /// The spec file.
        #[arg(long)]
        spec: PathBuf,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct RevocationArgs {
    /// Revocations (default 1000; smoke 50).
    #[arg(long)]
    revocations: Option<usize>,
    /// Background requests per second through each gateway (default 150; smoke 50).
    #[arg(long)]
    background_rate: Option<f64>,
    /// Background connections per gateway.
    #[arg(long, default_value_t = 4)]
    background_connections: usize,
    /// Two trust replicas on one PostgreSQL server (started here) instead of one sidecar
    /// on SQLite; revocations go to each replica in turn, gateways follow both.
    #[arg(long)]
    postgres: bool,
}

#[path = "trust_bench/failover.rs"]
mod failover;
#[path = "trust_bench/writes.rs"]
mod writes;

#[derive(Debug, Clone, clap::Args)]
struct TokenArgs {
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of measurement (default 15; smoke 2).
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Debug, Clone, clap::Args)]
struct FeedArgs {
    /// Consent changes to apply (half creations, half authorisations; default 500,000;
    /// smoke 20,000).
    #[arg(long)]
    changes: Option<u64>,
    /// Consents written per storage transaction during the load.
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Cmd::Bank { spec } = &args.command {
        return match bankproc::main(spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bank: {e}");
                ExitCode::from(2)
            }
        };
    }
    procs::install_cleanup_handlers();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            procs::cleanup_all();
            eprintln!("trust-bench: {e}");
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

/// Builds the release binaries (or keeps existing ones when cargo is not available) and
/// returns the `gateway` and `trust` ones.
fn build_binaries(target: &Path) -> Result<(PathBuf, PathBuf)> {
    match benches::build::release_binaries(target, &["gateway", "trust"])?[..] {
        [ref gateway, ref trust] => Ok((gateway.clone(), trust.clone())),
        _ => Err(HarnessError::Plan("no gateway or trust binary".into())),
    }
}

/// What every benchmark shares.
struct Bench {
    env: BenchEnv,
    operator: sandbox::pki::Identity,
    work: PathBuf,
    out: PathBuf,
    gateway: PathBuf,
    trust: PathBuf,
    self_exe: PathBuf,
    smoke: bool,
    hub_threads: usize,
    rt: tokio::runtime::Runtime,
    command: String,
}

impl Bench {
    /// A fresh folder for one benchmark.
    fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(io_at(&d))?;
        }
        std::fs::create_dir_all(&d).map_err(io_at(&d))?;
        Ok(d)
    }

    fn sidecar_spec(&self, dir: &Path) -> Result<SidecarSpec> {
        let pki = &self.env.pki;
        Ok(SidecarSpec {
            exe: self.trust.clone(),
            port: procs::free_port()?,
            dir: dir.to_path_buf(),
            db: dir.join("trust.db"),
            postgres: None,
            cert: pki.hub_server().cert_path.clone(),
            key: pki.hub_server().key_path.clone(),
            ca: pki.ca_cert_path().to_path_buf(),
            operator_cert: self.operator.cert_path.clone(),
            hub_cert: pki.hub_client().cert_path.clone(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            heartbeat_ms: 1000,
            token_lifetime_secs: 4 * 3600,
        })
    }

    fn bank(&self, dir: &Path) -> Result<BankProcess> {
        bankproc::spawn(&self.env, dir, &self.self_exe, 1, None)
    }

    /// `n` trust replicas on `pg`'s database `db`, each with its own port and folder
    /// (`dir/trust-1`, …).
    fn replica_specs(
        &self,
        dir: &Path,
        pg: &PgRig,
        db: &str,
        n: usize,
    ) -> Result<Vec<SidecarSpec>> {
        let mut specs = Vec::with_capacity(n);
        for i in 1..=n {
            let d = dir.join(format!("trust-{i}"));
            std::fs::create_dir_all(&d).map_err(io_at(&d))?;
            let mut spec = self.sidecar_spec(&d)?;
            spec.postgres = Some(pg.target(db));
            // The defaults (`trust serve --heartbeat-ms 5000`, the hub's `heartbeat_secs = 5`):
            // a killed replica's connections are closed by the kernel and noticed at once; the
            // heartbeat only bounds a silent one (10 s). A replica also ends its streams when
            // it has not read its database within max(interval, 2 s), which a 1 s interval
            // trips on a loaded machine.
            spec.heartbeat_ms = REPLICA_HEARTBEAT_MS;
            specs.push(spec);
        }
        Ok(specs)
    }

    /// A gateway following the trust endpoints of `follow` (all of them, in order).
    fn gateway(
        &self,
        dir: &Path,
        name: &str,
        banks: [SocketAddr; 2],
        follow: &Follow,
        jwks: bool,
    ) -> Result<Gateway> {
        start_gateway(
            &self.gateway,
            &self.env,
            dir,
            name,
            Some(self.hub_threads),
            banks,
            ConsentSource::Trust {
                urls: &follow.urls,
                max_staleness_secs: 30,
                jwks,
                heartbeat_secs: follow.heartbeat_secs,
            },
        )
    }

    /// The user-side client TLS configuration of user `i`.
    fn user_tls(&self, i: usize) -> Result<Arc<rustls::ClientConfig>> {
        let id = self.env.user_identity(i)?;
        benches::tls::client_config(
            self.env.pki.ca_cert_path(),
            &id.cert_path,
            &id.key_path,
            false,
        )
    }

    /// Writes `<out>/<name>.json` and `.txt` and prints the summary.
    fn write(
        &self,
        name: &str,
        load_at_start: String,
        mut report: Value,
        summary: &str,
    ) -> Result<()> {
        let machine = Machine::current(load_at_start);
        let mut text = format!(
            "## {name}\n\nmachine: {} × {} ({}), load {} → {}\ncommand: {}\n\n",
            machine.cpus,
            machine.cpu_model,
            machine.kernel,
            machine.load_at_start,
            machine.load_at_end,
            self.command
        );
        text.push_str(summary);
        if let Value::Object(m) = &mut report {
            m.insert("scenario".into(), name.into());
            m.insert("machine".into(), serde_json::to_value(&machine)?);
            m.insert("command".into(), self.command.clone().into());
            m.insert("smoke".into(), self.smoke.into());
            m.insert("generated_at".into(), utc_now().into());
        }
        let json_path = self.out.join(format!("{name}.json"));
        std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
            .map_err(io_at(&json_path))?;
        let txt_path = self.out.join(format!("{name}.txt"));
        std::fs::write(&txt_path, &text).map_err(io_at(&txt_path))?;
        println!("{text}");
        eprintln!("report: {}", json_path.display());
        Ok(())
    }
}

fn utc_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn run(a: &Args) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: trust-bench is a debug build; its clients are slow (use --release)");
    }
    let b = Bench::new(a)?;
    match &a.command {
        Cmd::RevocationLatency(r) => revocation_latency(&b, r),
        Cmd::TokenEndpoint(t) => token_endpoint(&b, t),
        Cmd::FeedApply(f) => feed_apply(&b, f),
        Cmd::Failover(f) => failover::run(&b, f),
        Cmd::WriteThroughput(w) => writes::run(&b, w),
        Cmd::All => all(&b),
        Cmd::Bank { .. } => Ok(()),
    }
}

/// Every benchmark with its defaults: issue 4's, then issue 11's (PostgreSQL).
fn all(b: &Bench) -> Result<()> {
    let revocations = |postgres| RevocationArgs {
        revocations: None,
        background_rate: None,
        background_connections: 4,
        postgres,
    };
    revocation_latency(b, &revocations(false))?;
    token_endpoint(
        b,
        &TokenArgs {
            clients: 16,
            duration: None,
        },
    )?;
    feed_apply(
        b,
        &FeedArgs {
            changes: None,
            batch: 5_000,
        },
    )?;
    revocation_latency(b, &revocations(true))?;
    failover::run(b, &failover::FailoverArgs::default())?;
    writes::run(b, &writes::WriteArgs::default())
}

impl Bench {
    /// The report folder, the binaries (built when not given), a fresh environment with
    /// the operator's identity, and the clients' runtime.
    fn new(a: &Args) -> Result<Bench> {
        let exe = std::env::current_exe().map_err(os("current executable"))?;
        let target = target_dir(&exe);
        let out = a
            .out
            .clone()
            .unwrap_or_else(|| target.join("bench-report").join("trust"));
        std::fs::create_dir_all(&out).map_err(io_at(&out))?;
        let out = std::fs::canonicalize(&out).map_err(io_at(&out))?;
        let (gateway, trust) = match (&a.gateway, &a.trust) {
            (Some(g), Some(t)) => (g.clone(), t.clone()),
            (g, t) => {
                let (bg, bt) = build_binaries(&target)?;
                (g.clone().unwrap_or(bg), t.clone().unwrap_or(bt))
            }
        };
        let work = out.join("work");
        std::fs::create_dir_all(&work).map_err(io_at(&work))?;
        let env = BenchEnv::generate(&work.join("env"))?;
        let operator_bin = Bin::parse("000000000001")
            .map_err(|e| HarnessError::Plan(format!("operator BIN: {e}")))?;
        let operator = env
            .pki
            .issue_client(operator_bin, "operator", &work.join("env"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.client_threads.max(1))
            .thread_name("trust-bench")
            .enable_all()
            .build()
            .map_err(os("client runtime"))?;
        let command = format!(
            "cargo run --release -p benches --bin trust-bench -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
        Ok(Bench {
            env,
            operator,
            work,
            out,
            gateway,
            trust,
            self_exe: exe,
            smoke: a.smoke,
            hub_threads: a.hub_threads.max(1),
            rt,
            command,
        })
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| HarnessError::Plan(format!("histogram: {e}")))
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn lat_line(l: &Latency) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3} ms",
        l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.mean_ms
    )
}

fn cpu_of(p: &procs::Proc) -> Duration {
    p.cpu().unwrap_or_default()
}

/// What a client's requests got: answers by status (and problem code), transport
/// errors, the latency of the answered ones.
#[derive(Default)]
struct Answers {
    requests: u64,
    statuses: BTreeMap<String, u64>,
    errors: u64,
    histogram: Option<Histogram<u64>>,
}

impl Answers {
    fn new() -> Answers {
        Answers {
            histogram: histogram().ok(),
            ..Answers::default()
        }
    }

    /// Counts one request, sent at `t`, and what came back.
    fn record(&mut self, r: Result<Reply>, t: Instant) {
        self.requests += 1;
        match r {
            Ok(r) => {
                let key = if (200..300).contains(&r.status) {
                    r.status.to_string()
                } else {
                    format!("{} {}", r.status, r.code().unwrap_or_default())
                };
                *self.statuses.entry(key).or_default() += 1;
                if let Some(h) = self.histogram.as_mut() {
                    let _ = h.record(us(t.elapsed()));
                }
            }
            Err(_) => self.errors += 1,
        }
    }

    /// All of `parts` together.
    fn sum(parts: &[Answers]) -> Result<Answers> {
        let mut total = Answers {
            histogram: Some(histogram()?),
            ..Answers::default()
        };
        for p in parts {
            total.requests += p.requests;
            total.errors += p.errors;
            for (k, v) in &p.statuses {
                *total.statuses.entry(k.clone()).or_default() += v;
            }
            if let (Some(h), Some(x)) = (total.histogram.as_mut(), &p.histogram) {
                let _ = h.add(x);
            }
        }
        Ok(total)
    }

    fn latency(&self) -> Latency {
        self.histogram.as_ref().map(latency).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// The trust processes of a benchmark

/// The feed heartbeat of PostgreSQL replicas (`trust serve`'s default).
const REPLICA_HEARTBEAT_MS: u64 = 5_000;

/// What a gateway follows: the trust endpoints, in order, and their heartbeat.
struct Follow {
    urls: Vec<String>,
    /// `heartbeat_secs` (the hub's default when `None`).
    heartbeat_secs: Option<u64>,
}

impl Follow {
    /// One sidecar, the hub's default heartbeat setting.
    fn one(spec: &SidecarSpec) -> Follow {
        Follow {
            urls: vec![spec.url()],
            heartbeat_secs: None,
        }
    }
}

/// One sidecar on SQLite, or several replicas on one PostgreSQL database.
struct TrustSet {
    sidecars: Vec<Sidecar>,
    specs: Vec<SidecarSpec>,
    postgres: bool,
}

impl TrustSet {
    /// One sidecar on a SQLite file in `dir`.
    fn sqlite(b: &Bench, dir: &Path) -> Result<TrustSet> {
        let spec = b.sidecar_spec(dir)?;
        let sidecar = spec.start()?;
        Ok(TrustSet {
            sidecars: vec![sidecar],
            specs: vec![spec],
            postgres: false,
        })
    }

    /// `n` replicas on `pg`'s database `db`, started one after the other (the first
    /// migrates the schema and creates the signing key).
    fn postgres(b: &Bench, dir: &Path, pg: &PgRig, db: &str, n: usize) -> Result<TrustSet> {
        let specs = b.replica_specs(dir, pg, db, n)?;
        let mut sidecars = Vec::with_capacity(n);
        for spec in &specs {
            sidecars.push(spec.start()?);
        }
        Ok(TrustSet {
            sidecars,
            specs,
            postgres: true,
        })
    }

    /// Every endpoint's base URL, in order.
    fn urls(&self) -> Vec<String> {
        self.specs.iter().map(SidecarSpec::url).collect()
    }

    /// The gateways' `heartbeat_secs` with replicas: the sidecars' interval (a silent
    /// replica is left after twice that); with one sidecar, the hub's default.
    fn gateway_heartbeat_secs(&self) -> Option<u64> {
        let ms = self.specs.first().map_or(1000, |s| s.heartbeat_ms);
        self.postgres.then(|| ms.div_ceil(1000).max(1))
    }

    /// What a gateway following every endpoint of this set is given.
    fn follow(&self) -> Follow {
        Follow {
            urls: self.urls(),
            heartbeat_secs: self.gateway_heartbeat_secs(),
        }
    }

    /// A registry (API clients as each caller) per endpoint.
    fn registries(&self, b: &Bench) -> Result<Vec<Registry>> {
        self.specs
            .iter()
            .map(|s| Registry::new(&b.env, s, &b.operator))
            .collect()
    }

    /// CPU time so far of each process: `sidecar`, or `replica_1`, `replica_2`, ….
    fn cpu(&self) -> Vec<(String, Duration)> {
        if !self.postgres {
            return self
                .sidecars
                .iter()
                .map(|s| ("sidecar".to_string(), cpu_of(&s.proc)))
                .collect();
        }
        self.sidecars
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("replica_{}", i + 1), cpu_of(&s.proc)))
            .collect()
    }

    /// What gateways following this set follow, for summaries.
    fn describe_following(&self) -> String {
        if self.postgres {
            format!(
                "all {} trust replicas on one PostgreSQL server",
                self.specs.len()
            )
        } else {
            "one sidecar (SQLite)".to_string()
        }
    }
}

// ---------------------------------------------------------------------------------------
// revocation-latency

/// One consent of the revocation benchmark.
struct BenchConsent {
    id: String,
    user: usize,
    path: String,
    auth: HeaderValue,
}

/// Paced requests on one keep-alive connection until `stop`.
async fn background(
    mut conn: HttpConn,
    path: String,
    auth: HeaderValue,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Answers {
    let mut out = Answers::new();
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        let t = Instant::now();
        let r = conn.get_with(&path, &auth).await;
        out.record(r, t);
        next += interval;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
    }
    out
}

/// Probing one gateway until it refuses a consent.
struct Refusal {
    at: Instant,
    probes: u64,
    allowed: u64,
}

async fn until_refused(
    conn: &mut HttpConn,
    path: &str,
    auth: &HeaderValue,
    rtt: &mut Histogram<u64>,
) -> Result<Refusal> {
    let t0 = Instant::now();
    let (mut probes, mut allowed) = (0, 0);
    loop {
        let sent = Instant::now();
        // One retry on a fresh connection (the gateway may close a keep-alive one).
        let r = match conn.get_with(path, auth).await {
            Ok(r) => r,
            Err(_) => conn.get_with(path, auth).await?,
        };
        let now = Instant::now();
        probes += 1;
        if r.status == 403 && r.code().as_deref() == Some("consent_revoked") {
            return Ok(Refusal {
                at: now,
                probes,
                allowed,
            });
        }
        if r.status != 200 {
            return Err(HarnessError::Check {
                system: "gateway".into(),
                reason: format!("probe of a revoked consent answered {}", r.describe()),
            });
        }
        let _ = rtt.record(us(now - sent));
        allowed += 1;
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(HarnessError::Check {
                system: "gateway".into(),
                reason: "a revocation was not enforced within 30 s".into(),
            });
        }
    }
}

#[derive(Serialize)]
struct ProbeCost {
    refused_probe_rtt: Latency,
    allowed_probe_rtt: Latency,
    gateway_cpu_us_per_refused_probe: f64,
}

/// What a revocation-latency run does.
struct RevocationPlan {
    /// Revocations.
    n: usize,
    /// Background requests per second through each gateway.
    bg_rate: f64,
    /// Background connections per gateway.
    bg_conns: usize,
}

impl RevocationPlan {
    fn of(b: &Bench, a: &RevocationArgs) -> RevocationPlan {
        RevocationPlan {
            n: a.revocations
                .unwrap_or(if b.smoke { 50 } else { 1000 })
                .max(1),
            bg_rate: a
                .background_rate
                .unwrap_or(if b.smoke { 50.0 } else { 150.0 }),
            bg_conns: a.background_connections.max(1),
        }
    }
}

fn revocation_latency(b: &Bench, a: &RevocationArgs) -> Result<()> {
    let load_at_start = loadavg();
    let plan = RevocationPlan::of(b, a);
    let name = if a.postgres {
        "revocation-latency-postgres"
    } else {
        "revocation-latency"
    };
    let mut rig = RevocationRig::start(b, name, plan.n, a.postgres)?;
    let mut times = RevocationTimes::new(rig.trust.specs.len())?;
    let (background, cpu) = b.rt.block_on(rig.measure(b, &plan, &mut times))?;
    // Allowed probes: the warm-up's and those answered 200 while waiting, both gateways.
    let _ = times.allowed_rtt.add(&times.allowed_rtt_b);
    let cost = b.rt.block_on(rig.probe_cost(b.smoke))?;
    let results = RevocationResults {
        times,
        background: Answers::sum(&background.parts)?,
        background_s: background.seconds,
        cpu,
        cost,
        target: Target::revocation(a.postgres),
        followers: rig.followers()?,
    };
    let report = results.report(b, &plan, &rig);
    let summary = results.summary(b, &plan, &rig);
    rig.stop();
    b.write(name, load_at_start, report, &summary)
}

/// The processes and connections of revocation-latency (and failover): the bank, the
/// trust processes (one sidecar on SQLite, or two replicas on PostgreSQL), two gateways
/// following all of them, a registry of authorised consents with their tokens.
struct RevocationRig {
    gateways: [Gateway; 2],
    /// Per gateway, one probe connection per API user (a token is bound to its user's
    /// certificate).
    probes: Vec<Vec<HttpConn>>,
    /// API clients per trust endpoint (the set-up uses the first).
    regs: Vec<Registry>,
    trust: TrustSet,
    /// The PostgreSQL server of the replicas.
    pg: Option<PgRig>,
    bank: BankProcess,
    /// The background load's consents (the first `2 × users`), then those revoked.
    consents: Vec<BenchConsent>,
    /// How many of `consents` the background load uses.
    background: usize,
    /// The registry's head once set up.
    head: u64,
    /// Seconds the set-up took.
    setup_s: f64,
}

/// The background load's connections, as they ended, and how long it ran.
struct BackgroundRun {
    parts: Vec<Answers>,
    seconds: f64,
}

impl RevocationRig {
    /// Starts the bank and the trust processes (two replicas on a new PostgreSQL server
    /// with `postgres`), sets up `n` consents to revoke and a few for the background
    /// load through the first, starts both gateways and waits until they have them all.
    fn start(b: &Bench, name: &str, n: usize, postgres: bool) -> Result<RevocationRig> {
        let dir = b.dir(name)?;
        let bank = b.bank(&dir)?;
        let pg = if postgres {
            Some(PgRig::start(&dir)?)
        } else {
            None
        };
        let trust = match &pg {
            Some(pg) => TrustSet::postgres(b, &dir, pg, "trust", 2)?,
            None => TrustSet::sqlite(b, &dir)?,
        };
        // With PostgreSQL the gateways start on the empty registry and load it from the
        // feed: `trust serve` on PostgreSQL cannot stream a snapshot larger than one 64 KiB
        // chunk (trust/src/feed.rs: `blocking_send` inside the engine's `query_each`
        // panics), so a gateway must never need one here.
        let early = match postgres {
            true => Some(Self::gateways(b, &dir, &bank, &trust)?),
            false => None,
        };
        let mut regs = trust.registries(b)?;
        let background = 2 * b.env.active_users();
        let setup = Instant::now();
        let total = n + background;
        let reg = regs
            .first_mut()
            .ok_or_else(|| HarnessError::Plan("no trust endpoint".into()))?;
        let consents =
            b.rt.block_on(authorise_consents(b, reg, bank.addrs, total))?;
        let setup_s = setup.elapsed().as_secs_f64();
        let head = b.rt.block_on(reg.head())?;
        eprintln!(
            "   registry: {total} consents in {setup_s:.1} s (create, OTP authorisation, token), head {head}"
        );
        let gateways = match early {
            Some(g) => g,
            None => Self::gateways(b, &dir, &bank, &trust)?,
        };
        for g in &gateways {
            wait_feed_version(g, head, Duration::from_secs(60))?;
        }
        Ok(RevocationRig {
            probes: Self::probe_conns(b, &gateways)?,
            gateways,
            regs,
            trust,
            pg,
            bank,
            consents,
            background,
            head,
            setup_s,
        })
    }

    /// Per gateway, one probe connection per API user.
    fn probe_conns(b: &Bench, gateways: &[Gateway; 2]) -> Result<Vec<Vec<HttpConn>>> {
        let mut probes: Vec<Vec<HttpConn>> = Vec::new();
        for g in gateways {
            let mut per_user = Vec::new();
            for u in 0..b.env.active_users() {
                per_user.push(HttpConn::new(g.endpoint.clone(), b.user_tls(u)?));
            }
            probes.push(per_user);
        }
        Ok(probes)
    }

    /// Gateway A and B, following every endpoint of `trust`, token keys from its JWKS.
    fn gateways(
        b: &Bench,
        dir: &Path,
        bank: &BankProcess,
        trust: &TrustSet,
    ) -> Result<[Gateway; 2]> {
        let follow = trust.follow();
        Ok([
            b.gateway(dir, "gateway-a", bank.addrs, &follow, true)?,
            b.gateway(dir, "gateway-b", bank.addrs, &follow, true)?,
        ])
    }

    /// The warm-up, then the revocations one after another under background load: what
    /// the background load got and the CPU every process used during the revocations.
    async fn measure(
        &mut self,
        b: &Bench,
        plan: &RevocationPlan,
        times: &mut RevocationTimes,
    ) -> Result<(BackgroundRun, Value)> {
        self.warm_up(&mut times.allowed_rtt).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = self.start_background(b, plan, &stop)?;
        let bg_started = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu0 = self.cpu();
        let t0 = Instant::now();
        self.revoke_all(times).await?;
        let window_s = t0.elapsed().as_secs_f64();
        let cpu = cpu_delta(&cpu0, &self.cpu(), window_s);
        let background = stop_background(&stop, tasks, bg_started).await;
        Ok((background, cpu))
    }

    /// Every consent allowed by both gateways once (tokens verified and cached,
    /// connections open). The first token may race the gateway's JWKS fetch.
    async fn warm_up(&mut self, allowed_rtt: &mut Histogram<u64>) -> Result<()> {
        for c in &self.consents {
            for per_user in self.probes.iter_mut() {
                let conn = &mut per_user[c.user];
                let mut tries = 0;
                loop {
                    let t = Instant::now();
                    let r = conn.get_with(&c.path, &c.auth).await?;
                    if r.status == 200 {
                        let _ = allowed_rtt.record(us(t.elapsed()));
                        break;
                    }
                    tries += 1;
                    if tries > 50 {
                        return Err(HarnessError::Check {
                            system: "gateway".into(),
                            reason: format!("warm-up probe answered {}", r.describe()),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(())
    }

    /// Background load through both gateways until `stop`.
    fn start_background(
        &self,
        b: &Bench,
        plan: &RevocationPlan,
        stop: &Arc<AtomicBool>,
    ) -> Result<Vec<tokio::task::JoinHandle<Answers>>> {
        let interval = Duration::from_secs_f64(plan.bg_conns as f64 / plan.bg_rate.max(0.1));
        let bg_consents = &self.consents[..self.background];
        let mut tasks = Vec::new();
        for (gi, g) in self.gateways.iter().enumerate() {
            for k in 0..plan.bg_conns {
                let c = &bg_consents[(gi * plan.bg_conns + k) % bg_consents.len()];
                tasks.push(tokio::spawn(background(
                    HttpConn::new(g.endpoint.clone(), b.user_tls(c.user)?),
                    c.path.clone(),
                    c.auth.clone(),
                    interval,
                    stop.clone(),
                )));
            }
        }
        Ok(tasks)
    }

    /// How the trust processes were set up, for the report.
    fn trust_settings(&self) -> Value {
        let t = &self.trust;
        json!({
            "engine": if t.postgres { "postgresql" } else { "sqlite" },
            "postgres_version": self.pg.as_ref().map(PgRig::version),
            "postgres_setup_s": self.pg.as_ref().map(|p| round3(p.setup_s)),
            "processes": t.specs.len(),
            "gateways_follow": t.urls(),
            "gateway_heartbeat_secs": t.gateway_heartbeat_secs(),
        })
    }

    /// Each gateway's follower metrics now: endpoint switches, reconnects, resyncs.
    fn followers(&self) -> Result<Value> {
        let mut out = serde_json::Map::new();
        for g in &self.gateways {
            let m = |name: &str| benches::sidecar::gateway_metric(g.admin, name);
            out.insert(
                g.name.clone(),
                json!({
                    "endpoint_switches": m("hub_trust_endpoint_switches_total")?,
                    "reconnects": m("hub_consent_feed_reconnects_total")?,
                    "resyncs": m("hub_consent_feed_resyncs_total")?,
                }),
            );
        }
        Ok(Value::Object(out))
    }

    /// CPU time so far of the trust processes (and PostgreSQL), gateway A, gateway B,
    /// the bank and this process.
    fn cpu(&self) -> Vec<(String, Duration)> {
        let mut v = self.trust.cpu();
        if let Some(pg) = &self.pg {
            v.push(("postgres".into(), pg.cpu()));
        }
        v.push(("gateway_a".into(), cpu_of(&self.gateways[0].proc)));
        v.push(("gateway_b".into(), cpu_of(&self.gateways[1].proc)));
        v.push(("bank".into(), cpu_of(&self.bank.proc)));
        v.push(("bench_client".into(), procs::self_cpu()));
        v
    }

    /// Revokes each consent in turn (through each trust endpoint in turn) and probes
    /// both gateways until both refuse it.
    async fn revoke_all(&mut self, times: &mut RevocationTimes) -> Result<()> {
        let revoked = &self.consents[self.background..];
        let endpoints = self.regs.len().max(1);
        for (i, c) in revoked.iter().enumerate() {
            let via = i % endpoints;
            let sent = Instant::now();
            let r = self.regs[via].revoke(c.user, &c.id).await?;
            let answered = Instant::now();
            if r.status != 200 {
                return Err(HarnessError::Trust(format!("revoke: {}", r.describe())));
            }
            let _ = times.revoke_call.record(us(answered - sent));
            let (pa, pb) = self.probes.split_at_mut(1);
            let (ra, rb) = tokio::join!(
                until_refused(&mut pa[0][c.user], &c.path, &c.auth, &mut times.allowed_rtt),
                until_refused(
                    &mut pb[0][c.user],
                    &c.path,
                    &c.auth,
                    &mut times.allowed_rtt_b
                ),
            );
            times.add(&ra?, &rb?, sent, answered, via);
            if (i + 1) % 250 == 0 {
                eprintln!("   {} revocations", i + 1);
            }
        }
        Ok(())
    }

    /// Refused probes of an already revoked consent, one gateway at a time, without
    /// background load: round trip and gateway CPU per probe.
    async fn probe_cost(&mut self, smoke: bool) -> Result<RefusedProbeCost> {
        let mut cost = RefusedProbeCost::default();
        let c = self
            .consents
            .get(self.background)
            .ok_or_else(|| HarnessError::Plan("no consent".into()))?;
        // /proc counts CPU in 10 ms ticks: enough probes for the per-probe figure.
        let k = if smoke { 1000 } else { 5000 };
        for (gi, per_user) in self.probes.iter_mut().enumerate() {
            let mut h = histogram()?;
            let cpu0 = cpu_of(&self.gateways[gi].proc);
            for _ in 0..k {
                let t = Instant::now();
                let r = per_user[c.user].get_with(&c.path, &c.auth).await?;
                let _ = h.record(us(t.elapsed()));
                if r.status != 403 {
                    return Err(HarnessError::Check {
                        system: self.gateways[gi].name.clone(),
                        reason: format!("revoked consent answered {}", r.describe()),
                    });
                }
            }
            let cpu = cpu_of(&self.gateways[gi].proc) - cpu0;
            cost.rtts.push(latency(&h));
            cost.cpu_us.push(round1(cpu.as_secs_f64() * 1e6 / k as f64));
        }
        Ok(cost)
    }

    /// Stops the gateways, then the trust processes, the bank and PostgreSQL.
    fn stop(self) {
        let RevocationRig {
            gateways,
            trust,
            pg,
            bank,
            ..
        } = self;
        drop(gateways);
        drop(trust);
        drop(bank);
        drop(pg);
    }
}

/// `total` consents, each authorised by its customer with the one-time code, each with
/// a token (the banks registered first).
async fn authorise_consents(
    b: &Bench,
    reg: &mut Registry,
    banks: [SocketAddr; 2],
    total: usize,
) -> Result<Vec<BenchConsent>> {
    reg.register(&b.env, banks).await?;
    let mut consents = Vec::with_capacity(total);
    for i in 0..total {
        let row = b.env.consent(i);
        let provider = b.env.providers[row.provider].to_string();
        let id = reg
            .authorised_consent(row.user, &provider, &row.customer)
            .await?;
        let token = reg.token(row.user, &id).await?;
        consents.push(BenchConsent {
            id,
            user: row.user,
            path: format!("/v1/providers/{provider}/accounts"),
            auth: bearer_value(&token)?,
        });
        if (i + 1) % 250 == 0 {
            eprintln!("   {} consents authorised, tokens issued", i + 1);
        }
    }
    Ok(consents)
}

/// CPU seconds each process used between two samples of [`RevocationRig::cpu`].
fn cpu_delta(before: &[(String, Duration)], after: &[(String, Duration)], window_s: f64) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("window_s".into(), round3(window_s).into());
    for ((name, t0), (_, t1)) in before.iter().zip(after) {
        let d = t1.saturating_sub(*t0);
        m.insert(format!("{name}_s"), round3(d.as_secs_f64()).into());
    }
    Value::Object(m)
}

/// Stops the background load and collects what each connection got.
async fn stop_background(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Answers>>,
    started: Instant,
) -> BackgroundRun {
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let mut parts = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            parts.push(r);
        }
    }
    BackgroundRun { parts, seconds }
}

/// What the revocations measured.
struct RevocationTimes {
    /// Allowed probes' round trips through gateway A (then all of them).
    allowed_rtt: Histogram<u64>,
    /// Allowed probes' round trips through gateway B.
    allowed_rtt_b: Histogram<u64>,
    /// Revocation answered → both gateways refuse.
    both: Histogram<u64>,
    /// `DELETE` sent → both gateways refuse.
    both_from_sent: Histogram<u64>,
    /// Revocation answered → each gateway refuses.
    per_gw: [Histogram<u64>; 2],
    /// The `DELETE`'s round trip.
    revoke_call: Histogram<u64>,
    /// Per gateway: revocations refused on the first probe.
    first_refused: [u64; 2],
    /// Per gateway: allowed answers before the refusal.
    allowed_before: [u64; 2],
    /// Per gateway: probes.
    probe_total: [u64; 2],
    /// Revocation answered → both refuse, by the trust endpoint that took it.
    by_endpoint: Vec<Histogram<u64>>,
}

impl RevocationTimes {
    fn new(endpoints: usize) -> Result<RevocationTimes> {
        Ok(RevocationTimes {
            by_endpoint: (0..endpoints.max(1))
                .map(|_| histogram())
                .collect::<Result<_>>()?,
            allowed_rtt: histogram()?,
            allowed_rtt_b: histogram()?,
            both: histogram()?,
            both_from_sent: histogram()?,
            per_gw: [histogram()?, histogram()?],
            revoke_call: histogram()?,
            first_refused: [0; 2],
            allowed_before: [0; 2],
            probe_total: [0; 2],
        })
    }

    /// Adds one revocation, taken by trust endpoint `via`: gateway A refused at `ra`, B
    /// at `rb`.
    fn add(&mut self, ra: &Refusal, rb: &Refusal, sent: Instant, answered: Instant, via: usize) {
        if let Some(h) = self.by_endpoint.get_mut(via) {
            let _ = h.record(us(ra.at.max(rb.at) - answered));
        }
        for (k, r) in [ra, rb].into_iter().enumerate() {
            let _ = self.per_gw[k].record(us(r.at - answered));
            self.probe_total[k] += r.probes;
            self.allowed_before[k] += r.allowed;
            if r.probes == 1 {
                self.first_refused[k] += 1;
            }
        }
        let _ = self.both.record(us(ra.at.max(rb.at) - answered));
        let _ = self.both_from_sent.record(us(ra.at.max(rb.at) - sent));
    }
}

/// Per gateway: the round trip of a refused probe and the gateway's CPU per probe.
#[derive(Default)]
struct RefusedProbeCost {
    rtts: Vec<Latency>,
    cpu_us: Vec<f64>,
}

impl RefusedProbeCost {
    fn rtt(&self, gateway: usize) -> Latency {
        self.rtts.get(gateway).cloned().unwrap_or_default()
    }

    fn cpu_us(&self, gateway: usize) -> f64 {
        self.cpu_us.get(gateway).copied().unwrap_or_default()
    }
}

/// Everything revocation-latency measured.
struct RevocationResults {
    times: RevocationTimes,
    /// The background load, all connections.
    background: Answers,
    /// How long it ran.
    background_s: f64,
    /// CPU of every process during the revocations.
    cpu: Value,
    cost: RefusedProbeCost,
    /// The issue's target for this set-up.
    target: Target,
    /// Each gateway's feed follower metrics at the end (endpoint switches, resyncs).
    followers: Value,
}

/// A latency target: p99, and optionally a bound on the largest.
struct Target {
    p99_ms: f64,
    max_ms: Option<f64>,
}

impl Target {
    /// Issue 4 (one sidecar): p99 ≤ 50 ms. Issue 11 (replicas on PostgreSQL): p99 ≤ 5 ms,
    /// never above 50 ms.
    fn revocation(postgres: bool) -> Target {
        if postgres {
            Target {
                p99_ms: 5.0,
                max_ms: Some(50.0),
            }
        } else {
            Target {
                p99_ms: 50.0,
                max_ms: None,
            }
        }
    }

    fn met(&self, l: &Latency) -> bool {
        l.p99_ms <= self.p99_ms && self.max_ms.is_none_or(|m| l.max_ms <= m)
    }

    fn line(&self, l: &Latency) -> String {
        let verdict = if self.met(l) { "met" } else { "NOT met" };
        match self.max_ms {
            Some(m) => format!(
                "target p99 ≤ {} ms and max ≤ {m} ms: {verdict} (p99 {:.3} ms, max {:.3} ms)",
                self.p99_ms, l.p99_ms, l.max_ms
            ),
            None => format!("target p99 ≤ {} ms: {verdict}", self.p99_ms),
        }
    }
}

impl RevocationResults {
    /// Mean probes per revocation through gateway `k`.
    fn per_rev(&self, plan: &RevocationPlan, k: usize) -> f64 {
        round1(self.times.probe_total[k] as f64 / plan.n as f64)
    }

    fn report(&self, b: &Bench, plan: &RevocationPlan, rig: &RevocationRig) -> Value {
        let t = &self.times;
        let bg = &self.background;
        let both = latency(&t.both);
        json!({
            "settings": {
                "revocations": plan.n,
                "background_rate_per_gateway": plan.bg_rate,
                "background_connections_per_gateway": plan.bg_conns,
                "gateway_threads": b.hub_threads,
                "gateways": 2,
                "sidecar_heartbeat_ms": rig.trust.specs.first().map(|s| s.heartbeat_ms),
                "trust": rig.trust_settings(),
                "revocations_sent_to": if rig.regs.len() > 1 { "each replica in turn (1, 2, 1, …)" } else { "the sidecar" },
            },
            "setup": {"consents": rig.consents.len(), "seconds": round3(rig.setup_s), "head_version": rig.head},
            "latency_both_refuse": both,
            "latency_gateway_a": latency(&t.per_gw[0]),
            "latency_gateway_b": latency(&t.per_gw[1]),
            "revoke_call": latency(&t.revoke_call),
            "latency_both_refuse_from_request_sent": latency(&t.both_from_sent),
            "latency_both_refuse_by_trust_endpoint": t.by_endpoint.iter().map(latency).collect::<Vec<_>>(),
            "target_p99_ms": self.target.p99_ms,
            "target_max_ms": self.target.max_ms,
            "target_met": self.target.met(&both),
            "followers_at_end": self.followers,
            "probes": {
                "total": [t.probe_total[0], t.probe_total[1]],
                "per_revocation_mean": [self.per_rev(plan, 0), self.per_rev(plan, 1)],
                "allowed_before_refusal": [t.allowed_before[0], t.allowed_before[1]],
                "refused_on_first_probe": [t.first_refused[0], t.first_refused[1]],
            },
            "probe_cost": ProbeCost {
                refused_probe_rtt: self.cost.rtt(0),
                allowed_probe_rtt: latency(&t.allowed_rtt),
                gateway_cpu_us_per_refused_probe: self.cost.cpu_us(0),
            },
            "probe_cost_gateway_b": {
                "refused_probe_rtt": self.cost.rtt(1),
                "gateway_cpu_us_per_refused_probe": self.cost.cpu_us(1),
            },
            "background": {
                "requests": bg.requests,
                "answers": bg.statuses,
                "transport_errors": bg.errors,
                "seconds": round3(self.background_s),
                "rps": round1(bg.requests as f64 / self.background_s.max(1e-9)),
                "latency": bg.latency(),
            },
            "cpu_during_revocations": self.cpu,
        })
    }

    /// How the probing went and what a probe costs (the measurement's resolution).
    fn probing(&self, s: &mut String, plan: &RevocationPlan) {
        let t = &self.times;
        let _ = writeln!(
            s,
            "probing: {:.1} / {:.1} probes per revocation (A / B), refused on the first probe in {} / {} of {}, \
             {} / {} allowed answers before the refusal",
            self.per_rev(plan, 0),
            self.per_rev(plan, 1),
            t.first_refused[0],
            t.first_refused[1],
            plan.n,
            t.allowed_before[0],
            t.allowed_before[1]
        );
        let _ = writeln!(
            s,
            "probe cost (the resolution of the measurement): a refused probe's round trip {} (A, idle); \
             an allowed one (through the bank) {}; gateway CPU per refused probe {:.1} µs (A), {:.1} µs (B)",
            lat_line(&self.cost.rtt(0)),
            lat_line(&latency(&t.allowed_rtt)),
            self.cost.cpu_us(0),
            self.cost.cpu_us(1)
        );
    }

    /// The latency by replica (with several), the target's verdict, the followers.
    fn verdict(&self, s: &mut String) {
        let t = &self.times;
        if t.by_endpoint.len() > 1 {
            for (i, h) in t.by_endpoint.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  revoked through replica {}: answered → both refuse {}",
                    i + 1,
                    lat_line(&latency(h))
                );
            }
        }
        let _ = writeln!(s, "{}", self.target.line(&latency(&t.both)));
        let _ = writeln!(s, "gateway followers at the end: {}", self.followers);
    }

    fn summary(&self, b: &Bench, plan: &RevocationPlan, rig: &RevocationRig) -> String {
        let t = &self.times;
        let bg = &self.background;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} revocations one after another; 2 gateways ({} worker thread each) following {}; \
             background {:.0} req/s per gateway ({} requests in {:.2} s, answers {:?}, {} transport errors, \
             latency {})",
            plan.n,
            b.hub_threads,
            match rig.regs.len() {
                1 => rig.trust.describe_following(),
                _ => format!(
                    "{}, revocations sent to each replica in turn",
                    rig.trust.describe_following()
                ),
            },
            plan.bg_rate,
            bg.requests,
            self.background_s,
            bg.statuses,
            bg.errors,
            lat_line(&bg.latency())
        );
        let lines = [
            ("revocation answered → BOTH gateways refuse: ", &t.both),
            ("  gateway A alone:                        ", &t.per_gw[0]),
            ("  gateway B alone:                        ", &t.per_gw[1]),
            ("  DELETE /v1/consents/{id} round trip:   ", &t.revoke_call),
            (
                "  from the DELETE sent → both refuse:     ",
                &t.both_from_sent,
            ),
        ];
        for (what, h) in lines {
            let _ = writeln!(s, "{what}{}", lat_line(&latency(h)));
        }
        self.verdict(&mut s);
        self.probing(&mut s, plan);
        let _ = writeln!(s, "CPU during the revocations: {}", self.cpu);
        s
    }
}

// ---------------------------------------------------------------------------------------
// token-endpoint

async fn token_client(
    mut conn: HttpConn,
    form: Bytes,
    until: Instant,
    warm_until: Instant,
) -> Answers {
    let mut out = Answers::new();
    loop {
        let t = Instant::now();
        if t >= until {
            break;
        }
        let r = conn
            .send(
                Method::POST,
                "/oauth2/token",
                &[(CONTENT_TYPE, FORM)],
                form.clone(),
            )
            .await;
        if t < warm_until {
            continue;
        }
        out.record(r, t);
    }
    out
}

/// What the token clients got, and the CPU the sidecar and this process used.
struct TokenRun {
    answers: Answers,
    elapsed: Duration,
    sidecar_cpu: Duration,
    client_cpu: Duration,
}

fn token_endpoint(b: &Bench, a: &TokenArgs) -> Result<()> {
    let load_at_start = loadavg();
    let duration = Duration::from_secs_f64(a.duration.unwrap_or(if b.smoke { 2.0 } else { 15.0 }));
    let warmup = Duration::from_secs_f64(if b.smoke { 0.3 } else { 2.0 });
    let clients = a.clients.max(1);
    let dir = b.dir("token-endpoint")?;
    let spec = b.sidecar_spec(&dir)?;
    let sidecar = spec.start()?;
    let mut reg = Registry::new(&b.env, &spec, &b.operator)?;
    let users = b.env.active_users();
    let forms = b.rt.block_on(token_forms(b, &mut reg))?;
    let endpoint = benches::workload::Endpoint::localhost(spec.addr())?;
    let mut tasks = Vec::new();
    let start = Instant::now();
    let warm_until = start + warmup;
    let until = warm_until + duration;
    for i in 0..clients {
        let u = i % users;
        let conn = HttpConn::new(endpoint.clone(), b.user_tls(u)?);
        let form = forms[u].clone();
        tasks.push(b.rt.spawn(token_client(conn, form, until, warm_until)));
    }
    std::thread::sleep(warm_until.saturating_duration_since(Instant::now()));
    let cpu0 = cpu_of(&sidecar.proc);
    let self0 = procs::self_cpu();
    let t0 = Instant::now();
    let mut results = Vec::new();
    for t in tasks {
        if let Ok(r) = b.rt.block_on(t) {
            results.push(r);
        }
    }
    let run = TokenRun {
        elapsed: t0.elapsed(),
        sidecar_cpu: cpu_of(&sidecar.proc) - cpu0,
        client_cpu: procs::self_cpu() - self0,
        answers: Answers::sum(&results)?,
    };
    let settings = json!({"clients": clients, "duration_s": duration.as_secs_f64(), "warmup_s": warmup.as_secs_f64(),
                          "api_users": users, "alg": "ES256", "token_lifetime_s": spec.token_lifetime_secs});
    let s = run.summary(clients, users, duration, warmup);
    let report = run.report(settings);
    drop(sidecar);
    b.write("token-endpoint", load_at_start, report, &s)
}

/// Registers the banks (providers need a URL; they are never called here) and returns,
/// per API user, the token request form of one of its authorised consents.
async fn token_forms(b: &Bench, reg: &mut Registry) -> Result<Vec<Bytes>> {
    let nowhere = [SocketAddr::from(([127, 0, 0, 1], 9)); 2];
    reg.register(&b.env, nowhere).await?;
    let mut forms = Vec::new();
    for u in 0..b.env.active_users() {
        let row = b.env.consent(2 * u);
        let row = benches::fixture::ConsentRow { user: u, ..row };
        let provider = b.env.providers[row.provider].to_string();
        let id = reg.authorised_consent(u, &provider, &row.customer).await?;
        forms.push(token_form(reg.user_bin(u), &id));
    }
    Ok(forms)
}

impl TokenRun {
    fn ok(&self) -> u64 {
        self.answers.statuses.get("200").copied().unwrap_or(0)
    }

    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_per_token(&self) -> f64 {
        round1(self.sidecar_cpu.as_secs_f64() * 1e6 / self.ok().max(1) as f64)
    }

    fn report(&self, settings: Value) -> Value {
        let (secs, ok) = (self.secs(), self.ok());
        json!({
            "settings": settings,
            "requests": self.answers.requests,
            "answers": self.answers.statuses,
            "transport_errors": self.answers.errors,
            "rps": round1(self.answers.requests as f64 / secs),
            "tokens_per_s": round1(ok as f64 / secs),
            "latency": self.answers.latency(),
            "sidecar_cpu_s": round3(self.sidecar_cpu.as_secs_f64()),
            "sidecar_cpu_us_per_token": self.cpu_per_token(),
            "sidecar_cores_busy": round3(self.sidecar_cpu.as_secs_f64() / secs),
            "client_cpu_s": round3(self.client_cpu.as_secs_f64()),
        })
    }

    fn summary(
        &self,
        clients: usize,
        users: usize,
        duration: Duration,
        warmup: Duration,
    ) -> String {
        let (secs, ok) = (self.secs(), self.ok());
        let Answers {
            requests,
            statuses,
            errors,
            ..
        } = &self.answers;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "POST /oauth2/token (client_credentials, tls_client_auth, ES256), {clients} keep-alive clients \
             over {users} API users, {:.1} s after {:.1} s warm-up",
            duration.as_secs_f64(),
            warmup.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "{requests} requests = {:.0}/s ({ok} tokens, answers {statuses:?}, {errors} transport errors)",
            *requests as f64 / secs
        );
        let _ = writeln!(s, "latency: {}", lat_line(&self.answers.latency()));
        let _ = writeln!(
            s,
            "sidecar CPU: {:.2} s = {} µs per token ({:.2} cores busy); this client used {:.2} s of CPU \
             on the same 2 cores",
            self.sidecar_cpu.as_secs_f64(),
            self.cpu_per_token(),
            self.sidecar_cpu.as_secs_f64() / secs,
            self.client_cpu.as_secs_f64()
        );
        s
    }
}

// ---------------------------------------------------------------------------------------
// feed-apply

/// Writes `consents` consents straight into the (stopped) sidecar's database through
/// its storage API: each created (an `upsert` change) and authorised (a `set_status`
/// change), `batch` consents per transaction. Returns the new head.
fn bulk_load(b: &Bench, db_path: &Path, consents: u64, batch: usize) -> Result<u64> {
    use trust::consents::{self, CreateConsent, Step};
    use trust::db::Db;
    use trust::participants::Directory;
    let terr = |e: &dyn std::fmt::Display| HarnessError::Trust(e.to_string());
    let db = Db::open(db_path).map_err(|e| terr(&e))?;
    let head = db.head();
    let directory = db
        .read(|c| Directory::load(c, head))
        .map_err(|e| terr(&e))?;
    let now = benches::fixture::now_unix();
    let users = b.env.active_users();
    let mut done = 0u64;
    while done < consents {
        let n = (consents - done).min(batch as u64);
        db.write(now, |tx| {
            for k in 0..n {
                let i = usize::try_from(done + k).unwrap_or(usize::MAX);
                let row = b.env.consent(i);
                let input = CreateConsent {
                    customer: row.customer.clone(),
                    providers: vec![b.env.providers[row.provider]],
                    permissions: vec![
                        Permission::Accounts,
                        Permission::Balances,
                        Permission::Transactions,
                    ],
                    accounts: None,
                    purpose: "feed-apply bench".into(),
                    expires_at: None,
                };
                let view = consents::create(tx, b.env.users[row.user % users], &directory, input)?;
                consents::transition(
                    tx,
                    &view.record.id,
                    ConsentStatus::Authorised,
                    "customer",
                    |_| Ok(Step::Apply),
                )?;
            }
            Ok::<(), trust::error::Error>(())
        })
        .map_err(|e| terr(&e))?;
        done += n;
    }
    Ok(db.head())
}

/// The follower's steps measured here, on the same stream.
#[derive(Serialize, Default)]
struct Steps {
    changes: u64,
    bytes: u64,
    frames: u64,
    transfer_s: f64,
    parse_s: f64,
    apply_s: f64,
    transfer_per_s: f64,
    parse_per_s: f64,
    apply_per_s: f64,
    parse_and_apply_per_s: f64,
}

/// Reads `GET /v1/feed?since=V` as the hub until the first heartbeat (the backlog), then
/// parses every line and applies the consent changes to a fresh store in the same
/// batches the body arrived in.
async fn follower_steps(b: &Bench, spec: &SidecarSpec, since: u64) -> Result<Steps> {
    let hub = b.env.pki.hub_client();
    let tls = benches::tls::client_config(
        b.env.pki.ca_cert_path(),
        &hub.cert_path,
        &hub.key_path,
        false,
    )?;
    let ep = benches::workload::Endpoint::localhost(spec.addr())?;
    let t0 = Instant::now();
    let (frames, read) = read_backlog(tls, &ep, since).await?;
    let transfer = read.saturating_duration_since(t0);
    let t1 = Instant::now();
    let parsed = parse_frames(&frames)?;
    let parse = t1.elapsed();
    let store = ConsentStore::new();
    let t2 = Instant::now();
    for batch in parsed.batches {
        store
            .apply_batch(batch)
            .map_err(|e| HarnessError::Trust(format!("apply: {e}")))?;
    }
    let apply = t2.elapsed();
    let changes = parsed.changes;
    let rate = |d: Duration| round1(changes as f64 / d.as_secs_f64().max(1e-9));
    Ok(Steps {
        changes,
        bytes: parsed.bytes,
        frames: frames.len() as u64,
        transfer_s: round3(transfer.as_secs_f64()),
        parse_s: round3(parse.as_secs_f64()),
        apply_s: round3(apply.as_secs_f64()),
        transfer_per_s: rate(transfer),
        parse_per_s: rate(parse),
        apply_per_s: rate(apply),
        parse_and_apply_per_s: rate(parse + apply),
    })
}

/// The body frames of `GET /v1/feed?since=V`, read with `tls` (the hub's client
/// certificate) up to the first heartbeat line (the backlog is complete), and when the
/// last was read.
async fn read_backlog(
    tls: Arc<rustls::ClientConfig>,
    ep: &benches::workload::Endpoint,
    since: u64,
) -> Result<(Vec<Bytes>, Instant)> {
    use http_body_util::BodyExt;
    let fail = |e: String| HarnessError::Connect {
        addr: ep.addr,
        reason: e,
    };
    let tcp = tokio::net::TcpStream::connect(ep.addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(ep.server_name.clone(), tcp)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(format!("/v1/feed?since={since}"))
        .header(http::header::HOST, ep.authority.as_str())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| HarnessError::Plan(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if resp.status() != http::StatusCode::OK {
        return Err(HarnessError::Trust(format!(
            "feed answered {}",
            resp.status()
        )));
    }
    let mut body = resp.into_body();
    let mut frames: Vec<Bytes> = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    while let Some(f) = body.frame().await {
        let Ok(data) = f.map_err(|e| fail(e.to_string()))?.into_data() else {
            continue;
        };
        tail.extend_from_slice(&data);
        frames.push(data);
        if ends_backlog(&mut tail) {
            break;
        }
    }
    let read = Instant::now();
    drop(body);
    driver.abort();
    Ok((frames, read))
}

/// Whether the complete lines of `tail` reach the first heartbeat line; drops the
/// complete lines before it (a partial line stays for the next frame).
fn ends_backlog(tail: &mut Vec<u8>) -> bool {
    let mut start = 0;
    while let Some(i) = tail[start..].iter().position(|&c| c == b'\n') {
        if tail[start..].starts_with(b"{\"heartbeat\"") {
            return true;
        }
        start += i + 1;
    }
    tail.drain(..start);
    false
}

/// The feed's consent changes, parsed in the batches the body arrived in.
struct Parsed {
    batches: Vec<Vec<Change>>,
    changes: u64,
    bytes: u64,
}

/// Parses the lines of `frames`, keeping the arrival batches (a line may straddle two
/// frames, as in the follower's buffer).
fn parse_frames(frames: &[Bytes]) -> Result<Parsed> {
    let mut out = Parsed {
        batches: Vec::new(),
        changes: 0,
        bytes: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    for f in frames {
        out.bytes += f.len() as u64;
        buf.extend_from_slice(f);
        let mut batch = Vec::new();
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|&c| c == b'\n') {
            let line = std::str::from_utf8(&buf[start..start + i])
                .map_err(|_| HarnessError::Trust("feed line is not UTF-8".into()))?;
            start += i + 1;
            match trust::wire::FeedLine::parse(line)? {
                trust::wire::FeedLine::Consent(c) => {
                    out.changes += 1;
                    batch.push(c);
                }
                trust::wire::FeedLine::Heartbeat(_) => break,
                _ => {}
            }
        }
        buf.drain(..start);
        out.batches.push(batch);
    }
    Ok(out)
}

fn feed_apply(b: &Bench, a: &FeedArgs) -> Result<()> {
    let load_at_start = loadavg();
    let changes = a
        .changes
        .unwrap_or(if b.smoke { 20_000 } else { 500_000 })
        .max(2);
    let consents = changes / 2;
    let dir = b.dir("feed-apply")?;
    let spec = b.sidecar_spec(&dir)?;
    let (gw, head0) = following_gateway(b, &dir, &spec)?;
    // The sidecar is stopped; the changes go straight into its database; it restarts on
    // the same address and the gateway's follower resumes from head0.
    let t = Instant::now();
    let head = bulk_load(b, &spec.db, consents, a.batch.max(1))?;
    let load_s = t.elapsed().as_secs_f64();
    eprintln!(
        "   {} changes written through the storage API in {load_s:.1} s (head {head0} → {head})",
        head - head0
    );
    let gw_cpu0 = cpu_of(&gw.proc);
    let sidecar = spec.start()?;
    let ready = Instant::now();
    let sc_cpu0 = cpu_of(&sidecar.proc);
    let followed = follow(&gw, ready, head0, head)?;
    let gw_cpu = cpu_of(&gw.proc) - gw_cpu0;
    let sc_cpu = cpu_of(&sidecar.proc) - sc_cpu0;
    let resyncs = benches::sidecar::gateway_metric(gw.admin, "hub_consent_feed_resyncs_total")?;
    // The follower's steps, here, on the same backlog.
    let steps = b.rt.block_on(follower_steps(b, &spec, head0))?;
    let cold = cold_gateway(b, &dir, &spec, head)?;
    let r = FeedResults {
        consents,
        head0,
        head,
        load_s,
        followed,
        gw_cpu,
        sc_cpu,
        resyncs,
        steps,
        cold,
    };
    let report = r.report(b, a.batch);
    let s = r.summary(b);
    drop(gw);
    drop(sidecar);
    // The database holds every generated consent (hundreds of MiB): logs are kept.
    remove_sqlite(&spec.db);
    b.write("feed-apply", load_at_start, report, &s)
}

/// Removes a SQLite database with its `-wal` and `-shm` files.
fn remove_sqlite(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Starts the sidecar with the banks registered and a gateway following it; once the
/// gateway has the head, stops the sidecar. Returns the gateway and that head.
fn following_gateway(b: &Bench, dir: &Path, spec: &SidecarSpec) -> Result<(Gateway, u64)> {
    let sidecar = spec.start()?;
    let mut reg = Registry::new(&b.env, spec, &b.operator)?;
    let nowhere = [SocketAddr::from(([127, 0, 0, 1], 9)); 2];
    b.rt.block_on(reg.register(&b.env, nowhere))?;
    let head0 = b.rt.block_on(reg.head())?;
    let gw = b.gateway(dir, "gateway", nowhere, &Follow::one(spec), false)?;
    wait_feed_version(&gw, head0, Duration::from_secs(60))?;
    drop(sidecar);
    Ok((gw, head0))
}

/// How the gateway's feed version moved from `head0` to `head`.
struct Followed {
    /// Samples taken (one every 5 ms).
    samples: usize,
    /// The first sample past `head0`: when and which version.
    first: (Duration, f64),
    /// When the version reached `head`.
    done: Duration,
}

/// Samples the gateway's `hub_consent_feed_version` every 5 ms until it reaches `head`
/// (at most 300 s after `ready`).
fn follow(gw: &Gateway, ready: Instant, head0: u64, head: u64) -> Result<Followed> {
    let mut samples = 0;
    let (mut first, mut done) = (None, None);
    let deadline = ready + Duration::from_secs(300);
    while done.is_none() {
        let v =
            benches::sidecar::gateway_metric(gw.admin, "hub_consent_feed_version")?.unwrap_or(0.0);
        let t = ready.elapsed();
        samples += 1;
        if first.is_none() && v > head0 as f64 {
            first = Some((t, v));
        }
        if v >= head as f64 {
            done = Some(t);
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Process {
                name: gw.name.clone(),
                reason: format!("feed version {v} < {head} after 300 s"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Followed {
        samples,
        first: first.unwrap_or_default(),
        done: done.unwrap_or_default(),
    })
}

/// A cold gateway loading the same registry as a snapshot.
struct ColdGateway {
    /// Seconds until it was ready.
    ready_s: f64,
    /// Seconds until it had the head.
    head_s: f64,
    /// Its peak RSS in bytes.
    rss: u64,
}

fn cold_gateway(b: &Bench, dir: &Path, spec: &SidecarSpec, head: u64) -> Result<ColdGateway> {
    let nowhere = [SocketAddr::from(([127, 0, 0, 1], 9)); 2];
    let t = Instant::now();
    let cold = b.gateway(dir, "gateway-cold", nowhere, &Follow::one(spec), false)?;
    let ready_s = t.elapsed().as_secs_f64();
    wait_feed_version(&cold, head, Duration::from_secs(300))?;
    Ok(ColdGateway {
        ready_s,
        head_s: t.elapsed().as_secs_f64(),
        rss: cold.proc.peak_rss(),
    })
}

/// Everything feed-apply measured.
struct FeedResults {
    consents: u64,
    head0: u64,
    head: u64,
    /// Seconds the bulk load took.
    load_s: f64,
    followed: Followed,
    gw_cpu: Duration,
    sc_cpu: Duration,
    resyncs: Option<f64>,
    steps: Steps,
    cold: ColdGateway,
}

impl FeedResults {
    /// Changes applied.
    fn n(&self) -> f64 {
        (self.head - self.head0) as f64
    }

    /// From the first applied change to the last.
    fn first_to_last(&self) -> Duration {
        self.followed.done - self.followed.first.0
    }

    /// The apply rate from the start mark to the last change (see [`apply_rate`]).
    fn rate(&self) -> Option<ApplyRate> {
        apply_rate(self.followed.first, self.followed.done, self.head)
    }

    fn report(&self, b: &Bench, batch: usize) -> Value {
        let (n, f) = (self.n(), &self.followed);
        let (t_first, v_first) = f.first;
        let rate = self.rate();
        let per_s = rate.map(|r| round1(r.per_s));
        json!({
            "settings": {"changes": self.head - self.head0, "consents": self.consents, "transaction_batch": batch,
                         "gateway_threads": b.hub_threads},
            "bulk_load": {"seconds": round3(self.load_s), "changes_per_s": round1(n / self.load_s.max(1e-9)),
                          "how": "trust::consents::create + transition(authorised) in Db::write transactions, sidecar stopped"},
            "end_to_end": {
                "from_sidecar_ready_to_first_applied_s": round3(t_first.as_secs_f64()),
                "first_to_last_s": round3(self.first_to_last().as_secs_f64()),
                "version_at_start_mark": v_first,
                "changes_before_start_mark": v_first - self.head0 as f64,
                "changes_counted": rate.map(|r| r.changes),
                "changes_per_s_first_to_last": per_s,
                "changes_per_s_from_sidecar_ready": round1(n / f.done.as_secs_f64().max(1e-9)),
                "gateway_cpu_s": round3(self.gw_cpu.as_secs_f64()),
                "gateway_cpu_us_per_change": round3(self.gw_cpu.as_secs_f64() * 1e6 / n.max(1.0)),
                "sidecar_cpu_s": round3(self.sc_cpu.as_secs_f64()),
                "resyncs": self.resyncs,
                "samples": f.samples,
                "target_changes_per_s": 200_000,
                "target_met": rate.map(|r| r.per_s >= 200_000.0),
            },
            "follower_steps_in_process": self.steps,
            "cold_gateway_snapshot": {"consents": self.consents, "ready_s": round3(self.cold.ready_s),
                                      "version_reached_s": round3(self.cold.head_s),
                                      "peak_rss_mib": round1(self.cold.rss as f64 / 1_048_576.0)},
        })
    }

    fn summary(&self, b: &Bench) -> String {
        let (n, consents, head0) = (self.n(), self.consents, self.head0);
        let rate = match self.rate() {
            Some(r) => format!(
                "{:.0} changes/s over the {:.0} changes applied after the first one seen \
                 (target ≥ 200,000: {})",
                r.per_s,
                r.changes,
                if r.per_s >= 200_000.0 {
                    "met"
                } else {
                    "NOT met"
                }
            ),
            None => "too fast to time at a 5 ms sampling interval (use more --changes)".into(),
        };
        let steps = &self.steps;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} consent changes ({consents} creations + {consents} authorisations) loaded into the stopped sidecar's \
             SQLite through trust::consents in {:.1} s ({:.0}/s); sidecar restarted, the gateway's follower \
             resumed from version {head0}",
            self.head - head0,
            self.load_s,
            n / self.load_s.max(1e-9)
        );
        let _ = writeln!(
            s,
            "gateway (1 follower, {} worker thread): first change applied {:.3} s after the sidecar was ready \
             (reconnect back-off), last {:.3} s after the first: {rate}; \
             gateway CPU {:.2} µs per change; resyncs {:?}",
            b.hub_threads,
            self.followed.first.0.as_secs_f64(),
            self.first_to_last().as_secs_f64(),
            self.gw_cpu.as_secs_f64() * 1e6 / n.max(1.0),
            self.resyncs
        );
        let _ = writeln!(
            s,
            "the follower's steps in this process on the same backlog ({} bytes in {} body frames): transfer {:.0}/s, \
             parse {:.0}/s, apply {:.0}/s, parse+apply {:.0}/s",
            steps.bytes, steps.frames, steps.transfer_per_s, steps.parse_per_s, steps.apply_per_s,
            steps.parse_and_apply_per_s
        );
        let _ = writeln!(
            s,
            "a cold gateway loads the registry ({consents} consents) as a snapshot: ready in {:.2} s, at the head \
             after {:.2} s, peak RSS {:.0} MiB",
            self.cold.ready_s,
            self.cold.head_s,
            self.cold.rss as f64 / 1_048_576.0
        );
        s
    }
}

/// A follower's apply rate over a measured interval.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ApplyRate {
    /// Changes applied inside the interval.
    changes: f64,
    /// Those changes per second.
    per_s: f64,
}

/// The rate at which the feed version moved from the start mark `first` (when the first
/// sample past the old head was taken, and the version it read) to `head`, reached at
/// `done`. The changes up to the start mark's version were applied before the mark, so
/// they are not counted: counting them would divide work done before the interval by the
/// interval. `None` when nothing was applied inside the interval (the whole backlog fell
/// between two samples), so there is no rate to report.
fn apply_rate(first: (Duration, f64), done: Duration, head: u64) -> Option<ApplyRate> {
    let (at, version) = first;
    let secs = done.checked_sub(at)?.as_secs_f64();
    let changes = head as f64 - version;
    if secs <= 0.0 || changes <= 0.0 {
        return None;
    }
    Some(ApplyRate {
        changes,
        per_s: changes / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_leaves_out_changes_applied_before_the_start_mark() {
        // Resumed from version 100; the first sample past it (at 1 s) already read 400,
        // the last change (1,100) was seen at 2 s: 700 changes in 1 s, not 1,000.
        let rate = apply_rate(
            (Duration::from_secs(1), 400.0),
            Duration::from_secs(2),
            1_100,
        );
        assert_eq!(
            rate,
            Some(ApplyRate {
                changes: 700.0,
                per_s: 700.0
            })
        );
    }

    /// What a feed-apply run measured: resumed from `head0`, the first sample past it at
    /// `first`, the head reached at `done`.
    fn measured(head0: u64, first: (Duration, f64), done: Duration, head: u64) -> FeedResults {
        FeedResults {
            consents: (head - head0) / 2,
            head0,
            head,
            load_s: 1.0,
            followed: Followed {
                samples: 3,
                first,
                done,
            },
            gw_cpu: Duration::ZERO,
            sc_cpu: Duration::ZERO,
            resyncs: Some(0.0),
            steps: Steps::default(),
            cold: ColdGateway {
                ready_s: 0.0,
                head_s: 0.0,
                rss: 0,
            },
        }
    }

    #[test]
    fn a_run_reports_the_rate_after_its_start_mark() {
        let run = measured(
            100,
            (Duration::from_secs(1), 400.0),
            Duration::from_secs(2),
            1_100,
        );
        assert_eq!(run.rate().map(|r| r.per_s), Some(700.0));
    }

    #[test]
    fn a_backlog_applied_between_two_samples_has_no_rate() {
        let at = Duration::from_millis(5);
        assert_eq!(apply_rate((at, 1_100.0), at, 1_100), None);
        assert_eq!(
            apply_rate((at, 1_100.0), Duration::from_millis(10), 1_100),
            None
        );
    }
}
