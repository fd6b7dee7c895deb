//! Process-wide state shared by the proxy, the admin listener, the feed follower and
//! reloads: the published runtime snapshot, metrics, the audit journal's sender, and the
//! seams through which control-plane events (a reload, a registry change, fetched keys,
//! consent changes) reach what the request path reads.

use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use consent_cache::{BatchError, BatchSummary, Change, ConsentStore};

use crate::audit::{AuditLog, AuditRecord};
use crate::follower::TrustPlane;
use crate::metrics::Metrics;
use crate::network::Registry;
use crate::snapshot::Snapshot;
use crate::tls::{SwappableCert, SwappableVerifier};

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
        crate::follower::publish_registry(self, registry).await;
    }

    /// Makes a JWKS document fetched from the sidecar the token keys in force (when it
    /// changed and is usable) and republishes.
    pub async fn publish_jwks(self: &Arc<Self>, jwks: Vec<u8>) {
        crate::follower::install_keys(self, jwks).await;
    }
}
