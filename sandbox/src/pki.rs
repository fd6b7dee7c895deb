//! Development PKI: creates on disk, in one call, every certificate the demo, the
//! end-to-end tests and the benches need (platform CA, hub, API users, provider banks,
//! operator, an untrusted CA for negative tests), plus CRLs and expired leaves.
//!
//! Everything is ECDSA P-256 and generated with `rcgen` over `ring`; nothing here is
//! meant for production. Certificates are written as PEM, private keys as PKCS#8 PEM
//! with 0600 permissions on unix. Identities map to participants by the SHA-256
//! thumbprint of the leaf DER (`x5t#S256`, contract §1).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use consent_cache::Bin;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// Organisation name written into every certificate the development CA issues to the hub itself.
const HUB_ORG: &str = "Open API Hub (development)";
/// Margin for clocks that disagree slightly between the processes of one demo.
const NOT_BEFORE_MARGIN: Duration = Duration::hours(1);

/// Why the development PKI could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The [`PkiSpec`] cannot produce a usable PKI.
    #[error("invalid PKI spec: {0}")]
    InvalidSpec(&'static str),
    /// The same BIN appears twice in one role of the [`PkiSpec`].
    #[error("{bin} is listed twice among the {role}")]
    DuplicateParticipant {
        /// `"api_users"` or `"providers"`.
        role: &'static str,
        /// The repeated BIN.
        bin: Bin,
    },
    /// The BIN has no API-user certificate in this PKI.
    #[error("{0} is not an API user of this development PKI")]
    UnknownApiUser(Bin),
    /// A file stem would not make a plain file name inside the output directory.
    #[error("invalid file stem {0:?}: use ASCII letters, digits, '-', '_' and '.', not starting with '.'")]
    InvalidStem(String),
    /// `rcgen` refused to build or sign a certificate, key or CRL.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The PEM input could not be parsed.
    #[error("malformed PEM: {0}")]
    MalformedPem(#[source] std::io::Error),
    /// The PEM input holds no `CERTIFICATE` block.
    #[error("no CERTIFICATE block in the PEM input")]
    NoCertificate,
    /// The PEM input holds no private key block.
    #[error("no private key block in the PEM input")]
    NoPrivateKey,
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// What [`DevPki::generate`] should issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiSpec {
    /// API users; each gets a client certificate with CN = its BIN.
    pub api_users: Vec<Bin>,
    /// Provider banks; each gets a server certificate for `localhost` / `127.0.0.1`.
    pub providers: Vec<Bin>,
    /// Whether to issue an operator client certificate.
    pub operator: bool,
    /// Subject alternative names of the hub's server certificate (DNS names or IP addresses).
    pub hub_hosts: Vec<String>,
    /// Validity of issued leaves in days (the CA lives one day longer).
    pub validity_days: u32,
}

impl Default for PkiSpec {
    fn default() -> Self {
        PkiSpec {
            api_users: Vec::new(),
            providers: Vec::new(),
            operator: false,
            hub_hosts: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            validity_days: 365,
        }
    }
}

impl PkiSpec {
    /// A spec for these participants with the defaults for everything else
    /// (hub SANs `localhost` and `127.0.0.1`, 365 days, no operator).
    pub fn new(api_users: Vec<Bin>, providers: Vec<Bin>) -> Self {
        PkiSpec {
            api_users,
            providers,
            ..PkiSpec::default()
        }
    }
}

/// One issued certificate with its private key, on disk and in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// Absolute path of the leaf certificate (PEM, leaf only).
    pub cert_path: PathBuf,
    /// Absolute path of the private key (PKCS#8 PEM, mode 0600 on unix).
    pub key_path: PathBuf,
    /// The leaf certificate as PEM.
    pub cert_pem: String,
    /// The private key as PKCS#8 PEM.
    pub key_pem: String,
    /// SHA-256 of the leaf certificate's DER.
    pub thumbprint: [u8; 32],
    /// `thumbprint` as base64url without padding: the `x5t#S256` value of contract §1 and §4.
    pub x5t_s256: String,
    issuer_pem: String,
    serial: Vec<u8>,
}

