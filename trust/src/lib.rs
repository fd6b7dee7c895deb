//! The platform's trust sidecar: the consent registry (API users create consents,
//! customers authorise them with a one-time code, anyone entitled revokes them), the
//! OAuth 2.0 authorization server issuing contract §4 tokens bound to the client
//! certificate (RFC 8705), the participant registry for the operator, and the change
//! feed that gateways follow (`GET /v1/snapshot`, `GET /v1/feed`).
//!
//! The wire formats gateways consume are in [`wire`], which is all that builds
//! without the default `server` feature. See `trust/README.md` for the API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod wire;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod authorisation;
#[cfg(feature = "server")]
pub mod clock;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod consents;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod feed;
#[cfg(feature = "server")]
pub mod history;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod notify;
#[cfg(feature = "server")]
pub mod otp;
#[cfg(feature = "server")]
pub mod participants;
#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "server")]
pub use config::Config;
#[cfg(feature = "server")]
pub use server::{start, Running, StartError};
