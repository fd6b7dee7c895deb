//! The cluster's Redis: the store of the gateways' shared rate limits and monthly quotas
//! (`[limits.store]`, issue 12). One `redis-server` ([`sandbox::redis::RedisServer`],
//! Debian's binary or `$REDIS_SERVER`) on a free 127.0.0.1 port, with its configuration,
//! log and append-only files in `DIR/redis` — emptied at each start, so a new cluster
//! starts with no counts. Persistence: the append-only file fsynced every second
//! (`appendonly yes`, `appendfsync everysec`), no RDB snapshots (`save ""`): monthly
//! counts survive a restart, at most about a second of counts is lost if the machine
//! crashes. The reaper kills it should the cluster process die without stopping it.

use std::path::{Path, PathBuf};

use sandbox::redis::RedisServer;

use super::procs::Reaper;
use super::ClusterError;

/// The running (or stopped) Redis server of the cluster.
pub(crate) struct Redis {
    server: RedisServer,
    /// Its pid as the reaper knows it (to forget it once reaped).
    watched: Option<u32>,
}

impl Redis {
    /// Starts it with its files in `dir` (removed first); tells the reaper.
    pub fn start(dir: &Path, reaper: &mut Reaper) -> Result<Redis, ClusterError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(ClusterError::io(dir))?;
        }
        let server = RedisServer::start(dir)?;
        let mut redis = Redis {
            server,
            watched: None,
        };
        redis.watch(reaper);
        Ok(redis)
    }

    fn watch(&mut self, reaper: &mut Reaper) {
        self.watched = self.server.pid();
        if let Some(pid) = self.watched {
            reaper.watch(pid);
        }
    }

    fn forget(&mut self, reaper: &mut Reaper) {
        if let Some(pid) = self.watched.take() {
            reaper.forget(pid);
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The directory of its files.
    pub fn dir(&self) -> PathBuf {
        self.server.dir().to_path_buf()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// SIGSTOP: it accepts connections and answers nothing.
    pub fn pause(&self) -> Result<(), ClusterError> {
        Ok(self.server.pause()?)
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<(), ClusterError> {
        Ok(self.server.resume()?)
    }

    /// SIGKILL, as a crash would (the last second of writes may be lost); reaped.
    pub fn kill(&mut self, reaper: &mut Reaper) -> Result<(), ClusterError> {
        self.server.kill()?;
        self.forget(reaper);
        Ok(())
    }

    /// SIGTERM: it flushes its append-only file and exits; reaped.
    pub fn stop(&mut self, reaper: &mut Reaper) -> Result<(), ClusterError> {
        self.server.stop()?;
        self.forget(reaper);
        Ok(())
    }

    /// Starts it again on the same port and directory (stopping it first if it runs):
    /// it reloads its append-only file; waits until it answers `PING`.
    pub fn restart(&mut self, reaper: &mut Reaper) -> Result<(), ClusterError> {
        self.server.restart()?;
        self.forget(reaper);
        self.watch(reaper);
        Ok(())
    }

    /// Whether its process has exited on its own (a zombie not reaped yet counts).
    pub fn gone(&self) -> bool {
        let Some(pid) = self.server.pid() else {
            return false;
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // `pid (comm) STATE …`; the command name may hold spaces and parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => true,
        }
    }
}
