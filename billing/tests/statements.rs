//! Monthly statements priced by the tariff: free thresholds, caps, lines, overrides, a
//! mid-month tariff change, both sides of every call, rendering and digests.

mod support;
use support::{day, usage};

use std::str::FromStr;

use billing::routes::{OPEN_DATA, ROUTES, TRANSACTIONS};
use billing::statement::Totals;
use billing::{
    statements, Adjustment, Bin, CallClass, CustomerDay, Decimal, Outcome, Role, Statement, Tariff,
    UsageRow,
};

const ACCOUNTS: &str = ROUTES[0];
const BALANCES: &str = ROUTES[2];

fn bin(s: &str) -> Bin {
    Bin::parse(s).unwrap()
}
fn user_a() -> Bin {
    bin("100140000001")
}
fn user_b() -> Bin {
    bin("100140000002")
}
fn bank_1() -> Bin {
    bin("990340000011")
}
fn bank_2() -> Bin {
    bin("990340000022")
}
/// API user A at bank 1, and so on.
fn a1() -> (Bin, Bin) {
    (user_a(), bank_1())
}
fn a2() -> (Bin, Bin) {
    (user_a(), bank_2())
}
fn b1() -> (Bin, Bin) {
    (user_b(), bank_1())
}
fn b2() -> (Bin, Bin) {
    (user_b(), bank_2())
}
fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn row(
    d: &str,
    (user, bank): (Bin, Bin),
    route: &str,
    outcome: Outcome,
    calls: u64,
    lines: u64,
) -> UsageRow {
    usage(d, Some(user), Some(bank), route, outcome, (calls, lines))
}

/// Successful calls without transaction lines.
fn ok(d: &str, pair: (Bin, Bin), route: &str, calls: u64) -> UsageRow {
    row(d, pair, route, Outcome::Success, calls, 0)
}

fn customer(d: &str, (user, bank): (Bin, Bin), who: &str, route: &str, calls: u64) -> CustomerDay {
    CustomerDay {
        day: day(d),
        api_user: user,
        provider: bank,
        customer: who.to_string(),
        route: route.to_string(),
        calls,
    }
}

fn tariff(extra: &str) -> Tariff {
    let text = format!(
        "[[versions]]\neffective_from = 2026-01-01\n{extra}\n[versions.prices]\nchargeable = \"2.50\"\nprovider_failed = \"0\"\nper_100_lines = \"1.00\"\n"
    );
    Tariff::parse(&text, "t.toml").unwrap()
}

fn find(all: &[Statement], role: Role, who: Bin) -> &Statement {
    all.iter()
        .find(|s| s.role == role && s.participant == who)
        .unwrap_or_else(|| panic!("no {role:?} statement for {who}"))
}

#[test]
fn every_class_is_counted_and_only_chargeable_calls_are_priced() {
    let t = tariff("");
    let usage = [
        ok("2026-02-03", a1(), ACCOUNTS, 10),
        row("2026-02-03", a1(), ACCOUNTS, Outcome::ClientError, 2, 0),
        row("2026-02-03", a1(), ACCOUNTS, Outcome::Timeout, 3, 0),
        row("2026-02-03", a1(), ACCOUNTS, Outcome::Refused, 4, 0),
        ok("2026-02-03", a1(), OPEN_DATA, 5),
        // Outside the month: not counted.
        ok("2026-03-01", a1(), ACCOUNTS, 100),
    ];
    let all = statements(&t, 2026, 2, &usage, &[]).unwrap();
    assert_eq!(all.len(), 2, "one statement per participant and role");
    let a = find(&all, Role::ApiUser, user_a());
    let t = &a.totals;
    assert_eq!((t.calls, t.chargeable, t.free_calls), (24, 10, 0));
    assert_eq!((t.provider_failed, t.refused), (3, 4));
    assert_eq!(t.amount, dec("25.00"));
    assert_eq!(t.amount.to_string(), "25.00", "two decimals");
    let classes: Vec<_> = a
        .lines
        .iter()
        .map(|l| (l.route.as_str(), l.class))
        .collect();
    assert!(
        classes.contains(&(ACCOUNTS, CallClass::Free)),
        "a provider's 4xx is free"
    );
    assert!(classes.contains(&(OPEN_DATA, CallClass::Free)));
    let bank = find(&all, Role::Provider, bank_1());
    assert_eq!(bank.totals.provider_failed, 3);
    assert_eq!(
        bank.totals.amount,
        dec("25.00"),
        "owed what the API user pays"
    );
    assert!(bank.lines.iter().all(|l| l.counterparty == Some(user_a())));
}

