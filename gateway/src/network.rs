//! The participant directory and the providers' upstream pools the request path reads
//! (`Snapshot::network`), and how they are built from the hub's two sources of
//! participants: the configuration file and the trust sidecar's participant registry.
//!
//! **Without `[trust]`** the file is the only source: `[[participants]]` make the
//! directory and `[[providers]]` the upstream pools, exactly as configured.
//!
//! **With `[trust]`** the registry, as the feed delivers it, is authoritative for every
//! participant it knows (BIN): its name, roles, status and certificate thumbprints replace
//! whatever the file says about that BIN, and its `provider_urls`, when present, replace
//! the file's `upstreams`. The file keeps what the registry does not carry: the upstream
//! settings of `[[providers]]` (`published`, `sni`, timeouts, ejection), which apply to the
//! registry's URLs too; a provider the registry knows but the file does not is routed
//! with the defaults of `[[providers]]` and published. `[[participants]]` whose BIN the
//! registry does not know stay as configured (local entries), and they are the whole
//! directory until the first snapshot has been loaded. A certificate thumbprint that the
//! registry gives a participant is never also matched to a file entry.
//!
//! **Fail closed.** A registry record the hub cannot apply grants nothing: a record that
//! does not decode (an unknown role or status, an unknown member) keeps its BIN in the
//! directory with no role and status `suspended`, matched by the thumbprints last known
//! for it, so its certificates answer `403 participant_inactive`; a record with a
//! malformed thumbprint, no role, or provider URLs that do not parse or resolve is applied
//! as `suspended`. A thumbprint that two registry records claim matches neither.
//!
//! Building resolves provider host names (DNS): it runs at configuration load and, for
//! feed changes, on a blocking thread of the follower, never on the request path. The
//! result is swapped in whole; a request keeps the `Network` it started with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use consent_cache::Bin;
use feed_wire::{self as wire, ApiSet, ParticipantRecord};
use policy::directory::{
    Directory, DirectoryBuilder, Participant, ParticipantStatus, ProviderEntry, Role, Roles,
};

use crate::config::defaults;
use crate::upstream::{parse_base_url, TargetSpec, Upstream};

/// What the request path reads: who a certificate belongs to and where each provider is.
pub struct Network {
    /// Participants and provider entries.
    pub directory: Directory,
    /// Providers' upstream pools, indexed by `ProviderEntry::index`.
    pub upstreams: Box<[Arc<Upstream>]>,
    /// What each pool was built from (to keep a pool, and its ejection state, when a
    /// feed change leaves it as it was).
    keys: HashMap<Bin, (UpstreamKey, usize)>,
    /// Registry records that could not be applied (kept inactive).
    pub refused: usize,
    /// Participants from the registry.
    pub from_registry: usize,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("participants", &self.directory.participants().len())
            .field("upstreams", &self.upstreams.len())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// A participant of `[[participants]]`, validated.
#[derive(Debug, Clone)]
pub struct FileParticipant {
    /// The participant.
    pub participant: Participant,
    /// Its registered thumbprints (from `thumbprints` and `certs`).
    pub thumbprints: Vec<[u8; 32]>,
}

/// A provider of `[[providers]]`, validated: its upstream settings and base URLs.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The provider's BIN.
    pub bin: Bin,
    /// Published on the hub.
    pub published: bool,
    /// The configured base URLs, as written.
    pub urls: Vec<String>,
    /// The same, parsed and resolved at load.
    pub targets: Vec<TargetSpec>,
    /// TLS server name override.
    pub sni: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// SLA.
    pub timeout: Duration,
    /// Failures before a base URL is ejected.
    pub eject_after: u32,
    /// How long it stays ejected.
    pub eject_for: Duration,
}

/// What the configuration file says about participants and providers.
#[derive(Debug, Clone, Default)]
pub struct FileBase {
    /// `[[participants]]`.
    pub participants: Vec<FileParticipant>,
    /// `[[providers]]`.
    pub providers: Vec<ProviderSettings>,
}

/// One BIN of the registry as the feed delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A record the hub decoded.
    Record(ParticipantRecord),
    /// A record the hub could not decode: applied as suspended, without roles, matched
    /// by these thumbprints (the ones last known for the BIN and any readable in the
    /// record), so its certificates answer `participant_inactive`.
    Undecodable {
        /// `x5t#S256` values (possibly malformed; those are ignored).
        thumbprints: Vec<String>,
    },
}

