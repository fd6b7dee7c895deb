//! The sidecar's settings: what the `trust serve` flags fill in, or what an embedding
//! program (the gateway's demo) builds directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::abuse::AbuseLimits;
use crate::authorisation::Limits;
use crate::clock::{Clock, SystemClock};
use crate::keys::Alg;
use crate::listener::ListenerLimits;
use crate::oidc::OidcConfig;
use crate::sla::SlaSettings;

/// Everything `trust serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the public HTTPS listener (e.g. `127.0.0.1:0` for an ephemeral port):
    /// API users and customers; also gateways and operators when `internal_listen` is unset.
    pub listen: SocketAddr,
    /// Address of the internal HTTPS listener for gateways (snapshot, feed) and operators
    /// (registry, keys); when set, those routes are served there only.
    pub internal_listen: Option<SocketAddr>,
    /// Protections of the public listener.
    pub public_limits: ListenerLimits,
    /// Protections of the internal listener.
    pub internal_limits: ListenerLimits,
    /// Abuse limits per customer, API user and source address.
    pub abuse: AbuseLimits,
    /// The customer's identity provider (OpenID Connect); `None`: no customer login
    /// other than the development sessions.
    pub oidc: Option<OidcConfig>,
    /// The SQLite database file (created if missing); unused when `postgres` is set.
    pub db: PathBuf,
    /// The PostgreSQL database instead of SQLite: several replicas may share it
    /// (`docs/postgres.md`).
    pub postgres: Option<trust_store::PgSettings>,
    /// Server certificate chain (PEM, leaf first).
    pub server_cert: PathBuf,
    /// Server private key (PEM).
    pub server_key: PathBuf,
    /// Platform CA bundle(s) client certificates must chain to (PEM).
    pub client_ca: Vec<PathBuf>,
    /// Operator client certificates (PEM files; their leaf thumbprints are used).
    pub operator_certs: Vec<PathBuf>,
    /// Operator thumbprints (`x5t#S256`), beside or instead of `operator_certs`.
    pub operator_thumbprints: Vec<String>,
    /// Hub (gateway) client certificates allowed to read the snapshot and the feed.
    pub hub_certs: Vec<PathBuf>,
    /// Hub thumbprints (`x5t#S256`).
    pub hub_thumbprints: Vec<String>,
    /// The base URL clients reach the sidecar at (default `https://{listen}` once bound).
    pub public_url: Option<String>,
    /// Token `iss` (default: the public URL, as RFC 8414 wants).
    pub issuer: Option<String>,
    /// Token `aud`: the hub's configured audience.
    pub audience: String,
    /// Access token lifetime (default 300 s).
    pub token_lifetime_secs: i64,
    /// Verifiers' clock leeway, added to how long retired keys stay published (default 60 s).
    pub token_leeway_secs: i64,
    /// Algorithm of generated signing keys (default ES256; PS256 keys are imported).
    pub token_alg: Alg,
    /// PKCS#8 PEM key files imported at start (as next keys; the first one signs at once
    /// on an empty database).
    pub signing_keys: Vec<PathBuf>,
    /// Rotate the active key after this long (default 7 days).
    pub key_rotate_after_secs: i64,
    /// Publish a next key this long before it signs (default 1 hour).
    pub key_publish_lead_secs: i64,
    /// The development notifier's outbox (JSON lines); `None` with no notifier given
    /// means codes cannot be sent.
    pub otp_outbox: Option<PathBuf>,
    /// Whether `POST /v1/customer/sessions` opens development customer sessions (refused at
    /// start unless `listen` is a loopback address).
    pub dev_customer_sessions: bool,
    /// Authorisation limits.
    pub limits: Limits,
    /// A quiet feed sends a heartbeat this often (default 5 s).
    pub heartbeat: Duration,
    /// Expiry, key rotation, pruning run this often (default 1 s).
    pub housekeeping: Duration,
    /// Changes kept in the feed history (default 1,000,000); older ones are pruned and
    /// a gateway behind them reloads the snapshot.
    pub feed_retention: u64,
    /// Provider conformance probing (off when `None`).
    pub probe: Option<crate::prober::ProbeConfig>,
    /// SLA targets and the reports' time zone (`[sla]` of the configuration file).
    pub sla: SlaSettings,
    /// Sustained SLA breaches (`[oversight]` of the configuration file).
    pub breach: crate::breach::BreachSettings,
    /// Usage pricing and monthly statements (`[billing]`; off when `None`).
    pub billing: Option<crate::statements::BillingSettings>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl Config {
    /// Defaults for everything but the listener, database and TLS files.
    pub fn new(
        listen: SocketAddr,
        db: PathBuf,
        server_cert: PathBuf,
        server_key: PathBuf,
        client_ca: PathBuf,
    ) -> Config {
        Config {
            listen,
            internal_listen: None,
            public_limits: ListenerLimits::public(),
            internal_limits: ListenerLimits::internal(),
            abuse: AbuseLimits::default(),
            oidc: None,
            db,
            postgres: None,
            server_cert,
            server_key,
            client_ca: vec![client_ca],
            operator_certs: Vec::new(),
            operator_thumbprints: Vec::new(),
            hub_certs: Vec::new(),
            hub_thumbprints: Vec::new(),
            public_url: None,
            issuer: None,
            audience: "open-api-hub".to_owned(),
            token_lifetime_secs: 300,
            token_leeway_secs: 60,
            token_alg: Alg::Es256,
            signing_keys: Vec::new(),
            key_rotate_after_secs: 7 * 24 * 3600,
            key_publish_lead_secs: 3600,
            otp_outbox: None,
            dev_customer_sessions: false,
            limits: Limits::default(),
            heartbeat: Duration::from_secs(5),
            housekeeping: Duration::from_secs(1),
            feed_retention: 1_000_000,
            probe: None,
            sla: SlaSettings::default(),
            breach: crate::breach::BreachSettings::default(),
            billing: None,
            clock: Arc::new(SystemClock),
        }
    }
}
