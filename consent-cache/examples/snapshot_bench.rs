//! Measures the consent store at scale: snapshot write and load time, memory
//! (peak and resident set from /proc/self/status), `get` latency and delta throughput.
//!
//! ```text
//! cargo run --release -p consent-cache --example snapshot_bench -- gen /tmp/c10m.snap 10000000
//! cargo run --release -p consent-cache --example snapshot_bench -- load /tmp/c10m.snap
//! cargo run --release -p consent-cache --example snapshot_bench -- gen-jsonl /tmp/c1m.jsonl 1000000
//! cargo run --release -p consent-cache --example snapshot_bench -- load /tmp/c1m.jsonl
//! ```
//!
//! Records are synthetic but shaped like production ones: UUID ids, 12-digit
//! customer ids, 1–2 of 30 providers, up to 3 permissions, 5% restricted to
//! accounts, 80% with an expiry, six distinct purposes. Record `i` is a pure
//! function of `i`, so `load` can regenerate ids to look up.

use consent_cache::{
    Bin, Change, ChangeOp, ConsentRecord, ConsentStatus, ConsentStore, Permission,
};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn id_of(i: u64) -> String {
    let (a, b) = (mix(i), mix(i ^ 0xdead_beef_0000_0000));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

const PURPOSES: [&str; 6] = [
    "personal finance management",
    "credit scoring for a loan application",
    "account aggregation",
    "mortgage affordability check",
    "accounting software synchronisation",
    "income verification",
];

fn bin(n: u64) -> Bin {
    // n % 10^12 is always a valid BIN.
    Bin::new(n % 1_000_000_000_000).unwrap_or_else(|| unreachable!())
}

fn record(i: u64) -> ConsentRecord {
    let h = mix(i.wrapping_mul(31).wrapping_add(7));
    let provider = |k: u64| bin(990_140_000_000 + k % 30);
    let providers = if h.is_multiple_of(3) {
        vec![provider(h >> 8), provider((h >> 8) + 1)]
    } else {
        vec![provider(h >> 8)]
    };
    let permissions = match (h >> 16) % 3 {
        0 => vec![Permission::Accounts],
        1 => vec![Permission::Accounts, Permission::Balances],
        _ => vec![
            Permission::Accounts,
            Permission::Balances,
            Permission::Transactions,
        ],
    };
    let created = 1_700_000_000 + (h >> 20) as i64 % 60_000_000;
    ConsentRecord {
        id: id_of(i),
        api_user: bin(180_340_000_000 + (h >> 24) % 200),
        customer: format!("{:012}", (h >> 12) % 1_000_000_000_000),
        providers,
        permissions,
        accounts: (h >> 40)
            .is_multiple_of(20)
            .then(|| vec![format!("KZ{:018}", h >> 3)]),
        purpose: PURPOSES[((h >> 44) % 6) as usize].to_owned(),
        created_at: OffsetDateTime::from_unix_timestamp(created)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        expires_at: (!(h >> 48).is_multiple_of(5)).then(|| {
            OffsetDateTime::from_unix_timestamp(created + 31_536_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        }),
        status: if (h >> 52).is_multiple_of(10) {
            ConsentStatus::Revoked
        } else {
            ConsentStatus::Authorised
        },
    }
}

fn proc_status(field: &str) -> String {
    proc_field("/proc/self/status", field)
}

fn proc_field(file: &str, field: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "?".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median and mean ns per `get` over `ids`, timed in batches of 64 lookups
/// (one clock read per lookup would cost as much as the lookup).
fn time_gets(store: &ConsentStore, ids: &[String]) -> (f64, f64, usize) {
    let mut batches = Vec::with_capacity(ids.len() / 64);
    let mut found = 0;
    let start = Instant::now();
    for chunk in ids.chunks(64) {
        let t = Instant::now();
        for id in chunk {
            if let Some(c) = store.get(black_box(id)) {
                found += 1;
                black_box(c.status());
            }
        }
        batches.push(t.elapsed().as_nanos() as f64 / chunk.len() as f64);
    }
    let mean = start.elapsed().as_nanos() as f64 / ids.len() as f64;
    (median(batches), mean, found)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: snapshot_bench gen FILE.snap N | gen-jsonl FILE.jsonl N | load FILE";
    let (cmd, path) = match (args.first(), args.get(1)) {
        (Some(c), Some(p)) => (c.as_str(), Path::new(p)),
        _ => return Err(usage.into()),
    };
    match cmd {
        "gen" => {
            let n: u64 = args.get(2).ok_or(usage)?.parse()?;
            let t = Instant::now();
            let written = consent_cache::write_snapshot(path, n, (0..n).map(record))?;
            let size = std::fs::metadata(path)?.len();
            println!(
                "wrote {written} records, {} MiB, in {}",
                size >> 20,
                secs(t.elapsed())
            );
        }
        "gen-jsonl" => {
            let n: u64 = args.get(2).ok_or(usage)?.parse()?;
            let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
            writeln!(out, "{{\"snapshot_version\": {n}}}")?;
            for i in 0..n {
                serde_json::to_writer(&mut out, &record(i))?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            println!(
                "wrote {n} records, {} MiB",
                std::fs::metadata(path)?.len() >> 20
            );
        }
        "load" => {
            println!("before load: VmRSS {}", proc_status("VmRSS:"));
            let t = Instant::now();
            let store = ConsentStore::load(path)?;
            let load_time = t.elapsed();
            let n = store.len() as u64;
            println!(
                "loaded {n} records (version {}) in {}; VmHWM (peak RSS) {}, VmRSS {}",
                store.version(),
                secs(load_time),
                proc_status("VmHWM:"),
                proc_status("VmRSS:")
            );

            let sample = 1_000_000.min(n as usize);
            let random: Vec<String> = (0..sample as u64)
                .map(|k| id_of(mix(k ^ 0x5555) % n))
                .collect();
            let hot: Vec<String> = (0..sample as u64)
                .map(|k| id_of(mix(k % 1000) % n))
                .collect();
            let misses: Vec<String> = (0..sample as u64).map(|k| id_of(n + k)).collect();
            for (name, ids) in [
                ("uniform random over all", &random),
                ("hot set of 1000", &hot),
                ("absent ids", &misses),
            ] {
                let _ = time_gets(&store, ids); // warm up
                let (med, mean, found) = time_gets(&store, ids);
                println!(
                    "get, {name}: median {med:.0} ns, mean {mean:.0} ns ({found}/{} found)",
                    ids.len()
                );
            }
            let store = std::sync::Arc::new(store);
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let (store, random) = (&store, &random);
                    s.spawn(move || time_gets(store, random));
                }
            });
            println!(
                "get, 2 threads at once, uniform random: {:.1} M lookups/s in all",
                2.0 * random.len() as f64 / t.elapsed().as_secs_f64() / 1e6
            );

            let out = path.with_extension("rewrite.snap");
            let t = Instant::now();
            let written = store.write_snapshot(&out)?;
            println!("write_snapshot: {written} records in {}", secs(t.elapsed()));
            std::fs::remove_file(&out)?;

            let changes: Vec<Change> = (0..500_000u64)
                .map(|k| {
                    let version = store.version() + 1 + k;
                    let op = match k % 10 {
                        // Disjoint id ranges, so no status change meets a removed id.
                        0 => ChangeOp::SetStatus {
                            id: id_of(n / 2 + k),
                            status: ConsentStatus::Revoked,
                        },
                        1 => ChangeOp::Remove { id: id_of(k) },
                        2..=5 => ChangeOp::Upsert(record(n + k)),
                        _ => ChangeOp::Upsert(record(mix(k) % n)),
                    };
                    Change { version, op }
                })
                .collect();
            let count = changes.len();
            let t = Instant::now();
            let done = store.apply_batch(changes)?;
            let el = t.elapsed();
            println!(
                "apply_batch: {count} changes ({} applied) in {} = {:.0} changes/s; store now {} records, VmRSS {}",
                done.applied,
                secs(el),
                count as f64 / el.as_secs_f64(),
                store.len(),
                proc_status("VmRSS:")
            );
            let t = Instant::now();
            let expired = store.expire_due(1_760_000_000);
            println!("expire_due: {expired} flipped in {}", secs(t.elapsed()));
            println!(
                "AnonHugePages in use: {}",
                proc_field("/proc/self/smaps_rollup", "AnonHugePages:")
            );
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
