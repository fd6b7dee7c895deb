//! The probes: a [`Prober`] holds what one provider's probes reuse (the pooled mTLS
//! client, the hub's prepared headers, the compiled schemas) and probes one API
//! ([`Prober::probe`]) or all of them ([`Prober::run`]).
//!
//! The account a probe uses is the first of the test consent's allow-list, or without one
//! the first the account list gives. With an allow-list, the probe also looks for an
//! account of the test customer outside it (the account list without `x-hub-accounts`, a
//! support call not held to the rules) and asks for it with `x-hub-accounts`: a provider
//! must refuse it (4xx).

use http::header::HeaderValue;
use http::HeaderMap;
use serde_json::Value;

use crate::client::{millis, Client, SetupError};
use crate::report::{ApiReport, Outcome, Purpose, Rule, SuiteReport};
use crate::run::{
    Carry, HubHeaders, Run, X_HUB_API_USER, X_HUB_CONSENT_ID, X_HUB_CUSTOMER, X_HUB_PERMISSIONS,
};
use crate::schema::{schemas, Schemas};
use crate::target::{Api, Target, TestCustomer};
use crate::transactions;

/// What the probes of one provider reuse: build it once, probe as often as needed.
pub struct Prober {
    client: Client,
    schemas: &'static Schemas,
    headers: HubHeaders,
    allow_list: Option<Vec<String>>,
    customer: TestCustomer,
    sla: std::time::Duration,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("customer", &self.customer)
            .field("sla", &self.sla)
            .finish_non_exhaustive()
    }
}

/// Whether an account id is one the contract allows (§5: `A-Z a-z 0-9 - _ .`, at most 64):
/// only such ids are put into a path.
pub(crate) fn is_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn header(value: &str, what: &'static str) -> Result<HeaderValue, SetupError> {
    HeaderValue::from_str(value)
        .ok()
        .filter(|_| !value.is_empty())
        .ok_or(SetupError::Header(what))
}

fn hub_headers(c: &TestCustomer) -> Result<HubHeaders, SetupError> {
    let mut open = HeaderMap::new();
    let user = c.api_user.digits();
    let user = HeaderValue::from_bytes(&user).map_err(|_| SetupError::Header("api user"))?;
    open.insert(X_HUB_API_USER, user);
    let mut consent = open.clone();
    consent.insert(X_HUB_CONSENT_ID, header(&c.consent_id, "consent id")?);
    consent.insert(X_HUB_CUSTOMER, header(&c.customer, "customer")?);
    consent.insert(
        X_HUB_PERMISSIONS,
        HeaderValue::from_static(c.permissions.comma_list()),
    );
    let accounts = match &c.accounts {
        None => None,
        Some(list) => {
            if list.is_empty() || !list.iter().all(|a| is_account_id(a)) {
                return Err(SetupError::Header("accounts"));
            }
            Some(header(&list.join(","), "accounts")?)
        }
    };
    Ok(HubHeaders {
        open,
        consent,
        accounts,
    })
}

impl Prober {
    /// Prepares the probes of `target`: reads its PEM material, builds the pooled mTLS
    /// client (no connection yet) and the headers.
    pub fn new(target: &Target) -> Result<Prober, SetupError> {
        let schemas = schemas().map_err(SetupError::Schema)?;
        let client = Client::new(
            &target.base_url,
            &target.client_cert_pem,
            &target.client_key_pem,
            &target.ca_pem,
            target.call_timeout,
        )?;
        Ok(Prober {
            client,
            schemas,
            headers: hub_headers(&target.customer)?,
            allow_list: target.customer.accounts.clone(),
            customer: target.customer.clone(),
            sla: target.sla,
        })
    }

    /// Probes every API, one after the other.
    pub async fn run(&self) -> SuiteReport {
        let mut apis = Vec::with_capacity(Api::ALL.len());
        for api in Api::ALL {
            apis.push(self.probe(api).await);
        }
        SuiteReport::new(millis(self.sla), apis)
    }

    /// Probes one API.
    pub async fn probe(&self, api: Api) -> ApiReport {
        let mut run = Run::new(api, &self.client, self.schemas, &self.headers, self.sla);
        match api.permission() {
            Some(p) if !self.customer.permissions.contains(p) => {
                let why = format!("the test consent does not grant {}", p.as_str());
                for rule in [Rule::Tls, Rule::Status, Rule::Schema, Rule::Latency] {
                    run.set(rule, Outcome::Skip, why.clone());
                }
            }
            Some(_) => match api {
                Api::Accounts => self.accounts(&mut run).await,
                Api::Transactions => transactions::probe(self, &mut run).await,
                _ => self.account_route(&mut run, api).await,
            },
            None => {
                let dataset = api.dataset().unwrap_or_default();
                let path = format!("/v1/open-data/{dataset}");
                run.call(Purpose::Probe, &path, Carry::Open).await;
            }
        }
        run.finish()
    }

