//! A throwaway Redis server on loopback, for tests, benches and development clusters: the
//! shared rate limits and monthly quotas of the gateway (issue 12) run against it.
//!
//! [`RedisServer::start`] runs `redis-server` (from `$REDIS_SERVER`, else `redis-server` on
//! `PATH`; Debian's `redis-server` package) as a child process on a free 127.0.0.1 port,
//! with a configuration file written into the given directory (owner-only: it may hold a
//! password): listening on 127.0.0.1 only, protected mode on, the append-only file on
//! (`appendonly yes`, `appendfsync everysec`), no RDB snapshots, its log in `redis.log`.
//! It waits until the server answers `PING`.
//!
//! The server can be paused and resumed (SIGSTOP/SIGCONT: a server that accepts
//! connections but never answers), killed (SIGKILL: a crash), stopped cleanly (SIGTERM:
//! the append-only file is flushed) and restarted on the same port and directory, which
//! reloads the append-only file. Signals are sent with the `kill` command to the child's
//! pid. Dropping the value kills the server and reaps it; the directory is the caller's.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start waits for the first `PONG`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a clean stop waits for the process to exit before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a fresh free port when another process took the one chosen.
const PORT_ATTEMPTS: usize = 3;

/// Why a server could not be started, signalled or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The `redis-server` binary could not be run.
    #[error(
        "cannot run {binary}: {source} (install Debian's `redis-server` package, or set \
         REDIS_SERVER to the binary)"
    )]
    NoBinary {
        /// The binary tried.
        binary: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file, socket or process operation failed.
    #[error("Redis server: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server exited while it was expected to run.
    #[error("Redis server exited ({status}) while starting\n--- server log ---\n{log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The server's log so far.
        log: String,
    },
    /// The server did not answer `PING` in time.
    #[error("Redis server on port {port} did not answer PING within {waited:?}\n--- server log ---\n{log}")]
    NotReady {
        /// Its port.
        port: u16,
        /// How long it was waited for.
        waited: Duration,
        /// The server's log so far.
        log: String,
    },
    /// `kill -SIGNAL pid` failed.
    #[error("Redis server: kill -{signal} {pid} failed ({status})")]
    Signal {
        /// The signal's name.
        signal: &'static str,
        /// The pid.
        pid: u32,
        /// The command's exit status.
        status: String,
    },
    /// The operation needs a running server.
    #[error("Redis server: not running")]
    NotRunning,
    /// A password that is empty or holds a quote, backslash or line break.
    #[error(
        "Redis server: a password must be non-empty, without quotes, backslashes or line breaks"
    )]
    BadPassword,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RedisError {
    let what = what.into();
    move |source| RedisError::Io { what, source }
}

/// How a new server is set up.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// `requirepass`: clients must authenticate with it (written to the configuration
    /// file only, never on a command line).
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("RedisOptions")
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A running (or stopped) Redis server.
pub struct RedisServer {
    dir: PathBuf,
    port: u16,
    binary: String,
    password: Option<String>,
    child: Option<Child>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("RedisServer")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// The binary: `$REDIS_SERVER`, else `redis-server` (found on `PATH`).
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A free loopback port (bound, then released).
fn free_port() -> Result<u16, RedisError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("a free port"))
}

/// A value quoted for a Redis configuration file.
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn check_password(password: &str) -> Result<(), RedisError> {
    let bad = |c: char| matches!(c, '\'' | '"' | '\\' | '\n' | '\r');
    if password.is_empty() || password.chars().any(bad) {
        return Err(RedisError::BadPassword);
    }
    Ok(())
}

/// A RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

impl RedisServer {
    /// Starts a new server with its files in `dir` (created if missing).
    pub fn start(dir: &Path) -> Result<RedisServer, RedisError> {
        Self::start_with(dir, &RedisOptions::default())
    }

