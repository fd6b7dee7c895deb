//! The bench environment: a development PKI (API users, two provider banks, the hub's
//! server and client identities), a development ES256 token issuer, consents generated
//! deterministically over the sandbox banks' real customers (written as a binary `.snap`
//! snapshot, atomically, so the hub's file watcher can follow revocations), token
//! minting (in parallel, before any measurement) and the hub's `hub.toml`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use consent_cache::{Bin, ConsentRecord, ConsentStatus, Permission};
use sandbox::pki::{DevPki, Identity as PkiIdentity, PkiSpec};
use sandbox::tokens::{AccessClaims, DevAlg, DevIssuer};

use gateway::config::{
    at, AuditSection, ConsentSection, FileConfig, HubFiles, ParticipantSection, ProviderSection,
    TrustSection,
};
use policy::directory::{ParticipantStatus, Role};
use policy::limits::{LimitOverride, LimitSettings, QuotaSettings};

use crate::error::{io_at, HarnessError, Result};

/// Active API users of the bench (each presents its own client certificate).
pub const API_USERS: [&str; 4] = [
    "100140000001",
    "100140000002",
    "100140000003",
    "100140000004",
];
/// An active API user with a tiny per-user rate limit, to prove limits are enforced.
pub const THROTTLED_USER: &str = "100140000009";
/// The two provider banks.
pub const PROVIDERS: [&str; 2] = ["990340000011", "990340000022"];
/// Token issuer (`iss`).
pub const ISSUER: &str = "https://trust.hub.local.test";
/// The hub's audience (`aud`).
pub const AUDIENCE: &str = "https://hub.local.test";
/// `kid` of the bench issuer's key.
pub const KID: &str = "bench-es256-1";
/// Customers generated per sandbox bank.
pub const CUSTOMERS: usize = 200;
/// Every bench consent grants these.
pub const PERMISSIONS: [Permission; 3] = [
    Permission::Accounts,
    Permission::Balances,
    Permission::Transactions,
];
/// The consent that is revoked from the start (for the rejection probes).
pub const REVOKED_CONSENT: &str = "c-revoked";
/// The throttled user's consent.
pub const THROTTLED_CONSENT: &str = "c-throttled";
/// Lifetime of minted tokens.
const TOKEN_LIFETIME_SECS: i64 = 4 * 3600;

/// Seed of provider `i`'s sandbox data (the bank process uses the same).
pub fn bank_seed(i: usize) -> u64 {
    0xBE4C_0000 + i as u64
}

fn bin(s: &str) -> Result<Bin> {
    Bin::parse(s).map_err(|e| HarnessError::Plan(format!("BIN {s}: {e}")))
}

/// Seconds since the epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// One consent of the bench.
#[derive(Debug, Clone)]
pub struct ConsentRow {
    /// Its id.
    pub id: String,
    /// Index into [`BenchEnv::users`] (the throttled user is the last).
    pub user: usize,
    /// Index into [`PROVIDERS`].
    pub provider: usize,
    /// The customer's IIN (a real customer of that sandbox bank).
    pub customer: String,
    /// Its status.
    pub status: ConsentStatus,
}

/// Everything generated once per `compare` run.
pub struct BenchEnv {
    /// Where it lives.
    pub dir: PathBuf,
    /// The PKI.
    pub pki: DevPki,
    /// The token issuer.
    pub issuer: DevIssuer,
    /// The JWKS file (for the hub).
    pub jwks: PathBuf,
    /// The issuer's public key as PEM (for HAProxy's `jwt_verify`).
    pub issuer_public_pem: PathBuf,
    /// API users: the active ones, then the throttled one.
    pub users: Vec<Bin>,
    /// Provider BINs.
    pub providers: [Bin; 2],
    /// IINs of each bank's customers.
    pub customers: [Vec<String>; 2],
    /// Start of validity of generated consents.
    pub created_at: i64,
}

impl BenchEnv {
    /// Generates PKI, issuer and customer lists under `dir`.
    pub fn generate(dir: &Path) -> Result<BenchEnv> {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let dir = std::fs::canonicalize(dir).map_err(io_at(dir))?;
        let mut users = API_USERS
            .iter()
            .map(|u| bin(u))
            .collect::<Result<Vec<_>>>()?;
        users.push(bin(THROTTLED_USER)?);
        let providers = [bin(PROVIDERS[0])?, bin(PROVIDERS[1])?];
        let pki = DevPki::generate(
            &dir.join("pki"),
            &PkiSpec::new(users.clone(), providers.to_vec()),
        )?;
        let issuer = DevIssuer::generate(DevAlg::Es256, KID, ISSUER)?;
        let (_key, jwks) = issuer.write_files(&dir)?;
        let issuer_public_pem = dir.join("issuer-public.pem");
        std::fs::write(&issuer_public_pem, issuer.public_key_pem()?)
            .map_err(io_at(&issuer_public_pem))?;
        let customers = [0, 1].map(|i| {
            sandbox::data::BankData::generate(providers[i], bank_seed(i), CUSTOMERS)
                .customers()
                .map(|c| c.iin.clone())
                .collect::<Vec<_>>()
        });
        Ok(BenchEnv {
            dir,
            pki,
            issuer,
            jwks,
            issuer_public_pem,
            users,
            providers,
            customers,
            created_at: now_unix() - 86_400,
        })
    }

