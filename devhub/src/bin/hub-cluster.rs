//! The `hub-cluster` command (`scripts/cluster`): the hub as a cluster of separate
//! processes on loopback (PostgreSQL, two trust replicas, two gateways, the sandbox
//! banks); `hub-cluster bank --spec FILE` is one of its bank processes. Exit codes: 0
//! stopped by a signal, 1 failure, 2 usage.
#![forbid(unsafe_code)]

/// The same allocator as the production binaries.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = <devhub::cluster::cli::ClusterArgs as clap::Parser>::parse();
    gateway::server::init_logging(args.log.log_format);
    devhub::cluster::cli::main(args)
}
