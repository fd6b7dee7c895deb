//! Compiles a parsed configuration into the runtime snapshot the request path reads
//! (participant directory and upstreams, token verifier, limits, consents), plus the
//! process-level settings and TLS material. Built and validated off the request path;
//! published atomically by `reload`.

use arc_swap::ArcSwap;
use base64::Engine;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use consent_cache::ConsentStore;
use policy::directory::{DirectoryBuilder, Participant, Role, Roles};
use policy::limits::Limiter;
use policy::token::{Jwks, TokenSettings, TokenVerifier};

use crate::config::{ConfigError, FileConfig, Source};
use crate::follower::{FeedStatus, TrustPlane};
use crate::network::{self, FileBase, FileParticipant, Network, ProviderSettings};
use crate::tls;
use crate::upstream::parse_base_url;

/// What the request path reads; replaced whole on reload.
pub struct Snapshot {
    /// Participants and providers (directory and upstream pools). Fixed per load in file
    /// mode; with `[trust]`, replaced by the feed follower whenever the registry changes.
    pub network: ArcSwap<Network>,
    /// What the configuration file says about participants and providers, from which
    /// (with the registry) the follower rebuilds `network`.
    pub base: FileBase,
    /// Access-token verifier (with its cache); replaced in place when keys are fetched
    /// from the trust sidecar (`[trust] jwks = true`).
    pub tokens: ArcSwap<TokenVerifier>,
    /// Rate limiters (kept across reloads when their settings do not change).
    pub limiter: Arc<Limiter>,
    limits_fingerprint: String,
    /// The consent store. File mode: a fresh handle per load (the store itself reused
    /// while the file is unchanged). `[trust]` mode: one handle for the process's life,
    /// whose store the feed follower updates and replaces.
    pub consents: Arc<ArcSwap<ConsentStore>>,
    consents_stamp: Option<FileStamp>,
    /// The trust sidecar, when it is the consent control plane.
    pub trust: Option<Arc<TrustPlane>>,
    /// Request header block limit.
    pub max_header_bytes: usize,
    /// Request body limit.
    pub max_body_bytes: usize,
}

impl Snapshot {
    /// The participant directory and upstream pools in force.
    pub fn network(&self) -> Arc<Network> {
        self.network.load_full()
    }

    /// The access-token verifier in force.
    pub fn tokens(&self) -> Arc<TokenVerifier> {
        self.tokens.load_full()
    }

    /// The consent store in force.
    pub fn consents(&self) -> arc_swap::Guard<Arc<ConsentStore>> {
        self.consents.load()
    }

    /// The rate limiters.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// A token named an unknown `kid`: ask the sidecar for fresh keys (`[trust] jwks`).
    pub fn want_jwks(&self) {
        if let Some(plane) = &self.trust {
            plane.status.want_jwks();
        }
    }

    /// Request header block limit.
    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// Request body limit.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The consent snapshot file's current (length, modification time), if it differs from
    /// what this snapshot loaded.
    pub fn consents_changed_on_disk(&self) -> Option<(u64, Option<SystemTime>)> {
        let stamp = self.consents_stamp.as_ref()?;
        FileStamp::of(&stamp.path)
            .filter(|now| now != stamp)
            .map(|now| (now.len, now.modified))
    }

    /// Contract §6 row 7: a file control plane is always fresh; the sidecar's state is
    /// fresh once a snapshot is loaded and while the feed is heard within the bound.
    pub fn consent_state_fresh(&self) -> bool {
        self.trust.as_ref().is_none_or(|plane| plane.is_fresh())
    }
}

