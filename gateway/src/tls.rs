//! TLS at the hub's edges: PEM and CRL loading with precise errors, the downstream mTLS
//! trust (CAs and CRLs) and server certificate (both behind `ArcSwap` so a reload can
//! replace them without dropping the listener), the revocation of sessions and
//! connections established under a trust a reload replaced, the listener's counters,
//! the checks of the upstream client identity and the banks' CAs, and the expiry of the
//! hub's own certificates (`hub_certificate_expiry_timestamp_seconds`).

use arc_swap::ArcSwap;
use pingora::listeners::tls::PeerRevalidation;
use pingora::listeners::ListenerObserver;
use pingora::tls::{CertificateDer, PrivateKeyDer};
use prometheus::{IntCounter, IntCounterVec};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why PEM material was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate in the data.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// No private key in the data.
    #[error("no PEM private key found")]
    NoKey,
    /// Unparseable PEM.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The CA store or verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// A CRL that is not a well-formed X.509 CRL.
    #[error("malformed CRL: {0}")]
    Crl(String),
    /// A certificate that is not a well-formed X.509 certificate.
    #[error("malformed certificate: {0}")]
    Certificate(String),
}

/// The process-wide rustls provider (ring, as pingora uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM buffer.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut rd = pem;
    let certs = rustls_pemfile::certs(&mut rd)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// Parses the first private key in a PEM buffer.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut rd = pem;
    rustls_pemfile::private_key(&mut rd)
        .map_err(|e| TlsError::Pem(e.to_string()))?
        .ok_or(TlsError::NoKey)
}

/// The DER of every certificate in a list of PEM buffers (CA bundles).
pub fn ca_ders(pems: &[Vec<u8>]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for pem in pems {
        out.extend(certs_from_pem(pem)?);
    }
    Ok(out)
}

/// A CRL's `nextUpdate` in seconds since the epoch (`None` if it has none).
pub fn crl_next_update(crl: &CertificateRevocationListDer<'_>) -> Result<Option<i64>, TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| TlsError::Crl(e.to_string()))?;
    Ok(parsed.next_update().map(|t| t.timestamp()))
}

/// A certificate's `notAfter`, in seconds since the epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(parsed.validity().not_after.timestamp())
}

/// The earliest `notAfter` of `certs` (a chain, a CA bundle); `None` when there are none.
pub fn earliest_not_after(certs: &[CertificateDer<'_>]) -> Result<Option<i64>, TlsError> {
    let mut earliest = None;
    for cert in certs {
        let t = not_after(cert)?;
        earliest = Some(earliest.map_or(t, |e: i64| e.min(t)));
    }
    Ok(earliest)
}

/// One of the hub's own certificates, as the `certificate` label of
/// `hub_certificate_expiry_timestamp_seconds` names it: a fixed, small set of values,
/// never a participant's subject or serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateRole {
    /// `[tls] cert`: the API listener's server certificate (the chain in the file).
    Server,
    /// `[tls] client_ca`: the platform CAs that verify API users (every bundle).
    ClientCa,
    /// `[upstream_tls] client_cert`: the hub's identity towards banks and the trust
    /// sidecar (the chain in the file).
    UpstreamClient,
    /// `[upstream_tls] ca`: the CAs that verify banks (every bundle).
    UpstreamCa,
    /// `[trust] ca`: the CAs that verify the trust sidecar (every bundle).
    TrustCa,
}

impl CertificateRole {
    /// Every role.
    pub const ALL: [CertificateRole; 5] = [
        CertificateRole::Server,
        CertificateRole::ClientCa,
        CertificateRole::UpstreamClient,
        CertificateRole::UpstreamCa,
        CertificateRole::TrustCa,
    ];

