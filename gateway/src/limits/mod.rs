//! Row 16 at run time: the limits of one request, each class counted where `[limits.classes]`
//! says — in this process (`policy::limits::Limiter`, the monthly [`MonthlyCounter`]) or in
//! the shared store (Redis, one all-or-nothing script per request, [`store`]) — and, when
//! the store fails, each shared class's failure policy: `deny` (`503 limits_unavailable`),
//! `allow`, or `local` (in-process, the quota divided by the configured gateways).
//!
//! Order: in-process rate limits first (a refusal there costs no round trip), then the
//! shared ones in one round trip, then in-process monthly counts (so a call refused by a
//! rate limit never spends a month's call). A cell of an in-process limit taken before a
//! later limit refuses is not given back (GCRA has no undo); the shared store's script is
//! all-or-nothing.

mod breaker;
mod plan;
pub(crate) mod store;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
mod threads;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use consent_cache::Bin;
use policy::limits::{
    LimitClass, LimitError, LimitSettings, Limited, Limiter, MonthWindow, MonthlyCounter,
    MonthlyQuotas, OnFailure, RateInfo,
};
use policy::route::RouteId;
use prometheus::IntCounterVec;

use plan::{Item, Plan, Quota};
use store::{SharedStore, StoreAnswer, StoreConfig, StoreMetrics};

/// What a request is limited as.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A consent route: per user, user × provider, consent × route, the monthly quota.
    Consent {
        /// The provider in the path.
        provider: Bin,
        /// The consent's id.
        consent_id: &'a str,
        /// The route.
        route: RouteId,
    },
    /// Open data: per user and per client IP.
    OpenData {
        /// The client's address.
        ip: IpAddr,
    },
}

/// Why the limits did not admit a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `429 rate_limited`.
    Limited(Limited),
    /// `503 limits_unavailable`: the store failed and this class of the request denies
    /// then; `retry_after_secs` is the store's next probe.
    Unavailable(Limited),
}

/// The wall clock monthly quotas follow (injectable: tests move it past a month's end).
pub(crate) trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// A problem with `[limits]` found while compiling it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LimitsError {
    /// The settings are inconsistent.
    #[error(transparent)]
    Settings(#[from] LimitError),
    /// The store's password file cannot be read.
    #[error("store.password_file: {0}")]
    PasswordFile(std::io::Error),
    /// The store client could not be set up.
    #[error("store: {0}")]
    Store(String),
}

/// Counters of the limits (process-wide, shared by every generation of [`Limits`]).
#[derive(Clone)]
pub(crate) struct LimitMetrics {
    /// The store's latency, errors and circuit.
    pub(crate) store: StoreMetrics,
    /// `hub_limit_failure_policy_total{class,policy}`: decisions taken by a failure policy.
    pub(crate) fallback: IntCounterVec,
}

impl LimitMetrics {
    /// New families, registered nowhere (tests).
    pub(crate) fn unregistered() -> prometheus::Result<LimitMetrics> {
        Ok(LimitMetrics {
            store: StoreMetrics::unregistered()?,
            fallback: IntCounterVec::new(
                prometheus::Opts::new(
                    "limit_failure_policy_total",
                    "Limit decisions taken by a failure policy while the shared store failed, by class and policy",
                ),
                &["class", "policy"],
            )?,
        })
    }

    /// The process's families (created on first use; the hub's registry adds them).
    pub(crate) fn global() -> &'static LimitMetrics {
        static GLOBAL: std::sync::OnceLock<LimitMetrics> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(|| {
            // Static definitions: a failure is a programming error found at start-up.
            #[allow(clippy::expect_used)]
            LimitMetrics::unregistered().expect("static metric definitions")
        })
    }

    /// Registers every family with `registry`.
    pub(crate) fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        self.store.register(registry)?;
        registry.register(Box::new(self.fallback.clone()))
    }
}