/// Settings that only take effect at process start.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    /// API listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Worker threads.
    pub threads: usize,
    /// Offer h2.
    pub http2: bool,
    /// Tokio work stealing between worker threads.
    pub work_stealing: bool,
    /// Grace period at SIGTERM.
    pub grace_period_secs: u64,
    /// In-flight budget at shutdown.
    pub shutdown_timeout_secs: u64,
    /// Upstream keep-alive pool size.
    pub upstream_keepalive_pool_size: usize,
    /// Audit journal destination.
    pub audit_path: PathBuf,
    /// Audit buffer.
    pub audit_buffer: usize,
    /// The hub's client certificate towards banks (read by the connector at start).
    pub upstream_cert: PathBuf,
    /// Its key.
    pub upstream_key: PathBuf,
    /// The banks' CA bundle files.
    pub upstream_ca: Vec<PathBuf>,
}

/// Downstream TLS material.
pub struct TlsMaterial {
    /// mTLS verifier (platform CAs + CRLs).
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The hub's server certificate.
    pub cert: Arc<CertifiedKey>,
}

/// Everything one configuration load produces.
pub struct Loaded {
    /// The runtime snapshot.
    pub snapshot: Snapshot,
    /// Process settings.
    pub process: ProcessSettings,
    /// Downstream TLS.
    pub tls: TlsMaterial,
    /// Summary for logs and `check`.
    pub summary: String,
}

/// Identifies a file's content cheaply, to skip reloading an unchanged consent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            path: path.to_path_buf(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// Reads, parses, validates and compiles a configuration file. `previous` lets unchanged
/// parts (consents, limiter state) carry over.
pub fn load(path: &Path, previous: Option<&Snapshot>) -> Result<Loaded, ConfigError> {
    let src = Source::read(path)?;
    let cfg = src.parse()?;
    compile(&src, cfg, previous)
}

