// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Patched (exchange hub): the limits of one listening endpoint: how long a new connection
//! may take to complete its handshake (pre-TLS processing and TLS), and how many
//! connections the endpoint keeps open at once. Upstream, the handshake timeout was a
//! fixed 60 seconds and the number of connections unbounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The handshake timeout when none is configured (pingora's fixed value before).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Told when the listener closes a connection on its own account (for metrics).
pub trait ListenerObserver: Send + Sync {
    /// A connection was closed at accept: the endpoint had `max_connections` open.
    fn refused_over_capacity(&self) {}
    /// A connection was closed because its handshake did not complete in time.
    fn handshake_timed_out(&self) {}
}

/// The limits of one listening endpoint.
#[derive(Clone)]
pub struct ListenerLimits {
    /// From accept to a completed handshake; a connection still handshaking then is closed.
    pub handshake_timeout: Duration,
    /// Connections open at once (from accept to close); more are closed at accept.
    /// `None`: unbounded.
    pub max_connections: Option<usize>,
    /// Told about the connections the listener closes on its own account.
    pub observer: Option<Arc<dyn ListenerObserver>>,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: None,
            observer: None,
        }
    }
}

/// The open connections of one endpoint, shared by its accept loops.
#[derive(Clone, Default)]
pub(crate) struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    /// Counts a new connection in, unless `max` are open already.
    pub(crate) fn admit(&self, max: Option<usize>) -> Option<OpenConnection> {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|m| before >= m) {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(OpenConnection(self.0.clone()))
    }
}

/// One admitted connection, counted out when dropped (when the connection's task ends).
pub(crate) struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
