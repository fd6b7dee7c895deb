//! Issue 12, "How it is shown", over real processes: gateways that share their limits on
//! one Redis (`[limits.store]`), started by `devhub::cluster` (PostgreSQL, two trust
//! replicas, Redis, N gateways, the banks). Shown:
//!
//! - **Exact across gateways.** Three gateways, a per-user limit of 50/s (burst 50),
//!   driven at three times that (150 requests a second, round-robin, open loop) for
//!   10 s: the requests admitted are within 2% of `burst + rate × T` (T between the first
//!   and the last request written), every other answer is `429 rate_limited`. The same
//!   with every class `local` (the negative control): each gateway then admits what its
//!   own limit allows it — here everything, about three times as many. With the class
//!   `leased`: never more than `burst + rate × T`, at least 90% of it.
//! - **Monthly quotas across two gateways**: a consent's `balances` quota of 7 reached
//!   with calls alternating between the gateways, refused at exactly the 8th with
//!   `RateLimit-Policy` naming `"monthly"` and `Retry-After` to the next month in the
//!   configured zone; open data never counted; the count survives a Redis restart.
//! - **Redis frozen (SIGSTOP), then killed, under light load**: each failure policy does
//!   what it says (`deny` → `503 limits_unavailable` with `Retry-After`; `allow` → `200`
//!   beyond the limit; `local` → the per-gateway share, then `429`), and after SIGCONT, or
//!   a restart on the same port, shared counting is back with nothing done to the
//!   gateways.
//!
//! The tests take one lock: one cluster at a time (the machine may have two cores, and
//! the load test's arithmetic assumes the gateways keep up). No latency is asserted.

mod cluster_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cluster_support::*;
use e2e::*;
use policy::limits::{
    CappedRoute, LimitOverride, LimitSettings, Mode, OnFailure, QuotaSettings, StoreSettings,
};

/// One cluster at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A quota.
fn quota(per_second: u32, burst: u32) -> QuotaSettings {
    QuotaSettings::new(per_second, burst).expect("a non-zero quota")
}

/// No effective limit.
fn high() -> QuotaSettings {
    quota(1_000_000, 2_000_000)
}

/// Limits with no effective quota, every class in `mode` with failure policy `policy`,
/// and a store timeout far above a loopback round trip (a late answer in these tests
/// would be a failure of the machine, not of the limits).
fn limits(mode: Mode, policy: OnFailure) -> LimitSettings {
    let mut l = LimitSettings {
        per_user: high(),
        per_user_provider: high(),
        per_consent_route: high(),
        per_ip_open_data: high(),
        ..LimitSettings::default()
    };
    for class in l.classes.all_mut() {
        class.mode = Some(mode);
        class.on_failure = policy;
    }
    l.store = Some(store(250, 300));
    l
}

/// Store settings with these bounds (the cluster fills in the URL and the gateways).
fn store(timeout_ms: u64, breaker_open_ms: u64) -> StoreSettings {
    StoreSettings {
        timeout_ms,
        breaker_open_ms,
        ..StoreSettings::new("redis://set-by-the-cluster")
    }
}

// ---------------------------------------------------------------------------------------
// a. Three gateways at three times a per-user limit.

/// The per-user limit of the load test.
const RATE: u32 = 50;
const BURST: u32 = 50;
/// Three gateways, offered three times the rate for 10 s.
const GATEWAYS: usize = 3;
const OFFERED: f64 = 150.0;
const REQUESTS: usize = 1_500;

/// What a load saw: admitted per gateway, refused, anything else.
struct Tally {
    admitted: Vec<usize>,
    refused: usize,
    other: Vec<String>,
    span: Duration,
    /// Per gateway, the time between its first and last request.
    spans: Vec<Duration>,
    sent: Vec<usize>,
}

