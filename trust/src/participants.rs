//! The participant registry (contract §1): registration and status changes by the
//! operator, validation, and the in-memory [`Directory`] that maps a client
//! certificate's thumbprint to its participant on every request.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use consent_cache::Bin;
use serde::{Deserialize, Serialize};

use crate::clock::to_datetime;
use crate::db::{Sql, StoreError, Tx};
use crate::error::Error;
use crate::history::HistoryEntry;
use crate::wire::{
    FeedLine, ParticipantChange, ParticipantOp, ParticipantRecord, ParticipantStatus, ProviderApi,
    Role,
};

/// Longest accepted participant name, in characters.
const MAX_NAME_CHARS: usize = 200;
/// Most thumbprints one participant may register.
const MAX_THUMBPRINTS: usize = 16;
/// Most provider base URLs one participant may register.
const MAX_PROVIDER_URLS: usize = 16;
/// Longest accepted provider base URL, in bytes.
const MAX_URL_LEN: usize = 2048;

/// `PUT /v1/participants/{bin}`: registers a participant or replaces its record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantInput {
    /// Display name.
    pub name: String,
    /// Roles (at least one).
    pub roles: Vec<Role>,
    /// Client certificate thumbprints (`x5t#S256`); at least one for the `user` role.
    #[serde(default)]
    pub thumbprints: Vec<String>,
    /// Provider base URLs (https); required for, and only for, the `provider` role.
    #[serde(default)]
    pub provider_urls: Vec<String>,
    /// Status; default `active` for a new participant, unchanged for an existing one.
    #[serde(default)]
    pub status: Option<ParticipantStatus>,
}

/// `PUT /v1/participants/{bin}/status`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusInput {
    /// The new status.
    pub status: ParticipantStatus,
}

/// A participant with its history, as the operator API answers.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    /// The record as published on the feed.
    #[serde(flatten)]
    pub record: ParticipantRecord,
    /// The feed version of its last change.
    pub version: u64,
    /// Every change, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// Who a certificate thumbprint belongs to, built from the registry after each
/// participant change and swapped in whole.
#[derive(Debug, Default)]
pub struct Directory {
    /// The feed version the directory was loaded at (newer replaces older).
    pub version: u64,
    by_thumbprint: HashMap<[u8; 32], Bin>,
    by_bin: HashMap<Bin, ParticipantRecord>,
}

impl Directory {
    /// The participant a thumbprint is registered to.
    pub fn by_thumbprint(&self, thumbprint: &[u8; 32]) -> Option<&ParticipantRecord> {
        self.by_thumbprint
            .get(thumbprint)
            .and_then(|bin| self.by_bin.get(bin))
    }

    /// The participant with this BIN.
    pub fn get(&self, bin: Bin) -> Option<&ParticipantRecord> {
        self.by_bin.get(&bin)
    }

    /// Every participant, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &ParticipantRecord> {
        self.by_bin.values()
    }

    /// Loads the whole registry as of `version`.
    pub fn load(sql: &mut dyn Sql, version: u64) -> Result<Directory, StoreError> {
        let mut dir = Directory {
            version,
            ..Directory::default()
        };
        for record in all(sql)? {
            for t in &record.thumbprints {
                let tp = decode_thumbprint(t).ok_or_else(|| {
                    StoreError::Corrupt(format!("participant {}: thumbprint {t:?}", record.bin))
                })?;
                dir.by_thumbprint.insert(tp, record.bin);
            }
            dir.by_bin.insert(record.bin, record);
        }
        Ok(dir)
    }
}

/// Decodes an `x5t#S256` value (base64url without padding, 32 bytes).
pub fn decode_thumbprint(s: &str) -> Option<[u8; 32]> {
    let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
    bytes.try_into().ok()
}

/// Encodes a thumbprint as `x5t#S256`.
pub fn encode_thumbprint(tp: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(tp)
}

