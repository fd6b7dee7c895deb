//! The cluster's child processes: each piece (trust replica, gateway, bank) is spawned
//! in its own process group (a terminal's Ctrl-C reaches the cluster only, which stops
//! them in order), with its standard output and error in a log file, and watched for an
//! unexpected exit. A reaper (a small `sh` child) holds the list of pieces and the
//! PostgreSQL postmasters: if the cluster process itself dies without stopping them
//! (SIGKILL), its pipe closes and the reaper kills every piece still listed, stops the
//! postmasters (SIGQUIT: immediate shutdown) and removes their temporary directories.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::ClusterError;

/// How often waits poll.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// A running piece of the cluster.
pub(crate) struct Piece {
    /// `trust-1`, `gateway-2`, `bank-1`, …
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its standard output and error.
    pub log: PathBuf,
    child: Child,
    /// Its exit, once seen.
    exit: Option<ExitStatus>,
}

impl Piece {
    /// Spawns `cmd` as piece `name`, its output appended to `log`, and tells the reaper.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        log: &Path,
        reaper: &mut Reaper,
    ) -> Result<Piece, ClusterError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(ClusterError::io(log))?;
        let err = out.try_clone().map_err(ClusterError::io(log))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| ClusterError::Spawn {
            what: name.to_owned(),
            source,
        })?;
        let pid = child.id();
        reaper.watch(pid);
        Ok(Piece {
            name: name.to_owned(),
            pid,
            log: log.to_path_buf(),
            child,
            exit: None,
        })
    }

    /// Its exit status, if it has exited (reaped once, then remembered).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self, reaper: &mut Reaper) {
        if self.running() {
            let _ = self.child.kill();
        }
        self.exit = self.child.wait().ok();
        reaper.forget(self.pid);
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it.
    pub fn terminate(&mut self, grace: Duration, reaper: &mut Reaper) {
        if self.running() {
            signal(self.pid, "TERM");
            let end = Instant::now() + grace;
            while self.running() && Instant::now() < end {
                std::thread::sleep(POLL);
            }
        }
        self.kill(reaper);
    }
}

/// Sends signal `name` (`TERM`, `KILL`, `STOP`, `CONT`, …) to `pid`; whether it was sent.
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The reaper's script: reads `pid N` / `forget N` / `pg N` / `nopg N` / `dir PATH`
/// lines; `exit` ends it quietly; end of input (the cluster process is gone) kills the
/// pieces, stops the postmasters and removes the directories.
const REAPER: &str = r#"pids=""; pgs=""; dirs=""
without() { out=""; for x in $1; do [ "$x" = "$2" ] || out="$out $x"; done; echo "$out"; }
while IFS= read -r line; do
  case "$line" in
    "pid "*) pids="$pids ${line#pid }" ;;
    "forget "*) pids=$(without "$pids" "${line#forget }") ;;
    "pg "*) pgs="$pgs ${line#pg }" ;;
    "nopg "*) pgs=$(without "$pgs" "${line#nopg }") ;;
    "dir "*) dirs="$dirs
${line#dir }" ;;
    exit) exit 0 ;;
  esac
done
[ -n "$pids" ] && kill -KILL $pids 2>/dev/null
[ -n "$pgs" ] && kill -QUIT $pgs 2>/dev/null
for i in 1 2 3 4 5 6 7 8 9 10; do
  alive=""; for p in $pgs; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break; sleep 1
done
echo "$dirs" | while IFS= read -r d; do [ -n "$d" ] && rm -rf "$d"; done
exit 0"#;

/// The reaper child (see the module's documentation).
pub(crate) struct Reaper {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper.
    pub fn start() -> Result<Reaper, ClusterError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(REAPER)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| ClusterError::Spawn {
                what: "the reaper (sh)".into(),
                source,
            })?;
        let stdin = child.stdin.take();
        Ok(Reaper {
            child: Some(child),
            stdin,
        })
    }

    fn say(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            // A reaper that is gone cannot protect anything more; the cluster goes on.
            let _ = writeln!(s, "{line}").and_then(|()| s.flush());
        }
    }

    /// Kills `pid` if the cluster process dies.
    pub fn watch(&mut self, pid: u32) {
        self.say(&format!("pid {pid}"));
    }

    /// `pid` was reaped: never signal it again.
    pub fn forget(&mut self, pid: u32) {
        self.say(&format!("forget {pid}"));
    }

    /// Stops postmaster `pid` if the cluster process dies.
    pub fn watch_postgres(&mut self, pid: u32) {
        self.say(&format!("pg {pid}"));
    }

    /// Postmaster `pid` stopped.
    pub fn forget_postgres(&mut self, pid: u32) {
        self.say(&format!("nopg {pid}"));
    }

    /// Removes `dir` if the cluster process dies (after the postmasters stopped).
    pub fn remove_dir(&mut self, dir: &Path) {
        self.say(&format!("dir {}", dir.display()));
    }

    /// Ends the reaper without it doing anything (everything was stopped in order).
    pub fn finish(&mut self) {
        self.say("exit");
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Reaper {
    /// Dropped by running code (a failed start, or after `finish`): whoever owns the
    /// pieces stops them, so the reaper leaves quietly. It kills only when this process
    /// dies without running destructors.
    fn drop(&mut self) {
        self.finish();
    }
}

/// Polls `f` every [`POLL`] until it yields `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// A plain HTTP/1.1 `GET` to a loopback admin listener: `(status, body)`.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read as _;
    let timeout = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of an unlabelled sample (`name value`) in a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}
