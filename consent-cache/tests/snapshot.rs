//! Snapshot files: JSON Lines and binary round trips, error reporting, and
//! rejection of corrupt or truncated binary snapshots.

mod common;

use common::{at, bin, contents, record};
use consent_cache::{
    convert, write_snapshot, Change, ChangeOp, ConsentRecord, ConsentStatus, ConsentStore,
    LoadError, Origin, Permission, RecordError, WriteError,
};
use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

fn jsonl(records: &[ConsentRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn load_err(path: &Path) -> LoadError {
    ConsentStore::load(path).unwrap_err()
}

#[test]
fn jsonl_to_store_to_snap_to_store_keeps_contents_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<_> = (0..3000)
        .map(|n| record(&format!("{n:08x}-c0ns-e4t0-9d1c-000000{n:06}"), n))
        .collect();
    let text = format!(
        "# exported by the registry\n{{\"snapshot_version\": 42}}\n\n{}",
        jsonl(&records).replace("\n", "\r\n")
    );
    let src = write(dir.path(), "consents.jsonl", &text);
    let a = ConsentStore::load(&src).unwrap();
    assert_eq!(a.version(), 42);
    assert_eq!(a.len(), 3000);
    let mut sorted = records.clone();
    sorted.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(contents(&a), sorted);

    let snap = dir.path().join("consents.snap");
    assert_eq!(a.write_snapshot(&snap).unwrap(), 3000);
    let b = ConsentStore::load(&snap).unwrap();
    assert_eq!(b.version(), 42);
    assert_eq!(contents(&b), sorted);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left behind: {names:?}");

    // convert() does the same in one call.
    let converted = dir.path().join("converted.snap");
    assert_eq!(convert(&src, &converted).unwrap(), 3000);
    assert_eq!(contents(&ConsentStore::load(&converted).unwrap()), sorted);
}

#[test]
fn snapshot_after_deltas_reflects_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = ConsentStore::from_records((0..500).map(|n| record(&format!("c{n}"), n))).unwrap();
    for v in 1..=200u64 {
        let op = match v % 3 {
            0 => ChangeOp::Remove {
                id: format!("c{v}"),
            },
            1 => ChangeOp::SetStatus {
                id: format!("c{v}"),
                status: ConsentStatus::Revoked,
            },
            _ => ChangeOp::Upsert(record(&format!("n{v}"), v)),
        };
        store.apply(Change { version: v, op }).unwrap();
    }
    let snap = dir.path().join("s.snap");
    store.write_snapshot(&snap).unwrap();
    let loaded = ConsentStore::load(&snap).unwrap();
    assert_eq!(loaded.version(), 200);
    assert_eq!(contents(&loaded), contents(&store));
}

#[test]
fn jsonl_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::to_string(&record("ok", 1)).unwrap();
    let cases = [
        (
            good.replace("\"990140000011\"", "\"990140000011\",\"99014\""),
            "providers[1]: a BIN is exactly 12 ASCII digits",
        ),
        (
            good.replace(",\"status\":\"authorised\"", ""),
            "missing field `status`",
        ),
        (
            good.replace("\"status\"", "\"colour\":1,\"status\""),
            "unknown field `colour`",
        ),
        (
            good.replace("\"authorised\"", "\"maybe\""),
            "status: unknown variant `maybe`",
        ),
        (
            good.replace("2026-01-01T00:00:01Z", "2026-01-01"),
            "created_at: ",
        ),
        (
            good.replace("[\"accounts\"", "[\"accounts\",\"accounts\""),
            "permissions: accounts is listed twice",
        ),
        (
            good.replace("\"permissions\":[", "\"permissions\":[\"loans\","),
            "permissions[0]: unknown variant `loans`",
        ),
        (good.clone() + " x", "trailing characters"),
        (
            "{\"snapshot_version\": 3}".to_owned(),
            "unknown field `snapshot_version`",
        ),
    ];
    for (i, (bad, expected)) in cases.iter().enumerate() {
        assert_ne!(bad, &good, "case {i} did not change the line");
        let text = format!(
            "# header comment\n{}\n\n{}\n{}\n",
            good.replace("\"ok\"", "\"a\""),
            good,
            bad
        );
        let path = write(dir.path(), "bad.jsonl", &text);
        let err = load_err(&path);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{}: line 5", path.display())),
            "case {i}: {msg}"
        );
        assert!(
            msg.contains(expected),
            "case {i}: {msg:?} should contain {expected:?}"
        );
    }
}

