//! What can be done to a running [`Cluster`]: kill or restart a trust replica, kill or
//! restart a gateway, stop and start PostgreSQL, fail over to the standby, run SQL,
//! pause, kill, stop and restart Redis, see which pieces died, read a piece's log, and
//! stop everything.

use std::time::Duration;

use trust_store::pg_server::StopMode;

use super::postgres::DB;
use super::{Cluster, ClusterError};

/// How long a piece may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Cluster {
    /// SIGKILL to trust replica `i` (from 0), reaped at once.
    pub fn kill_trust(&mut self, i: usize) -> Result<u32, ClusterError> {
        let (_, piece) = self
            .trust
            .get_mut(i)
            .ok_or_else(|| ClusterError::NoSuchPiece(format!("trust replica {i}")))?;
        piece.kill(&mut self.reaper);
        self.reported.push(piece.name.clone());
        Ok(piece.pid)
    }

    /// Starts trust replica `i` again (after it died or was killed), on its port.
    pub fn restart_trust(&mut self, i: usize) -> Result<u32, ClusterError> {
        let (launch, piece) = self
            .trust
            .get_mut(i)
            .ok_or_else(|| ClusterError::NoSuchPiece(format!("trust replica {i}")))?;
        piece.kill(&mut self.reaper);
        let name = piece.name.clone();
        *piece = launch.start(
            &self.binaries.trust,
            &self.options.log_filter,
            &mut self.reaper,
            self.options.ready_timeout,
        )?;
        let pid = piece.pid;
        self.reported.retain(|n| *n != name);
        self.write_manifest()?;
        Ok(pid)
    }

    /// SIGKILL to gateway `i` (from 0), reaped at once.
    pub fn kill_gateway(&mut self, i: usize) -> Result<u32, ClusterError> {
        let (_, piece) = self
            .gateways
            .get_mut(i)
            .ok_or_else(|| ClusterError::NoSuchPiece(format!("gateway {i}")))?;
        piece.kill(&mut self.reaper);
        self.reported.push(piece.name.clone());
        Ok(piece.pid)
    }

    /// Restarts gateway `i` the way an operator does: SIGTERM (it drains, closes its
    /// journal and pushes its partial rollup minute), then the same configuration and
    /// journal again, waiting until the new process is ready with the consents and
    /// participants the old one had (its feed at least at the old one's version: `/readyz`
    /// alone answers before the first snapshot from the sidecar), a new rollup epoch.
    pub fn restart_gateway(&mut self, i: usize) -> Result<u32, ClusterError> {
        let (spec, piece) = self
            .gateways
            .get_mut(i)
            .ok_or_else(|| ClusterError::NoSuchPiece(format!("gateway {i}")))?;
        let head = spec.feed_version();
        piece.terminate(STOP_GRACE, &mut self.reaper);
        let name = piece.name.clone();
        *piece = spec.start(
            &self.binaries.gateway,
            &self.options.log_filter,
            &mut self.reaper,
        )?;
        spec.wait_ready(piece, head, self.options.ready_timeout)?;
        let pid = piece.pid;
        self.reported.retain(|n| *n != name);
        self.write_manifest()?;
        Ok(pid)
    }

    /// Stops PostgreSQL (the primary): `pg_ctl stop -m MODE`.
    pub fn stop_postgres(&mut self, mode: StopMode) -> Result<(), ClusterError> {
        self.db.stop_primary(mode, &mut self.reaper)?;
        self.write_manifest()
    }

    /// Starts the stopped PostgreSQL primary again (same port, same data).
    pub fn start_postgres(&mut self) -> Result<(), ClusterError> {
        self.db.start_primary(&mut self.reaper)?;
        self.write_manifest()
    }

    /// The primary dies (`pg_ctl stop -m immediate`) and the synchronous standby is
    /// promoted. The replicas' multi-host URL (`target_session_attrs=read-write`) leads
    /// them to it without a restart.
    pub fn fail_over(&mut self) -> Result<(), ClusterError> {
        self.db.fail_over(&mut self.reaper)?;
        self.write_manifest()
    }

    /// Runs SQL on the trust database of the current primary, as the superuser; its
    /// output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String, ClusterError> {
        Ok(self.db.primary.psql(DB, sql)?)
    }

    /// The Redis server's URL (`redis://127.0.0.1:PORT`, the same after a restart).
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// SIGSTOP to Redis: it accepts connections and answers nothing.
    pub fn pause_redis(&self) -> Result<(), ClusterError> {
        self.redis.pause()
    }

    /// SIGCONT to Redis.
    pub fn resume_redis(&self) -> Result<(), ClusterError> {
        self.redis.resume()
    }

    /// SIGKILL to Redis (a crash: up to a second of writes may be lost), reaped at once.
    pub fn kill_redis(&mut self) -> Result<(), ClusterError> {
        self.redis.kill(&mut self.reaper)?;
        self.write_manifest()
    }

    /// Stops Redis cleanly (SIGTERM: it flushes its append-only file), waits for it.
    pub fn stop_redis(&mut self) -> Result<(), ClusterError> {
        self.redis.stop(&mut self.reaper)?;
        self.write_manifest()
    }

    /// Starts Redis again on the same port and directory (stopping it first if it
    /// runs); it reloads its append-only file. Waits until it answers `PING`.
    pub fn restart_redis(&mut self) -> Result<u32, ClusterError> {
        self.redis.restart(&mut self.reaper)?;
        self.reported.retain(|n| n != "redis");
        self.write_manifest()?;
        Ok(self.redis.pid().unwrap_or(0))
    }

    /// The Redis server's log.
    pub fn redis_log(&self) -> String {
        self.redis.log()
    }

    /// Pieces that exited since the last call (and were not killed through this value):
    /// one line each, with the end of its log.
    pub fn check(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let pieces = self
            .trust
            .iter_mut()
            .map(|(_, p)| p)
            .chain(self.gateways.iter_mut().map(|(_, p)| p))
            .chain(self.banks.iter_mut());
        for p in pieces {
            if self.reported.contains(&p.name) {
                continue;
            }
            if let Some(status) = p.exited() {
                self.reported.push(p.name.clone());
                out.push(format!(
                    "{} (pid {}) exited: {status}; {}:\n{}",
                    p.name,
                    p.pid,
                    p.log.display(),
                    p.log_tail(10)
                ));
            }
        }
        if let Some(pid) = self.db.primary.pid() {
            if !super::procs::signal(pid, "0") && !self.reported.iter().any(|n| n == "postgres") {
                self.reported.push("postgres".into());
                out.push(format!("postgres (pid {pid}) is gone"));
            }
        }
        if self.redis.gone() && !self.reported.iter().any(|n| n == "redis") {
            self.reported.push("redis".into());
            out.push(format!(
                "redis (pid {}) is gone; {}/redis.log:\n{}",
                self.redis.pid().unwrap_or(0),
                self.redis.dir().display(),
                tail(&self.redis.log(), 10)
            ));
        }
        out
    }

    /// The whole log of piece `name` (`trust-1`, `gateway-2`, `bank-1`, …).
    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dirs.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The PostgreSQL server's log (the current primary).
    pub fn postgres_log(&self) -> String {
        self.db.primary.log()
    }

    /// Stops everything: gateways, replicas, banks (SIGTERM, SIGKILL after 10 s), Redis
    /// (SIGTERM), then PostgreSQL (`-m fast`), then the reaper.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let reaper = &mut self.reaper;
        for (_, p) in &mut self.gateways {
            p.terminate(STOP_GRACE, reaper);
        }
        for (_, p) in &mut self.trust {
            p.terminate(STOP_GRACE, reaper);
        }
        for p in &mut self.banks {
            p.terminate(STOP_GRACE, reaper);
        }
        // A paused server would not hear SIGTERM: `stop` also sends SIGCONT.
        if let Err(e) = self.redis.stop(reaper) {
            tracing::warn!(error = %e, "stopping Redis");
        }
        self.db.stop(reaper);
        reaper.finish();
        if let Some(rt) = self.seed_runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
