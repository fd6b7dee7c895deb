//! The harnesses' one release build: `cargo build --release --workspace --bins`, the same
//! invocation as `scripts/build`, so a harness run after it (CI, the commands in
//! `docs/performance.md`) rebuilds nothing and every harness measures the same artefacts.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{HarnessError, Result};

/// Builds every release binary of the workspace into `target` and returns the paths of
/// `names` there. When cargo fails or is missing, existing binaries are used (with a
/// warning) if all of them are present.
pub fn release_binaries(target: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bins: Vec<PathBuf> = names
        .iter()
        .map(|n| target.join("release").join(n))
        .collect();
    eprintln!("building: cargo build --release --workspace --bins");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--workspace", "--bins"])
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", target)
        .status();
    let have = bins.iter().all(|b| b.is_file());
    let reason = match status {
        Ok(s) if s.success() => return Ok(bins),
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    if have {
        eprintln!("cargo build failed ({reason}); using the existing binaries");
        return Ok(bins);
    }
    Err(HarnessError::Process {
        name: "cargo build --release --workspace --bins".into(),
        reason,
    })
}
