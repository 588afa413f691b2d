//! `/api/v1/webhooks`: endpoints, their secrets, deliveries and test events.
//!
//! An administrator (or an ownerless key with the permission) sees every endpoint; a user
//! sees their own and their projects'.

use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::engine::Principal;
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{
    ClientAddr, JsonBody, Need, PathId, QueryParams, WebhooksRead, WebhooksWrite,
};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keygate_api::webhooks::{
    CreateWebhookRequest, CreatedWebhook, DeliveryList, DeliveryView, EVENT_TYPES,
    RotateSecretRequest, TestEventSent, UpdateWebhookRequest, WebhookList, WebhookSecret,
    WebhookView,
};
use keygate_api::{ErrorBody, ErrorCode};
use keygate_core::webhook::address_allowed;
use keygate_store::OutboxEvent;
use keygate_store::webhooks::{Delivery, WebhookEndpoint};
use uuid::Uuid;

fn view(state: &AppState, e: &WebhookEndpoint, now: i64) -> WebhookView {
    let status = if !e.enabled {
        "disabled"
    } else if e.consecutive_failures >= state.config.webhooks.failing_after {
        "failing"
    } else {
        "active"
    };
    WebhookView {
        id: e.id,
        url: e.url.clone(),
        events: e.events.clone(),
        enabled: e.enabled,
        description: e.description.clone(),
        owner: e.owner,
        project_id: e.project,
        signature_header: e.signature_header.clone(),
        status: status.into(),
        consecutive_failures: e.consecutive_failures,
        disabled_reason: e.disabled_reason.clone(),
        previous_secret_expires_at: e
            .previous_secret_until
            .filter(|until| *until > now && e.previous_secret.is_some())
            .map(time_of),
        created_at: time_of(e.created_at),
        updated_at: time_of(e.updated_at),
    }
}

fn delivery_view(d: &Delivery) -> DeliveryView {
    DeliveryView {
        id: d.id,
        event_id: d.event_id.clone(),
        event_type: d.event_type.clone(),
        status: d.status.as_str().into(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at.map(time_of),
        last_status_code: d.last_status_code,
        last_error: d.last_error.clone(),
        last_latency_ms: d.last_latency_ms,
        created_at: time_of(d.created_at),
        updated_at: time_of(d.updated_at),
    }
}

/// May `principal` see `endpoint`?
fn visible(state: &AppState, principal: &Principal, endpoint: &WebhookEndpoint) -> bool {
    if principal.acts_for_everyone() {
        return true;
    }
    let Some(me) = principal.user_id() else {
        return false;
    };
    match endpoint.project {
        Some(project) => state.engine.index().is_member(project, me) == Some(true),
        None => endpoint.owner == Some(me),
    }
}

async fn visible_endpoint(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<WebhookEndpoint, ApiError> {
    match state.store.get_webhook(id).await? {
        Some(endpoint) if visible(state, principal, &endpoint) => Ok(endpoint),
        _ => Err(ApiError::not_found("webhook endpoint")),
    }
}

/// An endpoint the caller may change: its owner's, or anyone's for an administrator.
/// Other members of its project may see it, not redirect, pause or re-key it.
async fn writable_endpoint(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<WebhookEndpoint, ApiError> {
    let endpoint = visible_endpoint(state, principal, id).await?;
    if principal.acts_for_everyone()
        || endpoint
            .owner
            .is_some_and(|o| Some(o) == principal.user_id())
    {
        Ok(endpoint)
    } else {
        Err(ApiError::new(ErrorCode::InsufficientPermissions)
            .message("Only the endpoint's owner or an administrator may change it."))
    }
}

/// Stores a changed endpoint read at `read_at`, audited as `action`; 409 if it changed
/// since, 404 if it is gone.
async fn save(
    state: &AppState,
    principal: &Principal,
    addr: &ClientAddr,
    endpoint: &mut WebhookEndpoint,
    read_at: i64,
    now: i64,
    action: &str,
) -> Result<(), ApiError> {
    // Strictly later than the read, so the compare-and-swap sees every write.
    endpoint.updated_at = now.max(read_at + 1);
    let entry = audit::entry(
        principal,
        addr,
        action,
        Some(format!("webhook:{}", endpoint.id)),
    );
    if state
        .store
        .update_webhook(endpoint, read_at, &entry)
        .await?
    {
        Ok(())
    } else {
        Err(ApiError::not_found("webhook endpoint"))
    }
}

fn validate_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    let parsed: axum::http::Uri = url
        .parse()
        .map_err(|_| ApiError::invalid("`url` is not a URL."))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) {
        return Err(ApiError::invalid(
            "`url` must be an http:// or https:// URL.",
        ));
    }
    let Some(host) = parsed.host().filter(|h| !h.is_empty()) else {
        return Err(ApiError::invalid("`url` names no host."));
    };
    if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ApiError::invalid(
            "`url` must not carry credentials; receivers verify the signature instead.",
        ));
    }
    // Names are checked again on every attempt, on the address they resolve to then.
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>()
        && !address_allowed(ip, state.config.webhooks.allow_private)
    {
        return Err(ApiError::invalid(format!(
            "`url` points at {ip}, a loopback, private or link-local address, which webhooks may not reach."
        ))
        .hint("for local development set KEYGATE_WEBHOOKS_ALLOW_PRIVATE=true (link-local stays refused)"));
    }
    Ok(url.to_string())
}

