//! Row 16 at run time: the limits of one request, each class counted where `[limits.classes]`
//! says — in this process (`policy::limits::Limiter`, the monthly [`MonthlyCounter`]) or in
//! the shared store (Redis, one all-or-nothing script per request, [`store`]) — and, when
//! the store fails, each shared class's failure policy: `deny` (`503 limits_unavailable`),
//! `allow`, or `local` (in-process, the quota divided by the configured gateways).
//!
//! A `leased` class takes its cells from the store in batches ([`lease`]) and spends them
//! here; only a request that finds its lease spent or ended sends that class to the store,
//! in the same round trip as the request's `shared` classes.
//!
//! Order: in-process rate limits first (a refusal there costs no round trip), then the
//! leased cells held here, then the store's items in one round trip, then in-process
//! monthly counts (so a call refused by a rate limit never spends a month's call). A cell
//! of an in-process limit taken before a later limit refuses is not given back (GCRA has
//! no undo); leased cells are given back; the shared store's script is all-or-nothing.

mod breaker;
mod lease;
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

use arrayvec::ArrayVec;
use lease::Leases;
use plan::{Item, Items, Plan, Quota};
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
    /// `hub_limit_leases_total{class}`: batches of cells taken from the store (`leased`).
    pub(crate) leases: IntCounterVec,
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
            leases: IntCounterVec::new(
                prometheus::Opts::new(
                    "limit_leases_total",
                    "Batches of rate-limit cells leased from the shared store, by class",
                ),
                &["class"],
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
        registry.register(Box::new(self.leases.clone()))?;
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
    store: Option<Arc<SharedStore>>,
    leases: Arc<Leases>,
    keys: policy::limits::KeyNames,
    month: ArcSwapOption<MonthWindow>,
    clock: Arc<dyn Clock>,
    fallback_total: IntCounterVec,
    leases_total: IntCounterVec,
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
            Some(s) => Some(Arc::new(
                SharedStore::start(&store_config(s)?, metrics.store.clone())
                    .map_err(|e| LimitsError::Store(e.to_string()))?,
            )),
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
            leases: Arc::new(Leases::new(std::time::Duration::from_millis(
                settings.store.as_ref().map_or(0, |s| s.lease_ms),
            ))),
            month: ArcSwapOption::empty(),
            clock,
            fallback_total: metrics.fallback.clone(),
            leases_total: metrics.leases.clone(),
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
        let info = self.check_local_rates(&plan)?;
        let taken = self.take_leased(&plan);
        let rest = self.check_rest(&plan, &taken).await;
        if rest.is_err() {
            let now = std::time::Instant::now();
            for item in &taken.spent {
                self.leases.give_back(&item.lease_key(), now);
            }
        }
        let info = plan::tightest(plan::tightest(info, taken.info), rest?);
        Ok(info.unwrap_or(plan::UNLIMITED))
    }

    /// The store's items in one round trip, then the in-process monthly counts.
    async fn check_rest(&self, plan: &Plan, taken: &Taken) -> Result<Option<RateInfo>, Refusal> {
        let info = self.check_store(plan, &taken.missing).await?;
        let monthly = self.check_local_monthly(plan, plan.now)?;
        Ok(plan::tightest(info, monthly))
    }

    /// Spends a held cell of every leased item that has one; the others go to the store.
    fn take_leased(&self, plan: &Plan) -> Taken {
        let now = std::time::Instant::now();
        let mut taken = Taken::default();
        for (item, shape) in plan.leased() {
            match self.leases.take(&item.lease_key(), now, shape.cells) {
                Ok((spent, renew)) => {
                    if let Some(want) = renew {
                        self.renew(item, want);
                    }
                    let got = plan::leased_info(item, spent);
                    taken.info = plan::tightest(taken.info, Some(got));
                    taken.spent.push(*item);
                }
                Err(want) => taken.missing.push((*item, want)),
            }
        }
        taken
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

    /// Takes `want` cells for `item`'s lease ahead, on a task of its own: no request waits
    /// for it. A failure only lets the next request due ask again.
    fn renew(&self, item: &Item, want: u32) {
        let key = item.lease_key();
        let (Some(store), Ok(rt)) = (self.store.clone(), tokio::runtime::Handle::try_current())
        else {
            self.leases.renew_failed(&key);
            return;
        };
        let batch = [plan::store_item(self, item, want)];
        let (leases, total) = (self.leases.clone(), self.leases_total.clone());
        let class = item.class.name();
        rt.spawn(async move {
            let sent = std::time::Instant::now();
            match store.run(&batch).await {
                Ok(StoreAnswer::Admitted(states)) if states.len() == 1 => {
                    leases.renewed(key, &states[0], sent, std::time::Instant::now());
                    total.with_label_values(&[class]).inc();
                }
                _ => leases.renew_failed(&key),
            }
        });
    }

    /// The shared classes of `plan` and the `leases` to take (item, batch), in one round
    /// trip; on a store failure, each class's failure policy.
    async fn check_store(
        &self,
        plan: &Plan,
        leases: &[(Item, u32)],
    ) -> Result<Option<RateInfo>, Refusal> {
        let asked = plan.shared().map(|i| (*i, 1)).chain(leases.iter().copied());
        let (items, batch): (Items, Vec<_>) = asked
            .map(|(i, want)| (i, plan::store_item(self, &i, want)))
            .unzip();
        let (Some(store), false) = (&self.store, items.is_empty()) else {
            return Ok(None);
        };
        let sent = std::time::Instant::now();
        match store.run(&batch).await {
            Ok(StoreAnswer::Admitted(states)) => Ok(self.admitted(plan, &items, &states, sent)),
            Ok(StoreAnswer::Refused {
                index,
                retry_after_us,
            }) => Err(Refusal::Limited(plan::refused(
                &items,
                index,
                retry_after_us,
                plan.now,
            ))),
            Err(failure) => {
                tracing::debug!(%failure, "limits store failed: applying the failure policies");
                self.on_store_failure(store, &items)
            }
        }
    }

    /// What the store's admission advertises (its tightest item); leased items' batches
    /// are held for the requests to come.
    fn admitted(
        &self,
        plan: &Plan,
        items: &[Item],
        states: &[store::ItemState],
        sent: std::time::Instant,
    ) -> Option<RateInfo> {
        let now = std::time::Instant::now();
        items
            .iter()
            .zip(states)
            .map(|(item, st)| match item.place {
                plan::Place::Leased(_) => {
                    let spent = self.leases.grant(item.lease_key(), st, sent, now);
                    self.leases_total
                        .with_label_values(&[item.class.name()])
                        .inc();
                    plan::leased_info(item, spent)
                }
                _ => plan::admitted_one(item, st, plan.now),
            })
            .reduce(policy::limits::tighter)
    }

    fn on_store_failure(
        &self,
        store: &SharedStore,
        items: &[Item],
    ) -> Result<Option<RateInfo>, Refusal> {
        let denier = items.iter().find(|i| i.on_failure == OnFailure::Deny);
        let denies = denier.is_some();
        let mut info = None;
        for item in items {
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

    /// Forgets idle keys, ended leases and past months; call every few seconds.
    pub(crate) fn retain_recent(&self) {
        self.local.retain_recent();
        self.leases.retain_live(std::time::Instant::now());
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

/// The leased items of a request: those served by a held cell, those that go to the store.
#[derive(Default)]
struct Taken {
    /// Served from a lease (given back if the request is refused later).
    spent: Items,
    /// Without a live lease, with the batch to ask for in the store's round trip.
    missing: ArrayVec<(Item, u32), { plan::MAX_ITEMS }>,
    /// What the served ones advertise.
    info: Option<RateInfo>,
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
