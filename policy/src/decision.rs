//! The access decision of contract §6, rows 2–15, in order; the first failing row answers.
//! Row 1 (routing) is [`crate::route::match_route`]; rows 16+ (rate limits, upstream) belong
//! to [`crate::limits`] and the gateway.
//!
//! Choices where the contract leaves room:
//!
//! * Row 10: a consent whose *status* is `expired` answers `consent_expired` (the code of
//!   row 11, which says the same thing more precisely than `consent_not_authorised`);
//!   `revoked` answers `consent_revoked`; `awaiting_authorisation` and `rejected` answer
//!   `consent_not_authorised`.
//! * Row 11: a consent is expired when `expires_at <= now` (no leeway: the consent registry
//!   is the clock's authority, not the API user).
//! * Row 12: a provider segment that is not a BIN cannot be in any consent, so it answers
//!   `provider_not_in_consent` there (on consent routes); on open data it reaches row 15 and
//!   answers `provider_not_found`.
//! * Row 14 applies only to routes with an `{account_id}`. The accounts *list* on a consent
//!   restricted to some accounts is allowed: the provider receives the consent id and
//!   customer in the `x-hub-*` headers and must list only the consent's accounts.
//! * Row 15: a provider is *not found* when its segment is not a BIN, it has no provider
//!   entry, no participant record, or its participant lacks the `provider` role; it is
//!   *unavailable* when its participant is not `active` or the entry is not published.
//! * Open data skips rows 4–14 and needs no `Authorization` header (any one sent is ignored).
//! * Row 4 under a flood: verified through a [`crate::token::Charged`] verifier, a token the
//!   cache cannot answer from a connection or certificate that spent its budget of failed
//!   verifications is not verified and answers `429 rate_limited` there (the row of the
//!   check that refused; [`Rejection::limited`] says which budget and for how long).

use std::sync::Arc;

use consent_cache::{Bin, ConsentStatus, Permission, Permissions};

use crate::code::Code;
use crate::directory::{Directory, Participant, ProviderApi, ProviderEntry, Role};
use crate::limits::Limited;
use crate::route::Route;
use crate::token::{bearer, check_binding, TokenError, VerifiedToken, Verify};

/// What the decision needs to know about a consent.
///
/// Implemented below for `consent_cache::Consent` (the store's cheap owned handle); tests
/// use small structs. Implementations must not allocate in these accessors.
pub trait ConsentView {
    /// The consent id.
    fn id(&self) -> &str;
    /// The API user it was granted to.
    fn api_user(&self) -> Bin;
    /// The customer's id (e.g. IIN); sent upstream, never logged.
    fn customer(&self) -> &str;
    /// The providers it covers.
    fn providers(&self) -> &[Bin];
    /// Whether it covers `provider`.
    fn covers_provider(&self, provider: Bin) -> bool;
    /// The permissions it grants.
    fn permissions(&self) -> Permissions;
    /// Whether it restricts account ids.
    fn accounts_restricted(&self) -> bool;
    /// Whether it covers `account` (always true when unrestricted).
    fn covers_account(&self, account: &str) -> bool;
    /// `expires_at` in Unix seconds, `None` = valid until revoked.
    fn expires_at(&self) -> Option<i64>;
    /// The lifecycle status.
    fn status(&self) -> ConsentStatus;
}

impl<T: ConsentView + ?Sized> ConsentView for &T {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn api_user(&self) -> Bin {
        (**self).api_user()
    }
    fn customer(&self) -> &str {
        (**self).customer()
    }
    fn providers(&self) -> &[Bin] {
        (**self).providers()
    }
    fn covers_provider(&self, provider: Bin) -> bool {
        (**self).covers_provider(provider)
    }
    fn permissions(&self) -> Permissions {
        (**self).permissions()
    }
    fn accounts_restricted(&self) -> bool {
        (**self).accounts_restricted()
    }
    fn covers_account(&self, account: &str) -> bool {
        (**self).covers_account(account)
    }
    fn expires_at(&self) -> Option<i64> {
        (**self).expires_at()
    }
    fn status(&self) -> ConsentStatus {
        (**self).status()
    }
}

