//! Rate limits (contract §6 row 16) with `governor`'s GCRA, and the values of the
//! `RateLimit-Policy` / `RateLimit` header fields (draft-ietf-httpapi-ratelimit-headers-09)
//! and `Retry-After`.
//!
//! The in-process [`Limiter`] (each gateway counts alone; the shared store, which the
//! gateway runs, uses the same settings, [`KeyNames`] and header values). Four keyed
//! limits: per API user, per API user × provider, per consent × route (the key is a 128-bit
//! hash of the consent id and route, so keys stay fixed-size whatever the consent id), and
//! per client IP on open data (IPv6 clients are keyed by their /64, since
//! one host usually owns a whole /64; IPv4-mapped IPv6 counts as IPv4). Participants can have
//! their own per-user and per-user × provider quotas.
//!
//! Choices:
//!
//! * Limits are checked in order user → user × provider → consent × route (open data:
//!   user → IP); the first refusal answers. A cell taken by an earlier limit is not given
//!   back when a later one refuses (GCRA has no undo; the over-count is at most one cell).
//! * A GCRA quota of `burst` cells replenished at `per_second` is advertised as
//!   `q=burst`, `w=ceil(burst / per_second)` seconds.
//! * On success the headers describe the limit with the fewest remaining cells;
//!   `r` is its remaining burst capacity and `t` the seconds until it is full again.
//!   On refusal `r=0` and `t` equals `Retry-After` (≥ 1 s): the time until one request fits.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use consent_cache::Bin;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DashMapStateStore;
use governor::{NotUntil, Quota, RateLimiter};

use crate::code::Code;
use crate::route::RouteId;

mod keys;
mod monthly;
mod settings;

pub use keys::{consent_route_hash, KeyNames};
pub use monthly::{MonthWindow, MonthlyCounter, MonthlyQuotas};
#[cfg(test)]
use settings::q;
pub use settings::{
    CappedRoute, ClassPolicy, ClassSettings, LeaseShape, LimitClass, LimitError, LimitOverride,
    LimitSettings, Mode, MonthlySettings, OnFailure, ProviderMonthly, QuotaSettings, StoreSettings,
};

/// Name of the policy header field.
pub const RATELIMIT_POLICY_HEADER: &str = "RateLimit-Policy";
/// Name of the current-state header field.
pub const RATELIMIT_HEADER: &str = "RateLimit";
/// Name of the back-off header field sent with `429`.
pub const RETRY_AFTER_HEADER: &str = "Retry-After";

/// Which limit an answer is about; its `name` is the policy name in the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Per API user.
    User,
    /// Per API user × provider.
    UserProvider,
    /// Per consent × route.
    ConsentRoute,
    /// Per client IP on open data.
    OpenDataIp,
    /// Calls per consent × route in the calendar month.
    Monthly,
    /// Failed token signature verifications per connection (row 4's budget, see
    /// [`crate::token::VerifyBudget`]).
    TokenFailuresConnection,
    /// Failed token signature verifications per client certificate.
    TokenFailuresCertificate,
}

impl LimitKind {
    /// The policy name used in the header fields and in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            LimitKind::User => "user",
            LimitKind::UserProvider => "user-provider",
            LimitKind::ConsentRoute => "consent-route",
            LimitKind::OpenDataIp => "ip",
            LimitKind::Monthly => "monthly",
            LimitKind::TokenFailuresConnection => "token-failures-connection",
            LimitKind::TokenFailuresCertificate => "token-failures-certificate",
        }
    }
}

impl LimitClass {
    /// The header and metric kind of this class.
    pub const fn kind(self) -> LimitKind {
        match self {
            LimitClass::User => LimitKind::User,
            LimitClass::UserProvider => LimitKind::UserProvider,
            LimitClass::ConsentRoute => LimitKind::ConsentRoute,
            LimitClass::Ip => LimitKind::OpenDataIp,
            LimitClass::Monthly => LimitKind::Monthly,
        }
    }
}

