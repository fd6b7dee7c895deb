//! The feed line decoders (`feed_wire::FeedLine::parse`, `SnapshotLine::parse`) over an
//! NDJSON body, with every consent change applied to a consent store as the gateway's
//! follower applies it.
//!
//! Input: the body of `GET /v1/feed` or `GET /v1/snapshot` (lines split at `\n`).
//! What must hold: a decoded line encodes and decodes back to itself (the sidecar writes
//! lines with the same types); a change the store accepts is visible in it as applied.

use consent_cache::{Applied, ChangeOp, ConsentStore};
use feed_wire::{FeedLine, SnapshotLine};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let store = ConsentStore::new();
    for line in text.split('\n') {
        if let Ok(parsed) = FeedLine::parse(line) {
            assert_round_trip(&parsed, FeedLine::parse);
            if let FeedLine::Consent(change) = parsed {
                apply(&store, change);
            }
        }
        if let Ok(parsed) = SnapshotLine::parse(line) {
            assert_round_trip(&parsed, SnapshotLine::parse);
        }
    }
}

fn assert_round_trip<T>(value: &T, parse: fn(&str) -> Result<T, serde_json::Error>)
where
    T: serde::Serialize + PartialEq + std::fmt::Debug,
{
    let encoded = match serde_json::to_string(value) {
        Ok(s) => s,
        Err(e) => panic!("a decoded line does not encode: {e}: {value:?}"),
    };
    match parse(&encoded) {
        Ok(again) => assert_eq!(&again, value, "round trip changed the line: {encoded}"),
        Err(e) => panic!("an encoded line does not decode: {e}: {encoded}"),
    }
}

fn apply(store: &ConsentStore, change: consent_cache::Change) {
    let (op, version) = (change.op.clone(), change.version);
    let before = store.version();
    let Ok(applied) = store.apply(change) else {
        assert_eq!(
            store.version(),
            before,
            "a refused change moved the version"
        );
        return;
    };
    if applied == Applied::Stale {
        assert!(version <= before, "a newer change was called stale");
    } else {
        assert_eq!(
            store.version(),
            version,
            "the store is not at the change's version"
        );
    }
    match (op, applied) {
        (ChangeOp::Upsert(r), Applied::Inserted | Applied::Replaced) => {
            let Some(c) = store.get(&r.id) else {
                panic!("an upserted consent is missing");
            };
            assert_eq!(c.status(), r.status);
            assert_eq!(c.api_user(), r.api_user);
            assert_eq!(c.customer(), r.customer);
        }
        (ChangeOp::Remove { id }, Applied::Removed) => {
            assert!(store.get(&id).is_none(), "a removed consent is still there");
        }
        (ChangeOp::SetStatus { id, status }, Applied::StatusSet) => {
            let got = store.get(&id).map(|c| c.status());
            assert_eq!(got, Some(status), "status change not visible");
        }
        _ => {}
    }
}
