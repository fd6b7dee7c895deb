//! The shared limit store: the rate limits and monthly quotas that several gateways share,
//! kept in Redis (issue 12).
//!
//! One [`SharedStore::run`] is one `EVALSHA` of `gcra.lua` (loaded again by itself after a
//! `NOSCRIPT`): every item of a request is checked against Redis's clock and all are charged
//! only if all pass. A call is bounded by the configured timeout (a late answer is a
//! failure) and goes through a [circuit breaker](super::breaker): after
//! `breaker_failures` consecutive failures no call reaches Redis for `breaker_open`, then
//! one probe does.
//!
//! The connection is redis's multiplexed [`ConnectionManager`], which reconnects by itself
//! after a lost connection, in the background and for as long as it takes (pauses of at
//! most a second): when Redis is back, the next call finds a connection instead of failing
//! to trigger one. [`SharedStore::start`] never waits for Redis: a background task
//! connects, retrying with backoff for as long as it takes; until it has, calls fail at
//! once with [`StoreFailure::NotConnected`].
//!
//! Nothing here logs or reports keys, and no error carries the password or Redis's own
//! error text (a script error could quote a value): only a category and a code.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncConnectionConfig;
use redis::{Client, IntoConnectionInfo as _, ProtocolVersion, Script, ScriptInvocation};

use super::breaker::Breaker;
use super::threads::ThreadConnections;

/// The script: see its header.
const SCRIPT: &str = include_str!("gcra.lua");
/// Backoff of the first connection: from this…
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// …doubling up to this (also the reconnections' longest pause).
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Attempts of one reconnection: unbounded. A manager that gave up would keep its last
/// error and hand it to the next call (which then fails, even with Redis back, and only
/// triggers a new reconnection): one failed call per connection after every long outage.
/// While it retries, calls wait for it within the store's timeout, and the breaker keeps
/// all but its probes away.
const RECONNECT_ATTEMPTS: usize = usize::MAX;
/// Buckets of `hub_limit_store_seconds`: a round trip is expected well under 5 ms.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// How to reach the store (built by the caller from `[limits.store]`).
#[derive(Clone)]
pub(crate) struct StoreConfig {
    /// `redis://host:port[/db]` (or `redis+unix://`), without a password.
    pub url: String,
    /// The password (`AUTH`), if the server requires one.
    pub password: Option<String>,
    /// Bound of one call (round trip included); a late answer is a failure.
    pub timeout: Duration,
    /// Bound of one connection attempt.
    pub connect_timeout: Duration,
    /// Consecutive failures that open the circuit (≥ 1).
    pub breaker_failures: u32,
    /// How long the circuit stays open before one probe.
    pub breaker_open: Duration,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open", &self.breaker_open)
            .finish()
    }
}

/// The store's metrics (no labels with customer data).
#[derive(Clone)]
pub(crate) struct StoreMetrics {
    /// `hub_limit_store_seconds`: duration of the calls that went to Redis.
    pub seconds: Histogram,
    /// `hub_limit_store_errors_total{error="timeout|redis|not_connected|circuit_open"}`.
    pub errors: IntCounterVec,
    /// `hub_limit_store_circuit_open`: 1 while the breaker is open or half-open.
    pub circuit_open: IntGauge,
}

impl StoreMetrics {
    /// The families, not registered anywhere (tests; or [`register`](Self::register)
    /// them). Their names lack the `hub_` prefix, which the hub's registry adds.
    pub(crate) fn unregistered() -> prometheus::Result<StoreMetrics> {
        let seconds = HistogramOpts::new(
            "limit_store_seconds",
            "Duration of the shared limit store's calls to Redis",
        )
        .buckets(SECONDS_BUCKETS.to_vec());
        Ok(StoreMetrics {
            seconds: Histogram::with_opts(seconds)?,
            errors: IntCounterVec::new(
                Opts::new(
                    "limit_store_errors_total",
                    "Shared limit store calls that failed, by error",
                ),
                &["error"],
            )?,
            circuit_open: IntGauge::new(
                "limit_store_circuit_open",
                "1 while the shared limit store's circuit breaker is open",
            )?,
        })
    }

