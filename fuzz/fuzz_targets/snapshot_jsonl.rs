//! libFuzzer entry point of the `snapshot_jsonl` target; the harness is `hub_fuzz::snapshot::run_jsonl`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hub_fuzz::snapshot::run_jsonl(data));
