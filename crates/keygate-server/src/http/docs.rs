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

/// Names of the document's two security schemes. Swagger UI titles the sections of its
/// Authorize dialog with them, so a preset can show the ones its document tells users to
/// look for (Dispatcharr's "Bearer" and "ApiKey").
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySchemeNames {
    /// The API-key header scheme.
    pub api_key: String,
    /// The `Authorization: Bearer` scheme (a JWT or an API key).
    pub bearer: String,
}

impl Default for SecuritySchemeNames {
    fn default() -> Self {
        Self {
            api_key: API_KEY_SCHEME.into(),
            bearer: BEARER_SCHEME.into(),
        }
    }
}

/// The names the endpoints' `security(...)` annotations use.
const API_KEY_SCHEME: &str = "api_key";
const BEARER_SCHEME: &str = "bearer";

impl SecuritySchemeNames {
    /// OpenAPI allows `[A-Za-z0-9._-]+` as a component name; the two must differ.
    pub fn validate(&self) -> Result<(), String> {
        for (field, name) in [("api_key", &self.api_key), ("bearer", &self.bearer)] {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !valid {
                return Err(format!(
                    "openapi_security_schemes.{field}: {name:?} must be 1 to 64 letters, digits, '.', '-' or '_'"
                ));
            }
        }
        if self.api_key == self.bearer {
            return Err("openapi_security_schemes: api_key and bearer must differ".into());
        }
        Ok(())
    }

    /// The configured name of an annotation's scheme.
    fn rename<'a>(&'a self, annotated: &'a str) -> &'a str {
        match annotated {
            API_KEY_SCHEME => &self.api_key,
            BEARER_SCHEME => &self.bearer,
            other => other,
        }
    }
}

/// The document, with the security schemes named after this deployment's configuration.
pub fn openapi(config: &ServerConfig) -> utoipa::openapi::OpenApi {
    let names = &config.openapi_security_schemes;
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    if *names != SecuritySchemeNames::default() {
        rename_requirements(&mut doc, names);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    let mut api_key = ApiKeyValue::new(config.api_key_header.clone());
    api_key.description = Some("An API key in this header.".into());
    components.add_security_scheme(
        names.api_key.clone(),
        SecurityScheme::ApiKey(ApiKey::Header(api_key)),
    );
    components.add_security_scheme(
        names.bearer.clone(),
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

/// Points every operation's security requirements at the configured scheme names.
fn rename_requirements(doc: &mut utoipa::openapi::OpenApi, names: &SecuritySchemeNames) {
    use utoipa::openapi::security::SecurityRequirement;
    // A requirement's scheme names are private to utoipa; its serde form is the map of
    // name to scopes, which is read here and built again under the new names.
    let renamed = |requirement: &SecurityRequirement| -> SecurityRequirement {
        let value = serde_json::to_value(requirement).unwrap_or_default();
        let mut out: Option<SecurityRequirement> = None;
        for (name, scopes) in value.as_object().into_iter().flatten() {
            let scopes: Vec<String> = scopes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            let name = names.rename(name).to_owned();
            out = Some(match out {
                None => SecurityRequirement::new(name, scopes),
                Some(r) => r.add(name, scopes),
            });
        }
        // An empty requirement (`{}`: no credential needed) stays empty.
        out.unwrap_or_default()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            if let Some(requirements) = operation.security.as_mut() {
                for requirement in requirements.iter_mut() {
                    *requirement = renamed(requirement);
                }
            }
        }
    }
    if let Some(requirements) = doc.security.as_mut() {
        for requirement in requirements.iter_mut() {
            *requirement = renamed(requirement);
        }
    }
}
