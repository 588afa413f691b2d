//! The HTTP surface: routes, extractors, the error model and per-request context.

pub mod alias;
pub mod audit;
pub mod auth;
pub mod context;
pub mod docs;
pub mod error;
pub mod extract;
pub mod forward;
pub mod free;
pub mod front;
pub mod keys;
pub mod plans;
pub mod projects;
pub mod proxy;
pub mod system;
pub mod ui;
pub mod upstream;
pub mod usage;
pub mod users;
pub mod verify;
pub mod watch;
pub mod webhooks;

use crate::AppState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use error::ApiError;
use keygate_api::ErrorCode;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_swagger_ui::SwaggerUi;

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound)
        .message("No such endpoint.")
        .hint("the API is described at /api/v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    // The panic message may hold anything; it is not logged or echoed.
    tracing::error!("a request handler panicked");
    ApiError::new(ErrorCode::InternalError).into_response()
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/keys", post(keys::create_key).get(keys::list_keys))
        .route("/api/v1/keys/import", post(keys::import_key))
        .route("/api/v1/keys/rotate", post(keys::rotate_self))
        .route("/api/v1/keys/free", post(free::create_free_key))
        .route("/api/v1/keys/verify", post(verify::verify_key))
        .route(
            "/api/v1/keys/{id}",
            get(keys::get_key)
                .patch(keys::update_key)
                .delete(keys::revoke_key),
        )
        .route("/api/v1/keys/{id}/rotate", post(keys::rotate_key))
        .route("/api/v1/keys/{id}/usage", get(usage::key_usage))
        .route("/api/v1/usage", get(usage::usage))
        .route(
            "/api/v1/projects",
            get(projects::list_projects).post(projects::create_project),
        )
        .route(
            "/api/v1/projects/{id}",
            get(projects::get_project)
                .patch(projects::rename_project)
                .delete(projects::delete_project),
        )
        .route(
            "/api/v1/projects/{id}/members/{user_id}",
            axum::routing::put(projects::put_member).delete(projects::remove_member),
        )
        .route("/api/v1/whoami", get(verify::whoami))
        .route(
            "/api/v1/settings",
            get(system::get_settings).patch(system::patch_settings),
        )
        .route("/api/v1/systeminfo", get(system::system_info))
        .route("/api/v1/settings/api-key", get(system::get_global_key))
        .route(
            "/api/v1/settings/api-key/regenerate",
            post(system::regenerate_global_key),
        )
        .route(
            "/api/v1/users",
            get(users::list_users).post(users::create_user),
        )
        .route("/api/v1/users/me", get(users::get_me))
        .route("/api/v1/users/me/password", post(users::change_my_password))
        .route(
            "/api/v1/users/{id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route("/api/v1/permissions", get(users::permissions))
        .route("/api/v1/auth/token", post(auth::token))
        .route("/api/v1/auth/token/refresh", post(auth::refresh))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/api/v1/audit", get(audit::list_audit))
        .route(
            "/api/v1/forward-auth",
            axum::routing::any(forward::forward_auth),
        )
        // Envoy's ext_authz appends the original path to its path prefix.
        .route(
            "/api/v1/forward-auth/{*original}",
            axum::routing::any(forward::forward_auth),
        )
        .route(
            "/api/v1/plans",
            get(plans::list_plans).post(plans::create_plan),
        )
        .route(
            "/api/v1/plans/{id}",
            get(plans::get_plan).patch(plans::update_plan),
        )
        .route(
            "/api/v1/webhooks",
            get(webhooks::list_webhooks).post(webhooks::create_webhook),
        )
        .route("/api/v1/webhooks/secret", post(webhooks::account_secret))
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get_webhook)
                .patch(webhooks::update_webhook)
                .delete(webhooks::delete_webhook),
        )
        .route(
            "/api/v1/webhooks/{id}/secret",
            post(webhooks::rotate_secret).get(webhooks::reveal_secret),
        )
        .route("/api/v1/webhooks/{id}/test", post(webhooks::send_test))
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::list_deliveries),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            post(webhooks::retry_delivery),
        )
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .merge(ui::routes())
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .with_state(state.clone());
    let mut app = Router::new().merge(api).merge(
        SwaggerUi::new("/api/docs").url("/api/v1/openapi.json", docs::openapi(&state.config)),
    );
    // In reverse-proxy mode every path keygate does not answer itself goes to the app.
    app = if state.upstream.is_some() {
        app.fallback_service(axum::routing::any(proxy::proxy).with_state(state.clone()))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                proxy::divert,
            ))
    } else {
        app.fallback(not_found)
    };
    let app = app
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            context::request_context,
        ));
    if state.config.aliases.is_empty() {
        return app;
    }
    // Aliases rewrite the path before routing, so they wrap the whole router.
    let aliases = std::sync::Arc::new(state.config.aliases.clone());
    let rewriting = tower::Layer::layer(
        &axum::middleware::from_fn(move |request, next| {
            alias::rewrite(std::sync::Arc::clone(&aliases), request, next)
        }),
        app,
    );
    Router::new().fallback_service(rewriting)
}
