//! Building a configuration in code: constructors that fill every optional field with its
//! default (from [`super::defaults`]) and [`FileConfig::to_toml`], so that the development
//! hub, the benches and the tests write the same file format the hub parses, typed.

use std::path::PathBuf;
use toml::Spanned;

use policy::directory::{ParticipantStatus, Role};
use policy::limits::LimitSettings;

use super::{
    defaults, AuditSection, ConsentSection, FileConfig, LiveCheckSection, ParticipantSection,
    ProviderSection, ServerSection, TlsSection, TokenSection, TrustSection, UpstreamTlsSection,
};

/// A value as the parser would give it, without a position (for configurations built in
/// code; errors about it name the field with line 0).
pub fn at<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

fn paths(files: &[PathBuf]) -> Vec<Spanned<PathBuf>> {
    files.iter().cloned().map(at).collect()
}

impl FileConfig {
    /// A configuration with the four required sections; consents, trust, participants
    /// and providers empty, every other setting at its default.
    pub fn new(
        server: ServerSection,
        tls: TlsSection,
        upstream_tls: UpstreamTlsSection,
        tokens: TokenSection,
    ) -> FileConfig {
        FileConfig {
            server,
            tls,
            upstream_tls,
            tokens,
            consents: ConsentSection::default(),
            trust: None,
            audit: AuditSection::default(),
            rollups: None,
            live_checks: LiveCheckSection::default(),
            limits: LimitSettings::default(),
            participants: Vec::new(),
            providers: Vec::new(),
        }
    }

    /// The configuration as a TOML file the hub reads back to the same values.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

/// The files a hub's configuration names: the platform CA (which also issues the banks'
/// and the sidecar's certificates in a development world), the hub's server and client
/// identities, and the token keys.
#[derive(Debug, Clone)]
pub struct HubFiles {
    /// CA bundle: participants' client certificates and banks' server certificates.
    pub ca: PathBuf,
    /// The hub's server certificate and key.
    pub server: (PathBuf, PathBuf),
    /// The hub's client certificate and key (towards banks and the sidecar).
    pub client: (PathBuf, PathBuf),
    /// The JWKS file.
    pub jwks: PathBuf,
}

impl FileConfig {
    /// The required sections over `files`: the API listener on `listen`, the admin one on
    /// `admin_listen`, tokens of `issuer` for `audience`; everything else as
    /// [`FileConfig::new`] leaves it.
    pub fn for_files(
        listen: &str,
        admin_listen: &str,
        files: &HubFiles,
        issuer: &str,
        audience: &str,
    ) -> FileConfig {
        let ca = [files.ca.clone()];
        let mut server = ServerSection::new(listen);
        server.admin_listen = at(admin_listen.to_string());
        FileConfig::new(
            server,
            TlsSection::new(files.server.0.clone(), files.server.1.clone(), &ca),
            UpstreamTlsSection::new(&ca, files.client.0.clone(), files.client.1.clone()),
            TokenSection::new(files.jwks.clone(), issuer, audience),
        )
    }
}

impl ServerSection {
    /// `[server]` listening on `listen`, everything else by default.
    pub fn new(listen: &str) -> ServerSection {
        ServerSection {
            listen: at(listen.to_string()),
            admin_listen: defaults::admin_listen(),
            threads: None,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            work_stealing: false,
            http2: defaults::HTTP2,
            grace_period_secs: defaults::GRACE_PERIOD_SECS,
            shutdown_timeout_secs: defaults::SHUTDOWN_TIMEOUT_SECS,
            upstream_keepalive_pool_size: defaults::UPSTREAM_POOL,
            tls_handshake_timeout_secs: defaults::TLS_HANDSHAKE_TIMEOUT_SECS,
            max_connections: defaults::MAX_CONNECTIONS,
            upgrade_sock: None,
        }
    }
}

impl TlsSection {
    /// `[tls]` with the hub's server certificate and key and the platform CA files.
    pub fn new(cert: PathBuf, key: PathBuf, client_ca: &[PathBuf]) -> TlsSection {
        TlsSection {
            cert: at(cert),
            key: at(key),
            client_ca: paths(client_ca),
            crl: Vec::new(),
            allow_expired_crl: false,
        }
    }
}

impl UpstreamTlsSection {
    /// `[upstream_tls]` with the banks' CA files and the hub's client identity.
    pub fn new(ca: &[PathBuf], client_cert: PathBuf, client_key: PathBuf) -> UpstreamTlsSection {
        UpstreamTlsSection {
            ca: paths(ca),
            client_cert: at(client_cert),
            client_key: at(client_key),
        }
    }
}

impl TokenSection {
    /// `[tokens]` with the JWKS file, the expected issuer and audience.
    pub fn new(jwks: PathBuf, issuer: &str, audience: &str) -> TokenSection {
        TokenSection {
            jwks: at(jwks),
            issuer: at(issuer.to_string()),
            audience: at(audience.to_string()),
            leeway_secs: at(defaults::LEEWAY_SECS),
            max_token_bytes: defaults::MAX_TOKEN_BYTES,
            cache_capacity: defaults::TOKEN_CACHE,
            max_failed_verifications_per_connection_per_sec: at(
                defaults::FAILED_VERIFICATIONS_PER_CONNECTION,
            ),
            max_failed_verifications_per_certificate_per_sec: at(
                defaults::FAILED_VERIFICATIONS_PER_CERTIFICATE,
            ),
        }
    }
}

impl TrustSection {
    /// `[trust]` following the sidecar at `url` (verified with `ca`), keys from the file.
    pub fn new(url: &str, ca: &[PathBuf]) -> TrustSection {
        TrustSection {
            url: at(url.to_string()),
            urls: None,
            ca: paths(ca),
            max_staleness_secs: defaults::MAX_STALENESS_SECS,
            jwks: false,
            jwks_refresh_secs: defaults::JWKS_REFRESH_SECS,
            heartbeat_secs: defaults::HEARTBEAT_SECS,
        }
    }

