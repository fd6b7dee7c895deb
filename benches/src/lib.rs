//! Load harness of the hub: a contract-aware load generator (closed and open loop, HDR
//! latency, errors by status and problem `code`) and the side-by-side runner that drives
//! the same load through the hub, HAProxy, nginx and the bare sandbox bank.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bankproc;
pub mod build;
pub mod chart;
pub mod engine;
pub mod error;
pub mod fixture;
pub mod manifest;
pub mod peers;
pub mod pgrig;
pub mod procs;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sidecar;
pub mod stats;
pub mod tls;
pub mod workload;

pub use error::{HarnessError, Result};
