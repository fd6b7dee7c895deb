//! Failure behaviours of the sandbox bank, switched at runtime through the handle:
//! each one is observable by a client, and switching back restores normal service.

mod bank_support;

use bank_support::*;
use sandbox::bank::Behaviour;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATH: &str = "/v1/open-data/exchange-rates";
const RAW_REQUEST: &[u8] = b"GET /v1/open-data/atms HTTP/1.1\r\nhost: localhost\r\n\r\n";

async fn assert_normal(h: &Harness) {
    let r = h.get(PATH, &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn delay_answers_normally_after_the_delay() {
    let h = Harness::new().await;
    h.bank
        .set_behaviour(Behaviour::Delay(Duration::from_millis(300)));
    assert_eq!(
        h.bank.behaviour(),
        Behaviour::Delay(Duration::from_millis(300))
    );
    let started = Instant::now();
    let r = h.get(PATH, &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the delay"
    );
    h.bank.set_behaviour(Behaviour::Normal);
    assert_normal(&h).await;
}

#[tokio::test]
async fn hang_never_answers_and_keeps_the_connection_open() {
    let h = Harness::new().await;
    h.bank.set_behaviour(Behaviour::Hang);
    let r = tokio::time::timeout(Duration::from_millis(300), h.get(PATH, &[])).await;
    assert!(r.is_err(), "a hanging bank answered: {r:?}");
    assert_eq!(h.bank.request_count(), 1, "the request did arrive");

    // On a raw connection: the request is read, then nothing comes back and the
    // connection is not closed either.
    let mut tls = tls_connect(&h.h1, h.bank.addr()).await.expect("connect");
    tls.write_all(RAW_REQUEST).await.expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await;
    assert!(read.is_err(), "expected no bytes and no EOF, got {read:?}");
    assert_eq!(h.bank.request_count(), 2);
    assert!(h.bank.open_connections() >= 1);

    // Once the clients give up and close, the bank lets go of the connections.
    drop(tls);
    tokio::time::timeout(Duration::from_secs(5), h.bank.wait_open_connections(0))
        .await
        .expect("hung connections are released when the client closes");

    h.bank.set_behaviour(Behaviour::Normal);
    assert_normal(&h).await;
    // Shutdown is not held up by hanging requests.
    let bank = h.bank;
    tokio::time::timeout(Duration::from_secs(5), bank.shutdown())
        .await
        .expect("shutdown with hanging connections");
}

#[tokio::test]
async fn garbage_is_not_http() {
    let h = Harness::new().await;
    h.bank.set_behaviour(Behaviour::Garbage);
    for proto in [Proto::H1, Proto::H2] {
        let c = if proto == Proto::H1 { &h.h1 } else { &h.h2 };
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            get(c, h.bank.addr(), proto, PATH, &[]),
        )
        .await
        .expect("bounded");
        assert!(
            r.is_err(),
            "{proto:?} client parsed garbage as a response: {r:?}"
        );
    }
    // Raw: bytes arrive inside TLS, they are not an HTTP response, then EOF.
    let mut tls = tls_connect(&h.h1, h.bank.addr()).await.expect("connect");
    tls.write_all(RAW_REQUEST).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got))
        .await
        .expect("bounded")
        .expect("clean close after the garbage");
    assert!(!got.is_empty());
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    h.bank.set_behaviour(Behaviour::Normal);
    assert_normal(&h).await;
}

#[tokio::test]
async fn reset_closes_the_connection_with_rst() {
    let h = Harness::new().await;
    h.bank.set_behaviour(Behaviour::Reset);
    for proto in [Proto::H1, Proto::H2] {
        let c = if proto == Proto::H1 { &h.h1 } else { &h.h2 };
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            get(c, h.bank.addr(), proto, PATH, &[]),
        )
        .await
        .expect("bounded");
        assert!(
            r.is_err(),
            "{proto:?} got a response from a resetting bank: {r:?}"
        );
    }
    let mut tls = tls_connect(&h.h1, h.bank.addr()).await.expect("connect");
    tls.write_all(RAW_REQUEST).await.expect("write");
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got))
        .await
        .expect("bounded");
    let err = r.expect_err("a reset, not a clean close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty());
    assert_eq!(h.bank.request_count(), 3);
    h.bank.set_behaviour(Behaviour::Normal);
    assert_normal(&h).await;
}

#[tokio::test]
async fn status_answers_the_status_with_json() {
    let h = Harness::new().await;
    for code in [503u16, 429, 500, 404] {
        h.bank.set_behaviour(Behaviour::Status(code));
        let mut headers = hub_headers("900101300017", "accounts");
        headers.truncate(1);
        let r = h.get(PATH, &headers).await;
        assert_eq!(r.status.as_u16(), code);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-fapi-interaction-id"), Some(INTERACTION_ID));
        assert_eq!(r.json()["status"], code);
    }
    h.bank.set_behaviour(Behaviour::Status(42));
    assert_eq!(h.get(PATH, &[]).await.status, 500);
    h.bank.set_behaviour(Behaviour::Normal);
    assert_normal(&h).await;
}

#[tokio::test]
async fn behaviour_switches_on_a_kept_alive_connection() {
    let h = Harness::new().await;
    let mut conn = H1Conn::open(&h.h1, h.bank.addr()).await.expect("connect");
    assert_eq!(conn.get(PATH, &[]).await.expect("normal").status, 200);
    h.bank.set_behaviour(Behaviour::Status(502));
    assert_eq!(conn.get(PATH, &[]).await.expect("forced").status, 502);
    assert_eq!(
        h.bank.connections_accepted(),
        1,
        "both requests on one connection"
    );
    h.bank.set_behaviour(Behaviour::Reset);
    assert!(
        conn.get(PATH, &[]).await.is_err(),
        "pooled connection was not reset"
    );
    h.bank.set_behaviour(Behaviour::Normal);
    assert_normal(&h).await;
}
