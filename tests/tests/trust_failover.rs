//! A gateway following a set of trust endpoints (issue 11, item 5; `[trust] urls`): two
//! HTTPS listeners serve ONE trust application (one SQLite database) in this process, as
//! two replicas in front of one database would, and the hub — a real process over real
//! sockets and TLS — is configured with both.
//!
//! - `a_dead_endpoint_…`: listener A, the one followed, is aborted (its connections
//!   close, new ones are refused) while requests flow: no consent route answers `503`, a
//!   consent revoked through the application after A died is refused (the feed resumed on
//!   B), the snapshot was not reloaded, and keys rotated after A died are fetched from B.
//! - `a_stalled_endpoint_…`: A stays open behind a relay that stops forwarding (a stalled
//!   stream: no line, no heartbeat, no close): the hub leaves it after twice the
//!   heartbeat interval and resumes on B, with the same guarantees.
//!
//! Tokens come from the application's token endpoint logic (`App::issue_token`), their
//! keys from the sidecars' JWKS (`[trust] jwks = true`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use e2e::*;
use gateway::config::{ConsentSection, TrustSection};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use trust::listener::{Exposure, ListenerLimits, Serving};

/// The sidecars' heartbeat interval, and the hub's `[trust] heartbeat_secs`.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The hub's row 7 bound: well above the stall bound (twice the heartbeat).
const STALENESS_SECS: u64 = 6;
/// Two consents of `USER_A` at `BANK_1`: one served throughout, one revoked mid-test.
const SERVED: &str = "c-authorised-full";
const REVOKED: &str = "c-authorised-restricted";
/// What the hub logs when it moves to another endpoint.
const SWITCHED: &str = "trust endpoint switched";

const OK: (u16, &str) = (200, "");
const STALE: (u16, &str) = (503, "consent_state_stale");
const NOT_FOUND: (u16, &str) = (403, "consent_not_found");
const BAD_TOKEN: (u16, &str) = (401, "invalid_token");

// ---------------------------------------------------------------------------------------
// One trust application behind several listeners

/// A listener serving the shared application; aborting its task closes the listening
/// socket and every connection it accepted.
struct Listener {
    addr: SocketAddr,
    task: JoinHandle<()>,
    _shutdown: watch::Sender<bool>,
}

/// The sidecar's TLS as `trust::start` builds it: the hub's development server identity,
/// client certificates optional at the handshake and checked per route.
fn server_tls(pki: &sandbox::pki::DevPki) -> Arc<rustls::ServerConfig> {
    let pem = |p: &std::path::Path| std::fs::read(p).expect("PEM");
    let certs = |p: &std::path::Path| {
        rustls_pemfile::certs(&mut &pem(p)[..])
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates")
    };
    let server = pki.hub_server();
    let key = rustls_pemfile::private_key(&mut &pem(&server.key_path)[..])
        .expect("key PEM")
        .expect("a key");
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(pki.ca_cert_path()) {
        roots.add(ca).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .expect("verifier");
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&server.cert_path), key)
        .expect("server config");
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(tls)
}

/// Serves `app` on a new loopback listener (every route, the internal listener's limits).
async fn serve(app: &Arc<trust::app::App>, tls: &Arc<rustls::ServerConfig>) -> Listener {
    let listener = trust::listener::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (shutdown, rx) = watch::channel(false);
    let serving = Serving {
        acceptor: tokio_rustls::TlsAcceptor::from(tls.clone()),
        app: app.clone(),
        exposure: Exposure::All,
        limits: ListenerLimits::internal(),
    };
    let task = tokio::spawn(trust::listener::accept_loop(listener, serving, rx));
    Listener {
        addr,
        task,
        _shutdown: shutdown,
    }
}

/// A TCP relay in front of a listener that can be frozen: connections stay open, new ones
/// are accepted, and nothing more is forwarded either way (a stalled endpoint).
struct Relay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (frozen, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let frozen = rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pump(ri, wo, frozen.clone()), pump(ro, wi, frozen));
                });
            }
        });
        Relay { addr, frozen, task }
    }
}

/// Copies `from` to `to`; while frozen, what was read is held and the connection kept.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The trust application, its two listeners (A first in the hub's list) and the relay in
/// front of A, when there is one.
struct Trust {
    running: trust::Running,
    a: Listener,
    b: Listener,
    relay: Option<Relay>,
}

