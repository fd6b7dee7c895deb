//! Heap allocations per request on the policy's hot path, counted by a counting global
//! allocator and printed as a table (recorded, not asserted; the target is zero for the
//! `policy` steps). Each step is warmed once, then called 10,000 times; the table shows
//! allocations (`alloc` + `realloc` calls) and bytes requested per call.
//!
//! The request is the happy path of `GET /v1/providers/{bank}/accounts/{account}/
//! transactions?from&to&limit&cursor` with a cached ES256 token and the consent present, the
//! same fixture as the `decision` bench. Below the hot-path rows, a few rows that are not
//! per-request work for reference: a token's first verification, and the rate limiter's
//! first sight of a new consent.
//!
//! This file alone holds `unsafe`: a `GlobalAlloc` cannot be written without it. It only
//! forwards to `System` and counts in thread-local cells.
//!
//! `cargo bench -p benches --bench alloc`

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use common::{
    bench_consent, directory, issuer, now_unix, record, token, verifier, PATH, QUERY, THUMBPRINT,
};
use consent_cache::ConsentStore;
use policy::{
    decide, match_route, upstream_path, Facts, LimitSettings, Limiter, QuotaSettings, RouteId,
};
use sandbox::tokens::DevAlg;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: allocations during thread-local teardown are simply not counted.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|c| c.set(c.get() + bytes as u64));
}

// SAFETY: every operation is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting touches only const-initialised thread-local `Cell`s,
// which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as this function's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as this function's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as this function's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as this function's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CALLS: u64 = 10_000;

/// Allocations and bytes per call of `f`, over `calls` calls after one warm-up call.
fn per_call<R>(calls: u64, mut f: impl FnMut(u64) -> R) -> (f64, f64) {
    black_box(f(0));
    let (a0, b0) = (ALLOCS.with(Cell::get), BYTES.with(Cell::get));
    for i in 1..=calls {
        black_box(f(i));
    }
    let (a1, b1) = (ALLOCS.with(Cell::get), BYTES.with(Cell::get));
    (
        (a1 - a0) as f64 / calls as f64,
        (b1 - b0) as f64 / calls as f64,
    )
}

fn row(name: &str, (allocs, bytes): (f64, f64), target_zero: bool) {
    let verdict = match (target_zero, allocs == 0.0) {
        (false, _) => "",
        (true, true) => "met",
        (true, false) => "MISSED",
    };
    println!("| {name} | {allocs:.2} | {bytes:.1} | {verdict} |");
}

/// Quotas too large to refuse, so every check runs all three limits.
fn allowing_limiter() -> Limiter {
    let huge = QuotaSettings::new(1_000_000_000, 1_000_000_000).expect("quota");
    Limiter::new(&LimitSettings {
        per_user: huge,
        per_user_provider: huge,
        per_consent_route: huge,
        ..LimitSettings::default()
    })
    .expect("limiter")
}

fn main() {
    let now = now_unix();
    let dir = directory();
    let iss = issuer(DevAlg::Es256);
    let tokens = verifier(&[&iss], policy::token::DEFAULT_CACHE_CAPACITY);
    let authorization = format!("Bearer {}", token(&iss, now));
    let consents = ConsentStore::from_records((0..1000).map(record).chain([bench_consent(now)]))
        .expect("consent store");
    let get = http::Method::GET;
    let limiter = allowing_limiter();
    let refusing = Limiter::new(&LimitSettings::default()).expect("limiter");

    let route = match_route(&get, PATH, Some(QUERY)).expect("route");
    let facts = Facts {
        route: &route,
        cert_thumbprint: Some(&THUMBPRINT),
        authorization: Some(authorization.as_bytes()),
        now_unix: now,
        consent_state_fresh: true,
    };
    let grant = decide(&dir, &tokens, |id| consents.get(id), &facts).expect("granted");
    let (user, provider) = (grant.api_user.bin, grant.provider.bin);
    let consent_id = grant.consent.as_ref().expect("consent").id().to_owned();
    drop(grant);
    while refusing
        .check_consent_route(user, provider, &consent_id, route.id)
        .is_ok()
    {}
    let mut out = String::with_capacity(256);

    println!("allocations per call ({CALLS} calls after one warm-up call each)\n");
    println!("| step | allocations / call | bytes / call | target 0 |");
    println!("|---|---:|---:|---|");
    row(
        "match_route",
        per_call(CALLS, |_| match_route(&get, black_box(PATH), Some(QUERY))),
        true,
    );
    row(
        "decide (cached token, consent in store)",
        per_call(CALLS, |_| {
            decide(&dir, &tokens, |id| consents.get(id), black_box(&facts)).is_ok()
        }),
        true,
    );
    row(
        "Limiter::check_consent_route (allowed)",
        per_call(CALLS, |_| {
            limiter.check_consent_route(user, provider, black_box(&consent_id), route.id)
        }),
        true,
    );
    row(
        "Limiter::check_consent_route (refused)",
        per_call(CALLS, |_| {
            refusing.check_consent_route(user, provider, black_box(&consent_id), route.id)
        }),
        true,
    );
    row(
        "upstream_path (reused String)",
        per_call(CALLS, |_| {
            out.clear();
            upstream_path(black_box(&route), &mut out);
        }),
        true,
    );
    row(
        "**whole request**: match_route + decide + limits + upstream_path",
        per_call(CALLS, |_| {
            let route = match_route(&get, black_box(PATH), Some(QUERY)).expect("route");
            let facts = Facts {
                route: &route,
                ..facts
            };
            let grant = decide(&dir, &tokens, |id| consents.get(id), &facts).expect("granted");
            let consent = grant.consent.as_ref().expect("consent");
            let rate = limiter
                .check_consent_route(
                    grant.api_user.bin,
                    grant.provider.bin,
                    consent.id(),
                    route.id,
                )
                .expect("allowed");
            out.clear();
            upstream_path(&route, &mut out);
            out.push('?');
            out.push_str(QUERY);
            rate
        }),
        true,
    );
    row(
        "ConsentStore::get (consent-cache)",
        per_call(CALLS, |_| consents.get(black_box(&consent_id)).is_some()),
        true,
    );

    // Not per-request work, for reference.
    let cold = verifier(&[&iss], 0);
    let t = token(&iss, now);
    row(
        "ref: TokenVerifier::verify, cache off (ES256 verification)",
        per_call(1000, |_| cold.verify(black_box(&t), now).is_ok()),
        false,
    );
    let pool: Vec<String> = (0..1001).map(|_| token(&iss, now)).collect();
    let fresh = verifier(&[&iss], policy::token::DEFAULT_CACHE_CAPACITY);
    row(
        "ref: TokenVerifier::verify, new token (verify + cache insert)",
        per_call(1000, |i| fresh.verify(&pool[i as usize], now).is_ok()),
        false,
    );
    let new_ids: Vec<String> = (0..=CALLS).map(|i| format!("new-consent-{i}")).collect();
    let first_sight = allowing_limiter();
    row(
        "ref: Limiter::check_consent_route, a new consent each call",
        per_call(CALLS, |i| {
            first_sight
                .check_consent_route(user, provider, &new_ids[i as usize], RouteId::Accounts)
                .is_ok()
        }),
        false,
    );
    let (n, _) = per_call(1, |_| black_box(vec![0u8; 8]));
    assert!(n >= 1.0, "the counting allocator counts nothing");
}