/// The store's handle. It lives here because of the orphan rule: neither the gateway nor
/// `consent-cache` (which does not depend on `policy`) may implement it.
impl ConsentView for consent_cache::Consent {
    fn id(&self) -> &str {
        consent_cache::Consent::id(self)
    }
    fn api_user(&self) -> Bin {
        consent_cache::Consent::api_user(self)
    }
    fn customer(&self) -> &str {
        consent_cache::Consent::customer(self)
    }
    fn providers(&self) -> &[Bin] {
        consent_cache::Consent::providers(self)
    }
    fn covers_provider(&self, provider: Bin) -> bool {
        consent_cache::Consent::covers_provider(self, provider)
    }
    fn permissions(&self) -> Permissions {
        consent_cache::Consent::permissions(self)
    }
    fn accounts_restricted(&self) -> bool {
        consent_cache::Consent::accounts_restricted(self)
    }
    fn covers_account(&self, account: &str) -> bool {
        consent_cache::Consent::covers_account(self, account)
    }
    fn expires_at(&self) -> Option<i64> {
        consent_cache::Consent::expires_at(self)
    }
    fn status(&self) -> ConsentStatus {
        consent_cache::Consent::status(self)
    }
}

/// The facts about one request that the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The matched route (row 1 passed).
    pub route: &'a Route<'a>,
    /// SHA-256 of the client certificate's leaf DER, if the connection presented one.
    pub cert_thumbprint: Option<&'a [u8; 32]>,
    /// The raw `Authorization` header value, if any.
    pub authorization: Option<&'a [u8]>,
    /// Current time, Unix seconds.
    pub now_unix: i64,
    /// Whether the consent cache heard from its source within the configured bound.
    pub consent_state_fresh: bool,
}

/// A request the policy lets through (rate limits still to come).
#[derive(Debug)]
pub struct Grant<'a, C> {
    /// The calling participant.
    pub api_user: &'a Participant,
    /// The provider to route to.
    pub provider: &'a ProviderEntry,
    /// The verified token (`None` on open data).
    pub token: Option<Arc<VerifiedToken>>,
    /// The consent (`None` on open data).
    pub consent: Option<C>,
}

/// A refused request: the contract code and a static reason (no request data): the rule
/// that failed, in words, for logs and the problem's `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The contract code.
    pub code: Code,
    /// A fixed, data-free sentence saying which rule failed.
    pub reason: &'static str,
    /// Why the token was refused, when row 4 refused it (typed, for callers that act on
    /// a cause, e.g. an unknown `kid` asks for fresh keys).
    pub token_error: Option<TokenError>,
}

impl Rejection {
    /// The problem's `detail`: which rule failed, in words. Never request data: a fixed
    /// sentence, or for a refused token its [`TokenError::detail`].
    pub fn detail(&self) -> std::borrow::Cow<'static, str> {
        match self.token_error {
            Some(e) => e.detail(),
            None => std::borrow::Cow::Borrowed(self.reason),
        }
    }

    /// The token named a key id the verifier does not know (keys may have rotated).
    pub fn is_unknown_kid(&self) -> bool {
        self.token_error == Some(TokenError::UnknownKid)
    }

    /// The budget of failed verifications that refused to verify the token, if one did.
    pub fn limited(&self) -> Option<Limited> {
        match self.token_error {
            Some(TokenError::Throttled(limited)) => Some(limited),
            _ => None,
        }
    }
}

const fn reject(code: Code, reason: &'static str) -> Rejection {
    Rejection {
        code,
        reason,
        token_error: None,
    }
}

const fn token_rejected(e: TokenError) -> Rejection {
    Rejection {
        code: e.code(),
        reason: e.reason(),
        token_error: Some(e),
    }
}

