//! libFuzzer entry point of the `feed_line` target; the harness is `hub_fuzz::feed::run`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::feed::run(data));
