//! libFuzzer entry point of the `token` target; the harness is `hub_fuzz::token::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::token::run(data));