/// Counts the answers of a load over `gateways` gateways.
fn tally(sent: &[Sent], gateways: usize) -> Tally {
    let mut t = Tally {
        admitted: vec![0; gateways],
        refused: 0,
        other: Vec::new(),
        span: span(sent),
        spans: Vec::new(),
        sent: vec![0; gateways],
    };
    for s in sent {
        t.sent[s.gateway] += 1;
        match &s.answer {
            Ok((200, _)) => t.admitted[s.gateway] += 1,
            Ok((429, code)) if code == "rate_limited" => t.refused += 1,
            other => t.other.push(format!("gateway {}: {other:?}", s.gateway)),
        }
    }
    for g in 0..gateways {
        let mine: Vec<Sent> = sent.iter().filter(|s| s.gateway == g).cloned().collect();
        t.spans.push(span(&mine));
    }
    t
}

/// Starts three gateways with the per-user limit in `mode`, drives them at three times
/// the rate for 10 s (open loop, round-robin, keep-alive connections), and tallies.
fn drive(mode: Mode) -> Tally {
    let _one = one_at_a_time();
    let r = start(0, |o| {
        o.gateways = GATEWAYS;
        let mut l = limits(mode, OnFailure::Deny);
        l.per_user = quota(RATE, BURST);
        if mode == Mode::Leased {
            // Monthly quotas are never leased.
            l.classes.monthly.mode = Some(Mode::Shared);
        }
        o.limits = Some(l);
    });
    let rt = runtime();
    let (path, token) = (r.accounts_path(SERVED), r.token(SERVED));
    let pools: Vec<Arc<Pool>> = (0..GATEWAYS)
        .map(|i| Pool::new(r.gateway_for(i, SERVED)))
        .collect();
    let sent = rt.block_on(async {
        for p in &pools {
            p.warm(8).await;
        }
        open_loop(&pools, || Req::get(&path).bearer(&token), OFFERED, REQUESTS).await
    });
    let t = tally(&sent, GATEWAYS);
    assert!(
        t.other.is_empty(),
        "{mode:?}: answers other than 200 and 429 rate_limited ({}):\n{}\n{}",
        t.other.len(),
        t.other
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        r.logs()
    );
    eprintln!(
        "{mode:?}: {} requests over {:.3} s: admitted {:?} (total {}), refused {}",
        sent.len(),
        t.span.as_secs_f64(),
        t.admitted,
        t.admitted.iter().sum::<usize>(),
        t.refused
    );
    t
}

/// `burst + rate × T`.
fn allowance(span: Duration) -> f64 {
    f64::from(BURST) + f64::from(RATE) * span.as_secs_f64()
}

#[test]
fn three_gateways_at_three_times_a_shared_limit_admit_burst_plus_rate_times_t() {
    let t = drive(Mode::Shared);
    let expected = allowance(t.span);
    let admitted = t.admitted.iter().sum::<usize>() as f64;
    assert!(
        (admitted - expected).abs() <= 0.02 * expected,
        "shared: admitted {admitted} of {REQUESTS}, expected {expected:.1} (burst {BURST} + \
         {RATE}/s × {:.3} s) ± 2%; per gateway {:?}",
        t.span.as_secs_f64(),
        t.admitted
    );
    // Per-process limits would have admitted every request here (see the control).
    assert!(admitted < 0.5 * REQUESTS as f64);
}

/// Leased: never over `burst + rate × T`, and close to it (the lease's lag lowers the
/// store's burst by ceil(50/s × 50 ms) = 3 cells, and cells left when a lease ends are
/// lost: under-admission is allowed, over-admission is not).
#[test]
fn three_gateways_at_three_times_a_leased_limit_never_admit_more_than_burst_plus_rate_times_t() {
    let t = drive(Mode::Leased);
    let expected = allowance(t.span);
    let admitted = t.admitted.iter().sum::<usize>() as f64;
    assert!(
        admitted <= expected + 1.0 && admitted >= 0.9 * expected,
        "leased: admitted {admitted} of {REQUESTS}, expected at most {expected:.1} (burst \
         {BURST} + {RATE}/s × {:.3} s) and at least 90% of it; per gateway {:?}",
        t.span.as_secs_f64(),
        t.admitted
    );
}

