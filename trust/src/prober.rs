//! The probe scheduler (issue 14 point 1): on the replica that leads housekeeping, every
//! interval (jittered ±10 %, so probes of many sidecars never beat in step), every active
//! provider with a registered test subject is probed API by API with the conformance
//! suite, calling the bank as the hub does (the hub's client identity); each result is
//! stored and graded (`oversight`), and a change of grade or publication is notified to
//! the provider (`ProviderNotifier`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::{ApiReport, Prober, Target, TestCustomer, Verdict};
use consent_cache::Bin;
use serde::Serialize;
use tokio::sync::watch;

use crate::app::App;
use crate::grade::{Hysteresis, Transition};
use crate::listener::stopped;
use crate::oversight::{self, Observation, ProbeSubject};
use crate::wire::{ParticipantStatus, ProviderApi, Role};

/// How probing is configured (`trust serve --probe-*`).
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Between two rounds (default 45 s: the pilot's 1,920 tests per API per day).
    pub interval: Duration,
    /// The hub's client certificate towards banks (PEM).
    pub client_cert: PathBuf,
    /// Its key (PEM).
    pub client_key: PathBuf,
    /// The CA that verifies the banks (PEM).
    pub ca: PathBuf,
    /// K and M.
    pub hysteresis: Hysteresis,
    /// The development outbox of provider notifications (JSON lines), if any.
    pub outbox: Option<PathBuf>,
}

/// A change of grade or publication, as told to the provider.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderNotice {
    /// The provider.
    pub provider: Bin,
    /// The API.
    pub api: ProviderApi,
    /// `conformant`, `degraded` or `failing`.
    pub grade: &'static str,
    /// Whether the API is published now.
    pub listed: bool,
    /// The rules that failed (empty when it passed).
    pub failed_rules: Vec<String>,
}

/// Tells a provider about its APIs' changes. Production plugs the platform's messaging in
/// here; the development notifier appends JSON lines to a file.
pub trait ProviderNotifier: Send + Sync + std::fmt::Debug {
    /// Delivers one notice; a failure is logged, never retried into the probe loop.
    fn notify(&self, notice: &ProviderNotice) -> Result<(), String>;
}

/// The development outbox: one JSON line per notice.
#[derive(Debug)]
pub struct FileOutbox {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileOutbox {
    /// Appends to `path` (created when missing).
    pub fn new(path: PathBuf) -> FileOutbox {
        FileOutbox {
            path,
            lock: Mutex::new(()),
        }
    }
}

impl ProviderNotifier for FileOutbox {
    fn notify(&self, notice: &ProviderNotice) -> Result<(), String> {
        let line = serde_json::to_string(notice).map_err(|e| e.to_string())?;
        let _guard = self
            .lock
            .lock()
            .map_err(|_| "outbox lock poisoned".to_owned())?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// The probers kept between rounds, rebuilt when a provider's URL or subject changes.
struct Probers {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
    built: HashMap<Bin, (String, Arc<Prober>)>,
}

impl Probers {
    fn get(&mut self, provider: Bin, url: &str, s: &ProbeSubject) -> Option<Arc<Prober>> {
        let fingerprint = format!("{url}\n{}", serde_json::to_string(s).unwrap_or_default());
        if let Some((f, p)) = self.built.get(&provider) {
            if *f == fingerprint {
                return Some(p.clone());
            }
        }
        let customer = TestCustomer {
            api_user: s.api_user,
            consent_id: s.consent_id.clone(),
            customer: s.customer.clone(),
            permissions: s.permissions.iter().copied().collect(),
            accounts: s.accounts.clone(),
        };
        let sla = Duration::from_millis(s.sla_ms);
        let target = Target::new(
            url,
            self.cert.clone(),
            self.key.clone(),
            self.ca.clone(),
            sla,
            customer,
        );
        match Prober::new(&target) {
            Ok(p) => {
                let p = Arc::new(p);
                self.built.insert(provider, (fingerprint, p.clone()));
                Some(p)
            }
            Err(e) => {
                tracing::error!(%provider, error = %e, "provider cannot be probed");
                None
            }
        }
    }
}

/// Runs until shutdown; probes only while `leading` (set by housekeeping).
pub async fn run(
    app: Arc<App>,
    cfg: ProbeConfig,
    leading: Arc<AtomicBool>,
    notifier: Option<Arc<dyn ProviderNotifier>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut probers = match (read(&cfg.client_cert), read(&cfg.client_key), read(&cfg.ca)) {
        (Ok(cert), Ok(key), Ok(ca)) => Probers {
            cert,
            key,
            ca,
            built: HashMap::new(),
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            tracing::error!(error = %e, "probing disabled: the hub's client identity cannot be read");
            return;
        }
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(jittered(cfg.interval)) => {}
            () = stopped(&mut shutdown) => return,
        }
        if !leading.load(Ordering::Acquire) {
            continue;
        }
        round(&app, &cfg, &mut probers, notifier.as_deref()).await;
    }
}

/// The interval ±10 %.
fn jittered(interval: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let unit = f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX); // 0..=1
    interval.mul_f64(0.9 + 0.2 * unit)
}

/// One round: every probeable provider concurrently, its APIs one after another.
async fn round(
    app: &Arc<App>,
    cfg: &ProbeConfig,
    probers: &mut Probers,
    notifier: Option<&dyn ProviderNotifier>,
) {
    let a = app.clone();
    let subjects = match crate::app::blocking(move || {
        a.db.read(|c| oversight::subjects(c).map_err(crate::error::Error::from))
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "probe subjects cannot be read");
            return;
        }
    };
    let directory = app.directory();
    let mut jobs = tokio::task::JoinSet::new();
    for (provider, subject) in subjects {
        let Some(record) = directory.get(provider) else {
            continue;
        };
        let active = record.status == ParticipantStatus::Active && record.has_role(Role::Provider);
        let Some(url) = record.provider_urls.first().filter(|_| active) else {
            continue;
        };
        let Some(prober) = probers.get(provider, url, &subject) else {
            continue;
        };
        let budget = Duration::from_millis(subject.sla_ms.saturating_mul(2));
        jobs.spawn(probe_provider(
            app.clone(),
            provider,
            (prober, budget),
            cfg.hysteresis,
        ));
    }
    while let Some(done) = jobs.join_next().await {
        let Ok(notices) = done else { continue };
        deliver(notices, notifier);
    }
    // The grades and publication after the round (pins included) for the metrics.
    match app.oversight().await {
        Ok(statuses) => app.metrics.observe(&statuses),
        Err(e) => tracing::warn!(error = %e, "oversight metrics not updated"),
    }
}