fn ceil_micros(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// A request the limits let through, with what to advertise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// The most constrained limit.
    pub kind: LimitKind,
    /// `q`: requests per window.
    pub quota: u32,
    /// `w`: the window in seconds.
    pub window_secs: u64,
    /// `r`: requests left now.
    pub remaining: u32,
    /// `t`: seconds until the quota is fully available again.
    pub reset_secs: u64,
}

impl RateInfo {
    /// A GCRA quota evaluated elsewhere (the shared store): `remaining` cells, full again
    /// in `reset_us` microseconds.
    pub fn gcra(kind: LimitKind, quota: QuotaSettings, remaining: u32, reset_us: u64) -> Self {
        RateInfo {
            kind,
            quota: quota.burst.get(),
            window_secs: window_secs(&quota.quota()),
            remaining: remaining.min(quota.burst.get()),
            reset_secs: ceil_micros(reset_us),
        }
    }

    /// A monthly quota of `limit` calls with `remaining` left in `month` at `now_unix`.
    pub fn monthly(limit: u32, remaining: u32, month: &MonthWindow, now_unix: i64) -> Self {
        RateInfo {
            kind: LimitKind::Monthly,
            quota: limit,
            window_secs: month.length_secs(),
            remaining: remaining.min(limit),
            reset_secs: month.secs_to_reset(now_unix),
        }
    }

    /// Appends the `RateLimit-Policy` value to `policy` and the `RateLimit` value to
    /// `ratelimit`, e.g. `"user";q=100;w=1` and `"user";r=42;t=0`.
    pub fn write_headers(&self, policy: &mut String, ratelimit: &mut String) {
        write_policy(policy, self.kind, self.quota, self.window_secs);
        let _ = write!(
            ratelimit,
            "\"{}\";r={};t={}",
            self.kind.name(),
            self.remaining,
            self.reset_secs
        );
    }
}

/// A request a limit refused (`429 rate_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited by the {} limit", kind.name())]
pub struct Limited {
    /// The refusing limit.
    pub kind: LimitKind,
    /// `q`: requests per window.
    pub quota: u32,
    /// `w`: the window in seconds.
    pub window_secs: u64,
    /// `Retry-After` in seconds (≥ 1).
    pub retry_after_secs: u64,
}

impl Limited {
    /// A GCRA quota refused elsewhere (the shared store): one request fits in `retry_us`
    /// microseconds (`Retry-After` ≥ 1 s).
    pub fn gcra(kind: LimitKind, quota: QuotaSettings, retry_us: u64) -> Self {
        Limited {
            kind,
            quota: quota.burst.get(),
            window_secs: window_secs(&quota.quota()),
            retry_after_secs: ceil_micros(retry_us).max(1),
        }
    }

    /// A monthly quota of `limit` calls spent: `Retry-After` is the start of the next
    /// month.
    pub fn monthly(limit: u32, month: &MonthWindow, now_unix: i64) -> Self {
        Limited {
            kind: LimitKind::Monthly,
            quota: limit,
            window_secs: month.length_secs(),
            retry_after_secs: month.secs_to_reset(now_unix),
        }
    }

    /// The contract code.
    pub const fn code(&self) -> Code {
        Code::RateLimited
    }

    /// Which limit refused, in words, for the problem's `detail` (its numbers only).
    pub fn detail(&self) -> String {
        match self.kind {
            LimitKind::Monthly => format!(
                "the monthly quota of {} calls per consent and endpoint is spent; it resets in {} s",
                self.quota, self.retry_after_secs
            ),
            kind => format!(
                "the {} rate limit ({} requests per {} s) refused the request; retry after {} s",
                kind.name(),
                self.quota,
                self.window_secs,
                self.retry_after_secs
            ),
        }
    }

    /// The `detail` of a `503 limits_unavailable` naming this limit.
    pub fn unavailable_detail(&self) -> String {
        format!(
            "the shared rate-limit store is unavailable and the {} limit's failure policy denies; retry after {} s",
            self.kind.name(),
            self.retry_after_secs
        )
    }

