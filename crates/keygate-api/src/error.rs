//! The error model: one body shape and a closed set of codes (DESIGN.md, "Decisions and
//! errors").

use keygate_core::DecisionCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Machine-readable error codes. The HTTP status follows from the code.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MissingCredentials,
    AmbiguousCredentials,
    MalformedApiKey,
    InvalidApiKey,
    RevokedApiKey,
    ExpiredApiKey,
    DisabledApiKey,
    InvalidToken,
    TokenExpired,
    ProjectIdRequired,
    InsufficientPermissions,
    ProjectForbidden,
    IpNotAllowed,
    RateLimited,
    QuotaExceeded,
    /// A sign-in with a wrong username or password.
    InvalidCredentials,
    InvalidRequest,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    InternalError,
    ServiceUnavailable,
    /// The upstream (reverse-proxy mode) refused the connection or broke off.
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingCredentials => "missing_credentials",
            ErrorCode::AmbiguousCredentials => "ambiguous_credentials",
            ErrorCode::MalformedApiKey => "malformed_api_key",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::RevokedApiKey => "revoked_api_key",
            ErrorCode::ExpiredApiKey => "expired_api_key",
            ErrorCode::DisabledApiKey => "disabled_api_key",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::ProjectIdRequired => "project_id_required",
            ErrorCode::InsufficientPermissions => "insufficient_permissions",
            ErrorCode::ProjectForbidden => "project_forbidden",
            ErrorCode::IpNotAllowed => "ip_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::MissingCredentials
            | ErrorCode::MalformedApiKey
            | ErrorCode::InvalidApiKey
            | ErrorCode::RevokedApiKey
            | ErrorCode::ExpiredApiKey
            | ErrorCode::DisabledApiKey
            | ErrorCode::InvalidToken
            | ErrorCode::TokenExpired
            | ErrorCode::InvalidCredentials => 401,
            ErrorCode::AmbiguousCredentials
            | ErrorCode::ProjectIdRequired
            | ErrorCode::InvalidRequest => 400,
            ErrorCode::InsufficientPermissions
            | ErrorCode::ProjectForbidden
            | ErrorCode::IpNotAllowed => 403,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InternalError => 500,
            ErrorCode::ServiceUnavailable => 503,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::UpstreamTimeout => 504,
        }
    }

    /// The sentence used as `message` when the caller has nothing more specific.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::MissingCredentials => "No credential was sent with this request.",
            ErrorCode::AmbiguousCredentials => {
                "The request carries two different credentials; send exactly one."
            }
            ErrorCode::MalformedApiKey => "The API key is malformed.",
            ErrorCode::InvalidApiKey => "The API key is not valid.",
            ErrorCode::RevokedApiKey => "The API key has been revoked.",
            ErrorCode::ExpiredApiKey => "The API key has expired.",
            ErrorCode::DisabledApiKey => "The API key is disabled.",
            ErrorCode::InvalidToken => "The token is not valid.",
            ErrorCode::TokenExpired => "The token has expired.",
            ErrorCode::ProjectIdRequired => "This request must name a project.",
            ErrorCode::InsufficientPermissions => {
                "The credential is valid but not permitted to do this."
            }
            ErrorCode::ProjectForbidden => "The credential may not act in this project.",
            ErrorCode::IpNotAllowed => "Requests with this key are not allowed from this address.",
            ErrorCode::RateLimited => "Too many requests.",
            ErrorCode::QuotaExceeded => "The quota for this period is used up.",
            ErrorCode::InvalidCredentials => "The username or password is wrong.",
            ErrorCode::InvalidRequest => "The request is not valid.",
            ErrorCode::NotFound => "Not found.",
            ErrorCode::MethodNotAllowed => "This method is not allowed here.",
            ErrorCode::Conflict => "The request conflicts with the current state.",
            ErrorCode::PayloadTooLarge => "The request body is too large.",
            ErrorCode::UnsupportedMediaType => "The request body must be JSON.",
            ErrorCode::InternalError => "Something went wrong inside keygate.",
            ErrorCode::ServiceUnavailable => "keygate is not ready to serve this request.",
            ErrorCode::UpstreamUnavailable => "The upstream service could not be reached.",
            ErrorCode::UpstreamTimeout => "The upstream service did not answer in time.",
        }
    }

    /// The error code of a refusal; `None` for `VALID`.
    pub fn from_decision(code: DecisionCode) -> Option<Self> {
        Some(match code {
            DecisionCode::Valid => return None,
            DecisionCode::Missing => ErrorCode::MissingCredentials,
            DecisionCode::Ambiguous => ErrorCode::AmbiguousCredentials,
            DecisionCode::Malformed => ErrorCode::MalformedApiKey,
            DecisionCode::NotFound => ErrorCode::InvalidApiKey,
            DecisionCode::Revoked => ErrorCode::RevokedApiKey,
            DecisionCode::Expired => ErrorCode::ExpiredApiKey,
            DecisionCode::Disabled => ErrorCode::DisabledApiKey,
            DecisionCode::InvalidToken => ErrorCode::InvalidToken,
            DecisionCode::TokenExpired => ErrorCode::TokenExpired,
            DecisionCode::ProjectRequired => ErrorCode::ProjectIdRequired,
            DecisionCode::InsufficientPermissions => ErrorCode::InsufficientPermissions,
            DecisionCode::ProjectForbidden => ErrorCode::ProjectForbidden,
            DecisionCode::IpNotAllowed => ErrorCode::IpNotAllowed,
            DecisionCode::RateLimited => ErrorCode::RateLimited,
            DecisionCode::QuotaExceeded => ErrorCode::QuotaExceeded,
        })
    }
}

/// `{"error": {...}}`: the body of every refusal and error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// What to do about it. Never contains a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_maps_to_the_designed_status() {
        for code in DecisionCode::ALL {
            let Some(error) = ErrorCode::from_decision(code) else {
                assert_eq!(code, DecisionCode::Valid);
                continue;
            };
            let expected = match code {
                DecisionCode::Ambiguous | DecisionCode::ProjectRequired => 400,
                DecisionCode::InsufficientPermissions
                | DecisionCode::ProjectForbidden
                | DecisionCode::IpNotAllowed => 403,
                DecisionCode::RateLimited | DecisionCode::QuotaExceeded => 429,
                _ => 401,
            };
            assert_eq!(error.status(), expected, "{code:?}");
            // The serde name and as_str agree.
            assert_eq!(
                serde_json::to_value(error).expect("serializes"),
                serde_json::Value::String(error.as_str().into())
            );
        }
    }
}
