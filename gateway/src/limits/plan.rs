//! The limits of one request as data: each class with its key, quota, where it is counted
//! (in process, in the store, or leased from the store) and its failure policy; the store's
//! items of those that go to the store (key names from `policy::limits::KeyNames`). Turns
//! the store's answer back into header values.

use std::net::IpAddr;

use arrayvec::ArrayVec;
use consent_cache::Bin;
use policy::limits::{
    consent_route_hash, tighter, LeaseShape, LimitClass, LimitSettings, Limited, Mode, MonthWindow,
    OnFailure, QuotaSettings, RateInfo,
};

use super::store::{ItemState, SharedItem};
use super::{Limits, Target};

/// Seconds a monthly count outlives its month in the store (clock skew between gateways).
const MONTH_GRACE_SECS: i64 = 86_400;

/// What headers say when no limit applies (never the case for a routed request: the
/// per-user limit always does).
pub(super) const UNLIMITED: RateInfo = RateInfo {
    kind: policy::limits::LimitKind::User,
    quota: u32::MAX,
    window_secs: 1,
    remaining: u32::MAX,
    reset_secs: 0,
};

/// A request's limits before they are placed: class, key, quota.
type Specs = ArrayVec<(LimitClass, Key, Quota), MAX_ITEMS>;

/// What a limit is keyed by besides the API user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Key {
    /// The user alone.
    User,
    /// The user and this provider.
    Provider(Bin),
    /// A consent × route ([`consent_route_hash`]).
    ConsentRoute(u128),
    /// The client's address.
    Ip(IpAddr),
}

/// How much a limit allows.
#[derive(Debug, Clone, Copy)]
pub(super) enum Quota {
    /// A GCRA rate.
    Gcra(QuotaSettings),
    /// Calls in a calendar month.
    Month {
        /// Calls allowed.
        limit: u32,
        /// The month.
        window: MonthWindow,
    },
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// In this process.
    Local,
    /// In the store, one cell per request.
    Shared,
    /// In the store, in batches spent here.
    Leased(LeaseShape),
}

/// One limit of the request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Item {
    pub class: LimitClass,
    pub user: Bin,
    pub key: Key,
    pub quota: Quota,
    pub on_failure: OnFailure,
    pub place: Place,
}

impl Item {
    /// The key of this item's lease.
    pub(super) fn lease_key(&self) -> super::lease::LeaseKey {
        super::lease::LeaseKey {
            class: self.class,
            user: self.user,
            key: self.key,
        }
    }
}

/// The most limits one request has (user, user × provider, consent × route, month).
pub(super) const MAX_ITEMS: usize = 4;

/// Some of a request's limits.
pub(super) type Items = ArrayVec<Item, MAX_ITEMS>;

/// Every limit of one request (no allocation).
pub(super) struct Plan {
    items: Items,
    pub now: i64,
}

impl Plan {
    /// The limits of a request by `user` to `target` at `now` (Unix seconds).
    pub(super) fn of(limits: &Limits, user: Bin, target: Target<'_>, now: i64) -> Plan {
        let s = &limits.settings;
        let mut specs: Specs = ArrayVec::new();
        specs.push((LimitClass::User, Key::User, Quota::Gcra(s.user_quota(user))));
        match target {
            Target::Consent {
                provider,
                consent_id,
                route,
            } => {
                let hash = consent_route_hash(consent_id, route);
                let up = Quota::Gcra(s.user_provider_quota(user));
                specs.push((LimitClass::UserProvider, Key::Provider(provider), up));
                let cr = Quota::Gcra(s.per_consent_route);
                specs.push((LimitClass::ConsentRoute, Key::ConsentRoute(hash), cr));
                if let Some(month) = monthly(limits, provider, route, now) {
                    specs.push((LimitClass::Monthly, Key::ConsentRoute(hash), month));
                }
            }
            Target::OpenData { ip } => {
                let q = Quota::Gcra(s.per_ip_open_data);
                specs.push((LimitClass::Ip, Key::Ip(ip), q));
            }
        }
        Plan::build(limits, user, specs, now)
    }

    fn build(limits: &Limits, user: Bin, specs: Specs, now: i64) -> Plan {
        let s = &limits.settings;
        let items = specs
            .into_iter()
            .map(|(class, key, quota)| Item {
                class,
                user,
                key,
                quota,
                on_failure: s.classes.of(class).on_failure,
                place: place(limits, class, quota),
            })
            .collect();
        Plan { items, now }
    }

    /// The items counted in this process.
    pub(super) fn local(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.place == Place::Local)
    }

    /// The items counted in the store, one cell per request.
    pub(super) fn shared(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.place == Place::Shared)
    }

    /// The leased items.
    pub(super) fn leased(&self) -> impl Iterator<Item = (&Item, LeaseShape)> {
        self.items.iter().filter_map(|i| match i.place {
            Place::Leased(shape) => Some((i, shape)),
            _ => None,
        })
    }
}

