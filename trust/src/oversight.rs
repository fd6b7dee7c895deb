//! Provider oversight in the control plane (issue 14 points 1, 4 and 6): the test subject
//! each provider registers for probing, each provider API's grade (`grade`), the events
//! of every change of grade or publication with their evidence, and the probe results;
//! publication follows through [`participants::set_delisted`], so every gateway enforces
//! a delisting through the feed at once while the provider's other APIs serve.
//!
//! Probes run on the replica that leads housekeeping (`prober`), so in a cluster an API is
//! probed and graded once, not once per replica; so does the evaluation of sustained SLA
//! breaches (`breach`), whose verdicts are graded here too ([`apply_breaches`]).

use consent_cache::{Bin, Permission};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::{blocking, App};
use crate::db::{Sql, StoreError, Tx};
use crate::error::Error;
use crate::grade::{self, ApiState, Grade, Hysteresis, Pin, Transition};
use crate::participants;
use crate::wire::ProviderApi;
use std::sync::Arc;

/// Probe results kept per provider API (older ones are pruned as new ones arrive).
pub const RESULTS_KEPT: i64 = 500;
/// Events and results answered by the operator's history route.
const HISTORY_LIMIT: i64 = 100;
/// Longest accepted operator reason, in characters.
const MAX_REASON_CHARS: usize = 500;

/// The designated test customer and consent a provider registers for probing
/// (`PUT /v1/admin/oversight/{bin}/subject`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSubject {
    /// The API user the probes call for (`x-hub-api-user`).
    pub api_user: Bin,
    /// The test consent's id (`x-hub-consent-id`).
    pub consent_id: String,
    /// The test customer's id at the provider (`x-hub-customer`).
    pub customer: String,
    /// What the test consent grants.
    pub permissions: Vec<Permission>,
    /// The accounts the test consent is restricted to, if any.
    #[serde(default)]
    pub accounts: Option<Vec<String>>,
    /// The provider's SLA for one call, in milliseconds (default 500).
    #[serde(default = "default_sla_ms")]
    pub sla_ms: u64,
}

fn default_sla_ms() -> u64 {
    500
}

impl std::fmt::Debug for ProbeSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The test customer's id and accounts stay out of logs.
        f.debug_struct("ProbeSubject")
            .field("api_user", &self.api_user)
            .field("sla_ms", &self.sla_ms)
            .finish_non_exhaustive()
    }
}

impl ProbeSubject {
    fn validate(&self) -> Result<(), Error> {
        let short = |s: &str| !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control);
        if !short(&self.consent_id) || !short(&self.customer) {
            return Err(Error::BadRequest(
                "consent_id and customer: 1 to 128 characters, no control characters".into(),
            ));
        }
        if self.permissions.is_empty() {
            return Err(Error::BadRequest("permissions: at least one".into()));
        }
        if !(1..=60_000).contains(&self.sla_ms) {
            return Err(Error::BadRequest("sla_ms: from 1 to 60000".into()));
        }
        match &self.accounts {
            Some(a) if a.is_empty() || a.len() > 64 || a.iter().any(|x| !short(x)) => Err(
                Error::BadRequest("accounts: 1 to 64 ids of 1 to 128 characters".into()),
            ),
            _ => Ok(()),
        }
    }
}

/// One provider API's grade and publication, as the operator reads it.
#[derive(Debug, Clone, Serialize)]
pub struct ApiStatus {
    /// The provider.
    pub provider: Bin,
    /// The API.
    pub api: ProviderApi,
    /// Its grade.
    pub grade: Grade,
    /// Whether it is published.
    pub listed: bool,
    /// Failing probes in a row.
    pub failures: u32,
    /// Passing probes in a row.
    pub passes: u32,
    /// The operator's pin, if any.
    pub pin: Option<Pin>,
    /// Whether its SLA window breaches (a sustained breach: failing until it clears).
    pub breaching: bool,
    /// The latest evaluation of its SLA window (`breach`): rules, window, numbers and
    /// the live checks' counts; absent until the API has had traffic.
    pub evaluation: Option<Value>,
    /// Last change, Unix seconds.
    pub updated_at: i64,
}

/// An event: a change of grade or of publication, with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct OversightEvent {
    /// Sequence number.
    pub seq: i64,
    /// The provider.
    pub provider: Bin,
    /// The API.
    pub api: ProviderApi,
    /// When, Unix seconds.
    pub at: i64,
    /// `probe`, `sla` (the breach evaluation) or the operator.
    pub actor: String,
    /// The grade before.
    pub from: Grade,
    /// The grade after.
    pub to: Grade,
    /// Published after the event.
    pub listed: bool,
    /// Which probe and rules, or the pin's reason.
    pub evidence: Value,
}

