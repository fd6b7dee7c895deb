//! Checks across the file's sections: entries that name a participant another section
//! must know, and, with `[trust]`, the file's values the trust registry replaces.
//!
//! **Without `[trust]`** the file is the only source of participants, so a
//! `[[limits.overrides]]` or `[[limits.monthly.providers]]` entry for a BIN that no
//! `[[participants]]` entry holds could never apply (a typing mistake): it is refused with
//! the file, the line and the field.
//!
//! **With `[trust]`** the registry may list that BIN at any time (a participant
//! registered after the hub started), so such entries are accepted. What the registry
//! replaces for a BIN it lists is said instead, as warnings (logged at every load and
//! printed by `gateway check`): a `[[participants]]` entry applies only while the
//! registry does not list its BIN, and a `[[providers]]` entry's `upstreams` give way to
//! the registry's `provider_urls` (its other settings still apply). The registry's own
//! values are not known when the file is loaded; when they do replace the file's URLs the
//! hub logs that too (`network::build`).

use std::collections::HashSet;

use consent_cache::Bin;

use crate::config::{ConfigError, FileConfig, Source};
use crate::network::FileParticipant;

/// Refuses entries for unknown participants (file mode); returns the warnings about what
/// the registry replaces (`[trust]` mode), each naming the file, the line and the field.
pub fn check(
    src: &Source,
    cfg: &FileConfig,
    participants: &[FileParticipant],
) -> Result<Vec<String>, ConfigError> {
    if cfg.trust.is_some() {
        return Ok(registry_replaces(src, cfg));
    }
    let known: HashSet<Bin> = participants.iter().map(|p| p.participant.bin).collect();
    let unknown = |field: String, bin: &Bin| {
        let message = format!(
            "no [[participants]] entry has BIN {bin}: without [trust] this entry could never apply"
        );
        Err(src.invalid_here(&field, message))
    };
    for (i, o) in cfg.limits.overrides.iter().enumerate() {
        if !known.contains(&o.participant) {
            return unknown(format!("limits.overrides[{i}].participant"), &o.participant);
        }
    }
    for (i, p) in cfg.limits.monthly.providers.iter().enumerate() {
        if !known.contains(&p.provider) {
            return unknown(
                format!("limits.monthly.providers[{i}].provider"),
                &p.provider,
            );
        }
    }
    Ok(Vec::new())
}

/// `[trust]` mode: the file's entries the registry replaces for a BIN it lists.
fn registry_replaces(src: &Source, cfg: &FileConfig) -> Vec<String> {
    let at = |field: &str, message: String| {
        format!(
            "{}:{}: {field}: {message}",
            src.path.display(),
            src.line_of_field(field)
        )
    };
    let participants = cfg.participants.iter().enumerate().map(|(i, p)| {
        at(
            &format!("participants[{i}]"),
            format!(
                "with [trust], applies only while the trust registry does not list BIN {}; \
                 the registry's record replaces it",
                p.bin.get_ref()
            ),
        )
    });
    let providers = cfg.providers.iter().enumerate().map(|(i, p)| {
        at(
            &format!("providers[{i}].upstreams"),
            format!(
                "with [trust], the trust registry's provider_urls for BIN {} replace these \
                 once it lists them (sni, timeouts, ejection and published still apply)",
                p.bin.get_ref()
            ),
        )
    });
    participants.chain(providers).collect()
}