/// The trust sidecar's participant registry, as far as the feed has delivered it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    entries: BTreeMap<Bin, Entry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Inserts or replaces the record of its BIN (feed `upsert`, snapshot line).
    pub fn upsert(&mut self, record: ParticipantRecord) {
        self.entries.insert(record.bin, Entry::Record(record));
    }

    /// Records that the latest record of `bin` could not be decoded. The thumbprints last
    /// known for it are kept, so its certificates stay recognised (and refused).
    pub fn undecodable(&mut self, bin: Bin, thumbprints: Vec<String>) {
        let mut all = self.thumbprints_of(bin);
        for t in thumbprints {
            if !all.contains(&t) {
                all.push(t);
            }
        }
        self.entries
            .insert(bin, Entry::Undecodable { thumbprints: all });
    }

    /// The thumbprints the registry last gave `bin` (none when unknown).
    pub fn thumbprints_of(&self, bin: Bin) -> Vec<String> {
        match self.entries.get(&bin) {
            Some(Entry::Record(r)) => r.thumbprints.clone(),
            Some(Entry::Undecodable { thumbprints }) => thumbprints.clone(),
            None => Vec::new(),
        }
    }

    /// The entry of a BIN.
    #[cfg(test)]
    pub fn get(&self, bin: Bin) -> Option<&Entry> {
        self.entries.get(&bin)
    }

    /// BINs known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// What an upstream pool is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UpstreamKey {
    urls: Vec<String>,
    sni: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    eject_after: u32,
    eject_for: Duration,
}

/// A participant on its way into the directory.
struct Candidate {
    participant: Participant,
    thumbprints: Vec<[u8; 32]>,
    from_registry: bool,
    /// The registry's provider URLs (provider role, non-empty), already checked.
    registry_urls: Option<Vec<String>>,
    /// The provider's APIs the registry does not publish.
    delisted: ApiSet,
}

fn decode_thumbprint(s: &str) -> Option<[u8; 32]> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
}

fn role(r: wire::Role) -> Role {
    match r {
        wire::Role::User => Role::User,
        wire::Role::Provider => Role::Provider,
    }
}

fn status(s: wire::ParticipantStatus) -> ParticipantStatus {
    match s {
        wire::ParticipantStatus::Active => ParticipantStatus::Active,
        wire::ParticipantStatus::Suspended => ParticipantStatus::Suspended,
        wire::ParticipantStatus::Isolated => ParticipantStatus::Isolated,
        wire::ParticipantStatus::Terminated => ParticipantStatus::Terminated,
    }
}

/// Fail closed: an active participant whose record could not be applied is suspended.
fn refuse(p: &mut Participant, reason: &'static str, refused: &mut usize) {
    *refused += 1;
    tracing::warn!(
        participant = %p.bin,
        reason,
        "registry record cannot be applied: participant kept inactive"
    );
    if p.status == ParticipantStatus::Active {
        p.status = ParticipantStatus::Suspended;
    }
}

/// The pool key of a provider's URLs with its `[[providers]]` settings, or the defaults
/// of `[[providers]]` for a provider only the registry knows.
fn key_for(urls: &[String], s: Option<&ProviderSettings>) -> UpstreamKey {
    UpstreamKey {
        urls: urls.to_vec(),
        sni: s.and_then(|s| s.sni.clone()),
        connect_timeout: s.map_or(Duration::from_millis(defaults::CONNECT_TIMEOUT_MS), |s| {
            s.connect_timeout
        }),
        timeout: s.map_or(Duration::from_millis(defaults::TIMEOUT_MS), |s| s.timeout),
        eject_after: s.map_or(defaults::EJECT_AFTER, |s| s.eject_after),
        eject_for: s.map_or(Duration::from_secs(defaults::EJECT_SECS), |s| s.eject_for),
    }
}

fn resolve(urls: &[String], sni: Option<&str>) -> Option<Vec<TargetSpec>> {
    urls.iter()
        .map(|u| parse_base_url(u, sni).ok())
        .collect::<Option<Vec<_>>>()
        .filter(|t| !t.is_empty())
}

