//! Helpers shared by the integration tests: record factories and comparisons.
#![allow(dead_code)]

use consent_cache::{Bin, ConsentRecord, ConsentStatus, ConsentStore, Permission};
use time::OffsetDateTime;

pub fn bin(n: u64) -> Bin {
    Bin::new(n).unwrap()
}

pub fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

/// A valid record whose every field derives from `n`, so a reader can tell a torn one.
pub fn record(id: &str, n: u64) -> ConsentRecord {
    ConsentRecord {
        id: id.to_owned(),
        api_user: bin(180_340_000_000 + n % 7),
        customer: format!("{:012}", 900_000_000_000 + n),
        providers: if n.is_multiple_of(2) {
            vec![bin(990_140_000_011)]
        } else {
            vec![bin(990_140_000_011), bin(990_140_000_022 + n % 5)]
        },
        permissions: match n % 3 {
            0 => vec![Permission::Accounts],
            1 => vec![Permission::Accounts, Permission::Balances],
            _ => vec![
                Permission::Accounts,
                Permission::Balances,
                Permission::Transactions,
            ],
        },
        accounts: n
            .is_multiple_of(4)
            .then(|| vec![format!("KZ{n:018}"), "KZ-shared".to_owned()]),
        purpose: format!("purpose {}", n % 3),
        created_at: at(1_767_225_600 + n as i64),
        expires_at: (!n.is_multiple_of(5)).then(|| at(1_798_761_600 + n as i64)),
        status: ConsentStatus::Authorised,
    }
}

/// The store's contents as records, sorted by id.
pub fn contents(store: &ConsentStore) -> Vec<ConsentRecord> {
    let mut v: Vec<ConsentRecord> = store.iter().map(|c| c.to_record()).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}
