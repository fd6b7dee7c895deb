//! Access-token validation (`policy::token::TokenVerifier::verify`) with tokens minted by
//! `sandbox::tokens::DevIssuer`:
//!
//! * `token/cold/{ES256,PS256,EdDSA}`: the cache disabled, so every call parses the header,
//!   checks the signature and parses the claims: the verification floor per algorithm.
//! * `token/miss/ES256`: the cache enabled (1,024 entries) and 16,384 distinct tokens used
//!   in turn, so nearly every call misses, verifies and inserts (the hit ratio is printed
//!   after the run): what a new token costs in the gateway.
//! * `token/cached/{ES256,PS256,EdDSA}`: the same token again, a cache hit (hash of the
//!   whole token, `Arc` clone, time checks).
//!
//! `cargo bench -p benches --bench token`

mod common;

use std::hint::black_box;

use common::{issuer, now_unix, token, verifier};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sandbox::tokens::DevAlg;

const ALGS: [DevAlg; 3] = [DevAlg::Es256, DevAlg::Ps256, DevAlg::EdDsa];
const MISS_CACHE: usize = 1024;
const MISS_POOL: usize = 16 * MISS_CACHE;

fn bench_tokens(c: &mut Criterion) {
    let now = now_unix();
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    for alg in ALGS {
        let iss = issuer(alg);
        let t = token(&iss, now);

        let cold = verifier(&[&iss], 0);
        cold.verify(&t, now).expect("the token verifies");
        g.bench_function(format!("cold/{alg}"), |b| {
            b.iter(|| cold.verify(black_box(&t), now))
        });

        let cached = verifier(&[&iss], policy::token::DEFAULT_CACHE_CAPACITY);
        cached.verify(&t, now).expect("the token verifies");
        g.bench_function(format!("cached/{alg}"), |b| {
            b.iter(|| cached.verify(black_box(&t), now))
        });
        assert_eq!(cached.cache_misses(), 1, "the cached bench missed");
    }

    let iss = issuer(DevAlg::Es256);
    // The Authorization header's parse, before any verification (every request pays it).
    let header = format!("Bearer {}", token(&iss, now));
    g.bench_function("bearer/ES256", |b| {
        b.iter(|| policy::token::bearer(black_box(header.as_bytes())).map(str::len))
    });
    let pool: Vec<String> = (0..MISS_POOL).map(|_| token(&iss, now)).collect();
    let miss = verifier(&[&iss], MISS_CACHE);
    let mut i = 0usize;
    g.bench_function("miss/ES256", |b| {
        b.iter(|| {
            let t = &pool[i % MISS_POOL];
            i += 1;
            miss.verify(black_box(t), now)
        })
    });
    g.finish();
    let (hits, misses) = (miss.cache_hits(), miss.cache_misses());
    println!(
        "token/miss/ES256: {misses} misses, {hits} hits ({:.2}% hits) over {} calls",
        100.0 * hits as f64 / (hits + misses).max(1) as f64,
        hits + misses
    );
}

criterion_group!(benches, bench_tokens);
criterion_main!(benches);
