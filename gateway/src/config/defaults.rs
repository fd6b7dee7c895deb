//! Every default of the configuration file, in one place: the serde defaults of the
//! DTOs, the constructors that build a typed configuration, and the upstream settings
//! of a provider that only the trust registry knows all read these.

use std::path::PathBuf;
use toml::Spanned;

/// `[server] admin_listen`.
pub const ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// `[server] max_header_bytes`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// `[server] max_body_bytes`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `[server] http2`.
pub const HTTP2: bool = true;
/// `[server] grace_period_secs`.
pub const GRACE_PERIOD_SECS: u64 = 1;
/// `[server] shutdown_timeout_secs`.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 10;
/// `[server] upstream_keepalive_pool_size`.
pub const UPSTREAM_POOL: usize = 1024;
/// `[server] tls_handshake_timeout_secs`.
pub const TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// `[server] max_connections`: far above the participants' needs (a few connections per
/// API user), well below what a process can hold open.
pub const MAX_CONNECTIONS: usize = 10_000;
/// `[tokens] leeway_secs`.
pub const LEEWAY_SECS: u64 = 30;
/// `[tokens] max_token_bytes`.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// `[tokens] cache_capacity`.
pub const TOKEN_CACHE: usize = 100_000;
/// `[tokens] max_failed_verifications_per_connection_per_sec`: far above a client that
/// retries a rejected token, far below what a flood would cost.
pub const FAILED_VERIFICATIONS_PER_CONNECTION: u32 =
    policy::token::DEFAULT_FAILED_VERIFICATIONS_PER_CONNECTION.get();
/// `[tokens] max_failed_verifications_per_certificate_per_sec`: one participant's fleet.
pub const FAILED_VERIFICATIONS_PER_CERTIFICATE: u32 =
    policy::token::DEFAULT_FAILED_VERIFICATIONS_PER_CERTIFICATE.get();
/// `[trust] max_staleness_secs`.
pub const MAX_STALENESS_SECS: u64 = 30;
/// `[consents] max_staleness_secs`: how long a changed consent file may fail to load.
pub const CONSENT_MAX_STALENESS_SECS: u64 = 300;
/// `[trust] jwks_refresh_secs`.
pub const JWKS_REFRESH_SECS: u64 = 300;
/// `[trust] heartbeat_secs`: the sidecar's default heartbeat interval.
pub const HEARTBEAT_SECS: u64 = 5;
/// `[audit] path`: standard output.
pub const AUDIT_PATH: &str = "-";
/// `[audit] buffer`.
pub const AUDIT_BUFFER: usize = 65_536;
/// `[rollups] push_interval_ms`.
pub const ROLLUP_PUSH_INTERVAL_MS: u64 = 10_000;
/// `[rollups] max_pending_minutes`: a day of minutes kept while the control plane is away.
pub const ROLLUP_MAX_PENDING_MINUTES: usize = 1_440;
/// `[rollups] close_after_secs`: longer than the default SLA with room for the body.
pub const ROLLUP_CLOSE_AFTER_SECS: u64 = 30;
/// `[live_checks] sample_rate`: 1 % of successful provider answers (issue 14).
pub const LIVE_SAMPLE_RATE: f64 = 0.01;
/// `[live_checks] max_body_bytes`: 1 MiB (a page of 500 transactions is about 150 KiB).
pub const LIVE_MAX_BODY_BYTES: usize = 1 << 20;
/// `[live_checks] queue`: sampled answers waiting for the validator (at most this many
/// times `max_body_bytes` held).
pub const LIVE_QUEUE: usize = 64;
/// `[[providers]] published`.
pub const PUBLISHED: bool = true;
/// `[[providers]] connect_timeout_ms`.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// `[[providers]] timeout_ms` (the SLA).
pub const TIMEOUT_MS: u64 = 5_000;
/// `[[providers]] eject_after_failures`.
pub const EJECT_AFTER: u32 = 3;
/// `[[providers]] eject_secs`.
pub const EJECT_SECS: u64 = 10;

// The functions serde's `default = "…"` attributes name.
pub(super) fn admin_listen() -> Spanned<String> {
    Spanned::new(0..0, ADMIN_LISTEN.to_string())
}
pub(super) fn max_header_bytes() -> usize {
    MAX_HEADER_BYTES
}
pub(super) fn max_body_bytes() -> usize {
    MAX_BODY_BYTES
}
pub(super) fn http2() -> bool {
    HTTP2
}
pub(super) fn grace_period_secs() -> u64 {
    GRACE_PERIOD_SECS
}
pub(super) fn shutdown_timeout_secs() -> u64 {
    SHUTDOWN_TIMEOUT_SECS
}
pub(super) fn upstream_pool() -> usize {
    UPSTREAM_POOL
}
pub(super) fn tls_handshake_timeout_secs() -> u64 {
    TLS_HANDSHAKE_TIMEOUT_SECS
}
pub(super) fn max_connections() -> usize {
    MAX_CONNECTIONS
}
pub(super) fn leeway_secs() -> Spanned<u64> {
    Spanned::new(0..0, LEEWAY_SECS)
}
pub(super) fn max_token_bytes() -> usize {
    MAX_TOKEN_BYTES
}
pub(super) fn token_cache() -> usize {
    TOKEN_CACHE
}
pub(super) fn failed_verifications_per_connection() -> Spanned<u32> {
    Spanned::new(0..0, FAILED_VERIFICATIONS_PER_CONNECTION)
}
pub(super) fn failed_verifications_per_certificate() -> Spanned<u32> {
    Spanned::new(0..0, FAILED_VERIFICATIONS_PER_CERTIFICATE)
}
pub(super) fn max_staleness_secs() -> u64 {
    MAX_STALENESS_SECS
}
pub(super) fn consent_max_staleness_secs() -> u64 {
    CONSENT_MAX_STALENESS_SECS
}
pub(super) fn jwks_refresh_secs() -> u64 {
    JWKS_REFRESH_SECS
}
pub(super) fn heartbeat_secs() -> u64 {
    HEARTBEAT_SECS
}
/// `[trust] url` left out (`urls` names the endpoints).
pub(super) fn no_url() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}
pub(super) fn is_no_url(url: &Spanned<String>) -> bool {
    url.get_ref().is_empty()
}
pub(super) fn audit_path() -> PathBuf {
    PathBuf::from(AUDIT_PATH)
}
pub(super) fn audit_buffer() -> usize {
    AUDIT_BUFFER
}
pub(super) fn rollup_push_interval_ms() -> u64 {
    ROLLUP_PUSH_INTERVAL_MS
}
pub(super) fn rollup_max_pending_minutes() -> usize {
    ROLLUP_MAX_PENDING_MINUTES
}
pub(super) fn rollup_close_after_secs() -> u64 {
    ROLLUP_CLOSE_AFTER_SECS
}
pub(super) fn live_sample_rate() -> Spanned<f64> {
    Spanned::new(0..0, LIVE_SAMPLE_RATE)
}
pub(super) fn live_max_body_bytes() -> usize {
    LIVE_MAX_BODY_BYTES
}
pub(super) fn live_queue() -> usize {
    LIVE_QUEUE
}
pub(super) fn published() -> bool {
    PUBLISHED
}
pub(super) fn connect_timeout_ms() -> u64 {
    CONNECT_TIMEOUT_MS
}
pub(super) fn timeout_ms() -> u64 {
    TIMEOUT_MS
}
pub(super) fn eject_after() -> u32 {
    EJECT_AFTER
}
pub(super) fn eject_secs() -> u64 {
    EJECT_SECS
}
