//! `trust-bench failover`: two trust replicas on one PostgreSQL server, two gateways
//! following both (`[trust] urls`), steady consent-route load through both gateways.
//! Each round: the replica the gateways follow (their `hub_trust_endpoint_switches_total`
//! modulo 2: the follower starts on the first endpoint and moves round robin) is killed
//! with SIGKILL, a consent is revoked through the survivor at once, and both gateways
//! are probed until they refuse it: the time from the kill is the time until both
//! resumed on the survivor (a revocation they apply came through it). Then the killed
//! replica is restarted on the same port, and the load runs on for a pause.

use super::*;

/// `failover`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub(super) struct FailoverArgs {
    /// Kill rounds (default 10; smoke 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// Background requests per second through each gateway (default 150; smoke 50).
    #[arg(long)]
    background_rate: Option<f64>,
    /// Background connections per gateway (default 4).
    #[arg(long)]
    background_connections: Option<usize>,
    /// Seconds of steady load before the first round and after each restart (default 2;
    /// smoke 0.5).
    #[arg(long)]
    pause: Option<f64>,
}

/// What a failover run does.
struct Plan {
    rounds: usize,
    load: RevocationPlan,
    pause: Duration,
}

impl Plan {
    fn of(b: &Bench, a: &FailoverArgs) -> Plan {
        let rounds = a.rounds.unwrap_or(if b.smoke { 2 } else { 10 }).max(1);
        Plan {
            rounds,
            load: RevocationPlan {
                n: rounds,
                bg_rate: a
                    .background_rate
                    .unwrap_or(if b.smoke { 50.0 } else { 150.0 }),
                bg_conns: a.background_connections.unwrap_or(4).max(1),
            },
            pause: Duration::from_secs_f64(
                a.pause.unwrap_or(if b.smoke { 0.5 } else { 2.0 }).max(0.0),
            ),
        }
    }
}

/// One kill.
#[derive(Serialize)]
struct Round {
    round: usize,
    /// The replica killed (1-based), the one both gateways followed.
    killed_replica: usize,
    survivor: usize,
    /// The replica each gateway followed before the kill (1-based).
    followed_before: Vec<usize>,
    /// The replica each gateway followed once it refused the revocation.
    followed_after: Vec<usize>,
    kill_to_revocation_answered_ms: f64,
    /// Per gateway: the kill → it refused the revocation.
    kill_to_refused_ms: [f64; 2],
    /// The kill → both refused it: the failover time.
    kill_to_both_refuse_ms: f64,
    revocation_answered_to_both_refuse_ms: f64,
    /// Probes sent per gateway until it refused.
    probes: [u64; 2],
    /// Seconds the killed replica took to start again (to its start-up line).
    restart_s: f64,
}

pub(super) fn run(b: &Bench, a: &FailoverArgs) -> Result<()> {
    let load_at_start = loadavg();
    let plan = Plan::of(b, a);
    let mut rig = RevocationRig::start(b, "failover", plan.rounds, true)?;
    let (rounds, background) = b.rt.block_on(measure(&mut rig, b, &plan))?;
    let results = Results {
        rounds,
        background: Answers::sum(&background.parts)?,
        background_s: background.seconds,
        followers: rig.followers()?,
    };
    let report = results.report(&plan, &rig);
    let summary = results.summary(&plan, &rig);
    rig.stop();
    b.write("failover", load_at_start, report, &summary)
}

