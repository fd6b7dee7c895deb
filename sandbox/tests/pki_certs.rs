//! Tests of the development PKI: files and permissions, thumbprints, certificate
//! contents, chain verification with rustls/webpki, real mTLS handshakes over an
//! in-memory duplex, CRLs and expired certificates.

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use consent_cache::Bin;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use sandbox::pki::{thumbprint_of_pem, x5t_s256, DevPki, Identity, PkiError, PkiSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn bin(s: &str) -> Bin {
    Bin::parse(s).unwrap()
}

const USER_A: &str = "180340012345";
const USER_B: &str = "190440023456";
const BANK_X: &str = "200540034567";
const BANK_Y: &str = "210640045678";

fn spec() -> PkiSpec {
    PkiSpec {
        operator: true,
        ..PkiSpec::new(
            vec![bin(USER_A), bin(USER_B)],
            vec![bin(BANK_X), bin(BANK_Y)],
        )
    }
}

fn generate() -> (tempfile::TempDir, DevPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate(&dir.path().join("pki"), &spec()).unwrap();
    (dir, pki)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(pki: &DevPki) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    store.add(pki.ca().cert_der().unwrap()).unwrap();
    Arc::new(store)
}

fn client_verifier(
    pki: &DevPki,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Arc<dyn ClientCertVerifier> {
    WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
        .with_crls(crls)
        .build()
        .unwrap()
}

fn verify_client(verifier: &dyn ClientCertVerifier, id: &Identity) -> Result<(), rustls::Error> {
    verifier
        .verify_client_cert(&id.cert_der().unwrap(), &[], UnixTime::now())
        .map(|_| ())
}

fn cert_error(result: Result<(), rustls::Error>) -> CertificateError {
    match result {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected an invalid-certificate error, got {other:?}"),
    }
}

fn all_identities(pki: &DevPki) -> Vec<&Identity> {
    let mut ids = vec![pki.hub_server(), pki.hub_client(), pki.untrusted_client()];
    ids.extend(pki.api_users().map(|(_, id)| id));
    ids.extend(pki.providers().map(|(_, id)| id));
    ids.extend(pki.operator());
    ids
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn writes_every_file_with_keys_readable_by_owner_only() {
    let (_tmp, pki) = generate();
    let dir = pki.dir().to_owned();
    assert!(dir.is_absolute());
    for name in [
        "ca.pem",
        "ca-key.pem",
        "hub-server.pem",
        "hub-server-key.pem",
        "hub-client.pem",
        "hub-client-key.pem",
        "api-user-180340012345.pem",
        "api-user-180340012345-key.pem",
        "api-user-190440023456.pem",
        "provider-200540034567.pem",
        "provider-210640045678-key.pem",
        "operator.pem",
        "operator-key.pem",
        "untrusted-ca.pem",
        "untrusted-client.pem",
        "untrusted-client-key.pem",
    ] {
        assert!(dir.join(name).is_file(), "{name} missing");
    }
    assert_eq!(pki.ca_cert_path(), dir.join("ca.pem"));
    assert_eq!(
        std::fs::read_to_string(pki.ca_cert_path()).unwrap(),
        pki.ca_cert_pem()
    );

    for id in all_identities(&pki) {
        assert!(id.cert_path.is_absolute() && id.key_path.is_absolute());
        assert_eq!(std::fs::read_to_string(&id.cert_path).unwrap(), id.cert_pem);
        assert_eq!(std::fs::read_to_string(&id.key_path).unwrap(), id.key_pem);
        assert!(id.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            assert_eq!(mode(&id.key_path), 0o600, "{}", id.key_path.display());
            assert_ne!(mode(&id.cert_path), 0o600, "certificates are public");
        }
        // The chain is the leaf followed by the issuing CA.
        let chain = id.chain_der().unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0], id.cert_der().unwrap());
        let chain_pem = rustls_pemfile::certs(&mut id.chain_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(chain_pem, chain);
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&pki.ca().key_path), 0o600);
        assert_eq!(mode(&pki.untrusted_ca().key_path), 0o600);
    }

    assert!(pki.api_user(bin(BANK_X)).is_none());
    assert!(pki.provider_server(bin(USER_A)).is_none());
    assert!(pki.provider_server(bin(BANK_Y)).is_some());
    assert!(pki.operator().is_some());
}

