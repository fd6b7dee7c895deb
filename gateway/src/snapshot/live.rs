//! `[live_checks]` compiled: the sample rate a number from 0 to 1, the tap's bound and the
//! validator's queue within their ranges (`config::bounds`).

use crate::config::{ConfigError, FileConfig, Source};
use crate::live::LiveSettings;

/// `[live_checks]` (its defaults when absent).
pub(super) fn compile(src: &Source, cfg: &FileConfig) -> Result<LiveSettings, ConfigError> {
    let l = &cfg.live_checks;
    let rate = *l.sample_rate.get_ref();
    if !(0.0..=1.0).contains(&rate) {
        return Err(src.invalid(
            &l.sample_rate,
            "live_checks.sample_rate",
            format!("{rate} is out of range (allowed: 0 to 1, the share of answers sampled)"),
        ));
    }
    let max_body_bytes = src.bounded("live_checks.max_body_bytes", l.max_body_bytes)?;
    let queue = src.bounded("live_checks.queue", l.queue)?;
    // Answers waiting for the validator are held whole: bound what they may hold together.
    if queue.saturating_mul(max_body_bytes) > MAX_QUEUED_BYTES {
        return Err(src.invalid_here(
            "live_checks.queue",
            format!(
                "{queue} answers of up to {max_body_bytes} bytes may hold more than {} MiB \
                 waiting for the validator (allowed: queue × max_body_bytes ≤ {} MiB)",
                MAX_QUEUED_BYTES >> 20,
                MAX_QUEUED_BYTES >> 20
            ),
        ));
    }
    Ok(LiveSettings {
        sample_rate: rate,
        max_body_bytes,
        queue,
    })
}

/// The most the validator's queue may hold (`queue` × `max_body_bytes`).
const MAX_QUEUED_BYTES: usize = 256 << 20;