    /// The number of active (non-throttled) API users.
    pub fn active_users(&self) -> usize {
        self.users.len() - 1
    }

    /// The PKI identity of user `i`.
    pub fn user_identity(&self, i: usize) -> Result<&PkiIdentity> {
        let b = self
            .users
            .get(i)
            .ok_or_else(|| HarnessError::Plan(format!("no user {i}")))?;
        self.pki
            .api_user(*b)
            .ok_or_else(|| HarnessError::Plan(format!("no certificate for {b}")))
    }

    /// The `i`-th generated consent (deterministic; every user and provider in turn).
    pub fn consent(&self, i: usize) -> ConsentRow {
        let u = self.active_users();
        let provider = i % 2;
        let user = (i / 2) % u;
        let list = &self.customers[provider];
        ConsentRow {
            id: format!("c-{i:07}"),
            user,
            provider,
            customer: list[(i / 2) % list.len().max(1)].clone(),
            status: ConsentStatus::Authorised,
        }
    }

    /// The two fixed extra consents: one revoked, one of the throttled user.
    pub fn extra_consents(&self) -> [ConsentRow; 2] {
        [
            ConsentRow {
                id: REVOKED_CONSENT.into(),
                user: 0,
                provider: 0,
                customer: self.customers[0][0].clone(),
                status: ConsentStatus::Revoked,
            },
            ConsentRow {
                id: THROTTLED_CONSENT.into(),
                user: self.users.len() - 1,
                provider: 1,
                customer: self.customers[1][1 % self.customers[1].len()].clone(),
                status: ConsentStatus::Authorised,
            },
        ]
    }

    /// Expiry of every generated consent.
    pub fn expires_at(&self) -> i64 {
        self.created_at + 120 * 86_400
    }

    fn record(&self, row: &ConsentRow) -> Result<ConsentRecord> {
        let t = |s: i64| {
            time::OffsetDateTime::from_unix_timestamp(s)
                .map_err(|e| HarnessError::Snapshot(format!("time: {e}")))
        };
        Ok(ConsentRecord {
            id: row.id.clone(),
            api_user: self.users[row.user],
            customer: row.customer.clone(),
            providers: vec![self.providers[row.provider]],
            permissions: PERMISSIONS.to_vec(),
            accounts: None,
            purpose: "Load test".into(),
            created_at: t(self.created_at)?,
            expires_at: Some(t(self.expires_at())?),
            status: row.status,
        })
    }

