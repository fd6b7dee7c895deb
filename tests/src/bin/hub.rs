//! The hub under test: the same entry point as the `gateway` binary, built inside the e2e
//! package so integration tests can spawn it by `CARGO_BIN_EXE_hub-under-test`.

/// As in the `gateway` binary's `main.rs`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(gateway::cli::main())
}
