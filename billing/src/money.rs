//! Money: KZT with tiyn, in exact decimals. A tariff writes amounts as strings ("12.50")
//! or integers, never floats (a binary float cannot hold most prices exactly); statements
//! carry exactly two decimals, rounded half away from zero (the usual commercial rule).

use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Decimals of the currency (tiyn).
pub const DECIMALS: u32 = 2;

/// The currency every amount is in.
pub const CURRENCY: &str = "KZT";

/// `value` to tiyn, half away from zero, always written with two decimals ("5.00").
pub fn round(value: Decimal) -> Decimal {
    let mut v = value.round_dp_with_strategy(DECIMALS, RoundingStrategy::MidpointAwayFromZero);
    v.rescale(DECIMALS);
    v
}

/// Highest price per unit (call, or 100 transaction lines) a tariff may set, in KZT. Far
/// above any real fee; with it, a month's line amount (at most 2^64 calls, or lines) stays
/// below 2 × 10^28, inside `Decimal`'s range (7.9 × 10^28), and the pricing's checked
/// arithmetic only fails on sums no real month reaches.
pub const MAX_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// Highest monthly cap a tariff may set, in KZT.
pub const MAX_CAP: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

/// Whether `value` is a valid price: not negative, at most two decimals, at most
/// [`MAX_PRICE`].
pub fn check_price(value: Decimal) -> Result<(), &'static str> {
    check_amount(value)?;
    if value > MAX_PRICE {
        return Err("at most 1000000000 KZT per unit");
    }
    Ok(())
}

/// Whether `value` is a valid monthly cap: not negative, at most two decimals, at most
/// [`MAX_CAP`].
pub fn check_cap(value: Decimal) -> Result<(), &'static str> {
    check_amount(value)?;
    if value > MAX_CAP {
        return Err("at most 1000000000000 KZT a month");
    }
    Ok(())
}

fn check_amount(value: Decimal) -> Result<(), &'static str> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err("a price is never negative");
    }
    if value.normalize().scale() > DECIMALS {
        return Err("at most two decimals (tiyn)");
    }
    Ok(())
}

/// An amount as a tariff writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money(pub Decimal);

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        d.deserialize_any(MoneyVisitor)
    }
}

struct MoneyVisitor;

impl Visitor<'_> for MoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an amount in KZT as a string (\"12.50\") or an integer")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Money, E> {
        let d = Decimal::from_str_exact(s.trim())
            .map_err(|_| E::custom(format!("{s:?} is not an amount (\"12.50\")")))?;
        Ok(Money(d))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
        Ok(Money(Decimal::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
        Ok(Money(Decimal::from(v)))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Money, E> {
        Err(E::custom(
            "write amounts as strings (\"12.50\"), never as floats: a float cannot hold tiyn exactly",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn rounding_is_half_away_from_zero_with_two_decimals() {
        let r = |s: &str| round(Decimal::from_str(s).unwrap()).to_string();
        assert_eq!(r("1.005"), "1.01");
        assert_eq!(r("1.004"), "1.00");
        assert_eq!(r("5"), "5.00");
        assert_eq!(r("-1.005"), "-1.01");
    }

    #[test]
    fn prices_are_non_negative_with_tiyn_at_most() {
        let c = |s: &str| check_price(Decimal::from_str(s).unwrap());
        assert!(c("0").is_ok());
        assert!(c("12.50").is_ok());
        assert!(c("12.500").is_ok(), "trailing zeros are still tiyn");
        assert!(c("12.505").is_err());
        assert!(c("-1").is_err());
        assert!(c("1000000000").is_ok());
        assert_eq!(c("1000000000.01"), Err("at most 1000000000 KZT per unit"));
        let cap = |s: &str| check_cap(Decimal::from_str(s).unwrap());
        assert_eq!(MAX_CAP, Decimal::from_str("1000000000000").unwrap());
        assert!(cap("1000000000000").is_ok());
        assert!(cap("1000000000000.01").is_err());
        assert!(cap("-1").is_err());
    }
}
