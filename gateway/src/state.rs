//! Process-wide state shared by the proxy, the admin listener, the feed follower and
//! reloads: the published runtime snapshot, metrics, the audit journal's sender, and the
//! seams through which control-plane events (a reload, a registry change, fetched keys,
//! consent changes) reach what the request path reads.

use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use consent_cache::{BatchError, BatchSummary, Change, ConsentStore};

use crate::audit::{AuditLog, AuditRecord};
use crate::follower::TrustPlane;
use crate::metrics::Metrics;
use crate::network::{self, Registry};
use crate::snapshot::Snapshot;
use crate::tls::{SwappableCert, SwappableVerifier};
use policy::token::{Jwks, TokenVerifier};

/// Process-wide state shared by the proxy, the admin listener and reloads.
pub struct State {
    /// The snapshot requests start with; swapped atomically by reloads.
    pub snapshot: ArcSwap<Snapshot>,
    /// Metrics.
    pub metrics: Metrics,
    /// Audit journal (closed at shutdown).
    pub audit: Mutex<Option<AuditLog>>,
    /// Where the configuration lives.
    pub config_path: PathBuf,
    /// Reloadable downstream TLS pieces.
    pub tls_verifier: Arc<SwappableVerifier>,
    /// Reloadable server certificate.
    pub tls_cert: Arc<SwappableCert>,
    /// Serialises reloads.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Configuration generation.
    pub generation: AtomicU64,
    /// Set once the API listener accepts connections.
    pub ready: AtomicBool,
    /// The API listener address (for readiness probing).
    pub listen: std::net::SocketAddr,
    /// Token-cache lookups of verifiers replaced by reloads (hits, misses).
    pub token_cache_base: (AtomicU64, AtomicU64),
    /// Process settings in force (changes need a restart).
    pub process: crate::snapshot::ProcessSettings,
    audit_tx: std::sync::mpsc::SyncSender<AuditRecord>,
}

impl State {
    /// Assembles the state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        snapshot: Snapshot,
        metrics: Metrics,
        audit: AuditLog,
        config_path: PathBuf,
        tls_verifier: Arc<SwappableVerifier>,
        tls_cert: Arc<SwappableCert>,
        process: crate::snapshot::ProcessSettings,
    ) -> State {
        let audit_tx = audit.sender();
        State {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            audit: Mutex::new(Some(audit)),
            config_path,
            tls_verifier,
            tls_cert,
            reload_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            listen: process.listen,
            token_cache_base: (AtomicU64::new(0), AtomicU64::new(0)),
            process,
            audit_tx,
        }
    }

    /// Sends a record to the journal (counted as dropped when its buffer is full).
    pub fn audit(&self, r: AuditRecord) {
        if self.audit_tx.try_send(r).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }
}

impl State {
    /// The snapshot a request starts with (kept for the whole request).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The trust sidecar as currently configured (`[trust]`), if it is the control plane.
    pub fn trust_plane(&self) -> Option<Arc<TrustPlane>> {
        self.snapshot.load().trust.clone()
    }

    /// Replaces the whole consent store (a snapshot loaded from the sidecar).
    pub fn replace_consents(&self, store: ConsentStore) {
        self.snapshot.load().consents.store(Arc::new(store));
    }

    /// Applies feed changes to the consent store in force.
    pub fn apply_consent_changes(
        &self,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<BatchSummary, BatchError> {
        self.snapshot.load().consents.load().apply_batch(changes)
    }

    /// Makes `registry` the participant registry in force and republishes.
    pub async fn publish_registry(self: &Arc<Self>, registry: Arc<Registry>) {
        publish_registry(self, registry).await;
    }

    /// Makes a JWKS document fetched from the sidecar the token keys in force (when it
    /// changed and is usable) and republishes.
    pub async fn publish_jwks(self: &Arc<Self>, jwks: Vec<u8>) {
        install_keys(self, jwks).await;
    }
}

/// Makes `registry` the one in force: rebuilds the participant directory and provider
/// pools from it and the configuration file (on a blocking thread: provider host names
/// are resolved) and swaps them into the serving snapshot. Holds the reload lock, so a
/// concurrent reload builds from this registry.
async fn publish_registry(state: &Arc<State>, registry: Arc<Registry>) {
    let _guard = state.reload_lock.lock().await;
    let snap = state.snapshot.load_full();
    let Some(plane) = snap.trust.clone() else {
        return;
    };
    plane.status.set_registry(registry.clone());
    let building = snap.clone();
    let built = tokio::task::spawn_blocking(move || {
        let previous = building.network.load_full();
        network::build(&building.base, Some(&registry), Some(&previous))
    })
    .await;
    match built {
        Ok(net) => {
            tracing::debug!(
                participants = net.directory.participants().len(),
                refused = net.refused,
                "participant directory updated from the trust registry"
            );
            snap.network.store(Arc::new(net));
        }
        Err(e) => {
            // Fail closed: recognise no one rather than keep a directory that may grant
            // what the registry has withdrawn.
            tracing::error!(error = %e, "participant directory rebuild failed: refusing every participant until the next change");
            snap.network.store(Arc::new(network::build(
                &network::FileBase::default(),
                None,
                None,
            )));
        }
    }
}

/// Replaces the serving verifier when the sidecar's key set changed and is usable.
/// Holds the reload lock, so a concurrent reload builds from the set installed here.
async fn install_keys(state: &Arc<State>, bytes: Vec<u8>) {
    let _guard = state.reload_lock.lock().await;
    let snap = state.snapshot.load_full();
    let Some(plane) = snap.trust.as_ref() else {
        return;
    };
    if plane
        .status
        .last_jwks()
        .is_some_and(|last| *last == bytes[..])
    {
        return;
    }
    let jwks = match Jwks::from_json(&bytes) {
        Ok(j) if !j.is_empty() => j,
        Ok(_) => {
            tracing::warn!(
                "the trust sidecar's JWKS has no usable key; keeping the last good keys"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "the trust sidecar's JWKS is unusable; keeping the last good keys");
            return;
        }
    };
    let kids: Vec<String> = jwks.kids().map(|(k, _)| k.to_string()).collect();
    let settings = snap.tokens.load().settings().clone();
    let old = snap
        .tokens
        .swap(Arc::new(TokenVerifier::new(settings, jwks)));
    state
        .token_cache_base
        .0
        .fetch_add(old.cache_hits(), Ordering::Relaxed);
    state
        .token_cache_base
        .1
        .fetch_add(old.cache_misses(), Ordering::Relaxed);
    plane.status.set_jwks(Arc::from(bytes));
    tracing::info!(?kids, "token keys updated from the trust sidecar");
}
