//! What the load generator sends: virtual users (each with its own consent, token,
//! client identity and request), groups of them with their own connections and load
//! (closed or open loop), and pools of single-use tokens for the cold-token case.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use crate::error::{HarnessError, Result};

/// Where the load goes.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The listener.
    pub addr: SocketAddr,
    /// The TLS server name to verify (`localhost` for every development certificate).
    pub server_name: ServerName<'static>,
    /// `Host` / `:authority` sent.
    pub authority: String,
}

impl Endpoint {
    /// A loopback endpoint whose certificate names `localhost`.
    pub fn localhost(addr: SocketAddr) -> Result<Self> {
        Ok(Endpoint {
            addr,
            server_name: ServerName::try_from("localhost")
                .map_err(|e| HarnessError::Plan(format!("server name: {e}")))?
                .to_owned(),
            authority: format!("localhost:{}", addr.port()),
        })
    }
}

/// A client identity: the TLS configuration with one client certificate.
#[derive(Clone)]
pub struct Identity {
    /// For humans (the API user's BIN, or `hub-client`).
    pub name: String,
    /// TLS with that certificate.
    pub tls: Arc<ClientConfig>,
}

/// One virtual user: a request it repeats (path, headers) on connections of its identity.
#[derive(Debug, Clone)]
pub struct VirtualUser {
    /// Origin-form URI (path and query), for HTTP/1.1.
    pub path: Uri,
    /// Absolute URI, for HTTP/2 (`:scheme` and `:authority`).
    pub absolute: Uri,
    /// Headers sent on every request (a fixed bearer token included when there is one).
    pub headers: HeaderMap,
    /// Index into [`Plan::identities`].
    pub identity: usize,
    /// Keep a per-request record (time sent, status) for this user, e.g. for revocation.
    pub watch: bool,
}