    /// The metric label value.
    pub const fn label(self) -> &'static str {
        match self {
            CertificateRole::Server => "server",
            CertificateRole::ClientCa => "client_ca",
            CertificateRole::UpstreamClient => "upstream_client",
            CertificateRole::UpstreamCa => "upstream_ca",
            CertificateRole::TrustCa => "trust_ca",
        }
    }

    /// Whether a reload puts new material of this role in force. The connector towards
    /// banks reads `[upstream_tls]` once, at start, so its certificates change only with
    /// a restart (the trust sidecar's client picks up a new client certificate at its
    /// next connection, but the banks' still present the old one).
    pub const fn reloadable(self) -> bool {
        !matches!(
            self,
            CertificateRole::UpstreamClient | CertificateRole::UpstreamCa
        )
    }
}

/// The `notAfter` of the hub's own certificates as one load of the configuration found
/// them: for a chain or a CA bundle, the earliest of its certificates (the first to
/// break it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateExpiry {
    not_after: Vec<(CertificateRole, i64)>,
}

impl CertificateExpiry {
    /// Records `role`'s earliest `notAfter` among `certs` (nothing when there are none).
    pub fn record(
        &mut self,
        role: CertificateRole,
        certs: &[CertificateDer<'_>],
    ) -> Result<(), TlsError> {
        if let Some(t) = earliest_not_after(certs)? {
            self.set(role, t);
        }
        Ok(())
    }

    /// Sets `role`'s `notAfter` (seconds since the epoch).
    pub fn set(&mut self, role: CertificateRole, not_after: i64) {
        self.not_after.retain(|(r, _)| *r != role);
        self.not_after.push((role, not_after));
    }

    /// `role`'s `notAfter`, if the configuration has such a certificate.
    pub fn get(&self, role: CertificateRole) -> Option<i64> {
        self.not_after
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, t)| *t)
    }
}

/// Parses CRLs given as PEM (`X509 CRL` blocks) or raw DER.
pub fn crls_from_bytes(
    data: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    if data.starts_with(b"-----") {
        let mut rd = data;
        let crls = rustls_pemfile::crls(&mut rd)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        if crls.is_empty() {
            return Err(TlsError::Pem("no X509 CRL block".into()));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(data.to_vec())])
    }
}

/// What a CRL past its `nextUpdate` means (`[tls] allow_expired_crl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlExpiry {
    /// Refused: at load, and at handshakes once a loaded CRL expires (the default).
    Refuse,
    /// Still used (development, or an operator's explicit choice).
    Allow,
}

/// Builds the strict mTLS verifier: a client certificate is mandatory and must chain to
/// one of the platform CAs and not be revoked by the given CRLs (an expired CRL refuses).
pub fn client_verifier(
    ca_pems: &[Vec<u8>],
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    client_trust(ca_pems, crls, CrlExpiry::Refuse).map(|t| t.verifier)
}

