//! The PostgreSQL schema: the same tables and columns as the SQLite engine's (INTEGER →
//! BIGINT, BLOB → BYTEA, `INTEGER PRIMARY KEY AUTOINCREMENT` → an identity column, the
//! append-only history triggers as plpgsql), plus what several replicas on one database
//! need: `feed_head` (the change feed's sequencer, one row), `epochs` (a new one per
//! promotion or restore) and `schema_migrations`.
//!
//! Each migration runs in its own transaction under a transaction-scoped advisory lock
//! ([`MIGRATION_LOCK`]), so two replicas starting together never both migrate: the second
//! waits, then finds the version already applied. A database with a version newer than
//! this binary knows is refused ([`StoreError::NewerSchema`]).
//!
//! Never edit a released entry of [`MIGRATIONS`]; append a new one.

use tokio_postgres::Client;

use crate::api::StoreError;
use crate::postgres::pg_error;

/// The advisory lock key (`pg_advisory_xact_lock`) that serialises migrations.
pub(crate) const MIGRATION_LOCK: i64 = 0x7472_7573_745f_6d67; // "trust_mg"

/// The schema, one entry per version: entry `i` brings the database from version `i`
/// to `i + 1` (recorded in `schema_migrations`).
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the first schema (SQLite migration 1) plus the feed head and the epochs.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE participants (
        bin        TEXT PRIMARY KEY,
        record     TEXT NOT NULL,          -- wire::ParticipantRecord as JSON
        status     TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        version    BIGINT NOT NULL         -- feed version of the last change
    );

    CREATE TABLE participant_thumbprints (
        thumbprint TEXT PRIMARY KEY,       -- x5t#S256
        bin        TEXT NOT NULL REFERENCES participants(bin)
    );

    CREATE TABLE participant_history (
        seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        bin     TEXT NOT NULL,
        at      BIGINT NOT NULL,
        actor   TEXT NOT NULL,
        from_status TEXT,
        to_status   TEXT NOT NULL,
        version BIGINT NOT NULL
    );

    CREATE TABLE consents (
        id         TEXT PRIMARY KEY,
        api_user   TEXT NOT NULL,
        customer   TEXT NOT NULL,
        status     TEXT NOT NULL,
        expires_at BIGINT,
        record     TEXT NOT NULL,          -- consent_cache::ConsentRecord as JSON
        version    BIGINT NOT NULL
    );
    CREATE INDEX consents_by_customer ON consents(customer);
    CREATE INDEX consents_due ON consents(expires_at) WHERE expires_at IS NOT NULL
        AND status IN ('awaiting_authorisation', 'authorised');

    CREATE TABLE consent_history (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        consent_id TEXT NOT NULL,
        at         BIGINT NOT NULL,
        actor      TEXT NOT NULL,
        from_status TEXT,                  -- NULL for the creation
        to_status  TEXT NOT NULL,
        version    BIGINT NOT NULL
    );
    CREATE INDEX consent_history_by_consent ON consent_history(consent_id, seq);

    -- History is append-only: the database itself refuses to rewrite it.
    CREATE FUNCTION trust_refuse_history_rewrite() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
        END
        $$;
    CREATE TRIGGER consent_history_no_update BEFORE UPDATE ON consent_history
        FOR EACH ROW EXECUTE FUNCTION trust_refuse_history_rewrite();
    CREATE TRIGGER consent_history_no_delete BEFORE DELETE ON consent_history
        FOR EACH ROW EXECUTE FUNCTION trust_refuse_history_rewrite();
    CREATE TRIGGER consent_history_no_truncate BEFORE TRUNCATE ON consent_history
        FOR EACH STATEMENT EXECUTE FUNCTION trust_refuse_history_rewrite();
    CREATE TRIGGER participant_history_no_update BEFORE UPDATE ON participant_history
        FOR EACH ROW EXECUTE FUNCTION trust_refuse_history_rewrite();
    CREATE TRIGGER participant_history_no_delete BEFORE DELETE ON participant_history
        FOR EACH ROW EXECUTE FUNCTION trust_refuse_history_rewrite();
    CREATE TRIGGER participant_history_no_truncate BEFORE TRUNCATE ON participant_history
        FOR EACH STATEMENT EXECUTE FUNCTION trust_refuse_history_rewrite();

    CREATE TABLE changes (
        version BIGINT PRIMARY KEY,        -- contiguous from 1
        at      BIGINT NOT NULL,
        line    TEXT NOT NULL              -- the feed line (wire::FeedLine JSON, no newline)
    );

    CREATE TABLE authorisations (
        id              TEXT PRIMARY KEY,
        consent_id      TEXT NOT NULL,
        customer        TEXT NOT NULL,
        created_at      BIGINT NOT NULL,
        state           TEXT NOT NULL,     -- open | succeeded | failed | superseded | closed
        codes_sent      BIGINT NOT NULL,
        attempts        BIGINT NOT NULL,
        code_salt       BYTEA,
        code_hash       BYTEA,
        code_expires_at BIGINT
    );
    CREATE INDEX authorisations_by_consent ON authorisations(consent_id);

    CREATE TABLE customer_sessions (
        token_hash BYTEA PRIMARY KEY,      -- SHA-256 of the bearer value
        customer   TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );

    CREATE TABLE signing_keys (
        kid            TEXT PRIMARY KEY,
        alg            TEXT NOT NULL,
        pkcs8          BYTEA NOT NULL,
        published_at   BIGINT NOT NULL,    -- in the JWKS from then on
        activated_at   BIGINT,             -- signing from then on (NULL: the next key)
        deactivated_at BIGINT,             -- superseded then
        drop_after     BIGINT              -- leaves the JWKS then
    );

    -- The change feed's sequencer: one row, the newest committed version. A writer
    -- that emits changes locks it (SELECT … FOR UPDATE) for the rest of its
    -- transaction, so versions are allocated and committed in order, without holes.
    CREATE TABLE feed_head (
        id      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
        version BIGINT NOT NULL CHECK (version >= 0)
    );
    INSERT INTO feed_head(id, version) VALUES (TRUE, 0);

    -- One row per database lineage: a new epoch when the server's WAL timeline or
    -- system identifier moved on (promotion of a standby, restore from a backup).
    CREATE TABLE epochs (
        epoch      BIGINT PRIMARY KEY,
        timeline   BIGINT NOT NULL,
        system_id  TEXT NOT NULL,
        started_at BIGINT NOT NULL         -- unix seconds
    );
    "#,
    // 2: abuse limits (sliding windows) and customer logins (SQLite migration 2).
    r#"
    CREATE TABLE rate_events (
        kind    TEXT NOT NULL,             -- code_sent | consent_created
        subject BYTEA NOT NULL,            -- keyed SHA-256 of the customer id or BIN
        at      BIGINT NOT NULL
    );
    CREATE INDEX rate_events_by_subject ON rate_events(kind, subject, at);
    CREATE INDEX rate_events_by_time ON rate_events(at);
    CREATE INDEX consents_by_api_user_status ON consents(api_user, status);

    CREATE TABLE customer_logins (
        state_hash    BYTEA PRIMARY KEY,   -- SHA-256 of the OAuth state
        browser_hash  BYTEA NOT NULL,      -- SHA-256 of the browser-binding cookie
        nonce         TEXT NOT NULL,
        pkce_verifier TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        expires_at    BIGINT NOT NULL
    );
    "#,
    // 3: traffic rollups pushed by the gateways (SQLite migration 3).
    r#"
    CREATE TABLE rollup_minutes (
        gateway     TEXT NOT NULL,         -- the gateway's configured name
        epoch       TEXT NOT NULL,         -- the gateway process's id (hex)
        minute      BIGINT NOT NULL,       -- the minute's start, unix seconds (UTC)
        received_at BIGINT NOT NULL,
        PRIMARY KEY (gateway, epoch, minute)
    );

    CREATE TABLE rollup_calls (
        gateway  TEXT NOT NULL,
        epoch    TEXT NOT NULL,
        minute   BIGINT NOT NULL,
        api_user TEXT,                     -- BIN; NULL: caller not identified
        provider TEXT,                     -- BIN; NULL: no provider in the path
        route    TEXT NOT NULL,            -- contract route template, or '-'
        outcome  TEXT NOT NULL,            -- feed_wire::rollup::Outcome
        calls    BIGINT NOT NULL,
        lines    BIGINT NOT NULL          -- transaction lines returned
    );
    -- The SLA report reads by time, all providers or one; usage reads by API user.
    CREATE INDEX rollup_calls_by_minute ON rollup_calls(minute);
    CREATE INDEX rollup_calls_by_provider ON rollup_calls(provider, minute);
    CREATE INDEX rollup_calls_by_api_user ON rollup_calls(api_user, minute);

    -- Latency histograms: one row per non-empty bucket (feed_wire::rollup::BUCKET_BOUNDS_US).
    CREATE TABLE rollup_latency (
        gateway  TEXT NOT NULL,
        epoch    TEXT NOT NULL,
        minute   BIGINT NOT NULL,
        provider TEXT NOT NULL,
        route    TEXT NOT NULL,
        kind     TEXT NOT NULL,            -- bank | hub
        bucket   BIGINT NOT NULL,          -- 0 .. BUCKETS - 1
        count    BIGINT NOT NULL,
        PRIMARY KEY (gateway, epoch, minute, provider, route, kind, bucket)
    );
    CREATE INDEX rollup_latency_by_minute ON rollup_latency(minute);
    CREATE INDEX rollup_latency_by_provider ON rollup_latency(provider, minute);
    "#,
    // 4: provider oversight (SQLite migration 4).
    r#"
    CREATE TABLE probe_subjects (
        provider   TEXT PRIMARY KEY,
        subject    TEXT NOT NULL,
        actor      TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );

    CREATE TABLE oversight_apis (
        provider   TEXT NOT NULL,
        api        TEXT NOT NULL,
        state      TEXT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (provider, api)
    );

    CREATE TABLE oversight_events (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        provider   TEXT NOT NULL,
        api        TEXT NOT NULL,
        at         BIGINT NOT NULL,
        actor      TEXT NOT NULL,
        from_grade TEXT NOT NULL,
        to_grade   TEXT NOT NULL,
        listed     BIGINT NOT NULL,
        evidence   TEXT NOT NULL
    );
    CREATE INDEX oversight_events_by_provider ON oversight_events(provider, seq);

    CREATE TABLE probe_results (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        provider   TEXT NOT NULL,
        api        TEXT NOT NULL,
        at         BIGINT NOT NULL,
        passed     BIGINT NOT NULL,
        latency_us BIGINT NOT NULL,
        report     TEXT NOT NULL
    );
    CREATE INDEX probe_results_by_provider ON probe_results(provider, api, seq);
    CREATE INDEX probe_results_by_time ON probe_results(at);
    "#,
    // 5: live-traffic schema checks in the gateways' rollups (SQLite migration 5).
    r#"
    CREATE TABLE rollup_live (
        gateway    TEXT NOT NULL,
        epoch      TEXT NOT NULL,
        minute     BIGINT NOT NULL,
        provider   TEXT NOT NULL,
        route      TEXT NOT NULL,
        sampled    BIGINT NOT NULL,
        violations BIGINT NOT NULL,
        unchecked  BIGINT NOT NULL,
        PRIMARY KEY (gateway, epoch, minute, provider, route)
    );
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
        minute   BIGINT NOT NULL,
        api_user TEXT NOT NULL,            -- BIN
        provider TEXT NOT NULL,            -- BIN
        consent  TEXT NOT NULL,            -- the consent id (consents.id)
        route    TEXT NOT NULL,            -- contract route template
        calls    BIGINT NOT NULL,          -- calls with outcome success
        PRIMARY KEY (gateway, epoch, minute, api_user, provider, consent, route)
    );
    CREATE INDEX rollup_consents_by_minute ON rollup_consents(minute);

    -- Counted in the transaction of the action itself (consents.rs, the token endpoint).
    CREATE TABLE usage_events (
        api_user TEXT NOT NULL,            -- BIN
        kind     TEXT NOT NULL,            -- usage::Event
        minute   BIGINT NOT NULL,          -- the minute's start, unix seconds (UTC)
        count    BIGINT NOT NULL,
        PRIMARY KEY (api_user, kind, minute)
    );
    CREATE INDEX usage_events_by_minute ON usage_events(minute);

    CREATE TABLE statements (
        id          TEXT PRIMARY KEY,
        participant TEXT NOT NULL,         -- BIN
        role        TEXT NOT NULL,         -- api_user | provider
        month       TEXT NOT NULL,         -- YYYY-MM in the tariff's time zone
        body        TEXT NOT NULL,         -- billing::Statement as JSON
        digest      TEXT NOT NULL,         -- SHA-256 of the canonical JSON, hex
        issued_at   BIGINT NOT NULL,
        UNIQUE (participant, role, month)
    );
    CREATE INDEX statements_by_month ON statements(month, participant);

    -- A month whose statements have been issued (also when nobody had usage).
    CREATE TABLE statement_months (
        month      TEXT PRIMARY KEY,
        issued_at  BIGINT NOT NULL,
        statements BIGINT NOT NULL
    );

    CREATE TABLE statement_adjustments (
        seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        statement_id TEXT NOT NULL REFERENCES statements(id),
        amount       TEXT NOT NULL,        -- signed decimal, 2 places
        reason       TEXT NOT NULL,
        actor        TEXT NOT NULL,        -- the operator
        at           BIGINT NOT NULL
    );
    CREATE INDEX statement_adjustments_by_statement ON statement_adjustments(statement_id, seq);

    -- Issued is final: the database itself refuses to rewrite a statement or an adjustment
    -- (the history triggers' function, migration 1).
    CREATE TRIGGER statements_immutable BEFORE UPDATE OR DELETE ON statements
        FOR EACH ROW EXECUTE FUNCTION trust_refuse_history_rewrite();
    CREATE TRIGGER statement_adjustments_append_only
        BEFORE UPDATE OR DELETE ON statement_adjustments
        FOR EACH ROW EXECUTE FUNCTION trust_refuse_history_rewrite();
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
        seq          BIGINT NOT NULL REFERENCES statement_adjustments(seq),
        at           BIGINT NOT NULL,
        PRIMARY KEY (actor, idem_key)
    );
    "#,
];

