//! End-to-end test support: runs the hub binary as a child process beside in-process
//! sandbox banks (`hub`), and talks to it over real mTLS with a raw HTTP/1.1 client and an
//! HTTP/2 client that assert the contract's problem+json answers (`http`), and hold every
//! answer those clients receive to the OpenAPI documents (`openapi`).

pub mod demo;
pub mod http;
pub mod hub;
pub mod openapi;
pub mod receiver;

pub use http::{is_uuid, ClientCert, Req, Response, TlsVersions};
pub use hub::{
    account_path, accounts_path, assert_no_late_allow, audit_verify, balances_path, bin,
    closed_port, feed_version, free_port, line_of, metric, now_unix, open_data_path, peers_runtime,
    poll_until, replace_file, revoked_version, transactions_path, Client, Hub, Setup,
    ALL_PERMISSIONS, BANK_1, BANK_2, USER_A, USER_B, USER_SUSPENDED,
};
pub use openapi::Api;

/// The request records of an audit journal (lines with an `interaction_id`; start-up and
/// other records left out), as JSON.
pub fn journal_requests(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("interaction_id").is_some())
        .collect()
}

/// The minute (Unix seconds, a multiple of 60) a journal line is counted in by the
/// gateway's rollups: its `rollup_minute` when the request outlived its minute's closing,
/// else the minute of its `time`.
pub fn journal_minute(line: &serde_json::Value) -> i64 {
    let time = time::OffsetDateTime::parse(
        line["time"].as_str().expect("time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    line["rollup_minute"]
        .as_i64()
        .unwrap_or(time.unix_timestamp().div_euclid(60) * 60)
}
