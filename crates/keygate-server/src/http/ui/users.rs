//! Users (administrators): the table, a new-user form, role and disable switches, delete.

use super::{Me, NoFields, Posted, Session, admin_only, error_page, render, when_ms};
use super::{filled, with_status};
use crate::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, PathId};
use crate::http::users as api;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use keygate_api::accounts::{CreateUserRequest, UpdateUserRequest};
use keygate_core::Role;
use uuid::Uuid;

struct UserRow {
    id: Uuid,
    username: String,
    email: String,
    role: &'static str,
    disabled: bool,
    created: String,
    last_login: String,
    me: bool,
}

#[derive(Default, serde::Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    email: String,
}

#[derive(Default)]
struct UserErrors {
    username: Option<String>,
    password: Option<String>,
    email: Option<String>,
    other: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/users.html")]
struct UsersPage {
    me: Option<Me>,
    me_csrf: String,
    users: Vec<UserRow>,
    message: Option<String>,
    form: NewUserForm,
    errors: UserErrors,
}

async fn users_page(
    state: &AppState,
    session: Session,
    message: Option<String>,
    form: NewUserForm,
    errors: UserErrors,
) -> Response {
    if let Some(refused) = admin_only(&session) {
        return refused;
    }
    let mut users = match state.store.load_users().await {
        Ok(users) => users,
        Err(err) => return error_page(&session, err.into()),
    };
    users.sort_by_key(|a| a.username.to_lowercase());
    let me = session.user_id();
    let rows = users
        .into_iter()
        .map(|u| UserRow {
            me: Some(u.id) == me,
            id: u.id,
            username: u.username,
            email: u.email.unwrap_or_default(),
            role: u.role.as_str(),
            disabled: u.disabled,
            created: when_ms(Some(u.created_at)),
            last_login: when_ms(u.last_login_at),
        })
        .collect();
    render(&UsersPage {
        me: session.me(),
        me_csrf: session.csrf(),
        users: rows,
        message,
        form: NewUserForm {
            password: String::new(),
            ..form
        },
        errors,
    })
}

pub async fn list(State(state): State<AppState>, session: Session) -> Response {
    users_page(
        &state,
        session,
        None,
        NewUserForm::default(),
        UserErrors::default(),
    )
    .await
}

pub async fn create(
    State(state): State<AppState>,
    addr: ClientAddr,
    Posted { session, form }: Posted<NewUserForm>,
) -> Response {
    let role = match Role::parse(&form.role) {
        Some(role) => role,
        None => {
            let errors = UserErrors {
                other: Some("Choose a role: admin or user.".into()),
                ..Default::default()
            };
            return with_status(
                users_page(&state, session, None, form, errors).await,
                StatusCode::BAD_REQUEST,
            );
        }
    };
    let need = need_or_return!(session);
    let request = CreateUserRequest {
        username: form.username.trim().to_string(),
        password: form.password.clone(),
        role: Some(role),
        email: filled(&form.email).map(str::to_string),
    };
    match api::create_user(State(state.clone()), need, addr, JsonBody(request)).await {
        Ok((_, axum::Json(user))) => {
            let message = format!("Added {}.", user.username);
            users_page(
                &state,
                session,
                Some(message),
                NewUserForm::default(),
                UserErrors::default(),
            )
            .await
        }
        Err(err) => {
            let message = err.message.to_string();
            let mut errors = UserErrors::default();
            if message.contains("username") {
                errors.username = Some(message);
            } else if message.contains("password") {
                errors.password = Some(message);
            } else if message.contains("email") {
                errors.email = Some(message);
            } else {
                errors.other = Some(message);
            }
            with_status(
                users_page(&state, session, None, form, errors).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

#[derive(serde::Deserialize)]
pub struct UpdateUserForm {
    #[serde(default)]
    role: String,
    #[serde(default)]
    disabled: String,
}

pub async fn update(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, form }: Posted<UpdateUserForm>,
) -> Response {
    let role = match filled(&form.role) {
        None => None,
        Some(text) => match Role::parse(text) {
            Some(role) => Some(role),
            None => {
                return error_page(
                    &session,
                    ApiError::invalid("The role must be admin or user."),
                );
            }
        },
    };
    let disabled = match form.disabled.as_str() {
        "" => None,
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            return error_page(
                &session,
                ApiError::invalid("`disabled` must be true or false."),
            );
        }
    };
    let need = need_or_return!(session);
    let patch = UpdateUserRequest {
        role,
        email: None,
        disabled,
    };
    match api::update_user(
        State(state.clone()),
        need,
        addr,
        PathId(id),
        JsonBody(patch),
    )
    .await
    {
        Ok(axum::Json(user)) => {
            let state_text = if user.disabled { "disabled" } else { "enabled" };
            let message = format!(
                "Saved {}: {}, {state_text}.",
                user.username,
                user.role.as_str()
            );
            users_page(
                &state,
                session,
                Some(message),
                NewUserForm::default(),
                UserErrors::default(),
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    match api::delete_user(State(state.clone()), need, addr, PathId(id)).await {
        Ok(axum::Json(user)) => {
            let message = format!("Deleted {} and revoked their keys.", user.username);
            users_page(
                &state,
                session,
                Some(message),
                NewUserForm::default(),
                UserErrors::default(),
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}
