//! libFuzzer entry point of the `config` target; the harness is `hub_fuzz::config::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::config::run(data));
