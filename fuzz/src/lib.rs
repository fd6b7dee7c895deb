//! Harnesses for the hub's outside-facing parsers, one module per fuzz target.
//!
//! Each `run(data)` feeds one input to the real parser through its public API and
//! asserts what must hold whatever the input: no panic, and where a parse succeeds, the
//! properties its documentation promises (round trips, no forbidden bytes forwarded).
//! A panic or failed assertion is a finding. The libFuzzer entry points in
//! `fuzz_targets/` only call these, so a finding replays as a plain function call.
#![forbid(unsafe_code)]

pub mod config;
pub mod feed;
pub mod route;
pub mod scratch;
pub mod snapshot;
pub mod token;
pub mod trust_body;