/// The limits of one `[limits]` configuration, with their counters; reused across reloads
/// while the section is unchanged.
pub(crate) struct Limits {
    settings: LimitSettings,
    local: Limiter,
    /// In-process limits with every quota divided by the gateways (`local` policy).
    fallback: Limiter,
    monthly: Option<MonthlyQuotas>,
    monthly_local: MonthlyCounter,
    monthly_fallback: MonthlyCounter,
    gateways: NonZeroU32,
    store: Option<SharedStore>,
    keys: policy::limits::KeyNames,
    month: ArcSwapOption<MonthWindow>,
    clock: Arc<dyn Clock>,
    fallback_total: IntCounterVec,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("shared", &self.store.is_some())
            .field("local", &self.local)
            .finish()
    }
}

impl Limits {
    /// Compiles `settings` on the system clock, counting into the process's metrics.
    pub(crate) fn new(settings: &LimitSettings) -> Result<Limits, LimitsError> {
        Limits::with(settings, LimitMetrics::global(), Arc::new(SystemClock))
    }

    /// Compiles `settings`; a store is connected in the background (never waited for).
    pub(crate) fn with(
        settings: &LimitSettings,
        metrics: &LimitMetrics,
        clock: Arc<dyn Clock>,
    ) -> Result<Limits, LimitsError> {
        settings.validate()?;
        let gateways = settings
            .store
            .as_ref()
            .map_or(NonZeroU32::MIN, |s| s.gateways);
        let store = match &settings.store {
            Some(s) => Some(
                SharedStore::start(&store_config(s)?, metrics.store.clone())
                    .map_err(|e| LimitsError::Store(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Limits {
            local: Limiter::new(settings)?,
            fallback: Limiter::new(&settings.divided(gateways))?,
            monthly: MonthlyQuotas::compile(&settings.monthly)?,
            monthly_local: MonthlyCounter::default(),
            monthly_fallback: MonthlyCounter::default(),
            gateways,
            keys: policy::limits::KeyNames::new(
                settings
                    .store
                    .as_ref()
                    .map_or("hub", |s| s.key_prefix.as_str()),
            ),
            store,
            month: ArcSwapOption::empty(),
            clock,
            fallback_total: metrics.fallback.clone(),
            settings: settings.clone(),
        })
    }

    /// The settings these limits were compiled from (the key of their reuse).
    pub(crate) fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Checks and counts one request: what to advertise, or why it is refused.
    pub(crate) async fn check(&self, user: Bin, target: Target<'_>) -> Result<RateInfo, Refusal> {
        let now = self.clock.now_unix();
        let plan = Plan::of(self, user, target, now);
        let mut info = self.check_local_rates(&plan)?;
        info = plan::tightest(info, self.check_shared(&plan).await?);
        let monthly = self.check_local_monthly(&plan, now)?;
        Ok(plan::tightest(info, monthly).unwrap_or(plan::UNLIMITED))
    }

    fn check_local_rates(&self, plan: &Plan) -> Result<Option<RateInfo>, Refusal> {
        let mut info = None;
        for item in plan.local().filter(|i| i.class != LimitClass::Monthly) {
            let got = self
                .local_check(&self.local, item)
                .map_err(Refusal::Limited)?;
            info = plan::tightest(info, Some(got));
        }
        Ok(info)
    }

    fn check_local_monthly(&self, plan: &Plan, now: i64) -> Result<Option<RateInfo>, Refusal> {
        let mut info = None;
        for item in plan.local().filter(|i| i.class == LimitClass::Monthly) {
            let got = month_take(&self.monthly_local, item, 1, now).map_err(Refusal::Limited)?;
            info = plan::tightest(info, Some(got));
        }
        Ok(info)
    }

    /// The shared classes of `plan` in one round trip; on a store failure, each class's
    /// failure policy.
    async fn check_shared(&self, plan: &Plan) -> Result<Option<RateInfo>, Refusal> {
        let (Some(store), false) = (&self.store, plan.shared_items.is_empty()) else {
            return Ok(None);
        };
        match store.run(&plan.shared_items).await {
            Ok(StoreAnswer::Admitted(states)) => Ok(plan::admitted(plan, &states)),
            Ok(StoreAnswer::Refused {
                index,
                retry_after_us,
            }) => Err(Refusal::Limited(plan::refused(plan, index, retry_after_us))),
            Err(failure) => {
                tracing::debug!(%failure, "limits store failed: applying the failure policies");
                self.on_store_failure(store, plan)
            }
        }
    }

    fn on_store_failure(
        &self,
        store: &SharedStore,
        plan: &Plan,
    ) -> Result<Option<RateInfo>, Refusal> {
        let denier = plan.shared().find(|i| i.on_failure == OnFailure::Deny);
        let denies = denier.is_some();
        let mut info = None;
        for item in plan.shared() {
            let policy = if denies {
                OnFailure::Deny
            } else {
                item.on_failure
            };
            self.fallback_total
                .with_label_values(&[item.class.name(), policy_name(policy)])
                .inc();
            if policy == OnFailure::Local {
                let got = self.fallback_check(item).map_err(Refusal::Limited)?;
                info = plan::tightest(info, Some(got));
            }
        }
        match denier {
            Some(item) => Err(Refusal::Unavailable(plan::unavailable(
                item,
                store.retry_after_secs(),
            ))),
            None => Ok(info),
        }
    }

    fn fallback_check(&self, item: &Item) -> Result<RateInfo, Limited> {
        match item.quota {
            Quota::Month { .. } => month_take(
                &self.monthly_fallback,
                item,
                self.gateways.get(),
                self.clock.now_unix(),
            ),
            Quota::Gcra(_) => self.local_check(&self.fallback, item),
        }
    }

    fn local_check(&self, limiter: &Limiter, item: &Item) -> Result<RateInfo, Limited> {
        match (item.class, &item.key) {
            (LimitClass::User, _) => limiter.check_user(item.user),
            (LimitClass::UserProvider, plan::Key::Provider(p)) => {
                limiter.check_user_provider(item.user, *p)
            }
            (LimitClass::Ip, plan::Key::Ip(ip)) => limiter.check_ip(*ip),
            (_, plan::Key::ConsentRoute(h)) => limiter.check_consent_route_key(*h),
            // Plans pair each class with its key kind; anything else counts per user.
            _ => limiter.check_user(item.user),
        }
    }

    /// The calendar month containing `now` (cached until it ends).
    fn month_at(&self, quotas: &MonthlyQuotas, now: i64) -> Option<MonthWindow> {
        if let Some(w) = self.month.load().as_deref().filter(|w| w.contains(now)) {
            return Some(*w);
        }
        let w = quotas.window(now)?;
        self.month.store(Some(Arc::new(w)));
        Some(w)
    }

    /// Forgets idle keys and past months; call every few seconds.
    pub(crate) fn retain_recent(&self) {
        self.local.retain_recent();
        self.fallback.retain_recent();
        if let Some(w) = self
            .monthly
            .as_ref()
            .and_then(|q| self.month_at(q, self.clock.now_unix()))
        {
            self.monthly_local.retain_month(w.key);
            self.monthly_fallback.retain_month(w.key);
        }
    }
}

/// Takes one call of a monthly item from `counter`, its limit divided by `share`.
fn month_take(
    counter: &MonthlyCounter,
    item: &Item,
    share: u32,
    now: i64,
) -> Result<RateInfo, Limited> {
    let Quota::Month { limit, window } = item.quota else {
        return Ok(plan::UNLIMITED);
    };
    let limit = (limit / share.max(1)).max(1);
    let plan::Key::ConsentRoute(hash) = item.key else {
        return Ok(plan::UNLIMITED);
    };
    match counter.take(window.key, hash, limit) {
        Ok(remaining) => Ok(RateInfo::monthly(limit, remaining, &window, now)),
        Err(()) => Err(Limited::monthly(limit, &window, now)),
    }
}

fn policy_name(p: OnFailure) -> &'static str {
    match p {
        OnFailure::Deny => "deny",
        OnFailure::Allow => "allow",
        OnFailure::Local => "local",
    }
}

fn store_config(s: &policy::limits::StoreSettings) -> Result<StoreConfig, LimitsError> {
    let password = match &s.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(LimitsError::PasswordFile)?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        ),
        None => None,
    };
    Ok(StoreConfig {
        url: s.url.clone(),
        password,
        timeout: std::time::Duration::from_millis(s.timeout_ms),
        connect_timeout: std::time::Duration::from_millis(s.connect_timeout_ms),
        breaker_failures: s.breaker_failures.get(),
        breaker_open: std::time::Duration::from_millis(s.breaker_open_ms),
    })
}
