//! One API's probe in progress: makes each call through the client, records it, and holds
//! it to the per-call rules (TLS, status, schema, latency) as it goes; the API's own
//! rules (prerequisite, pagination, date range, allow-list) are set by the probe. Ends as
//! an [`ApiReport`].

use std::collections::BTreeMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use http::HeaderMap;
use serde_json::Value;

use crate::client::{millis, CallFailure, Client};
use crate::report::{ApiReport, CallRecord, Outcome, Purpose, Rule, RuleResult, Verdict};
use crate::schema::Schemas;
use crate::target::Api;

pub(crate) const X_FAPI_INTERACTION_ID: HeaderName =
    HeaderName::from_static("x-fapi-interaction-id");
pub(crate) const X_HUB_API_USER: HeaderName = HeaderName::from_static("x-hub-api-user");
pub(crate) const X_HUB_CONSENT_ID: HeaderName = HeaderName::from_static("x-hub-consent-id");
pub(crate) const X_HUB_CUSTOMER: HeaderName = HeaderName::from_static("x-hub-customer");
pub(crate) const X_HUB_PERMISSIONS: HeaderName = HeaderName::from_static("x-hub-permissions");
pub(crate) const X_HUB_ACCOUNTS: HeaderName = HeaderName::from_static("x-hub-accounts");

/// The headers the hub sends, prepared once per prober (contract §3).
#[derive(Clone)]
pub(crate) struct HubHeaders {
    /// Open data: the API user only.
    pub(crate) open: HeaderMap,
    /// Consent routes: the API user, consent, customer and permissions.
    pub(crate) consent: HeaderMap,
    /// `x-hub-accounts`, when the test consent restricts accounts.
    pub(crate) accounts: Option<HeaderValue>,
}

/// Which of the hub's headers a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carry {
    /// An open-data call.
    Open,
    /// A consent call as the hub makes it (with `x-hub-accounts` when restricted).
    Consent,
    /// A consent call without `x-hub-accounts` (support calls only).
    Unrestricted,
}

impl HubHeaders {
    fn for_call(&self, carry: Carry) -> HeaderMap {
        let mut h = match carry {
            Carry::Open => self.open.clone(),
            Carry::Consent | Carry::Unrestricted => self.consent.clone(),
        };
        if let (Carry::Consent, Some(a)) = (carry, &self.accounts) {
            h.insert(X_HUB_ACCOUNTS, a.clone());
        }
        let mut iid = [0u8; 36];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut iid);
        if let Ok(v) = HeaderValue::from_bytes(&iid) {
            h.insert(X_FAPI_INTERACTION_ID, v);
        }
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        h
    }
}

/// A complete answer, as the probe's own rules need it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// The body, when it is JSON.
    pub(crate) json: Option<Value>,
}

impl Reply {
    /// The JSON of a 2xx answer.
    pub(crate) fn ok_json(&self) -> Option<&Value> {
        self.json
            .as_ref()
            .filter(|_| (200..300).contains(&self.status))
    }
}

/// How many calls a per-call rule looked at, how many broke it, and the first breach.
#[derive(Default)]
struct Tally {
    checked: u32,
    failed: u32,
    first: Option<String>,
}

impl Tally {
    fn pass(&mut self) {
        self.checked += 1;
    }

    fn fail(&mut self, detail: String) {
        self.checked += 1;
        self.failed += 1;
        self.first.get_or_insert(detail);
    }

    fn result(self, rule: Rule, passed: String) -> RuleResult {
        let (outcome, detail) = match (self.checked, self.first) {
            (0, _) => (Outcome::Skip, "no call reached this check".to_owned()),
            (_, None) => (Outcome::Pass, passed),
            (n, Some(first)) => (
                Outcome::Fail,
                format!("{} of {n} calls: {first}", self.failed),
            ),
        };
        RuleResult {
            rule,
            outcome,
            detail,
        }
    }
}

/// One API's probe in progress.
pub(crate) struct Run<'p> {
    api: Api,
    client: &'p Client,
    schemas: &'p Schemas,
    headers: &'p HubHeaders,
    sla: Duration,
    calls: Vec<CallRecord>,
    tls: Tally,
    status: Tally,
    schema: Tally,
    latency: Tally,
    slowest: Duration,
    set: BTreeMap<Rule, RuleResult>,
}

