//! The `[limits]` section as data: the GCRA quotas of each limit class, per-participant
//! overrides, the shared store (Redis) and, per class, whether it is counted in-process or
//! in the store and what happens when the store fails; the calendar-month quotas per
//! consent × endpoint. Parsed strictly (unknown keys are errors); checked by
//! [`LimitSettings::validate`]. No I/O here: the gateway connects to the store.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;

use consent_cache::Bin;
use governor::Quota;
use serde::{Deserialize, Serialize};

use crate::route::RouteId;

/// One GCRA quota: `burst` requests at once, replenished at `per_second` per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Sustained rate (requests per second, ≥ 1).
    pub per_second: NonZeroU32,
    /// Burst size (≥ 1).
    pub burst: NonZeroU32,
}

impl QuotaSettings {
    /// A quota; `None` if either number is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        Some(QuotaSettings {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }

    pub(crate) fn quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }

    /// This quota shared by `n` processes: both numbers divided by `n`, rounded down and
    /// never below 1 (the `local` failure policy's share of one gateway).
    pub fn divided(self, n: NonZeroU32) -> QuotaSettings {
        let div = |v: NonZeroU32| NonZeroU32::new(v.get() / n.get()).unwrap_or(NonZeroU32::MIN);
        QuotaSettings {
            per_second: div(self.per_second),
            burst: div(self.burst),
        }
    }
}

/// How a `leased` quota is taken from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseShape {
    /// The burst the store charges leases against: the quota's burst less the cells
    /// that `lease_ms` of lag can add.
    pub burst: u32,
    /// Cells asked for by one lease (the store grants fewer when fewer fit, at least 1).
    pub cells: u32,
}

impl QuotaSettings {
    /// The lease of this quota when cells may be spent up to `lease_ms` after the store
    /// charged them, `gateways` sharing it; `None` when the burst is too small for that lag.
    ///
    /// Why it is never over the limit: every admitted request spends a cell the store
    /// charged, at most `L = lease_ms` after the charge. The cells spent in any window of
    /// length `w` were therefore charged within a window of length `w + L`, and the store's
    /// GCRA (interval `T = 1/per_second`) charges at most `burst' + (w + L)/T` cells in such
    /// a window. With `burst' = burst - ceil(L/T)` that is at most `burst + w/T`: exactly
    /// the quota's own bound. A lease asks for `L/T` cells (what the quota yields in `L`),
    /// at most a `2 × gateways`-th of `burst'` so that one gateway cannot hold them all,
    /// and at least 1.
    pub fn lease(self, lease_ms: u64, gateways: NonZeroU32) -> Option<LeaseShape> {
        let milli_cells = u64::from(self.per_second.get()) * lease_ms;
        let reserve = milli_cells.div_ceil(1000);
        let burst = u64::from(self.burst.get())
            .checked_sub(reserve)
            .filter(|b| *b >= 1)?;
        let cap = (burst / (2 * u64::from(gateways.get()))).max(1);
        let cells = (milli_cells / 1000).clamp(1, cap);
        Some(LeaseShape {
            burst: u32::try_from(burst).ok()?,
            cells: u32::try_from(cells).ok()?,
        })
    }
}

/// One participant's own quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    /// The participant (API user).
    pub participant: Bin,
    /// Replaces `per_user` for it.
    #[serde(default)]
    pub per_user: Option<QuotaSettings>,
    /// Replaces `per_user_provider` for it.
    #[serde(default)]
    pub per_user_provider: Option<QuotaSettings>,
}

/// Rate-limit configuration. Every field is optional in a config file; the defaults are
/// per user 200/s (burst 400), per user × provider 100/s (burst 200), per consent × route
/// 10/s (burst 20), per IP on open data 20/s (burst 40), no overrides, no shared store
/// (every class in-process), no monthly quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Per API user, all providers and routes together.
    pub per_user: QuotaSettings,
    /// Per API user and provider.
    pub per_user_provider: QuotaSettings,
    /// Per consent and route.
    pub per_consent_route: QuotaSettings,
    /// Per client IP (/64 for IPv6) on open data.
    pub per_ip_open_data: QuotaSettings,
    /// Per-participant quotas for the per-user kinds.
    pub overrides: Vec<LimitOverride>,
    /// The shared store; absent: every class is counted in-process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSettings>,
    /// Per class: counted where, and what to do when the store fails.
    pub classes: ClassSettings,
    /// Calendar-month quotas per consent × endpoint.
    #[serde(skip_serializing_if = "MonthlySettings::is_empty")]
    pub monthly: MonthlySettings,
}