/// A stored probe result.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Sequence number.
    pub seq: i64,
    /// The API.
    pub api: ProviderApi,
    /// When, Unix seconds.
    pub at: i64,
    /// Whether it passed.
    pub passed: bool,
    /// The slowest call, µs.
    pub latency_us: i64,
    /// The conformance report (no customer data).
    pub report: Value,
}

/// `PUT /v1/admin/oversight/{bin}/pin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinInput {
    /// Keep listed (`true`) or delisted.
    pub listed: bool,
    /// Why (required, shown in the history).
    pub reason: String,
    /// The APIs to pin (default: all of the provider's).
    #[serde(default)]
    pub apis: Option<Vec<ProviderApi>>,
}

/// What a probe found, for [`App::record_probe`].
#[derive(Debug, Clone)]
pub struct Observation {
    /// The provider.
    pub provider: Bin,
    /// The API.
    pub api: ProviderApi,
    /// Whether it passed (a skipped probe is not recorded).
    pub passed: bool,
    /// The slowest call, µs.
    pub latency_us: i64,
    /// The report as JSON.
    pub report: Value,
    /// The failing rules (the event's evidence).
    pub failed_rules: Vec<String>,
}

fn parse_api(s: &str) -> Result<ProviderApi, StoreError> {
    ProviderApi::parse(s).ok_or_else(|| StoreError::Corrupt(format!("oversight api {s:?}")))
}

fn load_state(sql: &mut dyn Sql, provider: Bin, api: ProviderApi) -> Result<ApiState, StoreError> {
    let row = sql.query_opt(
        "SELECT state FROM oversight_apis WHERE provider = $1 AND api = $2",
        &[provider.to_string().into(), api.as_str().into()],
    )?;
    match row {
        Some(r) => Ok(serde_json::from_str(&r.text(0)?)?),
        None => Ok(ApiState::default()),
    }
}

fn save_state(
    tx: &mut Tx<'_>,
    provider: Bin,
    api: ProviderApi,
    s: &ApiState,
) -> Result<(), StoreError> {
    let (p, a, json, now) = (
        provider.to_string(),
        api.as_str(),
        serde_json::to_string(s)?,
        tx.now(),
    );
    tx.execute(
        "DELETE FROM oversight_apis WHERE provider = $1 AND api = $2",
        &[p.as_str().into(), a.into()],
    )?;
    tx.execute(
        "INSERT INTO oversight_apis(provider, api, state, updated_at) VALUES ($1, $2, $3, $4)",
        &[p.as_str().into(), a.into(), json.into(), now.into()],
    )?;
    Ok(())
}

fn record_event(
    tx: &mut Tx<'_>,
    provider: Bin,
    api: ProviderApi,
    actor: &str,
    t: Transition,
    evidence: &Value,
) -> Result<(), StoreError> {
    let now = tx.now();
    tx.execute(
        "INSERT INTO oversight_events(provider, api, at, actor, from_grade, to_grade, listed, evidence)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            provider.to_string().into(),
            api.as_str().into(),
            now.into(),
            actor.into(),
            t.from.as_str().into(),
            t.to.as_str().into(),
            i64::from(t.listed).into(),
            serde_json::to_string(evidence)?.into(),
        ],
    )?;
    Ok(())
}

/// Makes the registry's `delisted` list of `provider` follow its APIs' states; returns the
/// written registry when it changed.
fn sync_listing(
    tx: &mut Tx<'_>,
    provider: Bin,
    actor: &str,
) -> Result<participants::Written, Error> {
    let mut delisted = Vec::new();
    for api in ProviderApi::ALL {
        if !load_state(tx, provider, api)?.listed() {
            delisted.push(api);
        }
    }
    participants::set_delisted(tx, provider, delisted, actor)
}

