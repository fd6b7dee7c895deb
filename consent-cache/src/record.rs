//! The consent record as exchanged with the control plane (contract §5): the serde
//! DTO, its validation, and the borrowed normalised view the store is built from.

use crate::types::{Bin, ConsentStatus, Permission, Permissions};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Longest accepted consent id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest accepted customer id, in bytes.
pub const MAX_CUSTOMER_LEN: usize = 255;
/// Most providers one consent may name.
pub const MAX_PROVIDERS: usize = 255;
/// Longest accepted account id, in characters (contract §5).
pub const MAX_ACCOUNT_LEN: usize = 64;
/// Most accounts one consent may restrict itself to.
pub const MAX_ACCOUNTS: usize = 1024;
/// Longest accepted purpose, in bytes.
pub const MAX_PURPOSE_LEN: usize = 4096;

/// Separates account ids inside the store's text arena; account ids are made of
/// [`is_account_char`] only, so the joined form is unambiguous.
pub(crate) const ACCOUNT_SEP: char = '\0';

/// One consent as the control plane publishes it (contract §5).
///
/// Times are RFC 3339 on the wire. The store keeps whole unix seconds in UTC:
/// fractional seconds are dropped (rounded towards the past) and the offset is
/// normalised, so a record read back from the store compares equal only if it was
/// already in that form. Permissions come back in canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    /// Unique consent id: 1 to 128 visible ASCII characters (no spaces).
    pub id: String,
    /// The API user (data recipient) the consent was given to.
    pub api_user: Bin,
    /// The customer's id (e.g. IIN): 1 to 255 visible ASCII characters, since it is
    /// forwarded upstream as a header value.
    pub customer: String,
    /// Providers whose data the consent covers; non-empty, no duplicates.
    pub providers: Vec<Bin>,
    /// Granted permissions; non-empty, no duplicates.
    pub permissions: Vec<Permission>,
    /// Account ids the consent is restricted to; absent means all accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<String>>,
    /// Why the data is requested, as shown to the customer.
    pub purpose: String,
    /// When the consent was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the consent stops allowing access; absent means until revoked.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// Lifecycle status.
    pub status: ConsentStatus,
}

/// Why a consent record is invalid; the message starts with the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The id is empty, too long or has characters other than visible ASCII.
    #[error("id: must be 1 to 128 visible ASCII characters")]
    Id,
    /// The customer id is empty, too long or has characters other than visible ASCII.
    #[error("customer: must be 1 to 255 visible ASCII characters")]
    Customer,
    /// No provider listed.
    #[error("providers: must not be empty")]
    NoProviders,
    /// More than [`MAX_PROVIDERS`] providers.
    #[error("providers: at most 255 entries")]
    TooManyProviders,
    /// A provider listed twice.
    #[error("providers: {0} is listed twice")]
    DuplicateProvider(Bin),
    /// No permission listed.
    #[error("permissions: must not be empty")]
    NoPermissions,
    /// A permission listed twice.
    #[error("permissions: {} is listed twice", .0.as_str())]
    DuplicatePermission(Permission),
    /// `accounts` present but empty.
    #[error("accounts: must not be empty when present (omit the field to cover all accounts)")]
    NoAccounts,
    /// More than [`MAX_ACCOUNTS`] accounts.
    #[error("accounts: at most 1024 entries")]
    TooManyAccounts,
    /// An account id that is empty, too long or has a character outside
    /// `A-Z a-z 0-9 - _ .` (the value is not echoed: account numbers stay out of logs).
    #[error("accounts[{0}]: must be 1 to 64 characters from A-Z a-z 0-9 - _ .")]
    Account(usize),
    /// An account id listed twice (the value is not echoed: account numbers stay out of logs).
    #[error("accounts: an account id is listed twice")]
    DuplicateAccount,
    /// A purpose longer than [`MAX_PURPOSE_LEN`].
    #[error("purpose: at most 4096 bytes")]
    Purpose,
    /// A timestamp outside the years -9999..=9999.
    #[error("{0}: out of range")]
    TimeRange(&'static str),
    /// `expires_at` earlier than `created_at`.
    #[error("expires_at: earlier than created_at")]
    ExpiresBeforeCreated,
}

/// A validated-or-to-be-validated record in the store's normalised form, borrowed
/// from whatever it was decoded from (a DTO, a snapshot block, a stored record).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordView<'a> {
    pub id: &'a str,
    pub api_user: Bin,
    pub customer: &'a str,
    pub providers: &'a [Bin],
    pub permissions: Permissions,
    /// Account ids joined by [`ACCOUNT_SEP`]; `None` = all accounts.
    pub accounts: Option<&'a str>,
    pub purpose: &'a str,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub status: ConsentStatus,
}