pub(crate) const fn q(per_second: u32, burst: u32) -> QuotaSettings {
    // Only called with non-zero literals.
    match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
        (Some(per_second), Some(burst)) => QuotaSettings { per_second, burst },
        _ => QuotaSettings {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::MIN,
        },
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            per_user: q(200, 400),
            per_user_provider: q(100, 200),
            per_consent_route: q(10, 20),
            per_ip_open_data: q(20, 40),
            overrides: Vec::new(),
            store: None,
            classes: ClassSettings::default(),
            monthly: MonthlySettings::default(),
        }
    }
}

/// `[limits.store]`: the Redis server the gateways share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `redis://host:port[/db]`; no password in it (use `password_file`).
    pub url: String,
    /// A file holding the password (`AUTH`), read at load time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// One round trip's bound in milliseconds; a later answer is a failure (default 5).
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Bound on (re)connecting, in milliseconds (default 1000).
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How many gateways share the store: the `local` failure policy divides each quota
    /// by it (default 1).
    #[serde(default = "defaults::one")]
    pub gateways: NonZeroU32,
    /// Consecutive failures that open the circuit (default 3).
    #[serde(default = "defaults::breaker_failures")]
    pub breaker_failures: NonZeroU32,
    /// How long an open circuit sends nothing to the store before one probe, in
    /// milliseconds (default 1000).
    #[serde(default = "defaults::breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// The prefix of every key (default `hub`), so several hubs can share a server.
    #[serde(default = "defaults::key_prefix")]
    pub key_prefix: String,
    /// `leased` classes: how long, in milliseconds, cells taken from the store may be
    /// spent in this process after they were charged (default 50, 1–1000). Each leased
    /// quota's store burst is lowered by the cells this lag could add (see
    /// [`QuotaSettings::lease`]).
    #[serde(default = "defaults::lease_ms")]
    pub lease_ms: u64,
}

mod defaults {
    use std::num::NonZeroU32;

    pub(super) fn timeout_ms() -> u64 {
        5
    }
    pub(super) fn connect_timeout_ms() -> u64 {
        1000
    }
    pub(super) fn one() -> NonZeroU32 {
        NonZeroU32::MIN
    }
    pub(super) fn breaker_failures() -> NonZeroU32 {
        NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN)
    }
    pub(super) fn breaker_open_ms() -> u64 {
        1000
    }
    pub(super) fn key_prefix() -> String {
        "hub".to_string()
    }
    pub(super) fn lease_ms() -> u64 {
        50
    }
}

impl StoreSettings {
    /// Settings for `url` with every default.
    pub fn new(url: impl Into<String>) -> StoreSettings {
        StoreSettings {
            url: url.into(),
            password_file: None,
            timeout_ms: defaults::timeout_ms(),
            connect_timeout_ms: defaults::connect_timeout_ms(),
            gateways: defaults::one(),
            breaker_failures: defaults::breaker_failures(),
            breaker_open_ms: defaults::breaker_open_ms(),
            key_prefix: defaults::key_prefix(),
            lease_ms: defaults::lease_ms(),
        }
    }
}

/// Where a limit class is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In this process (each gateway counts alone).
    Local,
    /// In the shared store: one round trip per request for all shared classes.
    Shared,
    /// In the shared store, taken in small batches: a batch of cells is charged in the
    /// store (with the other store items of the request, all-or-nothing) and spent in
    /// this process within `[limits.store] lease_ms`; unspent cells expire. Never over
    /// the limit: see [`QuotaSettings::lease`].
    Leased,
}

/// What a shared class does when the store is slow, gone or its circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse the request: `503 limits_unavailable` with `Retry-After`.
    Deny,
    /// Let the request through uncounted by this class.
    Allow,
    /// Count it in-process with the quota divided by `[limits.store] gateways`.
    #[default]
    Local,
}

