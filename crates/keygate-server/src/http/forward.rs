//! Forward auth: nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth` and Envoy
//! `ext_authz` (HTTP) ask keygate about the request they are about to pass on.
//!
//! The original method and URI come from the proxy's headers; the route policy says what
//! the request needs. The answer is 200 with identity headers and an empty body (nginx
//! never reads an auth subrequest's body, and a non-empty one costs it a connection per
//! request), or the error model's refusal.

use crate::AppState;
use crate::clock::now_ms;
use crate::engine::Principal;
use crate::http::context::{self, set_request_limits};
use crate::http::error::ApiError;
use crate::http::error::Rejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keygate_core::limit::LimitStatuses;
use keygate_core::route::{Access, ProjectRule, normalize_path, policy_for};

/// The original method and URI as proxies send them (names made once, not parsed per
/// request).
const ORIGINAL_METHOD: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-original-method"),
];
const ORIGINAL_URI: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-original-uri"),
];

fn header<'a>(headers: &'a HeaderMap, names: &[HeaderName]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

#[utoipa::path(
    get, path = "/api/v1/forward-auth", tag = "gateway",
    params(
        ("X-Forwarded-Method" = Option<String>, Header, description = "The original method (also X-Original-Method)"),
        ("X-Forwarded-Uri" = Option<String>, Header, description = "The original URI (also X-Original-URI)"),
    ),
    responses(
        (status = 200, description = "Allowed: identity in X-Keygate-* headers, empty body"),
        (status = 401, description = "No valid credential", body = keygate_api::ErrorBody),
        (status = 403, description = "Not permitted", body = keygate_api::ErrorBody),
        (status = 429, description = "Rate limited or over quota", body = keygate_api::ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
/// Any method is accepted: proxies forward the original one or send their own.
pub async fn forward_auth(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let peer = crate::http::extract::peer_ip_of(&request);
    let (parts, _) = request.into_parts();
    let (response, limits) = decide(&state, &parts, peer).map_err(Rejection::into_error)?;
    // The router's request context adds the `RateLimit` fields.
    set_request_limits(limits.as_slice());
    Ok(response)
}

/// Forward auth answered beside the router (`front.rs`): the same answer as the routed
/// handler, with the same request id, `RateLimit` fields, error style and log line, but
/// without axum's routing and the general middleware stack — which cost more than the
/// decision itself (BENCHMARKS.md). Only the request's head is read.
pub fn answer_beside_router(
    state: &AppState,
    parts: &axum::http::request::Parts,
    peer: Option<std::net::IpAddr>,
) -> Response {
    let started = std::time::Instant::now();
    let id = context::request_id_of(&parts.headers);
    // A refusal is rendered inside the request's task-locals (its id, error style and
    // the key's limit states); an allowed request needs none.
    let refused = |refusal: Rejection| {
        context::within_request(&id, state.error_policy.clone(), || {
            refusal.into_error().into_response()
        })
    };
    // As the router's CatchPanicLayer does: a panic is a 500 in the error model.
    let (mut response, limits) =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(state, parts, peer)))
        {
            Ok(Ok((response, limits))) => (response, limits.as_slice().to_vec()),
            Ok(Err(refusal)) => refused(refusal),
            Err(_) => {
                tracing::error!("forward auth panicked");
                refused(ApiError::new(keygate_api::ErrorCode::InternalError).into())
            }
        };
    context::finish(
        &mut response,
        &id,
        &limits,
        &parts.method,
        &parts.uri,
        started,
    );
    response
}

