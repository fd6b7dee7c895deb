//! Where a test's sidecar keeps its state: SQLite in the fixture's directory (the
//! default), or — when `TRUST_TEST_POSTGRES_URL` names a PostgreSQL server (an admin URL
//! of a role allowed to CREATE DATABASE, e.g. from `scripts/pg start`; the password in
//! the file `TRUST_TEST_POSTGRES_PASSWORD_FILE`) — a fresh database of its own on that
//! server, `trust_t_<random>`, created by the fixture and dropped with it.
//!
//! `scripts/test` runs the whole trust suite both ways. The tests that look into the
//! database as an outsider (codes stored hashed) or run the binary read it through
//! [`Store`], on either engine.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio_postgres::NoTls;

/// The PostgreSQL server's admin URL (no password in it).
pub const URL_VAR: &str = "TRUST_TEST_POSTGRES_URL";
/// A file whose first line is the admin role's password.
pub const PASSWORD_FILE_VAR: &str = "TRUST_TEST_POSTGRES_PASSWORD_FILE";

/// One test's database on the PostgreSQL server.
pub struct PgDatabase {
    /// The admin URL (`…/postgres`), from the environment.
    admin_url: String,
    /// The password file, from the environment.
    password_file: Option<PathBuf>,
    /// The password read from it.
    password: Option<String>,
    /// `trust_t_<32 hex digits>`.
    name: String,
}

/// The sidecar's store in one test.
pub enum Store {
    /// The SQLite file.
    Sqlite(PathBuf),
    /// A database of its own on the PostgreSQL server.
    Postgres(PgDatabase),
}

/// `url` with its database name replaced by `db` (`scheme://authority/db?query`).
fn with_dbname(url: &str, db: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let query = url[authority_end..]
        .find('?')
        .map_or("", |i| &url[authority_end + i..]);
    format!("{}/{db}{query}", &url[..authority_end])
}

/// The first line of `path` (the password), panicking with the path (never the content).
fn read_password(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{PASSWORD_FILE_VAR} {}: {e}", path.display()));
    let line = text.lines().next().unwrap_or_default().to_owned();
    assert!(
        !line.is_empty(),
        "{PASSWORD_FILE_VAR} {}: empty",
        path.display()
    );
    line
}

impl PgDatabase {
    /// A new database on the server `TRUST_TEST_POSTGRES_URL` names; `None` when unset.
    pub fn create_from_env() -> Option<PgDatabase> {
        let admin_url = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty())?;
        let password_file = std::env::var_os(PASSWORD_FILE_VAR)
            .filter(|f| !f.is_empty())
            .map(PathBuf::from);
        let password = password_file.as_deref().map(read_password);
        let name = format!("trust_t_{}", uuid::Uuid::new_v4().simple());
        let db = PgDatabase {
            admin_url,
            password_file,
            password,
            name,
        };
        db.admin(&format!("CREATE DATABASE {}", db.name));
        Some(db)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database (no password in it).
    pub fn url(&self) -> String {
        with_dbname(&self.admin_url, &self.name)
    }

    /// The sidecar's settings for this database (the password from the file).
    pub fn settings(&self) -> trust_store::PgSettings {
        trust_store::PgSettings {
            password: self.password.clone(),
            ..trust_store::PgSettings::new(self.url())
        }
    }

    /// The `trust serve` flags for this database.
    pub fn flags(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["--postgres-url".into(), self.url().into()];
        if let Some(file) = &self.password_file {
            v.push("--postgres-password-file".into());
            v.push(file.into());
        }
        v
    }

    fn config(&self, url: &str) -> tokio_postgres::Config {
        let mut cfg: tokio_postgres::Config =
            url.parse().unwrap_or_else(|e| panic!("{URL_VAR}: {e}"));
        if let Some(p) = &self.password {
            cfg.password(p.as_bytes());
        }
        cfg.application_name("trust-tests");
        cfg
    }

    /// A connection to this test's database (its connection task on the current runtime).
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = self
            .config(&self.url())
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Runs `sql` on the server's `postgres` database from a thread of its own (callable
    /// from sync and async code alike: `Fixture::new` and `Drop`).
    fn admin(&self, sql: &str) {
        let cfg = self.config(&self.admin_url);
        let statement = sql.to_owned();
        let run = move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (client, conn) = cfg.connect(NoTls).await.map_err(|e| e.to_string())?;
                let conn = tokio::spawn(conn);
                let r = client
                    .batch_execute(&statement)
                    .await
                    .map_err(|e| e.to_string());
                drop(client);
                let _ = conn.await;
                r
            })
        };
        let r = std::thread::spawn(run).join().expect("the admin thread");
        r.unwrap_or_else(|e| panic!("PostgreSQL for the tests ({URL_VAR}): {sql}: {e}"));
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Best effort, and never a second panic: the server is thrown away anyway.
        let name = self.name.clone();
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.admin(&sql))).is_err() {
            eprintln!("(could not drop the test database {name})");
        }
    }
}

impl Store {
    /// PostgreSQL when `TRUST_TEST_POSTGRES_URL` is set, else SQLite at `sqlite`.
    pub fn from_env(sqlite: PathBuf) -> Store {
        match PgDatabase::create_from_env() {
            Some(pg) => Store::Postgres(pg),
            None => Store::Sqlite(sqlite),
        }
    }

    /// Which engine, for messages.
    pub fn engine(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "SQLite",
            Store::Postgres(_) => "PostgreSQL",
        }
    }

    /// Points a configuration at this store.
    pub fn apply(&self, config: &mut trust::Config) {
        match self {
            Store::Sqlite(path) => {
                config.db = path.clone();
                config.postgres = None;
            }
            Store::Postgres(pg) => config.postgres = Some(pg.settings()),
        }
    }

    /// The `trust serve` flags that open this store.
    pub fn flags(&self) -> Vec<OsString> {
        match self {
            Store::Sqlite(path) => vec!["--db".into(), path.into()],
            Store::Postgres(pg) => pg.flags(),
        }
    }

    /// Every row of `sql` (one column: bytes or NULL), read as an outsider would: the
    /// SQLite file with rusqlite (beside a running sidecar, in WAL mode), or a connection
    /// of its own to the PostgreSQL database.
    pub async fn bytes_column(&self, sql: &str) -> Vec<Option<Vec<u8>>> {
        match self {
            Store::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                let mut stmt = db.prepare(sql).unwrap();
                let rows = stmt.query_map([], |r| r.get(0)).unwrap();
                rows.map(Result::unwrap).collect()
            }
            Store::Postgres(pg) => {
                let client = pg.connect().await;
                let rows = client.query(sql, &[]).await.unwrap();
                rows.iter().map(|r| r.get(0)).collect()
            }
        }
    }
}
