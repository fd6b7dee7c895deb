//! The load engine: opens every connection (TLS with the group's client certificates,
//! HTTP/1.1 keep-alive or HTTP/2) before the clock starts, then drives the groups in
//! closed loop (as fast as answers come back) or open loop (a pacer thread releases
//! tickets at the intended send times; latency counts from the intended time, so a
//! system that stalls cannot hide behind a waiting client: coordinated omission).
//! Latencies go to HDR histograms (µs); answers are tallied by status and by the
//! problem+json `code` (or the bank's `error`) of every non-2xx answer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Method, Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::error::{HarnessError, Result};
use crate::workload::{Endpoint, Group, Identity, Load, Plan, VirtualUser};

/// Highest latency the histograms hold (µs); larger values are clamped.
const MAX_LATENCY_US: u64 = 600_000_000;
/// How long a saturated open loop may keep pulling overdue tickets after the window.
const OPEN_LOOP_GRACE: Duration = Duration::from_secs(2);

/// A request of a watched user (see [`crate::workload::VirtualUser::watch`]).
#[derive(Debug, Clone)]
pub struct WatchRecord {
    /// The user's index in its group.
    pub user: u32,
    /// When the request was handed to the connection.
    pub sent: Instant,
    /// When its answer was complete.
    pub done: Instant,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// The problem `code` of a non-2xx answer.
    pub code: Option<String>,
}

/// What one group measured.
#[derive(Debug, Clone)]
pub struct GroupResult {
    /// The group's name.
    pub name: String,
    /// Its load.
    pub load: Load,
    /// Its connections.
    pub connections: usize,
    /// Latency in µs of every answered request (from the intended send time in open loop).
    pub histogram: Histogram<u64>,
    /// Requests that got an HTTP answer.
    pub responses: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Everything that was not a 2xx: `"403 consent_revoked"`, `"timeout"`, `"io: …"`.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: tickets never sent because every connection was still busy.
    pub unsent: u64,
    /// Response body bytes.
    pub bytes: u64,
    /// Connections re-opened after the server closed or broke one.
    pub reconnects: u64,
    /// Per-request records of watched users.
    pub watched: Vec<WatchRecord>,
    /// From the start of the window to the last answer.
    pub elapsed: Duration,
    /// The window (requests are started only within it).
    pub window: Duration,
}

impl GroupResult {
    /// Answers (any status) per second: over the window in open loop (the rate the
    /// offered stream was carried at), over window and drain in closed loop.
    pub fn rps(&self) -> f64 {
        let secs = match self.load {
            Load::Open { .. } => self.window,
            Load::Closed => self.elapsed,
        };
        self.responses as f64 / secs.as_secs_f64().max(1e-9)
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Per group, in plan order.
    pub groups: Vec<GroupResult>,
    /// The start of the window.
    pub started: Instant,
    /// From the start of the window to the last answer.
    pub elapsed: Duration,
}

/// When [`RunOptions::on_phase`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Every connection is open; the window starts now.
    Started,
    /// The last answer is in; connections are still open.
    Finished,
}

/// Options of [`run`].
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Show a progress bar (only drawn on a terminal) with this label.
    pub progress: Option<String>,
    /// Called at the start and the end of the window (e.g. to read CPU counters).
    pub on_phase: Option<&'a (dyn Fn(Phase, Instant) + Sync)>,
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    fn try_clone(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }

    async fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> std::result::Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