/// The negative control. Each gateway is offered 150/3 = 50 requests a second, exactly
/// its own limit's rate, with a burst of 50 on top: a per-process limit admits every
/// request it is offered (`min(offered, burst + rate × T_g)` = offered). So local limits
/// admit all 1,500 requests — 2.7 times what the shared limit admits over the same
/// 10 s, and 3 × 500 as each gateway's own allowance says.
#[test]
fn the_same_with_every_class_local_admits_each_gateways_own_allowance() {
    let t = drive(Mode::Local);
    let mut total_expected = 0.0;
    for g in 0..GATEWAYS {
        let own = (t.sent[g] as f64).min(allowance(t.spans[g]));
        total_expected += own;
        let got = t.admitted[g] as f64;
        assert!(
            (got - own).abs() <= 0.02 * own,
            "local: gateway {g} admitted {got}, its own allowance min({} sent, {:.1}) = {own:.1}",
            t.sent[g],
            allowance(t.spans[g])
        );
    }
    let admitted = t.admitted.iter().sum::<usize>() as f64;
    let shared = allowance(t.span);
    assert!(
        admitted > 2.5 * shared,
        "local: admitted {admitted}, not > 2.5 × the shared expectation {shared:.1}"
    );
    eprintln!(
        "local: admitted {admitted} = {:.2} × the shared expectation; per-gateway expectation \
         {total_expected:.1}",
        admitted / shared
    );
}

// ---------------------------------------------------------------------------------------
// b. Monthly quotas across two gateways.

/// The monthly quota of `balances` in this test, and its zone.
const MONTHLY: u32 = 7;
const ZONE: &str = "Asia/Almaty";

/// The current month in `ZONE`: its length and the seconds from now to its end (local
/// midnights of the 1st).
fn this_month() -> (i64, i64) {
    use jiff::ToSpan as _;
    let zone = jiff::tz::TimeZone::get(ZONE).expect("the zone");
    let now = jiff::Timestamp::now();
    let first = now.to_zoned_datetime(zone.clone()).date().first_of_month();
    let next = first.checked_add(1.month()).expect("the next month");
    let midnight = |d: jiff::civil::Date| {
        d.to_zoned_datetime(zone.clone())
            .expect("a local midnight")
            .timestamp()
            .as_second()
    };
    (
        midnight(next) - midnight(first),
        midnight(next) - now.as_second(),
    )
}

/// One `GET` through `client`: the whole response (transport errors fail the test).
async fn get(client: &Client, path: &str, token: Option<&str>) -> Response {
    client.get(path, token).await
}

/// Requires a monthly refusal: `429 rate_limited`, `RateLimit-Policy` naming `"monthly"`
/// with `q=MONTHLY` and `w` the month's length, `Retry-After` the seconds to the next
/// month in `ZONE` (± 5 s).
fn assert_monthly_refusal(r: &Response, what: &str) {
    assert_eq!(
        status_code(r),
        (429, "rate_limited".to_owned()),
        "{what}: {}",
        r.describe()
    );
    let (length, to_end) = this_month();
    let policy = r.header("ratelimit-policy").unwrap_or_default();
    assert_eq!(
        policy,
        format!("\"monthly\";q={MONTHLY};w={length}"),
        "{what}: RateLimit-Policy"
    );
    let retry: i64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: Retry-After {:?}", r.header("retry-after")));
    assert!(
        (retry - to_end).abs() <= 5,
        "{what}: Retry-After {retry}, the next month in {ZONE} is {to_end} s away"
    );
}

