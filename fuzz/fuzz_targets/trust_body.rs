//! libFuzzer entry point of the `trust_body` target; the harness is `hub_fuzz::trust_body::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::trust_body::run(data));