#[cfg(unix)]
#[test]
fn regenerating_over_a_world_readable_key_narrows_it_to_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("hub-client-key.pem");
    std::fs::write(&key, "old").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pki = DevPki::generate(tmp.path(), &PkiSpec::default()).unwrap();
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        pki.hub_client().key_pem
    );
}

#[test]
fn thumbprint_is_sha256_of_the_leaf_der() {
    let (_tmp, pki) = generate();
    for id in all_identities(&pki) {
        let file = std::fs::read(&id.cert_path).unwrap();
        let der = rustls_pemfile::certs(&mut file.as_slice())
            .next()
            .unwrap()
            .unwrap();
        let expected = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        assert_eq!(id.thumbprint.as_slice(), expected.as_ref());
        assert_eq!(thumbprint_of_pem(&file).unwrap(), id.thumbprint);
        assert_eq!(id.x5t_s256, URL_SAFE_NO_PAD.encode(expected.as_ref()));
        assert_eq!(id.x5t_s256.len(), 43);
        assert_eq!(x5t_s256(&id.thumbprint), id.x5t_s256);
    }
    let thumbs: std::collections::HashSet<_> = all_identities(&pki)
        .iter()
        .map(|id| id.thumbprint)
        .collect();
    assert_eq!(
        thumbs.len(),
        all_identities(&pki).len(),
        "thumbprints are unique"
    );
    assert!(matches!(
        thumbprint_of_pem(b"no pem here"),
        Err(PkiError::NoCertificate)
    ));
    assert!(matches!(
        thumbprint_of_pem(pki.hub_client().key_pem.as_bytes()),
        Err(PkiError::NoCertificate)
    ));
}

/// A minimal DER reader: (tag, contents, rest).
fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = match input[1] {
        l if l < 0x80 => (usize::from(l), 2),
        l => {
            let n = usize::from(l & 0x7f);
            let len = input[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        }
    };
    (tag, &input[header..header + len], &input[header + len..])
}

/// The subject of a certificate as (attribute OID bytes, value) pairs.
fn subject(cert_der: &[u8]) -> Vec<(Vec<u8>, String)> {
    let (_, cert, _) = tlv(cert_der);
    let (_, tbs, _) = tlv(cert);
    let mut rest = tbs;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (tag, body, next) = tlv(rest);
        fields.push((tag, body));
        rest = next;
    }
    // [0] version, serial, signature, issuer, validity, subject
    let subject = fields[5].1;
    let mut out = Vec::new();
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (_, set, next) = tlv(rdns);
        let (_, atv, _) = tlv(set);
        let (_, oid, value) = tlv(atv);
        let (_, value, _) = tlv(value);
        out.push((oid.to_vec(), String::from_utf8(value.to_vec()).unwrap()));
        rdns = next;
    }
    out
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn certificates_carry_the_expected_subjects_and_ca_constraints() {
    let (_tmp, pki) = generate();
    for user in [USER_A, USER_B] {
        let id = pki.api_user(bin(user)).unwrap();
        let subject = subject(&id.cert_der().unwrap());
        assert_eq!(
            subject,
            vec![
                (OID_CN.to_vec(), user.to_owned()),
                (OID_O.to_vec(), format!("Sandbox API user {user}")),
            ]
        );
    }
    let bank = subject(
        &pki.provider_server(bin(BANK_X))
            .unwrap()
            .cert_der()
            .unwrap(),
    );
    assert_eq!(bank[0], (OID_CN.to_vec(), BANK_X.to_owned()));
    // The impostor copies the first API user's subject; only its issuer differs.
    let impostor = subject(&pki.untrusted_client().cert_der().unwrap());
    assert_eq!(impostor[0], (OID_CN.to_vec(), USER_A.to_owned()));

    let ca = pki.ca().cert_der().unwrap();
    // basicConstraints: SEQUENCE { cA TRUE, pathLenConstraint 0 }
    assert!(contains(
        &ca,
        &[0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00]
    ));
    // keyUsage: BIT STRING with exactly keyCertSign and cRLSign
    assert!(contains(&ca, &[0x55, 0x1d, 0x0f]));
    assert!(contains(&ca, &[0x03, 0x02, 0x01, 0x06]));
    // Leaves are not CAs: basicConstraints is an empty SEQUENCE (cA FALSE by default).
    let leaf = pki.hub_server().cert_der().unwrap();
    assert!(contains(&leaf, &[0x55, 0x1d, 0x13]));
    assert!(!contains(&leaf, &[0x01, 0x01, 0xff, 0x02, 0x01, 0x00]));
}

