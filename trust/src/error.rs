//! What an API operation can fail with. Each variant carries the stable `code` the
//! answer names; `http::problem` is the one place that turns them into responses.

use crate::db::StoreError;

/// Why an OTP step failed; the answer tells the customer what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpState {
    /// Verification attempts left in this authorisation session.
    pub attempts_left: u32,
    /// Codes that can still be sent in this authorisation session.
    pub codes_left: u32,
}

/// A failed API operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (unparsable JSON, unknown member, bad query).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body is over the limit.
    #[error("the request body is over {0} bytes")]
    TooLarge(usize),
    /// The request parses but breaks a rule (`code` names which).
    #[error("{code}: {detail}")]
    Unprocessable {
        /// Stable error code.
        code: &'static str,
        /// What is wrong (never secrets or customer data).
        detail: String,
    },
    /// No client certificate, or one that maps to nobody allowed here.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// Authenticated, but not allowed (`code` names why).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// Nothing there (or nothing this caller may know of).
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The resource is in a state that does not allow this.
    #[error("{code}: {detail}")]
    Conflict {
        /// Stable error code.
        code: &'static str,
        /// What the state is.
        detail: String,
    },
    /// A limit of the authorisation session was reached (`code` names which).
    #[error("{code}")]
    Limit {
        /// Stable error code.
        code: &'static str,
        /// What is left.
        otp: Option<OtpState>,
    },
    /// A one-time code was wrong or expired.
    #[error("{code}")]
    Otp {
        /// `otp_invalid` or `otp_expired`.
        code: &'static str,
        /// What is left.
        otp: OtpState,
    },
    /// An abuse limit was reached (`trust::abuse`): `429 rate_limited` with `Retry-After`.
    #[error("rate limited: {detail}")]
    RateLimited {
        /// Seconds until the request would be admitted.
        retry_after: u64,
        /// Which limit (never who hit it).
        detail: String,
    },
    /// A customer login through the identity provider failed (`401 login_failed`); says
    /// which check, never a value from the token.
    #[error("login failed: {0}")]
    LoginFailed(&'static str),
    /// The request body did not arrive within the listener's body read timeout.
    #[error("the request body did not arrive in time")]
    Timeout,
    /// A service the operation needs is unreachable (`code` names which).
    #[error("{code}: {detail}")]
    Unavailable {
        /// Stable error code.
        code: &'static str,
        /// What failed (no secrets).
        detail: String,
    },
    /// The notifier could not deliver a code.
    #[error("notifier: {0}")]
    Notifier(String),
    /// Signing a token failed.
    #[error("signing: {0}")]
    Signing(String),
    /// Storage failed (a database that cannot be reached is [`Error::Unavailable`]).
    #[error(transparent)]
    Store(StoreError),
    /// An internal failure (a blocking task panicked, a lock was poisoned).
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    /// A database that cannot be reached (SQLite locked past the busy timeout, PostgreSQL
    /// down) is `503 database_unavailable`: the request may succeed later.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                Error::Unavailable {
                    code: "database_unavailable",
                    detail: "the database could not be reached".into(),
                }
            }
            other => Error::Store(other),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Store(StoreError::Json(e))
    }
}

impl Error {
    /// A rule violation (`invalid_field`) naming the field.
    pub fn invalid(field: &str, what: impl std::fmt::Display) -> Self {
        Error::Unprocessable {
            code: "invalid_field",
            detail: format!("{field}: {what}"),
        }
    }
}