#[test]
fn a_monthly_quota_is_counted_across_gateways_never_by_open_data_and_survives_a_redis_restart() {
    let _one = one_at_a_time();
    let mut r = start(0, |o| {
        let mut l = limits(Mode::Shared, OnFailure::Deny);
        l.monthly.time_zone = ZONE.into();
        l.monthly.routes.insert(CappedRoute::Balances, MONTHLY);
        o.limits = Some(l);
    });
    let rt = runtime();
    let gw = [r.gateway_for(0, SERVED), r.gateway_for(1, SERVED)];
    let token = r.token(SERVED);
    let balances = balances_path(BANK_1, &r.account(SERVED));
    let open_data = open_data_path(BANK_1, "branches");
    rt.block_on(async {
        // 6 of the 7, alternating gateways; each answer advertises what is left of the
        // month's calls, counted across both.
        for n in 1..MONTHLY {
            let a = get(&gw[n as usize % 2], &balances, Some(&token)).await;
            assert_eq!(a.status, 200, "balances call {n}: {}", a.describe());
            let state = a.header("ratelimit").unwrap_or_default();
            assert!(
                state.starts_with(&format!("\"monthly\";r={};", MONTHLY - n)),
                "balances call {n}: RateLimit {state:?}"
            );
        }
        // Open data of the same provider, many times, through both: never counted.
        for n in 0..20 {
            let a = get(&gw[n % 2], &open_data, None).await;
            assert_eq!(a.status, 200, "open data {n}: {}", a.describe());
        }
        let seventh = get(&gw[1], &balances, Some(&token)).await;
        assert_eq!(seventh.status, 200, "the 7th call: {}", seventh.describe());
        for (i, g) in gw.iter().enumerate() {
            let a = get(g, &balances, Some(&token)).await;
            assert_monthly_refusal(&a, &format!("the 8th call, gateway {i}"));
        }
        // Another route of the consent is not capped, and open data is not either.
        let accounts = get(&gw[0], &r.accounts_path(SERVED), Some(&token)).await;
        assert_eq!(accounts.status, 200, "accounts: {}", accounts.describe());
        assert_eq!(get(&gw[1], &open_data, None).await.status, 200);
    });

    r.cluster.stop_redis().expect("redis stopped (SIGTERM)");
    let pid = r.cluster.restart_redis().expect("redis started again");
    eprintln!("redis restarted (pid {pid}) on {}", r.cluster.redis_url());
    rt.block_on(async {
        for (i, g) in gw.iter().enumerate() {
            let a = until_store_answers(&r, g, &balances, &token).await;
            assert_monthly_refusal(&a, &format!("after the restart, gateway {i}"));
        }
    });
    assert_eq!(r.cluster.check(), Vec::<String>::new(), "no piece died");
}

