//! `hub-conformance`: the provider's self-test before going live (issue 14 point 5). Runs
//! the conformance suite against a provider's own API with the client certificate the
//! sandbox gave it and a test customer, prints a report per API and rule (a table, or
//! JSON with `--json`) and exits 1 when any rule fails, 2 when it cannot run at all.
//! docs/conformance.md describes every rule.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use conformance::{
    Api, ApiReport, Bin, Outcome, Permission, Permissions, Prober, SuiteReport, Target,
    TestCustomer, Verdict,
};

#[derive(Parser)]
#[command(
    name = "hub-conformance",
    version,
    about = "Checks a provider bank's API against the hub's contract, the way the hub calls it"
)]
struct Cli {
    /// The provider's base URL (what the hub forwards to), e.g. https://bank.example:8443.
    #[arg(long)]
    base_url: String,
    /// The client certificate to call with (PEM; the one the sandbox issued).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// The CA bundle that verifies the provider's server certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The API user to call for (`x-hub-api-user`, a 12-digit BIN).
    #[arg(long)]
    api_user: String,
    /// The test consent's id (`x-hub-consent-id`).
    #[arg(long)]
    consent_id: String,
    /// The test customer's id (`x-hub-customer`).
    #[arg(long)]
    customer: String,
    /// What the test consent grants (`x-hub-permissions`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "accounts,balances,transactions"
    )]
    permissions: Vec<String>,
    /// The accounts the test consent is restricted to (`x-hub-accounts`), if any.
    #[arg(long, value_delimiter = ',')]
    accounts: Option<Vec<String>>,
    /// The provider's SLA in milliseconds: a slower call fails the latency rule.
    #[arg(long, default_value_t = 500)]
    sla_ms: u64,
    /// Only these APIs (comma list of accounts, account, balances, transactions,
    /// exchange-rates, branches, atms, products); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn permissions(names: &[String]) -> Result<Permissions, String> {
    let mut set = Permissions::EMPTY;
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        match Permission::parse(name) {
            Some(p) => set.insert(p),
            None => return Err(format!("--permissions: unknown permission {name:?}")),
        }
    }
    Ok(set)
}

fn apis(only: Option<&[String]>) -> Result<Vec<Api>, String> {
    match only {
        None => Ok(Api::ALL.to_vec()),
        Some(names) => names
            .iter()
            .map(|n| Api::parse(n.trim()).ok_or_else(|| format!("--only: unknown API {n:?}")))
            .collect(),
    }
}

fn target(cli: &Cli) -> Result<Target, String> {
    let customer = TestCustomer {
        api_user: Bin::parse(&cli.api_user).map_err(|e| format!("--api-user: {e}"))?,
        consent_id: cli.consent_id.clone(),
        customer: cli.customer.clone(),
        permissions: permissions(&cli.permissions)?,
        accounts: cli.accounts.clone(),
    };
    Ok(Target::new(
        cli.base_url.clone(),
        read(&cli.cert)?,
        read(&cli.key)?,
        read(&cli.ca)?,
        Duration::from_millis(cli.sla_ms),
        customer,
    ))
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "FAIL",
        Outcome::Skip => "skip",
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL",
        Verdict::Skipped => "skipped",
    }
}

fn print_api(a: &ApiReport) {
    let slowest = a.calls.iter().map(|c| c.latency_us).max().unwrap_or(0);
    println!(
        "{:<24} {:<7} {} calls, slowest {:.1} ms",
        a.api.as_str(),
        verdict(a.verdict),
        a.calls.len(),
        slowest as f64 / 1000.0
    );
    for r in &a.rules {
        println!(
            "  {:<13} {:<5} {}",
            r.rule.as_str(),
            outcome(r.outcome),
            r.detail
        );
    }
}

fn print_table(report: &SuiteReport) {
    for a in &report.apis {
        print_api(a);
    }
    println!(
        "conformance: {} (SLA {} ms)",
        verdict(report.verdict),
        report.sla_ms
    );
}

async fn run(cli: &Cli) -> Result<SuiteReport, String> {
    let target = target(cli)?;
    let only = apis(cli.only.as_deref())?;
    let prober = Prober::new(&target).map_err(|e| e.to_string())?;
    let mut reports = Vec::with_capacity(only.len());
    for api in only {
        reports.push(prober.probe(api).await);
    }
    let sla_ms = u64::try_from(target.sla.as_millis()).unwrap_or(u64::MAX);
    Ok(SuiteReport::new(sla_ms, reports))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub-conformance: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match rt.block_on(run(&cli)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hub-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("hub-conformance: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print_table(&report);
    }
    // Nothing checked is no proof of conformance either.
    match report.verdict {
        Verdict::Pass => ExitCode::SUCCESS,
        Verdict::Fail | Verdict::Skipped => ExitCode::FAILURE,
    }
}
