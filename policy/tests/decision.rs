//! The decision table of contract §6, rows 2–15: for each row, a request on which that row
//! and every later row would fail must be answered by that row; plus the happy paths and
//! the open-data shortcut.

mod common;

use common::*;
use policy::directory::{ApiSet, ProviderApi};
use policy::{
    decide, match_route, Bin, Code, ConsentStatus, ConsentView, Directory, DirectoryBuilder, Facts,
    Grant, Participant, ParticipantStatus, Permission, Permissions, ProviderEntry, Rejection,
    Roles, Route, RouteId, TokenVerifier,
};
use serde_json::json;
use std::collections::HashMap;
use std::sync::OnceLock;

// Participants.
const U_INACTIVE: &str = "180340000002";
const U_NO_USER_ROLE: &str = "180340000003";
const U_OTHER: &str = "180340000004";
const P: &str = "200000000001";
const P_UNPUBLISHED: &str = "200000000002";
const P_SUSPENDED: &str = "200000000003";
const P_NO_ROLE: &str = "200000000004";
const P_NO_ENTRY: &str = "200000000005";
const P_UNKNOWN_IN_CONSENT: &str = "200000000006";
const P_UNKNOWN: &str = "299999999999";
/// Published, with its balances and ATM-list APIs delisted.
const P_DELISTED_APIS: &str = "200000000007";

const TP_INACTIVE: [u8; 32] = [0x02; 32];
const TP_NO_USER_ROLE: [u8; 32] = [0x03; 32];
const TP_OTHER: [u8; 32] = [0x04; 32];
const TP_UNREGISTERED: [u8; 32] = [0xEE; 32];

#[derive(Debug, Clone)]
struct TestConsent {
    id: String,
    api_user: Bin,
    customer: String,
    providers: Vec<Bin>,
    permissions: Permissions,
    accounts: Option<Vec<String>>,
    expires_at: Option<i64>,
    status: ConsentStatus,
}

impl ConsentView for TestConsent {
    fn id(&self) -> &str {
        &self.id
    }
    fn api_user(&self) -> Bin {
        self.api_user
    }
    fn customer(&self) -> &str {
        &self.customer
    }
    fn providers(&self) -> &[Bin] {
        &self.providers
    }
    fn covers_provider(&self, provider: Bin) -> bool {
        self.providers.contains(&provider)
    }
    fn permissions(&self) -> Permissions {
        self.permissions
    }
    fn accounts_restricted(&self) -> bool {
        self.accounts.is_some()
    }
    fn covers_account(&self, account: &str) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == account))
    }
    fn expires_at(&self) -> Option<i64> {
        self.expires_at
    }
    fn status(&self) -> ConsentStatus {
        self.status
    }
}

fn participant(b: &str, roles: Roles, status: ParticipantStatus) -> Participant {
    Participant {
        bin: bin(b),
        name: format!("P{b}").into(),
        roles,
        status,
    }
}

fn directory() -> Directory {
    use ParticipantStatus::*;
    let mut d = DirectoryBuilder::new();
    d.add_participant(participant(USER, Roles::USER, Active), [TP])
        .unwrap();
    d.add_participant(
        participant(U_INACTIVE, Roles::USER, Suspended),
        [TP_INACTIVE],
    )
    .unwrap();
    d.add_participant(
        participant(U_NO_USER_ROLE, Roles::PROVIDER, Active),
        [TP_NO_USER_ROLE],
    )
    .unwrap();
    d.add_participant(participant(U_OTHER, Roles::USER, Active), [TP_OTHER])
        .unwrap();
    d.add_participant(participant(P, Roles::PROVIDER, Active), [])
        .unwrap();
    d.add_participant(participant(P_UNPUBLISHED, Roles::PROVIDER, Active), [])
        .unwrap();
    d.add_participant(participant(P_SUSPENDED, Roles::BOTH, Suspended), [])
        .unwrap();
    d.add_participant(participant(P_NO_ROLE, Roles::USER, Active), [])
        .unwrap();
    d.add_participant(participant(P_NO_ENTRY, Roles::PROVIDER, Active), [])
        .unwrap();
    d.add_participant(participant(P_DELISTED_APIS, Roles::PROVIDER, Active), [])
        .unwrap();
    for (i, (b, published)) in [
        (P, true),
        (P_UNPUBLISHED, false),
        (P_SUSPENDED, true),
        (P_NO_ROLE, true),
    ]
    .into_iter()
    .enumerate()
    {
        d.add_provider(ProviderEntry {
            bin: bin(b),
            published,
            delisted: ApiSet::EMPTY,
            index: i,
        })
        .unwrap();
    }
    d.add_provider(ProviderEntry {
        bin: bin(P_DELISTED_APIS),
        published: true,
        delisted: [ProviderApi::Balances, ProviderApi::Atms]
            .into_iter()
            .collect(),
        index: 4,
    })
    .unwrap();
    d.build().unwrap()
}

