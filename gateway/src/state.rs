//! Process-wide state shared by the proxy, the admin listener, the feed follower and
//! the maintenance task: the snapshot publisher, metrics, the audit journal's sender,
//! the listener's swappable TLS pieces, and the seams through which control-plane events
//! (a reload, a registry change, fetched keys, consent changes, a changed consent file)
//! reach the request path. Every such event goes through the one publisher
//! (`snapshot::Publisher`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consent_cache::{BatchError, BatchSummary, Change as ConsentChange, ConsentStore};
use policy::token::Jwks;

use crate::audit::{AuditLog, AuditRecord, Journal, Slot};
use crate::config::ConfigError;
use crate::metrics::Metrics;
use crate::network::Registry;
use crate::plane::TrustPlane;
use crate::rollup::Rollups;
use crate::snapshot::{
    sections, Backoff, Change, ConsentFile, ProcessSettings, PublishError, Published, Publisher,
    Snapshot,
};
use crate::tls::{SwappableCert, SwappableVerifier};

/// Process-wide state shared by the proxy, the admin listener and reloads.
pub struct State {
    publisher: Publisher,
    /// Metrics.
    pub metrics: Metrics,
    /// Audit journal (closed at shutdown).
    pub(crate) audit: Mutex<Option<AuditLog>>,
    config_path: PathBuf,
    /// Reloadable mTLS verifier of the API listener.
    pub(crate) tls_verifier: Arc<SwappableVerifier>,
    /// Reloadable server certificate of the API listener.
    pub(crate) tls_cert: Arc<SwappableCert>,
    generation: AtomicU64,
    /// Set once the API listener accepts connections.
    pub(crate) ready: AtomicBool,
    /// Process settings in force (changes need a restart).
    pub(crate) process: ProcessSettings,
    journal: Journal,
    /// `[rollups]`: this process's traffic rollups (counted by the journal's writer).
    pub(crate) rollups: Option<Arc<Rollups>>,
}

/// A reload that took effect.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The configuration generation now in force.
    pub generation: u64,
    /// What it serves.
    pub summary: String,
}

