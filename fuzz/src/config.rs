//! The configuration loader (`gateway` config: strict TOML parse, then compile against
//! the files it names), through `gateway::server::check` on a file, as `gateway check`
//! and a start run it.
//!
//! Input: the configuration text. It is checked in a directory laid out like the example
//! configuration's (a development PKI under `pki/`, `jwks.json`, `consents.jsonl`), so
//! mutations of a working file get past the file reads into the compile steps.
//!
//! Confinement: the loader reads every file the configuration names. A text that parses
//! and names an absolute path or one with `..` is skipped, so the fuzzer cannot point the
//! loader at `/dev/zero` or a terminal (a hang or an out-of-memory that says nothing about
//! the parser). What must hold: no panic, and a configuration that checks has a summary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gateway::config::FileConfig;
use policy::Bin;
use sandbox::pki::{DevPki, PkiSpec};

/// One line of `consents.jsonl`: a valid contract §5 record.
pub const CONSENT_LINE: &str = r#"{"id":"c-1","api_user":"100140000001","customer":"900101300123","providers":["990340000011"],"permissions":["accounts","balances"],"accounts":null,"purpose":"PFM","created_at":"2026-11-01T10:00:00Z","expires_at":"2027-02-01T10:00:00Z","status":"authorised"}"#;

/// Lays out the files the example configuration names in `dir`.
///
/// # Panics
///
/// At start-up, when the development PKI or the files cannot be written.
pub fn lay_out(dir: &Path) {
    let bin = |s: &str| match Bin::parse(s) {
        Ok(b) => b,
        Err(e) => panic!("{s}: {e}"),
    };
    let spec = PkiSpec::new(
        vec![bin("100140000001"), bin("100140000002")],
        vec![bin("990340000011")],
    );
    if let Err(e) = DevPki::generate(&dir.join("pki"), &spec) {
        panic!("cannot generate the development PKI: {e}");
    }
    crate::scratch::write(
        &dir.join("jwks.json"),
        crate::token::issuer().jwks_json().as_bytes(),
    );
    crate::scratch::write(
        &dir.join("consents.jsonl"),
        format!("{CONSENT_LINE}\n").as_bytes(),
    );
}

fn workspace() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::scratch::dir("config");
        lay_out(&dir);
        dir
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = toml::from_str::<FileConfig>(text) {
        if !confined(&cfg) {
            return;
        }
    }
    let path = workspace().join("hub.toml");
    crate::scratch::write(&path, data);
    if let Ok(summary) = gateway::server::check(&path) {
        assert!(
            !summary.is_empty(),
            "a configuration that checks has no summary"
        );
    }
}

/// Whether every string in the configuration is a relative path without `..` (or not a
/// path at all): only then do its reads stay inside the workspace.
fn confined(cfg: &FileConfig) -> bool {
    match toml::Value::try_from(cfg) {
        Ok(v) => strings_confined(&v),
        Err(_) => false,
    }
}

fn strings_confined(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => !s.starts_with('/') && !s.contains(".."),
        toml::Value::Array(a) => a.iter().all(strings_confined),
        toml::Value::Table(t) => t.values().all(strings_confined),
        _ => true,
    }
}
