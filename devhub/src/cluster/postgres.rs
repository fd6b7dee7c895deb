//! The cluster's database: a throwaway PostgreSQL server ([`trust_store::pg_server`]) on
//! loopback, a login role `trust` with a random password (scram-sha-256) and a database
//! `trust` it owns. The password is written to a 0600 file that the trust replicas read
//! (`--postgres-password-file`); it is on no command line and in no log. Optionally a
//! synchronous standby (`synchronous_standby_names = '*'`), which the replicas reach
//! through a multi-host URL with `target_session_attrs=read-write`: after a promotion
//! they reconnect to it without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use trust_store::pg_server::{PgServer, StopMode};
use trust_store::PgSettings;

use super::procs::{wait_for, Reaper};
use super::ClusterError;

/// The trust database and its owner role.
pub(crate) const DB: &str = "trust";
const ROLE: &str = "trust";

/// The primary, and the standby when there is one.
pub(crate) struct Database {
    pub primary: PgServer,
    pub standby: Option<PgServer>,
    /// Primaries replaced by a promotion (stopped; their directories removed on drop).
    old_primaries: Vec<PgServer>,
    url: String,
    password: String,
    password_file: PathBuf,
}

impl Database {
    /// Starts the server (and the standby), creates the role and the database, writes
    /// the password file into `dir`; tells the reaper about the postmasters.
    pub fn start(dir: &Path, standby: bool, reaper: &mut Reaper) -> Result<Database, ClusterError> {
        let primary = PgServer::start()?;
        watch(&primary, reaper);
        let password = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        primary.create_owned_db(DB, ROLE, &password)?;
        let password_file = dir.join("postgres-password");
        write_secret(&password_file, &password)?;
        let mut db = Database {
            primary,
            standby: None,
            old_primaries: Vec::new(),
            url: String::new(),
            password,
            password_file,
        };
        if standby {
            db.add_synchronous_standby(reaper)?;
        }
        db.url = db.make_url();
        Ok(db)
    }

    /// A streaming standby of the primary, made synchronous; waits until the primary
    /// reports it `sync`.
    fn add_synchronous_standby(&mut self, reaper: &mut Reaper) -> Result<(), ClusterError> {
        let standby = PgServer::standby_of(&self.primary)?;
        watch(&standby, reaper);
        self.standby = Some(standby);
        self.primary.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        )?;
        self.primary.psql("postgres", "SELECT pg_reload_conf()")?;
        let sync = wait_for(Duration::from_secs(30), || {
            let state = self
                .primary
                .psql(
                    "postgres",
                    "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
                )
                .ok()?;
            (state == "sync").then_some(())
        });
        sync.ok_or_else(|| ClusterError::NotReady {
            what: "the synchronous standby".into(),
            secs: 30,
            log: self.primary.log(),
        })
    }

    /// The replicas' URL, without the password: the primary, or the primary and the
    /// standby with `target_session_attrs=read-write` (fixed at start: after a fail-over
    /// the same URL reaches the promoted standby).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn make_url(&self) -> String {
        match &self.standby {
            None => format!("postgres://{ROLE}@127.0.0.1:{}/{DB}", self.primary.port()),
            Some(s) => format!(
                "postgres://{ROLE}@127.0.0.1:{},127.0.0.1:{}/{DB}?target_session_attrs=read-write",
                self.primary.port(),
                s.port()
            ),
        }
    }

    /// The file holding the role's password.
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// Settings for an in-process engine (the seed) with the password.
    pub fn settings(&self) -> PgSettings {
        PgSettings {
            password: Some(self.password.clone()),
            pool_size: 4,
            ..PgSettings::new(self.url())
        }
    }

    /// Stops the primary (`pg_ctl stop -m MODE`).
    pub fn stop_primary(
        &mut self,
        mode: StopMode,
        reaper: &mut Reaper,
    ) -> Result<(), ClusterError> {
        let pid = self.primary.pid();
        self.primary.stop_with(mode)?;
        if let Some(pid) = pid {
            reaper.forget_postgres(pid);
        }
        Ok(())
    }

    /// Starts the stopped primary again, on the same port and data.
    pub fn start_primary(&mut self, reaper: &mut Reaper) -> Result<(), ClusterError> {
        self.primary.start_again()?;
        watch(&self.primary, reaper);
        Ok(())
    }

    /// The primary dies (`pg_ctl stop -m immediate`, as a crash would) and the
    /// synchronous standby is promoted: it is the primary from then on.
    pub fn fail_over(&mut self, reaper: &mut Reaper) -> Result<(), ClusterError> {
        let standby = self
            .standby
            .take()
            .ok_or_else(|| ClusterError::NoSuchPiece("a standby".into()))?;
        self.stop_primary(StopMode::Immediate, reaper)?;
        standby.promote()?;
        let old = std::mem::replace(&mut self.primary, standby);
        self.old_primaries.push(old);
        Ok(())
    }

    /// Stops everything, cleanly (`-m fast`), standby first.
    pub fn stop(&mut self, reaper: &mut Reaper) {
        for server in self.standby.iter_mut().chain([&mut self.primary]) {
            let pid = server.pid();
            if let Err(e) = server.stop_with(StopMode::Fast) {
                tracing::warn!(error = %e, "stopping PostgreSQL");
            }
            if let Some(pid) = pid {
                reaper.forget_postgres(pid);
            }
        }
    }
}

/// Tells the reaper about a started server: its postmaster and its directory.
fn watch(server: &PgServer, reaper: &mut Reaper) {
    if let Some(pid) = server.pid() {
        reaper.watch_postgres(pid);
    }
    reaper.remove_dir(server.dir());
}

/// Writes `secret` (and a line break) to `path`, readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> Result<(), ClusterError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(ClusterError::io(path))?;
    writeln!(file, "{secret}").map_err(ClusterError::io(path))
}