/// Polls `path` (bounded) until the answer is not `503 limits_unavailable` (the monthly
/// class's `deny` while the gateway has not reached the restarted Redis yet); a `200`
/// meanwhile fails the test.
async fn until_store_answers(r: &Running, g: &Client, path: &str, token: &str) -> Response {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let a = get(g, path, Some(token)).await;
        if status_code(&a) != (503, "limits_unavailable".to_owned()) {
            return a;
        }
        assert!(a.header("retry-after").is_some(), "503 without Retry-After");
        assert!(
            Instant::now() < end,
            "still 503 limits_unavailable 20 s after the restart\n{}",
            r.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// c. Redis frozen, then killed: the failure policies, and recovery.

/// `USER_A`'s own per-user limit: the class `user`, failure policy `local`. With two
/// gateways a gateway's share is half of it: 1/s, burst 6.
const A_QUOTA: (u32, u32) = (2, 12);
const A_SHARE: (u32, u32) = (1, 6);
/// `USER_B`'s own per user × provider limit: the class `user_provider`, policy `allow`.
const B_QUOTA: (u32, u32) = (1, 5);
/// `USER_B`'s consent (at `BANK_2`), used for `allow`.
const B_CONSENT: &str = SERVED_2;

/// Limits of the outage test: `user` → local, `user_provider` → allow, `ip` → deny (the
/// open-data requests), `consent_route` → allow; no effective quota but the two
/// participants' own.
fn outage_limits() -> LimitSettings {
    let mut l = limits(Mode::Shared, OnFailure::Allow);
    l.classes.user.on_failure = OnFailure::Local;
    l.classes.ip.on_failure = OnFailure::Deny;
    l.overrides = vec![
        LimitOverride {
            participant: bin(USER_A),
            per_user: Some(quota(A_QUOTA.0, A_QUOTA.1)),
            per_user_provider: None,
        },
        LimitOverride {
            participant: bin(USER_B),
            per_user: None,
            per_user_provider: Some(quota(B_QUOTA.0, B_QUOTA.1)),
        },
    ];
    l.store = Some(store(100, 300));
    l
}

/// Cells a GCRA of `per_second` may have refilled during `d` (rounded up, plus one for
/// the boundary).
fn refill(per_second: u32, d: Duration) -> usize {
    (f64::from(per_second) * d.as_secs_f64()).ceil() as usize + 1
}

/// A run of requests until the first refusal.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Admitted before the refusal (or the cap).
    admitted: usize,
    /// When the run started, and how long it took.
    started: Instant,
    took: Duration,
}

/// Sends the consent's accounts request through `order` (gateway indexes, cycled) until
/// the first refusal (at most `cap` requests). Any answer but `200` and `429
/// rate_limited` fails the test.
async fn until_refused(r: &Running, consent: &str, order: &[usize], cap: usize) -> Run {
    let (path, token) = (r.accounts_path(consent), r.token(consent));
    let clients: Vec<Client> = (0..r.gateways())
        .map(|i| r.gateway_for(i, consent))
        .collect();
    let started = Instant::now();
    let run = |admitted| Run {
        admitted,
        started,
        took: started.elapsed(),
    };
    for n in 0..cap {
        let g = order[n % order.len()];
        let a = get(&clients[g], &path, Some(&token)).await;
        match status_code(&a) {
            (200, _) => {}
            (429, c) if c == "rate_limited" => return run(n),
            other => panic!(
                "{consent} via gateway {g}: {other:?}: {}\n{}",
                a.describe(),
                r.logs()
            ),
        }
    }
    run(cap)
}

/// Requires `run` to have admitted `least`, or up to what its duration may have refilled
/// at `per_second` on top.
fn assert_about(what: &str, run: Run, least: usize, per_second: u32) {
    let most = least + refill(per_second, run.took);
    eprintln!(
        "{what}: {} admitted in {:?} (expected {least}..={most})",
        run.admitted, run.took
    );
    assert!(
        (least..=most).contains(&run.admitted),
        "{what}: {} admitted, expected {least}..={most} (in {:?})",
        run.admitted,
        run.took
    );
}

/// Healthy Redis: `USER_A`'s 12 are shared (alternating gateways: 12, not 24), so are
/// `USER_B`'s 5, and open data is served.
async fn healthy(r: &Running) {
    let run = until_refused(r, SERVED, &[0, 1], 40).await;
    assert_about(
        "healthy, USER_A alternating",
        run,
        A_QUOTA.1 as usize,
        A_QUOTA.0,
    );
    let run = until_refused(r, B_CONSENT, &[0, 1], 20).await;
    assert_about(
        "healthy, USER_B alternating",
        run,
        B_QUOTA.1 as usize,
        B_QUOTA.0,
    );
    for i in 0..r.gateways() {
        let a = get(
            &r.gateway_as(i, USER_B),
            &open_data_path(BANK_2, "branches"),
            None,
        )
        .await;
        assert_eq!(a.status, 200, "open data via gateway {i}: {}", a.describe());
    }
}

/// Redis unreachable (`what`): `deny` → 503 with `Retry-After`; `allow` → twice
/// `USER_B`'s burst admitted (it was refused just before); `local` → gateway `fresh`,
/// whose in-process share was never used, admits exactly its share of `USER_A`'s quota,
/// then refuses; with `refilled` = (gateway, when its share was emptied), that gateway
/// admits what a GCRA refilled since. Returns when `fresh`'s share was emptied.
async fn unreachable(
    r: &Running,
    what: &str,
    fresh: usize,
    refilled: Option<(usize, Instant)>,
) -> Instant {
    for i in 0..r.gateways() {
        let open_data = open_data_path(BANK_2, "branches");
        let a = get(&r.gateway_as(i, USER_B), &open_data, None).await;
        a.assert_problem(503, "limits_unavailable");
        let retry: u64 = a
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            retry >= 1,
            "{what}: deny via gateway {i}: Retry-After {retry}"
        );
    }
    let allowed = 2 * B_QUOTA.1 as usize;
    let run = until_refused(r, B_CONSENT, &[0, 1], allowed).await;
    assert_eq!(
        run.admitted, allowed,
        "{what}: allow admits beyond the limit"
    );

    let (share_rate, share_burst) = (A_SHARE.0, A_SHARE.1 as usize);
    let run = until_refused(r, SERVED, &[fresh], 3 * A_QUOTA.1 as usize).await;
    assert_about(
        &format!("{what}: local, gateway {fresh}"),
        run,
        share_burst,
        share_rate,
    );
    let emptied = run.started + run.took;
    if let Some((g, since)) = refilled {
        let run = until_refused(r, SERVED, &[g], 3 * A_QUOTA.1 as usize).await;
        // GCRA: a bucket emptied `x` s ago holds min(burst, ⌊x × rate⌋) cells.
        let x = (run.started - since).as_secs_f64() * f64::from(share_rate);
        let least = share_burst.min(x as usize).saturating_sub(1);
        let label = format!("{what}: local, gateway {g} ({x:.1} cells refilled)");
        assert_about(&label, run, least, share_rate);
        assert!(run.admitted <= share_burst + refill(share_rate, run.took));
    }
    emptied
}

