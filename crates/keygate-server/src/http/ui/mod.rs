//! The dashboard at `/ui/`: server-rendered pages (askama templates compiled into the
//! binary, assets embedded) over the same handlers as the JSON API.
//!
//! A sign-in is a token family like the API's, carried in an HttpOnly, SameSite=Strict
//! cookie holding a signed `session` token; signing out revokes the family (refused at
//! once on every node through the change feed). Every form that changes state carries a
//! CSRF token derived from the session, and is refused without it ([`Posted`]).
//!
//! One module per page group; this one holds what they share: the session, the CSRF
//! check, rendering and formatting.

/// The API permission a handler needs, for the session's user; without it, the handler
/// answers the error page (a `?` for pages).
macro_rules! need_or_return {
    ($session:expr) => {
        match $session.need() {
            Ok(need) => need,
            Err(err) => return $crate::http::ui::error_page(&$session, err),
        }
    };
}

mod audit;
mod chart;
mod keys;
mod overview;
mod plans;
mod profile;
mod projects;
mod settings;
mod sign_in;
mod usage;
mod users;
mod webhooks;

use crate::AppState;
use crate::clock::time_of;
use crate::engine::Principal;
use crate::http::error::ApiError;
use crate::http::extract::Need;
use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use keygate_core::{Role, UnixMillis};
use serde::de::DeserializeOwned;
use uuid::Uuid;

const SESSION_COOKIE: &str = "kg_session";
const LOGIN_CSRF_COOKIE: &str = "kg_login_csrf";
/// The token kind of a dashboard session (not usable as an access or refresh token).
const SESSION: &str = "session";

/// The dashboard's pages and forms.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(sign_in::home))
        .route("/ui/login", post(sign_in::login))
        .route("/ui/logout", post(sign_in::logout))
        .route("/ui/overview", get(overview::page))
        .route("/ui/keys", get(keys::list).post(keys::create))
        .route("/ui/keys/{id}", get(keys::detail))
        .route("/ui/keys/{id}/revoke", post(keys::revoke))
        .route("/ui/keys/{id}/rotate", post(keys::rotate))
        .route("/ui/keys/{id}/enabled", post(keys::set_enabled))
        .route("/ui/settings", get(settings::page).post(settings::save))
        .route("/ui/settings/regenerate", post(settings::regenerate))
        .route("/ui/profile", get(profile::page))
        .route("/ui/profile/password", post(profile::change_password))
        .route("/ui/profile/keys", post(profile::create_personal_key))
        .route(
            "/ui/profile/keys/{id}/revoke",
            post(profile::revoke_personal_key),
        )
        .route(
            "/ui/profile/sessions/{family}/revoke",
            post(profile::end_session),
        )
        .route("/ui/users", get(users::list).post(users::create))
        .route("/ui/users/{id}", post(users::update))
        .route("/ui/users/{id}/delete", post(users::delete))
        .route("/ui/projects", get(projects::list).post(projects::create))
        .route(
            "/ui/projects/{id}",
            get(projects::detail).post(projects::rename),
        )
        .route("/ui/projects/{id}/delete", post(projects::delete))
        .route("/ui/projects/{id}/members", post(projects::add_member))
        .route(
            "/ui/projects/{id}/members/{user_id}/remove",
            post(projects::remove_member),
        )
        .route("/ui/plans", get(plans::list).post(plans::create))
        .route("/ui/plans/{id}", get(plans::detail).post(plans::update))
        .route("/ui/webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/ui/webhooks/{id}",
            get(webhooks::detail).post(webhooks::update),
        )
        .route("/ui/webhooks/{id}/delete", post(webhooks::delete))
        .route("/ui/webhooks/{id}/secret", post(webhooks::reveal_secret))
        .route("/ui/webhooks/{id}/rotate", post(webhooks::rotate_secret))
        .route("/ui/webhooks/{id}/test", post(webhooks::send_test))
        .route(
            "/ui/webhooks/{id}/deliveries/{delivery_id}/retry",
            post(webhooks::retry),
        )
        .route("/ui/usage", get(usage::page))
        .route("/ui/usage.csv", get(usage::csv))
        .route("/ui/audit", get(audit::page))
        .route("/ui/assets/app.css", get(asset_css))
        .route("/ui/assets/app.js", get(asset_js))
}

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

    /// The API handlers' permission check, for this session's user.
    fn need<P: crate::http::extract::Permission>(&self) -> Result<Need<P>, ApiError> {
        Need::for_user(self.principal.clone())
    }

    fn user_id(&self) -> Option<Uuid> {
        self.principal.user_id()
    }

    /// The layout's view of the signed-in person (the page keeps the session).
    fn me(&self) -> Option<Me> {
        Some(Me {
            username: self.me.username.clone(),
            admin: self.me.admin,
            csrf: self.me.csrf.clone(),
        })
    }

    fn csrf(&self) -> String {
        self.me.csrf.clone()
    }
}