/// Builds the network from the file and, with `[trust]` once a snapshot has been
/// loaded, the registry (see the module documentation for how they combine). `previous`
/// lends its upstream pools to providers whose URLs and settings did not change.
/// Never fails: what cannot be applied is left out or kept inactive, and logged.
pub fn build(base: &FileBase, registry: Option<&Registry>, previous: Option<&Network>) -> Network {
    let mut b = Builder {
        settings: base.providers.iter().map(|p| (p.bin, p)).collect(),
        previous,
        resolved: HashMap::new(),
        refused: 0,
    };
    let mut candidates: Vec<Candidate> = match registry {
        Some(r) => r
            .entries
            .iter()
            .map(|(bin, e)| b.candidate(*bin, e))
            .collect(),
        None => Vec::new(),
    };
    let from_registry = candidates.len();
    candidates.extend(
        base.participants
            .iter()
            .filter(|f| !registry.is_some_and(|r| r.entries.contains_key(&f.participant.bin)))
            .map(|f| Candidate {
                participant: f.participant.clone(),
                thumbprints: f.thumbprints.clone(),
                from_registry: false,
                registry_urls: None,
                delisted: ApiSet::EMPTY,
            }),
    );
    one_owner_per_thumbprint(&mut candidates);
    b.assemble(candidates, from_registry)
}

/// What building one network needs besides the candidates.
struct Builder<'a> {
    settings: HashMap<Bin, &'a ProviderSettings>,
    previous: Option<&'a Network>,
    /// Registry URLs resolved here (for pools that cannot be reused).
    resolved: HashMap<Bin, Vec<TargetSpec>>,
    refused: usize,
}

