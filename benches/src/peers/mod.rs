//! The peers the hub is compared with: HAProxy 2.6 doing the equivalent policy job and
//! nginx as a plain TLS reverse proxy. Finds their binaries and installs the Debian
//! packages when they are missing.

pub mod haproxy;
pub mod nginx;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};

/// Where the peers' binaries are.
#[derive(Debug, Clone)]
pub struct PeerBinaries {
    /// `haproxy`.
    pub haproxy: PathBuf,
    /// `nginx`.
    pub nginx: PathBuf,
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let run = |args: &[&str]| -> Result<bool> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("-n").arg("apt-get");
            c
        };
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null());
        let status = cmd.status().map_err(|e| HarnessError::Process {
            name: "apt-get".into(),
            reason: e.to_string(),
        })?;
        Ok(status.success())
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    eprintln!("installing {} with apt-get", packages.join(" "));
    if run(&install)? {
        return Ok(());
    }
    // A fresh machine has no package lists yet.
    if run(&["update", "-qq"])? && run(&install)? {
        return Ok(());
    }
    Err(HarnessError::Process {
        name: "apt-get".into(),
        reason: format!("could not install {}", packages.join(" ")),
    })
}

/// Finds HAProxy and nginx, installing the missing ones unless `install` is false.
pub fn ensure(install: bool) -> Result<PeerBinaries> {
    let mut missing = Vec::new();
    if find("haproxy").is_none() {
        missing.push("haproxy");
    }
    if find("nginx").is_none() {
        missing.push("nginx");
    }
    if !missing.is_empty() {
        if !install {
            return Err(HarnessError::Process {
                name: missing.join(", "),
                reason: "not installed (and --no-install given)".into(),
            });
        }
        apt_install(&missing)?;
    }
    let haproxy = find("haproxy").ok_or_else(|| HarnessError::Process {
        name: "haproxy".into(),
        reason: "not found after installation".into(),
    })?;
    let nginx = find("nginx").ok_or_else(|| HarnessError::Process {
        name: "nginx".into(),
        reason: "not found after installation".into(),
    })?;
    check_haproxy_version(&haproxy)?;
    Ok(PeerBinaries { haproxy, nginx })
}

/// `jwt_verify` exists from HAProxy 2.5 on.
fn check_haproxy_version(bin: &Path) -> Result<()> {
    let out = Command::new(bin)
        .arg("-v")
        .output()
        .map_err(|e| HarnessError::Process {
            name: "haproxy".into(),
            reason: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 5) {
        return Err(HarnessError::Process {
            name: "haproxy".into(),
            reason: format!("version {version} has no jwt_verify (2.5 or later needed)"),
        });
    }
    Ok(())
}

/// Version line of a peer, for the report.
pub fn version_of(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

/// Writes `cert` then `key` into one PEM file (HAProxy's `crt` format).
pub fn write_bundle(cert_pem: &str, key_pem: &str, path: &Path) -> Result<()> {
    let mut s = cert_pem.to_string();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(key_pem);
    write_private(path, s.as_bytes())
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).map_err(crate::error::io_at(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(crate::error::io_at(path))
}
