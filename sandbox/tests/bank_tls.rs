//! mTLS of the sandbox bank: no client certificate, or one from another CA, or (with
//! pinning) one that is not pinned, fails before any HTTP is served.

mod bank_support;

use bank_support::*;
use sandbox::bank;

#[tokio::test]
async fn the_hub_certificate_is_accepted() {
    let pki = pki();
    let b = start_bank(&pki).await;
    let c = connector(&pki, Some(&pki.client), Proto::H1);
    let r = get(&c, b.addr(), Proto::H1, "/v1/open-data/products", &[]).await;
    assert_eq!(r.expect("served").status, 200);
}

#[tokio::test]
async fn no_client_certificate_fails_the_handshake() {
    let pki = pki();
    let b = start_bank(&pki).await;
    for proto in [Proto::H1, Proto::H2] {
        let c = connector(&pki, None, proto);
        let r = get(&c, b.addr(), proto, "/v1/open-data/products", &[]).await;
        // With TLS 1.3 the client learns of the rejection on its first read.
        assert!(r.is_err(), "served without a client certificate: {r:?}");
    }
    assert_eq!(b.request_count(), 0);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_fails() {
    let pki = pki();
    let b = start_bank(&pki).await;
    let c = connector(&pki, Some(&pki.rogue_client), Proto::H1);
    let r = get(&c, b.addr(), Proto::H1, "/v1/open-data/products", &[]).await;
    assert!(r.is_err(), "served a rogue client certificate: {r:?}");
    assert_eq!(b.request_count(), 0);
}

#[tokio::test]
async fn pinned_thumbprints_admit_only_the_pinned_certificate() {
    let pki = pki();
    let mut cfg = bank_config(&pki, 5, 1);
    cfg.allowed_client_thumbprints = Some(vec![bank::thumbprint(&pki.client.cert_der)]);
    let b = bank::start(cfg).await.expect("start");
    let ok = connector(&pki, Some(&pki.client), Proto::H1);
    let r = get(&ok, b.addr(), Proto::H1, "/v1/open-data/atms", &[]).await;
    assert_eq!(r.expect("pinned cert served").status, 200);
    let other = connector(&pki, Some(&pki.other_client), Proto::H1);
    let r = get(&other, b.addr(), Proto::H1, "/v1/open-data/atms", &[]).await;
    assert!(
        r.is_err(),
        "unpinned certificate of the same CA was served: {r:?}"
    );
    assert_eq!(b.request_count(), 1);
}

#[tokio::test]
async fn bad_configuration_is_a_typed_error() {
    let pki = pki();
    let mut cfg = bank_config(&pki, 1, 1);
    cfg.client_ca_pem = Vec::new();
    assert!(matches!(
        bank::start(cfg).await,
        Err(bank::BankError::NoClientCa)
    ));
    let mut cfg = bank_config(&pki, 1, 1);
    cfg.server_key_pem = b"not a key".to_vec();
    assert!(matches!(
        bank::start(cfg).await,
        Err(bank::BankError::NoPrivateKey)
    ));
    let mut cfg = bank_config(&pki, 1, 1);
    // A key that does not match the certificate.
    cfg.server_key_pem = pki.client.key_pem.clone().into_bytes();
    assert!(matches!(
        bank::start(cfg).await,
        Err(bank::BankError::Tls(_))
    ));
}

#[tokio::test]
async fn shutdown_closes_the_listener() {
    let pki = pki();
    let b = start_bank(&pki).await;
    let addr = b.addr();
    b.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn start_on_serves_from_a_runtime_owned_elsewhere() {
    let pki = pki();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // Called from plain synchronous code, like a `demo` main thread.
    let b = bank::start_on(rt.handle(), bank_config(&pki, 3, 3)).expect("start_on");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let c = connector(&pki, Some(&pki.client), Proto::H1);
    let r = client_rt.block_on(get(&c, b.addr(), Proto::H1, "/v1/open-data/branches", &[]));
    assert_eq!(r.expect("served").status, 200);
    b.stop();
}
