//! The side-by-side runner: per scenario, starts a sandbox bank process, the hub
//! (`gateway run`), HAProxy and nginx on free loopback ports, probes that each answers
//! as the contract requires, then drives the same load through each in turn,
//! interleaved (round 1: A B C D, round 2: B C D A, …), reading every system's CPU time
//! from `/proc` around each window. Produces the [`ScenarioReport`]s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::bankproc;
use crate::engine::{self, GroupResult, Phase, RunOptions, RunResult};
use crate::error::{io_at, HarnessError, Result};
use crate::fixture::{self, BenchEnv, ConsentRow, HubSettings};
use crate::peers::{haproxy, nginx, PeerBinaries};
use crate::procs::{self, Proc};
use crate::report::{Check, PointReport, Ratio, RevocationWave, RoundSummary, ScenarioReport};
use crate::scenario::{Scenario, System};
use crate::stats;
use crate::workload::{Endpoint, Group, Identity, Load, Plan, TokenPool, VirtualUser};

/// Consents of every scenario but big-cache.
pub const CONSENTS: usize = 1_000;
/// Virtual users of the open-data scenario.
const OPEN_DATA_USERS: usize = 100;
/// Delay of the slow provider.
const SLOW_DELAY: Duration = Duration::from_secs(2);
/// Rate of the stream to the slow provider.
const SLOW_RATE: f64 = 20.0;
/// Connections of the stream to the slow provider (≥ rate × delay, with room).
const SLOW_CONNECTIONS: usize = 64;
/// Shortest revocation window (waves at 1/4 and 1/2; a reload takes up to ~1 s).
const MIN_REVOCATION_WINDOW: Duration = Duration::from_secs(5);
/// Stride that walks a big consent store in an order spread over all of it (a prime,
/// coprime with any count of the form 2^a·5^b).
const SPREAD_STRIDE: usize = 999_983;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Systems to include (each scenario runs those of them it applies to).
    pub systems: Vec<System>,
    /// Smoke mode (short; failures are fatal).
    pub smoke: bool,
    /// Window of each measurement.
    pub duration: Duration,
    /// Unmeasured warm-up per system and scenario.
    pub warmup: Duration,
    /// Open-loop offered loads.
    pub rates: Vec<f64>,
    /// Also a closed-loop point.
    pub closed: bool,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Connections of the main group.
    pub connections: usize,
    /// HTTP/2 to the system under test.
    pub http2: bool,
    /// Streams per HTTP/2 connection.
    pub streams: usize,
    /// The hub's worker threads (None: its default, the cores).
    pub hub_threads: Option<usize>,
    /// HAProxy `nbthread` and nginx `worker_processes`.
    pub proxy_threads: usize,
    /// Worker threads of the bank process.
    pub bank_threads: usize,
    /// Consents of big-cache.
    pub big_consents: usize,
    /// Virtual users of big-cache.
    pub big_users: usize,
    /// Largest single-use token pool of cold-tokens.
    pub cold_pool_max: usize,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// The report folder (work files under `work/`).
    pub out: PathBuf,
    /// The `gateway` binary.
    pub gateway: PathBuf,
    /// This binary (re-executed as the bank process).
    pub self_exe: PathBuf,
    /// Peer binaries.
    pub peers: PeerBinaries,
}

/// A started system.
struct Running {
    system: System,
    proc: Option<Proc>,
    endpoint: Endpoint,
    admin: Option<SocketAddr>,
    haproxy: Option<haproxy::HaproxyFiles>,
}

/// The bank process.
struct Bank {
    proc: Proc,
    _stdin: Option<ChildStdin>,
    addrs: [SocketAddr; 2],
}

/// CPU counters read at the edges of a window.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    proxy: Option<Duration>,
    bank: Duration,
    loadgen: Duration,
}

fn read_cpu(proxy: Option<i32>, bank: i32) -> Cpu {
    Cpu {
        proxy: proxy.and_then(|p| procs::group_cpu(p).ok()),
        bank: procs::group_cpu(bank).unwrap_or_default(),
        loadgen: procs::self_cpu(),
    }
}

/// One measured window.
struct Measured {
    result: RunResult,
    /// Requests of this window that got a token already sent once (cold-tokens).
    tokens_reused: u64,
    cpu: (Cpu, Cpu),
    waves: Vec<WaveEvent>,
    generations: Vec<(Instant, u64)>,
}

/// A revocation wave as it happened.
#[derive(Debug, Clone)]
struct WaveEvent {
    users: Vec<u32>,
    written: Instant,
    applied: Option<Instant>,
}

/// A scenario's inputs, fixed before any system starts.
struct Setup {
    sc: Scenario,
    /// Its work folder.
    dir: PathBuf,
    /// The systems it runs.
    systems: Vec<System>,
    /// Consents loaded.
    consents: usize,
    /// The hub's consent snapshot.
    snapshot: PathBuf,
    /// The virtual users' consents (none in open-data).
    rows: Vec<ConsentRow>,
    /// A token for each of `rows`.
    tokens: Vec<String>,
}

/// The started systems of a scenario and the bank process behind them (dropped in
/// that order: the systems, then the bank).
struct Fleet {
    running: Vec<Running>,
    bank: Bank,
}

/// What the measured windows of a scenario run.
struct Loads {
    /// The load points, in order.
    points: Vec<Load>,
    /// The measurement window.
    window: Duration,
    /// Per system, its groups (the main one first).
    plans: BTreeMap<System, Vec<Group>>,
    /// The single-use tokens of cold-tokens, shared by every window.
    pool: Option<Arc<TokenPool>>,
}

/// What the steps of a running scenario share.
#[derive(Clone, Copy)]
struct Stage<'a> {
    setup: &'a Setup,
    fleet: &'a Fleet,
    loads: &'a Loads,
}

/// One measured window: its system, load point (index), round (0-based), measurement.
type Window = (System, usize, usize, Measured);

/// The runner of one `compare` invocation.
pub struct Runner {
    s: Settings,
    env: BenchEnv,
    rt: tokio::runtime::Runtime,
    work: PathBuf,
    version: AtomicU64,
    identities: Vec<Identity>,
    /// HTTP/1.1-only identities for the probes (which speak HTTP/1.1 whatever the load).
    probe_identities: Vec<Identity>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn per_req_us(cpu: Duration, n: u64) -> f64 {
    stats::round1(secs(cpu) * 1e6 / n.max(1) as f64)
}

impl Runner {
    /// Generates the environment and the load generator's runtime.
    pub fn new(s: Settings, loadgen_threads: usize) -> Result<Runner> {
        let work = s.out.join("work");
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(io_at(&work))?;
        }
        let env = BenchEnv::generate(&work)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(loadgen_threads.max(1))
            .thread_name("loadgen")
            .enable_all()
            .build()
            .map_err(crate::error::os("load generator runtime"))?;
        let mut r = Runner {
            s,
            env,
            rt,
            work,
            version: AtomicU64::new(1),
            identities: Vec::new(),
            probe_identities: Vec::new(),
        };
        r.identities = r.identities(r.s.http2)?;
        r.probe_identities = r.identities(false)?;
        Ok(r)
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn start_bank(&self, dir: &Path, slow: bool) -> Result<Bank> {
        let b = bankproc::spawn(
            &self.env,
            dir,
            &self.s.self_exe,
            self.s.bank_threads,
            slow.then_some(SLOW_DELAY),
        )?;
        Ok(Bank {
            proc: b.proc,
            _stdin: b.stdin,
            addrs: b.addrs,
        })
    }