/// The mTLS trust of one load: the verifier over `ca_pems` and `crls`, and a digest of
/// that material (a reload that changes it revokes sessions and re-checks connections).
pub fn client_trust(
    ca_pems: &[Vec<u8>],
    crls: Vec<CertificateRevocationListDer<'static>>,
    expiry: CrlExpiry,
) -> Result<ClientTrust, TlsError> {
    let cas = ca_ders(ca_pems)?;
    let key = trust_key(&cas, &crls, expiry);
    let mut roots = RootCertStore::empty();
    for c in cas {
        roots.add(c)?;
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).with_crls(crls);
    let builder = match expiry {
        CrlExpiry::Refuse => builder.enforce_revocation_expiration(),
        CrlExpiry::Allow => builder,
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(ClientTrust {
        verifier,
        key: TrustKey::Material(key),
    })
}

/// SHA-256 over the CA certificates, the CRLs and the expiry policy, each length-prefixed.
fn trust_key(
    cas: &[CertificateDer<'_>],
    crls: &[CertificateRevocationListDer<'_>],
    expiry: CrlExpiry,
) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    part(b"ca");
    cas.iter().for_each(|c| part(c.as_ref()));
    part(b"crl");
    crls.iter().for_each(|c| part(c.as_ref()));
    part(&[u8::from(expiry == CrlExpiry::Allow)]);
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// What identifies a trust: the digest of its material, or, for a verifier given without
/// it, a number of its own (so replacing it always counts as a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrustKey {
    Material([u8; 32]),
    Opaque(u64),
}

/// The client-certificate trust of one load: a verifier and what identifies its material.
#[derive(Clone)]
pub struct ClientTrust {
    verifier: Arc<dyn ClientCertVerifier>,
    key: TrustKey,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrust")
            .field("key", &self.key)
            .finish()
    }
}

impl From<Arc<dyn ClientCertVerifier>> for ClientTrust {
    fn from(verifier: Arc<dyn ClientCertVerifier>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ClientTrust {
            verifier,
            key: TrustKey::Opaque(NEXT.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

/// Builds the server's certified key from PEM chain and key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = certs_from_pem(cert_pem)?;
    let key = key_from_pem(key_pem)?;
    let signing = provider().key_provider.load_private_key(key)?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()?;
    Ok(Arc::new(ck))
}

/// Checks the hub's client identity towards banks (chain and key match), so pingora's
/// connector, which panics on bad material, only ever sees files that load.
pub fn check_upstream_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
    certified_key(cert_pem, key_pem).map(|_| ())
}

/// Checks the CA bundle(s) that verify banks' server certificates.
pub fn check_upstream_roots(ca_pems: &[Vec<u8>]) -> Result<(), TlsError> {
    let mut store = RootCertStore::empty();
    for c in ca_ders(ca_pems)? {
        store.add(c)?;
    }
    Ok(())
}

/// Resumable TLS sessions of the API listener (TLS 1.2 session ids and TLS 1.3 tickets:
/// the hub issues no stateless tickets, so every resumable session is an entry here). A
/// change of trust drops them all at once by starting a new cache.
#[derive(Debug)]
pub struct TrustSessions {
    cache: ArcSwap<ServerSessionMemoryCache>,
}

/// Sessions kept per cache (rustls' default size).
const SESSION_CACHE_ENTRIES: usize = 256;

impl TrustSessions {
    fn new() -> Arc<Self> {
        Arc::new(TrustSessions {
            cache: ArcSwap::new(ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES)),
        })
    }

    /// Forgets every session: resuming one needs a full handshake again.
    fn clear(&self) {
        self.cache
            .store(ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES));
    }
}

impl StoresServerSessions for TrustSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache.load().put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.load().get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.load().take(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// The API listener's client-certificate trust, which a reload can replace. Replacing it
/// with other material (CAs, CRLs, expiry policy) also drops every resumable session and
/// starts a new trust generation: connections verified under an older one are checked
/// again before their next read (see [`ConnectionTrust`]).
#[derive(Debug)]
pub struct SwappableVerifier {
    inner: ArcSwap<ClientTrust>,
    generation: AtomicU64,
    sessions: Arc<TrustSessions>,
}

impl SwappableVerifier {
    /// Wraps the first trust (generation 1).
    pub fn new(trust: impl Into<ClientTrust>) -> Arc<Self> {
        Arc::new(SwappableVerifier {
            inner: ArcSwap::from_pointee(trust.into()),
            generation: AtomicU64::new(1),
            sessions: TrustSessions::new(),
        })
    }

    /// Replaces the trust for new handshakes; other material also revokes the sessions
    /// and the connections established under the old one.
    pub fn replace(&self, trust: impl Into<ClientTrust>) {
        let trust = trust.into();
        let changed = self.inner.load().key != trust.key;
        // New handshakes use the new trust before the generation says it is in force, so a
        // connection tagged with the new generation was verified by it.
        self.inner.store(Arc::new(trust));
        if changed {
            self.sessions.clear();
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            tracing::info!(
                generation,
                "client CAs or CRLs changed: sessions dropped, open connections re-checked"
            );
        }
    }

    /// The trust generation in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The listener's session store.
    pub fn sessions(&self) -> Arc<TrustSessions> {
        self.sessions.clone()
    }

    /// Verifies an established connection's chain (leaf first) under the trust in force;
    /// returns the generation it was verified under.
    pub fn revalidate(&self, chain: &[CertificateDer<'static>]) -> Result<u64, rustls::Error> {
        let generation = self.generation();
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.inner
            .load()
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())?;
        Ok(generation)
    }
}

impl ClientCertVerifier for SwappableVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; returning none avoids tying a borrowed slice to a swap.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .load()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().verifier.supported_verify_schemes()
    }
}

