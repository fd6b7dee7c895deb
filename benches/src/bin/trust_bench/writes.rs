//! `trust-bench write-throughput`: trust writes per second, SQLite against PostgreSQL, on
//! this machine in one run, the systems' windows interleaved (round r starts with the
//! r-th system).
//!
//! - Through the sidecar's API: `POST /v1/consents` (a consent created by an API user
//!   over mTLS: the abuse checks, the consent, its history entry and a feed change in one
//!   transaction) from N concurrent keep-alive clients, against one sidecar on SQLite, one
//!   replica on PostgreSQL, and two replicas on PostgreSQL sharing the clients (each
//!   PostgreSQL system on its own database of one server).
//! - Through the storage API in this process (`trust::consents::create` in a `Db::write`
//!   transaction, one consent per transaction, no abuse checks) from N threads, on a
//!   SQLite file and on a PostgreSQL database.

use super::*;
use trust::db::Db;
use trust::participants::{Directory, ParticipantInput};

/// `write-throughput`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub(super) struct WriteArgs {
    /// Concurrent clients (keep-alive, mTLS, spread over the API users) (default 16).
    #[arg(long)]
    clients: Option<usize>,
    /// Seconds per window (default 10; smoke 1).
    #[arg(long)]
    duration: Option<f64>,
    /// Interleaved rounds (default 3; smoke 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Writer threads of the storage-API part (default: as many as clients).
    #[arg(long)]
    threads: Option<usize>,
    /// Skips the storage-API part.
    #[arg(long)]
    no_direct: bool,
}

/// What a write-throughput run does.
struct Plan {
    clients: usize,
    threads: usize,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    direct: bool,
}

impl Plan {
    fn of(b: &Bench, a: &WriteArgs) -> Plan {
        let clients = a.clients.unwrap_or(16).max(1);
        Plan {
            clients,
            threads: a.threads.unwrap_or(clients).max(1),
            duration: Duration::from_secs_f64(
                a.duration
                    .unwrap_or(if b.smoke { 1.0 } else { 10.0 })
                    .max(0.1),
            ),
            warmup: Duration::from_secs_f64(if b.smoke { 0.2 } else { 1.0 }),
            rounds: a.rounds.unwrap_or(if b.smoke { 1 } else { 3 }).max(1),
            direct: !a.no_direct,
        }
    }
}

/// The systems under test. Fields drop in order: the processes and engines before the
/// PostgreSQL server.
struct Systems {
    sqlite: TrustSet,
    pg_one: TrustSet,
    pg_two: TrustSet,
    direct_sqlite: Option<Db>,
    direct_pg: Option<Db>,
    pg: PgRig,
}

/// The names of the systems, in the order of round 1.
const API: [&str; 3] = [
    "api/sqlite",
    "api/postgresql-1-replica",
    "api/postgresql-2-replicas",
];
const DIRECT: [&str; 2] = ["storage/sqlite", "storage/postgresql"];

/// CPU time per process (name, time).
type Cpu = Vec<(String, Duration)>;

/// One window of one system.
struct Window {
    answers: Answers,
    /// Measured seconds (after the warm-up).
    seconds: f64,
    /// CPU used during them.
    cpu: Cpu,
}

/// One system's windows, merged.
#[derive(Default)]
struct Measured {
    answers: Vec<Answers>,
    seconds: f64,
    per_round: Vec<f64>,
    /// CPU seconds per process (trust processes, `postgres`, `bench` for the storage part).
    cpu: BTreeMap<String, f64>,
}

