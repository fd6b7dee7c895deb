//! A binary upgrade under load loses no request: a hub serves steady concurrent load
//! (consent routes and open data, keep-alive and one-connection-per-request clients), a
//! new process starts with `gateway run --upgrade`, the old one gets SIGQUIT, hands its
//! listening sockets over, drains and exits on its own; the new one serves on, and the one
//! journal both wrote verifies as a single hash chain holding every answered request.
//!
//! What the clients allow, and nothing more: a GET whose connection closes before any
//! byte of its response is sent again once, on a new connection (RFC 9110 §9.2.2, what
//! HTTP clients do with idempotent requests). The old process closes idle keep-alive
//! connections when it stops accepting, and one the client reuses at that instant is
//! closed under its request. Such retries must happen only between SIGQUIT and the old
//! process's exit; a refused connection, a failed handshake, a reset after response
//! bytes, a second failure or any answer other than 200 fails the test.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::http::TlsConn;
use e2e::hub::owns_listener;
use e2e::*;

/// `[server] grace_period_secs` of the hubs under test.
const GRACE_SECS: u64 = 2;
/// `[server] shutdown_timeout_secs` (the harness's).
const SHUTDOWN_SECS: u64 = 2;
/// pingora's fixed pause between handing the sockets over and closing its listeners
/// (`CLOSE_TIMEOUT` in pingora-core's `server/mod.rs`).
const HANDOVER_PAUSE_SECS: u64 = 5;
/// Client tasks reusing one keep-alive connection.
const KEEPALIVE_CLIENTS: usize = 4;
/// Client tasks opening a connection per request (accepts during the hand-over).
const FRESH_CLIENTS: usize = 2;
/// Answers required before the upgrade starts, and after the old process exits.
const ANSWERS_BEFORE: u64 = 60;
const ANSWERS_AFTER: u64 = 120;

/// The new process, started by this test: ended by its pid when the test ends.
struct NewHub {
    child: Child,
    stderr: PathBuf,
}

impl NewHub {
    /// Starts `gateway run --upgrade`, with systemd's notification socket at `notify`.
    fn start(config: &Path, dir: &Path, notify: &Path) -> NewHub {
        let stderr = dir.join("upgraded.stderr");
        let child = Command::new(hub_exe!())
            .args(["run", "--config"])
            .arg(config)
            .arg("--upgrade")
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", notify)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn the new hub");
        NewHub { child, stderr }
    }

    fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM (by its pid), then its exit status, waiting at most `wait`.
    fn terminate(&mut self, wait: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        poll_until(wait, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for NewHub {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
}

/// What one client task saw.
#[derive(Default)]
struct Tally {
    answered: u64,
    connections: u64,
    /// Responses carrying `Connection: close`, after which the client reconnected.
    told_to_close: u64,
    /// Requests sent again after their connection closed before any response byte:
    /// when, and whether the connection had served a request before.
    retries: Vec<(Instant, bool, String)>,
    failures: Vec<String>,
}

/// One client's load: `GET` requests alternating between a consent route and open data,
/// until `stop`; on a keep-alive connection, or on a new connection per request.
struct Load {
    client: Client,
    token: String,
    keepalive: bool,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
}

impl Load {
    fn request(&self, n: u64) -> Req {
        if n.is_multiple_of(2) {
            Req::get(accounts_path(BANK_1)).bearer(&self.token)
        } else {
            Req::get(open_data_path(BANK_1, "exchange-rates"))
        }
    }

    async fn run(self) -> Tally {
        let mut tally = Tally::default();
        let mut conn: Option<(TlsConn, bool)> = None;
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let req = self.request(n);
            let Some(answer) = self.send_once_or_retry(&mut conn, &req, &mut tally).await else {
                conn = None;
                continue;
            };
            if answer.status != 200 {
                tally
                    .failures
                    .push(format!("answered {}", answer.describe()));
            } else {
                tally.answered += 1;
                self.answered.fetch_add(1, Ordering::Relaxed);
            }
            let close = answer
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            tally.told_to_close += u64::from(close);
            if close || !self.keepalive {
                conn = None;
            }
        }
        tally
    }

    /// Sends `req`, on the current connection or a new one; sends it once more on a new
    /// connection when the connection closed before any byte of the response arrived.
    async fn send_once_or_retry(
        &self,
        conn: &mut Option<(TlsConn, bool)>,
        req: &Req,
        tally: &mut Tally,
    ) -> Option<Response> {
        for attempt in 0..2 {
            if conn.is_none() {
                match self.client.connect().await {
                    Ok(c) => {
                        tally.connections += 1;
                        *conn = Some((c, false));
                    }
                    Err(e) => {
                        tally.failures.push(format!("connect: {e}"));
                        return None;
                    }
                }
            }
            let (c, reused) = conn.as_mut().expect("a connection");
            let before = c.bytes_read();
            match c.send(req).await {
                Ok(r) => {
                    *reused = true;
                    return Some(r);
                }
                Err(e) => {
                    let nothing_read = c.bytes_read() == before;
                    let closed = matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    );
                    let why = format!("{} {}: {e}", req.method(), req.target());
                    let was_reused = *reused;
                    *conn = None;
                    if attempt == 0 && nothing_read && closed {
                        tally.retries.push((Instant::now(), was_reused, why));
                        continue;
                    }
                    tally.failures.push(format!(
                        "{why} (attempt {}, response bytes read: {})",
                        attempt + 1,
                        !nothing_read
                    ));
                    return None;
                }
            }
        }
        None
    }
}