/// Stores a probe result, grades the API and, on a change, writes the event and the
/// registry's listing. Returns the transition.
fn observe(
    tx: &mut Tx<'_>,
    o: &Observation,
    h: Hysteresis,
) -> Result<(Option<Transition>, Option<participants::Written>), Error> {
    // Decides from the state it reads: the feed head's lock orders it after any other
    // grading of the same API (PostgreSQL; SQLite has one writer).
    tx.head()?;
    let now = tx.now();
    tx.execute(
        "INSERT INTO probe_results(provider, api, at, passed, latency_us, report)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            o.provider.to_string().into(),
            o.api.as_str().into(),
            now.into(),
            i64::from(o.passed).into(),
            o.latency_us.into(),
            serde_json::to_string(&o.report)
                .map_err(StoreError::from)?
                .into(),
        ],
    )?;
    let mut state = load_state(tx, o.provider, o.api)?;
    let t = grade::observe(&mut state, o.passed, h);
    save_state(tx, o.provider, o.api, &state)?;
    let Some(t) = t else {
        return Ok((None, None));
    };
    let evidence = serde_json::json!({
        "probe_at": now,
        "failed_rules": o.failed_rules,
        "failures_in_a_row": state.failures,
        "passes_in_a_row": state.passes,
    });
    record_event(tx, o.provider, o.api, "probe", t, &evidence)?;
    let written = if t.listed != t.was_listed {
        Some(sync_listing(tx, o.provider, "oversight")?)
    } else {
        None
    };
    Ok((Some(t), written))
}

fn statuses(sql: &mut dyn Sql, provider: Option<Bin>) -> Result<Vec<ApiStatus>, StoreError> {
    let rows = match provider {
        Some(p) => sql.query(
            "SELECT provider, api, state, updated_at FROM oversight_apis WHERE provider = $1
             ORDER BY provider, api",
            &[p.to_string().into()],
        )?,
        None => sql.query(
            "SELECT provider, api, state, updated_at FROM oversight_apis ORDER BY provider, api",
            &[],
        )?,
    };
    rows.iter()
        .map(|r| {
            let state: ApiState = serde_json::from_str(&r.text(2)?)?;
            Ok(ApiStatus {
                provider: Bin::parse(&r.text(0)?)
                    .map_err(|e| StoreError::Corrupt(format!("oversight provider: {e}")))?,
                api: parse_api(&r.text(1)?)?,
                grade: state.grade,
                listed: state.listed(),
                failures: state.failures,
                passes: state.passes,
                pin: state.pin,
                breaching: state.breaching,
                evaluation: state.evaluation,
                updated_at: r.int(3)?,
            })
        })
        .collect()
}

fn events(sql: &mut dyn Sql, provider: Bin) -> Result<Vec<OversightEvent>, StoreError> {
    let rows = sql.query(
        "SELECT seq, api, at, actor, from_grade, to_grade, listed, evidence FROM oversight_events
         WHERE provider = $1 ORDER BY seq DESC LIMIT $2",
        &[provider.to_string().into(), HISTORY_LIMIT.into()],
    )?;
    let grade_of = |s: String| -> Result<Grade, StoreError> {
        serde_json::from_value(Value::String(s)).map_err(StoreError::from)
    };
    rows.iter()
        .map(|r| {
            Ok(OversightEvent {
                seq: r.int(0)?,
                provider,
                api: parse_api(&r.text(1)?)?,
                at: r.int(2)?,
                actor: r.text(3)?,
                from: grade_of(r.text(4)?)?,
                to: grade_of(r.text(5)?)?,
                listed: r.int(6)? != 0,
                evidence: serde_json::from_str(&r.text(7)?)?,
            })
        })
        .collect()
}

fn results(sql: &mut dyn Sql, provider: Bin) -> Result<Vec<ProbeResult>, StoreError> {
    let rows = sql.query(
        "SELECT seq, api, at, passed, latency_us, report FROM probe_results
         WHERE provider = $1 ORDER BY seq DESC LIMIT $2",
        &[provider.to_string().into(), HISTORY_LIMIT.into()],
    )?;
    rows.iter()
        .map(|r| {
            Ok(ProbeResult {
                seq: r.int(0)?,
                api: parse_api(&r.text(1)?)?,
                at: r.int(2)?,
                passed: r.int(3)? != 0,
                latency_us: r.int(4)?,
                report: serde_json::from_str(&r.text(5)?)?,
            })
        })
        .collect()
}

/// The registered test subjects, by provider.
pub fn subjects(sql: &mut dyn Sql) -> Result<Vec<(Bin, ProbeSubject)>, StoreError> {
    let rows = sql.query(
        "SELECT provider, subject FROM probe_subjects ORDER BY provider",
        &[],
    )?;
    rows.iter()
        .map(|r| {
            let bin = Bin::parse(&r.text(0)?)
                .map_err(|e| StoreError::Corrupt(format!("probe subject provider: {e}")))?;
            Ok((bin, serde_json::from_str(&r.text(1)?)?))
        })
        .collect()
}

fn provider_exists(sql: &mut dyn Sql, provider: Bin) -> Result<bool, Error> {
    Ok(participants::view(sql, provider)?
        .is_some_and(|v| v.record.has_role(crate::wire::Role::Provider)))
}

