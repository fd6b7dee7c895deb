//! rustls client configurations of the load generator: the platform CA as the only
//! root, a client certificate (mTLS), ALPN for HTTP/1.1 or HTTP/2, no session resumption
//! (every connection does a full handshake, once, before the measurement starts).

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{io_at, HarnessError, Result};

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(io_at(path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(io_at(path))?;
    if certs.is_empty() {
        return Err(HarnessError::Pem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).map_err(io_at(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(io_at(path))?
        .ok_or_else(|| HarnessError::Pem {
            path: path.to_path_buf(),
            reason: "no private key block".into(),
        })
}

/// A client configuration trusting `ca` and presenting `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path, http2: bool) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}
