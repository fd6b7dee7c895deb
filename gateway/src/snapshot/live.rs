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
    Ok(LiveSettings {
        sample_rate: rate,
        max_body_bytes: src.bounded("live_checks.max_body_bytes", l.max_body_bytes)?,
        queue: src.bounded("live_checks.queue", l.queue)?,
    })
}
