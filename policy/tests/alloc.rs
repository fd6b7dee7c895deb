//! Checks that the hot path allocates nothing: `match_route`, and `decide` with a cached
//! token. This file alone contains `unsafe`, because a counting `GlobalAlloc` cannot be
//! written without it; the library itself is `#![forbid(unsafe_code)]`. Counting is
//! per thread, so tests running in parallel do not disturb each other.

mod common;

use common::*;
use policy::{
    decide, match_route, upstream_path, Bin, ConsentStatus, ConsentView, DirectoryBuilder, Facts,
    Participant, ParticipantStatus, Permission, Permissions, ProviderEntry, Roles,
};
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

struct StaticConsent {
    providers: [Bin; 1],
}

impl ConsentView for StaticConsent {
    fn id(&self) -> &str {
        "c-1"
    }
    fn api_user(&self) -> Bin {
        bin(USER)
    }
    fn customer(&self) -> &str {
        "900101300123"
    }
    fn providers(&self) -> &[Bin] {
        &self.providers
    }
    fn covers_provider(&self, provider: Bin) -> bool {
        self.providers.contains(&provider)
    }
    fn permissions(&self) -> Permissions {
        Permissions::EMPTY
            .with(Permission::Accounts)
            .with(Permission::Balances)
            .with(Permission::Transactions)
    }
    fn accounts_restricted(&self) -> bool {
        true
    }
    fn covers_account(&self, account: &str) -> bool {
        account == "A1"
    }
    fn expires_at(&self) -> Option<i64> {
        None
    }
    fn status(&self) -> ConsentStatus {
        ConsentStatus::Authorised
    }
}

#[test]
fn hot_path_does_not_allocate() {
    const P: &str = "200000000001";
    let mut d = DirectoryBuilder::new();
    d.add_participant(
        Participant {
            bin: bin(USER),
            name: "User".into(),
            roles: Roles::USER,
            status: ParticipantStatus::Active,
        },
        [TP],
    )
    .unwrap();
    d.add_participant(
        Participant {
            bin: bin(P),
            name: "Bank".into(),
            roles: Roles::PROVIDER,
            status: ParticipantStatus::Active,
        },
        [],
    )
    .unwrap();
    d.add_provider(ProviderEntry {
        bin: bin(P),
        published: true,
        index: 0,
    })
    .unwrap();
    let dir = d.build().unwrap();
    let keys = Keys::new();
    let tokens = keys.verifier();
    let consent = StaticConsent {
        providers: [bin(P)],
    };
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

    let mut out = String::with_capacity(64);
    let (_, n) = allocations(|| upstream_path(&route, &mut out));
    assert_eq!(n, 0, "upstream_path allocated");
    assert_eq!(out, "/v1/accounts/A1/transactions");

    // A sanity check that the counter works at all.
    let (_, n) = allocations(|| std::hint::black_box(vec![1u8; 8]));
    assert!(n >= 1);
}