fn validate_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for event in events {
        let event = event.trim();
        if !EVENT_TYPES.contains(&event) {
            return Err(ApiError::invalid(format!(
                "`events`: {event:?} is not an event type ({}).",
                EVENT_TYPES.join(", ")
            )));
        }
        if !out.iter().any(|e| e == event) {
            out.push(event.to_string());
        }
    }
    Ok(out)
}

fn validate_header(name: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(name) = name
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    let reserved = [
        "content-type",
        "content-length",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ];
    if axum::http::HeaderName::try_from(name.as_str()).is_err() || reserved.contains(&name.as_str())
    {
        return Err(ApiError::invalid(format!(
            "`signature_header`: {name:?} is not a header name keygate can sign in."
        )));
    }
    Ok(Some(name))
}

fn validate_description(description: Option<String>) -> Result<String, ApiError> {
    let description = description.unwrap_or_default();
    if description.chars().count() > 500 {
        return Err(ApiError::invalid(
            "`description` must be at most 500 characters.",
        ));
    }
    Ok(description)
}

fn new_secret() -> Result<String, ApiError> {
    crate::webhooks::new_secret().map_err(|e| ApiError::internal(&e))
}

fn overlap_ms(state: &AppState, requested: Option<u64>) -> Result<i64, ApiError> {
    let seconds = requested.unwrap_or(state.config.webhooks.secret_overlap.as_secs());
    if seconds > 30 * 86_400 {
        return Err(ApiError::invalid(
            "`overlap_seconds` must be at most 2592000 (30 days).",
        ));
    }
    Ok(i64::try_from(seconds * 1000).unwrap_or(i64::MAX))
}

#[utoipa::path(
    post, path = "/api/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "The endpoint and its signing secret", body = CreatedWebhook),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 403, description = "Not permitted", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let principal = caller.principal();
    let url = validate_url(&state, &body.url)?;
    let events = validate_events(&body.events)?;
    let signature_header = validate_header(body.signature_header)?;
    let description = validate_description(body.description)?;
    let owner = match body.user_id {
        None => principal.user_id(),
        Some(id) if Some(id) == principal.user_id() => Some(id),
        Some(id) if principal.acts_for_everyone() => {
            state
                .store
                .get_user(id)
                .await?
                .ok_or_else(|| ApiError::invalid("`user_id` names no user."))?;
            Some(id)
        }
        Some(_) => {
            return Err(ApiError::new(ErrorCode::InsufficientPermissions)
                .message("Only administrators may create endpoints for other users."));
        }
    };
    if let Some(project) = body.project_id {
        let member = owner.and_then(|o| state.engine.index().is_member(project, o));
        let allowed = match member {
            Some(true) => true,
            _ => principal.acts_for_everyone() && state.engine.index().project_exists(project),
        };
        if !allowed {
            return Err(ApiError::invalid(
                "`project_id` names no project the endpoint's owner belongs to.",
            ));
        }
    }
    let secret = match (body.project_id, owner) {
        (None, Some(owner)) => match state.store.account_webhook_secret(owner).await? {
            Some(secret) => secret,
            None => new_secret()?,
        },
        _ => new_secret()?,
    };
    let now = now_ms();
    let endpoint = WebhookEndpoint {
        id: Uuid::now_v7(),
        url,
        events,
        enabled: body.enabled.unwrap_or(true),
        description,
        owner,
        project: body.project_id,
        secret: secret.clone(),
        previous_secret: None,
        previous_secret_until: None,
        signature_header,
        consecutive_failures: 0,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    };
    let entry = audit::entry(
        principal,
        &addr,
        "webhook.create",
        Some(format!("webhook:{}", endpoint.id)),
    );
    state.store.create_webhook(&endpoint, &entry).await?;
    tracing::info!(webhook_id = %endpoint.id, "webhook endpoint created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: view(&state, &endpoint, now),
            secret,
        }),
    ))
}

