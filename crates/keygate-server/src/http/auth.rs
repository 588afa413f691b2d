//! Signing in: `/api/v1/auth/token`, `/token/refresh`, `/logout`, and the JWKS.

use crate::AppState;
use crate::clock::now_ms;
use crate::engine::Principal;
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody};
use crate::tokens::{self, TokenError};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_api::accounts::{RefreshRequest, TokenRequest, TokenResponse};
use keygate_api::{ErrorBody, ErrorCode};
use keygate_core::{Role, UserRecord};
use keygate_store::{AuditEntry, RefreshOutcome, RefreshToken};
use std::time::Instant;
use uuid::Uuid;

fn anonymous_entry(addr: &ClientAddr, action: &str, target: Option<String>) -> AuditEntry {
    audit::entry(&Principal::Open, addr, action, target)
}

fn refused(why: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidToken).hint(why.to_string())
}

/// Issues an access token and a refresh token for a new or continuing sign-in.
fn issue_pair(
    state: &AppState,
    user: (Uuid, &str, Role),
    family: &str,
) -> Result<(TokenResponse, RefreshToken), ApiError> {
    let now = now_ms();
    let keys = &state.engine.tokens;
    let (access, _) = keys
        .issue(tokens::ACCESS, user, family, now)
        .map_err(|e| ApiError::internal(&e))?;
    let (refresh, claims) = keys
        .issue(tokens::REFRESH, user, family, now)
        .map_err(|e| ApiError::internal(&e))?;
    let stored = RefreshToken {
        jti: claims.jti,
        family: family.to_string(),
        user_id: user.0,
        issued_at: now,
        expires_at: i64::try_from(claims.exp)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    };
    let response = TokenResponse {
        access,
        refresh,
        token_type: "Bearer".into(),
        expires_in: keys.config().access_ttl.as_secs(),
    };
    Ok((response, stored))
}

#[utoipa::path(
    post, path = "/api/v1/auth/token", tag = "auth", request_body = TokenRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = ErrorBody),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let user = sign_in(&state, &addr, body).await?;
    let family = Uuid::now_v7().simple().to_string();
    let (response, first) = issue_pair(&state, (user.id, &user.username, user.role), &family)?;
    let mut entry = anonymous_entry(&addr, "auth.login", Some(format!("user:{}", user.id)));
    entry.actor = format!("user:{}", user.id);
    entry.credential = Some(format!("session:{family}"));
    state.store.create_family(&first, &entry).await?;
    state.store.record_login(user.id, entry.at).await?;
    Ok(Json(response))
}