async fn connect(endpoint: &Endpoint, identity: &Identity, http2: bool) -> Result<Sender> {
    let fail = |reason: String| HarnessError::Connect {
        addr: endpoint.addr,
        reason,
    };
    let tcp = TcpStream::connect(endpoint.addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
    let tls = TlsConnector::from(identity.tls.clone())
        .connect(endpoint.server_name.clone(), tcp)
        .await
        .map_err(|e| fail(format!("TLS as {}: {e}", identity.name)))?;
    let io = TokioIo::new(tls);
    if http2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| fail(format!("HTTP/2: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| fail(format!("HTTP/1.1: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(sender))
    }
}

/// Which users of a group a connection of one identity serves, and where it is.
struct Feed {
    users: Vec<u32>,
    cursor: AtomicUsize,
}

struct Shared {
    plan: Plan,
    hosts: Vec<HeaderValue>,
    t0: Instant,
    end: Instant,
    responses: AtomicU64,
    failures: AtomicU64,
    last_done_us: AtomicU64,
    stop: AtomicBool,
}

struct Worker {
    group: usize,
    identity: usize,
    feed: Arc<Feed>,
    sender: Sender,
    open: Option<Arc<OpenLoop>>,
}

struct OpenLoop {
    gate: Semaphore,
    issued: AtomicU64,
    total: u64,
    rate: f64,
}

#[derive(Default)]
struct Tally {
    histogram: Option<Histogram<u64>>,
    responses: u64,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    bytes: u64,
    reconnects: u64,
    watched: Vec<WatchRecord>,
    last_done: Option<Instant>,
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| HarnessError::Plan(format!("histogram: {e}")))
}

/// `code` of a problem+json body, or `error` of a sandbox bank's error body.
fn problem_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Problem {
        code: Option<String>,
        error: Option<String>,
    }
    let p: Problem = serde_json::from_slice(body).ok()?;
    p.code.or(p.error)
}

fn short_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s.chars().take(120).collect()
}

/// What a request's exchange ended with: the status and body, a transport error, or
/// the request timeout.
type Outcome = std::result::Result<
    std::result::Result<(u16, Bytes), hyper::Error>,
    tokio::time::error::Elapsed,
>;

impl Worker {
    async fn run(self, shared: Arc<Shared>) -> Result<(usize, Tally)> {
        let g = self.group;
        self.drive(shared).await.map(|t| (g, t))
    }