impl Identity {
    /// The leaf followed by its issuing CA, as one PEM string (for servers that send the chain).
    pub fn chain_pem(&self) -> String {
        let mut out = String::with_capacity(self.cert_pem.len() + self.issuer_pem.len() + 1);
        out.push_str(&self.cert_pem);
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&self.issuer_pem);
        out
    }

    /// The certificate's serial number (big-endian, as written in the certificate).
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// The leaf certificate as DER, e.g. for a rustls configuration.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        first_cert_der(self.cert_pem.as_bytes())
    }

    /// The leaf and its issuing CA as DER, leaf first.
    pub fn chain_der(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        Ok(vec![
            self.cert_der()?,
            first_cert_der(self.issuer_pem.as_bytes())?,
        ])
    }

    /// The private key as DER, e.g. for a rustls configuration.
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
            .map_err(PkiError::MalformedPem)?
            .ok_or(PkiError::NoPrivateKey)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key stays out of debug output, even for a development key.
        f.debug_struct("Identity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("x5t_s256", &self.x5t_s256)
            .finish_non_exhaustive()
    }
}

/// A certificate authority's certificate as written to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    /// Absolute path of the CA certificate (PEM).
    pub cert_path: PathBuf,
    /// Absolute path of the CA private key (PKCS#8 PEM, mode 0600 on unix).
    pub key_path: PathBuf,
    /// The CA certificate as PEM.
    pub cert_pem: String,
}

impl CaCert {
    /// The CA certificate as DER, e.g. for a rustls root store.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        first_cert_der(self.cert_pem.as_bytes())
    }
}

/// The development PKI: the platform CA with its key kept in memory, and every identity it issued.
///
/// Files written by [`DevPki::generate`] into its directory:
///
/// | file | what |
/// |---|---|
/// | `ca.pem`, `ca-key.pem` | platform CA (CA:true, pathlen 0, keyCertSign + cRLSign) |
/// | `hub-server.pem`, `hub-server-key.pem` | hub server certificate (SANs from the spec, serverAuth) |
/// | `hub-client.pem`, `hub-client-key.pem` | hub client certificate towards banks (clientAuth) |
/// | `api-user-{bin}.pem`, `api-user-{bin}-key.pem` | per API user (CN = BIN, clientAuth) |
/// | `provider-{bin}.pem`, `provider-{bin}-key.pem` | per provider bank (localhost/127.0.0.1, serverAuth) |
/// | `operator.pem`, `operator-key.pem` | operator client certificate, when requested |
/// | `untrusted-ca.pem`, `untrusted-ca-key.pem` | a second CA nobody should trust |
/// | `untrusted-client.pem`, `untrusted-client-key.pem` | a client certificate issued by the untrusted CA |
#[derive(Debug)]
pub struct DevPki {
    dir: PathBuf,
    validity_days: u32,
    ca: CaCert,
    ca_issuer: Issuer<'static, KeyPair>,
    hub_server: Identity,
    hub_client: Identity,
    api_users: Vec<(Bin, Identity)>,
    providers: Vec<(Bin, Identity)>,
    operator: Option<Identity>,
    untrusted_ca: CaCert,
    untrusted_client: Identity,
}

/// The subject, names and lifetime of one leaf to issue.
struct LeafProfile {
    common_name: String,
    organization: String,
    sans: Vec<String>,
    eku: ExtendedKeyUsagePurpose,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// A CA key and certificate able to issue leaves.
struct Authority<'a> {
    issuer: &'a Issuer<'static, KeyPair>,
    cert_pem: &'a str,
}

