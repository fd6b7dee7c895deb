//! Child processes of the runner (bank, hub, HAProxy, nginx): each started in its own
//! process group so that every process it forks is found, measured and stopped with it;
//! CPU time (utime + stime of every process in the group, from `/proc/PID/stat`) and
//! peak RSS (`VmHWM` summed over the group); cleanup on drop, on panic and on Ctrl-C.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::{os, HarnessError, Result};

/// Process groups still running, with the signal that stops each (for Ctrl-C / panic).
static LIVE: Mutex<Vec<(i32, Signal)>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(i32, Signal)>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops every registered process group at once (SIGKILL after a short grace).
pub fn cleanup_all() {
    let groups: Vec<(i32, Signal)> = live().drain(..).collect();
    for (pgid, sig) in &groups {
        let _ = killpg(Pid::from_raw(*pgid), *sig);
    }
    std::thread::sleep(Duration::from_millis(300));
    for (pgid, _) in &groups {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
}

/// Installs a panic hook and a Ctrl-C / SIGTERM watcher that stop every child first.
pub fn install_cleanup_handlers() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            cleanup_all();
            previous(info);
        }));
        let _ = std::thread::Builder::new()
            .name("signal-watch".into())
            .spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    let Ok(mut term) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    eprintln!("\ninterrupted: stopping child processes");
                    cleanup_all();
                    std::process::exit(130);
                });
            });
    });
}

/// Registers a process group this process did not spawn (e.g. a PostgreSQL postmaster,
/// a session leader) so that Ctrl-C, SIGTERM and a panic stop it too (`stop`, then
/// SIGKILL); [`forget_group`] once it is stopped otherwise.
pub fn register_group(pgid: i32, stop: Signal) {
    live().push((pgid, stop));
}

/// Removes a group registered with [`register_group`].
pub fn forget_group(pgid: i32) {
    live().retain(|(p, _)| *p != pgid);
}

/// CPU time (user + system) of process `pid` and of its live children (e.g. a
/// PostgreSQL postmaster and its backends, each of which is its own session leader).
pub fn tree_cpu(pid: i32) -> Duration {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = dir
        .flatten()
        .filter_map(|e| {
            let text = fs::read_to_string(e.path().join("stat")).ok()?;
            let own: i32 = e.file_name().to_str()?.parse().ok()?;
            let rest = &text[text.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ppid: i32 = f.get(1)?.parse().ok()?;
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            (own == pid || ppid == pid).then_some(utime + stime)
        })
        .sum();
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second())
}

/// The process group of `pid`, from `/proc/PID/stat`.
pub fn pgrp_of(pid: u32) -> Option<i32> {
    stat_of(&Path::new("/proc").join(pid.to_string())).map(|(g, _)| g)
}

/// A running child process group.
pub struct Proc {
    name: String,
    child: Child,
    stop: Signal,
}

impl Proc {
    /// Spawns `cmd` as the leader of a new process group; `stop` ends it gracefully.
    pub fn spawn(name: &str, cmd: &mut Command, stop: Signal) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|e| HarnessError::Process {
            name: name.to_string(),
            reason: format!("cannot start {:?}: {e}", cmd.get_program()),
        })?;
        let pgid = i32::try_from(child.id()).map_err(|_| HarnessError::Process {
            name: name.into(),
            reason: "pid out of range".into(),
        })?;
        live().push((pgid, stop));
        Ok(Proc {
            name: name.to_string(),
            child,
            stop,
        })
    }

    /// The leader's pid (= the process group id).
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child handle (e.g. to read a piped stdout).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails if the leader has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::Process {
                name: self.name.clone(),
                reason: format!("exited: {status}"),
            }),
            Err(e) => Err(HarnessError::Process {
                name: self.name.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// CPU time of every process of the group so far.
    pub fn cpu(&self) -> Result<Duration> {
        group_cpu(self.pid())
    }

    /// Sum of the peak RSS of the group's processes, in bytes.
    pub fn peak_rss(&self) -> u64 {
        group_peak_rss(self.pid())
    }

    /// Sends SIGKILL to the group (as `kill -9` would: no shutdown; the kernel closes its
    /// sockets as the processes exit) without waiting; [`Proc::kill`] reaps it.
    pub fn sigkill(&self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
    }

    /// Kills the group at once (SIGKILL, as `kill -9` would: no shutdown, the kernel
    /// closes its sockets) and reaps the leader.
    pub fn kill(&mut self) {
        let pgid = self.pid();
        live().retain(|(p, _)| *p != pgid);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Stops the group: the graceful signal, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        let pgid = self.pid();
        live().retain(|(p, _)| *p != pgid);
        if !matches!(self.child.try_wait(), Ok(None)) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            return;
        }
        let _ = killpg(Pid::from_raw(pgid), self.stop);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "   {} took {:.1} s to stop",
                self.name,
                started.elapsed().as_secs_f64()
            );
        }
        // Workers of the group may outlive their leader for a moment.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// (pgrp, utime + stime in ticks) of one `/proc/PID/stat`.
