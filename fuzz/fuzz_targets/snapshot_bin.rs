//! libFuzzer entry point of the `snapshot_bin` target; the harness is `hub_fuzz::snapshot::run_bin`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::snapshot::run_bin(data));