#[test]
fn the_free_threshold_counts_per_customer_and_per_day() {
    // 2 free calls per customer per day with one API user at one provider.
    let t = tariff("free_per_customer_day = 2");
    let usage = [
        ok("2026-02-03", a1(), ACCOUNTS, 4),
        ok("2026-02-03", a1(), BALANCES, 3),
        ok("2026-02-04", a1(), ACCOUNTS, 3),
    ];
    let customers = [
        // Day 1: customer x makes 1 accounts + 3 balances (2 free), y 3 accounts (2 free).
        customer("2026-02-03", a1(), "x", ACCOUNTS, 1),
        customer("2026-02-03", a1(), "x", BALANCES, 3),
        customer("2026-02-03", a1(), "y", ACCOUNTS, 3),
        // Day 2: customer x again, a new day: 2 more free.
        customer("2026-02-04", a1(), "x", ACCOUNTS, 3),
        // Open data never counts towards the threshold.
        customer("2026-02-04", a1(), "x", OPEN_DATA, 9),
    ];
    let all = statements(&t, 2026, 2, &usage, &customers).unwrap();
    let a = find(&all, Role::ApiUser, user_a());
    assert_eq!(
        a.totals.free_calls, 6,
        "2 (x, day 1) + 2 (y, day 1) + 2 (x, day 2)"
    );
    assert_eq!(a.totals.chargeable, 10);
    assert_eq!(a.totals.amount, dec("10.00"), "4 calls charged at 2.50");
    let line = |route: &str| a.lines.iter().find(|l| l.route == route).unwrap();
    // x's day-1 free calls go to the accounts route first (canonical order), then balances.
    assert_eq!(line(ACCOUNTS).free_calls, 1 + 2 + 2);
    assert_eq!(line(BALANCES).free_calls, 1);
}

#[test]
fn a_monthly_cap_limits_an_api_users_charge_at_one_provider() {
    let t = tariff("monthly_cap = \"20.00\"");
    let usage = [
        ok("2026-02-03", a1(), ACCOUNTS, 10), // 25.00
        ok("2026-02-10", a2(), ACCOUNTS, 4),  // 10.00
        ok("2026-02-10", b1(), ACCOUNTS, 9),  // 22.50
    ];
    let all = statements(&t, 2026, 2, &usage, &[]).unwrap();
    let a = find(&all, Role::ApiUser, user_a());
    assert_eq!(a.totals.gross, dec("35.00"));
    assert_eq!(a.totals.cap_reduction, dec("5.00"));
    assert_eq!(
        a.totals.amount,
        dec("30.00"),
        "20.00 (capped) + 10.00 (under the cap)"
    );
    assert_eq!(a.caps.len(), 1);
    assert_eq!(a.caps[0].counterparty, bank_1());
    let bank = find(&all, Role::Provider, bank_1());
    assert_eq!(
        bank.totals.amount,
        dec("40.00"),
        "owed 20.00 by each API user, capped"
    );
    assert_eq!(bank.caps.len(), 2);
    // Every amount an API user owes is owed to a provider, and nothing more.
    let side = |role: Role| -> Decimal {
        all.iter()
            .filter(|s| s.role == role)
            .map(|s| s.totals.amount)
            .sum()
    };
    assert_eq!(side(Role::ApiUser), side(Role::Provider));
}