/// Logs each change of grade or publication and tells the provider (probes and SLA
/// breaches alike); a notice not delivered is logged, never retried.
pub fn deliver(notices: Vec<ProviderNotice>, notifier: Option<&dyn ProviderNotifier>) {
    for n in notices {
        tracing::info!(provider = %n.provider, api = %n.api, grade = n.grade, listed = n.listed, rules = ?n.failed_rules, "provider API graded");
        if let Some(notifier) = notifier {
            if let Err(e) = notifier.notify(&n) {
                tracing::warn!(provider = %n.provider, error = %e, "provider notice not delivered");
            }
        }
    }
}

/// Probes every API of one provider; returns the notices of the changes.
async fn probe_provider(
    app: Arc<App>,
    provider: Bin,
    (prober, budget): (Arc<Prober>, Duration),
    h: Hysteresis,
) -> Vec<ProviderNotice> {
    // Every API at once, each within its budget: a slow bank costs one budget per round,
    // not one per API and call.
    let mut probes = tokio::task::JoinSet::new();
    for api in ProviderApi::ALL {
        let prober = prober.clone();
        probes.spawn(async move {
            match tokio::time::timeout(budget, prober.probe(api)).await {
                Ok(report) if report.verdict == Verdict::Skipped => None,
                Ok(report) => Some(observation(provider, &report)),
                Err(_) => Some(over_budget(provider, api, budget)),
            }
        });
    }
    let mut observations = Vec::new();
    while let Some(done) = probes.join_next().await {
        if let Ok(Some(o)) = done {
            observations.push(o);
        }
    }
    observations.sort_by_key(|o| o.api);
    let mut notices = Vec::new();
    for o in observations {
        let (api, failed_rules) = (o.api, o.failed_rules.clone());
        let result = if o.passed { "pass" } else { "fail" };
        let bin = provider.to_string();
        app.metrics
            .probes
            .with_label_values(&[bin.as_str(), api.as_str(), result])
            .inc();
        match app.record_probe(o, h).await {
            Ok(Some(t)) => notices.push(notice(provider, api, t, failed_rules)),
            Ok(None) => {}
            Err(e) => tracing::error!(%provider, %api, error = %e, "probe result not stored"),
        }
        if let Err(e) = app.prune_probe_results(provider, api).await {
            tracing::warn!(%provider, %api, error = %e, "probe results not pruned");
        }
    }
    notices
}

/// A probe abandoned at its budget (twice the provider's SLA): the API failed the
/// latency rule, whatever else it would have found.
fn over_budget(provider: Bin, api: ProviderApi, budget: Duration) -> Observation {
    let us = i64::try_from(budget.as_micros()).unwrap_or(i64::MAX);
    Observation {
        provider,
        api,
        passed: false,
        latency_us: us,
        report: serde_json::json!({
            "api": api,
            "verdict": "fail",
            "detail": format!("the probe did not finish within {} ms (twice the SLA)", budget.as_millis()),
        }),
        failed_rules: vec!["latency".to_owned()],
    }
}

fn observation(provider: Bin, report: &ApiReport) -> Observation {
    Observation {
        provider,
        api: report.api,
        passed: report.verdict == Verdict::Pass,
        latency_us: report
            .calls
            .iter()
            .map(|c| i64::try_from(c.latency_us).unwrap_or(i64::MAX))
            .max()
            .unwrap_or(0),
        report: serde_json::to_value(report).unwrap_or_default(),
        failed_rules: report.failed().map(|r| r.as_str().to_owned()).collect(),
    }
}

fn notice(
    provider: Bin,
    api: ProviderApi,
    t: Transition,
    failed_rules: Vec<String>,
) -> ProviderNotice {
    ProviderNotice {
        provider,
        api,
        grade: t.to.as_str(),
        listed: t.listed,
        failed_rules,
    }
}