/// The operator's view of one provider: its APIs, their events and the latest results.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderOversight {
    /// Grade and publication per API (APIs never probed nor pinned are absent).
    pub apis: Vec<ApiStatus>,
    /// The latest events, newest first.
    pub events: Vec<OversightEvent>,
    /// The latest probe results, newest first.
    pub results: Vec<ProbeResult>,
}

impl App {
    /// `GET /v1/admin/oversight`: every graded provider API.
    pub async fn oversight(self: &Arc<Self>) -> Result<Vec<ApiStatus>, Error> {
        let app = self.clone();
        blocking(move || app.db.read(|c| statuses(c, None).map_err(Error::from))).await
    }

    /// `GET /v1/admin/oversight/{bin}`.
    pub async fn provider_oversight(
        self: &Arc<Self>,
        bin: Bin,
    ) -> Result<ProviderOversight, Error> {
        let app = self.clone();
        blocking(move || {
            app.db.read(|c| {
                if !provider_exists(c, bin)? {
                    return Err(Error::NotFound("provider_not_found"));
                }
                Ok(ProviderOversight {
                    apis: statuses(c, Some(bin))?,
                    events: events(c, bin)?,
                    results: results(c, bin)?,
                })
            })
        })
        .await
    }

    /// `PUT /v1/admin/oversight/{bin}/subject`.
    pub async fn put_probe_subject(
        self: &Arc<Self>,
        actor: String,
        bin: Bin,
        subject: ProbeSubject,
    ) -> Result<(), Error> {
        subject.validate()?;
        let app = self.clone();
        let json = serde_json::to_string(&subject).map_err(|e| Error::Internal(e.to_string()))?;
        blocking(move || {
            app.db.write(app.now(), |tx| {
                if !provider_exists(tx, bin)? {
                    return Err(Error::NotFound("provider_not_found"));
                }
                let (p, now) = (bin.to_string(), tx.now());
                tx.execute(
                    "DELETE FROM probe_subjects WHERE provider = $1",
                    &[p.as_str().into()],
                )?;
                tx.execute(
                    "INSERT INTO probe_subjects(provider, subject, actor, updated_at)
                     VALUES ($1, $2, $3, $4)",
                    &[
                        p.as_str().into(),
                        json.into(),
                        actor.as_str().into(),
                        now.into(),
                    ],
                )?;
                Ok(())
            })
        })
        .await
    }

    /// `PUT /v1/admin/oversight/{bin}/pin` (`Some`) and `DELETE …/pin` (`None`, with the
    /// APIs to unpin, default all): returns the provider's APIs after the change.
    pub async fn pin_provider(
        self: &Arc<Self>,
        actor: String,
        bin: Bin,
        input: Option<PinInput>,
        unpin: Option<Vec<ProviderApi>>,
    ) -> Result<Vec<ApiStatus>, Error> {
        if let Some(i) = &input {
            let n = i.reason.chars().count();
            if n == 0 || n > MAX_REASON_CHARS || i.reason.chars().any(char::is_control) {
                return Err(Error::BadRequest(format!(
                    "reason: 1 to {MAX_REASON_CHARS} characters, no control characters"
                )));
            }
        }
        let app = self.clone();
        let written = blocking(move || {
            app.db
                .write(app.now(), |tx| pin_in(tx, bin, &actor, input, unpin))
        })
        .await?;
        self.swap_directory(written.directory);
        let app = self.clone();
        blocking(move || app.db.read(|c| statuses(c, Some(bin)).map_err(Error::from))).await
    }

    /// Stores a probe's result and grades its API; publishes a delisting or relisting.
    pub async fn record_probe(
        self: &Arc<Self>,
        o: Observation,
        h: Hysteresis,
    ) -> Result<Option<Transition>, Error> {
        let app = self.clone();
        let (t, written) =
            blocking(move || app.db.write(app.now(), |tx| observe(tx, &o, h))).await?;
        if let Some(w) = written {
            self.swap_directory(w.directory);
        }
        Ok(t)
    }

    /// Prunes probe results beyond [`RESULTS_KEPT`] per provider API.
    pub async fn prune_probe_results(
        self: &Arc<Self>,
        provider: Bin,
        api: ProviderApi,
    ) -> Result<(), Error> {
        let app = self.clone();
        blocking(move || {
            app.db.write(app.now(), |tx| {
                tx.execute(
                    "DELETE FROM probe_results WHERE provider = $1 AND api = $2 AND seq <= (
                       SELECT COALESCE(MAX(seq), 0) - $3 FROM probe_results
                       WHERE provider = $1 AND api = $2)",
                    &[
                        provider.to_string().into(),
                        api.as_str().into(),
                        RESULTS_KEPT.into(),
                    ],
                )?;
                Ok::<(), Error>(())
            })
        })
        .await
    }
}

