//! Shared by the `cluster_*` tests: a cluster of real processes started through
//! `devhub::cluster::start` — PostgreSQL, two trust replicas (`trust-under-test`), a
//! Redis server (Debian's `redis-server`), N gateways sharing their limits on it
//! (`hub-under-test`, two unless a test says otherwise) and the sandbox banks
//! (`cluster-under-test bank`), all built by cargo for this package — and what the tests
//! do to it over real mTLS: requests through the gateways (one by one, or an open-loop
//! load on keep-alive connections), revocations and reads through the replicas, the
//! gateways' feed positions and metrics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devhub::cluster::{self, Binaries, Cluster, ClusterOptions};
use e2e::http::{admin_request, TlsConn};
use e2e::*;
use serde_json::Value;

/// The consent the load uses: `USER_A` at `BANK_1`, authorised for 90 days.
pub const SERVED: &str = "c-authorised-full";
/// A second one, `USER_B` at `BANK_2`.
pub const SERVED_2: &str = "c-authorised-bank2";
/// What a gateway answers for a revoked consent.
pub const REVOKED: (u16, &str) = (403, "consent_revoked");
/// What a gateway answers when no trust replica was heard from within the bound.
pub const STALE: (u16, &str) = (503, "consent_state_stale");

/// The programs, as cargo built them for this package's tests.
pub fn binaries() -> Binaries {
    Binaries {
        trust: env!("CARGO_BIN_EXE_trust-under-test").into(),
        gateway: env!("CARGO_BIN_EXE_hub-under-test").into(),
        bank: env!("CARGO_BIN_EXE_cluster-under-test").into(),
    }
}

