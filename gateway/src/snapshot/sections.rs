//! The configuration file compiled section by section into [`FileInputs`], the file's
//! share of what a snapshot is built from. Each section has one small function that
//! validates it and reports problems with the file, the line and the field; parts that
//! hold state (the limiter's counters) are reused from the previous load when their key
//! did not change. The consent file is read here only when it is new (at start-up, or a
//! changed `[consents] snapshot` path); otherwise it is its own input (`consents`).

use base64::Engine;
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateRevocationListDer, ServerName};

use crate::limits::{Limits, LimitsError};
use consent_cache::Bin;
use policy::directory::{DirectoryBuilder, Participant, Role, Roles};
use policy::token::{Jwks, TokenSettings, MAX_LEEWAY_SECS};

use crate::config::{
    ConfigError, FileConfig, ParticipantSection, ProviderSection, ServerSection, Source,
    TlsSection, TrustSection,
};
use crate::network::{FileBase, FileParticipant, ProviderSettings};
use crate::plane::{FeedStatus, TrustPlane};
use crate::tls;
use crate::upstream::parse_base_url;

use super::consents::ConsentFile;
use super::{ProcessSettings, TlsMaterial, UpgradeSock};

/// What one load of the configuration file contributes to a snapshot.
pub struct FileInputs {
    /// Settings that take effect at process start.
    pub process: ProcessSettings,
    /// Downstream TLS (swapped into the listener by a reload).
    pub tls: TlsMaterial,
    /// `[[participants]]` and `[[providers]]`, validated.
    pub base: FileBase,
    /// `[tokens]` verification settings.
    pub token_settings: TokenSettings,
    /// The `[tokens] jwks` file's content (validated).
    pub jwks: Arc<[u8]>,
    /// `[limits]` compiled, with its counters (reused while the section is unchanged).
    pub limits: Arc<Limits>,
    /// Where consents come from.
    pub control: ControlPlane,
    /// The consent file, when this load read it (start-up, a new path): the publisher
    /// takes it out and installs it. A file already in force is not read again here.
    pub consents: Option<ConsentFile>,
    /// Request header block limit.
    pub max_header_bytes: usize,
    /// Request body limit.
    pub max_body_bytes: usize,
    /// `[live_checks]` (a reload changes the rate and the bound; the queue is the start's).
    pub live: crate::live::LiveSettings,
    /// The `notAfter` of the hub's own certificates (`[tls]`, `[upstream_tls]`,
    /// `[trust] ca`), for `hub_certificate_expiry_timestamp_seconds`.
    pub certificates: tls::CertificateExpiry,
    /// What the file says that the trust registry replaces (`[trust]` mode; see
    /// `references`), each naming the file, the line and the field: `gateway check`
    /// prints them.
    pub warnings: Vec<String>,
}

/// The consent control plane the file chose.
pub enum ControlPlane {
    /// `[consents] snapshot`: the file, followed on disk.
    File {
        /// The file (resolved).
        path: PathBuf,
        /// Row 7: how long a change on disk may fail to load.
        max_staleness: Duration,
    },
    /// `[trust]`: the sidecar, followed by the feed.
    Trust(Arc<TrustPlane>),
}

impl FileInputs {
    /// The trust sidecar, in `[trust]` mode.
    pub fn trust(&self) -> Option<&Arc<TrustPlane>> {
        match &self.control {
            ControlPlane::Trust(plane) => Some(plane),
            ControlPlane::File { .. } => None,
        }
    }
}

/// Reads, parses and compiles a configuration file. `previous` lends what did not change
/// (the consent file's store, the limiter); `feed` is the process's follower status,
/// which a `[trust]` plane reports through.
pub fn load(
    path: &Path,
    previous: Option<&FileInputs>,
    feed: &Arc<FeedStatus>,
) -> Result<FileInputs, ConfigError> {
    let src = Source::read(path)?;
    let cfg = src.parse()?;
    compile(&src, &cfg, previous, feed)
}