impl VirtualUser {
    /// A user sending `GET path` with `headers` to `endpoint` as `identity`.
    pub fn new(
        endpoint: &Endpoint,
        path: &str,
        headers: &[(&'static str, String)],
        identity: usize,
    ) -> Result<Self> {
        let mut map = HeaderMap::with_capacity(headers.len() + 1);
        for (n, v) in headers {
            let value = HeaderValue::from_str(v)
                .map_err(|e| HarnessError::Plan(format!("header {n}: {e}")))?;
            map.insert(HeaderName::from_static(n), value);
        }
        let path_uri: Uri = path
            .parse()
            .map_err(|e| HarnessError::Plan(format!("path {path}: {e}")))?;
        let absolute: Uri = format!("https://{}{}", endpoint.authority, path)
            .parse()
            .map_err(|e| HarnessError::Plan(format!("uri {path}: {e}")))?;
        Ok(VirtualUser {
            path: path_uri,
            absolute,
            headers: map,
            identity,
            watch: false,
        })
    }
}

/// Single-use bearer tokens, pre-minted before the measurement (minting during it would
/// steal CPU from the system under test). Shared by every measurement of a scenario so
/// that no token is ever sent twice; when a pool runs dry it wraps and counts the reuse.
#[derive(Debug)]
pub struct TokenPool {
    /// Per identity: (virtual user index, `Bearer …` header value).
    per_identity: Vec<Vec<(u32, HeaderValue)>>,
    cursors: Vec<AtomicUsize>,
    reused: AtomicU64,
}

impl TokenPool {
    /// A pool from `(identity, user, token)` triples.
    pub fn new(identities: usize, tokens: Vec<(usize, u32, String)>) -> Result<Self> {
        let mut per_identity = vec![Vec::new(); identities];
        for (ident, vu, tok) in tokens {
            let v = HeaderValue::from_str(&format!("Bearer {tok}"))
                .map_err(|e| HarnessError::Plan(format!("token: {e}")))?;
            per_identity
                .get_mut(ident)
                .ok_or_else(|| HarnessError::Plan("token for an unknown identity".into()))?
                .push((vu, v));
        }
        Ok(TokenPool {
            cursors: per_identity.iter().map(|_| AtomicUsize::new(0)).collect(),
            per_identity,
            reused: AtomicU64::new(0),
        })
    }

    /// The next unused token of `identity` (wrapping, and counted, when none is left).
    pub fn next(&self, identity: usize) -> Option<(u32, HeaderValue)> {
        let list = self.per_identity.get(identity)?;
        if list.is_empty() {
            return None;
        }
        let i = self.cursors.get(identity)?.fetch_add(1, Ordering::Relaxed);
        if i >= list.len() {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
        list.get(i % list.len()).cloned()
    }

    /// Tokens handed out a second time so far.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// Tokens not handed out yet.
    pub fn remaining(&self) -> usize {
        self.per_identity
            .iter()
            .zip(&self.cursors)
            .map(|(l, c)| l.len().saturating_sub(c.load(Ordering::Relaxed)))
            .sum()
    }

    /// Whether `identity` has tokens.
    pub fn has(&self, identity: usize) -> bool {
        self.per_identity
            .get(identity)
            .is_some_and(|l| !l.is_empty())
    }
}

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Every connection (stream) sends its next request as soon as the last answered.
    Closed,
    /// A fixed arrival rate (requests per second); latency counts from the *intended*
    /// send time, so a stalled system cannot hide behind a waiting client.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

impl Load {
    /// `open 5000/s` or `closed`.
    pub fn label(&self, connections: usize) -> String {
        match self {
            Load::Closed => format!("closed c={connections}"),
            Load::Open { rate } => format!("open {rate:.0}/s"),
        }
    }
}

/// Users with their own connections, load and results.
#[derive(Clone)]
pub struct Group {
    /// Name in results (`main`, `slow-provider`, …).
    pub name: String,
    /// The users.
    pub users: Arc<Vec<VirtualUser>>,
    /// When set, every request takes a fresh token from the pool instead of the
    /// user's fixed one.
    pub tokens: Option<Arc<TokenPool>>,
    /// TCP/TLS connections of this group.
    pub connections: usize,
    /// Concurrent requests per connection (HTTP/2 streams; 1 for HTTP/1.1).
    pub streams: usize,
    /// The load.
    pub load: Load,
    /// Where this group's connections go, when not the plan's endpoint.
    pub endpoint: Option<Endpoint>,
}

impl Group {
    /// The group's endpoint.
    pub fn endpoint<'a>(&'a self, plan: &'a Plan) -> &'a Endpoint {
        self.endpoint.as_ref().unwrap_or(&plan.endpoint)
    }
}

/// One measurement: groups of users against one endpoint for a duration.
#[derive(Clone)]
pub struct Plan {
    /// Where.
    pub endpoint: Endpoint,
    /// Client identities, indexed by [`VirtualUser::identity`].
    pub identities: Vec<Identity>,
    /// The groups, run at the same time.
    pub groups: Vec<Group>,
    /// HTTP/2 (else HTTP/1.1 keep-alive).
    pub http2: bool,
    /// Measurement window.
    pub duration: Duration,
    /// A request not answered within this is counted as `timeout`.
    pub request_timeout: Duration,
}

impl Plan {
    /// Checks the plan can run.
    pub fn validate(&self) -> Result<()> {
        if self.groups.is_empty() {
            return Err(HarnessError::Plan("no group".into()));
        }
        for g in &self.groups {
            if g.users.is_empty() {
                return Err(HarnessError::Plan(format!("group {}: no user", g.name)));
            }
            if g.connections == 0 || g.streams == 0 {
                return Err(HarnessError::Plan(format!(
                    "group {}: connections and streams must be at least 1",
                    g.name
                )));
            }
            if let Load::Open { rate } = g.load {
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(HarnessError::Plan(format!(
                        "group {}: rate must be > 0",
                        g.name
                    )));
                }
            }
            if g.users.iter().any(|u| u.identity >= self.identities.len()) {
                return Err(HarnessError::Plan(format!(
                    "group {}: a user names an unknown identity",
                    g.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_pool_hands_each_token_once_then_counts_reuse() {
        let pool = TokenPool::new(
            2,
            vec![(0, 0, "a".into()), (0, 1, "b".into()), (1, 2, "c".into())],
        )
        .unwrap();
        assert_eq!(pool.remaining(), 3);
        let first: Vec<u32> = (0..2).map(|_| pool.next(0).unwrap().0).collect();
        assert_eq!(first, vec![0, 1]);
        assert_eq!(pool.reused(), 0);
        assert_eq!(pool.next(0).unwrap().1, "Bearer a");
        assert_eq!(pool.reused(), 1);
        assert!(pool.has(1) && !pool.has(2));
        assert!(pool.next(5).is_none());
    }
}