/// Polls until `answered` has grown by `n` (or panics after `wait`, naming `what`).
fn wait_answers(answered: &AtomicU64, n: u64, wait: Duration, what: &str) {
    let from = answered.load(Ordering::Relaxed);
    let grew = poll_until(wait, || {
        (answered.load(Ordering::Relaxed) >= from + n).then_some(())
    });
    assert!(
        grew.is_some(),
        "{what}: {} answers in {wait:?}",
        answered.load(Ordering::Relaxed) - from
    );
}

/// How long each stage may take on a busy machine.
const STAGE: Duration = Duration::from_secs(30);

/// A hub with the test's shutdown timings and its upgrade socket in a directory of its own
/// (the demo's directory is readable by all, which an upgrade refuses).
fn start_hub() -> Hub {
    Hub::start_with(hub_exe!(), |s| {
        s.unlimited();
        s.server_mut().grace_period_secs = GRACE_SECS;
        s.server_mut().shutdown_timeout_secs = SHUTDOWN_SECS;
        let run = s.prepared.dir.join("run");
        std::fs::create_dir_all(&run).expect("run dir");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        s.server_mut().upgrade_sock = Some(gateway::config::at(run.join("upgrade.sock")));
    })
}

/// The client tasks and what they share.
struct Traffic {
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    answered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Traffic {
    fn start(hub: &Hub) -> Traffic {
        let answered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client = hub.client_as(USER_A);
        let token = hub.token("c-authorised-full");
        let tasks = (0..KEEPALIVE_CLIENTS + FRESH_CLIENTS)
            .map(|i| {
                let load = Load {
                    client: client.clone(),
                    token: token.clone(),
                    keepalive: i < KEEPALIVE_CLIENTS,
                    stop: stop.clone(),
                    answered: answered.clone(),
                };
                tokio::spawn(load.run())
            })
            .collect();
        Traffic {
            tasks,
            answered,
            stop,
        }
    }

    /// Waits (without blocking the clients) until `n` more requests were answered.
    fn wait_answers(&self, n: u64, what: &str) {
        tokio::task::block_in_place(|| wait_answers(&self.answered, n, STAGE, what));
    }

    /// Stops the clients; what they saw, together.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for t in self.tasks {
            let t = t.await.expect("client task");
            tally.answered += t.answered;
            tally.connections += t.connections;
            tally.told_to_close += t.told_to_close;
            tally.retries.extend(t.retries);
            tally.failures.extend(t.failures);
        }
        tally
    }
}

/// Starts the new process (`--upgrade`, notifying `notify`), waits until it listens on
/// the upgrade socket, and sends SIGQUIT to the old one; returns it and when SIGQUIT went.
fn hand_over(hub: &Hub, notify: &Path) -> (NewHub, Instant) {
    let sock = hub.dir.join("run/upgrade.sock");
    let mut new = NewHub::start(&hub.config_path, &hub.dir, notify);
    let listening = tokio::task::block_in_place(|| {
        poll_until(STAGE, || (sock.exists() || new.has_exited()).then_some(()))
    });
    assert!(
        listening.is_some() && !new.has_exited(),
        "the new process did not wait on {}:\n{}",
        sock.display(),
        new.stderr_text()
    );
    let quit_at = Instant::now();
    hub.signal("QUIT");
    (new, quit_at)
}