fn compile(
    src: &Source,
    cfg: &FileConfig,
    previous: Option<&FileInputs>,
    feed: &Arc<FeedStatus>,
) -> Result<FileInputs, ConfigError> {
    let process = process(src, cfg)?;
    let mut certificates = tls::CertificateExpiry::default();
    let tls = downstream_tls(src, cfg, &mut certificates)?;
    let identity = upstream_identity(src, cfg, &mut certificates)?;
    let (token_settings, jwks) = tokens(src, cfg)?;
    let participants = participants(src, &cfg.participants)?;
    let providers = providers(src, &cfg.providers, &participants, cfg.trust.is_some())?;
    let warnings = super::references::check(src, cfg, &participants)?;
    let limits = match previous {
        Some(p) if p.limits.settings() == &cfg.limits => p.limits.clone(),
        _ => Arc::new(Limits::new(&cfg.limits).map_err(|e| limits_error(src, &e))?),
    };
    let (control, consents) =
        control_plane(src, cfg, previous.map(|p| &p.control), &identity, feed)?;
    if let Some(t) = control_ca_expiry(&control) {
        certificates.set(tls::CertificateRole::TrustCa, t);
    }
    Ok(FileInputs {
        process,
        tls,
        base: FileBase {
            participants,
            providers,
        },
        token_settings,
        jwks,
        limits,
        control,
        consents,
        max_header_bytes: cfg.server.max_header_bytes,
        max_body_bytes: cfg.server.max_body_bytes,
        live: super::live::compile(src, cfg)?,
        certificates,
        warnings,
    })
}

/// `[trust] ca`'s earliest `notAfter`, in `[trust]` mode.
fn control_ca_expiry(control: &ControlPlane) -> Option<i64> {
    match control {
        ControlPlane::Trust(plane) => plane.ca_not_after,
        ControlPlane::File { .. } => None,
    }
}

/// A `[limits]` problem at the line of the table or key it is about.
fn limits_error(src: &Source, e: &LimitsError) -> ConfigError {
    use policy::limits::LimitError as E;
    let (at, field) = match e {
        LimitsError::Settings(E::DuplicateOverride(_)) => {
            ("[[limits.overrides]]", "limits.overrides")
        }
        LimitsError::Settings(
            E::SharedWithoutStore(class)
            | E::LeasedWithoutStore(class)
            | E::LeaseTooLong { class, .. },
        ) => {
            let field = format!("limits.classes.{class}");
            return src.invalid_at("[limits.classes]", &field, e.to_string());
        }
        LimitsError::Settings(E::MonthlyLeased) => ("[limits.classes]", "limits.classes.monthly"),
        LimitsError::Settings(E::LeaseMs(_)) => ("lease_ms", "limits.store.lease_ms"),
        LimitsError::Settings(E::UnknownTimeZone(_)) => ("time_zone", "limits.monthly.time_zone"),
        LimitsError::Settings(E::ZeroMonthlyQuota(_)) => ("[limits.monthly", "limits.monthly"),
        LimitsError::Settings(E::DuplicateMonthlyProvider(_)) => {
            ("[[limits.monthly.providers]]", "limits.monthly.providers")
        }
        LimitsError::Settings(E::StoreUrl(_)) | LimitsError::Store(_) => {
            ("[limits.store]", "limits.store.url")
        }
        LimitsError::PasswordFile(_) => ("password_file", "limits.store.password_file"),
    };
    src.invalid_at(at, field, e.to_string())
}

