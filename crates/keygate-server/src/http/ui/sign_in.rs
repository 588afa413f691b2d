//! Signing in and out of the dashboard.

use super::{LOGIN_CSRF_COOKIE, Me, NoFields, Posted, SESSION, SESSION_COOKIE, Session};
use super::{cookie, render, set_cookie};
use crate::AppState;
use crate::clock::now_ms;
use crate::engine::Principal;
use crate::http::error::ApiError;
use crate::http::extract::ClientAddr;
use crate::http::{auth, keys};
use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use keygate_api::ErrorCode;
use keygate_api::accounts::TokenRequest;
use keygate_store::RefreshToken;
use uuid::Uuid;

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    me: Option<Me>,
    csrf: String,
    username: String,
    error: Option<String>,
}

fn login_page(headers: &HeaderMap, username: String, error: Option<String>) -> Response {
    let csrf = match crate::passwords::generate_password() {
        Ok(token) => token,
        Err(err) => return ApiError::internal(&err).into_response(),
    };
    let mut response = render(&LoginPage {
        me: None,
        csrf: csrf.clone(),
        username,
        error,
    });
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(headers, LOGIN_CSRF_COOKIE, &csrf, Some(3600)),
    );
    response
}

/// `/ui/`: the sign-in form, or the overview when signed in.
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if Session::from_headers(&headers, &state).is_some() {
        return Redirect::to("/ui/overview").into_response();
    }
    login_page(&headers, String::new(), None)
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

pub async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // Login CSRF: the form must come from our own page (double-submit cookie).
    let cookie_token = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if cookie_token.is_empty() || cookie_token != form.csrf {
        return login_page(
            &headers,
            form.username,
            Some("The sign-in form expired; please try again.".into()),
        );
    }
    let username = form.username.clone();
    let user = match auth::sign_in(
        &state,
        &addr,
        TokenRequest {
            username: form.username,
            password: form.password,
        },
    )
    .await
    {
        Ok(user) => user,
        Err(err) => {
            let message = match err.code {
                ErrorCode::RateLimited => {
                    "Too many failed sign-ins; wait a while and try again.".to_string()
                }
                ErrorCode::InvalidCredentials => err.message.to_string(),
                _ => "Signing in failed; please try again.".to_string(),
            };
            let mut response = login_page(&headers, username, Some(message));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            return response;
        }
    };
    let now = now_ms();
    let family = Uuid::now_v7().simple().to_string();
    let issued =
        state
            .engine
            .tokens
            .issue(SESSION, (user.id, &user.username, user.role), &family, now);
    let (token, claims) = match issued {
        Ok(issued) => issued,
        Err(err) => return ApiError::internal(&err).into_response(),
    };
    let first = RefreshToken {
        jti: claims.jti.clone(),
        family: family.clone(),
        user_id: user.id,
        issued_at: now,
        expires_at: i64::try_from(claims.exp)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    };
    let principal = Principal::User {
        id: user.id,
        name: user.username.clone(),
        role: user.role,
        family: family.clone(),
        project: None,
    };
    let mut entry = crate::http::audit::entry(
        &principal,
        &addr,
        "auth.login",
        Some(format!("user:{}", user.id)),
    );
    entry.credential = Some(format!("session:{family}"));
    entry.detail.insert("via".into(), "dashboard".into());
    if let Err(err) = state.store.create_family(&first, &entry).await {
        return ApiError::from(err).into_response();
    }
    let _ = state.store.record_login(user.id, now).await;
    let ttl = claims.exp.saturating_sub(claims.iat);
    let mut response = Redirect::to("/ui/overview").into_response();
    let cookies = response.headers_mut();
    cookies.append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, &token, Some(ttl)),
    );
    cookies.append(
        header::SET_COOKIE,
        set_cookie(&headers, LOGIN_CSRF_COOKIE, "", Some(0)),
    );
    response
}

pub async fn logout(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let entry = crate::http::audit::entry(
        &session.principal,
        &addr,
        "auth.logout",
        session.principal.user_id().map(|id| format!("user:{id}")),
    );
    if let Err(err) = state
        .store
        .revoke_family(&session.family, "logout", &entry)
        .await
    {
        return ApiError::from(err).into_response();
    }
    keys::sync_after_write(&state).await;
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, "", Some(0)),
    );
    response
}