    /// Registers the three families with `registry`.
    pub(crate) fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.seconds.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.circuit_open.clone()))
    }
}

/// One limit of a request, checked and charged in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SharedItem {
    /// A GCRA quota: `burst` requests at once, replenished at `per_second` (0 counts as 1;
    /// a `burst` of 0 refuses everything); `want` cells asked for (1 for a request, a
    /// lease's batch for a leased class), as many granted as fit, at least 1.
    Gcra {
        key: String,
        per_second: u32,
        burst: u32,
        want: u32,
    },
    /// A count that refuses its `limit + 1`-th charge, kept until `expire_at_unix`
    /// (seconds; the end of the month).
    Count {
        key: String,
        limit: u32,
        expire_at_unix: i64,
    },
}

/// The state of one charged item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ItemState {
    /// Requests that would still be admitted now (GCRA), or `limit - count` (count).
    pub remaining: u32,
    /// Microseconds until the GCRA bucket is full again; 0 for a count.
    pub reset_us: u64,
    /// Cells charged (GCRA: between 1 and the item's `want`; a count: 1).
    pub granted: u32,
}

/// What the store decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreAnswer {
    /// Every item charged; per item in input order.
    Admitted(Vec<ItemState>),
    /// Nothing charged. `index`: the first refusing item (input order); `retry_after_us`:
    /// for GCRA the microseconds until one request fits, for a count those until it
    /// expires.
    Refused { index: usize, retry_after_us: u64 },
}

/// Why a call gave no answer (the caller applies its failure policy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreFailure {
    /// No answer within the timeout.
    #[error("the limit store did not answer in time")]
    Timeout,
    /// The circuit breaker is open: Redis was not asked.
    #[error("the limit store's circuit is open")]
    CircuitOpen,
    /// Not connected to Redis yet.
    #[error("not connected to the limit store yet")]
    NotConnected,
    /// Redis answered with an error, or the connection failed (a category and a code,
    /// never keys, values or the password).
    #[error("limit store: {0}")]
    Redis(String),
}

impl StoreFailure {
    /// The `error` label of `hub_limit_store_errors_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            StoreFailure::Timeout => "timeout",
            StoreFailure::CircuitOpen => "circuit_open",
            StoreFailure::NotConnected => "not_connected",
            StoreFailure::Redis(_) => "redis",
        }
    }
}

/// Why a store could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreSetupError {
    /// The store's connection thread could not be started.
    #[error("cannot start the limit store's connection thread: {0}")]
    Thread(std::io::Error),
    /// The URL is not a Redis URL this build supports (the URL is not repeated: it
    /// could hold a password by mistake).
    #[error("[limits.store] url: not a supported redis:// URL ({0})")]
    BadUrl(&'static str),
    /// The URL carries a password.
    #[error("[limits.store] url: must not hold a password (use password_file)")]
    PasswordInUrl,
}

