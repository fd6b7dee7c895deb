//! The journal over real files and a real pipe: records sealed into one chain across
//! restarts and reopening, places reserved and given back, and a stalled sink that makes
//! the journal refuse reservations until it is read again.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::chain::{self, Verdict};
use super::{AuditError, AuditLog, AuditRecord, Journal, Takeover};

fn record(i: usize) -> AuditRecord {
    let iid = format!("00000000-0000-4000-8000-{i:012}");
    let mut interaction_id = [b'0'; 36];
    interaction_id.copy_from_slice(iid.as_bytes());
    AuditRecord {
        time: SystemTime::now(),
        interaction_id,
        api_user: None,
        provider: None,
        token: None,
        route: "/v1/open-data/{provider_id}/{dataset}",
        code: "ok",
        status: 200,
        upstream_status: 200,
        latency_us: 1,
        upstream_latency_us: 1,
        outcome: feed_wire::rollup::Outcome::Success,
        bank_us: 1,
        tap: None,
    }
}

fn send_all(j: &Journal, range: std::ops::Range<usize>) {
    for i in range {
        assert!(j.send(record(i), None), "record {i} refused");
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Polls `f` every 10 ms until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn verdict(path: &Path, prev: Option<chain::Hash>) -> Verdict {
    chain::verify(std::fs::File::open(path).expect("journal"), prev).expect("read")
}

#[test]
fn records_are_sealed_into_one_chain_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path, 16).expect("open");
    send_all(&log.journal(), 0..3);
    assert!(log.close(Duration::from_secs(5)));
    let Verdict::Sound {
        records: 3,
        last: Some(first_run),
    } = verdict(&path, None)
    else {
        panic!("{:?}", verdict(&path, None));
    };
    // A restart appends and links its first record to the last one on disk.
    let mut log = AuditLog::open(&path, 16).expect("reopen");
    send_all(&log.journal(), 3..5);
    assert!(log.close(Duration::from_secs(5)));
    assert!(matches!(
        verdict(&path, None),
        Verdict::Sound { records: 5, .. }
    ));
    let text = std::fs::read_to_string(&path).expect("journal");
    let fourth: serde_json::Value =
        serde_json::from_str(text.lines().nth(3).expect("line 4")).expect("json");
    assert_eq!(fourth["prev"], chain::hex(&first_run));
    assert_eq!(fourth["code"], "ok");
}

#[test]
fn a_second_process_is_refused_a_journal_another_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let mut first = AuditLog::open(&path, 16).expect("open");
    let refused = AuditLog::open(&path, 16)
        .err()
        .expect("a second writer refused");
    let message = refused.to_string();
    assert!(
        matches!(refused, AuditError::InUse { .. })
            && message.contains("audit.jsonl.lock")
            && message.contains("--upgrade"),
        "{message}"
    );
    assert!(first.close(Duration::from_secs(5)));
    // Once the first has closed it, the journal is free again.
    let mut again = AuditLog::open(&path, 16).expect("reopen after close");
    assert!(again.close(Duration::from_secs(5)));
}

/// The interaction id of a journal line.
fn iid_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    v["interaction_id"].as_str().expect("iid").to_string()
}

#[test]
fn an_upgrade_waits_for_the_old_writer_and_continues_its_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let mut old = AuditLog::open(&path, 16).expect("open");
    send_all(&old.journal(), 0..2);
    assert!(eventually(Duration::from_secs(5), || lines(&path) == 2));
    let mut new = AuditLog::open_with(&path, 16, Takeover::Wait, Default::default())
        .expect("open to take over");
    // The new process's records wait while the old one keeps writing.
    send_all(&new.journal(), 100..103);
    send_all(&old.journal(), 2..4);
    assert!(eventually(Duration::from_secs(5), || lines(&path) == 4));
    assert_eq!(
        new.journal().backlog(),
        3,
        "written before the old writer closed"
    );
    assert!(old.close(Duration::from_secs(5)));
    assert!(eventually(Duration::from_secs(5), || lines(&path) == 7));
    assert!(new.close(Duration::from_secs(5)));
    let Verdict::Sound { records: 7, .. } = verdict(&path, None) else {
        panic!("{:?}", verdict(&path, None));
    };
    let text = std::fs::read_to_string(&path).expect("journal");
    let ids: Vec<String> = text.lines().map(iid_of).collect();
    let expected: Vec<String> = [0, 1, 2, 3, 100, 101, 102]
        .iter()
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    assert_eq!(ids, expected);
}

