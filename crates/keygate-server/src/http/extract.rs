//! Extractors that turn bad input into the error model: JSON bodies, ids in the path,
//! query strings, and the caller's credential.

use crate::AppState;
use crate::clock::now_ms;
use crate::engine::{Principal, WhenAccessOff};
use crate::http::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use keygate_api::ErrorCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A JSON request body. An empty body reads as `{}`; a body with no content type is read
/// as JSON. Any other type is a 415 — including the form and text types a browser may send
/// cross-site without a preflight, so a web page cannot drive this API.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        if let Some(ct) = content_type.as_deref()
            && !ct.contains("json")
        {
            return Err(ApiError::new(ErrorCode::UnsupportedMediaType)
                .hint("send the body as JSON with `Content-Type: application/json`"));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(ErrorCode::PayloadTooLarge)
                } else {
                    ApiError::invalid("The request body could not be read.")
                }
            })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(JsonBody).map_err(|err| {
            // serde echoes mistyped string values; keep keys out of the echo.
            let detail = keygate_core::key_format::redact_keys(&err.to_string()).into_owned();
            ApiError::invalid(format!("The JSON body is not valid: {detail}."))
        })
    }
}

/// A UUID in the path (`/keys/{id}`).
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("The path is missing an id."))?;
        Uuid::parse_str(&raw).map(PathId).map_err(|_| {
            ApiError::invalid("The id in the path is not a UUID.")
                .hint("ids look like 0192f7a4-8c1e-7b2a-9f00-1234567890ab")
        })
    }
}

/// Query-string parameters, with unknown or mistyped ones refused clearly.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| QueryParams(value))
            .map_err(|err| {
                let detail = keygate_core::key_format::redact_keys(&err.body_text()).into_owned();
                ApiError::invalid(format!("The query string is not valid: {detail}"))
            })
    }
}

/// Any authenticated caller.
pub struct Caller(pub Principal);

/// A permission a route needs (see `keygate_core::user::PERMISSIONS`).
pub trait Permission {
    const NAME: &'static str;
}

macro_rules! permissions {
    ($($ty:ident => $name:path),* $(,)?) => {
        $(
            #[doc = concat!("Marker for the `", stringify!($name), "` permission.")]
            pub struct $ty;
            impl Permission for $ty {
                const NAME: &'static str = $name;
            }
        )*
    };
}

permissions! {
    KeysRead => keygate_core::user::KEYS_READ,
    KeysWrite => keygate_core::user::KEYS_WRITE,
    UsersRead => keygate_core::user::USERS_READ,
    UsersWrite => keygate_core::user::USERS_WRITE,
    SettingsRead => keygate_core::user::SETTINGS_READ,
    SettingsWrite => keygate_core::user::SETTINGS_WRITE,
    AuditRead => keygate_core::user::AUDIT_READ,
    PlansRead => keygate_core::user::PLANS_READ,
    PlansWrite => keygate_core::user::PLANS_WRITE,
    ProjectsRead => keygate_core::user::PROJECTS_READ,
    ProjectsWrite => keygate_core::user::PROJECTS_WRITE,
    WebhooksRead => keygate_core::user::WEBHOOKS_READ,
    WebhooksWrite => keygate_core::user::WEBHOOKS_WRITE,
}

/// A caller holding permission `P` (through a key's scopes and its owner's role, or a
/// user's role).
pub struct Need<P: Permission>(pub Principal, std::marker::PhantomData<P>);

impl<P: Permission> Need<P> {
    pub fn principal(&self) -> &Principal {
        &self.0
    }

    /// A signed-in user (the dashboard's session) whose role holds `P`.
    pub fn for_user(principal: Principal) -> Result<Self, ApiError> {
        match &principal {
            Principal::User { role, .. } if role.grants(P::NAME) => {
                Ok(Need(principal, std::marker::PhantomData))
            }
            _ => Err(
                ApiError::new(keygate_api::ErrorCode::InsufficientPermissions)
                    .message("Your account may not do this."),
            ),
        }
    }
}

fn peer_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// The TCP peer of a whole request.
pub fn peer_ip_of(request: &axum::extract::Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

fn authenticate(
    parts: &Parts,
    state: &AppState,
    scopes: &[&str],
    when_off: WhenAccessOff,
) -> Result<Principal, ApiError> {
    let client_ip = state.config.client_ip(peer_ip(parts), &parts.headers);
    let principal = state
        .engine
        .authenticate(
            &parts.headers,
            parts.uri.query(),
            scopes,
            client_ip,
            when_off,
            now_ms(),
        )
        .map_err(|decision| ApiError::from(*decision))?;
    if let Principal::ApiKey { limits, .. } = &principal {
        crate::http::context::set_request_limits(limits.as_slice());
    }
    Ok(principal)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, &[], WhenAccessOff::Open).map(Caller)
    }
}

impl<P: Permission> FromRequestParts<AppState> for Need<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Management needs its permission even with API access switched off.
        authenticate(parts, state, &[P::NAME], WhenAccessOff::Checked)
            .map(|p| Need(p, std::marker::PhantomData))
    }
}

/// The client's address: the TCP peer, or the forwarded client behind a trusted proxy.
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            state.config.client_ip(peer_ip(parts), &parts.headers),
        ))
    }
}

impl ClientAddr {
    pub fn text(&self) -> Option<String> {
        self.0.map(|ip| ip.to_string())
    }
}