#[utoipa::path(
    get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The endpoints the caller may see", body = WebhookList)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Need<WebhooksRead>,
) -> Result<Json<WebhookList>, ApiError> {
    let now = now_ms();
    let all = state.store.list_webhooks(None).await?;
    let webhooks = all
        .iter()
        .filter(|e| visible(&state, caller.principal(), e))
        .map(|e| view(&state, e, now))
        .collect();
    Ok(Json(WebhookList { webhooks }))
}

#[utoipa::path(
    get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 200, description = "OK", body = WebhookView), (status = 404, description = "No such endpoint", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    caller: Need<WebhooksRead>,
    PathId(id): PathId,
) -> Result<Json<WebhookView>, ApiError> {
    let endpoint = visible_endpoint(&state, caller.principal(), id).await?;
    Ok(Json(view(&state, &endpoint, now_ms())))
}

#[utoipa::path(
    patch, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    request_body = UpdateWebhookRequest,
    responses((status = 200, description = "The changed endpoint", body = WebhookView), (status = 400, description = "Bad request", body = ErrorBody), (status = 404, description = "No such endpoint", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_webhook(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
    JsonBody(body): JsonBody<UpdateWebhookRequest>,
) -> Result<Json<WebhookView>, ApiError> {
    let mut endpoint = writable_endpoint(&state, caller.principal(), id).await?;
    let read_at = endpoint.updated_at;
    if let Some(url) = &body.url {
        endpoint.url = validate_url(&state, url)?;
    }
    if let Some(events) = &body.events {
        endpoint.events = validate_events(events)?;
    }
    if let Some(description) = body.description {
        endpoint.description = validate_description(Some(description))?;
    }
    if let Some(header) = body.signature_header {
        endpoint.signature_header = validate_header(header)?;
    }
    if let Some(enabled) = body.enabled {
        if enabled {
            endpoint.disabled_reason = None;
            // The store starts the count from zero when a disabled endpoint comes back
            // on (and otherwise keeps the worker's count); the answer says the same.
            if !endpoint.enabled {
                endpoint.consecutive_failures = 0;
            }
        }
        endpoint.enabled = enabled;
    }
    let now = now_ms();
    save(
        &state,
        caller.principal(),
        &addr,
        &mut endpoint,
        read_at,
        now,
        "webhook.update",
    )
    .await?;
    Ok(Json(view(&state, &endpoint, now)))
}

#[utoipa::path(
    delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 204, description = "Deleted with its deliveries"), (status = 404, description = "No such endpoint", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    writable_endpoint(&state, caller.principal(), id).await?;
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "webhook.delete",
        Some(format!("webhook:{id}")),
    );
    if !state.store.delete_webhook(id, &entry).await? {
        return Err(ApiError::not_found("webhook endpoint"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/api/v1/webhooks/{id}/secret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    request_body = RotateSecretRequest,
    responses((status = 200, description = "The new secret; the old one signs beside it until previous_secret_expires_at", body = WebhookSecret), (status = 404, description = "No such endpoint", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
    JsonBody(body): JsonBody<RotateSecretRequest>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let mut endpoint = writable_endpoint(&state, caller.principal(), id).await?;
    let read_at = endpoint.updated_at;
    let overlap = overlap_ms(&state, body.overlap_seconds)?;
    let now = now_ms();
    let secret = new_secret()?;
    endpoint.previous_secret = Some(std::mem::replace(&mut endpoint.secret, secret.clone()));
    endpoint.previous_secret_until = Some(now + overlap);
    save(
        &state,
        caller.principal(),
        &addr,
        &mut endpoint,
        read_at,
        now,
        "webhook.rotate_secret",
    )
    .await?;
    Ok(Json(WebhookSecret {
        secret,
        previous_secret_expires_at: (overlap > 0).then(|| time_of(now + overlap)),
    }))
}

#[utoipa::path(
    get, path = "/api/v1/webhooks/{id}/secret", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint's current signing secret (the reveal is audited)", body = WebhookSecret),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
/// Shows an endpoint's signing secret again (keygate keeps it to sign with). Needs
/// `webhooks:write`: whoever may rotate the secret may read it.
pub async fn reveal_secret(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
) -> Result<Json<WebhookSecret>, ApiError> {
    let endpoint = writable_endpoint(&state, caller.principal(), id).await?;
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "webhook.reveal_secret",
        Some(format!("webhook:{id}")),
    );
    state.store.append_audit(&entry).await?;
    let now = now_ms();
    Ok(Json(WebhookSecret {
        secret: endpoint.secret,
        previous_secret_expires_at: endpoint
            .previous_secret_until
            .filter(|until| *until > now)
            .map(time_of),
    }))
}

#[utoipa::path(
    post, path = "/api/v1/webhooks/secret", tag = "webhooks",
    request_body = RotateSecretRequest,
    responses(
        (status = 200, description = "A new account-level secret, now signing every endpoint the caller owns (old secrets overlap)", body = WebhookSecret),
        (status = 400, description = "The caller is not a user account", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
/// The caller's account-level secret (ChangeThisFile's `POST /v1/webhooks/secret`).
pub async fn account_secret(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<RotateSecretRequest>,
) -> Result<Json<WebhookSecret>, ApiError> {
    let Some(owner) = caller.principal().user_id() else {
        return Err(ApiError::invalid(
            "An account-level secret belongs to a user account; call this as a user or with a user's key.",
        ));
    };
    let overlap = overlap_ms(&state, body.overlap_seconds)?;
    let now = now_ms();
    let secret = new_secret()?;
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "webhook.account_secret",
        Some(format!("user:{owner}")),
    );
    state
        .store
        .set_account_webhook_secret(owner, &secret, now + overlap, &entry)
        .await?;
    Ok(Json(WebhookSecret {
        secret,
        previous_secret_expires_at: (overlap > 0).then(|| time_of(now + overlap)),
    }))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// At most this many, newest first (default 50, at most 500).
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), DeliveryParams),
    responses((status = 200, description = "Newest first", body = DeliveryList), (status = 404, description = "No such endpoint", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Need<WebhooksRead>,
    PathId(id): PathId,
    QueryParams(params): QueryParams<DeliveryParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    visible_endpoint(&state, caller.principal(), id).await?;
    let limit = params.limit.unwrap_or(50).clamp(1, 500);
    let deliveries = state.store.list_deliveries(id, limit).await?;
    Ok(Json(DeliveryList {
        deliveries: deliveries.iter().map(delivery_view).collect(),
    }))
}

#[utoipa::path(
    post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), ("delivery_id" = Uuid, Path, description = "Delivery id")),
    responses((status = 202, description = "Due again now"), (status = 404, description = "No such endpoint or delivery", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn retry_delivery(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let parse = |text: &str| {
        Uuid::parse_str(text).map_err(|_| ApiError::invalid("The ids in the path must be UUIDs."))
    };
    let (id, delivery) = (parse(&id)?, parse(&delivery)?);
    let endpoint = writable_endpoint(&state, caller.principal(), id).await?;
    if !endpoint.enabled {
        return Err(ApiError::new(ErrorCode::Conflict)
            .message("The endpoint is disabled; enable it first."));
    }
    if !state.store.retry_delivery(id, delivery, now_ms()).await? {
        return Err(ApiError::not_found("delivery"));
    }
    state.webhook_wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(
    post, path = "/api/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 202, description = "A webhook.test event is on its way", body = TestEventSent), (status = 404, description = "No such endpoint", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn send_test(
    State(state): State<AppState>,
    caller: Need<WebhooksWrite>,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<TestEventSent>), ApiError> {
    let endpoint = writable_endpoint(&state, caller.principal(), id).await?;
    if !endpoint.enabled {
        return Err(ApiError::new(ErrorCode::Conflict)
            .message("The endpoint is disabled; enable it first."));
    }
    let mut event = OutboxEvent::new(
        "webhook.test",
        serde_json::json!({"endpoint": id, "message": "A test event from keygate."}),
        now_ms(),
    );
    event.endpoint = Some(id);
    // A test goes to the endpoint whatever it subscribed to.
    let event_id = event.id.clone();
    state
        .store
        .enqueue_events(std::slice::from_ref(&event))
        .await?;
    state.webhook_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(TestEventSent { event_id })))
}