/// The shared limit store (see the module's documentation). Dropping it stops the
/// background connection attempts and closes the connection.
pub(crate) struct SharedStore {
    connection: Arc<OnceLock<ConnectionManager>>,
    /// The worker threads' own connections (the shared one until a thread has its own).
    threads: ThreadConnections,
    /// Dropped with the store: ends the connection thread.
    _stop: tokio::sync::oneshot::Sender<()>,
    breaker: Breaker,
    script: Script,
    timeout: Duration,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the connection: its client's settings hold the password.
        f.debug_struct("SharedStore")
            .field("connected", &self.connection.get().is_some())
            .field("breaker", &self.breaker)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The redis client for `config`: the URL checked, the password added, RESP3 (Redis ≥ 6)
/// so that the connection manager hears of a lost connection and reconnects before the
/// next call has to fail on it.
fn client(config: &StoreConfig) -> Result<Client, StoreSetupError> {
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(|_| StoreSetupError::BadUrl("unparsable, or a scheme this build lacks"))?;
    if info.redis_settings().password().is_some() {
        return Err(StoreSetupError::PasswordInUrl);
    }
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let settings = match &config.password {
        Some(password) => settings.set_password(password),
        None => settings,
    };
    Client::open(info.set_redis_settings(settings))
        .map_err(|_| StoreSetupError::BadUrl("refused by the client"))
}

/// The connection manager's settings: connection attempts bounded by `connect_timeout`,
/// reconnections with a backoff of 50 ms doubling to 1 s, never given up. No response
/// timeout of its own:
/// [`SharedStore::run`] bounds the whole call (a second timer of the same length would
/// race it and turn some timeouts into I/O errors).
fn manager_config(config: &StoreConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(config.connect_timeout))
        .set_min_delay(CONNECT_BACKOFF_MIN)
        .set_max_delay(CONNECT_BACKOFF_MAX)
        .set_exponent_base(2.0)
        .set_number_of_retries(RECONNECT_ATTEMPTS)
}

/// A redis error as a category and a code: never its detail, which may quote a script's
/// values or, for some client errors, the connection's settings.
fn describe(e: &redis::RedisError) -> String {
    let category = e.category();
    if let Some(code) = e.code() {
        return format!("{category} {code}");
    }
    let cause = if e.is_connection_refusal() {
        ": connection refused"
    } else if e.is_timeout() {
        ": timed out"
    } else if e.is_connection_dropped() {
        ": connection lost"
    } else {
        ""
    };
    format!("{category}{cause}")
}

/// One connection attempt bounded by `timeout`, dropped at once: whether Redis takes
/// connections now. (A manager, which never gives up, would wait silently for as long
/// as Redis is away; this says why, for the log.)
async fn reachable(client: &Client, timeout: Duration) -> redis::RedisResult<()> {
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map(drop)
}

/// Connects until it succeeds, with a growing pause between attempts (each first checked
/// by [`reachable`] within `timeout`), then leaves the connection to the manager's own
/// reconnections.
async fn connect(
    client: Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
    slot: Arc<OnceLock<ConnectionManager>>,
) {
    let mut pause = CONNECT_BACKOFF_MIN;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        let made = match reachable(&client, timeout).await {
            Ok(()) => ConnectionManager::new_with_config(client.clone(), config.clone()).await,
            Err(e) => Err(e),
        };
        match made {
            Ok(mut manager) => {
                // Loaded now, the script's first request is one EVALSHA, not a NOSCRIPT
                // answer followed by a load (after a restart of Redis, that first request
                // still pays for the reload).
                if let Err(e) = Script::new(SCRIPT).load_async(&mut manager).await {
                    tracing::warn!(error = %describe(&e), "limit store: cannot preload the script");
                }
                let _ = slot.set(manager);
                tracing::info!(attempt, "limit store: connected to Redis");
                return;
            }
            Err(e) if attempt.is_power_of_two() => {
                tracing::warn!(attempt, error = %describe(&e), "limit store: cannot connect to Redis yet; retrying");
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(CONNECT_BACKOFF_MAX);
    }
}

/// Runs `connecting`, then keeps its runtime (which drives the connection) until `stopped`
/// fires or its sender is dropped.
fn spawn_connection_thread(
    connecting: impl std::future::Future<Output = ()> + Send + 'static,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), StoreSetupError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StoreSetupError::Thread)?;
    std::thread::Builder::new()
        .name("limits-store".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = connecting => {}
                    _ = &mut stopped => return,
                }
                let _ = stopped.await;
            });
        })
        .map(drop)
        .map_err(StoreSetupError::Thread)
}

