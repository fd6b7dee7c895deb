//! Provider banks' upstreams: pre-resolved base URLs balanced round-robin with
//! passive ejection of failing ones, per-provider timeouts (the SLA), and the
//! pingora peer built from the hub's shared client identity.

use pingora::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use consent_cache::Bin;

/// A base URL that is not usable.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Only `https://` is allowed towards banks.
    #[error("only https:// base URLs are allowed")]
    NotHttps,
    /// Host or port missing or malformed.
    #[error("malformed base URL: {0}")]
    Malformed(&'static str),
    /// The host did not resolve at load time.
    #[error("cannot resolve {0}")]
    Resolve(String),
}

/// A parsed and resolved base URL, before it joins a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Resolved at load, never on the request path.
    pub addr: SocketAddr,
    /// The name the bank's certificate must carry.
    pub sni: String,
    /// Whether the bank's certificate is verified: false only for `sni = ""`, which the
    /// configuration allows with `insecure_skip_verify_for_development` alone.
    pub verify: bool,
    /// Path prefix from the base URL ("" or "/api").
    pub prefix: String,
    /// `Host` header value.
    pub authority: String,
}

/// One base URL of a provider.
#[derive(Debug)]
pub struct Target {
    /// Resolved at load, never on the request path.
    pub addr: SocketAddr,
    /// The name the bank's certificate must carry.
    pub sni: String,
    /// Whether the bank's certificate is verified (see [`TargetSpec::verify`]).
    pub verify: bool,
    /// Path prefix from the base URL ("" or "/api").
    pub prefix: String,
    /// `Host` header value.
    pub authority: String,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
}

impl From<TargetSpec> for Target {
    fn from(s: TargetSpec) -> Target {
        Target {
            addr: s.addr,
            sni: s.sni,
            verify: s.verify,
            prefix: s.prefix,
            authority: s.authority,
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }
}

/// Parses `https://host[:port][/prefix]` and resolves the host (start-up, reload and
/// the trust feed follower only: it may block on DNS). `sni_override` names the server
/// the bank's certificate must carry when it is not the URL's host; `Some("")` turns the
/// verification off (the configuration refuses it without its development flag).
pub fn parse_base_url(url: &str, sni_override: Option<&str>) -> Result<TargetSpec, UrlError> {
    let rest = url.strip_prefix("https://").ok_or(UrlError::NotHttps)?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(UrlError::Malformed("host"));
    }
    if prefix.contains(['?', '#', '%']) || prefix.contains("//") || prefix.contains("/../") {
        return Err(UrlError::Malformed("path prefix"));
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or(UrlError::Malformed("IPv6 host"))?;
        (h, p.strip_prefix(':').unwrap_or("443"))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, "443"),
        }
    };
    let port: u16 = port.parse().map_err(|_| UrlError::Malformed("port"))?;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|_| UrlError::Resolve(host.to_string()))?
        .next()
        .ok_or_else(|| UrlError::Resolve(host.to_string()))?;
    // pingora would skip the verification for an empty server name, but its rustls
    // connector cannot send one; the URL's host goes as the name, unverified.
    let verify = sni_override != Some("");
    Ok(TargetSpec {
        addr,
        sni: sni_override
            .filter(|s| !s.is_empty())
            .unwrap_or(host)
            .to_string(),
        verify,
        prefix: prefix.to_string(),
        authority: authority.to_string(),
    })
}

/// A provider's upstream pool and SLA.
#[derive(Debug)]
pub struct Upstream {
    /// The provider's BIN.
    pub bin: Bin,
    /// Its base URLs.
    pub targets: Box<[Target]>,
    next: AtomicUsize,
    /// Connect timeout (TCP + TLS).
    pub connect_timeout: Duration,
    /// SLA: how long the hub waits for an answer.
    pub timeout: Duration,
    eject_after: u32,
    eject_for_ms: u64,
}