/// Checks a username and password with sign-in throttling, auditing a failure. Shared by
/// the token endpoint and the dashboard's sign-in form.
pub async fn sign_in(
    state: &AppState,
    addr: &ClientAddr,
    body: TokenRequest,
) -> Result<UserRecord, ApiError> {
    let address = addr.text().unwrap_or_default();
    if let Err(wait) = state
        .throttle
        .attempt(&body.username, &address, Instant::now())
    {
        state
            .engine
            .notifier
            .login_failed_burst(&body.username, &address, crate::clock::now_ms());
        return Err(ApiError::new(ErrorCode::RateLimited)
            .message("Too many failed sign-ins.")
            .hint("wait for the time in Retry-After before trying again")
            .retry_after(wait.as_secs() + 1));
    }
    let found = state.store.user_for_login(&body.username).await?;
    let passwords = state.passwords.clone();
    let password = body.password;
    let candidate = found.clone();
    // Unknown users cost the same argon2 work as known ones.
    let verified = tokio::task::spawn_blocking(move || match &candidate {
        Some((_, hash)) => passwords.verify(&password, hash),
        None => {
            passwords.verify_nobody(&password);
            false
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    let user: UserRecord = match (verified, found) {
        (true, Some((user, _))) if !user.disabled => user,
        (verified, found) => {
            let delay = state.throttle.failure_delay(&body.username, &address);
            let mut entry = anonymous_entry(
                addr,
                "auth.login_failed",
                found.as_ref().map(|(u, _)| format!("user:{}", u.id)),
            );
            // Only a plausible username is recorded: a password typed into the wrong field
            // must not end up in the log.
            if keygate_core::user::validate_username(&body.username).is_ok() {
                entry
                    .detail
                    .insert("username".into(), body.username.clone().into());
            }
            let disabled = verified && found.as_ref().is_some_and(|(u, _)| u.disabled);
            entry.detail.insert(
                "reason".into(),
                (if disabled {
                    "disabled"
                } else {
                    "bad credentials"
                })
                .into(),
            );
            state.store.append_audit(&entry).await?;
            tokio::time::sleep(delay).await;
            return Err(if disabled {
                ApiError::new(ErrorCode::InvalidCredentials).message("This account is disabled.")
            } else {
                ApiError::new(ErrorCode::InvalidCredentials)
            });
        }
    };
    state.throttle.success(&body.username, &address);
    Ok(user)
}

#[utoipa::path(
    post, path = "/api/v1/auth/token/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and a new refresh token (the old one is spent)", body = TokenResponse),
        (status = 401, description = "Invalid, expired, revoked or reused refresh token", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let claims = state
        .engine
        .tokens
        .verify(body.refresh.trim(), tokens::REFRESH)
        .map_err(|err| match err {
            TokenError::Expired => ApiError::new(ErrorCode::TokenExpired)
                .hint("the refresh token has expired; sign in again"),
            TokenError::Invalid(why) => refused(why),
        })?;
    let user_id = Uuid::parse_str(&claims.sub)
        .map_err(|_| refused("the token's subject is not a user id"))?;
    let user = state.store.get_user(user_id).await?;
    let Some(user) = user.filter(|u| !u.disabled) else {
        return Err(refused("the token's user is disabled or no longer exists"));
    };
    let (response, next) = issue_pair(&state, (user.id, &user.username, user.role), &claims.sid)?;
    match state
        .store
        .rotate_refresh(&claims.jti, &next, now_ms())
        .await?
    {
        RefreshOutcome::Rotated => Ok(Json(response)),
        RefreshOutcome::Reused { family, user_id } => {
            let mut entry = anonymous_entry(
                &addr,
                "auth.refresh_reused",
                Some(format!("user:{user_id}")),
            );
            entry.credential = Some(format!("session:{family}"));
            entry.detail.insert("family_revoked".into(), true.into());
            state.store.append_audit(&entry).await?;
            super::keys::sync_after_write(&state).await;
            tracing::warn!(%user_id, "a spent refresh token was presented again; the sign-in is revoked");
            Err(refused(
                "this refresh token was already used; the whole sign-in has been revoked, sign in again",
            ))
        }
        RefreshOutcome::Revoked => Err(refused("this sign-in has ended; sign in again")),
        RefreshOutcome::Unknown => Err(refused("this refresh token is not known to this instance")),
    }
}

#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 204, description = "The sign-in is over: its refresh and access tokens are refused"),
        (status = 401, description = "Not a valid refresh token", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    // An expired refresh token still names its sign-in, which may live on through a newer
    // token: verify everything but the expiry, then end the sign-in.
    let claims = state
        .engine
        .tokens
        .verify_allowing_expired(body.refresh.trim(), tokens::REFRESH)
        .map_err(|err| match err {
            TokenError::Expired => refused("the token has expired"),
            TokenError::Invalid(why) => refused(why),
        })?;
    let mut entry = anonymous_entry(&addr, "auth.logout", Some(format!("user:{}", claims.sub)));
    entry.actor = format!("user:{}", claims.sub);
    entry.credential = Some(format!("session:{}", claims.sid));
    state
        .store
        .revoke_family(&claims.sid, "logout", &entry)
        .await?;
    super::keys::sync_after_write(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "Public keys for verifying access tokens offline (empty with HS256)", content_type = "application/json"))
)]
pub async fn jwks(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.engine.tokens.jwks())
}
