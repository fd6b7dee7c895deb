//! TLS of a sandbox bank: its server identity from PEM, a mandatory client
//! certificate that must chain to the configured CA bundle (the hub's issuer), and
//! optional pinning of the client certificate's SHA-256 thumbprint.

use super::{BankConfig, BankError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::sync::Arc;

/// ALPN protocols offered, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, BankError> {
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| BankError::Pem { what, source })
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, BankError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|source| BankError::Pem {
            what: "server key",
            source,
        })?
        .ok_or(BankError::NoPrivateKey)
}

/// Builds the server configuration once per bank (not per connection). The crypto
/// provider is explicit so that a process-wide default installed by another crate
/// (or two providers compiled in) cannot change or break it.
pub(crate) fn server_config(cfg: &BankConfig) -> Result<Arc<ServerConfig>, BankError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&cfg.server_cert_chain_pem, "server certificate chain")?;
    if chain.is_empty() {
        return Err(BankError::NoServerCertificate);
    }
    let key = key(&cfg.server_key_pem)?;
    let mut roots = RootCertStore::empty();
    for ca in certs(&cfg.client_ca_pem, "client CA bundle")? {
        roots.add(ca).map_err(BankError::ClientCa)?;
    }
    if roots.is_empty() {
        return Err(BankError::NoClientCa);
    }
    let webpki =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let verifier: Arc<dyn ClientCertVerifier> = match &cfg.allowed_client_thumbprints {
        Some(allowed) => Arc::new(PinnedClientVerifier {
            inner: webpki,
            allowed: allowed.clone(),
        }),
        None => webpki,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// SHA-256 of a certificate's DER, the `x5t#S256` thumbprint before base64url.
pub fn thumbprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A client verifier that, after the usual chain validation, also requires the leaf
/// certificate's thumbprint to be one of a fixed list, so a wrong (but validly
/// issued) client certificate fails the handshake, not a later request.
#[derive(Debug)]
struct PinnedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<[u8; 32]>,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let tp = thumbprint(end_entity.as_ref());
        if self.allowed.contains(&tp) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