/// A running cluster and what the tests need to talk to it.
pub struct Running {
    /// The cluster (dropped before the directory).
    pub cluster: Cluster,
    /// The manifest.
    pub manifest: Value,
    ca_pem: String,
    users: HashMap<String, ClientCert>,
    _dir: tempfile::TempDir,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Starts a cluster with `extra` extra consents (`c-extra-0001`, …), one worker thread
/// per gateway, no effective rate limit, 1 s heartbeats; `edit` may change the rest.
pub fn start(extra: usize, edit: impl FnOnce(&mut ClusterOptions)) -> Running {
    let dir = tempfile::Builder::new()
        .prefix("cluster-e2e-")
        .tempdir()
        .expect("temp dir");
    let mut o = ClusterOptions::new(dir.path().to_path_buf(), binaries());
    o.customers = 20;
    o.extra_consents = extra;
    o.gateway_threads = Some(1);
    o.rate_limit = Some(1_000_000);
    o.heartbeat_ms = 1000;
    o.ready_timeout = Duration::from_secs(90);
    // No conformance probes (a day apart): a round is a burst of TLS handshakes and schema
    // checks that these tests, timing shared limits on two cores, do not need.
    o.probe_interval_ms = 86_400_000;
    edit(&mut o);
    let cluster = cluster::start(&o).unwrap_or_else(|e| panic!("the cluster did not start: {e}"));
    let manifest = cluster.manifest().clone();
    let users = manifest["api_users"]
        .as_array()
        .expect("api_users")
        .iter()
        .map(|u| {
            let cert = ClientCert {
                cert_pem: read(u["cert"].as_str().expect("cert")),
                key_pem: read(u["key"].as_str().expect("key")),
            };
            (u["id"].as_str().expect("id").to_owned(), cert)
        })
        .collect();
    Running {
        ca_pem: read(manifest["ca_cert"].as_str().expect("ca_cert")),
        cluster,
        manifest,
        users,
        _dir: dir,
    }
}

/// `https://ip:port` → the address.
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

impl Running {
    /// The manifest's entry for consent `id`.
    pub fn consent(&self, id: &str) -> &Value {
        self.manifest["consents"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no consent {id} in the manifest"))
    }

    /// The pre-minted token of consent `id`.
    pub fn token(&self, id: &str) -> String {
        self.consent(id)["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// The account list route of consent `id` (its first provider).
    pub fn accounts_path(&self, id: &str) -> String {
        accounts_path(self.consent(id)["providers"][0].as_str().expect("provider"))
    }

    /// A client of gateway `i` presenting the certificate of consent `id`'s API user.
    pub fn gateway_for(&self, i: usize, id: &str) -> Client {
        let user = self.consent(id)["api_user"].as_str().expect("api_user");
        let addr = self.cluster.gateway_addrs()[i];
        Client::new(addr, &self.ca_pem, Some(&self.users[user]))
    }

    /// A client of trust replica `i` presenting `user`'s certificate.
    pub fn trust_as(&self, i: usize, user: &str) -> Client {
        let addr = addr_of(&self.cluster.trust_urls()[i]);
        Client::trust(addr, &self.ca_pem, Some(&self.users[user]))
    }

    /// Gateway `i`'s admin listener.
    pub fn admin(&self, i: usize) -> SocketAddr {
        self.cluster.admin_addrs()[i]
    }

    /// The number of gateways.
    pub fn gateways(&self) -> usize {
        self.cluster.gateway_addrs().len()
    }

    /// Gateway `i`'s metrics.
    pub async fn metrics(&self, i: usize) -> String {
        let (status, body) = admin_request(self.admin(i), "GET", "/metrics")
            .await
            .expect("metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Gateway `i`'s snapshot reloads (`hub_consent_feed_resyncs_total`).
    pub async fn resyncs(&self, i: usize) -> f64 {
        metric(&self.metrics(i).await, "hub_consent_feed_resyncs_total").unwrap_or(0.0)
    }

    /// The end of every replica's, gateway's and Redis's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let names = (1..=self.cluster.trust_urls().len())
            .map(|i| format!("trust-{i}"))
            .chain((1..=self.gateways()).map(|i| format!("gateway-{i}")));
        let logs = names
            .map(|n| (self.cluster.log_of(&n), n))
            .chain([(self.cluster.redis_log(), "redis".to_owned())]);
        for (log, name) in logs {
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            out.push_str(&format!("--- {name} ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// A client of the fault control route of consent `id`'s (first) provider's bank,
    /// with the hub's client certificate.
    pub fn faults_of(&self, id: &str) -> Client {
        let provider = self.consent(id)["providers"][0].as_str().expect("provider");
        let url = self.manifest["providers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == provider))
            .and_then(|p| p["faults_url"].as_str())
            .expect("faults_url");
        e2e::demo::faults_client(&self.manifest, url)
    }

    /// Stops every gateway with SIGTERM (each closes and pushes its partial rollup
    /// minute and closes its journal) and waits (bounded) until each has exited.
    pub fn stop_gateways(&self) {
        for pid in self.cluster.pids().gateways {
            let ok = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill");
            assert!(ok.success());
            // Gone, or a zombie its parent has not reaped yet.
            let exited = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .is_some_and(|r| r.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(true)
            };
            let done = poll_until(Duration::from_secs(20), || exited().then_some(()));
            assert!(
                done.is_some(),
                "gateway {pid} did not exit\n{}",
                self.logs()
            );
        }
    }

    /// The first account of consent `id`'s customer (at its first provider).
    pub fn account(&self, id: &str) -> String {
        self.consent(id)["account_ids"][0]
            .as_str()
            .expect("account_ids")
            .to_owned()
    }

    /// A client of gateway `i` presenting API user `user`'s certificate.
    pub fn gateway_as(&self, i: usize, user: &str) -> Client {
        let addr = self.cluster.gateway_addrs()[i];
        Client::new(addr, &self.ca_pem, Some(&self.users[user]))
    }

    /// Gateway `i`'s counter `name` with labels `labels` (`class="user",policy="local"`),
    /// 0 when absent.
    pub async fn counter(&self, i: usize, name: &str, labels: &str) -> f64 {
        let text = self.metrics(i).await;
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Requires the journal lines to hold every outcome the traffic tests want counted:
/// successes, the bank's 4xx and 5xx, an unreachable bank, hub refusals.
pub fn assert_every_outcome(lines: &[Value]) {
    let outcomes: std::collections::BTreeSet<&str> =
        lines.iter().filter_map(|l| l["outcome"].as_str()).collect();
    for o in [
        "success",
        "client_error",
        "server_error",
        "unreachable",
        "refused",
    ] {
        assert!(outcomes.contains(o), "no {o} in {outcomes:?}");
    }
}

/// `DELETE /v1/consents/{id}` on a fresh connection: the answer, or the transport error.
pub async fn revoke(trust: &Client, id: &str) -> std::io::Result<Response> {
    trust
        .try_send(&Req::new("DELETE", format!("/v1/consents/{id}")))
        .await
}

/// Revokes consent `id` through `trust`, retrying (bounded) while the replica cannot
/// reach its database: the revocation's feed version.
pub async fn revoke_retrying(r: &Running, trust: &Client, id: &str, bound: Duration) -> u64 {
    let end = Instant::now() + bound;
    loop {
        match revoke(trust, id).await {
            Ok(a) if a.status == 200 => return revoked_version(&a),
            other => {
                let status = other.as_ref().map(|a| a.status);
                assert!(
                    Instant::now() < end,
                    "revoking {id}: {status:?}\n{}",
                    r.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The status of consent `id` as trust replica `trust` reads it from the database.
pub async fn status_at(trust: &Client, id: &str) -> String {
    let r = trust.send(&Req::get(format!("/v1/consents/{id}"))).await;
    assert_eq!(r.status, 200, "GET /v1/consents/{id}: {}", r.text());
    r.json()["status"].as_str().unwrap_or_default().to_owned()
}

/// `(status, code)` of one request through a gateway, on a fresh connection.
pub async fn answer(gateway: &Client, path: &str, token: &str) -> std::io::Result<(u16, String)> {
    let r = gateway.try_send(&Req::get(path).bearer(token)).await?;
    let code = if r.status == 200 {
        String::new()
    } else {
        r.code()
    };
    Ok((r.status, code))
}

/// Waits (bounded) until gateway `i` has applied feed version `revoked_at`, then
/// requires consent `id` refused there as revoked (`403 consent_revoked`); a `200` once
/// the position had reached the revocation is a late allow and fails the test.
pub async fn assert_refused(r: &Running, i: usize, id: &str, revoked_at: u64, bound: Duration) {
    let (client, path, token) = (r.gateway_for(i, id), r.accounts_path(id), r.token(id));
    let end = Instant::now() + bound;
    loop {
        let position = feed_version(r.admin(i)).await;
        let got = answer(&client, &path, &token).await.expect("transport");
        assert_no_late_allow(&format!("gateway {i}"), got.0, position, revoked_at);
        if (got.0, got.1.as_str()) == REVOKED {
            return;
        }
        assert!(
            Instant::now() < end,
            "gateway {i} did not refuse {id} (revoked at feed version {revoked_at}) within \
             {bound:?}: last {got:?} at position {position}\n{}",
            r.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tokio runtime for a test's clients (the cluster was started before it).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One request of an open-loop load: the gateway, when it was written, and the answer
/// (`(status, code)`, or the transport error).
#[derive(Debug, Clone)]
pub struct Sent {
    /// The gateway (index).
    pub gateway: usize,
    /// When its first byte was about to be written (a connection was at hand).
    pub at: Instant,
    /// `(status, problem code)` (`""` for a `200`), or the transport error.
    pub answer: Result<(u16, String), String>,
}

/// Keep-alive HTTP/1.1 connections to one gateway: a request takes an idle one or opens
/// a new one, and gives it back once answered (unless the gateway closes it).
pub struct Pool {
    client: Client,
    idle: Mutex<Vec<TlsConn>>,
}

impl Pool {
    /// A pool of connections made by `client`.
    pub fn new(client: Client) -> Arc<Pool> {
        Arc::new(Pool {
            client,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Opens `n` connections ahead (so that the load's first requests need no handshake).
    pub async fn warm(&self, n: usize) {
        for _ in 0..n {
            let conn = self.client.connect().await.expect("connect");
            self.idle.lock().expect("idle").push(conn);
        }
    }

    /// Sends `req` on an idle connection (or a new one): when it was written, and the
    /// answer.
    pub async fn send(&self, req: &Req) -> (Instant, std::io::Result<Response>) {
        let idle = self.idle.lock().expect("idle").pop();
        let mut conn = match idle {
            Some(c) => c,
            None => match self.client.connect().await {
                Ok(c) => c,
                Err(e) => return (Instant::now(), Err(e)),
            },
        };
        let at = Instant::now();
        let answer = conn.send(req).await;
        if let Ok(r) = &answer {
            let closes = r
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if !closes {
                self.idle.lock().expect("idle").push(conn);
            }
        }
        (at, answer)
    }
}

/// `(status, code)` of a response (`""` for a `200`).
pub fn status_code(r: &Response) -> (u16, String) {
    let code = if r.status == 200 {
        String::new()
    } else {
        r.code()
    };
    (r.status, code)
}

/// An open-loop load: `total` requests made by `request`, the `k`-th written at
/// `start + k / rate` whatever the answers so far (each on its own task), round-robin
/// over `pools`. Returns every request's [`Sent`] once all are answered.
pub async fn open_loop(
    pools: &[Arc<Pool>],
    request: impl Fn() -> Req,
    rate: f64,
    total: usize,
) -> Vec<Sent> {
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        let gateway = k % pools.len();
        let (pool, req) = (pools[gateway].clone(), request());
        tasks.spawn(async move {
            let (at, answer) = pool.send(&req).await;
            Sent {
                gateway,
                at,
                answer: answer.map(|r| status_code(&r)).map_err(|e| e.to_string()),
            }
        });
    }
    let mut sent = Vec::with_capacity(total);
    while let Some(s) = tasks.join_next().await {
        sent.push(s.expect("a request task"));
    }
    sent
}

/// The time between the first and the last request written.
pub fn span(sent: &[Sent]) -> Duration {
    let first = sent.iter().map(|s| s.at).min();
    let last = sent.iter().map(|s| s.at).max();
    match (first, last) {
        (Some(f), Some(l)) => l - f,
        _ => Duration::ZERO,
    }
}
