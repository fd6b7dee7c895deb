//! What a probe finds, as data the scheduler can store as JSON and the self-test can print:
//! per API the rules' results, every call made with its status and latency, and a verdict.
//!
//! Details are fixed sentences with counts, statuses, durations and schema paths; they
//! never carry a customer id, an account id or number, a body or a secret.

use serde::{Deserialize, Serialize};

use crate::client::CallFailure;
use crate::target::Api;

/// A rule of the suite (its id in reports: kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// What the probe needs before it can call the API (an account of the test customer).
    Prerequisite,
    /// Every connection completed a TLS handshake with the hub's client certificate.
    Tls,
    /// Every call for the test customer got a complete HTTP answer with a 2xx status.
    Status,
    /// Every answer matches the provider schema for its status.
    Schema,
    /// Every call answered within the provider's SLA.
    Latency,
    /// Transaction pages: cursors end within the bound, no transaction twice, no page
    /// larger than asked, the count matches `meta.total`.
    Pagination,
    /// Every transaction of a `from`/`to` query is booked within the range.
    DateRange,
    /// With `x-hub-accounts`: only those accounts are listed, another one is refused (4xx).
    AllowList,
}

impl Rule {
    /// The id used in reports (`date-range`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::Prerequisite => "prerequisite",
            Rule::Tls => "tls",
            Rule::Status => "status",
            Rule::Schema => "schema",
            Rule::Latency => "latency",
            Rule::Pagination => "pagination",
            Rule::DateRange => "date-range",
            Rule::AllowList => "allow-list",
        }
    }
}

/// A rule's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Checked and kept.
    Pass,
    /// Checked and broken.
    Fail,
    /// Not checked (what it needs was not there: the detail says why).
    Skip,
}

/// One rule's result with a detail that carries no customer data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleResult {
    /// Which rule.
    pub rule: Rule,
    /// Its result.
    pub outcome: Outcome,
    /// Why (empty when it passed with nothing to add).
    pub detail: String,
}

/// The overall result of an API's probe, or of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No rule failed and at least one passed.
    Pass,
    /// At least one rule failed.
    Fail,
    /// Nothing was checked (e.g. the test consent does not grant the API's permission).
    Skipped,
}

impl Verdict {
    /// The verdict of a list of rule results.
    pub fn of(rules: &[RuleResult]) -> Verdict {
        if rules.iter().any(|r| r.outcome == Outcome::Fail) {
            Verdict::Fail
        } else if rules.iter().any(|r| r.outcome == Outcome::Pass) {
            Verdict::Pass
        } else {
            Verdict::Skipped
        }
    }
}

/// What a call was for (fixed labels; never the path with its ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// The API's own call for the test customer.
    Probe,
    /// A further transaction page (following `links.next`).
    NextPage,
    /// A transaction query with `from`/`to`.
    DateRange,
    /// The account list without `x-hub-accounts`, to find an account to probe or one
    /// outside the allow-list (not held to the rules: it is not what the API is).
    Support,
    /// An account outside the allow-list, which must be refused.
    Refusal,
}

/// One call the probe made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// What it was for.
    pub purpose: Purpose,
    /// The answer's status, when an HTTP answer came.
    pub status: Option<u16>,
    /// Time to the answer's last byte (or to the failure), in microseconds.
    pub latency_us: u64,
    /// How it failed before a complete answer, if it did.
    pub failure: Option<CallFailure>,
}

/// One API's probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiReport {
    /// Which API.
    pub api: Api,
    /// Pass, fail or skipped.
    pub verdict: Verdict,
    /// Every rule of the suite, in a fixed order.
    pub rules: Vec<RuleResult>,
    /// Every call made, in order.
    pub calls: Vec<CallRecord>,
}

impl ApiReport {
    /// The result of `rule`.
    pub fn rule(&self, rule: Rule) -> Option<&RuleResult> {
        self.rules.iter().find(|r| r.rule == rule)
    }

    /// The rules that failed.
    pub fn failed(&self) -> impl Iterator<Item = Rule> + '_ {
        self.rules
            .iter()
            .filter(|r| r.outcome == Outcome::Fail)
            .map(|r| r.rule)
    }
}

/// The whole suite's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteReport {
    /// The SLA the latencies were held to, in milliseconds.
    pub sla_ms: u64,
    /// Pass when every API passed or was skipped with none failing.
    pub verdict: Verdict,
    /// One report per API, in [`Api::ALL`] order.
    pub apis: Vec<ApiReport>,
}

impl SuiteReport {
    /// Builds the report and its verdict.
    pub fn new(sla_ms: u64, apis: Vec<ApiReport>) -> SuiteReport {
        let verdict = if apis.iter().any(|a| a.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if apis.iter().any(|a| a.verdict == Verdict::Pass) {
            Verdict::Pass
        } else {
            Verdict::Skipped
        };
        SuiteReport {
            sla_ms,
            verdict,
            apis,
        }
    }

    /// The report of `api`.
    pub fn api(&self, api: Api) -> Option<&ApiReport> {
        self.apis.iter().find(|a| a.api == api)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(rule: Rule, outcome: Outcome) -> RuleResult {
        RuleResult {
            rule,
            outcome,
            detail: String::new(),
        }
    }

    #[test]
    fn verdicts() {
        use Outcome::*;
        assert_eq!(
            Verdict::of(&[r(Rule::Tls, Pass), r(Rule::Schema, Skip)]),
            Verdict::Pass
        );
        assert_eq!(
            Verdict::of(&[r(Rule::Tls, Pass), r(Rule::Schema, Fail)]),
            Verdict::Fail
        );
        assert_eq!(Verdict::of(&[r(Rule::Tls, Skip)]), Verdict::Skipped);
    }

    #[test]
    fn rule_ids_match_serde() {
        for rule in [Rule::DateRange, Rule::AllowList, Rule::Tls] {
            let json = serde_json::to_string(&rule).expect("serialises");
            assert_eq!(json, format!("\"{}\"", rule.as_str()));
        }
    }
}
