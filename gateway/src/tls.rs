//! TLS material of the hub: PEM loading with precise errors, the downstream mTLS
//! verifier and server certificate (both behind `ArcSwap` so a reload can replace
//! CAs, CRLs and the server certificate without dropping the listener), and the
//! upstream client identity built once per load.

use arc_swap::ArcSwap;
use pingora::tls::{CertificateDer, PrivateKeyDer};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
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

/// Builds the strict mTLS verifier: a client certificate is mandatory and must chain to
/// one of the platform CAs and not be revoked by the given CRLs.
pub fn client_verifier(
    ca_pems: &[Vec<u8>],
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for pem in ca_pems {
        for c in certs_from_pem(pem)? {
            roots.add(c)?;
        }
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls)
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
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
    for pem in ca_pems {
        for c in certs_from_pem(pem)? {
            store.add(c)?;
        }
    }
    Ok(())
}

/// A client-certificate verifier whose inner verifier a reload can replace.
#[derive(Debug)]
pub struct SwappableVerifier {
    inner: ArcSwap<Arc<dyn ClientCertVerifier>>,
}

impl SwappableVerifier {
    /// Wraps a verifier.
    pub fn new(v: Arc<dyn ClientCertVerifier>) -> Arc<Self> {
        Arc::new(SwappableVerifier {
            inner: ArcSwap::from_pointee(v),
        })
    }

    /// Replaces the verifier for new handshakes.
    pub fn replace(&self, v: Arc<dyn ClientCertVerifier>) {
        self.inner.store(Arc::new(v));
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
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
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