/// The counters of failure-policy decisions of gateway `i` (every class and policy).
async fn policy_decisions(r: &Running, i: usize) -> f64 {
    let text = r.metrics(i).await;
    text.lines()
        .filter(|l| l.starts_with("hub_limit_failure_policy_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Shared counting again, with nothing done to the gateways: polls (bounded) until one
/// probe shows it — `USER_A` drained through gateway 0 until refused, then refused at
/// once through gateway 1 (one bucket for both; the local fallback would give gateway 1
/// its own share, refilled since it was last emptied), no failure-policy decision taken by either gateway meanwhile, `USER_B`
/// refused again within its burst (no longer `allow`), and open data served (no longer
/// `deny`). Returns how long it took.
async fn recovers(r: &Running, what: &str) -> Duration {
    let started = Instant::now();
    let end = started + Duration::from_secs(30);
    loop {
        let last = match probe_shared(r).await {
            Ok(()) => return started.elapsed(),
            Err(why) => why,
        };
        assert!(
            Instant::now() < end,
            "{what}: shared counting not back within 30 s; last probe: {last}\n{}",
            r.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One probe of [`recovers`]: why it does not show shared counting yet.
async fn probe_shared(r: &Running) -> Result<(), String> {
    let open_data = open_data_path(BANK_2, "branches");
    for i in 0..r.gateways() {
        let a = get(&r.gateway_as(i, USER_B), &open_data, None).await;
        if a.status != 200 {
            return Err(format!("open data via gateway {i}: {:?}", status_code(&a)));
        }
    }
    let before = [policy_decisions(r, 0).await, policy_decisions(r, 1).await];
    let n0 = until_refused(r, SERVED, &[0], 3 * A_QUOTA.1 as usize)
        .await
        .admitted;
    let n1 = until_refused(r, SERVED, &[1], 3 * A_QUOTA.1 as usize)
        .await
        .admitted;
    let nb = until_refused(r, B_CONSENT, &[1, 0], 3 * B_QUOTA.1 as usize)
        .await
        .admitted;
    let after = [policy_decisions(r, 0).await, policy_decisions(r, 1).await];
    if after != before {
        return Err(format!("failure-policy decisions {before:?} → {after:?}"));
    }
    if n0 == 0 || n0 > A_QUOTA.1 as usize + 1 || n1 != 0 {
        return Err(format!(
            "USER_A: gateway 0 admitted {n0}, then gateway 1 {n1} (shared: ≤ {} then 0)",
            A_QUOTA.1 + 1
        ));
    }
    if nb > B_QUOTA.1 as usize + 1 {
        return Err(format!("USER_B admitted {nb} before a refusal"));
    }
    Ok(())
}

/// One request of the background load: when it was sent, how long its answer took, and
/// the answer (`status`, `code`, whether `Retry-After` came) or the transport error.
struct Heard {
    at: Instant,
    took: Duration,
    answer: Result<(u16, String, bool), String>,
}

/// A light background load: open data (`path`) through `clients` in turn, one request
/// every 50 ms (or as soon as the previous one is answered), into `heard`, until `stop`.
async fn background(
    clients: Vec<Client>,
    path: String,
    heard: Arc<Mutex<Vec<Heard>>>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for k in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let at = Instant::now();
        let answer = clients[k % clients.len()]
            .try_send(&Req::get(path.as_str()))
            .await
            .map(|a| {
                let (s, c) = status_code(&a);
                (s, c, a.header("retry-after").is_some())
            })
            .map_err(|e| e.to_string());
        let took = at.elapsed();
        heard
            .lock()
            .expect("heard")
            .push(Heard { at, took, answer });
    }
}

/// The background load's answers sent since `since`.
fn heard_since(heard: &Mutex<Vec<Heard>>, since: Instant) -> usize {
    heard
        .lock()
        .expect("heard")
        .iter()
        .filter(|h| h.at >= since)
        .count()
}

#[test]
fn redis_frozen_then_killed_each_failure_policy_holds_and_shared_counting_comes_back() {
    let _one = one_at_a_time();
    let mut r = start(0, |o| o.limits = Some(outage_limits()));
    let rt = runtime();
    let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (0..r.gateways()).map(|i| r.gateway_as(i, USER_B)).collect();
    let path = open_data_path(BANK_2, "branches");
    let bg = rt.spawn(background(clients, path, heard.clone(), stop.clone()));

    rt.block_on(healthy(&r));
    let frozen = Instant::now();
    r.cluster.pause_redis().expect("SIGSTOP to redis");
    let emptied = rt.block_on(unreachable(&r, "frozen", 0, None));
    r.cluster.resume_redis().expect("SIGCONT to redis");
    let took = rt.block_on(recovers(&r, "after SIGCONT"));
    let outages = vec![(frozen, Instant::now())];
    eprintln!("shared counting back {took:?} after SIGCONT");

    let killed = Instant::now();
    r.cluster.kill_redis().expect("SIGKILL to redis");
    rt.block_on(unreachable(&r, "killed", 1, Some((0, emptied))));
    let pid = r.cluster.restart_redis().expect("redis started again");
    let took = rt.block_on(recovers(&r, "after the restart"));
    let back = Instant::now();
    eprintln!("shared counting back {took:?} after the restart (pid {pid})");
    let outages = [outages, vec![(killed, back)]].concat();

    // A few more background requests once everything is back, then stop it.
    let more = poll_until(Duration::from_secs(10), || {
        (heard_since(&heard, back) >= 4).then_some(())
    });
    assert!(more.is_some(), "the background load goes on");
    stop.store(true, Ordering::Relaxed);
    rt.block_on(bg).expect("background load");
    check_background(&heard.lock().expect("heard"), &outages);
    assert_eq!(r.cluster.check(), Vec::<String>::new(), "no piece died");
}

/// The background load: `200`, or `503 limits_unavailable` with `Retry-After` for a
/// request in flight during an outage (from the signal to the end of the recovery: a
/// request sent just before the signal may reach the gateway after it); some of the
/// latter in each outage; no transport error. Prints its latencies (not asserted: a
/// benchmark measures them).
fn check_background(heard: &[Heard], outages: &[(Instant, Instant)]) {
    let during = |h: &Heard| {
        outages
            .iter()
            .position(|(from, to)| h.at < *to && *from <= h.at + h.took)
    };
    let mut denied = vec![0; outages.len()];
    for h in heard {
        match (&h.answer, during(h)) {
            (Ok((200, _, _)), _) => {}
            (Ok((503, code, true)), Some(i)) if code == "limits_unavailable" => denied[i] += 1,
            (other, outage) => {
                let start = heard.first().map_or(h.at, |f| f.at);
                let at = h.at - start;
                let outages: Vec<_> = outages
                    .iter()
                    .map(|(from, to)| (*from - start, *to - start))
                    .collect();
                panic!(
                    "background open data: {other:?} (outage {outage:?}); sent at {at:?}, \
                     answered in {:?}; outages {outages:?}",
                    h.took
                )
            }
        }
    }
    assert!(
        denied.iter().all(|d| *d > 0),
        "the background load was denied in each outage: {denied:?}"
    );
    let mut ms: Vec<f64> = heard.iter().map(|h| h.took.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p) as usize];
    eprintln!(
        "background: {} requests (fresh TLS connections), denied per outage {denied:?}; \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}
