//! The `gateway` command: `run`, `check`, `consents convert`.
#![forbid(unsafe_code)]

/// mimalloc instead of glibc malloc: a profile of the full policy path under load showed
/// about 12% of the hub's CPU in glibc's allocator (arena locks, consolidation). Chosen
/// here, by the binary, not imposed by the library on every dependent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(gateway::cli::main());
}
