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

use http::HeaderMap;
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

    fn endpoint_for(&self, running: &[Running], system: System, bank: &Bank) -> Result<Endpoint> {
        if system == System::Bank {
            // Provider 1: in slow-bank it is the fast one; the slow group targets 0 itself.
            return Endpoint::localhost(bank.addrs[1]);
        }
        running
            .iter()
            .find(|r| r.system == system)
            .map(|r| r.endpoint.clone())
            .ok_or_else(|| HarnessError::Plan(format!("{system} is not running")))
    }

    /// Probes that every system answers as the contract requires.
    fn probe(
        &self,
        r: &Running,
        bank: &Bank,
        identities: &[Identity],
        rows: &[ConsentRow],
        tokens: &[String],
        checks: &mut Vec<Check>,
    ) -> Result<()> {
        let env = &self.env;
        let sys = r.system;
        // A consent on provider 1 (never the slow one), with a token.
        let (row, token) = match rows.iter().position(|x| x.provider == 1) {
            Some(k) if k < tokens.len() => (rows[k].clone(), tokens[k].clone()),
            _ => {
                let row = env.consent(1);
                let token = env.mint(&row, fixture::now_unix())?;
                (row, token)
            }
        };
        let (row, token) = (&row, Some(token.as_str()));
        let mut probe = |name: &str,
                         endpoint: &Endpoint,
                         user: &VirtualUser,
                         identity: usize,
                         extra: Option<(&'static str, String)>,
                         expect: (u16, Option<&str>)|
         -> Result<(u16, Option<String>)> {
            let mut h: HeaderMap = user.headers.clone();
            if let Some((n, v)) = extra {
                h.insert(
                    http::header::HeaderName::from_static(n),
                    http::HeaderValue::from_str(&v)
                        .map_err(|e| HarnessError::Plan(format!("probe header: {e}")))?,
                );
            }
            let got = self.rt.block_on(engine::request_once(
                endpoint,
                &identities[identity],
                &user.path.to_string(),
                &h,
            ));
            let (status, code) = match got {
                Ok((s, c, _)) => (s, c),
                Err(e) => (0, Some(e.to_string())),
            };
            let pass = status == expect.0 && expect.1.is_none_or(|c| code.as_deref() == Some(c));
            checks.push(Check {
                system: sys.name().into(),
                probe: name.into(),
                expected: format!("{} {}", expect.0, expect.1.unwrap_or(""))
                    .trim()
                    .to_string(),
                got: format!("{status} {}", code.clone().unwrap_or_default())
                    .trim()
                    .to_string(),
                pass,
            });
            Ok((status, code))
        };
        let ep = if sys == System::Bank {
            Endpoint::localhost(bank.addrs[row.provider])?
        } else {
            r.endpoint.clone()
        };
        let valid = self.consent_user(sys, &ep, row, token, 0)?;
        probe(
            "valid consent and token",
            &ep,
            &valid,
            valid.identity,
            None,
            (200, None),
        )?;
        let od = self.open_data_user(sys, &ep, 1)?;
        probe("open data", &ep, &od, od.identity, None, (200, None))?;
        if !sys.has_policy() {
            return Ok(());
        }
        let Some(token) = token else {
            return Err(HarnessError::Plan("no token for the probes".into()));
        };
        // Change one character in the middle of the signature: a forged token.
        let mut forged = token.to_string();
        let sig_start = forged.rfind('.').map_or(0, |i| i + 1);
        let mid = sig_start + (forged.len() - sig_start) / 2;
        let c = forged.as_bytes()[mid];
        forged.replace_range(mid..=mid, if c == b'A' { "B" } else { "A" });
        let bad = self.consent_user(sys, &ep, row, Some(&forged), 0)?;
        probe(
            "forged signature",
            &ep,
            &bad,
            bad.identity,
            None,
            (401, Some("invalid_token")),
        )?;
        let other = (row.user + 1) % env.active_users();
        probe(
            "token on another API user's connection",
            &ep,
            &valid,
            other,
            None,
            (401, Some("token_binding_mismatch")),
        )?;
        let [revoked, throttled] = env.extra_consents();
        let revoked_token = env.mint(&revoked, fixture::now_unix())?;
        let ru = self.consent_user(sys, &ep, &revoked, Some(&revoked_token), 0)?;
        probe(
            "revoked consent",
            &ep,
            &ru,
            ru.identity,
            None,
            (403, Some("consent_revoked")),
        )?;
        let tt = env.mint(&throttled, fixture::now_unix())?;
        let tu = self.consent_user(sys, &ep, &throttled, Some(&tt), 0)?;
        let mut limited = false;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let got = self.rt.block_on(engine::request_once(
                &ep,
                &identities[tu.identity],
                &tu.path.to_string(),
                &tu.headers,
            ));
            let (s, c) = match got {
                Ok((s, c, _)) => (s, c),
                Err(e) => (0, Some(e.to_string())),
            };
            limited |= s == 429 && c.as_deref() == Some("rate_limited");
            seen.push(s.to_string());
        }
        checks.push(Check {
            system: sys.name().into(),
            probe: "6 quick requests of a user limited to 1/s".into(),
            expected: "a 429 rate_limited".into(),
            got: seen.join(","),
            pass: limited,
        });
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
        let polling = Arc::new(AtomicBool::new(admin.is_some()));
        let result = std::thread::scope(|scope| {
            let waves = revocation.map(|f| {
                scope.spawn(move || match start_rx.recv() {
                    Ok(t0) => f(t0),
                    Err(_) => Vec::new(),
                })
            });
            let poller = admin.map(|a| {
                let polling = polling.clone();
                scope.spawn(move || {
                    let mut seen: Vec<(Instant, u64)> = Vec::new();
                    while polling.load(Ordering::Relaxed) {
                        if let Some(g) = hub_generation(a) {
                            if seen.last().is_none_or(|(_, last)| *last != g) {
                                seen.push((Instant::now(), g));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    seen
                })
            });
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

    /// Runs one scenario.
    pub fn scenario(&mut self, sc: Scenario) -> Result<ScenarioReport> {
        let dir = self.work.join(sc.name());
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let systems: Vec<System> = sc
            .systems()
            .iter()
            .copied()
            .filter(|s| self.s.systems.contains(s))
            .collect();
        let mut notes = Vec::new();
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
        // Virtual users' consents.
        let rows: Vec<ConsentRow> = match sc {
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
        };
        let t = Instant::now();
        let tokens = self.env.mint_all(&rows)?;
        if !rows.is_empty() {
            eprintln!(
                "   minted {} tokens in {:.1} s",
                tokens.len(),
                secs(t.elapsed())
            );
        }
        let bank = self.start_bank(&dir, sc == Scenario::SlowBank)?;
        let mut running = Vec::new();
        for &sys in &systems {
            let t = Instant::now();
            let r = match sys {
                System::Hub => self.start_hub(&dir, &snapshot, &bank)?,
                System::Haproxy => self.start_haproxy(&dir, consents, &bank)?,
                System::Nginx => self.start_nginx(&dir, &bank)?,
                System::Bank => Running {
                    system: System::Bank,
                    proc: None,
                    endpoint: Endpoint::localhost(bank.addrs[1])?,
                    admin: None,
                    haproxy: None,
                },
            };
            if sc == Scenario::BigCache && sys.has_policy() {
                notes.push(format!(
                    "{sys} started with {consents} consents in {:.1} s",
                    secs(t.elapsed())
                ));
            }
            running.push(r);
        }
        let identities = self.probe_identities.clone();
        let mut checks = Vec::new();
        for r in &running {
            self.probe(r, &bank, &identities, &rows, &tokens, &mut checks)?;
        }
        for c in checks.iter().filter(|c| !c.pass) {
            eprintln!(
                "   PROBE FAILED: {} {}: expected {}, got {}",
                c.system, c.probe, c.expected, c.got
            );
        }

        // Load points.
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

        // Single-use tokens for cold-tokens, shared by every window so none is sent twice.
        let pool = if sc == Scenario::ColdTokens {
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
            let policy_systems = systems.iter().filter(|s| s.has_policy()).count() as f64;
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
            Some(Arc::new(TokenPool::new(identities.len(), triples)?))
        } else {
            None
        };

        // Per-system groups.
        let mut plans: BTreeMap<System, Vec<Group>> = BTreeMap::new();
        for &sys in &systems {
            let ep = self.endpoint_for(&running, sys, &bank)?;
            let fixed = pool.is_none();
            let make = |rows: &[(usize, &ConsentRow)], ep: &Endpoint| -> Result<Vec<VirtualUser>> {
                rows.iter()
                    .map(|(n, row)| {
                        let mut u = self.consent_user(
                            sys,
                            ep,
                            row,
                            if fixed {
                                tokens.get(*n).map(String::as_str)
                            } else {
                                None
                            },
                            *n,
                        )?;
                        u.watch = sc == Scenario::Revocation;
                        Ok(u)
                    })
                    .collect()
            };
            let groups = match sc {
                Scenario::OpenData => {
                    let users = (0..OPEN_DATA_USERS)
                        .map(|n| self.open_data_user(sys, &ep, n))
                        .collect::<Result<Vec<_>>>()?;
                    vec![self.group("main", users, None)]
                }
                Scenario::SlowBank => {
                    let fast: Vec<(usize, &ConsentRow)> = rows
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.provider == 1)
                        .collect();
                    let slow: Vec<(usize, &ConsentRow)> = rows
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.provider == 0)
                        .collect();
                    let slow_ep = if sys == System::Bank {
                        Endpoint::localhost(bank.addrs[0])?
                    } else {
                        ep.clone()
                    };
                    let mut s = self.group("slow-provider", make(&slow, &slow_ep)?, None);
                    if sys == System::Bank {
                        s.endpoint = Some(slow_ep.clone());
                    }
                    s.connections = SLOW_CONNECTIONS;
                    s.load = Load::Open { rate: SLOW_RATE };
                    vec![self.group("main", make(&fast, &ep)?, None), s]
                }
                _ => {
                    // The bank alone is one bank's address: its users are that bank's
                    // customers (a proxy spreads the same users over both banks).
                    let all: Vec<(usize, &ConsentRow)> = rows
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| sys != System::Bank || r.provider == 1)
                        .collect();
                    vec![self.group("main", make(&all, &ep)?, pool.clone())]
                }
            };
            plans.insert(sys, groups);
        }

        // Warm-up, then the interleaved rounds.
        for &sys in &systems {
            if self.s.warmup.is_zero() {
                break;
            }
            // Closed loop, long enough to touch every virtual user (hot caches, pooled
            // upstream connections) before anything is measured.
            let users = plans
                .get(&sys)
                .and_then(|g| g.first())
                .map_or(0, |g| g.users.len());
            let warm = self
                .s
                .warmup
                .max(Duration::from_secs_f64(users as f64 / 2_500.0))
                .min(Duration::from_secs(30));
            let mut plan = self.plan_for(sys, &running, &bank, &plans, Load::Closed, warm)?;
            plan.groups.truncate(1);
            self.rt.block_on(engine::run(
                &plan,
                RunOptions {
                    progress: Some(format!("{sc} {sys} warm-up")),
                    ..RunOptions::default()
                },
            ))?;
        }
        let mut measured: Vec<(System, usize, usize, Measured)> = Vec::new();
        let mut waves_report = Vec::new();
        for round in 0..self.s.rounds {
            for (pi, &load) in points.iter().enumerate() {
                for k in 0..systems.len() {
                    let sys = systems[(k + round) % systems.len()];
                    if sc == Scenario::Revocation {
                        self.restore_revocations(sys, &running, &snapshot, consents)?;
                    }
                    let plan = self.plan_for(sys, &running, &bank, &plans, load, window)?;
                    let r = running.iter().find(|r| r.system == sys);
                    let proxy_pid = r.and_then(|r| r.proc.as_ref()).map(Proc::pid);
                    let admin = if sc == Scenario::Revocation {
                        r.and_then(|r| r.admin)
                    } else {
                        None
                    };
                    let label = format!(
                        "{sc} r{} {sys} {}",
                        round + 1,
                        load.label(self.s.connections)
                    );
                    let revoke = |t0: Instant| {
                        self.revocation_waves(
                            sys,
                            &running,
                            &snapshot,
                            consents,
                            rows.len(),
                            t0,
                            window,
                        )
                    };
                    let reused_before = pool.as_ref().map_or(0, |p| p.reused());
                    let mut m = self.measure(
                        &plan,
                        label,
                        proxy_pid,
                        bank.proc.pid(),
                        if sc == Scenario::Revocation {
                            Some(&revoke)
                        } else {
                            None
                        },
                        admin,
                    )?;
                    m.tokens_reused = pool.as_ref().map_or(0, |p| p.reused()) - reused_before;
                    if m.tokens_reused > 0 {
                        notes.push(format!(
                            "round {} {sys} {}: {} requests reused a token (the single-use pool ran dry; raise --cold-pool-max): that window is optimistic for the hub",
                            round + 1,
                            load.label(self.s.connections),
                            m.tokens_reused
                        ));
                    }
                    let main = &m.result.groups[0];
                    eprintln!(
                        "   round {} {:8} {:16} {:>8.0}/s  p50 {:>8.3} ms  p99 {:>8.3} ms  ok {}/{}{}",
                        round + 1,
                        sys.name(),
                        load.label(self.s.connections),
                        main.rps(),
                        stats::latency(&main.histogram).p50_ms,
                        stats::latency(&main.histogram).p99_ms,
                        main.ok,
                        main.responses,
                        if main.unsent > 0 { format!(", {} unsent", main.unsent) } else { String::new() }
                    );
                    if sc == Scenario::Revocation {
                        waves_report.extend(analyse_revocation(sys, round + 1, &m));
                    }
                    measured.push((sys, pi, round, m));
                }
            }
        }
        let mut peak_rss_mib = BTreeMap::new();
        for r in &running {
            if let Some(p) = &r.proc {
                peak_rss_mib.insert(
                    r.system.name().to_string(),
                    stats::round1(p.peak_rss() as f64 / 1_048_576.0),
                );
            }
        }
        peak_rss_mib.insert(
            "bank process".into(),
            stats::round1(bank.proc.peak_rss() as f64 / 1_048_576.0),
        );
        drop(running);
        drop(bank);
        // Access logs and the audit journal grow with every request; keep the folder small.
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

        let points_report = self.points(&systems, &points, &measured)?;
        let ratios = ratios(&points_report);
        Ok(ScenarioReport {
            name: sc.name().into(),
            what: sc.what().into(),
            consents,
            virtual_users: if sc == Scenario::OpenData {
                OPEN_DATA_USERS
            } else {
                rows.len()
            },
            systems: systems.iter().map(|s| s.name().to_string()).collect(),
            checks,
            points: points_report,
            ratios,
            revocation: waves_report,
            peak_rss_mib,
            notes,
            charts: Vec::new(),
        })
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

    fn plan_for(
        &self,
        sys: System,
        running: &[Running],
        bank: &Bank,
        plans: &BTreeMap<System, Vec<Group>>,
        load: Load,
        duration: Duration,
    ) -> Result<Plan> {
        let mut groups = plans
            .get(&sys)
            .cloned()
            .ok_or_else(|| HarnessError::Plan(format!("no plan for {sys}")))?;
        if let Some(main) = groups.first_mut() {
            main.load = load;
        }
        let endpoint = self.endpoint_for(running, sys, bank)?;
        Ok(Plan {
            endpoint,
            identities: self.identities.clone(),
            groups,
            http2: self.s.http2,
            duration,
            request_timeout: self.s.request_timeout,
        })
    }

    fn points(
        &self,
        systems: &[System],
        loads: &[Load],
        measured: &[(System, usize, usize, Measured)],
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
                    let mut merged: Option<GroupResult> = None;
                    let mut rounds = Vec::new();
                    let (mut proxy, mut bankc, mut lg, mut all) =
                        (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0u64);
                    let mut has_proxy = true;
                    for (ri, m) in runs.iter().enumerate() {
                        let g = &m.result.groups[gi];
                        let total: u64 = m.result.groups.iter().map(|g| g.responses).sum();
                        let (a, b) = m.cpu;
                        let d_proxy = match (a.proxy, b.proxy) {
                            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
                            _ => None,
                        };
                        has_proxy &= d_proxy.is_some();
                        proxy += d_proxy.unwrap_or_default();
                        bankc += b.bank.saturating_sub(a.bank);
                        lg += b.loadgen.saturating_sub(a.loadgen);
                        all += total;
                        rounds.push(RoundSummary {
                            round: ri + 1,
                            stats: stats::summarize(g),
                            proxy_cpu_us_per_req: d_proxy.map(|d| per_req_us(d, total)),
                            bank_cpu_us_per_req: per_req_us(b.bank.saturating_sub(a.bank), total),
                            loadgen_cpu_us_per_req: per_req_us(
                                b.loadgen.saturating_sub(a.loadgen),
                                total,
                            ),
                        });
                        match &mut merged {
                            None => merged = Some(g.clone()),
                            Some(acc) => {
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
                            }
                        }
                    }
                    let Some(merged) = merged else { continue };
                    let summary = stats::summarize(&merged);
                    let saturated = match merged.load {
                        Load::Open { rate } => {
                            merged.unsent > 0
                                || (merged.responses as f64)
                                    < rate * merged.window.as_secs_f64() * 0.97
                        }
                        Load::Closed => false,
                    };
                    out.push(PointReport {
                        system: sys.name().into(),
                        load: load.label(self.s.connections),
                        offered_rps: match merged.load {
                            Load::Open { rate } => Some(rate),
                            Load::Closed => None,
                        },
                        group: merged.name.clone(),
                        merged: summary,
                        proxy_cpu_us_per_req: (has_proxy && sys != System::Bank)
                            .then(|| per_req_us(proxy, all)),
                        bank_cpu_us_per_req: per_req_us(bankc, all),
                        loadgen_cpu_us_per_req: per_req_us(lg, all),
                        saturated,
                        rounds,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Before a revocation window: every consent authorised again, and the system has it.
    fn restore_revocations(
        &self,
        sys: System,
        running: &[Running],
        snapshot: &Path,
        consents: usize,
    ) -> Result<()> {
        let r = running
            .iter()
            .find(|r| r.system == sys)
            .ok_or_else(|| HarnessError::Plan(format!("{sys} is not running")))?;
        match sys {
            System::Hub => {
                let admin = r
                    .admin
                    .ok_or_else(|| HarnessError::Plan("hub without admin".into()))?;
                let before = hub_generation(admin).unwrap_or(0);
                let v = self.next_version();
                self.env.write_consents(snapshot, consents, v, &|_| false)?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while hub_generation(admin).unwrap_or(0) <= before {
                    if Instant::now() > deadline {
                        return Err(HarnessError::Process {
                            name: "hub".into(),
                            reason: "did not reload the restored consent snapshot within 10 s"
                                .into(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
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
    #[allow(clippy::too_many_arguments)]
    fn revocation_waves(
        &self,
        sys: System,
        running: &[Running],
        snapshot: &Path,
        consents: usize,
        users: usize,
        t0: Instant,
        window: Duration,
    ) -> Vec<WaveEvent> {
        let mut out = Vec::new();
        let r = running.iter().find(|r| r.system == sys);
        for wave in 1..=2usize {
            let at = t0 + window * u32::try_from(wave).unwrap_or(1) / 4;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let in_wave = |i: usize| i % 10 == wave;
            let revoked_so_far = move |i: usize| i < CONSENTS && (1..=wave).any(|w| i % 10 == w);
            let wave_users: Vec<u32> = (0..users)
                .filter(|&i| in_wave(i))
                .filter_map(|i| u32::try_from(i).ok())
                .collect();
            let (written, applied) = match sys {
                System::Hub => {
                    let written = Instant::now();
                    let v = self.next_version();
                    if let Err(e) = self
                        .env
                        .write_consents(snapshot, consents, v, &revoked_so_far)
                    {
                        eprintln!("   revocation wave {wave}: {e}");
                    }
                    (written, None)
                }
                System::Haproxy => {
                    let Some(files) = r.and_then(|r| r.haproxy.as_ref()) else {
                        continue;
                    };
                    let rows: Vec<ConsentRow> = wave_users
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
                    (written, res.ok().map(|_| Instant::now()))
                }
                _ => continue,
            };
            out.push(WaveEvent {
                users: wave_users,
                written,
                applied,
            });
        }
        out
    }
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