fn visible_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `b` may appear in an account id (contract §5: `A-Z a-z 0-9 - _ .`). The set
/// leaves out every separator a list of ids could be joined with (`,`, spaces, quotes,
/// control characters), so the hub's `x-hub-accounts` list and any comparison a bank
/// makes against it are unambiguous.
fn is_account_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn valid_account(a: &str) -> bool {
    !a.is_empty() && a.len() <= MAX_ACCOUNT_LEN && a.bytes().all(is_account_char)
}

fn in_time_range(secs: i64) -> bool {
    OffsetDateTime::from_unix_timestamp(secs).is_ok()
}

/// Turns stored unix seconds back into a UTC timestamp. Stored values were range
/// checked on the way in, so the fallback is unreachable.
pub(crate) fn from_unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl RecordView<'_> {
    /// Checks every rule that does not depend on how the record was encoded.
    pub(crate) fn validate(&self) -> Result<(), RecordError> {
        if !visible_ascii(self.id, MAX_ID_LEN) {
            return Err(RecordError::Id);
        }
        if !visible_ascii(self.customer, MAX_CUSTOMER_LEN) {
            return Err(RecordError::Customer);
        }
        match self.providers.len() {
            0 => return Err(RecordError::NoProviders),
            n if n > MAX_PROVIDERS => return Err(RecordError::TooManyProviders),
            _ => {}
        }
        for (i, p) in self.providers.iter().enumerate() {
            if self.providers[..i].contains(p) {
                return Err(RecordError::DuplicateProvider(*p));
            }
        }
        if self.permissions.is_empty() {
            return Err(RecordError::NoPermissions);
        }
        if let Some(joined) = self.accounts {
            if joined.is_empty() {
                return Err(RecordError::NoAccounts);
            }
            let mut list: Vec<&str> = joined.split(ACCOUNT_SEP).collect();
            if list.len() > MAX_ACCOUNTS {
                return Err(RecordError::TooManyAccounts);
            }
            if let Some(i) = list.iter().position(|a| !valid_account(a)) {
                return Err(RecordError::Account(i));
            }
            list.sort_unstable();
            if list.windows(2).any(|w| w[0] == w[1]) {
                return Err(RecordError::DuplicateAccount);
            }
        }
        if self.purpose.len() > MAX_PURPOSE_LEN {
            return Err(RecordError::Purpose);
        }
        if !in_time_range(self.created_at) {
            return Err(RecordError::TimeRange("created_at"));
        }
        if let Some(exp) = self.expires_at {
            if !in_time_range(exp) {
                return Err(RecordError::TimeRange("expires_at"));
            }
            if exp < self.created_at {
                return Err(RecordError::ExpiresBeforeCreated);
            }
        }
        Ok(())
    }

    /// Rebuilds the DTO (used to list and re-export the store's contents).
    pub(crate) fn to_record(self) -> ConsentRecord {
        ConsentRecord {
            id: self.id.to_owned(),
            api_user: self.api_user,
            customer: self.customer.to_owned(),
            providers: self.providers.to_vec(),
            permissions: self.permissions.iter().collect(),
            accounts: self
                .accounts
                .map(|j| j.split(ACCOUNT_SEP).map(str::to_owned).collect()),
            purpose: self.purpose.to_owned(),
            created_at: from_unix(self.created_at),
            expires_at: self.expires_at.map(from_unix),
            status: self.status,
        }
    }
}

impl ConsentRecord {
    /// Checks the record against the rules of contract §5 and this store's limits.
    pub fn validate(&self) -> Result<(), RecordError> {
        let mut joined = String::new();
        self.view(&mut joined).and_then(|v| v.validate())
    }

