//! The listeners under abuse, over real sockets on loopback: thousands of idle and
//! half-open connections are closed within the handshake timeout while the feed, the
//! token endpoint and revocations keep working; a full public listener leaves the
//! internal one (gateways, operators) serving; slow headers, slow bodies and idle
//! HTTP/1.1 and HTTP/2 connections are closed; routes are split between the listeners;
//! development sessions are refused on a non-loopback listener.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use trust::clock::ManualClock;

/// The first bytes of a TLS ClientHello (record header, handshake type), then nothing.
const PARTIAL_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `to` from the loopback address `src` (all of 127/8 is local).
async fn connect_from(src: IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src, 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the server closes `s` before `deadline` (EOF or reset; data is not expected).
async fn closed_by(mut s: TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether `s` is still open right now (nothing to read, no EOF).
fn still_open(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Opens `n` connections from each of `sources`, alternately idle and with a partial
/// ClientHello.
async fn flood(to: SocketAddr, sources: &[IpAddr], n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(sources.len() * n);
    for (i, src) in sources.iter().cycle().take(sources.len() * n).enumerate() {
        let mut s = connect_from(*src, to).await;
        if i % 2 == 1 {
            s.write_all(PARTIAL_HELLO).await.unwrap();
        }
        out.push(s);
    }
    out
}

fn with_internal(f: &Fixture, clock: &ManualClock) -> trust::Config {
    let mut c = f.config(clock);
    c.internal_listen = Some("127.0.0.1:0".parse().unwrap());
    c
}

/// Registers everyone on the internal listener, creates and authorises a consent on the
/// public one; returns its id.
async fn authorised_consent(f: &Fixture, public: &Client, internal: &Client) -> String {
    register_all(f, internal).await;
    let id = create_consent(public, f.user(USER_A), CUSTOMER, json!({})).await;
    authorise(public, &f.outbox(), CUSTOMER, &id).await;
    id
}

/// Follows the feed on `c` as the hub from the current head, past the backlog.
async fn follow(f: &Fixture, c: &Client) -> Lines {
    let head = c.get(None, "/healthz").await.expect(200)["version"]
        .as_u64()
        .unwrap();
    let resp = c
        .open(
            Some(f.hub()),
            "GET",
            &format!("/v1/feed?since={head}"),
            &[],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut lines = Lines::new(resp.into_body());
    while lines.next(Duration::from_secs(5)).await.unwrap()["heartbeat"].is_null() {}
    lines
}

/// The next line about `id` with status `status`.
async fn feed_says(lines: &mut Lines, id: &str, status: &str) {
    loop {
        let line = lines.next(Duration::from_secs(5)).await.expect("feed open");
        if line["consent"]["id"] == id && line["consent"]["status"] == status {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_half_open_connections_is_closed_and_starves_nothing() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let handshake = Duration::from_secs(3);
    let mut config = with_internal(&f, &clock);
    config.public_limits.handshake_timeout = handshake;
    let running = trust::start(config, None).await.unwrap();
    let public = f.client(running.addr());
    let internal = f.client(running.internal_addr().unwrap());
    let id = authorised_consent(&f, &public, &internal).await;
    let mut feed = follow(&f, &internal).await;

    // 2,000 connections from ten addresses (200 each, under the per-address cap of 256),
    // and 300 from one more address, of which 256 are admitted and 44 closed at once.
    let opened = Instant::now();
    let sources: Vec<IpAddr> = (2..12).map(loopback).collect();
    let attack = flood(running.addr(), &sources, 200).await;
    let one = flood(running.addr(), &[loopback(20)], 300).await;
    let flooded = opened.elapsed();

    // Throughout: a token, a revocation, and the feed carrying it to the gateway.
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id={id}");
    public.token(Some(f.user(USER_A)), &form).await.expect(200);
    let revoked = public
        .send(
            Some(f.user(USER_A)),
            "DELETE",
            &format!("/v1/consents/{id}"),
            &[],
            vec![],
        )
        .await
        .expect(200);
    assert_eq!(revoked["status"], "revoked");
    feed_says(&mut feed, &id, "revoked").await;
    let during = opened.elapsed();
    assert!(
        during < handshake,
        "the legitimate calls finished while the flood was held open ({during:?}, flood opened in {flooded:?})"
    );
    assert!(
        attack.iter().all(still_open),
        "no attacking connection was closed before its handshake timeout"
    );

    // Every held connection is closed within the handshake timeout (plus scheduling slack
    // on two cores); the ones over the per-address cap at once.
    let (admitted, refused): (Vec<_>, Vec<_>) =
        one.into_iter().enumerate().partition(|(i, _)| *i < 256);
    let soon = Instant::now() + Duration::from_secs(2);
    let refused_closed = join_all(refused.into_iter().map(|(_, s)| closed_by(s, soon))).await;
    assert!(
        refused_closed.iter().all(|c| *c),
        "over the per-address cap: closed at once"
    );
    let deadline = opened + handshake + Duration::from_secs(3);
    let held = attack
        .into_iter()
        .chain(admitted.into_iter().map(|(_, s)| s));
    let closed = join_all(held.map(|s| closed_by(s, deadline))).await;
    let open_left = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open_left, 0,
        "connections still open after the handshake timeout"
    );

    // And everything still works after the flood.
    public.get(None, "/healthz").await.expect(200);
    running.stop().await;
}

async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<bool>
where
    F: std::future::Future<Output = bool> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (i, fut) in futures.enumerate() {
        set.spawn(async move { (i, fut.await) });
    }
    let mut out = vec![false; set.len()];
    while let Some(r) = set.join_next().await {
        let (i, v) = r.unwrap();
        out[i] = v;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_public_listener_leaves_the_internal_one_serving() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let mut config = with_internal(&f, &clock);
    config.public_limits.max_connections = 40;
    config.public_limits.max_connections_per_address = 1_000;
    let running = trust::start(config, None).await.unwrap();
    let public = f.client(running.addr());
    let internal = f.client(running.internal_addr().unwrap());
    register_all(&f, &internal).await;

    let held = flood(running.addr(), &[loopback(3)], 40).await;
    // Past the cap: closed at once (the handshake timeout is 10 s).
    let extra = connect_from(loopback(4), running.addr()).await;
    assert!(closed_by(extra, Instant::now() + Duration::from_secs(2)).await);
    assert!(public
        .try_send(None, "GET", "/healthz", &[], vec![])
        .await
        .is_err());

    // Gateways and operators are on their own listener.
    let snapshot = internal.get(Some(f.hub()), "/v1/snapshot").await;
    assert_eq!(snapshot.status, 200);
    internal
        .json(
            Some(f.operator()),
            "PUT",
            &format!("/v1/participants/{USER_B}/status"),
            json!({"status": "suspended"}),
        )
        .await
        .expect(200);

    // Once the flood goes, the public listener serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match public.try_send(None, "GET", "/healthz", &[], vec![]).await {
            Ok(r) if r.status == 200 => break,
            _ if Instant::now() < deadline => tokio::task::yield_now().await,
            other => panic!("the public listener did not recover: {other:?}"),
        }
    }
    running.stop().await;
}

/// A TLS connection (no client certificate) with `alpn`.
async fn tls(
    f: &Fixture,
    addr: SocketAddr,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let c = f.client(addr).tls_with_alpn(None, alpn);
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(c)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until EOF (or an error) before `deadline`; `None` if still open then.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    deadline: Instant,
) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, _) = start_with(&f, &clock, |c| {
        c.public_limits.header_read_timeout = Duration::from_millis(600);
        c.public_limits.body_read_timeout = Duration::from_millis(600);
    })
    .await;
    let deadline = || Instant::now() + Duration::from_secs(5);

    // A request head that never ends.
    let mut s = tls(&f, running.addr(), b"http/1.1").await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(read_to_close(&mut s, deadline()).await.is_some(), "closed");

    // A body that never arrives: 408 request_timeout.
    let mut s = tls(&f, running.addr(), b"http/1.1").await;
    s.write_all(
        b"POST /v1/customer/sessions HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"cust",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut s, deadline())
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_over_http1_and_http2_but_a_feed_is_not_idle() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let (running, c) = start_with(&f, &clock, |c| {
        c.public_limits.idle_timeout = Duration::from_millis(600);
        c.public_limits.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let deadline = || Instant::now() + Duration::from_secs(5);

    // HTTP/1.1: one request, then silence on a keep-alive connection.
    let mut s = tls(&f, running.addr(), b"http/1.1").await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut s, deadline())
        .await
        .expect("closed when idle");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // HTTP/2: one request, then the server ends the idle connection.
    let io = hyper_util::rt::TokioIo::new(tls(&f, running.addr(), b"h2").await);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("https://localhost/healthz")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was closed");

    // A feed being streamed is a request in progress: it outlives the idle timeout.
    let resp = c
        .open(Some(f.hub()), "GET", "/v1/feed?since=0", &[], vec![])
        .await
        .unwrap();
    let mut lines = Lines::new(resp.into_body());
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(
            lines.next(Duration::from_secs(2)).await.is_some(),
            "the feed stays open"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_split_between_the_listeners() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(with_internal(&f, &clock), None).await.unwrap();
    let public = f.client(running.addr());
    let internal = f.client(running.internal_addr().unwrap());
    register_all(&f, &internal).await;
    let not_here = |r: Reply| (r.status, r.code());
    let missing = (404, "route_not_found".to_string());
    // Gateways' and operators' routes are not on the public listener…
    for path in [
        "/v1/snapshot",
        "/v1/feed?since=0",
        "/v1/participants",
        "/v1/admin/keys",
    ] {
        let who = if path.contains("participants") || path.contains("admin") {
            f.operator()
        } else {
            f.hub()
        };
        assert_eq!(
            not_here(public.get(Some(who), path).await),
            missing,
            "{path}"
        );
    }
    // …and API users' and customers' routes not on the internal one.
    let form = format!("grant_type=client_credentials&client_id={USER_A}&consent_id=x");
    assert_eq!(
        internal.token(Some(f.user(USER_A)), &form).await.status,
        404
    );
    let r = internal
        .json(
            None,
            "POST",
            "/v1/customer/sessions",
            json!({"customer": CUSTOMER}),
        )
        .await;
    assert_eq!(not_here(r), missing);
    // Keys and health are on both (gateways fetch the JWKS on theirs).
    for c in [&public, &internal] {
        c.get(None, "/.well-known/jwks.json").await.expect(200);
        c.get(None, "/healthz").await.expect(200);
    }
    let v: Value = internal
        .get(Some(f.operator()), "/v1/participants")
        .await
        .expect(200);
    assert_eq!(v["participants"].as_array().map(Vec::len), Some(4));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_sessions_are_refused_on_a_non_loopback_listener() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    for listen in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
        let mut config = f.config(&clock);
        config.listen = listen.parse().unwrap();
        // Refused before anything is bound (nothing here binds beyond loopback).
        let e = trust::start(config, None).await.unwrap_err();
        assert!(
            matches!(
                e,
                trust::StartError::Config {
                    field: "dev-customer-sessions",
                    ..
                }
            ),
            "{listen}: {e}"
        );
    }
    // The same settings on loopback start.
    let running = trust::start(f.config(&clock), None).await.unwrap();
    running.stop().await;
}