#[test]
fn reopening_continues_the_chain_in_the_new_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let mut log = AuditLog::open(&path, 16).expect("open");
    let j = log.journal();
    send_all(&j, 0..2);
    assert!(eventually(Duration::from_secs(5), || lines(&path) == 2));
    std::fs::rename(&path, &rotated).expect("rotate");
    j.reopen();
    // Written to the renamed file until the writer reopens, then to the new one.
    assert!(eventually(Duration::from_secs(5), || path.exists()));
    send_all(&j, 2..5);
    assert!(log.close(Duration::from_secs(5)));
    let Verdict::Sound {
        records: 2,
        last: Some(last),
    } = verdict(&rotated, None)
    else {
        panic!("rotated file: {:?}", verdict(&rotated, None));
    };
    assert!(matches!(
        verdict(&path, Some(last)),
        Verdict::Sound { records: 3, .. }
    ));
    // Verified on its own, the new file does not link to an unrelated chain.
    assert!(matches!(
        verdict(&path, Some(chain::GENESIS)),
        Verdict::Broken { line: 1, .. }
    ));
}

#[test]
fn a_reserved_place_is_used_by_its_record_or_given_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, 2).expect("open");
    let j = log.journal();
    let a = j.reserve().expect("a place");
    let b = j.reserve().expect("a second place");
    assert!(
        j.reserve().is_none(),
        "a full journal reserved a third place"
    );
    drop(b);
    let c = j.reserve().expect("the place given back");
    assert!(j.send(record(1), Some(a)));
    assert!(j.send(record(2), Some(c)));
    assert!(eventually(Duration::from_secs(5), || j.backlog() == 0
        && lines(&path) == 2));
    assert!(
        j.reserve().is_some(),
        "written records gave their places back"
    );
}

/// A named pipe nobody reads: the writer blocks once the pipe's buffer is full.
struct StalledPipe {
    path: std::path::PathBuf,
    /// Held open for reading (and writing, so opening never blocks), not read until
    /// `drain`.
    end: Option<std::fs::File>,
    _dir: tempfile::TempDir,
}

impl StalledPipe {
    fn new() -> StalledPipe {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.fifo");
        let status = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
        assert!(status.success());
        let end = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the pipe");
        StalledPipe {
            path,
            end: Some(end),
            _dir: dir,
        }
    }

    /// Starts reading everything written to the pipe into the returned buffer.
    fn drain(&mut self) -> Arc<Mutex<Vec<u8>>> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let (mut end, sink) = (self.end.take().expect("not drained yet"), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = end.read(&mut buf) {
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        out
    }
}

#[test]
fn a_stalled_sink_refuses_reservations_until_it_is_read_again() {
    let mut pipe = StalledPipe::new();
    let mut log = AuditLog::open(&pipe.path, 8).expect("open");
    let j = log.journal();
    // The pipe takes some records (its buffer), the queue eight more, then no more.
    let mut sent = 0;
    loop {
        if j.reserve().is_none() {
            // Full: the writer has not caught up yet, or it is blocked on the pipe.
            if !eventually(Duration::from_millis(300), || j.backlog() < 8) {
                break;
            }
            continue;
        }
        assert!(j.send(record(sent), None), "record {sent}");
        sent += 1;
        assert!(sent < 100_000, "the journal never filled up");
    }
    assert!(sent > 8, "the pipe took nothing: {sent}");
    assert!(!j.send(record(sent), None), "a full journal took a record");
    let written = pipe.drain();
    assert!(
        eventually(Duration::from_secs(10), || j.reserve().is_some()),
        "the journal stayed full after its sink was read"
    );
    assert!(j.send(record(sent + 1), None));
    assert!(log.close(Duration::from_secs(10)));
    // Every accepted record and the gap mark, once the reader has taken them off the pipe.
    let lines = || {
        written
            .lock()
            .expect("lock")
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    };
    assert!(eventually(Duration::from_secs(10), || lines() >= sent + 2));
    let text = String::from_utf8(written.lock().expect("lock").clone()).expect("utf-8");
    assert!(matches!(
        chain::verify(text.as_bytes(), None).expect("read"),
        Verdict::Sound { .. }
    ));
    let all: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let records = all.iter().filter(|v| v["code"] == "ok").count();
    assert_eq!(records, sent + 1, "every accepted record is in the journal");
    let gap = all
        .iter()
        .find(|v| v["event"] == "records_dropped")
        .expect("the refused record is marked");
    assert_eq!(gap["count"], 1);
}
