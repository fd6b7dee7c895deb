//! The limits over a real Redis (started per test by `sandbox::redis`): monthly quotas
//! across two gateways' limits and across a month boundary (an injected clock), each
//! failure policy while the store is paused, all-or-nothing charging, and the in-process
//! mode with no store at all.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use consent_cache::Bin;
use policy::limits::{
    CappedRoute, ClassPolicy, LimitKind, LimitSettings, Mode, MonthlySettings, OnFailure,
    QuotaSettings, StoreSettings,
};
use policy::route::RouteId;
use sandbox::redis::RedisServer;

use super::*;

/// A clock the test moves.
#[derive(Debug)]
struct FakeClock(AtomicI64);

impl Clock for FakeClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// 2026-12-31T18:59:00Z: one minute before January in Almaty (UTC+5).
const LAST_MINUTE_OF_DECEMBER_ALMATY: i64 = 1_798_743_540;

const USER: &str = "100000000001";
const BANK: &str = "200000000001";

fn bin(s: &str) -> Bin {
    Bin::parse(s).expect("bin")
}

fn metrics() -> LimitMetrics {
    LimitMetrics::unregistered().expect("metrics")
}

fn high() -> QuotaSettings {
    QuotaSettings::new(100_000, 100_000).expect("quota")
}

fn settings(store: Option<&RedisServer>) -> LimitSettings {
    let mut s = LimitSettings {
        per_user: high(),
        per_user_provider: high(),
        per_consent_route: high(),
        per_ip_open_data: high(),
        ..LimitSettings::default()
    };
    if let Some(redis) = store {
        let mut st = StoreSettings::new(redis.url());
        st.timeout_ms = 50;
        st.breaker_failures = NonZeroU32::MIN;
        st.breaker_open_ms = 60_000;
        st.gateways = NonZeroU32::new(2).expect("2");
        s.store = Some(st);
    }
    s
}

fn monthly(limit: u32) -> MonthlySettings {
    MonthlySettings {
        time_zone: "Asia/Almaty".into(),
        routes: [(CappedRoute::Balances, limit)].into(),
        providers: vec![],
    }
}

fn balances(consent: &str) -> Target<'_> {
    Target::Consent {
        provider: bin(BANK),
        consent_id: consent,
        route: RouteId::Balances,
    }
}

fn start_redis() -> (tempfile::TempDir, RedisServer) {
    let dir = tempfile::tempdir().expect("dir");
    let redis = RedisServer::start(dir.path()).expect("redis-server");
    (dir, redis)
}