impl Builder<'_> {
    /// A registry entry on its way into the directory (fail closed where it cannot apply).
    fn candidate(&mut self, bin: Bin, entry: &Entry) -> Candidate {
        match entry {
            Entry::Record(r) => self.record(bin, r),
            Entry::Undecodable { thumbprints } => {
                let mut participant = Participant {
                    bin,
                    name: "(registry record not decodable)".into(),
                    roles: Roles::EMPTY,
                    status: ParticipantStatus::Active,
                };
                refuse(&mut participant, "record not decodable", &mut self.refused);
                Candidate {
                    participant,
                    thumbprints: thumbprints
                        .iter()
                        .filter_map(|t| decode_thumbprint(t))
                        .collect(),
                    from_registry: true,
                    registry_urls: None,
                    delisted: ApiSet::EMPTY,
                }
            }
        }
    }

    fn record(&mut self, bin: Bin, r: &ParticipantRecord) -> Candidate {
        let mut participant = Participant {
            bin,
            name: r.name.clone().into_boxed_str(),
            roles: r.roles.iter().copied().map(role).collect(),
            status: status(r.status),
        };
        let decoded: Vec<Option<[u8; 32]>> =
            r.thumbprints.iter().map(|t| decode_thumbprint(t)).collect();
        let thumbprints: Vec<[u8; 32]> = decoded.iter().flatten().copied().collect();
        if decoded.iter().any(Option::is_none) {
            refuse(&mut participant, "malformed thumbprint", &mut self.refused);
        } else if participant.roles == Roles::EMPTY {
            refuse(&mut participant, "no role", &mut self.refused);
        }
        let mut registry_urls = None;
        if participant.roles.contains(Role::Provider) && !r.provider_urls.is_empty() {
            if self.registry_urls_usable(bin, &r.provider_urls) {
                self.say_file_urls_replaced(bin, &r.provider_urls);
                registry_urls = Some(r.provider_urls.clone());
            } else {
                refuse(&mut participant, "provider URL unusable", &mut self.refused);
            }
        }
        Candidate {
            participant,
            thumbprints,
            from_registry: true,
            registry_urls,
            delisted: r.delisted.iter().copied().collect(),
        }
    }

    /// Warns when the registry's URLs replace different `upstreams` of the file's
    /// `[[providers]]` entry: once, when they start to (the previous network did not
    /// route these URLs already), not at every feed change.
    fn say_file_urls_replaced(&self, bin: Bin, urls: &[String]) {
        let Some(file) = self.settings.get(&bin) else {
            return;
        };
        let said = self
            .previous
            .and_then(|p| p.keys.get(&bin))
            .is_some_and(|(k, _)| k.urls == urls);
        if file.urls != urls && !said {
            tracing::warn!(
                provider = %bin,
                file = ?file.urls,
                registry = ?urls,
                "the trust registry's provider_urls replace the upstreams of the file's [[providers]] entry"
            );
        }
    }

    /// Whether a provider's registry URLs can be routed: their pool is reusable as it is,
    /// or they parse and resolve now.
    fn registry_urls_usable(&mut self, bin: Bin, urls: &[String]) -> bool {
        let s = self.settings.get(&bin).copied();
        let key = key_for(urls, s);
        let reusable = self
            .previous
            .and_then(|p| p.keys.get(&bin))
            .is_some_and(|(k, _)| *k == key);
        if reusable {
            return true;
        }
        match resolve(urls, s.and_then(|s| s.sni.as_deref())) {
            Some(t) => {
                self.resolved.insert(bin, t);
                true
            }
            None => false,
        }
    }

    /// The directory and the pools, each pool reused from `previous` when its key matches.
    fn assemble(mut self, candidates: Vec<Candidate>, from_registry: usize) -> Network {
        let mut dir = DirectoryBuilder::new();
        let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
        let mut keys: HashMap<Bin, (UpstreamKey, usize)> = HashMap::new();
        for c in candidates {
            let bin = c.participant.bin;
            if let Err(e) = dir.add_participant(c.participant, c.thumbprints) {
                // Cannot happen after the filtering above; leaving it out refuses it.
                tracing::warn!(participant = %bin, error = %e, "participant left out of the directory");
                continue;
            }
            let Some((key, pool)) = self.pool(bin, c.registry_urls.as_deref()) else {
                continue;
            };
            let index = upstreams.len();
            upstreams.push(pool);
            keys.insert(bin, (key, index));
            let published = self
                .settings
                .get(&bin)
                .map_or(defaults::PUBLISHED, |s| s.published);
            if let Err(e) = dir.add_provider(ProviderEntry {
                bin,
                published,
                delisted: c.delisted,
                index,
            }) {
                tracing::warn!(provider = %bin, error = %e, "provider left out of the directory");
            }
        }
        let directory = dir.build().unwrap_or_else(|e| {
            // Every provider entry above has its participant; refuse everything rather
            // than guess.
            tracing::error!(error = %e, "directory cannot be built: no participant is recognised");
            Directory::default()
        });
        Network {
            directory,
            upstreams: upstreams.into_boxed_slice(),
            keys,
            refused: self.refused,
            from_registry,
        }
    }

    /// A provider's pool: the registry's URLs or the file's, reused when unchanged.
    fn pool(
        &mut self,
        bin: Bin,
        registry_urls: Option<&[String]>,
    ) -> Option<(UpstreamKey, Arc<Upstream>)> {
        let s = self.settings.get(&bin).copied();
        let (key, targets) = match (registry_urls, s) {
            (Some(urls), _) => (key_for(urls, s), self.resolved.remove(&bin)),
            (None, Some(s)) => (key_for(&s.urls, Some(s)), Some(s.targets.clone())),
            (None, None) => return None,
        };
        let reused = self
            .previous
            .and_then(|p| p.keys.get(&bin).map(|(k, i)| (k, *i, p)))
            .filter(|(k, _, _)| **k == key)
            .and_then(|(_, i, p)| p.upstreams.get(i).cloned());
        let pool = match (reused, targets) {
            (Some(pool), _) => pool,
            (None, Some(targets)) => Arc::new(Upstream::new(
                bin,
                targets,
                key.connect_timeout,
                key.timeout,
                key.eject_after,
                key.eject_for,
            )),
            (None, None) => return None,
        };
        Some((key, pool))
    }
}