/// Why a reload was refused (the running configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The new snapshot could not be published.
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// The load task failed.
    #[error("reload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl State {
    /// Assembles the state around the publisher of the first snapshot.
    pub fn new(
        publisher: Publisher,
        metrics: Metrics,
        audit: AuditLog,
        config_path: PathBuf,
    ) -> State {
        let journal = audit.journal();
        publisher.attach_journal(journal.clone());
        let first = publisher.current();
        let file = first.file();
        metrics.set_certificate_expiry(&file.certificates, true);
        State {
            tls_verifier: SwappableVerifier::new(file.tls.verifier.clone()),
            tls_cert: SwappableCert::new(file.tls.cert.clone()),
            process: file.process.clone(),
            publisher,
            metrics,
            audit: Mutex::new(Some(audit)),
            config_path,
            generation: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            journal,
            rollups: None,
        }
    }

    /// Sends a record to the journal (counted as dropped when it cannot take it).
    pub fn audit(&self, r: AuditRecord) {
        self.audit_reserved(r, None);
    }

    /// Sends a record to the journal in the place its request reserved, if any.
    pub fn audit_reserved(&self, r: AuditRecord, slot: Option<Slot>) {
        if !self.journal.send(r, slot) {
            self.metrics.audit_dropped.inc();
        }
    }

    /// Asks the journal to reopen its file (log rotation).
    pub fn reopen_journal(&self) {
        self.journal.reopen();
    }

    /// Writes what the journal holds and stops it, waiting at most `wait`.
    pub fn close_journal(&self, wait: Duration) {
        let log = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut log) = log {
            log.close(wait);
        }
    }

    /// The snapshot a request starts with (kept for the whole request).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.publisher.current()
    }

    /// The configuration generation in force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Token-cache (hits, misses) over the process's life: every verifier the publisher
    /// builds counts into the same counters.
    pub fn token_cache_totals(&self) -> (u64, u64) {
        let t = self.snapshot().tokens();
        (t.cache_hits(), t.cache_misses())
    }

    /// The trust sidecar as currently configured (`[trust]`), if it is the control plane.
    pub fn trust_plane(&self) -> Option<Arc<TrustPlane>> {
        self.snapshot().trust().cloned()
    }

    /// Whether the trust sidecar is the control plane and no snapshot of it has been
    /// loaded yet: until then the process is not ready (`/readyz` 503), so a load balancer
    /// sends it no traffic it could only refuse. Once loaded, readiness stays: a sidecar
    /// lost later is row 7's business (consent routes 503, open data served).
    pub fn awaits_control_plane(&self) -> bool {
        self.trust_plane().is_some_and(|p| !p.status.loaded())
    }

    /// Replaces the whole consent store (a snapshot loaded from the sidecar).
    pub fn replace_consents(&self, store: ConsentStore) {
        self.publisher.consents().store(Arc::new(store));
    }

    /// Applies feed changes to the consent store in force.
    pub fn apply_consent_changes(
        &self,
        changes: impl IntoIterator<Item = ConsentChange>,
    ) -> Result<BatchSummary, BatchError> {
        self.publisher.consents().load().apply_batch(changes)
    }

    /// Makes `registry` the participant registry in force and republishes.
    pub async fn publish_registry(self: &Arc<Self>, registry: Arc<Registry>) {
        match self.publish(Change::Registry(registry)).await {
            Ok(_) => {
                let net = self.snapshot().network();
                tracing::debug!(
                    participants = net.directory.participants().len(),
                    refused = net.refused,
                    "participant directory updated from the trust registry"
                );
            }
            Err(e) => tracing::error!(error = %e, "participant registry not published"),
        }
    }

    /// Makes a JWKS document fetched from the sidecar the token keys in force (when it
    /// changed and is usable) and republishes; otherwise the last good keys stay.
    pub async fn publish_jwks(self: &Arc<Self>, jwks: Vec<u8>) {
        let kids: Vec<String> = Jwks::from_json(&jwks)
            .map(|j| j.kids().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default();
        match self.publish(Change::Jwks(jwks)).await {
            Ok(Published::Replaced) => {
                tracing::info!(?kids, "token keys updated from the trust sidecar");
            }
            Ok(Published::Unchanged) => {}
            Err(e) => tracing::warn!(error = %e, "keeping the last good token keys"),
        }
    }

    /// Rebuilds the file's inputs off the request path and publishes them; on any error
    /// the running configuration keeps serving.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        let t0 = Instant::now();
        let result = self.load_and_publish().await;
        let m = &self.metrics;
        m.reload_seconds.observe(t0.elapsed().as_secs_f64());
        let summary = match result {
            Ok(summary) => summary,
            Err(e) => {
                m.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "reload refused; the running configuration keeps serving");
                return Err(e);
            }
        };
        let generation = self.next_generation();
        m.reloads.with_label_values(&["ok"]).inc();
        tracing::info!(generation, summary = %summary, "configuration reloaded");
        Ok(Reloaded {
            generation,
            summary,
        })
    }

    /// A new configuration generation is in force.
    fn next_generation(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        generation
    }

    async fn load_and_publish(self: &Arc<Self>) -> Result<String, ReloadError> {
        // The consent file first and on its own: a compile of the rest that is slow or
        // fails (a bank's host name) must not hold a revocation back.
        self.refresh_consents().await?;
        let previous = self.publisher.file_inputs().await;
        let (path, feed) = (self.config_path.clone(), self.publisher.feed().clone());
        let file =
            tokio::task::spawn_blocking(move || sections::load(&path, Some(&previous), &feed))
                .await??;
        if file.process != self.process {
            tracing::warn!("listener, thread, shutdown or audit settings changed: they take effect at the next restart");
        }
        let tls = file.tls.clone();
        let certificates = file.certificates.clone();
        self.publish(Change::File(Box::new(file))).await?;
        self.tls_verifier.replace(tls.verifier);
        self.tls_cert.replace(tls.cert);
        self.metrics.set_certificate_expiry(&certificates, false);
        Ok(self.snapshot().summary())
    }

    /// Loads the consent file when the one on disk is not the one in force, and publishes
    /// it on its own (file mode); `Ok(false)` when there was nothing to load. A failure
    /// keeps the file in force serving and starts row 7's clock.
    pub async fn refresh_consents(self: &Arc<Self>) -> Result<bool, ReloadError> {
        let consent_file = self.publisher.consent_file();
        let (Some(_), Some(in_force)) = (consent_file.changed_on_disk(), consent_file.in_force())
        else {
            return Ok(false);
        };
        let path = in_force.path().to_path_buf();
        let loaded = tokio::task::spawn_blocking(move || ConsentFile::load(&path)).await?;
        let result = match loaded {
            Ok(file) => {
                let consents = file.store.len();
                let published = self.publish(Change::Consents(file)).await;
                published.map(|p| (p, consents)).map_err(ReloadError::from)
            }
            Err(e) => Err(e.into()),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .consent_file_loads
            .with_label_values(&[outcome])
            .inc();
        match result {
            Ok((Published::Replaced, consents)) => {
                let generation = self.next_generation();
                tracing::info!(generation, consents, "consent file reloaded");
                Ok(true)
            }
            Ok((Published::Unchanged, _)) => Ok(false),
            Err(e) => {
                consent_file.load_failed(Instant::now());
                Err(e)
            }
        }
    }

    /// The consent file watcher's step: loads a file that changed on disk, and retries one
    /// that failed with back-off even when it does not change again.
    pub async fn follow_consent_file(self: &Arc<Self>, backoff: &mut Backoff) {
        let Some(on_disk) = self.publisher.consent_file().changed_on_disk() else {
            backoff.reset();
            return;
        };
        if !backoff.due(Instant::now(), &on_disk) {
            return;
        }
        match self.refresh_consents().await {
            Ok(_) => backoff.reset(),
            Err(e) => {
                let wait = backoff.failed(Instant::now(), on_disk);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "consent file not loaded; the one in force keeps serving");
            }
        }
    }

    /// Publishes through the one publisher.
    async fn publish(&self, change: Change) -> Result<Published, PublishError> {
        self.publisher.publish(change).await
    }
}
