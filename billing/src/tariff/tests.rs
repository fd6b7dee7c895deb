//! Parsing, validation (file, line and field named), version selection and class rules.

use super::*;
use std::str::FromStr;

const BASE: &str = r#"time_zone = "Asia/Almaty"

[[versions]]
effective_from = 2026-01-01
free_per_customer_day = 2

[versions.prices]
chargeable = "2.50"
per_100_lines = "1.00"

[[versions]]
effective_from = 2026-03-15

[versions.prices]
chargeable = "4.00"
"#;

fn d(s: &str) -> Date {
    s.parse().unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// The error's (line, field, message) for `text`.
fn invalid(text: &str) -> (usize, String, String) {
    match Tariff::parse(text, "t.toml") {
        Err(TariffError::Invalid {
            file,
            line,
            field,
            message,
        }) => {
            assert_eq!(file, "t.toml");
            (line, field, message)
        }
        other => panic!("expected an invalid tariff, got {other:?}"),
    }
}

#[test]
fn the_example_tariff_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/tariff.example.toml");
    let t = Tariff::load(Path::new(path)).unwrap();
    assert_eq!(t.versions().len(), 2);
    assert_eq!(t.time_zone_name(), "Asia/Almaty");
}

#[test]
fn a_version_applies_from_its_day_until_the_next_ones() {
    let t = Tariff::parse(BASE, "t.toml").unwrap();
    assert!(t.version_at(d("2025-12-31")).is_none(), "before the first");
    assert_eq!(
        t.version_at(d("2026-01-01")).unwrap().effective_from,
        d("2026-01-01")
    );
    assert_eq!(
        t.version_at(d("2026-03-14")).unwrap().effective_from,
        d("2026-01-01")
    );
    assert_eq!(
        t.version_at(d("2026-03-15")).unwrap().effective_from,
        d("2026-03-15")
    );
    assert_eq!(
        t.version_at(d("2030-01-01")).unwrap().effective_from,
        d("2026-03-15")
    );
    assert_eq!(t.time_zone().iana_name(), Some("Asia/Almaty"));
}

#[test]
fn the_default_time_zone_is_almaty() {
    let t = Tariff::parse(&BASE.replace("time_zone = \"Asia/Almaty\"", ""), "t.toml").unwrap();
    assert_eq!(t.time_zone_name(), "Asia/Almaty");
}

#[test]
fn unknown_fields_are_refused_with_their_line_and_path() {
    let text = BASE.replace("per_100_lines = \"1.00\"", "per_100_line = \"1.00\"");
    let (line, field, message) = invalid(&text);
    assert_eq!(
        (line, field.as_str()),
        (9, "versions[0].prices.per_100_line"),
        "{message}"
    );
    assert!(message.contains("unknown field"), "{message}");
    let (line, field, _) = invalid(&format!(
        "{BASE}\n[[versions.rules]]\nroute = \"*\"\noutcome = \"*\"\nclas = \"free\"\n"
    ));
    assert_eq!((line, field.as_str()), (20, "versions[1].rules[0].clas"));
    let (line, field, _) = invalid(&format!("tarif = 1\n{BASE}"));
    assert_eq!((line, field.as_str()), (1, "tarif"));
}

#[test]
fn a_float_price_is_refused_at_its_line() {
    let text = BASE.replace("chargeable = \"4.00\"", "chargeable = 4.1");
    let (line, field, message) = invalid(&text);
    assert_eq!(
        (line, field.as_str()),
        (15, "versions[1].prices.chargeable"),
        "{message}"
    );
    assert!(message.contains("never as floats"), "{message}");
}

#[test]
fn prices_are_non_negative_with_at_most_two_decimals() {
    let (line, field, m) = invalid(&BASE.replace("\"2.50\"", "\"-1\""));
    assert_eq!(
        (line, field.as_str()),
        (8, "versions[0].prices.chargeable"),
        "{m}"
    );
    assert!(m.contains("negative"), "{m}");
    let (line, field, m) = invalid(&BASE.replace("\"1.00\"", "\"0.125\""));
    assert_eq!(
        (line, field.as_str()),
        (9, "versions[0].prices.per_100_lines"),
        "{m}"
    );
    assert!(m.contains("two decimals"), "{m}");
}

