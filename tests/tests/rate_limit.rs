//! Contract §6 row 16 and §7 end to end, for every limit kind (issue 12, "limits that hold
//! across gateways"): per API user, per user × provider, per consent × route and per client
//! IP on open data each answer `429 rate_limited` with `Retry-After`, `RateLimit-Policy`
//! and `RateLimit` after exactly `burst` admitted requests.
//!
//! Each kind has a hub of its own where it is the tightest: its own burst (≥ 5, a different
//! one per kind) refilled at one cell a second, every other limit at 100,000. A test opens
//! its keep-alive connections first, then sends requests back to back on a key nothing else
//! used and asserts the exact count: `burst` answers `200` whose `RateLimit` counts
//! `r=burst-1`, …, `r=0` under the kind's `RateLimit-Policy` (`q=burst`), then the kind's
//! `429` with `r=0`. A burst one smaller or larger than configured fails that count. Only a
//! run lasting a second or more could see a refilled cell admitted: the allowance is then
//! computed from the run's measured duration, never from a sleep ([`Kind::assert_run`]).
//!
//! Each test also shows the key of its kind: per user, every provider and route (open data
//! too) counts and another user keeps its own quota; per user × provider, another provider
//! and another user do; per consent × route, another route and another consent do, while
//! another account on the same consent × route does not; per IP, another user from the same
//! IP is refused and the same user from another IP passes. The hub listens on 127.0.0.1
//! only, so the other client IP is another loopback address (127.0.0.2, bound as the
//! client's source address); the IPv6 /64 key is covered by `policy`'s unit tests.
//!
//! A refusal by a later limit: the limits are checked in order (user → user × provider →
//! consent × route; open data: user → IP) and `governor` has no undo, so today a request a
//! later limit refuses has spent a cell of every earlier limit (one cell per refusal).
//! Issue 12 makes the shared store all-or-nothing. The tests here assert neither: the
//! earlier limits are never the tight ones in these hubs.
//!
//! Monthly quotas (issue 12): a hub whose only tight limit is five balances calls per
//! consent per calendar month admits exactly five, advertises the month (`w` its length,
//! `t` the time to its end) and refuses the sixth with `Retry-After` to the month's end;
//! open data before them is never counted. Counting across gateways, a Redis restart and
//! the month boundary are tested with a shared store (`gateway`'s limits tests with an
//! injected clock, `cluster_shared_limits`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use e2e::http::TlsConn;
use e2e::*;
use policy::limits::{CappedRoute, MonthWindow, MonthlyQuotas, MonthlySettings};

/// Every limit under test refills one cell a second: a run shorter than a second is
/// admitted at most `burst` times whatever the timing.
const PER_SECOND: u32 = 1;

/// A consent of user A at the second bank (the demo has none): another provider.
const A_AT_BANK_2: &str = "c-e2e-a-bank2";
/// A consent of user B at the first bank (the demo has none): another user, same provider.
const B_AT_BANK_1: &str = "c-e2e-b-bank1";

/// One limit kind under test.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// Its key in `[limits]`.
    key: &'static str,
    /// Its policy name in `RateLimit-Policy` and `RateLimit`.
    name: &'static str,
    /// Its burst in its own hub.
    burst: u32,
    /// Its hub in `HUBS`.
    slot: usize,
}

const USER: Kind = Kind {
    key: "per_user",
    name: "user",
    burst: 8,
    slot: 0,
};
const USER_PROVIDER: Kind = Kind {
    key: "per_user_provider",
    name: "user-provider",
    burst: 7,
    slot: 1,
};
const CONSENT_ROUTE: Kind = Kind {
    key: "per_consent_route",
    name: "consent-route",
    burst: 6,
    slot: 2,
};
const OPEN_DATA_IP: Kind = Kind {
    key: "per_ip_open_data",
    name: "ip",
    burst: 5,
    slot: 3,
};

/// One hub per kind (separate processes), each started once by the test that needs it.
static HUBS: [OnceLock<Hub>; 4] = [const { OnceLock::new() }; 4];

