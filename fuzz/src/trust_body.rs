//! The trust sidecar's request bodies and queries (`trust/src/http.rs`): the JSON bodies
//! of `POST /v1/consents`, `PUT /v1/participants/{bin}` and `…/status`, decoded as the
//! routes decode them and then handed to the real operations over a SQLite database; the
//! form body of `POST /oauth2/token` (`form_pairs`, then the token operation); the query
//! of `GET /v1/feed` (`parse_feed_query`).
//!
//! Input: one byte choosing the body, then the body. What must hold: the form decoder
//! agrees with a strict reading of `application/x-www-form-urlencoded` (`+` is a space,
//! `%` takes exactly two hex digits, the result is UTF-8); the feed query yields exactly
//! its one `since` and optional `store_id`; what an operation accepts it stores valid.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use consent_cache::{Bin, ConsentRecord, ConsentStatus};
use tokio::runtime::Runtime;
use trust::abuse::AbuseLimits;
use trust::app::{App, Settings};
use trust::authorisation::Limits;
use trust::clock::ManualClock;
use trust::consents::CreateConsent;
use trust::db::Db;
use trust::http::{form_pairs, parse_feed_query};
use trust::keys::{Alg, Policy};
use trust::participants::{ParticipantInput, StatusInput};
use trust::wire::{ParticipantStatus, Role};

/// The API user registered at start, and the thumbprint of its certificate.
const USER: u64 = 100_140_000_001;
const USER_THUMBPRINT: [u8; 32] = [7; 32];
/// The provider registered at start.
const PROVIDER: u64 = 990_340_000_011;
/// BINs the participant bodies are written to: 500000000000 + the body's first byte.
const FUZZ_BINS: u64 = 500_000_000_000;
const ACTOR: &str = "operator:fuzz";

struct Sidecar {
    rt: Runtime,
    app: Arc<App>,
}

fn bin(v: u64) -> Bin {
    Bin::new(v).unwrap_or_else(|| panic!("{v} is not a BIN"))
}

fn sidecar() -> &'static Sidecar {
    static SIDECAR: OnceLock<Sidecar> = OnceLock::new();
    SIDECAR.get_or_init(start)
}

/// A sidecar over a fresh database with one API user, one provider and one authorised
/// consent (`c-1`), a signing key, and a clock stopped at the token harness's `NOW`.
fn start() -> Sidecar {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("{what}: {e}") };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| fail("runtime", &e));
    let db = Db::open(&crate::scratch::dir("trust_body").join("trust.db"))
        .unwrap_or_else(|e| fail("database", &e));
    let settings = Settings {
        issuer: crate::token::ISSUER.into(),
        audience: crate::token::AUDIENCE.into(),
        public_url: crate::token::ISSUER.into(),
        token_lifetime_secs: 3600,
        key_policy: Policy {
            alg: Alg::Es256,
            rotate_after_secs: 7 * 86_400,
            publish_lead_secs: 3600,
            retire_after_secs: 3660,
        },
        limits: Limits::default(),
        abuse: AbuseLimits::default(),
        dev_customer_sessions: false,
        operators: Vec::new(),
        hubs: Vec::new(),
        heartbeat: Duration::from_secs(15),
        feed_retention: 100_000,
        sla: trust::sla::SlaSettings::default(),
        billing: None,
    };
    let clock = Arc::new(ManualClock::new(crate::token::NOW));
    let app = Arc::new(
        App::new(Arc::new(db), settings, clock, None, None).unwrap_or_else(|e| fail("app", &e)),
    );
    rt.block_on(seed(&app))
        .unwrap_or_else(|e| fail("seeding", &e));
    Sidecar { rt, app }
}

async fn seed(app: &Arc<App>) -> Result<(), trust::error::Error> {
    app.rotate_keys(false).await?;
    let participant = |roles: Vec<Role>, thumbprints, provider_urls| ParticipantInput {
        name: "Fuzz".into(),
        roles,
        thumbprints,
        provider_urls,
        status: None,
    };
    let tp = URL_SAFE_NO_PAD.encode(USER_THUMBPRINT);
    let user = participant(vec![Role::User], vec![tp], Vec::new());
    app.put_participant(ACTOR.into(), bin(USER), user).await?;
    let urls = vec!["https://127.0.0.1:9443".to_owned()];
    let provider = participant(vec![Role::Provider], Vec::new(), urls);
    app.put_participant(ACTOR.into(), bin(PROVIDER), provider)
        .await?;
    let record: ConsentRecord = serde_json::from_str(crate::config::CONSENT_LINE)
        .map_err(|e| trust::error::Error::Internal(e.to_string()))?;
    app.import_consents(vec![record]).await?;
    Ok(())
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => create_consent(body),
        1 => put_participant(body),
        2 => set_status(body),
        3 => token_form(body),
        _ => feed_query(body),
    }
}

