//! `gateway demo`: one command that creates a development PKI and token issuer, starts
//! sandbox banks, writes the hub's configuration, consents and the contract §9 manifest,
//! prints ready-to-paste `curl` commands, and runs the gateway in the same process.
//! Everything generated is development material and lives under the target directory.

use serde_json::json;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use consent_cache::{Bin, ConsentStatus, Permission};
use sandbox::bank::{BankConfig, BankHandle};
use sandbox::pki::{DevPki, PkiSpec};
use sandbox::tokens::{AccessClaims, DevAlg, DevIssuer};

/// `gateway demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Port of the hub's mTLS API listener (127.0.0.1).
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
    /// Port of the admin listener (127.0.0.1).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Where to write the manifest (default: <target>/demo/manifest.json).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Directory for generated files (default: <target>/demo).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Customers per sandbox bank.
    #[arg(long, default_value_t = 200)]
    pub customers: usize,
    /// Worker threads of the gateway (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Generate everything and print the manifest path, but do not start anything.
    #[arg(long)]
    pub prepare_only: bool,
    /// Start the sandbox banks and write the configuration, but not the hub (run it as
    /// its own process with `gateway run --config <dir>/hub.toml`, e.g. to measure it).
    #[arg(long)]
    pub banks_only: bool,
    /// Replace the default rate limits by this many requests per second (burst twice
    /// that) for every limit kind, e.g. for load tests.
    #[arg(long)]
    pub rate_limit: Option<u32>,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            port: 8443,
            admin_port: 9901,
            manifest: None,
            dir: None,
            customers: 200,
            threads: None,
            prepare_only: false,
            banks_only: false,
            rate_limit: None,
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing a generated file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The PKI could not be generated.
    #[error("pki: {0}")]
    Pki(#[from] sandbox::pki::PkiError),
    /// The issuer could not be generated.
    #[error("token issuer: {0}")]
    Token(#[from] sandbox::tokens::TokenError),
    /// A sandbox bank could not start.
    #[error("sandbox bank: {0}")]
    Bank(String),
    /// The gateway failed.
    #[error("{0}")]
    Run(#[from] crate::server::RunError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The target directory this binary was built into (`…/target`), else `./target`.
fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Fixed demo identities.
pub const API_USERS: [(&str, &str, &str); 3] = [
    ("100140000001", "Qazaq Fintech LLP", "active"),
    ("100140000002", "Steppe Pay JSC", "active"),
    ("100140000003", "Suspended Lending LLP", "suspended"),
];
/// Fixed demo providers.
pub const PROVIDERS: [(&str, &str); 2] = [
    ("990340000011", "Altyn Sandbox Bank"),
    ("990340000022", "Dala Sandbox Bank"),
];
/// The demo's token issuer and audience.
pub const ISSUER: &str = "https://trust.hub.local.test";
/// The hub's audience.
pub const AUDIENCE: &str = "https://hub.local.test";

fn bin(s: &str) -> Bin {
    // Start-up only, over the constants above (a unit test checks them).
    #[allow(clippy::expect_used)]
    Bin::parse(s).expect("demo BIN constants are valid")
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

fn abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Everything the demo generated, for the manifest, tests and benches.
pub struct Prepared {
    /// The hub configuration file.
    pub config: PathBuf,
    /// The manifest file.
    pub manifest: PathBuf,
    /// The manifest's JSON.
    pub manifest_json: serde_json::Value,
    /// Running sandbox banks (keep alive while the hub runs).
    pub banks: Vec<BankHandle>,
    /// The runtime that drives the banks.
    pub runtime: tokio::runtime::Runtime,
    /// The development PKI (for tests that need more identities).
    pub pki: DevPki,
    /// The development token issuer (for tests that mint their own tokens).
    pub issuer: DevIssuer,
    /// The directory everything was written to.
    pub dir: PathBuf,
}

/// Generates PKI, issuer, banks, consents, config and manifest; starts the banks.
pub fn prepare(args: &DemoArgs) -> Result<Prepared, DemoError> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| target_dir().join("demo"));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let dir = abs(&dir);
    let manifest_path = args
        .manifest
        .clone()
        .unwrap_or_else(|| dir.join("manifest.json"));

    let users: Vec<Bin> = API_USERS.iter().map(|u| bin(u.0)).collect();
    let providers: Vec<Bin> = PROVIDERS.iter().map(|p| bin(p.0)).collect();
    let pki = DevPki::generate(
        &dir.join("pki"),
        &PkiSpec {
            // The trust sidecar's operator API (participant registry) needs one.
            operator: true,
            ..PkiSpec::new(users.clone(), providers.clone())
        },
    )?;
    let issuer = DevIssuer::generate(DevAlg::Es256, "demo-es256-1", ISSUER)?;
    let (issuer_key, jwks) = issuer.write_files(&dir)?;

    // Sandbox banks on ephemeral loopback ports.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sandbox-bank")
        .enable_all()
        .build()
        .map_err(io(&dir))?;
    let mut banks = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        let id = pki
            .provider_server(*p)
            .ok_or_else(|| DemoError::Bank("no certificate for provider".into()))?;
        let cfg = BankConfig {
            bin: *p,
            name: PROVIDERS[i].1.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            server_cert_chain_pem: id.chain_pem().into_bytes(),
            server_key_pem: id.key_pem.clone().into_bytes(),
            client_ca_pem: pki.ca_cert_pem().as_bytes().to_vec(),
            customers: args.customers,
            seed: 0x5EED_0000 + i as u64,
            allowed_client_thumbprints: Some(vec![pki.hub_client().thumbprint]),
        };
        let h = runtime
            .block_on(sandbox::bank::start(cfg))
            .map_err(|e| DemoError::Bank(e.to_string()))?;
        banks.push(h);
    }

    // Consents in every status over real sandbox customers and accounts.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let rfc3339 = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    const ALL: [Permission; 3] = [
        Permission::Accounts,
        Permission::Balances,
        Permission::Transactions,
    ];
    struct Plan {
        id: &'static str,
        user: usize,
        bank: usize,
        customer: usize,
        perms: &'static [Permission],
        restrict: bool,
        status: ConsentStatus,
        expires_in: Option<i64>,
    }
    let plans = [
        Plan {
            id: "c-authorised-full",
            user: 0,
            bank: 0,
            customer: 0,
            perms: &ALL,
            restrict: false,
            status: ConsentStatus::Authorised,
            expires_in: Some(90 * 86400),
        },
        Plan {
            id: "c-authorised-restricted",
            user: 0,
            bank: 0,
            customer: 1,
            perms: &ALL,
            restrict: true,
            status: ConsentStatus::Authorised,
            expires_in: Some(90 * 86400),
        },
        Plan {
            id: "c-authorised-accounts-only",
            user: 1,
            bank: 1,
            customer: 2,
            perms: &[Permission::Accounts],
            restrict: false,
            status: ConsentStatus::Authorised,
            expires_in: None,
        },
        Plan {
            id: "c-authorised-bank2",
            user: 1,
            bank: 1,
            customer: 0,
            perms: &ALL,
            restrict: false,
            status: ConsentStatus::Authorised,
            expires_in: Some(30 * 86400),
        },
        Plan {
            id: "c-awaiting",
            user: 0,
            bank: 0,
            customer: 3,
            perms: &ALL,
            restrict: false,
            status: ConsentStatus::AwaitingAuthorisation,
            expires_in: Some(86400),
        },
        Plan {
            id: "c-rejected",
            user: 0,
            bank: 0,
            customer: 4,
            perms: &ALL,
            restrict: false,
            status: ConsentStatus::Rejected,
            expires_in: Some(86400),
        },
        Plan {
            id: "c-revoked",
            user: 0,
            bank: 0,
            customer: 5,
            perms: &ALL,
            restrict: false,
            status: ConsentStatus::Revoked,
            expires_in: Some(86400),
        },
        Plan {
            id: "c-expired",
            user: 1,
            bank: 1,
            customer: 6,
            perms: &ALL,
            restrict: false,
            status: ConsentStatus::Expired,
            expires_in: Some(-86400),
        },
        Plan {
            id: "c-lapsed",
            user: 1,
            bank: 1,
            customer: 7,
            perms: &ALL,
            restrict: false,
            status: ConsentStatus::Authorised,
            expires_in: Some(-3600),
        },
    ];
    let mut jsonl = String::new();
    let mut manifest_consents = Vec::new();
    for p in &plans {
        let data = banks[p.bank].data();
        let customer = data
            .customers()
            .nth(p.customer)
            .ok_or_else(|| DemoError::Bank("too few sandbox customers".into()))?;
        let accounts: Option<Vec<String>> = p.restrict.then(|| {
            customer
                .accounts
                .iter()
                .take(1)
                .map(|a| a.id.clone())
                .collect()
        });
        let record = json!({
            "id": p.id,
            "api_user": users[p.user].to_string(),
            "customer": customer.iin,
            "providers": [providers[p.bank].to_string()],
            "permissions": p.perms.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            "accounts": accounts,
            "purpose": "Personal finance overview (demo)",
            "created_at": rfc3339(now - 86400),
            "expires_at": p.expires_in.map(|s| rfc3339(now + s)),
            "status": p.status.as_str(),
        });
        let _ = writeln!(jsonl, "{record}");
        let user_id = pki
            .api_user(users[p.user])
            .ok_or_else(|| DemoError::Bank("no certificate for api user".into()))?;
        let claims = AccessClaims::for_consent(
            ISSUER,
            AUDIENCE,
            users[p.user],
            p.id,
            p.perms,
            &user_id.thumbprint,
            now,
            24 * 3600,
        )?;
        let token = issuer.mint(&claims)?;
        let mut m = record.clone();
        if let Some(o) = m.as_object_mut() {
            o.insert("token".into(), json!(token));
            o.insert(
                "account_ids".into(),
                json!(customer
                    .accounts
                    .iter()
                    .map(|a| a.id.clone())
                    .collect::<Vec<_>>()),
            );
        }
        manifest_consents.push(m);
    }
    let consents_path = dir.join("consents.jsonl");
    std::fs::write(&consents_path, jsonl).map_err(io(&consents_path))?;

    // The hub's configuration.
    let mut cfg = String::new();
    let _ = writeln!(
        cfg,
        "# Generated by `gateway demo`: development material only."
    );
    let _ = writeln!(
        cfg,
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"",
        args.port, args.admin_port
    );
    if let Some(t) = args.threads {
        let _ = writeln!(cfg, "threads = {t}");
    }
    let _ = writeln!(
        cfg,
        "\n[tls]\ncert = {}\nkey = {}\nclient_ca = [{}]",
        toml_str(&pki.hub_server().cert_path),
        toml_str(&pki.hub_server().key_path),
        toml_str(pki.ca_cert_path())
    );
    let _ = writeln!(
        cfg,
        "\n[upstream_tls]\nca = [{}]\nclient_cert = {}\nclient_key = {}",
        toml_str(pki.ca_cert_path()),
        toml_str(&pki.hub_client().cert_path),
        toml_str(&pki.hub_client().key_path)
    );
    let _ = writeln!(
        cfg,
        "\n[tokens]\njwks = {}\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"",
        toml_str(&jwks)
    );
    let _ = writeln!(cfg, "\n[consents]\nsnapshot = {}", toml_str(&consents_path));
    let _ = writeln!(
        cfg,
        "\n[audit]\npath = {}",
        toml_str(&dir.join("audit.jsonl"))
    );
    if let Some(r) = args.rate_limit {
        let r = r.max(1);
        for kind in [
            "per_user",
            "per_user_provider",
            "per_consent_route",
            "per_ip_open_data",
        ] {
            let burst = r.saturating_mul(2);
            let _ = writeln!(cfg, "\n[limits.{kind}]\nper_second = {r}\nburst = {burst}");
        }
    }
    for (i, u) in API_USERS.iter().enumerate() {
        let id = pki
            .api_user(users[i])
            .ok_or_else(|| DemoError::Bank("no certificate for api user".into()))?;
        let _ = writeln!(cfg, "\n[[participants]]\nbin = \"{}\"\nname = \"{}\"\nroles = [\"user\"]\nstatus = \"{}\"\nthumbprints = [\"{}\"]", u.0, u.1, u.2, id.x5t_s256);
    }
    for (i, p) in PROVIDERS.iter().enumerate() {
        let _ = writeln!(cfg, "\n[[participants]]\nbin = \"{}\"\nname = \"{}\"\nroles = [\"provider\"]\nstatus = \"active\"", p.0, p.1);
        let _ = writeln!(cfg, "\n[[providers]]\nbin = \"{}\"\nupstreams = [\"https://{}\"]\nsni = \"localhost\"\ntimeout_ms = 5000", p.0, banks[i].addr());
    }
    let config_path = dir.join("hub.toml");
    std::fs::write(&config_path, cfg).map_err(io(&config_path))?;

    let manifest_json = json!({
        "gateway_url": format!("https://127.0.0.1:{}", args.port),
        "admin_url": format!("http://127.0.0.1:{}", args.admin_port),
        "ca_cert": abs(pki.ca_cert_path()),
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "token_signing_key": abs(&issuer_key),
        "token_kid": issuer.kid(),
        "token_alg": "ES256",
        "jwks": abs(&jwks),
        "api_users": API_USERS.iter().enumerate().filter_map(|(i, u)| {
            let id = pki.api_user(users[i])?;
            Some(json!({"id": u.0, "name": u.1, "status": u.2, "cert": abs(&id.cert_path), "key": abs(&id.key_path), "x5t#S256": id.x5t_s256}))
        }).collect::<Vec<_>>(),
        "providers": PROVIDERS.iter().enumerate().map(|(i, p)| json!({"id": p.0, "name": p.1, "url": format!("https://{}", banks[i].addr())})).collect::<Vec<_>>(),
        "hub_client_cert": abs(&pki.hub_client().cert_path),
        "hub_client_key": abs(&pki.hub_client().key_path),
        "untrusted_client": {"cert": abs(&pki.untrusted_client().cert_path), "key": abs(&pki.untrusted_client().key_path)},
        "config": abs(&config_path),
        "audit_log": dir.join("audit.jsonl"),
        "consents": manifest_consents,
    });
    if let Some(parent) = manifest_path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let text = serde_json::to_string_pretty(&manifest_json).unwrap_or_default();
    std::fs::write(&manifest_path, text).map_err(io(&manifest_path))?;

    Ok(Prepared {
        config: config_path,
        manifest: abs(&manifest_path),
        manifest_json,
        banks,
        runtime,
        pki,
        issuer,
        dir,
    })
}

