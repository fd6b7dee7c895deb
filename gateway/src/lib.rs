//! The Open API exchange hub's gateway: a Pingora reverse proxy that terminates mTLS,
//! validates access tokens against a hot in-memory consent cache, enforces rate limits
//! and SLAs, and routes API users' calls to provider banks (contract v1).
//!
//! The data plane only: it depends on `policy` (decisions), `consent-cache` (the store)
//! and `feed-wire` (what the trust control plane publishes), never on the control plane's
//! server, its database or the development tools. Public: the CLI, the server entry
//! points, the configuration DTOs (to build a typed configuration) and the TLS helpers;
//! everything else is internal.
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub(crate) mod audit;
pub mod cli;
pub mod config;
pub(crate) mod follower;
pub(crate) mod limits;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod network;
pub(crate) mod plane;
pub(crate) mod proxy;
pub(crate) mod rollup;
pub mod server;
pub(crate) mod snapshot;
pub(crate) mod state;
pub(crate) mod systemd;
pub mod tls;
pub(crate) mod upstream;

#[cfg(test)]
mod ops_tests;
#[cfg(test)]
mod testkit;
