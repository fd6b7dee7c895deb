//! The SQLite schema: versioned migrations kept in `PRAGMA user_version`, applied at
//! open, each in its own exclusive transaction with its version bump. The entries are the
//! sidecar's schema since its first release, verbatim: a database written by an earlier
//! binary opens unchanged (same `user_version`, same tables).

use rusqlite::{Connection, TransactionBehavior};

use crate::api::StoreError;
use crate::sqlite::store_error;

/// The schema, one entry per version: entry `i` brings `user_version` from `i` to
/// `i + 1`. Never edit an entry once released; append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE participants (
        bin        TEXT PRIMARY KEY,
        record     TEXT NOT NULL,          -- wire::ParticipantRecord as JSON
        status     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        version    INTEGER NOT NULL        -- feed version of the last change
    ) STRICT;

    CREATE TABLE participant_thumbprints (
        thumbprint TEXT PRIMARY KEY,       -- x5t#S256
        bin        TEXT NOT NULL REFERENCES participants(bin)
    ) STRICT;

    CREATE TABLE participant_history (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        bin     TEXT NOT NULL,
        at      INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        from_status TEXT,
        to_status   TEXT NOT NULL,
        version INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE consents (
        id         TEXT PRIMARY KEY,
        api_user   TEXT NOT NULL,
        customer   TEXT NOT NULL,
        status     TEXT NOT NULL,
        expires_at INTEGER,
        record     TEXT NOT NULL,          -- consent_cache::ConsentRecord as JSON
        version    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX consents_by_customer ON consents(customer);
    CREATE INDEX consents_due ON consents(expires_at) WHERE expires_at IS NOT NULL
        AND status IN ('awaiting_authorisation', 'authorised');

    CREATE TABLE consent_history (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        consent_id TEXT NOT NULL,
        at         INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        from_status TEXT,                  -- NULL for the creation
        to_status  TEXT NOT NULL,
        version    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX consent_history_by_consent ON consent_history(consent_id, seq);

    -- History is append-only: the database itself refuses to rewrite it.
    CREATE TRIGGER consent_history_no_update BEFORE UPDATE ON consent_history
        BEGIN SELECT RAISE(ABORT, 'consent_history is append-only'); END;
    CREATE TRIGGER consent_history_no_delete BEFORE DELETE ON consent_history
        BEGIN SELECT RAISE(ABORT, 'consent_history is append-only'); END;
    CREATE TRIGGER participant_history_no_update BEFORE UPDATE ON participant_history
        BEGIN SELECT RAISE(ABORT, 'participant_history is append-only'); END;
    CREATE TRIGGER participant_history_no_delete BEFORE DELETE ON participant_history
        BEGIN SELECT RAISE(ABORT, 'participant_history is append-only'); END;

    CREATE TABLE changes (
        version INTEGER PRIMARY KEY,       -- contiguous from 1
        at      INTEGER NOT NULL,
        line    TEXT NOT NULL              -- the feed line (wire::FeedLine JSON, no newline)
    ) STRICT;

    CREATE TABLE authorisations (
        id              TEXT PRIMARY KEY,
        consent_id      TEXT NOT NULL,
        customer        TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        state           TEXT NOT NULL,     -- open | succeeded | failed | superseded | closed
        codes_sent      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL,
        code_salt       BLOB,
        code_hash       BLOB,
        code_expires_at INTEGER
    ) STRICT;
    CREATE INDEX authorisations_by_consent ON authorisations(consent_id);

    CREATE TABLE customer_sessions (
        token_hash BLOB PRIMARY KEY,       -- SHA-256 of the bearer value
        customer   TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE signing_keys (
        kid            TEXT PRIMARY KEY,
        alg            TEXT NOT NULL,
        pkcs8          BLOB NOT NULL,
        published_at   INTEGER NOT NULL,   -- in the JWKS from then on
        activated_at   INTEGER,            -- signing from then on (NULL: the next key)
        deactivated_at INTEGER,            -- superseded then
        drop_after     INTEGER             -- leaves the JWKS then
    ) STRICT;
    "#,
    // 2: abuse limits (sliding windows) and customer logins through the identity provider.
    r#"
    CREATE TABLE rate_events (
        kind    TEXT NOT NULL,             -- code_sent | consent_created
        subject BLOB NOT NULL,             -- keyed SHA-256 of the customer id or BIN
        at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX rate_events_by_subject ON rate_events(kind, subject, at);
    CREATE INDEX rate_events_by_time ON rate_events(at);
    CREATE INDEX consents_by_api_user_status ON consents(api_user, status);

    CREATE TABLE customer_logins (
        state_hash    BLOB PRIMARY KEY,    -- SHA-256 of the OAuth state
        browser_hash  BLOB NOT NULL,       -- SHA-256 of the browser-binding cookie
        nonce         TEXT NOT NULL,
        pkce_verifier TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL
    ) STRICT;
    "#,
    // 3: traffic rollups pushed by the gateways (`POST /v1/rollups`, feed_wire::rollup):
    // SLA accounting per provider and usage per API user. A minute is held once per
    // (gateway, epoch, minute); its calls and latency rows are written with it or not at all.
    r#"
    CREATE TABLE rollup_minutes (
        gateway     TEXT NOT NULL,         -- the gateway's configured name
        epoch       TEXT NOT NULL,         -- the gateway process's id (hex)
        minute      INTEGER NOT NULL,      -- the minute's start, unix seconds (UTC)
        received_at INTEGER NOT NULL,
        PRIMARY KEY (gateway, epoch, minute)
    ) STRICT;

    CREATE TABLE rollup_calls (
        gateway  TEXT NOT NULL,
        epoch    TEXT NOT NULL,
        minute   INTEGER NOT NULL,
        api_user TEXT,                     -- BIN; NULL: caller not identified
        provider TEXT,                     -- BIN; NULL: no provider in the path
        route    TEXT NOT NULL,            -- contract route template, or '-'
        outcome  TEXT NOT NULL,            -- feed_wire::rollup::Outcome
        calls    INTEGER NOT NULL,
        lines    INTEGER NOT NULL          -- transaction lines returned
    ) STRICT;
    -- The SLA report reads by time, all providers or one; usage reads by API user.
    CREATE INDEX rollup_calls_by_minute ON rollup_calls(minute);
    CREATE INDEX rollup_calls_by_provider ON rollup_calls(provider, minute);
    CREATE INDEX rollup_calls_by_api_user ON rollup_calls(api_user, minute);

    -- Latency histograms: one row per non-empty bucket (feed_wire::rollup::BUCKET_BOUNDS_US).
    CREATE TABLE rollup_latency (
        gateway  TEXT NOT NULL,
        epoch    TEXT NOT NULL,
        minute   INTEGER NOT NULL,
        provider TEXT NOT NULL,
        route    TEXT NOT NULL,
        kind     TEXT NOT NULL,            -- bank | hub
        bucket   INTEGER NOT NULL,         -- 0 .. BUCKETS - 1
        count    INTEGER NOT NULL,
        PRIMARY KEY (gateway, epoch, minute, provider, route, kind, bucket)
    ) STRICT;
    CREATE INDEX rollup_latency_by_minute ON rollup_latency(minute);
    CREATE INDEX rollup_latency_by_provider ON rollup_latency(provider, minute);
    "#,
    // 4: provider oversight: test subjects, graded APIs, their events, probe results.
    r#"
    CREATE TABLE probe_subjects (
        provider   TEXT PRIMARY KEY,       -- BIN
        subject    TEXT NOT NULL,          -- the test customer and consent, as JSON
        actor      TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE oversight_apis (
        provider   TEXT NOT NULL,
        api        TEXT NOT NULL,          -- feed_wire::ProviderApi
        state      TEXT NOT NULL,          -- grade::ApiState as JSON
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (provider, api)
    ) STRICT;

    CREATE TABLE oversight_events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        provider   TEXT NOT NULL,
        api        TEXT NOT NULL,
        at         INTEGER NOT NULL,
        actor      TEXT NOT NULL,          -- "probe" or the operator
        from_grade TEXT NOT NULL,
        to_grade   TEXT NOT NULL,
        listed     INTEGER NOT NULL,       -- 1: published after the event
        evidence   TEXT NOT NULL           -- JSON: the probe's failing rules, the pin's reason
    ) STRICT;
    CREATE INDEX oversight_events_by_provider ON oversight_events(provider, seq);

    CREATE TABLE probe_results (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        provider   TEXT NOT NULL,
        api        TEXT NOT NULL,
        at         INTEGER NOT NULL,
        passed     INTEGER NOT NULL,
        latency_us INTEGER NOT NULL,       -- the slowest call of the probe
        report     TEXT NOT NULL           -- conformance::ApiReport as JSON
    ) STRICT;
    CREATE INDEX probe_results_by_provider ON probe_results(provider, api, seq);
    CREATE INDEX probe_results_by_time ON probe_results(at);
    "#,
    // 5: live-traffic schema checks in the gateways' rollups (provider × route × minute),
    // stored with the minute they belong to (its key is in rollup_minutes).
    r#"
    CREATE TABLE rollup_live (
        gateway    TEXT NOT NULL,
        epoch      TEXT NOT NULL,
        minute     INTEGER NOT NULL,
        provider   TEXT NOT NULL,          -- BIN
        route      TEXT NOT NULL,          -- contract route template
        sampled    INTEGER NOT NULL,       -- answers validated
        violations INTEGER NOT NULL,       -- of those, answers breaking the provider schema
        unchecked  INTEGER NOT NULL,       -- sampled but not validated
        PRIMARY KEY (gateway, epoch, minute, provider, route)
    ) STRICT;
    CREATE INDEX rollup_live_by_minute ON rollup_live(minute);
    CREATE INDEX rollup_live_by_provider ON rollup_live(provider, minute);
    "#,
    // 6: usage and statements (issue 15, docs/billing.md): successful calls per consent
    // (free thresholds per customer per day), the sidecar's own events per API user,
    // issued statements (never rewritten) and their adjustments (append-only).
    r#"
    CREATE TABLE rollup_consents (
        gateway  TEXT NOT NULL,
        epoch    TEXT NOT NULL,
        minute   INTEGER NOT NULL,
        api_user TEXT NOT NULL,            -- BIN
        provider TEXT NOT NULL,            -- BIN
        consent  TEXT NOT NULL,            -- the consent id (consents.id)
        route    TEXT NOT NULL,            -- contract route template
        calls    INTEGER NOT NULL,          -- calls with outcome success
        PRIMARY KEY (gateway, epoch, minute, api_user, provider, consent, route)
    ) STRICT;
    CREATE INDEX rollup_consents_by_minute ON rollup_consents(minute);

    -- Counted in the transaction of the action itself (consents.rs, the token endpoint).
    CREATE TABLE usage_events (
        api_user TEXT NOT NULL,            -- BIN
        kind     TEXT NOT NULL,            -- usage::Event
        minute   INTEGER NOT NULL,          -- the minute's start, unix seconds (UTC)
        count    INTEGER NOT NULL,
        PRIMARY KEY (api_user, kind, minute)
    ) STRICT;
    CREATE INDEX usage_events_by_minute ON usage_events(minute);

    CREATE TABLE statements (
        id          TEXT PRIMARY KEY,
        participant TEXT NOT NULL,         -- BIN
        role        TEXT NOT NULL,         -- api_user | provider
        month       TEXT NOT NULL,         -- YYYY-MM in the tariff's time zone
        body        TEXT NOT NULL,         -- billing::Statement as JSON
        digest      TEXT NOT NULL,         -- SHA-256 of the canonical JSON, hex
        issued_at   INTEGER NOT NULL,
        UNIQUE (participant, role, month)
    ) STRICT;
    CREATE INDEX statements_by_month ON statements(month, participant);

    -- A month whose statements have been issued (also when nobody had usage).
    CREATE TABLE statement_months (
        month      TEXT PRIMARY KEY,
        issued_at  INTEGER NOT NULL,
        statements INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE statement_adjustments (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        statement_id TEXT NOT NULL REFERENCES statements(id),
        amount       TEXT NOT NULL,        -- signed decimal, 2 places
        reason       TEXT NOT NULL,
        actor        TEXT NOT NULL,        -- the operator
        at           INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX statement_adjustments_by_statement ON statement_adjustments(statement_id, seq);

    -- Issued is final: the database itself refuses to rewrite a statement or an adjustment.
    CREATE TRIGGER statements_no_update BEFORE UPDATE ON statements
        BEGIN SELECT RAISE(ABORT, 'statements are immutable'); END;
    CREATE TRIGGER statements_no_delete BEFORE DELETE ON statements
        BEGIN SELECT RAISE(ABORT, 'statements are immutable'); END;
    CREATE TRIGGER statement_adjustments_no_update BEFORE UPDATE ON statement_adjustments
        BEGIN SELECT RAISE(ABORT, 'statement_adjustments is append-only'); END;
    CREATE TRIGGER statement_adjustments_no_delete BEFORE DELETE ON statement_adjustments
        BEGIN SELECT RAISE(ABORT, 'statement_adjustments is append-only'); END;
    "#,
    // 7: the Idempotency-Key of adjustments (docs/billing-trust.md): the operator's key,
    // the request it first came with (SHA-256) and the adjustment it recorded. Kept as long
    // as the adjustment itself (append-only), so at least the 24 h the contract promises.
    r#"
    CREATE TABLE adjustment_keys (
        actor        TEXT NOT NULL,        -- the operator
        idem_key     TEXT NOT NULL,        -- the Idempotency-Key header
        request      TEXT NOT NULL,        -- SHA-256 of the statement id and the body, hex
        statement_id TEXT NOT NULL REFERENCES statements(id),
        seq          INTEGER NOT NULL REFERENCES statement_adjustments(seq),
        at           INTEGER NOT NULL,
        PRIMARY KEY (actor, idem_key)
    ) STRICT;
    "#,
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the missing migrations, each in its own transaction with the version bump;
/// refuses a database written by a newer binary.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(store_error)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let done = usize::try_from(found.max(0)).unwrap_or(usize::MAX);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(store_error)?;
        tx.execute_batch(sql).map_err(store_error)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(store_error)?;
        tx.commit().map_err(store_error)?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}
