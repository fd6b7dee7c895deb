//! The `trust` binary: runs the trust sidecar (`trust serve …`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trust::keys::Alg;
use trust::Config;

#[derive(Parser)]
#[command(
    name = "trust",
    about = "The trust sidecar: consent registry, authorization server, participant registry, change feed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the API over HTTPS until SIGINT or SIGTERM.
    Serve(Serve),
}

#[derive(Parser)]
struct Serve {
    /// Listener address (port 0: an ephemeral port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// SQLite database file (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Server certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Platform CA bundle client certificates must chain to (repeatable).
    #[arg(long = "client-ca", required = true)]
    client_ca: Vec<PathBuf>,
    /// Operator client certificate (PEM; repeatable).
    #[arg(long = "operator-cert")]
    operator_cert: Vec<PathBuf>,
    /// Operator certificate thumbprint, x5t#S256 (repeatable).
    #[arg(long = "operator-thumbprint")]
    operator_thumbprint: Vec<String>,
    /// Hub (gateway) client certificate allowed on the snapshot and feed (repeatable).
    #[arg(long = "hub-cert")]
    hub_cert: Vec<PathBuf>,
    /// Hub certificate thumbprint, x5t#S256 (repeatable).
    #[arg(long = "hub-thumbprint")]
    hub_thumbprint: Vec<String>,
    /// Public base URL (default https://LISTEN).
    #[arg(long)]
    public_url: Option<String>,
    /// Token issuer `iss` (default: the public URL).
    #[arg(long)]
    issuer: Option<String>,
    /// Token audience `aud` (the hub's configured audience).
    #[arg(long, default_value = "open-api-hub")]
    audience: String,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    token_lifetime_secs: i64,
    /// Algorithm of generated signing keys: ES256 (generated) or PS256 (imported only).
    #[arg(long, default_value = "ES256", value_parser = parse_alg)]
    token_alg: Alg,
    /// PKCS#8 PEM signing key to import (ES256 or PS256; repeatable).
    #[arg(long = "signing-key")]
    signing_key: Vec<PathBuf>,
    /// Rotate the signing key after this many seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    key_rotate_after_secs: i64,
    /// Publish the next key this many seconds before it signs.
    #[arg(long, default_value_t = 3600)]
    key_publish_lead_secs: i64,
    /// Development notifier outbox: one-time codes appended as JSON lines.
    #[arg(long)]
    otp_outbox: Option<PathBuf>,
    /// Enables development customer sessions (POST /v1/customer/sessions).
    #[arg(long)]
    dev_customer_sessions: bool,
    /// Feed heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Housekeeping (expiry, rotation) interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    housekeeping_ms: u64,
    /// Changes kept in the feed history.
    #[arg(long, default_value_t = 1_000_000)]
    feed_retention: u64,
    /// Also write the start-up line (`{"trust_url":…}`) to this file once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn parse_alg(s: &str) -> Result<Alg, String> {
    Alg::parse(s).ok_or_else(|| format!("{s}: expected ES256 or PS256"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trust: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(a: Serve) -> ExitCode {
    let mut config = Config::new(a.listen, a.db, a.cert, a.key, PathBuf::new());
    config.client_ca = a.client_ca;
    config.operator_certs = a.operator_cert;
    config.operator_thumbprints = a.operator_thumbprint;
    config.hub_certs = a.hub_cert;
    config.hub_thumbprints = a.hub_thumbprint;
    config.public_url = a.public_url;
    config.issuer = a.issuer;
    config.audience = a.audience;
    config.token_lifetime_secs = a.token_lifetime_secs;
    config.token_alg = a.token_alg;
    config.signing_keys = a.signing_key;
    config.key_rotate_after_secs = a.key_rotate_after_secs;
    config.key_publish_lead_secs = a.key_publish_lead_secs;
    config.otp_outbox = a.otp_outbox;
    config.dev_customer_sessions = a.dev_customer_sessions;
    config.heartbeat = Duration::from_millis(a.heartbeat_ms.max(10));
    config.housekeeping = Duration::from_millis(a.housekeeping_ms.max(10));
    config.feed_retention = a.feed_retention;
    let running = match trust::start(config, None).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trust: {e}");
            return ExitCode::from(2);
        }
    };
    let line =
        serde_json::json!({ "trust_url": running.url(), "addr": running.addr().to_string() })
            .to_string();
    println!("{line}");
    if let Some(path) = a.ready_file {
        if let Err(e) = std::fs::write(&path, format!("{line}\n")) {
            eprintln!("trust: {}: {e}", path.display());
            running.stop().await;
            return ExitCode::FAILURE;
        }
    }
    wait_for_signal().await;
    tracing::info!("stopping");
    running.stop().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