/// Every participant, by BIN.
pub fn all(sql: &mut dyn Sql) -> Result<Vec<ParticipantRecord>, StoreError> {
    let mut out = Vec::new();
    sql.query_each(
        "SELECT record FROM participants ORDER BY bin",
        &[],
        &mut |r| {
            out.push(serde_json::from_str(&r.text(0)?)?);
            Ok(())
        },
    )?;
    Ok(out)
}

/// The feed version of the newest participant change stored (0: none): a directory
/// loaded at this version or later is current.
pub fn newest_version(sql: &mut dyn Sql) -> Result<u64, StoreError> {
    let row = sql.query_one("SELECT MAX(version) FROM participants", &[])?;
    Ok(row.opt_int(0)?.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
}

/// One participant with its version.
fn load(sql: &mut dyn Sql, bin: Bin) -> Result<Option<(ParticipantRecord, u64)>, StoreError> {
    let row = sql.query_opt(
        "SELECT record, version FROM participants WHERE bin = $1",
        &[bin.to_string().into()],
    )?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some((
            serde_json::from_str(&r.text(0)?)?,
            crate::db::version(&r, 1)?,
        ))),
    }
}

/// One participant with its history, for the operator.
pub fn view(sql: &mut dyn Sql, bin: Bin) -> Result<Option<ParticipantView>, StoreError> {
    let Some((record, version)) = load(sql, bin)? else {
        return Ok(None);
    };
    let history = HistoryEntry::all(
        sql,
        "SELECT at, actor, from_status, to_status, version FROM participant_history
         WHERE bin = $1 ORDER BY seq",
        &[bin.to_string().into()],
    )?;
    Ok(Some(ParticipantView {
        record,
        version,
        history,
    }))
}

fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    n > 0 && n <= MAX_NAME_CHARS && !name.chars().any(char::is_control) && name.trim() == name
}

fn valid_provider_url(url: &str) -> bool {
    if url.len() > MAX_URL_LEN || url.bytes().any(|b| !b.is_ascii_graphic()) {
        return false;
    }
    // What gateways route (gateway/src/upstream.rs): exactly `https://host[:port][/prefix]`,
    // a lowercase scheme, no user info, a port that is a number, a prefix without `%`, `//`
    // or `/../`.
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let prefix = prefix.trim_end_matches('/');
    if authority.contains('@') || ["%", "//", "/../"].iter().any(|p| prefix.contains(p)) {
        return false;
    }
    let port = match authority.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .map(|(_, p)| p.strip_prefix(':').unwrap_or("443")),
        None => Some(authority.rsplit_once(':').map_or("443", |(_, p)| p)),
    };
    if port.is_none_or(|p| p.parse::<u16>().is_err()) {
        return false;
    }
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            uri.scheme_str() == Some("https")
                && uri.authority().is_some()
                && uri.query().is_none()
                && !url.contains('#')
        }
        Err(_) => false,
    }
}

