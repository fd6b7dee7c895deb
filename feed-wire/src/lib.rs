//! The wire formats the trust control plane shares with gateways, and nothing else:
//! participant records, the lines of `GET /v1/snapshot` and of the `GET /v1/feed` stream.
//! The gateway depends on this crate alone, never on the sidecar's server code.
//!
//! Both endpoints answer NDJSON (`application/x-ndjson`): one JSON object per line,
//! `\n`-terminated, each object with exactly one member naming its kind
//! (serde's externally tagged enums), e.g.
//!
//! ```text
//! {"consent":{"version":7,"op":"set_status","id":"c-1","status":"revoked"}}
//! {"participant":{"version":8,"op":"upsert","bin":"180340012345",…}}
//! {"heartbeat":{"version":8,"store_id":"…","time":"2026-11-01T10:00:00Z"}}
//! ```
//!
//! The inner object of a `consent` line is exactly a [`consent_cache::Change`], so a
//! gateway hands it to `ConsentStore::apply_batch` unchanged.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod rollup;

pub use api::{ApiSet, ProviderApi};

use consent_cache::{Bin, Change, ConsentRecord};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Media type of the snapshot and the feed.
pub const NDJSON: &str = "application/x-ndjson";

/// A participant role (contract §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Calls APIs (an API user).
    User,
    /// Serves APIs (an API provider bank).
    Provider,
}

impl Role {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Provider => "provider",
        }
    }
}

/// A participant's status (contract §1). Only `active` participants exchange data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantStatus {
    /// May exchange data.
    Active,
    /// Temporarily barred.
    Suspended,
    /// Cut off from the exchange (e.g. during an incident).
    Isolated,
    /// Permanently gone.
    Terminated,
}

impl ParticipantStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParticipantStatus::Active => "active",
            ParticipantStatus::Suspended => "suspended",
            ParticipantStatus::Isolated => "isolated",
            ParticipantStatus::Terminated => "terminated",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(ParticipantStatus::Active),
            "suspended" => Some(ParticipantStatus::Suspended),
            "isolated" => Some(ParticipantStatus::Isolated),
            "terminated" => Some(ParticipantStatus::Terminated),
            _ => None,
        }
    }
}

/// A participant as the registry publishes it. Field names follow the gateway's
/// `[[participants]]` configuration (`bin`, `name`, `roles`, `status`, `thumbprints`);
/// `provider_urls` are the provider's base URLs (the gateway's `upstreams`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantRecord {
    /// The participant's BIN.
    pub bin: Bin,
    /// Display name.
    pub name: String,
    /// Roles, sorted, no duplicates, non-empty.
    pub roles: Vec<Role>,
    /// Status.
    pub status: ParticipantStatus,
    /// Registered client certificate thumbprints (`x5t#S256`: base64url SHA-256 of the
    /// leaf DER, unpadded), sorted.
    pub thumbprints: Vec<String>,
    /// Base URLs of a provider's API (https), in the operator's order; empty for a
    /// participant without the `provider` role.
    #[serde(default)]
    pub provider_urls: Vec<String>,
    /// A provider's APIs that are not published on the hub (delisted by conformance
    /// monitoring or pinned so by the operator): gateways refuse them with
    /// `503 provider_unavailable`. Absent (empty) on the wire when every API is published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delisted: Vec<ProviderApi>,
    /// When the record last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl ParticipantRecord {
    /// Whether the participant holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the participant may exchange data.
    pub fn is_active(&self) -> bool {
        self.status == ParticipantStatus::Active
    }
}

/// One participant change of the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantChange {
    /// The feed version this change brings the gateway to.
    pub version: u64,
    /// What changes.
    #[serde(flatten)]
    pub op: ParticipantOp,
}

/// What a [`ParticipantChange`] does. Participants are never deleted (`terminated`
/// is a status), so the only operation is a whole-record upsert: applying one twice
/// is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParticipantOp {
    /// Inserts the participant, or replaces the one with the same BIN.
    Upsert(ParticipantRecord),
}

/// "Nothing new up to `version`": sent when a feed has been quiet for the heartbeat
/// interval, and once right after the backlog a connection started with. A gateway
/// that receives it has every change up to `version` and is fresh as of now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The last version delivered on this stream, which is the registry's head.
    pub version: u64,
    /// The registry's store id (see [`SnapshotHeader::store_id`]).
    pub store_id: String,
    /// The registry's clock.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The history branch `version` belongs to (see [`SnapshotHeader::epoch`]); absent
    /// (a sidecar without epochs) reads as 0 and 0 is not written.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

/// The stream cannot go on without a gap (history the gateway still needed was
/// pruned while it lagged): the registry closes the stream after this line, and the
/// gateway must reload `GET /v1/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resync {
    /// The last version delivered on this stream.
    pub version: u64,
    /// Why, e.g. `history_pruned`.
    pub reason: String,
}

/// One line of `GET /v1/feed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedLine {
    /// A consent change: exactly what `ConsentStore::apply` takes.
    Consent(Change),
    /// A participant change.
    Participant(ParticipantChange),
    /// Liveness and position; see [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// The last line of a stream that cannot continue; see [`Resync`].
    Resync(Resync),
}

impl FeedLine {
    /// Parses one line (without or with its trailing newline).
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// The version of a change line; `None` for heartbeats and resyncs.
    pub fn change_version(&self) -> Option<u64> {
        match self {
            FeedLine::Consent(c) => Some(c.version),
            FeedLine::Participant(p) => Some(p.version),
            FeedLine::Heartbeat(_) | FeedLine::Resync(_) => None,
        }
    }
}

