//! `store-floor`: what one shared-limit round trip to Redis costs the thread that makes it,
//! with nothing else in the way: the floor under issue 12's "shared limits within 15 % of
//! local limits' CPU per request".
//!
//! One thread runs a single-threaded tokio runtime, as each hub worker thread does. A pacer
//! thread writes one byte per tick, open loop at `--rate`, to a socket that the runtime
//! reads: each byte wakes the runtime as a request's bytes wake a hub worker, and spawns one
//! task. In an `idle` phase the task does nothing; in a `call` phase it makes the hub's
//! call, one `EVALSHA` of the gateway's own `gcra.lua` with three GCRA items (per user,
//! user × provider, consent × route) on redis's `ConnectionManager` over RESP3, as
//! `gateway/src/limits/store.rs` does (nothing is ever refused). Phases alternate; the
//! runtime thread's CPU per tick in `call` minus that in `idle` is the round trip's own
//! cost on the caller's side (`getrusage(RUSAGE_THREAD)`: the total is the scheduler's
//! exact runtime, its user/system split the kernel's sampled estimate),
//! with the thread's voluntary context switches (sleeps) per tick. Redis's CPU per call
//! and the calls' latency are reported beside it. Redis is a throwaway `redis-server` on
//! 127.0.0.1, configured as the tests' and the cluster's (append-only file, fsync every
//! second).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use benches::procs;
use clap::Parser;
use hdrhistogram::Histogram;
use nix::sys::resource::{getrusage, UsageWho};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo as _, ProtocolVersion, Script};
use sandbox::redis::RedisServer;
use tokio::io::AsyncReadExt as _;

/// The gateway's script, byte for byte.
const SCRIPT: &str = include_str!("../../../gateway/src/limits/gcra.lua");
/// The script with its hash computed once, as the gateway's store keeps it.
static PREPARED: LazyLock<Script> = LazyLock::new(|| Script::new(SCRIPT));

/// The round trip's floor: an idle and a calling phase, alternated.
#[derive(Debug, Parser)]
#[command(name = "store-floor", version, about)]
struct Args {
    /// Ticks per second (2,500: one of two hub worker threads' share of 5,000 req/s).
    #[arg(long, default_value_t = 2_500)]
    rate: u32,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Pairs of phases (idle, then call).
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

/// What one phase measured.
struct Phase {
    ticks: u64,
    thread_cpu: Cpu,
    redis_cpu: Duration,
    latency: Option<Histogram<u64>>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let redis = RedisServer::start(dir.path())?;
    let redis_pid = redis.pid().ok_or("redis-server has no pid")? as i32;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let connection = runtime.block_on(connect(&redis.url()))?;
    println!(
        "store-floor: {} ticks/s, {} s per phase, {} pairs; redis-server pid {redis_pid}",
        args.rate, args.duration, args.runs
    );
    println!(
        "| run | phase | ticks | thread CPU µs/tick (user + system) | sleeps/tick \
         | redis CPU µs/call | call p50 / p99 ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    let mut extra = Vec::new();
    for run in 1..=args.runs {
        let idle = runtime.block_on(phase(&args, None, redis_pid))?;
        let call = runtime.block_on(phase(&args, Some(connection.clone()), redis_pid))?;
        print_row(run, "idle", &idle);
        print_row(run, "call", &call);
        extra.push(
            per_tick(&call.thread_cpu.total(), call.ticks)
                - per_tick(&idle.thread_cpu.total(), idle.ticks),
        );
    }
    let shown: Vec<String> = extra.iter().map(|x| format!("{x:.1}")).collect();
    println!(
        "\nthe round trip's own CPU on the calling thread (call − idle), µs: {}",
        shown.join(", ")
    );
    Ok(())
}

/// A connection made as the gateway makes its store's: RESP3, the script preloaded.
async fn connect(url: &str) -> Result<ConnectionManager, Box<dyn std::error::Error>> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(settings))?;
    let config = ConnectionManagerConfig::new().set_response_timeout(None);
    let mut manager = ConnectionManager::new_with_config(client, config).await?;
    PREPARED.load_async(&mut manager).await?;
    Ok(manager)
}