fn create_consent(body: &[u8]) {
    let Ok(input) = serde_json::from_slice::<CreateConsent>(body) else {
        return;
    };
    let s = sidecar();
    if let Ok(view) = s.rt.block_on(s.app.create_consent(bin(USER), input)) {
        assert_eq!(view.record.status, ConsentStatus::AwaitingAuthorisation);
        assert_eq!(view.record.api_user, bin(USER));
        if let Err(e) = view.record.validate() {
            panic!("a created consent breaks contract §5: {e}");
        }
    }
}

/// A participant body: its first byte picks the BIN it is written to, the rest is JSON.
fn participant_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<(Bin, T)> {
    let (&which, json) = body.split_first()?;
    let input = serde_json::from_slice(json).ok()?;
    Some((bin(FUZZ_BINS + u64::from(which)), input))
}

fn put_participant(body: &[u8]) {
    let Some((at, input)) = participant_body::<ParticipantInput>(body) else {
        return;
    };
    let s = sidecar();
    let put = s.app.put_participant(ACTOR.into(), at, input.clone());
    if let Ok((view, _)) = s.rt.block_on(put) {
        let r = &view.record;
        assert_eq!(r.name, input.name);
        assert!(!r.roles.is_empty(), "stored without a role");
        assert!(!r.has_role(Role::User) || !r.thumbprints.is_empty());
        assert_eq!(r.has_role(Role::Provider), !r.provider_urls.is_empty());
        // What gateways route: a lowercase `https://` and no user info.
        let routable = |u: &String| {
            u.strip_prefix("https://")
                .is_some_and(|rest| !rest.split('/').next().unwrap_or("").contains('@'))
        };
        assert!(
            r.provider_urls.iter().all(routable),
            "{:?}",
            r.provider_urls
        );
    }
}

fn set_status(body: &[u8]) {
    let Some((at, input)) = participant_body::<StatusInput>(body) else {
        return;
    };
    let s = sidecar();
    let set = s.app.set_participant_status(ACTOR.into(), at, input.status);
    if let Ok(view) = s.rt.block_on(set) {
        assert_eq!(view.record.status, input.status);
    } else if input.status == ParticipantStatus::Terminated {
        // Terminating is always allowed for a participant that exists.
        assert!(s.rt.block_on(s.app.participant(at)).is_err());
    }
}

fn token_form(body: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let pairs = form_pairs(text).ok();
    assert_eq!(pairs, strict_pairs(text), "form decoding of {text:?}");
    let Some(pairs) = pairs else {
        return;
    };
    let field = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(client_id), Some(consent_id)) = (field("client_id"), field("consent_id")) else {
        return;
    };
    let s = sidecar();
    let scope = field("scope");
    let issue = s
        .app
        .issue_token(Some(USER_THUMBPRINT), client_id, consent_id.clone(), scope);
    if let Ok(t) = s.rt.block_on(issue) {
        assert_eq!(t.consent_id, consent_id);
        assert!(t.expires_in > 0 && !t.access_token.is_empty());
    }
}

fn feed_query(body: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok((since, store_id)) = parse_feed_query(text) else {
        return;
    };
    let Some(pairs) = strict_pairs(text) else {
        panic!("a feed query the strict reading refuses was accepted: {text:?}");
    };
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        value("since").and_then(|v| v.parse::<u64>().ok()),
        Some(since)
    );
    assert_eq!(value("store_id"), store_id.as_deref());
    assert!(pairs.iter().all(|(k, _)| k == "since" || k == "store_id"));
}

/// `application/x-www-form-urlencoded`, read strictly: `&`-separated pairs (empty ones
/// skipped), `=` optional, `+` a space, `%` followed by exactly two hex digits, UTF-8.
fn strict_pairs(s: &str) -> Option<Vec<(String, String)>> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            Some((strict_decode(k)?, strict_decode(v)?))
        })
        .collect()
}

fn strict_decode(s: &str) -> Option<String> {
    // Written unlike the decoder under test (split at `%`, not a byte loop), so the two
    // do not share a mistake.
    let spaced = s.replace('+', " ");
    let mut parts = spaced.split('%');
    let mut out = parts.next().unwrap_or_default().as_bytes().to_vec();
    for part in parts {
        let hex = part
            .get(..2)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
        out.push(u8::from_str_radix(hex, 16).ok()?);
        out.extend_from_slice(part.get(2..)?.as_bytes());
    }
    String::from_utf8(out).ok()
}
