//! The platform's trust sidecar: the consent registry (API users create consents,
//! customers authorise them with a one-time code, anyone entitled revokes them), the
//! OAuth 2.0 authorization server issuing contract §4 tokens bound to the client
//! certificate (RFC 8705), the participant registry for the operator, and the change
//! feed that gateways follow (`GET /v1/snapshot`, `GET /v1/feed`), and the SLA accounting
//! of providers from the rollups gateways push (`POST /v1/rollups`, `GET /v1/admin/sla`).
//!
//! The wire formats gateways consume live in the `feed-wire` crate (re-exported here as
//! [`wire`]); gateways depend on that crate alone. See `trust/README.md` for the API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use feed_wire as wire;

pub mod abuse;
pub mod app;
pub mod authorisation;
pub mod billing_routes;
pub mod breach;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod consents;
pub mod db;
pub mod error;
pub mod feed;
pub mod grade;
pub mod history;
pub mod http;
pub mod keys;
pub mod listener;
pub mod live;
pub mod login;
pub mod metrics;
pub mod notify;
pub mod oidc;
pub mod otp;
pub mod oversight;
pub mod participants;
pub mod prober;
pub mod rollups;
pub mod server;
pub mod sla;
pub mod statements;
pub mod usage;

pub use config::Config;
pub use server::{start, Running, StartError};