    /// Appends the `RateLimit-Policy` and `RateLimit` values (`r=0`, `t` = `Retry-After`).
    pub fn write_headers(&self, policy: &mut String, ratelimit: &mut String) {
        write_policy(policy, self.kind, self.quota, self.window_secs);
        let _ = write!(
            ratelimit,
            "\"{}\";r=0;t={}",
            self.kind.name(),
            self.retry_after_secs
        );
    }

    /// Appends the `Retry-After` value (delay-seconds).
    pub fn write_retry_after(&self, out: &mut String) {
        let _ = write!(out, "{}", self.retry_after_secs);
    }
}

fn write_policy(out: &mut String, kind: LimitKind, quota: u32, window: u64) {
    let _ = write!(out, "\"{}\";q={};w={}", kind.name(), quota, window);
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn window_secs(quota: &Quota) -> u64 {
    ceil_secs(quota.burst_size_replenished_in()).max(1)
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, StateInformationMiddleware>;

/// IPv4 address, or an IPv6 /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u64),
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => IpKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

struct Override<C: Clock> {
    user: Option<Keyed<Bin, C>>,
    user_provider: Option<Keyed<(Bin, Bin), C>>,
}

/// The hub's rate limiters (Send + Sync; share one per configuration snapshot).
pub struct Limiter<C: Clock = DefaultClock> {
    user: Keyed<Bin, C>,
    user_provider: Keyed<(Bin, Bin), C>,
    consent_route: Keyed<u128, C>,
    ip: Keyed<IpKey, C>,
    overrides: HashMap<Bin, Override<C>>,
}

impl<C: Clock + Clone> std::fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("tracked_keys", &self.tracked_keys())
            .field("overrides", &self.overrides.len())
            .finish()
    }
}

impl Limiter<DefaultClock> {
    /// Limiters on the default monotonic clock.
    pub fn new(settings: &LimitSettings) -> Result<Self, LimitError> {
        Limiter::with_clock(settings, DefaultClock::default())
    }
}

fn keyed<K, C>(quota: QuotaSettings, clock: &C) -> Keyed<K, C>
where
    K: std::hash::Hash + Eq + Clone,
    C: Clock + Clone,
{
    RateLimiter::dashmap_with_clock(quota.quota(), clock.clone())
        .with_middleware::<StateInformationMiddleware>()
}

fn check<K, C>(limiter: &Keyed<K, C>, key: &K, kind: LimitKind) -> Result<RateInfo, Limited>
where
    K: std::hash::Hash + Eq + Clone,
    C: Clock,
{
    match limiter.check_key(key) {
        Ok(snapshot) => Ok(info(kind, &snapshot)),
        Err(not_until) => Err(limited(kind, &not_until, limiter.clock().now())),
    }
}

fn info(kind: LimitKind, s: &StateSnapshot) -> RateInfo {
    let quota = s.quota();
    let burst = quota.burst_size().get();
    let remaining = s.remaining_burst_capacity().min(burst);
    let missing = burst - remaining;
    RateInfo {
        kind,
        quota: burst,
        window_secs: window_secs(&quota),
        remaining,
        reset_secs: ceil_secs(quota.replenish_interval().saturating_mul(missing)),
    }
}

fn limited<P: governor::clock::Reference>(kind: LimitKind, n: &NotUntil<P>, now: P) -> Limited {
    let quota = n.quota();
    Limited {
        kind,
        quota: quota.burst_size().get(),
        window_secs: window_secs(&quota),
        retry_after_secs: ceil_secs(n.wait_time_from(now)).max(1),
    }
}