    async fn drive(mut self, shared: Arc<Shared>) -> Result<Tally> {
        let plan = &shared.plan;
        let group = plan
            .groups
            .get(self.group)
            .ok_or_else(|| HarnessError::Plan("worker of an unknown group".into()))?;
        let mut tally = Tally {
            histogram: Some(new_histogram()?),
            ..Tally::default()
        };
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(intended) = self.next_ticket(&shared).await else {
                break;
            };
            let (user_idx, token) = self.pick_user(group)?;
            let Some(user) = group.users.get(user_idx as usize) else {
                return Err(HarnessError::Plan("token for an unknown user".into()));
            };
            let req = self.request(&shared, user, token);
            let sent = Instant::now();
            let outcome = self.exchange(req, plan.request_timeout).await;
            let done = Instant::now();
            let (status, code, broken) = tally.outcome(outcome);
            tally.record(&shared, intended, done, status, code.as_deref());
            if user.watch {
                tally.watched.push(WatchRecord {
                    user: user_idx,
                    sent,
                    done,
                    status,
                    code,
                });
            }
            if broken {
                self.reconnect(group.endpoint(plan), plan, &mut tally).await;
            }
        }
        Ok(tally)
    }

    /// When the next request is meant to be sent: now in closed loop (none after the
    /// window), the ticket's time in open loop (none once the pacer closed the gate).
    async fn next_ticket(&self, shared: &Shared) -> Option<Instant> {
        match &self.open {
            None => {
                let now = Instant::now();
                (now < shared.end).then_some(now)
            }
            Some(open) => {
                match open.gate.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return None,
                }
                let k = open.issued.fetch_add(1, Ordering::Relaxed);
                Some(shared.t0 + Duration::from_secs_f64(k as f64 / open.rate))
            }
        }
    }

    /// The next virtual user of this connection, with a single-use token when the group
    /// has a pool.
    fn pick_user(&self, group: &Group) -> Result<(u32, Option<HeaderValue>)> {
        match &group.tokens {
            Some(pool) => match pool.next(self.identity) {
                Some((u, t)) => Ok((u, Some(t))),
                None => Err(HarnessError::Plan("empty token pool".into())),
            },
            None => {
                let i = self.feed.cursor.fetch_add(1, Ordering::Relaxed);
                Ok((self.feed.users[i % self.feed.users.len()], None))
            }
        }
    }

    /// `user`'s request on this connection's protocol.
    fn request(
        &self,
        shared: &Shared,
        user: &VirtualUser,
        token: Option<HeaderValue>,
    ) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = Method::GET;
        *req.headers_mut() = user.headers.clone();
        if shared.plan.http2 {
            *req.uri_mut() = user.absolute.clone();
            *req.version_mut() = Version::HTTP_2;
        } else {
            *req.uri_mut() = user.path.clone();
            if let Some(h) = shared.hosts.get(self.group) {
                req.headers_mut().insert(HOST, h.clone());
            }
        }
        if let Some(t) = token {
            req.headers_mut().insert(AUTHORIZATION, t);
        }
        req
    }

    /// Sends `req` and reads the whole answer, within `timeout`.
    async fn exchange(&mut self, req: Request<Empty<Bytes>>, timeout: Duration) -> Outcome {
        tokio::time::timeout(timeout, async {
            let resp = self.sender.send(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await
    }

    /// Replaces a connection that may be dead (closed by the server, reset, timed out)
    /// so the next request does not inherit the failure.
    async fn reconnect(&mut self, endpoint: &Endpoint, plan: &Plan, tally: &mut Tally) {
        match connect(endpoint, &plan.identities[self.identity], plan.http2).await {
            Ok(s) => {
                self.sender = s;
                tally.reconnects += 1;
            }
            Err(e) => {
                *tally.errors.entry(format!("connect: {e}")).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Tally {
    /// (status, problem code of a non-2xx answer, whether the connection may be broken);
    /// counts body bytes and transport failures.
    fn outcome(&mut self, outcome: Outcome) -> (u16, Option<String>, bool) {
        match outcome {
            Ok(Ok((status, body))) => {
                self.bytes += body.len() as u64;
                let code = if (200..300).contains(&status) {
                    None
                } else {
                    Some(problem_code(&body).unwrap_or_else(|| "-".into()))
                };
                (status, code, false)
            }
            Ok(Err(e)) => {
                *self
                    .errors
                    .entry(format!("io: {}", short_error(&e)))
                    .or_default() += 1;
                (0, None, true)
            }
            Err(_) => {
                *self.errors.entry("timeout".into()).or_default() += 1;
                (0, None, true)
            }
        }
    }

    /// Counts one request: its latency from `intended` and its answer (status 0: none).
    fn record(
        &mut self,
        shared: &Shared,
        intended: Instant,
        done: Instant,
        status: u16,
        code: Option<&str>,
    ) {
        if status == 0 {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = done.saturating_duration_since(intended).as_micros();
        let us = u64::try_from(us)
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        if let Some(h) = self.histogram.as_mut() {
            h.saturating_record(us);
        }
        self.responses += 1;
        self.last_done = self.last_done.max(Some(done));
        *self.statuses.entry(status).or_default() += 1;
        if let Some(c) = code {
            *self.errors.entry(format!("{status} {c}")).or_default() += 1;
            shared.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.ok += 1;
        }
        shared.responses.fetch_add(1, Ordering::Relaxed);
        let at = u64::try_from(done.saturating_duration_since(shared.t0).as_micros())
            .unwrap_or(u64::MAX);
        shared.last_done_us.fetch_max(at, Ordering::Relaxed);
    }
}

fn pacer(open: Arc<OpenLoop>, t0: Instant, stop: Arc<AtomicBool>) {
    let mut released: u64 = 0;
    while released < open.total && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(t0).as_secs_f64();
        let due = ((elapsed * open.rate).floor() as u64 + 1).min(open.total);
        if due > released {
            open.gate
                .add_permits(usize::try_from(due - released).unwrap_or(usize::MAX));
            released = due;
        }
        let next = t0 + Duration::from_secs_f64(released as f64 / open.rate);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    // Overdue tickets may still be taken for a moment (their latency keeps growing);
    // whatever is left then was never sent and is reported as such.
    let grace = Instant::now() + OPEN_LOOP_GRACE;
    while open.issued.load(Ordering::Relaxed) < released
        && Instant::now() < grace
        && !stop.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    open.gate.close();
}

/// Per group, per identity: the users its connections serve (none: no connection).
type Feeds = Vec<Option<Arc<Feed>>>;

/// An open connection: its group, its identity, its sender.
type Connection = (usize, usize, Sender);

/// Per group: its open loop (none in closed loop).
type OpenLoops = Vec<Option<Arc<OpenLoop>>>;

/// Runs `plan` and returns what every group measured.
pub async fn run(plan: &Plan, opts: RunOptions<'_>) -> Result<RunResult> {
    plan.validate()?;
    // Connections first: handshakes are not part of the measurement.
    let (feeds, connections) = open_connections(plan).await?;
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::new(plan, t0)?);
    let opens = open_loops(plan);
    if let Some(cb) = opts.on_phase {
        cb(Phase::Started, t0);
    }
    let pacers = start_pacers(&opens, t0, &stop)?;
    let workers = spawn_workers(plan, &shared, connections, &feeds, &opens);
    let progress = Progress::start(opts.progress.as_deref(), plan, &shared);
    let (tallies, first_error) = join_workers(workers, plan, &stop, &shared, &opens).await?;
    stop.store(true, Ordering::Relaxed);
    for p in pacers {
        let _ = p.join();
    }
    progress.finish();
    if let Some(e) = first_error {
        return Err(e);
    }
    let finished = Instant::now();
    if let Some(cb) = opts.on_phase {
        cb(Phase::Finished, finished);
    }
    let last = Duration::from_micros(shared.last_done_us.load(Ordering::Relaxed));
    Ok(RunResult {
        groups: group_results(plan, tallies, &opens, t0)?,
        started: t0,
        elapsed: last.max(plan.duration),
    })
}

/// Opens every connection of every group (spread over the identities its users have)
/// and returns, per group, which users each identity's connections serve.
async fn open_connections(plan: &Plan) -> Result<(Vec<Feeds>, Vec<Connection>)> {
    let mut pending = JoinSet::new();
    let mut feeds: Vec<Feeds> = Vec::new();
    for (gi, g) in plan.groups.iter().enumerate() {
        let (idents, per_ident) = feeds_of(g, plan.identities.len())?;
        feeds.push(per_ident);
        for c in 0..g.connections {
            let ident = idents[c % idents.len()];
            let endpoint = g.endpoint(plan).clone();
            let identity = plan.identities[ident].clone();
            let http2 = plan.http2;
            pending.spawn(async move {
                let s = connect(&endpoint, &identity, http2).await;
                (gi, ident, s)
            });
        }
    }
    let mut connections = Vec::new();
    while let Some(joined) = pending.join_next().await {
        let (gi, ident, sender) =
            joined.map_err(|e| HarnessError::Plan(format!("connect task: {e}")))?;
        connections.push((gi, ident, sender?));
    }
    Ok((feeds, connections))
}

/// The identities `g`'s connections use (those of its users, and with tokens in its
/// pool) and, per identity, the users they serve.
fn feeds_of(g: &Group, identities: usize) -> Result<(Vec<usize>, Feeds)> {
    let idents: BTreeSet<usize> = g
        .users
        .iter()
        .map(|u| u.identity)
        .filter(|i| g.tokens.as_ref().is_none_or(|p| p.has(*i)))
        .collect();
    let idents: Vec<usize> = idents.into_iter().collect();
    if idents.is_empty() {
        return Err(HarnessError::Plan(format!(
            "group {}: no usable identity",
            g.name
        )));
    }
    let mut per_ident = vec![None; identities];
    for &i in &idents {
        let users: Vec<u32> = g
            .users
            .iter()
            .enumerate()
            .filter(|(_, u)| u.identity == i)
            .filter_map(|(n, _)| u32::try_from(n).ok())
            .collect();
        per_ident[i] = Some(Arc::new(Feed {
            users,
            cursor: AtomicUsize::new(0),
        }));
    }
    Ok((idents, per_ident))
}

impl Shared {
    /// The state of a run whose window starts at `t0`.
    fn new(plan: &Plan, t0: Instant) -> Result<Shared> {
        Ok(Shared {
            plan: plan.clone(),
            hosts: plan
                .groups
                .iter()
                .map(|g| {
                    HeaderValue::from_str(&g.endpoint(plan).authority)
                        .map_err(|e| HarnessError::Plan(format!("authority: {e}")))
                })
                .collect::<Result<_>>()?,
            t0,
            end: t0 + plan.duration,
            responses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_done_us: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }
}

/// The open loop of each group (its whole window's tickets at its rate).
fn open_loops(plan: &Plan) -> OpenLoops {
    plan.groups
        .iter()
        .map(|g| match g.load {
            Load::Closed => None,
            Load::Open { rate } => Some(Arc::new(OpenLoop {
                gate: Semaphore::new(0),
                issued: AtomicU64::new(0),
                total: (rate * plan.duration.as_secs_f64()).round().max(1.0) as u64,
                rate,
            })),
        })
        .collect()
}

/// One pacer thread per open loop.
fn start_pacers(
    opens: &OpenLoops,
    t0: Instant,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut pacers = Vec::new();
    for open in opens.iter().flatten() {
        let (open, stop) = (open.clone(), stop.clone());
        pacers.push(
            std::thread::Builder::new()
                .name("loadgen-pacer".into())
                .spawn(move || pacer(open, t0, stop))
                .map_err(|e| HarnessError::Os {
                    what: "pacer thread".into(),
                    source: e,
                })?,
        );
    }
    Ok(pacers)
}

/// One worker per connection, or per stream of an HTTP/2 connection.
fn spawn_workers(
    plan: &Plan,
    shared: &Arc<Shared>,
    connections: Vec<Connection>,
    feeds: &[Feeds],
    opens: &OpenLoops,
) -> JoinSet<Result<(usize, Tally)>> {
    let mut workers = JoinSet::new();
    for (gi, ident, sender) in connections {
        let streams = if plan.http2 {
            plan.groups[gi].streams
        } else {
            1
        };
        let Some(feed) = feeds[gi][ident].clone() else {
            continue;
        };
        let mut senders = Vec::with_capacity(streams);
        for _ in 1..streams {
            if let Some(s) = sender.try_clone() {
                senders.push(s);
            }
        }
        senders.push(sender);
        for s in senders {
            let w = Worker {
                group: gi,
                identity: ident,
                feed: feed.clone(),
                sender: s,
                open: opens[gi].clone(),
            };
            workers.spawn(w.run(shared.clone()));
        }
    }
    workers
}

/// The progress bar of a run (drawn on a terminal only) and the task that updates it.
struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// A bar labelled `label` (none without a label), updated four times a second.
    fn start(label: Option<&str>, plan: &Plan, shared: &Arc<Shared>) -> Progress {
        let bar = label.map(|label| {
            let target = if std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr_with_hz(4)
            } else {
                ProgressDrawTarget::hidden()
            };
            let bar = ProgressBar::with_draw_target(Some(plan.duration.as_millis() as u64), target);
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:>28} [{bar:25}] {elapsed:>3} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            bar
        });
        let ticker = bar.clone().map(|bar| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    let el = shared.t0.elapsed();
                    let n = shared.responses.load(Ordering::Relaxed);
                    let f = shared.failures.load(Ordering::Relaxed);
                    bar.set_position(el.as_millis().min(u128::from(u64::MAX)) as u64);
                    bar.set_message(format!(
                        "{n} answers, {:.0}/s, {f} not 2xx",
                        n as f64 / el.as_secs_f64().max(1e-3)
                    ));
                }
            })
        });
        Progress { bar, ticker }
    }

    /// Stops the updates and clears the bar.
    fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Waits for every worker and merges their tallies per group; on the first failure,
/// stops the others (and the pacers) and keeps that error.
async fn join_workers(
    mut workers: JoinSet<Result<(usize, Tally)>>,
    plan: &Plan,
    stop: &AtomicBool,
    shared: &Shared,
    opens: &OpenLoops,
) -> Result<(Vec<Tally>, Option<HarnessError>)> {
    let mut tallies: Vec<Tally> = plan.groups.iter().map(|_| Tally::default()).collect();
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        let failed = match joined {
            Ok(Ok((gi, t))) => {
                if let Some(slot) = tallies.get_mut(gi) {
                    merge(slot, t)?;
                }
                None
            }
            Ok(Err(e)) => Some(e),
            Err(e) => Some(HarnessError::Plan(format!("worker: {e}"))),
        };
        if let Some(e) = failed {
            stop.store(true, Ordering::Relaxed);
            shared.stop.store(true, Ordering::Relaxed);
            for o in opens.iter().flatten() {
                o.gate.close();
            }
            first_error.get_or_insert(e);
        }
    }
    Ok((tallies, first_error))
}

/// What each group measured, from its merged tally.
fn group_results(
    plan: &Plan,
    tallies: Vec<Tally>,
    opens: &OpenLoops,
    t0: Instant,
) -> Result<Vec<GroupResult>> {
    let mut groups = Vec::with_capacity(plan.groups.len());
    for ((g, t), open) in plan.groups.iter().zip(tallies).zip(opens) {
        let group_elapsed = t.last_done.map_or(plan.duration, |d| {
            d.saturating_duration_since(t0).max(plan.duration)
        });
        let unsent = open.as_ref().map_or(0, |o| {
            o.total.saturating_sub(o.issued.load(Ordering::Relaxed))
        });
        groups.push(GroupResult {
            name: g.name.clone(),
            load: g.load,
            connections: g.connections,
            histogram: match t.histogram {
                Some(h) => h,
                None => new_histogram()?,
            },
            responses: t.responses,
            ok: t.ok,
            statuses: t.statuses,
            errors: t.errors,
            unsent,
            bytes: t.bytes,
            reconnects: t.reconnects,
            watched: t.watched,
            elapsed: group_elapsed,
            window: plan.duration,
        });
    }
    Ok(groups)
}

fn merge(into: &mut Tally, t: Tally) -> Result<()> {
    match (&mut into.histogram, t.histogram) {
        (Some(a), Some(b)) => a
            .add(&b)
            .map_err(|e| HarnessError::Plan(format!("histogram merge: {e}")))?,
        (slot @ None, b) => *slot = b,
        (_, None) => {}
    }
    into.responses += t.responses;
    into.ok += t.ok;
    for (k, v) in t.statuses {
        *into.statuses.entry(k).or_default() += v;
    }
    for (k, v) in t.errors {
        *into.errors.entry(k).or_default() += v;
    }
    into.bytes += t.bytes;
    into.reconnects += t.reconnects;
    into.watched.extend(t.watched);
    into.last_done = into.last_done.max(t.last_done);
    Ok(())
}

/// One request on a new HTTP/1.1 connection (for correctness probes):
/// (status, problem `code` of a non-2xx answer, body).
pub async fn request_once(
    endpoint: &Endpoint,
    identity: &Identity,
    path: &str,
    headers: &http::HeaderMap,
) -> Result<(u16, Option<String>, Bytes)> {
    let mut sender = connect(endpoint, identity, false).await?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = path
        .parse()
        .map_err(|e| HarnessError::Plan(format!("probe path {path}: {e}")))?;
    *req.headers_mut() = headers.clone();
    req.headers_mut().insert(
        HOST,
        HeaderValue::from_str(&endpoint.authority)
            .map_err(|e| HarnessError::Plan(format!("authority: {e}")))?,
    );
    let fail = |e: String| HarnessError::Connect {
        addr: endpoint.addr,
        reason: e,
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send(req))
        .await
        .map_err(|_| fail("probe timed out".into()))?
        .map_err(|e| fail(short_error(&e)))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(short_error(&e)))?
        .to_bytes();
    let code = if (200..300).contains(&status) {
        None
    } else {
        problem_code(&body)
    };
    Ok((status, code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_code_reads_problem_json_and_bank_errors() {
        let p = br#"{"type":"x","title":"t","status":403,"code":"consent_revoked","interaction_id":"i"}"#;
        assert_eq!(problem_code(p).as_deref(), Some("consent_revoked"));
        assert_eq!(
            problem_code(br#"{"error":"customer_not_found","message":"m"}"#).as_deref(),
            Some("customer_not_found")
        );
        assert_eq!(problem_code(b"<html>bad gateway</html>"), None);
    }
}
