//! `[rollups]` compiled: refused without `[trust]` (the pushes go over its mTLS
//! identity), the gateway's name (default: the host name) checked, the bounds, an
//! optional push URL, and the spool next to the journal.

use std::path::Path;
use std::time::Duration;

use crate::config::{ConfigError, FileConfig, Source};
use crate::plane::Endpoint;
use crate::rollup::{spool_path, RollupSettings};

/// The longest gateway name.
const MAX_NAME: usize = 64;

/// `[rollups]`, if present; `audit_path` is the resolved journal (`-`: standard output).
pub(super) fn compile(
    src: &Source,
    cfg: &FileConfig,
    audit_path: &Path,
) -> Result<Option<RollupSettings>, ConfigError> {
    let Some(r) = &cfg.rollups else {
        return Ok(None);
    };
    if cfg.trust.is_none() {
        return Err(src.invalid_at(
            "[rollups]",
            "rollups",
            "traffic rollups are pushed to the trust control plane: they need `[trust]`",
        ));
    }
    let gateway = match &r.gateway {
        Some(name) => {
            let n = name.get_ref();
            valid_name(n).map_err(|why| src.invalid(name, "rollups.gateway", why))?;
            n.clone()
        }
        None => host_name().ok_or_else(|| {
            src.invalid_at(
                "[rollups]",
                "rollups.gateway",
                "the host name is unknown or not a valid gateway name: set `gateway`",
            )
        })?,
    };
    let push_interval_ms = src.bounded("rollups.push_interval_ms", r.push_interval_ms)?;
    let max_pending_minutes = src.bounded("rollups.max_pending_minutes", r.max_pending_minutes)?;
    let close_after_secs = src.bounded("rollups.close_after_secs", r.close_after_secs)?;
    let endpoints = match &r.url {
        Some(url) => vec![Endpoint::parse(url.get_ref())
            .map_err(|e| src.invalid(url, "rollups.url", e.to_string()))?],
        None => Vec::new(),
    };
    Ok(Some(RollupSettings {
        gateway,
        push_interval: Duration::from_millis(push_interval_ms),
        max_pending_minutes,
        close_after: Duration::from_secs(close_after_secs),
        endpoints,
        spool: spool_path(audit_path),
    }))
}

/// A gateway name: 1 to 64 of letters, digits, `.`, `-`, `_` (it names the gateway in
/// the control plane's records and reports, and in logs).
fn valid_name(n: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if n.is_empty() || n.len() > MAX_NAME || !n.chars().all(ok) {
        return Err(format!(
            "{n:?} is not a gateway name (1 to {MAX_NAME} letters, digits, `.`, `-`, `_`)"
        ));
    }
    Ok(())
}

/// The machine's host name, when it is a valid gateway name.
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|n| valid_name(n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_name_is_short_and_plain() {
        assert!(valid_name("hub-a.dc1_2").is_ok());
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(65)] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }
}
