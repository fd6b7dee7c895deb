//! A throwaway PostgreSQL server on loopback, for tests and development clusters
//! (feature `pg-server`): `initdb` into a temporary directory, started with `pg_ctl` on a
//! free 127.0.0.1 port (listening there only, its unix socket in the temporary directory,
//! `fsync=on`, scram-sha-256 over TCP), as the `postgres` user when the process runs as
//! root. It can be stopped and started again on the same port and data, a streaming
//! standby can be made of it ([`PgServer::standby_of`]) and promoted; dropping it stops
//! it (`pg_ctl stop -m immediate`, then the postmaster is killed if need be) and removes
//! the directory.
//!
//! The binaries come from `$PG_BIN` or the newest `/usr/lib/postgresql/*/bin` (Debian's
//! `postgresql` package; `scripts/pg install` installs it). Every failure is a
//! [`PgServerError`] that says what failed, with the command's output and the server's
//! log. SQL given to [`PgServer::psql`] goes to `psql` on its standard input, never on a
//! command line, so a password in it is not visible to other processes.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// Why a server could not be set up, started, stopped or queried.
#[derive(Debug, thiserror::Error)]
pub enum PgServerError {
    /// No server binaries were found.
    #[error(
        "no PostgreSQL server binaries: {0} (install them with `scripts/pg install`, or set \
         PG_BIN to a directory with initdb, pg_ctl and psql)"
    )]
    NoBinaries(String),
    /// A file or directory operation, or starting a command, failed.
    #[error("PostgreSQL server: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("PostgreSQL server: {what} failed ({status}): {output}\n--- server log ---\n{log}")]
    Command {
        /// The command.
        what: String,
        /// Its exit status.
        status: String,
        /// Its standard output and error.
        output: String,
        /// The server's log so far.
        log: String,
    },
    /// The server started but its pid could not be read.
    #[error("PostgreSQL server: postmaster.pid: {0}")]
    NoPid(String),
    /// A name that is not a plain SQL identifier (`[a-z_][a-z0-9_]*`).
    #[error("PostgreSQL server: {0:?} is not a plain SQL identifier")]
    BadName(String),
    /// A password that is empty or holds a quote, backslash or line break.
    #[error("PostgreSQL server: a password must be non-empty, without quotes, backslashes or line breaks")]
    BadPassword,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgServerError {
    let what = what.into();
    move |source| PgServerError::Io { what, source }
}

/// How [`PgServer::stop_with`] stops the server (`pg_ctl stop -m …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for every client to disconnect.
    Smart,
    /// Disconnects clients, rolls back their transactions, shuts down cleanly.
    Fast,
    /// Exits at once, as a crash would (recovery runs at the next start).
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// How a new server is set up.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Appended to `postgresql.conf`.
    pub extra_conf: String,
    /// Files (name, content) written into the data directory, owner-only, before start.
    pub files: Vec<(String, String)>,
    /// The superuser's password (TCP connections use scram-sha-256); random when `None`.
    pub superuser_password: Option<String>,
    /// The directory the temporary directory is made in (default: the system's).
    pub parent: Option<PathBuf>,
}

/// A running (or stopped) server.
pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    pid: Option<u32>,
    password: String,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("PgServer")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("as_postgres", &self.as_postgres)
            .finish_non_exhaustive()
    }
}

/// The directory of the PostgreSQL binaries: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` holding `postgres`.
pub fn bin_dir() -> Result<PathBuf, PgServerError> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
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
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        PgServerError::NoBinaries("/usr/lib/postgresql/*/bin/postgres is missing".into())
    })
}

/// Whether this process runs as root (the server then runs as `postgres`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A free loopback port (bound, then released).
fn free_port() -> Result<u16, PgServerError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("a free port"))
}

/// A random password: 64 hexadecimal digits.
fn random_password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn check_password(password: &str) -> Result<(), PgServerError> {
    let bad = |c: char| matches!(c, '\'' | '"' | '\\' | '\n' | '\r');
    if password.is_empty() || password.chars().any(bad) {
        return Err(PgServerError::BadPassword);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), PgServerError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(())
    } else {
        Err(PgServerError::BadName(name.to_owned()))
    }
}

fn chown_postgres(path: &Path) -> Result<(), PgServerError> {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .output()
        .map_err(io("chown"))?;
    if !out.status.success() {
        return Err(PgServerError::Command {
            what: "chown to the postgres user".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
            log: String::new(),
        });
    }
    Ok(())
}