/// Runs rows 2–15 of contract §6 for one request, verifying tokens with `tokens` (a
/// [`crate::TokenVerifier`], or one charged to the request's sources). The happy path
/// allocates nothing beyond what `consents` does and the `Arc` clone of a cached token.
pub fn decide<'a, C: ConsentView, V: Verify + ?Sized>(
    dir: &'a Directory,
    tokens: &V,
    consents: impl Fn(&str) -> Option<C>,
    facts: &Facts<'_>,
) -> Result<Grant<'a, C>, Rejection> {
    let route = facts.route;
    let participant = calling_participant(dir, facts)?;
    let provider_bin = route.provider_bin();
    let (token, consent) = match route.id.permission() {
        // Open data: rows 4–14 skipped.
        None => (None, None),
        Some(permission) => {
            let token = verified_token(tokens, participant, permission, facts)?;
            let consent = consents_rows(&consents, &token, participant.bin, facts)?;
            consent_covers(
                &consent,
                permission,
                provider_bin,
                route.account,
                facts.now_unix,
            )?;
            (Some(token), Some(consent))
        }
    };
    let provider = provider_rows(dir, provider_bin, route.api())?;
    Ok(Grant {
        api_user: participant,
        provider,
        token,
        consent,
    })
}

/// Rows 2–3: the connection's certificate names an active participant with the user role.
#[inline]
fn calling_participant<'a>(
    dir: &'a Directory,
    facts: &Facts<'_>,
) -> Result<&'a Participant, Rejection> {
    // Row 2.
    let participant = facts
        .cert_thumbprint
        .and_then(|tp| dir.participant_by_thumbprint(tp))
        .ok_or(reject(
            Code::ParticipantUnknown,
            "the client certificate is not registered to a participant",
        ))?;
    // Row 3.
    if !participant.is_active() {
        return Err(reject(
            Code::ParticipantInactive,
            "the calling participant is not active (suspended, isolated or terminated)",
        ));
    }
    if !participant.roles.contains(Role::User) {
        return Err(reject(
            Code::ParticipantInactive,
            "the calling participant does not hold the user role",
        ));
    }
    Ok(participant)
}

/// Rows 4–6: a valid bearer token, bound to this connection, whose scope has `permission`.
#[inline]
fn verified_token<V: Verify + ?Sized>(
    tokens: &V,
    participant: &Participant,
    permission: Permission,
    facts: &Facts<'_>,
) -> Result<Arc<VerifiedToken>, Rejection> {
    // Row 4.
    let raw = facts.authorization.ok_or(reject(
        Code::InvalidToken,
        "no Authorization header: this route needs a bearer token",
    ))?;
    let raw = bearer(raw).ok_or(reject(
        Code::InvalidToken,
        "the Authorization header is not one Bearer token",
    ))?;
    let token = tokens
        .verify_token(raw, facts.now_unix)
        .map_err(token_rejected)?;
    // Row 5. `cert_thumbprint` is present: row 2 passed.
    let thumbprint = facts.cert_thumbprint.ok_or(reject(
        Code::ParticipantUnknown,
        "the client certificate is not registered to a participant",
    ))?;
    check_binding(&token, participant.bin, thumbprint)
        .map_err(|code| reject(code, "the token's client_id or cnf.x5t#S256 does not match this connection's participant and certificate"))?;
    // Row 6.
    if !token.grants(permission) {
        return Err(reject(
            Code::InsufficientScope,
            "the token's scope does not grant this route's permission",
        ));
    }
    Ok(token)
}

