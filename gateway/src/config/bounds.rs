//! The allowed range of every duration, rate and size in the hub's configuration file
//! (`[limits]` aside: its values are checked with the limits), in one table. A value
//! outside its range is refused with the range, at its line; the table is what
//! docs/ops/configuration.md documents (a test keeps the two the same), and a value the
//! parser refuses (a negative timeout) is told its range too.
//!
//! The ranges are what a production hub can sensibly run with: a zero timeout or
//! capacity would refuse everything, and a huge one (a timeout of three years, a buffer
//! of the whole memory) is a typing mistake that would otherwise be accepted silently.

use super::{ConfigError, Source};
use policy::token::MAX_LEEWAY_SECS;

/// One field's range (inclusive) and unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The field's dotted path, entries' indices left out (`providers.timeout_ms`).
    pub field: &'static str,
    /// The least allowed value.
    pub min: u64,
    /// The greatest allowed value.
    pub max: u64,
    /// What the value counts.
    pub unit: &'static str,
}

const fn range(field: &'static str, min: u64, max: u64, unit: &'static str) -> Range {
    Range {
        field,
        min,
        max,
        unit,
    }
}

/// A budget of failed token verifications a second: at least one (none would refuse
/// every token the cache has not seen); past the greatest it no longer bounds anything
/// worth bounding.
const fn budget(field: &'static str) -> Range {
    range(field, 1, 100_000, "per second")
}

/// Every bounded field of the file.
pub const RANGES: &[Range] = &[
    range("server.threads", 1, 1024, "threads"),
    range("server.max_header_bytes", 1024, 1024 * 1024, "bytes"),
    range("server.max_body_bytes", 1, 16 * 1024 * 1024, "bytes"),
    range("server.grace_period_secs", 0, 600, "seconds"),
    range("server.shutdown_timeout_secs", 0, 600, "seconds"),
    range(
        "server.upstream_keepalive_pool_size",
        0,
        65_536,
        "connections",
    ),
    range("server.tls_handshake_timeout_secs", 1, 300, "seconds"),
    range("server.max_connections", 1, 1_000_000, "connections"),
    range("tokens.leeway_secs", 0, MAX_LEEWAY_SECS, "seconds"),
    range("tokens.max_token_bytes", 256, 64 * 1024, "bytes"),
    range("tokens.cache_capacity", 0, 10_000_000, "tokens"),
    budget("tokens.max_failed_verifications_per_connection_per_sec"),
    budget("tokens.max_failed_verifications_per_certificate_per_sec"),
    range("consents.max_staleness_secs", 1, 86_400, "seconds"),
    range("trust.max_staleness_secs", 1, 3_600, "seconds"),
    range("trust.jwks_refresh_secs", 1, 86_400, "seconds"),
    range("trust.heartbeat_secs", 1, 300, "seconds"),
    range("audit.buffer", 1, 16 * 1024 * 1024, "records"),
    range("rollups.push_interval_ms", 100, 600_000, "milliseconds"),
    range("rollups.max_pending_minutes", 1, 525_600, "minutes"),
    range("rollups.close_after_secs", 0, 3_600, "seconds"),
    range(
        "live_checks.max_body_bytes",
        1024,
        16 * 1024 * 1024,
        "bytes",
    ),
    range("live_checks.queue", 1, 65_536, "answers"),
    range("providers.connect_timeout_ms", 1, 60_000, "milliseconds"),
    range("providers.timeout_ms", 1, 600_000, "milliseconds"),
    range("providers.eject_after_failures", 1, 1_000, "failures"),
    range("providers.eject_secs", 1, 3_600, "seconds"),
];

/// `providers[1].timeout_ms` → `providers.timeout_ms`.
fn without_indices(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut depth = 0usize;
    for c in field.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The range of `field` (indices allowed: `providers[1].timeout_ms`), if it is bounded.
pub fn range_of(field: &str) -> Option<&'static Range> {
    let field = without_indices(field);
    RANGES.iter().find(|r| r.field == field)
}

impl Range {
    /// "allowed: 1 to 600000 milliseconds".
    pub fn describe(&self) -> String {
        format!("allowed: {} to {} {}", self.min, self.max, self.unit)
    }
}