/// `[server]` and `[audit]`, `[upstream_tls]` paths: the process settings.
fn process(src: &Source, cfg: &FileConfig) -> Result<ProcessSettings, ConfigError> {
    let s = &cfg.server;
    let listen = src.socket_addr(&s.listen, "server.listen")?;
    let admin_listen = src.socket_addr(&s.admin_listen, "server.admin_listen")?;
    let threads = s
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = src.bounded("server.threads", threads)?;
    src.bounded("server.max_header_bytes", s.max_header_bytes)?;
    src.bounded("server.max_body_bytes", s.max_body_bytes)?;
    src.bounded("server.grace_period_secs", s.grace_period_secs)?;
    src.bounded("server.shutdown_timeout_secs", s.shutdown_timeout_secs)?;
    src.bounded(
        "server.upstream_keepalive_pool_size",
        s.upstream_keepalive_pool_size,
    )?;
    let audit_buffer = src.bounded("audit.buffer", cfg.audit.buffer)?;
    let (tls_handshake_timeout, max_connections) = listener_limits(src, s)?;
    let audit_path = if cfg.audit.path.as_os_str() == "-" {
        cfg.audit.path.clone()
    } else {
        src.resolve(&cfg.audit.path)
    };
    let upgrade_sock = upgrade_sock(src, s, &audit_path)?;
    let rollups = super::rollups::compile(src, cfg, &audit_path)?;
    Ok(ProcessSettings {
        listen,
        admin_listen,
        threads,
        http2: s.http2,
        work_stealing: s.work_stealing,
        grace_period_secs: s.grace_period_secs,
        shutdown_timeout_secs: s.shutdown_timeout_secs,
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        tls_handshake_timeout,
        max_connections,
        audit_path,
        upgrade_sock,
        audit_buffer,
        rollups,
        upstream_cert: src.resolve(cfg.upstream_tls.client_cert.get_ref()),
        upstream_key: src.resolve(cfg.upstream_tls.client_key.get_ref()),
        upstream_ca: cfg
            .upstream_tls
            .ca
            .iter()
            .map(|p| src.resolve(p.get_ref()))
            .collect::<Vec<PathBuf>>(),
    })
}

/// The longest unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// `[server] upgrade_sock`: as configured (resolved), else next to a file journal. A
/// configured path too long for a unix socket is refused; the default one only makes
/// binary upgrades unavailable (said by `gateway check` and at start), since a deep
/// journal directory is no reason to refuse serving.
fn upgrade_sock(
    src: &Source,
    s: &ServerSection,
    audit_path: &Path,
) -> Result<UpgradeSock, ConfigError> {
    let path = match &s.upgrade_sock {
        Some(p) => src.resolve(p.get_ref()),
        None if audit_path.as_os_str() == "-" => {
            return Ok(UpgradeSock::Unavailable {
                reason: "the audit journal is standard output and [server] upgrade_sock is not set"
                    .into(),
                warn: false,
            })
        }
        None => {
            let mut p = audit_path.as_os_str().to_owned();
            p.push(".upgrade.sock");
            PathBuf::from(p)
        }
    };
    let len = path.as_os_str().len();
    if len <= MAX_UNIX_SOCKET_PATH {
        return Ok(UpgradeSock::At(path));
    }
    let message = format!(
        "{} is {len} bytes, a unix socket path holds at most {MAX_UNIX_SOCKET_PATH}",
        path.display()
    );
    match &s.upgrade_sock {
        Some(p) => Err(src.invalid(p, "server.upgrade_sock", message)),
        None => Ok(UpgradeSock::Unavailable {
            reason: format!(
                "server.upgrade_sock: the default, next to the audit journal, {message}; \
                 set server.upgrade_sock to a shorter path to allow binary upgrades"
            ),
            warn: true,
        }),
    }
}

/// `[server] tls_handshake_timeout_secs` and `max_connections`: the API listener's limits.
fn listener_limits(src: &Source, s: &ServerSection) -> Result<(Duration, usize), ConfigError> {
    let handshake = src.bounded(
        "server.tls_handshake_timeout_secs",
        s.tls_handshake_timeout_secs,
    )?;
    let max_connections = src.bounded("server.max_connections", s.max_connections)?;
    Ok((Duration::from_secs(handshake), max_connections))
}