impl Kind {
    /// This kind's hub: the demo plus `A_AT_BANK_2` and `B_AT_BANK_1`, this kind at
    /// `burst` refilled at `PER_SECOND`, every other limit at 100,000.
    fn hub(self) -> &'static Hub {
        HUBS[self.slot].get_or_init(|| {
            Hub::start_with(hub_exe!(), move |s| {
                s.unlimited();
                s.set_limit(self.key, PER_SECOND, self.burst);
                add_cross_consents(s);
            })
        })
    }

    /// `RateLimit-Policy`: `q` is the burst, `w` the seconds it takes to refill.
    fn policy(self) -> String {
        let window = self.burst.div_ceil(PER_SECOND);
        format!("\"{}\";q={};w={window}", self.name, self.burst)
    }

    /// `RateLimit` on an answer admitted with `left` cells left: `t` is the seconds until
    /// the missing cells are back.
    fn state(self, left: u32) -> String {
        let reset = (self.burst - left).div_ceil(PER_SECOND);
        format!("\"{}\";r={left};t={reset}", self.name)
    }

    /// Asserts a `200` on which this kind is the tightest, with `left` cells left.
    #[track_caller]
    fn assert_admitted(self, r: &Response, left: u32) {
        r.ok_json();
        let policy = self.policy();
        assert_eq!(
            r.header("ratelimit-policy"),
            Some(&*policy),
            "{}",
            r.describe()
        );
        let state = self.state(left);
        assert_eq!(r.header("ratelimit"), Some(&*state), "{}", r.describe());
    }

    /// Asserts the first request on a key of this kind: `burst - 1` cells left.
    #[track_caller]
    fn assert_fresh(self, r: &Response) {
        self.assert_admitted(r, self.burst - 1);
    }

    /// Asserts this kind's refusal: the whole `429 rate_limited` problem, the kind's
    /// policy, `r=0`, and `Retry-After: 1` with `t` equal to it (one cell a second: the
    /// next one is at most a second away, and `Retry-After` is at least 1).
    #[track_caller]
    fn assert_refused(self, r: &Response) {
        r.assert_problem(429, "rate_limited");
        assert_eq!(r.header("retry-after"), Some("1"), "{}", r.describe());
        let policy = self.policy();
        assert_eq!(
            r.header("ratelimit-policy"),
            Some(&*policy),
            "{}",
            r.describe()
        );
        let state = format!("\"{}\";r=0;t=1", self.name);
        assert_eq!(r.header("ratelimit"), Some(&*state), "{}", r.describe());
    }
}

/// Adds `A_AT_BANK_2` (a customer of the second bank) and `B_AT_BANK_1` (a customer of
/// the first), every permission.
fn add_cross_consents(s: &mut Setup<'_>) {
    let customer_of = |id: &str| {
        s.consents
            .iter()
            .find(|c| c["id"] == id)
            .and_then(|c| c["customer"].as_str())
            .unwrap_or_else(|| panic!("no demo consent {id}"))
            .to_string()
    };
    let (at_bank_2, at_bank_1) = (
        customer_of("c-authorised-bank2"),
        customer_of("c-authorised-full"),
    );
    s.add_consent(A_AT_BANK_2, USER_A, &at_bank_2, &[BANK_2], &ALL_PERMISSIONS);
    s.add_consent(B_AT_BANK_1, USER_B, &at_bank_1, &[BANK_1], &ALL_PERMISSIONS);
}

/// Requests sent back to back on one connection until the first refusal.
struct Run {
    answers: Vec<Response>,
    /// Just before the first request was written (no later than the hub's first check).
    started: Instant,
    /// From `started` until the refusal was read (no shorter than the hub's checks took).
    elapsed: Duration,
}

/// Cells a limit may have refilled during `elapsed` (0 below a second).
fn refills_in(elapsed: Duration) -> usize {
    (elapsed.as_secs_f64() * f64::from(PER_SECOND)).floor() as usize
}

/// Sends one request on `conn`; panics on transport errors.
async fn send(conn: &mut TlsConn, req: &Req) -> Response {
    conn.send(req)
        .await
        .unwrap_or_else(|e| panic!("{} {}: transport error {e}", req.method(), req.target()))
}

/// Sends `reqs` in turn (from the first again after the last) on `conn` until the hub
/// refuses one, at most `kind.burst + 5` requests.
async fn run_until_refused(conn: &mut TlsConn, reqs: &[Req], kind: Kind) -> Run {
    let started = Instant::now();
    let mut answers = Vec::new();
    for req in reqs.iter().cycle().take(kind.burst as usize + 5) {
        let r = send(conn, req).await;
        let refused = r.status != 200;
        answers.push(r);
        if refused {
            break;
        }
    }
    let elapsed = started.elapsed();
    Run {
        answers,
        started,
        elapsed,
    }
}

