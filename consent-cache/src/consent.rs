//! [`Consent`]: the cheap, owned handle to one stored consent that the request
//! path reads (contract §5 checks need nothing else).

use crate::record::{ConsentRecord, ACCOUNT_SEP};
use crate::segment::{Row, Segment};
use crate::types::{Bin, ConsentStatus, Permissions};
use std::fmt;
use std::sync::Arc;

/// One consent as the store held it when [`crate::ConsentStore::get`] returned.
///
/// Cloning bumps a reference count; nothing is copied. The handle is immutable:
/// later changes to the store give later lookups a new handle and leave this one
/// as it was.
#[derive(Clone)]
pub struct Consent {
    seg: Arc<Segment>,
    idx: u32,
}

impl Consent {
    pub(crate) fn new(seg: Arc<Segment>, idx: u32) -> Self {
        Consent { seg, idx }
    }

    #[inline]
    fn row(&self) -> &Row {
        self.seg.row(self.idx)
    }

    /// The consent id.
    #[inline]
    pub fn id(&self) -> &str {
        self.seg.id(self.idx)
    }

    /// The API user the consent was given to.
    #[inline]
    pub fn api_user(&self) -> Bin {
        self.row().api_user
    }

    /// The customer's id (sent upstream as `x-hub-customer`; never log it in clear).
    #[inline]
    pub fn customer(&self) -> &str {
        self.seg.customer(self.idx)
    }

    /// The providers the consent covers, in the order the control plane gave.
    #[inline]
    pub fn providers(&self) -> &[Bin] {
        self.seg.providers(self.idx)
    }

    /// Whether `provider` is one of [`Consent::providers`].
    #[inline]
    pub fn covers_provider(&self, provider: Bin) -> bool {
        self.providers().contains(&provider)
    }

    /// The granted permissions.
    #[inline]
    pub fn permissions(&self) -> Permissions {
        self.row().permissions
    }

    /// Whether the consent is limited to a list of accounts.
    #[inline]
    pub fn accounts_restricted(&self) -> bool {
        self.seg.accounts(self.idx).is_some()
    }

    /// Whether the consent covers `account` (always true when not restricted).
    #[inline]
    pub fn covers_account(&self, account: &str) -> bool {
        match self.seg.accounts(self.idx) {
            None => true,
            Some(joined) => joined.split(ACCOUNT_SEP).any(|a| a == account),
        }
    }

    /// The account ids the consent is restricted to; `None` when it covers all.
    pub fn accounts(&self) -> Option<impl Iterator<Item = &str> + '_> {
        self.seg.accounts(self.idx).map(|j| j.split(ACCOUNT_SEP))
    }

    /// The stated purpose.
    pub fn purpose(&self) -> &str {
        self.seg.purpose(self.idx)
    }

    /// Creation time, unix seconds.
    #[inline]
    pub fn created_at(&self) -> i64 {
        self.row().created_at
    }

    /// Expiry, unix seconds; `None` = valid until revoked.
    #[inline]
    pub fn expires_at(&self) -> Option<i64> {
        self.row().expires_at()
    }

    /// Whether the consent is past its expiry at `now_unix`: a consent expires at
    /// the instant `expires_at` (so `now_unix == expires_at` is expired).
    #[inline]
    pub fn is_expired_at(&self, now_unix: i64) -> bool {
        self.expires_at().is_some_and(|e| now_unix >= e)
    }

    /// The lifecycle status as stored (expiry is not applied; see [`Consent::is_expired_at`]).
    #[inline]
    pub fn status(&self) -> ConsentStatus {
        self.row().status
    }

    /// The consent as a DTO (allocates; for listings and exports, not the request path).
    pub fn to_record(&self) -> ConsentRecord {
        self.seg.view(self.idx).to_record()
    }

    pub(crate) fn segment(&self) -> &Segment {
        &self.seg
    }

    pub(crate) fn index(&self) -> u32 {
        self.idx
    }
}

/// Leaves the customer id and accounts out: handles end up in logs.
impl fmt::Debug for Consent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consent")
            .field("id", &self.id())
            .field("api_user", &self.api_user())
            .field("providers", &self.providers())
            .field("permissions", &self.permissions())
            .field("accounts_restricted", &self.accounts_restricted())
            .field("expires_at", &self.expires_at())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;
    use crate::types::Permission;

    fn handle(r: &crate::ConsentRecord) -> Consent {
        let mut scratch = String::new();
        let seg = Segment::single(&r.view(&mut scratch).unwrap()).unwrap();
        Consent::new(Arc::new(seg), 0)
    }

    #[test]
    fn accessors_reflect_the_record() {
        let mut r = sample("c-9");
        r.accounts = Some(vec!["KZ01".into(), "KZ02".into()]);
        let c = handle(&r);
        assert_eq!(c.id(), "c-9");
        assert_eq!(c.api_user(), r.api_user);
        assert_eq!(c.customer(), "900101300123");
        assert_eq!(c.providers(), r.providers.as_slice());
        assert!(c.covers_provider(r.providers[0]));
        assert!(!c.covers_provider(Bin::parse("000000000001").unwrap()));
        assert!(c.permissions().contains(Permission::Balances));
        assert!(!c.permissions().contains(Permission::Transactions));
        assert!(c.accounts_restricted());
        assert!(c.covers_account("KZ02"));
        assert!(!c.covers_account("KZ0"));
        assert!(!c.covers_account(""));
        assert_eq!(c.accounts().unwrap().collect::<Vec<_>>(), ["KZ01", "KZ02"]);
        assert_eq!(c.purpose(), r.purpose);
        assert_eq!(c.created_at(), 1_767_225_600);
        assert_eq!(c.expires_at(), Some(1_798_761_600));
        assert!(!c.is_expired_at(1_798_761_599));
        assert!(c.is_expired_at(1_798_761_600));
        assert_eq!(c.status(), ConsentStatus::Authorised);
        assert_eq!(c.to_record(), r);

        r.accounts = None;
        r.expires_at = None;
        let c = handle(&r);
        assert!(!c.accounts_restricted());
        assert!(c.covers_account("anything"));
        assert!(c.accounts().is_none());
        assert!(!c.is_expired_at(i64::MAX));
    }

    #[test]
    fn debug_hides_the_customer() {
        let c = handle(&sample("c-1"));
        let s = format!("{c:?}");
        assert!(s.contains("c-1"));
        assert!(!s.contains("900101300123"), "{s}");
    }

    #[test]
    fn handle_is_send_sync_static() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<Consent>();
        assert_eq!(std::mem::size_of::<Consent>(), 16);
    }
}
