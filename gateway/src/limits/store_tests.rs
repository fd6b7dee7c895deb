//! The shared store against a real `redis-server` (`sandbox::redis`): the script's exact
//! GCRA and count numbers, all-or-nothing charging, sharing between stores, and the
//! failure paths — a frozen server (timeouts, then the breaker), a killed and restarted
//! one, none at all at start-up. Waits are polls with deadlines, never fixed sleeps that
//! must be long enough.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sandbox::redis::{RedisOptions, RedisServer};
use tempfile::TempDir;

use super::store::{
    ItemState, SharedItem, SharedStore, StoreAnswer, StoreConfig, StoreFailure, StoreMetrics,
};

/// One second, in microseconds: the emission interval of 1 request per second.
const T: u64 = 1_000_000;
/// How far Redis's clock may move between two calls of a test on a loaded machine.
const SLACK: u64 = 500_000;
/// A bound that only a hang would exceed.
const GENEROUS: Duration = Duration::from_secs(20);

fn server() -> (TempDir, RedisServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = RedisServer::start(dir.path()).expect("redis-server");
    (dir, server)
}

fn config(server: &RedisServer) -> StoreConfig {
    StoreConfig {
        url: server.url(),
        password: None,
        timeout: Duration::from_millis(250),
        connect_timeout: Duration::from_millis(500),
        breaker_failures: 3,
        breaker_open: Duration::from_millis(300),
    }
}

fn metrics() -> StoreMetrics {
    StoreMetrics::unregistered().expect("metrics")
}