/// `[tls]`: the server certificate and the mTLS trust (platform CAs and CRLs); records
/// the server chain's and the platform CAs' expiry in `expiry`.
fn downstream_tls(
    src: &Source,
    cfg: &FileConfig,
    expiry: &mut tls::CertificateExpiry,
) -> Result<TlsMaterial, ConfigError> {
    let t = &cfg.tls;
    let cert_pem = src.read_bytes(&t.cert, "tls.cert")?;
    let key_pem = src.read_bytes(&t.key, "tls.key")?;
    let cert = tls::certified_key(&cert_pem, &key_pem)
        .map_err(|e| src.invalid(&t.cert, "tls.cert", e.to_string()))?;
    expiry
        .record(tls::CertificateRole::Server, &cert.cert)
        .map_err(|e| src.invalid(&t.cert, "tls.cert", e.to_string()))?;
    let ca_pems = src.pem_list(
        &t.client_ca,
        "tls.client_ca",
        "at least one platform CA is required",
    )?;
    tls::ca_ders(&ca_pems)
        .and_then(|cas| expiry.record(tls::CertificateRole::ClientCa, &cas))
        .map_err(|e| src.invalid_here("tls.client_ca", e.to_string()))?;
    let expiry = match t.allow_expired_crl {
        true => tls::CrlExpiry::Allow,
        false => tls::CrlExpiry::Refuse,
    };
    let verifier = tls::client_trust(&ca_pems, crls(src, t)?, expiry)
        .map_err(|e| src.invalid_here("tls.client_ca", e.to_string()))?;
    Ok(TlsMaterial { verifier, cert })
}

/// `[tls] crl`: every CRL of every file; one past its `nextUpdate` is refused, or only
/// logged with `allow_expired_crl = true`.
fn crls(
    src: &Source,
    t: &TlsSection,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = Vec::new();
    for (i, p) in t.crl.iter().enumerate() {
        let field = format!("tls.crl[{i}]");
        let data = src.read_bytes(p, &field)?;
        let crls =
            tls::crls_from_bytes(&data).map_err(|e| src.invalid(p, &field, e.to_string()))?;
        for crl in &crls {
            let next =
                tls::crl_next_update(crl).map_err(|e| src.invalid(p, &field, e.to_string()))?;
            let Some(next) = next.filter(|n| *n <= now) else {
                continue;
            };
            let when = time::OffsetDateTime::from_unix_timestamp(next)
                .map_or_else(|_| next.to_string(), |t| t.to_string());
            if !t.allow_expired_crl {
                let why = format!(
                    "the CRL expired (nextUpdate {when}); load a fresh one \
                     (or set `allow_expired_crl = true`)"
                );
                return Err(src.invalid(p, &field, why));
            }
            tracing::warn!(
                field,
                next_update = %when,
                "an expired CRL is in use (allow_expired_crl = true)"
            );
        }
        out.extend(crls);
    }
    Ok(out)
}

/// The hub's client identity towards banks and the trust sidecar (PEM cert, PEM key).
struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// `[upstream_tls]`: the hub's client identity and the banks' CAs; records their expiry
/// in `expiry`.
fn upstream_identity(
    src: &Source,
    cfg: &FileConfig,
    expiry: &mut tls::CertificateExpiry,
) -> Result<Identity, ConfigError> {
    let u = &cfg.upstream_tls;
    let cert = src.read_bytes(&u.client_cert, "upstream_tls.client_cert")?;
    let key = src.read_bytes(&u.client_key, "upstream_tls.client_key")?;
    let client_cert =
        |e: tls::TlsError| src.invalid(&u.client_cert, "upstream_tls.client_cert", e.to_string());
    tls::check_upstream_identity(&cert, &key).map_err(client_cert)?;
    tls::certs_from_pem(&cert)
        .and_then(|chain| expiry.record(tls::CertificateRole::UpstreamClient, &chain))
        .map_err(client_cert)?;
    let ca = src.pem_list(
        &u.ca,
        "upstream_tls.ca",
        "at least one CA for banks' certificates is required",
    )?;
    tls::check_upstream_roots(&ca)
        .and_then(|()| tls::ca_ders(&ca))
        .and_then(|cas| expiry.record(tls::CertificateRole::UpstreamCa, &cas))
        .map_err(|e| src.invalid_here("upstream_tls.ca", e.to_string()))?;
    Ok(Identity { cert, key })
}