impl DevPki {
    /// Creates `dir` if needed and writes the whole PKI described by `spec` into it
    /// (see the table on [`DevPki`]); returned paths are absolute.
    pub fn generate(dir: &Path, spec: &PkiSpec) -> Result<DevPki, PkiError> {
        validate_spec(spec)?;
        let dir = prepare_dir(dir)?;

        let now = OffsetDateTime::now_utc();
        let not_before = now - NOT_BEFORE_MARGIN;
        let leaf_not_after = days_after(now, spec.validity_days)?;
        let ca_not_after = days_after(leaf_not_after, 1)?;

        let (ca, ca_issuer) = make_ca(
            &dir,
            "ca",
            "Open API Hub Development CA",
            not_before,
            ca_not_after,
        )?;
        let (untrusted_ca, untrusted_issuer) = make_ca(
            &dir,
            "untrusted-ca",
            "Untrusted Development CA",
            not_before,
            ca_not_after,
        )?;
        let platform = Authority {
            issuer: &ca_issuer,
            cert_pem: &ca.cert_pem,
        };
        let leaf = |cn: String, org: String, sans: Vec<String>, eku| LeafProfile {
            common_name: cn,
            organization: org,
            sans,
            eku,
            not_before,
            not_after: leaf_not_after,
        };
        let bank_hosts = || vec!["localhost".to_owned(), "127.0.0.1".to_owned()];

        let hub_server = issue_leaf(
            &platform,
            leaf(
                "hub".to_owned(),
                HUB_ORG.to_owned(),
                spec.hub_hosts.clone(),
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            &dir,
            "hub-server",
        )?;
        let hub_client = issue_leaf(
            &platform,
            leaf(
                "hub".to_owned(),
                HUB_ORG.to_owned(),
                Vec::new(),
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            &dir,
            "hub-client",
        )?;

        let mut api_users = Vec::with_capacity(spec.api_users.len());
        for &bin in &spec.api_users {
            let id = issue_leaf(
                &platform,
                leaf(
                    bin.to_string(),
                    api_user_org(bin),
                    Vec::new(),
                    ExtendedKeyUsagePurpose::ClientAuth,
                ),
                &dir,
                &format!("api-user-{bin}"),
            )?;
            api_users.push((bin, id));
        }

        let mut providers = Vec::with_capacity(spec.providers.len());
        for &bin in &spec.providers {
            let id = issue_leaf(
                &platform,
                leaf(
                    bin.to_string(),
                    format!("Sandbox bank {bin}"),
                    bank_hosts(),
                    ExtendedKeyUsagePurpose::ServerAuth,
                ),
                &dir,
                &format!("provider-{bin}"),
            )?;
            providers.push((bin, id));
        }

        let operator = if spec.operator {
            Some(issue_leaf(
                &platform,
                leaf(
                    "operator".to_owned(),
                    HUB_ORG.to_owned(),
                    Vec::new(),
                    ExtendedKeyUsagePurpose::ClientAuth,
                ),
                &dir,
                "operator",
            )?)
        } else {
            None
        };

        // The impostor copies the first API user's subject, so only the issuer tells it apart.
        let impostor_cn = spec
            .api_users
            .first()
            .map_or_else(|| "999999999999".to_owned(), Bin::to_string);
        let untrusted_client = issue_leaf(
            &Authority {
                issuer: &untrusted_issuer,
                cert_pem: &untrusted_ca.cert_pem,
            },
            leaf(
                impostor_cn,
                "Untrusted impostor".to_owned(),
                Vec::new(),
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            &dir,
            "untrusted-client",
        )?;

        Ok(DevPki {
            dir,
            validity_days: spec.validity_days,
            ca,
            ca_issuer,
            hub_server,
            hub_client,
            api_users,
            providers,
            operator,
            untrusted_ca,
            untrusted_client,
        })
    }

    /// The (absolute) directory the PKI was written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The platform CA every participant and the hub trust.
    pub fn ca(&self) -> &CaCert {
        &self.ca
    }

    /// Path of the platform CA certificate (`ca.pem`).
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca.cert_path
    }

    /// The platform CA certificate as PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The hub's server certificate (what API users connect to).
    pub fn hub_server(&self) -> &Identity {
        &self.hub_server
    }

    /// The hub's client certificate towards provider banks.
    pub fn hub_client(&self) -> &Identity {
        &self.hub_client
    }

    /// The client certificate of an API user, if the spec listed it.
    pub fn api_user(&self, bin: Bin) -> Option<&Identity> {
        self.api_users
            .iter()
            .find(|(b, _)| *b == bin)
            .map(|(_, id)| id)
    }

    /// Every API user and its certificate, in spec order.
    pub fn api_users(&self) -> impl Iterator<Item = (Bin, &Identity)> + '_ {
        self.api_users.iter().map(|(b, id)| (*b, id))
    }

    /// The server certificate of a provider bank, if the spec listed it.
    pub fn provider_server(&self, bin: Bin) -> Option<&Identity> {
        self.providers
            .iter()
            .find(|(b, _)| *b == bin)
            .map(|(_, id)| id)
    }

    /// Every provider bank and its server certificate, in spec order.
    pub fn providers(&self) -> impl Iterator<Item = (Bin, &Identity)> + '_ {
        self.providers.iter().map(|(b, id)| (*b, id))
    }