#[test]
fn transaction_lines_are_priced_per_100_pro_rata_and_rounded_once() {
    let t = tariff("");
    let usage = [
        row("2026-02-03", a1(), TRANSACTIONS, Outcome::Success, 2, 150),
        row("2026-02-04", a1(), TRANSACTIONS, Outcome::Success, 1, 1),
        // Lines of a failed call are never priced.
        row(
            "2026-02-04",
            a1(),
            TRANSACTIONS,
            Outcome::ServerError,
            1,
            40,
        ),
    ];
    let all = statements(&t, 2026, 2, &usage, &[]).unwrap();
    let a = find(&all, Role::ApiUser, user_a());
    let ok = a
        .lines
        .iter()
        .find(|l| l.class == CallClass::Chargeable)
        .unwrap();
    assert_eq!((ok.calls, ok.lines), (3, 151));
    // 3 × 2.50 + 151 × 1.00 / 100 = 7.50 + 1.51
    assert_eq!(ok.amount, dec("9.01"));
    assert_eq!(ok.per_100_lines, dec("1.00"));
    let failed = a
        .lines
        .iter()
        .find(|l| l.class == CallClass::ProviderFailed)
        .unwrap();
    assert_eq!((failed.lines, failed.amount), (40, dec("0.00")));
    // A third of a tiyn rounds per line, half away from zero.
    let t = Tariff::parse(
        "[[versions]]\neffective_from = 2026-01-01\n[versions.prices]\nchargeable = \"0\"\nper_100_lines = \"0.01\"\n",
        "t.toml",
    )
    .unwrap();
    let usage = [row(
        "2026-02-03",
        a1(),
        TRANSACTIONS,
        Outcome::Success,
        1,
        50,
    )];
    let all = statements(&t, 2026, 2, &usage, &[]).unwrap();
    assert_eq!(
        find(&all, Role::ApiUser, user_a()).totals.amount,
        dec("0.01"),
        "0.005 → 0.01"
    );
}

#[test]
fn overrides_price_an_api_users_and_a_providers_calls() {
    let t = tariff(
        "[[versions.overrides]]\nprovider = \"990340000022\"\nchargeable = \"3.00\"\n\n\
         [[versions.overrides]]\napi_user = \"100140000002\"\nchargeable = \"1.00\"\n",
    );
    let usage = [
        ok("2026-02-03", a1(), ACCOUNTS, 1),
        ok("2026-02-03", a2(), ACCOUNTS, 1),
        ok("2026-02-03", b2(), ACCOUNTS, 1),
    ];
    let all = statements(&t, 2026, 2, &usage, &[]).unwrap();
    assert_eq!(
        find(&all, Role::ApiUser, user_a()).totals.amount,
        dec("5.50"),
        "2.50 + 3.00"
    );
    assert_eq!(
        find(&all, Role::ApiUser, user_b()).totals.amount,
        dec("1.00"),
        "the API user's price wins"
    );
    assert_eq!(
        find(&all, Role::Provider, bank_2()).totals.amount,
        dec("4.00")
    );
}

#[test]
fn a_mid_month_tariff_change_prices_each_day_by_its_version() {
    let t = Tariff::parse(
        "[[versions]]\neffective_from = 2026-01-01\nfree_per_customer_day = 1\n[versions.prices]\nchargeable = \"2.00\"\n\n\
         [[versions]]\neffective_from = 2026-02-15\nmonthly_cap = \"100\"\n[versions.prices]\nchargeable = \"3.00\"\n",
        "t.toml",
    )
    .unwrap();
    let usage = [
        ok("2026-02-14", a1(), ACCOUNTS, 4),
        ok("2026-02-15", a1(), ACCOUNTS, 5),
    ];
    let customers = [
        customer("2026-02-14", a1(), "x", ACCOUNTS, 4),
        customer("2026-02-15", a1(), "x", ACCOUNTS, 5),
    ];
    let all = statements(&t, 2026, 2, &usage, &customers).unwrap();
    for s in [
        find(&all, Role::ApiUser, user_a()),
        find(&all, Role::Provider, bank_1()),
    ] {
        assert_eq!(s.lines.len(), 2, "one line per version");
        let (before, after) = (&s.lines[0], &s.lines[1]);
        assert_eq!(
            (before.tariff_from, before.calls, before.free_calls),
            (day("2026-01-01"), 4, 1)
        );
        assert_eq!(
            (before.unit_price, before.amount),
            (dec("2.00"), dec("6.00"))
        );
        assert_eq!(
            (after.tariff_from, after.calls, after.free_calls),
            (day("2026-02-15"), 5, 0)
        );
        assert_eq!(
            (after.unit_price, after.amount),
            (dec("3.00"), dec("15.00"))
        );
        assert_eq!(s.totals.amount, dec("21.00"));
    }
    // A day before the first version cannot be priced.
    let early = [ok("2025-12-31", a1(), ACCOUNTS, 1)];
    assert!(statements(&t, 2025, 12, &early, &[]).is_err());
    assert!(statements(&t, 2026, 13, &usage, &[]).is_err());
}