/// Checks an input and normalises it (roles and thumbprints sorted, no duplicates).
fn normalise(mut input: ParticipantInput) -> Result<ParticipantInput, Error> {
    if !valid_name(&input.name) {
        return Err(Error::invalid(
            "name",
            "1 to 200 characters, no control characters, no surrounding spaces",
        ));
    }
    input.roles.sort_unstable();
    input.roles.dedup();
    if input.roles.is_empty() {
        return Err(Error::invalid("roles", "at least one of user, provider"));
    }
    if input.thumbprints.len() > MAX_THUMBPRINTS {
        return Err(Error::invalid("thumbprints", "at most 16"));
    }
    for (i, t) in input.thumbprints.iter().enumerate() {
        if decode_thumbprint(t).is_none() {
            return Err(Error::invalid(
                &format!("thumbprints[{i}]"),
                "an x5t#S256 value: base64url without padding of 32 bytes",
            ));
        }
    }
    input.thumbprints.sort_unstable();
    input.thumbprints.dedup();
    if input.roles.contains(&Role::User) && input.thumbprints.is_empty() {
        return Err(Error::invalid(
            "thumbprints",
            "a participant with the user role needs at least one",
        ));
    }
    let provider = input.roles.contains(&Role::Provider);
    if input.provider_urls.len() > MAX_PROVIDER_URLS {
        return Err(Error::invalid("provider_urls", "at most 16"));
    }
    if provider && input.provider_urls.is_empty() {
        return Err(Error::invalid(
            "provider_urls",
            "a participant with the provider role needs at least one base URL",
        ));
    }
    if !provider && !input.provider_urls.is_empty() {
        return Err(Error::invalid(
            "provider_urls",
            "only a participant with the provider role has base URLs",
        ));
    }
    for (i, u) in input.provider_urls.iter().enumerate() {
        if !valid_provider_url(u) {
            return Err(Error::invalid(
                &format!("provider_urls[{i}]"),
                "an https URL with a host, without query or fragment",
            ));
        }
        if input.provider_urls[..i].contains(u) {
            return Err(Error::invalid(
                &format!("provider_urls[{i}]"),
                "listed twice",
            ));
        }
    }
    Ok(input)
}

/// Whether `from → to` is allowed: any move among active, suspended and isolated;
/// anything may be terminated; nothing leaves `terminated`.
fn transition_allowed(from: ParticipantStatus, to: ParticipantStatus) -> bool {
    from != ParticipantStatus::Terminated || to == ParticipantStatus::Terminated
}

/// What [`upsert`] and [`set_status`] did.
#[derive(Debug)]
pub struct Written {
    /// The participant as stored now.
    pub view: ParticipantView,
    /// Whether it was new.
    pub created: bool,
    /// The registry after the write (to swap in once committed).
    pub directory: Arc<Directory>,
}

/// Registers or replaces a participant. `reserved` are thumbprints no participant may
/// take (the operator's and the hubs').
pub fn upsert(
    tx: &mut Tx<'_>,
    bin: Bin,
    input: ParticipantInput,
    actor: &str,
    reserved: &[[u8; 32]],
) -> Result<Written, Error> {
    let input = normalise(input)?;
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let existing = load(tx, bin)?;
    check_thumbprints(tx, bin, &input.thumbprints, reserved)?;
    let from = existing.as_ref().map(|(r, _)| r.status);
    let status = match (input.status, from) {
        (Some(s), _) => s,
        (None, Some(s)) => s,
        (None, None) => ParticipantStatus::Active,
    };
    if let Some(from) = from {
        if !transition_allowed(from, status) || from == ParticipantStatus::Terminated {
            return Err(Error::Conflict {
                code: "participant_terminated",
                detail: "a terminated participant cannot be changed".into(),
            });
        }
    }
    let record = ParticipantRecord {
        bin,
        name: input.name,
        roles: input.roles,
        status,
        thumbprints: input.thumbprints,
        provider_urls: input.provider_urls,
        // Which APIs are delisted is conformance monitoring's and the operator's pins'
        // business, never changed by re-registering the participant.
        delisted: existing
            .as_ref()
            .map(|(old, _)| old.delisted.clone())
            .unwrap_or_default(),
        updated_at: to_datetime(tx.now()),
    };
    if let Some((old, _)) = &existing {
        let mut same = old.clone();
        same.updated_at = record.updated_at;
        if same == record {
            // Nothing changed: no feed version, no history.
            let view = view(tx, bin)?.ok_or_else(|| {
                StoreError::Corrupt(format!("participant {bin} vanished in a transaction"))
            })?;
            let head = tx.head()?;
            let directory = Arc::new(Directory::load(tx, head)?);
            return Ok(Written {
                view,
                created: false,
                directory,
            });
        }
    }
    write(tx, &record, from, actor, existing.is_none())?;
    let view =
        view(tx, bin)?.ok_or_else(|| StoreError::Corrupt(format!("participant {bin} vanished")))?;
    let head = tx.head()?;
    Ok(Written {
        view,
        created: existing.is_none(),
        directory: Arc::new(Directory::load(tx, head)?),
    })
}