impl SharedStore {
    /// A store for `config`. Never waits for Redis: it connects in the background and
    /// keeps trying until it has. Callable with or without a tokio runtime (the gateway
    /// compiles its configuration before its runtimes start): the connection lives on a
    /// thread of its own, with a one-thread runtime, until the store is dropped.
    pub(crate) fn start(
        config: &StoreConfig,
        metrics: StoreMetrics,
    ) -> Result<SharedStore, StoreSetupError> {
        let client = client(config)?;
        let threads = ThreadConnections::new(client.clone(), manager_config(config), SCRIPT);
        let connection = Arc::new(OnceLock::new());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let connecting = connect(
            client,
            manager_config(config),
            config.connect_timeout,
            connection.clone(),
        );
        spawn_connection_thread(connecting, stopped)?;
        metrics.circuit_open.set(0);
        Ok(SharedStore {
            connection,
            threads,
            _stop: stop,
            breaker: Breaker::new(config.breaker_failures, config.breaker_open),
            script: Script::new(SCRIPT),
            timeout: config.timeout,
            metrics,
        })
    }

    /// Whether the first connection has been made (reconnections are not reflected).
    #[cfg(test)]
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.get().is_some()
    }

    /// Checks every item and charges them all only if all pass, in one round trip.
    pub(crate) async fn run(&self, items: &[SharedItem]) -> Result<StoreAnswer, StoreFailure> {
        if items.is_empty() {
            return Ok(StoreAnswer::Admitted(Vec::new()));
        }
        let Some(mut connection) = self
            .threads
            .current()
            .or_else(|| self.connection.get().cloned())
        else {
            return Err(self.failed(StoreFailure::NotConnected));
        };
        let Some(permit) = self.breaker.admit() else {
            return Err(self.failed(StoreFailure::CircuitOpen));
        };
        let invocation = self.invocation(items);
        let started = Instant::now();
        let reply = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        let answer = match reply {
            Err(_elapsed) => Err(StoreFailure::Timeout),
            // A connection attempt that timed out, while the call waited for it.
            Ok(Err(e)) if e.is_timeout() => Err(StoreFailure::Timeout),
            Ok(Err(e)) => Err(StoreFailure::Redis(describe(&e))),
            Ok(Ok(values)) => parse(&values, items.len()),
        };
        match &answer {
            Ok(_) => permit.succeeded(),
            Err(_) => permit.failed(),
        }
        self.metrics
            .circuit_open
            .set(i64::from(self.breaker.is_open()));
        answer.map_err(|f| self.failed(f))
    }

    /// Counts a failure in the metrics and hands it back.
    fn failed(&self, failure: StoreFailure) -> StoreFailure {
        self.metrics
            .errors
            .with_label_values(&[failure.label()])
            .inc();
        failure
    }

    /// The script's call for `items`: their keys, four numbers each.
    fn invocation(&self, items: &[SharedItem]) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        for item in items {
            match item {
                SharedItem::Gcra {
                    key,
                    per_second,
                    burst,
                    want,
                } => {
                    let interval_us = (1_000_000 / (*per_second).max(1)).max(1);
                    let inv = invocation.key(key).arg(1).arg(interval_us).arg(*burst);
                    inv.arg((*want).max(1));
                }
                SharedItem::Count {
                    key,
                    limit,
                    expire_at_unix,
                } => {
                    let inv = invocation.key(key).arg(2).arg(*limit);
                    inv.arg(*expire_at_unix).arg(1);
                }
            }
        }
        invocation
    }

    /// Seconds a `503` should ask a client to wait while the store is failing: until the
    /// breaker's next probe, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.breaker.retry_after_secs()
    }
}

