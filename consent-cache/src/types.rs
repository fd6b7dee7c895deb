//! Value types shared by the consent store and the policy: participant BINs,
//! permissions and consent statuses (contract §1, §5).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A participant's 12-digit BIN, stored as an integer so comparisons are one instruction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bin(u64);

/// A string that is not a 12-digit BIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a BIN is exactly 12 ASCII digits")]
pub struct ParseBinError;

impl Bin {
    /// Parses exactly 12 ASCII digits.
    pub fn parse(s: &str) -> Result<Self, ParseBinError> {
        let b = s.as_bytes();
        if b.len() != 12 {
            return Err(ParseBinError);
        }
        let mut v: u64 = 0;
        for &c in b {
            if !c.is_ascii_digit() {
                return Err(ParseBinError);
            }
            v = v * 10 + u64::from(c - b'0');
        }
        Ok(Bin(v))
    }

    /// The BIN with this numeric value; `None` above 999 999 999 999.
    pub const fn new(value: u64) -> Option<Self> {
        if value < 1_000_000_000_000 {
            Some(Bin(value))
        } else {
            None
        }
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Writes the 12 digits into a fixed buffer (no allocation).
    pub fn digits(self) -> [u8; 12] {
        let mut out = [b'0'; 12];
        let mut v = self.0;
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out
    }
}

impl FromStr for Bin {
    type Err = ParseBinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Bin::parse(s)
    }
}

impl fmt::Display for Bin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012}", self.0)
    }
}

impl fmt::Debug for Bin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bin({:012})", self.0)
    }
}

impl Serialize for Bin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Bin::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One permission a consent or token may grant (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// List and read accounts.
    Accounts,
    /// Read account balances.
    Balances,
    /// Read account transactions.
    Transactions,
    /// Reserved for payment initiation; no route grants it yet.
    Payments,
}

impl Permission {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::Accounts => "accounts",
            Permission::Balances => "balances",
            Permission::Transactions => "transactions",
            Permission::Payments => "payments",
        }
    }

    /// Parses a wire name; unknown names are `None` (callers decide whether to ignore them).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accounts" => Some(Permission::Accounts),
            "balances" => Some(Permission::Balances),
            "transactions" => Some(Permission::Transactions),
            "payments" => Some(Permission::Payments),
            _ => None,
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Permission::Accounts => 1,
            Permission::Balances => 2,
            Permission::Transactions => 4,
            Permission::Payments => 8,
        }
    }
}

/// A set of permissions as a bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// The empty set.
    pub const EMPTY: Permissions = Permissions(0);

    /// All bits a valid set may have (the four permissions).
    const ALL_BITS: u8 = 0x0f;

    /// Rebuilds a set from [`Permissions::bits`]; `None` if an unknown bit is set.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL_BITS == 0 {
            Some(Permissions(bits))
        } else {
            None
        }
    }

    /// Whether `p` is in the set.
    pub const fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Adds `p` to the set.
    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    /// The set with `p` added.
    pub const fn with(self, p: Permission) -> Self {
        Permissions(self.0 | p.bit())
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bit set (accounts = 1, balances = 2, transactions = 4, payments = 8).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Iterates in the canonical order accounts, balances, transactions, payments.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        [
            Permission::Accounts,
            Permission::Balances,
            Permission::Transactions,
            Permission::Payments,
        ]
        .into_iter()
        .filter(move |p| self.contains(*p))
    }

    /// The comma list sent upstream in `x-hub-permissions`; one of 16 precomputed strings.
    pub fn comma_list(self) -> &'static str {
        const LISTS: [&str; 16] = [
            "",
            "accounts",
            "balances",
            "accounts,balances",
            "transactions",
            "accounts,transactions",
            "balances,transactions",
            "accounts,balances,transactions",
            "payments",
            "accounts,payments",
            "balances,payments",
            "accounts,balances,payments",
            "transactions,payments",
            "accounts,transactions,payments",
            "balances,transactions,payments",
            "accounts,balances,transactions,payments",
        ];
        LISTS[usize::from(self.0 & 0x0f)]
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut s = Permissions::EMPTY;
        for p in iter {
            s.insert(p);
        }
        s
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A consent's lifecycle status (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    /// Created, not yet authorised by the customer.
    AwaitingAuthorisation,
    /// Authorised by the customer: the only status that allows access.
    Authorised,
    /// Refused by the customer.
    Rejected,
    /// Withdrawn after authorisation.
    Revoked,
    /// Past its `expires_at`.
    Expired,
}

impl ConsentStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::AwaitingAuthorisation => "awaiting_authorisation",
            ConsentStatus::Authorised => "authorised",
            ConsentStatus::Rejected => "rejected",
            ConsentStatus::Revoked => "revoked",
            ConsentStatus::Expired => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_round_trips_and_rejects_bad_input() {
        let b = Bin::parse("180340012345").unwrap();
        assert_eq!(b.to_string(), "180340012345");
        assert_eq!(&b.digits(), b"180340012345");
        assert_eq!(
            Bin::parse("000000000001").unwrap().to_string(),
            "000000000001"
        );
        for bad in [
            "",
            "18034001234",
            "1803400123456",
            "18034001234a",
            "+18034001234",
            " 180340012345",
        ] {
            assert!(Bin::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn permission_lists_are_canonical() {
        let all: Permissions = [Permission::Transactions, Permission::Accounts]
            .into_iter()
            .collect();
        assert_eq!(all.comma_list(), "accounts,transactions");
        for bits in 0u8..16 {
            let s = Permissions(bits);
            let joined: Vec<&str> = s.iter().map(Permission::as_str).collect();
            assert_eq!(s.comma_list(), joined.join(","));
        }
    }
}
