//! The hub's configuration file (`hub.toml`) for the demo's world: the PKI's server and
//! client identities, the issuer's start-up keys, the banks as `[[providers]]`, and the
//! consent control plane — one trust sidecar (`[trust] url`), several replicas
//! (`[trust] urls`, the cluster), or a consent snapshot file with `[[participants]]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gateway::config::{
    at, AuditSection, ConsentSection, FileConfig, HubFiles, ParticipantSection, ProviderSection,
    RollupSection, TrustSection,
};
use policy::directory::{ParticipantStatus, Role};
use policy::limits::{LimitSettings, QuotaSettings};
use sandbox::pki::DevPki;

use crate::identities::{API_USERS, AUDIENCE, ISSUER, PROVIDERS};
use crate::DemoError;

/// Every demo provider's SLA, `[[providers]] timeout_ms` (the gateway's default, written
/// out so that the banks are told the same: their `slow` fault mode is measured against it).
pub(crate) const PROVIDER_TIMEOUT_MS: u64 = gateway::config::defaults::TIMEOUT_MS;

/// How the hub follows the trust sidecars (when it does).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrustTuning {
    /// `[trust] heartbeat_secs` (default: the gateway's).
    pub heartbeat_secs: Option<u64>,
    /// `[trust] max_staleness_secs` (default: the gateway's).
    pub max_staleness_secs: Option<u64>,
}

/// What the hub's configuration is made of.
pub(crate) struct HubConfig<'a> {
    pub port: u16,
    pub admin_port: u16,
    pub threads: Option<usize>,
    /// Requests per second for every limit kind (burst twice that), instead of the defaults.
    pub rate_limit: Option<u32>,
    /// The whole `[limits]` section (over `rate_limit`).
    pub limits: Option<LimitSettings>,
    pub pki: &'a DevPki,
    pub jwks: &'a Path,
    /// The trust sidecars (replicas of one database); none: consents come from
    /// `consents` and participants are listed in the file.
    pub trust_urls: &'a [String],
    pub trust_tuning: TrustTuning,
    pub consents: &'a Path,
    pub audit: &'a Path,
    /// Each API user's `x5t#S256`, in `API_USERS` order (empty with the sidecar).
    pub user_thumbprints: Vec<&'a str>,
    /// Each provider's bank, in `PROVIDERS` order.
    pub bank_addrs: Vec<SocketAddr>,
    /// Stop at once on SIGTERM (no grace period; the cluster's gateways).
    pub quick_stop: bool,
    /// The gateway's name in its rollups (with the sidecar; default: the host name).
    pub gateway_name: Option<&'a str>,
}

/// The `[trust]` section following `urls` (verified with `ca`), keys from their JWKS.
fn trust_section(urls: &[String], ca: &[PathBuf], tuning: TrustTuning) -> TrustSection {
    let mut t = match urls {
        [one] => TrustSection::new(one, ca),
        many => TrustSection::replicas(many, ca),
    };
    // The JWKS file stays the start-up key set (the same demo key).
    t.jwks = true;
    if let Some(h) = tuning.heartbeat_secs {
        t.heartbeat_secs = h;
    }
    if let Some(s) = tuning.max_staleness_secs {
        t.max_staleness_secs = s;
    }
    t
}

/// `[limits]` with `r` requests per second (burst twice that) for every kind.
pub(crate) fn flat_limits(r: u32) -> Result<LimitSettings, DemoError> {
    let r = r.max(1);
    let q = QuotaSettings::new(r, r.saturating_mul(2))
        .ok_or_else(|| DemoError::Bank("rate limit must be > 0".into()))?;
    Ok(LimitSettings {
        per_user: q,
        per_user_provider: q,
        per_consent_route: q,
        per_ip_open_data: q,
        ..LimitSettings::default()
    })
}

/// The hub's configuration, typed (serialised by [`render`]).
pub(crate) fn hub_config(c: &HubConfig<'_>) -> Result<FileConfig, DemoError> {
    let ca = [c.pki.ca_cert_path().to_path_buf()];
    let (server, client) = (c.pki.hub_server(), c.pki.hub_client());
    let files = HubFiles {
        ca: ca[0].clone(),
        server: (server.cert_path.clone(), server.key_path.clone()),
        client: (client.cert_path.clone(), client.key_path.clone()),
        jwks: c.jwks.to_path_buf(),
    };
    let (listen, admin) = (
        format!("127.0.0.1:{}", c.port),
        format!("127.0.0.1:{}", c.admin_port),
    );
    let mut cfg = FileConfig::for_files(&listen, &admin, &files, ISSUER, AUDIENCE);
    cfg.server.threads = c.threads;
    if c.quick_stop {
        cfg.server.grace_period_secs = 0;
        cfg.server.shutdown_timeout_secs = 2;
    }
    if c.trust_urls.is_empty() {
        cfg.consents = ConsentSection::file(c.consents.to_path_buf());
    } else {
        cfg.trust = Some(trust_section(c.trust_urls, &ca, c.trust_tuning));
        // SLA and usage accounting, pushed every second so a test sees it within seconds.
        cfg.rollups = Some(RollupSection {
            gateway: c.gateway_name.map(|n| at(n.to_string())),
            push_interval_ms: 1000,
            ..RollupSection::default()
        });
    }
    cfg.audit = AuditSection::file(c.audit.to_path_buf());
    if let Some(l) = &c.limits {
        cfg.limits = l.clone();
    } else if let Some(r) = c.rate_limit {
        cfg.limits = flat_limits(r)?;
    }
    add_participants(&mut cfg, c);
    Ok(cfg)
}

/// `[[participants]]` (without a sidecar) and `[[providers]]`. With the sidecar,
/// participants come from its registry (which has the same URLs); `[[providers]]` then
/// only tune the upstreams.
fn add_participants(cfg: &mut FileConfig, c: &HubConfig<'_>) {
    let with_trust = !c.trust_urls.is_empty();
    for ((bin, name, status), x5t) in API_USERS.iter().zip(&c.user_thumbprints) {
        let mut p = ParticipantSection::new(bin, name, &[Role::User], participant_status(status));
        p.thumbprints = vec![at(x5t.to_string())];
        cfg.participants.push(p);
    }
    for ((bin, name), addr) in PROVIDERS.iter().zip(&c.bank_addrs) {
        if !with_trust {
            cfg.participants.push(ParticipantSection::new(
                bin,
                name,
                &[Role::Provider],
                ParticipantStatus::Active,
            ));
        }
        let mut p = ProviderSection::new(bin, &[format!("https://{addr}")]);
        p.sni = Some("localhost".into());
        p.timeout_ms = PROVIDER_TIMEOUT_MS;
        cfg.providers.push(p);
    }
}

/// A demo participant's status as written in [`API_USERS`].
fn participant_status(s: &str) -> ParticipantStatus {
    match s {
        "active" => ParticipantStatus::Active,
        "isolated" => ParticipantStatus::Isolated,
        "terminated" => ParticipantStatus::Terminated,
        _ => ParticipantStatus::Suspended,
    }
}

/// Writes the configuration to `path` as TOML with a header naming `by`.
pub(crate) fn write(path: &Path, cfg: &FileConfig, by: &str) -> Result<(), DemoError> {
    let text = cfg
        .to_toml()
        .map_err(|e| DemoError::Bank(format!("hub configuration: {e}")))?;
    let text = format!("# Generated by {by}: development material only.\n{text}");
    std::fs::write(path, text).map_err(crate::io(path))
}
