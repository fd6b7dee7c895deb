//! Each worker thread's own connection to the store. The hub runs one single-threaded
//! runtime per worker thread; a connection made on a worker's runtime is driven on that
//! thread, so a call neither wakes another thread nor waits for one (the store's shared
//! connection, on a thread of its own, costs a hand-over each way per call). A thread's
//! connection is made in the background on its first call, which meanwhile uses the shared
//! one (a refused connection is retried by the manager itself until Redis is back; any
//! other failed attempt is retried at most once a second).

use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::runtime::{Handle, RuntimeFlavor};

/// The shortest pause between two attempts of one thread.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One thread's connection.
#[derive(Clone)]
enum Slot {
    /// Being made.
    Connecting,
    /// The last attempt failed at this instant.
    Failed(Instant),
    /// Ready.
    Ready(ConnectionManager),
}

/// The worker threads' connections to one store.
pub(super) struct ThreadConnections {
    client: Client,
    config: ConnectionManagerConfig,
    script: &'static str,
    slots: Arc<DashMap<ThreadId, Slot>>,
}

impl ThreadConnections {
    /// Connections made with `client` and `config`, the script loaded on each.
    pub(super) fn new(
        client: Client,
        config: ConnectionManagerConfig,
        script: &'static str,
    ) -> ThreadConnections {
        ThreadConnections {
            client,
            config,
            script,
            slots: Arc::new(DashMap::new()),
        }
    }

    /// This thread's connection, if it has one; otherwise starts making it (on a
    /// single-threaded runtime only: elsewhere the connection would not stay on this
    /// thread) and answers `None`.
    pub(super) fn current(&self) -> Option<ConnectionManager> {
        let id = std::thread::current().id();
        let retry = match self.slots.get(&id).as_deref() {
            Some(Slot::Ready(c)) => return Some(c.clone()),
            Some(Slot::Connecting) => return None,
            Some(Slot::Failed(at)) => at.elapsed() >= RETRY_AFTER,
            None => true,
        };
        let handle = Handle::try_current().ok()?;
        if retry && handle.runtime_flavor() == RuntimeFlavor::CurrentThread {
            self.slots.insert(id, Slot::Connecting);
            handle.spawn(connect(
                self.client.clone(),
                self.config.clone(),
                self.script,
                id,
                self.slots.clone(),
            ));
        }
        None
    }
}

/// Makes `id`'s connection and records the outcome.
async fn connect(
    client: Client,
    config: ConnectionManagerConfig,
    script: &'static str,
    id: ThreadId,
    slots: Arc<DashMap<ThreadId, Slot>>,
) {
    let slot = match ConnectionManager::new_with_config(client, config).await {
        Ok(mut manager) => {
            // Best effort: a call that finds no script loads it itself.
            let _ = Script::new(script).load_async(&mut manager).await;
            Slot::Ready(manager)
        }
        Err(_) => Slot::Failed(Instant::now()),
    };
    slots.insert(id, slot);
}