/// Thumbprints: one owner each. Claimed twice by the registry: matched by neither;
/// claimed by the registry and the file: the registry's.
fn one_owner_per_thumbprint(candidates: &mut [Candidate]) {
    let mut registry_owners: HashMap<[u8; 32], usize> = HashMap::new();
    for c in candidates.iter().filter(|c| c.from_registry) {
        let mine: HashSet<&[u8; 32]> = c.thumbprints.iter().collect();
        for t in mine {
            *registry_owners.entry(*t).or_default() += 1;
        }
    }
    let mut file_seen: HashSet<[u8; 32]> = HashSet::new();
    for c in candidates {
        let bin = c.participant.bin;
        let mut kept: Vec<[u8; 32]> = Vec::with_capacity(c.thumbprints.len());
        for t in &c.thumbprints {
            if kept.contains(t) {
                continue;
            }
            let owners = registry_owners.get(t).copied().unwrap_or(0);
            let keep = if c.from_registry {
                owners == 1
            } else {
                owners == 0 && file_seen.insert(*t)
            };
            if keep {
                kept.push(*t);
            } else {
                tracing::warn!(participant = %bin, "a certificate thumbprint registered to another participant is not matched to this one");
            }
        }
        c.thumbprints = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn bin(s: &str) -> Bin {
        Bin::parse(s).unwrap()
    }

    fn tp(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn tps(n: u8) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tp(n))
    }

    fn record(
        b: &str,
        roles: &[wire::Role],
        st: wire::ParticipantStatus,
        t: &[u8],
    ) -> ParticipantRecord {
        ParticipantRecord {
            bin: bin(b),
            name: format!("P {b}"),
            roles: roles.to_vec(),
            status: st,
            thumbprints: t.iter().map(|n| tps(*n)).collect(),
            provider_urls: Vec::new(),
            delisted: Vec::new(),
            updated_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        }
    }

    fn file_user(b: &str, t: u8) -> FileParticipant {
        FileParticipant {
            participant: Participant {
                bin: bin(b),
                name: "file".into(),
                roles: Roles::USER,
                status: ParticipantStatus::Active,
            },
            thumbprints: vec![tp(t)],
        }
    }

    fn file_provider(b: &str, url: &str) -> (FileParticipant, ProviderSettings) {
        let p = FileParticipant {
            participant: Participant {
                bin: bin(b),
                name: "bank".into(),
                roles: Roles::PROVIDER,
                status: ParticipantStatus::Active,
            },
            thumbprints: vec![],
        };
        let s = ProviderSettings {
            bin: bin(b),
            published: true,
            urls: vec![url.into()],
            targets: vec![parse_base_url(url, Some("localhost")).unwrap()],
            sni: Some("localhost".into()),
            connect_timeout: Duration::from_millis(100),
            timeout: Duration::from_millis(200),
            eject_after: 1,
            eject_for: Duration::from_secs(1),
        };
        (p, s)
    }

    fn base() -> FileBase {
        let (bp, bs) = file_provider("990340000011", "https://127.0.0.1:9001");
        FileBase {
            participants: vec![
                file_user("100140000001", 1),
                file_user("100140000002", 2),
                bp,
            ],
            providers: vec![bs],
        }
    }

    #[test]
    fn the_file_alone_is_the_directory() {
        let n = build(&base(), None, None);
        let d = &n.directory;
        assert_eq!(d.participants().len(), 3);
        assert_eq!(
            d.participant_by_thumbprint(&tp(1)).unwrap().bin,
            bin("100140000001")
        );
        let e = d.provider(bin("990340000011")).unwrap();
        assert_eq!(n.upstreams[e.index].targets[0].sni, "localhost");
        assert_eq!((n.refused, n.from_registry), (0, 0));
    }

    #[test]
    fn the_registry_is_authoritative_for_the_bins_it_knows() {
        use wire::ParticipantStatus::*;
        let mut reg = Registry::new();
        // Suspended, and with a rotated certificate.
        reg.upsert(record(
            "100140000001",
            &[wire::Role::User],
            Suspended,
            &[11],
        ));
        // Unknown to the file.
        reg.upsert(record("100140000009", &[wire::Role::User], Active, &[9]));
        let n = build(&base(), Some(&reg), None);
        let d = &n.directory;
        assert!(
            d.participant_by_thumbprint(&tp(1)).is_none(),
            "old certificate dropped"
        );
        let p = d.participant_by_thumbprint(&tp(11)).unwrap();
        assert_eq!(
            (p.bin, p.status),
            (bin("100140000001"), ParticipantStatus::Suspended)
        );
        assert!(d.participant_by_thumbprint(&tp(9)).unwrap().is_active());
        // File entries the registry does not know stay.
        assert!(d.participant_by_thumbprint(&tp(2)).unwrap().is_active());
        assert!(d.provider(bin("990340000011")).is_some());
        assert_eq!(n.from_registry, 2);
    }

    #[test]
    fn registry_provider_urls_replace_the_files_and_keep_its_settings() {
        let mut reg = Registry::new();
        let mut r = record(
            "990340000011",
            &[wire::Role::Provider],
            wire::ParticipantStatus::Active,
            &[],
        );
        r.provider_urls = vec!["https://127.0.0.1:9002/api".into()];
        reg.upsert(r.clone());
        let mut r2 = record(
            "990340000022",
            &[wire::Role::Provider],
            wire::ParticipantStatus::Active,
            &[],
        );
        r2.provider_urls = vec!["https://127.0.0.1:9003".into()];
        reg.upsert(r2);
        let n = build(&base(), Some(&reg), None);
        let e = n.directory.provider(bin("990340000011")).unwrap();
        let up = &n.upstreams[e.index];
        assert_eq!(up.targets[0].addr.port(), 9002);
        assert_eq!(up.targets[0].prefix, "/api");
        assert_eq!(up.targets[0].sni, "localhost", "the file's sni applies");
        assert_eq!(up.timeout, Duration::from_millis(200));
        // Only in the registry: defaults, published.
        let e2 = n.directory.provider(bin("990340000022")).unwrap();
        assert!(e2.published);
        assert_eq!(
            n.upstreams[e2.index].timeout,
            Duration::from_millis(defaults::TIMEOUT_MS)
        );

        // An unchanged provider keeps its pool (and its ejection state) across a rebuild.
        let again = build(&base(), Some(&reg), Some(&n));
        let e = again.directory.provider(bin("990340000011")).unwrap();
        assert!(Arc::ptr_eq(&again.upstreams[e.index], up));
        // A changed one gets a new pool.
        r.provider_urls = vec!["https://127.0.0.1:9004".into()];
        reg.upsert(r.clone());
        let changed = build(&base(), Some(&reg), Some(&again));
        let e = changed.directory.provider(bin("990340000011")).unwrap();
        assert_eq!(changed.upstreams[e.index].targets[0].addr.port(), 9004);
        assert!(e.delisted.is_empty());
        // The registry's delisted APIs reach the directory entry, and only those.
        r.delisted = vec![wire::ProviderApi::Transactions];
        reg.upsert(r);
        let delisted = build(&base(), Some(&reg), Some(&changed));
        let e = delisted.directory.provider(bin("990340000011")).unwrap();
        assert!(e.published && e.delisted.contains(wire::ProviderApi::Transactions));
        assert_eq!(e.delisted.iter().count(), 1);
    }

    #[test]
    fn what_cannot_be_applied_grants_nothing() {
        use wire::ParticipantStatus::*;
        let mut reg = Registry::new();
        // A malformed thumbprint: suspended, recognised by the good one.
        let mut r = record("100140000001", &[wire::Role::User], Active, &[1]);
        r.thumbprints.push("not-a-thumbprint".into());
        reg.upsert(r);
        // Undecodable after a good record: suspended, no role, old thumbprints kept.
        reg.upsert(record("100140000002", &[wire::Role::User], Active, &[2]));
        reg.undecodable(bin("100140000002"), vec![tps(22)]);
        // A provider whose URL is not https.
        let mut p = record("990340000011", &[wire::Role::Provider], Active, &[]);
        p.provider_urls = vec!["http://127.0.0.1:1".into()];
        reg.upsert(p);
        // Two records claiming one thumbprint: neither matches it.
        reg.upsert(record(
            "100140000005",
            &[wire::Role::User],
            Active,
            &[5, 55],
        ));
        reg.upsert(record("100140000006", &[wire::Role::User], Active, &[5]));
        let n = build(&base(), Some(&reg), None);
        let d = &n.directory;
        assert_eq!(n.refused, 3);
        let p = d.participant_by_thumbprint(&tp(1)).unwrap();
        assert_eq!(p.status, ParticipantStatus::Suspended);
        for t in [2, 22] {
            let p = d.participant_by_thumbprint(&tp(t)).unwrap();
            assert_eq!(
                (p.bin, p.roles, p.is_active()),
                (bin("100140000002"), Roles::EMPTY, false)
            );
        }
        let bank = d.participant(bin("990340000011")).unwrap();
        assert!(!bank.is_active());
        assert!(d.participant_by_thumbprint(&tp(5)).is_none());
        assert_eq!(
            d.participant_by_thumbprint(&tp(55)).unwrap().bin,
            bin("100140000005")
        );
    }

    #[test]
    fn a_file_entry_never_matches_a_registry_thumbprint() {
        let mut reg = Registry::new();
        // The registry gives thumbprint 2 (file: 100140000002's) to another participant.
        reg.upsert(record(
            "100140000007",
            &[wire::Role::User],
            wire::ParticipantStatus::Active,
            &[2],
        ));
        let n = build(&base(), Some(&reg), None);
        assert_eq!(
            n.directory.participant_by_thumbprint(&tp(2)).unwrap().bin,
            bin("100140000007")
        );
        assert!(n.directory.participant(bin("100140000002")).is_some());
    }
}
