//! The harness's typed errors: one enum, each variant naming what failed and where.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the harness could not run or judged a system incorrect.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM file held no usable certificate or key.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A manifest (contract §9) could not be used.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The development PKI failed.
    #[error("development PKI: {0}")]
    Pki(#[from] sandbox::pki::PkiError),
    /// The development token issuer failed.
    #[error("token issuer: {0}")]
    Token(#[from] sandbox::tokens::TokenError),
    /// A consent snapshot could not be written.
    #[error("consent snapshot: {0}")]
    Snapshot(String),
    /// A connection to a system under test failed before the measurement began.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A child process could not be started or did not become ready.
    #[error("{name}: {reason}")]
    Process {
        /// The process.
        name: String,
        /// What happened.
        reason: String,
    },
    /// A system answered a correctness probe wrongly.
    #[error("{system} answered incorrectly: {reason}")]
    Check {
        /// The system.
        system: String,
        /// The wrong answer.
        reason: String,
    },
    /// The requested plan or option cannot be run.
    #[error("invalid plan: {0}")]
    Plan(String),
    /// The report could not be produced.
    #[error("report: {0}")]
    Report(String),
    /// The trust sidecar answered something unexpected, or its storage failed.
    #[error("trust sidecar: {0}")]
    Trust(String),
    /// JSON (de)serialisation failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The harness's result type.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Maps an I/O error to [`HarnessError::Io`] naming `path`.
pub fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |source| HarnessError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps an I/O error to [`HarnessError::Os`] naming what was attempted.
pub fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Os { what, source }
}
