//! Start-up: a broken configuration is refused by `check` and `run` (non-zero exit, file,
//! line and field on stderr), and a hub that cannot have its listening port does not
//! pretend to be ready.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use gateway::config::at;

/// Runs the hub binary with `args` until it exits (bounded); returns (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(hub_exe!())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let status = poll_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{}` did not exit with a broken configuration",
                args.join(" ")
            );
        }
    };
    (
        status.code(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

#[test]
fn broken_configuration_is_refused_at_start_naming_file_line_and_field() {
    let hub = Hub::start(hub_exe!());
    let good = std::fs::read_to_string(&hub.config_path).expect("hub.toml");
    let bad = hub.dir.join("bad.toml");
    let bad_s = bad.display().to_string();
    let cases = [
        (
            good.replacen("[server]\n", "[server]\nbogus_key = 1\n", 1),
            "bogus_key = 1",
            "bogus_key",
        ),
        (
            good.replacen("timeout_ms = 5000", "timeout_ms = \"fast\"", 1),
            "timeout_ms = \"fast\"",
            "timeout_ms",
        ),
        (
            good.replacen("bin = \"100140000002\"", "bin = \"10014000000X\"", 1),
            "bin = \"10014000000X\"",
            "participants[1].bin",
        ),
        (
            {
                let start = good.find("cert = ").expect("tls cert");
                let end = start + good[start..].find('\n').expect("eol");
                format!(
                    "{}cert = \"/nonexistent/hub-server.pem\"{}",
                    &good[..start],
                    &good[end..]
                )
            },
            "cert = \"/nonexistent/hub-server.pem\"",
            "tls.cert",
        ),
    ];
    for (text, marker, field) in &cases {
        std::fs::write(&bad, text).expect("write bad.toml");
        let line = line_of(text, marker);
        for cmd in ["check", "run"] {
            let (code, stderr) = run_to_exit(&[cmd, "--config", &bad_s]);
            assert!(
                code.is_some_and(|c| c != 0),
                "`{cmd}` exited {code:?} on {marker}"
            );
            assert!(
                stderr.contains(&format!("{bad_s}:{line}")),
                "`{cmd}` on {marker}: stderr does not name {bad_s}:{line}:\n{stderr}"
            );
            assert!(
                stderr.contains(field),
                "`{cmd}` on {marker}: stderr does not name {field}:\n{stderr}"
            );
        }
    }
    // The good file passes `check`.
    let (code, stderr) =
        run_to_exit(&["check", "--config", &hub.config_path.display().to_string()]);
    assert_eq!(code, Some(0), "{stderr}");
}

/// Kills a directly spawned hub however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn hub_is_not_ready_while_another_process_holds_its_api_port() {
    let hub = Hub::start(hub_exe!());
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("squat");
    let port = squatter.local_addr().expect("addr").port();
    let admin = free_port();
    let mut config = e2e::hub::read_config(&hub.config_path);
    config.server.listen = at(format!("127.0.0.1:{port}"));
    config.server.admin_listen = at(format!("127.0.0.1:{admin}"));
    config.audit.path = "-".into();
    let other = hub.dir.join("other.toml");
    e2e::hub::write_config(&other, &config);
    let mut child = KillOnDrop(
        Command::new(hub_exe!())
            .args(["run", "--config", &other.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    // Exiting non-zero is the best answer, staying unready an acceptable one; reporting
    // ready (its readiness probe connected to the other process) is wrong.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.0.try_wait() {
            assert!(!status.success(), "the hub exited 0 without its port");
            return;
        }
        if let Ok((200, body)) = rt.block_on(e2e::http::admin_request(admin_addr, "GET", "/readyz"))
        {
            panic!(
                "the hub reported /readyz 200 ({body}) while 127.0.0.1:{port} belongs to \
                 another process"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(squatter);
}
