//! The demo's fixed identities (API users, providers, the token issuer and audience) and
//! the files made for them: the development PKI (with an operator certificate for the
//! trust sidecar's registry) and the token issuer, whose key is also the sidecar's
//! signing key. Shared by the single-process demo and the cluster.

use std::path::{Path, PathBuf};

use consent_cache::Bin;
use sandbox::pki::{DevPki, Identity, PkiSpec};
use sandbox::tokens::{DevAlg, DevIssuer};

use crate::DemoError;

/// Fixed demo identities.
pub const API_USERS: [(&str, &str, &str); 3] = [
    ("100140000001", "Qazaq Fintech LLP", "active"),
    ("100140000002", "Steppe Pay JSC", "active"),
    ("100140000003", "Suspended Lending LLP", "suspended"),
];
/// Fixed demo providers.
pub const PROVIDERS: [(&str, &str); 2] = [
    ("990340000011", "Altyn Sandbox Bank"),
    ("990340000022", "Dala Sandbox Bank"),
];
/// The demo's token issuer and audience.
pub const ISSUER: &str = "https://trust.hub.local.test";
/// The hub's audience.
pub const AUDIENCE: &str = "https://hub.local.test";

/// A BIN from the constants above.
pub(crate) fn bin(s: &str) -> Bin {
    // Start-up only, over the constants above (a unit test checks them).
    #[allow(clippy::expect_used)]
    Bin::parse(s).expect("demo BIN constants are valid")
}

/// The canonical form of `p` when it exists, else `p`.
pub(crate) fn abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The demo's identities: the development PKI and the token issuer, with their files.
pub(crate) struct Identities {
    /// The API users' BINs, in `API_USERS` order.
    pub users: Vec<Bin>,
    /// The providers' BINs, in `PROVIDERS` order.
    pub providers: Vec<Bin>,
    /// The development PKI.
    pub pki: DevPki,
    /// The development token issuer.
    pub issuer: DevIssuer,
    /// The issuer's private key (PEM), also the trust sidecar's signing key.
    pub issuer_key: PathBuf,
    /// The issuer's public key set, the hub's start-up keys.
    pub jwks: PathBuf,
}

impl Identities {
    /// The certificate of API user `user`.
    pub fn api_user(&self, user: Bin) -> Result<&Identity, DemoError> {
        self.pki
            .api_user(user)
            .ok_or_else(|| DemoError::Bank("no certificate for api user".into()))
    }

    /// The operator certificate (the trust sidecar's registry).
    pub fn operator(&self) -> Result<&Identity, DemoError> {
        self.pki
            .operator()
            .ok_or_else(|| DemoError::Bank("the PKI has no operator certificate".into()))
    }
}

/// The PKI (with an operator certificate for the trust sidecar's registry) and the
/// token issuer, written under `dir`.
pub(crate) fn identities(dir: &Path) -> Result<Identities, DemoError> {
    let users: Vec<Bin> = API_USERS.iter().map(|u| bin(u.0)).collect();
    let providers: Vec<Bin> = PROVIDERS.iter().map(|p| bin(p.0)).collect();
    let pki = DevPki::generate(
        &dir.join("pki"),
        &PkiSpec {
            // The trust sidecar's operator API (participant registry) needs one.
            operator: true,
            ..PkiSpec::new(users.clone(), providers.clone())
        },
    )?;
    // The key id is the key's RFC 7638 thumbprint, which is how the trust sidecar names
    // the key once it signs with it: the demo's own tokens and the sidecar's share it.
    let generated = DevIssuer::generate(DevAlg::Es256, "demo", ISSUER)?;
    let kid = trust::keys::SigningKey::from_pkcs8(
        trust::keys::Alg::Es256,
        &trust::keys::pkcs8_from_pem(generated.key_pem().as_bytes())?,
    )?
    .kid()
    .to_string();
    let issuer = DevIssuer::load(generated.key_pem(), &kid, ISSUER, DevAlg::Es256)?;
    let (issuer_key, jwks) = issuer.write_files(dir)?;
    Ok(Identities {
        users,
        providers,
        pki,
        issuer,
        issuer_key,
        jwks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_identities_are_valid_bins() {
        for u in API_USERS {
            assert!(Bin::parse(u.0).is_ok(), "{}", u.0);
        }
        for p in PROVIDERS {
            assert!(Bin::parse(p.0).is_ok(), "{}", p.0);
        }
    }
}