struct World {
    keys: Keys,
    dir: Directory,
    tokens: TokenVerifier,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let keys = Keys::new();
        let tokens = keys.verifier();
        World {
            keys,
            dir: directory(),
            tokens,
        }
    })
}

fn consent(id: &str) -> TestConsent {
    TestConsent {
        id: id.to_owned(),
        api_user: bin(USER),
        customer: "900101300123".to_owned(),
        providers: [
            P,
            P_UNPUBLISHED,
            P_SUSPENDED,
            P_NO_ROLE,
            P_NO_ENTRY,
            P_UNKNOWN_IN_CONSENT,
            P_DELISTED_APIS,
        ]
        .iter()
        .map(|b| bin(b))
        .collect(),
        permissions: [
            Permission::Accounts,
            Permission::Balances,
            Permission::Transactions,
        ]
        .into_iter()
        .collect(),
        accounts: None,
        expires_at: Some(NOW + 3600),
        status: ConsentStatus::Authorised,
    }
}

/// One request: what it carries and what the consent store holds.
struct Req {
    path: String,
    cert: Option<[u8; 32]>,
    auth: Option<Vec<u8>>,
    fresh: bool,
    consents: HashMap<String, TestConsent>,
}

impl Req {
    fn new(path: &str) -> Req {
        let mut consents = HashMap::new();
        consents.insert("c-1".to_owned(), consent("c-1"));
        Req {
            path: path.to_owned(),
            cert: Some(TP),
            auth: Some(format!("Bearer {}", token_with(|_| {})).into_bytes()),
            fresh: true,
            consents,
        }
    }

    fn consent(&mut self) -> &mut TestConsent {
        self.consents.get_mut("c-1").unwrap()
    }

    fn run(&self) -> Result<Grant<'static, TestConsent>, Rejection> {
        let w = world();
        let route: Route<'_> = match_route(&http::Method::GET, &self.path, None).unwrap();
        let facts = Facts {
            route: &route,
            cert_thumbprint: self.cert.as_ref(),
            authorization: self.auth.as_deref(),
            now_unix: NOW,
            consent_state_fresh: self.fresh,
        };
        decide(
            &w.dir,
            &w.tokens,
            |id| self.consents.get(id).cloned(),
            &facts,
        )
    }

    fn code(&self) -> Option<Code> {
        self.run().err().map(|r| r.code)
    }
}

fn token_with(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    mint(&world().keys.ec, &c)
}