impl Trust {
    async fn stop(self) {
        if let Some(r) = &self.relay {
            r.task.abort();
        }
        self.a.task.abort();
        self.b.task.abort();
        self.running.stop().await;
    }

    /// The URL the hub follows first: A, or the relay in front of it.
    fn first_url(&self) -> String {
        let addr = self.relay.as_ref().map_or(self.a.addr, |r| r.addr);
        format!("https://{addr}")
    }
}

/// The registry as the demo's: `USER_A` and `BANK_1` (at its sandbox bank), and the two
/// consents of this file, imported as the demo generated them.
async fn seed(app: &Arc<trust::app::App>, setup: &Setup<'_>) {
    use trust::participants::ParticipantInput;
    use trust::wire::{ParticipantStatus, Role};
    let pki = &setup.prepared.pki;
    let actor = trust::history::operator(&pki.operator().expect("operator").x5t_s256);
    let user = ParticipantInput {
        name: "Fintech A".into(),
        roles: vec![Role::User],
        thumbprints: vec![pki.api_user(bin(USER_A)).expect("user").x5t_s256.clone()],
        provider_urls: Vec::new(),
        status: Some(ParticipantStatus::Active),
    };
    app.put_participant(actor.clone(), bin(USER_A), user)
        .await
        .expect("user registered");
    let providers = setup.prepared.manifest_json["providers"]
        .as_array()
        .expect("providers");
    let bank_url = providers
        .iter()
        .find(|p| p["id"] == BANK_1)
        .and_then(|p| p["url"].as_str())
        .expect("BANK_1's url");
    let bank = ParticipantInput {
        name: "Bank 1".into(),
        roles: vec![Role::Provider],
        thumbprints: Vec::new(),
        provider_urls: vec![bank_url.to_string()],
        status: Some(ParticipantStatus::Active),
    };
    app.put_participant(actor, bin(BANK_1), bank)
        .await
        .expect("bank registered");
    let records = setup
        .consents
        .iter()
        .filter(|c| c["id"] == SERVED || c["id"] == REVOKED)
        .map(|c| serde_json::from_value(c.clone()).expect("a consent record"))
        .collect::<Vec<consent_cache::ConsentRecord>>();
    assert_eq!(records.len(), 2, "both demo consents");
    app.import_consents(records)
        .await
        .expect("consents imported");
}

/// Starts the application on the hub's development PKI (feeds heartbeat every second,
/// keys rotate at once), seeds it and serves it on listeners A and B.
async fn start_trust(setup: &Setup<'_>, relay: bool) -> Trust {
    let pki = &setup.prepared.pki;
    let mut c = trust::Config::new(
        "127.0.0.1:0".parse().expect("addr"),
        setup.prepared.dir.join("trust.db"),
        pki.hub_server().cert_path.clone(),
        pki.hub_server().key_path.clone(),
        pki.ca_cert_path().to_owned(),
    );
    c.operator_certs = vec![pki.operator().expect("operator").cert_path.clone()];
    c.hub_certs = vec![pki.hub_client().cert_path.clone()];
    c.issuer = Some(setup.config.tokens.issuer.get_ref().clone());
    c.audience = setup.config.tokens.audience.get_ref().clone();
    c.heartbeat = HEARTBEAT;
    c.key_publish_lead_secs = 0;
    let running = trust::start(c, None).await.expect("trust starts");
    seed(running.app(), setup).await;
    let tls = server_tls(pki);
    let a = serve(running.app(), &tls).await;
    let b = serve(running.app(), &tls).await;
    let relay = match relay {
        true => Some(Relay::start(a.addr).await),
        false => None,
    };
    Trust {
        running,
        a,
        b,
        relay,
    }
}

// ---------------------------------------------------------------------------------------
// The hub following A and B

struct Rig {
    rt: tokio::runtime::Runtime,
    hub: Hub,
    trust: Option<Trust>,
    app: Arc<trust::app::App>,
}

