//! The sidecar's configuration file (`trust serve --config FILE`, `trust check --config
//! FILE`; `conf/trust.example.toml`): TOML read strictly, then compiled into the
//! settings it fills. Today it holds `[sla]` (`docs/sla.md`) and `[oversight]` (the
//! sustained SLA breaches, `docs/oversight.md`); the command-line flags keep everything
//! else. Every error names the file, the line and the field.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use consent_cache::Bin;
use jiff::tz::TimeZone;
use serde::Deserialize;
use toml::Spanned;

use crate::breach::BreachSettings;
use crate::sla::{SlaSettings, Targets};
use crate::statements::BillingSettings;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The tariff file `[billing]` names is invalid (its own file, line and field).
    #[error("{0}")]
    Tariff(#[from] billing::TariffError),
    /// The file or a value in it is invalid.
    #[error("{}:{line}: {field}: {message}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The field (dotted path).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    sla: Option<SlaFile>,
    #[serde(default)]
    oversight: Option<OversightFile>,
    billing: Option<BillingFile>,
}

/// `[billing]` (`docs/billing.md`): statements from a tariff file; absent = billing off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BillingFile {
    /// The tariff file, relative to this file's folder when not absolute.
    tariff: Spanned<String>,
    /// Minutes after a month's close before its statements are issued (late rollups).
    close_grace_minutes: Option<Spanned<u64>>,
}

/// `[oversight]`: when a sustained SLA breach delists a provider API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OversightFile {
    breach_evaluation: Option<bool>,
    evaluate_every_ms: Option<Spanned<u64>>,
    window_minutes: Option<Spanned<u32>>,
    settle_secs: Option<Spanned<u32>>,
    min_calls: Option<Spanned<u64>>,
    min_live_sampled: Option<Spanned<u64>>,
    live_violations_percent: Option<Spanned<f64>>,
    sustained_percent: Option<Spanned<u32>>,
}

/// `[sla]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlaFile {
    time_zone: Option<Spanned<String>>,
    availability_percent: Option<Spanned<f64>>,
    bank_p95_ms: Option<Spanned<u64>>,
    #[serde(default)]
    providers: Vec<ProviderFile>,
}

/// `[[sla.providers]]`: one provider's targets (the others keep `[sla]`'s).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderFile {
    bin: Spanned<String>,
    availability_percent: Option<Spanned<f64>>,
    bank_p95_ms: Option<Spanned<u64>>,
}

/// What the file configures.
#[derive(Debug, Clone, Default)]
pub struct FileSettings {
    /// `[sla]` (the defaults when absent).
    pub sla: SlaSettings,
    /// `[oversight]` (the defaults when absent).
    pub breach: BreachSettings,
    /// `[billing]` (off when absent).
    pub billing: Option<BillingSettings>,
}

/// The file's text, for line numbers.
struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid<T>(&self, at: &Spanned<T>, field: &str, message: impl Into<String>) -> FileError {
        FileError::Invalid {
            file: self.path.to_owned(),
            line: self.line_of(at.span().start),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Reads and compiles a configuration file.
pub fn load(path: &Path) -> Result<FileSettings, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Compiles the text of a configuration file (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<FileSettings, FileError> {
    let src = Source { path, text };
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let line = src.line_of(e.span().map_or(0, |s| s.start));
        let field = text
            .lines()
            .nth(line.saturating_sub(1))
            .and_then(|l| l.split('=').next())
            .map(|k| k.trim().trim_matches(['[', ']']).to_owned())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "-".into());
        FileError::Invalid {
            file: path.to_owned(),
            line,
            field,
            message: e.message().trim().to_owned(),
        }
    })?;
    let sla = match file.sla {
        Some(s) => compile_sla(&src, s)?,
        None => SlaSettings::default(),
    };
    let breach = match file.oversight {
        Some(o) => compile_oversight(&src, o)?,
        None => BreachSettings::default(),
    };
    let billing = file.billing.map(|b| compile_billing(&src, b)).transpose()?;
    Ok(FileSettings {
        sla,
        breach,
        billing,
    })
}

