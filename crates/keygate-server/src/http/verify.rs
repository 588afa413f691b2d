//! `POST /api/v1/keys/verify` and `GET /api/v1/whoami`: asking keygate about a key.

use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::engine::Principal;
use crate::http::error::ApiError;
use crate::http::extract::{Caller, JsonBody};
use axum::Json;
use axum::extract::State;
use keygate_api::ErrorBody;
use keygate_api::keys::{LimitView, VerifyRequest, VerifyResponse, WhoAmI};

#[utoipa::path(
    post, path = "/api/v1/keys/verify", tag = "verify",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The decision; `valid` and `code` say whether the key is good", body = VerifyResponse),
        (status = 400, description = "Bad request: the body, path or query is not valid", body = ErrorBody),
    )
)]
/// Verifies a key for an application. Needs no credential of its own: the key in the
/// body is the credential, and a 256-bit key cannot be guessed.
pub async fn verify_key(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    if body.scopes.len() > 100 {
        return Err(ApiError::invalid("`scopes` may list at most 100 scopes."));
    }
    let project_required = match &body.path {
        Some(path) => !keygate_core::route::any_matches(&state.config.project_exempt_paths, path),
        None => body.project_required,
    };
    let decision = state.engine.verify(
        &body.key,
        &body.scopes,
        crate::engine::Request {
            client_ip: body.ip,
            project: body.project_id.as_deref(),
            project_required,
            route_limits: None,
        },
        now_ms(),
    );
    let key = decision.key.as_ref().map(|k| &k.record);
    Ok(Json(VerifyResponse {
        valid: decision.is_valid(),
        code: decision.code.as_str().into(),
        key_id: key.map(|r| r.id),
        name: key.map(|r| r.name.clone()),
        scopes: key.map(|r| r.scopes.clone()).unwrap_or_default(),
        meta: key.map(|r| r.meta.clone()),
        expires_at: key.and_then(|r| r.expires_at).map(time_of),
        hint: decision.hint.clone(),
        missing_scope: decision.missing_scope.clone(),
        project_id: decision.project,
        retry_after: decision
            .retry_after_ms
            .map(|ms| u64::try_from((ms + 999) / 1000).unwrap_or(1)),
        limits: decision
            .limits
            .as_slice()
            .iter()
            .map(|l| LimitView {
                name: l.name.to_string(),
                limit: l.limit,
                window: l.window_seconds,
                remaining: l.remaining,
                reset: l.reset_seconds,
            })
            .collect(),
    }))
}

#[utoipa::path(
    get, path = "/api/v1/whoami", tag = "verify",
    responses((status = 200, description = "OK", body = WhoAmI), (status = 401, description = "No valid credential", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
/// Who the request's credential belongs to: the simplest protected endpoint.
pub async fn whoami(Caller(principal): Caller) -> Json<WhoAmI> {
    Json(match principal {
        Principal::ApiKey {
            key,
            owner,
            project,
            ..
        } => WhoAmI {
            project_id: project,
            auth: "api_key".into(),
            key_id: Some(key.record.id),
            name: Some(key.record.name.clone()),
            scopes: key.record.scopes.clone(),
            user_id: owner.map(|(id, _)| id),
            role: owner.map(|(_, role)| role.as_str().into()),
        },
        Principal::User {
            id,
            name,
            role,
            project,
            ..
        } => WhoAmI {
            project_id: project,
            auth: "jwt".into(),
            key_id: None,
            name: Some(name),
            scopes: role.permissions().iter().map(|p| p.to_string()).collect(),
            user_id: Some(id),
            role: Some(role.as_str().into()),
        },
        Principal::Open => WhoAmI {
            project_id: None,
            auth: "none".into(),
            key_id: None,
            name: None,
            scopes: vec![],
            user_id: None,
            role: None,
        },
    })
}
