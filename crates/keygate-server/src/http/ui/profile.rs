//! Profile: the signed-in person's password, sign-ins and personal keys.

use super::{Me, NoFields, Posted, SESSION_COOKIE, Session};
use super::{error_page, render, set_cookie, when, with_status};
use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, PathId};
use crate::http::keys;
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use keygate_api::ErrorCode;
use keygate_api::keys::CreateKeyRequest;
use keygate_store::KeyPage;
use uuid::Uuid;

struct SessionRow {
    id: String,
    started: String,
    ends: String,
    current: bool,
}

/// One of the person's own user-level keys.
struct PersonalKey {
    id: Uuid,
    name: String,
    start: String,
    last_used: String,
    state: String,
}

#[derive(Template)]
#[template(path = "ui/profile.html")]
struct ProfilePage {
    me: Option<Me>,
    me_csrf: String,
    username: String,
    role: String,
    sessions: Vec<SessionRow>,
    personal_keys: Vec<PersonalKey>,
    created: Option<String>,
    message: Option<String>,
    old_password_error: Option<String>,
    new_password_error: Option<String>,
    key_name_error: Option<String>,
}

#[derive(Default)]
struct Notes {
    created: Option<String>,
    message: Option<String>,
    old_password_error: Option<String>,
    new_password_error: Option<String>,
    key_name_error: Option<String>,
}

async fn profile_page(state: &AppState, session: Session, notes: Notes) -> Response {
    let Some(user) = session.user_id() else {
        return Redirect::to("/ui/").into_response();
    };
    let loaded = async {
        let sign_ins = state.store.active_sign_ins(user, now_ms()).await?;
        let keys = state
            .store
            .list_keys(KeyPage {
                limit: 1000,
                offset: 0,
                owner: Some(user),
            })
            .await?;
        Ok::<_, ApiError>((sign_ins, keys))
    };
    let (sign_ins, owned) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let now = now_ms();
    let personal_keys = owned
        .iter()
        .filter(|k| k.project.is_none() && !k.global)
        .map(|k| (k, keys::view(state, k, now)))
        .filter(|(_, view)| view.state == "active" || view.state == "disabled")
        .map(|(k, view)| PersonalKey {
            id: k.id,
            name: k.name.clone(),
            start: k.start.clone(),
            last_used: when(view.last_used_at),
            state: view.state,
        })
        .collect();
    let sessions = sign_ins
        .into_iter()
        .map(|s| SessionRow {
            current: s.family == session.family,
            started: when(Some(time_of(s.created_at))),
            ends: when(Some(time_of(s.expires_at))),
            id: s.family,
        })
        .collect();
    let role = if session.me.admin {
        "administrator"
    } else {
        "user"
    };
    render(&ProfilePage {
        me: session.me(),
        me_csrf: session.csrf(),
        username: session.me.username.clone(),
        role: role.into(),
        sessions,
        personal_keys,
        created: notes.created,
        message: notes.message,
        old_password_error: notes.old_password_error,
        new_password_error: notes.new_password_error,
        key_name_error: notes.key_name_error,
    })
}

pub async fn page(State(state): State<AppState>, session: Session) -> Response {
    profile_page(&state, session, Notes::default()).await
}

#[derive(serde::Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    old_password: String,
    #[serde(default)]
    new_password: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Posted { session, form }: Posted<PasswordForm>,
) -> Response {
    let request = keygate_api::accounts::ChangePasswordRequest {
        old_password: form.old_password,
        new_password: form.new_password,
    };
    let caller = crate::http::extract::Caller(session.principal.clone());
    match crate::http::users::change_my_password(
        State(state.clone()),
        caller,
        addr,
        JsonBody(request),
    )
    .await
    {
        Ok(_) => {
            // Every sign-in ended with the old password, this one included.
            let mut response = Redirect::to("/ui/").into_response();
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&headers, SESSION_COOKIE, "", Some(0)),
            );
            response
        }
        Err(err) => {
            let message = err.message.to_string();
            let notes = if err.code == ErrorCode::InvalidCredentials {
                Notes {
                    old_password_error: Some(message),
                    ..Notes::default()
                }
            } else {
                Notes {
                    new_password_error: Some(message),
                    ..Notes::default()
                }
            };
            with_status(
                profile_page(&state, session, notes).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

pub async fn end_session(
    State(state): State<AppState>,
    addr: ClientAddr,
    axum::extract::Path(family): axum::extract::Path<String>,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let Some(user) = session.user_id() else {
        return Redirect::to("/ui/").into_response();
    };
    // Only one's own sign-ins: a family of someone else's is "not found".
    let owned = match state.store.family(&family).await {
        Ok(found) => found.is_some_and(|(owner, _, _)| owner == user),
        Err(err) => return error_page(&session, err.into()),
    };
    if !owned {
        return error_page(&session, ApiError::not_found("sign-in"));
    }
    let entry = crate::http::audit::entry(
        &session.principal,
        &addr,
        "auth.logout",
        Some(format!("user:{user}")),
    );
    if let Err(err) = state
        .store
        .revoke_family(&family, "ended from the profile page", &entry)
        .await
    {
        return error_page(&session, err.into());
    }
    keys::sync_after_write(&state).await;
    if family == session.family {
        return Redirect::to("/ui/").into_response();
    }
    profile_page(
        &state,
        session,
        Notes {
            message: Some("That sign-in has ended.".into()),
            ..Notes::default()
        },
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct PersonalKeyForm {
    #[serde(default)]
    name: String,
}

/// A user-level key of the signed-in person, shown once on the profile page.
pub async fn create_personal_key(
    State(state): State<AppState>,
    addr: ClientAddr,
    Posted { session, form }: Posted<PersonalKeyForm>,
) -> Response {
    let name = form.name.trim();
    let name = if name.is_empty() {
        "Personal key"
    } else {
        name
    };
    let need = need_or_return!(session);
    let request = CreateKeyRequest {
        name: name.into(),
        level: Some("user".into()),
        ..Default::default()
    };
    match keys::create_key(State(state.clone()), need, addr, JsonBody(request)).await {
        Ok((_, axum::Json(created))) => {
            let notes = Notes {
                created: Some(created.key),
                ..Notes::default()
            };
            profile_page(&state, session, notes).await
        }
        Err(err) => {
            let notes = Notes {
                key_name_error: Some(err.message.to_string()),
                ..Notes::default()
            };
            with_status(
                profile_page(&state, session, notes).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

pub async fn revoke_personal_key(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    // Only one's own keys: the API answers 404 for anyone else's, even an admin's view
    // of it, because this page is about the person's own keys.
    let owned =
        matches!(state.store.get_key(id).await, Ok(Some(k)) if k.owner == session.user_id());
    if !owned {
        return error_page(&session, ApiError::not_found("key of yours"));
    }
    match keys::revoke_key(State(state.clone()), need, addr, PathId(id)).await {
        Ok(axum::Json(view)) => {
            let notes = Notes {
                message: Some(format!(
                    "Revoked {}: requests with it are refused now.",
                    view.name
                )),
                ..Notes::default()
            };
            profile_page(&state, session, notes).await
        }
        Err(err) => error_page(&session, err),
    }
}