/// One phase: `args.duration` seconds of ticks, each a task that calls Redis when given a
/// connection.
async fn phase(
    args: &Args,
    connection: Option<ConnectionManager>,
    redis_pid: i32,
) -> Result<Phase, Box<dyn std::error::Error>> {
    let (pacer_end, reader_end) = UnixStream::pair()?;
    reader_end.set_nonblocking(true)?;
    let mut reader = tokio::net::UnixStream::from_std(reader_end)?;
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let pacer = {
        let stop = stop.clone();
        std::thread::spawn(move || pace(pacer_end, period, &stop))
    };
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let (cpu0, redis0) = (thread_cpu()?, procs::tree_cpu(redis_pid));
    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut ticks = 0u64;
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        for _ in 0..n {
            ticks += 1;
            tokio::spawn(tick(connection.clone(), ticks, latency.clone()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Let the last calls land before the clocks are read.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (cpu1, redis1) = (thread_cpu()?, procs::tree_cpu(redis_pid));
    drop(reader);
    let _ = pacer.join();
    let latency = std::mem::replace(
        &mut *latency.lock().map_err(|_| "poisoned")?,
        Histogram::new(3)?,
    );
    Ok(Phase {
        ticks,
        thread_cpu: cpu1.since(cpu0),
        redis_cpu: redis1.saturating_sub(redis0),
        latency: connection.map(|_| latency),
    })
}

/// One tick's task: nothing, or the hub's call (three GCRA items, never refused).
async fn tick(
    connection: Option<ConnectionManager>,
    n: u64,
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
) {
    let Some(mut connection) = connection else {
        std::hint::black_box(n);
        return;
    };
    let mut invocation = PREPARED.prepare_invoke();
    // Interval 1 µs (a million requests a second), a burst of 10^9: never refused.
    for key in [
        "{u:floor}:user",
        "{u:floor}:user_provider",
        "{u:floor}:consent_route",
    ] {
        invocation
            .key(key)
            .arg(1)
            .arg(1)
            .arg(1_000_000_000u32)
            .arg(1);
    }
    let started = Instant::now();
    let reply = invocation.invoke_async::<Vec<i64>>(&mut connection).await;
    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if reply.is_ok() {
        if let Ok(mut h) = latency.lock() {
            let _ = h.record(took);
        }
    }
}

/// Writes one byte per `period` (open loop: on schedule, however late the reader is)
/// until `stop`.
fn pace(mut out: UnixStream, period: Duration, stop: &AtomicBool) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if out.write_all(&[1]).is_err() {
            return;
        }
    }
}

/// This thread's CPU time so far: user, system, and its voluntary context switches.
fn thread_cpu() -> Result<Cpu, nix::Error> {
    let usage = getrusage(UsageWho::RUSAGE_THREAD)?;
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_micros(
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_usec()).unwrap_or(0),
        )
    };
    Ok(Cpu {
        user: micros(usage.user_time()),
        system: micros(usage.system_time()),
        switches: u64::try_from(usage.voluntary_context_switches()).unwrap_or(0),
    })
}

/// A thread's CPU counters (see [`thread_cpu`]).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: Duration,
    system: Duration,
    switches: u64,
}

impl Cpu {
    /// The counters from `earlier` to `self`.
    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }

    /// User + system.
    fn total(&self) -> Duration {
        self.user + self.system
    }
}

/// Microseconds of `cpu` per tick.
fn per_tick(cpu: &Duration, ticks: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / ticks.max(1) as f64
}

fn print_row(run: u32, name: &str, p: &Phase) {
    let redis = match &p.latency {
        Some(_) => format!("{:.1}", per_tick(&p.redis_cpu, p.ticks)),
        None => "–".into(),
    };
    let latency = match &p.latency {
        Some(h) if !h.is_empty() => format!(
            "{:.3} / {:.3} ({} answered)",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.len()
        ),
        Some(_) => "no answer".into(),
        None => "–".into(),
    };
    let cpu = &p.thread_cpu;
    println!(
        "| {run} | {name} | {} | {:.1} ({:.1} + {:.1}) | {:.2} | {redis} | {latency} |",
        p.ticks,
        per_tick(&cpu.total(), p.ticks),
        per_tick(&cpu.user, p.ticks),
        per_tick(&cpu.system, p.ticks),
        cpu.switches as f64 / p.ticks.max(1) as f64,
    );
}
