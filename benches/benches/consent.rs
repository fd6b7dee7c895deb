//! `ConsentStore::get` at 1,000, 1,000,000 and (with `BENCH_BIG=1`) 10,000,000 records.
//!
//! For each size the store is built the way the hub builds it: synthetic records
//! (`common::record`, production-shaped) are written once to a binary `.snap` in a
//! temporary directory, then loaded with `ConsentStore::load`. Outside criterion the
//! binary prints, per size: the snapshot's write time and size, and the load time and
//! memory measured in a child process that only loads (so its peak RSS, `VmHWM`, is the
//! load's own, not left over from a previous size). The file was just written, so the
//! load reads from the page cache.
//!
//! Benchmarks per size (`consent/get/N/…`), each lookup returning a `Consent` handle that
//! is dropped inside the timed loop:
//! * `random`: ids drawn uniformly over the whole set (most miss every cache level at 1M+);
//! * `hot1k`: 1,024 ids used in turn (active sessions; they stay in cache);
//! * `absent`: ids not in the store.
//!
//! The 10M size needs about 1.2 GiB of RAM for the store, 0.8 GiB of disk for the file
//! and a minute or so to write and load; it runs only with `BENCH_BIG=1`:
//!
//! ```text
//! BENCH_BIG=1 cargo bench -p benches --bench consent
//! ```

mod common;

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{id_of, mix, proc_status, record, ID_LEN};
use consent_cache::ConsentStore;
use criterion::{Criterion, Throughput};

/// Set in the child process: load this snapshot, print what it cost, exit.
const LOAD_ONLY_ENV: &str = "CONSENT_BENCH_LOAD_ONLY";

/// Fixed-width ids in one string (no per-id allocation; read in order, so the ids' own
/// memory traffic is sequential and prefetched), used round-robin. The count is a power of
/// two, so picking the next id is a mask, not a division.
struct Ids {
    text: String,
    mask: usize,
}

impl Ids {
    fn new(indices: impl Iterator<Item = u64>) -> Ids {
        let mut text = String::new();
        let mut count = 0usize;
        for i in indices {
            let id = id_of(i);
            assert_eq!(id.len(), ID_LEN);
            text.push_str(&id);
            count += 1;
        }
        assert!(count.is_power_of_two(), "{count} ids");
        Ids {
            text,
            mask: count - 1,
        }
    }

    #[inline]
    fn get(&self, k: usize) -> &str {
        let at = (k & self.mask) * ID_LEN;
        &self.text[at..at + ID_LEN]
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn load_only(path: &Path) {
    let rss_before = proc_status("VmRSS:");
    let t = Instant::now();
    let store = ConsentStore::load(path).expect("load snapshot");
    let elapsed = t.elapsed();
    println!(
        "  load (child process): {} records in {:.3} s; VmRSS before {rss_before}, after {}; VmHWM (peak) {}",
        store.len(),
        elapsed.as_secs_f64(),
        proc_status("VmRSS:"),
        proc_status("VmHWM:"),
    );
    black_box(store);
}

fn bench_size(c: &mut Criterion, dir: &Path, n: u64) {
    let path = dir.join(format!("consents-{n}.snap"));
    let t = Instant::now();
    let written = consent_cache::write_snapshot(&path, n, (0..n).map(record)).expect("snapshot");
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    println!(
        "consent/{n}: wrote {written} records, {:.1} MiB, in {:.2} s",
        mib(size),
        t.elapsed().as_secs_f64()
    );

    // Only in benchmark mode: `cargo test --benches` runs each benchmark once and need
    // not pay for a second load.
    if std::env::args().any(|a| a == "--bench") {
        let exe = std::env::current_exe().expect("current exe");
        let status = Command::new(exe)
            .env(LOAD_ONLY_ENV, &path)
            .status()
            .expect("spawn the load-only child");
        assert!(status.success(), "load-only child failed: {status}");
    }

    let store = ConsentStore::load(&path).expect("load snapshot");
    assert_eq!(store.len() as u64, n);
    std::fs::remove_file(&path).expect("remove snapshot");

    let samples = (n * 16).clamp(1 << 12, 1 << 20).next_power_of_two();
    let random = Ids::new((0..samples).map(|k| mix(k ^ 0x5555) % n));
    let hot = Ids::new((0..1024u64).map(|k| mix(k) % n));
    let absent = Ids::new((0..samples.min(1 << 16)).map(|k| n + k));
    assert!(store.get(random.get(0)).is_some());
    assert!(store.get(hot.get(0)).is_some());
    assert!(store.get(absent.get(0)).is_none());

    let mut g = c.benchmark_group(format!("consent/get/{n}"));
    g.throughput(Throughput::Elements(1));
    for (name, ids) in [("random", &random), ("hot1k", &hot), ("absent", &absent)] {
        let mut k = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                let id = ids.get(k);
                k = k.wrapping_add(1);
                store.get(black_box(id))
            })
        });
    }
    g.finish();
}

fn main() {
    if let Some(path) = std::env::var_os(LOAD_ONLY_ENV) {
        load_only(Path::new(&path));
        return;
    }
    let big = std::env::var("BENCH_BIG").is_ok_and(|v| v == "1");
    let mut sizes = vec![1_000u64, 1_000_000];
    if big {
        sizes.push(10_000_000);
    } else {
        println!("consent: 10,000,000 records skipped (set BENCH_BIG=1 to run it)");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = Criterion::default().configure_from_args();
    for n in sizes {
        bench_size(&mut c, dir.path(), n);
    }
    c.final_summary();
}