/// Waits until the store answers (it connects in the background).
async fn connected(l: &Limits, user: Bin) {
    for _ in 0..200 {
        if let Some(store) = &l.store {
            if store.is_connected() {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = user;
    panic!("the store did not connect");
}

#[tokio::test]
async fn a_monthly_quota_is_shared_by_two_gateways_and_resets_with_the_month() {
    let (_dir, redis) = start_redis();
    let mut s = settings(Some(&redis));
    s.monthly = monthly(5);
    let clock = Arc::new(FakeClock(AtomicI64::new(LAST_MINUTE_OF_DECEMBER_ALMATY)));
    let a = Limits::with(&s, &metrics(), clock.clone()).expect("limits a");
    let b = Limits::with(&s, &metrics(), clock.clone()).expect("limits b");
    connected(&a, bin(USER)).await;
    connected(&b, bin(USER)).await;
    // Five calls, alternating gateways, are admitted; the sixth, on either, is refused.
    for i in 0..5 {
        let l = if i % 2 == 0 { &a } else { &b };
        l.check(bin(USER), balances("c-1"))
            .await
            .expect("within the month's quota");
    }
    for l in [&a, &b] {
        let Err(Refusal::Limited(refused)) = l.check(bin(USER), balances("c-1")).await else {
            panic!("the sixth call of the month must be refused");
        };
        assert_eq!(refused.kind, LimitKind::Monthly);
        assert_eq!(refused.quota, 5);
        assert_eq!(refused.retry_after_secs, 60, "reset at Almaty's midnight");
        assert_eq!(refused.window_secs, 31 * 86_400);
    }
    // Another consent, and another route of the same consent, have their own count.
    a.check(bin(USER), balances("c-2"))
        .await
        .expect("another consent");
    // Open data is never counted.
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    a.check(bin(USER), Target::OpenData { ip })
        .await
        .expect("open data");
    // January (Almaty) begins: the count starts again, on both gateways.
    clock
        .0
        .store(LAST_MINUTE_OF_DECEMBER_ALMATY + 60, Ordering::SeqCst);
    for l in [&a, &b] {
        let info = l
            .check(bin(USER), balances("c-1"))
            .await
            .expect("a new month");
        assert_eq!(info.kind, LimitKind::Monthly);
    }
}

#[tokio::test]
async fn a_rate_refusal_in_the_store_charges_nothing() {
    let (_dir, redis) = start_redis();
    let mut s = settings(Some(&redis));
    s.per_consent_route = QuotaSettings::new(1, 2).expect("quota");
    s.per_user = QuotaSettings::new(1, 10).expect("quota");
    let l = Limits::with(&s, &metrics(), Arc::new(SystemClock)).expect("limits");
    connected(&l, bin(USER)).await;
    l.check(bin(USER), balances("c-1")).await.expect("1");
    let second = l.check(bin(USER), balances("c-1")).await.expect("2");
    assert_eq!(second.remaining, 0);
    // Refused by consent × route (third item): the user's limit is not charged.
    for _ in 0..3 {
        let Err(Refusal::Limited(r)) = l.check(bin(USER), balances("c-1")).await else {
            panic!("consent × route must refuse");
        };
        assert_eq!(r.kind, LimitKind::ConsentRoute);
    }
    // The user spent 2 of its 10 (not 5): 8 more calls on other consents pass, the 9th is
    // refused by the per-user limit.
    for i in 0..8 {
        l.check(bin(USER), balances(&format!("other-{i}")))
            .await
            .expect("the user's own quota");
    }
    let Err(Refusal::Limited(r)) = l.check(bin(USER), balances("other-x")).await else {
        panic!("the per-user limit must refuse the 11th charged call");
    };
    assert_eq!(r.kind, LimitKind::User);
}

/// Limits whose per consent × route class has `policy`, with the store paused.
async fn paused_store_with(
    policy: OnFailure,
) -> (tempfile::TempDir, RedisServer, Limits, LimitMetrics) {
    let (dir, redis) = start_redis();
    let mut s = settings(Some(&redis));
    s.per_consent_route = QuotaSettings::new(1, 4).expect("quota");
    s.classes.consent_route = ClassPolicy {
        mode: Some(Mode::Shared),
        on_failure: policy,
    };
    s.classes.user = ClassPolicy {
        mode: Some(Mode::Shared),
        on_failure: OnFailure::Allow,
    };
    let m = metrics();
    let l = Limits::with(&s, &m, Arc::new(SystemClock)).expect("limits");
    connected(&l, bin(USER)).await;
    l.check(bin(USER), balances("warm"))
        .await
        .expect("store up");
    redis.pause().expect("SIGSTOP");
    (dir, redis, l, m)
}

#[tokio::test]
async fn deny_answers_unavailable_while_the_store_is_down_and_recovers() {
    let (_dir, redis, l, m) = paused_store_with(OnFailure::Deny).await;
    for _ in 0..3 {
        let Err(Refusal::Unavailable(named)) = l.check(bin(USER), balances("c-1")).await else {
            panic!("deny must refuse with 503 while the store is paused");
        };
        assert_eq!(named.kind, LimitKind::ConsentRoute);
        // The circuit is open for 60 s after one failure: the next probe is a minute away.
        assert!((55..=60).contains(&named.retry_after_secs), "{named:?}");
    }
    let denied = m
        .fallback
        .with_label_values(&["consent_route", "deny"])
        .get();
    assert_eq!(denied, 3);
    redis.resume().expect("SIGCONT");
    drop(redis);
    drop(l);
}

#[tokio::test]
async fn allow_lets_everything_through_uncounted() {
    let (_dir, redis, l, m) = paused_store_with(OnFailure::Allow).await;
    for _ in 0..10 {
        l.check(bin(USER), balances("c-1")).await.expect("allowed");
    }
    assert_eq!(
        m.fallback
            .with_label_values(&["consent_route", "allow"])
            .get(),
        10
    );
    redis.resume().expect("SIGCONT");
}

#[tokio::test]
async fn local_counts_in_process_with_the_quota_divided_by_the_gateways() {
    let (_dir, redis, l, _m) = paused_store_with(OnFailure::Local).await;
    // Burst 4 over 2 gateways: this one admits 2 on its own, then refuses.
    for _ in 0..2 {
        l.check(bin(USER), balances("c-1"))
            .await
            .expect("this gateway's share");
    }
    let Err(Refusal::Limited(r)) = l.check(bin(USER), balances("c-1")).await else {
        panic!("the local share must refuse");
    };
    assert_eq!((r.kind, r.quota), (LimitKind::ConsentRoute, 2));
    redis.resume().expect("SIGCONT");
}

#[tokio::test]
async fn without_a_store_every_class_is_in_process_including_the_month() {
    let mut s = settings(None);
    s.monthly = monthly(3);
    let clock = Arc::new(FakeClock(AtomicI64::new(LAST_MINUTE_OF_DECEMBER_ALMATY)));
    let l = Limits::with(&s, &metrics(), clock.clone()).expect("limits");
    for _ in 0..3 {
        l.check(bin(USER), balances("c-1"))
            .await
            .expect("within the quota");
    }
    let Err(Refusal::Limited(r)) = l.check(bin(USER), balances("c-1")).await else {
        panic!("the fourth call of the month must be refused");
    };
    assert_eq!(
        (r.kind, r.quota, r.retry_after_secs),
        (LimitKind::Monthly, 3, 60)
    );
    clock
        .0
        .store(LAST_MINUTE_OF_DECEMBER_ALMATY + 60, Ordering::SeqCst);
    l.check(bin(USER), balances("c-1")).await.expect("January");
    l.retain_recent();
    assert_eq!(l.monthly_local.len(), 1, "December's count forgotten");
}

#[test]
fn shared_classes_without_a_store_are_refused() {
    let mut s = settings(None);
    s.classes.user.mode = Some(Mode::Shared);
    let e = Limits::with(&s, &metrics(), Arc::new(SystemClock)).expect_err("refused");
    assert!(e.to_string().contains("classes.user"), "{e}");
}

/// Settings for `gateways` gateways whose per-user class is leased (1,000/s, burst 100,
/// leases of `lease_ms`), every other class in process and high.
fn leased_user(redis: &RedisServer, gateways: u32, lease_ms: u64) -> LimitSettings {
    let mut s = settings(Some(redis));
    s.per_user = QuotaSettings::new(1_000, 100).expect("quota");
    if let Some(st) = s.store.as_mut() {
        st.gateways = NonZeroU32::new(gateways).expect("gateways");
        st.timeout_ms = 1_000;
        st.lease_ms = lease_ms;
    }
    for class in s.classes.all_mut() {
        class.mode = Some(Mode::Local);
    }
    s.classes.user.mode = Some(Mode::Leased);
    s
}

/// What one gateway admitted: (start, end) of each admitted call; the longest call; the
/// refusals.
#[derive(Default)]
struct Driven {
    admitted: Vec<(std::time::Instant, std::time::Instant)>,
    longest: std::time::Duration,
    refused: usize,
}

/// One gateway driven for `run`, as fast as it goes or every `every`.
async fn drive_leased(
    l: Arc<Limits>,
    run: std::time::Duration,
    every: Option<std::time::Duration>,
) -> Driven {
    let mut d = Driven::default();
    let end = std::time::Instant::now() + run;
    let mut ticks = every.map(tokio::time::interval);
    let mut i = 0u64;
    while std::time::Instant::now() < end {
        match ticks.as_mut() {
            Some(t) => drop(t.tick().await),
            None => tokio::task::yield_now().await,
        }
        i += 1;
        let consent = format!("c-{}", i % 64);
        let start = std::time::Instant::now();
        let answer = l.check(bin(USER), balances(&consent)).await;
        let done = std::time::Instant::now();
        d.longest = d.longest.max(done - start);
        match answer {
            Ok(_) => d.admitted.push((start, done)),
            Err(Refusal::Limited(r)) => {
                assert_eq!(r.kind, LimitKind::User);
                d.refused += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    d
}

/// Three gateways on one Redis driven together for `run`; what they admitted together,
/// the run's length in seconds, and the leases taken.
async fn three_leased(
    s: &LimitSettings,
    run: std::time::Duration,
    every: Option<std::time::Duration>,
) -> (Driven, f64, u64) {
    let m = metrics();
    let gateways: Vec<Arc<Limits>> = (0..3)
        .map(|_| Arc::new(Limits::with(s, &m, Arc::new(SystemClock)).expect("limits")))
        .collect();
    for l in &gateways {
        connected(l, bin(USER)).await;
    }
    let began = std::time::Instant::now();
    let tasks: Vec<_> = gateways
        .iter()
        .map(|l| tokio::spawn(drive_leased(l.clone(), run, every)))
        .collect();
    let mut all = Driven::default();
    for t in tasks {
        let d = t.await.expect("driver");
        all.admitted.extend(d.admitted);
        all.longest = all.longest.max(d.longest);
        all.refused += d.refused;
    }
    let took = began.elapsed().as_secs_f64();
    all.admitted.sort_by_key(|c| c.1);
    (all, took, m.leases.with_label_values(&["user"]).get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn leased_gateways_never_admit_more_than_the_quota_in_any_window() {
    let (_dir, redis) = start_redis();
    let s = leased_user(&redis, 3, 20);
    let run = std::time::Duration::from_millis(600);
    let (d, took, leases) = three_leased(&s, run, None).await;
    let calls = &d.admitted;
    // A call was spent somewhere in (start, end): the calls ending within [x, y] were
    // spent within [x - longest, y]. In any such window, at most burst + rate × length.
    let slack = d.longest.as_secs_f64();
    for i in 0..calls.len() {
        for j in (i..calls.len()).step_by(7).chain([calls.len() - 1]) {
            let w = (calls[j].1 - calls[i].1).as_secs_f64() + slack;
            let bound = 100.0 + 1_000.0 * w + 1.0;
            let n = (j - i + 1) as f64;
            assert!(n <= bound, "{n} calls within {w:.4} s: over {bound:.1}");
        }
    }
    let admitted = calls.len() as f64;
    println!(
        "{admitted} admitted, {} refused in {took:.3} s, {leases} leases, longest call {slack:.4} s",
        d.refused
    );
    assert!(admitted <= 100.0 + 1_000.0 * took + 1.0);
    // The quota is used, less the lag's reserve (20 cells) and what leases left unspent.
    assert!(admitted >= 1_000.0 * 0.6 * 0.8, "{admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn below_the_quota_leased_gateways_admit_everything_in_batches() {
    let (_dir, redis) = start_redis();
    // Three gateways at 150/s each against 1,000/s: leases of 50 ms, batches of up to 8.
    let s = leased_user(&redis, 3, 50);
    let run = std::time::Duration::from_millis(600);
    let every = std::time::Duration::from_micros(6_667);
    let (d, took, leases) = three_leased(&s, run, Some(every)).await;
    let admitted = d.admitted.len();
    println!(
        "{admitted} admitted, {} refused in {took:.3} s, {leases} leases",
        d.refused
    );
    assert_eq!(
        d.refused, 0,
        "unspent leased cells must not starve the gateways"
    );
    assert!(admitted >= 200, "{admitted} admitted");
    assert!(
        leases * 3 < admitted as u64,
        "{leases} leases for {admitted} calls"
    );
}

#[tokio::test]
async fn a_leased_cell_comes_back_when_a_later_limit_refuses() {
    let (_dir, redis) = start_redis();
    let mut s = leased_user(&redis, 1, 50);
    // Per consent × route in the store, 1 call per second: the second call is refused.
    s.per_consent_route = QuotaSettings::new(1, 1).expect("quota");
    s.classes.consent_route.mode = Some(Mode::Shared);
    let l = Limits::with(&s, &metrics(), Arc::new(SystemClock)).expect("limits");
    connected(&l, bin(USER)).await;
    let key = lease::LeaseKey {
        class: LimitClass::User,
        user: bin(USER),
        key: plan::Key::User,
    };
    // Leases start at one cell and double when spent: a few calls and one is held.
    for i in 0..8 {
        if l.leases.held(&key) > 1 {
            break;
        }
        l.check(bin(USER), balances(&format!("warm-{i}")))
            .await
            .expect("warm-up");
    }
    l.check(bin(USER), balances("c-1"))
        .await
        .expect("first call");
    let held = l.leases.held(&key);
    assert!(held > 0, "a batch is held");
    let Err(Refusal::Limited(r)) = l.check(bin(USER), balances("c-1")).await else {
        panic!("the consent × route limit must refuse the second call");
    };
    assert_eq!(r.kind, LimitKind::ConsentRoute);
    assert_eq!(
        l.leases.held(&key),
        held,
        "the refused call spent no leased cell"
    );
    l.check(bin(USER), balances("c-2"))
        .await
        .expect("another consent");
    assert_eq!(l.leases.held(&key), held - 1);
}
