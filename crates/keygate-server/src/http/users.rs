//! `/api/v1/users` and `/api/v1/permissions`: accounts and what each role may do.

use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::engine::Principal;
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{
    Caller, ClientAddr, JsonBody, Need, PathId, QueryParams, UsersRead, UsersWrite,
};
use crate::passwords;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_api::accounts::{
    ChangePasswordRequest, CreateUserRequest, Permission, PermissionsView, RolePermissions,
    UpdateUserRequest, UserList, UserView,
};
use keygate_api::{ErrorBody, ErrorCode};
use keygate_core::{Role, UserRecord, user};
use keygate_store::UserUpdate;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

pub fn user_view(user: &UserRecord) -> UserView {
    UserView {
        id: user.id,
        username: user.username.clone(),
        email: user.email.clone(),
        role: user.role,
        disabled: user.disabled,
        created_at: time_of(user.created_at),
        last_login_at: user.last_login_at.map(time_of),
    }
}

fn validate_email(email: &str) -> Result<(), ApiError> {
    let ok = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid("`email` is not an email address."))
    }
}

/// Hashes on the blocking pool: argon2 takes tens of milliseconds by design.
pub async fn hash_password(state: &AppState, password: String) -> Result<String, ApiError> {
    let passwords = state.passwords.clone();
    tokio::task::spawn_blocking(move || passwords.hash(&password))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1–1000, default 100.
    limit: Option<u32>,
    offset: Option<u64>,
}

#[utoipa::path(
    get, path = "/api/v1/users", tag = "users", params(ListParams),
    responses((status = 200, description = "Users, oldest first", body = UserList), (status = 403, description = "Needs users:read", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_users(
    State(state): State<AppState>,
    _caller: Need<UsersRead>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<UserList>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be between 1 and 1000."));
    }
    let offset = params.offset.unwrap_or(0);
    let users = state.store.list_users(limit, offset).await?;
    let next_offset = (users.len() == limit as usize).then(|| offset + u64::from(limit));
    Ok(Json(UserList {
        users: users.iter().map(user_view).collect(),
        next_offset,
    }))
}

#[utoipa::path(
    post, path = "/api/v1/users", tag = "users", request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Bad username, password or email", body = ErrorBody),
        (status = 403, description = "Needs users:write", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Need<UsersWrite>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    user::validate_username(&body.username)
        .map_err(|m| ApiError::invalid(format!("`username` {m}.")))?;
    passwords::validate_password(&body.password)
        .map_err(|m| ApiError::invalid(format!("`password` {m}.")))?;
    if let Some(email) = &body.email {
        validate_email(email)?;
    }
    let now = now_ms();
    let record = UserRecord {
        id: Uuid::now_v7(),
        username: body.username,
        email: body.email,
        role: body.role.unwrap_or(Role::User),
        disabled: false,
        created_at: now,
        updated_at: now,
        last_login_at: None,
    };
    let hash = hash_password(&state, body.password).await?;
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "user.create",
        Some(format!("user:{}", record.id)),
    );
    entry
        .detail
        .insert("username".into(), record.username.clone().into());
    entry
        .detail
        .insert("role".into(), record.role.as_str().into());
    entry
        .events
        .push(crate::webhooks::Notifier::user_created_event(&record, now));
    state.store.create_user(&record, &hash, &entry).await?;
    super::keys::sync_after_write(&state).await;
    tracing::info!(user_id = %record.id, "user created");
    Ok((StatusCode::CREATED, Json(user_view(&record))))
}

#[utoipa::path(
    get, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses((status = 200, description = "OK", body = UserView), (status = 404, description = "No such user", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_user(
    State(state): State<AppState>,
    _caller: Need<UsersRead>,
    PathId(id): PathId,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(user_view(&user)))
}

#[utoipa::path(
    patch, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = uuid::Uuid, Path, description = "User id")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "OK", body = UserView),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Would leave no administrator", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Need<UsersWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
    JsonBody(body): JsonBody<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    if let Some(Some(email)) = &body.email {
        validate_email(email)?;
    }
    let update = UserUpdate {
        role: body.role,
        email: body.email.clone(),
        disabled: body.disabled,
    };
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "user.update",
        Some(format!("user:{id}")),
    );
    if let Ok(serde_json::Value::Object(changed)) = serde_json::to_value(&body) {
        entry.detail = changed;
    }
    let user = state
        .store
        .update_user(id, &update, &entry)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    super::keys::sync_after_write(&state).await;
    Ok(Json(user_view(&user)))
}

#[utoipa::path(
    delete, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = uuid::Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The deleted user; their keys are revoked", body = UserView),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Would leave no administrator", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Need<UsersWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
) -> Result<Json<UserView>, ApiError> {
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "user.delete",
        Some(format!("user:{id}")),
    );
    let user = state
        .store
        .delete_user(id, &entry)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    super::keys::sync_after_write(&state).await;
    tracing::info!(user_id = %id, "user deleted");
    Ok(Json(user_view(&user)))
}

fn me(principal: &Principal) -> Result<Uuid, ApiError> {
    principal.user_id().ok_or_else(|| {
        ApiError::new(ErrorCode::NotFound)
            .message("This credential belongs to the instance, not to a user.")
            .hint("sign in with /api/v1/auth/token, or use a key that belongs to a user")
    })
}

#[utoipa::path(
    get, path = "/api/v1/users/me", tag = "users",
    responses((status = 200, description = "The signed-in user", body = UserView), (status = 404, description = "Not a user's credential", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_me(
    State(state): State<AppState>,
    Caller(principal): Caller,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .store
        .get_user(me(&principal)?)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(user_view(&user)))
}

#[utoipa::path(
    post, path = "/api/v1/users/me/password", tag = "users", request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed; every refresh token of the user is revoked"),
        (status = 400, description = "The new password is too short", body = ErrorBody),
        (status = 401, description = "The old password is wrong", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn change_my_password(
    State(state): State<AppState>,
    Caller(principal): Caller,
    addr: ClientAddr,
    JsonBody(body): JsonBody<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    let id = me(&principal)?;
    passwords::validate_password(&body.new_password)
        .map_err(|m| ApiError::invalid(format!("`new_password` {m}.")))?;
    let user = state
        .store
        .get_user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let (_, stored) = state
        .store
        .user_for_login(&user.username)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let passwords = state.passwords.clone();
    let old = body.old_password;
    let matches = tokio::task::spawn_blocking(move || passwords.verify(&old, &stored))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if !matches {
        return Err(
            ApiError::new(ErrorCode::InvalidCredentials).message("The old password is wrong.")
        );
    }
    let hash = hash_password(&state, body.new_password).await?;
    let entry = audit::entry(
        &principal,
        &addr,
        "user.password",
        Some(format!("user:{id}")),
    );
    state.store.set_password(id, &hash, &entry).await?;
    super::keys::sync_after_write(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/v1/permissions", tag = "users",
    responses((status = 200, description = "Every permission and what each role has", body = PermissionsView), (status = 401, description = "No valid credential", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn permissions(_caller: Caller) -> Json<PermissionsView> {
    Json(PermissionsView {
        permissions: user::PERMISSIONS
            .iter()
            .map(|(name, description)| Permission {
                name: (*name).into(),
                description: (*description).into(),
            })
            .collect(),
        roles: Role::ALL
            .iter()
            .map(|role| RolePermissions {
                role: role.as_str().into(),
                permissions: role.permissions().iter().map(|p| (*p).into()).collect(),
            })
            .collect(),
    })
}
