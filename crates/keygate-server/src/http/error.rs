//! `ApiError`: every error and refusal leaves the server through this type, so every body
//! has the same shape and carries the request id.

use crate::http::context::{current_error_policy, current_request_id};
use crate::mint::MintError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keygate_api::{ErrorBody, ErrorCode, ErrorDetail};
use keygate_core::Decision;
use keygate_store::StoreError;
use std::borrow::Cow;

/// How refusals and errors are written (DESIGN.md: "the status and body style are
/// configurable per deployment"), so a preset can answer the way the product it stands in
/// for does.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorPolicy {
    pub style: ErrorStyle,
    /// One answer for every "no valid credential" refusal (the 401 codes except a failed
    /// sign-in), unless `codes` names the code itself.
    pub unauthorized: Option<Refusal>,
    /// Answers for single codes.
    pub codes: std::collections::BTreeMap<ErrorCode, Refusal>,
}

/// The body shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorStyle {
    /// `{"error":{"code","message","hint","request_id"}}`.
    #[default]
    Keygate,
    /// `{"detail": "message"}` (Django REST framework).
    Detail,
    /// The message as a JSON string (`"Invalid access - API key invalid."`).
    String,
}

/// What replaces a code's status, code or message; absent fields keep keygate's.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Refusal {
    pub status: Option<u16>,
    pub code: Option<ErrorCode>,
    pub message: Option<String>,
}

impl ErrorPolicy {
    /// Checks the statuses (a refusal must stay a 4xx or 5xx).
    pub fn validate(&self) -> Result<(), String> {
        let refusals = self.unauthorized.iter().chain(self.codes.values());
        for status in refusals.filter_map(|r| r.status) {
            if !(400..=599).contains(&status) {
                return Err(format!("errors: status {status} is not a 4xx or 5xx"));
            }
        }
        Ok(())
    }

    fn refusal_for(&self, code: ErrorCode) -> Option<&Refusal> {
        self.codes.get(&code).or_else(|| {
            (code.status() == 401 && code != ErrorCode::InvalidCredentials)
                .then_some(self.unauthorized.as_ref())
                .flatten()
        })
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    pub hint: Option<String>,
    /// For `insufficient_permissions`: the scope the credential lacks.
    pub scope: Option<String>,
    /// For 429s: seconds until a retry can succeed.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: Cow::Borrowed(code.default_message()),
            hint: None,
            scope: None,
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest).message(message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound).message(format!("No {what} with this id."))
    }

    /// An unexpected failure: logged in full here, answered with a generic 500.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(ErrorCode::InternalError)
    }
}

/// Why a request on a hot path (forward auth, the proxy) is refused.
pub enum Rejection {
    Error(ApiError),
    /// Refused by the route policy. Made into an error where the request's task-locals
    /// are set, since that conversion also records the key's `RateLimit` fields there.
    Denied(Box<Decision>),
}

impl From<ApiError> for Rejection {
    fn from(error: ApiError) -> Self {
        Rejection::Error(error)
    }
}

impl Rejection {
    pub fn into_error(self) -> ApiError {
        match self {
            Rejection::Error(error) => error,
            Rejection::Denied(decision) => ApiError::from(*decision),
        }
    }
}

impl From<Decision> for ApiError {
    fn from(decision: Decision) -> Self {
        let code = ErrorCode::from_decision(decision.code).unwrap_or(ErrorCode::InternalError);
        let mut error = ApiError::new(code);
        error.hint = decision.hint;
        crate::http::context::set_request_limits(decision.limits.as_slice());
        if let Some(ms) = decision.retry_after_ms {
            error = error.retry_after(u64::try_from((ms + 999) / 1000).unwrap_or(1));
        }
        if let Some(scope) = decision.missing_scope {
            error.message = Cow::Owned(format!("This key lacks the `{scope}` scope."));
            error.scope = Some(scope);
        }
        error
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => ApiError::new(ErrorCode::Conflict).message(message),
            other => ApiError::internal(&other),
        }
    }
}

impl From<MintError> for ApiError {
    fn from(err: MintError) -> Self {
        match err {
            MintError::Invalid { field, message } => {
                ApiError::invalid(format!("`{field}` {message}."))
            }
            MintError::Entropy => ApiError::internal(&err),
        }
    }
}

/// `WWW-Authenticate` in the RFC 6750 form.
fn www_authenticate(error: &ApiError) -> Option<String> {
    let kind = match (error.code.status(), error.code) {
        (_, ErrorCode::MissingCredentials) => return Some(r#"Bearer realm="keygate""#.into()),
        // A failed sign-in is not a bad bearer credential.
        (_, ErrorCode::InvalidCredentials) => return None,
        (401, _) => "invalid_token",
        (_, ErrorCode::InsufficientPermissions) => "insufficient_scope",
        _ => return None,
    };
    let description: String = error
        .message
        .chars()
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    let mut value =
        format!(r#"Bearer realm="keygate", error="{kind}", error_description="{description}""#);
    if let Some(scope) = &error.scope {
        let scope: String = scope.chars().filter(|c| *c != '"' && *c != '\\').collect();
        value.push_str(&format!(r#", scope="{scope}""#));
    }
    Some(value)
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        let policy = current_error_policy();
        let mut status_code = self.code.status();
        let mut style = ErrorStyle::Keygate;
        if let Some(policy) = policy.as_deref() {
            style = policy.style;
            if let Some(refusal) = policy.refusal_for(self.code) {
                // A deployment that chose one answer must not leak the reason in a hint
                // ("revoked" vs "unknown" tells which keys exist). A malformed key's hint
                // is about its shape (a whsec_ secret, a JWT), found without any lookup,
                // so it stays.
                if self.code != ErrorCode::MalformedApiKey {
                    self.hint = None;
                }
                if let Some(status) = refusal.status {
                    status_code = status;
                }
                if let Some(message) = &refusal.message {
                    self.message = Cow::Owned(message.clone());
                }
                if let Some(code) = refusal.code {
                    self.code = code;
                }
            }
        }
        let status = StatusCode::from_u16(status_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // A challenge belongs on a 401 (and a scope challenge on a 403) only.
        let challenge = www_authenticate(&self).filter(|_| matches!(status_code, 401 | 403));
        let retry_after = self.retry_after;
        let json = match style {
            ErrorStyle::Keygate => serde_json::to_vec(&ErrorBody {
                error: ErrorDetail {
                    code: self.code,
                    message: self.message.into_owned(),
                    hint: self.hint,
                    request_id: current_request_id(),
                },
            }),
            ErrorStyle::Detail => serde_json::to_vec(&serde_json::json!({"detail": self.message})),
            ErrorStyle::String => serde_json::to_vec(&self.message),
        }
        .unwrap_or_default();
        let mut response = (status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Some(value) = challenge.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
