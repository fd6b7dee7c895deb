//! Command-line interface: `gateway run --config FILE`, `gateway check --config FILE`,
//! `gateway consents convert IN OUT` (the development hub is its own binary, `devhub`). Exit codes: 0 ok, 1 runtime
//! failure, 2 invalid configuration or usage.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The Open API exchange hub's gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub with a configuration file.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file (and the files it names) without starting.
    Check {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Consent snapshot tools.
    Consents {
        #[command(subcommand)]
        action: ConsentsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConsentsCommand {
    /// Convert a JSON Lines snapshot into the compact binary `.snap` format.
    Convert {
        /// Input `.jsonl` file.
        input: PathBuf,
        /// Output `.snap` file.
        output: PathBuf,
    },
}

/// Parses arguments and runs; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::server::init_logging();
    match cli.command {
        Command::Run { config } => match crate::server::run(&config) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("gateway: {e}");
                2
            }
        },
        Command::Check { config } => match crate::server::check(&config) {
            Ok(summary) => {
                println!("{}: ok ({summary})", config.display());
                0
            }
            Err(e) => {
                eprintln!("gateway: {e}");
                2
            }
        },
        Command::Consents {
            action: ConsentsCommand::Convert { input, output },
        } => match consent_cache::convert(&input, &output) {
            Ok(n) => {
                println!("{n} consents written to {}", output.display());
                0
            }
            Err(e) => {
                eprintln!("gateway: {e}");
                2
            }
        },
    }
}
