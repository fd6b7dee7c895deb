//! The downstream client verifier built from configuration: platform CA required,
//! untrusted issuers and revoked certificates (CRL) refused, and a reload that swaps
//! in a CRL takes effect for the next handshake.

use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;

use consent_cache::Bin;
use gateway::tls::{client_verifier, crls_from_bytes, SwappableVerifier};
use sandbox::pki::{DevPki, PkiSpec};

fn bin(s: &str) -> Bin {
    Bin::parse(s).unwrap()
}

#[test]
fn platform_ca_required_and_crl_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let a = bin("100140000001");
    let b = bin("100140000002");
    let pki = DevPki::generate(dir.path(), &PkiSpec::new(vec![a, b], vec![])).unwrap();
    let ca = vec![pki.ca_cert_pem().as_bytes().to_vec()];
    let now = UnixTime::now();

    let plain = client_verifier(&ca, Vec::new()).unwrap();
    let user_a = pki.api_user(a).unwrap().cert_der().unwrap();
    let user_b = pki.api_user(b).unwrap().cert_der().unwrap();
    assert!(plain.client_auth_mandatory());
    assert!(plain.verify_client_cert(&user_a, &[], now).is_ok());
    let stranger = pki.untrusted_client().cert_der().unwrap();
    assert!(plain.verify_client_cert(&stranger, &[], now).is_err());

    let crl_path = pki.revoke_client(a, dir.path()).unwrap();
    let crls = crls_from_bytes(&std::fs::read(&crl_path).unwrap()).unwrap();
    let with_crl = client_verifier(&ca, crls).unwrap();
    let err = with_crl.verify_client_cert(&user_a, &[], now).unwrap_err();
    assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
    assert!(with_crl.verify_client_cert(&user_b, &[], now).is_ok());

    // A reload swaps the verifier behind the listener.
    let live = SwappableVerifier::new(plain);
    assert!(live.verify_client_cert(&user_a, &[], now).is_ok());
    live.replace(with_crl);
    assert!(live.verify_client_cert(&user_a, &[], now).is_err());
    assert!(live.verify_client_cert(&user_b, &[], now).is_ok());
}

#[test]
fn garbage_crl_and_ca_are_refused() {
    assert!(crls_from_bytes(b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n").is_err());
    assert!(client_verifier(&[b"not a pem".to_vec()], Vec::new()).is_err());
}