#[test]
fn jsonl_duplicates_and_invalid_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "dup.jsonl",
        &jsonl(&[record("a", 1), record("b", 2), record("a", 3)]),
    );
    let err = load_err(&path);
    assert!(
        matches!(&err, LoadError::Duplicate { id, first: Origin::Line(1), second: Origin::Line(3), .. } if id == "a"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: line 3: duplicate consent id \"a\" (first at line 1)",
            path.display()
        )
    );

    let mut bad = record("c", 3);
    bad.accounts = Some(vec![]);
    let path = write(dir.path(), "invalid.jsonl", &jsonl(&[record("a", 1), bad]));
    let err = load_err(&path);
    assert!(
        matches!(
            err,
            LoadError::Invalid {
                origin: Origin::Line(2),
                source: RecordError::NoAccounts,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("line 2: accounts: must not be empty"),
        "{err}"
    );
}

#[test]
fn jsonl_errors_in_large_files_report_the_earliest_line() {
    // Big enough for several chunks on several threads.
    let dir = tempfile::tempdir().unwrap();
    let mut records: Vec<_> = (0..40_000).map(|n| record(&format!("c{n}"), n)).collect();
    records[25_000].providers.clear();
    records[39_000].permissions.clear();
    let path = write(dir.path(), "big.jsonl", &jsonl(&records));
    let err = load_err(&path);
    assert!(
        matches!(
            err,
            LoadError::Invalid {
                origin: Origin::Line(25_001),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unknown_extension_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "consents.json", "");
    assert!(matches!(load_err(&path), LoadError::UnknownFormat { .. }));
    let err = load_err(&dir.path().join("absent.snap"));
    assert!(matches!(err, LoadError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("absent.snap"));
}

#[test]
fn empty_jsonl_is_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ConsentStore::load(&write(dir.path(), "e.jsonl", "")).unwrap();
    assert!(store.is_empty());
    let store =
        ConsentStore::load(&write(dir.path(), "h.jsonl", "{\"snapshot_version\":7}")).unwrap();
    assert_eq!((store.len(), store.version()), (0, 7));
}

fn small_snapshot(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("small.snap");
    // Two blocks: 4096 records fill the first one.
    let records: Vec<_> = (0..4100).map(|n| record(&format!("c{n}"), n)).collect();
    write_snapshot(&path, 9, &records).unwrap();
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn binary_header_is_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = small_snapshot(dir.path());
    assert_eq!(&bytes[..8], b"OBHCSNAP");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 9);
    assert_eq!(u64::from_le_bytes(bytes[24..32].try_into().unwrap()), 4100);
    assert_eq!(u32::from_le_bytes(bytes[32..36].try_into().unwrap()), 2);
    let store = ConsentStore::load(&path).unwrap();
    assert_eq!((store.len(), store.version()), (4100, 9));
}

#[test]
fn truncated_snapshots_are_rejected_at_every_length() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bytes) = small_snapshot(dir.path());
    let cut = dir.path().join("cut.snap");
    let mut lengths: Vec<usize> = (0..200).collect();
    lengths.extend((200..bytes.len()).step_by(997));
    lengths.push(bytes.len() - 1);
    for len in lengths {
        fs::write(&cut, &bytes[..len]).unwrap();
        match load_err(&cut) {
            LoadError::Truncated { .. } => {}
            LoadError::BadMagic { .. } if len == 0 => {}
            other => panic!("length {len}: {other:?}"),
        }
    }
}