/// `[tokens]`: verification settings and the start-up key set.
fn tokens(src: &Source, cfg: &FileConfig) -> Result<(TokenSettings, Arc<[u8]>), ConfigError> {
    let t = &cfg.tokens;
    let jwks = src.read_bytes(&t.jwks, "tokens.jwks")?;
    Jwks::from_json(&jwks).map_err(|e| src.invalid(&t.jwks, "tokens.jwks", e.to_string()))?;
    if t.issuer.get_ref().is_empty() {
        return Err(src.invalid(&t.issuer, "tokens.issuer", "must not be empty"));
    }
    if t.audience.get_ref().is_empty() {
        return Err(src.invalid(&t.audience, "tokens.audience", "must not be empty"));
    }
    if *t.leeway_secs.get_ref() > MAX_LEEWAY_SECS {
        return Err(src.invalid(
            &t.leeway_secs,
            "tokens.leeway_secs",
            format!(
                "at most {MAX_LEEWAY_SECS} seconds: a longer leeway extends every token's life"
            ),
        ));
    }
    let settings = TokenSettings {
        issuer: t.issuer.get_ref().clone(),
        audience: t.audience.get_ref().clone(),
        leeway_secs: *t.leeway_secs.get_ref(),
        max_token_bytes: src.bounded("tokens.max_token_bytes", t.max_token_bytes)?,
        cache_capacity: src.bounded("tokens.cache_capacity", t.cache_capacity)?,
        max_failed_verifications_per_connection_per_sec: verification_budget(
            src,
            &t.max_failed_verifications_per_connection_per_sec,
            "tokens.max_failed_verifications_per_connection_per_sec",
        )?,
        max_failed_verifications_per_certificate_per_sec: verification_budget(
            src,
            &t.max_failed_verifications_per_certificate_per_sec,
            "tokens.max_failed_verifications_per_certificate_per_sec",
        )?,
    };
    Ok((settings, Arc::from(jwks)))
}

/// A budget of failed verifications a second, within its range (`config::bounds`).
fn verification_budget(
    src: &Source,
    value: &toml::Spanned<u32>,
    field: &str,
) -> Result<NonZeroU32, ConfigError> {
    let n = src.bounded(field, *value.get_ref())?;
    NonZeroU32::new(n).ok_or_else(|| src.invalid(value, field, "must be at least 1"))
}

/// `[[participants]]`, with duplicate BINs and thumbprints refused at their position.
fn participants(
    src: &Source,
    entries: &[ParticipantSection],
) -> Result<Vec<FileParticipant>, ConfigError> {
    let mut out = Vec::with_capacity(entries.len());
    let mut dir = DirectoryBuilder::new();
    let mut seen = HashSet::new();
    for (i, p) in entries.iter().enumerate() {
        let bin = src.bin(&p.bin, &format!("participants[{i}].bin"))?;
        if !seen.insert(bin) {
            return Err(src.invalid(
                &p.bin,
                &format!("participants[{i}].bin"),
                "duplicate participant",
            ));
        }
        if p.roles.is_empty() {
            return Err(src.invalid(
                &p.bin,
                &format!("participants[{i}].roles"),
                "at least one role",
            ));
        }
        let thumbprints = thumbprints(src, i, p)?;
        let participant = Participant {
            bin,
            name: p.name.clone().into_boxed_str(),
            roles: p.roles.iter().copied().collect::<Roles>(),
            status: p.status,
        };
        // Only to find duplicate thumbprints, with the entry's position.
        dir.add_participant(participant.clone(), thumbprints.iter().copied())
            .map_err(|e| src.invalid(&p.bin, &format!("participants[{i}]"), e.to_string()))?;
        out.push(FileParticipant {
            participant,
            thumbprints,
        });
    }
    Ok(out)
}

