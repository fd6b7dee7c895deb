//! Fixtures shared by the micro-benchmarks: a development token issuer and verifier, a
//! one-user one-bank directory, synthetic consent records shaped like production ones,
//! and readings of `/proc/self/status`.
//!
//! Each bench binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use consent_cache::{Bin, ConsentRecord, ConsentStatus, Permission};
use policy::token::{Jwks, TokenSettings, TokenVerifier};
use policy::{Directory, DirectoryBuilder, Participant, ParticipantStatus, ProviderEntry, Roles};
use sandbox::tokens::{AccessClaims, DevAlg, DevIssuer};
use time::OffsetDateTime;

/// The API user (a fintech).
pub const USER: &str = "180340000009";
/// The provider bank.
pub const PROVIDER: &str = "990140000007";
/// The consent every decision benchmark uses.
pub const CONSENT_ID: &str = "consent-bench-0001";
/// The only account of that consent.
pub const ACCOUNT: &str = "KZ12345";
/// SHA-256 of the API user's client certificate (any 32 bytes serve here).
pub const THUMBPRINT: [u8; 32] = [7; 32];
pub const ISSUER: &str = "https://auth.bench.example";
pub const AUDIENCE: &str = "https://hub.bench.example";

/// A transactions request with every query parameter: the most work `match_route` does.
pub const PATH: &str = "/v1/providers/990140000007/accounts/KZ12345/transactions";
pub const QUERY: &str = "from=2026-01-01&to=2026-01-31&limit=50&cursor=abc";

pub fn bin(s: &str) -> Bin {
    Bin::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Wall-clock seconds, read once per binary so every token and check agrees.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn issuer(alg: DevAlg) -> DevIssuer {
    DevIssuer::generate(alg, &format!("bench-{alg}"), ISSUER).expect("dev issuer")
}

/// A verifier trusting `issuers`; `cache_capacity` 0 disables the cache of verified tokens.
pub fn verifier(issuers: &[&DevIssuer], cache_capacity: usize) -> TokenVerifier {
    let jwks = sandbox::tokens::jwks_json_for(issuers);
    let jwks = Jwks::from_json(jwks.as_bytes()).expect("jwks");
    let settings = TokenSettings {
        cache_capacity,
        ..TokenSettings::new(ISSUER, AUDIENCE)
    };
    TokenVerifier::new(settings, jwks)
}

/// A token for [`CONSENT_ID`] granting all three account permissions, bound to
/// [`THUMBPRINT`], valid for a day from `now`; each call has a new random `jti`.
pub fn token(issuer: &DevIssuer, now: i64) -> String {
    let claims = AccessClaims::for_consent(
        ISSUER,
        AUDIENCE,
        bin(USER),
        CONSENT_ID,
        &[
            Permission::Accounts,
            Permission::Balances,
            Permission::Transactions,
        ],
        &THUMBPRINT,
        now,
        86_400,
    )
    .expect("claims");
    issuer.mint(&claims).expect("mint")
}

/// [`USER`] (active, role user, certificate [`THUMBPRINT`]) and [`PROVIDER`] (active,
/// published).
pub fn directory() -> Directory {
    let mut d = DirectoryBuilder::new();
    d.add_participant(
        Participant {
            bin: bin(USER),
            name: "Bench Fintech".into(),
            roles: Roles::USER,
            status: ParticipantStatus::Active,
        },
        [THUMBPRINT],
    )
    .expect("user");
    d.add_participant(
        Participant {
            bin: bin(PROVIDER),
            name: "Bench Bank".into(),
            roles: Roles::PROVIDER,
            status: ParticipantStatus::Active,
        },
        [],
    )
    .expect("provider");
    d.add_provider(ProviderEntry {
        bin: bin(PROVIDER),
        published: true,
        delisted: policy::directory::ApiSet::EMPTY,
        index: 0,
    })
    .expect("provider entry");
    d.build().expect("directory")
}

/// The consent the decision benchmarks ask for: [`USER`] at [`PROVIDER`], all three
/// permissions, restricted to [`ACCOUNT`] (so row 14 runs), authorised, expiring in a year.
pub fn bench_consent(now: i64) -> ConsentRecord {
    ConsentRecord {
        id: CONSENT_ID.to_owned(),
        api_user: bin(USER),
        customer: "900101300123".to_owned(),
        providers: vec![bin(PROVIDER)],
        permissions: vec![
            Permission::Accounts,
            Permission::Balances,
            Permission::Transactions,
        ],
        accounts: Some(vec![ACCOUNT.to_owned()]),
        purpose: "account aggregation".to_owned(),
        created_at: time_at(now - 86_400),
        expires_at: Some(time_at(now + 31_536_000)),
        status: ConsentStatus::Authorised,
    }
}

fn time_at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// SplitMix64 finaliser: a cheap, well-mixed function of `i`.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Length of every synthetic consent id (a UUID).
pub const ID_LEN: usize = 36;

/// The id of synthetic record `i`: UUID-shaped, a pure function of `i`, so lookups can
/// regenerate ids without keeping the records.
pub fn id_of(i: u64) -> String {
    let (a, b) = (mix(i), mix(i ^ 0xdead_beef_0000_0000));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

const PURPOSES: [&str; 6] = [
    "personal finance management",
    "credit scoring for a loan application",
    "account aggregation",
    "mortgage affordability check",
    "accounting software synchronisation",
    "income verification",
];

fn bin_n(n: u64) -> Bin {
    Bin::new(n % 1_000_000_000_000).expect("n % 10^12 is a BIN")
}

/// Synthetic record `i`, shaped like production ones: 200 API users, 1–2 of 30 providers,
/// 1–3 permissions, 5% restricted to an account, 80% expiring, 10% revoked, six purposes
/// (the same shape as consent-cache's `snapshot_bench` example).
pub fn record(i: u64) -> ConsentRecord {
    let h = mix(i.wrapping_mul(31).wrapping_add(7));
    let provider = |k: u64| bin_n(990_140_000_000 + k % 30);
    // `match` on remainders rather than `is_multiple_of`, which is newer than the
    // workspace's rust-version.
    let providers = match h % 3 {
        0 => vec![provider(h >> 8), provider((h >> 8) + 1)],
        _ => vec![provider(h >> 8)],
    };
    let permissions = match (h >> 16) % 3 {
        0 => vec![Permission::Accounts],
        1 => vec![Permission::Accounts, Permission::Balances],
        _ => vec![
            Permission::Accounts,
            Permission::Balances,
            Permission::Transactions,
        ],
    };
    let created = 1_700_000_000 + (h >> 20) as i64 % 60_000_000;
    ConsentRecord {
        id: id_of(i),
        api_user: bin_n(180_340_000_000 + (h >> 24) % 200),
        customer: format!("{:012}", (h >> 12) % 1_000_000_000_000),
        providers,
        permissions,
        accounts: match (h >> 40) % 20 {
            0 => Some(vec![format!("KZ{:018}", h >> 3)]),
            _ => None,
        },
        purpose: PURPOSES[((h >> 44) % 6) as usize].to_owned(),
        created_at: time_at(created),
        expires_at: match (h >> 48) % 5 {
            0 => None,
            _ => Some(time_at(created + 31_536_000)),
        },
        status: match (h >> 52) % 10 {
            0 => ConsentStatus::Revoked,
            _ => ConsentStatus::Authorised,
        },
    }
}

/// A field of `/proc/self/status` (e.g. `VmHWM:`), as printed there ("1234 kB").
pub fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "?".into())
}