#[test]
fn versions_must_be_in_date_order() {
    let (line, field, m) = invalid(&BASE.replace("2026-03-15", "2026-01-01"));
    assert_eq!(
        (line, field.as_str()),
        (12, "versions[1].effective_from"),
        "{m}"
    );
    let (line, field, _) = invalid(&BASE.replace("2026-03-15", "2026-03-15T10:00:00"));
    assert_eq!((line, field.as_str()), (12, "versions[1].effective_from"));
}

#[test]
fn a_time_zone_and_a_currency_are_checked() {
    let (line, field, _) = invalid(&BASE.replace("Asia/Almaty", "Mars/Olympus"));
    assert_eq!((line, field.as_str()), (1, "time_zone"));
    let (line, field, _) = invalid(&format!("currency = \"USD\"\n{BASE}"));
    assert_eq!((line, field.as_str()), (1, "currency"));
    let (_, field, _) = invalid("time_zone = \"UTC\"\nversions = []\n");
    assert_eq!(field, "versions");
}

#[test]
fn rules_name_known_routes_outcomes_and_classes() {
    let rule = |route: &str, outcome: &str, class: &str| {
        format!("{BASE}\n[[versions.rules]]\nroute = \"{route}\"\noutcome = \"{outcome}\"\nclass = \"{class}\"\n")
    };
    let (line, field, _) = invalid(&rule(
        "/v1/providers/{provider_id}/cards",
        "success",
        "free",
    ));
    assert_eq!((line, field.as_str()), (18, "versions[1].rules[0].route"));
    let (line, field, _) = invalid(&rule("*", "fine", "free"));
    assert_eq!((line, field.as_str()), (19, "versions[1].rules[0].outcome"));
    let (line, field, m) = invalid(&rule("*", "*", "expensive"));
    assert_eq!(
        (line, field.as_str()),
        (20, "versions[1].rules[0].class"),
        "{m}"
    );
    assert!(Tariff::parse(&rule("-", "*", "refused"), "t.toml").is_ok());
}

#[test]
fn overrides_name_one_valid_bin_once() {
    let with = |o: &str| format!("{BASE}\n[[versions.overrides]]\n{o}\n");
    let (line, field, _) = invalid(&with("api_user = \"12345\""));
    assert_eq!(
        (line, field.as_str()),
        (18, "versions[1].overrides[0].api_user")
    );
    let (line, field, _) = invalid(&with("chargeable = \"1\""));
    assert_eq!((line, field.as_str()), (17, "versions[1].overrides[0]"));
    let (_, field, _) = invalid(&with(
        "api_user = \"100140000001\"\nprovider = \"990340000011\"",
    ));
    assert_eq!(field, "versions[1].overrides[0]");
    let twice = format!(
        "{}[[versions.overrides]]\nprovider = \"990340000011\"\n",
        with("provider = \"990340000011\"")
    );
    let (line, field, _) = invalid(&twice);
    assert_eq!(
        (line, field.as_str()),
        (20, "versions[1].overrides[1].provider")
    );
}

#[test]
fn overrides_replace_prices_the_api_users_winning() {
    let text = format!(
        "{BASE}\n[[versions.overrides]]\nprovider = \"990340000011\"\nchargeable = \"5\"\nper_100_lines = \"3\"\n\n\
         [[versions.overrides]]\napi_user = \"100140000001\"\nchargeable = \"1.10\"\nmonthly_cap = \"100\"\n"
    );
    let t = Tariff::parse(&text, "t.toml").unwrap();
    let v = t.version_at(d("2026-04-01")).unwrap();
    let bank = Bin::parse("990340000011").ok();
    let user = Bin::parse("100140000001").ok();
    let other = Bin::parse("100140000002").ok();
    assert_eq!(v.prices_for(other, None).chargeable, dec("4.00"));
    assert_eq!(v.prices_for(other, bank).chargeable, dec("5"));
    assert_eq!(v.prices_for(other, bank).per_100_lines, dec("3"));
    let p = v.prices_for(user, bank);
    assert_eq!((p.chargeable, p.per_100_lines), (dec("1.10"), dec("3")));
    assert_eq!(p.monthly_cap, Some(dec("100")));
    assert_eq!(v.prices_for(other, bank).monthly_cap, None);
}

