//! The `gateway` command: `run`, `check`, `demo`, `consents convert`.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(gateway::cli::main());
}