impl Kind {
    /// Asserts a run on a fresh key of this kind: exactly `burst` admitted with `r`
    /// counting down from `burst - 1` to `0`, then this kind's refusal. A run that took a
    /// second or more may have had cells refilled: then between `burst` and `burst` plus
    /// those refills are admitted (`r` no longer counts down strictly; the test says so).
    #[track_caller]
    fn assert_run(self, run: &Run) {
        let burst = self.burst as usize;
        let Some(n) = run.answers.iter().position(|r| r.status != 200) else {
            panic!("the {} limit (burst {burst}) never refused", self.name);
        };
        let refills = refills_in(run.elapsed);
        eprintln!("{}: {n} admitted in {:?}", self.name, run.elapsed);
        if refills == 0 {
            assert_eq!(n, burst, "{} limit: admitted before the refusal", self.name);
            self.assert_refused(&run.answers[n]);
            for (i, r) in run.answers[..n].iter().enumerate() {
                self.assert_admitted(r, self.burst - 1 - i as u32);
            }
            return;
        }
        eprintln!(
            "{}: slow run, {refills} cell(s) may have been refilled",
            self.name
        );
        assert!(
            (burst..=burst + refills).contains(&n),
            "{} limit: {n} admitted in {:?}, burst {burst}",
            self.name,
            run.elapsed
        );
        self.assert_refused(&run.answers[n]);
        let policy = self.policy();
        for r in &run.answers[..n] {
            r.ok_json();
            assert_eq!(
                r.header("ratelimit-policy"),
                Some(&*policy),
                "{}",
                r.describe()
            );
        }
    }

    /// Asserts an answer on a key `run` exhausted: this kind's refusal while less than a
    /// second has passed since the run started; after that a refilled cell may admit it.
    #[track_caller]
    fn assert_still_refused(self, run: &Run, r: &Response) {
        if r.status == 200 && refills_in(run.started.elapsed()) > 0 {
            eprintln!("{}: admitted on a refilled cell (slow run)", self.name);
            r.ok_json();
        } else {
            self.assert_refused(r);
        }
    }
}

/// `GET path` with a bearer token.
fn get(path: String, token: &str) -> Req {
    Req::get(path).bearer(token)
}

/// The account `c-authorised-restricted` is restricted to.
fn restricted_account(hub: &Hub) -> String {
    hub.consent("c-authorised-restricted")["accounts"][0]
        .as_str()
        .expect("account")
        .to_string()
}

/// User A at the first bank: every consent route, on both of its consents there.
fn a_at_bank_1(hub: &Hub) -> Vec<Req> {
    let full = hub.token("c-authorised-full");
    let restricted = hub.token("c-authorised-restricted");
    let acc = hub.accounts_of("c-authorised-full").remove(0);
    let allowed = restricted_account(hub);
    vec![
        get(accounts_path(BANK_1), &full),
        get(account_path(BANK_1, &acc), &full),
        get(balances_path(BANK_1, &acc), &full),
        get(transactions_path(BANK_1, &acc, "limit=3"), &full),
        get(accounts_path(BANK_1), &restricted),
        get(account_path(BANK_1, &allowed), &restricted),
        get(balances_path(BANK_1, &allowed), &restricted),
        get(transactions_path(BANK_1, &allowed, "limit=3"), &restricted),
    ]
}

/// User A at the second bank (`A_AT_BANK_2`).
fn a_at_bank_2(hub: &Hub) -> Vec<Req> {
    let token = hub.mint_for(USER_A, A_AT_BANK_2);
    let acc = hub.accounts_of("c-authorised-bank2").remove(0);
    vec![
        get(accounts_path(BANK_2), &token),
        get(balances_path(BANK_2, &acc), &token),
    ]
}

/// Open data of both banks, over every dataset.
fn open_data() -> Vec<Req> {
    [
        (BANK_2, "branches"),
        (BANK_1, "atms"),
        (BANK_2, "exchange-rates"),
        (BANK_1, "products"),
        (BANK_2, "atms"),
        (BANK_1, "branches"),
    ]
    .into_iter()
    .map(|(bank, dataset)| Req::get(open_data_path(bank, dataset)))
    .collect()
}

/// The lists' requests taken in turn, one of each list per round.
fn interleave(lists: Vec<Vec<Req>>) -> Vec<Req> {
    let mut lists: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        out.extend(lists.iter_mut().filter_map(Iterator::next));
        if out.len() == before {
            return out;
        }
    }
}

// ---------------------------------------------------------------- per API user