    fn start_hub(&self, dir: &Path, snapshot: &Path, bank: &Bank) -> Result<Running> {
        let (port, admin_port) = (procs::free_port()?, procs::free_port()?);
        let config = dir.join("hub.toml");
        fixture::write_hub_config(
            &self.env,
            &HubSettings {
                port,
                admin_port,
                threads: self.s.hub_threads,
                consents: fixture::ConsentSource::Snapshot(snapshot),
                bank_urls: bank.addrs.map(|a| format!("https://{a}")),
                token_cache: 100_000,
            },
            &config,
        )?;
        let log = dir.join("hub.log");
        let out = std::fs::File::create(&log).map_err(io_at(&log))?;
        let err = out.try_clone().map_err(io_at(&log))?;
        let mut cmd = Command::new(&self.s.gateway);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut proc = Proc::spawn("hub", &mut cmd, Signal::SIGINT)?;
        let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(procs::http_get(admin, "/readyz"), Ok((200, _))) {
                break;
            }
            proc.ensure_running().map_err(|e| HarnessError::Process {
                name: "hub".into(),
                reason: format!("{e} (see {})", log.display()),
            })?;
            if Instant::now() > deadline {
                return Err(HarnessError::Process {
                    name: "hub".into(),
                    reason: format!("not ready after 60 s (see {})", log.display()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Running {
            system: System::Hub,
            proc: Some(proc),
            endpoint: Endpoint::localhost(SocketAddr::from(([127, 0, 0, 1], port)))?,
            admin: Some(admin),
            haproxy: None,
        })
    }

    fn start_haproxy(&self, dir: &Path, consents: usize, bank: &Bank) -> Result<Running> {
        let port = procs::free_port()?;
        let hdir = dir.join("haproxy");
        let files = haproxy::write(
            &self.env,
            &haproxy::HaproxySettings {
                port,
                threads: self.s.proxy_threads,
                banks: bank.addrs,
                consents,
            },
            &hdir,
        )?;
        let log = hdir.join("haproxy.log");
        let out = std::fs::File::create(&log).map_err(io_at(&log))?;
        let err = out.try_clone().map_err(io_at(&log))?;
        let mut cmd = Command::new(&self.s.peers.haproxy);
        cmd.arg("-db")
            .arg("-f")
            .arg(&files.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut proc = Proc::spawn("haproxy", &mut cmd, Signal::SIGTERM)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        procs::wait_listening(addr, &mut proc, Duration::from_secs(120)).map_err(|e| {
            HarnessError::Process {
                name: "haproxy".into(),
                reason: format!("{e} (see {})", log.display()),
            }
        })?;
        Ok(Running {
            system: System::Haproxy,
            proc: Some(proc),
            endpoint: Endpoint::localhost(addr)?,
            admin: None,
            haproxy: Some(files),
        })
    }

    fn start_nginx(&self, dir: &Path, bank: &Bank) -> Result<Running> {
        let port = procs::free_port()?;
        let ndir = dir.join("nginx");
        std::fs::create_dir_all(&ndir).map_err(io_at(&ndir))?;
        let config = nginx::write(
            &self.env,
            &nginx::NginxSettings {
                port,
                workers: self.s.proxy_threads,
                banks: bank.addrs,
            },
            &ndir,
        )?;
        let log = ndir.join("nginx-stderr.log");
        let out = std::fs::File::create(&log).map_err(io_at(&log))?;
        let err = out.try_clone().map_err(io_at(&log))?;
        let mut cmd = Command::new(&self.s.peers.nginx);
        cmd.arg("-p")
            .arg(&ndir)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(ndir.join("nginx-error.log"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut proc = Proc::spawn("nginx", &mut cmd, Signal::SIGTERM)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        procs::wait_listening(addr, &mut proc, Duration::from_secs(30)).map_err(|e| {
            HarnessError::Process {
                name: "nginx".into(),
                reason: format!("{e} (see {})", ndir.join("nginx-error.log").display()),
            }
        })?;
        Ok(Running {
            system: System::Nginx,
            proc: Some(proc),
            endpoint: Endpoint::localhost(addr)?,
            admin: None,
            haproxy: None,
        })
    }

    /// Identities: every API user, then the hub's client identity (index `users.len()`).
    fn identities(&self, http2: bool) -> Result<Vec<Identity>> {
        let pki = &self.env.pki;
        let ca = pki.ca_cert_path();
        let mut out = Vec::new();
        for (i, u) in self.env.users.iter().enumerate() {
            let id = self.env.user_identity(i)?;
            out.push(Identity {
                name: u.to_string(),
                tls: crate::tls::client_config(ca, &id.cert_path, &id.key_path, http2)?,
            });
        }
        out.push(Identity {
            name: "hub-client".into(),
            tls: crate::tls::client_config(
                ca,
                &pki.hub_client().cert_path,
                &pki.hub_client().key_path,
                http2,
            )?,
        });
        Ok(out)
    }

    /// The request of `row` as `system` expects it (`token`: a fixed bearer token).
    fn consent_user(
        &self,
        system: System,
        endpoint: &Endpoint,
        row: &ConsentRow,
        token: Option<&str>,
        n: usize,
    ) -> Result<VirtualUser> {
        let env = &self.env;
        let provider = env.providers[row.provider];
        let iid = format!("00000000-0000-4000-8000-{:012x}", n + 1);
        let context = [
            ("x-fapi-interaction-id", iid.clone()),
            ("x-hub-api-user", env.users[row.user].to_string()),
            ("x-hub-consent-id", row.id.clone()),
            ("x-hub-customer", row.customer.clone()),
            (
                "x-hub-permissions",
                "accounts,balances,transactions".to_string(),
            ),
        ];
        let bearer = token.map(|t| ("authorization", format!("Bearer {t}")));
        let contract_path = format!("/v1/providers/{provider}/accounts");
        match system {
            System::Hub | System::Haproxy => {
                let mut h = vec![("x-fapi-interaction-id", iid)];
                h.extend(bearer);
                VirtualUser::new(endpoint, &contract_path, &h, row.user)
            }
            System::Nginx => {
                let mut h = context.to_vec();
                h.extend(bearer);
                VirtualUser::new(endpoint, &contract_path, &h, row.user)
            }
            System::Bank => VirtualUser::new(endpoint, "/v1/accounts", &context, env.users.len()),
        }
    }

    fn open_data_user(&self, system: System, endpoint: &Endpoint, n: usize) -> Result<VirtualUser> {
        let env = &self.env;
        let provider = env.providers[n % 2];
        let iid = format!("00000000-0000-4000-8000-{:012x}", n + 1);
        match system {
            System::Bank => VirtualUser::new(
                endpoint,
                "/v1/open-data/exchange-rates",
                &[("x-fapi-interaction-id", iid)],
                env.users.len(),
            ),
            _ => VirtualUser::new(
                endpoint,
                &format!("/v1/open-data/{provider}/exchange-rates"),
                &[("x-fapi-interaction-id", iid)],
                n % env.active_users(),
            ),
        }
    }

    /// Probes that `r` answers as the contract requires, adding a [`Check`] per probe.
    fn probe(
        &self,
        r: &Running,
        bank: &Bank,
        rows: &[ConsentRow],
        tokens: &[String],
        checks: &mut Vec<Check>,
    ) -> Result<()> {
        let sys = r.system;
        let (row, token) = self.probe_consent(rows, tokens)?;
        let endpoint = if sys == System::Bank {
            Endpoint::localhost(bank.addrs[row.provider])?
        } else {
            r.endpoint.clone()
        };
        let mut p = Prober {
            runner: self,
            system: sys,
            endpoint,
            checks,
        };
        let valid = self.consent_user(sys, &p.endpoint, &row, Some(&token), 0)?;
        p.check(
            "valid consent and token",
            &valid,
            valid.identity,
            (200, None),
        );
        let od = self.open_data_user(sys, &p.endpoint, 1)?;
        p.check("open data", &od, od.identity, (200, None));
        if !sys.has_policy() {
            return Ok(());
        }
        self.probe_policy(&mut p, &row, &token, &valid)
    }

    /// A consent on provider 1 (never the slow one), with a token.
    fn probe_consent(
        &self,
        rows: &[ConsentRow],
        tokens: &[String],
    ) -> Result<(ConsentRow, String)> {
        match rows.iter().position(|x| x.provider == 1) {
            Some(k) if k < tokens.len() => Ok((rows[k].clone(), tokens[k].clone())),
            _ => {
                let row = self.env.consent(1);
                let token = self.env.mint(&row, fixture::now_unix())?;
                Ok((row, token))
            }
        }
    }

    /// The probes of a system that enforces the policy: a forged token, a token on
    /// another API user's connection, a revoked consent, a throttled user.
    fn probe_policy(
        &self,
        p: &mut Prober<'_>,
        row: &ConsentRow,
        token: &str,
        valid: &VirtualUser,
    ) -> Result<()> {
        let env = &self.env;
        let sys = p.system;
        let bad = self.consent_user(sys, &p.endpoint, row, Some(&forge(token)), 0)?;
        p.check(
            "forged signature",
            &bad,
            bad.identity,
            (401, Some("invalid_token")),
        );
        let other = (row.user + 1) % env.active_users();
        p.check(
            "token on another API user's connection",
            valid,
            other,
            (401, Some("token_binding_mismatch")),
        );
        let [revoked, throttled] = env.extra_consents();
        let revoked_token = env.mint(&revoked, fixture::now_unix())?;
        let ru = self.consent_user(sys, &p.endpoint, &revoked, Some(&revoked_token), 0)?;
        p.check(
            "revoked consent",
            &ru,
            ru.identity,
            (403, Some("consent_revoked")),
        );
        let tt = env.mint(&throttled, fixture::now_unix())?;
        let tu = self.consent_user(sys, &p.endpoint, &throttled, Some(&tt), 0)?;
        p.rate_limit(&tu);
        Ok(())
    }

    /// Runs one window, with the CPU counters read at its edges.
    fn measure(
        &self,
        plan: &Plan,
        label: String,
        proxy: Option<i32>,
        bank: i32,
        revocation: Option<&(dyn Fn(Instant) -> Vec<WaveEvent> + Sync)>,
        admin: Option<SocketAddr>,
    ) -> Result<Measured> {
        let edges: Mutex<(Cpu, Cpu)> = Mutex::new((Cpu::default(), Cpu::default()));
        let (start_tx, start_rx) = mpsc::channel::<Instant>();
        let start_tx = Mutex::new(Some(start_tx));
        let on_phase = |phase: Phase, _at: Instant| {
            let c = read_cpu(proxy, bank);
            if let Ok(mut e) = edges.lock() {
                match phase {
                    Phase::Started => e.0 = c,
                    Phase::Finished => e.1 = c,
                }
            }
            if phase == Phase::Started {
                if let Some(tx) = start_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(_at);
                }
            }
        };
        let polling = AtomicBool::new(admin.is_some());
        let polling = &polling;
        let result = std::thread::scope(|scope| {
            let waves = revocation.map(|f| {
                scope.spawn(move || match start_rx.recv() {
                    Ok(t0) => f(t0),
                    Err(_) => Vec::new(),
                })
            });
            let poller = admin.map(|a| scope.spawn(move || poll_generations(a, polling)));
            let r = self.rt.block_on(engine::run(
                plan,
                RunOptions {
                    progress: Some(label),
                    on_phase: Some(&on_phase),
                },
            ));
            polling.store(false, Ordering::Relaxed);
            let waves = waves
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            let generations = poller
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            r.map(|result| (result, waves, generations))
        });
        let (result, waves, generations) = result?;
        let cpu = edges
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Measured {
            result,
            tokens_reused: 0,
            cpu,
            waves,
            generations,
        })
    }

    /// Runs one scenario: sets it up, starts and probes its systems, plans its loads,
    /// warms every system up, measures the interleaved rounds, stops the systems and
    /// reports.
    pub fn scenario(&mut self, sc: Scenario) -> Result<ScenarioReport> {
        let mut notes = Vec::new();
        let setup = self.set_up(sc, &mut notes)?;
        let fleet = self.start_systems(&setup, &mut notes)?;
        let mut checks = self.probe_all(&setup, &fleet)?;
        let loads = self.loads(&setup, &fleet, &mut notes)?;
        let stage = Stage {
            setup: &setup,
            fleet: &fleet,
            loads: &loads,
        };
        self.warm_up(stage)?;
        let (measured, revocation) = self.measure_rounds(stage, &mut notes)?;
        checks.extend(self.journal_check(&setup, &fleet));
        let peak_rss_mib = fleet.stop();
        self.trim_logs(&setup.dir, &mut notes);
        let points = self.points(&setup.systems, &loads.points, &measured)?;
        let ratios = ratios(&points);
        Ok(ScenarioReport {
            name: sc.name().into(),
            what: sc.what().into(),
            consents: setup.consents,
            virtual_users: if sc == Scenario::OpenData {
                OPEN_DATA_USERS
            } else {
                setup.rows.len()
            },
            systems: setup.systems.iter().map(|s| s.name().to_string()).collect(),
            checks,
            points,
            ratios,
            revocation,
            peak_rss_mib,
            notes,
            charts: Vec::new(),
        })
    }

    /// The scenario's folder, systems and consent snapshot, its virtual users' consents
    /// and their tokens.
    fn set_up(&self, sc: Scenario, notes: &mut Vec<String>) -> Result<Setup> {
        let dir = self.work.join(sc.name());
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let systems: Vec<System> = sc
            .systems()
            .iter()
            .copied()
            .filter(|s| self.s.systems.contains(s))
            .collect();
        let consents = if sc == Scenario::BigCache {
            self.s.big_consents
        } else {
            CONSENTS
        };
        eprintln!(
            "\n== {sc}: {} ({} consents)",
            systems
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            consents
        );
        let snapshot = dir.join("consents.snap");
        let t = Instant::now();
        let v = self.next_version();
        self.env
            .write_consents(&snapshot, consents, v, &|_| false)?;
        if sc == Scenario::BigCache {
            notes.push(format!(
                "{consents} consents written as a binary snapshot in {:.1} s",
                secs(t.elapsed())
            ));
        }
        let rows = self.user_rows(sc, consents);
        let t = Instant::now();
        let tokens = self.env.mint_all(&rows)?;
        if !rows.is_empty() {
            eprintln!(
                "   minted {} tokens in {:.1} s",
                tokens.len(),
                secs(t.elapsed())
            );
        }
        Ok(Setup {
            sc,
            dir,
            systems,
            consents,
            snapshot,
            rows,
            tokens,
        })
    }

    /// The virtual users' consents: none in open-data, spread over the whole store in
    /// big-cache, the first ones otherwise.
    fn user_rows(&self, sc: Scenario, consents: usize) -> Vec<ConsentRow> {
        match sc {
            Scenario::OpenData => Vec::new(),
            Scenario::BigCache => {
                let n = self.s.big_users.min(consents).max(1);
                (0..n)
                    .map(|k| self.env.consent((k * SPREAD_STRIDE + 12_345) % consents))
                    .collect()
            }
            _ => (0..CONSENTS.min(consents))
                .map(|i| self.env.consent(i))
                .collect(),
        }
    }

    /// Starts the bank process, then every system of the scenario in front of it.
    fn start_systems(&self, setup: &Setup, notes: &mut Vec<String>) -> Result<Fleet> {
        let (dir, consents) = (&setup.dir, setup.consents);
        let bank = self.start_bank(dir, setup.sc == Scenario::SlowBank)?;
        let mut running = Vec::new();
        for &sys in &setup.systems {
            let t = Instant::now();
            let r = match sys {
                System::Hub => self.start_hub(dir, &setup.snapshot, &bank)?,
                System::Haproxy => self.start_haproxy(dir, consents, &bank)?,
                System::Nginx => self.start_nginx(dir, &bank)?,
                System::Bank => Running {
                    system: System::Bank,
                    proc: None,
                    endpoint: Endpoint::localhost(bank.addrs[1])?,
                    admin: None,
                    haproxy: None,
                },
            };
            if setup.sc == Scenario::BigCache && sys.has_policy() {
                notes.push(format!(
                    "{sys} started with {consents} consents in {:.1} s",
                    secs(t.elapsed())
                ));
            }
            running.push(r);
        }
        Ok(Fleet { running, bank })
    }

    /// Probes every running system; prints the probes that failed.
    fn probe_all(&self, setup: &Setup, fleet: &Fleet) -> Result<Vec<Check>> {
        let mut checks = Vec::new();
        for r in &fleet.running {
            self.probe(r, &fleet.bank, &setup.rows, &setup.tokens, &mut checks)?;
        }
        for c in checks.iter().filter(|c| !c.pass) {
            eprintln!(
                "   PROBE FAILED: {} {}: expected {}, got {}",
                c.system, c.probe, c.expected, c.got
            );
        }
        Ok(checks)
    }

    /// The load points and window of the scenario, the cold-tokens pool and every
    /// system's groups.
    fn loads(&self, setup: &Setup, fleet: &Fleet, notes: &mut Vec<String>) -> Result<Loads> {
        let (points, window) = self.load_points(setup.sc);
        let pool = if setup.sc == Scenario::ColdTokens {
            Some(self.cold_token_pool(setup, &points, window, notes)?)
        } else {
            None
        };
        let mut plans: BTreeMap<System, Vec<Group>> = BTreeMap::new();
        for &sys in &setup.systems {
            plans.insert(sys, self.groups_for(sys, setup, fleet, pool.as_ref())?);
        }
        Ok(Loads {
            points,
            window,
            plans,
            pool,
        })
    }

    /// The open-loop rates (and the closed loop where it applies; the top rate alone in
    /// revocation) and the measurement window.
    fn load_points(&self, sc: Scenario) -> (Vec<Load>, Duration) {
        let mut points: Vec<Load> = self
            .s
            .rates
            .iter()
            .map(|&rate| Load::Open { rate })
            .collect();
        if self.s.closed && !matches!(sc, Scenario::SlowBank | Scenario::Revocation) {
            points.push(Load::Closed);
        }
        if sc == Scenario::Revocation {
            let top = self.s.rates.iter().copied().fold(0.0, f64::max);
            points = vec![Load::Open { rate: top.max(1.0) }];
        }
        let window = if sc == Scenario::Revocation {
            self.s.duration.max(MIN_REVOCATION_WINDOW)
        } else {
            self.s.duration
        };
        (points, window)
    }

    /// Single-use tokens for cold-tokens, shared by every window so none is sent twice.
    fn cold_token_pool(
        &self,
        setup: &Setup,
        points: &[Load],
        window: Duration,
        notes: &mut Vec<String>,
    ) -> Result<Arc<TokenPool>> {
        let rows = &setup.rows;
        let per_window: f64 = points
            .iter()
            .map(|p| match p {
                Load::Open { rate } => rate * secs(window) * 1.02 + 50.0,
                Load::Closed => 16_000.0 * secs(window),
            })
            .sum();
        let warm = 16_000.0
            * secs(
                self.s
                    .warmup
                    .max(Duration::from_secs_f64(rows.len() as f64 / 2_500.0)),
            )
            + 50.0;
        let policy_systems = setup.systems.iter().filter(|s| s.has_policy()).count() as f64;
        let want = ((per_window * self.s.rounds as f64 + warm) * policy_systems) as usize;
        let n = want.min(self.s.cold_pool_max).max(rows.len());
        if want > self.s.cold_pool_max {
            notes.push(format!(
                "the single-use token pool was capped at {n} tokens (wanted {want}); see `tokens reused` below"
            ));
        }
        let t = Instant::now();
        let pool_rows: Vec<ConsentRow> = (0..n).map(|k| rows[k % rows.len()].clone()).collect();
        let minted = self.env.mint_all(&pool_rows)?;
        eprintln!(
            "   minted {n} single-use tokens in {:.1} s",
            secs(t.elapsed())
        );
        let triples = minted
            .into_iter()
            .enumerate()
            .map(|(k, tok)| {
                let vu = k % rows.len();
                (rows[vu].user, u32::try_from(vu).unwrap_or(0), tok)
            })
            .collect();
        Ok(Arc::new(TokenPool::new(
            self.probe_identities.len(),
            triples,
        )?))
    }

    /// `sys`'s groups: the main one (and slow-bank's stream to the slow provider).
    fn groups_for(
        &self,
        sys: System,
        setup: &Setup,
        fleet: &Fleet,
        pool: Option<&Arc<TokenPool>>,
    ) -> Result<Vec<Group>> {
        let ep = fleet.endpoint(sys)?;
        let rows = &setup.rows;
        let tokens = pool.is_none().then_some(setup.tokens.as_slice());
        let watch = setup.sc == Scenario::Revocation;
        let make = |rows: &[(usize, &ConsentRow)], ep: &Endpoint| {
            self.consent_users(sys, ep, rows, tokens, watch)
        };
        let of = |provider: usize| -> Vec<(usize, &ConsentRow)> {
            rows.iter()
                .enumerate()
                .filter(|(_, r)| r.provider == provider)
                .collect()
        };
        Ok(match setup.sc {
            Scenario::OpenData => {
                let users = (0..OPEN_DATA_USERS)
                    .map(|n| self.open_data_user(sys, &ep, n))
                    .collect::<Result<Vec<_>>>()?;
                vec![self.group("main", users, None)]
            }
            Scenario::SlowBank => {
                let slow_ep = if sys == System::Bank {
                    Endpoint::localhost(fleet.bank.addrs[0])?
                } else {
                    ep.clone()
                };
                let mut s = self.group("slow-provider", make(&of(0), &slow_ep)?, None);
                if sys == System::Bank {
                    s.endpoint = Some(slow_ep.clone());
                }
                s.connections = SLOW_CONNECTIONS;
                s.load = Load::Open { rate: SLOW_RATE };
                vec![self.group("main", make(&of(1), &ep)?, None), s]
            }
            _ => {
                // The bank alone is one bank's address: its users are that bank's
                // customers (a proxy spreads the same users over both banks).
                let all: Vec<(usize, &ConsentRow)> = rows
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| sys != System::Bank || r.provider == 1)
                    .collect();
                vec![self.group("main", make(&all, &ep)?, pool.cloned())]
            }
        })
    }

    /// The virtual users of `rows` (each with its index), with their fixed tokens
    /// (`tokens`; none: a pool hands them out), watched or not.
    fn consent_users(
        &self,
        sys: System,
        ep: &Endpoint,
        rows: &[(usize, &ConsentRow)],
        tokens: Option<&[String]>,
        watch: bool,
    ) -> Result<Vec<VirtualUser>> {
        rows.iter()
            .map(|(n, row)| {
                let token = tokens.and_then(|t| t.get(*n)).map(String::as_str);
                let mut u = self.consent_user(sys, ep, row, token, *n)?;
                u.watch = watch;
                Ok(u)
            })
            .collect()
    }

    /// Closed loop on every system, long enough to touch every virtual user (hot caches,
    /// pooled upstream connections) before anything is measured.
    fn warm_up(&self, st: Stage<'_>) -> Result<()> {
        for &sys in &st.setup.systems {
            if self.s.warmup.is_zero() {
                break;
            }
            let users = st
                .loads
                .plans
                .get(&sys)
                .and_then(|g| g.first())
                .map_or(0, |g| g.users.len());
            let warm = self
                .s
                .warmup
                .max(Duration::from_secs_f64(users as f64 / 2_500.0))
                .min(Duration::from_secs(30));
            let mut plan = self.plan_for(st, sys, Load::Closed, warm)?;
            plan.groups.truncate(1);
            self.rt.block_on(engine::run(
                &plan,
                RunOptions {
                    progress: Some(format!("{} {sys} warm-up", st.setup.sc)),
                    ..RunOptions::default()
                },
            ))?;
        }
        Ok(())
    }

    /// The interleaved rounds (round 1: A B C D, round 2: B C D A, …) at every load point;
    /// with the revocation waves' analysis in revocation.
    fn measure_rounds(
        &self,
        st: Stage<'_>,
        notes: &mut Vec<String>,
    ) -> Result<(Vec<Window>, Vec<RevocationWave>)> {
        let systems = &st.setup.systems;
        let mut measured: Vec<Window> = Vec::new();
        let mut waves_report = Vec::new();
        for round in 0..self.s.rounds {
            for (pi, &load) in st.loads.points.iter().enumerate() {
                for k in 0..systems.len() {
                    let sys = systems[(k + round) % systems.len()];
                    let m = self.measure_window(st, sys, round, load, notes)?;
                    if st.setup.sc == Scenario::Revocation {
                        waves_report.extend(analyse_revocation(sys, round + 1, &m));
                    }
                    measured.push((sys, pi, round, m));
                }
            }
        }
        Ok((measured, waves_report))
    }

    /// One measured window of `sys` at `load` in round `round` (0-based); revocation
    /// restores every consent first and revokes two waves during the window.
    fn measure_window(
        &self,
        st: Stage<'_>,
        sys: System,
        round: usize,
        load: Load,
        notes: &mut Vec<String>,
    ) -> Result<Measured> {
        let revocation = st.setup.sc == Scenario::Revocation;
        if revocation {
            self.restore_revocations(st, sys)?;
        }
        let plan = self.plan_for(st, sys, load, st.loads.window)?;
        let r = st.fleet.find(sys);
        let proxy_pid = r.and_then(|r| r.proc.as_ref()).map(Proc::pid);
        let admin = if revocation {
            r.and_then(|r| r.admin)
        } else {
            None
        };
        let load_label = load.label(self.s.connections);
        let label = format!("{} r{} {sys} {load_label}", st.setup.sc, round + 1);
        let revoke = |t0: Instant| self.revocation_waves(st, sys, t0);
        let reused = || st.loads.pool.as_ref().map_or(0, |p| p.reused());
        let reused_before = reused();
        let mut m = self.measure(
            &plan,
            label,
            proxy_pid,
            st.fleet.bank.proc.pid(),
            if revocation { Some(&revoke) } else { None },
            admin,
        )?;
        m.tokens_reused = reused() - reused_before;
        if m.tokens_reused > 0 {
            notes.push(format!(
                "round {} {sys} {load_label}: {} requests reused a token (the single-use pool ran dry; raise --cold-pool-max): that window is optimistic for the hub",
                round + 1,
                m.tokens_reused
            ));
        }
        print_window(round, sys, &load_label, &m);
        Ok(m)
    }

    /// After the load: the hub's journal dropped no record, has one line per request the
    /// hub counted (`hub_requests_total`), and its hash chain verifies.
    fn journal_check(&self, setup: &Setup, fleet: &Fleet) -> Option<Check> {
        let admin = fleet.find(System::Hub)?.admin?;
        let journal = setup.dir.join("audit.jsonl");
        let sum = |body: &str, name: &str| -> u64 {
            body.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (requests, dropped, lines) = loop {
            let body = procs::http_get(admin, "/metrics").map_or_else(|_| String::new(), |r| r.1);
            let lines = std::fs::read(&journal)
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64);
            let counted = (
                sum(&body, "hub_requests_total"),
                sum(&body, "hub_audit_dropped_total"),
                lines,
            );
            // The writer drains its queue every 20 ms: wait for it, bounded.
            if counted.2 >= counted.0 || Instant::now() > deadline {
                break counted;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let verified = Command::new(&self.s.gateway)
            .args(["audit", "verify"])
            .arg(&journal)
            .output()
            .is_ok_and(|o| o.status.success());
        Some(Check {
            system: System::Hub.name().into(),
            probe: "audit journal after the run".into(),
            expected: "0 dropped, one line per request, hash chain verifies".into(),
            got: format!(
                "{dropped} dropped, {lines} lines for {requests} requests, chain {}",
                if verified { "verifies" } else { "broken" }
            ),
            pass: dropped == 0 && lines == requests && verified,
        })
    }

    /// Access logs and the audit journal grow with every request; keep the folder small.
    fn trim_logs(&self, dir: &Path, notes: &mut Vec<String>) {
        for log in [
            dir.join("audit.jsonl"),
            dir.join("haproxy").join("haproxy.log"),
            dir.join("nginx").join("nginx-access.log"),
            dir.join("hub.log"),
        ] {
            let size = std::fs::metadata(&log).map_or(0, |m| m.len());
            if size > 16 << 20 {
                keep_tail(&log, 256 << 10);
                if std::fs::remove_file(&log).is_ok() {
                    notes.push(format!(
                        "{} ({} MiB) removed after the run (its last 256 KiB kept as .tail)",
                        log.strip_prefix(&self.work).unwrap_or(&log).display(),
                        size >> 20
                    ));
                }
            }
        }
    }

    fn group(&self, name: &str, users: Vec<VirtualUser>, tokens: Option<Arc<TokenPool>>) -> Group {
        Group {
            name: name.into(),
            users: Arc::new(users),
            tokens,
            connections: self.s.connections,
            streams: self.s.streams,
            load: Load::Closed,
            endpoint: None,
        }
    }

    fn plan_for(&self, st: Stage<'_>, sys: System, load: Load, duration: Duration) -> Result<Plan> {
        let mut groups = st
            .loads
            .plans
            .get(&sys)
            .cloned()
            .ok_or_else(|| HarnessError::Plan(format!("no plan for {sys}")))?;
        if let Some(main) = groups.first_mut() {
            main.load = load;
        }
        let endpoint = st.fleet.endpoint(sys)?;
        Ok(Plan {
            endpoint,
            identities: self.identities.clone(),
            groups,
            http2: self.s.http2,
            duration,
            request_timeout: self.s.request_timeout,
        })
    }

    /// Every system × load × group, merged over the rounds.
    fn points(
        &self,
        systems: &[System],
        loads: &[Load],
        measured: &[Window],
    ) -> Result<Vec<PointReport>> {
        let mut out = Vec::new();
        for (pi, load) in loads.iter().enumerate() {
            for &sys in systems {
                let runs: Vec<&Measured> = measured
                    .iter()
                    .filter(|(s, p, _, _)| *s == sys && *p == pi)
                    .map(|(_, _, _, m)| m)
                    .collect();
                let Some(first) = runs.first() else { continue };
                for gi in 0..first.result.groups.len() {
                    if let Some(p) = self.point(sys, load, gi, &runs)? {
                        out.push(p);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Group `gi` of `sys` at `load`, merged over `runs` (one per round).
    fn point(
        &self,
        sys: System,
        load: &Load,
        gi: usize,
        runs: &[&Measured],
    ) -> Result<Option<PointReport>> {
        let mut merged: Option<GroupResult> = None;
        let mut rounds = Vec::new();
        let mut cpu = CpuTotals::default();
        for (ri, m) in runs.iter().enumerate() {
            let g = &m.result.groups[gi];
            rounds.push(cpu.add(ri, m, g));
            match &mut merged {
                None => merged = Some(g.clone()),
                Some(acc) => merge_group(acc, g)?,
            }
        }
        let Some(merged) = merged else {
            return Ok(None);
        };
        let summary = stats::summarize(&merged);
        let saturated = match merged.load {
            Load::Open { rate } => {
                merged.unsent > 0
                    || (merged.responses as f64) < rate * merged.window.as_secs_f64() * 0.97
            }
            Load::Closed => false,
        };
        Ok(Some(PointReport {
            system: sys.name().into(),
            load: load.label(self.s.connections),
            offered_rps: match merged.load {
                Load::Open { rate } => Some(rate),
                Load::Closed => None,
            },
            group: merged.name.clone(),
            merged: summary,
            proxy_cpu_us_per_req: (!cpu.missing_proxy && sys != System::Bank)
                .then(|| per_req_us(cpu.proxy, cpu.answers)),
            bank_cpu_us_per_req: per_req_us(cpu.bank, cpu.answers),
            loadgen_cpu_us_per_req: per_req_us(cpu.loadgen, cpu.answers),
            saturated,
            rounds,
        }))
    }

    /// Before a revocation window: every consent authorised again, and the system has it.
    fn restore_revocations(&self, st: Stage<'_>, sys: System) -> Result<()> {
        let r = st
            .fleet
            .find(sys)
            .ok_or_else(|| HarnessError::Plan(format!("{sys} is not running")))?;
        let consents = st.setup.consents;
        match sys {
            System::Hub => {
                let admin = r
                    .admin
                    .ok_or_else(|| HarnessError::Plan("hub without admin".into()))?;
                let before = hub_generation(admin).unwrap_or(0);
                let v = self.next_version();
                self.env
                    .write_consents(&st.setup.snapshot, consents, v, &|_| false)?;
                wait_hub_reload(admin, before)?;
            }
            System::Haproxy => {
                let files = r
                    .haproxy
                    .as_ref()
                    .ok_or_else(|| HarnessError::Plan("haproxy files".into()))?;
                let rows: Vec<ConsentRow> = (0..CONSENTS.min(consents))
                    .map(|i| self.env.consent(i))
                    .collect();
                haproxy::admin(
                    &files.socket,
                    &haproxy::set_map_commands(&self.env, &files.consents_map, &rows),
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Revokes 10% of the users' consents at 1/4 and another 10% at 1/2 of the window.
    fn revocation_waves(&self, st: Stage<'_>, sys: System, t0: Instant) -> Vec<WaveEvent> {
        let mut out = Vec::new();
        let window = st.loads.window;
        for wave in 1..=2usize {
            let at = t0 + window * u32::try_from(wave).unwrap_or(1) / 4;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let wave_users: Vec<u32> = (0..st.setup.rows.len())
                .filter(|&i| i % 10 == wave)
                .filter_map(|i| u32::try_from(i).ok())
                .collect();
            let Some((written, applied)) = self.revoke_wave(st, sys, wave, &wave_users) else {
                continue;
            };
            out.push(WaveEvent {
                users: wave_users,
                written,
                applied,
            });
        }
        out
    }

    /// Revokes wave `wave` (its consents `users`) on `sys`: when the revocation was
    /// written and, where the system says so, applied (none: `sys` cannot revoke).
    fn revoke_wave(
        &self,
        st: Stage<'_>,
        sys: System,
        wave: usize,
        users: &[u32],
    ) -> Option<(Instant, Option<Instant>)> {
        match sys {
            System::Hub => {
                let written = Instant::now();
                let v = self.next_version();
                let revoked_so_far =
                    move |i: usize| i < CONSENTS && (1..=wave).any(|w| i % 10 == w);
                let (snapshot, consents) = (&st.setup.snapshot, st.setup.consents);
                if let Err(e) = self
                    .env
                    .write_consents(snapshot, consents, v, &revoked_so_far)
                {
                    eprintln!("   revocation wave {wave}: {e}");
                }
                Some((written, None))
            }
            System::Haproxy => {
                let files = st.fleet.find(sys).and_then(|r| r.haproxy.as_ref())?;
                let rows: Vec<ConsentRow> = users
                    .iter()
                    .map(|&i| {
                        let mut row = self.env.consent(i as usize);
                        row.status = consent_cache::ConsentStatus::Revoked;
                        row
                    })
                    .collect();
                let written = Instant::now();
                let res = haproxy::admin(
                    &files.socket,
                    &haproxy::set_map_commands(&self.env, &files.consents_map, &rows),
                );
                if let Err(e) = &res {
                    eprintln!("   revocation wave {wave}: {e}");
                }
                Some((written, res.ok().map(|_| Instant::now())))
            }
            _ => None,
        }
    }
}

impl Fleet {
    /// The running system `sys`.
    fn find(&self, sys: System) -> Option<&Running> {
        self.running.iter().find(|r| r.system == sys)
    }

    /// Where `system`'s load goes.
    fn endpoint(&self, system: System) -> Result<Endpoint> {
        if system == System::Bank {
            // Provider 1: in slow-bank it is the fast one; the slow group targets 0 itself.
            return Endpoint::localhost(self.bank.addrs[1]);
        }
        self.find(system)
            .map(|r| r.endpoint.clone())
            .ok_or_else(|| HarnessError::Plan(format!("{system} is not running")))
    }

    /// Stops every system, then the bank; returns their peak RSS in MiB.
    fn stop(self) -> BTreeMap<String, f64> {
        let mut peak_rss_mib = BTreeMap::new();
        for r in &self.running {
            if let Some(p) = &r.proc {
                peak_rss_mib.insert(
                    r.system.name().to_string(),
                    stats::round1(p.peak_rss() as f64 / 1_048_576.0),
                );
            }
        }
        peak_rss_mib.insert(
            "bank process".into(),
            stats::round1(self.bank.proc.peak_rss() as f64 / 1_048_576.0),
        );
        let Fleet { running, bank } = self;
        drop(running);
        drop(bank);
        peak_rss_mib
    }
}

/// Correctness probes of one system, each recorded as a [`Check`].
struct Prober<'a> {
    runner: &'a Runner,
    system: System,
    endpoint: Endpoint,
    checks: &'a mut Vec<Check>,
}

impl Prober<'_> {
    /// `user`'s request on a new HTTP/1.1 connection as identity `identity`: (status,
    /// problem code; status 0 and the error where there was no answer).
    fn send(&self, user: &VirtualUser, identity: usize) -> (u16, Option<String>) {
        let got = self.runner.rt.block_on(engine::request_once(
            &self.endpoint,
            &self.runner.probe_identities[identity],
            &user.path.to_string(),
            &user.headers,
        ));
        match got {
            Ok((s, c, _)) => (s, c),
            Err(e) => (0, Some(e.to_string())),
        }
    }

    fn record(&mut self, probe: &str, expected: String, got: String, pass: bool) {
        self.checks.push(Check {
            system: self.system.name().into(),
            probe: probe.into(),
            expected,
            got,
            pass,
        });
    }

    /// One request expected to be answered `expect` (status, problem code).
    fn check(
        &mut self,
        name: &str,
        user: &VirtualUser,
        identity: usize,
        expect: (u16, Option<&str>),
    ) {
        let (status, code) = self.send(user, identity);
        let pass = status == expect.0 && expect.1.is_none_or(|c| code.as_deref() == Some(c));
        self.record(
            name,
            format!("{} {}", expect.0, expect.1.unwrap_or(""))
                .trim()
                .to_string(),
            format!("{status} {}", code.unwrap_or_default())
                .trim()
                .to_string(),
            pass,
        );
    }

    /// Six quick requests of a user limited to one a second: one must be refused
    /// `429 rate_limited`.
    fn rate_limit(&mut self, user: &VirtualUser) {
        let mut limited = false;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (s, c) = self.send(user, user.identity);
            limited |= s == 429 && c.as_deref() == Some("rate_limited");
            seen.push(s.to_string());
        }
        self.record(
            "6 quick requests of a user limited to 1/s",
            "a 429 rate_limited".into(),
            seen.join(","),
            limited,
        );
    }
}

/// CPU time and answers summed over the rounds of one point.
#[derive(Default)]
struct CpuTotals {
    proxy: Duration,
    bank: Duration,
    loadgen: Duration,
    answers: u64,
    /// A round had no proxy CPU reading (the bank alone, or a proxy that had exited).
    missing_proxy: bool,
}

impl CpuTotals {
    /// Adds round `ri` (0-based) and returns its summary for group `g`.
    fn add(&mut self, ri: usize, m: &Measured, g: &GroupResult) -> RoundSummary {
        let total: u64 = m.result.groups.iter().map(|g| g.responses).sum();
        let (a, b) = m.cpu;
        let d_proxy = match (a.proxy, b.proxy) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
            _ => None,
        };
        let d_bank = b.bank.saturating_sub(a.bank);
        let d_loadgen = b.loadgen.saturating_sub(a.loadgen);
        self.missing_proxy |= d_proxy.is_none();
        self.proxy += d_proxy.unwrap_or_default();
        self.bank += d_bank;
        self.loadgen += d_loadgen;
        self.answers += total;
        RoundSummary {
            round: ri + 1,
            stats: stats::summarize(g),
            proxy_cpu_us_per_req: d_proxy.map(|d| per_req_us(d, total)),
            bank_cpu_us_per_req: per_req_us(d_bank, total),
            loadgen_cpu_us_per_req: per_req_us(d_loadgen, total),
        }
    }
}

/// Adds `g`'s counts and histogram to `acc` (the same group in another round).
fn merge_group(acc: &mut GroupResult, g: &GroupResult) -> Result<()> {
    acc.histogram
        .add(&g.histogram)
        .map_err(|e| HarnessError::Report(format!("histogram: {e}")))?;
    acc.responses += g.responses;
    acc.ok += g.ok;
    for (k, v) in &g.statuses {
        *acc.statuses.entry(*k).or_default() += v;
    }
    for (k, v) in &g.errors {
        *acc.errors.entry(k.clone()).or_default() += v;
    }
    acc.unsent += g.unsent;
    acc.bytes += g.bytes;
    acc.reconnects += g.reconnects;
    acc.elapsed += g.elapsed;
    acc.window += g.window;
    Ok(())
}

/// Changes one character in the middle of a token's signature: a forged token.
fn forge(token: &str) -> String {
    let mut forged = token.to_string();
    let sig_start = forged.rfind('.').map_or(0, |i| i + 1);
    let mid = sig_start + (forged.len() - sig_start) / 2;
    let c = forged.as_bytes()[mid];
    forged.replace_range(mid..=mid, if c == b'A' { "B" } else { "A" });
    forged
}

/// The one-line summary of a measured window (its main group).
fn print_window(round: usize, sys: System, load: &str, m: &Measured) {
    let main = &m.result.groups[0];
    eprintln!(
        "   round {} {:8} {:16} {:>8.0}/s  p50 {:>8.3} ms  p99 {:>8.3} ms  ok {}/{}{}",
        round + 1,
        sys.name(),
        load,
        main.rps(),
        stats::latency(&main.histogram).p50_ms,
        stats::latency(&main.histogram).p99_ms,
        main.ok,
        main.responses,
        if main.unsent > 0 {
            format!(", {} unsent", main.unsent)
        } else {
            String::new()
        }
    );
}

/// `hub_config_generation` each time it changes, polled every 10 ms while `polling`.
fn poll_generations(admin: SocketAddr, polling: &AtomicBool) -> Vec<(Instant, u64)> {
    let mut seen: Vec<(Instant, u64)> = Vec::new();
    while polling.load(Ordering::Relaxed) {
        if let Some(g) = hub_generation(admin) {
            if seen.last().is_none_or(|(_, last)| *last != g) {
                seen.push((Instant::now(), g));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    seen
}

/// Waits (up to 10 s) until the hub's configuration generation is past `before`.
fn wait_hub_reload(admin: SocketAddr, before: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub_generation(admin).unwrap_or(0) <= before {
        if Instant::now() > deadline {
            return Err(HarnessError::Process {
                name: "hub".into(),
                reason: "did not reload the restored consent snapshot within 10 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Copies the last `bytes` of `log` to `<log>.tail`.
fn keep_tail(log: &Path, bytes: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    if f.seek(SeekFrom::Start(len.saturating_sub(bytes))).is_err() {
        return;
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() {
        let mut name = log.as_os_str().to_owned();
        name.push(".tail");
        let _ = std::fs::write(PathBuf::from(name), buf);
    }
}

/// `hub_config_generation` from the hub's `/metrics`.
fn hub_generation(admin: SocketAddr) -> Option<u64> {
    let (status, body) = procs::http_get(admin, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("hub_config_generation "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    stats::round1(t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
}

/// For each wave: when the revocation took effect and what was served after it.
fn analyse_revocation(sys: System, round: usize, m: &Measured) -> Vec<RevocationWave> {
    let t0 = m.result.started;
    let records: Vec<&engine::WatchRecord> = m
        .result
        .groups
        .iter()
        .flat_map(|g| g.watched.iter())
        .collect();
    let mut out = Vec::new();
    for (wi, w) in m.waves.iter().enumerate() {
        let users: std::collections::HashSet<u32> = w.users.iter().copied().collect();
        let mine: Vec<&&engine::WatchRecord> =
            records.iter().filter(|r| users.contains(&r.user)).collect();
        let first_refusal = mine
            .iter()
            .filter(|r| r.sent >= w.written && r.code.as_deref() == Some("consent_revoked"))
            .map(|r| r.done)
            .min();
        let generation = m
            .generations
            .iter()
            .skip(1)
            .find(|(t, _)| *t >= w.written)
            .map(|(t, _)| *t);
        let candidates = [
            (generation, "hub_config_generation changed"),
            (w.applied, "set map returned"),
            (first_refusal, "first 403 consent_revoked"),
        ];
        let effect = candidates
            .iter()
            .filter_map(|(t, why)| t.map(|t| (t, *why)))
            .min_by_key(|(t, _)| *t);
        let (mut before, mut refused, mut violated) = (0, 0, 0);
        for r in &mine {
            let ok = (200..300).contains(&r.status);
            match effect {
                Some((t, _)) if r.sent > t => {
                    if ok {
                        violated += 1;
                    } else if r.code.as_deref() == Some("consent_revoked") {
                        refused += 1;
                    }
                }
                _ => {
                    if ok && r.sent >= w.written {
                        before += 1;
                    }
                }
            }
        }
        out.push(RevocationWave {
            system: sys.name().into(),
            round,
            wave: wi + 1,
            revoked_consents: w.users.len(),
            written_at_ms: ms_since(t0, w.written),
            effect_at_ms: effect.map(|(t, _)| ms_since(t0, t)),
            effect_source: effect.map_or("never observed".into(), |(_, why)| why.to_string()),
            lag_ms: effect.map(|(t, _)| {
                stats::round1(t.saturating_duration_since(w.written).as_secs_f64() * 1000.0)
            }),
            served_before_effect: before,
            refused_after_effect: refused,
            served_after_effect: violated,
        });
    }
    out
}

/// Hub ÷ each peer at each load (main group).
fn ratios(points: &[PointReport]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for hub in points
        .iter()
        .filter(|p| p.system == "hub" && p.group == "main")
    {
        for peer in points
            .iter()
            .filter(|p| p.system != "hub" && p.group == "main" && p.load == hub.load)
        {
            let div = |a: f64, b: f64| (b > 0.0).then(|| stats::round3(a / b));
            out.push(Ratio {
                load: hub.load.clone(),
                peer: peer.system.clone(),
                cpu_per_request: match (hub.proxy_cpu_us_per_req, peer.proxy_cpu_us_per_req) {
                    (Some(a), Some(b)) => div(a, b),
                    _ => None,
                },
                p99: div(hub.merged.latency.p99_ms, peer.merged.latency.p99_ms),
                throughput: hub
                    .offered_rps
                    .is_none()
                    .then(|| div(hub.merged.rps, peer.merged.rps))
                    .flatten(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WatchRecord;
    use crate::workload::Load;

    fn rec(user: u32, t0: Instant, sent_ms: u64, status: u16, code: Option<&str>) -> WatchRecord {
        WatchRecord {
            user,
            sent: t0 + Duration::from_millis(sent_ms),
            done: t0 + Duration::from_millis(sent_ms + 1),
            status,
            code: code.map(str::to_string),
        }
    }

    #[test]
    fn revocation_counts_what_was_served_after_the_effect() {
        let t0 = Instant::now();
        let mut group = GroupResult {
            name: "main".into(),
            load: Load::Open { rate: 10.0 },
            connections: 1,
            histogram: hdrhistogram::Histogram::new(3).unwrap(),
            responses: 0,
            ok: 0,
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            unsent: 0,
            bytes: 0,
            reconnects: 0,
            watched: vec![
                rec(1, t0, 100, 200, None),                     // before the write
                rec(1, t0, 1100, 200, None),                    // between write and effect
                rec(1, t0, 1600, 403, Some("consent_revoked")), // refused after
                rec(1, t0, 1700, 200, None),                    // served after: a violation
                rec(2, t0, 1800, 200, None),                    // not in the wave
            ],
            elapsed: Duration::from_secs(2),
            window: Duration::from_secs(2),
        };
        group.responses = group.watched.len() as u64;
        let m = Measured {
            result: RunResult {
                groups: vec![group],
                started: t0,
                elapsed: Duration::from_secs(2),
            },
            tokens_reused: 0,
            cpu: (Cpu::default(), Cpu::default()),
            waves: vec![WaveEvent {
                users: vec![1],
                written: t0 + Duration::from_millis(1000),
                applied: None,
            }],
            generations: vec![(t0, 1), (t0 + Duration::from_millis(1500), 2)],
        };
        let w = analyse_revocation(System::Hub, 1, &m);
        assert_eq!(w.len(), 1);
        let w = &w[0];
        assert_eq!(w.effect_source, "hub_config_generation changed");
        assert_eq!(w.lag_ms, Some(500.0));
        assert_eq!(w.served_before_effect, 1);
        assert_eq!(w.refused_after_effect, 1);
        assert_eq!(w.served_after_effect, 1);
    }
}
