//! The dashboard at `/ui/`: server-rendered pages (askama templates compiled into the
//! binary, assets embedded) over the same handlers as the JSON API.
//!
//! A sign-in is a token family like the API's, carried in an HttpOnly, SameSite=Strict
//! cookie holding a signed `session` token; signing out revokes the family (refused at
//! once on every node through the change feed). Every form that changes state carries a
//! CSRF token derived from the session, and is refused without it.

use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::engine::Principal;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, Need, PathId, QueryParams};
use crate::http::{auth, keys, system};
use askama::Template;
use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use keygate_api::ErrorCode;
use keygate_api::accounts::TokenRequest;
use keygate_api::keys::CreateKeyRequest;
use keygate_core::Role;
use keygate_store::{KeyPage, RefreshToken};
use uuid::Uuid;

const SESSION_COOKIE: &str = "kg_session";
const LOGIN_CSRF_COOKIE: &str = "kg_login_csrf";
/// The token kind of a dashboard session (not usable as an access or refresh token).
const SESSION: &str = "session";

/// The signed-in person, as the pages see them.
pub struct Me {
    pub username: String,
    pub admin: bool,
    pub csrf: String,
}

/// A dashboard session, from its cookie. Without a valid one, pages redirect to sign-in.
pub struct Session {
    principal: Principal,
    me: Me,
    family: String,
}

/// The CSRF token of a session: bound to the session's family and token id, neither of
/// which a page on another site can read (the cookie is HttpOnly).
fn csrf_for(family: &str, jti: &str) -> String {
    let digest = keygate_core::key_format::hash_key(&format!("keygate-ui-csrf|{family}|{jti}"));
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// `Secure` when the dashboard is reached over TLS (directly or behind a trusted proxy).
fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut cookie = format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if secure(headers) {
        cookie.push_str("; Secure");
    }
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static("kg=; Path=/ui"))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        Session::from_headers(&parts.headers, state)
            .ok_or_else(|| Redirect::to("/ui/").into_response())
    }
}

/// A state-changing form without this session's CSRF token.
pub struct StaleForm;

impl IntoResponse for StaleForm {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            "The form's security token is missing or stale; reload the page and try again.",
        )
            .into_response()
    }
}

impl Session {
    /// The session of a valid, unrevoked cookie of an enabled user; `None` otherwise.
    fn from_headers(headers: &HeaderMap, state: &AppState) -> Option<Self> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let claims = state.engine.tokens.verify(token, SESSION).ok()?;
        let id = Uuid::parse_str(&claims.sub).ok()?;
        let owner = state.engine.index().owner(id)?;
        if owner.disabled || state.engine.family_revoked(&claims.sid) {
            return None;
        }
        let username = claims.name.clone().unwrap_or_default();
        Some(Session {
            me: Me {
                username: username.clone(),
                admin: owner.role == Role::Admin,
                csrf: csrf_for(&claims.sid, &claims.jti),
            },
            principal: Principal::User {
                id,
                name: username,
                role: owner.role,
                family: claims.sid.clone(),
                project: None,
            },
            family: claims.sid,
        })
    }

    /// Refuses a state-changing form without this session's CSRF token.
    fn check(&self, csrf: &str) -> Result<(), StaleForm> {
        let expected = self.me.csrf.as_bytes();
        let given = csrf.as_bytes();
        // Constant time: a timing difference must not reveal the token byte by byte.
        let same = expected.len() == given.len()
            && expected
                .iter()
                .zip(given)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same { Ok(()) } else { Err(StaleForm) }
    }

    fn need<P: crate::http::extract::Permission>(&self) -> Result<Need<P>, ApiError> {
        Need::for_user(self.principal.clone())
    }
}

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = Html(html).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                     form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        Err(err) => ApiError::internal(&err).into_response(),
    }
}

pub async fn asset_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/app.css"),
    )
}

pub async fn asset_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../assets/app.js"),
    )
}

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

