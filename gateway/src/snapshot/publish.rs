//! The one publisher: holds the inputs of the snapshot, and on every event updates one
//! input and publishes `compile(inputs, &live, previous)`. Publications are serialised
//! (one at a time), so an event always builds on the inputs the previous one left. The
//! consent file is the exception that proves the rule: it is compiled into nothing (the
//! snapshot reads the live consent store), so its publication only swaps the store, under
//! its own lock, and never waits for a compile under way (which may be resolving a bank's
//! host name).

use arc_swap::ArcSwap;
use std::sync::{Arc, OnceLock};

use consent_cache::ConsentStore;
use policy::token::{CacheCounters, Jwks, TokenSettings, TokenVerifier};

use crate::audit::Journal;
use crate::network::{self, FileBase, Network, Registry};
use crate::plane::FeedStatus;

use super::consents::{ConsentFile, ConsentFileStatus};
use super::sections::FileInputs;
use super::Snapshot;

/// An event's new input.
pub enum Change {
    /// The configuration file was loaded again (SIGHUP, `POST /admin/reload`, the consent
    /// file changed on disk).
    File(Box<FileInputs>),
    /// The feed delivered a new participant registry.
    Registry(Arc<Registry>),
    /// A JWKS document was fetched from the trust sidecar.
    Jwks(Vec<u8>),
    /// The consent file was loaded again (its watcher, a reload): its store replaces the
    /// one in force; nothing else is recompiled.
    Consents(ConsentFile),
}

/// What a publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// A new snapshot is in force.
    Replaced,
    /// The input was the one in force already; nothing was published.
    Unchanged,
}

/// Why an input was refused (the snapshot in force keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A fetched key set that does not parse.
    #[error("the trust sidecar's JWKS is unusable: {0}")]
    Jwks(#[from] policy::token::JwksError),
    /// A fetched key set without one usable key.
    #[error("the trust sidecar's JWKS has no usable key")]
    NoKeys,
    /// A fetched key set while the file does not take keys from the sidecar.
    #[error("keys fetched while `[trust] jwks` is off")]
    JwksNotWanted,
    /// A consent file that is not the configured one (consents come from the sidecar, or
    /// a reload changed the path meanwhile).
    #[error("a consent file that is not the configured control plane")]
    ConsentsNotWanted,
    /// The compile task failed (a panic): nothing was published.
    #[error("snapshot compile failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The inputs of the snapshot in force.
#[derive(Clone)]
struct Inputs {
    file: Arc<FileInputs>,
    /// The registry as the feed delivered it (`[trust]` only; kept over reloads).
    registry: Option<Arc<Registry>>,
    /// The last usable key set fetched from the sidecar (kept over reloads).
    jwks: Option<Arc<[u8]>>,
}

impl Inputs {
    /// The key set in force: the sidecar's once fetched (`[trust] jwks = true`), else
    /// the file's.
    fn jwks(&self) -> Arc<[u8]> {
        let fetched = self.file.trust().filter(|t| t.jwks).and(self.jwks.as_ref());
        fetched.unwrap_or(&self.file.jwks).clone()
    }
}

/// Process-lifetime state the snapshots refer to.
#[derive(Clone)]
struct Live {
    consents: Arc<ArcSwap<ConsentStore>>,
    /// The consent file in force and its row 7 state (file mode).
    consent_file: Arc<ConsentFileStatus>,
    /// The audit journal, once the process opened it (consent routes reserve a place in
    /// it before they are admitted; without one they are refused).
    journal: Arc<OnceLock<Journal>>,
    feed: Arc<FeedStatus>,
    /// Token-cache lookups, across every verifier of the process.
    token_counters: Arc<CacheCounters>,
}

/// The only writer of the serving snapshot.
pub struct Publisher {
    current: ArcSwap<Snapshot>,
    inputs: tokio::sync::Mutex<Inputs>,
    live: Live,
}

impl Publisher {
    /// The first snapshot, from the first load of the file (at start-up: resolving the
    /// providers' host names here blocks, as start-up may).
    pub fn new(mut file: FileInputs, feed: Arc<FeedStatus>) -> Publisher {
        let live = Live {
            consents: Arc::new(ArcSwap::from_pointee(ConsentStore::new())),
            consent_file: Arc::default(),
            journal: Arc::default(),
            feed,
            token_counters: Arc::default(),
        };
        if let Some(consents) = file.consents.take() {
            let _ = install_consents(&live, consents, true);
        }
        let inputs = Inputs {
            file: Arc::new(file),
            registry: None,
            jwks: None,
        };
        let snapshot = compile(&inputs, &live, None);
        Publisher {
            current: ArcSwap::from_pointee(snapshot),
            inputs: tokio::sync::Mutex::new(inputs),
            live,
        }
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The follower's status (process lifetime).
    pub fn feed(&self) -> &Arc<FeedStatus> {
        &self.live.feed
    }

    /// The consent store handle (process lifetime) that the feed updates.
    pub fn consents(&self) -> &ArcSwap<ConsentStore> {
        &self.live.consents
    }

    /// The consent file in force and its row 7 state.
    pub fn consent_file(&self) -> &ConsentFileStatus {
        &self.live.consent_file
    }

    /// Makes `journal` the one consent routes reserve their records in (once, at start).
    pub fn attach_journal(&self, journal: Journal) {
        if self.live.journal.set(journal).is_err() {
            tracing::warn!("a second audit journal was not attached");
        }
    }

    /// Holds the inputs as a compile under way does (tests of what must not wait for one).
    #[cfg(test)]
    pub(super) async fn hold_inputs(&self) -> impl Sized + '_ {
        self.inputs.lock().await
    }

    /// The file inputs in force, for a reload to reuse what did not change. Waits for a
    /// publication under way.
    pub async fn file_inputs(&self) -> Arc<FileInputs> {
        self.inputs.lock().await.file.clone()
    }

    /// Applies one input change and publishes the snapshot compiled from the result.
    /// Compiling resolves provider host names, so it runs on a blocking thread.
    pub async fn publish(&self, mut change: Change) -> Result<Published, PublishError> {
        let new_consent_file = match &mut change {
            Change::Consents(_) => None,
            Change::File(file) => file.consents.take(),
            Change::Registry(_) | Change::Jwks(_) => None,
        };
        if let Change::Consents(file) = change {
            return install_consents(&self.live, file, false);
        }
        let mut inputs = self.inputs.lock().await;
        let Some(next) = updated(&inputs, change)? else {
            return Ok(Published::Unchanged);
        };
        let (live, previous) = (self.live.clone(), self.current.load_full());
        let building = next.clone();
        let snapshot =
            tokio::task::spawn_blocking(move || compile(&building, &live, Some(&previous))).await;
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => {
                self.fail_closed(&next);
                return Err(e.into());
            }
        };
        if let Some(r) = &next.registry {
            self.live.feed.set_registry(r.clone());
        }
        if let Some(consents) = new_consent_file {
            // A new `[consents] snapshot` path: its file is in force with the snapshot
            // that names it.
            install_consents(&self.live, consents, true)?;
        }
        self.current.store(Arc::new(snapshot));
        *inputs = next;
        Ok(Published::Replaced)
    }

    /// A compile that failed must not leave a directory that may grant what the registry
    /// has withdrawn: recognise no one until the next publication.
    fn fail_closed(&self, next: &Inputs) {
        tracing::error!(
            "snapshot compile failed: refusing every participant until the next change"
        );
        let current = self.current.load_full();
        self.current.store(Arc::new(Snapshot {
            file: next.file.clone(),
            network: Arc::new(network::build(&FileBase::default(), None, None)),
            tokens: current.tokens.clone(),
            tokens_key: current.tokens_key.clone(),
            consents: self.live.consents.clone(),
            consent_file: self.live.consent_file.clone(),
            journal: self.live.journal.clone(),
        }));
    }
}