#[test]
fn platform_ca_verifies_client_leaves_and_refuses_the_rest() {
    let (tmp, pki) = generate();
    let verifier = client_verifier(&pki, Vec::new());
    for (_, id) in pki.api_users() {
        verify_client(verifier.as_ref(), id).unwrap();
    }
    verify_client(verifier.as_ref(), pki.hub_client()).unwrap();
    verify_client(verifier.as_ref(), pki.operator().unwrap()).unwrap();

    assert_eq!(
        cert_error(verify_client(verifier.as_ref(), pki.untrusted_client())),
        CertificateError::UnknownIssuer
    );
    // Server certificates lack clientAuth.
    for id in [pki.hub_server(), pki.provider_server(bin(BANK_X)).unwrap()] {
        let err = cert_error(verify_client(verifier.as_ref(), id));
        assert!(
            matches!(
                err,
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ),
            "{err:?}"
        );
    }

    let expired = pki.issue_expired_client(bin(USER_A), tmp.path()).unwrap();
    assert_eq!(
        expired.cert_path,
        tmp.path().join("api-user-180340012345-expired.pem")
    );
    assert_ne!(
        expired.thumbprint,
        pki.api_user(bin(USER_A)).unwrap().thumbprint
    );
    let err = cert_error(verify_client(verifier.as_ref(), &expired));
    assert!(
        matches!(
            err,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err:?}"
    );

    // A rotated certificate for the same participant is valid and has its own thumbprint.
    let rotated = pki
        .issue_client(bin(USER_A), "api-user-180340012345-2", tmp.path())
        .unwrap();
    verify_client(verifier.as_ref(), &rotated).unwrap();
    assert_ne!(
        rotated.thumbprint,
        pki.api_user(bin(USER_A)).unwrap().thumbprint
    );
    assert!(matches!(
        pki.issue_client(bin(USER_A), "../escape", tmp.path()),
        Err(PkiError::InvalidStem(_))
    ));

    // Trusting the untrusted CA instead flips the outcome: the test can tell them apart.
    let mut other = RootCertStore::empty();
    other.add(pki.untrusted_ca().cert_der().unwrap()).unwrap();
    let other = WebPkiClientVerifier::builder_with_provider(Arc::new(other), provider())
        .build()
        .unwrap();
    verify_client(other.as_ref(), pki.untrusted_client()).unwrap();
    assert_eq!(
        cert_error(verify_client(
            other.as_ref(),
            pki.api_user(bin(USER_A)).unwrap()
        )),
        CertificateError::UnknownIssuer
    );
}