/// Prints what the clients saw.
fn print_tally(tally: &Tally, answered_at_exit: u64, exit_after: Duration, journal: &str) {
    let reused = tally.retries.iter().filter(|r| r.1).count();
    println!(
        "upgrade under load: {} answered (200), {answered_at_exit} before the old process \
         exited, {} connections, {} responses with Connection: close, {} retries after a close \
         before any response byte ({reused} on reused connections, {} on new ones), {} \
         failures; old process exited {:.1} s after SIGQUIT; journal: {}",
        tally.answered,
        tally.connections,
        tally.told_to_close,
        tally.retries.len(),
        tally.retries.len() - reused,
        tally.failures.len(),
        exit_after.as_secs_f64(),
        journal.trim()
    );
    for (_, reused, why) in &tally.retries {
        let on = if *reused { "reused" } else { "new" };
        println!("  retried ({on}): {why}");
    }
}

/// The only retries are single ones, at most one per client, during the hand-over: a
/// client's connection is closed under its request at most once, the one it holds with
/// the old process when that stops (its next connection is the new process's).
fn assert_retries_honest(tally: &Tally, quit_at: Instant, old_exit: Instant) {
    assert!(
        tally.retries.len() <= KEEPALIVE_CLIENTS + FRESH_CLIENTS,
        "{} retries from {} clients",
        tally.retries.len(),
        KEEPALIVE_CLIENTS + FRESH_CLIENTS
    );
    for (at, _, why) in &tally.retries {
        assert!(
            *at >= quit_at && *at <= old_exit + Duration::from_millis(500),
            "a retry outside the hand-over ({:?} after SIGQUIT): {why}",
            at.duration_since(quit_at)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_under_load_loses_no_request() {
    let mut hub = start_hub();
    let old_pid = hub.pid();
    let traffic = Traffic::start(&hub);
    traffic.wait_answers(ANSWERS_BEFORE, "before the upgrade");
    // Where systemd would listen for the new process's notifications.
    let notify = hub.dir.join("run/notify.sock");
    let systemd = UnixDatagram::bind(&notify).expect("notify socket");
    systemd.set_read_timeout(Some(STAGE)).expect("read timeout");

    let (mut new, quit_at) = hand_over(&hub, &notify);
    let bound = Duration::from_secs(HANDOVER_PAUSE_SECS + GRACE_SECS + 2 * SHUTDOWN_SECS + 3);
    let old_exit =
        tokio::task::block_in_place(|| poll_until(bound, || exited(old_pid).then(Instant::now)))
            .unwrap_or_else(|| {
                panic!(
                    "the old process did not exit within {bound:?} of SIGQUIT:\n{}",
                    hub.stderr_text()
                )
            });
    let answered_at_exit = traffic.answered.load(Ordering::Relaxed);
    traffic.wait_answers(ANSWERS_AFTER, "after the old process exited");
    let tally = traffic.finish().await;

    // Only the new process listens now, on both the API and the admin port, and a
    // `Type=notify` unit would follow it as its main process.
    let new_pid = new.pid();
    for port in [hub.addr.port(), hub.admin.port()] {
        assert!(
            owns_listener(new_pid, port),
            "port {port} is not the new process's"
        );
    }
    assert_eq!(
        hub.admin("GET", "/readyz").await.0,
        200,
        "the new admin listener"
    );
    let mut note = [0u8; 256];
    let n = tokio::task::block_in_place(|| systemd.recv(&mut note)).expect("a notification");
    let note = String::from_utf8_lossy(&note[..n]).into_owned();
    assert_eq!(note, format!("READY=1\nMAINPID={new_pid}"));

    let new_stderr = new.stderr_text();
    let new_status = tokio::task::block_in_place(|| new.terminate(Duration::from_secs(15)));
    let (code, verified) = audit_verify(hub_exe!(), &[hub.audit_path.as_path()]);
    let old_stderr = hub.stderr_text();
    let old_status = tokio::task::block_in_place(|| hub.stop());
    print_tally(&tally, answered_at_exit, old_exit - quit_at, &verified);
    assert!(
        tally.failures.is_empty(),
        "requests failed:\n{}\nold process:\n{old_stderr}\nnew process:\n{new_stderr}",
        tally.failures.join("\n")
    );
    assert_retries_honest(&tally, quit_at, old_exit);
    assert!(
        old_status.is_some_and(|s| s.success()),
        "the old process's exit: {old_status:?}\n{old_stderr}"
    );
    assert!(
        new_status.is_some_and(|s| s.success()),
        "the new process's exit: {new_status:?}\n{new_stderr}"
    );
    assert!(
        new_stderr.contains("audit journal taken over from the previous process"),
        "{new_stderr}"
    );
    // One chain, both processes' records, one per answered request.
    assert_eq!(code, 0, "{verified}");
    assert!(
        verified.contains(&format!("OK, {} records", tally.answered)),
        "{} answered, journal: {verified}",
        tally.answered
    );
}
