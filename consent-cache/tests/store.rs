//! The store's API: lookups, construction errors, versioned deltas, expiry and
//! concurrent readers during writes.

mod common;

use common::{contents, record};
use consent_cache::{
    Applied, ApplyError, BatchSummary, Change, ChangeOp, ConsentStatus, ConsentStore, Permission,
    RecordError, StoreError,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn upsert(version: u64, id: &str, n: u64) -> Change {
    Change {
        version,
        op: ChangeOp::Upsert(record(id, n)),
    }
}

#[test]
fn get_returns_what_was_stored() {
    let records: Vec<_> = (0..1000)
        .map(|n| record(&format!("consent-{n}"), n))
        .collect();
    let store = ConsentStore::from_records(records.clone()).unwrap();
    assert_eq!(store.len(), 1000);
    assert_eq!(store.version(), 0);
    for r in &records {
        let c = store.get(&r.id).unwrap();
        assert_eq!(c.id(), r.id);
        assert_eq!(c.customer(), r.customer);
        assert_eq!(c.providers(), r.providers.as_slice());
        assert_eq!(c.accounts_restricted(), r.accounts.is_some());
        assert_eq!(c.to_record(), *r);
    }
    assert!(store.get("consent-1000").is_none());
    assert!(store.get("").is_none());
    assert_eq!(contents(&store).len(), 1000);
}

#[test]
fn empty_store() {
    let store = ConsentStore::new();
    assert!(store.is_empty());
    assert!(store.get("x").is_none());
    assert_eq!(store.iter().count(), 0);
}

#[test]
fn duplicate_ids_name_both_positions() {
    let records = vec![
        record("a", 1),
        record("b", 2),
        record("c", 3),
        record("b", 4),
    ];
    let err = ConsentStore::from_records(records).unwrap_err();
    assert_eq!(
        err,
        StoreError::Duplicate {
            id: "b".into(),
            first: 1,
            index: 3
        }
    );
    assert_eq!(
        err.to_string(),
        r#"record #3: duplicate consent id "b" (first seen at record #1)"#
    );
}

#[test]
fn invalid_records_name_their_position_and_field() {
    let mut bad = record("b", 2);
    bad.providers.clear();
    let err = ConsentStore::from_records(vec![record("a", 1), bad]).unwrap_err();
    assert_eq!(
        err,
        StoreError::Invalid {
            index: 1,
            source: RecordError::NoProviders
        }
    );
    assert_eq!(err.to_string(), "record #1: providers: must not be empty");
}

#[test]
fn deltas_apply_in_version_order_and_replays_are_ignored() {
    let store = ConsentStore::from_records(vec![record("base", 1)]).unwrap();
    assert_eq!(store.apply(upsert(1, "new", 2)).unwrap(), Applied::Inserted);
    assert_eq!(store.version(), 1);
    assert_eq!(store.len(), 2);
    // Replays and older versions change nothing.
    assert_eq!(store.apply(upsert(1, "new", 3)).unwrap(), Applied::Stale);
    assert_eq!(
        store
            .apply(Change {
                version: 0,
                op: ChangeOp::Remove { id: "base".into() }
            })
            .unwrap(),
        Applied::Stale
    );
    assert_eq!(
        store.get("new").unwrap().customer(),
        record("new", 2).customer
    );
    assert!(store.get("base").is_some());
    assert_eq!(store.version(), 1);

    // Replacing a base record and an overlay record.
    assert_eq!(
        store.apply(upsert(5, "base", 10)).unwrap(),
        Applied::Replaced
    );
    assert_eq!(store.get("base").unwrap().to_record(), record("base", 10));
    assert_eq!(
        store.apply(upsert(6, "new", 11)).unwrap(),
        Applied::Replaced
    );
    assert_eq!(store.len(), 2);

    // Status changes keep the rest of the record; handles taken before do not change.
    let before = store.get("base").unwrap();
    let set = Change {
        version: 7,
        op: ChangeOp::SetStatus {
            id: "base".into(),
            status: ConsentStatus::Revoked,
        },
    };
    assert_eq!(store.apply(set).unwrap(), Applied::StatusSet);
    let after = store.get("base").unwrap();
    assert_eq!(after.status(), ConsentStatus::Revoked);
    assert_eq!(before.status(), ConsentStatus::Authorised);
    let mut expected = record("base", 10);
    expected.status = ConsentStatus::Revoked;
    assert_eq!(after.to_record(), expected);

    // Removal, and removing again.
    assert_eq!(
        store
            .apply(Change {
                version: 8,
                op: ChangeOp::Remove { id: "base".into() }
            })
            .unwrap(),
        Applied::Removed
    );
    assert!(store.get("base").is_none());
    assert_eq!(store.len(), 1);
    assert_eq!(
        store
            .apply(Change {
                version: 9,
                op: ChangeOp::Remove { id: "base".into() }
            })
            .unwrap(),
        Applied::Absent
    );
    assert_eq!(store.version(), 9);
    assert_eq!(before.id(), "base", "a handle outlives the removal");

    // Re-inserting a removed id.
    assert_eq!(
        store.apply(upsert(10, "base", 12)).unwrap(),
        Applied::Inserted
    );
    assert_eq!(store.get("base").unwrap().to_record(), record("base", 12));
    assert_eq!(store.len(), 2);
}

#[test]
fn failed_changes_leave_store_and_version_alone() {
    let store = ConsentStore::from_records(vec![record("a", 1)]).unwrap();
    let unknown = Change {
        version: 3,
        op: ChangeOp::SetStatus {
            id: "zz".into(),
            status: ConsentStatus::Revoked,
        },
    };
    assert_eq!(
        store.apply(unknown).unwrap_err(),
        ApplyError::UnknownConsent {
            version: 3,
            id: "zz".into()
        }
    );
    let mut bad = record("a", 2);
    bad.permissions = vec![Permission::Accounts, Permission::Accounts];
    let err = store
        .apply(Change {
            version: 4,
            op: ChangeOp::Upsert(bad),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"change 4: consent "a": permissions: accounts is listed twice"#
    );
    assert_eq!(store.version(), 0);
    assert_eq!(store.get("a").unwrap().to_record(), record("a", 1));
}

#[test]
fn batches_count_and_stop_at_the_first_error() {
    let store = ConsentStore::new();
    let done = store
        .apply_batch((1..=100).map(|v| upsert(v, &format!("c{v}"), v)))
        .unwrap();
    assert_eq!(
        done,
        BatchSummary {
            applied: 100,
            stale: 0
        }
    );
    let replay = store
        .apply_batch((95..=105).map(|v| upsert(v, &format!("c{v}"), v)))
        .unwrap();
    assert_eq!(
        replay,
        BatchSummary {
            applied: 5,
            stale: 6
        }
    );
    let batch = vec![
        upsert(106, "d1", 1),
        Change {
            version: 107,
            op: ChangeOp::SetStatus {
                id: "missing".into(),
                status: ConsentStatus::Revoked,
            },
        },
        upsert(108, "d2", 2),
    ];
    let err = store.apply_batch(batch).unwrap_err();
    assert_eq!(err.index, 1);
    assert_eq!(
        err.done,
        BatchSummary {
            applied: 1,
            stale: 0
        }
    );
    assert_eq!(store.version(), 106);
    assert!(store.get("d1").is_some());
    assert!(store.get("d2").is_none());
    assert_eq!(store.len(), 106);
}

#[test]
fn heavy_churn_keeps_contents_right() {
    // Enough changes per shard to trigger several compactions.
    let store = ConsentStore::from_records((0..5000).map(|n| record(&format!("c{n}"), n))).unwrap();
    let mut expected: std::collections::BTreeMap<String, consent_cache::ConsentRecord> = (0..5000)
        .map(|n| (format!("c{n}"), record(&format!("c{n}"), n)))
        .collect();
    let mut version = 0;
    for round in 0..6u64 {
        for n in (round..8000).step_by(3) {
            version += 1;
            let id = format!("c{n}");
            if (n + round) % 4 == 0 {
                store
                    .apply(Change {
                        version,
                        op: ChangeOp::Remove { id: id.clone() },
                    })
                    .unwrap();
                expected.remove(&id);
            } else {
                let r = record(&id, n * 10 + round);
                store
                    .apply(Change {
                        version,
                        op: ChangeOp::Upsert(r.clone()),
                    })
                    .unwrap();
                expected.insert(id, r);
            }
        }
    }
    assert_eq!(store.len(), expected.len());
    assert_eq!(contents(&store), expected.into_values().collect::<Vec<_>>());
}

#[test]
fn expire_due_flips_only_authorised_consents_past_expiry() {
    let mut records: Vec<_> = (1..=4).map(|n| record(&format!("c{n}"), n)).collect();
    records[0].expires_at = Some(common::at(2_000_000_000));
    records[1].expires_at = Some(common::at(2_000_000_100));
    records[2].expires_at = Some(common::at(1_999_999_000));
    records[2].status = ConsentStatus::Revoked;
    records[3].expires_at = None;
    let store = ConsentStore::from_records(records).unwrap();
    store.apply(upsert(1, "c5", 5)).unwrap();
    let mut c6 = record("c6", 6);
    c6.expires_at = Some(common::at(1_999_000_000));
    store
        .apply(Change {
            version: 2,
            op: ChangeOp::Upsert(c6),
        })
        .unwrap();

    assert_eq!(store.expire_due(2_000_000_000), 2);
    let status = |id: &str| store.get(id).unwrap().status();
    assert_eq!(status("c1"), ConsentStatus::Expired);
    assert_eq!(status("c2"), ConsentStatus::Authorised);
    assert_eq!(status("c3"), ConsentStatus::Revoked);
    assert_eq!(status("c4"), ConsentStatus::Authorised);
    assert_eq!(status("c6"), ConsentStatus::Expired);
    assert_eq!(store.expire_due(2_000_000_000), 0);
    assert_eq!(store.version(), 2);
    assert_eq!(store.len(), 6);
}

#[test]
fn readers_never_see_torn_or_older_records_while_a_writer_applies_deltas() {
    const IDS: u64 = 64;
    const ROUNDS: u64 = 300;
    let store = Arc::new(
        ConsentStore::from_records((0..IDS).map(|i| record(&format!("c{i}"), i * 1000))).unwrap(),
    );
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for reader in 0..3 {
            let store = &store;
            let done = &done;
            s.spawn(move || {
                let mut last_seen = vec![0u64; IDS as usize];
                let mut reads = 0u64;
                // Keep reading until the writer has finished, then once more over every id.
                loop {
                    let finished = done.load(Ordering::Acquire);
                    for i in 0..IDS {
                        let id = format!("c{i}");
                        let Some(c) = store.get(&id) else { continue };
                        // Every field of `record(id, n)` derives from n: a torn record would not rebuild.
                        let n: u64 = c.customer().parse::<u64>().unwrap() - 900_000_000_000;
                        assert_eq!(c.to_record(), record(&id, n), "reader {reader}");
                        assert!(
                            n >= last_seen[i as usize],
                            "reader {reader} went back in time on {id}"
                        );
                        last_seen[i as usize] = n;
                        reads += 1;
                    }
                    if finished {
                        break;
                    }
                }
                assert!(reads > 0);
            });
        }
        let store = &store;
        let done = &done;
        s.spawn(move || {
            let mut version = 0;
            for round in 1..=ROUNDS {
                let batch: Vec<Change> = (0..IDS)
                    .map(|i| {
                        version += 1;
                        let id = format!("c{i}");
                        if (i + round) % 16 == 0 {
                            Change {
                                version,
                                op: ChangeOp::Remove { id },
                            }
                        } else {
                            upsert(version, &id, i * 1000 + round * 1_000_000)
                        }
                    })
                    .collect();
                store.apply_batch(batch).unwrap();
            }
            done.store(true, Ordering::Release);
        });
    });
    assert_eq!(store.version(), IDS * ROUNDS);
    // In the last round, ids with (i + ROUNDS) % 16 == 0 were removed.
    let removed = (0..IDS).filter(|i| (i + ROUNDS).is_multiple_of(16)).count();
    assert_eq!(store.len(), IDS as usize - removed);
}