/// The warm-up, then the rounds under steady background load.
async fn measure(
    rig: &mut RevocationRig,
    b: &Bench,
    plan: &Plan,
) -> Result<(Vec<Round>, BackgroundRun)> {
    let mut rtt = histogram()?;
    rig.warm_up(&mut rtt).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = rig.start_background(b, &plan.load, &stop)?;
    let started = Instant::now();
    let mut rounds = Vec::with_capacity(plan.rounds);
    tokio::time::sleep(plan.pause).await;
    for k in 0..plan.rounds {
        match round(rig, k).await {
            Ok(r) => {
                eprintln!(
                    "   round {}: replica {} killed, both gateways refused {:.1} ms later",
                    k + 1,
                    r.killed_replica,
                    r.kill_to_both_refuse_ms
                );
                rounds.push(r);
            }
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        tokio::time::sleep(plan.pause).await;
    }
    let background = stop_background(&stop, tasks, started).await;
    Ok((rounds, background))
}

/// Kill the followed replica, revoke through the survivor, probe until both gateways
/// refuse, restart the killed replica.
async fn round(rig: &mut RevocationRig, k: usize) -> Result<Round> {
    let before = tokio::task::block_in_place(|| rig.followed())?;
    let killed = before[0];
    let n = rig.trust.sidecars.len();
    let survivor = (killed + 1) % n;
    let c = rig
        .consents
        .get(rig.background + k)
        .ok_or_else(|| HarnessError::Plan(format!("no consent for round {k}")))?;
    // The API user's keep-alive connection to the survivor is open before the kill (as a
    // client's pool would be): the time measured is not a TLS handshake.
    // One retry: a connection the previous round's restart closed may look open.
    let reg = &mut rig.regs[survivor];
    let read = match reg.consent(c.user, &c.id).await {
        Ok(r) => r,
        Err(_) => reg.consent(c.user, &c.id).await?,
    };
    if read.status != 200 {
        return Err(HarnessError::Trust(format!(
            "the survivor's GET of the consent: {}",
            read.describe()
        )));
    }
    let killed_at = Instant::now();
    rig.trust.sidecars[killed].proc.sigkill();
    let r = reg.revoke(c.user, &c.id).await?;
    let answered = Instant::now();
    if r.status != 200 {
        return Err(HarnessError::Trust(format!(
            "revoke through the survivor: {}",
            r.describe()
        )));
    }
    let mut rtt = histogram()?;
    let mut rtt_b = histogram()?;
    let (pa, pb) = rig.probes.split_at_mut(1);
    let (ra, rb) = tokio::join!(
        until_refused(&mut pa[0][c.user], &c.path, &c.auth, &mut rtt),
        until_refused(&mut pb[0][c.user], &c.path, &c.auth, &mut rtt_b),
    );
    let (ra, rb) = (ra?, rb?);
    let after = tokio::task::block_in_place(|| rig.followed())?;
    rig.trust.sidecars[killed].proc.kill(); // reaped
    let t = Instant::now();
    let spec = &rig.trust.specs[killed];
    rig.trust.sidecars[killed] = tokio::task::block_in_place(|| spec.start())?;
    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    Ok(Round {
        round: k + 1,
        killed_replica: killed + 1,
        survivor: survivor + 1,
        followed_before: before.iter().map(|i| i + 1).collect(),
        followed_after: after.iter().map(|i| i + 1).collect(),
        kill_to_revocation_answered_ms: ms(answered - killed_at),
        kill_to_refused_ms: [ms(ra.at - killed_at), ms(rb.at - killed_at)],
        kill_to_both_refuse_ms: ms(ra.at.max(rb.at) - killed_at),
        revocation_answered_to_both_refuse_ms: ms(ra.at.max(rb.at) - answered),
        probes: [ra.probes, rb.probes],
        restart_s: round3(t.elapsed().as_secs_f64()),
    })
}

impl RevocationRig {
    /// The trust endpoint (0-based) each gateway follows: its endpoint switches modulo
    /// the number of endpoints (it starts on the first and moves round robin).
    fn followed(&self) -> Result<Vec<usize>> {
        let n = self.trust.specs.len().max(1) as u64;
        let mut out = Vec::with_capacity(self.gateways.len());
        for g in &self.gateways {
            let switches =
                benches::sidecar::gateway_metric(g.admin, "hub_trust_endpoint_switches_total")?
                    .ok_or_else(|| HarnessError::Process {
                        name: g.name.clone(),
                        reason: "no hub_trust_endpoint_switches_total on /metrics".into(),
                    })?;
            let k = switches.max(0.0) as u64;
            out.push(usize::try_from(k % n).unwrap_or(0));
        }
        Ok(out)
    }
}

/// Everything failover measured.
struct Results {
    rounds: Vec<Round>,
    background: Answers,
    background_s: f64,
    followers: Value,
}

impl Results {
    /// The failover times (kill → both refuse) as a histogram in µs.
    fn resume(&self) -> Result<Latency> {
        let mut h = histogram()?;
        for r in &self.rounds {
            let _ = h.record(((r.kill_to_both_refuse_ms * 1e3) as u64).max(1));
        }
        Ok(latency(&h))
    }

    /// Background requests that did not get a 2xx answer (transport errors included).
    fn failed(&self) -> u64 {
        let ok: u64 = self
            .background
            .statuses
            .iter()
            .filter(|(k, _)| k.starts_with('2'))
            .map(|(_, v)| v)
            .sum();
        self.background.requests - ok
    }

    fn target_met(&self, resume: &Latency) -> bool {
        resume.max_ms < 1000.0 && self.failed() == 0
    }

    fn report(&self, plan: &Plan, rig: &RevocationRig) -> Value {
        let resume = self.resume().unwrap_or_default();
        let bg = &self.background;
        json!({
            "settings": {
                "rounds": plan.rounds,
                "background_rate_per_gateway": plan.load.bg_rate,
                "background_connections_per_gateway": plan.load.bg_conns,
                "pause_s": plan.pause.as_secs_f64(),
                "kill": "SIGKILL to the replica both gateways follow, then a revocation through the survivor",
                "sidecar_heartbeat_ms": rig.trust.specs.first().map(|s| s.heartbeat_ms),
                "trust": rig.trust_settings(),
            },
            "rounds": self.rounds,
            "kill_to_both_refuse": resume,
            "measures": "from SIGKILL sent to the followed replica until both gateways answer 403 consent_revoked for a \
                         consent revoked through the survivor right after the kill: the DELETE's round trip (while the \
                         survivor also takes both gateways' reconnections) is part of it",
            "background": {
                "requests": bg.requests,
                "answers": bg.statuses,
                "transport_errors": bg.errors,
                "failed": self.failed(),
                "seconds": round3(self.background_s),
                "rps": round1(bg.requests as f64 / self.background_s.max(1e-9)),
                "latency": bg.latency(),
            },
            "followers_at_end": self.followers,
            "target": "every failover under 1 s, no request failed",
            "target_met": self.target_met(&resume),
        })
    }

    fn summary(&self, plan: &Plan, rig: &RevocationRig) -> String {
        let resume = self.resume().unwrap_or_default();
        let bg = &self.background;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} rounds: kill -9 of the replica both gateways follow ({}; gateway heartbeat_secs {:?}), \
             a revocation through the survivor, both gateways probed until they refuse it; the killed \
             replica restarted on its port; background {:.0} req/s per gateway throughout",
            plan.rounds,
            rig.trust.describe_following(),
            rig.trust.gateway_heartbeat_secs(),
            plan.load.bg_rate
        );
        for r in &self.rounds {
            let _ = writeln!(
                s,
                "  round {:2}: killed replica {} (followed {:?} → {:?}): revocation answered by replica {} after \
                 {:.1} ms; refused by A {:.1} ms / B {:.1} ms after the kill; restart {:.2} s",
                r.round,
                r.killed_replica,
                r.followed_before,
                r.followed_after,
                r.survivor,
                r.kill_to_revocation_answered_ms,
                r.kill_to_refused_ms[0],
                r.kill_to_refused_ms[1],
                r.restart_s
            );
        }
        let _ = writeln!(s, "kill → both gateways refuse: {}", lat_line(&resume));
        let _ = writeln!(
            s,
            "background: {} requests in {:.1} s, answers {:?}, {} transport errors: {} failed; latency {}",
            bg.requests,
            self.background_s,
            bg.statuses,
            bg.errors,
            self.failed(),
            lat_line(&bg.latency())
        );
        let verdict = if self.target_met(&resume) {
            "met"
        } else {
            "NOT met"
        };
        let _ = writeln!(s, "target (under 1 s, no request failed): {verdict}");
        let _ = writeln!(s, "gateway followers at the end: {}", self.followers);
        s
    }
}