/// Pins or unpins inside one transaction, writing an event per API whose publication or
/// pin changed, then the registry's listing.
fn pin_in(
    tx: &mut Tx<'_>,
    bin: Bin,
    actor: &str,
    input: Option<PinInput>,
    unpin: Option<Vec<ProviderApi>>,
) -> Result<participants::Written, Error> {
    if !provider_exists(tx, bin)? {
        return Err(Error::NotFound("provider_not_found"));
    }
    tx.head()?; // decides from the states it reads, as `observe` does
    let now = tx.now();
    let (apis, pin, reason) = match input {
        Some(i) => {
            let pin = Pin {
                listed: i.listed,
                by: actor.to_owned(),
                reason: i.reason.clone(),
                at: now,
            };
            (
                i.apis.unwrap_or(ProviderApi::ALL.to_vec()),
                Some(pin),
                i.reason,
            )
        }
        None => (
            unpin.unwrap_or(ProviderApi::ALL.to_vec()),
            None,
            "unpinned".to_owned(),
        ),
    };
    for api in apis {
        let mut state = load_state(tx, bin, api)?;
        let changed = state.pin != pin;
        let t = grade::pin(&mut state, pin.clone());
        save_state(tx, bin, api, &state)?;
        if changed {
            let t = t.unwrap_or(Transition {
                from: state.grade,
                to: state.grade,
                was_listed: state.listed(),
                listed: state.listed(),
            });
            let evidence =
                serde_json::json!({ "pin": pin.as_ref().map(|p| p.listed), "reason": reason });
            record_event(tx, bin, api, actor, t, &evidence)?;
        }
    }
    sync_listing(tx, bin, actor)
}

/// One provider API's evaluation of its SLA window, for [`apply_breaches`].
#[derive(Debug, Clone)]
pub struct BreachVerdict {
    /// The API.
    pub api: ProviderApi,
    /// Whether the window breaches.
    pub breaching: bool,
    /// Whether the window had any traffic of the API.
    pub traffic: bool,
    /// Whether it had enough to conclude and broke no rule.
    pub compliant: bool,
    /// The rules broken (empty when none).
    pub rules: Vec<String>,
    /// The evaluation (rule, window, numbers): stored, and the evidence of an event.
    pub evaluation: Value,
}

/// What [`apply_breaches`] changed: the transitions (API, transition, rules broken) and
/// the registry when a listing changed.
pub type BreachChanges = (
    Vec<(ProviderApi, Transition, Vec<String>)>,
    Option<participants::Written>,
);

/// Records one provider's evaluations and grades its APIs in one transaction (actor
/// `sla`): an event with the evaluation as evidence for each change, then the registry's
/// listing when a publication changed. An API without traffic, not breaching, whose
/// stored evaluation saw none either is left alone (nothing new to record).
pub fn apply_breaches(
    tx: &mut Tx<'_>,
    provider: Bin,
    verdicts: &[BreachVerdict],
    probed: bool,
    h: Hysteresis,
) -> Result<BreachChanges, Error> {
    tx.head()?; // decides from the states it reads, as `observe` does
    let mut changes = Vec::new();
    let mut relist = false;
    for v in verdicts {
        let mut state = load_state(tx, provider, v.api)?;
        let saw_traffic = state
            .evaluation
            .as_ref()
            .is_some_and(|e| e["traffic"] == Value::Bool(true));
        if !v.traffic && !state.breaching && !saw_traffic {
            continue;
        }
        state.evaluation = Some(v.evaluation.clone());
        let window = match (v.breaching, v.compliant) {
            (true, _) => grade::Window::Breaching,
            (false, true) => grade::Window::Compliant,
            (false, false) => grade::Window::Inconclusive,
        };
        let t = grade::breach(&mut state, window, probed, h);
        save_state(tx, provider, v.api, &state)?;
        if let Some(t) = t {
            record_event(tx, provider, v.api, "sla", t, &v.evaluation)?;
            relist |= t.listed != t.was_listed;
            changes.push((v.api, t, v.rules.clone()));
        }
    }
    let written = if relist {
        Some(sync_listing(tx, provider, "oversight")?)
    } else {
        None
    };
    Ok((changes, written))
}
