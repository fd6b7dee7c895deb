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
//!   `hub_consent_feed_version` timed from the first applied change to the last; plus the
//!   follower's steps (transfer, parse, apply) measured in this process on the same stream,
//!   and a cold gateway loading the same registry as a snapshot.
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
use benches::procs;
use benches::report::{loadavg, Machine};
use benches::sidecar::{
    bearer_value, start_gateway, token_form, wait_feed_version, Gateway, HttpConn, Registry,
    SidecarSpec, FORM,
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
    /// All three, in this order, with their defaults.
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
}

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

    fn gateway(
        &self,
        dir: &Path,
        name: &str,
        banks: [SocketAddr; 2],
        spec: &SidecarSpec,
        jwks: bool,
    ) -> Result<Gateway> {
        let url = spec.url();
        start_gateway(
            &self.gateway,
            &self.env,
            dir,
            name,
            Some(self.hub_threads),
            banks,
            ConsentSource::Trust {
                url: &url,
                max_staleness_secs: 30,
                jwks,
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
    let operator_bin =
        Bin::parse("000000000001").map_err(|e| HarnessError::Plan(format!("operator BIN: {e}")))?;
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
    let b = Bench {
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
    };
    match &a.command {
        Cmd::RevocationLatency(r) => revocation_latency(&b, r),
        Cmd::TokenEndpoint(t) => token_endpoint(&b, t),
        Cmd::FeedApply(f) => feed_apply(&b, f),
        Cmd::All => {
            revocation_latency(
                &b,
                &RevocationArgs {
                    revocations: None,
                    background_rate: None,
                    background_connections: 4,
                },
            )?;
            token_endpoint(
                &b,
                &TokenArgs {
                    clients: 16,
                    duration: None,
                },
            )?;
            feed_apply(
                &b,
                &FeedArgs {
                    changes: None,
                    batch: 5_000,
                },
            )
        }
        Cmd::Bank { .. } => Ok(()),
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

// ---------------------------------------------------------------------------------------
// revocation-latency

/// One consent of the revocation benchmark.
struct BenchConsent {
    id: String,
    user: usize,
    path: String,
    auth: HeaderValue,
}

/// What a background connection measured.
#[derive(Default)]
struct Background {
    sent: u64,
    statuses: BTreeMap<String, u64>,
    errors: u64,
    histogram: Option<Histogram<u64>>,
}

/// Paced requests on one keep-alive connection until `stop`.
async fn background(
    mut conn: HttpConn,
    path: String,
    auth: HeaderValue,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Background {
    let mut out = Background {
        histogram: histogram().ok(),
        ..Background::default()
    };
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        let t = Instant::now();
        out.sent += 1;
        match conn.get_with(&path, &auth).await {
            Ok(r) => {
                let key = if r.status == 200 {
                    "200".to_string()
                } else {
                    format!("{} {}", r.status, r.code().unwrap_or_default())
                };
                *out.statuses.entry(key).or_default() += 1;
                if let Some(h) = out.histogram.as_mut() {
                    let _ = h.record(us(t.elapsed()));
                }
            }
            Err(_) => out.errors += 1,
        }
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

fn revocation_latency(b: &Bench, a: &RevocationArgs) -> Result<()> {
    let load_at_start = loadavg();
    let n = a
        .revocations
        .unwrap_or(if b.smoke { 50 } else { 1000 })
        .max(1);
    let bg_rate = a
        .background_rate
        .unwrap_or(if b.smoke { 50.0 } else { 150.0 });
    let bg_conns = a.background_connections.max(1);
    let dir = b.dir("revocation-latency")?;
    let bank = b.bank(&dir)?;
    let spec = b.sidecar_spec(&dir)?;
    let sidecar = spec.start()?;
    let mut reg = Registry::new(&b.env, &spec, &b.operator)?;
    let users = b.env.active_users();

    // The registry: n consents to revoke and a few for the background load, each
    // authorised by its customer with the one-time code, each with a token.
    let setup = Instant::now();
    let total = n + 2 * users;
    let mut consents = Vec::with_capacity(total);
    b.rt.block_on(async {
        reg.register(&b.env, bank.addrs).await?;
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
        Ok::<(), HarnessError>(())
    })?;
    let setup_s = setup.elapsed().as_secs_f64();
    let head = b.rt.block_on(reg.head())?;
    eprintln!(
        "   registry: {total} consents in {setup_s:.1} s (create, OTP authorisation, token), head {head}"
    );
    let gateways = [
        b.gateway(&dir, "gateway-a", bank.addrs, &spec, true)?,
        b.gateway(&dir, "gateway-b", bank.addrs, &spec, true)?,
    ];
    for g in &gateways {
        wait_feed_version(g, head, Duration::from_secs(60))?;
    }
    let (bg_consents, rev_consents) = consents.split_at(2 * users);

    // Probe connections: one per gateway and user (a token is bound to its user's
    // certificate).
    let mut probes: Vec<Vec<HttpConn>> = Vec::new();
    for g in &gateways {
        let mut per_user = Vec::new();
        for u in 0..users {
            per_user.push(HttpConn::new(g.endpoint.clone(), b.user_tls(u)?));
        }
        probes.push(per_user);
    }
    let mut allowed_rtt = histogram()?;
    let mut allowed_rtt_b = histogram()?;
    let mut both = histogram()?;
    let mut both_from_sent = histogram()?;
    let mut per_gw = [histogram()?, histogram()?];
    let mut revoke_call = histogram()?;
    let (mut first_refused, mut allowed_before, mut probe_total) =
        ([0u64; 2], [0u64; 2], [0u64; 2]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut cpu = json!({});
    let mut window_s = 0.0;
    let mut bg_s = 0.0;
    let mut bg_results = Vec::new();
    let mut bg_requests = 0u64;

    b.rt.block_on(async {
        // Warm-up: every consent allowed by both gateways once (tokens verified and
        // cached, connections open). The first token may race the gateway's JWKS fetch.
        for c in consents.iter() {
            for per_user in probes.iter_mut() {
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
        // Background load through both gateways.
        let interval = Duration::from_secs_f64(bg_conns as f64 / bg_rate.max(0.1));
        let mut tasks = Vec::new();
        for (gi, g) in gateways.iter().enumerate() {
            for k in 0..bg_conns {
                let c = &bg_consents[(gi * bg_conns + k) % bg_consents.len()];
                tasks.push(tokio::spawn(background(
                    HttpConn::new(g.endpoint.clone(), b.user_tls(c.user)?),
                    c.path.clone(),
                    c.auth.clone(),
                    interval,
                    stop.clone(),
                )));
            }
        }
        let bg_started = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;

        let cpu0 = (
            cpu_of(&sidecar.proc),
            cpu_of(&gateways[0].proc),
            cpu_of(&gateways[1].proc),
            cpu_of(&bank.proc),
            procs::self_cpu(),
        );
        let t0 = Instant::now();
        for (i, c) in rev_consents.iter().enumerate() {
            let sent = Instant::now();
            let r = reg.revoke(c.user, &c.id).await?;
            let answered = Instant::now();
            if r.status != 200 {
                return Err(HarnessError::Trust(format!("revoke: {}", r.describe())));
            }
            let _ = revoke_call.record(us(answered - sent));
            let (pa, pb) = probes.split_at_mut(1);
            let (ra, rb) = tokio::join!(
                until_refused(&mut pa[0][c.user], &c.path, &c.auth, &mut allowed_rtt),
                until_refused(&mut pb[0][c.user], &c.path, &c.auth, &mut allowed_rtt_b),
            );
            let (ra, rb) = (ra?, rb?);
            for (k, r) in [&ra, &rb].into_iter().enumerate() {
                let _ = per_gw[k].record(us(r.at - answered));
                probe_total[k] += r.probes;
                allowed_before[k] += r.allowed;
                if r.probes == 1 {
                    first_refused[k] += 1;
                }
            }
            let _ = both.record(us(ra.at.max(rb.at) - answered));
            let _ = both_from_sent.record(us(ra.at.max(rb.at) - sent));
            if (i + 1) % 250 == 0 {
                eprintln!("   {} revocations", i + 1);
            }
        }
        window_s = t0.elapsed().as_secs_f64();
        let cpu1 = (
            cpu_of(&sidecar.proc),
            cpu_of(&gateways[0].proc),
            cpu_of(&gateways[1].proc),
            cpu_of(&bank.proc),
            procs::self_cpu(),
        );
        stop.store(true, Ordering::Relaxed);
        bg_s = bg_started.elapsed().as_secs_f64();
        for t in tasks {
            if let Ok(r) = t.await {
                bg_requests += r.sent;
                bg_results.push(r);
            }
        }
        cpu = json!({
            "window_s": round3(window_s),
            "sidecar_s": round3((cpu1.0 - cpu0.0).as_secs_f64()),
            "gateway_a_s": round3((cpu1.1 - cpu0.1).as_secs_f64()),
            "gateway_b_s": round3((cpu1.2 - cpu0.2).as_secs_f64()),
            "bank_s": round3((cpu1.3 - cpu0.3).as_secs_f64()),
            "bench_client_s": round3((cpu1.4 - cpu0.4).as_secs_f64()),
        });
        Ok::<(), HarnessError>(())
    })?;
    // Allowed probes: the warm-up's and those answered 200 while waiting, both gateways.
    let _ = allowed_rtt.add(&allowed_rtt_b);

    // Probe cost: refused probes of an already revoked consent, one gateway at a time,
    // without background load: round trip and gateway CPU per probe.
    let cost = b.rt.block_on(async {
        let mut rtts = Vec::new();
        let mut cpu_per = Vec::new();
        let c = rev_consents
            .first()
            .ok_or_else(|| HarnessError::Plan("no consent".into()))?;
        // /proc counts CPU in 10 ms ticks: enough probes for the per-probe figure.
        let k = if b.smoke { 1000 } else { 5000 };
        for (gi, per_user) in probes.iter_mut().enumerate() {
            let mut h = histogram()?;
            let cpu0 = cpu_of(&gateways[gi].proc);
            for _ in 0..k {
                let t = Instant::now();
                let r = per_user[c.user].get_with(&c.path, &c.auth).await?;
                let _ = h.record(us(t.elapsed()));
                if r.status != 403 {
                    return Err(HarnessError::Check {
                        system: gateways[gi].name.clone(),
                        reason: format!("revoked consent answered {}", r.describe()),
                    });
                }
            }
            let cpu = cpu_of(&gateways[gi].proc) - cpu0;
            rtts.push(latency(&h));
            cpu_per.push(round1(cpu.as_secs_f64() * 1e6 / k as f64));
        }
        Ok::<_, HarnessError>((rtts, cpu_per))
    })?;

    let mut bg_statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut bg_hist = histogram()?;
    let mut bg_errors = 0;
    for r in &bg_results {
        for (k, v) in &r.statuses {
            *bg_statuses.entry(k.clone()).or_default() += v;
        }
        bg_errors += r.errors;
        if let Some(h) = &r.histogram {
            let _ = bg_hist.add(h);
        }
    }
    let both_l = latency(&both);
    let met = both_l.p99_ms <= 50.0;
    let per_rev = |k: usize| round1(probe_total[k] as f64 / n as f64);
    let report = json!({
        "settings": {
            "revocations": n,
            "background_rate_per_gateway": bg_rate,
            "background_connections_per_gateway": bg_conns,
            "gateway_threads": b.hub_threads,
            "gateways": 2,
            "sidecar_heartbeat_ms": spec.heartbeat_ms,
        },
        "setup": {"consents": total, "seconds": round3(setup_s), "head_version": head},
        "latency_both_refuse": both_l,
        "latency_gateway_a": latency(&per_gw[0]),
        "latency_gateway_b": latency(&per_gw[1]),
        "revoke_call": latency(&revoke_call),
        "latency_both_refuse_from_request_sent": latency(&both_from_sent),
        "target_p99_ms": 50.0,
        "target_met": met,
        "probes": {
            "total": [probe_total[0], probe_total[1]],
            "per_revocation_mean": [per_rev(0), per_rev(1)],
            "allowed_before_refusal": [allowed_before[0], allowed_before[1]],
            "refused_on_first_probe": [first_refused[0], first_refused[1]],
        },
        "probe_cost": ProbeCost {
            refused_probe_rtt: cost.0.first().cloned().unwrap_or_default(),
            allowed_probe_rtt: latency(&allowed_rtt),
            gateway_cpu_us_per_refused_probe: cost.1.first().copied().unwrap_or_default(),
        },
        "probe_cost_gateway_b": {
            "refused_probe_rtt": cost.0.get(1).cloned().unwrap_or_default(),
            "gateway_cpu_us_per_refused_probe": cost.1.get(1).copied().unwrap_or_default(),
        },
        "background": {
            "requests": bg_requests,
            "answers": bg_statuses,
            "transport_errors": bg_errors,
            "seconds": round3(bg_s),
            "rps": round1(bg_requests as f64 / bg_s.max(1e-9)),
            "latency": latency(&bg_hist),
        },
        "cpu_during_revocations": cpu,
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{n} revocations one after another; 2 gateways ({} worker thread each) following one sidecar; \
         background {:.0} req/s per gateway ({} requests in {:.2} s, answers {:?}, {} transport errors, \
         latency {})",
        b.hub_threads,
        bg_rate,
        bg_requests,
        bg_s,
        bg_statuses,
        bg_errors,
        lat_line(&latency(&bg_hist))
    );
    let _ = writeln!(
        s,
        "revocation answered → BOTH gateways refuse: {}",
        lat_line(&both_l)
    );
    let _ = writeln!(
        s,
        "  gateway A alone:                        {}",
        lat_line(&latency(&per_gw[0]))
    );
    let _ = writeln!(
        s,
        "  gateway B alone:                        {}",
        lat_line(&latency(&per_gw[1]))
    );
    let _ = writeln!(
        s,
        "  DELETE /v1/consents/{{id}} round trip:   {}",
        lat_line(&latency(&revoke_call))
    );
    let _ = writeln!(
        s,
        "  from the DELETE sent → both refuse:     {}",
        lat_line(&latency(&both_from_sent))
    );
    let _ = writeln!(
        s,
        "target p99 ≤ 50 ms: {}",
        if met { "met" } else { "NOT met" }
    );
    let _ = writeln!(
        s,
        "probing: {:.1} / {:.1} probes per revocation (A / B), refused on the first probe in {} / {} of {n}, \
         {} / {} allowed answers before the refusal",
        per_rev(0),
        per_rev(1),
        first_refused[0],
        first_refused[1],
        allowed_before[0],
        allowed_before[1]
    );
    let _ = writeln!(
        s,
        "probe cost (the resolution of the measurement): a refused probe's round trip {} (A, idle); \
         an allowed one (through the bank) {}; gateway CPU per refused probe {:.1} µs (A), {:.1} µs (B)",
        lat_line(&cost.0.first().cloned().unwrap_or_default()),
        lat_line(&latency(&allowed_rtt)),
        cost.1.first().copied().unwrap_or_default(),
        cost.1.get(1).copied().unwrap_or_default()
    );
    let _ = writeln!(s, "CPU during the revocations: {cpu}");
    drop(gateways);
    drop(sidecar);
    drop(bank);
    b.write("revocation-latency", load_at_start, report, &s)
}

// ---------------------------------------------------------------------------------------
// token-endpoint

#[derive(Default)]
struct TokenClient {
    requests: u64,
    statuses: BTreeMap<String, u64>,
    errors: u64,
    histogram: Option<Histogram<u64>>,
}

async fn token_client(
    mut conn: HttpConn,
    form: Bytes,
    until: Instant,
    warm_until: Instant,
) -> TokenClient {
    let mut out = TokenClient {
        histogram: histogram().ok(),
        ..TokenClient::default()
    };
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
        out.requests += 1;
        match r {
            Ok(r) => {
                let key = if r.status == 200 {
                    "200".to_string()
                } else {
                    format!("{} {}", r.status, r.code().unwrap_or_default())
                };
                *out.statuses.entry(key).or_default() += 1;
                if let Some(h) = out.histogram.as_mut() {
                    let _ = h.record(us(t.elapsed()));
                }
            }
            Err(_) => out.errors += 1,
        }
    }
    out
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
    // The banks are registered (providers need a URL) but never called here.
    let nowhere = [SocketAddr::from(([127, 0, 0, 1], 9)); 2];
    let mut forms = Vec::new();
    b.rt.block_on(async {
        reg.register(&b.env, nowhere).await?;
        for u in 0..users {
            let row = b.env.consent(2 * u);
            let row = benches::fixture::ConsentRow { user: u, ..row };
            let provider = b.env.providers[row.provider].to_string();
            let id = reg.authorised_consent(u, &provider, &row.customer).await?;
            forms.push(token_form(reg.user_bin(u), &id));
        }
        Ok::<(), HarnessError>(())
    })?;
    let endpoint = benches::workload::Endpoint::localhost(spec.addr())?;
    let mut results = Vec::new();
    let (cpu0, self0, t0);
    {
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
        cpu0 = cpu_of(&sidecar.proc);
        self0 = procs::self_cpu();
        t0 = Instant::now();
        for t in tasks {
            if let Ok(r) = b.rt.block_on(t) {
                results.push(r);
            }
        }
    }
    let elapsed = t0.elapsed();
    let sidecar_cpu = cpu_of(&sidecar.proc) - cpu0;
    let client_cpu = procs::self_cpu() - self0;
    let mut h = histogram()?;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let (mut requests, mut errors) = (0u64, 0u64);
    for r in &results {
        requests += r.requests;
        errors += r.errors;
        for (k, v) in &r.statuses {
            *statuses.entry(k.clone()).or_default() += v;
        }
        if let Some(x) = &r.histogram {
            let _ = h.add(x);
        }
    }
    let ok = statuses.get("200").copied().unwrap_or(0);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let l = latency(&h);
    let cpu_per_token = round1(sidecar_cpu.as_secs_f64() * 1e6 / ok.max(1) as f64);
    let report = json!({
        "settings": {"clients": clients, "duration_s": duration.as_secs_f64(), "warmup_s": warmup.as_secs_f64(),
                     "api_users": users, "alg": "ES256", "token_lifetime_s": spec.token_lifetime_secs},
        "requests": requests,
        "answers": statuses,
        "transport_errors": errors,
        "rps": round1(requests as f64 / secs),
        "tokens_per_s": round1(ok as f64 / secs),
        "latency": l,
        "sidecar_cpu_s": round3(sidecar_cpu.as_secs_f64()),
        "sidecar_cpu_us_per_token": cpu_per_token,
        "sidecar_cores_busy": round3(sidecar_cpu.as_secs_f64() / secs),
        "client_cpu_s": round3(client_cpu.as_secs_f64()),
    });
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
        requests as f64 / secs
    );
    let _ = writeln!(s, "latency: {}", lat_line(&l));
    let _ = writeln!(
        s,
        "sidecar CPU: {:.2} s = {cpu_per_token} µs per token ({:.2} cores busy); this client used {:.2} s of CPU \
         on the same 2 cores",
        sidecar_cpu.as_secs_f64(),
        sidecar_cpu.as_secs_f64() / secs,
        client_cpu.as_secs_f64()
    );
    drop(sidecar);
    b.write("token-endpoint", load_at_start, report, &s)
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
    use http_body_util::BodyExt;
    let hub = b.env.pki.hub_client();
    let tls = benches::tls::client_config(
        b.env.pki.ca_cert_path(),
        &hub.cert_path,
        &hub.key_path,
        false,
    )?;
    let ep = benches::workload::Endpoint::localhost(spec.addr())?;
    let fail = |e: String| HarnessError::Connect {
        addr: ep.addr,
        reason: e,
    };
    let t0 = Instant::now();
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
    'read: while let Some(f) = body.frame().await {
        let Ok(data) = f.map_err(|e| fail(e.to_string()))?.into_data() else {
            continue;
        };
        tail.extend_from_slice(&data);
        frames.push(data);
        // Stop at the first heartbeat line (the backlog is complete).
        let mut start = 0;
        while let Some(i) = tail[start..].iter().position(|&c| c == b'\n') {
            if tail[start..].starts_with(b"{\"heartbeat\"") {
                break 'read;
            }
            start += i + 1;
        }
        tail.drain(..start);
    }
    let transfer = t0.elapsed();
    drop(body);
    driver.abort();

    // Parse, keeping the arrival batches (a line may straddle two frames, as in the
    // follower's buffer).
    let t1 = Instant::now();
    let mut batches: Vec<Vec<Change>> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut changes = 0u64;
    let mut bytes = 0u64;
    for f in &frames {
        bytes += f.len() as u64;
        buf.extend_from_slice(f);
        let mut batch = Vec::new();
        let mut start = 0;
        while let Some(i) = buf[start..].iter().position(|&c| c == b'\n') {
            let line = std::str::from_utf8(&buf[start..start + i])
                .map_err(|_| HarnessError::Trust("feed line is not UTF-8".into()))?;
            start += i + 1;
            match trust::wire::FeedLine::parse(line)? {
                trust::wire::FeedLine::Consent(c) => {
                    changes += 1;
                    batch.push(c);
                }
                trust::wire::FeedLine::Heartbeat(_) => break,
                _ => {}
            }
        }
        buf.drain(..start);
        batches.push(batch);
    }
    let parse = t1.elapsed();
    let store = ConsentStore::new();
    let t2 = Instant::now();
    for batch in batches {
        store
            .apply_batch(batch)
            .map_err(|e| HarnessError::Trust(format!("apply: {e}")))?;
    }
    let apply = t2.elapsed();
    let rate = |d: Duration| round1(changes as f64 / d.as_secs_f64().max(1e-9));
    Ok(Steps {
        changes,
        bytes,
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

fn feed_apply(b: &Bench, a: &FeedArgs) -> Result<()> {
    let load_at_start = loadavg();
    let changes = a
        .changes
        .unwrap_or(if b.smoke { 20_000 } else { 500_000 })
        .max(2);
    let consents = changes / 2;
    let dir = b.dir("feed-apply")?;
    let spec = b.sidecar_spec(&dir)?;
    let sidecar = spec.start()?;
    let mut reg = Registry::new(&b.env, &spec, &b.operator)?;
    let nowhere = [SocketAddr::from(([127, 0, 0, 1], 9)); 2];
    b.rt.block_on(reg.register(&b.env, nowhere))?;
    let head0 = b.rt.block_on(reg.head())?;
    let gw = b.gateway(&dir, "gateway", nowhere, &spec, false)?;
    wait_feed_version(&gw, head0, Duration::from_secs(60))?;

    // The sidecar stops; the changes go straight into its database; it restarts on the
    // same address and the gateway's follower resumes from head0.
    drop(sidecar);
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
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let (mut first, mut done) = (None, None);
    let deadline = ready + Duration::from_secs(300);
    while done.is_none() {
        let v =
            benches::sidecar::gateway_metric(gw.admin, "hub_consent_feed_version")?.unwrap_or(0.0);
        let t = ready.elapsed();
        samples.push((round3(t.as_secs_f64()), v));
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
    let gw_cpu = cpu_of(&gw.proc) - gw_cpu0;
    let sc_cpu = cpu_of(&sidecar.proc) - sc_cpu0;
    let (t_first, v_first) = first.unwrap_or_default();
    let t_done = done.unwrap_or_default();
    let n = (head - head0) as f64;
    let rate_first = (head as f64 - v_first) / (t_done - t_first).as_secs_f64().max(1e-9);
    let rate_total = n / (t_done - t_first).as_secs_f64().max(1e-9);
    let rate_from_ready = n / t_done.as_secs_f64().max(1e-9);
    let resyncs = benches::sidecar::gateway_metric(gw.admin, "hub_consent_feed_resyncs_total")?;

    // The follower's steps, here, on the same backlog.
    let steps = b.rt.block_on(follower_steps(b, &spec, head0))?;

    // A cold gateway: the same registry as a snapshot.
    let t = Instant::now();
    let cold = b.gateway(&dir, "gateway-cold", nowhere, &spec, false)?;
    let ready_s = t.elapsed().as_secs_f64();
    wait_feed_version(&cold, head, Duration::from_secs(300))?;
    let cold_s = t.elapsed().as_secs_f64();
    let cold_rss = cold.proc.peak_rss();
    drop(cold);

    let report = json!({
        "settings": {"changes": head - head0, "consents": consents, "transaction_batch": a.batch,
                     "gateway_threads": b.hub_threads},
        "bulk_load": {"seconds": round3(load_s), "changes_per_s": round1(n / load_s.max(1e-9)),
                      "how": "trust::consents::create + transition(authorised) in Db::write transactions, sidecar stopped"},
        "end_to_end": {
            "from_sidecar_ready_to_first_applied_s": round3(t_first.as_secs_f64()),
            "first_to_last_s": round3((t_done - t_first).as_secs_f64()),
            "changes_per_s_first_to_last": round1(rate_total),
            "changes_per_s_after_first_sample": round1(rate_first),
            "changes_per_s_from_sidecar_ready": round1(rate_from_ready),
            "gateway_cpu_s": round3(gw_cpu.as_secs_f64()),
            "gateway_cpu_us_per_change": round3(gw_cpu.as_secs_f64() * 1e6 / n.max(1.0)),
            "sidecar_cpu_s": round3(sc_cpu.as_secs_f64()),
            "resyncs": resyncs,
            "samples": samples.len(),
            "target_changes_per_s": 200_000,
            "target_met": rate_total >= 200_000.0,
        },
        "follower_steps_in_process": steps,
        "cold_gateway_snapshot": {"consents": consents, "ready_s": round3(ready_s),
                                  "version_reached_s": round3(cold_s),
                                  "peak_rss_mib": round1(cold_rss as f64 / 1_048_576.0)},
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} consent changes ({consents} creations + {consents} authorisations) loaded into the stopped sidecar's \
         SQLite through trust::consents in {load_s:.1} s ({:.0}/s); sidecar restarted, the gateway's follower \
         resumed from version {head0}",
        head - head0,
        n / load_s.max(1e-9)
    );
    let _ = writeln!(
        s,
        "gateway (1 follower, {} worker thread): first change applied {:.3} s after the sidecar was ready \
         (reconnect back-off), last {:.3} s after the first: {:.0} changes/s (target ≥ 200,000: {}); \
         gateway CPU {:.2} µs per change; resyncs {:?}",
        b.hub_threads,
        t_first.as_secs_f64(),
        (t_done - t_first).as_secs_f64(),
        rate_total,
        if rate_total >= 200_000.0 { "met" } else { "NOT met" },
        gw_cpu.as_secs_f64() * 1e6 / n.max(1.0),
        resyncs
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
        "a cold gateway loads the registry ({consents} consents) as a snapshot: ready in {ready_s:.2} s, at the head \
         after {cold_s:.2} s, peak RSS {:.0} MiB",
        cold_rss as f64 / 1_048_576.0
    );
    drop(gw);
    drop(sidecar);
    // The database holds every generated consent (hundreds of MiB): logs are kept.
    for suffix in ["", "-wal", "-shm"] {
        let mut p = spec.db.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    b.write("feed-apply", load_at_start, report, &s)
}
