//! A real PostgreSQL server for the tests: `initdb` into a temporary directory, started
//! with `pg_ctl` on a free loopback port (listening on 127.0.0.1 only, its unix socket in
//! the temporary directory, `fsync=on`), as the `postgres` user when the tests run as
//! root. Stopped (`pg_ctl stop -m immediate`, then its pid killed if need be) on drop.
//!
//! The binaries come from `$PG_BIN` or the newest `/usr/lib/postgresql/*/bin` (Debian's
//! `postgresql` package; `scripts/pg install` installs it). A test that needs a server
//! FAILS when none can be started: the message says why.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

/// The superuser's password (TCP connections use scram-sha-256).
pub const PASSWORD: &str = "pg-test-s3cret";

/// A running (or stopped) test server.
pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    pid: Option<u32>,
}

fn fail(what: &str, detail: impl std::fmt::Display) -> ! {
    panic!(
        "PostgreSQL for the tests: {what}: {detail}\n\
         (install it with `scripts/pg install`, or set PG_BIN to a directory with initdb, pg_ctl and psql)"
    )
}

/// The directory of the PostgreSQL binaries.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => fail(
            "no server binaries",
            "/usr/lib/postgresql/*/bin/postgres is missing",
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail("no free port", e))
}

fn chown_postgres(path: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| fail("chown", e));
    if !out.status.success() {
        fail(
            "chown to the postgres user",
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

impl PgServer {
    /// Initialises and starts a new server.
    pub fn start() -> PgServer {
        Self::start_with("", &[])
    }

    /// Like [`PgServer::start`], with `extra` appended to postgresql.conf and `files`
    /// (name, content) written into the data directory (owner-only) before it starts.
    pub fn start_with(extra: &str, files: &[(&str, &str)]) -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("trust-pg-")
            .tempdir()
            .unwrap_or_else(|e| fail("temporary directory", e));
        let mut server = PgServer {
            dir,
            bin,
            port: free_port(),
            as_postgres: is_root(),
            pid: None,
        };
        server.init(extra, files);
        server.start_again();
        server
    }

    /// A streaming-replication standby of `primary` (`pg_basebackup -R`), started on its
    /// own port and socket directory: a hot standby, read only until promoted.
    pub fn standby_of(primary: &PgServer) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("trust-pg-standby-")
            .tempdir()
            .unwrap_or_else(|e| fail("temporary directory", e));
        let mut server = PgServer {
            dir,
            bin: primary.bin.clone(),
            port: free_port(),
            as_postgres: primary.as_postgres,
            pid: None,
        };
        if server.as_postgres {
            chown_postgres(server.dir());
        }
        let data = server.dir().join("data");
        let mut backup = server.command("pg_basebackup");
        backup
            .arg("-D")
            .arg(&data)
            .arg("-h")
            .arg(primary.dir())
            .args(["-p", &primary.port.to_string(), "-U", "postgres"])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        server.run("pg_basebackup", &mut backup);
        let conf = format!(
            "\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            server.port,
            server.dir().display()
        );
        let path = data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| fail("postgresql.conf", e));
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap_or_else(|e| fail("postgresql.conf", e));
        if server.as_postgres {
            chown_postgres(server.dir());
        }
        server.start_again();
        server
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) {
        let mut promote = self.command("pg_ctl");
        promote
            .arg("-D")
            .arg(self.dir().join("data"))
            .args(["-w", "-t", "60", "promote"]);
        self.run("pg_ctl promote", &mut promote);
    }

    /// The temporary directory (the data directory is `data` inside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TCP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` over TCP, as the superuser with its password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// A URL for database `db` over the unix socket (no password: local trust).
    pub fn socket_url(&self, db: &str) -> String {
        let dir = self.dir().display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{dir}:{}/{db}", self.port)
    }

    /// A command running `program` (from the binaries' directory) as the server's owner.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap_or_else(|e| fail(what, e));
        if !out.status.success() {
            fail(
                what,
                format!(
                    "{}{}\n--- server log ---\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                ),
            );
        }
        out
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("log")).unwrap_or_default()
    }

    fn init(&mut self, extra: &str, files: &[(&str, &str)]) {
        let pwfile = self.dir().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap_or_else(|e| fail("password file", e));
        if self.as_postgres {
            chown_postgres(self.dir());
        }
        let data = self.dir().join("data");
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        self.run("initdb", &mut initdb);
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = on\nsynchronous_commit = on\nmax_connections = 100\n\
             shared_buffers = 32MB\nlog_min_messages = warning\n{extra}\n",
            self.port,
            self.dir().display()
        );
        let path = data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| fail("postgresql.conf", e));
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap_or_else(|e| fail("postgresql.conf", e));
        for (name, content) in files {
            use std::os::unix::fs::PermissionsExt;
            let file = data.join(name);
            std::fs::write(&file, content).unwrap_or_else(|e| fail(name, e));
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| fail(name, e));
        }
        if self.as_postgres {
            chown_postgres(self.dir());
        }
    }

    /// Starts the (stopped) server again, on the same port and data.
    pub fn start_again(&mut self) {
        let data = self.dir().join("data");
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir().join("log"))
            .args(["-w", "-t", "60", "start"]);
        self.run("pg_ctl start", &mut start);
        let pidfile = std::fs::read_to_string(data.join("postmaster.pid"))
            .unwrap_or_else(|e| fail("postmaster.pid", e));
        self.pid = pidfile.lines().next().and_then(|l| l.trim().parse().ok());
        if self.pid.is_none() {
            fail("postmaster.pid", "no pid in it");
        }
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), as a crash would.
    pub fn stop(&mut self) {
        if self.pid.is_none() {
            return;
        }
        let data = self.dir().join("data");
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !stopped {
            if let Some(pid) = self.pid {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.pid = None;
    }

    /// Runs SQL as the superuser over the unix socket (psql); returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = self.command("psql");
        cmd.arg("-h")
            .arg(self.dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql]);
        let out = self.run("psql", &mut cmd);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates database `name`.
    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
