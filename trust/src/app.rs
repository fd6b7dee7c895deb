//! The sidecar's state and its operations, independent of HTTP: every operation runs
//! its database work on a blocking thread and returns once the change is committed.
//! The in-memory caches of the registry and the signing keys follow the database, also
//! when another replica wrote it ([`App::follow_store`]).

use std::sync::{Arc, RwLock};

use base64::Engine as _;
use consent_cache::{Bin, ConsentStatus, Permissions};
use ring::rand::SystemRandom;
use serde::Serialize;

use crate::abuse::{self, AbuseLimits, AddressLimiter};
use crate::authorisation::{self, AuthorisationView, Limits, Outgoing, Verified};
use crate::clock::Clock;
use crate::consents::{self, ConsentView, CreateConsent};
use crate::db::{read_head, Db, Sql, StoreError};
use crate::error::Error;
use crate::history;
use crate::keys::{self, KeyInfo, KeySet, NotReady, Policy};
use crate::login;
use crate::notify::{Notifier, OtpMessage};
use crate::oidc::{self, LoginError};
use crate::otp;
use crate::participants::{self, Directory, ParticipantInput, ParticipantView};
use crate::rollups::{self, Stored};
use crate::sla;
use crate::usage;
use crate::wire::rollup::RollupBatch;
use crate::wire::{ParticipantRecord, ParticipantStatus, Role};

/// Settings the operations need, resolved at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Token `iss`.
    pub issuer: String,
    /// Token `aud`.
    pub audience: String,
    /// The sidecar's base URL (for the RFC 8414 metadata).
    pub public_url: String,
    /// Token lifetime in seconds.
    pub token_lifetime_secs: i64,
    /// Key rotation.
    pub key_policy: Policy,
    /// Authorisation limits.
    pub limits: Limits,
    /// Abuse limits.
    pub abuse: AbuseLimits,
    /// Whether development customer sessions can be opened.
    pub dev_customer_sessions: bool,
    /// Operator certificate thumbprints.
    pub operators: Vec<[u8; 32]>,
    /// Hub certificate thumbprints.
    pub hubs: Vec<[u8; 32]>,
    /// Heartbeat interval of quiet feeds.
    pub heartbeat: std::time::Duration,
    /// Changes kept in the feed history.
    pub feed_retention: u64,
    /// SLA targets and the reports' time zone.
    pub sla: crate::sla::SlaSettings,
    /// Usage pricing and statements (off when `None`).
    pub billing: Option<crate::statements::BillingSettings>,
}

/// Shared state of a running sidecar.
pub struct App {
    /// The database.
    pub db: Arc<Db>,
    /// Resolved settings.
    pub settings: Settings,
    clock: Arc<dyn Clock>,
    notifier: Option<Arc<dyn Notifier>>,
    rng: SystemRandom,
    directory: RwLock<Arc<Directory>>,
    keys: RwLock<Arc<KeySet>>,
    rotation: tokio::sync::Mutex<()>,
    /// The per-source-address limit of unauthenticated routes.
    pub addresses: AddressLimiter,
    /// The customer's identity provider, when configured.
    pub identity_provider: Option<oidc::Provider>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("db", &self.db)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A login started at the identity provider.
#[derive(Debug)]
pub struct StartedLogin {
    /// Where to send the customer.
    pub url: String,
    /// The browser binding (the login cookie's value).
    pub browser: String,
    /// How long the login may take, in seconds.
    pub max_age: i64,
}

fn login_error(e: LoginError) -> Error {
    match e {
        LoginError::Unavailable(detail) => {
            tracing::warn!(%detail, "identity provider unavailable");
            Error::Unavailable {
                code: "identity_provider_unavailable",
                detail: "the identity provider could not be reached".into(),
            }
        }
        LoginError::Refused(why) => Error::LoginFailed(why),
    }
}

/// A token endpoint refusal (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct OAuthError {
    /// HTTP status (400, or 401 for `invalid_client`, 500/503 for server trouble).
    pub status: u16,
    /// The RFC 6749 error code.
    pub error: &'static str,
    /// Human-readable detail (no secrets).
    pub description: String,
}

impl OAuthError {
    /// A 400 answer.
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: 400,
            error,
            description: description.into(),
        }
    }
}