fn bearer_with(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Option<Vec<u8>> {
    Some(format!("Bearer {}", token_with(f)).into_bytes())
}

fn balances(provider: &str, account: &str) -> String {
    format!("/v1/providers/{provider}/accounts/{account}/balances")
}

/// Builds a request on which every row from `first` to 15 fails and every row before
/// `first` passes. The route is `balances` on account `A1`.
fn failing_from(first: u8) -> Req {
    let f = |row: u8| row >= first;
    let provider = match (f(12), f(15)) {
        (true, true) => P_UNKNOWN, // neither in the consent nor the directory
        (false, true) => P_UNKNOWN_IN_CONSENT, // in the consent, not in the directory
        _ => P,
    };
    let mut r = Req::new(&balances(provider, "A1"));
    // Row 14: the consent restricts accounts to ones other than A1.
    r.consent().accounts = Some(vec![if f(14) { "A9" } else { "A1" }.to_owned()]);
    // Row 13: the consent lacks `balances`.
    if f(13) {
        r.consent().permissions = Permissions::EMPTY.with(Permission::Accounts);
    }
    // Row 11.
    if f(11) {
        r.consent().expires_at = Some(NOW - 1);
    }
    // Row 10.
    if f(10) {
        r.consent().status = ConsentStatus::Revoked;
    }
    // Row 9.
    if f(9) {
        r.consent().api_user = bin(U_OTHER);
    }
    // Row 8: the token names a consent the store does not have.
    let consent_id = if f(8) { "c-missing" } else { "c-1" };
    // Row 7.
    r.fresh = !f(7);
    // Row 6: the token's scope lacks `balances`.
    let scope = if f(6) {
        "accounts transactions"
    } else {
        "accounts balances"
    };
    // Row 5: bound to another certificate.
    let cnf = if f(5) { TP_OTHER } else { TP };
    r.auth = bearer_with(|c| {
        c.insert("consent_id".into(), json!(consent_id));
        c.insert("scope".into(), json!(scope));
        c.insert("cnf".into(), json!({ "x5t#S256": b64(cnf) }));
    });
    // Row 4: no token at all.
    if f(4) {
        r.auth = None;
    }
    // Rows 3 and 2: the certificate.
    if f(3) {
        r.cert = Some(TP_INACTIVE);
    }
    if f(2) {
        r.cert = Some(TP_UNREGISTERED);
    }
    r
}

#[test]
fn the_scenario_builder_passes_when_nothing_fails() {
    let g = failing_from(16).run().unwrap();
    assert_eq!(g.api_user.bin, bin(USER));
    assert_eq!(g.provider.bin, bin(P));
}

#[test]
fn row_02_participant_unknown() {
    assert_eq!(failing_from(2).code(), Some(Code::ParticipantUnknown));
    let mut r = failing_from(2);
    r.cert = None;
    assert_eq!(r.code(), Some(Code::ParticipantUnknown));
}

#[test]
fn row_03_participant_inactive() {
    assert_eq!(failing_from(3).code(), Some(Code::ParticipantInactive));
    let mut r = failing_from(3);
    r.cert = Some(TP_NO_USER_ROLE);
    assert_eq!(r.code(), Some(Code::ParticipantInactive));
}

#[test]
fn row_04_invalid_token() {
    assert_eq!(failing_from(4).code(), Some(Code::InvalidToken));
    for auth in [
        Some(b"Basic dXNlcjpwYXNz".to_vec()),
        Some(b"Bearer".to_vec()),
        Some(b"Bearer not-a-jwt".to_vec()),
        bearer_with(|c| {
            c.insert("exp".into(), json!(NOW - 3600));
        }),
        bearer_with(|c| {
            c.insert("aud".into(), json!("someone-else"));
        }),
        Some(format!("Bearer {}", mint(&ec_key("ec1"), &claims())).into_bytes()),
    ] {
        let mut r = failing_from(4);
        r.auth = auth;
        assert_eq!(r.code(), Some(Code::InvalidToken));
    }
}

#[test]
fn row_05_token_binding_mismatch() {
    assert_eq!(failing_from(5).code(), Some(Code::TokenBindingMismatch));
    // client_id alone.
    let mut r = failing_from(5);
    r.auth = bearer_with(|c| {
        c.insert("consent_id".into(), json!("c-missing"));
        c.insert("scope".into(), json!("transactions"));
        c.insert("client_id".into(), json!(U_OTHER));
    });
    assert_eq!(r.code(), Some(Code::TokenBindingMismatch));
    // A token bound to this user's cert, presented on the connection of another user.
    let mut r = failing_from(16);
    r.cert = Some(TP_OTHER);
    assert_eq!(r.code(), Some(Code::TokenBindingMismatch));
}

#[test]
fn row_06_insufficient_scope() {
    assert_eq!(failing_from(6).code(), Some(Code::InsufficientScope));
}

#[test]
fn row_07_consent_state_stale() {
    assert_eq!(failing_from(7).code(), Some(Code::ConsentStateStale));
}

#[test]
fn row_08_consent_not_found() {
    assert_eq!(failing_from(8).code(), Some(Code::ConsentNotFound));
}

#[test]
fn row_09_consent_not_owned() {
    assert_eq!(failing_from(9).code(), Some(Code::ConsentNotOwned));
}

#[test]
fn row_10_consent_status() {
    assert_eq!(failing_from(10).code(), Some(Code::ConsentRevoked));
    for (status, code) in [
        (
            ConsentStatus::AwaitingAuthorisation,
            Code::ConsentNotAuthorised,
        ),
        (ConsentStatus::Rejected, Code::ConsentNotAuthorised),
        (ConsentStatus::Expired, Code::ConsentExpired),
        (ConsentStatus::Revoked, Code::ConsentRevoked),
    ] {
        let mut r = failing_from(10);
        r.consent().status = status;
        // Also not past expires_at, to show the status alone decides.
        r.consent().expires_at = None;
        assert_eq!(r.code(), Some(code), "{status:?}");
    }
}

#[test]
fn row_11_consent_expired() {
    assert_eq!(failing_from(11).code(), Some(Code::ConsentExpired));
    let mut r = failing_from(16);
    r.consent().expires_at = Some(NOW);
    assert_eq!(
        r.code(),
        Some(Code::ConsentExpired),
        "expires_at == now is expired"
    );
    r.consent().expires_at = Some(NOW + 1);
    assert_eq!(r.code(), None);
    r.consent().expires_at = None;
    assert_eq!(r.code(), None, "no expires_at: valid until revoked");
}

#[test]
fn row_12_provider_not_in_consent() {
    assert_eq!(failing_from(12).code(), Some(Code::ProviderNotInConsent));
    // A provider segment that is not a BIN.
    let mut r = failing_from(16);
    r.path = balances("bank-of-x", "A1");
    assert_eq!(r.code(), Some(Code::ProviderNotInConsent));
    // A known, healthy provider that the consent does not list.
    let mut r = failing_from(16);
    r.consent().providers.retain(|p| *p != bin(P));
    assert_eq!(r.code(), Some(Code::ProviderNotInConsent));
}

#[test]
fn row_13_permission_not_granted() {
    assert_eq!(failing_from(13).code(), Some(Code::PermissionNotGranted));
}

#[test]
fn row_14_account_not_in_consent() {
    assert_eq!(failing_from(14).code(), Some(Code::AccountNotInConsent));
}

#[test]
fn row_15_provider_not_found_or_unavailable() {
    assert_eq!(failing_from(15).code(), Some(Code::ProviderNotFound));
    for (provider, code) in [
        (P_UNKNOWN_IN_CONSENT, Code::ProviderNotFound),
        (P_NO_ROLE, Code::ProviderNotFound),
        (P_NO_ENTRY, Code::ProviderNotFound),
        (P_SUSPENDED, Code::ProviderUnavailable),
        (P_UNPUBLISHED, Code::ProviderUnavailable),
    ] {
        let mut r = failing_from(16);
        r.path = balances(provider, "A1");
        assert_eq!(r.code(), Some(code), "{provider}");
    }
}

#[test]
fn row_15_a_delisted_api_is_unavailable_and_the_provider_s_other_apis_serve() {
    let mut r = Req::new(&balances(P_DELISTED_APIS, "A1"));
    assert_eq!(r.code(), Some(Code::ProviderUnavailable));
    let rej = r.run().unwrap_err();
    assert!(rej.reason.contains("delisted"), "{}", rej.reason);
    r.path = format!("/v1/providers/{P_DELISTED_APIS}/accounts");
    assert_eq!(r.code(), None, "accounts is still published");
    assert_eq!(
        open_data(P_DELISTED_APIS).code(),
        Some(Code::ProviderUnavailable),
        "atms is delisted"
    );
    let mut branches = Req::new(&format!("/v1/open-data/{P_DELISTED_APIS}/branches"));
    branches.auth = None;
    assert_eq!(branches.code(), None, "branches is still published");
}

#[test]
fn rejections_carry_static_reasons_without_data() {
    for row in 2..=15 {
        let rej = failing_from(row).run().unwrap_err();
        assert!(!rej.reason.is_empty());
        let detail = rej.detail();
        for secret in ["c-1", "c-missing", "A1", "A9", USER, "900101300123"] {
            assert!(!rej.reason.contains(secret), "row {row}: {}", rej.reason);
            assert!(!detail.contains(secret), "row {row}: {detail}");
        }
    }
}

#[test]
fn happy_paths_for_every_consent_route() {
    for (path, id) in [
        (format!("/v1/providers/{P}/accounts"), RouteId::Accounts),
        (format!("/v1/providers/{P}/accounts/A1"), RouteId::Account),
        (balances(P, "A1"), RouteId::Balances),
        (
            format!("/v1/providers/{P}/accounts/A1/transactions"),
            RouteId::Transactions,
        ),
    ] {
        let r = Req::new(&path);
        let g = r.run().unwrap();
        assert_eq!(g.api_user.bin, bin(USER));
        assert_eq!(g.provider.bin, bin(P));
        assert_eq!(g.provider.index, 0);
        let t = g.token.as_ref().unwrap();
        assert_eq!(&*t.consent_id, "c-1");
        let c = g.consent.as_ref().unwrap();
        assert_eq!(c.id(), "c-1");
        assert_eq!(c.customer(), "900101300123");
        assert!(c.permissions().contains(id.permission().unwrap()));
    }
}

#[test]
fn account_list_is_allowed_on_a_restricted_consent() {
    let mut r = Req::new(&format!("/v1/providers/{P}/accounts"));
    r.consent().accounts = Some(vec!["A9".to_owned()]);
    assert!(r.run().is_ok());
    r.path = format!("/v1/providers/{P}/accounts/A1");
    assert_eq!(r.code(), Some(Code::AccountNotInConsent));
    r.path = format!("/v1/providers/{P}/accounts/A9/transactions");
    assert_eq!(r.code(), None);
}

#[test]
fn each_route_checks_its_own_permission() {
    for (path, perm) in [
        (format!("/v1/providers/{P}/accounts"), Permission::Accounts),
        (
            format!("/v1/providers/{P}/accounts/A1"),
            Permission::Accounts,
        ),
        (balances(P, "A1"), Permission::Balances),
        (
            format!("/v1/providers/{P}/accounts/A1/transactions"),
            Permission::Transactions,
        ),
    ] {
        let mut r = Req::new(&path);
        let all = consent("c-1").permissions;
        let without: Permissions = all.iter().filter(|p| *p != perm).collect();
        r.consent().permissions = without;
        assert_eq!(r.code(), Some(Code::PermissionNotGranted), "{path}");
        r.consent().permissions = all;
        let scope: Vec<&str> = all
            .iter()
            .filter(|p| *p != perm)
            .map(|p| p.as_str())
            .collect();
        r.auth = bearer_with(|c| {
            c.insert("scope".into(), json!(scope.join(" ")));
        });
        assert_eq!(r.code(), Some(Code::InsufficientScope), "{path}");
    }
}

// ------------------------------------------------------------------ open data

fn open_data(provider: &str) -> Req {
    let mut r = Req::new(&format!("/v1/open-data/{provider}/atms"));
    r.auth = None;
    r
}

#[test]
fn open_data_skips_rows_4_to_14() {
    // No token, stale consent state, no consents at all: still granted.
    let mut r = open_data(P);
    r.fresh = false;
    r.consents.clear();
    let g = r.run().unwrap();
    assert!(g.token.is_none() && g.consent.is_none());
    assert_eq!(g.provider.bin, bin(P));
    // A garbage Authorization header is ignored too.
    r.auth = Some(b"Bearer garbage".to_vec());
    assert!(r.run().is_ok());
}

#[test]
fn open_data_still_checks_rows_2_3_and_15() {
    let mut r = open_data(P_UNKNOWN);
    r.cert = None;
    assert_eq!(r.code(), Some(Code::ParticipantUnknown));
    r.cert = Some(TP_INACTIVE);
    assert_eq!(r.code(), Some(Code::ParticipantInactive));
    r.cert = Some(TP_NO_USER_ROLE);
    assert_eq!(r.code(), Some(Code::ParticipantInactive));
    r.cert = Some(TP);
    assert_eq!(r.code(), Some(Code::ProviderNotFound));
    for (provider, code) in [
        ("not-a-bin", Code::ProviderNotFound),
        (P_NO_ROLE, Code::ProviderNotFound),
        (P_NO_ENTRY, Code::ProviderNotFound),
        (P_SUSPENDED, Code::ProviderUnavailable),
        (P_UNPUBLISHED, Code::ProviderUnavailable),
    ] {
        assert_eq!(open_data(provider).code(), Some(code), "{provider}");
    }
}

#[test]
fn consent_lookup_uses_the_token_consent_id() {
    let mut r = Req::new(&balances(P, "A1"));
    let mut other = consent("c-2");
    other.status = ConsentStatus::Revoked;
    r.consents.insert("c-2".into(), other);
    assert_eq!(r.code(), None);
    r.auth = bearer_with(|c| {
        c.insert("consent_id".into(), json!("c-2"));
    });
    assert_eq!(r.code(), Some(Code::ConsentRevoked));
}

#[test]
fn revocation_applies_to_a_still_valid_cached_token() {
    let mut r = Req::new(&balances(P, "A1"));
    assert!(r.run().is_ok());
    assert!(r.run().is_ok());
    r.consent().status = ConsentStatus::Revoked;
    assert_eq!(r.code(), Some(Code::ConsentRevoked));
    assert!(world().tokens.cache_hits() >= 2);
}

#[test]
fn the_real_consent_store_handle_drives_the_decision() {
    let record = |id: &str, status: &str, accounts: serde_json::Value| {
        serde_json::from_value::<consent_cache::ConsentRecord>(json!({
            "id": id,
            "api_user": USER,
            "customer": "900101300123",
            "providers": [P],
            "permissions": ["accounts", "balances"],
            "accounts": accounts,
            "purpose": "budgeting",
            "created_at": "2025-01-01T00:00:00Z",
            "expires_at": "2030-01-01T00:00:00Z",
            "status": status,
        }))
        .unwrap()
    };
    let store = consent_cache::ConsentStore::from_records([
        record("c-1", "authorised", json!(["A1"])),
        record("c-2", "revoked", json!(null)),
    ])
    .unwrap();
    let w = world();
    let run = |path: &str, consent_id: &str| {
        let route = match_route(&http::Method::GET, path, None).unwrap();
        let auth = bearer_with(|c| {
            c.insert("consent_id".into(), json!(consent_id));
        })
        .unwrap();
        let facts = Facts {
            route: &route,
            cert_thumbprint: Some(&TP),
            authorization: Some(&auth),
            now_unix: NOW,
            consent_state_fresh: true,
        };
        decide(&w.dir, &w.tokens, |id| store.get(id), &facts)
            .map(|g| g.consent.map(|c| c.id().to_owned()))
            .map_err(|r| r.code)
    };
    assert_eq!(run(&balances(P, "A1"), "c-1"), Ok(Some("c-1".to_owned())));
    assert_eq!(
        run(&balances(P, "A2"), "c-1"),
        Err(Code::AccountNotInConsent)
    );
    assert_eq!(
        run(
            &format!("/v1/providers/{P}/accounts/A1/transactions"),
            "c-1"
        ),
        Err(Code::PermissionNotGranted)
    );
    assert_eq!(run(&balances(P, "A1"), "c-2"), Err(Code::ConsentRevoked));
    assert_eq!(run(&balances(P, "A1"), "c-3"), Err(Code::ConsentNotFound));
}
