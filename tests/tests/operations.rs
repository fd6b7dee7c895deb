//! Operations conventions (issue 13, point 4), over the shipped binaries as real
//! processes: `--version` on every binary; logs as JSON lines when standard error is a
//! file and as plain text (no ANSI colour codes) with `--log-format text`; a connection
//! closed before its TLS handshake (a readiness probe) is not logged as an error while a
//! failed handshake still is.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::hub::{read_config, write_config};
use e2e::*;
use serde_json::Value;

/// Runs `exe` with `args` to its end (bounded); returns (exit code, stdout, stderr), with
/// standard error a file (not a terminal).
fn run(exe: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(exe)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let status = poll_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`{exe} {}` did not exit", args.join(" "));
    }
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    (
        status.and_then(|s| s.code()),
        read(&out_path),
        read(&err_path),
    )
}

#[test]
fn every_binary_answers_version() {
    let version = env!("CARGO_PKG_VERSION");
    for (exe, name) in [
        (env!("CARGO_BIN_EXE_trust-under-test"), "trust"),
        (env!("CARGO_BIN_EXE_devhub-under-test"), "devhub"),
        (env!("CARGO_BIN_EXE_hub-under-test"), "gateway"),
        (env!("CARGO_BIN_EXE_cluster-under-test"), "hub-cluster"),
    ] {
        let (code, out, err) = run(exe, &["--version"]);
        assert_eq!(code, Some(0), "{name} --version: {err}");
        assert_eq!(out.trim(), format!("{name} {version}"), "{name}");
    }
}

/// `gateway check` on the hub's configuration with bank 2 unverified (`sni = ""` and the
/// development flag), which logs a warning: (exit code, stderr) with `format`, if given.
fn check_logs(hub: &Hub, format: Option<&str>) -> (Option<i32>, String) {
    let mut config = read_config(&hub.config_path);
    let bank2 = config
        .providers
        .iter()
        .position(|p| p.bin.get_ref() == BANK_2)
        .expect("bank 2");
    config.providers[bank2].sni = Some(String::new());
    config.providers[bank2].insecure_skip_verify_for_development = true;
    let path = hub.dir.join("unverified.toml");
    write_config(&path, &config);
    let path = path.display().to_string();
    let mut args = Vec::new();
    if let Some(f) = format {
        args.extend(["--log-format", f]);
    }
    args.extend(["check", "--config", path.as_str()]);
    let (code, _, err) = run(hub_exe!(), &args);
    (code, err)
}

#[test]
fn logs_are_json_lines_off_a_terminal_and_never_carry_colour_codes() {
    let hub = Hub::start(hub_exe!());
    const WARNED: &str = "certificate is NOT verified";

    for format in [None, Some("json")] {
        let (code, err) = check_logs(&hub, format);
        assert_eq!(code, Some(0), "{err}");
        assert!(!err.contains('\u{1b}'), "ANSI codes in a file:\n{err}");
        let events: Vec<Value> = err
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
            .collect();
        let warned = events
            .iter()
            .find(|e| e["message"].as_str().is_some_and(|m| m.contains(WARNED)))
            .unwrap_or_else(|| panic!("no warning ({format:?}):\n{err}"));
        assert_eq!(warned["level"], "WARN", "{warned}");
        assert_eq!(
            warned["provider"], BANK_2,
            "fields at the top level: {warned}"
        );
        assert!(warned["timestamp"].is_string() && warned["target"].is_string());
    }

    let (code, err) = check_logs(&hub, Some("text"));
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes in a file:\n{err}");
    let line = err
        .lines()
        .find(|l| l.contains(WARNED))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(line.contains(" WARN ") && !line.starts_with('{'), "{line}");
}

/// The hub's stderr events (JSON lines) at `level` whose message contains `text`.
fn events(hub: &Hub, level: &str, text: &str) -> Vec<String> {
    hub.stderr_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["level"] == level)
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .filter(|m| m.contains(text))
        .collect()
}

#[test]
fn a_probe_that_closes_before_the_handshake_is_not_an_error_but_a_failed_handshake_is() {
    // The hub's own readiness probe connected and closed at start-up; a second probe.
    let hub = Hub::start(hub_exe!());
    drop(std::net::TcpStream::connect(hub.addr).expect("probe"));
    // Then a client that speaks plain HTTP to the TLS listener: a failed handshake.
    let mut plain = std::net::TcpStream::connect(hub.addr).expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")
        .expect("write");
    let failed = poll_until(Duration::from_secs(10), || {
        let e = events(&hub, "ERROR", "Downstream handshake error");
        (!e.is_empty()).then_some(e)
    });
    assert!(
        failed.is_some(),
        "a failed handshake is logged at ERROR:\n{}",
        hub.stderr_text()
    );
    let eof = events(&hub, "ERROR", "handshake eof");
    assert!(
        eof.is_empty(),
        "a connection closed before its handshake logged as an error: {eof:?}"
    );
}