/// A successful token answer (RFC 6749 §5.1).
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer` (RFC 8705 keeps the bearer scheme for bound tokens).
    pub token_type: &'static str,
    /// Seconds until `exp`.
    pub expires_in: i64,
    /// The granted permissions, space-separated.
    pub scope: String,
    /// The consent the token is for.
    pub consent_id: String,
}

/// Access token claims (contract §4).
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: String,
    client_id: String,
    consent_id: &'a str,
    scope: &'a str,
    cnf: Cnf<'a>,
}

#[derive(Serialize)]
struct Cnf<'a> {
    #[serde(rename = "x5t#S256")]
    x5t_s256: &'a str,
}

/// Runs `f` on a blocking thread.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static + From<Error>,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(E::from(Error::Internal(format!("blocking task: {e}")))),
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        if let Error::Unavailable { .. } = e {
            tracing::warn!(error = %e, "token endpoint failure");
            return OAuthError {
                status: 503,
                error: "temporarily_unavailable",
                description: "the database is unavailable".into(),
            };
        }
        tracing::error!(error = %e, "token endpoint failure");
        OAuthError {
            status: 500,
            error: "server_error",
            description: "internal error".into(),
        }
    }
}

impl App {
    /// Opens the state over an opened database: loads the participant registry and the
    /// signing keys. Blocking: call it from a blocking thread (`spawn_blocking`), never on
    /// an async worker (the PostgreSQL engine blocks on its async client).
    pub fn new(
        db: Arc<Db>,
        settings: Settings,
        clock: Arc<dyn Clock>,
        notifier: Option<Arc<dyn Notifier>>,
        identity_provider: Option<oidc::Provider>,
    ) -> Result<App, Error> {
        let addresses = AddressLimiter::new(
            settings.abuse.address_per_minute,
            settings.abuse.address_burst,
        );
        let directory = db.read(|c| {
            let head = read_head(c)?;
            Directory::load(c, head)
        })?;
        let keys = db.read(|c| keys::load_set(c).map_err(|e| Error::Signing(e.to_string())))?;
        Ok(App {
            db,
            settings,
            clock,
            notifier,
            rng: SystemRandom::new(),
            directory: RwLock::new(Arc::new(directory)),
            keys: RwLock::new(Arc::new(keys)),
            rotation: tokio::sync::Mutex::new(()),
            addresses,
            identity_provider,
            metrics: crate::metrics::Metrics::new(),
        })
    }

    /// The current time (unix seconds).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The participant registry as last committed.
    pub fn directory(&self) -> Arc<Directory> {
        match self.directory.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn swap_directory(&self, new: Arc<Directory>) {
        let mut guard = match self.directory.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Two writers may finish in either order; the newer registry wins.
        if new.version >= guard.version {
            *guard = new;
        }
    }

    /// The published keys.
    pub fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn swap_keys(&self, new: KeySet) {
        let mut guard = match self.keys.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Arc::new(new);
    }

    /// The key set as stored now, if it differs from the loaded one (blocking).
    fn stored_keys_if_changed(&self) -> Result<Option<KeySet>, Error> {
        let loaded = self.keys();
        self.db.read(|sql| {
            let stored = keys::metas(sql)?;
            if loaded.is_current(&stored) {
                return Ok(None);
            }
            keys::load_set(sql)
                .map(Some)
                .map_err(|e| Error::Signing(e.to_string()))
        })
    }

    /// The registry as stored now, if a participant changed after the loaded directory's
    /// version (blocking).
    fn stored_directory_if_newer(&self) -> Result<Option<Directory>, Error> {
        let loaded = self.directory().version;
        self.db.read(|sql| {
            if participants::newest_version(sql)? <= loaded {
                return Ok(None);
            }
            let head = read_head(sql)?;
            Ok(Some(Directory::load(sql, head)?))
        })
    }

    /// Reloads the participant registry if it changed in the database (another replica's
    /// write, or a write that did not go through this `App`).
    pub async fn refresh_directory(self: &Arc<Self>) -> Result<(), Error> {
        let app = self.clone();
        if let Some(dir) = blocking(move || app.stored_directory_if_newer()).await? {
            tracing::debug!(version = dir.version, "participant registry reloaded");
            self.swap_directory(Arc::new(dir));
        }
        Ok(())
    }

    /// Reloads the signing keys if they changed in the database (another replica rotated
    /// or imported keys).
    pub async fn refresh_keys(self: &Arc<Self>) -> Result<(), Error> {
        let _serial = self.rotation.lock().await;
        let app = self.clone();
        if let Some(set) = blocking(move || app.stored_keys_if_changed()).await? {
            tracing::info!("signing keys reloaded");
            self.swap_keys(set);
        }
        Ok(())
    }

    /// Keeps the caches in step with the database until `stop` resolves: the registry
    /// whenever the committed head moves (a participant change from any replica moves
    /// it), the keys every `keys_every` (key changes are not on the feed). With two
    /// replicas on one database, each sees the other's suspensions and key rotations.
    pub async fn follow_store(
        self: Arc<Self>,
        keys_every: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        /// Bursts of commits are looked at once per this interval.
        const COALESCE: std::time::Duration = std::time::Duration::from_millis(10);
        let mut head = self.db.subscribe();
        let mut keys_tick = tokio::time::interval(keys_every);
        keys_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                changed = head.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if let Err(e) = self.refresh_directory().await {
                        tracing::warn!(error = %e, "reloading the participant registry failed");
                    }
                    tokio::time::sleep(COALESCE).await;
                }
                _ = keys_tick.tick() => {
                    if let Err(e) = self.refresh_keys().await {
                        tracing::warn!(error = %e, "reloading the signing keys failed");
                    }
                }
            }
        }
    }

    // ---- consents (API user) ----

    /// `POST /v1/consents`.
    pub async fn create_consent(
        self: &Arc<Self>,
        api_user: Bin,
        input: CreateConsent,
    ) -> Result<ConsentView, Error> {
        let app = self.clone();
        blocking(move || {
            let dir = app.directory();
            app.db.write(app.now(), |tx| {
                abuse::charge_consent(tx, &api_user.to_string(), &app.settings.abuse)?;
                consents::create(tx, api_user, &dir, input)
            })
        })
        .await
    }

    /// Imports consents as they stand elsewhere (`consents::import`), all or none, in one
    /// transaction, in the order given. Not reachable over HTTP: for embedding programs
    /// (the gateway's demo seeds the registry with it) and migrations.
    pub async fn import_consents(
        self: &Arc<Self>,
        records: Vec<consent_cache::ConsentRecord>,
    ) -> Result<Vec<ConsentView>, Error> {
        let app = self.clone();
        blocking(move || {
            let dir = app.directory();
            app.db.write(app.now(), |tx| {
                records
                    .into_iter()
                    .map(|r| consents::import(tx, &dir, r))
                    .collect()
            })
        })
        .await
    }

    /// A consent with its history, whoever owns it (for embedding programs and tests;
    /// the HTTP routes check ownership).
    pub async fn consent(self: &Arc<Self>, id: String) -> Result<ConsentView, Error> {
        let app = self.clone();
        blocking(move || {
            app.db
                .read(|c| consents::view(c, &id).map_err(Error::from))?
                .ok_or(Error::NotFound("consent_not_found"))
        })
        .await
    }

    /// `GET /v1/consents/{id}`: only the owner sees it.
    pub async fn consent_for_user(
        self: &Arc<Self>,
        api_user: Bin,
        id: String,
    ) -> Result<ConsentView, Error> {
        let app = self.clone();
        blocking(move || {
            app.db
                .read(|c| consents::view(c, &id).map_err(Error::from))?
                .filter(|v| v.record.api_user == api_user)
                .ok_or(Error::NotFound("consent_not_found"))
        })
        .await
    }

    /// `DELETE /v1/consents/{id}`.
    pub async fn revoke_by_user(
        self: &Arc<Self>,
        api_user: Bin,
        id: String,
    ) -> Result<ConsentView, Error> {
        self.revoke(id, history::api_user(api_user), move |r| {
            r.api_user == api_user
        })
        .await
    }

    /// Revokes a consent on behalf of `actor`; a consent `owns` rejects answers
    /// `consent_not_found`, so nobody learns that someone else's consent exists.
    async fn revoke(
        self: &Arc<Self>,
        id: String,
        actor: String,
        owns: impl Fn(&consent_cache::ConsentRecord) -> bool + Send + 'static,
    ) -> Result<ConsentView, Error> {
        let app = self.clone();
        blocking(move || {
            app.db.write(app.now(), |tx| {
                consents::transition(tx, &id, ConsentStatus::Revoked, &actor, |r| {
                    if !owns(r) {
                        return Err(Error::NotFound("consent_not_found"));
                    }
                    consents::revoke_rule(r)
                })
            })
        })
        .await
    }

    // ---- customers ----

    /// `POST /v1/customer/sessions` (development only).
    pub async fn open_customer_session(
        self: &Arc<Self>,
        customer: String,
    ) -> Result<(String, time::OffsetDateTime), Error> {
        if !self.settings.dev_customer_sessions {
            return Err(Error::NotFound("route_not_found"));
        }
        if !authorisation::valid_customer(&customer) {
            return Err(Error::invalid(
                "customer",
                "1 to 255 visible ASCII characters",
            ));
        }
        self.new_customer_session(customer).await
    }

    /// A customer session for `customer`, whose first factor has been checked.
    async fn new_customer_session(
        self: &Arc<Self>,
        customer: String,
    ) -> Result<(String, time::OffsetDateTime), Error> {
        let app = self.clone();
        blocking(move || {
            let limits = app.settings.limits;
            app.db.write(app.now(), |tx| {
                authorisation::create_customer_session(tx, &customer, &limits, &app.rng)
            })
        })
        .await
    }

    fn identity_provider(&self) -> Result<&oidc::Provider, Error> {
        self.identity_provider
            .as_ref()
            .ok_or(Error::NotFound("route_not_found"))
    }

    /// `GET /v1/customer/login`: starts a login at the identity provider. The login is
    /// stored under its `state`, bound to the returned browser value (a cookie).
    pub async fn start_login(
        self: &Arc<Self>,
        login_hint: Option<String>,
    ) -> Result<StartedLogin, Error> {
        let provider = self.identity_provider()?;
        let auth = provider
            .authorize(login_hint.as_deref())
            .await
            .map_err(login_error)?;
        let browser = otp::random_bytes::<32>(&self.rng)
            .map(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let max_age = provider.login_ttl_secs();
        let (app, binding) = (self.clone(), browser.clone());
        blocking(move || {
            let pending = login::Pending {
                nonce: auth.nonce,
                pkce_verifier: auth.pkce_verifier,
            };
            app.db.write(app.now(), |tx| {
                login::store(tx, &auth.state, &binding, &pending, tx.now() + max_age)
                    .map_err(Error::from)
            })
        })
        .await?;
        Ok(StartedLogin {
            url: auth.url,
            browser,
            max_age,
        })
    }

    /// `GET /v1/customer/login/callback`: takes the login `state` names out (once), and
    /// with the provider's `code` (`None`: the provider answered an error) redeems it and
    /// opens a customer session for the IIN the verified ID token names.
    pub async fn finish_login(
        self: &Arc<Self>,
        state: String,
        browser: String,
        code: Option<String>,
    ) -> Result<(String, time::OffsetDateTime), Error> {
        let provider = self.identity_provider()?;
        let app = self.clone();
        let pending = blocking(move || {
            app.db
                .write(app.now(), |tx| login::take(tx, &state, &browser))
                .map_err(Error::from)
        })
        .await?
        .ok_or(Error::LoginFailed(
            "the login is unknown, used, expired or was started in another browser",
        ))?;
        let code = code.ok_or(Error::LoginFailed(
            "the identity provider did not authenticate the customer",
        ))?;
        let iin = provider
            .identify(code, pending.pkce_verifier, pending.nonce)
            .await
            .map_err(login_error)?;
        self.new_customer_session(iin).await
    }

    /// The customer a session bearer value belongs to.
    pub async fn customer_of(self: &Arc<Self>, token: String) -> Result<String, Error> {
        let app = self.clone();
        blocking(move || {
            let now = app.now();
            app.db
                .read(|c| authorisation::customer_of_session(c, &token, now).map_err(Error::from))?
                .ok_or(Error::Unauthenticated("customer_session_required"))
        })
        .await
    }

    /// `GET /v1/customer/consents`.
    pub async fn customer_consents(
        self: &Arc<Self>,
        customer: String,
    ) -> Result<Vec<ConsentView>, Error> {
        let app = self.clone();
        blocking(move || {
            app.db
                .read(|c| consents::list_by_customer(c, &customer).map_err(Error::from))
        })
        .await
    }

    /// `GET /v1/customer/consents/{id}`.
    pub async fn customer_consent(
        self: &Arc<Self>,
        customer: String,
        id: String,
    ) -> Result<ConsentView, Error> {
        let app = self.clone();
        blocking(move || {
            app.db
                .read(|c| consents::view(c, &id).map_err(Error::from))?
                .filter(|v| v.record.customer == customer)
                .ok_or(Error::NotFound("consent_not_found"))
        })
        .await
    }

    fn deliver(&self, out: &Outgoing, consent_id: &str) -> Result<(), Error> {
        let Some(n) = &self.notifier else {
            return Err(Error::Notifier("no notifier is configured".into()));
        };
        n.send(&OtpMessage {
            customer: &out.customer,
            consent_id,
            code: &out.code.code,
        })
        .map_err(|e| {
            tracing::error!(error = %e, "one-time code not delivered");
            Error::Notifier("the code could not be delivered".into())
        })
    }

    /// `POST /v1/customer/consents/{id}/authorisations`: opens a session and sends
    /// the first code.
    pub async fn start_authorisation(
        self: &Arc<Self>,
        customer: String,
        consent_id: String,
    ) -> Result<AuthorisationView, Error> {
        let app = self.clone();
        blocking(move || {
            let limits = app.settings.limits;
            let out = app.db.write(app.now(), |tx| {
                let out = authorisation::start(tx, &customer, &consent_id, &limits, &app.rng)?;
                abuse::charge_code(tx, &customer, &app.settings.abuse)?;
                Ok::<_, Error>(out)
            })?;
            app.deliver(&out, &consent_id)?;
            Ok(out.view)
        })
        .await
    }

    /// `POST /v1/customer/authorisations/{id}/resend`.
    pub async fn resend_code(
        self: &Arc<Self>,
        customer: String,
        id: String,
    ) -> Result<AuthorisationView, Error> {
        let app = self.clone();
        blocking(move || {
            let limits = app.settings.limits;
            let out = app.db.write(app.now(), |tx| {
                let out = authorisation::resend(tx, &customer, &id, &limits, &app.rng)?;
                abuse::charge_code(tx, &customer, &app.settings.abuse)?;
                Ok::<_, Error>(out)
            })?;
            let consent_id = out.view.consent_id.clone();
            app.deliver(&out, &consent_id)?;
            Ok(out.view)
        })
        .await
    }

    /// `GET /v1/customer/authorisations/{id}`.
    pub async fn authorisation(
        self: &Arc<Self>,
        customer: String,
        id: String,
    ) -> Result<AuthorisationView, Error> {
        let app = self.clone();
        blocking(move || {
            let limits = app.settings.limits;
            app.db
                .read(|c| authorisation::view(c, &customer, &id, &limits).map_err(Error::from))?
                .ok_or(Error::NotFound("authorisation_not_found"))
        })
        .await
    }

    /// `POST /v1/customer/authorisations/{id}/verify`.
    pub async fn verify_code(
        self: &Arc<Self>,
        customer: String,
        id: String,
        code: String,
    ) -> Result<ConsentView, Error> {
        let app = self.clone();
        blocking(move || {
            let limits = app.settings.limits;
            match app.db.write(app.now(), |tx| {
                authorisation::verify(tx, &customer, &id, &code, &limits)
            })? {
                Verified::Authorised(v) => Ok(v),
                Verified::Failed(e) => Err(e),
            }
        })
        .await
    }

    /// `POST /v1/customer/consents/{id}/reject`.
    pub async fn reject(
        self: &Arc<Self>,
        customer: String,
        id: String,
    ) -> Result<ConsentView, Error> {
        let app = self.clone();
        blocking(move || {
            let now = app.now();
            app.db.write(now, |tx| {
                consents::transition(tx, &id, ConsentStatus::Rejected, history::CUSTOMER, |r| {
                    if r.customer != customer {
                        return Err(Error::NotFound("consent_not_found"));
                    }
                    consents::reject_rule(r, now)
                })
            })
        })
        .await
    }

    /// `DELETE /v1/customer/consents/{id}`.
    pub async fn revoke_by_customer(
        self: &Arc<Self>,
        customer: String,
        id: String,
    ) -> Result<ConsentView, Error> {
        self.revoke(id, history::CUSTOMER.to_string(), move |r| {
            r.customer == customer
        })
        .await
    }

    // ---- authorization server ----

    /// Issues a token for `consent_id` to the participant holding the certificate with
    /// `thumbprint`. `client_id` is the request's parameter.
    pub async fn issue_token(
        self: &Arc<Self>,
        thumbprint: Option<[u8; 32]>,
        client_id: String,
        consent_id: String,
        scope: Option<String>,
    ) -> Result<TokenResponse, OAuthError> {
        let Some(thumbprint) = thumbprint else {
            return Err(OAuthError {
                status: 401,
                error: "invalid_client",
                description: "a client certificate is required (tls_client_auth)".into(),
            });
        };
        let participant = self.authenticate_client(&thumbprint, &client_id)?;
        let app = self.clone();
        blocking(move || app.sign_token(&participant, &thumbprint, &consent_id, scope)).await
    }

    fn authenticate_client(
        &self,
        thumbprint: &[u8; 32],
        client_id: &str,
    ) -> Result<ParticipantRecord, OAuthError> {
        let dir = self.directory();
        let Some(p) = dir.by_thumbprint(thumbprint) else {
            return Err(OAuthError {
                status: 401,
                error: "invalid_client",
                description: "the client certificate is not registered to a participant".into(),
            });
        };
        if p.bin.to_string() != client_id {
            return Err(OAuthError {
                status: 401,
                error: "invalid_client",
                description: "client_id does not match the client certificate".into(),
            });
        }
        if !p.is_active() || !p.has_role(Role::User) {
            return Err(OAuthError::bad(
                "unauthorized_client",
                "the participant is not an active API user",
            ));
        }
        Ok(p.clone())
    }

    fn sign_token(
        &self,
        participant: &ParticipantRecord,
        thumbprint: &[u8; 32],
        consent_id: &str,
        scope: Option<String>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.now();
        // A write transaction: the token is counted in the same transaction that read
        // the consent (usage events), and only when it is issued.
        self.db.write(now, |tx| {
            let response = self.sign_for(tx, participant, thumbprint, consent_id, scope)?;
            usage::count_event(tx, participant.bin, now, usage::Event::TokenIssued)?;
            Ok(response)
        })
    }

    fn sign_for(
        &self,
        tx: &mut crate::db::Tx<'_>,
        participant: &ParticipantRecord,
        thumbprint: &[u8; 32],
        consent_id: &str,
        scope: Option<String>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = tx.now();
        let refused = || {
            OAuthError::bad(
                "invalid_grant",
                "the consent is not authorised for this client",
            )
        };
        let record = consents::load(tx, consent_id)
            .map_err(Error::from)?
            .map(|(r, _)| r)
            .filter(|r| r.api_user == participant.bin)
            .ok_or_else(refused)?;
        if record.status != ConsentStatus::Authorised || consents::is_past(&record, now) {
            return Err(refused());
        }
        let granted: Permissions = record.permissions.iter().copied().collect();
        let scope = token_scope(granted, scope)?;
        let mut exp = now + self.settings.token_lifetime_secs;
        if let Some(e) = record.expires_at {
            exp = exp.min(e.unix_timestamp());
        }
        let keys = self.keys();
        let Some(key) = keys.signer.as_ref() else {
            return Err(OAuthError {
                status: 503,
                error: "temporarily_unavailable",
                description: "no signing key is active".into(),
            });
        };
        let x5t = participants::encode_thumbprint(thumbprint);
        let claims = Claims {
            iss: &self.settings.issuer,
            aud: &self.settings.audience,
            exp,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            client_id: participant.bin.to_string(),
            consent_id,
            scope: &scope,
            cnf: Cnf { x5t_s256: &x5t },
        };
        let json = serde_json::to_vec(&claims).map_err(|e| Error::Signing(e.to_string()))?;
        let access_token = key
            .sign_jwt(&json, &self.rng)
            .map_err(|e| Error::Signing(e.to_string()))?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in: exp - now,
            scope,
            consent_id: consent_id.to_owned(),
        })
    }

    // ---- keys ----

    /// Runs one rotation step (forced: the operator asked) and reloads the key set.
    pub async fn rotate_keys(self: &Arc<Self>, force: bool) -> Result<Vec<KeyInfo>, Error> {
        let _serial = self.rotation.lock().await;
        let app = self.clone();
        let (result, set) = blocking(move || {
            let policy = app.settings.key_policy;
            let result = app.db.write(app.now(), |tx| {
                keys::rotate(tx, &policy, force, &app.rng).map_err(|e| match e {
                    keys::KeyError::Store(s) => Error::from(s),
                    other => Error::Signing(other.to_string()),
                })
            })?;
            // Reloaded when this step or another replica changed the keys.
            let set = app.stored_keys_if_changed()?;
            Ok::<_, Error>((result, set))
        })
        .await?;
        if let Some(set) = set {
            self.swap_keys(set);
        }
        match result {
            Ok(_) => Ok(self.keys().keys.clone()),
            Err(NotReady::NoNextKey) if force => Err(Error::Conflict {
                code: "no_next_key",
                detail: "no next key is published (PS256: import one)".into(),
            }),
            Err(NotReady::Wait(secs)) => Err(Error::Conflict {
                code: "next_key_not_ready",
                detail: format!("the next key may sign in {secs} s (publication lead)"),
            }),
            Err(NotReady::NoNextKey) => {
                tracing::warn!("no signing key: import a PS256 key");
                Ok(self.keys().keys.clone())
            }
        }
    }

    /// Imports PKCS#8 keys (as next keys). Blocking, like [`App::new`].
    pub fn import_keys(&self, keys_der: &[(keys::Alg, Vec<u8>)]) -> Result<Vec<String>, Error> {
        self.db.write(self.now(), |tx| {
            let mut kids = Vec::new();
            for (alg, der) in keys_der {
                kids.push(keys::import(tx, *alg, der).map_err(|e| match e {
                    keys::KeyError::Store(s) => Error::from(s),
                    other => Error::Signing(other.to_string()),
                })?);
            }
            Ok(kids)
        })
    }

    // ---- participants ----

    /// `PUT /v1/participants/{bin}`.
    pub async fn put_participant(
        self: &Arc<Self>,
        actor: String,
        bin: Bin,
        input: ParticipantInput,
    ) -> Result<(ParticipantView, bool), Error> {
        let app = self.clone();
        let written = blocking(move || {
            let mut reserved = app.settings.operators.clone();
            reserved.extend_from_slice(&app.settings.hubs);
            app.db.write(app.now(), |tx| {
                participants::upsert(tx, bin, input, &actor, &reserved)
            })
        })
        .await?;
        self.swap_directory(written.directory);
        Ok((written.view, written.created))
    }

    /// `PUT /v1/participants/{bin}/status`.
    pub async fn set_participant_status(
        self: &Arc<Self>,
        actor: String,
        bin: Bin,
        status: ParticipantStatus,
    ) -> Result<ParticipantView, Error> {
        let app = self.clone();
        let written = blocking(move || {
            app.db.write(app.now(), |tx| {
                participants::set_status(tx, bin, status, &actor)
            })
        })
        .await?;
        self.swap_directory(written.directory);
        Ok(written.view)
    }

    /// `GET /v1/participants/{bin}`.
    pub async fn participant(self: &Arc<Self>, bin: Bin) -> Result<ParticipantView, Error> {
        let app = self.clone();
        blocking(move || {
            app.db
                .read(|c| participants::view(c, bin).map_err(Error::from))?
                .ok_or(Error::NotFound("participant_not_found"))
        })
        .await
    }

    /// `GET /v1/participants`.
    pub async fn participants(self: &Arc<Self>) -> Result<Vec<ParticipantRecord>, Error> {
        let app = self.clone();
        blocking(move || app.db.read(|c| participants::all(c).map_err(Error::from))).await
    }

    // ---- rollups and SLA ----

    /// `POST /v1/rollups`: stores a validated batch in one transaction.
    pub async fn store_rollups(self: &Arc<Self>, batch: RollupBatch) -> Result<Stored, Error> {
        let app = self.clone();
        blocking(move || {
            let now = app.now();
            let (stored, late) = app.db.write(now, |tx| {
                let (stored, fresh) = rollups::store_fresh(tx, &batch, now)?;
                let late = match &app.settings.billing {
                    Some(b) => crate::statements::late_calls(tx, b, &fresh)?,
                    None => Default::default(),
                };
                Ok::<_, Error>((stored, late))
            })?;
            // Counted once committed: a rolled-back push flags nothing.
            for (participant, calls) in late {
                app.metrics
                    .late_calls
                    .with_label_values(&[participant.to_string().as_str()])
                    .inc_by(calls);
            }
            Ok(stored)
        })
        .await
    }

    /// `GET /v1/admin/sla`: the report, read in one consistent view.
    pub async fn sla_report(
        self: &Arc<Self>,
        query: sla::ReportQuery,
    ) -> Result<sla::Report, Error> {
        let app = self.clone();
        blocking(move || {
            let settings = &app.settings.sla;
            let days = app.db.read(|sql| sla::read(sql, &query, settings))?;
            Ok(sla::report(&days, &query, settings))
        })
        .await
    }

    // ---- housekeeping ----

    /// Expires due consents (in batches of 500 per transaction). Returns how many.
    pub async fn expire_due(self: &Arc<Self>) -> Result<usize, Error> {
        let app = self.clone();
        blocking(move || {
            let mut total = 0;
            loop {
                let n = app
                    .db
                    .write(app.now(), |tx| consents::expire_due(tx, 500))?;
                total += n;
                if n < 500 {
                    return Ok(total);
                }
            }
        })
        .await
    }

    /// Prunes feed history beyond the retention, ended customer sessions and logins,
    /// abuse-limit events past their window, and idle source addresses.
    pub async fn prune(self: &Arc<Self>) -> Result<u64, Error> {
        self.addresses.forget_idle();
        self.prune_store().await
    }

    /// The database part of [`App::prune`] (housekeeping: on the leading replica only).
    pub async fn prune_store(self: &Arc<Self>) -> Result<u64, Error> {
        let app = self.clone();
        blocking(move || {
            let keep = app.settings.feed_retention.max(1);
            app.db.write(app.now(), |tx| {
                authorisation::purge_customer_sessions(tx)?;
                login::purge(tx)?;
                abuse::prune(tx)?;
                let head = tx.head()?;
                if head <= keep {
                    return Ok::<_, Error>(0);
                }
                let through = head - keep;
                let floor = crate::db::read_floor(tx)?;
                if through <= floor {
                    return Ok(0);
                }
                let n = tx.execute("DELETE FROM changes WHERE version <= $1", &[through.into()])?;
                tx.execute(
                    "INSERT INTO meta(key, value) VALUES ('pruned_through', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[through.to_string().into()],
                )?;
                Ok(n)
            })
        })
        .await
    }
}

/// The token's `scope`: all the consent grants when the client asked for none, else what it
/// asked for, which must be a non-empty subset of the grant (RFC 6749 §3.3).
fn token_scope(granted: Permissions, asked: Option<String>) -> Result<String, OAuthError> {
    let Some(asked) = asked else {
        return Ok(scope_string(granted));
    };
    let mut set = Permissions::EMPTY;
    for s in asked.split(' ').filter(|s| !s.is_empty()) {
        match consent_cache::Permission::parse(s) {
            Some(p) if granted.contains(p) => set.insert(p),
            _ => {
                return Err(OAuthError::bad(
                    "invalid_scope",
                    "scope asks for more than the consent grants",
                ))
            }
        }
    }
    if set.is_empty() {
        return Err(OAuthError::bad("invalid_scope", "scope is empty"));
    }
    Ok(scope_string(set))
}

/// Permissions as a space-separated `scope` value.
fn scope_string(set: Permissions) -> String {
    set.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" ")
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        OAuthError::from(Error::from(e))
    }
}