/// A participant's registered thumbprints: given (`thumbprints`) and computed (`certs`).
fn thumbprints(
    src: &Source,
    i: usize,
    p: &ParticipantSection,
) -> Result<Vec<[u8; 32]>, ConfigError> {
    let mut out = Vec::new();
    for (j, t) in p.thumbprints.iter().enumerate() {
        let field = format!("participants[{i}].thumbprints[{j}]");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.get_ref())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
            .ok_or_else(|| {
                src.invalid(t, &field, "not a base64url SHA-256 thumbprint (43 chars)")
            })?;
        out.push(raw);
    }
    for (j, c) in p.certs.iter().enumerate() {
        let field = format!("participants[{i}].certs[{j}]");
        let pem = src.read_bytes(c, &field)?;
        let certs = tls::certs_from_pem(&pem).map_err(|e| src.invalid(c, &field, e.to_string()))?;
        let d = ring::digest::digest(&ring::digest::SHA256, certs[0].as_ref());
        let mut a = [0u8; 32];
        a.copy_from_slice(d.as_ref());
        out.push(a);
    }
    Ok(out)
}

/// `[[providers]]`. Without `[trust]` each must be a participant with the provider role;
/// with it, the registry may be the one that knows the provider.
fn providers(
    src: &Source,
    entries: &[ProviderSection],
    participants: &[FileParticipant],
    with_trust: bool,
) -> Result<Vec<ProviderSettings>, ConfigError> {
    let provider_bins: HashSet<Bin> = participants
        .iter()
        .filter(|p| p.participant.roles.contains(Role::Provider))
        .map(|p| p.participant.bin)
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, p) in entries.iter().enumerate() {
        let field = format!("providers[{i}].bin");
        let bin = src.bin(&p.bin, &field)?;
        if !with_trust && !provider_bins.contains(&bin) {
            return Err(src.invalid(
                &p.bin,
                &field,
                "no participant with this BIN holds the `provider` role",
            ));
        }
        if !seen.insert(bin) {
            return Err(src.invalid(&p.bin, &field, format!("provider {bin} is listed twice")));
        }
        out.push(provider(src, i, bin, p)?);
    }
    Ok(out)
}

/// `[[providers]] sni`: a name the bank's certificate can be verified against. An empty
/// one means no verification at all: pingora installs its `SkipAll` verifier for an empty
/// SNI (`vendor/pingora-core/src/connectors/tls/rustls/mod.rs`, `connect`:
/// `if peer.sni().is_empty() { … Some(VerificationMode::SkipAll) }`; the OpenSSL connector
/// likewise turns verification off), so it needs the loud development flag and is logged
/// at every load. The hub then sends the URL's host with `verify_cert` off
/// (`upstream::parse_base_url`), as rustls cannot send an empty name.
fn provider_sni(src: &Source, i: usize, p: &ProviderSection) -> Result<(), ConfigError> {
    let field = format!("providers[{i}].sni");
    let refuse = |field: &str, why: &str| Err(src.invalid(&p.bin, field, why));
    match (p.sni.as_deref(), p.insecure_skip_verify_for_development) {
        (Some(""), true) => {
            tracing::warn!(
                provider = p.bin.get_ref().as_str(),
                "providers[{i}]: sni = \"\" and insecure_skip_verify_for_development: \
                 the bank's certificate is NOT verified (development only)"
            );
            Ok(())
        }
        (Some(""), false) => refuse(
            &field,
            "an empty sni turns off the verification of the bank's certificate; name the \
             certificate's host, or set `insecure_skip_verify_for_development = true` \
             (development only)",
        ),
        (Some(name), _) if ServerName::try_from(name).is_err() => {
            refuse(&field, "not a DNS name or an IP address")
        }
        (_, true) => refuse(
            &format!("providers[{i}].insecure_skip_verify_for_development"),
            "only allows `sni = \"\"`; with a server name the bank's certificate is verified",
        ),
        _ => Ok(()),
    }
}

