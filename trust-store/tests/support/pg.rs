//! A real PostgreSQL server for the tests: [`trust_store::pg_server::PgServer`] with the
//! superuser password [`PASSWORD`], whose failures fail the test (with what failed, the
//! command's output and the server's log) instead of being returned.
//!
//! The binaries come from `$PG_BIN` or the newest `/usr/lib/postgresql/*/bin` (Debian's
//! `postgresql` package; `scripts/pg install` installs it). A test that needs a server
//! FAILS when none can be started: the message says why.

#![allow(dead_code)]

use std::path::Path;

use trust_store::pg_server::{self, PgOptions, PgServerError};

/// The superuser's password (TCP connections use scram-sha-256).
pub const PASSWORD: &str = "pg-test-s3cret";

/// A running (or stopped) test server; stopped on drop.
pub struct PgServer(pg_server::PgServer);

#[track_caller]
fn ok<T>(r: Result<T, PgServerError>) -> T {
    r.unwrap_or_else(|e| panic!("PostgreSQL for the tests: {e}"))
}

impl PgServer {
    /// Initialises and starts a new server.
    pub fn start() -> PgServer {
        Self::start_with("", &[])
    }

    /// Like [`PgServer::start`], with `extra` appended to postgresql.conf and `files`
    /// (name, content) written into the data directory (owner-only) before it starts.
    pub fn start_with(extra: &str, files: &[(&str, &str)]) -> PgServer {
        let options = PgOptions {
            extra_conf: extra.to_owned(),
            files: files
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_string()))
                .collect(),
            superuser_password: Some(PASSWORD.to_owned()),
            parent: None,
        };
        PgServer(ok(pg_server::PgServer::start_with(&options)))
    }

    /// A streaming-replication standby of `primary` (`pg_basebackup -R`), started on its
    /// own port and socket directory: a hot standby, read only until promoted.
    pub fn standby_of(primary: &PgServer) -> PgServer {
        PgServer(ok(pg_server::PgServer::standby_of(&primary.0)))
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting for it).
    pub fn promote(&self) {
        ok(self.0.promote())
    }

    /// The temporary directory (the data directory is `data` inside it).
    pub fn dir(&self) -> &Path {
        self.0.dir()
    }

    /// The TCP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// A URL for database `db` over TCP, as the superuser with its password.
    pub fn url(&self, db: &str) -> String {
        self.0.url(db)
    }

    /// A URL for database `db` over the unix socket (no password: local trust).
    pub fn socket_url(&self, db: &str) -> String {
        self.0.socket_url(db)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.0.log()
    }

    /// Starts the (stopped) server again, on the same port and data.
    pub fn start_again(&mut self) {
        ok(self.0.start_again())
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), as a crash would.
    pub fn stop(&mut self) {
        ok(self.0.stop())
    }

    /// Runs SQL as the superuser over the unix socket (psql); returns its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        ok(self.0.psql(db, sql))
    }

    /// Creates database `name`.
    pub fn create_db(&self, name: &str) {
        ok(self.0.create_db(name))
    }
}