fn stat_of(pid_dir: &Path) -> Option<(i32, u64)> {
    let text = fs::read_to_string(pid_dir.join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let pgrp = f.get(2)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((pgrp, utime + stime))
}

fn group_members(pgid: i32) -> Vec<std::path::PathBuf> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path())
        .filter(|p| stat_of(p).is_some_and(|(g, _)| g == pgid))
        .collect()
}

/// CPU time (user + system) of every live process whose process group is `pgid`.
pub fn group_cpu(pgid: i32) -> Result<Duration> {
    let ticks: u64 = group_members(pgid)
        .iter()
        .filter_map(|p| stat_of(p))
        .map(|(_, t)| t)
        .sum();
    if ticks == 0 && !Path::new(&format!("/proc/{pgid}")).exists() {
        return Err(HarnessError::Process {
            name: format!("process group {pgid}"),
            reason: "gone".into(),
        });
    }
    Ok(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second() as f64,
    ))
}

/// CPU time of this process (every thread).
pub fn self_cpu() -> Duration {
    stat_of(Path::new("/proc/self")).map_or(Duration::ZERO, |(_, t)| {
        Duration::from_secs_f64(t as f64 / ticks_per_second() as f64)
    })
}

fn vm_hwm(pid_dir: &Path) -> u64 {
    fs::read_to_string(pid_dir.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Sum over the group's processes of each one's peak resident set size, in bytes.
pub fn group_peak_rss(pgid: i32) -> u64 {
    group_members(pgid).iter().map(|p| vm_hwm(p)).sum()
}

/// Peak RSS of this process, in bytes.
pub fn self_peak_rss() -> u64 {
    vm_hwm(Path::new("/proc/self"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(os("binding an ephemeral port"))?;
    Ok(l.local_addr().map_err(os("local address"))?.port())
}

/// Waits until `addr` accepts TCP connections, failing if `proc` exits first.
pub fn wait_listening(addr: SocketAddr, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        proc.ensure_running()?;
        if Instant::now() > deadline {
            return Err(HarnessError::Process {
                name: proc.name().to_string(),
                reason: format!("not listening on {addr} after {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `GET path` over plain HTTP/1.1 on loopback (the hub's admin listener): (status, body).
/// Reads by `Content-Length`: the server may keep the connection open whatever we ask.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(os(format!("connecting to {addr}")))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(os("read timeout"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(os("admin request"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            });
            if let Some(len) = len {
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return Ok((status, body));
                }
            }
            let n = s.read(&mut chunk).map_err(os("admin response"))?;
            if n == 0 {
                let body = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
                return Ok((status, body));
            }
            buf.extend_from_slice(&chunk[..n]);
            continue;
        }
        let n = s.read(&mut chunk).map_err(os("admin response"))?;
        if n == 0 {
            return Err(HarnessError::Process {
                name: format!("{addr}"),
                reason: "closed before the response head".into(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