/// Appends `text` to the data directory's `postgresql.conf`.
fn append_conf(data: &Path, text: &str) -> Result<(), PgServerError> {
    let path = data.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io("postgresql.conf"))?;
    file.write_all(text.as_bytes())
        .map_err(io("postgresql.conf"))
}

/// Writes `content` to `path`, readable by its owner only.
fn write_private(path: &Path, content: &str) -> Result<(), PgServerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = path.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(what.clone()))?;
    file.write_all(content.as_bytes()).map_err(io(what))
}

impl PgServer {
    /// Initialises and starts a new server with the default options.
    pub fn start() -> Result<PgServer, PgServerError> {
        Self::start_with(&PgOptions::default())
    }

    /// Initialises and starts a new server.
    pub fn start_with(options: &PgOptions) -> Result<PgServer, PgServerError> {
        let password = match &options.superuser_password {
            Some(p) => p.clone(),
            None => random_password(),
        };
        check_password(&password)?;
        let mut server = PgServer::empty(bin_dir()?, is_root(), "trust-pg-", options, password)?;
        server.init(options)?;
        server.start_again()?;
        Ok(server)
    }

    /// A server that is not initialised yet: its directory and port.
    fn empty(
        bin: PathBuf,
        as_postgres: bool,
        prefix: &str,
        options: &PgOptions,
        password: String,
    ) -> Result<PgServer, PgServerError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix(prefix);
        let dir = match &options.parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .map_err(io("temporary directory"))?;
        Ok(PgServer {
            dir,
            bin,
            port: free_port()?,
            as_postgres,
            pid: None,
            password,
        })
    }

    /// A streaming-replication standby of `primary` (`pg_basebackup -R`), started on its
    /// own port and socket directory: a hot standby, read only until promoted. It shares
    /// the primary's roles and their passwords.
    pub fn standby_of(primary: &PgServer) -> Result<PgServer, PgServerError> {
        let options = PgOptions {
            parent: primary.dir().parent().map(Path::to_path_buf),
            ..PgOptions::default()
        };
        let mut server = PgServer::empty(
            primary.bin.clone(),
            primary.as_postgres,
            "trust-pg-standby-",
            &options,
            primary.password.clone(),
        )?;
        if server.as_postgres {
            chown_postgres(server.dir())?;
        }
        let data = server.data_dir();
        let mut backup = server.command("pg_basebackup");
        backup
            .arg("-D")
            .arg(&data)
            .arg("-h")
            .arg(primary.dir())
            .args(["-p", &primary.port.to_string(), "-U", "postgres"])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        server.run("pg_basebackup", &mut backup)?;
        let conf = format!(
            "\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            server.port,
            server.dir().display()
        );
        append_conf(&data, &conf)?;
        if server.as_postgres {
            chown_postgres(server.dir())?;
        }
        server.start_again()?;
        Ok(server)
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) -> Result<(), PgServerError> {
        let mut promote = self.command("pg_ctl");
        promote
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "promote"]);
        self.run("pg_ctl promote", &mut promote).map(drop)
    }

    /// The temporary directory (the data directory is `data` inside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The TCP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid while it runs (as started by this value).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The directory of the PostgreSQL binaries in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Whether the server runs as the `postgres` user (this process is root).
    pub fn as_postgres(&self) -> bool {
        self.as_postgres
    }

    /// A URL for database `db` over TCP, as the superuser with its password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// A URL for database `db` over the unix socket (no password: local trust).
    pub fn socket_url(&self, db: &str) -> String {
        let dir = self.dir().display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{dir}:{}/{db}", self.port)
    }

    /// A command running `program` (from the binaries' directory) as the server's owner,
    /// in its own process group (a terminal's Ctrl-C reaches the caller only, which then
    /// stops the server in order).
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        c.process_group(0);
        c
    }

    /// Runs `cmd` (its standard input closed); its output, or the failure with the log.
    fn run(&self, what: &str, cmd: &mut Command) -> Result<Output, PgServerError> {
        let out = cmd.stdin(Stdio::null()).output().map_err(io(what))?;
        self.checked(what, out)
    }

    fn checked(&self, what: &str, out: Output) -> Result<Output, PgServerError> {
        if out.status.success() {
            return Ok(out);
        }
        Err(PgServerError::Command {
            what: what.to_owned(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            log: self.log(),
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("log")).unwrap_or_default()
    }

    fn init(&mut self, options: &PgOptions) -> Result<(), PgServerError> {
        let pwfile = self.dir().join("pw");
        write_private(&pwfile, &self.password)?;
        if self.as_postgres {
            chown_postgres(self.dir())?;
        }
        let data = self.data_dir();
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        let initialised = self.run("initdb", &mut initdb);
        std::fs::remove_file(&pwfile).map_err(io("password file"))?;
        initialised?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = on\nsynchronous_commit = on\nmax_connections = 100\n\
             shared_buffers = 32MB\nlog_min_messages = warning\n\
             log_min_error_statement = panic\n{}\n",
            self.port,
            self.dir().display(),
            options.extra_conf
        );
        append_conf(&data, &conf)?;
        for (name, content) in &options.files {
            write_private(&data.join(name), content)?;
        }
        if self.as_postgres {
            chown_postgres(self.dir())?;
        }
        Ok(())
    }

    /// Starts the (stopped) server again, on the same port and data.
    pub fn start_again(&mut self) -> Result<(), PgServerError> {
        let data = self.data_dir();
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir().join("log"))
            .args(["-w", "-t", "60", "start"]);
        self.run("pg_ctl start", &mut start)?;
        let pidfile =
            std::fs::read_to_string(data.join("postmaster.pid")).map_err(io("postmaster.pid"))?;
        self.pid = pidfile.lines().next().and_then(|l| l.trim().parse().ok());
        if self.pid.is_none() {
            return Err(PgServerError::NoPid("no pid in it".into()));
        }
        Ok(())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), as a crash would.
    pub fn stop(&mut self) -> Result<(), PgServerError> {
        self.stop_with(StopMode::Immediate)
    }

    /// Stops the server (`pg_ctl stop -m MODE`, waiting up to 30 s); when that fails the
    /// postmaster is killed (SIGKILL). Stopping a stopped server does nothing.
    pub fn stop_with(&mut self, mode: StopMode) -> Result<(), PgServerError> {
        let Some(pid) = self.pid else {
            return Ok(());
        };
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "30", "-m", mode.as_str(), "stop"]);
        let stopped = self.run("pg_ctl stop", &mut stop);
        if stopped.is_err() {
            let killed = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .map_err(io("kill the postmaster"))?;
            std::thread::sleep(Duration::from_millis(200));
            if !killed.success() {
                return stopped.map(drop);
            }
        }
        self.pid = None;
        Ok(())
    }

    /// Runs SQL as the superuser over the unix socket (`psql`, the SQL on its standard
    /// input, stopping at the first error); returns its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgServerError> {
        let mut cmd = self.command("psql");
        cmd.arg("-h")
            .arg(self.dir())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io("psql"))?;
        let written = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(sql.as_bytes()),
            None => Ok(()),
        };
        let out = child.wait_with_output().map_err(io("psql"))?;
        written.map_err(io("psql: writing the SQL"))?;
        let out = self.checked("psql", out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Creates database `name` (a plain identifier), owned by the superuser.
    pub fn create_db(&self, name: &str) -> Result<(), PgServerError> {
        check_name(name)?;
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .map(drop)
    }

    /// Creates a login role `role` with `password` (scram) and a database `db` it owns:
    /// what a trust replica needs, no superuser.
    pub fn create_owned_db(
        &self,
        db: &str,
        role: &str,
        password: &str,
    ) -> Result<(), PgServerError> {
        check_name(db)?;
        check_name(role)?;
        check_password(password)?;
        self.psql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}';\n"),
        )?;
        self.psql("postgres", &format!("CREATE DATABASE {db} OWNER {role}"))
            .map(drop)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords_that_could_break_out_of_sql_are_refused() {
        assert!(check_name("trust").is_ok());
        assert!(check_name("t_1").is_ok());
        for bad in ["", "1a", "Trust", "a-b", "a;b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_password(&random_password()).is_ok());
        for bad in ["", "a'b", "a\\b", "a\nb", "a\"b"] {
            assert!(check_password(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_has_no_password() {
        let options = PgOptions {
            superuser_password: Some("s3cret-value".into()),
            ..PgOptions::default()
        };
        let server = PgServer::empty(
            PathBuf::from("/nonexistent"),
            false,
            "trust-pg-debug-",
            &options,
            "s3cret-value".into(),
        )
        .expect("empty server");
        assert!(!format!("{server:?}").contains("s3cret-value"));
    }
}