impl Source {
    /// `value` of `field` when it is within the field's range; otherwise an error at the
    /// field's line naming the range. A field missing from [`RANGES`] (a misspelt name
    /// at a call site) is refused rather than left unbounded: fail closed, and every
    /// configuration test sees it.
    pub fn bounded<T>(&self, field: &str, value: T) -> Result<T, ConfigError>
    where
        T: Copy + TryInto<u64> + std::fmt::Display,
    {
        let Some(r) = range_of(field) else {
            return Err(self.invalid_here(field, "no allowed range is known for this field"));
        };
        match value.try_into() {
            Ok(v) if (r.min..=r.max).contains(&v) => Ok(value),
            _ => {
                Err(self.invalid_here(field, format!("{value} is out of range ({})", r.describe())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;

    #[test]
    fn every_default_is_within_its_range() {
        let defaults: [(&str, u64); 25] = [
            ("server.max_header_bytes", defaults::MAX_HEADER_BYTES as u64),
            ("server.max_body_bytes", defaults::MAX_BODY_BYTES as u64),
            ("server.grace_period_secs", defaults::GRACE_PERIOD_SECS),
            (
                "server.shutdown_timeout_secs",
                defaults::SHUTDOWN_TIMEOUT_SECS,
            ),
            (
                "server.upstream_keepalive_pool_size",
                defaults::UPSTREAM_POOL as u64,
            ),
            (
                "server.tls_handshake_timeout_secs",
                defaults::TLS_HANDSHAKE_TIMEOUT_SECS,
            ),
            ("server.max_connections", defaults::MAX_CONNECTIONS as u64),
            ("tokens.leeway_secs", defaults::LEEWAY_SECS),
            ("tokens.max_token_bytes", defaults::MAX_TOKEN_BYTES as u64),
            ("tokens.cache_capacity", defaults::TOKEN_CACHE as u64),
            (
                "tokens.max_failed_verifications_per_connection_per_sec",
                u64::from(defaults::FAILED_VERIFICATIONS_PER_CONNECTION),
            ),
            (
                "tokens.max_failed_verifications_per_certificate_per_sec",
                u64::from(defaults::FAILED_VERIFICATIONS_PER_CERTIFICATE),
            ),
            (
                "consents.max_staleness_secs",
                defaults::CONSENT_MAX_STALENESS_SECS,
            ),
            ("trust.max_staleness_secs", defaults::MAX_STALENESS_SECS),
            ("trust.jwks_refresh_secs", defaults::JWKS_REFRESH_SECS),
            ("trust.heartbeat_secs", defaults::HEARTBEAT_SECS),
            ("audit.buffer", defaults::AUDIT_BUFFER as u64),
            (
                "rollups.push_interval_ms",
                defaults::ROLLUP_PUSH_INTERVAL_MS,
            ),
            (
                "rollups.max_pending_minutes",
                defaults::ROLLUP_MAX_PENDING_MINUTES as u64,
            ),
            (
                "rollups.close_after_secs",
                defaults::ROLLUP_CLOSE_AFTER_SECS,
            ),
            (
                "live_checks.max_body_bytes",
                defaults::LIVE_MAX_BODY_BYTES as u64,
            ),
            ("live_checks.queue", defaults::LIVE_QUEUE as u64),
            ("providers.connect_timeout_ms", defaults::CONNECT_TIMEOUT_MS),
            ("providers.timeout_ms", defaults::TIMEOUT_MS),
            (
                "providers.eject_after_failures",
                u64::from(defaults::EJECT_AFTER),
            ),
        ];
        for (field, value) in defaults {
            let r = range_of(field).unwrap_or_else(|| panic!("{field} has no range"));
            assert!((r.min..=r.max).contains(&value), "{field} = {value}");
        }
        let eject = range_of("providers[3].eject_secs").expect("indices are ignored");
        assert!((eject.min..=eject.max).contains(&defaults::EJECT_SECS));
    }

    /// docs/ops/configuration.md lists every range as the table says.
    #[test]
    fn the_documented_ranges_are_the_enforced_ones() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ops/configuration.md"),
        )
        .expect("docs/ops/configuration.md");
        for r in RANGES {
            let row = format!("| `{}` | {} | {} | {} |", r.field, r.min, r.max, r.unit);
            assert!(
                doc.contains(&row),
                "docs/ops/configuration.md lacks the row {row}"
            );
        }
    }
}