/// One `[[providers]]` entry: its base URLs (parsed and resolved) and upstream settings.
fn provider(
    src: &Source,
    i: usize,
    bin: Bin,
    p: &ProviderSection,
) -> Result<ProviderSettings, ConfigError> {
    provider_sni(src, i, p)?;
    if p.upstreams.is_empty() {
        return Err(src.invalid(
            &p.bin,
            &format!("providers[{i}].upstreams"),
            "at least one base URL",
        ));
    }
    let field = |name: &str| format!("providers[{i}].{name}");
    let connect_timeout_ms = src.bounded(&field("connect_timeout_ms"), p.connect_timeout_ms)?;
    let timeout_ms = src.bounded(&field("timeout_ms"), p.timeout_ms)?;
    let eject_after = src.bounded(&field("eject_after_failures"), p.eject_after_failures)?;
    let eject_secs = src.bounded(&field("eject_secs"), p.eject_secs)?;
    let mut targets = Vec::with_capacity(p.upstreams.len());
    for (j, u) in p.upstreams.iter().enumerate() {
        let t = parse_base_url(u.get_ref(), p.sni.as_deref()).map_err(|e| {
            src.invalid(u, &format!("providers[{i}].upstreams[{j}]"), e.to_string())
        })?;
        targets.push(t);
    }
    Ok(ProviderSettings {
        bin,
        published: p.published,
        urls: p.upstreams.iter().map(|u| u.get_ref().clone()).collect(),
        targets,
        sni: p.sni.clone(),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        timeout: Duration::from_millis(timeout_ms),
        eject_after,
        eject_for: Duration::from_secs(eject_secs),
    })
}

/// `[consents]` or `[trust]`: exactly one consent control plane (and the consent file
/// when it is new); switching between them needs a restart.
fn control_plane(
    src: &Source,
    cfg: &FileConfig,
    previous: Option<&ControlPlane>,
    identity: &Identity,
    feed: &Arc<FeedStatus>,
) -> Result<(ControlPlane, Option<ConsentFile>), ConfigError> {
    match (&cfg.consents.snapshot, &cfg.trust) {
        (Some(_), Some(t)) => Err(src.invalid(
            t.anchor(),
            "trust",
            "exactly one consent control plane: `[consents] snapshot` or `[trust]`, not both",
        )),
        (None, None) => Err(src.invalid_here(
            "consents.snapshot",
            "a consent control plane is required: `[consents] snapshot` (a file) or `[trust]` (the sidecar)",
        )),
        (Some(file), None) => {
            if matches!(previous, Some(ControlPlane::Trust(_))) {
                return Err(src.invalid(
                    file,
                    "consents.snapshot",
                    "switching from `[trust]` to a consent file needs a restart",
                ));
            }
            consent_file(src, file, cfg.consents.max_staleness_secs, previous)
        }
        (None, Some(t)) => {
            if matches!(previous, Some(ControlPlane::File { .. })) {
                return Err(src.invalid(
                    t.anchor(),
                    "trust.url",
                    "switching from a consent file to `[trust]` needs a restart",
                ));
            }
            let plane = trust_plane(src, t, identity, feed)?;
            Ok((ControlPlane::Trust(Arc::new(plane)), None))
        }
    }
}

/// `[consents] snapshot`: the path and bound; the file itself is loaded only when the
/// path is new (a file in force is followed by the watcher, not by configuration loads).
fn consent_file(
    src: &Source,
    file: &toml::Spanned<PathBuf>,
    max_staleness_secs: u64,
    previous: Option<&ControlPlane>,
) -> Result<(ControlPlane, Option<ConsentFile>), ConfigError> {
    src.bounded("consents.max_staleness_secs", max_staleness_secs)?;
    let path = src.resolve(file.get_ref());
    let known = matches!(previous, Some(ControlPlane::File { path: p, .. }) if *p == path);
    let loaded = if known {
        None
    } else {
        Some(ConsentFile::load(&path).map_err(|e| match e {
            ConfigError::Read { .. } => src.invalid(
                file,
                "consents.snapshot",
                format!("cannot read {}", path.display()),
            ),
            other => other,
        })?)
    };
    let control = ControlPlane::File {
        path,
        max_staleness: Duration::from_secs(max_staleness_secs),
    };
    Ok((control, loaded))
}

/// `[trust]`: the sidecars' URLs, CAs and bounds, reporting through `feed`.
fn trust_plane(
    src: &Source,
    t: &TrustSection,
    identity: &Identity,
    feed: &Arc<FeedStatus>,
) -> Result<TrustPlane, ConfigError> {
    TrustPlane::from_section(src, t, (&identity.cert, &identity.key), feed)
}