/// The newest schema version this binary knows.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the missing migrations, one transaction each, under the migration lock.
/// Returns the schema version found before migrating.
pub(crate) async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    let mut first = None;
    loop {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_error)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(pg_error)?;
        let found: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(pg_error)?;
        first.get_or_insert(found);
        if found > PG_SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                known: PG_SCHEMA_VERSION,
            });
        }
        let Some(sql) = usize::try_from(found).ok().and_then(|i| MIGRATIONS.get(i)) else {
            // Up to date: the transaction only created (or saw) schema_migrations.
            tx.commit().await.map_err(pg_error)?;
            return Ok(first.unwrap_or(found));
        };
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO schema_migrations(version) VALUES ($1)",
            &[&(found + 1)],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = found + 1, "PostgreSQL schema migrated");
    }
}

/// Creates the database's random id once (`meta.store_id`) and returns it.
pub(crate) async fn store_id(client: &Client) -> Result<String, StoreError> {
    client
        .execute(
            "INSERT INTO meta(key, value) VALUES ('store_id', gen_random_uuid()::text)
             ON CONFLICT (key) DO NOTHING",
            &[],
        )
        .await
        .map_err(pg_error)?;
    client
        .query_one("SELECT value FROM meta WHERE key = 'store_id'", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg_error)
}
