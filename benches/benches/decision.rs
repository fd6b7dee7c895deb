//! The policy's per-request work, piece by piece and whole, on the happy path of a
//! consent route (`GET /v1/providers/{bank}/accounts/{account}/transactions?from&to&limit&cursor`):
//!
//! * `decision/match_route`: strict path parsing, route table, query validation;
//! * `decision/decide`: contract §6 rows 2–15 with a cached ES256 token and the consent
//!   present in a `ConsentStore` of 1,001 records (the lookup is included);
//! * `decision/upstream_path`: the provider path, into a reused `String`;
//! * `decision/limits/allowed`: `Limiter::check_consent_route` (three GCRA limits: user,
//!   user × provider, consent × route) with quotas too large to refuse, i.e. the cost of a
//!   request that passes;
//! * `decision/limits/refused`: the same with the default quotas, long exhausted: after
//!   the warm-up nearly every call is refused by the first limit (per user), the others by
//!   a later one (a client hammering past its quota);
//! * `decision/request`: the four together, as the gateway's decision adapter (`gateway/src/proxy/evaluate.rs`) calls them
//!   (route, decide, limits, upstream path plus query).
//!
//! `cargo bench -p benches --bench decision`

mod common;

use std::hint::black_box;

use common::{
    bench_consent, directory, issuer, now_unix, record, token, verifier, PATH, QUERY, THUMBPRINT,
};
use consent_cache::ConsentStore;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use policy::{decide, match_route, upstream_path, Facts, LimitSettings, Limiter, QuotaSettings};
use sandbox::tokens::DevAlg;

fn bench_decision(c: &mut Criterion) {
    let now = now_unix();
    let dir = directory();
    let iss = issuer(DevAlg::Es256);
    let tokens = verifier(&[&iss], policy::token::DEFAULT_CACHE_CAPACITY);
    let authorization = format!("Bearer {}", token(&iss, now));
    let consents = ConsentStore::from_records((0..1000).map(record).chain([bench_consent(now)]))
        .expect("consent store");
    let get = http::Method::GET;

    let huge = QuotaSettings::new(1_000_000_000, 1_000_000_000).expect("quota");
    let allowing = Limiter::new(&LimitSettings {
        per_user: huge,
        per_user_provider: huge,
        per_consent_route: huge,
        ..LimitSettings::default()
    })
    .expect("limiter");
    let refusing = Limiter::new(&LimitSettings::default()).expect("limiter");

    let route = match_route(&get, PATH, Some(QUERY)).expect("route");
    let facts = Facts {
        route: &route,
        cert_thumbprint: Some(&THUMBPRINT),
        authorization: Some(authorization.as_bytes()),
        now_unix: now,
        consent_state_fresh: true,
    };
    // Warms the token cache (the first verification is `token/cold`'s business).
    let grant = decide(&dir, &tokens, |id| consents.get(id), &facts).expect("granted");
    let (user, provider) = (grant.api_user.bin, grant.provider.bin);
    let consent_id = grant.consent.as_ref().expect("consent").id().to_owned();
    drop(grant);
    allowing
        .check_consent_route(user, provider, &consent_id, route.id)
        .expect("allowed");
    while refusing
        .check_consent_route(user, provider, &consent_id, route.id)
        .is_ok()
    {}

    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(1));
    g.bench_function("match_route", |b| {
        b.iter(|| match_route(&get, black_box(PATH), Some(black_box(QUERY))))
    });
    g.bench_function("decide", |b| {
        b.iter(|| decide(&dir, &tokens, |id| consents.get(id), black_box(&facts)))
    });
    let mut out = String::with_capacity(256);
    g.bench_function("upstream_path", |b| {
        b.iter(|| {
            out.clear();
            upstream_path(black_box(&route), &mut out);
            out.len()
        })
    });
    g.bench_function("limits/allowed", |b| {
        b.iter(|| allowing.check_consent_route(user, provider, black_box(&consent_id), route.id))
    });
    g.bench_function("limits/refused", |b| {
        b.iter(|| refusing.check_consent_route(user, provider, black_box(&consent_id), route.id))
    });
    g.bench_function("request", |b| {
        b.iter(|| {
            let route =
                match_route(&get, black_box(PATH), Some(black_box(QUERY))).expect("route matches");
            let facts = Facts {
                route: &route,
                cert_thumbprint: Some(&THUMBPRINT),
                authorization: Some(authorization.as_bytes()),
                now_unix: now,
                consent_state_fresh: true,
            };
            let grant = decide(&dir, &tokens, |id| consents.get(id), &facts).expect("granted");
            let consent = grant.consent.as_ref().expect("consent");
            let rate = allowing
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
            (rate, out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decision);
criterion_main!(benches);