/// The script's flat reply for `count` items.
fn parse(values: &[i64], count: usize) -> Result<StoreAnswer, StoreFailure> {
    let unexpected = || StoreFailure::Redis("unexpected reply from the limit script".into());
    match values {
        [0, index, retry] => {
            let index = usize::try_from(*index)
                .ok()
                .filter(|i| *i < count)
                .ok_or_else(unexpected)?;
            Ok(StoreAnswer::Refused {
                index,
                retry_after_us: u64::try_from(*retry).unwrap_or(0),
            })
        }
        [1, rest @ ..] if rest.len() == 3 * count => Ok(StoreAnswer::Admitted(
            rest.chunks_exact(3)
                .map(|v| ItemState {
                    remaining: u32::try_from(v[0].max(0)).unwrap_or(u32::MAX),
                    reset_us: u64::try_from(v[1]).unwrap_or(0),
                    granted: u32::try_from(v[2].max(1)).unwrap_or(1),
                })
                .collect(),
        )),
        _ => Err(unexpected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The store is shared by the request path's threads, and its call is awaited there.
    const _: fn() = || {
        fn shared<T: Send + Sync>() {}
        shared::<SharedStore>();
    };

    #[allow(dead_code)]
    fn the_call_is_send<'a>(
        store: &'a SharedStore,
        items: &'a [SharedItem],
    ) -> impl std::future::Future<Output = Result<StoreAnswer, StoreFailure>> + Send + 'a {
        store.run(items)
    }

    #[test]
    fn replies_are_parsed_strictly() {
        assert_eq!(
            parse(&[1, 2, 300, 5, 0, 0, 1], 2),
            Ok(StoreAnswer::Admitted(vec![
                ItemState {
                    remaining: 2,
                    reset_us: 300,
                    granted: 5,
                },
                ItemState {
                    remaining: 0,
                    reset_us: 0,
                    granted: 1,
                },
            ]))
        );
        assert_eq!(
            parse(&[0, 1, 77], 2),
            Ok(StoreAnswer::Refused {
                index: 1,
                retry_after_us: 77
            })
        );
        for bad in [
            &[][..],
            &[1, 2, 3][..],
            &[1, 2, 3, 1, 4][..],
            &[0, 2, 1][..],
            &[0, -1, 1][..],
            &[2, 0, 0][..],
        ] {
            assert!(
                matches!(parse(bad, 2), Err(StoreFailure::Redis(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn setup_refuses_passwords_in_the_url_without_repeating_it() {
        let metrics = StoreMetrics::unregistered().expect("metrics");
        let mut config = StoreConfig {
            url: "redis://:hunter2@127.0.0.1:1".into(),
            password: Some("s3cret".into()),
            timeout: Duration::from_millis(5),
            connect_timeout: Duration::from_millis(100),
            breaker_failures: 3,
            breaker_open: Duration::from_secs(1),
        };
        let e = SharedStore::start(&config, metrics.clone()).expect_err("refused");
        assert!(matches!(e, StoreSetupError::PasswordInUrl));
        assert!(!e.to_string().contains("hunter2"));
        config.url = "http://hunter2@example".into();
        let e = SharedStore::start(&config, metrics.clone()).expect_err("refused");
        assert!(!e.to_string().contains("hunter2"));
        assert!(!format!("{config:?}").contains("s3cret"));
        config.url = "redis://127.0.0.1:1".into();
        let store = SharedStore::start(&config, metrics).expect("started");
        assert!(!format!("{store:?}").contains("s3cret"));
    }

    #[test]
    fn starts_without_a_runtime_and_never_waits_for_redis() {
        // The gateway compiles its configuration before its runtimes exist.
        let config = StoreConfig {
            url: "redis://127.0.0.1:1".into(),
            password: None,
            timeout: Duration::from_millis(5),
            connect_timeout: Duration::from_millis(100),
            breaker_failures: 3,
            breaker_open: Duration::from_secs(1),
        };
        let metrics = StoreMetrics::unregistered().expect("metrics");
        let store = SharedStore::start(&config, metrics).expect("started");
        assert!(!store.is_connected());
    }
}
