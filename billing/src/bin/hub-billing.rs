//! `hub-billing`: checks a tariff file, reconciles the trust sidecar's usage answer with
//! usage recomputed from the gateways' audit journals, and prices a month straight from
//! journals (the independent computation an auditor or a test uses). `docs/billing.md`.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use billing::journal::{JournalUsage, Journals};
use billing::tariff::DEFAULT_TIME_ZONE;
use billing::{period_rows, reconcile_periods, statements, Date, Tariff, UsageReport};
use clap::{Parser, Subcommand, ValueEnum};
use jiff::tz::TimeZone;

#[derive(Parser)]
#[command(
    name = "hub-billing",
    version,
    about = "Tariffs, statements and usage reconciliation of the Open API exchange hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a tariff file (exit 1 with file:line: field: message when it is broken).
    CheckTariff {
        /// The tariff file.
        file: PathBuf,
    },
    /// Recomputes a period's usage from audit journals and compares it with the trust
    /// sidecar's answer (`GET /v1/admin/usage`); prints every difference, exit 1 if any.
    Reconcile {
        /// An audit journal (repeat for every gateway and rotated file).
        #[arg(long = "journal", required = true)]
        journals: Vec<PathBuf>,
        /// First local day.
        #[arg(long)]
        from: Date,
        /// Last local day (inclusive).
        #[arg(long)]
        to: Date,
        /// The usage answer (`{"rows": [...]}`) to check.
        #[arg(long)]
        usage: PathBuf,
        /// The tariff (classes and time zone); default classes and Asia/Almaty without.
        #[arg(long)]
        tariff: Option<PathBuf>,
    },
    /// Prices a calendar month from audit journals: every participant's statement.
    Statement {
        /// The tariff file.
        #[arg(long)]
        tariff: PathBuf,
        /// An audit journal (repeat for every gateway and rotated file).
        #[arg(long = "journal", required = true)]
        journals: Vec<PathBuf>,
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: String,
        /// A JSON object mapping consent ids to customer keys (for the free threshold per
        /// customer); without it each consent counts as its own customer.
        #[arg(long)]
        customers: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Csv,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckTariff { file } => Tariff::load(&file)
            .map(|t| {
                println!(
                    "{}: ok ({} versions, time zone {})",
                    file.display(),
                    t.versions().len(),
                    t.time_zone_name()
                );
                true
            })
            .map_err(|e| e.to_string()),
        Command::Reconcile {
            journals,
            from,
            to,
            usage,
            tariff,
        } => reconcile(&journals, from, to, &usage, tariff.as_deref()),
        Command::Statement {
            tariff,
            journals,
            month,
            customers,
            format,
        } => statement(&tariff, &journals, &month, customers.as_deref(), format),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("hub-billing: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads every journal's usage of `from..=to`; warns about unreadable lines and gaps.
fn read_journals(
    paths: &[PathBuf],
    from: Date,
    to: Date,
    tz: &TimeZone,
) -> Result<JournalUsage, String> {
    let mut j = Journals::new(from, to, tz.clone());
    for p in paths {
        let f = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        j.read(BufReader::new(f))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let out = j.finish();
    for (n, line) in &out.unreadable {
        eprintln!(
            "warning: {}: line {line} is not a journal record (cut short?); skipped",
            paths[n - 1].display()
        );
    }
    if out.dropped > 0 {
        eprintln!("warning: the journals mark {} records the gateways could not journal (neither journalled nor counted)", out.dropped);
    }
    Ok(out)
}

fn load_tariff(path: Option<&Path>) -> Result<(Option<Tariff>, TimeZone), String> {
    match path {
        Some(p) => {
            let t = Tariff::load(p).map_err(|e| e.to_string())?;
            let tz = t.time_zone().clone();
            Ok((Some(t), tz))
        }
        None => Ok((
            None,
            TimeZone::get(DEFAULT_TIME_ZONE).map_err(|e| e.to_string())?,
        )),
    }
}

fn reconcile(
    journals: &[PathBuf],
    from: Date,
    to: Date,
    usage: &Path,
    tariff: Option<&Path>,
) -> Result<bool, String> {
    if to < from {
        return Err(format!("--to {to} is before --from {from}"));
    }
    let (tariff, tz) = load_tariff(tariff)?;
    let text = std::fs::read_to_string(usage).map_err(|e| format!("{}: {e}", usage.display()))?;
    let reported: UsageReport =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", usage.display()))?;
    // An answer for another period or time zone would show differences that are none.
    let period = (reported.from.unwrap_or(from), reported.to.unwrap_or(to));
    if period != (from, to) {
        return Err(format!(
            "{}: the answer is for {} to {}, not --from {from} --to {to}",
            usage.display(),
            period.0,
            period.1
        ));
    }
    if let Some(zone) = reported.time_zone.as_deref() {
        if Some(zone) != tz.iana_name() {
            return Err(format!(
                "{}: the answer's days are of {zone}, the tariff's of {}",
                usage.display(),
                tz.iana_name().unwrap_or("a fixed offset")
            ));
        }
    }
    let recomputed = read_journals(journals, from, to, &tz)?;
    let expected = period_rows(&recomputed.usage, tariff.as_ref()).map_err(|e| e.to_string())?;
    let differences = reconcile_periods(&expected, &reported.rows);
    for d in &differences {
        println!("{d}");
    }
    println!(
        "{} journal records from {from} to {to}; {} rows expected, {} reported; {} differences",
        recomputed.records,
        expected.len(),
        reported.rows.len(),
        differences.len()
    );
    Ok(differences.is_empty())
}

fn parse_month(month: &str) -> Result<(i16, i8), String> {
    let bad = || format!("--month {month:?} is not YYYY-MM");
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    Ok((y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?))
}

fn statement(
    tariff: &Path,
    journals: &[PathBuf],
    month: &str,
    customers: Option<&Path>,
    format: Format,
) -> Result<bool, String> {
    let (year, m) = parse_month(month)?;
    let tariff = Tariff::load(tariff).map_err(|e| e.to_string())?;
    let first = Date::new(year, m, 1).map_err(|_| format!("--month {month:?} is not a month"))?;
    let usage = read_journals(journals, first, first.last_of_month(), tariff.time_zone())?;
    let map: HashMap<String, String> = match customers {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => HashMap::new(),
    };
    let customers: Vec<_> = usage
        .consents
        .iter()
        .map(|c| {
            c.for_customer(
                map.get(&c.consent)
                    .cloned()
                    .unwrap_or_else(|| c.consent.clone()),
            )
        })
        .collect();
    let all = statements(&tariff, year, m, &usage.usage, &customers).map_err(|e| e.to_string())?;
    let out = match format {
        Format::Json => serde_json::to_string_pretty(&all).map_err(|e| e.to_string())? + "\n",
        Format::Csv => all
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let csv = s.to_csv();
                // One header for the whole file.
                if i == 0 {
                    csv
                } else {
                    csv.split_once('\n')
                        .map_or(String::new(), |(_, rest)| rest.to_string())
                }
            })
            .collect(),
        Format::Text => all
            .iter()
            .map(|s| s.to_text())
            .collect::<Vec<_>>()
            .join("\n\u{c}\n"),
    };
    print!("{out}");
    Ok(true)
}
