//! The `devhub` command: the development hub (`scripts/demo`). Exit codes: 0 ok,
//! 1 failure, 2 usage.
#![forbid(unsafe_code)]

/// The same allocator as the production `gateway` binary, so the demo's hub behaves (and
/// measures) like the real one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = <devhub::DemoArgs as clap::Parser>::parse();
    gateway::server::init_logging(args.log.log_format);
    if let Err(e) = devhub::run(args) {
        eprintln!("devhub: {e}");
        std::process::exit(1);
    }
}
