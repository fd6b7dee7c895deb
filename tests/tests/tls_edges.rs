//! TLS at the hub's edges, over real processes and real TLS: a reload that revokes a
//! client certificate reaches connections already open and sessions that would resume;
//! the API listener closes handshakes that stall and connections over its cap; the banks'
//! CA bundle never touches a file; an empty upstream `sni` and an expired CRL are refused
//! unless explicitly allowed. Each test owns its hub.

use std::time::{Duration, Instant};

use e2e::http::TlsConn;
use e2e::hub::{read_config, write_config};
use e2e::*;
use gateway::config::{at, FileConfig};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn a_req(hub: &Hub) -> Req {
    Req::get(accounts_path(BANK_1)).bearer(&hub.token("c-authorised-full"))
}

fn b_req(hub: &Hub) -> Req {
    Req::get(accounts_path(BANK_2)).bearer(&hub.token("c-authorised-bank2"))
}

/// A new keep-alive connection on which `req` was served; retried for a few seconds, as a
/// connection the hub is still closing may hold a place under its cap.
async fn served(client: &Client, req: &Req) -> TlsConn {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut conn = client.connect().await?;
            let r = conn.send(req).await?;
            Ok::<_, std::io::Error>((conn, r))
        };
        match attempt.await {
            Ok((conn, r)) => {
                r.ok_json();
                return conn;
            }
            Err(e) => assert!(Instant::now() < deadline, "never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the connection's handshake went.
fn handshake(conn: &TlsConn) -> Option<HandshakeKind> {
    conn.stream().get_ref().1.handshake_kind()
}

/// `hub_downstream_connections_closed_total{reason}`.
async fn closed(hub: &Hub, reason: &str) -> u64 {
    let prefix = format!("hub_downstream_connections_closed_total{{reason=\"{reason}\"}} ");
    hub.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn reload_ok(hub: &Hub) {
    let (status, body) = hub.reload().await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_revoking_reload_reaches_open_connections_and_resumable_sessions() {
    let hub = Hub::start_with(hub_exe!(), |s| s.unlimited());
    let (a, b) = (hub.client_as(USER_A), hub.client_as(USER_B));
    let b_cert = ClientCert::of(hub.identity(USER_B));
    let b12 = Client::with_versions(
        hub.addr,
        hub.ca_pem(),
        Some(&b_cert),
        TlsVersions::Tls12Only,
    );
    let (a_req, b_req) = (a_req(&hub), b_req(&hub));
    let b_auth = format!("Bearer {}", hub.token("c-authorised-bank2"));

    // Keep-alive connections (HTTP/1.1 and HTTP/2), and sessions each client can resume:
    // TLS 1.3 tickets, a TLS 1.2 session id.
    let mut a_open = served(&a, &a_req).await;
    let mut b_open = served(&b, &b_req).await;
    let mut b_h2 = b.h2().await.expect("h2");
    let path = accounts_path(BANK_2);
    b_h2.get(&path, &[("authorization", &b_auth)])
        .await
        .expect("h2 get")
        .ok_json();
    served(&b12, &b_req).await;
    for (who, client, req) in [
        ("B", &b, &b_req),
        ("B (TLS 1.2)", &b12, &b_req),
        ("A", &a, &a_req),
    ] {
        let conn = served(client, req).await;
        assert_eq!(
            handshake(&conn),
            Some(HandshakeKind::Resumed),
            "{who} did not resume"
        );
    }

    // A reload that leaves the CAs and CRLs alone leaves the sessions alone.
    reload_ok(&hub).await;
    let conn = served(&a, &a_req).await;
    assert_eq!(
        handshake(&conn),
        Some(HandshakeKind::Resumed),
        "an unchanged trust dropped sessions"
    );

    let crl = hub
        .pki
        .revoke_client(bin(USER_B), &hub.dir.join("crl"))
        .expect("CRL");
    hub.edit_config(|t| t.tls.crl = vec![at(crl)]);
    reload_ok(&hub).await;

    // B's next request is refused on every connection it had, and no session resumes.
    let r = b_open.send(&b_req).await;
    assert!(
        r.is_err(),
        "a revoked certificate was served on its open connection: {r:?}"
    );
    let r = b_h2.get(&path, &[("authorization", &b_auth)]).await;
    assert!(
        r.is_err(),
        "a revoked certificate was served on its HTTP/2 connection: {r:?}"
    );
    let r = b.try_send(&b_req).await;
    assert!(
        r.is_err(),
        "a revoked certificate was served offering a TLS 1.3 ticket: {r:?}"
    );
    let r = b12.try_send(&b_req).await;
    assert!(
        r.is_err(),
        "a revoked certificate was served offering a TLS 1.2 session id: {r:?}"
    );
    assert!(closed(&hub, "untrusted_certificate").await >= 2);

    // A, still trusted, keeps its connection; its next one is a full handshake.
    a_open
        .send(&a_req)
        .await
        .expect("A's open connection")
        .ok_json();
    let conn = served(&a, &a_req).await;
    assert_eq!(
        handshake(&conn),
        Some(HandshakeKind::Full),
        "a session survived the change of trust"
    );
}

/// Reads until the server closes the stream (EOF or error); how long after `since` that
/// was, or `None` if it was still open `wait` after `since`.
async fn closed_after(stream: &mut TcpStream, since: Instant, wait: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        let left = wait.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn silent_and_stalled_handshakes_are_closed_at_the_handshake_timeout() {
    let hub = Hub::start_with(hub_exe!(), |s| {
        s.server_mut().tls_handshake_timeout_secs = 1
    });
    // Nothing after the TCP handshake; and a ClientHello record announced (512 bytes) but
    // cut short, as a stalled or half-open handshake leaves it.
    let mut idle = TcpStream::connect(hub.addr).await.expect("connect");
    let idle_since = Instant::now();
    let mut stalled = TcpStream::connect(hub.addr).await.expect("connect");
    let stalled_since = Instant::now();
    let partial_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    stalled.write_all(&partial_hello).await.expect("write");
    let wait = Duration::from_secs(10);
    for (what, stream, since) in [
        ("silent", &mut idle, idle_since),
        ("stalled", &mut stalled, stalled_since),
    ] {
        let took = closed_after(stream, since, wait).await;
        let took =
            took.unwrap_or_else(|| panic!("a {what} connection was still open after {wait:?}"));
        // The hub's clock starts at accept, after the client's connect returned.
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "a {what} connection was closed after {took:?}, not at the 1 s timeout"
        );
    }
    assert!(closed(&hub, "handshake_timeout").await >= 2);
    served(&hub.client_as(USER_A), &a_req(&hub)).await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept_while_served_ones_keep_working() {
    let hub = Hub::start_with(hub_exe!(), |s| {
        s.unlimited();
        s.server_mut().max_connections = 2;
    });
    let (a, req) = (hub.client_as(USER_A), a_req(&hub));
    let mut first = served(&a, &req).await;
    let mut second = served(&a, &req).await;
    let before = closed(&hub, "over_capacity").await;

    let third = a.try_send(&req).await;
    assert!(
        third.is_err(),
        "a third connection was served over a cap of two: {third:?}"
    );
    assert!(closed(&hub, "over_capacity").await > before);

    first.send(&req).await.expect("first connection").ok_json();
    second
        .send(&req)
        .await
        .expect("second connection")
        .ok_json();
    // A connection that ends frees its place.
    drop(first);
    served(&a, &req).await;
}

/// `gateway check` (`gateway::server::check`) on the hub's configuration after `edit`,
/// written as `name`: the summary or the error, and the file's text.
fn check(
    hub: &Hub,
    name: &str,
    edit: impl FnOnce(&mut FileConfig),
) -> (Result<String, String>, String) {
    let mut config = read_config(&hub.config_path);
    edit(&mut config);
    let path = hub.dir.join(name);
    write_config(&path, &config);
    let text = std::fs::read_to_string(&path).expect("written");
    (
        gateway::server::check(&path).map_err(|e| e.to_string()),
        text,
    )
}

#[tokio::test]
async fn banks_ca_stays_in_memory_and_an_unverified_bank_needs_the_loud_flag() {
    // Two CA files (the bundle a temporary file used to hold), and bank 2 reached without
    // a server name, that is without verifying its certificate.
    let hub = Hub::start_with(hub_exe!(), |s| {
        let untrusted = s.prepared.pki.untrusted_ca().cert_path.clone();
        s.config.upstream_tls.ca.insert(0, at(untrusted));
        let bank2 = s.provider_mut(BANK_2);
        bank2.sni = Some(String::new());
        bank2.insecure_skip_verify_for_development = true;
    });
    hub.client_as(USER_A).send(&a_req(&hub)).await.ok_json();
    hub.client_as(USER_B).send(&b_req(&hub)).await.ok_json();
    let predictable = std::env::temp_dir().join(format!("hub-upstream-ca-{}.pem", hub.pid()));
    assert!(
        !predictable.exists(),
        "the banks' CA bundle was written to {}",
        predictable.display()
    );

    // The development flag is logged at every load.
    let warned = |hub: &Hub| {
        hub.stderr_text()
            .matches("certificate is NOT verified")
            .count()
    };
    let at_start = warned(&hub);
    assert!(at_start >= 1, "no warning at start:\n{}", hub.stderr_text());
    reload_ok(&hub).await;
    assert!(
        warned(&hub) > at_start,
        "no warning at reload:\n{}",
        hub.stderr_text()
    );

    // Without the flag an empty sni is refused; the flag alone means nothing.
    let bank2 = |c: &mut FileConfig| -> usize {
        let i = c.providers.iter().position(|p| p.bin.get_ref() == BANK_2);
        i.expect("bank 2")
    };
    let (refused, _) = check(&hub, "no-flag.toml", |c| {
        let i = bank2(c);
        c.providers[i].insecure_skip_verify_for_development = false;
    });
    let e = refused.expect_err("an empty sni without the flag");
    assert!(
        e.contains(".sni") && e.contains("insecure_skip_verify_for_development"),
        "{e}"
    );
    let (refused, _) = check(&hub, "flag-only.toml", |c| {
        let i = bank2(c);
        c.providers[i].sni = Some("localhost".into());
    });
    let e = refused.expect_err("the flag with a server name");
    assert!(e.contains("].insecure_skip_verify_for_development"), "{e}");
    check(&hub, "with-flag.toml", |_| {})
        .0
        .expect("the flag with sni = \"\"");
}

#[tokio::test]
async fn an_expired_crl_is_refused_unless_allowed() {
    let hub = Hub::start_with(hub_exe!(), |s| s.unlimited());
    let crl = hub.dir.join("crl").join("expired.pem");
    let crl = hub.pki.write_expired_crl(&[], &crl).expect("CRL");

    let (refused, text) = check(&hub, "expired-crl.toml", |c| {
        c.tls.crl = vec![at(crl.clone())]
    });
    let e = refused.expect_err("an expired CRL");
    let line = line_of(&text, &crl.display().to_string());
    assert!(e.contains(&format!("expired-crl.toml:{line}")), "{e}");
    assert!(e.contains("tls.crl[0]") && e.contains("expired"), "{e}");

    // A reload with it is refused too, and the running trust keeps serving.
    hub.edit_config(|c| c.tls.crl = vec![at(crl.clone())]);
    let (status, body) = hub.reload().await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("tls.crl[0]"), "{body}");
    hub.client_as(USER_A).send(&a_req(&hub)).await.ok_json();

    // Allowed explicitly, it is used, and said so.
    hub.edit_config(|c| c.tls.allow_expired_crl = true);
    reload_ok(&hub).await;
    assert!(
        hub.stderr_text().contains("expired CRL is in use"),
        "{}",
        hub.stderr_text()
    );
    hub.client_as(USER_A).send(&a_req(&hub)).await.ok_json();
}