#[test]
fn server_leaves_are_valid_for_their_names_only() {
    let (_tmp, pki) = generate();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&pki), provider())
        .build()
        .unwrap();
    let check = |id: &Identity, name: &str| {
        verifier
            .verify_server_cert(
                &id.cert_der().unwrap(),
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    };
    for name in ["localhost", "127.0.0.1"] {
        check(pki.hub_server(), name).unwrap();
        check(pki.provider_server(bin(BANK_X)).unwrap(), name).unwrap();
        check(pki.provider_server(bin(BANK_Y)).unwrap(), name).unwrap();
    }
    let err = cert_error(check(pki.hub_server(), "hub.example.com"));
    assert!(
        matches!(
            err,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{err:?}"
    );
    let err = cert_error(check(pki.api_user(bin(USER_A)).unwrap(), "localhost"));
    assert!(
        matches!(
            err,
            CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. }
                | CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn hub_hosts_from_the_spec_become_the_server_sans() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = PkiSpec {
        hub_hosts: vec!["hub.sandbox.test".to_owned(), "10.1.2.3".to_owned()],
        ..PkiSpec::default()
    };
    let pki = DevPki::generate(tmp.path(), &spec).unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&pki), provider())
        .build()
        .unwrap();
    let der = pki.hub_server().cert_der().unwrap();
    let ok = |name: &str| {
        verifier
            .verify_server_cert(
                &der,
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    };
    assert!(ok("hub.sandbox.test"));
    assert!(ok("10.1.2.3"));
    assert!(!ok("localhost"));
}

#[test]
fn invalid_specs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let zero = PkiSpec {
        validity_days: 0,
        ..PkiSpec::default()
    };
    assert!(matches!(
        DevPki::generate(tmp.path(), &zero),
        Err(PkiError::InvalidSpec(_))
    ));
    let no_hosts = PkiSpec {
        hub_hosts: Vec::new(),
        ..PkiSpec::default()
    };
    assert!(matches!(
        DevPki::generate(tmp.path(), &no_hosts),
        Err(PkiError::InvalidSpec(_))
    ));
    let huge = PkiSpec {
        validity_days: u32::MAX,
        ..PkiSpec::default()
    };
    assert!(matches!(
        DevPki::generate(tmp.path(), &huge),
        Err(PkiError::InvalidSpec(_))
    ));
    let dup = PkiSpec::new(vec![bin(USER_A), bin(USER_A)], Vec::new());
    assert!(matches!(
        DevPki::generate(tmp.path(), &dup),
        Err(PkiError::DuplicateParticipant {
            role: "api_users",
            ..
        })
    ));
    // One participant may be both API user and provider.
    let both = PkiSpec::new(vec![bin(USER_A)], vec![bin(USER_A)]);
    DevPki::generate(tmp.path(), &both).unwrap();
}

fn read_crls(path: &Path) -> Vec<CertificateRevocationListDer<'static>> {
    let pem = std::fs::read(path).unwrap();
    assert!(pem.starts_with(b"-----BEGIN X509 CRL-----"));
    rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn crl_revokes_exactly_the_named_api_user() {
    let (tmp, pki) = generate();
    let a = pki.api_user(bin(USER_A)).unwrap();
    let b = pki.api_user(bin(USER_B)).unwrap();

    let path = pki
        .revoke_client(bin(USER_A), &tmp.path().join("crls"))
        .unwrap();
    assert_eq!(path, tmp.path().join("crls").join("crl-180340012345.pem"));
    let crls = read_crls(&path);
    assert_eq!(crls.len(), 1);
    assert!(
        contains(crls[0].as_ref(), a.serial()),
        "the CRL lists A's serial"
    );
    assert!(!contains(crls[0].as_ref(), b.serial()));

    // webpki parses the CRL, checks its signature and finds the serial.
    let verifier = client_verifier(&pki, crls);
    assert_eq!(
        cert_error(verify_client(verifier.as_ref(), a)),
        CertificateError::Revoked
    );
    verify_client(verifier.as_ref(), b).unwrap();
    verify_client(verifier.as_ref(), pki.hub_client()).unwrap();

    // An empty CRL revokes nobody.
    let empty = pki
        .write_crl(&[], &tmp.path().join("nested/crl.pem"))
        .unwrap();
    let verifier = client_verifier(&pki, read_crls(&empty));
    verify_client(verifier.as_ref(), a).unwrap();

    // A CRL from another run's CA (same name, other key) fails its signature check: the
    // verifier refuses the certificate for that reason, not because the serial is listed.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = DevPki::generate(
        foreign_dir.path(),
        &PkiSpec::new(vec![bin(USER_A)], Vec::new()),
    )
    .unwrap();
    let forged = foreign
        .write_crl(&[a], &foreign_dir.path().join("forged.pem"))
        .unwrap();
    let verifier = client_verifier(&pki, read_crls(&forged));
    assert!(matches!(
        verify_client(verifier.as_ref(), a),
        Err(rustls::Error::InvalidCertRevocationList(
            rustls::CertRevocationListError::BadSignature
        ))
    ));

    assert!(matches!(
        pki.revoke_client(bin(BANK_X), tmp.path()),
        Err(PkiError::UnknownApiUser(_))
    ));
}