/// `inputs` with `change` applied; `None` when it changes nothing.
fn updated(inputs: &Inputs, change: Change) -> Result<Option<Inputs>, PublishError> {
    let mut next = inputs.clone();
    match change {
        Change::File(file) => next.file = Arc::from(file),
        // Published apart, without the inputs' lock (see `Publisher::publish`).
        Change::Consents(_) => return Ok(None),
        Change::Registry(registry) => next.registry = Some(registry),
        Change::Jwks(bytes) => {
            if !inputs.file.trust().is_some_and(|t| t.jwks) {
                return Err(PublishError::JwksNotWanted);
            }
            if inputs.jwks.as_deref() == Some(&bytes[..]) {
                return Ok(None);
            }
            if Jwks::from_json(&bytes)?.is_empty() {
                return Err(PublishError::NoKeys);
            }
            next.jwks = Some(Arc::from(bytes));
        }
    }
    Ok(Some(next))
}

/// Makes a loaded consent file the one in force: its store swapped in, its stamp
/// recorded, row 7 fresh again. Refused unless the file is the one in force (its path),
/// or `new_path` (start-up, a reload that changed the path). `Unchanged` when that very
/// file is in force already.
fn install_consents(
    live: &Live,
    file: ConsentFile,
    new_path: bool,
) -> Result<Published, PublishError> {
    let ConsentFile { stamp, store } = file;
    let path = stamp.path.clone();
    let same_file = |in_force: Option<&super::FileStamp>| match in_force {
        Some(f) if new_path || f.path == path => Ok(()),
        None if new_path => Ok(()),
        _ => Err(PublishError::ConsentsNotWanted),
    };
    let replaced = live.consent_file.replace(stamp, same_file, || {
        live.consents.store(store);
    })?;
    Ok(if replaced {
        Published::Replaced
    } else {
        Published::Unchanged
    })
}

/// The snapshot of `inputs`, reusing from `previous` the token verifier (and its cache)
/// when its settings and keys are unchanged, and the upstream pools of providers whose
/// URLs and settings are unchanged.
fn compile(inputs: &Inputs, live: &Live, previous: Option<&Snapshot>) -> Snapshot {
    let file = inputs.file.clone();
    let tokens_key = (file.token_settings.clone(), inputs.jwks());
    let tokens = match previous {
        Some(p) if p.tokens_key == tokens_key => p.tokens.clone(),
        _ => Arc::new(verifier(&tokens_key.0, &tokens_key.1, &live.token_counters)),
    };
    // The registry counts only in `[trust]` mode.
    let registry = file.trust().and(inputs.registry.as_deref());
    let network: Network = network::build(&file.base, registry, previous.map(|p| &*p.network));
    Snapshot {
        file,
        network: Arc::new(network),
        tokens,
        tokens_key,
        consents: live.consents.clone(),
        consent_file: live.consent_file.clone(),
        journal: live.journal.clone(),
    }
}

/// A verifier over a key set that was validated when it became an input; should it no
/// longer parse, no token verifies (fail closed).
fn verifier(settings: &TokenSettings, jwks: &[u8], counters: &Arc<CacheCounters>) -> TokenVerifier {
    let keys = Jwks::from_json(jwks).unwrap_or_else(|e| {
        tracing::error!(error = %e, "validated key set no longer parses: no token verifies");
        Jwks::none()
    });
    TokenVerifier::with_counters(settings.clone(), keys, counters.clone())
}
