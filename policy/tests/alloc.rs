//! Checks that the hot path allocates nothing: `match_route`, and `decide` with a cached
//! token. This file alone contains `unsafe`, because a counting `GlobalAlloc` cannot be
//! written without it; the library itself is `#![forbid(unsafe_code)]`. Counting is
//! per thread, so tests running in parallel do not disturb each other.

mod common;

use common::*;
use policy::token::{Charge, Charged};
use policy::{decide, match_route, upstream_path, Facts};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers every operation to `System`; only counts calls in a const-initialised
// thread-local `Cell`, which itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCS.with(Cell::get);
    let r = f();
    (r, ALLOCS.with(Cell::get) - before)
}

#[test]
fn hot_path_does_not_allocate() {
    const P: &str = PROVIDER;
    let dir = one_user_one_provider();
    let keys = Keys::new();
    let tokens = keys.verifier();
    let consent = StaticConsent::new();
    let auth = format!("Bearer {}", mint(&keys.ec, &claims()));
    let path = format!("/v1/providers/{P}/accounts/A1/transactions");
    let query = "from=2024-01-01&to=2024-01-31T23:59:59%2B05:00&limit=50&cursor=abc";
    let get = http::Method::GET;

    // Warm the token cache (the first verification allocates, by design).
    let route = match_route(&get, &path, Some(query)).unwrap();
    let facts = Facts {
        route: &route,
        cert_thumbprint: Some(&TP),
        authorization: Some(auth.as_bytes()),
        now_unix: NOW,
        consent_state_fresh: true,
    };
    decide(&dir, &tokens, |_| Some(&consent), &facts).unwrap();

    let (route, n) = allocations(|| match_route(&get, &path, Some(query)));
    let route = route.unwrap();
    assert_eq!(n, 0, "match_route allocated");
    let (res, n) = allocations(|| match_route(&get, "/v1/../x", None));
    assert!(res.is_err());
    assert_eq!(n, 0, "match_route allocated on refusal");

    let facts = Facts {
        route: &route,
        ..facts
    };
    let (grant, n) = allocations(|| decide(&dir, &tokens, |_| Some(&consent), &facts));
    let grant = grant.unwrap();
    assert_eq!(n, 0, "decide with a cached token allocated");
    assert!(tokens.cache_hits() >= 1);
    drop(grant);
    // The same through the verifier the gateway uses, charged to the connection: a cache
    // hit never reaches the budget of failed verifications.
    let charged = Charged {
        verifier: &tokens,
        charge: Charge {
            connection: Some(([192, 0, 2, 1], 4000).into()),
            certificate: &TP,
            at: std::time::Instant::now(),
        },
    };
    let (grant, n) = allocations(|| decide(&dir, &charged, |_| Some(&consent), &facts));
    assert!(grant.is_ok());
    assert_eq!(
        n, 0,
        "decide with a charged verifier and a cached token allocated"
    );

    let mut out = String::with_capacity(64);
    let (_, n) = allocations(|| upstream_path(&route, &mut out));
    assert_eq!(n, 0, "upstream_path allocated");
    assert_eq!(out, "/v1/accounts/A1/transactions");

    // A sanity check that the counter works at all.
    let (_, n) = allocations(|| std::hint::black_box(vec![1u8; 8]));
    assert!(n >= 1);
}
