//! The sandbox bank's synthetic data: deterministic, and valid by the rules a real
//! counterpart would check (IIN and IBAN check digits, shapes, ordering).

use consent_cache::Bin;
use sandbox::data::{
    is_valid_iin, is_valid_kz_iban, AccountKind, BankData, Currency, BUSY_ACCOUNT_TRANSACTIONS,
    BUSY_CUSTOMER_EVERY,
};
use std::collections::HashSet;

fn bin(s: &str) -> Bin {
    Bin::parse(s).expect("bin")
}

/// Everything the bank would serve, as one JSON document.
fn everything(d: &BankData) -> Vec<u8> {
    let customers: Vec<serde_json::Value> = d
        .customers()
        .map(|c| {
            serde_json::json!({
                "iin": c.iin, "name": c.name,
                "accounts": c.accounts.iter().map(|a| serde_json::json!({
                    "account": a, "booked": a.balance.booked, "available": a.balance.available,
                    "transactions": a.transactions,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "customers": customers,
        "rates": d.exchange_rates(), "branches": d.branches(),
        "atms": d.atms(), "products": d.products(),
    }))
    .expect("serialise")
}

#[test]
fn same_inputs_same_bytes() {
    let a = BankData::generate(bin("180340012345"), 42, 25);
    let b = BankData::generate(bin("180340012345"), 42, 25);
    assert_eq!(everything(&a), everything(&b));
    let other_seed = BankData::generate(bin("180340012345"), 43, 25);
    assert_ne!(everything(&a), everything(&other_seed));
    let other_bank = BankData::generate(bin("190440054321"), 42, 25);
    assert_ne!(everything(&a), everything(&other_bank));
}

#[test]
fn iins_and_ibans_have_valid_check_digits_and_are_unique() {
    let d = BankData::generate(bin("180340012345"), 5, 300);
    let mut iins = HashSet::new();
    let mut ibans = HashSet::new();
    let mut ids = HashSet::new();
    let code = format!("{:03}", d.bank_code());
    for c in d.customers() {
        assert!(is_valid_iin(&c.iin), "{}", c.iin);
        // Century/sex digit agrees with the birth year.
        let seventh = c.iin.as_bytes()[6];
        assert_eq!(
            c.born.year() >= 2000,
            matches!(seventh, b'5' | b'6'),
            "{}",
            c.iin
        );
        assert!(iins.insert(c.iin.clone()));
        assert!((1..=4).contains(&c.accounts.len()));
        for a in &c.accounts {
            assert!(is_valid_kz_iban(&a.iban), "{}", a.iban);
            assert_eq!(&a.iban[4..7], code);
            assert!(a.iban[7..].starts_with(a.currency.as_str()));
            assert!(ibans.insert(a.iban.clone()));
            assert!(a.id.starts_with("acc-") && a.id.len() == 20 && !a.id.contains(&a.iban));
            assert!(ids.insert(a.id.clone()));
        }
    }
    // A corrupted IBAN or IIN fails the check.
    let first = d.customers().next().expect("customer");
    let mut iban = first.accounts[0].iban.clone().into_bytes();
    iban[19] = if iban[19] == b'0' { b'1' } else { b'0' };
    assert!(!is_valid_kz_iban(&String::from_utf8(iban).expect("ascii")));
    let mut iin = first.iin.clone().into_bytes();
    iin[11] = b'0' + (iin[11] - b'0' + 1) % 10;
    assert!(!is_valid_iin(&String::from_utf8(iin).expect("ascii")));
}

#[test]
fn accounts_and_transactions_look_like_a_bank() {
    let d = BankData::generate(bin("180340012345"), 11, 40);
    let mut tx_ids = HashSet::new();
    let mut currencies = HashSet::new();
    let mut kinds = HashSet::new();
    let mut cyrillic = false;
    for (i, c) in d.customers().enumerate() {
        let first = &c.accounts[0];
        assert_eq!(first.kind, AccountKind::Card);
        assert_eq!(first.currency, Currency::Kzt);
        if i % BUSY_CUSTOMER_EVERY == 0 {
            assert_eq!(first.transactions.len(), BUSY_ACCOUNT_TRANSACTIONS);
        }
        for a in &c.accounts {
            currencies.insert(a.currency);
            kinds.insert(a.kind);
            if !(i % BUSY_CUSTOMER_EVERY == 0 && a.id == first.id) {
                assert!(
                    a.transactions.len() <= 60,
                    "{} has {}",
                    a.id,
                    a.transactions.len()
                );
            }
            assert!(a.balance.booked.0 >= 0);
            assert!(a
                .transactions
                .windows(2)
                .all(|w| w[0].booking_date >= w[1].booking_date));
            for t in &a.transactions {
                assert!(t.amount.0 > 0);
                assert_eq!(t.currency, a.currency);
                assert!(t.booking_date <= sandbox::data::AS_OF);
                assert!(t.value_date <= t.booking_date);
                assert!(t.booking_date >= a.opened);
                assert!(tx_ids.insert(t.id), "duplicate transaction id");
                cyrillic |= t.description.chars().any(|ch| ('а'..='я').contains(&ch));
            }
        }
    }
    assert!(cyrillic);
    assert!(
        currencies.contains(&Currency::Kzt) && currencies.len() >= 3,
        "{currencies:?}"
    );
    assert_eq!(kinds.len(), 3);
    let (owner, busiest) = d.busiest_account().expect("busiest");
    assert_eq!(busiest.transactions.len(), BUSY_ACCOUNT_TRANSACTIONS);
    assert_eq!(d.account(&busiest.id).map(|a| &a.iban), Some(&busiest.iban));
    assert_eq!(d.customer(&owner.iin).map(|c| &c.name), Some(&owner.name));
    assert_eq!(d.busy_customers().count(), 4);
}

#[test]
fn json_amounts_are_two_decimal_strings() {
    let d = BankData::generate(bin("180340012345"), 3, 2);
    let a = &d.customers().next().expect("customer").accounts[0];
    let v = serde_json::to_value(&a.transactions[0]).expect("json");
    let amount = v["amount"].as_str().expect("string amount");
    let (units, cents) = amount.split_once('.').expect("decimal point");
    assert!(!units.is_empty() && cents.len() == 2);
    assert!(v["transaction_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("tx-")));
    assert!(v["booking_date"].as_str().is_some_and(|s| s.len() == 10));
    let p = serde_json::to_value(&d.products()[0]).expect("json");
    assert!(p["annual_rate"].as_str().is_some_and(|r| r.contains('.')));
}