/// `value` when within `range`, else an error naming `oversight.{name}`.
fn within<T: Copy + PartialOrd + std::fmt::Display>(
    src: &Source<'_>,
    value: Option<&Spanned<T>>,
    name: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, FileError> {
    match value {
        Some(v) if !range.contains(v.get_ref()) => Err(src.invalid(
            v,
            &format!("oversight.{name}"),
            format!("from {} to {}", range.start(), range.end()),
        )),
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    }
}

fn compile_oversight(src: &Source<'_>, o: OversightFile) -> Result<BreachSettings, FileError> {
    let mut out = BreachSettings::default();
    out.enabled = o.breach_evaluation.unwrap_or(out.enabled);
    if let Some(ms) = within(
        src,
        o.evaluate_every_ms.as_ref(),
        "evaluate_every_ms",
        100..=86_400_000,
    )? {
        out.every = std::time::Duration::from_millis(ms);
    }
    let w = within(src, o.window_minutes.as_ref(), "window_minutes", 1..=1440)?;
    out.window_minutes = w.unwrap_or(out.window_minutes);
    let settle = within(src, o.settle_secs.as_ref(), "settle_secs", 0..=3600)?;
    out.settle_secs = settle.unwrap_or(out.settle_secs);
    let calls = within(
        src,
        o.min_calls.as_ref(),
        "min_calls",
        1..=u64::from(u32::MAX),
    )?;
    out.min_calls = calls.unwrap_or(out.min_calls);
    let sampled = within(
        src,
        o.min_live_sampled.as_ref(),
        "min_live_sampled",
        1..=u64::from(u32::MAX),
    )?;
    out.min_live_sampled = sampled.unwrap_or(out.min_live_sampled);
    let share = within(
        src,
        o.sustained_percent.as_ref(),
        "sustained_percent",
        1..=100,
    )?;
    out.sustained_percent = share.unwrap_or(out.sustained_percent);
    if let Some(p) = &o.live_violations_percent {
        out.live_violations_ppm = ppm_of_percent(src, p, "oversight.live_violations_percent")?;
    }
    Ok(out)
}

/// A percentage above 0 and at most 100 with at most four decimals, in millionths.
fn ppm_of_percent(src: &Source<'_>, a: &Spanned<f64>, field: &str) -> Result<u32, FileError> {
    let v = *a.get_ref();
    let ppm = v * 10_000.0;
    let exact = (ppm - ppm.round()).abs() < 1e-6;
    if !(v.is_finite() && v > 0.0 && v <= 100.0 && exact) {
        return Err(src.invalid(
            a,
            field,
            "a percentage above 0 and at most 100, at most four decimals",
        ));
    }
    // In range and whole by the checks above.
    Ok(ppm.round() as u32)
}

/// Longest accepted grace after a month's close: a day.
const MAX_GRACE_MINUTES: u64 = 24 * 60;

fn compile_billing(src: &Source<'_>, b: BillingFile) -> Result<BillingSettings, FileError> {
    if b.tariff.get_ref().trim().is_empty() {
        return Err(src.invalid(&b.tariff, "billing.tariff", "a file path"));
    }
    let path = src
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join(b.tariff.get_ref());
    let grace = match &b.close_grace_minutes {
        Some(g) if *g.get_ref() > MAX_GRACE_MINUTES => {
            return Err(src.invalid(
                g,
                "billing.close_grace_minutes",
                "0 to 1440 (a day at most)",
            ))
        }
        Some(g) => *g.get_ref(),
        None => crate::statements::DEFAULT_GRACE_MINUTES,
    };
    let tariff = billing::Tariff::load(&path)?;
    Ok(BillingSettings {
        tariff: std::sync::Arc::new(tariff),
        tariff_path: path,
        close_grace_secs: i64::try_from(grace * 60).unwrap_or(i64::MAX),
    })
}

fn compile_sla(src: &Source<'_>, s: SlaFile) -> Result<SlaSettings, FileError> {
    let mut out = SlaSettings::default();
    if let Some(name) = &s.time_zone {
        out.time_zone = TimeZone::get(name.get_ref()).map_err(|_| {
            src.invalid(
                name,
                "sla.time_zone",
                "not a time zone of the tz database (e.g. \"Asia/Almaty\", \"UTC\")",
            )
        })?;
        out.time_zone_name = name.get_ref().clone();
    }
    out.default = targets(
        src,
        Targets::default(),
        s.availability_percent.as_ref(),
        s.bank_p95_ms.as_ref(),
        "sla",
    )?;
    let mut providers = HashMap::new();
    for (i, p) in s.providers.iter().enumerate() {
        let field = format!("sla.providers[{i}]");
        let bin = Bin::parse(p.bin.get_ref()).map_err(|_| {
            src.invalid(&p.bin, &format!("{field}.bin"), "a BIN: exactly 12 digits")
        })?;
        let t = targets(
            src,
            out.default,
            p.availability_percent.as_ref(),
            p.bank_p95_ms.as_ref(),
            &field,
        )?;
        if providers.insert(bin, t).is_some() {
            return Err(src.invalid(
                &p.bin,
                &format!("{field}.bin"),
                "this provider already has an entry",
            ));
        }
    }
    out.providers = providers;
    Ok(out)
}

/// Targets from `base` with the values given; the availability in (0, 100] with at most
/// four decimals, the p95 one of the histograms' bucket bounds.
fn targets(
    src: &Source<'_>,
    base: Targets,
    availability: Option<&Spanned<f64>>,
    p95: Option<&Spanned<u64>>,
    at: &str,
) -> Result<Targets, FileError> {
    let mut t = base;
    if let Some(a) = availability {
        t.availability_ppm = ppm_of_percent(src, a, &format!("{at}.availability_percent"))?;
    }
    if let Some(ms) = p95 {
        if !Targets::is_bucket_bound_ms(*ms.get_ref()) {
            return Err(src.invalid(
                ms,
                &format!("{at}.bank_p95_ms"),
                "one of the latency buckets' bounds (1, 2, 5, 10, 20, 50, 100, 150, 200, 250, \
                 300, 500, 750, 1000, 2000, 5000, 10000, 30000 ms): a quantile is known to \
                 its bucket only",
            ));
        }
        t.bank_p95_ms = *ms.get_ref();
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (usize, String, String) {
        match parse(Path::new("trust.toml"), text) {
            Err(FileError::Invalid {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let s = parse(Path::new("t.toml"), "").unwrap().sla;
        assert_eq!(s.default, Targets::default());
        assert_eq!(s.time_zone_name, "UTC");
        let s = parse(
            Path::new("t.toml"),
            "[sla]\ntime_zone = \"Asia/Almaty\"\navailability_percent = 99.9\n\n\
             [[sla.providers]]\nbin = \"990340000011\"\nbank_p95_ms = 250\n",
        )
        .unwrap()
        .sla;
        assert_eq!(s.default.availability_ppm, 999_000);
        let bank = Bin::parse("990340000011").unwrap();
        assert_eq!(
            s.targets(bank),
            Targets {
                availability_ppm: 999_000,
                bank_p95_ms: 250
            }
        );
        assert_eq!(
            s.targets(Bin::parse("990340000012").unwrap()).bank_p95_ms,
            500
        );
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let (line, field, _) = err("[sla]\n\ntime_zone = \"Mars/Olympus\"\n");
        assert_eq!((line, field.as_str()), (3, "sla.time_zone"));
        let (line, field, _) = err("[sla]\navailability_percent = 100.5\n");
        assert_eq!((line, field.as_str()), (2, "sla.availability_percent"));
        let (line, field, m) = err(
            "[sla]\n[[sla.providers]]\nbin = \"990340000011\"\n\n[[sla.providers]]\nbin = \"990340000011\"\nbank_p95_ms = 400\n",
        );
        assert_eq!(
            (line, field.as_str()),
            (7, "sla.providers[1].bank_p95_ms"),
            "{m}"
        );
        let (line, field, _) = err("[sla]\n[[sla.providers]]\nbin = \"99034\"\n");
        assert_eq!((line, field.as_str()), (3, "sla.providers[0].bin"));
        let (line, field, m) = err("[sla]\nbank_p95 = 500\n");
        assert_eq!((line, field.as_str()), (2, "bank_p95"), "{m}");
        let (line, _, m) = err(
            "[sla]\n[[sla.providers]]\nbin = \"990340000011\"\n[[sla.providers]]\nbin = \"990340000011\"\n",
        );
        assert_eq!(line, 5, "{m}");
    }

    #[test]
    fn oversight_defaults_overrides_and_errors() {
        let s = parse(Path::new("t.toml"), "").unwrap().breach;
        assert_eq!(s, BreachSettings::default());
        let s = parse(
            Path::new("t.toml"),
            "[oversight]\nevaluate_every_ms = 500\nwindow_minutes = 5\nmin_calls = 10\n\
             live_violations_percent = 2.5\nsustained_percent = 60\nsettle_secs = 0\n",
        )
        .unwrap()
        .breach;
        assert_eq!(s.every, std::time::Duration::from_millis(500));
        assert_eq!((s.window_minutes, s.min_calls, s.settle_secs), (5, 10, 0));
        assert_eq!((s.live_violations_ppm, s.sustained_percent), (25_000, 60));
        let (line, field, _) = err("[oversight]\n\nwindow_minutes = 0\n");
        assert_eq!((line, field.as_str()), (3, "oversight.window_minutes"));
        let (line, field, _) = err("[oversight]\nlive_violations_percent = 0.0\n");
        assert_eq!(
            (line, field.as_str()),
            (2, "oversight.live_violations_percent")
        );
        let (line, field, _) = err("[oversight]\nsustained_percent = 101\n");
        assert_eq!((line, field.as_str()), (2, "oversight.sustained_percent"));
        let (line, field, _) = err("[oversight]\nwindow = 5\n");
        assert_eq!((line, field.as_str()), (2, "window"));
    }

    #[test]
    fn billing_names_its_tariff_and_refuses_a_broken_one_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("trust.toml");
        assert!(parse(&conf, "").unwrap().billing.is_none());
        // The tariff is read relative to the configuration file.
        std::fs::write(
            dir.path().join("tariff.toml"),
            "[[versions]]\neffective_from = 2026-01-01\n[versions.prices]\nchargeable = \"1.50\"\n",
        )
        .unwrap();
        let b = parse(&conf, "[billing]\ntariff = \"tariff.toml\"\n")
            .unwrap()
            .billing
            .unwrap();
        assert_eq!(b.close_grace_secs, 600);
        assert_eq!(b.tariff_path, dir.path().join("tariff.toml"));
        let (line, field, _) = match parse(
            &conf,
            "[billing]\ntariff = \"tariff.toml\"\nclose_grace_minutes = 1441\n",
        ) {
            Err(FileError::Invalid {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            other => panic!("{other:?}"),
        };
        assert_eq!((line, field.as_str()), (3, "billing.close_grace_minutes"));
        // A broken tariff: its own file, line and field.
        std::fs::write(
            dir.path().join("bad.toml"),
            "[[versions]]\neffective_from = 2026-01-01\n[versions.prices]\nchargeable = \"1.505\"\n",
        )
        .unwrap();
        let e = parse(&conf, "[billing]\ntariff = \"bad.toml\"\n").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, FileError::Tariff(_)), "{text}");
        assert!(text.contains("bad.toml:4:"), "{text}");
        assert!(text.contains("chargeable"), "{text}");
        // A missing one is an error too (billing off is no [billing] at all).
        let e = parse(&conf, "[billing]\ntariff = \"none.toml\"\n").unwrap_err();
        assert!(e.to_string().contains("none.toml"), "{e}");
    }
}