#[tokio::test]
async fn per_user_limit_counts_every_provider_and_route() {
    let kind = USER;
    let hub = kind.hub();
    let mut conn = hub.client_as(USER_A).connect().await.expect("connect");
    // Consent routes at both banks and open data, interleaved: every one takes a cell.
    let reqs = interleave(vec![a_at_bank_1(hub), a_at_bank_2(hub), open_data()]);
    assert!(reqs.len() > kind.burst as usize);
    let run = run_until_refused(&mut conn, &reqs, kind).await;
    kind.assert_run(&run);
    // Now every provider and route is refused for user A.
    for req in &reqs {
        let r = send(&mut conn, req).await;
        kind.assert_still_refused(&run, &r);
    }
    // User B has a quota of its own.
    let b = hub.client_as(USER_B);
    let r = b
        .get(
            &accounts_path(BANK_2),
            Some(&hub.token("c-authorised-bank2")),
        )
        .await;
    kind.assert_fresh(&r);
}

// ---------------------------------------------------------------- per user × provider

#[tokio::test]
async fn per_user_provider_limit_leaves_other_providers_and_users_alone() {
    let kind = USER_PROVIDER;
    let hub = kind.hub();
    let a = hub.client_as(USER_A);
    let mut conn = a.connect().await.expect("connect");
    // Every route on both consents of user A at the first bank takes a cell.
    let reqs = a_at_bank_1(hub);
    assert!(reqs.len() > kind.burst as usize);
    let run = run_until_refused(&mut conn, &reqs, kind).await;
    kind.assert_run(&run);
    for req in &reqs {
        let r = send(&mut conn, req).await;
        kind.assert_still_refused(&run, &r);
    }
    // Another provider for the same user, and another user at the same provider.
    let other_provider = a_at_bank_2(hub).remove(0);
    kind.assert_fresh(&send(&mut conn, &other_provider).await);
    let b_token = hub.mint_for(USER_B, B_AT_BANK_1);
    let r = hub
        .client_as(USER_B)
        .get(&accounts_path(BANK_1), Some(&b_token))
        .await;
    kind.assert_fresh(&r);
    // Open data is not limited per user × provider.
    a.get(&open_data_path(BANK_1, "atms"), None).await.ok_json();
}

// ---------------------------------------------------------------- per consent × route

#[tokio::test]
async fn consent_route_quota_answers_429_with_retry_after_and_ratelimit_headers() {
    let kind = CONSENT_ROUTE;
    let hub = kind.hub();
    let mut conn = hub.client_as(USER_A).connect().await.expect("connect");
    let token = hub.token("c-authorised-full");
    let accounts = hub.accounts_of("c-authorised-full");
    // One consent × route (balances), over every account of the consent.
    let reqs: Vec<Req> = accounts
        .iter()
        .map(|acc| get(balances_path(BANK_1, acc), &token))
        .collect();
    let run = run_until_refused(&mut conn, &reqs, kind).await;
    // Today the refused request has also spent a user and a user × provider cell (module
    // documentation); both limits are 100,000 here, so nothing shows it.
    kind.assert_run(&run);
    // The key is the consent and the route, not the account.
    for req in &reqs {
        let r = send(&mut conn, req).await;
        kind.assert_still_refused(&run, &r);
    }
    // Another route of the same consent, and another consent, have their own quota.
    let other_route = get(account_path(BANK_1, &accounts[0]), &token);
    kind.assert_fresh(&send(&mut conn, &other_route).await);
    let restricted = hub.token("c-authorised-restricted");
    let other_consent = get(balances_path(BANK_1, &restricted_account(hub)), &restricted);
    kind.assert_fresh(&send(&mut conn, &other_consent).await);
}

// ---------------------------------------------------------------- per client IP, open data

#[tokio::test]
async fn open_data_quota_is_per_client_ip() {
    let kind = OPEN_DATA_IP;
    let hub = kind.hub();
    let other_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    // Every connection first: the refusals below must come within the run's second.
    let mut b_here = hub.client_as(USER_B).connect().await.expect("connect");
    let mut a_here = hub.client_as(USER_A).connect().await.expect("connect");
    let b = hub.client_as(USER_B);
    let mut b_there = b
        .connect_from(other_ip)
        .await
        .expect("connect from 127.0.0.2");
    // Every dataset of both banks from 127.0.0.1 takes a cell.
    let reqs = open_data();
    assert!(reqs.len() > kind.burst as usize);
    let run = run_until_refused(&mut b_here, &reqs, kind).await;
    kind.assert_run(&run);
    // The key is the IP, not the user: user A from 127.0.0.1 is refused too.
    for req in &reqs {
        let r = send(&mut a_here, req).await;
        kind.assert_still_refused(&run, &r);
    }
    // User B from 127.0.0.2 has a quota of its own.
    kind.assert_fresh(&send(&mut b_there, &reqs[0]).await);
}