/// A hub (no rate limits) following `[A, B]` (A behind a relay with `relay`), with
/// consents, participants and keys from the application.
fn rig(relay: bool) -> Rig {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let slot: Arc<Mutex<Option<Trust>>> = Arc::new(Mutex::new(None));
    let (handle, s) = (rt.handle().clone(), slot.clone());
    let hub = Hub::start_with(env!("CARGO_BIN_EXE_hub-under-test"), move |setup| {
        setup.unlimited();
        let trust = handle.block_on(start_trust(setup, relay));
        let urls = [trust.first_url(), format!("https://{}", trust.b.addr)];
        setup.config.consents = ConsentSection::default();
        setup.config.trust = Some(TrustSection {
            max_staleness_secs: STALENESS_SECS,
            heartbeat_secs: HEARTBEAT.as_secs(),
            jwks: true,
            jwks_refresh_secs: 3600,
            ..TrustSection::replicas(&urls, &[setup.prepared.pki.ca_cert_path().to_owned()])
        });
        // A retried start-up leaves the earlier application here: it stops.
        if let Some(old) = s.lock().expect("slot").replace(trust) {
            handle.block_on(old.stop());
        }
    });
    let trust = slot.lock().expect("slot").take().expect("trust");
    let app = trust.running.app().clone();
    Rig {
        rt,
        hub,
        trust: Some(trust),
        app,
    }
}

impl Rig {
    fn trust(&self) -> &Trust {
        self.trust.as_ref().expect("trust")
    }

    /// `host:port` of listener B, as the hub names endpoints.
    fn b_name(&self) -> String {
        self.trust().b.addr.to_string()
    }

    /// A token for `consent`, as the token endpoint issues it to `USER_A`.
    async fn token(&self, consent: &str) -> String {
        let user = self.hub.identity(USER_A);
        self.app
            .issue_token(Some(user.thumbprint), USER_A.into(), consent.into(), None)
            .await
            .unwrap_or_else(|e| panic!("token for {consent}: {e}"))
            .access_token
    }

    /// Waits until the hub serves both consents, and checks it still follows A.
    async fn warm_up(&self) -> (String, String) {
        let served = self.token(SERVED).await;
        let revoked = self.token(REVOKED).await;
        for token in [&served, &revoked] {
            until(
                &self.hub,
                token,
                OK,
                &[STALE, NOT_FOUND, BAD_TOKEN],
                Duration::from_secs(20),
            )
            .await;
        }
        assert!(
            !self.hub.stderr_text().contains(SWITCHED),
            "the hub started on A; stderr:\n{}",
            self.hub.stderr_text()
        );
        (served, revoked)
    }

    /// Revokes `REVOKED` through the application; the feed version of the revocation.
    async fn revoke(&self) -> u64 {
        self.app
            .revoke_by_user(bin(USER_A), REVOKED.into())
            .await
            .expect("revoked")
            .version
    }

    fn finish(mut self) {
        if let Some(t) = self.trust.take() {
            self.rt.block_on(t.stop());
        }
        drop(self.hub);
    }
}

/// `GET /v1/providers/BANK_1/accounts` as `USER_A`: (status, code), checked whole.
async fn answer(hub: &Hub, token: &str) -> (u16, String) {
    hub.client_as(USER_A)
        .get(&accounts_path(BANK_1), Some(token))
        .await
        .assert_answer()
}

