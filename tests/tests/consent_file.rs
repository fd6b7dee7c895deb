//! The file control plane (`[consents] snapshot`): the consent file is followed on its
//! own, so a configuration that cannot be reloaded (a bank's host name that does not
//! resolve) never holds a revocation back; a file that fails to load is retried with
//! back-off even when it does not change again; and once a change has failed to load for
//! longer than `[consents] max_staleness_secs`, consent routes answer
//! `503 consent_state_stale` while open data goes on. Each test owns its hub.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::Value;

/// API user A's accounts at bank 1 (consent `c-authorised-full`).
async fn bank1(hub: &Hub) -> Response {
    hub.client_as(USER_A)
        .get(
            &accounts_path(BANK_1),
            Some(&hub.token("c-authorised-full")),
        )
        .await
}

/// API user B's accounts at bank 2 (consent `c-authorised-bank2`, which tests revoke).
async fn bank2(hub: &Hub) -> Response {
    hub.client_as(USER_B)
        .get(
            &accounts_path(BANK_2),
            Some(&hub.token("c-authorised-bank2")),
        )
        .await
}

/// `consents.jsonl` as the hub wrote it, with `id`'s status set to `status`.
fn consents_with(hub: &Hub, id: &str, status: &str) -> String {
    let mut out = String::new();
    for line in std::fs::read_to_string(&hub.consents_path)
        .expect("consents.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let mut v: Value = serde_json::from_str(line).expect("consent line");
        if v["id"] == id {
            v["status"] = status.into();
        }
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}

/// Polls bank 2's consent route until it answers `status` (bounded); returns that answer.
async fn bank2_until(hub: &Hub, status: u16, within: Duration) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let r = bank2(hub).await;
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after {within:?}: {}\nstderr:\n{}",
            r.status,
            r.describe(),
            hub.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A metric's value (summed over its label sets matching `labels`) from `/metrics`.
async fn metric(hub: &Hub, name: &str, labels: &str) -> f64 {
    hub.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_configuration_that_cannot_be_reloaded_does_not_hold_back_a_revocation() {
    let hub = Hub::start(hub_exe!());
    bank2(&hub).await.ok_json();
    // The rest of the configuration can no longer be compiled: a bank's host name does
    // not resolve.
    hub.edit_config(|c| {
        let p = c
            .providers
            .iter_mut()
            .find(|p| p.bin.get_ref() == BANK_1)
            .expect("bank 1");
        p.upstreams = vec![gateway::config::at(
            "https://bank-1.invalid:443".to_string(),
        )];
    });
    let (status, body) = hub.reload().await;
    assert_eq!(status, 422, "{body}");
    replace_file(
        &hub.consents_path,
        consents_with(&hub, "c-authorised-bank2", "revoked").as_bytes(),
    );
    bank2_until(&hub, 403, Duration::from_secs(10))
        .await
        .assert_problem(403, "consent_revoked");
    // The bank with the broken name was never replaced: it still serves.
    bank1(&hub).await.ok_json();
}

/// Replaces `path` with `text` keeping the length and modification time `like` has, so
/// that the file looks unchanged to a watcher comparing both.
fn replace_keeping_stamp(path: &Path, text: &str, like: &std::fs::Metadata) {
    let len = usize::try_from(like.len()).expect("length");
    assert!(text.len() + 2 <= len, "the new text is longer than the old");
    // `#` lines are comments in a consent snapshot.
    let padded = format!("{text}#{}\n", "x".repeat(len - text.len() - 2));
    let tmp = path.with_extension("same-stamp");
    std::fs::write(&tmp, &padded).expect("write");
    let f = std::fs::File::options()
        .write(true)
        .open(&tmp)
        .expect("open");
    f.set_modified(like.modified().expect("mtime"))
        .expect("set mtime");
    drop(f);
    std::fs::rename(&tmp, path).expect("rename");
    let now = std::fs::metadata(path).expect("metadata");
    assert_eq!(
        (now.len(), now.modified().ok()),
        (like.len(), like.modified().ok())
    );
}

#[tokio::test]
async fn a_consent_file_that_failed_is_retried_without_changing_again() {
    let hub = Hub::start(hub_exe!());
    bank2(&hub).await.ok_json();
    let revoked = consents_with(&hub, "c-authorised-bank2", "revoked");
    // A file that cannot be loaded (its last line is cut short)…
    let broken = format!("{revoked}{{\"id\": \"cut short{}\n", "-".repeat(200));
    replace_file(&hub.consents_path, broken.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&hub, "hub_consent_file_loads_total", "result=\"error\"").await < 1.0 {
        assert!(Instant::now() < deadline, "the broken file was never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bank2(&hub).await.ok_json();
    // …is repaired in a way that leaves its length and modification time as they were
    // (as a failed read that succeeds later would): only a retry can pick it up.
    let like = std::fs::metadata(&hub.consents_path).expect("metadata");
    replace_keeping_stamp(&hub.consents_path, &revoked, &like);
    bank2_until(&hub, 403, Duration::from_secs(20))
        .await
        .assert_problem(403, "consent_revoked");
}

#[tokio::test]
async fn a_change_that_cannot_be_loaded_past_the_bound_makes_consent_routes_stale() {
    const BOUND_SECS: u64 = 2;
    let hub = Hub::start_with(hub_exe!(), |s| {
        s.config.consents.max_staleness_secs = BOUND_SECS;
    });
    bank2(&hub).await.ok_json();
    let good = std::fs::read_to_string(&hub.consents_path).expect("consents");
    let revoked = consents_with(&hub, "c-authorised-bank2", "revoked");
    let written = Instant::now();
    replace_file(
        &hub.consents_path,
        format!("{good}{{\"id\": \"broken\n").as_bytes(),
    );
    let stale = bank2_until(&hub, 503, Duration::from_secs(15)).await;
    stale.assert_problem(503, "consent_state_stale");
    assert!(
        written.elapsed() >= Duration::from_secs(BOUND_SECS),
        "stale after {:?}, before the bound",
        written.elapsed()
    );
    bank1(&hub).await.assert_problem(503, "consent_state_stale");
    hub.client_as(USER_B)
        .get(&open_data_path(BANK_1, "atms"), None)
        .await
        .ok_json();
    // A file that loads again makes the consent state fresh at once.
    replace_file(&hub.consents_path, revoked.as_bytes());
    bank2_until(&hub, 403, Duration::from_secs(10))
        .await
        .assert_problem(403, "consent_revoked");
    bank1(&hub).await.ok_json();
}