/// A store that has made its first connection.
async fn connected(config: &StoreConfig) -> (SharedStore, StoreMetrics) {
    let metrics = metrics();
    let store = SharedStore::start(config, metrics.clone()).expect("start");
    let deadline = Instant::now() + GENEROUS;
    while !store.is_connected() {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (store, metrics)
}

/// Runs `items` until the store answers (it may be reconnecting, or its breaker open).
async fn until_answered(store: &SharedStore, items: &[SharedItem]) -> StoreAnswer {
    let deadline = Instant::now() + GENEROUS;
    loop {
        match store.run(items).await {
            Ok(answer) => return answer,
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gcra(key: &str, per_second: u32, burst: u32) -> SharedItem {
    lease(key, per_second, burst, 1)
}

fn lease(key: &str, per_second: u32, burst: u32, want: u32) -> SharedItem {
    SharedItem::Gcra {
        key: key.into(),
        per_second,
        burst,
        want,
    }
}

fn count(key: &str, limit: u32, expire_at_unix: i64) -> SharedItem {
    SharedItem::Count {
        key: key.into(),
        limit,
        expire_at_unix,
    }
}

fn now_unix() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(now.as_secs()).expect("seconds")
}

/// The single item state of an admitted answer.
fn admitted(answer: StoreAnswer) -> Vec<ItemState> {
    match answer {
        StoreAnswer::Admitted(states) => states,
        other => panic!("refused: {other:?}"),
    }
}

fn refused(answer: StoreAnswer) -> (usize, u64) {
    match answer {
        StoreAnswer::Refused {
            index,
            retry_after_us,
        } => (index, retry_after_us),
        other => panic!("admitted: {other:?}"),
    }
}

/// A raw connection for looking at (or under) the store's keys.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).expect("client");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

async fn get(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<i64> {
    redis::cmd("GET")
        .arg(key)
        .query_async(con)
        .await
        .expect("GET")
}

async fn run(store: &SharedStore, items: &[SharedItem]) -> StoreAnswer {
    store.run(items).await.expect("answered")
}

#[tokio::test]
async fn gcra_admits_the_burst_then_refuses_for_one_interval() {
    let (_dir, server) = server();
    let (store, _) = connected(&config(&server)).await;
    let item = [gcra("hub:{u:1}:user", 1, 3)];
    // The first request of an empty bucket: exactly one interval ahead of now.
    let first = admitted(run(&store, &item).await);
    assert_eq!(
        first,
        vec![ItemState {
            remaining: 2,
            reset_us: T,
            granted: 1,
        }]
    );
    for (k, remaining) in [(2, 1), (3, 0)] {
        let state = admitted(run(&store, &item).await)[0];
        assert_eq!(state.remaining, remaining);
        assert!(
            state.reset_us <= k * T && state.reset_us > k * T - SLACK,
            "{state:?}"
        );
    }
    // The burst is spent: one more fits in (just under) one interval.
    let (index, retry) = refused(run(&store, &item).await);
    assert_eq!(index, 0);
    assert!(retry <= T && retry > T - SLACK, "retry {retry}");
    // The refusal charged nothing: after exactly that wait, one fits, and only one.
    tokio::time::sleep(Duration::from_micros(retry)).await;
    let state = admitted(run(&store, &item).await)[0];
    assert_eq!(state.remaining, 0);
    assert!(state.reset_us <= 3 * T, "{state:?}");

    // The interval is whole microseconds: 1e6 / 3, rounded down.
    let third = admitted(run(&store, &[gcra("hub:{u:1}:up:2", 3, 2)]).await);
    assert_eq!(
        third,
        vec![ItemState {
            remaining: 1,
            reset_us: 333_333,
            granted: 1,
        }]
    );
    // The key expires when the bucket is full again (PX = reset in ms, rounded up, + 1).
    let mut con = raw(&server).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hub:{u:1}:up:2")
        .query_async(&mut con)
        .await
        .expect("PTTL");
    assert!(pttl > 0 && pttl <= 335, "pttl {pttl}");
}

#[tokio::test]
async fn a_lease_takes_as_many_cells_as_fit_and_at_least_one() {
    let (_dir, server) = server();
    let (store, _) = connected(&config(&server)).await;
    let key = "hub:{u:1}:user";
    // Burst 10: a lease of 4, then 4 more, then the 2 left of the 6 asked for.
    for (want, granted, remaining) in [(4, 4, 6), (4, 4, 2), (6, 2, 0)] {
        let state = admitted(run(&store, &[lease(key, 1, 10, want)]).await)[0];
        assert_eq!((state.granted, state.remaining), (granted, remaining));
    }
    // Spent: a lease of 1 or of 5 is refused alike, and charges nothing.
    let mut con = raw(&server).await;
    let tat = get(&mut con, key).await;
    let (index, retry) = refused(run(&store, &[lease(key, 1, 10, 5)]).await);
    assert_eq!(index, 0);
    assert!(retry <= T && retry > T - SLACK, "retry {retry}");
    assert_eq!(get(&mut con, key).await, tat);
    // Ten cells charged in all: the bucket is ten intervals ahead.
    let (_, retry) = refused(run(&store, &[gcra(key, 1, 10)]).await);
    assert!(retry <= T, "retry {retry}");
}

#[tokio::test]
async fn a_request_refused_by_its_third_item_charges_none() {
    let (_dir, server) = server();
    let (store, _) = connected(&config(&server)).await;
    let month_end = now_unix() + 3600;
    let (user, provider, monthly) = ("hub:{u:1}:user", "hub:{u:1}:up:2", "hub:{u:1}:m:202501:ab");
    let spent = admitted(run(&store, &[count(monthly, 1, month_end)]).await);
    assert_eq!(spent[0].remaining, 0);
    let items = [
        gcra(user, 1, 5),
        gcra(provider, 1, 3),
        count(monthly, 1, month_end),
    ];
    let (index, _) = refused(run(&store, &items).await);
    assert_eq!(index, 2);
    let mut con = raw(&server).await;
    assert_eq!(
        get(&mut con, user).await,
        None,
        "the user bucket was not charged"
    );
    assert_eq!(get(&mut con, provider).await, None, "nor the provider's");
    assert_eq!(get(&mut con, monthly).await, Some(1), "nor counted twice");
    // The first two, alone, find their full quotas.
    let states = admitted(run(&store, &items[..2]).await);
    assert_eq!(
        states,
        vec![
            ItemState {
                remaining: 4,
                reset_us: T,
                granted: 1,
            },
            ItemState {
                remaining: 2,
                reset_us: T,
                granted: 1,
            },
        ]
    );
    // A refusal by the first item names it, and leaves the second's TAT as it was.
    let tat = get(&mut con, user).await.expect("charged once");
    let (index, _) = refused(run(&store, &[count(monthly, 1, month_end), gcra(user, 1, 5)]).await);
    assert_eq!(index, 0);
    assert_eq!(get(&mut con, user).await, Some(tat));
}

#[tokio::test]
async fn counts_refuse_at_exactly_the_limit_and_expire_when_told() {
    let (_dir, server) = server();
    let (store, _) = connected(&config(&server)).await;
    let month_end = now_unix() + 3600;
    let key = "hub:{u:1}:m:202501:cd";
    let item = [count(key, 3, month_end)];
    for remaining in [2, 1, 0] {
        let state = admitted(run(&store, &item).await)[0];
        assert_eq!(
            state,
            ItemState {
                remaining,
                reset_us: 0,
                granted: 1,
            }
        );
    }
    let (index, retry) = refused(run(&store, &item).await);
    assert_eq!(index, 0);
    let hour = 3600 * T;
    assert!(
        retry <= hour && retry > hour - 60 * T,
        "retry {retry}: until the month ends"
    );
    let mut con = raw(&server).await;
    assert_eq!(
        get(&mut con, key).await,
        Some(3),
        "the refusal did not count"
    );
    let expires: i64 = redis::cmd("EXPIRETIME")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("EXPIRETIME");
    assert_eq!(expires, month_end);

    // A month that ends in two seconds: counted, then gone when it ends.
    let short = [count("hub:{u:1}:m:202501:ef", 1, now_unix() + 2)];
    assert_eq!(admitted(run(&store, &short).await)[0].remaining, 0);
    let deadline = Instant::now() + GENEROUS;
    while let StoreAnswer::Refused { .. } = run(&store, &short).await {
        assert!(Instant::now() < deadline, "the count never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_stores_on_one_redis_share_counts_and_buckets() {
    let (_dir, server) = server();
    let (a, _) = connected(&config(&server)).await;
    let (b, _) = connected(&config(&server)).await;
    let month = [count("hub:{u:1}:m:202501:aa", 3, now_unix() + 3600)];
    assert_eq!(admitted(run(&a, &month).await)[0].remaining, 2);
    assert_eq!(admitted(run(&b, &month).await)[0].remaining, 1);
    assert_eq!(admitted(run(&a, &month).await)[0].remaining, 0);
    assert_eq!(refused(run(&b, &month).await).0, 0);
    let bucket = [gcra("hub:{u:1}:user", 1, 2)];
    assert_eq!(admitted(run(&a, &bucket).await)[0].remaining, 1);
    assert_eq!(admitted(run(&b, &bucket).await)[0].remaining, 0);
    assert_eq!(refused(run(&a, &bucket).await).0, 0);
}

#[tokio::test]
async fn a_frozen_redis_times_out_opens_the_circuit_and_a_probe_closes_it() {
    let (_dir, server) = server();
    let config = config(&server);
    let (store, metrics) = connected(&config).await;
    let item = [gcra("hub:{u:1}:user", 100, 100)];
    run(&store, &item).await;
    server.pause().expect("SIGSTOP");
    for _ in 0..config.breaker_failures {
        let started = Instant::now();
        assert_eq!(store.run(&item).await, Err(StoreFailure::Timeout));
        assert!(started.elapsed() < config.timeout + Duration::from_secs(2));
    }
    assert_eq!(metrics.errors.with_label_values(&["timeout"]).get(), 3);
    assert_eq!(metrics.circuit_open.get(), 1);
    // Open: refused at once, and Redis is not asked (no call is timed).
    let calls = metrics.seconds.get_sample_count();
    let started = Instant::now();
    assert_eq!(store.run(&item).await, Err(StoreFailure::CircuitOpen));
    assert!(started.elapsed() < config.timeout, "no waiting while open");
    assert_eq!(metrics.seconds.get_sample_count(), calls);
    assert_eq!(metrics.errors.with_label_values(&["circuit_open"]).get(), 1);
    assert!(store.retry_after_secs() >= 1);

    server.resume().expect("SIGCONT");
    until_answered(&store, &item).await;
    assert_eq!(
        metrics.circuit_open.get(),
        0,
        "the probe's success closed it"
    );
    // While it was open only probes reached Redis: the failed ones, and the one that
    // closed it (one, unless the machine was slow enough for a probe to time out).
    let probes = metrics.seconds.get_sample_count() - calls;
    let failed_probes = metrics.errors.with_label_values(&["timeout"]).get() - 3
        + metrics.errors.with_label_values(&["redis"]).get();
    assert_eq!(probes, failed_probes + 1);
    run(&store, &item).await;
}

#[tokio::test]
async fn a_killed_and_restarted_redis_is_used_again_with_no_action() {
    let (_dir, mut server) = server();
    let (store, metrics) = connected(&config(&server)).await;
    let item = [gcra("hub:{u:1}:user", 100, 100)];
    run(&store, &item).await;
    server.kill().expect("SIGKILL");
    let failure = store.run(&item).await.expect_err("nobody answers");
    assert!(
        matches!(failure, StoreFailure::Redis(_) | StoreFailure::Timeout),
        "{failure:?}"
    );
    server.restart().expect("restart");
    // Reconnected by the manager; the script loaded again after the restart's NOSCRIPT.
    let state = admitted(until_answered(&store, &item).await)[0];
    assert!(state.remaining < 100);
    assert_eq!(metrics.circuit_open.get(), 0);
}

#[tokio::test]
async fn after_an_outage_longer_than_any_backoff_the_first_call_is_answered() {
    let (_dir, mut server) = server();
    let (store, metrics) = connected(&config(&server)).await;
    let item = [gcra("hub:{u:1}:user", 100, 100)];
    // This thread's own connection too (made in the background on its first call).
    for _ in 0..20 {
        run(&store, &item).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill().expect("SIGKILL");
    // No call meanwhile: the connections hear of the loss and reconnect by themselves,
    // for longer than their backoff's sum (50 ms doubling to 1 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.restart().expect("restart");
    // The backoff's longest pause (1 s, jittered up to twice that) and then some.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let errors = || {
        metrics.errors.with_label_values(&["redis"]).get()
            + metrics.errors.with_label_values(&["timeout"]).get()
    };
    let before = errors();
    assert!(
        matches!(store.run(&item).await, Ok(StoreAnswer::Admitted(_))),
        "the first call after the restart is answered"
    );
    assert_eq!(errors(), before);
}

#[tokio::test]
async fn monthly_counts_survive_a_clean_restart() {
    let (_dir, mut server) = server();
    let (store, _) = connected(&config(&server)).await;
    let month = [count("hub:{u:1}:m:202501:aa", 5, now_unix() + 3600)];
    run(&store, &month).await;
    run(&store, &month).await;
    server.stop().expect("stop");
    server.restart().expect("restart");
    // Back (a call that timed out could have been counted: wait with another key).
    until_answered(&store, &[gcra("hub:{u:1}:user", 10, 10)]).await;
    let state = admitted(run(&store, &month).await)[0];
    assert_eq!(
        state.remaining, 2,
        "the append-only file kept the two charges"
    );
}

#[tokio::test]
async fn with_nothing_listening_calls_fail_fast_until_a_server_appears() {
    let (_dir, mut server) = server();
    server.stop().expect("stop");
    let metrics = metrics();
    let store = SharedStore::start(&config(&server), metrics.clone()).expect("start");
    let item = [gcra("hub:{u:1}:user", 10, 10)];
    let started = Instant::now();
    assert_eq!(store.run(&item).await, Err(StoreFailure::NotConnected));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        metrics.errors.with_label_values(&["not_connected"]).get(),
        1
    );
    assert_eq!(metrics.seconds.get_sample_count(), 0, "Redis was not asked");
    assert_eq!(store.retry_after_secs(), 1);
    server.restart().expect("a server on that port");
    let state = admitted(until_answered(&store, &item).await)[0];
    assert!(
        state.remaining <= 9 && state.reset_us >= 100_000,
        "{state:?}"
    );
}

#[tokio::test]
async fn a_password_is_sent_and_a_missing_one_never_connects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = RedisOptions {
        password: Some("s3cret-value".into()),
    };
    let server = RedisServer::start_with(dir.path(), &options).expect("redis-server");
    let with = StoreConfig {
        password: options.password.clone(),
        ..config(&server)
    };
    let (store, _) = connected(&with).await;
    let item = [gcra("hub:{u:1}:user", 10, 10)];
    assert_eq!(admitted(run(&store, &item).await)[0].remaining, 9);

    let without = SharedStore::start(&config(&server), metrics()).expect("start");
    // Long enough for several refused attempts; it must still not be connected.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(without.run(&item).await, Err(StoreFailure::NotConnected));
    assert!(!format!("{with:?}{store:?}").contains("s3cret-value"));
}