#[derive(serde::Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    form: T,
}

/// A state-changing form from a signed-in session, its CSRF token checked before the
/// handler runs.
pub struct Posted<T> {
    session: Session,
    form: T,
}

/// A form with no fields of its own (a button).
#[derive(serde::Deserialize)]
pub struct NoFields {}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let request = Request::from_parts(parts, body);
        let axum::Form(posted) = axum::Form::<WithCsrf<T>>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        session
            .check(&posted.csrf)
            .map_err(IntoResponse::into_response)?;
        Ok(Posted {
            session,
            form: posted.form,
        })
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

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage {
    me: Option<Me>,
    status: u16,
    message: String,
}

/// An API error as a page: its status, its message (never a secret: API messages are
/// written for clients), and the way back.
fn error_page(session: &Session, err: ApiError) -> Response {
    let status = StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = render(&ErrorPage {
        me: session.me(),
        status: status.as_u16(),
        message: err.message.to_string(),
    });
    *response.status_mut() = status;
    response
}

/// Pages that only administrators may see answer 403 to others: the refusal, if any.
fn admin_only(session: &Session) -> Option<Response> {
    (!session.me.admin).then(|| {
        error_page(
            session,
            ApiError::new(keygate_api::ErrorCode::InsufficientPermissions)
                .message("Only administrators may see this page."),
        )
    })
}

pub async fn asset_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../assets/app.css"),
    )
}

pub async fn asset_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../assets/app.js"),
    )
}

/// `2030-01-31 12:00` (UTC), or a dash.
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

fn when_ms(at: Option<UnixMillis>) -> String {
    when(at.map(time_of))
}

/// A page answered to a refused form keeps its content but says 400.
fn with_status(mut response: Response, status: StatusCode) -> Response {
    if response.status().is_success() {
        *response.status_mut() = status;
    }
    response
}

/// An on/off form (enable or disable a key or an endpoint).
#[derive(serde::Deserialize)]
pub struct EnabledForm {
    #[serde(default)]
    enabled: String,
}

impl EnabledForm {
    /// `true` or `false`, as the form said.
    fn enabled(&self) -> Result<bool, ApiError> {
        match self.enabled.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ApiError::invalid("`enabled` must be true or false.")),
        }
    }
}

/// A form's optional text field: trimmed, `None` when empty.
fn filled(text: &str) -> Option<&str> {
    let text = text.trim();
    (!text.is_empty()).then_some(text)
}

/// A form's optional id field: `Ok(None)` when empty, `Err` when not a UUID.
fn optional_id(text: &str) -> Result<Option<Uuid>, ()> {
    filled(text)
        .map(Uuid::parse_str)
        .transpose()
        .map_err(|_| ())
}

/// The names of users by id, for tables that show owners.
async fn usernames(state: &AppState) -> Result<std::collections::HashMap<Uuid, String>, ApiError> {
    Ok(state
        .store
        .load_users()
        .await?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect())
}
