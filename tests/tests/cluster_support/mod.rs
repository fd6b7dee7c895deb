//! Shared by the `cluster_*` tests: a cluster of real processes started through
//! `devhub::cluster::start` — PostgreSQL, two trust replicas (`trust-under-test`), two
//! gateways (`hub-under-test`) and the sandbox banks (`cluster-under-test bank`), all
//! built by cargo for this package — and what the tests do to it over real mTLS:
//! requests through the gateways, revocations and reads through the replicas, the
//! gateways' feed positions and metrics.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use devhub::cluster::{self, Binaries, Cluster, ClusterOptions};
use e2e::http::admin_request;
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
        Client::new(addr, &self.ca_pem, Some(&self.users[user]))
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

    /// The end of every piece's log and PostgreSQL's, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["trust-1", "trust-2", "gateway-1", "gateway-2"] {
            let log = self.cluster.log_of(name);
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            out.push_str(&format!("--- {name} ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
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
