//! Plans for the stand-alone `loadgen` from a contract §9 manifest (`gateway demo`'s, or
//! any environment that writes one): virtual users over the manifest's usable consents,
//! each with its own token (fresh single-use tokens minted with the manifest's
//! development signing key in cold mode), on the API users' client certificates.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use consent_cache::{Bin, Permission};
use sandbox::tokens::{AccessClaims, DevAlg, DevIssuer};
use serde::Deserialize;

use crate::error::{io_at, HarnessError, Result};
use crate::workload::{Endpoint, Group, Identity, Load, Plan, TokenPool, VirtualUser};

/// The parts of a manifest the load generator uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The hub.
    pub gateway_url: String,
    /// Platform CA.
    pub ca_cert: PathBuf,
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// Development signing key (PKCS#8 PEM).
    pub token_signing_key: PathBuf,
    /// Its `kid`.
    pub token_kid: String,
    /// Its algorithm.
    pub token_alg: String,
    /// API users.
    pub api_users: Vec<ManifestUser>,
    /// Providers.
    pub providers: Vec<ManifestProvider>,
    /// The hub's client identity towards banks.
    pub hub_client_cert: PathBuf,
    /// Its key.
    pub hub_client_key: PathBuf,
    /// Consents with tokens.
    pub consents: Vec<ManifestConsent>,
}

/// An API user of the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestUser {
    /// BIN.
    pub id: String,
    /// Client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// `active`, … (absent: assumed active).
    #[serde(default)]
    pub status: Option<String>,
}

/// A provider of the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestProvider {
    /// BIN.
    pub id: String,
    /// The bank's own URL.
    pub url: String,
}

/// A consent of the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestConsent {
    /// Id.
    pub id: String,
    /// API user BIN.
    pub api_user: String,
    /// Customer id.
    pub customer: String,
    /// Provider BINs.
    pub providers: Vec<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Status.
    pub status: String,
    /// Expiry (RFC 3339), if any.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Restricted account ids, if any.
    #[serde(default)]
    pub accounts: Option<Vec<String>>,
    /// The customer's account ids at the provider (demo manifests carry them).
    #[serde(default)]
    pub account_ids: Option<Vec<String>>,
    /// A token (valid at least an hour).
    pub token: String,
}

impl Manifest {
    /// Reads a manifest file.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(io_at(path))?;
        serde_json::from_str(&text)
            .map_err(|e| HarnessError::Manifest(format!("{}: {e}", path.display())))
    }
}

/// Which route the virtual users call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteKind {
    /// `GET /v1/providers/{p}/accounts`.
    Accounts,
    /// `GET …/accounts/{a}/balances`.
    Balances,
    /// `GET …/accounts/{a}/transactions?limit=20`.
    Transactions,
    /// `GET /v1/open-data/{p}/exchange-rates` (no token, no consent).
    OpenData,
}

impl RouteKind {
    fn permission(self) -> Option<&'static str> {
        match self {
            RouteKind::Accounts => Some("accounts"),
            RouteKind::Balances => Some("balances"),
            RouteKind::Transactions => Some("transactions"),
            RouteKind::OpenData => None,
        }
    }
}

/// Where `loadgen` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// The hub (contract requests, bearer tokens, API users' certificates).
    Hub,
    /// A plain proxy in front of the banks: contract paths plus the `x-hub-*` context
    /// headers the bank needs (the proxy adds nothing).
    Proxy,
    /// The bank itself: provider paths, `x-hub-*` headers, the hub's client certificate.
    Bank,
}

/// Options of a manifest plan.
#[derive(Debug, Clone)]
pub struct ManifestPlan {
    /// Target kind.
    pub target: TargetKind,
    /// Override of the URL (default: the manifest's gateway, or the first provider's).
    pub url: Option<String>,
    /// Route.
    pub route: RouteKind,
    /// Virtual users (cycling over the usable consents).
    pub users: usize,
    /// A new token on every request.
    pub cold: bool,
    /// Tokens to pre-mint in cold mode.
    pub cold_pool: usize,
    /// Connections.
    pub connections: usize,
    /// HTTP/2 streams per connection.
    pub streams: usize,
    /// HTTP/2.
    pub http2: bool,
    /// Open loop rate, or closed loop.
    pub rate: Option<f64>,
    /// Window.
    pub duration: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Resolves `https://host:port[/…]` to an address.
pub fn url_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| HarnessError::Manifest(format!("{url}: not an https URL")))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .to_socket_addrs()
        .map_err(|e| HarnessError::Manifest(format!("{url}: {e}")))?
        .next()
        .ok_or_else(|| HarnessError::Manifest(format!("{url}: no address")))
}

