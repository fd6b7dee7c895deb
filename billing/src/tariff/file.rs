//! The tariff file (TOML) and its compilation into a [`Tariff`]: unknown fields refused,
//! every value checked, and every error naming the file, the line and the dotted field
//! (`versions[1].overrides[0].chargeable`), as the hub's configuration does.

use std::collections::BTreeMap;

use consent_cache::Bin;
use feed_wire::rollup::Outcome;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;

use super::{Prices, Tariff, TariffError, TariffVersion, Terms, DEFAULT_TIME_ZONE};
use crate::class::{CallClass, Rule};
use crate::money::{check_cap, check_price, Money, CURRENCY};
use crate::routes::canonical_route;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTariff {
    currency: Option<Spanned<String>>,
    time_zone: Option<Spanned<String>>,
    versions: Spanned<Vec<FileVersion>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVersion {
    effective_from: Spanned<toml::value::Datetime>,
    #[serde(default)]
    free_per_customer_day: u32,
    monthly_cap: Option<Spanned<Money>>,
    prices: FilePrices,
    #[serde(default)]
    rules: Vec<FileRule>,
    #[serde(default)]
    overrides: Vec<Spanned<FileOverride>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePrices {
    chargeable: Spanned<Money>,
    free: Option<Spanned<Money>>,
    refused: Option<Spanned<Money>>,
    provider_failed: Option<Spanned<Money>>,
    per_100_lines: Option<Spanned<Money>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    route: Spanned<String>,
    outcome: Spanned<String>,
    class: CallClass,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOverride {
    api_user: Option<Spanned<Bin>>,
    provider: Option<Spanned<Bin>>,
    chargeable: Option<Spanned<Money>>,
    free: Option<Spanned<Money>>,
    refused: Option<Spanned<Money>>,
    provider_failed: Option<Spanned<Money>>,
    per_100_lines: Option<Spanned<Money>>,
    free_per_customer_day: Option<u32>,
    monthly_cap: Option<Spanned<Money>>,
}

/// The text being compiled, to turn spans into lines.
struct Source<'a> {
    text: &'a str,
    file: &'a str,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error<T>(&self, at: &Spanned<T>, field: &str, message: impl Into<String>) -> TariffError {
        TariffError::Invalid {
            file: self.file.to_string(),
            line: self.line(at.span().start),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A parse error: the field's dotted path from the deserializer (an unknown field's
    /// path ends with its name), the line from the parser's span.
    fn parse_error(&self, e: serde_path_to_error::Error<toml::de::Error>) -> TariffError {
        let message = e.inner().message().trim().to_string();
        let line = e.inner().span().map_or(0, |s| self.line(s.start));
        let field = e
            .path()
            .iter()
            .map(|s| s.to_string())
            .filter(|s| !s.contains("$__"))
            .collect::<Vec<_>>()
            .join(".")
            .replace(".[", "[");
        TariffError::Invalid {
            file: self.file.to_string(),
            line,
            field: if field.is_empty() { "-".into() } else { field },
            message,
        }
    }
}

/// Parses and validates `text`.
pub(super) fn compile(text: &str, file: &str) -> Result<Tariff, TariffError> {
    let src = Source { text, file };
    let de = toml::Deserializer::new(text);
    let dto: FileTariff = serde_path_to_error::deserialize(de).map_err(|e| src.parse_error(e))?;
    if let Some(c) = &dto.currency {
        if c.get_ref() != CURRENCY {
            return Err(src.error(c, "currency", format!("only {CURRENCY} is supported")));
        }
    }
    let (time_zone, zone_name) = zone(&src, dto.time_zone.as_ref())?;
    if dto.versions.get_ref().is_empty() {
        return Err(src.error(&dto.versions, "versions", "at least one version"));
    }
    let mut versions: Vec<TariffVersion> = Vec::new();
    for (i, v) in dto.versions.get_ref().iter().enumerate() {
        let field = format!("versions[{i}]");
        let version = compile_version(&src, &field, v)?;
        if let Some(prev) = versions.last() {
            if version.effective_from <= prev.effective_from {
                return Err(src.error(
                    &v.effective_from,
                    &format!("{field}.effective_from"),
                    format!(
                        "versions are in order of effective_from: {} is not after {}",
                        version.effective_from, prev.effective_from
                    ),
                ));
            }
        }
        versions.push(version);
    }
    Ok(Tariff {
        time_zone,
        zone_name,
        versions,
    })
}

fn zone(src: &Source, name: Option<&Spanned<String>>) -> Result<(TimeZone, String), TariffError> {
    let Some(name) = name else {
        let tz = TimeZone::get(DEFAULT_TIME_ZONE).map_err(|e| TariffError::Invalid {
            file: src.file.to_string(),
            line: 0,
            field: "time_zone".into(),
            message: e.to_string(),
        })?;
        return Ok((tz, DEFAULT_TIME_ZONE.to_string()));
    };
    let tz = TimeZone::get(name.get_ref()).map_err(|_| {
        src.error(
            name,
            "time_zone",
            "not a time zone of the tz database (e.g. \"Asia/Almaty\", \"UTC\")",
        )
    })?;
    Ok((tz, name.get_ref().clone()))
}

fn compile_version(
    src: &Source,
    field: &str,
    v: &FileVersion,
) -> Result<TariffVersion, TariffError> {
    let effective_from = date(src, &format!("{field}.effective_from"), &v.effective_from)?;
    let p = &v.prices;
    let pf = format!("{field}.prices");
    let zero = Decimal::ZERO;
    let prices = Prices {
        chargeable: price(src, &format!("{pf}.chargeable"), Some(&p.chargeable))?.unwrap_or(zero),
        free: price(src, &format!("{pf}.free"), p.free.as_ref())?.unwrap_or(zero),
        refused: price(src, &format!("{pf}.refused"), p.refused.as_ref())?.unwrap_or(zero),
        provider_failed: price(
            src,
            &format!("{pf}.provider_failed"),
            p.provider_failed.as_ref(),
        )?
        .unwrap_or(zero),
        per_100_lines: price(
            src,
            &format!("{pf}.per_100_lines"),
            p.per_100_lines.as_ref(),
        )?
        .unwrap_or(zero),
        free_per_customer_day: v.free_per_customer_day,
        monthly_cap: price(src, &format!("{field}.monthly_cap"), v.monthly_cap.as_ref())?,
    };
    let rules = v
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(src, &format!("{field}.rules[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    let (api_users, providers) = overrides(src, field, &v.overrides)?;
    Ok(TariffVersion {
        effective_from,
        rules,
        prices,
        api_users,
        providers,
    })
}

fn date(
    src: &Source,
    field: &str,
    at: &Spanned<toml::value::Datetime>,
) -> Result<Date, TariffError> {
    let dt = at.get_ref();
    let bad = || {
        src.error(
            at,
            field,
            "a local date without time (effective_from = 2026-01-01)",
        )
    };
    let (Some(d), None, None) = (dt.date, dt.time, dt.offset) else {
        return Err(bad());
    };
    let year = i16::try_from(d.year).map_err(|_| bad())?;
    let month = i8::try_from(d.month).map_err(|_| bad())?;
    let day = i8::try_from(d.day).map_err(|_| bad())?;
    Date::new(year, month, day).map_err(|_| bad())
}

fn price(
    src: &Source,
    field: &str,
    at: Option<&Spanned<Money>>,
) -> Result<Option<Decimal>, TariffError> {
    let Some(at) = at else { return Ok(None) };
    let value = at.get_ref().0;
    // Bounded so that pricing a month cannot leave Decimal's range (money.rs).
    let check = if field.ends_with(".monthly_cap") {
        check_cap
    } else {
        check_price
    };
    check(value).map_err(|m| src.error(at, field, m))?;
    Ok(Some(value))
}

fn rule(src: &Source, field: &str, r: &FileRule) -> Result<Rule, TariffError> {
    let route = match r.route.get_ref().as_str() {
        "*" => None,
        s => Some(canonical_route(s).ok_or_else(|| {
            src.error(
                &r.route,
                &format!("{field}.route"),
                format!(
                    "{s:?} is not a contract route template (see docs/billing.md), \"-\" or \"*\""
                ),
            )
        })?),
    };
    let outcome = match r.outcome.get_ref().as_str() {
        "*" => None,
        s => Some(
            Outcome::ALL
                .into_iter()
                .find(|o| o.as_str() == s)
                .ok_or_else(|| {
                    let known: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
                    src.error(
                        &r.outcome,
                        &format!("{field}.outcome"),
                        format!(
                            "{s:?} is not an outcome: one of {}, or \"*\"",
                            known.join(", ")
                        ),
                    )
                })?,
        ),
    };
    Ok(Rule {
        route,
        outcome,
        class: r.class,
    })
}

type OverrideMaps = (BTreeMap<Bin, Terms>, BTreeMap<Bin, Terms>);

fn overrides(
    src: &Source,
    field: &str,
    list: &[Spanned<FileOverride>],
) -> Result<OverrideMaps, TariffError> {
    let (mut api_users, mut providers) = (BTreeMap::new(), BTreeMap::new());
    for (i, entry) in list.iter().enumerate() {
        let f = format!("{field}.overrides[{i}]");
        let o = entry.get_ref();
        let (who, map, key) = match (&o.api_user, &o.provider) {
            (Some(b), None) => (b, &mut api_users, "api_user"),
            (None, Some(b)) => (b, &mut providers, "provider"),
            (Some(b), Some(_)) => {
                return Err(src.error(
                    b,
                    &f,
                    "an override names either api_user or provider, not both",
                ))
            }
            (None, None) => {
                return Err(src.error(
                    entry,
                    &f,
                    "an override names its api_user or its provider (a BIN)",
                ))
            }
        };
        let terms = terms(src, &f, o)?;
        if map.insert(*who.get_ref(), terms).is_some() {
            return Err(src.error(
                who,
                &format!("{f}.{key}"),
                "this participant already has an override in this version",
            ));
        }
    }
    Ok((api_users, providers))
}

fn terms(src: &Source, f: &str, o: &FileOverride) -> Result<Terms, TariffError> {
    let p = |name: &str, at: Option<&Spanned<Money>>| price(src, &format!("{f}.{name}"), at);
    Ok(Terms {
        chargeable: p("chargeable", o.chargeable.as_ref())?,
        free: p("free", o.free.as_ref())?,
        refused: p("refused", o.refused.as_ref())?,
        provider_failed: p("provider_failed", o.provider_failed.as_ref())?,
        per_100_lines: p("per_100_lines", o.per_100_lines.as_ref())?,
        free_per_customer_day: o.free_per_customer_day,
        monthly_cap: p("monthly_cap", o.monthly_cap.as_ref())?,
    })
}