/// Ready-to-paste commands for the first consents.
fn curl_lines(m: &serde_json::Value) -> String {
    let mut out = String::new();
    let gw = m["gateway_url"].as_str().unwrap_or_default();
    let ca = m["ca_cert"].as_str().unwrap_or_default();
    let find_user = |id: &str| {
        m["api_users"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    for c in m["consents"].as_array().into_iter().flatten().take(3) {
        let u = find_user(c["api_user"].as_str().unwrap_or_default());
        let base = format!(
            "curl --cacert {ca} --cert {} --key {} -H \"Authorization: Bearer {}\"",
            u["cert"].as_str().unwrap_or_default(),
            u["key"].as_str().unwrap_or_default(),
            c["token"].as_str().unwrap_or_default()
        );
        let provider = c["providers"][0].as_str().unwrap_or_default();
        let account = c["account_ids"][0].as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "# consent {} ({})",
            c["id"].as_str().unwrap_or_default(),
            c["status"].as_str().unwrap_or_default()
        );
        let _ = writeln!(out, "{base} {gw}/v1/providers/{provider}/accounts");
        let _ = writeln!(
            out,
            "{base} {gw}/v1/providers/{provider}/accounts/{account}/balances"
        );
        let _ = writeln!(
            out,
            "{base} '{gw}/v1/providers/{provider}/accounts/{account}/transactions?limit=5'\n"
        );
    }
    if let Some(u) = m["api_users"].get(0) {
        let p = m["providers"][0]["id"].as_str().unwrap_or_default();
        let _ = writeln!(
            out,
            "# open data (no token)\ncurl --cacert {ca} --cert {} --key {} {gw}/v1/open-data/{p}/exchange-rates",
            u["cert"].as_str().unwrap_or_default(),
            u["key"].as_str().unwrap_or_default()
        );
    }
    out
}

/// Runs the demo until Ctrl-C.
pub fn run(args: DemoArgs) -> Result<(), DemoError> {
    let prepared = prepare(&args)?;
    println!("manifest: {}", prepared.manifest.display());
    println!("config:   {}", prepared.config.display());
    if args.prepare_only {
        return Ok(());
    }
    if args.banks_only {
        for b in &prepared.banks {
            println!("bank {} listening on https://{}", b.bin(), b.addr());
        }
        println!(
            "banks running; start the hub with: gateway run --config {}",
            prepared.config.display()
        );
        let _ = prepared.runtime.block_on(tokio::signal::ctrl_c());
        return Ok(());
    }
    println!(
        "\nTry it (Ctrl-C stops the demo):\n\n{}",
        curl_lines(&prepared.manifest_json)
    );
    println!(
        "metrics: curl {}/metrics\n",
        prepared.manifest_json["admin_url"]
            .as_str()
            .unwrap_or_default()
    );
    crate::server::run(&prepared.config)?;
    drop(prepared.banks);
    prepared.runtime.shutdown_background();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_identities_are_valid_bins() {
        for u in API_USERS {
            assert!(Bin::parse(u.0).is_ok(), "{}", u.0);
        }
        for p in PROVIDERS {
            assert!(Bin::parse(p.0).is_ok(), "{}", p.0);
        }
    }
}