#[test]
fn expire_due_in_bulk_rebuilds_shards_with_the_same_result() {
    // Enough due consents per shard to take the rebuild path, plus overlay entries.
    let n = 40_000u64;
    let store = ConsentStore::from_records((0..n).map(|i| record(&format!("c{i}"), i))).unwrap();
    for v in 1..=100u64 {
        let mut r = record(&format!("c{v}"), v);
        r.expires_at = Some(r.created_at);
        store
            .apply(Change {
                version: v,
                op: ChangeOp::Upsert(r),
            })
            .unwrap();
    }
    // record(i) expires at 1_798_761_600 + i unless i % 5 == 0 (no expiry).
    let now = 1_798_761_600 + 30_000;
    let expected = (0..n)
        .filter(|i| (1..=100).contains(i) || (i % 5 != 0 && *i <= 30_000))
        .count();
    assert_eq!(store.expire_due(now), expected);
    for i in (0..n).step_by(7) {
        let c = store.get(&format!("c{i}")).unwrap();
        let due = (1..=100).contains(&i) || (i % 5 != 0 && i <= 30_000);
        let status = if due {
            ConsentStatus::Expired
        } else {
            ConsentStatus::Authorised
        };
        assert_eq!(c.status(), status, "c{i}");
    }
    assert_eq!(store.len(), n as usize);
    assert_eq!(store.expire_due(now), 0);
}