fn sample() -> Statement {
    let t = tariff("monthly_cap = \"3.00\"");
    let usage = [
        row("2026-02-03", a1(), TRANSACTIONS, Outcome::Success, 2, 120),
        row("2026-02-03", a1(), ACCOUNTS, Outcome::Refused, 1, 0),
    ];
    let all = statements(&t, 2026, 2, &usage, &[]).unwrap();
    find(&all, Role::ApiUser, user_a()).clone()
}

#[test]
fn the_csv_has_a_header_a_row_per_line_the_caps_and_the_total() {
    let s = sample();
    let csv = s.to_csv();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 5, "{csv}");
    assert!(rows[0].starts_with("statement,kind,counterparty,route,class,tariff_from,calls"));
    assert!(rows.iter().any(|r| r.contains(",line,990340000011,GET /v1/providers/{provider_id}/accounts/{account_id}/transactions,chargeable,2026-01-01,2,0,120,2.50,1.00,6.20")), "{csv}");
    assert!(
        rows.iter()
            .any(|r| r.ends_with(",cap,990340000011,,,,,,,,3.00,-3.20")),
        "{csv}"
    );
    assert!(
        rows[4].starts_with("2026-02/api_user/100140000001,total,,,,,3,0,120,,,3.00"),
        "{csv}"
    );
}

#[test]
fn the_printable_statement_is_aligned_and_complete() {
    let s = sample();
    let text = s.to_text();
    assert!(text.contains("API user: 100140000001"), "{text}");
    assert!(
        text.contains("Period: 2026-02-01 to 2026-02-28 (Asia/Almaty)"),
        "{text}"
    );
    assert!(text.contains("Amount due: 3.00 KZT"), "{text}");
    assert!(text.contains(&s.digest()), "{text}");
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("provider"))
        .take(3)
        .collect();
    assert_eq!(table.len(), 3, "{text}");
    // Right-aligned amounts: every row of the table ends in the same column.
    let width = table[0].len();
    assert!(table.iter().all(|l| l.len() == width), "{table:#?}");
    assert!(
        table[1].contains("providers/{provider_id}/accounts"),
        "{text}"
    );
}

#[test]
fn the_digest_is_stable_and_changes_with_any_field() {
    let s = sample();
    assert_eq!(s.digest(), sample().digest());
    assert_eq!(s.digest().len(), 64);
    let json = serde_json::to_string(&s).unwrap();
    assert!(
        json.contains("\"amount\":\"3.00\""),
        "money as strings: {json}"
    );
    let back: Statement = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back.digest(),
        s.digest(),
        "the JSON read back has the same digest"
    );
    let mut changed = s.clone();
    changed.lines[0].calls += 1;
    assert_ne!(changed.digest(), s.digest());
    let mut changed = s.clone();
    changed.totals = Totals {
        amount: dec("3.01"),
        ..s.totals.clone()
    };
    assert_ne!(changed.digest(), s.digest());
}

#[test]
fn an_adjustment_names_the_statement_and_needs_a_reason() {
    let s = sample();
    let a = Adjustment::new(&s, dec("-1.5"), "double-counted refund", "operator").unwrap();
    assert_eq!(
        (a.statement.as_str(), a.digest.as_str()),
        (s.id.as_str(), s.digest().as_str())
    );
    assert_eq!(a.amount.to_string(), "-1.50");
    assert!(Adjustment::new(&s, dec("0"), "x", "op").is_err());
    assert!(Adjustment::new(&s, dec("1.005"), "x", "op").is_err());
    assert!(Adjustment::new(&s, dec("1"), " ", "op").is_err());
}
