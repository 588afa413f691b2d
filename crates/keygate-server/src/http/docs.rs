//! The OpenAPI 3.1 document of every endpoint, and Swagger UI with embedded assets.

use crate::config::ServerConfig;
use crate::http::{
    audit, auth, forward, free, keys, plans, projects, system, usage, users, verify, webhooks,
};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keygate",
        description = "Issue, verify, rate-limit and meter API credentials. Send the key as `Authorization: Bearer <key>` or in the API-key header. Errors use one body: `{\"error\": {\"code\", \"message\", \"hint\", \"request_id\"}}`.",
    ),
    paths(
        keys::create_key, keys::list_keys, keys::get_key, keys::update_key, keys::revoke_key,
        keys::rotate_key, keys::import_key, keys::rotate_self, free::create_free_key,
        verify::verify_key, verify::whoami,
        system::get_settings, system::patch_settings, system::system_info,
        system::get_global_key, system::regenerate_global_key,
        users::list_users, users::create_user, users::get_user, users::update_user, users::delete_user,
        users::get_me, users::change_my_password, users::permissions,
        auth::token, auth::refresh, auth::logout, auth::jwks, audit::list_audit,
        plans::list_plans, plans::create_plan, plans::get_plan, plans::update_plan,
        usage::key_usage, usage::usage, forward::forward_auth,
        projects::list_projects, projects::create_project, projects::get_project, projects::rename_project,
        projects::delete_project, projects::put_member, projects::remove_member,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook,
        webhooks::update_webhook, webhooks::delete_webhook, webhooks::rotate_secret, webhooks::reveal_secret,
        webhooks::account_secret, webhooks::list_deliveries, webhooks::retry_delivery,
        webhooks::send_test,
        system::healthz, system::readyz, system::metrics, openapi_json,
    ),
    tags(
        (name = "keys", description = "Create, list, update, revoke, rotate and import API keys (admin scope)."),
        (name = "verify", description = "Ask keygate whether a key is good."),
        (name = "settings", description = "Instance settings (admin scope)."),
        (name = "system", description = "System information, health and metrics."),
        (name = "users", description = "User accounts and permissions."),
        (name = "auth", description = "Sign in for JWT access and refresh tokens."),
        (name = "audit", description = "The append-only audit log (audit:read)."),
        (name = "plans", description = "Rate limits and monthly quotas that keys take."),
        (name = "gateway", description = "Forward auth for nginx, Traefik, Caddy and Envoy."),
        (name = "projects", description = "Projects and their members; project-level keys."),
        (name = "usage", description = "Decisions per key by outcome, for charts and billing."),
        (name = "webhooks", description = "Signed event delivery: endpoints, secrets, deliveries."),
    )
)]
struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "This document", content_type = "application/json")))]
#[allow(dead_code)] // Documents the route that utoipa-swagger-ui serves.
fn openapi_json() {}

/// The document, with the security schemes named after this deployment's configuration.
pub fn openapi(config: &ServerConfig) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    let components = doc.components.get_or_insert_with(Default::default);
    let mut api_key = ApiKeyValue::new(config.api_key_header.clone());
    api_key.description = Some("An API key in this header.".into());
    components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(api_key)));
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT or API key")
                .description(Some("A JWT access token from /api/v1/auth/token, or an API key, as `Authorization: Bearer <value>`."))
                .build(),
        ),
    );
    doc
}