/// One class's mode and failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassPolicy {
    /// Default: `shared` when `[limits.store]` is set, else `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Default: `local`.
    pub on_failure: OnFailure,
}

/// The limit classes, each with its mode and failure policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassSettings {
    /// Per API user.
    pub user: ClassPolicy,
    /// Per API user × provider.
    pub user_provider: ClassPolicy,
    /// Per consent × route.
    pub consent_route: ClassPolicy,
    /// Per client IP on open data.
    pub ip: ClassPolicy,
    /// Calendar-month quotas.
    pub monthly: ClassPolicy,
}

/// A limit class (a `[limits.classes]` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitClass {
    /// Per API user.
    User,
    /// Per API user × provider.
    UserProvider,
    /// Per consent × route.
    ConsentRoute,
    /// Per client IP on open data.
    Ip,
    /// Calendar-month quotas per consent × endpoint.
    Monthly,
}

impl LimitClass {
    /// Every class.
    pub const ALL: [LimitClass; 5] = [
        LimitClass::User,
        LimitClass::UserProvider,
        LimitClass::ConsentRoute,
        LimitClass::Ip,
        LimitClass::Monthly,
    ];

    /// The `[limits.classes]` key, also the metric label.
    pub const fn name(self) -> &'static str {
        match self {
            LimitClass::User => "user",
            LimitClass::UserProvider => "user_provider",
            LimitClass::ConsentRoute => "consent_route",
            LimitClass::Ip => "ip",
            LimitClass::Monthly => "monthly",
        }
    }
}

impl ClassSettings {
    /// Every class's policy, to set them all at once.
    pub fn all_mut(&mut self) -> [&mut ClassPolicy; 5] {
        [
            &mut self.user,
            &mut self.user_provider,
            &mut self.consent_route,
            &mut self.ip,
            &mut self.monthly,
        ]
    }

    /// The class's policy as written.
    pub fn of(&self, class: LimitClass) -> ClassPolicy {
        match class {
            LimitClass::User => self.user,
            LimitClass::UserProvider => self.user_provider,
            LimitClass::ConsentRoute => self.consent_route,
            LimitClass::Ip => self.ip,
            LimitClass::Monthly => self.monthly,
        }
    }
}

/// A route that a monthly quota can cap; open data is not one (it is never counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CappedRoute {
    /// `GET …/accounts`
    Accounts,
    /// `GET …/accounts/{account_id}`
    Account,
    /// `GET …/accounts/{account_id}/balances`
    Balances,
    /// `GET …/accounts/{account_id}/transactions`
    Transactions,
}

impl CappedRoute {
    /// The capped route of `route`; `None` for open data.
    pub const fn of(route: RouteId) -> Option<CappedRoute> {
        match route {
            RouteId::Accounts => Some(CappedRoute::Accounts),
            RouteId::Account => Some(CappedRoute::Account),
            RouteId::Balances => Some(CappedRoute::Balances),
            RouteId::Transactions => Some(CappedRoute::Transactions),
            RouteId::OpenData => None,
        }
    }
}

/// A provider's own monthly tiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderMonthly {
    /// The provider.
    pub provider: Bin,
    /// Calls per consent per calendar month, by route; these replace the default routes'
    /// values for this provider (a route not listed keeps the default).
    pub routes: BTreeMap<CappedRoute, u32>,
}

/// `[limits.monthly]`: calls per consent × endpoint per calendar month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonthlySettings {
    /// The IANA time zone whose calendar months count (default `UTC`).
    pub time_zone: String,
    /// Calls per consent per month, by route; a route not listed is not capped.
    pub routes: BTreeMap<CappedRoute, u32>,
    /// Providers' own tiers.
    pub providers: Vec<ProviderMonthly>,
}

impl Default for MonthlySettings {
    fn default() -> Self {
        MonthlySettings {
            time_zone: "UTC".to_string(),
            routes: BTreeMap::new(),
            providers: Vec::new(),
        }
    }
}

impl MonthlySettings {
    /// No route is capped for anyone.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.providers.is_empty()
    }
}