pub(super) fn run(b: &Bench, a: &WriteArgs) -> Result<()> {
    let load_at_start = loadavg();
    let plan = Plan::of(b, a);
    let dir = b.dir("write-throughput")?;
    let sys = Systems::start(b, &dir, &plan)?;
    let mut names: Vec<&str> = API.to_vec();
    if plan.direct {
        names.extend(DIRECT);
    }
    let mut measured: BTreeMap<&str, Measured> = BTreeMap::new();
    for r in 0..plan.rounds {
        let mut order = names.clone();
        order.rotate_left(r % names.len());
        for name in order {
            let Window {
                answers,
                seconds,
                cpu,
            } = sys.window(b, &plan, name)?;
            let m = measured.entry(name).or_default();
            m.per_round
                .push(round1(writes(&answers) as f64 / seconds.max(1e-9)));
            m.seconds += seconds;
            for (k, v) in cpu {
                *m.cpu.entry(k).or_default() += v.as_secs_f64();
            }
            m.answers.push(answers);
            eprintln!(
                "   round {} {name}: {:.0} writes/s",
                r + 1,
                m.per_round.last().copied().unwrap_or(0.0)
            );
        }
    }
    let rows = summarise(&names, &measured)?;
    let report = report(&plan, &sys, &rows);
    let summary = summary(&plan, &sys, &rows);
    drop(sys);
    // The SQLite databases hold every consent written (hundreds of MiB): logs are kept.
    remove_sqlite(&dir.join("sqlite").join("trust.db"));
    remove_sqlite(&dir.join("direct.db"));
    b.write("write-throughput", load_at_start, report, &summary)
}

/// Successful writes among `a`'s answers (`201` through the API, `200` for the storage
/// API's counter).
fn writes(a: &Answers) -> u64 {
    a.statuses
        .iter()
        .filter(|(k, _)| k.starts_with('2'))
        .map(|(_, v)| v)
        .sum()
}

impl Systems {
    /// The sidecar on SQLite, the PostgreSQL server with the replicas (one on database
    /// `trust`, two on `trust2`), the participants registered in each, and the storage
    /// part's databases.
    fn start(b: &Bench, dir: &Path, plan: &Plan) -> Result<Systems> {
        let sqlite_dir = dir.join("sqlite");
        std::fs::create_dir_all(&sqlite_dir).map_err(io_at(&sqlite_dir))?;
        let sqlite = TrustSet::sqlite(b, &sqlite_dir)?;
        let pg = PgRig::start(dir)?;
        pg.create_db("trust2")?;
        let pg_one = TrustSet::postgres(b, &dir.join("pg-one"), &pg, "trust", 1)?;
        let pg_two = TrustSet::postgres(b, &dir.join("pg-two"), &pg, "trust2", 2)?;
        let nowhere = [SocketAddr::from(([127, 0, 0, 1], 9)); 2];
        for set in [&sqlite, &pg_one, &pg_two] {
            let mut regs = set.registries(b)?;
            if let Some(reg) = regs.first_mut() {
                b.rt.block_on(reg.register(&b.env, nowhere))?;
            }
        }
        let (direct_sqlite, direct_pg) = if plan.direct {
            let s =
                Db::open(&dir.join("direct.db")).map_err(|e| HarnessError::Trust(e.to_string()))?;
            pg.create_db("direct")?;
            (
                Some(register(b, s)?),
                Some(register(b, open_pg(b, &pg, "direct")?)?),
            )
        } else {
            (None, None)
        };
        Ok(Systems {
            sqlite,
            pg_one,
            pg_two,
            direct_sqlite,
            direct_pg,
            pg,
        })
    }

    /// Runs `name`'s window: its answers, the measured seconds and the CPU used.
    fn window(&self, b: &Bench, plan: &Plan, name: &str) -> Result<Window> {
        let set = match name {
            "api/sqlite" => Some(&self.sqlite),
            "api/postgresql-1-replica" => Some(&self.pg_one),
            "api/postgresql-2-replicas" => Some(&self.pg_two),
            _ => None,
        };
        if let Some(set) = set {
            let pg = set.postgres.then_some(&self.pg);
            return api_window(b, plan, set, pg);
        }
        let (db, pg) = match name {
            "storage/sqlite" => (self.direct_sqlite.as_ref(), None),
            _ => (self.direct_pg.as_ref(), Some(&self.pg)),
        };
        let db = db.ok_or_else(|| HarnessError::Plan(format!("no database for {name}")))?;
        direct_window(b, plan, db, pg)
    }
}