/// Rows 7–10: fresh consent state holds the token's consent, owned by the caller and
/// authorised.
#[inline]
fn consents_rows<C: ConsentView>(
    consents: &impl Fn(&str) -> Option<C>,
    token: &VerifiedToken,
    api_user: Bin,
    facts: &Facts<'_>,
) -> Result<C, Rejection> {
    // Row 7.
    if !facts.consent_state_fresh {
        return Err(reject(Code::ConsentStateStale, "the hub has not heard from its consent source within its staleness bound; retry shortly"));
    }
    // Row 8.
    let consent = consents(&token.consent_id).ok_or(reject(
        Code::ConsentNotFound,
        "no consent has the token's consent_id",
    ))?;
    // Row 9.
    if consent.api_user() != api_user {
        return Err(reject(
            Code::ConsentNotOwned,
            "the token's consent belongs to another API user",
        ));
    }
    // Row 10.
    status_row(consent.status())?;
    Ok(consent)
}

/// Row 10: only an authorised consent passes (see the module notes for `expired`).
#[inline]
fn status_row(status: ConsentStatus) -> Result<(), Rejection> {
    match status {
        ConsentStatus::Authorised => Ok(()),
        ConsentStatus::Revoked => Err(reject(Code::ConsentRevoked, "the consent was revoked")),
        ConsentStatus::Expired => Err(reject(Code::ConsentExpired, "the consent has expired")),
        ConsentStatus::AwaitingAuthorisation => Err(reject(
            Code::ConsentNotAuthorised,
            "the consent is awaiting the customer's authorisation",
        )),
        ConsentStatus::Rejected => Err(reject(
            Code::ConsentNotAuthorised,
            "the customer rejected the consent",
        )),
    }
}

/// Rows 11–14: the consent has not expired and covers the provider, the permission and
/// (on routes with one) the account.
#[inline]
fn consent_covers(
    consent: &impl ConsentView,
    permission: Permission,
    provider_bin: Option<Bin>,
    account: Option<&str>,
    now_unix: i64,
) -> Result<(), Rejection> {
    // Row 11.
    if consent.expires_at().is_some_and(|e| e <= now_unix) {
        return Err(reject(
            Code::ConsentExpired,
            "the consent is past its expires_at",
        ));
    }
    // Row 12.
    if !provider_bin.is_some_and(|p| consent.covers_provider(p)) {
        return Err(reject(
            Code::ProviderNotInConsent,
            "the consent does not cover the provider in the path",
        ));
    }
    // Row 13.
    if !consent.permissions().contains(permission) {
        return Err(reject(
            Code::PermissionNotGranted,
            "the consent does not grant this route's permission",
        ));
    }
    // Row 14.
    if let Some(account) = account {
        if consent.accounts_restricted() && !consent.covers_account(account) {
            return Err(reject(
                Code::AccountNotInConsent,
                "the consent does not cover the account in the path",
            ));
        }
    }
    Ok(())
}

/// Row 15: the route's provider is a published entry of an active participant with the
/// provider role.
#[inline]
fn provider_rows(
    dir: &Directory,
    provider_bin: Option<Bin>,
    api: ProviderApi,
) -> Result<&ProviderEntry, Rejection> {
    let not_found = reject(Code::ProviderNotFound, "no provider has the id in the path");
    let provider_bin = provider_bin.ok_or(not_found)?;
    let provider = dir.provider(provider_bin).ok_or(not_found)?;
    let provider_participant = dir.participant(provider_bin).ok_or(not_found)?;
    if !provider_participant.roles.contains(Role::Provider) {
        return Err(reject(
            Code::ProviderNotFound,
            "the participant in the path does not hold the provider role",
        ));
    }
    if !provider_participant.is_active() {
        return Err(reject(
            Code::ProviderUnavailable,
            "the provider is not active",
        ));
    }
    if !provider.published {
        return Err(reject(
            Code::ProviderUnavailable,
            "the provider's API is not published",
        ));
    }
    if provider.delisted.contains(api) {
        return Err(reject(
            Code::ProviderUnavailable,
            "the provider's API is delisted (conformance monitoring or the operator)",
        ));
    }
    Ok(provider)
}