    /// The normalised view; `joined` is scratch space for the account list.
    /// Checks the list-shaped rules the view can no longer see (duplicate
    /// permissions, account ids that would break the joined form).
    pub(crate) fn view<'a>(
        &'a self,
        joined: &'a mut String,
    ) -> Result<RecordView<'a>, RecordError> {
        let mut permissions = Permissions::EMPTY;
        for &p in &self.permissions {
            if permissions.contains(p) {
                return Err(RecordError::DuplicatePermission(p));
            }
            permissions.insert(p);
        }
        let accounts = match &self.accounts {
            None => None,
            Some(list) => {
                if list.len() > MAX_ACCOUNTS {
                    return Err(RecordError::TooManyAccounts);
                }
                joined.clear();
                for (i, a) in list.iter().enumerate() {
                    if !valid_account(a) {
                        return Err(RecordError::Account(i));
                    }
                    if i > 0 {
                        joined.push(ACCOUNT_SEP);
                    }
                    joined.push_str(a);
                }
                Some(joined.as_str())
            }
        };
        Ok(RecordView {
            id: &self.id,
            api_user: self.api_user,
            customer: &self.customer,
            providers: &self.providers,
            permissions,
            accounts,
            purpose: &self.purpose,
            created_at: self.created_at.unix_timestamp(),
            expires_at: self.expires_at.map(OffsetDateTime::unix_timestamp),
            status: self.status,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid record for tests to start from.
    pub(crate) fn sample(id: &str) -> ConsentRecord {
        ConsentRecord {
            id: id.to_owned(),
            api_user: Bin::parse("180340012345").unwrap(),
            customer: "900101300123".to_owned(),
            providers: vec![Bin::parse("990140000011").unwrap()],
            permissions: vec![Permission::Accounts, Permission::Balances],
            accounts: None,
            purpose: "personal finance management".to_owned(),
            created_at: OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap(),
            expires_at: Some(OffsetDateTime::from_unix_timestamp(1_798_761_600).unwrap()),
            status: ConsentStatus::Authorised,
        }
    }

    #[test]
    fn sample_is_valid_and_round_trips_through_the_view() {
        let r = sample("c-1");
        r.validate().unwrap();
        let mut scratch = String::new();
        assert_eq!(r.view(&mut scratch).unwrap().to_record(), r);
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = fn(&mut ConsentRecord);
        let cases: Vec<(Mutation, &str)> = vec![
            (|r| r.id.clear(), "id:"),
            (|r| r.id = "a b".into(), "id:"),
            (|r| r.id = "é".into(), "id:"),
            (|r| r.id = "x".repeat(129), "id:"),
            (|r| r.customer.clear(), "customer:"),
            (|r| r.customer = "12\n".into(), "customer:"),
            (|r| r.providers.clear(), "providers:"),
            (|r| r.providers.push(r.providers[0]), "providers:"),
            (|r| r.permissions.clear(), "permissions:"),
            (
                |r| r.permissions.push(Permission::Accounts),
                "permissions: accounts",
            ),
            (|r| r.accounts = Some(vec![]), "accounts:"),
            (
                |r| r.accounts = Some(vec!["a".into(), "".into()]),
                "accounts[1]:",
            ),
            (|r| r.accounts = Some(vec!["a\0b".into()]), "accounts[0]:"),
            (|r| r.accounts = Some(vec!["x".repeat(65)]), "accounts[0]:"),
            (
                |r| r.accounts = Some(vec!["a".into(), "a".into()]),
                "accounts:",
            ),
            (|r| r.purpose = "p".repeat(4097), "purpose:"),
            (
                |r| r.expires_at = Some(r.created_at - time::Duration::seconds(1)),
                "expires_at:",
            ),
        ];
        for (mutate, prefix) in cases {
            let mut r = sample("c-1");
            mutate(&mut r);
            let err = r.validate().unwrap_err().to_string();
            assert!(
                err.starts_with(prefix),
                "{err:?} should start with {prefix:?}"
            );
        }
        let mut r = sample("c-1");
        r.id = "x".repeat(128);
        r.accounts = Some(vec!["KZ001".into(), "KZ002".into()]);
        r.expires_at = None;
        r.validate().unwrap();
    }

    /// Contract §5: `A-Z a-z 0-9 - _ .`, 1 to 64 characters. Anything a list could be
    /// joined or split on (`x-hub-accounts` is a comma list) is refused, so no id can
    /// stand for two, and the error never echoes the id.
    #[test]
    fn account_ids_use_only_the_contract_character_set() {
        let with = |ids: &[&str]| {
            let mut r = sample("c-1");
            r.accounts = Some(ids.iter().map(|s| (*s).to_owned()).collect());
            r.validate()
        };
        let every_allowed = "AZaz09-_.KZ86125KZT5004100100";
        with(&[every_allowed, &"7".repeat(64), "."]).unwrap();
        for bad in [
            "KZ01,KZ02",
            "KZ01 ",
            " KZ01",
            "KZ 01",
            "KZ01\t",
            "KZ\"01",
            "KZ;01",
            "KZ/01",
            "KZ%2C01",
            "KZ+01",
            "KZ01é",
            "КZ01",
        ] {
            let err = with(&["KZ-ok", bad]).unwrap_err();
            assert_eq!(err, RecordError::Account(1), "{bad:?}");
            assert!(!err.to_string().contains(bad), "{err} echoes {bad:?}");
        }
        assert_eq!(
            with(&[&"7".repeat(65)]).unwrap_err(),
            RecordError::Account(0)
        );
    }

    #[test]
    fn json_shape_matches_the_contract() {
        let line = r#"{"id":"c-1","api_user":"180340012345","customer":"900101300123","providers":["990140000011"],"permissions":["accounts","balances"],"purpose":"personal finance management","created_at":"2026-01-01T00:00:00Z","expires_at":"2027-01-01T00:00:00Z","status":"authorised"}"#;
        let r: ConsentRecord = serde_json::from_str(line).unwrap();
        assert_eq!(r, sample("c-1"));
        assert_eq!(serde_json::to_string(&r).unwrap(), line);
        let unknown = line.replace(r#""status""#, r#""colour":"red","status""#);
        let err = serde_json::from_str::<ConsentRecord>(&unknown).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }
}