/// A PostgreSQL engine in this process on `pg`'s database `db`, as a replica opens it.
fn open_pg(b: &Bench, pg: &PgRig, db: &str) -> Result<Db> {
    let mut settings = trust_store::PgSettings::new(pg.target(db).url);
    settings.password = Some(pg.password()?);
    let engine = trust_store::PgEngine::open(&settings, b.rt.handle().clone())
        .map_err(|e| HarnessError::Trust(e.to_string()))?;
    Db::from_engine(Box::new(engine)).map_err(|e| HarnessError::Trust(e.to_string()))
}

/// Registers the providers (and the API users) in `db` through the storage API.
fn register(b: &Bench, db: Db) -> Result<Db> {
    use trust::wire::Role;
    let mut who: Vec<(Bin, ParticipantInput)> = Vec::new();
    for (i, p) in b.env.providers.iter().enumerate() {
        who.push((
            *p,
            participant(format!("Bench bank {i}"), Role::Provider, Vec::new()),
        ));
    }
    for (i, u) in b.env.users.iter().enumerate() {
        let tp = b.env.user_identity(i)?.x5t_s256.clone();
        who.push((
            *u,
            participant(format!("Bench user {i}"), Role::User, vec![tp]),
        ));
    }
    let now = benches::fixture::now_unix();
    for (bin, input) in who {
        db.write(now, |tx| {
            trust::participants::upsert(tx, bin, input, "trust-bench", &[]).map(drop)
        })
        .map_err(|e| HarnessError::Trust(e.to_string()))?;
    }
    Ok(db)
}

fn participant(
    name: String,
    role: trust::wire::Role,
    thumbprints: Vec<String>,
) -> ParticipantInput {
    let provider = role == trust::wire::Role::Provider;
    ParticipantInput {
        name,
        roles: vec![role],
        thumbprints,
        provider_urls: if provider {
            vec!["https://127.0.0.1:9".into()]
        } else {
            Vec::new()
        },
        status: None,
    }
}

/// The `POST /v1/consents` body of client `i`.
fn consent_body(b: &Bench, i: usize) -> Bytes {
    let row = b.env.consent(i);
    let body = json!({"customer": row.customer, "providers": [b.env.providers[row.provider].to_string()],
                      "permissions": ["accounts", "balances", "transactions"],
                      "purpose": "trust-bench write-throughput"});
    Bytes::from(body.to_string())
}

/// Creates consents until `until`; answers from `warm_until` on are counted.
async fn api_client(
    mut conn: HttpConn,
    body: Bytes,
    until: Instant,
    warm_until: Instant,
) -> Answers {
    let mut out = Answers::new();
    let json = HeaderValue::from_static("application/json");
    loop {
        let t = Instant::now();
        if t >= until {
            break;
        }
        let r = conn
            .send(
                Method::POST,
                "/v1/consents",
                &[(CONTENT_TYPE, json.clone())],
                body.clone(),
            )
            .await;
        if t >= warm_until {
            out.record(r, t);
        }
    }
    out
}

/// CPU so far of the trust processes of `set` and of PostgreSQL.
fn cpu_now(set: Option<&TrustSet>, pg: Option<&PgRig>) -> Cpu {
    let mut v = set.map(TrustSet::cpu).unwrap_or_default();
    if let Some(pg) = pg {
        v.push(("postgres".into(), pg.cpu()));
    }
    v.push(("bench".into(), procs::self_cpu()));
    v
}

fn cpu_since(before: Cpu, after: Cpu) -> Cpu {
    before
        .into_iter()
        .zip(after)
        .map(|((name, t0), (_, t1))| (name, t1.saturating_sub(t0)))
        .collect()
}