    /// The account list as the hub asks for it; with an allow-list, only those accounts.
    async fn accounts(&self, run: &mut Run<'_>) {
        let reply = run
            .call(Purpose::Probe, "/v1/accounts", Carry::Consent)
            .await;
        let Some(allowed) = &self.allow_list else {
            run.set(Rule::AllowList, Outcome::Skip, UNRESTRICTED);
            return;
        };
        match reply.as_ref().and_then(|r| r.ok_json()).and_then(listed) {
            None => run.set(Rule::AllowList, Outcome::Skip, "no account list to check"),
            Some(ids) => {
                let outside = ids.iter().filter(|id| !allowed.contains(id)).count();
                if outside == 0 {
                    let detail = format!("{} listed, all within x-hub-accounts", ids.len());
                    run.set(Rule::AllowList, Outcome::Pass, detail);
                } else {
                    let detail = format!(
                        "{outside} of {} listed accounts are outside x-hub-accounts",
                        ids.len()
                    );
                    run.set(Rule::AllowList, Outcome::Fail, detail);
                }
            }
        }
    }

    /// `…/accounts/{id}` or `…/balances`: the probe account, then the refusal.
    async fn account_route(&self, run: &mut Run<'_>, api: Api) {
        let Some(account) = self.probe_account(run).await else {
            return;
        };
        run.call(Purpose::Probe, &account_path(api, &account), Carry::Consent)
            .await;
        self.refusal(run, api).await;
    }

    /// The account to probe (sets the prerequisite rule).
    pub(crate) async fn probe_account(&self, run: &mut Run<'_>) -> Option<String> {
        if let Some(first) = self.allow_list.as_ref().and_then(|l| l.first()) {
            let detail = "the first account of the allow-list";
            run.set(Rule::Prerequisite, Outcome::Pass, detail);
            return Some(first.clone());
        }
        let reply = run
            .call(Purpose::Support, "/v1/accounts", Carry::Unrestricted)
            .await;
        let found = match &reply {
            None => Err("the account list did not answer".to_owned()),
            Some(r) => match r.ok_json().and_then(listed) {
                None => Err(format!(
                    "the account list answered {} without a list",
                    r.status
                )),
                Some(ids) => ids
                    .into_iter()
                    .find(|id| is_account_id(id))
                    .ok_or_else(|| "the account list holds no usable account".to_owned()),
            },
        };
        match found {
            Ok(id) => {
                run.set(
                    Rule::Prerequisite,
                    Outcome::Pass,
                    "the first listed account",
                );
                Some(id)
            }
            Err(why) => {
                run.set(
                    Rule::Prerequisite,
                    Outcome::Fail,
                    format!("{why}: no account to probe"),
                );
                None
            }
        }
    }

    /// With an allow-list: an account of the test customer outside it, asked for with
    /// `x-hub-accounts`, must be refused with a 4xx.
    pub(crate) async fn refusal(&self, run: &mut Run<'_>, api: Api) {
        let Some(allowed) = &self.allow_list else {
            run.set(Rule::AllowList, Outcome::Skip, UNRESTRICTED);
            return;
        };
        let reply = run
            .call(Purpose::Support, "/v1/accounts", Carry::Unrestricted)
            .await;
        let other = reply
            .as_ref()
            .and_then(|r| r.ok_json())
            .and_then(listed)
            .and_then(|ids| {
                ids.into_iter()
                    .find(|id| is_account_id(id) && !allowed.contains(id))
            });
        let Some(other) = other else {
            let why = "no account of the test customer outside the allow-list was found";
            run.set(Rule::AllowList, Outcome::Skip, why);
            return;
        };
        let reply = run
            .call(Purpose::Refusal, &account_path(api, &other), Carry::Consent)
            .await;
        let (outcome, detail) = match reply.map(|r| r.status) {
            Some(s @ 400..=499) => (
                Outcome::Pass,
                format!("an account outside x-hub-accounts was refused ({s})"),
            ),
            Some(s @ 200..=299) => (
                Outcome::Fail,
                format!("an account outside x-hub-accounts was served ({s})"),
            ),
            Some(s) => (
                Outcome::Fail,
                format!("an account outside x-hub-accounts answered {s}, not a 4xx refusal"),
            ),
            None => (
                Outcome::Fail,
                "no answer for an account outside x-hub-accounts".to_owned(),
            ),
        };
        run.set(Rule::AllowList, outcome, detail);
    }
}

const UNRESTRICTED: &str = "the test consent does not restrict accounts";

/// The path of an account API for `account` (an id [`is_account_id`] accepted).
fn account_path(api: Api, account: &str) -> String {
    match api {
        Api::Balances => format!("/v1/accounts/{account}/balances"),
        Api::Transactions => format!("/v1/accounts/{account}/transactions?limit=1"),
        _ => format!("/v1/accounts/{account}"),
    }
}

/// The account ids of an account list (`data[].account_id`), if it is one.
fn listed(v: &Value) -> Option<Vec<String>> {
    v.get("data")?
        .as_array()?
        .iter()
        .map(|a| {
            a.get("account_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

/// Runs the whole suite against `target` once (a [`Prober`] for one run).
pub async fn run_suite(target: &Target) -> Result<SuiteReport, SetupError> {
    Ok(Prober::new(target)?.run().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_the_contracts() {
        assert!(is_account_id("acc-3f9c.0_d"));
        for bad in ["", "a/b", "a?b", "a b", "ä", &"a".repeat(65)] {
            assert!(!is_account_id(bad), "{bad}");
        }
    }

    #[test]
    fn lists_are_read_only_when_every_entry_has_an_id() {
        let v: Value = serde_json::json!({"data": [{"account_id": "a"}, {"account_id": "b"}]});
        assert_eq!(listed(&v), Some(vec!["a".to_owned(), "b".to_owned()]));
        let v: Value = serde_json::json!({"data": [{"account_id": "a"}, {}]});
        assert_eq!(listed(&v), None);
    }
}
