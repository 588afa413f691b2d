//! Settings, system information, health, readiness and metrics.

use crate::AppState;
use crate::clock::now_ms;
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{
    Caller, ClientAddr, JsonBody, Need, QueryParams, SettingsRead, SettingsWrite,
};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use keygate_api::ErrorBody;
use keygate_api::accounts::GlobalKeyView;
use keygate_api::system::{ChangeFeedInfo, Health, KeyCounts, Settings, SettingsPatch, SystemInfo};
use keygate_core::settings::InstanceSettings;
use std::sync::atomic::Ordering;

fn settings_view(settings: &InstanceSettings) -> Settings {
    Settings {
        api_access_enabled: settings.api_access_enabled,
        query_param_enabled: settings.query_param_enabled,
        keys_per_user: settings.keys_per_user,
    }
}

pub fn warn_if_open(settings: &InstanceSettings) {
    if !settings.api_access_enabled {
        tracing::warn!(
            "API access is switched OFF (api_access_enabled = false): the app's API behind keygate answers without a credential (keygate's management API still needs one). Use this only on a trusted network."
        );
    }
}

#[utoipa::path(
    get, path = "/api/v1/settings", tag = "settings",
    responses((status = 200, description = "OK", body = Settings), (status = 401, description = "No valid credential", body = ErrorBody), (status = 403, description = "The credential may not do this", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_settings(
    State(state): State<AppState>,
    _caller: Need<SettingsRead>,
) -> Json<Settings> {
    Json(settings_view(&state.engine.settings()))
}

#[utoipa::path(
    patch, path = "/api/v1/settings", tag = "settings",
    request_body = SettingsPatch,
    responses((status = 200, description = "OK", body = Settings), (status = 400, description = "Bad request: the body, path or query is not valid", body = ErrorBody), (status = 403, description = "The credential may not do this", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn patch_settings(
    State(state): State<AppState>,
    caller: Need<SettingsWrite>,
    addr: ClientAddr,
    JsonBody(patch): JsonBody<SettingsPatch>,
) -> Result<Json<Settings>, ApiError> {
    let mut settings = (*state.engine.settings()).clone();
    if let Some(on) = patch.api_access_enabled {
        settings.api_access_enabled = on;
    }
    if let Some(on) = patch.query_param_enabled {
        settings.query_param_enabled = on;
    }
    if let Some(limit) = patch.keys_per_user {
        if limit == Some(0) {
            return Err(ApiError::invalid(
                "`keys_per_user` must be at least 1, or null for unlimited.",
            ));
        }
        settings.keys_per_user = limit;
    }
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "settings.update",
        Some("settings".into()),
    );
    if let Ok(serde_json::Value::Object(changed)) = serde_json::to_value(&patch) {
        entry.detail = changed;
    }
    state.store.put_settings(&settings, &entry).await?;
    if let Err(err) = state.feed.sync().await {
        tracing::warn!(error = %err, "change feed sync after a settings write failed");
    }
    tracing::info!(?patch, "settings changed");
    warn_if_open(&settings);
    Ok(Json(settings_view(&settings)))
}

#[utoipa::path(
    get, path = "/api/v1/systeminfo", tag = "system",
    responses((status = 200, description = "OK", body = SystemInfo), (status = 401, description = "No valid credential", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn system_info(State(state): State<AppState>, _caller: Caller) -> Json<SystemInfo> {
    let now = now_ms();
    let (counts, index_size) = {
        let index = state.engine.index();
        (index.counts_by_state(now), index.len())
    };
    let feed = &state.engine.feed;
    let applied = feed.applied_seq.load(Ordering::Acquire);
    Json(SystemInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: state.started.elapsed().as_secs(),
        keys: KeyCounts {
            active: counts.active,
            disabled: counts.disabled,
            expired: counts.expired,
            revoked: counts.revoked,
        },
        index_size,
        change_feed: ChangeFeedInfo {
            applied_seq: applied,
            lag: feed
                .store_seq
                .load(Ordering::Acquire)
                .saturating_sub(applied),
            last_poll_ms_ago: u64::try_from(now - feed.last_poll_at.load(Ordering::Acquire))
                .unwrap_or(0),
        },
        flush_queue: state.engine.ledger.queued(),
    })
}

/// Where the recoverable copy of the global key is kept (see ARCHITECTURE.md, "Secrets").
pub const GLOBAL_KEY_SECRET: &str = "global_key";

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RevealParams {
    /// `true` to get the whole key instead of its masked form.
    reveal: Option<bool>,
}

impl RevealParams {
    pub fn new(reveal: bool) -> Self {
        Self {
            reveal: Some(reveal),
        }
    }
}

fn global_key_view(
    record: &keygate_core::KeyRecord,
    key: Option<String>,
    reveal: bool,
) -> GlobalKeyView {
    let masked = !reveal || key.is_none();
    GlobalKeyView {
        id: record.id,
        start: record.start.clone(),
        key: match key {
            Some(key) if reveal => key,
            _ => format!("{}…", record.start),
        },
        masked,
    }
}

async fn current_global_key(state: &AppState) -> Result<keygate_core::KeyRecord, ApiError> {
    // The index knows which key is the global one; the store has its latest state.
    let id = state.engine.index().global_key().map(|k| k.record.id);
    let id = id.ok_or_else(|| ApiError::not_found("global key"))?;
    state
        .store
        .get_key(id)
        .await?
        .ok_or_else(|| ApiError::not_found("global key"))
}

#[utoipa::path(
    get, path = "/api/v1/settings/api-key", tag = "settings", params(RevealParams),
    responses(
        (status = 200, description = "The global key, masked unless `reveal=true`", body = GlobalKeyView),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Needs settings:read", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_global_key(
    State(state): State<AppState>,
    caller: Need<SettingsRead>,
    addr: ClientAddr,
    QueryParams(params): QueryParams<RevealParams>,
) -> Result<Json<GlobalKeyView>, ApiError> {
    let record = current_global_key(&state).await?;
    let reveal = params.reveal.unwrap_or(false);
    let key = state.store.secret(GLOBAL_KEY_SECRET).await?;
    // Keep the copy only if it still is the current global key.
    let key = key.filter(|k| keygate_core::key_format::hash_key(k) == record.hash);
    if reveal {
        if key.is_none() {
            return Err(ApiError::new(keygate_api::ErrorCode::Conflict)
                .message("The global key cannot be shown: keygate keeps no copy of it.")
                .hint("regenerate it with POST /api/v1/settings/api-key/regenerate"));
        }
        let entry = audit::entry(
            caller.principal(),
            &addr,
            "key.reveal",
            Some(format!("key:{}", record.id)),
        );
        state.store.append_audit(&entry).await?;
    }
    Ok(Json(global_key_view(&record, key, reveal)))
}

#[utoipa::path(
    post, path = "/api/v1/settings/api-key/regenerate", tag = "settings",
    responses(
        (status = 200, description = "The new global key, shown in full; the old one stops at once", body = GlobalKeyView),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Needs settings:write", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn regenerate_global_key(
    State(state): State<AppState>,
    caller: Need<SettingsWrite>,
    addr: ClientAddr,
) -> Result<Json<GlobalKeyView>, ApiError> {
    let old = current_global_key(&state).await?;
    let now = now_ms();
    let spec = crate::mint::KeySpec {
        name: old.name.clone(),
        scopes: old.scopes.clone(),
        meta: old.meta.clone(),
        enabled: true,
        global: true,
        prefix: Some(state.config.key_prefix.clone()),
        ..Default::default()
    };
    let (key, replacement) = crate::mint::mint(&spec, now)?;
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "key.regenerate",
        Some(format!("key:{}", old.id)),
    );
    let mut event = keygate_store::OutboxEvent::for_key("key.rotated", &old, now);
    event.payload["data"]["replacement"] =
        serde_json::json!({"id": replacement.id, "start": replacement.start});
    entry.events.push(event);
    state
        .store
        .rotate_key(old.id, &replacement, now, &entry)
        .await?;
    state.store.put_secret(GLOBAL_KEY_SECRET, &key).await?;
    if let Err(err) = state.feed.sync().await {
        tracing::warn!(error = %err, "change feed sync after regenerating the global key failed");
    }
    state.webhook_wake.notify_one();
    tracing::info!(key_id = %replacement.id, "global key regenerated");
    Ok(Json(global_key_view(&replacement, Some(key), true)))
}

#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "OK", body = Health)))]
/// Liveness: the process answers.
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(
    get, path = "/readyz", tag = "system",
    responses((status = 200, description = "OK", body = Health), (status = 503, description = "The change feed is stale", body = Health))
)]
/// Readiness: the index is loaded and the change feed was read recently.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let last = state.engine.feed.last_poll_at.load(Ordering::Acquire);
    let stale_after = i64::try_from(state.config.feed_poll_interval.as_millis() * 20)
        .unwrap_or(i64::MAX)
        .max(5000);
    if now_ms() - last > stale_after {
        let status = format!("change feed not read for {} ms", now_ms() - last);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status }));
    }
    (
        StatusCode::OK,
        Json(Health {
            status: "ok".into(),
        }),
    )
}

#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = now_ms();
    let (counts, size) = {
        let index = state.engine.index();
        (index.counts_by_state(now), index.len())
    };
    metrics::gauge!("keygate_index_keys").set(size as f64);
    for (name, count) in [
        ("active", counts.active),
        ("disabled", counts.disabled),
        ("expired", counts.expired),
        ("revoked", counts.revoked),
    ] {
        metrics::gauge!("keygate_keys", "state" => name).set(count as f64);
    }
    let feed = &state.engine.feed;
    let lag = feed
        .store_seq
        .load(Ordering::Acquire)
        .saturating_sub(feed.applied_seq.load(Ordering::Acquire));
    metrics::gauge!("keygate_change_feed_lag").set(lag as f64);
    metrics::gauge!("keygate_usage_flush_queue").set(state.engine.ledger.queued() as f64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics_handle().render(),
    )
}