/// Milliseconds on a process-local monotonic clock.
pub fn now_ms() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Upstream {
    /// Builds a provider's pool.
    pub fn new(
        bin: Bin,
        targets: Vec<TargetSpec>,
        connect_timeout: Duration,
        timeout: Duration,
        eject_after: u32,
        eject_for: Duration,
    ) -> Self {
        Upstream {
            bin,
            targets: targets.into_iter().map(Target::from).collect(),
            next: AtomicUsize::new(0),
            connect_timeout,
            timeout,
            eject_after: eject_after.max(1),
            eject_for_ms: eject_for.as_millis() as u64,
        }
    }

    /// Picks a target round-robin, skipping ejected ones; if every target is ejected,
    /// the next one in turn is tried anyway (a failing bank then answers 503 itself
    /// rather than the hub guessing).
    pub fn pick(&self) -> usize {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = now_ms();
        for i in 0..n {
            let idx = (start + i) % n;
            if self.targets[idx].ejected_until_ms.load(Ordering::Relaxed) <= now {
                return idx;
            }
        }
        start % n
    }

    /// Records the outcome of a call to a target (passive health checking).
    pub fn report(&self, idx: usize, ok: bool) {
        let Some(t) = self.targets.get(idx) else {
            return;
        };
        if ok {
            if t.failures.load(Ordering::Relaxed) != 0 {
                t.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let f = t.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if f >= self.eject_after {
            t.ejected_until_ms
                .store(now_ms() + self.eject_for_ms, Ordering::Relaxed);
            t.failures.store(0, Ordering::Relaxed);
            tracing::warn!(
                provider = %self.bin,
                target = idx,
                failures = f,
                eject_ms = self.eject_for_ms,
                "provider base URL ejected after consecutive failures"
            );
        }
    }

    /// Whether a target is currently out of rotation.
    pub fn is_ejected(&self, idx: usize) -> bool {
        self.targets
            .get(idx)
            .is_some_and(|t| t.ejected_until_ms.load(Ordering::Relaxed) > now_ms())
    }

    /// Whether any other target than `idx` is in rotation (worth a retry).
    pub fn has_alternative(&self, idx: usize) -> bool {
        let now = now_ms();
        self.targets
            .iter()
            .enumerate()
            .any(|(i, t)| i != idx && t.ejected_until_ms.load(Ordering::Relaxed) <= now)
    }

    /// The pingora peer for a target with the SLA. The hub's client identity and the banks'
    /// CA live in the proxy's connector, built once at start (see `server::run`).
    pub fn peer(&self, idx: usize, remaining: Duration) -> Box<HttpPeer> {
        let t = &self.targets[idx.min(self.targets.len().saturating_sub(1))];
        let mut peer = HttpPeer::new(t.addr, true, t.sni.clone());
        peer.options.verify_cert = t.verify;
        peer.options.verify_hostname = t.verify;
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        let budget = remaining.max(Duration::from_millis(1));
        peer.options.read_timeout = Some(budget);
        peer.options.write_timeout = Some(budget);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.group_key = worker_slot();
        Box::new(peer)
    }
}

/// This worker thread's pool partition. Pingora registers a connection's socket with the
/// reactor of the thread that opened it; handing it to a request on another worker makes
/// every read and write of that request a cross-thread wake-up. Keying the keep-alive pool
/// by worker thread (pingora's `group_key`) keeps each upstream connection on its thread
/// (measured with `scripts/bench-hub`, docs/performance.md).
fn worker_slot() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static SLOT: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let t = parse_base_url("https://127.0.0.1:9443/api/", None).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(t.prefix, "/api");
        assert_eq!(t.sni, "127.0.0.1");
        assert_eq!(t.authority, "127.0.0.1:9443");
        let t = parse_base_url("https://localhost:1", Some("bank.test")).unwrap();
        assert_eq!(t.sni, "bank.test");
        assert!(t.verify);
        let t = parse_base_url("https://localhost:1", Some("")).unwrap();
        assert_eq!((t.sni.as_str(), t.verify), ("localhost", false));
        assert!(matches!(
            parse_base_url("http://127.0.0.1:1", None),
            Err(UrlError::NotHttps)
        ));
        assert!(parse_base_url("https://127.0.0.1:99999", None).is_err());
        assert!(parse_base_url("https://u@127.0.0.1:1", None).is_err());
        assert!(parse_base_url("https://127.0.0.1:1/a?b", None).is_err());
    }
}