/// First line of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotHeader {
    /// Random id of the registry's database, fixed when it was created. A gateway that
    /// follows a feed with a different store id (the database was replaced) must reload.
    pub store_id: String,
    /// Every change up to and including this version is in the snapshot; follow the
    /// feed with `since=version`.
    pub version: u64,
    /// Participant lines that follow.
    pub participants: u64,
    /// Consent lines that follow.
    pub consents: u64,
    /// The registry's clock when the snapshot was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The history branch of the registry's database: a new epoch starts when the
    /// database is promoted or restored, and versions of different epochs are not
    /// comparable. A gateway follows the feed from (`store_id`, `epoch`, `version`) and
    /// reloads the snapshot when a heartbeat names another epoch. Absent (a sidecar
    /// without epochs) reads as 0, and 0 is not written, so either side may be older.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

/// `skip_serializing_if` for the optional epochs.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Last line of a snapshot: repeats the counts so a truncated transfer is detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTrailer {
    /// As in the header.
    pub version: u64,
    /// As in the header.
    pub participants: u64,
    /// As in the header.
    pub consents: u64,
}

/// One line of `GET /v1/snapshot`: a `snapshot` header, every `participant`, every
/// `consent` (all statuses), then an `end` trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotLine {
    /// The header.
    Snapshot(SnapshotHeader),
    /// One participant.
    Participant(ParticipantRecord),
    /// One consent (contract §5 record).
    Consent(ConsentRecord),
    /// The trailer.
    End(SnapshotTrailer),
}

impl SnapshotLine {
    /// Parses one line (without or with its trailing newline).
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consent_cache::{ChangeOp, ConsentStatus};

    fn participant() -> ParticipantRecord {
        ParticipantRecord {
            bin: Bin::parse("180340012345").unwrap(),
            name: "Bank".into(),
            roles: vec![Role::User, Role::Provider],
            status: ParticipantStatus::Active,
            thumbprints: vec!["abc".into()],
            provider_urls: vec!["https://127.0.0.1:1".into()],
            delisted: Vec::new(),
            updated_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        }
    }

    #[test]
    fn feed_lines_round_trip_and_wrap_a_consent_change_unchanged() {
        let change = Change {
            version: 8,
            op: ChangeOp::SetStatus {
                id: "c-1".into(),
                status: ConsentStatus::Revoked,
            },
        };
        let line = serde_json::to_string(&FeedLine::Consent(change.clone())).unwrap();
        assert_eq!(
            line,
            format!(
                r#"{{"consent":{}}}"#,
                serde_json::to_string(&change).unwrap()
            )
        );
        let p = FeedLine::Participant(ParticipantChange {
            version: 9,
            op: ParticipantOp::Upsert(participant()),
        });
        let pl = serde_json::to_string(&p).unwrap();
        assert!(
            pl.starts_with(r#"{"participant":{"version":9,"op":"upsert","bin":"180340012345""#),
            "{pl}"
        );
        let h = FeedLine::Heartbeat(Heartbeat {
            version: 9,
            store_id: "s".into(),
            time: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            epoch: 0,
        });
        for l in [FeedLine::Consent(change), p, h] {
            let s = serde_json::to_string(&l).unwrap();
            assert_eq!(FeedLine::parse(&s).unwrap(), l);
        }
        assert!(FeedLine::parse(r#"{"gossip":{}}"#).is_err());
        assert!(FeedLine::parse(
            r#"{"heartbeat":{"version":1,"store_id":"s","time":"2026-01-01T00:00:00Z","x":1}}"#
        )
        .is_err());
    }

    #[test]
    fn epochs_are_optional_on_the_wire_and_zero_is_not_written() {
        let time = "2026-01-01T00:00:00Z";
        // A sidecar without epochs: epoch 0.
        let old = format!(r#"{{"heartbeat":{{"version":4,"store_id":"s","time":"{time}"}}}}"#);
        let FeedLine::Heartbeat(h) = FeedLine::parse(&old).unwrap() else {
            panic!("a heartbeat")
        };
        assert_eq!(h.epoch, 0);
        // Epoch 0 is written as before, so an older gateway reads a newer sidecar.
        assert_eq!(
            serde_json::to_string(&FeedLine::Heartbeat(h.clone())).unwrap(),
            old
        );
        let with = old.replace(r#""time""#, r#""epoch":3,"time""#);
        let FeedLine::Heartbeat(h3) = FeedLine::parse(&with).unwrap() else {
            panic!("a heartbeat")
        };
        assert_eq!(h3, Heartbeat { epoch: 3, ..h });
        let header = format!(
            r#"{{"snapshot":{{"store_id":"s","version":4,"participants":0,"consents":0,"time":"{time}"}}}}"#
        );
        let SnapshotLine::Snapshot(s) = SnapshotLine::parse(&header).unwrap() else {
            panic!("a header")
        };
        assert_eq!(s.epoch, 0);
        let s7 = SnapshotHeader { epoch: 7, ..s };
        let line = serde_json::to_string(&SnapshotLine::Snapshot(s7.clone())).unwrap();
        assert!(line.contains(r#""epoch":7"#), "{line}");
        assert_eq!(
            SnapshotLine::parse(&line).unwrap(),
            SnapshotLine::Snapshot(s7)
        );
    }

    #[test]
    fn snapshot_lines_round_trip() {
        let lines = [
            SnapshotLine::Snapshot(SnapshotHeader {
                store_id: "s".into(),
                version: 3,
                participants: 1,
                consents: 0,
                time: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
                epoch: 0,
            }),
            SnapshotLine::Participant(participant()),
            SnapshotLine::End(SnapshotTrailer {
                version: 3,
                participants: 1,
                consents: 0,
            }),
        ];
        for l in lines {
            let s = serde_json::to_string(&l).unwrap();
            assert_eq!(SnapshotLine::parse(&s).unwrap(), l, "{s}");
        }
    }
}