/// One window through the API of `set` (clients spread over its endpoints and users).
fn api_window(b: &Bench, plan: &Plan, set: &TrustSet, pg: Option<&PgRig>) -> Result<Window> {
    let users = b.env.active_users();
    let start = Instant::now();
    let warm_until = start + plan.warmup;
    let until = warm_until + plan.duration;
    let mut tasks = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let spec = &set.specs[i % set.specs.len()];
        let ep = benches::workload::Endpoint::localhost(spec.addr())?;
        let conn = HttpConn::new(ep, b.user_tls(i % users)?);
        // Client i creates consents as user i mod users (consent rows 2·u… belong to u).
        let body = consent_body(b, 2 * (i % users) + 2 * users * (i / users));
        tasks.push(b.rt.spawn(api_client(conn, body, until, warm_until)));
    }
    std::thread::sleep(warm_until.saturating_duration_since(Instant::now()));
    let cpu0 = cpu_now(Some(set), pg);
    let t0 = Instant::now();
    let mut parts = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(r) = b.rt.block_on(t) {
            parts.push(r);
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_since(cpu0, cpu_now(Some(set), pg));
    Ok(Window {
        answers: Answers::sum(&parts)?,
        seconds,
        cpu,
    })
}

/// One window of single-consent transactions through the storage API from
/// `plan.threads` threads.
fn direct_window(b: &Bench, plan: &Plan, db: &Db, pg: Option<&PgRig>) -> Result<Window> {
    let head = db.head();
    let directory = db
        .read(|c| Directory::load(c, head))
        .map_err(|e| HarnessError::Trust(e.to_string()))?;
    let start = Instant::now();
    let warm_until = start + plan.warmup;
    let until = warm_until + plan.duration;
    let (parts, seconds, cpu) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..plan.threads)
            .map(|i| {
                s.spawn({
                    let directory = &directory;
                    move || direct_writer(b, db, directory, i, until, warm_until)
                })
            })
            .collect();
        std::thread::sleep(warm_until.saturating_duration_since(Instant::now()));
        let cpu0 = cpu_now(None, pg);
        let t0 = Instant::now();
        let parts: Vec<Answers> = workers.into_iter().filter_map(|w| w.join().ok()).collect();
        let seconds = t0.elapsed().as_secs_f64();
        (parts, seconds, cpu_since(cpu0, cpu_now(None, pg)))
    });
    Ok(Window {
        answers: Answers::sum(&parts)?,
        seconds,
        cpu,
    })
}

/// Writer `i` of the storage part: one consent per transaction until `until`; counted
/// from `warm_until` on as `200` (committed) or by the error.
fn direct_writer(
    b: &Bench,
    db: &Db,
    directory: &Directory,
    i: usize,
    until: Instant,
    warm_until: Instant,
) -> Answers {
    use trust::consents::{self, CreateConsent};
    let mut out = Answers::new();
    let users = b.env.active_users();
    let row = b.env.consent(2 * (i % users) + 2 * users * (i / users));
    let api_user = b.env.users[row.user % users];
    loop {
        let t = Instant::now();
        if t >= until {
            break;
        }
        let input = CreateConsent {
            customer: row.customer.clone(),
            providers: vec![b.env.providers[row.provider]],
            permissions: vec![
                Permission::Accounts,
                Permission::Balances,
                Permission::Transactions,
            ],
            accounts: None,
            purpose: "trust-bench write-throughput".into(),
            expires_at: None,
        };
        let r = db.write(benches::fixture::now_unix(), |tx| {
            consents::create(tx, api_user, directory, input).map(drop)
        });
        if t >= warm_until {
            out.requests += 1;
            match r {
                Ok(()) => {
                    *out.statuses.entry("200".into()).or_default() += 1;
                    if let Some(h) = out.histogram.as_mut() {
                        let _ = h.record(us(t.elapsed()));
                    }
                }
                Err(e) => *out.statuses.entry(format!("error {e}")).or_default() += 1,
            }
        }
    }
    out
}