    /// The operator's client certificate, if the spec asked for one.
    pub fn operator(&self) -> Option<&Identity> {
        self.operator.as_ref()
    }

    /// The second CA, which nobody in the system trusts.
    pub fn untrusted_ca(&self) -> &CaCert {
        &self.untrusted_ca
    }

    /// A client certificate issued by the untrusted CA (same subject as the first API user):
    /// the hub must refuse it.
    pub fn untrusted_client(&self) -> &Identity {
        &self.untrusted_client
    }

    /// Writes `crl-{bin}.pem` into `dir`: a CRL signed by the platform CA that revokes
    /// this API user's certificate. Returns its absolute path.
    pub fn revoke_client(&self, which: Bin, dir: &Path) -> Result<PathBuf, PkiError> {
        let id = self
            .api_user(which)
            .ok_or(PkiError::UnknownApiUser(which))?;
        let dir = prepare_dir(dir)?;
        self.write_crl(&[id], &dir.join(format!("crl-{which}.pem")))
    }

    /// Writes to `path` (PEM, `X509 CRL`; parent directories created) a CRL signed by the
    /// platform CA revoking exactly `revoked` (possibly none: an empty but valid CRL).
    /// Each call gets a larger CRL number. Returns the absolute path.
    pub fn write_crl(&self, revoked: &[&Identity], path: &Path) -> Result<PathBuf, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.write_crl_between(
            revoked,
            path,
            now - Duration::minutes(1),
            days_after(now, self.validity_days)?,
        )
    }

    /// Like [`DevPki::write_crl`], but the CRL's `nextUpdate` was yesterday: an expired CRL,
    /// which the hub refuses unless told otherwise.
    pub fn write_expired_crl(
        &self,
        revoked: &[&Identity],
        path: &Path,
    ) -> Result<PathBuf, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.write_crl_between(
            revoked,
            path,
            now - Duration::days(2),
            now - Duration::days(1),
        )
    }

    fn write_crl_between(
        &self,
        revoked: &[&Identity],
        path: &Path,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<PathBuf, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|id| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&id.serial),
                revocation_time: this_update,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        // Nanoseconds since the epoch: increases between calls and fits the 20 octets allowed.
        let crl_number = u128::try_from(now.unix_timestamp_nanos())
            .map_err(|_| PkiError::InvalidSpec("the system clock is before 1970"))?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca_issuer)?;
        let path = absolute(path)?;
        if let Some(parent) = path.parent() {
            prepare_dir(parent)?;
        }
        write_public(&path, crl.pem()?.as_bytes())?;
        Ok(path)
    }

    /// Issues, into `dir`, another valid client certificate for an API user BIN, written as
    /// `{stem}.pem` / `{stem}-key.pem` (e.g. a second certificate to test rotation).
    pub fn issue_client(&self, bin: Bin, stem: &str, dir: &Path) -> Result<Identity, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_client_between(
            bin,
            stem,
            dir,
            now - NOT_BEFORE_MARGIN,
            days_after(now, self.validity_days)?,
        )
    }

    /// Issues, into `dir`, a client certificate for `bin` signed by the platform CA that
    /// expired yesterday (`api-user-{bin}-expired.pem` / `-key.pem`): the hub must refuse it.
    pub fn issue_expired_client(&self, bin: Bin, dir: &Path) -> Result<Identity, PkiError> {
        let now = OffsetDateTime::now_utc();
        self.issue_client_between(
            bin,
            &format!("api-user-{bin}-expired"),
            dir,
            now - Duration::days(30),
            now - Duration::days(1),
        )
    }

    fn issue_client_between(
        &self,
        bin: Bin,
        stem: &str,
        dir: &Path,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Identity, PkiError> {
        validate_stem(stem)?;
        let dir = prepare_dir(dir)?;
        issue_leaf(
            &Authority {
                issuer: &self.ca_issuer,
                cert_pem: &self.ca.cert_pem,
            },
            LeafProfile {
                common_name: bin.to_string(),
                organization: api_user_org(bin),
                sans: Vec::new(),
                eku: ExtendedKeyUsagePurpose::ClientAuth,
                not_before,
                not_after,
            },
            &dir,
            stem,
        )
    }
}

