//! What gateways consume, over real TLS: the snapshot, the feed with heartbeats,
//! resumption without gap or duplicate, and the refusals that force a resync.

mod common;

use std::time::Duration;

use common::*;
use consent_cache::{ChangeOp, ConsentStatus, ConsentStore};
use serde_json::json;
use trust::clock::ManualClock;
use trust::wire::{FeedLine, ParticipantOp, SnapshotLine};

const WAIT: Duration = Duration::from_secs(10);

async fn snapshot(c: &Client, f: &Fixture) -> Vec<SnapshotLine> {
    let r = c.get(Some(f.hub()), "/v1/snapshot").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    std::str::from_utf8(&r.body)
        .unwrap()
        .lines()
        .map(|l| SnapshotLine::parse(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn feed(c: &Client, f: &Fixture, query: &str) -> Lines {
    let r = c
        .open(
            Some(f.hub()),
            "GET",
            &format!("/v1/feed?{query}"),
            &[],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    Lines::new(r.into_body())
}

async fn next_line(lines: &mut Lines) -> FeedLine {
    let v = lines.next(WAIT).await.expect("the feed ended");
    serde_json::from_value(v).unwrap()
}

/// Reads until `n` change lines arrived, skipping heartbeats.
async fn changes(lines: &mut Lines, n: usize) -> Vec<FeedLine> {
    let mut out = Vec::new();
    while out.len() < n {
        let l = next_line(lines).await;
        if l.change_version().is_some() {
            out.push(l);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_loads_the_snapshot_follows_the_feed_and_resumes_without_gaps() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await;
    let a = f.user(USER_A);
    let first = create_consent(&c, a, CUSTOMER, json!({})).await;
    authorise(&c, &f.outbox(), CUSTOMER, &first).await;

    // Only the hub's certificate reads the snapshot and the feed.
    assert_eq!(
        c.get(Some(a), "/v1/snapshot").await.code(),
        "hub_certificate_required"
    );
    assert_eq!(c.get(None, "/v1/feed?since=0").await.status, 401);

    // The snapshot: header, 4 participants, 1 consent, trailer; loadable as is.
    let snap = snapshot(&c, &f).await;
    let SnapshotLine::Snapshot(header) = &snap[0] else {
        panic!("{:?}", snap[0])
    };
    assert_eq!((header.participants, header.consents), (4, 1));
    assert_eq!(
        header.version, 6,
        "4 participants, a creation, an authorisation"
    );
    let SnapshotLine::End(end) = snap.last().unwrap() else {
        panic!()
    };
    assert_eq!((end.version, end.participants, end.consents), (6, 4, 1));
    let records: Vec<_> = snap
        .iter()
        .filter_map(|l| match l {
            SnapshotLine::Consent(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let store = ConsentStore::from_records(records).unwrap();
    assert_eq!(
        store.get(&first).unwrap().status(),
        ConsentStatus::Authorised
    );

    // Follow from the snapshot's version: nothing yet, a heartbeat at once.
    let mut lines = feed(
        &c,
        &f,
        &format!("since={}&store_id={}", header.version, header.store_id),
    )
    .await;
    match next_line(&mut lines).await {
        FeedLine::Heartbeat(h) => {
            assert_eq!(h.version, 6);
            assert_eq!(h.store_id, header.store_id);
        }
        other => panic!("{other:?}"),
    }
    // A quiet feed keeps sending heartbeats (every 200 ms in this configuration).
    assert!(matches!(
        next_line(&mut lines).await,
        FeedLine::Heartbeat(_)
    ));

    // Live changes arrive in order, as consent_cache::Change the store applies.
    let second = create_consent(&c, a, CUSTOMER, json!({})).await;
    c.send(
        Some(a),
        "DELETE",
        &format!("/v1/consents/{first}"),
        &[],
        vec![],
    )
    .await
    .expect(200);
    let got = changes(&mut lines, 2).await;
    let mut batch = Vec::new();
    for l in got {
        match l {
            FeedLine::Consent(ch) => batch.push(ch),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(batch.iter().map(|c| c.version).collect::<Vec<_>>(), [7, 8]);
    assert!(matches!(&batch[0].op, ChangeOp::Upsert(r) if r.id == second));
    assert!(
        matches!(&batch[1].op, ChangeOp::SetStatus { id, status: ConsentStatus::Revoked } if *id == first)
    );
    store.apply_batch(batch).unwrap();
    assert_eq!(store.get(&first).unwrap().status(), ConsentStatus::Revoked);
    assert_eq!(store.version(), 8);
    drop(lines); // the gateway disconnects

    // While it is away: more changes, of both kinds.
    authorise(&c, &f.outbox(), CUSTOMER, &second).await;
    c.json(
        Some(f.operator()),
        "PUT",
        &format!("/v1/participants/{USER_B}/status"),
        json!({"status": "suspended"}),
    )
    .await
    .expect(200);
    let third = create_consent(&c, a, OTHER_CUSTOMER, json!({})).await;

    // Resuming from the last version applied: exactly the missed changes, in order.
    let mut lines = feed(&c, &f, "since=8").await;
    let got = changes(&mut lines, 3).await;
    let versions: Vec<u64> = got.iter().filter_map(FeedLine::change_version).collect();
    assert_eq!(versions, [9, 10, 11]);
    match &got[1] {
        FeedLine::Participant(p) => {
            let ParticipantOp::Upsert(r) = &p.op;
            assert_eq!(r.bin.to_string(), USER_B);
            assert_eq!(r.status.as_str(), "suspended");
        }
        other => panic!("{other:?}"),
    }
    let consents: Vec<_> = got
        .into_iter()
        .filter_map(|l| match l {
            FeedLine::Consent(c) => Some(c),
            _ => None,
        })
        .collect();
    store.apply_batch(consents).unwrap();
    assert_eq!(
        store.get(&second).unwrap().status(),
        ConsentStatus::Authorised
    );
    assert!(store.get(&third).is_some());
    assert!(matches!(next_line(&mut lines).await, FeedLine::Heartbeat(h) if h.version == 11));

    // Replaying from 0 gives every change exactly once, contiguous from 1.
    let mut all = feed(&c, &f, "since=0").await;
    let got = changes(&mut all, 11).await;
    let versions: Vec<u64> = got.iter().filter_map(FeedLine::change_version).collect();
    assert_eq!(versions, (1..=11).collect::<Vec<_>>());

    // Refusals that make the gateway resynchronise from the snapshot.
    let r = c.get(Some(f.hub()), "/v1/feed?since=12").await;
    assert_eq!((r.status, r.code()), (410, "feed_version_ahead".into()));
    let r = c
        .get(Some(f.hub()), "/v1/feed?since=1&store_id=another")
        .await;
    assert_eq!((r.status, r.code()), (410, "store_mismatch".into()));
    let r = c.get(Some(f.hub()), "/v1/feed").await;
    assert_eq!((r.status, r.code()), (400, "bad_request".into()));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_behind_the_retained_history_is_told_to_resynchronise() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let mut config = f.config(&clock);
    config.feed_retention = 3;
    let running = trust::start(config, None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await; // versions 1..=4
    let a = f.user(USER_A);
    for _ in 0..3 {
        create_consent(&c, a, CUSTOMER, json!({})).await; // 5..=7
    }
    // Housekeeping prunes too, at moments of its own (its first round may run while the
    // changes above are written): whoever pruned what, the history now holds 5..=7.
    running.app().prune().await.unwrap();
    let app = running.app().clone();
    let (floor, kept) = tokio::task::spawn_blocking(move || {
        app.db.read(|s| {
            let floor = trust::db::read_floor(s)?;
            let kept = trust::db::count(s, "SELECT COUNT(*) FROM changes", &[])?;
            Ok::<_, trust::db::StoreError>((floor, kept))
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (floor, kept),
        (4, 3),
        "pruned through 4, three changes kept"
    );
    let r = c.get(Some(f.hub()), "/v1/feed?since=3").await;
    assert_eq!((r.status, r.code()), (410, "feed_history_pruned".into()));
    // From the floor on it still works.
    let mut lines = feed(&c, &f, "since=4").await;
    let versions: Vec<u64> = changes(&mut lines, 3)
        .await
        .iter()
        .filter_map(FeedLine::change_version)
        .collect();
    assert_eq!(versions, [5, 6, 7]);
    // The snapshot still holds everything.
    let snap = snapshot(&c, &f).await;
    let SnapshotLine::Snapshot(h) = &snap[0] else {
        panic!()
    };
    assert_eq!((h.version, h.participants, h.consents), (7, 4, 3));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_ends_when_the_sidecar_stops_and_resumes_after_a_restart() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await;
    let mut lines = feed(&c, &f, "since=4").await;
    assert!(matches!(
        next_line(&mut lines).await,
        FeedLine::Heartbeat(_)
    ));
    let store_id = running.app().db.store_id().to_owned();
    running.stop().await;
    // The stream ends (or errors) instead of hanging.
    assert!(lines.ended(WAIT).await);

    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    create_consent(&c, f.user(USER_A), CUSTOMER, json!({})).await;
    let mut lines = feed(&c, &f, &format!("since=4&store_id={store_id}")).await;
    let got = changes(&mut lines, 1).await;
    assert_eq!(got[0].change_version(), Some(5));
    running.stop().await;
}

/// `App::import_consents`: consents kept as they stand (id, times, status), each with a
/// feed change and a history entry by `system:import`, all or none; a due one is expired
/// by housekeeping like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_consents_are_stored_published_and_expired_like_created_ones() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await;
    let app = running.app().clone();
    let at = |secs: i64| trust::clock::to_datetime(now() + secs);
    let record =
        |id: &str, status: ConsentStatus, expires: Option<i64>| consent_cache::ConsentRecord {
            id: id.into(),
            api_user: bin(USER_A),
            customer: CUSTOMER.into(),
            providers: vec![bin(BANK_1)],
            permissions: vec![consent_cache::Permission::Accounts],
            accounts: Some(vec!["KZ01ACC".into()]),
            purpose: "import".into(),
            created_at: at(-86_400),
            expires_at: expires.map(at),
            status,
        };
    let head = app.db.head();
    let views = app
        .import_consents(vec![
            record("i-authorised", ConsentStatus::Authorised, Some(3600)),
            record("i-revoked", ConsentStatus::Revoked, None),
            record("i-lapsed", ConsentStatus::Authorised, Some(-60)),
        ])
        .await
        .unwrap();
    assert_eq!(
        views.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![head + 1, head + 2, head + 3]
    );
    for v in &views {
        assert_eq!(v.history.len(), 1);
        assert_eq!(v.history[0].actor, "system:import");
        assert_eq!(v.history[0].from, None);
        assert_eq!(v.history[0].to, v.record.status.as_str());
    }
    // On the snapshot as stored, restriction and times included.
    let snap = snapshot(&c, &f).await;
    let imported = snap
        .iter()
        .find_map(|l| match l {
            SnapshotLine::Consent(r) if r.id == "i-authorised" => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(imported, views[0].record);

    // Past its expiry: expired by housekeeping (which runs every 50 ms, so it may already
    // have), with the history to show it.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = app.consent("i-lapsed".into()).await.unwrap();
        if v.record.status == ConsentStatus::Expired {
            assert_eq!(v.history.last().unwrap().actor, "system:expiry");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.db.head(), head + 4, "the three imports and the expiry");

    // All or none: a duplicate id, or an API user the registry does not know.
    let e = app
        .import_consents(vec![
            record("i-new", ConsentStatus::Authorised, None),
            record("i-revoked", ConsentStatus::Revoked, None),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            trust::error::Error::Conflict {
                code: "consent_exists",
                ..
            }
        ),
        "{e:?}"
    );
    let mut stranger = record("i-stranger", ConsentStatus::Authorised, None);
    stranger.api_user = bin("100140000099");
    let e = app.import_consents(vec![stranger]).await.unwrap_err();
    assert!(
        matches!(
            e,
            trust::error::Error::Unprocessable {
                code: "api_user_unknown",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        app.consent("i-new".into()).await.is_err(),
        "nothing of the refused batch"
    );
    assert_eq!(
        app.db.head(),
        head + 4,
        "no change from the refused batches"
    );
    running.stop().await;
}

/// A snapshot many chunks long (1,000 consents, well over the 64 KiB chunk) arrives whole,
/// header to end line, on either engine: on PostgreSQL the rows are streamed from inside
/// the engine's `block_on`, where the sink must not block on its channel (it panicked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_chunks_arrives_whole() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    register_all(&f, &c).await;
    let at = |secs: i64| trust::clock::to_datetime(now() + secs);
    let records = (0..1000)
        .map(|i| consent_cache::ConsentRecord {
            id: format!("bulk-{i:04}"),
            api_user: bin(USER_A),
            customer: CUSTOMER.into(),
            providers: vec![bin(BANK_1)],
            permissions: vec![consent_cache::Permission::Accounts],
            accounts: Some(vec!["KZ01ACC".into()]),
            purpose: "a long enough purpose to make every snapshot line a few hundred bytes".into(),
            created_at: at(-60),
            expires_at: Some(at(86_400)),
            status: ConsentStatus::Authorised,
        })
        .collect();
    running.app().import_consents(records).await.unwrap();
    let snap = snapshot(&c, &f).await;
    let consents = snap
        .iter()
        .filter(|l| matches!(l, SnapshotLine::Consent(_)))
        .count();
    assert_eq!(consents, 1000);
    assert!(matches!(snap.last(), Some(SnapshotLine::End(e)) if e.consents == 1000));
}