/// Settings that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Two overrides for one participant.
    #[error("rate-limit override for participant {0} is listed twice")]
    DuplicateOverride(Bin),
    /// A class is `shared` but no store is configured.
    #[error("classes.{0}: mode \"shared\" needs [limits.store]")]
    SharedWithoutStore(&'static str),
    /// The monthly time zone is not in the time-zone database.
    #[error("monthly.time_zone: unknown time zone {0:?}")]
    UnknownTimeZone(String),
    /// A monthly quota of 0 calls.
    #[error("monthly: a quota of 0 calls for {0:?} (leave the route out to not cap it)")]
    ZeroMonthlyQuota(CappedRoute),
    /// Two monthly entries for one provider.
    #[error("monthly.providers: provider {0} is listed twice")]
    DuplicateMonthlyProvider(Bin),
    /// The store URL is not a `redis://` URL or carries a password.
    #[error("store.url: {0}")]
    StoreUrl(&'static str),
    /// A class is `leased` but no store is configured.
    #[error("classes.{0}: mode \"leased\" needs [limits.store]")]
    LeasedWithoutStore(&'static str),
    /// Monthly quotas cannot be leased.
    #[error("classes.monthly: mode \"leased\" is not supported (a month's unspent leased calls would be lost); use \"shared\" or \"local\"")]
    MonthlyLeased,
    /// A leased quota's burst is too small for the lease's lag.
    #[error("classes.{class}: mode \"leased\" needs burst > per_second × lease_ms / 1000 (burst {burst}, per_second {per_second}, lease_ms {lease_ms}); lower [limits.store] lease_ms, raise the burst or use mode \"shared\"")]
    LeaseTooLong {
        /// The class.
        class: &'static str,
        /// The quota's burst.
        burst: u32,
        /// The quota's rate.
        per_second: u32,
        /// The store's `lease_ms`.
        lease_ms: u64,
    },
    /// `lease_ms` out of range.
    #[error("store.lease_ms: {0} is out of range (1–1000)")]
    LeaseMs(u64),
}

impl LimitSettings {
    /// The class's mode, its default resolved.
    pub fn mode(&self, class: LimitClass) -> Mode {
        match (self.classes.of(class).mode, &self.store) {
            (Some(m), _) => m,
            (None, Some(_)) => Mode::Shared,
            (None, None) => Mode::Local,
        }
    }

    /// The per-user quota of `user` (its override, or the default).
    pub fn user_quota(&self, user: Bin) -> QuotaSettings {
        self.override_of(user)
            .and_then(|o| o.per_user)
            .unwrap_or(self.per_user)
    }

    /// The per-user × provider quota of `user` (its override, or the default).
    pub fn user_provider_quota(&self, user: Bin) -> QuotaSettings {
        self.override_of(user)
            .and_then(|o| o.per_user_provider)
            .unwrap_or(self.per_user_provider)
    }

    fn override_of(&self, user: Bin) -> Option<&LimitOverride> {
        self.overrides.iter().find(|o| o.participant == user)
    }

    /// Every GCRA quota (overrides too) divided by `n`: one gateway's share under the
    /// `local` failure policy.
    pub fn divided(&self, n: NonZeroU32) -> LimitSettings {
        let d = |q: QuotaSettings| q.divided(n);
        LimitSettings {
            per_user: d(self.per_user),
            per_user_provider: d(self.per_user_provider),
            per_consent_route: d(self.per_consent_route),
            per_ip_open_data: d(self.per_ip_open_data),
            overrides: self
                .overrides
                .iter()
                .map(|o| LimitOverride {
                    participant: o.participant,
                    per_user: o.per_user.map(d),
                    per_user_provider: o.per_user_provider.map(d),
                })
                .collect(),
            ..self.clone()
        }
    }

    /// Checks what serde cannot: overrides and monthly providers listed once, no shared
    /// class without a store, a plain `redis://` URL without a password in it, no
    /// monthly quota of 0 (the time zone is checked where it is compiled).
    pub fn validate(&self) -> Result<(), LimitError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(o) = self.overrides.iter().find(|o| !seen.insert(o.participant)) {
            return Err(LimitError::DuplicateOverride(o.participant));
        }
        let named = |mode| {
            LimitClass::ALL
                .into_iter()
                .find(|c| self.classes.of(*c).mode == Some(mode))
        };
        if self.store.is_none() {
            if let Some(c) = named(Mode::Shared) {
                return Err(LimitError::SharedWithoutStore(c.name()));
            }
            if let Some(c) = named(Mode::Leased) {
                return Err(LimitError::LeasedWithoutStore(c.name()));
            }
        }
        if let Some(store) = &self.store {
            check_store_url(&store.url)?;
            self.validate_leases(store)?;
        }
        self.validate_monthly()
    }

    /// The GCRA quotas of `class` (overrides too).
    fn quotas_of(&self, class: LimitClass) -> Vec<QuotaSettings> {
        let o = &self.overrides;
        match class {
            LimitClass::User => std::iter::once(self.per_user)
                .chain(o.iter().filter_map(|o| o.per_user))
                .collect(),
            LimitClass::UserProvider => std::iter::once(self.per_user_provider)
                .chain(o.iter().filter_map(|o| o.per_user_provider))
                .collect(),
            LimitClass::ConsentRoute => vec![self.per_consent_route],
            LimitClass::Ip => vec![self.per_ip_open_data],
            LimitClass::Monthly => Vec::new(),
        }
    }

    fn validate_leases(&self, store: &StoreSettings) -> Result<(), LimitError> {
        if !(1..=1000).contains(&store.lease_ms) {
            return Err(LimitError::LeaseMs(store.lease_ms));
        }
        if self.mode(LimitClass::Monthly) == Mode::Leased {
            return Err(LimitError::MonthlyLeased);
        }
        for class in LimitClass::ALL {
            if self.mode(class) != Mode::Leased {
                continue;
            }
            let short = self
                .quotas_of(class)
                .into_iter()
                .find(|q| q.lease(store.lease_ms, store.gateways).is_none());
            if let Some(q) = short {
                return Err(LimitError::LeaseTooLong {
                    class: class.name(),
                    burst: q.burst.get(),
                    per_second: q.per_second.get(),
                    lease_ms: store.lease_ms,
                });
            }
        }
        Ok(())
    }

    fn validate_monthly(&self) -> Result<(), LimitError> {
        let m = &self.monthly;
        let tiers = m
            .routes
            .iter()
            .chain(m.providers.iter().flat_map(|p| &p.routes));
        if let Some((route, _)) = tiers.into_iter().find(|(_, n)| **n == 0) {
            return Err(LimitError::ZeroMonthlyQuota(*route));
        }
        let mut seen = std::collections::HashSet::new();
        match m.providers.iter().find(|p| !seen.insert(p.provider)) {
            Some(p) => Err(LimitError::DuplicateMonthlyProvider(p.provider)),
            None => Ok(()),
        }
    }
}

fn check_store_url(url: &str) -> Result<(), LimitError> {
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(LimitError::StoreUrl("must start with redis://"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(LimitError::StoreUrl(
            "credentials in the URL are refused; use password_file",
        ));
    }
    if authority.is_empty() {
        return Err(LimitError::StoreUrl("no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LimitSettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn store_classes_and_monthly_parse_with_their_defaults() {
        let s = parse(
            r#"
            [store]
            url = "redis://127.0.0.1:6379"
            gateways = 3
            [classes]
            consent_route = { on_failure = "deny" }
            ip = { mode = "local" }
            [monthly]
            time_zone = "Asia/Almaty"
            routes = { balances = 120 }
            [[monthly.providers]]
            provider = "990340000011"
            routes = { transactions = 4 }
            "#,
        );
        let store = s.store.as_ref().unwrap();
        assert_eq!((store.timeout_ms, store.gateways.get()), (5, 3));
        assert_eq!(store.breaker_failures.get(), 3);
        assert_eq!(s.mode(LimitClass::User), Mode::Shared);
        assert_eq!(s.mode(LimitClass::Ip), Mode::Local);
        assert_eq!(s.classes.consent_route.on_failure, OnFailure::Deny);
        assert_eq!(s.classes.user.on_failure, OnFailure::Local);
        assert_eq!(s.monthly.routes[&CappedRoute::Balances], 120);
        s.validate().unwrap();
        assert_eq!(LimitSettings::default().mode(LimitClass::User), Mode::Local);
    }

    #[test]
    fn what_serde_cannot_see_is_refused() {
        let shared_alone = parse("[classes]\nuser = { mode = \"shared\" }");
        assert_eq!(
            shared_alone.validate(),
            Err(LimitError::SharedWithoutStore("user"))
        );
        let zero = parse("[monthly]\nroutes = { accounts = 0 }");
        assert_eq!(
            zero.validate(),
            Err(LimitError::ZeroMonthlyQuota(CappedRoute::Accounts))
        );
        for url in ["http://127.0.0.1", "redis://:pw@127.0.0.1", "redis://"] {
            let s = LimitSettings {
                store: Some(StoreSettings::new(url)),
                ..LimitSettings::default()
            };
            assert!(
                matches!(s.validate(), Err(LimitError::StoreUrl(_))),
                "{url}"
            );
        }
        // Open data cannot be capped, and unknown keys are errors.
        assert!(toml::from_str::<LimitSettings>("[monthly]\nroutes = { open-data = 5 }").is_err());
        assert!(toml::from_str::<LimitSettings>("[store]\nurl = \"redis://h\"\nttl = 1").is_err());
        assert!(
            toml::from_str::<LimitSettings>("[classes]\nuser = { mode = \"remote\" }").is_err()
        );
    }

    #[test]
    fn leased_classes_are_checked() {
        let leased = |extra: &str| {
            parse(&format!(
                "[store]\nurl = \"redis://h\"\n{extra}\n[classes]\nuser = {{ mode = \"leased\" }}"
            ))
        };
        leased("").validate().unwrap();
        assert_eq!(leased("").store.unwrap().lease_ms, 50);
        assert_eq!(
            leased("lease_ms = 0").validate(),
            Err(LimitError::LeaseMs(0))
        );
        // 500/s for 1 s of lag is 500 cells: a burst of 400 leaves none.
        let mut long = leased("lease_ms = 1000");
        long.validate().unwrap();
        long.per_user = q(500, 400);
        assert!(matches!(
            long.validate(),
            Err(LimitError::LeaseTooLong { class: "user", .. })
        ));
        let alone = parse("[classes]\nip = { mode = \"leased\" }");
        assert_eq!(alone.validate(), Err(LimitError::LeasedWithoutStore("ip")));
        let monthly =
            parse("[store]\nurl = \"redis://h\"\n[classes]\nmonthly = { mode = \"leased\" }");
        assert_eq!(monthly.validate(), Err(LimitError::MonthlyLeased));
        // An override's quota is checked too.
        let mut s = leased("lease_ms = 100");
        s.validate().unwrap();
        s.overrides.push(LimitOverride {
            participant: Bin::parse("990340000011").unwrap(),
            per_user: Some(q(100, 10)),
            per_user_provider: None,
        });
        assert!(matches!(
            s.validate(),
            Err(LimitError::LeaseTooLong { burst: 10, .. })
        ));
    }

    #[test]
    fn a_lease_lowers_the_burst_by_its_lag_and_takes_small_batches() {
        let one = NonZeroU32::MIN;
        let three = NonZeroU32::new(3).unwrap();
        // 10,000/s for 20 ms: 200 cells of lag, a batch of 200.
        let l = q(10_000, 20_000).lease(20, one).unwrap();
        assert_eq!((l.burst, l.cells), (19_800, 200));
        // A batch is at most a sixth of the burst with three gateways.
        let l = q(10_000, 1_000).lease(20, three).unwrap();
        assert_eq!((l.burst, l.cells), (800, 133));
        // Slow quotas lease one cell at a time and lose one cell of burst.
        let l = q(10, 20).lease(20, three).unwrap();
        assert_eq!((l.burst, l.cells), (19, 1));
        assert_eq!(q(1_000, 20).lease(20, one), None);
    }

    #[test]
    fn a_divided_quota_never_reaches_zero() {
        let three = NonZeroU32::new(3).unwrap();
        assert_eq!(q(10, 20).divided(three), q(3, 6));
        assert_eq!(q(1, 2).divided(three), q(1, 1));
    }
}
