//! The contract's decision codes (§6) and their RFC 9457 `application/problem+json`
//! rendering. This is the one place that maps a code to its HTTP status and title.

use serde::Serialize;

/// The media type of every error body the hub produces (RFC 9457).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Every decision code of contract §6, plus the three transport-level codes
/// (`request_header_fields_too_large`, `payload_too_large`, `internal_error`) and the
/// hub's own `audit_unavailable` (503: the audit journal cannot take records, so consent
/// routes are not served) and `limits_unavailable` (503: the shared rate-limit store
/// failed and the limit's failure policy is `deny`); the contract has no code for either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// 400: malformed HTTP, a path or query that fails strict parsing.
    BadRequest,
    /// 404: no route has this path.
    RouteNotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 403: the client certificate is not registered to a participant.
    ParticipantUnknown,
    /// 403: the participant is not active or lacks the `user` role.
    ParticipantInactive,
    /// 401: the bearer token is missing, malformed or fails verification.
    InvalidToken,
    /// 401: the token's `client_id` or `cnf` does not match the connection.
    TokenBindingMismatch,
    /// 403: the token's `scope` lacks the route's permission.
    InsufficientScope,
    /// 503: the consent cache has not heard from its source within the bound.
    ConsentStateStale,
    /// 403: no consent with the token's `consent_id`.
    ConsentNotFound,
    /// 403: the consent belongs to another API user.
    ConsentNotOwned,
    /// 403: the consent was revoked.
    ConsentRevoked,
    /// 403: the consent is awaiting authorisation or was rejected.
    ConsentNotAuthorised,
    /// 403: the consent is past `expires_at` (or its status is `expired`).
    ConsentExpired,
    /// 403: the provider in the path is not covered by the consent.
    ProviderNotInConsent,
    /// 403: the consent does not grant the route's permission.
    PermissionNotGranted,
    /// 403: the consent restricts accounts and does not cover this one.
    AccountNotInConsent,
    /// 404: the provider is unknown to the hub.
    ProviderNotFound,
    /// 503: the provider is not active, not published, unreachable or its circuit is open.
    ProviderUnavailable,
    /// 429: a rate limit refused the request.
    RateLimited,
    /// 504: the provider did not answer within its SLA.
    ProviderTimeout,
    /// 502: the provider's answer was not valid HTTP.
    ProviderBadResponse,
    /// 431: the request's header section is too large.
    RequestHeaderFieldsTooLarge,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 500: a failure inside the hub.
    InternalError,
    /// 503: the audit journal cannot take records; consent routes wait for it.
    AuditUnavailable,
    /// 503: the shared rate-limit store failed and a limit class's failure policy is
    /// `deny` (`[limits.classes]`).
    LimitsUnavailable,
}

impl Code {
    /// Every code, in contract order (useful for metrics registration and tests).
    pub const ALL: [Code; 27] = [
        Code::BadRequest,
        Code::RouteNotFound,
        Code::MethodNotAllowed,
        Code::ParticipantUnknown,
        Code::ParticipantInactive,
        Code::InvalidToken,
        Code::TokenBindingMismatch,
        Code::InsufficientScope,
        Code::ConsentStateStale,
        Code::ConsentNotFound,
        Code::ConsentNotOwned,
        Code::ConsentRevoked,
        Code::ConsentNotAuthorised,
        Code::ConsentExpired,
        Code::ProviderNotInConsent,
        Code::PermissionNotGranted,
        Code::AccountNotInConsent,
        Code::ProviderNotFound,
        Code::ProviderUnavailable,
        Code::RateLimited,
        Code::ProviderTimeout,
        Code::ProviderBadResponse,
        Code::RequestHeaderFieldsTooLarge,
        Code::PayloadTooLarge,
        Code::InternalError,
        Code::AuditUnavailable,
        Code::LimitsUnavailable,
    ];

