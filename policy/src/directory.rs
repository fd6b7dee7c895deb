//! Participants and providers as the policy sees them (contract §1): who a client
//! certificate belongs to, what roles and status a participant has, and which providers the
//! gateway can route to. Built once per configuration snapshot, then read-only.

use consent_cache::Bin;
pub use feed_wire::{ApiSet, ProviderApi};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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

/// A participant role (contract §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Calls APIs (an API user: bank or fintech).
    User,
    /// Serves APIs (an API provider bank).
    Provider,
}

impl Role {
    const fn bit(self) -> u8 {
        match self {
            Role::User => 1,
            Role::Provider => 2,
        }
    }
}

/// A set of [`Role`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const EMPTY: Roles = Roles(0);
    /// `user` only.
    pub const USER: Roles = Roles(1);
    /// `provider` only.
    pub const PROVIDER: Roles = Roles(2);
    /// Both roles.
    pub const BOTH: Roles = Roles(3);

    /// Whether `r` is in the set.
    pub const fn contains(self, r: Role) -> bool {
        self.0 & r.bit() != 0
    }

    /// Adds `r`.
    pub fn insert(&mut self, r: Role) {
        self.0 |= r.bit();
    }

    /// The set with `r` added.
    pub const fn with(self, r: Role) -> Roles {
        Roles(self.0 | r.bit())
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        let mut s = Roles::EMPTY;
        for r in iter {
            s.insert(r);
        }
        s
    }
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut set = f.debug_set();
        for r in [Role::User, Role::Provider] {
            if self.contains(r) {
                set.entry(&r);
            }
        }
        set.finish()
    }
}

/// A participant (legal entity) of the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// Its BIN.
    pub bin: Bin,
    /// Display name (for logs and the admin API).
    pub name: Box<str>,
    /// Its roles.
    pub roles: Roles,
    /// Its status.
    pub status: ParticipantStatus,
}

impl Participant {
    /// Whether it is active.
    pub fn is_active(&self) -> bool {
        self.status == ParticipantStatus::Active
    }
}

/// A provider the gateway can route to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderEntry {
    /// The provider participant's BIN.
    pub bin: Bin,
    /// Whether its APIs are published on the hub (unpublished: `provider_unavailable`).
    pub published: bool,
    /// Its APIs the registry does not publish (delisted by conformance monitoring or
    /// pinned so by the operator): `provider_unavailable` on those routes only.
    pub delisted: ApiSet,
    /// Index into the gateway's upstream table.
    pub index: usize,
}

/// A directory that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// Two participants with one BIN.
    #[error("participant {0} is listed twice")]
    DuplicateParticipant(Bin),
    /// One certificate thumbprint registered twice (to one or two participants).
    #[error("a certificate thumbprint is registered twice (second time for participant {0})")]
    DuplicateThumbprint(Bin),
    /// Two provider entries with one BIN.
    #[error("provider {0} is listed twice")]
    DuplicateProvider(Bin),
    /// A provider entry whose BIN is no participant.
    #[error("provider {0} is not a participant")]
    ProviderNotParticipant(Bin),
}

/// Builds a [`Directory`].
#[derive(Debug, Default)]
pub struct DirectoryBuilder {
    participants: Vec<Participant>,
    by_bin: HashMap<Bin, usize>,
    by_thumbprint: HashMap<[u8; 32], usize>,
    providers: HashMap<Bin, ProviderEntry>,
}

impl DirectoryBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a participant with its registered certificate thumbprints (SHA-256 of the leaf
    /// DER). Nothing is added when it fails.
    pub fn add_participant(
        &mut self,
        participant: Participant,
        thumbprints: impl IntoIterator<Item = [u8; 32]>,
    ) -> Result<&mut Self, DirectoryError> {
        let bin = participant.bin;
        if self.by_bin.contains_key(&bin) {
            return Err(DirectoryError::DuplicateParticipant(bin));
        }
        let thumbprints: Vec<[u8; 32]> = thumbprints.into_iter().collect();
        for (i, tp) in thumbprints.iter().enumerate() {
            if self.by_thumbprint.contains_key(tp)
                || thumbprints.get(..i).is_some_and(|s| s.contains(tp))
            {
                return Err(DirectoryError::DuplicateThumbprint(bin));
            }
        }
        let idx = self.participants.len();
        self.participants.push(participant);
        self.by_bin.insert(bin, idx);
        for tp in thumbprints {
            self.by_thumbprint.insert(tp, idx);
        }
        Ok(self)
    }

    /// Adds a provider entry.
    pub fn add_provider(&mut self, entry: ProviderEntry) -> Result<&mut Self, DirectoryError> {
        if self.providers.contains_key(&entry.bin) {
            return Err(DirectoryError::DuplicateProvider(entry.bin));
        }
        self.providers.insert(entry.bin, entry);
        Ok(self)
    }

    /// Checks that every provider entry is a participant, and builds.
    ///
    /// A provider entry whose participant lacks the `provider` role is accepted (the
    /// decision answers `provider_not_found` for it), so a role change can be staged.
    pub fn build(self) -> Result<Directory, DirectoryError> {
        let mut missing: Vec<Bin> = self
            .providers
            .keys()
            .filter(|b| !self.by_bin.contains_key(b))
            .copied()
            .collect();
        missing.sort_unstable();
        if let Some(b) = missing.first() {
            return Err(DirectoryError::ProviderNotParticipant(*b));
        }
        Ok(Directory {
            participants: self.participants,
            by_bin: self.by_bin,
            by_thumbprint: self.by_thumbprint,
            providers: self.providers,
        })
    }
}

