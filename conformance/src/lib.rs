//! The provider conformance suite (issue 14): calls a provider bank exactly as the hub does
//! (contract §3: the upstream paths, the hub's mTLS client identity, `x-fapi-interaction-id`
//! and the `x-hub-*` headers of a designated test customer and test consent) and checks
//! every API of the contract: TLS and status, the provider schema
//! (`docs/openapi/provider.json`), the semantic rules (transaction pagination, `from`/`to`,
//! the account allow-list) and the latency of each call against the provider's SLA.
//!
//! ```no_run
//! # async fn probe(target: conformance::Target) -> Result<(), conformance::SetupError> {
//! // Build once per provider (the TLS identity, the connection pool, the headers)…
//! let prober = conformance::Prober::new(&target)?;
//! // …then probe API by API, or everything at once.
//! let balances = prober.probe(conformance::Api::Balances).await;
//! let all = prober.run().await;
//! let stored = serde_json::to_string(&all).unwrap_or_default();
//! # let _ = (balances, stored); Ok(()) }
//! ```
//!
//! The library never prints and never logs; every call is bounded by the target's call
//! timeout, and reports carry no customer data (see [`report`]). The `hub-conformance`
//! binary is the provider's self-test over this library (docs/conformance.md).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod probe;
pub mod report;
mod run;
pub mod schema;
mod target;
mod transactions;

pub use client::{CallFailure, SetupError, MAX_BODY_BYTES};
pub use probe::{run_suite, Prober};
pub use report::{ApiReport, CallRecord, Outcome, Purpose, Rule, RuleResult, SuiteReport, Verdict};
pub use target::{Api, Target, TestCustomer, MIN_CALL_TIMEOUT};
pub use transactions::{FIRST_LIMIT, MAX_PAGES, WALK_LIMIT};

/// The permission types of a test consent (re-exported so callers need not name the
/// consent-cache crate).
pub use consent_cache::{Bin, Permission, Permissions};