// ---------------------------------------------------------------- monthly quotas

/// Calls per consent per calendar month on the balances route in the monthly hub.
const MONTHLY_CALLS: u32 = 5;

static MONTHLY_HUB: OnceLock<Hub> = OnceLock::new();

/// The monthly settings of the monthly hub: balances capped, every other route not.
fn monthly_settings() -> MonthlySettings {
    MonthlySettings {
        time_zone: "UTC".into(),
        routes: [(CappedRoute::Balances, MONTHLY_CALLS)].into(),
        providers: vec![],
    }
}

/// A hub whose only tight limit is the month's quota on balances (in-process: this hub
/// has no shared store; the cluster tests count it across gateways).
fn monthly_hub() -> &'static Hub {
    MONTHLY_HUB.get_or_init(|| {
        Hub::start_with(hub_exe!(), |s| {
            s.unlimited();
            s.config.limits.monthly = monthly_settings();
        })
    })
}

/// The calendar month (UTC) containing now, as the hub computes it.
fn this_month() -> (MonthWindow, i64) {
    let quotas = MonthlyQuotas::compile(&monthly_settings())
        .expect("valid")
        .expect("capped");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    (quotas.window(now).expect("a month"), now)
}

/// Asserts `value` is `"monthly";<key>=<n>;<key2>=<m>` with `m` within 5 s of `expected`.
#[track_caller]
fn assert_monthly_field(value: Option<&str>, head: &str, expected: u64) {
    let value = value.unwrap_or_default();
    let rest = value
        .strip_prefix(head)
        .unwrap_or_else(|| panic!("{value:?} does not start with {head:?}"));
    let got: u64 = rest.parse().unwrap_or_else(|_| panic!("{value:?}"));
    assert!(
        got.abs_diff(expected) <= 5,
        "{value:?}: expected ~{expected}"
    );
}

#[tokio::test]
async fn monthly_quota_admits_exactly_its_calls_and_never_counts_open_data() {
    let hub = monthly_hub();
    let mut conn = hub.client_as(USER_A).connect().await.expect("connect");
    let token = hub.token("c-authorised-full");
    let accounts = hub.accounts_of("c-authorised-full");
    // Open data first, more calls than the month allows: none is counted.
    for req in open_data().iter().cycle().take(2 * MONTHLY_CALLS as usize) {
        send(&mut conn, req).await.ok_json();
    }
    let (month, now) = this_month();
    let to_reset = (month.end_unix - now).unsigned_abs();
    let policy = format!("\"monthly\";q={MONTHLY_CALLS};w={}", month.length_secs());
    let reqs: Vec<Req> = accounts
        .iter()
        .map(|acc| get(balances_path(BANK_1, acc), &token))
        .collect();
    // Exactly MONTHLY_CALLS admitted (any account: the key is consent × endpoint), each
    // advertising the month: r counts down, t is the time to the month's end.
    for left in (0..MONTHLY_CALLS).rev() {
        let r = send(&mut conn, &reqs[left as usize % reqs.len()]).await;
        r.ok_json();
        assert_eq!(
            r.header("ratelimit-policy"),
            Some(&*policy),
            "{}",
            r.describe()
        );
        let head = format!("\"monthly\";r={left};t=");
        assert_monthly_field(r.header("ratelimit"), &head, to_reset);
    }
    let refused = send(&mut conn, &reqs[0]).await;
    refused.assert_problem(429, "rate_limited");
    assert_eq!(refused.header("ratelimit-policy"), Some(&*policy));
    assert_monthly_field(refused.header("ratelimit"), "\"monthly\";r=0;t=", to_reset);
    assert_monthly_field(refused.header("retry-after"), "", to_reset);
    // Another endpoint of the consent is not capped; another consent has its own count.
    send(&mut conn, &get(account_path(BANK_1, &accounts[0]), &token))
        .await
        .ok_json();
    let restricted = hub.token("c-authorised-restricted");
    let other = send(
        &mut conn,
        &get(balances_path(BANK_1, &restricted_account(hub)), &restricted),
    )
    .await;
    let head = format!("\"monthly\";r={};t=", MONTHLY_CALLS - 1);
    assert_monthly_field(other.header("ratelimit"), &head, to_reset);
}