    /// Starts a new server with its files in `dir` (created if missing), as `options` say.
    pub fn start_with(dir: &Path, options: &RedisOptions) -> Result<RedisServer, RedisError> {
        if let Some(password) = &options.password {
            check_password(password)?;
        }
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let mut server = RedisServer {
            dir: dir.to_path_buf(),
            port: 0,
            binary: binary(),
            password: options.password.clone(),
            child: None,
        };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                // Another process may have taken the port between its release and the
                // server's bind: try another.
                Err(e @ RedisError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RedisError::NotRunning))
    }

    /// The directory of its files (configuration, log, append-only files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TCP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT` (never with the password).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server process's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Writes the configuration file (owner-only) and returns its path.
    fn write_config(&self) -> Result<PathBuf, RedisError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut conf = format!(
            "port {}\nbind 127.0.0.1\nprotected-mode yes\ndaemonize no\ndir {}\n\
             logfile {}\nappendonly yes\nappendfsync everysec\nsave \"\"\n",
            self.port,
            quoted(&self.dir.display().to_string()),
            quoted(&self.dir.join("redis.log").display().to_string()),
        );
        if let Some(password) = &self.password {
            conf.push_str(&format!("requirepass {}\n", quoted(password)));
        }
        let path = self.dir.join("redis.conf");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("redis.conf"))?;
        file.write_all(conf.as_bytes()).map_err(io("redis.conf"))?;
        Ok(path)
    }

    /// Spawns the server on `self.port` and waits for `PONG`.
    fn launch(&mut self) -> Result<(), RedisError> {
        let conf = self.write_config()?;
        let child = Command::new(&self.binary)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches the caller, which then
            // stops the server in order.
            .process_group(0)
            .spawn()
            .map_err(|source| RedisError::NoBinary {
                binary: self.binary.clone(),
                source,
            })?;
        self.child = Some(child);
        let ready = self.wait_ready();
        if ready.is_err() {
            self.reap_by_force();
        }
        ready
    }

    /// Polls `PING` until `PONG`, failing early if the process exits.
    fn wait_ready(&mut self) -> Result<(), RedisError> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().map_err(io("wait for the server"))? {
                    self.child = None;
                    return Err(RedisError::Exited {
                        status: status.to_string(),
                        log: self.log(),
                    });
                }
            }
            if self.answers_ping() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(RedisError::NotReady {
                    port: self.port,
                    waited: READY_TIMEOUT,
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers `PONG` (authenticating first when it has a password;
    /// `-LOADING` while it reads its append-only file is not an answer).
    fn answers_ping(&self) -> bool {
        let timeout = Duration::from_millis(500);
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), timeout) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let mut request = Vec::new();
        if let Some(password) = &self.password {
            request.extend(resp(&["AUTH", password]));
        }
        request.extend(resp(&["PING"]));
        if stream.write_all(&request).is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if text.contains("+PONG\r\n") {
                return true;
            }
            // Every reply arrived (AUTH's and PING's), and none was PONG.
            let replies = 1 + usize::from(self.password.is_some());
            if text.matches("\r\n").count() >= replies {
                return false;
            }
        }
        false
    }

    /// Sends `signal` (a name `kill` knows: STOP, CONT, TERM, KILL) to the server.
    fn signal(&self, signal: &'static str) -> Result<(), RedisError> {
        let pid = self.pid().ok_or(RedisError::NotRunning)?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io("run kill"))?;
        if !status.success() {
            return Err(RedisError::Signal {
                signal,
                pid,
                status: status.to_string(),
            });
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, nothing is
    /// answered until [`resume`](Self::resume).
    pub fn pause(&self) -> Result<(), RedisError> {
        self.signal("STOP")
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> Result<(), RedisError> {
        self.signal("CONT")
    }

    /// Kills the server at once (SIGKILL), as a crash would, and reaps it; writes of the
    /// last second may be lost (`appendfsync everysec`). Killing a stopped server does
    /// nothing.
    pub fn kill(&mut self) -> Result<(), RedisError> {
        if self.child.is_none() {
            return Ok(());
        }
        self.signal("KILL")?;
        if let Some(mut child) = self.child.take() {
            child.wait().map_err(io("reap the server"))?;
        }
        Ok(())
    }

    /// Stops the server cleanly (SIGTERM, then SIGCONT in case it is paused): it flushes
    /// its append-only file and exits. Waits for it; kills it if it has not exited within
    /// 10 s. Stopping a stopped server does nothing.
    pub fn stop(&mut self) -> Result<(), RedisError> {
        if self.child.is_none() {
            return Ok(());
        }
        self.signal("TERM")?;
        self.signal("CONT")?;
        let started = Instant::now();
        while let Some(child) = self.child.as_mut() {
            if child
                .try_wait()
                .map_err(io("wait for the server"))?
                .is_some()
            {
                self.child = None;
                return Ok(());
            }
            if started.elapsed() > STOP_TIMEOUT {
                return self.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts the server again on the same port and directory (stopping it cleanly first
    /// if it runs): it reloads its append-only file, and waits until it answers `PING`.
    pub fn restart(&mut self) -> Result<(), RedisError> {
        self.stop()?;
        self.launch()
    }

    /// Kills and reaps the child whatever its state (errors ignored).
    fn reap_by_force(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.reap_by_force();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends RESP `args` on a fresh connection and returns the first reply's text.
    fn command(server: &RedisServer, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(server.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        stream.write_all(&resp(args)).expect("write");
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn starts_and_answers_a_raw_ping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = RedisServer::start(dir.path()).expect("start");
        assert!(server.pid().is_some());
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
        let mut stream = TcpStream::connect(server.addr()).expect("connect");
        stream.write_all(b"PING\r\n").expect("write");
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"+PONG\r\n");
    }

    #[test]
    fn a_restart_after_a_clean_stop_keeps_what_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = RedisServer::start(dir.path()).expect("start");
        let port = server.port();
        assert_eq!(command(&server, &["SET", "k", "v1"]), "+OK\r\n");
        server.stop().expect("stop");
        assert_eq!(server.pid(), None);
        assert!(
            TcpStream::connect(server.addr()).is_err(),
            "nothing listens"
        );
        server.restart().expect("restart");
        assert_eq!(server.port(), port);
        assert_eq!(command(&server, &["GET", "k"]), "$2\r\nv1\r\n");
    }

    #[test]
    fn a_password_is_required_and_stays_out_of_debug_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = RedisOptions {
            password: Some("s3cret-value".into()),
        };
        let server = RedisServer::start_with(dir.path(), &options).expect("start");
        assert!(command(&server, &["PING"]).starts_with("-NOAUTH"));
        assert!(!format!("{server:?}{options:?}").contains("s3cret-value"));
        let bad = RedisOptions {
            password: Some("a\"b".into()),
        };
        assert!(matches!(
            RedisServer::start_with(dir.path(), &bad),
            Err(RedisError::BadPassword)
        ));
    }

    #[test]
    fn pause_resume_and_kill() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = RedisServer::start(dir.path()).expect("start");
        server.pause().expect("pause");
        assert!(!server.answers_ping(), "a paused server does not answer");
        server.resume().expect("resume");
        assert!(server.answers_ping());
        server.kill().expect("kill");
        assert_eq!(server.pid(), None);
        assert!(matches!(server.pause(), Err(RedisError::NotRunning)));
        server.restart().expect("restart after kill");
        assert!(server.answers_ping());
    }
}