    /// The HTTP status of this code; the only code → status table in the hub.
    pub const fn status(self) -> u16 {
        match self {
            Code::BadRequest => 400,
            Code::InvalidToken | Code::TokenBindingMismatch => 401,
            Code::ParticipantUnknown
            | Code::ParticipantInactive
            | Code::InsufficientScope
            | Code::ConsentNotFound
            | Code::ConsentNotOwned
            | Code::ConsentRevoked
            | Code::ConsentNotAuthorised
            | Code::ConsentExpired
            | Code::ProviderNotInConsent
            | Code::PermissionNotGranted
            | Code::AccountNotInConsent => 403,
            Code::RouteNotFound | Code::ProviderNotFound => 404,
            Code::MethodNotAllowed => 405,
            Code::PayloadTooLarge => 413,
            Code::RateLimited => 429,
            Code::RequestHeaderFieldsTooLarge => 431,
            Code::InternalError => 500,
            Code::ProviderBadResponse => 502,
            Code::ConsentStateStale
            | Code::ProviderUnavailable
            | Code::AuditUnavailable
            | Code::LimitsUnavailable => 503,
            Code::ProviderTimeout => 504,
        }
    }

    /// The wire `code` member.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::RouteNotFound => "route_not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::ParticipantUnknown => "participant_unknown",
            Code::ParticipantInactive => "participant_inactive",
            Code::InvalidToken => "invalid_token",
            Code::TokenBindingMismatch => "token_binding_mismatch",
            Code::InsufficientScope => "insufficient_scope",
            Code::ConsentStateStale => "consent_state_stale",
            Code::ConsentNotFound => "consent_not_found",
            Code::ConsentNotOwned => "consent_not_owned",
            Code::ConsentRevoked => "consent_revoked",
            Code::ConsentNotAuthorised => "consent_not_authorised",
            Code::ConsentExpired => "consent_expired",
            Code::ProviderNotInConsent => "provider_not_in_consent",
            Code::PermissionNotGranted => "permission_not_granted",
            Code::AccountNotInConsent => "account_not_in_consent",
            Code::ProviderNotFound => "provider_not_found",
            Code::ProviderUnavailable => "provider_unavailable",
            Code::RateLimited => "rate_limited",
            Code::ProviderTimeout => "provider_timeout",
            Code::ProviderBadResponse => "provider_bad_response",
            Code::RequestHeaderFieldsTooLarge => "request_header_fields_too_large",
            Code::PayloadTooLarge => "payload_too_large",
            Code::InternalError => "internal_error",
            Code::AuditUnavailable => "audit_unavailable",
            Code::LimitsUnavailable => "limits_unavailable",
        }
    }

    /// A short human-readable summary (the problem's `title`); never request-specific.
    pub const fn title(self) -> &'static str {
        match self {
            Code::BadRequest => "Bad request",
            Code::RouteNotFound => "Route not found",
            Code::MethodNotAllowed => "Method not allowed",
            Code::ParticipantUnknown => "Participant unknown",
            Code::ParticipantInactive => "Participant inactive",
            Code::InvalidToken => "Invalid access token",
            Code::TokenBindingMismatch => "Access token not bound to this client",
            Code::InsufficientScope => "Insufficient scope",
            Code::ConsentStateStale => "Consent state stale",
            Code::ConsentNotFound => "Consent not found",
            Code::ConsentNotOwned => "Consent not owned by the API user",
            Code::ConsentRevoked => "Consent revoked",
            Code::ConsentNotAuthorised => "Consent not authorised",
            Code::ConsentExpired => "Consent expired",
            Code::ProviderNotInConsent => "Provider not covered by the consent",
            Code::PermissionNotGranted => "Permission not granted by the consent",
            Code::AccountNotInConsent => "Account not covered by the consent",
            Code::ProviderNotFound => "Provider not found",
            Code::ProviderUnavailable => "Provider unavailable",
            Code::RateLimited => "Rate limited",
            Code::ProviderTimeout => "Provider timeout",
            Code::ProviderBadResponse => "Provider bad response",
            Code::RequestHeaderFieldsTooLarge => "Request header fields too large",
            Code::PayloadTooLarge => "Payload too large",
            Code::InternalError => "Internal error",
            Code::AuditUnavailable => "Audit journal unavailable",
            Code::LimitsUnavailable => "Rate-limit store unavailable",
        }
    }

    /// The problem's `detail` when nothing more precise is known: what the code means
    /// for the caller, in words (more precise details come from the rule that failed).
    pub const fn detail(self) -> &'static str {
        match self {
            Code::BadRequest => "the request is not valid HTTP or its target fails the hub's strict parsing",
            Code::RouteNotFound => "no route of the hub's API has this path",
            Code::MethodNotAllowed => "this route allows GET only",
            Code::ParticipantUnknown => "the client certificate is not registered to a participant",
            Code::ParticipantInactive => "the calling participant is not active or lacks the user role",
            Code::InvalidToken => "the bearer token is missing, malformed or fails verification",
            Code::TokenBindingMismatch => "the token is bound to another client or certificate",
            Code::InsufficientScope => "the token's scope does not grant this route's permission",
            Code::ConsentStateStale => "the hub has not heard from its consent source within its staleness bound; retry shortly",
            Code::ConsentNotFound => "no consent has the token's consent_id",
            Code::ConsentNotOwned => "the token's consent belongs to another API user",
            Code::ConsentRevoked => "the consent was revoked",
            Code::ConsentNotAuthorised => "the consent is not authorised",
            Code::ConsentExpired => "the consent has expired",
            Code::ProviderNotInConsent => "the consent does not cover the provider in the path",
            Code::PermissionNotGranted => "the consent does not grant this route's permission",
            Code::AccountNotInConsent => "the consent does not cover the account in the path",
            Code::ProviderNotFound => "no provider has the id in the path",
            Code::ProviderUnavailable => "the provider is not available (not active, not published, unreachable or its circuit is open)",
            Code::RateLimited => "a rate limit or quota refused the request; see Retry-After and RateLimit",
            Code::ProviderTimeout => "the provider did not answer within its time limit",
            Code::ProviderBadResponse => "the provider's answer was not valid HTTP",
            Code::RequestHeaderFieldsTooLarge => "the request's header section is larger than the hub accepts",
            Code::PayloadTooLarge => "the request body is larger than the hub accepts",
            Code::InternalError => "a failure inside the hub",
            Code::AuditUnavailable => "the audit journal cannot take records; consent routes wait for it; retry shortly",
            Code::LimitsUnavailable => "the shared rate-limit store is unavailable and this limit's failure policy denies; see Retry-After",
        }
    }

    /// The problem `type` URI: `urn:openapi-hub:problem:<code>` (a URN, so no hostname
    /// is ever revealed and nothing needs to be dereferenceable).
    pub const fn type_uri(self) -> &'static str {
        match self {
            Code::BadRequest => "urn:openapi-hub:problem:bad_request",
            Code::RouteNotFound => "urn:openapi-hub:problem:route_not_found",
            Code::MethodNotAllowed => "urn:openapi-hub:problem:method_not_allowed",
            Code::ParticipantUnknown => "urn:openapi-hub:problem:participant_unknown",
            Code::ParticipantInactive => "urn:openapi-hub:problem:participant_inactive",
            Code::InvalidToken => "urn:openapi-hub:problem:invalid_token",
            Code::TokenBindingMismatch => "urn:openapi-hub:problem:token_binding_mismatch",
            Code::InsufficientScope => "urn:openapi-hub:problem:insufficient_scope",
            Code::ConsentStateStale => "urn:openapi-hub:problem:consent_state_stale",
            Code::ConsentNotFound => "urn:openapi-hub:problem:consent_not_found",
            Code::ConsentNotOwned => "urn:openapi-hub:problem:consent_not_owned",
            Code::ConsentRevoked => "urn:openapi-hub:problem:consent_revoked",
            Code::ConsentNotAuthorised => "urn:openapi-hub:problem:consent_not_authorised",
            Code::ConsentExpired => "urn:openapi-hub:problem:consent_expired",
            Code::ProviderNotInConsent => "urn:openapi-hub:problem:provider_not_in_consent",
            Code::PermissionNotGranted => "urn:openapi-hub:problem:permission_not_granted",
            Code::AccountNotInConsent => "urn:openapi-hub:problem:account_not_in_consent",
            Code::ProviderNotFound => "urn:openapi-hub:problem:provider_not_found",
            Code::ProviderUnavailable => "urn:openapi-hub:problem:provider_unavailable",
            Code::RateLimited => "urn:openapi-hub:problem:rate_limited",
            Code::ProviderTimeout => "urn:openapi-hub:problem:provider_timeout",
            Code::ProviderBadResponse => "urn:openapi-hub:problem:provider_bad_response",
            Code::RequestHeaderFieldsTooLarge => {
                "urn:openapi-hub:problem:request_header_fields_too_large"
            }
            Code::PayloadTooLarge => "urn:openapi-hub:problem:payload_too_large",
            Code::InternalError => "urn:openapi-hub:problem:internal_error",
            Code::AuditUnavailable => "urn:openapi-hub:problem:audit_unavailable",
            Code::LimitsUnavailable => "urn:openapi-hub:problem:limits_unavailable",
        }
    }

    /// The `WWW-Authenticate` value this code requires, if any.
    ///
    /// Both 401 codes need one (RFC 9110 §15.5.2); the contract names
    /// `Bearer error="invalid_token"`, which is also the RFC 6750 error for a token that
    /// is bound to another client. RFC 6750 §3.1 also defines `insufficient_scope` for 403.
    pub const fn www_authenticate(self) -> Option<&'static str> {
        match self {
            Code::InvalidToken | Code::TokenBindingMismatch => {
                Some("Bearer error=\"invalid_token\"")
            }
            Code::InsufficientScope => Some("Bearer error=\"insufficient_scope\""),
            _ => None,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: &'static str,
    title: &'static str,
    status: u16,
    code: &'static str,
    interaction_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// Renders the RFC 9457 body `{"type","title","status","code","interaction_id","detail"}`;
/// without a `detail` of the caller's, the code's own ([`Code::detail`]).
///
/// `detail` must never carry secrets or customer data (contract §6); it is JSON-escaped.
pub fn problem_json(code: Code, interaction_id: &str, detail: Option<&str>) -> Vec<u8> {
    let problem = Problem {
        type_: code.type_uri(),
        title: code.title(),
        status: code.status(),
        code: code.as_str(),
        interaction_id,
        detail: Some(detail.unwrap_or(code.detail())),
    };
    let mut out = Vec::with_capacity(192 + interaction_id.len() + detail.map_or(0, str::len));
    match serde_json::to_writer(&mut out, &problem) {
        Ok(()) => out,
        // Serializing plain strings into a Vec cannot fail; this arm only keeps the
        // function total without a panic.
        Err(_) => FALLBACK_BODY.to_vec(),
    }
}

const FALLBACK_BODY: &[u8] = br#"{"type":"urn:openapi-hub:problem:internal_error","title":"Internal error","status":500,"code":"internal_error","interaction_id":"","detail":"a failure inside the hub"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_contract_table() {
        let expected: &[(Code, u16, &str)] = &[
            (Code::BadRequest, 400, "bad_request"),
            (Code::RouteNotFound, 404, "route_not_found"),
            (Code::MethodNotAllowed, 405, "method_not_allowed"),
            (Code::ParticipantUnknown, 403, "participant_unknown"),
            (Code::ParticipantInactive, 403, "participant_inactive"),
            (Code::InvalidToken, 401, "invalid_token"),
            (Code::TokenBindingMismatch, 401, "token_binding_mismatch"),
            (Code::InsufficientScope, 403, "insufficient_scope"),
            (Code::ConsentStateStale, 503, "consent_state_stale"),
            (Code::ConsentNotFound, 403, "consent_not_found"),
            (Code::ConsentNotOwned, 403, "consent_not_owned"),
            (Code::ConsentRevoked, 403, "consent_revoked"),
            (Code::ConsentNotAuthorised, 403, "consent_not_authorised"),
            (Code::ConsentExpired, 403, "consent_expired"),
            (Code::ProviderNotInConsent, 403, "provider_not_in_consent"),
            (Code::PermissionNotGranted, 403, "permission_not_granted"),
            (Code::AccountNotInConsent, 403, "account_not_in_consent"),
            (Code::ProviderNotFound, 404, "provider_not_found"),
            (Code::ProviderUnavailable, 503, "provider_unavailable"),
            (Code::RateLimited, 429, "rate_limited"),
            (Code::ProviderTimeout, 504, "provider_timeout"),
            (Code::ProviderBadResponse, 502, "provider_bad_response"),
            (
                Code::RequestHeaderFieldsTooLarge,
                431,
                "request_header_fields_too_large",
            ),
            (Code::PayloadTooLarge, 413, "payload_too_large"),
            (Code::InternalError, 500, "internal_error"),
            (Code::AuditUnavailable, 503, "audit_unavailable"),
            (Code::LimitsUnavailable, 503, "limits_unavailable"),
        ];
        assert_eq!(expected.len(), Code::ALL.len());
        for (i, (code, status, name)) in expected.iter().enumerate() {
            assert_eq!(Code::ALL[i], *code);
            assert_eq!(code.status(), *status, "{name}");
            assert_eq!(code.as_str(), *name);
            assert_eq!(code.type_uri(), format!("urn:openapi-hub:problem:{name}"));
            assert!(!code.title().is_empty());
            assert!(!code.detail().is_empty());
        }
    }

    #[test]
    fn problem_body_has_the_contract_shape() {
        let body = problem_json(
            Code::ConsentRevoked,
            "3f1c2a4e-0000-4000-8000-000000000001",
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert_eq!(v["type"], "urn:openapi-hub:problem:consent_revoked");
        assert_eq!(v["title"], "Consent revoked");
        assert_eq!(v["status"], 403);
        assert_eq!(v["code"], "consent_revoked");
        assert_eq!(v["interaction_id"], "3f1c2a4e-0000-4000-8000-000000000001");
        assert_eq!(
            v["detail"],
            Code::ConsentRevoked.detail(),
            "the code's own detail"
        );
        // Member order as written in the contract.
        let s = std::str::from_utf8(&body).unwrap();
        assert!(s.starts_with(r#"{"type":"#), "{s}");
    }

    #[test]
    fn detail_is_escaped() {
        let body = problem_json(
            Code::BadRequest,
            "id\"x",
            Some("a \"quoted\"\n\u{1}</script>"),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["detail"], "a \"quoted\"\n\u{1}</script>");
        assert_eq!(v["interaction_id"], "id\"x");
        let raw = std::str::from_utf8(&body).unwrap();
        assert!(!raw.contains('\n'));
        assert!(!raw.contains('\u{1}'));
    }

    #[test]
    fn fallback_body_is_valid_json() {
        let v: serde_json::Value = serde_json::from_slice(FALLBACK_BODY).unwrap();
        assert_eq!(v["status"], 500);
    }

    #[test]
    fn only_401s_and_insufficient_scope_challenge() {
        for code in Code::ALL {
            let has = code.www_authenticate().is_some();
            assert_eq!(
                has,
                code.status() == 401 || code == Code::InsufficientScope,
                "{code}"
            );
        }
    }
}