fn usable(c: &ManifestConsent, now: i64, perm: Option<&str>) -> bool {
    let not_expired = c.expires_at.as_deref().is_none_or(|e| {
        time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t.unix_timestamp() > now + 60)
    });
    c.status == "authorised"
        && not_expired
        && perm.is_none_or(|p| c.permissions.iter().any(|x| x == p))
}

/// Builds a plan from a manifest.
pub fn plan(m: &Manifest, o: &ManifestPlan) -> Result<Plan> {
    let now = crate::fixture::now_unix();
    let active: Vec<&ManifestUser> = m
        .api_users
        .iter()
        .filter(|u| u.status.as_deref().is_none_or(|s| s == "active"))
        .collect();
    let bank_url = m
        .providers
        .first()
        .map(|p| p.url.clone())
        .ok_or_else(|| HarnessError::Manifest("no provider".into()))?;
    let consents = usable_consents(m, o, &active, now)?;
    let url = o.url.clone().unwrap_or_else(|| match o.target {
        TargetKind::Bank => bank_url,
        _ => m.gateway_url.clone(),
    });
    let endpoint = Endpoint::localhost(url_addr(&url)?)?;
    let identities = identities(m, &active, o.http2)?;
    let cx = Users {
        m,
        o,
        endpoint: &endpoint,
        active: &active,
        hub_ident: active.len(),
    };
    let users_n = o.users.max(1);
    let mut users = Vec::with_capacity(users_n);
    let mut owners = Vec::with_capacity(users_n);
    for i in 0..users_n {
        let iid = format!("00000000-0000-4000-8000-{:012x}", i + 1);
        if o.route == RouteKind::OpenData {
            users.push(cx.open_data_user(i, iid)?);
            owners.push(None);
            continue;
        }
        let c = consents[i % consents.len()];
        users.push(cx.consent_user(c, iid)?);
        owners.push(Some(c));
    }
    let tokens = if o.cold && o.target != TargetKind::Bank && o.route != RouteKind::OpenData {
        Some(cx.cold_pool(&users, &owners, identities.len(), now)?)
    } else {
        None
    };
    Ok(Plan {
        endpoint,
        identities,
        groups: vec![Group {
            name: "main".into(),
            users: Arc::new(users),
            tokens,
            connections: o.connections,
            streams: o.streams,
            load: match o.rate {
                Some(rate) => Load::Open { rate },
                None => Load::Closed,
            },
            endpoint: None,
        }],
        http2: o.http2,
        duration: o.duration,
        request_timeout: o.timeout,
    })
}

/// The consents the virtual users can use: authorised, unexpired, of an active API user,
/// granting the route (at the first provider when the target is the bank).
fn usable_consents<'m>(
    m: &'m Manifest,
    o: &ManifestPlan,
    active: &[&ManifestUser],
    now: i64,
) -> Result<Vec<&'m ManifestConsent>> {
    let perm = o.route.permission();
    let mut consents: Vec<&ManifestConsent> = m
        .consents
        .iter()
        .filter(|c| usable(c, now, perm))
        .filter(|c| active.iter().any(|u| u.id == c.api_user))
        .collect();
    if o.target == TargetKind::Bank {
        let first = m
            .providers
            .first()
            .map(|p| p.id.clone())
            .unwrap_or_default();
        consents.retain(|c| c.providers.first() == Some(&first));
    }
    if consents.is_empty() && o.route != RouteKind::OpenData {
        return Err(HarnessError::Manifest(
            "no authorised, unexpired consent of an active API user grants that route".into(),
        ));
    }
    Ok(consents)
}

/// Every active API user's identity, then the hub's client identity.
fn identities(m: &Manifest, active: &[&ManifestUser], http2: bool) -> Result<Vec<Identity>> {
    let mut identities = Vec::new();
    for u in active {
        identities.push(Identity {
            name: u.id.clone(),
            tls: crate::tls::client_config(&m.ca_cert, &u.cert, &u.key, http2)?,
        });
    }
    identities.push(Identity {
        name: "hub-client".into(),
        tls: crate::tls::client_config(&m.ca_cert, &m.hub_client_cert, &m.hub_client_key, http2)?,
    });
    Ok(identities)
}

/// What the virtual users of a manifest plan are made from.
struct Users<'a> {
    m: &'a Manifest,
    o: &'a ManifestPlan,
    endpoint: &'a Endpoint,
    /// The active API users (identities `0..len`).
    active: &'a [&'a ManifestUser],
    /// The hub's client identity (towards the bank).
    hub_ident: usize,
}

