//! The log set-up shared by the hub's long-running binaries (`gateway run`, `trust serve`,
//! `devhub`, `hub-cluster`): one subscriber on standard error, filtered by `RUST_LOG` (or
//! the binary's default), formatted as JSON lines or as text (`--log-format`).
//!
//! The default format follows where standard error goes: text on a terminal (a person
//! reads it), JSON otherwise (a file, a pipe, the journal: a program reads it). ANSI
//! colour codes are written only in text on a terminal, never into files or pipes,
//! whatever the format; `NO_COLOR` turns them off on a terminal too.
//!
//! A small crate of its own so that the gateway and the trust sidecar share it without the
//! gateway linking anything of the control plane or the development tools.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the
    /// event's fields at the top level.
    Json,
    /// Human-readable lines (coloured on a terminal only).
    Text,
}

impl LogFormat {
    /// The default when `--log-format` is not given: text on a terminal, JSON otherwise.
    pub fn default_for(stderr_is_terminal: bool) -> LogFormat {
        if stderr_is_terminal {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }
}

/// The `--log-format` option, for a binary's command line (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format on standard error: `json` (one object per line) or `text`. Default:
    /// text when standard error is a terminal, json otherwise. The filter is `RUST_LOG`
    /// (e.g. `info`, `gateway=debug,info`); see docs/ops/logging.md.
    #[arg(long, value_enum, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// What the subscriber was set up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The format in force.
    pub format: LogFormat,
    /// Whether ANSI colour codes are written.
    pub ansi: bool,
}

impl Settings {
    /// The settings for `asked` (the option, if given) on a standard error that is
    /// (`terminal`) or is not a terminal, with `no_color` (the `NO_COLOR` convention).
    pub fn resolve(asked: Option<LogFormat>, terminal: bool, no_color: bool) -> Settings {
        let format = asked.unwrap_or_else(|| LogFormat::default_for(terminal));
        Settings {
            format,
            ansi: format == LogFormat::Text && terminal && !no_color,
        }
    }
}

/// Installs the process's subscriber on standard error: `RUST_LOG` when set and valid,
/// else `default_filter`. Idempotent: a second call (a subscriber already installed, as
/// when the demo starts pieces in one process) changes nothing. Returns the settings used.
pub fn init(asked: Option<LogFormat>, default_filter: &str) -> Settings {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let settings = Settings::resolve(asked, std::io::stderr().is_terminal(), no_color);
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(settings.ansi);
    // Already installed: the first set-up stays (the error says only that).
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_off_a_terminal_text_on_it_and_colour_only_in_text_on_a_terminal() {
        let off = Settings::resolve(None, false, false);
        assert_eq!((off.format, off.ansi), (LogFormat::Json, false));
        let on = Settings::resolve(None, true, false);
        assert_eq!((on.format, on.ansi), (LogFormat::Text, true));
        let text_to_file = Settings::resolve(Some(LogFormat::Text), false, false);
        assert_eq!(
            (text_to_file.format, text_to_file.ansi),
            (LogFormat::Text, false)
        );
        let json_on_terminal = Settings::resolve(Some(LogFormat::Json), true, false);
        assert_eq!(
            (json_on_terminal.format, json_on_terminal.ansi),
            (LogFormat::Json, false)
        );
        assert!(!Settings::resolve(None, true, true).ansi, "NO_COLOR");
    }
}