/// The one of `a` and `b` with fewer requests left (the one the headers describe).
pub fn tighter(a: RateInfo, b: RateInfo) -> RateInfo {
    if b.remaining < a.remaining {
        b
    } else {
        a
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// Limiters on `clock` (tests use `governor::clock::FakeRelativeClock`).
    pub fn with_clock(settings: &LimitSettings, clock: C) -> Result<Self, LimitError> {
        let mut overrides = HashMap::new();
        for o in &settings.overrides {
            let entry = Override {
                user: o.per_user.map(|qs| keyed(qs, &clock)),
                user_provider: o.per_user_provider.map(|qs| keyed(qs, &clock)),
            };
            if overrides.insert(o.participant, entry).is_some() {
                return Err(LimitError::DuplicateOverride(o.participant));
            }
        }
        Ok(Limiter {
            user: keyed(settings.per_user, &clock),
            user_provider: keyed(settings.per_user_provider, &clock),
            consent_route: keyed(settings.per_consent_route, &clock),
            ip: keyed(settings.per_ip_open_data, &clock),
            overrides,
        })
    }

    /// Checks (and counts) one request against the per-user limit.
    pub fn check_user(&self, user: Bin) -> Result<RateInfo, Limited> {
        match self.overrides.get(&user).and_then(|o| o.user.as_ref()) {
            Some(l) => check(l, &user, LimitKind::User),
            None => check(&self.user, &user, LimitKind::User),
        }
    }

    /// Checks (and counts) one request against the per-user × provider limit.
    pub fn check_user_provider(&self, user: Bin, provider: Bin) -> Result<RateInfo, Limited> {
        let key = (user, provider);
        match self
            .overrides
            .get(&user)
            .and_then(|o| o.user_provider.as_ref())
        {
            Some(l) => check(l, &key, LimitKind::UserProvider),
            None => check(&self.user_provider, &key, LimitKind::UserProvider),
        }
    }

    /// Checks (and counts) a consent-route request against the per-user, per-user ×
    /// provider and per-consent × route limits; the first refusal answers.
    pub fn check_consent_route(
        &self,
        user: Bin,
        provider: Bin,
        consent_id: &str,
        route: RouteId,
    ) -> Result<RateInfo, Limited> {
        let a = self.check_user(user)?;
        let b = self.check_user_provider(user, provider)?;
        let c = self.check_consent_route_key(consent_route_hash(consent_id, route))?;
        Ok(tighter(tighter(a, b), c))
    }

    /// Checks (and counts) one request against the per consent × route limit, keyed by
    /// [`consent_route_hash`].
    pub fn check_consent_route_key(&self, key: u128) -> Result<RateInfo, Limited> {
        check(&self.consent_route, &key, LimitKind::ConsentRoute)
    }

    /// Checks (and counts) one open-data request against the per-client-IP limit.
    pub fn check_ip(&self, ip: IpAddr) -> Result<RateInfo, Limited> {
        check(&self.ip, &IpKey::of(ip), LimitKind::OpenDataIp)
    }

    /// Checks (and counts) an open-data request against the per-user and per-client-IP
    /// limits; the first refusal answers.
    pub fn check_open_data(&self, ip: IpAddr, user: Bin) -> Result<RateInfo, Limited> {
        let a = self.check_user(user)?;
        let b = self.check_ip(ip)?;
        Ok(tighter(a, b))
    }

    /// Forgets keys whose state is indistinguishable from a fresh one. Call it periodically
    /// (e.g. every few seconds) so that stale keys do not accumulate.
    pub fn retain_recent(&self) {
        self.user.retain_recent();
        self.user_provider.retain_recent();
        self.consent_route.retain_recent();
        self.ip.retain_recent();
        for o in self.overrides.values() {
            if let Some(l) = &o.user {
                l.retain_recent();
            }
            if let Some(l) = &o.user_provider {
                l.retain_recent();
            }
        }
        self.user.shrink_to_fit();
        self.user_provider.shrink_to_fit();
        self.consent_route.shrink_to_fit();
        self.ip.shrink_to_fit();
    }

    /// Number of keys currently tracked (for a gauge).
    pub fn tracked_keys(&self) -> usize {
        let overrides: usize = self
            .overrides
            .values()
            .map(|o| {
                o.user.as_ref().map_or(0, |l| l.len())
                    + o.user_provider.as_ref().map_or(0, |l| l.len())
            })
            .sum();
        self.user.len()
            + self.user_provider.len()
            + self.consent_route.len()
            + self.ip.len()
            + overrides
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn bin(s: &str) -> Bin {
        Bin::parse(s).unwrap()
    }

    fn settings() -> LimitSettings {
        LimitSettings {
            per_user: q(100, 100),
            per_user_provider: q(50, 50),
            per_consent_route: q(2, 3),
            per_ip_open_data: q(1, 2),
            ..LimitSettings::default()
        }
    }

    const U: &str = "100000000001";
    const P1: &str = "200000000001";
    const P2: &str = "200000000002";

    #[test]
    fn consent_route_limit_refuses_and_recovers() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&settings(), clock.clone()).unwrap();
        for expected_remaining in [2, 1, 0] {
            let i = l
                .check_consent_route(bin(U), bin(P1), "c1", RouteId::Balances)
                .unwrap();
            assert_eq!(i.kind, LimitKind::ConsentRoute);
            assert_eq!(i.remaining, expected_remaining);
        }
        let e = l
            .check_consent_route(bin(U), bin(P1), "c1", RouteId::Balances)
            .unwrap_err();
        assert_eq!(e.kind, LimitKind::ConsentRoute);
        assert_eq!(e.retry_after_secs, 1);
        assert_eq!(e.code(), Code::RateLimited);
        // Another route or consent has its own bucket.
        assert!(l
            .check_consent_route(bin(U), bin(P1), "c1", RouteId::Accounts)
            .is_ok());
        assert!(l
            .check_consent_route(bin(U), bin(P1), "c2", RouteId::Balances)
            .is_ok());
        clock.advance(Duration::from_millis(500));
        assert!(l
            .check_consent_route(bin(U), bin(P1), "c1", RouteId::Balances)
            .is_ok());
    }

    #[test]
    fn first_refusal_answers_in_order() {
        let clock = FakeRelativeClock::default();
        let mut s = settings();
        s.per_user = q(1, 1);
        s.per_user_provider = q(1, 1);
        let l = Limiter::with_clock(&s, clock.clone()).unwrap();
        assert!(l
            .check_consent_route(bin(U), bin(P1), "c", RouteId::Accounts)
            .is_ok());
        let e = l
            .check_consent_route(bin(U), bin(P2), "d", RouteId::Accounts)
            .unwrap_err();
        assert_eq!(e.kind, LimitKind::User);

        let mut s = settings();
        s.per_user_provider = q(1, 1);
        let l = Limiter::with_clock(&s, clock.clone()).unwrap();
        assert!(l
            .check_consent_route(bin(U), bin(P1), "c", RouteId::Accounts)
            .is_ok());
        let e = l
            .check_consent_route(bin(U), bin(P1), "d", RouteId::Accounts)
            .unwrap_err();
        assert_eq!(e.kind, LimitKind::UserProvider);
        assert!(l
            .check_consent_route(bin(U), bin(P2), "d", RouteId::Accounts)
            .is_ok());
    }

    #[test]
    fn overrides_replace_the_default_quota() {
        let clock = FakeRelativeClock::default();
        let mut s = settings();
        s.per_user = q(1, 1);
        s.per_consent_route = q(100, 100);
        s.overrides = vec![LimitOverride {
            participant: bin(U),
            per_user: QuotaSettings::new(10, 10),
            per_user_provider: None,
        }];
        let l = Limiter::with_clock(&s, clock).unwrap();
        for _ in 0..10 {
            l.check_consent_route(bin(U), bin(P1), "c", RouteId::Accounts)
                .unwrap();
        }
        let e = l
            .check_consent_route(bin(U), bin(P1), "c", RouteId::Accounts)
            .unwrap_err();
        assert_eq!((e.kind, e.quota), (LimitKind::User, 10));
        let other = bin("100000000002");
        l.check_consent_route(other, bin(P1), "x", RouteId::Accounts)
            .unwrap();
        assert_eq!(
            l.check_consent_route(other, bin(P1), "x", RouteId::Accounts)
                .unwrap_err()
                .kind,
            LimitKind::User
        );
    }

    #[test]
    fn duplicate_overrides_are_refused() {
        let mut s = settings();
        let o = LimitOverride {
            participant: bin(U),
            per_user: None,
            per_user_provider: None,
        };
        s.overrides = vec![o.clone(), o];
        assert_eq!(
            Limiter::new(&s).unwrap_err(),
            LimitError::DuplicateOverride(bin(U))
        );
    }

    #[test]
    fn open_data_is_keyed_by_ip_and_v6_prefix() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&settings(), clock.clone()).unwrap();
        let a: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
        let mapped: IpAddr = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped().into();
        l.check_open_data(a, bin(U)).unwrap();
        l.check_open_data(mapped, bin(U)).unwrap();
        let e = l.check_open_data(a, bin(U)).unwrap_err();
        assert_eq!(e.kind, LimitKind::OpenDataIp);
        let v6a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap().into();
        let v6c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
        l.check_open_data(v6a, bin(U)).unwrap();
        l.check_open_data(v6b, bin(U)).unwrap();
        assert!(l.check_open_data(v6b, bin(U)).is_err());
        l.check_open_data(v6c, bin(U)).unwrap();
        clock.advance(Duration::from_secs(1));
        l.check_open_data(a, bin(U)).unwrap();
    }

    #[test]
    fn headers_follow_the_draft() {
        let clock = FakeRelativeClock::default();
        let mut s = settings();
        s.per_consent_route = q(10, 20);
        let l = Limiter::with_clock(&s, clock).unwrap();
        let i = l
            .check_consent_route(bin(U), bin(P1), "c", RouteId::Accounts)
            .unwrap();
        let (mut p, mut r) = (String::new(), String::new());
        i.write_headers(&mut p, &mut r);
        assert_eq!(p, "\"consent-route\";q=20;w=2");
        assert_eq!(r, "\"consent-route\";r=19;t=1");

        let e = Limited {
            kind: LimitKind::User,
            quota: 100,
            window_secs: 1,
            retry_after_secs: 3,
        };
        let (mut p, mut r, mut ra) = (String::new(), String::new(), String::new());
        e.write_headers(&mut p, &mut r);
        e.write_retry_after(&mut ra);
        assert_eq!(p, "\"user\";q=100;w=1");
        assert_eq!(r, "\"user\";r=0;t=3");
        assert_eq!(ra, "3");
    }

    #[test]
    fn retry_after_is_at_least_one_second_and_rounds_up() {
        let clock = FakeRelativeClock::default();
        let mut s = settings();
        s.per_consent_route = QuotaSettings::new(1, 1).unwrap();
        let l = Limiter::with_clock(&s, clock.clone()).unwrap();
        l.check_consent_route(bin(U), bin(P1), "c", RouteId::Accounts)
            .unwrap();
        clock.advance(Duration::from_millis(999));
        let e = l
            .check_consent_route(bin(U), bin(P1), "c", RouteId::Accounts)
            .unwrap_err();
        assert_eq!(e.retry_after_secs, 1);
    }

    #[test]
    fn stale_keys_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&settings(), clock.clone()).unwrap();
        for i in 0..50 {
            l.check_consent_route(bin(U), bin(P1), &format!("c{i}"), RouteId::Accounts)
                .unwrap();
        }
        assert!(l.tracked_keys() >= 52);
        clock.advance(Duration::from_secs(60));
        l.retain_recent();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn settings_parse_strictly() {
        let s: LimitSettings = toml::from_str(
            r#"
            per_user = { per_second = 5, burst = 10 }
            [[overrides]]
            participant = "100000000001"
            per_user = { per_second = 50, burst = 100 }
            "#,
        )
        .unwrap();
        assert_eq!(s.per_user, q(5, 10));
        assert_eq!(
            s.per_consent_route,
            LimitSettings::default().per_consent_route
        );
        assert_eq!(s.overrides.len(), 1);
        assert!(
            toml::from_str::<LimitSettings>("per_usr = { per_second = 5, burst = 10 }").is_err()
        );
        assert!(
            toml::from_str::<LimitSettings>("per_user = { per_second = 0, burst = 10 }").is_err()
        );
        assert!(toml::from_str::<LimitSettings>(
            "per_user = { per_second = 1, burst = 1, extra = 2 }"
        )
        .is_err());
        assert!(toml::from_str::<LimitSettings>("[[overrides]]\nparticipant = \"12\"\n").is_err());
    }

    #[test]
    fn limiter_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Limiter>();
    }
}
