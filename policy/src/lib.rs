//! Pure decision logic of the hub: route table and strict path parsing, access-token
//! checks, the consent decision (contract §6), rate-limit keys and the error codes
//! rendered as problem+json. No I/O, no async runtime, no proxy types.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod code;
pub mod decision;
pub mod directory;
pub mod limits;
pub mod route;
pub mod token;

pub use code::{problem_json, Code, PROBLEM_CONTENT_TYPE};
pub use decision::{decide, ConsentView, Facts, Grant, Rejection};
pub use directory::{
    Directory, DirectoryBuilder, DirectoryError, Participant, ParticipantStatus, ProviderEntry,
    Role, Roles,
};
pub use limits::{LimitKind, LimitSettings, Limited, Limiter, QuotaSettings, RateInfo};
pub use route::{match_route, parse_route, upstream_path, Dataset, Route, RouteError, RouteId};
pub use token::{
    bearer, check_binding, Jwks, JwksError, TokenError, TokenSettings, TokenVerifier, VerifiedToken,
};

/// Re-exported consent-cache value types, so callers need one import path.
pub use consent_cache::{Bin, ConsentStatus, Permission, Permissions};