/// Refuses thumbprints that are reserved or registered to another participant.
fn check_thumbprints(
    sql: &mut dyn Sql,
    bin: Bin,
    thumbprints: &[String],
    reserved: &[[u8; 32]],
) -> Result<(), Error> {
    for t in thumbprints {
        let tp = decode_thumbprint(t).unwrap_or_default();
        if reserved.contains(&tp) {
            return Err(Error::Conflict {
                code: "thumbprint_in_use",
                detail: format!("{t} belongs to the operator or a hub"),
            });
        }
        let owner = sql
            .query_opt(
                "SELECT bin FROM participant_thumbprints WHERE thumbprint = $1",
                &[t.into()],
            )?
            .map(|r| r.text(0))
            .transpose()?;
        if owner.is_some_and(|o| o != bin.to_string()) {
            return Err(Error::Conflict {
                code: "thumbprint_in_use",
                detail: format!("{t} is registered to another participant"),
            });
        }
    }
    Ok(())
}

/// Moves a participant to `status`.
pub fn set_status(
    tx: &mut Tx<'_>,
    bin: Bin,
    status: ParticipantStatus,
    actor: &str,
) -> Result<Written, Error> {
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let Some((mut record, _)) = load(tx, bin)? else {
        return Err(Error::NotFound("participant_not_found"));
    };
    let from = record.status;
    if !transition_allowed(from, status) {
        return Err(Error::Conflict {
            code: "participant_terminated",
            detail: "a terminated participant cannot be changed".into(),
        });
    }
    if from != status {
        record.status = status;
        record.updated_at = to_datetime(tx.now());
        write(tx, &record, Some(from), actor, false)?;
    }
    changed(tx, bin)
}

/// Makes `delisted` the provider's unpublished APIs (conformance monitoring or an
/// operator's pin), publishing the change on the feed when it is one. Refuses a
/// participant that is not a provider.
pub fn set_delisted(
    tx: &mut Tx<'_>,
    bin: Bin,
    mut delisted: Vec<ProviderApi>,
    actor: &str,
) -> Result<Written, Error> {
    tx.head()?; // decides from what it reads (portable SQL rule 7)
    let Some((mut record, _)) = load(tx, bin)? else {
        return Err(Error::NotFound("participant_not_found"));
    };
    if !record.has_role(Role::Provider) {
        return Err(Error::NotFound("provider_not_found"));
    }
    delisted.sort_unstable();
    delisted.dedup();
    if record.delisted != delisted {
        record.delisted = delisted;
        record.updated_at = to_datetime(tx.now());
        write(tx, &record, Some(record.status), actor, false)?;
    }
    changed(tx, bin)
}

/// What an existing participant's change wrote: its view and the registry after it.
fn changed(tx: &mut Tx<'_>, bin: Bin) -> Result<Written, Error> {
    let view =
        view(tx, bin)?.ok_or_else(|| StoreError::Corrupt(format!("participant {bin} vanished")))?;
    let head = tx.head()?;
    Ok(Written {
        view,
        created: false,
        directory: Arc::new(Directory::load(tx, head)?),
    })
}

