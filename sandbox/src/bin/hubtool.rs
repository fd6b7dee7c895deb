//! `hubtool`: development tooling for a deployment made with `scripts/pki`
//! (docs/deploy.md). `hubtool token` mints a test access token the hub accepts.
//! Never linked into the gateway.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use consent_cache::Bin;
use sandbox::mint::{hub_tokens, mint, read, MintError, TokenRequest};

#[derive(Parser)]
#[command(
    name = "hubtool",
    version,
    about = "Development tooling for a hub deployed with scripts/pki (docs/deploy.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints an access token (contract §4) the hub accepts, for testing a deployment.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The hub's configuration: `iss`, `aud` and the JWKS come from its `[tokens]`.
    #[arg(long)]
    hub_config: PathBuf,
    /// The signing key (PKCS#8 PEM, e.g. conf/pki/token-k1-key.pem); its `kid` is the one
    /// the hub's JWKS gives its public key.
    #[arg(long)]
    key: PathBuf,
    /// The API user's certificate (PEM): the token is bound to it (`cnf.x5t#S256`).
    #[arg(long)]
    cert: PathBuf,
    /// `client_id`: the API user's BIN, the participant that certificate is registered to.
    #[arg(long)]
    client_id: String,
    /// `consent_id`.
    #[arg(long)]
    consent: String,
    /// `scope`: space-separated permissions.
    #[arg(long, default_value = "accounts balances transactions")]
    scope: String,
    /// Seconds until `exp` (at most a day).
    #[arg(long, default_value_t = 300)]
    lifetime_secs: i64,
    /// Overrides `[tokens] issuer` (e.g. to see the hub refuse another issuer).
    #[arg(long)]
    issuer: Option<String>,
    /// Overrides `[tokens] audience`.
    #[arg(long)]
    audience: Option<String>,
}

fn main() -> ExitCode {
    let Command::Token(args) = Cli::parse().command;
    match token(args) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hubtool token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(a: TokenArgs) -> Result<String, String> {
    let hub = hub_tokens(&a.hub_config).map_err(|e| e.to_string())?;
    let client_id = Bin::parse(&a.client_id).map_err(|e| format!("--client-id: {e}"))?;
    let cert_pem = std::fs::read(&a.cert).map_err(|e| format!("{}: {e}", a.cert.display()))?;
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let req = TokenRequest {
        key_pem: read(&a.key).map_err(|e| e.to_string())?,
        jwks_json: read(&hub.jwks).map_err(|e| e.to_string())?,
        issuer: a.issuer.unwrap_or(hub.issuer),
        audience: a.audience.unwrap_or(hub.audience),
        client_id,
        cert_pem,
        consent_id: a.consent,
        scope: a.scope,
        lifetime_secs: a.lifetime_secs,
        now_unix: i64::try_from(now_unix).map_err(|e| e.to_string())?,
    };
    mint(&req).map_err(|e: MintError| e.to_string())
}
