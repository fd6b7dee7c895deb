//! Versioned deltas from the control plane's change feed, and what applying them reports.
//!
//! On the wire (NDJSON, one change per line) the op is a tag beside the version:
//! `{"version":8,"op":"set_status","id":"c-1","status":"revoked"}`,
//! `{"version":9,"op":"remove","id":"c-1"}`, and for an upsert the record's own
//! fields follow the tag: `{"version":7,"op":"upsert","id":"c-1","api_user":…}`.

use crate::record::{ConsentRecord, RecordError};
use crate::types::ConsentStatus;
use serde::{Deserialize, Serialize};

/// One change of the feed. Versions increase strictly along the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The feed version this change brings the store to.
    pub version: u64,
    /// What changes.
    #[serde(flatten)]
    pub op: ChangeOp,
}

/// What a [`Change`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChangeOp {
    /// Inserts the consent, or replaces the one with the same id.
    Upsert(ConsentRecord),
    /// Removes the consent; removing an unknown id is not an error (the goal state holds).
    Remove {
        /// The consent id.
        id: String,
    },
    /// Changes only the status (e.g. a revocation); the consent must exist.
    SetStatus {
        /// The consent id.
        id: String,
        /// The new status.
        status: ConsentStatus,
    },
}

/// What [`crate::ConsentStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new consent was stored.
    Inserted,
    /// An existing consent was replaced.
    Replaced,
    /// A consent was removed.
    Removed,
    /// A remove named an id the store did not hold; the version still advanced.
    Absent,
    /// A status was set.
    StatusSet,
    /// The change's version was not newer than the store's: ignored (replay).
    Stale,
}

/// Why a change could not be applied. The store and its version are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// An upsert carried an invalid record.
    #[error("change {version}: consent {id:?}: {source}")]
    Invalid {
        /// The change's version.
        version: u64,
        /// The record's id (as given, possibly the invalid part).
        id: String,
        /// What is wrong with the record.
        #[source]
        source: RecordError,
    },
    /// A status change for a consent the store does not hold: the store has
    /// missed part of the feed and should be reloaded from a snapshot.
    #[error("change {version}: set_status for unknown consent {id:?}")]
    UnknownConsent {
        /// The change's version.
        version: u64,
        /// The consent id.
        id: String,
    },
    /// A shard's arena is full (more than 4 GiB of text in one shard).
    #[error("change {version}: store capacity exceeded")]
    Capacity {
        /// The change's version.
        version: u64,
    },
}

/// Counts from [`crate::ConsentStore::apply_batch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Changes applied (every outcome other than [`Applied::Stale`]).
    pub applied: usize,
    /// Changes ignored as stale.
    pub stale: usize,
}

/// A batch stopped at a change that could not be applied. The changes before it
/// were applied (and the store's version reflects the last of them); the failing
/// change and those after it were not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("change #{index} of the batch: {source}")]
pub struct BatchError {
    /// Position of the failing change in the batch (0-based).
    pub index: usize,
    /// What was done before the failure.
    pub done: BatchSummary,
    /// Why the change failed.
    #[source]
    pub source: ApplyError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn changes_round_trip_as_tagged_json() {
        let changes = [
            Change {
                version: 7,
                op: ChangeOp::Upsert(sample("c-1")),
            },
            Change {
                version: 8,
                op: ChangeOp::SetStatus {
                    id: "c-1".into(),
                    status: ConsentStatus::Revoked,
                },
            },
            Change {
                version: 9,
                op: ChangeOp::Remove { id: "c-1".into() },
            },
        ];
        for c in &changes {
            let line = serde_json::to_string(c).unwrap();
            assert_eq!(&serde_json::from_str::<Change>(&line).unwrap(), c, "{line}");
        }
        assert_eq!(
            serde_json::to_string(&changes[1]).unwrap(),
            r#"{"version":8,"op":"set_status","id":"c-1","status":"revoked"}"#
        );
        let upsert = serde_json::to_string(&changes[0]).unwrap();
        assert!(
            upsert
                .starts_with(r#"{"version":7,"op":"upsert","id":"c-1","api_user":"180340012345""#),
            "{upsert}"
        );
        for bad in [
            r#"{"version":9,"op":"remove","id":"c-1","extra":1}"#,
            r#"{"version":9,"op":"drop","id":"c-1"}"#,
            r#"{"op":"remove","id":"c-1"}"#,
        ] {
            assert!(serde_json::from_str::<Change>(bad).is_err(), "{bad}");
        }
        let extra = upsert.replace(r#""status""#, r#""colour":"red","status""#);
        assert!(serde_json::from_str::<Change>(&extra).is_err());
    }
}