/// Contract §5's account id character set holds wherever a record enters the store: a
/// snapshot and a feed delta both refuse an id with a comma (it would read as two ids in
/// the hub's comma-joined `x-hub-accounts`), and the store is left as it was.
#[test]
fn account_ids_outside_the_contract_set_are_refused_in_snapshots_and_deltas() {
    let mut joined = record("joined", 2);
    joined.accounts = Some(vec!["KZ01,KZ02".to_owned()]);
    let err = ConsentStore::from_records(vec![record("a", 1), joined.clone()]).unwrap_err();
    assert_eq!(
        err,
        StoreError::Invalid {
            index: 1,
            source: RecordError::Account(0)
        }
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consents.jsonl");
    let line = |r: &consent_cache::ConsentRecord| serde_json::to_string(r).unwrap() + "\n";
    std::fs::write(&path, line(&record("a", 1)) + &line(&joined)).unwrap();
    let err = ConsentStore::load(&path).unwrap_err().to_string();
    assert!(err.contains("line 2: accounts[0]:"), "{err}");
    assert!(!err.contains("KZ01"), "the id is not echoed: {err}");

    let store = ConsentStore::from_records(vec![record("a", 1)]).unwrap();
    let mut spaced = record("a", 1);
    spaced.accounts = Some(vec!["KZ01 KZ02".to_owned()]);
    let err = store
        .apply(Change {
            version: 1,
            op: ChangeOp::Upsert(spaced),
        })
        .unwrap_err();
    assert!(err.to_string().contains("accounts[0]:"), "{err}");
    assert_eq!(store.version(), 0);
    assert_eq!(store.get("a").unwrap().to_record(), record("a", 1));
}