fn server_config(id: &Identity, clients: Arc<dyn ClientCertVerifier>) -> Arc<rustls::ServerConfig> {
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(clients)
            .with_single_cert(id.chain_der().unwrap(), id.key_der().unwrap())
            .unwrap(),
    )
}

fn client_config(pki: &DevPki, id: &Identity) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(pki))
            .with_client_auth_cert(vec![id.cert_der().unwrap()], id.key_der().unwrap())
            .unwrap(),
    )
}

/// Runs one mTLS exchange over an in-memory pipe. On success returns the SHA-256 of the
/// client certificate the server saw.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<[u8; 32], String> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server_side = async move {
        let mut tls = TlsAcceptor::from(server)
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("no client certificate")?[0]
            .clone();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(sandbox::pki::thumbprint_of_der(&peer))
    };
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let client_side = async move {
        let mut tls = TlsConnector::from(client)
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let (server_result, client_result) = tokio::join!(server_side, client_side);
    let seen = server_result?;
    assert_eq!(&client_result?, b"pong");
    Ok(seen)
}

#[tokio::test]
async fn api_user_and_hub_complete_mtls_and_the_impostor_does_not() {
    let (tmp, pki) = generate();
    let hub = server_config(pki.hub_server(), client_verifier(&pki, Vec::new()));
    for (_, user) in pki.api_users() {
        let seen = handshake(hub.clone(), client_config(&pki, user), "localhost")
            .await
            .unwrap();
        assert_eq!(seen, user.thumbprint);
    }
    let refused = handshake(
        hub.clone(),
        client_config(&pki, pki.untrusted_client()),
        "localhost",
    )
    .await;
    assert!(refused.is_err(), "the untrusted client must be refused");
    let expired = pki.issue_expired_client(bin(USER_B), tmp.path()).unwrap();
    let refused = handshake(hub.clone(), client_config(&pki, &expired), "localhost").await;
    assert!(refused.is_err(), "the expired client must be refused");

    // With the CRL loaded, the revoked user is refused and the other still gets in.
    let crl = pki.revoke_client(bin(USER_A), tmp.path()).unwrap();
    let hub = server_config(pki.hub_server(), client_verifier(&pki, read_crls(&crl)));
    let user_a = pki.api_user(bin(USER_A)).unwrap();
    let user_b = pki.api_user(bin(USER_B)).unwrap();
    assert!(
        handshake(hub.clone(), client_config(&pki, user_a), "127.0.0.1")
            .await
            .is_err()
    );
    assert_eq!(
        handshake(hub, client_config(&pki, user_b), "127.0.0.1")
            .await
            .unwrap(),
        user_b.thumbprint
    );
}

#[tokio::test]
async fn hub_client_completes_mtls_with_every_provider_bank() {
    let (_tmp, pki) = generate();
    for (_, bank) in pki.providers() {
        let server = server_config(bank, client_verifier(&pki, Vec::new()));
        let seen = handshake(server, client_config(&pki, pki.hub_client()), "127.0.0.1")
            .await
            .unwrap();
        assert_eq!(seen, pki.hub_client().thumbprint);
    }
    // The hub checks the bank's name: a name the certificate does not cover is refused.
    let server = server_config(
        pki.provider_server(bin(BANK_X)).unwrap(),
        client_verifier(&pki, Vec::new()),
    );
    assert!(handshake(
        server,
        client_config(&pki, pki.hub_client()),
        "hub.example.com"
    )
    .await
    .is_err());
}