/// Polls until `want` answers; every earlier answer must be one of `allowed`.
async fn until(
    hub: &Hub,
    token: &str,
    want: (u16, &str),
    allowed: &[(u16, &str)],
    deadline: Duration,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = answer(hub, token).await;
        if got.0 == want.0 && got.1 == want.1 {
            return t0.elapsed();
        }
        assert!(
            allowed.iter().any(|a| a.0 == got.0 && a.1 == got.1),
            "unexpected {got:?} while waiting for {want:?}; hub stderr:\n{}",
            hub.stderr_text()
        );
        assert!(
            t0.elapsed() < deadline,
            "no {want:?} within {deadline:?} (last {got:?}); hub stderr:\n{}",
            hub.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until the hub refuses the consent revoked at feed version `revoked_at`; a `200`
/// once its feed position (read before each request) has reached it fails the test.
async fn until_revoked(hub: &Hub, token: &str, revoked_at: u64, deadline: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let position = feed_version(hub.admin).await;
        let got = answer(hub, token).await;
        assert_no_late_allow("the hub", got.0, position, revoked_at);
        if got == (403, "consent_revoked".to_string()) {
            return t0.elapsed();
        }
        assert_eq!(got.0, 200, "{got:?} before the refusal");
        assert!(
            t0.elapsed() < deadline,
            "the revocation at {revoked_at} was not enforced within {deadline:?} (position \
             {position}); hub stderr:\n{}",
            hub.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Requests with a served consent's token, one after another, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<(u16, String)>>,
}

impl Load {
    fn start(hub: &Hub, token: &str) -> Load {
        let (client, token) = (hub.client_as(USER_A), token.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let r = client.get(&accounts_path(BANK_1), Some(&token)).await;
                seen.push(r.assert_answer());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        });
        Load { stop, task }
    }

    /// Stops; asserts every answer was a `200` (no `503 consent_state_stale`).
    async fn all_served(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.task.await.expect("the load ran");
        let refused: Vec<_> = seen.iter().filter(|a| a.0 != 200).collect();
        assert!(
            refused.is_empty(),
            "{} of {} requests not served: {refused:?}",
            refused.len(),
            seen.len()
        );
        assert!(seen.len() >= 10, "{} requests", seen.len());
        seen.len()
    }
}

/// `hub_consent_feed_resyncs_total` and `hub_trust_endpoint_switches_total`.
async fn counters(hub: &Hub) -> (f64, f64) {
    let m = hub.metrics().await;
    let resyncs = metric(&m, "hub_consent_feed_resyncs_total").expect("resyncs");
    let switches = metric(&m, "hub_trust_endpoint_switches_total")
        .unwrap_or_else(|| panic!("no hub_trust_endpoint_switches_total in\n{m}"));
    (resyncs, switches)
}

/// After the switch: no snapshot reload, at least one switch, logged, towards B.
async fn assert_resumed_on_b(rig: &Rig, before: (f64, f64)) {
    let (resyncs, switches) = counters(&rig.hub).await;
    assert_eq!(resyncs, before.0, "the feed resumed: no snapshot reload");
    assert!(switches > before.1, "switches {switches}");
    let log = rig.hub.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains(SWITCHED))
        .unwrap_or_else(|| panic!("no switch logged:\n{log}"));
    assert!(line.contains(&rig.b_name()), "{line}");
    assert!(!log.contains("reloading the snapshot"), "{log}");
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url");
    serde_json::from_slice::<Value>(&raw).expect("header JSON")["kid"]
        .as_str()
        .expect("kid")
        .to_string()
}

#[test]
fn a_dead_endpoint_is_left_for_the_next_without_a_snapshot_reload() {
    let rig = rig(false);
    rig.rt.block_on(async {
        let (served, revoked) = rig.warm_up().await;
        let before = counters(&rig.hub).await;
        let load = Load::start(&rig.hub, &served);
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A dies: its listening socket and every connection it had go at once.
        rig.trust().a.task.abort();
        let died = Instant::now();
        // Revoked after A died: only B can deliver it.
        let revoked_at = rig.revoke().await;
        let took = until_revoked(&rig.hub, &revoked, revoked_at, Duration::from_secs(10)).await;
        eprintln!(
            "A died → revocation enforced via B: {took:?} ({:?} after the death)",
            died.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = load.all_served().await;
        eprintln!("{n} requests served throughout");
        assert_resumed_on_b(&rig, before).await;

        // Keys rotated after A died: a token under the new key makes the hub fetch the
        // JWKS, from B.
        for _ in 0..2 {
            rig.app.rotate_keys(true).await.expect("rotated");
        }
        let rotated = rig.token(SERVED).await;
        assert_ne!(kid_of(&rotated), kid_of(&served), "the signing key changed");
        until(
            &rig.hub,
            &rotated,
            OK,
            &[BAD_TOKEN],
            Duration::from_secs(10),
        )
        .await;
    });
    rig.finish();
}

#[test]
fn a_stalled_endpoint_is_left_within_twice_the_heartbeat() {
    let rig = rig(true);
    rig.rt.block_on(async {
        let (served, revoked) = rig.warm_up().await;
        let before = counters(&rig.hub).await;
        let load = Load::start(&rig.hub, &served);
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A stays open but sends nothing more: no change, no heartbeat, no close.
        let relay = rig.trust().relay.as_ref().expect("relay");
        relay.frozen.send_replace(true);
        let frozen = Instant::now();
        let revoked_at = rig.revoke().await;
        // Left after twice the heartbeat without a line; B delivers the revocation. The
        // bound allows for a busy machine; row 7's bound (6 s) is never reached: the load
        // sees no 503.
        let deadline = 2 * HEARTBEAT + Duration::from_secs(4);
        until_revoked(&rig.hub, &revoked, revoked_at, deadline).await;
        eprintln!(
            "A stalled → revocation enforced via B after {:?}",
            frozen.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = load.all_served().await;
        eprintln!("{n} requests served throughout");
        assert_resumed_on_b(&rig, before).await;
    });
    rig.finish();
}