    /// `[trust]` following whichever of the sidecars at `urls` (replicas of one database,
    /// verified with `ca`) answers; otherwise as [`TrustSection::new`].
    pub fn replicas(urls: &[String], ca: &[PathBuf]) -> TrustSection {
        TrustSection {
            url: defaults::no_url(),
            urls: Some(at(urls.iter().cloned().map(at).collect())),
            ..TrustSection::new("", ca)
        }
    }
}

impl ParticipantSection {
    /// A `[[participants]]` entry with no registered certificate yet.
    pub fn new(bin: &str, name: &str, roles: &[Role], status: ParticipantStatus) -> Self {
        ParticipantSection {
            bin: at(bin.to_string()),
            name: name.to_string(),
            roles: roles.to_vec(),
            status,
            thumbprints: Vec::new(),
            certs: Vec::new(),
        }
    }
}

impl ProviderSection {
    /// A `[[providers]]` entry routed to `upstreams`, every setting by default.
    pub fn new(bin: &str, upstreams: &[String]) -> ProviderSection {
        ProviderSection {
            bin: at(bin.to_string()),
            published: defaults::PUBLISHED,
            upstreams: upstreams.iter().cloned().map(at).collect(),
            sni: None,
            insecure_skip_verify_for_development: false,
            connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            timeout_ms: defaults::TIMEOUT_MS,
            eject_after_failures: defaults::EJECT_AFTER,
            eject_secs: defaults::EJECT_SECS,
        }
    }
}

impl ConsentSection {
    /// No consent file (`[trust]` mode): the section is left out of a written file.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
    }

    /// `[consents]` reading a snapshot file.
    pub fn file(snapshot: PathBuf) -> ConsentSection {
        ConsentSection {
            snapshot: Some(at(snapshot)),
            ..ConsentSection::default()
        }
    }
}

impl AuditSection {
    /// `[audit]` appending to `path`.
    pub fn file(path: PathBuf) -> AuditSection {
        AuditSection {
            path,
            ..AuditSection::default()
        }
    }
}