#[test]
fn corrupt_snapshots_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = small_snapshot(dir.path());
    let bad = dir.path().join("bad.snap");
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        fs::write(&bad, &b).unwrap();
        load_err(&bad)
    };
    assert!(matches!(with(&|b| b[0] = b'X'), LoadError::BadMagic { .. }));
    let err = with(&|b| b[8] = 2);
    assert!(
        matches!(
            err,
            LoadError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        matches!(with(&|b| b[20] ^= 1), LoadError::Corrupt { .. }),
        "header crc"
    );
    // Flip one byte in the middle of each block's payload, and in the block header.
    for at in [100, bytes.len() - 100, 42] {
        let err = with(&|b| b[at] ^= 0x10);
        assert!(
            matches!(
                err,
                LoadError::Checksum { .. }
                    | LoadError::Corrupt { .. }
                    | LoadError::Truncated { .. }
            ),
            "offset {at}: {err:?}"
        );
    }
    assert!(matches!(
        with(&|b| b[100] ^= 0x10),
        LoadError::Checksum { block: 0, .. }
    ));
    let err = with(&|b| b.extend_from_slice(b"junk"));
    assert!(
        matches!(&err, LoadError::Corrupt { detail, .. } if detail.contains("after the last block")),
        "{err:?}"
    );
    // A JSON file renamed to .snap is not a snapshot.
    fs::write(&bad, serde_json::to_string(&record("a", 1)).unwrap()).unwrap();
    assert!(matches!(load_err(&bad), LoadError::BadMagic { .. }));
    let msg = load_err(&bad).to_string();
    assert!(msg.starts_with(&bad.display().to_string()), "{msg}");
    ConsentStore::load(&path).unwrap();
}

#[test]
fn writer_rejects_invalid_and_duplicate_records_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.snap");
    let err =
        write_snapshot(&path, 1, [record("a", 1), record("b", 2), record("a", 3)]).unwrap_err();
    assert!(
        matches!(&err, WriteError::Duplicate { index: 2, id, .. } if id == "a"),
        "{err:?}"
    );
    let mut bad = record("b", 2);
    bad.customer.clear();
    let err = write_snapshot(&path, 1, [record("a", 1), bad]).unwrap_err();
    assert!(
        matches!(
            err,
            WriteError::Invalid {
                index: 1,
                source: RecordError::Customer,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn arb_record() -> impl Strategy<Value = ConsentRecord> {
    let bins = prop::collection::hash_set(0u64..1_000_000_000_000, 1..4);
    let perms = (1u8..16).prop_map(|bits| {
        [
            Permission::Accounts,
            Permission::Balances,
            Permission::Transactions,
            Permission::Payments,
        ]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, p)| p)
        .collect::<Vec<_>>()
    });
    let accounts = prop::option::of(prop::collection::hash_set("[A-Za-z0-9._-]{1,24}", 1..4));
    let status = prop::sample::select(vec![
        ConsentStatus::AwaitingAuthorisation,
        ConsentStatus::Authorised,
        ConsentStatus::Rejected,
        ConsentStatus::Revoked,
        ConsentStatus::Expired,
    ]);
    let times = (
        -62_135_596_800i64..253_402_300_799,
        prop::option::of(0i64..4_000_000_000),
    );
    (
        "[!-~]{1,128}",
        0u64..1_000_000_000_000,
        "[!-~]{1,40}",
        bins,
        perms,
        accounts,
        "\\PC{0,60}",
        times,
        status,
    )
        .prop_filter_map(
            "expiry out of range",
            |(id, user, customer, bins, permissions, accounts, purpose, (created, exp), status)| {
                let expires = match exp {
                    None => None,
                    Some(d) => Some(created.checked_add(d).filter(|e| *e <= 253_402_300_799)?),
                };
                Some(ConsentRecord {
                    id,
                    api_user: bin(user),
                    customer,
                    providers: bins.into_iter().map(bin).collect(),
                    permissions,
                    accounts: accounts.map(|s| s.into_iter().collect()),
                    purpose,
                    created_at: at(created),
                    expires_at: expires.map(at),
                    status,
                })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip_through_the_binary_format(
        records in prop::collection::vec(arb_record(), 0..40),
        version in any::<u64>(),
    ) {
        let mut unique = std::collections::BTreeMap::new();
        for r in records {
            unique.entry(r.id.clone()).or_insert(r);
        }
        let records: Vec<ConsentRecord> = unique.into_values().collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.snap");
        prop_assert_eq!(write_snapshot(&path, version, &records).unwrap(), records.len());
        let store = ConsentStore::load(&path).unwrap();
        prop_assert_eq!(store.version(), version);
        prop_assert_eq!(contents(&store), records.clone());
        // And back out again from the store.
        let again = dir.path().join("q.snap");
        store.write_snapshot(&again).unwrap();
        prop_assert_eq!(contents(&ConsentStore::load(&again).unwrap()), records);
    }
}