impl Users<'_> {
    /// Virtual user `i` of open data (providers and API users in turn).
    fn open_data_user(&self, i: usize, iid: String) -> Result<VirtualUser> {
        let u = i % self.active.len().max(1);
        let provider = self
            .m
            .providers
            .get(i % self.m.providers.len().max(1))
            .map(|p| p.id.clone())
            .unwrap_or_default();
        let (path, ident) = match self.o.target {
            TargetKind::Bank => ("/v1/open-data/exchange-rates".to_string(), self.hub_ident),
            _ => (format!("/v1/open-data/{provider}/exchange-rates"), u),
        };
        VirtualUser::new(
            self.endpoint,
            &path,
            &[("x-fapi-interaction-id", iid)],
            ident,
        )
    }

    /// The virtual user of consent `c` on the route, as the target expects it.
    fn consent_user(&self, c: &ManifestConsent, iid: String) -> Result<VirtualUser> {
        let o = self.o;
        let provider = c.providers.first().cloned().unwrap_or_default();
        let tail = route_tail(o.route, c)?;
        let ident = self
            .active
            .iter()
            .position(|u| u.id == c.api_user)
            .ok_or_else(|| HarnessError::Manifest(format!("consent {}: unknown API user", c.id)))?;
        let context = [
            ("x-fapi-interaction-id", iid),
            ("x-hub-api-user", c.api_user.clone()),
            ("x-hub-consent-id", c.id.clone()),
            ("x-hub-customer", c.customer.clone()),
            ("x-hub-permissions", c.permissions.join(",")),
        ];
        let bearer = ("authorization", format!("Bearer {}", c.token));
        let path = format!("/v1/providers/{provider}{tail}");
        match o.target {
            TargetKind::Hub | TargetKind::Proxy => {
                let mut h = if o.target == TargetKind::Hub {
                    vec![context[0].clone()]
                } else {
                    context.to_vec()
                };
                if !o.cold {
                    h.push(bearer);
                }
                VirtualUser::new(self.endpoint, &path, &h, ident)
            }
            TargetKind::Bank => VirtualUser::new(
                self.endpoint,
                &format!("/v1{tail}"),
                &context,
                self.hub_ident,
            ),
        }
    }

    /// `cold_pool` single-use tokens minted with the manifest's development key, for
    /// the virtual users in turn (`owners`: each user's consent).
    fn cold_pool(
        &self,
        users: &[VirtualUser],
        owners: &[Option<&ManifestConsent>],
        identities: usize,
        now: i64,
    ) -> Result<Arc<TokenPool>> {
        let m = self.m;
        let alg = DevAlg::parse(&m.token_alg)
            .ok_or_else(|| HarnessError::Manifest(format!("token_alg {}", m.token_alg)))?;
        let key =
            std::fs::read_to_string(&m.token_signing_key).map_err(io_at(&m.token_signing_key))?;
        let issuer = DevIssuer::load(&key, &m.token_kid, &m.issuer, alg)?;
        let mut thumbs = Vec::new();
        for u in self.active {
            let pem = std::fs::read(&u.cert).map_err(io_at(&u.cert))?;
            thumbs.push(sandbox::pki::thumbprint_of_pem(&pem)?);
        }
        let mut minted = Vec::with_capacity(self.o.cold_pool);
        for k in 0..self.o.cold_pool.max(1) {
            let vu = k % users.len();
            let Some(c) = owners[vu] else { continue };
            let client =
                Bin::parse(&c.api_user).map_err(|e| HarnessError::Manifest(e.to_string()))?;
            let perms: Vec<Permission> = c
                .permissions
                .iter()
                .filter_map(|p| Permission::parse(p))
                .collect();
            let claims = AccessClaims::for_consent(
                &m.issuer,
                &m.audience,
                client,
                &c.id,
                &perms,
                &thumbs[users[vu].identity],
                now,
                3600,
            )?;
            minted.push((
                users[vu].identity,
                u32::try_from(vu).unwrap_or(0),
                issuer.mint(&claims)?,
            ));
        }
        Ok(Arc::new(TokenPool::new(identities, minted)?))
    }
}

/// The path after `/v1/providers/{p}` of `route` for consent `c` (its first account).
fn route_tail(route: RouteKind, c: &ManifestConsent) -> Result<String> {
    let account = c
        .accounts
        .as_ref()
        .and_then(|a| a.first())
        .or_else(|| c.account_ids.as_ref().and_then(|a| a.first()))
        .cloned();
    Ok(match route {
        RouteKind::Accounts => "/accounts".to_string(),
        RouteKind::Balances | RouteKind::Transactions => {
            let a = account.ok_or_else(|| {
                HarnessError::Manifest(format!("consent {} lists no account id", c.id))
            })?;
            if route == RouteKind::Balances {
                format!("/accounts/{a}/balances")
            } else {
                format!("/accounts/{a}/transactions?limit=20")
            }
        }
        RouteKind::OpenData => String::new(),
    })
}