fn write(
    tx: &mut Tx<'_>,
    record: &ParticipantRecord,
    from: Option<ParticipantStatus>,
    actor: &str,
    created: bool,
) -> Result<(), StoreError> {
    let version = tx.emit(|version| {
        serde_json::to_string(&FeedLine::Participant(ParticipantChange {
            version,
            op: ParticipantOp::Upsert(record.clone()),
        }))
    })?;
    let bin = record.bin.to_string();
    let json = serde_json::to_string(record)?;
    let now = tx.now();
    let status = record.status.as_str();
    if created {
        tx.execute(
            "INSERT INTO participants(bin, record, status, created_at, version)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                bin.as_str().into(),
                json.into(),
                status.into(),
                now.into(),
                version.into(),
            ],
        )?;
    } else {
        tx.execute(
            "UPDATE participants SET record = $2, status = $3, version = $4 WHERE bin = $1",
            &[
                bin.as_str().into(),
                json.into(),
                status.into(),
                version.into(),
            ],
        )?;
    }
    replace_thumbprints(tx, &bin, &record.thumbprints)?;
    tx.execute(
        "INSERT INTO participant_history(bin, at, actor, from_status, to_status, version)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            bin.as_str().into(),
            now.into(),
            actor.into(),
            from.map(ParticipantStatus::as_str).into(),
            status.into(),
            version.into(),
        ],
    )?;
    Ok(())
}

/// Makes `thumbprints` the participant's registered thumbprints.
fn replace_thumbprints(
    sql: &mut dyn Sql,
    bin: &str,
    thumbprints: &[String],
) -> Result<(), StoreError> {
    sql.execute(
        "DELETE FROM participant_thumbprints WHERE bin = $1",
        &[bin.into()],
    )?;
    for t in thumbprints {
        sql.execute(
            "INSERT INTO participant_thumbprints(thumbprint, bin) VALUES ($1, $2)",
            &[t.into(), bin.into()],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ParticipantInput {
        ParticipantInput {
            name: "Bank".into(),
            roles: vec![Role::Provider, Role::User, Role::User],
            thumbprints: vec![encode_thumbprint(&[7; 32])],
            provider_urls: vec!["https://127.0.0.1:8443".into()],
            status: None,
        }
    }

    #[test]
    fn inputs_are_validated_and_normalised() {
        let ok = normalise(input()).unwrap();
        assert_eq!(ok.roles, [Role::User, Role::Provider]);
        type Mutation = Box<dyn Fn(&mut ParticipantInput)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|i| i.name = " x".into())),
            ("roles", Box::new(|i| i.roles.clear())),
            (
                "thumbprints[0]",
                Box::new(|i| i.thumbprints = vec!["abc".into()]),
            ),
            ("thumbprints", Box::new(|i| i.thumbprints.clear())),
            ("provider_urls", Box::new(|i| i.provider_urls.clear())),
            (
                "provider_urls[0]",
                Box::new(|i| i.provider_urls = vec!["http://bank".into()]),
            ),
            (
                "provider_urls",
                Box::new(|i| {
                    i.roles = vec![Role::User];
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut i = input();
            mutate(&mut i);
            match normalise(i) {
                Err(Error::Unprocessable { detail, .. }) => {
                    assert!(detail.starts_with(field), "{field}: {detail}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn terminated_is_final() {
        use ParticipantStatus::*;
        assert!(transition_allowed(Active, Suspended));
        assert!(transition_allowed(Isolated, Active));
        assert!(transition_allowed(Suspended, Terminated));
        assert!(!transition_allowed(Terminated, Active));
    }

    /// Found by the `trust_body` fuzz target: `htTps://…` (a scheme in another case) was
    /// stored, and every gateway refuses such a record (`gateway/src/upstream.rs` reads
    /// exactly `https://host[:port][/prefix]`), so the provider would have been unroutable.
    #[test]
    fn provider_urls_are_what_gateways_route() {
        for bad in [
            "htTps://127.0.0.1:9443/api",
            "HTTPS://bank.test",
            "https://user@bank.test",
            "https://bank.test/a%2Fb",
            "https://bank.test//api",
            "https://bank.test/a/../b",
            "https://bank.test:",
            "https://bank.test:99999",
        ] {
            assert!(!valid_provider_url(bad), "{bad} was accepted");
        }
        for good in [
            "https://127.0.0.1:9443/api",
            "https://bank.test/api/",
            "https://[::1]:8443",
        ] {
            assert!(valid_provider_url(good), "{good} was refused");
        }
    }
}
