//! libFuzzer entry point of the `route` target; the harness is `hub_fuzz::route::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::route::run(data));