#[test]
fn each_outcome_has_its_default_class() {
    let t = Tariff::parse(BASE, "t.toml").unwrap();
    let v = t.version_at(d("2026-01-01")).unwrap();
    for route in crate::routes::DATA_ROUTES {
        assert_eq!(
            v.class_of(route, Outcome::Success),
            CallClass::Chargeable,
            "{route}"
        );
        let bare = route.strip_prefix("GET ").unwrap();
        assert_eq!(
            v.class_of(bare, Outcome::Success),
            CallClass::Chargeable,
            "journal spelling"
        );
    }
    let accounts = crate::routes::ROUTES[0];
    assert_eq!(
        v.class_of(crate::routes::OPEN_DATA, Outcome::Success),
        CallClass::Free
    );
    assert_eq!(v.class_of(accounts, Outcome::ClientError), CallClass::Free);
    assert_eq!(v.class_of(accounts, Outcome::Refused), CallClass::Refused);
    assert_eq!(v.class_of("-", Outcome::Refused), CallClass::Refused);
    for o in [
        Outcome::ServerError,
        Outcome::Timeout,
        Outcome::Unreachable,
        Outcome::BadResponse,
    ] {
        assert_eq!(v.class_of(accounts, o), CallClass::ProviderFailed, "{o:?}");
    }
}

#[test]
fn rules_override_the_defaults_first_match_winning() {
    let text = format!(
        "{BASE}\n[[versions.rules]]\nroute = \"/v1/open-data/{{provider_id}}/{{dataset}}\"\noutcome = \"success\"\nclass = \"chargeable\"\n\n\
         [[versions.rules]]\nroute = \"*\"\noutcome = \"client_error\"\nclass = \"chargeable\"\n\n\
         [[versions.rules]]\nroute = \"*\"\noutcome = \"*\"\nclass = \"free\"\n"
    );
    let t = Tariff::parse(&text, "t.toml").unwrap();
    let v = t.version_at(d("2026-04-01")).unwrap();
    assert_eq!(
        v.class_of(crate::routes::OPEN_DATA, Outcome::Success),
        CallClass::Chargeable
    );
    assert_eq!(
        v.class_of(crate::routes::ROUTES[2], Outcome::ClientError),
        CallClass::Chargeable
    );
    assert_eq!(
        v.class_of(crate::routes::ROUTES[2], Outcome::Timeout),
        CallClass::Free,
        "catch-all"
    );
    let before = t.version_at(d("2026-01-01")).unwrap();
    assert_eq!(
        before.class_of(crate::routes::OPEN_DATA, Outcome::Success),
        CallClass::Free,
        "the other version keeps the defaults"
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = Tariff::load(Path::new("/nonexistent/tariff.toml")).unwrap_err();
    assert!(
        e.to_string().starts_with("/nonexistent/tariff.toml: "),
        "{e}"
    );
}

#[test]
fn prices_and_caps_above_their_bounds_are_refused_at_their_line() {
    let (line, field, m) = invalid(&BASE.replace("\"2.50\"", "\"1000000000.01\""));
    assert_eq!(
        (line, field.as_str()),
        (8, "versions[0].prices.chargeable"),
        "{m}"
    );
    assert!(m.contains("1000000000 KZT"), "{m}");
    assert!(Tariff::parse(&BASE.replace("\"2.50\"", "\"1000000000\""), "t.toml").is_ok());
    let capped = BASE.replace(
        "free_per_customer_day = 2\n",
        "free_per_customer_day = 2\nmonthly_cap = \"1000000000000.01\"\n",
    );
    let (line, field, m) = invalid(&capped);
    assert_eq!(
        (line, field.as_str()),
        (6, "versions[0].monthly_cap"),
        "{m}"
    );
    let capped = capped.replace("1000000000000.01", "1000000000000");
    assert!(Tariff::parse(&capped, "t.toml").is_ok());
}