/// The decision for one forward-auth request, from its head (read by reference: the hot
/// path copies no header map) and its TCP peer; with the key's limit states.
fn decide(
    state: &AppState,
    parts: &axum::http::request::Parts,
    peer: Option<std::net::IpAddr>,
) -> Result<(Response, LimitStatuses), Rejection> {
    let client_ip = state.config.client_ip(peer, &parts.headers);
    let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
    let original_method = header(headers, &ORIGINAL_METHOD).unwrap_or(method.as_str());
    // The original URI: from the proxy's header, else whatever follows our own path (the
    // form Envoy's path_prefix produces), else the request's URI itself.
    let suffix = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .and_then(|pq| pq.strip_prefix("/api/v1/forward-auth"))
        .filter(|rest| rest.starts_with('/'))
        .and_then(|rest| rest.parse::<Uri>().ok());
    let original_uri: Uri = header(headers, &ORIGINAL_URI)
        .and_then(|u| u.parse().ok())
        .or(suffix)
        .unwrap_or_else(|| uri.clone());
    // Matched on the path as the upstream will resolve it: a raw `/public/../admin` (what
    // nginx's $request_uri holds) must be checked as /admin.
    let Some(path) = normalize_path(original_uri.path()) else {
        return Err(ApiError::invalid(
            "The original path climbs above the root or hides a separator (%2f, %5c).",
        )
        .into());
    };
    let policy = policy_for(&state.config.routes, original_method, path.as_ref());
    if policy.is_some_and(|p| p.access == Access::Public) {
        return Ok((
            allowed(&state.identity_names, None),
            LimitStatuses::default(),
        ));
    }
    let scopes: Vec<&str> = policy
        .map(|p| p.scopes.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let project_required = policy.is_some_and(|p| p.project == ProjectRule::Required);
    let principal = state
        .engine
        .authenticate_route(
            headers,
            original_uri.query(),
            &scopes,
            client_ip,
            project_required,
            now_ms(),
        )
        .map_err(Rejection::Denied)?;
    let response = allowed(&state.identity_names, Some(&principal));
    let limits = match principal {
        Principal::ApiKey { limits, .. } => limits,
        _ => LimitStatuses::default(),
    };
    Ok((response, limits))
}

/// The 200 of an allowed request: every identity header, empty when there is nothing to
/// say (a public route, a key without an owner). Proxies copy these onto the request
/// they pass on; a header keygate left out would let the client's own copy through
/// (Traefik's `authResponseHeaders`, Envoy's `allowed_upstream_headers`), and Caddy 2.6
/// would set the literal placeholder text instead.
fn allowed(names: &IdentityNames, principal: Option<&Principal>) -> Response {
    let mut response = empty(StatusCode::OK);
    let values = principal.map_or([None, None, None, None], identity_headers);
    let headers = response.headers_mut();
    for (name, value) in names.all().into_iter().zip(values) {
        headers.insert(
            name.clone(),
            value.unwrap_or_else(|| HeaderValue::from_static("")),
        );
    }
    response
}

/// The names of the identity headers, made once from the configured prefix.
#[derive(Debug, Clone)]
pub struct IdentityNames {
    key_id: HeaderName,
    user: HeaderName,
    project: HeaderName,
    scopes: HeaderName,
}

impl IdentityNames {
    /// Key id, user, project, scopes: the order of [`identity_headers`].
    pub fn all(&self) -> [&HeaderName; 4] {
        [&self.key_id, &self.user, &self.project, &self.scopes]
    }

    pub fn new(prefix: &str) -> Result<Self, String> {
        let name = |suffix: &str| {
            HeaderName::try_from(format!("{prefix}{suffix}")).map_err(|_| {
                format!("identity_header_prefix {prefix:?} makes no valid header name")
            })
        };
        Ok(Self {
            key_id: name("key-id")?,
            user: name("user")?,
            project: name("project")?,
            scopes: name("scopes")?,
        })
    }
}

/// The identity headers that tell the app who is calling (`X-Keygate-Key-Id`, ...), in
/// the order of [`IdentityNames::all`]: key id, user, project, scopes. `None` where there
/// is nothing to say (a key without an owner, a request outside any project).
pub fn identity_headers(principal: &Principal) -> [Option<HeaderValue>; 4] {
    let id = |id: &uuid::Uuid| {
        // Written into a buffer on the stack rather than formatted into a String.
        let mut buffer = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer)).ok()
    };
    let text = |text: &str| HeaderValue::from_str(text).ok();
    match principal {
        Principal::ApiKey {
            key,
            owner,
            project,
            ..
        } => [
            id(&key.record.id),
            owner.and_then(|(user, _)| id(&user)),
            project.as_ref().and_then(id),
            text(&key.record.scopes.join(" ")),
        ],
        Principal::User {
            id: user,
            role,
            project,
            ..
        } => [
            None,
            id(user),
            project.as_ref().and_then(id),
            text(&role.permissions().join(" ")),
        ],
        Principal::Open => [None, None, None, None],
    }
}

fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_LENGTH,
        HeaderValue::from_static("0"),
    );
    response
}
