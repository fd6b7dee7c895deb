//! The Open API exchange hub's gateway: a Pingora reverse proxy that terminates mTLS,
//! validates access tokens against a hot in-memory consent cache, enforces rate limits
//! and SLAs, and routes API users' calls to provider banks (contract v1).
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod follower;
pub mod metrics;
pub mod network;
pub mod plane;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod testkit;