/// SHA-256 of the first certificate in `cert_pem` (its DER): the participant key of contract §1.
pub fn thumbprint_of_pem(cert_pem: &[u8]) -> Result<[u8; 32], PkiError> {
    Ok(thumbprint_of_der(&first_cert_der(cert_pem)?))
}

/// SHA-256 of a certificate's DER.
pub fn thumbprint_of_der(cert_der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, cert_der).as_ref());
    out
}

/// The `x5t#S256` form of a thumbprint: base64url without padding.
pub fn x5t_s256(thumbprint: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(thumbprint)
}

/// Writes a private key (or any secret) so that only the owner can read it: the file is
/// created with mode 0600 and, if it already existed, narrowed to 0600 before the secret
/// is written.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_secret(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_private(path, contents).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn absolute(path: &Path) -> Result<PathBuf, PkiError> {
    std::path::absolute(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn prepare_dir(dir: &Path) -> Result<PathBuf, PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    absolute(dir)
}

fn validate_spec(spec: &PkiSpec) -> Result<(), PkiError> {
    if spec.validity_days == 0 {
        return Err(PkiError::InvalidSpec("validity_days must be at least 1"));
    }
    if spec.hub_hosts.is_empty() {
        return Err(PkiError::InvalidSpec(
            "hub_hosts must name at least one DNS name or IP address",
        ));
    }
    for (role, bins) in [
        ("api_users", &spec.api_users),
        ("providers", &spec.providers),
    ] {
        for (i, bin) in bins.iter().enumerate() {
            if bins[..i].contains(bin) {
                return Err(PkiError::DuplicateParticipant { role, bin: *bin });
            }
        }
    }
    Ok(())
}

fn validate_stem(stem: &str) -> Result<(), PkiError> {
    let ok = !stem.is_empty()
        && !stem.starts_with('.')
        && stem
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidStem(stem.to_owned()))
    }
}

fn days_after(t: OffsetDateTime, days: u32) -> Result<OffsetDateTime, PkiError> {
    t.checked_add(Duration::days(i64::from(days)))
        .ok_or(PkiError::InvalidSpec("validity_days is too large"))
}

fn api_user_org(bin: Bin) -> String {
    format!("Sandbox API user {bin}")
}

fn distinguished_name(common_name: &str, organization: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, organization);
    dn
}

/// A random positive serial of 16 bytes whose first byte is never zero, so its DER
/// encoding has a fixed length and CRL entries match byte for byte.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Random)?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

fn first_cert_der(pem: &[u8]) -> Result<CertificateDer<'static>, PkiError> {
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or(PkiError::NoCertificate)?
        .map_err(PkiError::MalformedPem)
}

fn make_ca(
    dir: &Path,
    stem: &str,
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(CaCert, Issuer<'static, KeyPair>), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name, HUB_ORG);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key)?;

    let ca = CaCert {
        cert_path: dir.join(format!("{stem}.pem")),
        key_path: dir.join(format!("{stem}-key.pem")),
        cert_pem: cert.pem(),
    };
    write_public(&ca.cert_path, ca.cert_pem.as_bytes())?;
    write_secret(&ca.key_path, key.serialize_pem().as_bytes())?;
    Ok((ca, Issuer::new(params, key)))
}

fn issue_leaf(
    authority: &Authority<'_>,
    profile: LeafProfile,
    dir: &Path,
    stem: &str,
) -> Result<Identity, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let serial = random_serial()?;
    let mut params = CertificateParams::new(profile.sans)?;
    params.distinguished_name = distinguished_name(&profile.common_name, &profile.organization);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![profile.eku];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = profile.not_before;
    params.not_after = profile.not_after;
    let cert = params.signed_by(&key, authority.issuer)?;

    let thumbprint = thumbprint_of_der(cert.der());
    let id = Identity {
        cert_path: dir.join(format!("{stem}.pem")),
        key_path: dir.join(format!("{stem}-key.pem")),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        thumbprint,
        x5t_s256: x5t_s256(&thumbprint),
        issuer_pem: authority.cert_pem.to_owned(),
        serial,
    };
    write_public(&id.cert_path, id.cert_pem.as_bytes())?;
    write_secret(&id.key_path, id.key_pem.as_bytes())?;
    Ok(id)
}