/// One system's figures.
struct Row {
    name: String,
    writes: u64,
    writes_per_s: f64,
    per_round: Vec<f64>,
    latency: Latency,
    answers: BTreeMap<String, u64>,
    transport_errors: u64,
    /// CPU µs per write, per process.
    cpu_us_per_write: BTreeMap<String, f64>,
}

fn summarise(names: &[&str], measured: &BTreeMap<&str, Measured>) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for name in names {
        let Some(m) = measured.get(name) else {
            continue;
        };
        let all = Answers::sum(&m.answers)?;
        let n = writes(&all);
        let per_write = |s: f64| round1(s * 1e6 / n.max(1) as f64);
        rows.push(Row {
            name: (*name).to_string(),
            writes: n,
            writes_per_s: round1(n as f64 / m.seconds.max(1e-9)),
            per_round: m.per_round.clone(),
            latency: all.latency(),
            answers: all.statuses.clone(),
            transport_errors: all.errors,
            cpu_us_per_write: m
                .cpu
                .iter()
                .map(|(k, v)| (k.clone(), per_write(*v)))
                .collect(),
        });
    }
    Ok(rows)
}

/// `row`'s writes/s over its baseline's (the SQLite system of the same kind).
fn ratio(rows: &[Row], row: &Row) -> Option<f64> {
    let base = if row.name.starts_with("api/") {
        API[0]
    } else {
        DIRECT[0]
    };
    let b = rows.iter().find(|r| r.name == base)?;
    (b.writes_per_s > 0.0).then(|| round3(row.writes_per_s / b.writes_per_s))
}

fn report(plan: &Plan, sys: &Systems, rows: &[Row]) -> Value {
    let systems: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "system": r.name, "writes": r.writes, "writes_per_s": r.writes_per_s,
                "writes_per_s_by_round": r.per_round, "latency": r.latency,
                "answers": r.answers, "transport_errors": r.transport_errors,
                "cpu_us_per_write": r.cpu_us_per_write,
                "ratio_to_sqlite": ratio(rows, r),
            })
        })
        .collect();
    json!({
        "settings": {
            "clients": plan.clients, "storage_threads": plan.threads,
            "window_s": plan.duration.as_secs_f64(), "warmup_s": plan.warmup.as_secs_f64(),
            "rounds": plan.rounds, "interleaved": true,
            "write": "POST /v1/consents (API), trust::consents::create in one Db::write (storage)",
            "postgres_version": sys.pg.version(),
            "postgres": "fsync=on, synchronous_commit=on, shared_buffers=32MB, data in a temporary directory on the same disk",
            "sqlite": "WAL, synchronous=FULL (trust-store's engine)",
        },
        "systems": systems,
        "note": "The API path's abuse checks (open consents per API user, consents per API user per minute) scan \
                 rows that grow with the writes of the run: every figure is for a database that grows during it.",
    })
}

fn summary(plan: &Plan, sys: &Systems, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "trust writes: {} API clients (POST /v1/consents over mTLS) / {} storage-API threads, {} interleaved \
         round(s) of {:.0} s windows after {:.1} s warm-up; {}",
        plan.clients,
        plan.threads,
        plan.rounds,
        plan.duration.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        sys.pg.version()
    );
    for r in rows {
        let _ = writeln!(
            s,
            "  {:28} {:>8.0} writes/s (rounds {:?}){}  latency p50 {:.2} p99 {:.2} max {:.2} ms; answers {:?}, \
             {} transport errors; CPU µs/write {:?}",
            r.name,
            r.writes_per_s,
            r.per_round,
            ratio(rows, r).map_or(String::new(), |x| format!(" = {x:.2} × SQLite")),
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.answers,
            r.transport_errors,
            r.cpu_us_per_write
        );
    }
    s
}
