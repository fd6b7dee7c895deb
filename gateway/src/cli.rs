//! Command-line interface: `gateway run --config FILE [--upgrade]`, `gateway check --config FILE`,
//! `gateway consents convert IN OUT`, `gateway audit verify FILE…` (the development hub is
//! its own binary, `devhub`); `--log-format json|text` and `--version` on every command.
//! Exit codes: 0 ok, 1 runtime failure or a broken journal, 2 invalid configuration,
//! unreadable file or usage.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The Open API exchange hub's gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: hub_log::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub with a configuration file. Signals: SIGHUP reloads the configuration,
    /// SIGUSR1 reopens the audit journal, SIGTERM drains and stops, SIGQUIT hands the
    /// listening sockets to a new process started with `--upgrade` and then drains, SIGINT
    /// stops at once (docs/ops/upgrade.md).
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Binary upgrade: take the listening sockets over from the hub running with this
        /// configuration (send it SIGQUIT within 5 s), and its audit journal once it has
        /// closed it, instead of binding them.
        #[arg(long)]
        upgrade: bool,
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
    /// Audit journal tools.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Checks the journal's hash chain: every line a sealed record linked to the one
    /// before. Give rotated files oldest first (`audit.jsonl.1 audit.jsonl`) to check the
    /// links between them too. Reports the first broken line (exit 1), or the count.
    Verify {
        /// Journal files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
    crate::server::init_logging(cli.log.log_format);
    match cli.command {
        Command::Run { config, upgrade } => match crate::server::run_as(
            &config,
            if upgrade {
                crate::server::Start::Upgrade
            } else {
                crate::server::Start::Fresh
            },
        ) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("gateway: {e}");
                2
            }
        },
        Command::Check { config } => match crate::server::check_report(&config) {
            Ok(checked) => {
                for w in &checked.warnings {
                    println!("warning: {w}");
                }
                println!("{}: ok ({})", config.display(), checked.summary);
                0
            }
            Err(e) => {
                eprintln!("gateway: {e}");
                2
            }
        },
        Command::Audit {
            action: AuditCommand::Verify { files },
        } => verify_journal(&files),
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

/// `gateway audit verify`: each file in turn, the first record of each linked to the last
/// of the one before.
fn verify_journal(files: &[PathBuf]) -> i32 {
    use crate::audit::chain::{self, Verdict};
    let mut prev = None;
    for path in files {
        let verdict = std::fs::File::open(path).and_then(|f| chain::verify(f, prev));
        match verdict {
            Ok(Verdict::Sound { records, last }) => {
                let head = last.as_ref().map_or_else(|| "-".to_string(), chain::hex);
                println!(
                    "{}: OK, {records} records (last hash {head})",
                    path.display()
                );
                prev = last.or(prev);
            }
            Ok(Verdict::Broken { line, why }) => {
                println!("{}:{line}: broken: {why}", path.display());
                return 1;
            }
            Err(e) => {
                eprintln!("gateway: {}: {e}", path.display());
                return 2;
            }
        }
    }
    0
}