impl<'p> Run<'p> {
    pub(crate) fn new(
        api: Api,
        client: &'p Client,
        schemas: &'p Schemas,
        headers: &'p HubHeaders,
        sla: Duration,
    ) -> Run<'p> {
        Run {
            api,
            client,
            schemas,
            headers,
            sla,
            calls: Vec::new(),
            tls: Tally::default(),
            status: Tally::default(),
            schema: Tally::default(),
            latency: Tally::default(),
            slowest: Duration::ZERO,
            set: BTreeMap::new(),
        }
    }

    /// Sets a rule's result (the API's own rules, or an override of a per-call rule).
    pub(crate) fn set(&mut self, rule: Rule, outcome: Outcome, detail: impl Into<String>) {
        let detail = detail.into();
        self.set.insert(
            rule,
            RuleResult {
                rule,
                outcome,
                detail,
            },
        );
    }

    /// One `GET`; recorded, and unless it is a support call, held to the per-call rules
    /// (a refusal's status is the allow-list rule's business, not the status rule's).
    pub(crate) async fn call(
        &mut self,
        purpose: Purpose,
        path: &str,
        carry: Carry,
    ) -> Option<Reply> {
        let (result, latency) = self.client.get(path, self.headers.for_call(carry)).await;
        self.calls.push(CallRecord {
            purpose,
            status: result.as_ref().ok().map(|a| a.status),
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            failure: result.as_ref().err().cloned(),
        });
        let answer = match result {
            Ok(a) => a,
            Err(failure) => {
                if purpose != Purpose::Support {
                    self.failed_call(&failure, latency);
                }
                return None;
            }
        };
        let content_type = answer
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let (checked, json) =
            self.schemas
                .check(self.api, answer.status, content_type, &answer.body);
        if purpose != Purpose::Support {
            self.tls.pass();
            match checked {
                Ok(()) => self.schema.pass(),
                Err(v) => self.schema.fail(format!("answer {}: {v}", answer.status)),
            }
            if purpose != Purpose::Refusal {
                match answer.status {
                    200..=299 => self.status.pass(),
                    s => self.status.fail(format!("answered {s}, not 2xx")),
                }
            }
            self.timed(latency);
        }
        Some(Reply {
            status: answer.status,
            json,
        })
    }

    fn failed_call(&mut self, failure: &CallFailure, latency: Duration) {
        match failure {
            CallFailure::Connect(_) | CallFailure::Tls(_) => self.tls.fail(failure.to_string()),
            CallFailure::Timeout(_) => {
                self.tls.pass();
                self.status.fail(failure.to_string());
                self.timed(latency);
            }
            CallFailure::NotHttp(_) | CallFailure::TooLarge => {
                self.tls.pass();
                self.status.fail(failure.to_string());
            }
        }
    }

    fn timed(&mut self, latency: Duration) {
        self.slowest = self.slowest.max(latency);
        if latency > self.sla {
            self.latency.fail(format!(
                "{} ms, over the SLA of {} ms",
                millis(latency),
                millis(self.sla)
            ));
        } else {
            self.latency.pass();
        }
    }

    /// The API's report: every rule set or tallied, in the rules' order.
    pub(crate) fn finish(mut self) -> ApiReport {
        let answered = self.status.checked;
        let tallies = [
            (
                Rule::Tls,
                self.tls,
                "TLS with the hub's client certificate".to_owned(),
            ),
            (
                Rule::Status,
                self.status,
                format!("{answered} calls answered 2xx"),
            ),
            (
                Rule::Schema,
                self.schema,
                "every answer matches provider.json".to_owned(),
            ),
            (
                Rule::Latency,
                self.latency,
                format!(
                    "slowest {} ms, within the SLA of {} ms",
                    millis(self.slowest),
                    millis(self.sla)
                ),
            ),
        ];
        for (rule, tally, passed) in tallies {
            self.set
                .entry(rule)
                .or_insert_with(|| tally.result(rule, passed));
        }
        let rules: Vec<RuleResult> = self.set.into_values().collect();
        ApiReport {
            api: self.api,
            verdict: Verdict::of(&rules),
            rules,
            calls: self.calls,
        }
    }
}