/// The read-only participant and provider directory.
#[derive(Debug, Default)]
pub struct Directory {
    participants: Vec<Participant>,
    by_bin: HashMap<Bin, usize>,
    by_thumbprint: HashMap<[u8; 32], usize>,
    providers: HashMap<Bin, ProviderEntry>,
}

impl Directory {
    /// The participant a client-certificate thumbprint is registered to.
    pub fn participant_by_thumbprint(&self, thumbprint: &[u8; 32]) -> Option<&Participant> {
        self.by_thumbprint
            .get(thumbprint)
            .and_then(|i| self.participants.get(*i))
    }

    /// The participant with this BIN.
    pub fn participant(&self, bin: Bin) -> Option<&Participant> {
        self.by_bin
            .get(&bin)
            .and_then(|i| self.participants.get(*i))
    }

    /// The provider entry with this BIN.
    pub fn provider(&self, bin: Bin) -> Option<&ProviderEntry> {
        self.providers.get(&bin)
    }

    /// All participants, in insertion order.
    pub fn participants(&self) -> &[Participant] {
        &self.participants
    }

    /// All provider entries (unordered).
    pub fn providers(&self) -> impl Iterator<Item = &ProviderEntry> {
        self.providers.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin(s: &str) -> Bin {
        Bin::parse(s).unwrap()
    }

    fn p(b: &str, roles: Roles) -> Participant {
        Participant {
            bin: bin(b),
            name: "Bank".into(),
            roles,
            status: ParticipantStatus::Active,
        }
    }

    #[test]
    fn lookups() {
        let mut b = DirectoryBuilder::new();
        b.add_participant(p("100000000001", Roles::USER), [[1; 32], [2; 32]])
            .unwrap();
        b.add_participant(p("100000000002", Roles::BOTH), [[3; 32]])
            .unwrap();
        b.add_provider(ProviderEntry {
            bin: bin("100000000002"),
            published: true,
            delisted: ApiSet::EMPTY,
            index: 0,
        })
        .unwrap();
        let d = b.build().unwrap();
        assert_eq!(
            d.participant_by_thumbprint(&[2; 32]).unwrap().bin,
            bin("100000000001")
        );
        assert_eq!(
            d.participant_by_thumbprint(&[3; 32]).unwrap().bin,
            bin("100000000002")
        );
        assert!(d.participant_by_thumbprint(&[4; 32]).is_none());
        assert!(d
            .participant(bin("100000000002"))
            .unwrap()
            .roles
            .contains(Role::Provider));
        assert_eq!(d.provider(bin("100000000002")).unwrap().index, 0);
        assert!(d.provider(bin("100000000001")).is_none());
        assert_eq!(d.participants().len(), 2);
        assert_eq!(d.providers().count(), 1);
    }

    #[test]
    fn duplicates_are_refused_atomically() {
        let mut b = DirectoryBuilder::new();
        b.add_participant(p("100000000001", Roles::USER), [[1; 32]])
            .unwrap();
        assert_eq!(
            b.add_participant(p("100000000001", Roles::USER), [])
                .unwrap_err(),
            DirectoryError::DuplicateParticipant(bin("100000000001"))
        );
        assert_eq!(
            b.add_participant(p("100000000002", Roles::USER), [[9; 32], [1; 32]])
                .unwrap_err(),
            DirectoryError::DuplicateThumbprint(bin("100000000002"))
        );
        assert_eq!(
            b.add_participant(p("100000000003", Roles::USER), [[8; 32], [8; 32]])
                .unwrap_err(),
            DirectoryError::DuplicateThumbprint(bin("100000000003"))
        );
        // The failed adds left nothing behind.
        b.add_participant(p("100000000002", Roles::USER), [[9; 32]])
            .unwrap();
        b.add_provider(ProviderEntry {
            bin: bin("100000000001"),
            published: true,
            delisted: ApiSet::EMPTY,
            index: 0,
        })
        .unwrap();
        assert_eq!(
            b.add_provider(ProviderEntry {
                bin: bin("100000000001"),
                published: false,
                delisted: ApiSet::EMPTY,
                index: 1
            })
            .unwrap_err(),
            DirectoryError::DuplicateProvider(bin("100000000001"))
        );
        b.build().unwrap();
    }

    #[test]
    fn provider_must_be_a_participant() {
        let mut b = DirectoryBuilder::new();
        b.add_provider(ProviderEntry {
            bin: bin("100000000009"),
            published: true,
            delisted: ApiSet::EMPTY,
            index: 0,
        })
        .unwrap();
        assert_eq!(
            b.build().unwrap_err(),
            DirectoryError::ProviderNotParticipant(bin("100000000009"))
        );
    }

    #[test]
    fn serde_names() {
        let s: ParticipantStatus = serde_json::from_str("\"isolated\"").unwrap();
        assert_eq!(s, ParticipantStatus::Isolated);
        let r: Vec<Role> = serde_json::from_str(r#"["user","provider"]"#).unwrap();
        assert_eq!(r.into_iter().collect::<Roles>(), Roles::BOTH);
        assert_eq!(format!("{:?}", Roles::BOTH), "{User, Provider}");
    }
}