/// `/ui/`: the sign-in form, or the keys page when signed in.
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if Session::from_headers(&headers, &state).is_some() {
        return Redirect::to("/ui/keys").into_response();
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
    let mut response = Redirect::to("/ui/keys").into_response();
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

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = session.check(&form.csrf) {
        return refused.into_response();
    }
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

/// One row of the keys table, formatted for display.
struct KeyRow {
    id: Uuid,
    name: String,
    start: String,
    owner: String,
    level: String,
    project: String,
    scopes: String,
    last_used: String,
    expires: String,
    state: String,
    revocable: bool,
}

#[derive(Default)]
struct KeyForm {
    name: String,
    level: String,
    project_id: String,
    scopes: String,
}

#[derive(Default)]
struct KeyErrors {
    name: Option<String>,
    project: Option<String>,
    scopes: Option<String>,
    other: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/keys.html")]
struct KeysPage {
    me: Option<Me>,
    me_csrf: String,
    keys: Vec<KeyRow>,
    projects: Vec<(String, String)>,
    created: Option<String>,
    message: Option<String>,
    form: KeyForm,
    errors: KeyErrors,
}

fn when(at: Option<time::OffsetDateTime>) -> String {
    at.map(|t| {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        )
    })
    .unwrap_or_else(|| "—".into())
}

async fn keys_page(
    state: &AppState,
    session: Session,
    created: Option<String>,
    message: Option<String>,
    form: KeyForm,
    errors: KeyErrors,
) -> Response {
    let owner = if session.principal.acts_for_everyone() {
        None
    } else {
        session.principal.user_id()
    };
    let records = match state
        .store
        .list_keys(KeyPage {
            limit: 500,
            offset: 0,
            owner,
        })
        .await
    {
        Ok(records) => records,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let usernames: std::collections::HashMap<Uuid, String> = match state.store.load_users().await {
        Ok(users) => users.into_iter().map(|u| (u.id, u.username)).collect(),
        Err(err) => return ApiError::from(err).into_response(),
    };
    let projects = match state.store.load_projects().await {
        Ok(projects) => projects,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let me = session.principal.user_id();
    let visible_projects: Vec<(String, String)> = projects
        .iter()
        .filter(|p| {
            session.principal.acts_for_everyone()
                || p.members.iter().any(|(user, _)| Some(*user) == me)
        })
        .map(|p| (p.id.to_string(), p.name.clone()))
        .collect();
    let project_names: std::collections::HashMap<Uuid, String> =
        projects.iter().map(|p| (p.id, p.name.clone())).collect();
    let now = now_ms();
    let rows = records
        .iter()
        .map(|record| {
            let view = keys::view(state, record, now);
            KeyRow {
                id: record.id,
                name: record.name.clone(),
                start: record.start.clone(),
                owner: record
                    .owner
                    .map(|o| usernames.get(&o).cloned().unwrap_or_else(|| o.to_string()))
                    .unwrap_or_else(|| "instance".into()),
                level: view.level.clone(),
                project: record
                    .project
                    .map(|p| {
                        project_names
                            .get(&p)
                            .cloned()
                            .unwrap_or_else(|| p.to_string())
                    })
                    .unwrap_or_else(|| "—".into()),
                scopes: if record.scopes.is_empty() {
                    "—".into()
                } else {
                    record.scopes.join(" ")
                },
                last_used: when(view.last_used_at),
                expires: when(record.expires_at.map(time_of)),
                revocable: !record.global && (view.state == "active" || view.state == "disabled"),
                state: view.state,
            }
        })
        .collect();
    let csrf = session.me.csrf.clone();
    render(&KeysPage {
        me: Some(session.me),
        me_csrf: csrf,
        keys: rows,
        projects: visible_projects,
        created,
        message,
        form: KeyForm {
            level: if form.level.is_empty() {
                "user".into()
            } else {
                form.level
            },
            ..form
        },
        errors,
    })
}

pub async fn keys_list(State(state): State<AppState>, session: Session) -> Response {
    keys_page(
        &state,
        session,
        None,
        None,
        KeyForm::default(),
        KeyErrors::default(),
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct NewKeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    project_id: String,
    #[serde(default)]
    scopes: String,
}

pub async fn keys_create(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Form(form): Form<NewKeyForm>,
) -> Response {
    if let Err(refused) = session.check(&form.csrf) {
        return refused.into_response();
    }
    let mut errors = KeyErrors::default();
    let scopes: Vec<String> = form
        .scopes
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let project = match (form.level.as_str(), form.project_id.trim()) {
        ("project", "") => {
            errors.project = Some("Choose the project this key is for.".into());
            None
        }
        ("project", id) => match Uuid::parse_str(id) {
            Ok(id) => Some(id),
            Err(_) => {
                errors.project = Some("Choose a project from the list.".into());
                None
            }
        },
        _ => None,
    };
    if form.name.trim().is_empty() {
        errors.name = Some("Give the key a name.".into());
    }
    let kept = KeyForm {
        name: form.name.clone(),
        level: form.level.clone(),
        project_id: form.project_id.clone(),
        scopes: form.scopes.clone(),
    };
    if errors.name.is_some() || errors.project.is_some() {
        return with_status(
            keys_page(&state, session, None, None, kept, errors).await,
            StatusCode::BAD_REQUEST,
        );
    }
    let need = match session.need() {
        Ok(need) => need,
        Err(err) => return err.into_response(),
    };
    let request = CreateKeyRequest {
        name: form.name.trim().to_string(),
        level: Some(if project.is_some() { "project" } else { "user" }.into()),
        project_id: project,
        scopes: Some(scopes),
        ..Default::default()
    };
    match keys::create_key(State(state.clone()), need, addr, JsonBody(request)).await {
        Ok((_, axum::Json(created))) => {
            keys_page(
                &state,
                session,
                Some(created.key),
                None,
                KeyForm::default(),
                KeyErrors::default(),
            )
            .await
        }
        Err(err) => {
            let message = err.message.to_string();
            if message.contains("`name`") {
                errors.name = Some(message);
            } else if message.contains("scope") {
                errors.scopes = Some(message);
            } else if message.contains("project") {
                errors.project = Some(message);
            } else {
                errors.other = Some(message);
            }
            with_status(
                keys_page(&state, session, None, None, kept, errors).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

fn with_status(mut response: Response, status: StatusCode) -> Response {
    if response.status().is_success() {
        *response.status_mut() = status;
    }
    response
}

pub async fn keys_revoke(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    PathId(id): PathId,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = session.check(&form.csrf) {
        return refused.into_response();
    }
    let need = match session.need() {
        Ok(need) => need,
        Err(err) => return err.into_response(),
    };
    let message = match keys::revoke_key(State(state.clone()), need, addr, PathId(id)).await {
        Ok(axum::Json(view)) => format!("Revoked {}: requests with it are refused now.", view.name),
        Err(err) => err.message.to_string(),
    };
    keys_page(
        &state,
        session,
        None,
        Some(message),
        KeyForm::default(),
        KeyErrors::default(),
    )
    .await
}

#[derive(Template)]
#[template(path = "ui/settings.html")]
struct SettingsPage {
    me: Option<Me>,
    me_csrf: String,
    global_key: String,
    revealed: bool,
    api_access_enabled: bool,
    query_param_enabled: bool,
    keys_per_user: String,
    keys_per_user_error: Option<String>,
    message: Option<String>,
}

async fn settings_page(
    state: &AppState,
    session: Session,
    addr: ClientAddr,
    reveal: bool,
    message: Option<String>,
    keys_per_user_error: Option<String>,
) -> Response {
    if !session.me.admin {
        return (
            StatusCode::FORBIDDEN,
            "Only administrators may see the instance's settings.",
        )
            .into_response();
    }
    let need = match session.need() {
        Ok(need) => need,
        Err(err) => return err.into_response(),
    };
    let shown = system::get_global_key(
        State(state.clone()),
        need,
        addr,
        QueryParams(system::RevealParams::new(reveal)),
    )
    .await;
    let global_key = match shown {
        Ok(axum::Json(view)) => view.key,
        Err(err) => return err.into_response(),
    };
    let settings = state.engine.settings();
    let csrf = session.me.csrf.clone();
    render(&SettingsPage {
        me: Some(session.me),
        me_csrf: csrf,
        global_key,
        revealed: reveal,
        api_access_enabled: settings.api_access_enabled,
        query_param_enabled: settings.query_param_enabled,
        keys_per_user: settings
            .keys_per_user
            .map(|n| n.to_string())
            .unwrap_or_default(),
        keys_per_user_error,
        message,
    })
}

#[derive(serde::Deserialize)]
pub struct SettingsQuery {
    #[serde(default)]
    reveal: Option<bool>,
}

pub async fn settings(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    QueryParams(query): QueryParams<SettingsQuery>,
) -> Response {
    settings_page(
        &state,
        session,
        addr,
        query.reveal.unwrap_or(false),
        None,
        None,
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct SettingsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    api_access_enabled: Option<String>,
    #[serde(default)]
    query_param_enabled: Option<String>,
    #[serde(default)]
    keys_per_user: String,
}

pub async fn settings_save(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Form(form): Form<SettingsForm>,
) -> Response {
    if let Err(refused) = session.check(&form.csrf) {
        return refused.into_response();
    }
    let keys_per_user = match form.keys_per_user.trim() {
        "" => None,
        text => match text.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return with_status(
                    settings_page(
                        &state,
                        session,
                        addr,
                        false,
                        None,
                        Some("Enter a whole number of at least 1, or leave it empty.".into()),
                    )
                    .await,
                    StatusCode::BAD_REQUEST,
                );
            }
        },
    };
    let need = match session.need() {
        Ok(need) => need,
        Err(err) => return err.into_response(),
    };
    let patch = keygate_api::system::SettingsPatch {
        api_access_enabled: Some(form.api_access_enabled.is_some()),
        query_param_enabled: Some(form.query_param_enabled.is_some()),
        keys_per_user: Some(keys_per_user),
    };
    let page_addr = ClientAddr(addr.0);
    let message =
        match system::patch_settings(State(state.clone()), need, addr, JsonBody(patch)).await {
            Ok(_) => "Settings saved.".to_string(),
            Err(err) => err.message.to_string(),
        };
    settings_page(&state, session, page_addr, false, Some(message), None).await
}

pub async fn settings_regenerate(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = session.check(&form.csrf) {
        return refused.into_response();
    }
    let need = match session.need() {
        Ok(need) => need,
        Err(err) => return err.into_response(),
    };
    let page_addr = ClientAddr(addr.0);
    match system::regenerate_global_key(State(state.clone()), need, addr).await {
        Ok(_) => {
            settings_page(
                &state,
                session,
                page_addr,
                true,
                Some("A new global key was made; the old one no longer works.".into()),
                None,
            )
            .await
        }
        Err(err) => err.into_response(),
    }
}

struct SessionRow {
    id: String,
    started: String,
    ends: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "ui/profile.html")]
struct ProfilePage {
    me: Option<Me>,
    me_csrf: String,
    username: String,
    role: String,
    sessions: Vec<SessionRow>,
    message: Option<String>,
    old_password_error: Option<String>,
    new_password_error: Option<String>,
}

async fn profile_page(
    state: &AppState,
    session: Session,
    message: Option<String>,
    errors: (Option<String>, Option<String>),
) -> Response {
    let Some(user) = session.principal.user_id() else {
        return Redirect::to("/ui/").into_response();
    };
    let sign_ins = match state.store.active_sign_ins(user, now_ms()).await {
        Ok(sign_ins) => sign_ins,
        Err(err) => return ApiError::from(err).into_response(),
    };
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
    let csrf = session.me.csrf.clone();
    let username = session.me.username.clone();
    render(&ProfilePage {
        me: Some(session.me),
        me_csrf: csrf,
        username,
        role: role.into(),
        sessions,
        message,
        old_password_error: errors.0,
        new_password_error: errors.1,
    })
}

pub async fn profile(State(state): State<AppState>, session: Session) -> Response {
    profile_page(&state, session, None, (None, None)).await
}

#[derive(serde::Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    old_password: String,
    #[serde(default)]
    new_password: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    if let Err(refused) = session.check(&form.csrf) {
        return refused.into_response();
    }
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
            let errors = if err.code == ErrorCode::InvalidCredentials {
                (Some(message), None)
            } else {
                (None, Some(message))
            };
            with_status(
                profile_page(&state, session, None, errors).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

pub async fn end_session(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    axum::extract::Path(family): axum::extract::Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = session.check(&form.csrf) {
        return refused.into_response();
    }
    let Some(user) = session.principal.user_id() else {
        return Redirect::to("/ui/").into_response();
    };
    // Only one's own sign-ins: a family of someone else's is "not found".
    let owned = match state.store.family(&family).await {
        Ok(found) => found.is_some_and(|(owner, _, _)| owner == user),
        Err(err) => return ApiError::from(err).into_response(),
    };
    if !owned {
        return ApiError::not_found("sign-in").into_response();
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
        return ApiError::from(err).into_response();
    }
    keys::sync_after_write(&state).await;
    if family == session.family {
        return Redirect::to("/ui/").into_response();
    }
    profile_page(
        &state,
        session,
        Some("That sign-in has ended.".into()),
        (None, None),
    )
    .await
}