/// The listener's hook that checks an established connection again after a change of
/// trust (pingora calls it before the connection's next read), counting and logging the
/// connections it closes.
pub struct ConnectionTrust {
    trust: Arc<SwappableVerifier>,
    closed: IntCounter,
}

impl ConnectionTrust {
    /// Checks against `trust`; counts closed connections in `closed`.
    pub fn new(trust: Arc<SwappableVerifier>, closed: IntCounter) -> Arc<Self> {
        Arc::new(ConnectionTrust { trust, closed })
    }
}

impl PeerRevalidation for ConnectionTrust {
    fn generation(&self) -> u64 {
        self.trust.generation()
    }

    fn revalidate(&self, chain: &[CertificateDer<'static>]) -> Result<u64, String> {
        self.trust.revalidate(chain).map_err(|e| {
            self.closed.inc();
            // The thumbprint names the participant's certificate (no secret, no customer).
            let x5t = chain.first().map(|c| thumbprint_b64(c.as_ref()));
            tracing::info!(x5t = x5t.as_deref().unwrap_or("-"), error = %e,
                "closing a connection: the client certificate is refused by the trust now in force");
            e.to_string()
        })
    }
}

/// `x5t#S256` of a certificate (base64url, unpadded).
fn thumbprint_b64(der: &[u8]) -> String {
    use base64::Engine;
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// Counts the connections the API listener closes on its own account.
pub struct ListenerCounters {
    over_capacity: IntCounter,
    handshake_timeout: IntCounter,
}

impl ListenerCounters {
    /// Counts into `closed`, labelled by reason.
    pub fn new(closed: &IntCounterVec) -> Arc<Self> {
        Arc::new(ListenerCounters {
            over_capacity: closed.with_label_values(&["over_capacity"]),
            handshake_timeout: closed.with_label_values(&["handshake_timeout"]),
        })
    }
}

impl ListenerObserver for ListenerCounters {
    fn refused_over_capacity(&self) {
        self.over_capacity.inc();
    }
    fn handshake_timed_out(&self) {
        self.handshake_timeout.inc();
    }
}

/// The server certificate, replaceable by a reload.
#[derive(Debug)]
pub struct SwappableCert {
    inner: ArcSwap<CertifiedKey>,
}

impl SwappableCert {
    /// Wraps a certified key.
    pub fn new(k: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(SwappableCert {
            inner: ArcSwap::new(k),
        })
    }

    /// Replaces the certificate for new handshakes.
    pub fn replace(&self, k: Arc<CertifiedKey>) {
        self.inner.store(k);
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.inner.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consent_cache::Bin;
    use sandbox::pki::{DevPki, PkiSpec};

    struct World {
        dir: tempfile::TempDir,
        pki: DevPki,
        ca: Vec<Vec<u8>>,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = vec![Bin::parse("100140000001").expect("bin")];
        let pki = DevPki::generate(dir.path(), &PkiSpec::new(users, vec![])).expect("pki");
        let ca = vec![pki.ca_cert_pem().as_bytes().to_vec()];
        World { dir, pki, ca }
    }

    impl World {
        fn user(&self) -> CertificateDer<'static> {
            let bin = Bin::parse("100140000001").expect("bin");
            self.pki
                .api_user(bin)
                .expect("user")
                .cert_der()
                .expect("der")
        }

        fn crl(
            &self,
            expired: bool,
            revoke_user: bool,
        ) -> Vec<CertificateRevocationListDer<'static>> {
            let bin = Bin::parse("100140000001").expect("bin");
            let id = self.pki.api_user(bin).expect("user");
            let revoked: Vec<_> = [id].into_iter().filter(|_| revoke_user).collect();
            let path = self
                .dir
                .path()
                .join(format!("crl-{expired}-{revoke_user}.pem"));
            let path = if expired {
                self.pki.write_expired_crl(&revoked, &path)
            } else {
                self.pki.write_crl(&revoked, &path)
            }
            .expect("crl");
            crls_from_bytes(&std::fs::read(path).expect("read crl")).expect("parse crl")
        }
    }

    #[test]
    fn not_after_reads_certificates_and_refuses_what_is_not_one() {
        let w = world();
        let ca = certs_from_pem(w.pki.ca_cert_pem().as_bytes()).expect("the CA");
        let user = w.user();
        let (ca_t, user_t) = (
            not_after(&ca[0]).expect("parses"),
            not_after(&user).expect("parses"),
        );
        // The development CA outlives its leaves by a day.
        assert_eq!(ca_t - user_t, 86_400);
        let both = [ca[0].clone(), user];
        assert_eq!(earliest_not_after(&both).expect("parses"), Some(user_t));
        assert_eq!(earliest_not_after(&[]).expect("nothing to parse"), None);
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(matches!(
            earliest_not_after(&[garbage]),
            Err(TlsError::Certificate(_))
        ));
    }

    #[test]
    fn an_expired_crl_refuses_unless_allowed() {
        let w = world();
        let now = UnixTime::now();
        let refuse = client_trust(&w.ca, w.crl(true, false), CrlExpiry::Refuse).expect("trust");
        let err = refuse
            .verifier
            .verify_client_cert(&w.user(), &[], now)
            .expect_err("an expired CRL must refuse");
        assert!(
            format!("{err:?}").contains("ExpiredRevocationList"),
            "{err:?}"
        );
        let allow = client_trust(&w.ca, w.crl(true, false), CrlExpiry::Allow).expect("trust");
        assert!(allow
            .verifier
            .verify_client_cert(&w.user(), &[], now)
            .is_ok());
        let fresh = w.crl(false, false);
        assert!(crl_next_update(&fresh[0])
            .expect("parses")
            .is_some_and(|t| t > 0));
    }

    #[test]
    fn other_material_starts_a_generation_and_drops_sessions_the_same_does_not() {
        let w = world();
        let live =
            SwappableVerifier::new(client_trust(&w.ca, vec![], CrlExpiry::Refuse).expect("trust"));
        let sessions = live.sessions();
        assert!(sessions.put(b"id".to_vec(), b"session".to_vec()));
        assert_eq!(live.revalidate(&[w.user()]).expect("trusted"), 1);

        // The same CAs and CRLs, loaded again: nothing to revoke.
        live.replace(client_trust(&w.ca, vec![], CrlExpiry::Refuse).expect("trust"));
        assert_eq!(live.generation(), 1);
        assert!(
            sessions.get(b"id").is_some(),
            "an unchanged trust kept its sessions"
        );

        // A CRL revoking the user: a new generation, no sessions, the chain refused.
        live.replace(client_trust(&w.ca, w.crl(false, true), CrlExpiry::Refuse).expect("trust"));
        assert_eq!(live.generation(), 2);
        assert!(
            sessions.get(b"id").is_none(),
            "sessions survived a change of trust"
        );
        let err = live.revalidate(&[w.user()]).expect_err("revoked");
        assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
        assert!(
            live.revalidate(&[]).is_err(),
            "no certificate is never trusted"
        );

        // The expiry policy is part of the material.
        live.replace(client_trust(&w.ca, w.crl(false, true), CrlExpiry::Allow).expect("trust"));
        assert_eq!(live.generation(), 3);
    }
}