/// Where `class` is counted with `quota` under `limits`' settings.
fn place(limits: &Limits, class: LimitClass, quota: Quota) -> Place {
    let s = &limits.settings;
    let Some(store) = s.store.as_ref().filter(|_| limits.store.is_some()) else {
        return Place::Local;
    };
    match (s.mode(class), quota) {
        (Mode::Local, _) => Place::Local,
        (Mode::Leased, Quota::Gcra(q)) => q
            .lease(store.lease_ms, store.gateways)
            .map_or(Place::Shared, Place::Leased),
        (Mode::Shared | Mode::Leased, _) => Place::Shared,
    }
}

fn monthly(
    limits: &Limits,
    provider: Bin,
    route: policy::route::RouteId,
    now: i64,
) -> Option<Quota> {
    let quotas = limits.monthly.as_ref()?;
    let limit = quotas.limit(provider, route)?;
    let window = limits.month_at(quotas, now)?;
    Some(Quota::Month { limit, window })
}

/// The store's item of `item`: one cell, or a leased item's batch of `want` cells against
/// its lowered burst.
pub(super) fn store_item(limits: &Limits, item: &Item, want: u32) -> SharedItem {
    let k = &limits.keys;
    let key = match (item.class, item.key) {
        (LimitClass::Monthly, Key::ConsentRoute(h)) => match item.quota {
            Quota::Month { window, .. } => k.monthly(item.user, window.key, h),
            Quota::Gcra(_) => k.consent_route(item.user, h),
        },
        (_, Key::User) => k.user(item.user),
        (_, Key::Provider(p)) => k.user_provider(item.user, p),
        (_, Key::ConsentRoute(h)) => k.consent_route(item.user, h),
        (_, Key::Ip(ip)) => k.ip(ip),
    };
    match (item.quota, item.place) {
        (Quota::Gcra(q), Place::Leased(shape)) => SharedItem::Gcra {
            key,
            per_second: q.per_second.get(),
            burst: shape.burst,
            want: want.clamp(1, shape.cells),
        },
        (Quota::Gcra(q), _) => SharedItem::Gcra {
            key,
            per_second: q.per_second.get(),
            burst: q.burst.get(),
            want: 1,
        },
        (Quota::Month { limit, window }, _) => SharedItem::Count {
            key,
            limit,
            expire_at_unix: window.end_unix + MONTH_GRACE_SECS,
        },
    }
}

/// The tighter of two optional answers.
pub(super) fn tightest(a: Option<RateInfo>, b: Option<RateInfo>) -> Option<RateInfo> {
    match (a, b) {
        (Some(a), Some(b)) => Some(tighter(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// What one store item's admission advertises (a leased item: the store's remaining plus
/// the cells now held here).
pub(super) fn admitted_one(item: &Item, st: &ItemState, now: i64) -> RateInfo {
    match item.quota {
        Quota::Gcra(q) => RateInfo::gcra(item.class.kind(), q, st.remaining, st.reset_us),
        Quota::Month { limit, window } => RateInfo::monthly(limit, st.remaining, &window, now),
    }
}

/// What a request served by a leased cell advertises.
pub(super) fn leased_info(item: &Item, spent: super::lease::Spent) -> RateInfo {
    match item.quota {
        Quota::Gcra(q) => RateInfo::gcra(item.class.kind(), q, spent.remaining, spent.reset_us),
        // Monthly quotas are never leased (refused by the settings' validation).
        Quota::Month { limit, .. } => RateInfo::gcra(
            item.class.kind(),
            QuotaSettings::new(limit, limit).unwrap_or(LimitSettings::default().per_user),
            spent.remaining,
            spent.reset_us,
        ),
    }
}

/// The refusal by the store's item `index` of `items` (an index past the items, which the
/// script never returns, is read as the last item's).
pub(super) fn refused(items: &[Item], index: usize, retry_after_us: u64, now: i64) -> Limited {
    let item = items.get(index).or(items.last());
    match item.map(|i| (i.class, i.quota)) {
        Some((_, Quota::Month { limit, window })) => Limited::monthly(limit, &window, now),
        Some((class, Quota::Gcra(q))) => Limited::gcra(class.kind(), q, retry_after_us),
        None => Limited::gcra(
            policy::limits::LimitKind::User,
            policy::limits::LimitSettings::default().per_user,
            retry_after_us,
        ),
    }
}

/// What a `503 limits_unavailable` names: the class whose failure policy denied, and when
/// to try again (the store's next probe).
pub(super) fn unavailable(item: &Item, retry_after_secs: u64) -> Limited {
    let mut limited = match item.quota {
        Quota::Month { limit, window } => Limited::monthly(limit, &window, window.start_unix),
        Quota::Gcra(q) => Limited::gcra(item.class.kind(), q, 0),
    };
    limited.retry_after_secs = retry_after_secs.max(1);
    limited
}