    /// Writes `n` generated consents plus the extras as a `.snap` snapshot, atomically;
    /// `revoked(i)` marks generated consent `i` revoked.
    pub fn write_consents(
        &self,
        path: &Path,
        n: usize,
        version: u64,
        revoked: &dyn Fn(usize) -> bool,
    ) -> Result<usize> {
        let extras = self.extra_consents();
        let mut failure = None;
        let records = (0..n)
            .map(|i| {
                let mut row = self.consent(i);
                if revoked(i) {
                    row.status = ConsentStatus::Revoked;
                }
                row
            })
            .chain(extras)
            .map_while(|row| match self.record(&row) {
                Ok(r) => Some(r),
                Err(e) => {
                    failure = Some(e);
                    None
                }
            });
        let written = consent_cache::write_snapshot(path, version, records)
            .map_err(|e| HarnessError::Snapshot(format!("{}: {e}", path.display())))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// A token for `row`, valid for hours, bound to its user's certificate.
    pub fn mint(&self, row: &ConsentRow, now: i64) -> Result<String> {
        let ident = self.user_identity(row.user)?;
        let claims = AccessClaims::for_consent(
            ISSUER,
            AUDIENCE,
            self.users[row.user],
            &row.id,
            &PERMISSIONS,
            &ident.thumbprint,
            now,
            TOKEN_LIFETIME_SECS,
        )?;
        Ok(self.issuer.mint(&claims)?)
    }

    /// Mints one token per row, on every core (before measuring, never during).
    pub fn mint_all(&self, rows: &[ConsentRow]) -> Result<Vec<String>> {
        let now = now_unix();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let chunk = rows.len().div_ceil(threads).max(1);
        let parts: Vec<Result<Vec<String>>> = std::thread::scope(|s| {
            let handles: Vec<_> = rows
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().map(|r| self.mint(r, now)).collect()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(HarnessError::Plan("minting thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(rows.len());
        for p in parts {
            out.extend(p?);
        }
        Ok(out)
    }
}

/// Where a hub takes its consents from.
#[derive(Debug, Clone, Copy)]
pub enum ConsentSource<'a> {
    /// A snapshot file (`[consents] snapshot`), followed by the hub's file watcher.
    Snapshot(&'a Path),
    /// The trust sidecar (`[trust]`): snapshot and change feed over mTLS with the hub's
    /// client identity, the sidecar's server certificate verified by the platform CA.
    Trust {
        /// The sidecars' base URLs: one (`url`), or several replicas of one database
        /// (`urls`, followed in this order).
        urls: &'a [String],
        /// Contract §6 row 7 bound.
        max_staleness_secs: u64,
        /// Token keys from the sidecar's JWKS.
        jwks: bool,
        /// `heartbeat_secs` (the sidecars' interval; the hub's default when `None`).
        heartbeat_secs: Option<u64>,
    },
}

/// Settings of one hub configuration.
pub struct HubSettings<'a> {
    /// API listener port.
    pub port: u16,
    /// Admin listener port.
    pub admin_port: u16,
    /// Worker threads (None: the hub's default, the machine's cores).
    pub threads: Option<usize>,
    /// Where the hub takes its consents from.
    pub consents: ConsentSource<'a>,
    /// Base URLs of the two banks.
    pub bank_urls: [String; 2],
    /// Verified-token cache size.
    pub token_cache: usize,
}

/// Writes `hub.toml` (a typed configuration, serialised): the full policy, every limit
/// kind at 10,000,000/s (so load never trips them) except the throttled user's 1/s, audit
/// journal to a file.
pub fn write_hub_config(env: &BenchEnv, s: &HubSettings<'_>, path: &Path) -> Result<()> {
    let pki = &env.pki;
    let ca = [pki.ca_cert_path().to_path_buf()];
    let files = HubFiles {
        ca: ca[0].clone(),
        server: (
            pki.hub_server().cert_path.clone(),
            pki.hub_server().key_path.clone(),
        ),
        client: (
            pki.hub_client().cert_path.clone(),
            pki.hub_client().key_path.clone(),
        ),
        jwks: env.jwks.clone(),
    };
    let (listen, admin) = (
        format!("127.0.0.1:{}", s.port),
        format!("127.0.0.1:{}", s.admin_port),
    );
    let mut c = FileConfig::for_files(&listen, &admin, &files, ISSUER, AUDIENCE);
    c.server.threads = s.threads;
    c.tokens.cache_capacity = s.token_cache;
    match s.consents {
        ConsentSource::Snapshot(p) => c.consents = ConsentSection::file(p.to_path_buf()),
        ConsentSource::Trust {
            urls,
            max_staleness_secs,
            jwks,
            heartbeat_secs,
        } => {
            let mut t = match urls {
                [url] => TrustSection::new(url, &ca),
                _ => TrustSection::replicas(urls, &ca),
            };
            t.max_staleness_secs = max_staleness_secs;
            t.jwks = jwks;
            if let Some(h) = heartbeat_secs {
                t.heartbeat_secs = h;
            }
            c.trust = Some(t);
        }
    }
    c.audit = AuditSection::file(path.with_file_name("audit.jsonl"));
    c.limits = bench_limits()?;
    for (i, u) in env.users.iter().enumerate() {
        let mut p = ParticipantSection::new(
            &u.to_string(),
            &format!("Bench user {i}"),
            &[Role::User],
            ParticipantStatus::Active,
        );
        p.thumbprints = vec![at(env.user_identity(i)?.x5t_s256.clone())];
        c.participants.push(p);
    }
    for (i, p) in env.providers.iter().enumerate() {
        let bin = p.to_string();
        c.participants.push(ParticipantSection::new(
            &bin,
            &format!("Bench bank {i}"),
            &[Role::Provider],
            ParticipantStatus::Active,
        ));
        let mut provider = ProviderSection::new(&bin, &[s.bank_urls[i].clone()]);
        provider.sni = Some("localhost".into());
        c.providers.push(provider);
    }
    let text = c
        .to_toml()
        .map_err(|e| HarnessError::Plan(format!("hub configuration: {e}")))?;
    let text = format!("# Generated by the benches' compare runner.\n{text}");
    std::fs::write(path, text).map_err(io_at(path))
}

/// Every limit kind at 10,000,000/s (burst twice that), the throttled user at 1/s.
fn bench_limits() -> Result<LimitSettings> {
    let quota = |per_second: u32, burst: u32| {
        QuotaSettings::new(per_second, burst)
            .ok_or_else(|| HarnessError::Plan("a zero rate limit".into()))
    };
    let high = quota(10_000_000, 20_000_000)?;
    Ok(LimitSettings {
        per_user: high,
        per_user_provider: high,
        per_consent_route: high,
        per_ip_open_data: high,
        overrides: vec![LimitOverride {
            participant: bin(THROTTLED_USER)?,
            per_user: Some(quota(1, 2)?),
            per_user_provider: None,
        }],
        ..LimitSettings::default()
    })
}
