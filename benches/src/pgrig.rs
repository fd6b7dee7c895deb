//! PostgreSQL for `trust-bench`: a throwaway server (`trust_store::pg_server::PgServer`:
//! `initdb` in a temporary directory, a free 127.0.0.1 port, `fsync=on`,
//! `synchronous_commit=on`, as the `postgres` user when run as root), a login role that
//! owns the trust databases (no superuser, as `docs/postgres.md` says) and the role's
//! password in a file readable by its owner only: no secret on any command line. The
//! postmaster is registered with [`crate::procs`] so that Ctrl-C stops it too.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use trust_store::pg_server::{PgServer, PgServerError};

use crate::error::{io_at, os, HarnessError, Result};
use crate::procs;
use crate::sidecar::PgTarget;

/// The role the trust replicas log in as (it owns their databases).
pub const ROLE: &str = "trust";

fn pg_err(e: PgServerError) -> HarnessError {
    HarnessError::Process {
        name: "postgres".into(),
        reason: e.to_string(),
    }
}

/// A running PostgreSQL server with the trust role; stopped (immediate) on drop.
pub struct PgRig {
    server: PgServer,
    /// The postmaster's process group (it is a session leader), when known.
    pgid: Option<i32>,
    password_file: PathBuf,
    /// Seconds `initdb` + start + role took.
    pub setup_s: f64,
}

impl PgRig {
    /// Starts a server, creates the role with a random password (written to
    /// `dir/pg-password`, mode 0600) and the database `trust` it owns.
    pub fn start(dir: &Path) -> Result<PgRig> {
        let t = Instant::now();
        let server = PgServer::start().map_err(pg_err)?;
        // pg_ctl makes the postmaster a session leader: its pid is its process group.
        let pgid = server
            .pid()
            .and_then(|pid| procs::pgrp_of(pid).filter(|g| i64::from(*g) == i64::from(pid)));
        if let Some(g) = pgid {
            procs::register_group(g, Signal::SIGQUIT);
        }
        let mut rig = PgRig {
            server,
            pgid,
            password_file: dir.join("pg-password"),
            setup_s: 0.0,
        };
        let password = random_hex(32)?;
        write_private(&rig.password_file, &password)?;
        rig.server
            .create_owned_db("trust", ROLE, &password)
            .map_err(pg_err)?;
        rig.setup_s = t.elapsed().as_secs_f64();
        Ok(rig)
    }

    /// Creates another database owned by the trust role.
    pub fn create_db(&self, name: &str) -> Result<()> {
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(HarnessError::Plan(format!("database name {name:?}")));
        }
        self.server
            .psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"))
            .map(drop)
            .map_err(pg_err)
    }

    /// Where a trust replica finds database `db`: the URL without the password, the
    /// password file.
    pub fn target(&self, db: &str) -> PgTarget {
        PgTarget {
            url: format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.server.port()),
            password_file: self.password_file.clone(),
        }
    }

    /// The role's password (for an engine opened in this process).
    pub fn password(&self) -> Result<String> {
        let text =
            std::fs::read_to_string(&self.password_file).map_err(io_at(&self.password_file))?;
        Ok(text.trim().to_string())
    }

    /// CPU time so far of the postmaster and its live children (the backends and the
    /// background processes; each is its own session leader, so not in its group).
    pub fn cpu(&self) -> Duration {
        self.server
            .pid()
            .and_then(|p| i32::try_from(p).ok())
            .map(procs::tree_cpu)
            .unwrap_or_default()
    }

    /// The server's version (`postgres --version`).
    pub fn version(&self) -> String {
        let out = std::process::Command::new(self.server.bin().join("postgres"))
            .arg("--version")
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// The server's temporary directory (data in `data/`).
    pub fn dir(&self) -> &Path {
        self.server.dir()
    }
}

impl Drop for PgRig {
    fn drop(&mut self) {
        if let Some(g) = self.pgid {
            procs::forget_group(g);
        }
        // `server` is dropped next: `pg_ctl stop -m immediate`, the directory removed.
    }
}

/// `n` random bytes from the kernel, as hexadecimal digits.
fn random_hex(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(os("reading /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path`, readable and writable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    f.write_all(text.as_bytes()).map_err(io_at(path))
}