fn compile(
    src: &Source,
    cfg: FileConfig,
    previous: Option<&Snapshot>,
) -> Result<Loaded, ConfigError> {
    let process = ProcessSettings {
        listen: src.socket_addr(&cfg.server.listen, "server.listen")?,
        admin_listen: src.socket_addr(&cfg.server.admin_listen, "server.admin_listen")?,
        threads: cfg
            .server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        http2: cfg.server.http2,
        work_stealing: cfg.server.work_stealing,
        grace_period_secs: cfg.server.grace_period_secs,
        shutdown_timeout_secs: cfg.server.shutdown_timeout_secs,
        upstream_keepalive_pool_size: cfg.server.upstream_keepalive_pool_size,
        audit_path: if cfg.audit.path.as_os_str() == "-" {
            cfg.audit.path.clone()
        } else {
            src.resolve(&cfg.audit.path)
        },
        audit_buffer: cfg.audit.buffer.max(1),
        upstream_cert: src.resolve(cfg.upstream_tls.client_cert.get_ref()),
        upstream_key: src.resolve(cfg.upstream_tls.client_key.get_ref()),
        upstream_ca: cfg
            .upstream_tls
            .ca
            .iter()
            .map(|p| src.resolve(p.get_ref()))
            .collect(),
    };
    if process.threads == 0 || process.threads > 1024 {
        return Err(src.invalid_here("server.threads", "must be between 1 and 1024"));
    }
    if cfg.server.max_header_bytes < 1024 || cfg.server.max_header_bytes > 1024 * 1024 {
        return Err(src.invalid_here(
            "server.max_header_bytes",
            "must be between 1024 and 1048576",
        ));
    }

    // Downstream TLS.
    let cert_pem = src.read_bytes(&cfg.tls.cert, "tls.cert")?;
    let key_pem = src.read_bytes(&cfg.tls.key, "tls.key")?;
    let cert = tls::certified_key(&cert_pem, &key_pem)
        .map_err(|e| src.invalid(&cfg.tls.cert, "tls.cert", e.to_string()))?;
    if cfg.tls.client_ca.is_empty() {
        return Err(src.invalid_here("tls.client_ca", "at least one platform CA is required"));
    }
    let mut ca_pems = Vec::new();
    for (i, p) in cfg.tls.client_ca.iter().enumerate() {
        let field = format!("tls.client_ca[{i}]");
        let pem = src.read_bytes(p, &field)?;
        tls::certs_from_pem(&pem).map_err(|e| src.invalid(p, &field, e.to_string()))?;
        ca_pems.push(pem);
    }
    let mut crls = Vec::new();
    for (i, p) in cfg.tls.crl.iter().enumerate() {
        let field = format!("tls.crl[{i}]");
        let data = src.read_bytes(p, &field)?;
        crls.extend(
            tls::crls_from_bytes(&data).map_err(|e| src.invalid(p, &field, e.to_string()))?,
        );
    }
    let verifier = tls::client_verifier(&ca_pems, crls)
        .map_err(|e| src.invalid_here("tls.client_ca", e.to_string()))?;

    // Upstream TLS.
    let ucert = src.read_bytes(&cfg.upstream_tls.client_cert, "upstream_tls.client_cert")?;
    let ukey = src.read_bytes(&cfg.upstream_tls.client_key, "upstream_tls.client_key")?;
    tls::check_upstream_identity(&ucert, &ukey).map_err(|e| {
        src.invalid(
            &cfg.upstream_tls.client_cert,
            "upstream_tls.client_cert",
            e.to_string(),
        )
    })?;
    if cfg.upstream_tls.ca.is_empty() {
        return Err(src.invalid_here(
            "upstream_tls.ca",
            "at least one CA for banks' certificates is required",
        ));
    }
    let mut uca = Vec::new();
    for (i, p) in cfg.upstream_tls.ca.iter().enumerate() {
        let field = format!("upstream_tls.ca[{i}]");
        let pem = src.read_bytes(p, &field)?;
        tls::certs_from_pem(&pem).map_err(|e| src.invalid(p, &field, e.to_string()))?;
        uca.push(pem);
    }
    tls::check_upstream_roots(&uca)
        .map_err(|e| src.invalid_here("upstream_tls.ca", e.to_string()))?;

    // Tokens. With `[trust] jwks = true` the keys last fetched from the sidecar (kept
    // over reloads) take precedence over the file, which is only the start-up set.
    let jwks_bytes = src.read_bytes(&cfg.tokens.jwks, "tokens.jwks")?;
    let mut jwks = Jwks::from_json(&jwks_bytes)
        .map_err(|e| src.invalid(&cfg.tokens.jwks, "tokens.jwks", e.to_string()))?;
    if cfg.trust.as_ref().is_some_and(|t| t.jwks) {
        if let Some(fetched) = previous
            .and_then(|p| p.trust.as_ref())
            .and_then(|plane| plane.status.last_jwks())
        {
            jwks = Jwks::from_json(&fetched)
                .map_err(|e| src.invalid_here("trust.jwks", e.to_string()))?;
        }
    }
    if cfg.tokens.issuer.get_ref().is_empty() {
        return Err(src.invalid(&cfg.tokens.issuer, "tokens.issuer", "must not be empty"));
    }
    if cfg.tokens.audience.get_ref().is_empty() {
        return Err(src.invalid(&cfg.tokens.audience, "tokens.audience", "must not be empty"));
    }
    let tokens = TokenVerifier::new(
        TokenSettings {
            issuer: cfg.tokens.issuer.get_ref().clone(),
            audience: cfg.tokens.audience.get_ref().clone(),
            leeway_secs: cfg.tokens.leeway_secs,
            max_token_bytes: cfg.tokens.max_token_bytes,
            cache_capacity: cfg.tokens.cache_capacity,
        },
        jwks,
    );

    // Participants and providers from the file, validated with their positions.
    let with_trust = cfg.trust.is_some();
    let mut base = FileBase::default();
    let mut dir = DirectoryBuilder::new();
    let mut seen_bins = HashSet::new();
    let mut provider_bins = HashSet::new();
    for (i, p) in cfg.participants.iter().enumerate() {
        let bin = src.bin(&p.bin, &format!("participants[{i}].bin"))?;
        if !seen_bins.insert(bin) {
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
        let roles: Roles = p.roles.iter().copied().collect();
        if roles.contains(Role::Provider) {
            provider_bins.insert(bin);
        }
        let mut thumbs = Vec::new();
        for (j, t) in p.thumbprints.iter().enumerate() {
            let field = format!("participants[{i}].thumbprints[{j}]");
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t.get_ref())
                .ok()
                .filter(|v| v.len() == 32)
                .ok_or_else(|| {
                    src.invalid(t, &field, "not a base64url SHA-256 thumbprint (43 chars)")
                })?;
            let mut a = [0u8; 32];
            a.copy_from_slice(&raw);
            thumbs.push(a);
        }
        for (j, c) in p.certs.iter().enumerate() {
            let field = format!("participants[{i}].certs[{j}]");
            let pem = src.read_bytes(c, &field)?;
            let certs =
                tls::certs_from_pem(&pem).map_err(|e| src.invalid(c, &field, e.to_string()))?;
            let d = ring::digest::digest(&ring::digest::SHA256, certs[0].as_ref());
            let mut a = [0u8; 32];
            a.copy_from_slice(d.as_ref());
            thumbs.push(a);
        }
        let participant = Participant {
            bin,
            name: p.name.clone().into_boxed_str(),
            roles,
            status: p.status,
        };
        // Only to find duplicate thumbprints, with the entry's position.
        dir.add_participant(participant.clone(), thumbs.iter().copied())
            .map_err(|e| src.invalid(&p.bin, &format!("participants[{i}]"), e.to_string()))?;
        base.participants.push(FileParticipant {
            participant,
            thumbprints: thumbs,
        });
    }

    let mut seen_providers = HashSet::new();
    for (i, p) in cfg.providers.iter().enumerate() {
        let field = format!("providers[{i}].bin");
        let bin = src.bin(&p.bin, &field)?;
        // With `[trust]`, the registry may be the one that knows the provider.
        if !with_trust && !provider_bins.contains(&bin) {
            return Err(src.invalid(
                &p.bin,
                &field,
                "no participant with this BIN holds the `provider` role",
            ));
        }
        if !seen_providers.insert(bin) {
            return Err(src.invalid(&p.bin, &field, format!("provider {bin} is listed twice")));
        }
        if p.upstreams.is_empty() {
            return Err(src.invalid(
                &p.bin,
                &format!("providers[{i}].upstreams"),
                "at least one base URL",
            ));
        }
        if p.timeout_ms == 0 || p.connect_timeout_ms == 0 {
            return Err(src.invalid(
                &p.bin,
                &format!("providers[{i}].timeout_ms"),
                "timeouts must be > 0",
            ));
        }
        let mut targets = Vec::new();
        for (j, u) in p.upstreams.iter().enumerate() {
            let t = parse_base_url(u.get_ref(), p.sni.as_deref()).map_err(|e| {
                src.invalid(u, &format!("providers[{i}].upstreams[{j}]"), e.to_string())
            })?;
            targets.push(t);
        }
        base.providers.push(ProviderSettings {
            bin,
            published: p.published,
            urls: p.upstreams.iter().map(|u| u.get_ref().clone()).collect(),
            targets,
            sni: p.sni.clone(),
            connect_timeout: Duration::from_millis(p.connect_timeout_ms),
            timeout: Duration::from_millis(p.timeout_ms),
            eject_after: p.eject_after_failures,
            eject_for: Duration::from_secs(p.eject_secs),
        });
    }

    // Limits: keep the live limiter (and its counters) when its settings did not change.
    let limits_fingerprint = format!("{:?}", cfg.limits);
    let limiter = match previous {
        Some(prev) if prev.limits_fingerprint == limits_fingerprint => prev.limiter.clone(),
        _ => Arc::new(
            Limiter::new(&cfg.limits).map_err(|e| src.invalid_here("limits", e.to_string()))?,
        ),
    };

    // Consents: exactly one control plane.
    let (consents, consents_stamp, trust) = match (&cfg.consents.snapshot, &cfg.trust) {
        (Some(_), Some(t)) => {
            return Err(src.invalid(
                &t.url,
                "trust",
                "exactly one consent control plane: `[consents] snapshot` or `[trust]`, not both",
            ))
        }
        (None, None) => {
            return Err(src.invalid_here(
                "consents.snapshot",
                "a consent control plane is required: `[consents] snapshot` (a file) or `[trust]` (the sidecar)",
            ))
        }
        (Some(file), None) => {
            if previous.is_some_and(|p| p.trust.is_some()) {
                return Err(src.invalid(
                    file,
                    "consents.snapshot",
                    "switching from `[trust]` to a consent file needs a restart",
                ));
            }
            // Reuse the loaded store when the file is unchanged.
            let consent_path = src.resolve(file.get_ref());
            let stamp = FileStamp::of(&consent_path).ok_or_else(|| {
                src.invalid(
                    file,
                    "consents.snapshot",
                    format!("cannot read {}", consent_path.display()),
                )
            })?;
            let store = match previous {
                Some(prev) if prev.consents_stamp.as_ref() == Some(&stamp) => {
                    prev.consents.load_full()
                }
                _ => Arc::new(ConsentStore::load(&consent_path)?),
            };
            (Arc::new(ArcSwap::new(store)), Some(stamp), None)
        }
        (None, Some(t)) => {
            let prev_plane = match previous {
                Some(p) => match &p.trust {
                    Some(plane) => Some((p.consents.clone(), plane.status.clone())),
                    None => {
                        return Err(src.invalid(
                            &t.url,
                            "trust.url",
                            "switching from a consent file to `[trust]` needs a restart",
                        ))
                    }
                },
                None => None,
            };
            if t.ca.is_empty() {
                return Err(src.invalid(&t.url, "trust.ca", "at least one CA is required"));
            }
            let mut pems = Vec::new();
            for (i, p) in t.ca.iter().enumerate() {
                pems.push(src.read_bytes(p, &format!("trust.ca[{i}]"))?);
            }
            if t.max_staleness_secs == 0 {
                return Err(src.invalid(&t.url, "trust.max_staleness_secs", "must be > 0"));
            }
            let (store, status) = prev_plane.unwrap_or_else(|| {
                (
                    Arc::new(ArcSwap::from_pointee(ConsentStore::new())),
                    Arc::new(FeedStatus::new()),
                )
            });
            let mut plane = TrustPlane::new(
                t.url.get_ref(),
                &pems,
                &ucert,
                &ukey,
                Duration::from_secs(t.max_staleness_secs),
                status,
            )
            .map_err(|e| src.invalid(&t.url, "trust.url", e.to_string()))?;
            if t.jwks && t.jwks_refresh_secs == 0 {
                return Err(src.invalid(&t.url, "trust.jwks_refresh_secs", "must be > 0"));
            }
            plane.jwks = t.jwks;
            plane.jwks_refresh = Duration::from_secs(t.jwks_refresh_secs);
            (store, None, Some(Arc::new(plane)))
        }
    };

    // The registry the follower has loaded so far (kept over reloads); none in file mode.
    let registry = trust.as_ref().and_then(|plane| plane.status.registry());
    let network = network::build(&base, registry.as_deref(), None);

    let consent_source = match &trust {
        Some(plane) => format!("consents from {}", plane.url),
        None => format!("{} consents", consents.load().len()),
    };
    let summary = format!(
        "{} participants{}, {} providers, {consent_source}, listen {}, admin {}",
        network.directory.participants().len(),
        if registry.is_some() {
            format!(" ({} from the trust registry)", network.from_registry)
        } else {
            String::new()
        },
        network.upstreams.len(),
        process.listen,
        process.admin_listen
    );

    Ok(Loaded {
        snapshot: Snapshot {
            network: ArcSwap::from_pointee(network),
            base,
            tokens: ArcSwap::from_pointee(tokens),
            limiter,
            limits_fingerprint,
            consents,
            consents_stamp,
            trust,
            max_header_bytes: cfg.server.max_header_bytes,
            max_body_bytes: cfg.server.max_body_bytes,
        },
        process,
        tls: TlsMaterial { verifier, cert },
        summary,
    })
}
