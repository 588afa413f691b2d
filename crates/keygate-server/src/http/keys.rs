//! `/api/v1/keys`: create, list, show, update, revoke, rotate and import keys.

use crate::AppState;
use crate::clock::{millis_of, now_ms, time_of};
use crate::engine::Principal;
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{
    Caller, ClientAddr, JsonBody, KeysRead, KeysWrite, Need, PathId, QueryParams,
};
use crate::mint::{self, KeySpec};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_api::ErrorBody;
use keygate_api::keys::{
    CreateKeyRequest, CreatedKey, ImportKeyRequest, KeyList, KeyView, RotateKeyRequest, RotatedKey,
    SelfRotateRequest, UpdateKeyRequest,
};
use keygate_core::{KeyOrigin, KeyRecord, KeyState, UnixMillis};
use keygate_store::OutboxEvent;
use keygate_store::{KeyPage, KeyUpdate};
use serde::Deserialize;
use utoipa::IntoParams;

/// Longest rotation grace period: one year.
const MAX_GRACE_SECONDS: u64 = 365 * 24 * 3600;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The management view of a record, with this node's unflushed usage added.
pub fn view(state: &AppState, record: &KeyRecord, now: UnixMillis) -> KeyView {
    let (pending, live_last_used, quota_used) = state
        .engine
        .index()
        .get_by_id(record.id)
        .map(|k| {
            let quota_used = k.limits.as_ref().and_then(|l| l.monthly_quota).map(|_| {
                let limiter = k.usage.limiter();
                if limiter.month == keygate_core::limit::month_of(now).0 {
                    limiter.used
                } else {
                    0
                }
            });
            (k.usage.pending(), k.usage.last_used_at(), quota_used)
        })
        .unwrap_or((0, None, None));
    KeyView {
        id: record.id,
        name: record.name.clone(),
        start: record.start.clone(),
        scopes: record.scopes.clone(),
        meta: record.meta.clone(),
        enabled: record.enabled,
        state: record.state(now).as_str().into(),
        origin: record.origin.as_str().into(),
        global: record.global,
        owner: record.owner,
        plan: record.plan,
        limits: record.limits.clone(),
        quota_used,
        allowed_cidrs: record.allowed_cidrs.clone(),
        level: if record.project.is_some() {
            "project"
        } else {
            "user"
        }
        .into(),
        project_id: record.project,
        created_at: time_of(record.created_at),
        updated_at: time_of(record.updated_at),
        expires_at: record.expires_at.map(time_of),
        revoked_at: record.revoked_at.map(time_of),
        rotated_to: record.rotated_to,
        last_used_at: record.last_used_at.max(live_last_used).map(time_of),
        usage_count: record.usage_count + pending,
    }
}

/// A key switched off by someone else — an administrator or the instance — stays off
/// until an administrator switches it on: its owner may neither enable it nor rotate it
/// into an enabled replacement. Who switched it off comes from the audit log: the newest
/// entry about the key that changed `enabled`, or else the one that created it (a key
/// created disabled by an administrator).
async fn refuse_if_switched_off_by_someone_else(
    state: &AppState,
    principal: &Principal,
    id: uuid::Uuid,
) -> Result<(), ApiError> {
    const PAGE: u32 = 500;
    let mut filter = keygate_store::AuditFilter {
        target: Some(format!("key:{id}")),
        limit: PAGE,
        ..Default::default()
    };
    let decider = loop {
        let page = state.store.list_audit(&filter).await?;
        let found = page.iter().find(|r| {
            let entry = &r.entry;
            (entry.action == "key.update" && entry.detail.contains_key("enabled"))
                || entry.action == "key.create"
                || entry.action == "key.import"
        });
        if let Some(record) = found {
            break Some(record.entry.actor.clone());
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => filter.before_seq = Some(last.seq),
            _ => break None,
        }
    };
    match decider {
        Some(actor) if actor != principal.actor() => Err(ApiError::new(
            keygate_api::ErrorCode::InsufficientPermissions,
        )
        .message("An administrator disabled this key; only an administrator can enable it again.")),
        _ => Ok(()),
    }
}

/// Loads a key the caller may see: everyone's for admins and instance keys, their own for
/// users. Someone else's key answers 404, as if it did not exist.
pub async fn visible_key(
    state: &AppState,
    principal: &Principal,
    id: uuid::Uuid,
) -> Result<KeyRecord, ApiError> {
    let record = state
        .store
        .get_key(id)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    if principal.acts_for_everyone()
        || (record.owner.is_some() && record.owner == principal.user_id())
    {
        Ok(record)
    } else {
        Err(ApiError::not_found("key"))
    }
}

/// The owner of a new key: the named user (admins only), else the acting user.
async fn owner_for(
    state: &AppState,
    principal: &Principal,
    requested: Option<uuid::Uuid>,
) -> Result<Option<uuid::Uuid>, ApiError> {
    match requested {
        None => Ok(principal.user_id()),
        Some(id) if Some(id) == principal.user_id() => Ok(Some(id)),
        Some(id) if principal.acts_for_everyone() => {
            state
                .store
                .get_user(id)
                .await?
                .ok_or_else(|| ApiError::invalid("`user_id` names no user."))?;
            Ok(Some(id))
        }
        Some(_) => Err(
            ApiError::new(keygate_api::ErrorCode::InsufficientPermissions)
                .message("Only administrators may create keys for other users."),
        ),
    }
}

/// Refuses scopes the caller could not use itself: a key can only hand out what it holds
/// (a wildcard only from an equal or wider one), a user only what their role allows.
fn check_grantable(principal: &Principal, scopes: &[String]) -> Result<(), ApiError> {
    use keygate_core::decision::{key_grants, owner_grants};
    let refuse = |scope: &str| {
        Err(
            ApiError::new(keygate_api::ErrorCode::InsufficientPermissions).message(format!(
                "The caller cannot grant the `{scope}` scope: it does not hold it."
            )),
        )
    };
    for scope in scopes {
        let allowed = match principal {
            Principal::ApiKey { key, owner, .. } => {
                key_grants(&key.record.scopes, scope)
                    && owner.is_none_or(|(_, role)| owner_grants(role, scope))
            }
            Principal::User { role, .. } => owner_grants(*role, scope),
            Principal::Open => true,
        };
        if !allowed {
            return refuse(scope);
        }
    }
    Ok(())
}

/// Checks a key's plan and own limits.
async fn check_limits(
    state: &AppState,
    plan: Option<uuid::Uuid>,
    limits: Option<&keygate_core::limit::LimitsOverride>,
) -> Result<(), ApiError> {
    if let Some(plan) = plan {
        state
            .store
            .get_plan(plan)
            .await?
            .ok_or_else(|| ApiError::invalid("`plan` names no plan."))?;
    }
    if let Some(rate_limits) = limits.and_then(|l| l.rate_limits.as_ref()) {
        super::plans::validate_rate_limits(rate_limits)?;
    }
    Ok(())
}

/// Applies this write to the index now, so the writer's next request sees it. If the
/// store cannot be read right now, the poller applies it shortly.
pub async fn sync_after_write(state: &AppState) {
    // Any write may have queued webhook events.
    state.webhook_wake.notify_one();
    if let Err(err) = state.feed.sync().await {
        tracing::warn!(error = %err, "change feed sync after a write failed; the poller will retry");
    }
}

#[utoipa::path(
    post, path = "/api/v1/keys", tag = "keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, shown this once", body = CreatedKey),
        (status = 400, description = "Bad request: the body, path or query is not valid", body = ErrorBody), (status = 401, description = "No valid credential", body = ErrorBody), (status = 403, description = "The credential may not do this", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Need<KeysWrite>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let now = now_ms();
    let principal = caller.principal();
    let owner = owner_for(&state, principal, body.user_id).await?;
    // A user's key named without scopes takes the instance's default for user keys
    // (`*` makes it act as the user: the decision cuts it to the owner's role).
    let scopes = match (body.scopes, owner) {
        (Some(scopes), _) => scopes,
        (None, Some(_)) => state.config.user_key_scopes.clone(),
        (None, None) => Vec::new(),
    };
    check_grantable(principal, &scopes)?;
    if (body.plan.is_some() || body.limits.is_some()) && !principal.acts_for_everyone() {
        return Err(
            ApiError::new(keygate_api::ErrorCode::InsufficientPermissions)
                .message("Only administrators may choose a key's plan or limits."),
        );
    }
    check_limits(&state, body.plan, body.limits.as_ref()).await?;
    let project = match (body.level.as_deref().unwrap_or("user"), body.project_id) {
        ("user", None) => None,
        ("user", Some(_)) => {
            return Err(ApiError::invalid(
                "A user-level key takes no `project_id`; use \"level\": \"project\".",
            ));
        }
        ("project", Some(project)) => {
            super::projects::check_pin(&state, owner, project).await?;
            Some(project)
        }
        ("project", None) => {
            return Err(ApiError::invalid(
                "A project-level key needs a `project_id`.",
            ));
        }
        _ => return Err(ApiError::invalid("`level` must be user or project.")),
    };
    let spec = KeySpec {
        name: body.name,
        scopes,
        prefix: body
            .prefix
            .or_else(|| Some(state.config.key_prefix.clone())),
        expires_at: body.expires_at.map(millis_of),
        meta: body.meta.unwrap_or_default(),
        enabled: body.enabled.unwrap_or(true),
        global: false,
    };
    let (key, mut record) = mint::mint(&spec, now)?;
    record.owner = owner;
    record.plan = body.plan;
    record.limits = body.limits.unwrap_or_default();
    record.allowed_cidrs = body.allowed_cidrs.unwrap_or_default();
    record.project = project;
    // A key made by a limited key (a free key's account, say) is limited the same way:
    // otherwise minting a new key would shed the plan.
    if !principal.acts_for_everyone()
        && let Principal::ApiKey { key, .. } = principal
    {
        record.plan = key.record.plan;
        record.limits = key.record.limits.clone();
    }
    let keep = state.engine.settings().keys_per_user;
    let mut entry = audit::entry(
        principal,
        &addr,
        "key.create",
        Some(format!("key:{}", record.id)),
    );
    entry
        .events
        .push(OutboxEvent::for_key("key.created", &record, now));
    let revoked = state.store.insert_key(&record, keep, &entry).await?;
    sync_after_write(&state).await;
    tracing::info!(key_id = %record.id, start = %record.start, revoked_older = revoked.len(), "key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            record: view(&state, &record, now),
            key,
        }),
    ))
}

#[utoipa::path(
    post, path = "/api/v1/keys/import", tag = "keys",
    request_body = ImportKeyRequest,
    responses(
        (status = 201, description = "The adopted key's record", body = KeyView),
        (status = 400, description = "Bad request: the body, path or query is not valid", body = ErrorBody), (status = 409, description = "Already stored", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn import_key(
    State(state): State<AppState>,
    caller: Need<KeysWrite>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<ImportKeyRequest>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let principal = caller.principal();
    let now = now_ms();
    let spec = KeySpec {
        name: body.name,
        scopes: body.scopes,
        prefix: None,
        expires_at: body.expires_at.map(millis_of),
        meta: body.meta.unwrap_or_default(),
        enabled: body.enabled.unwrap_or(true),
        global: false,
    };
    check_grantable(principal, &spec.scopes)?;
    let mut record = mint::adopt(&body.key, &spec, now)?;
    record.owner = principal.user_id();
    let mut entry = audit::entry(
        principal,
        &addr,
        "key.import",
        Some(format!("key:{}", record.id)),
    );
    entry
        .events
        .push(OutboxEvent::for_key("key.created", &record, now));
    let keep = state.engine.settings().keys_per_user;
    state.store.insert_key(&record, keep, &entry).await?;
    sync_after_write(&state).await;
    tracing::info!(key_id = %record.id, "key imported");
    Ok((StatusCode::CREATED, Json(view(&state, &record, now))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1–1000 (default 100).
    limit: Option<u32>,
    /// Keys to skip (from `next_offset`).
    offset: Option<u64>,
    /// Only keys in this state: `active`, `disabled`, `expired`, `revoked`.
    state: Option<String>,
    /// Only keys owned by this user (admins; users always see only their own).
    user_id: Option<uuid::Uuid>,
}

#[utoipa::path(
    get, path = "/api/v1/keys", tag = "keys", params(ListParams),
    responses((status = 200, description = "OK", body = KeyList), (status = 400, description = "Bad request: the body, path or query is not valid", body = ErrorBody), (status = 401, description = "No valid credential", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Need<KeysRead>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<KeyList>, ApiError> {
    let principal = caller.principal();
    let owner = if principal.acts_for_everyone() {
        params.user_id
    } else {
        match (params.user_id, principal.user_id()) {
            (Some(asked), Some(me)) if asked != me => {
                return Err(
                    ApiError::new(keygate_api::ErrorCode::InsufficientPermissions)
                        .message("Only administrators may list other users' keys."),
                );
            }
            (_, me) => me,
        }
    };
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be between 1 and {MAX_PAGE}."
        )));
    }
    let wanted = match params.state.as_deref() {
        None => None,
        Some(text) => Some(KeyState::parse(text).ok_or_else(|| {
            ApiError::invalid("`state` must be one of active, disabled, expired, revoked.")
        })?),
    };
    let offset = params.offset.unwrap_or(0);
    let now = now_ms();
    let records = state
        .store
        .list_keys(KeyPage {
            limit,
            offset,
            owner,
        })
        .await?;
    let next_offset = (records.len() == limit as usize).then(|| offset + u64::from(limit));
    let keys = records
        .iter()
        .filter(|r| wanted.is_none_or(|s| r.state(now) == s))
        .map(|r| view(&state, r, now))
        .collect();
    Ok(Json(KeyList { keys, next_offset }))
}

#[utoipa::path(
    get, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses((status = 200, description = "OK", body = KeyView), (status = 404, description = "No such key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_key(
    State(state): State<AppState>,
    caller: Need<KeysRead>,
    PathId(id): PathId,
) -> Result<Json<KeyView>, ApiError> {
    let record = visible_key(&state, caller.principal(), id).await?;
    Ok(Json(view(&state, &record, now_ms())))
}

#[utoipa::path(
    patch, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    request_body = UpdateKeyRequest,
    responses((status = 200, description = "OK", body = KeyView), (status = 400, description = "Bad request: the body, path or query is not valid", body = ErrorBody), (status = 404, description = "No such key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_key(
    State(state): State<AppState>,
    caller: Need<KeysWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
    JsonBody(body): JsonBody<UpdateKeyRequest>,
) -> Result<Json<KeyView>, ApiError> {
    let principal = caller.principal();
    let current = visible_key(&state, principal, id).await?;
    let now = now_ms();
    if let Some(name) = &body.name {
        mint::validate_name(name)?;
    }
    if let Some(scopes) = &body.scopes {
        mint::validate_scopes(scopes)?;
        check_grantable(principal, scopes)?;
    }
    if let Some(expires_at) = body.expires_at {
        if current.rotated_to.is_some() {
            return Err(ApiError::new(keygate_api::ErrorCode::Conflict)
                .message("A rotated key's expiry is fixed by its rotation.")
                .hint("use the replacement key"));
        }
        // Administrators may expire a key at once; everyone else sets a future time.
        if !principal.acts_for_everyone() {
            mint::validate_expiry(expires_at.map(millis_of), now)?;
        }
    }
    if body.plan.is_some() || body.limits.is_some() {
        // Limits are the operator's business, not the key holder's.
        if !principal.acts_for_everyone() {
            return Err(
                ApiError::new(keygate_api::ErrorCode::InsufficientPermissions)
                    .message("Only administrators may change a key's plan or limits."),
            );
        }
        check_limits(&state, body.plan.flatten(), body.limits.as_ref()).await?;
    }
    if body.enabled == Some(true) && !current.enabled && !principal.acts_for_everyone() {
        refuse_if_switched_off_by_someone_else(&state, principal, id).await?;
    }
    let enabled_change = body.enabled.filter(|e| *e != current.enabled);
    let update = KeyUpdate {
        name: body.name.map(|n| n.trim().to_string()),
        scopes: body.scopes,
        meta: body.meta,
        // Only a change is written: an unchanged `enabled` must not undo a concurrent
        // switch by an administrator.
        enabled: enabled_change,
        expires_at: body.expires_at.map(|at| at.map(millis_of)),
        plan: body.plan,
        limits: body.limits,
        allowed_cidrs: body.allowed_cidrs,
    };
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "key.update",
        Some(format!("key:{id}")),
    );
    if let Some(enabled) = enabled_change {
        // Recorded so that who switched a key off is known when someone switches it on.
        entry.detail.insert("enabled".into(), enabled.into());
    }
    let record = state
        .store
        .update_key(id, &update, &entry)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    sync_after_write(&state).await;
    tracing::info!(key_id = %id, "key updated");
    Ok(Json(view(&state, &record, now)))
}

#[utoipa::path(
    delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    responses((status = 200, description = "The revoked key", body = KeyView), (status = 404, description = "No such key", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Need<KeysWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
) -> Result<Json<KeyView>, ApiError> {
    let existing = visible_key(&state, caller.principal(), id).await?;
    let now = now_ms();
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "key.revoke",
        Some(format!("key:{id}")),
    );
    if existing.revoked_at.is_none() {
        entry
            .events
            .push(OutboxEvent::for_key("key.revoked", &existing, now));
    }
    let record = state
        .store
        .revoke_key(id, &entry)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    sync_after_write(&state).await;
    tracing::info!(key_id = %id, "key revoked");
    Ok(Json(view(&state, &record, now)))
}

/// The prefix a generated key was made with: its start minus `_` and 4 secret characters.
fn prefix_of(record: &KeyRecord) -> Option<String> {
    match record.origin {
        KeyOrigin::Generated => record
            .start
            .len()
            .checked_sub(1 + keygate_core::key_format::START_SECRET_CHARS)
            .map(|end| record.start[..end].to_string()),
        KeyOrigin::Imported => None,
    }
}

#[utoipa::path(
    post, path = "/api/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "Key id")),
    request_body = RotateKeyRequest,
    responses(
        (status = 200, description = "The replacement, shown this once, and the old key", body = RotatedKey),
        (status = 404, description = "No such key", body = ErrorBody), (status = 409, description = "Revoked, expired or already rotated", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    caller: Need<KeysWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
    JsonBody(body): JsonBody<RotateKeyRequest>,
) -> Result<Json<RotatedKey>, ApiError> {
    if body.grace_seconds > MAX_GRACE_SECONDS {
        return Err(ApiError::invalid(format!(
            "`grace_seconds` must be at most {MAX_GRACE_SECONDS} (one year)."
        )));
    }
    let old = visible_key(&state, caller.principal(), id).await?;
    rotate(&state, caller.principal(), &addr, old, body.grace_seconds)
        .await
        .map(Json)
}

#[utoipa::path(
    post, path = "/api/v1/keys/rotate", tag = "keys",
    request_body = RotateKeyRequest,
    responses(
        (status = 200, description = "The calling key's replacement, shown this once; the calling key keeps working for the grace period", body = RotatedKey),
        (status = 400, description = "Not an API key, or grace over the configured maximum", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
/// Rotates the key that makes the request: a client replaces its own key with no downtime.
pub async fn rotate_self(
    State(state): State<AppState>,
    Caller(principal): Caller,
    addr: ClientAddr,
    JsonBody(body): JsonBody<SelfRotateRequest>,
) -> Result<Json<RotatedKey>, ApiError> {
    let Principal::ApiKey { key, .. } = &principal else {
        return Err(ApiError::invalid(
            "Only an API key can rotate itself; send the key to rotate as the credential.",
        ));
    };
    let max = state.config.self_rotation_grace.as_secs();
    let grace = body.grace_seconds.unwrap_or(max);
    if grace > max {
        return Err(ApiError::invalid(format!(
            "`grace_seconds` must be at most {max} on this instance."
        )));
    }
    let old = state
        .store
        .get_key(key.record.id)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    rotate(&state, &principal, &addr, old, grace)
        .await
        .map(Json)
}

async fn rotate(
    state: &AppState,
    principal: &Principal,
    addr: &ClientAddr,
    old: KeyRecord,
    grace_seconds: u64,
) -> Result<RotatedKey, ApiError> {
    let now = now_ms();
    let id = old.id;
    if old.global {
        return Err(ApiError::new(keygate_api::ErrorCode::Conflict)
            .message("The global key is replaced with POST /api/v1/settings/api-key/regenerate.")
            .hint("regenerating needs the settings:write permission"));
    }
    if old.state(now) == KeyState::Expired {
        return Err(ApiError::new(keygate_api::ErrorCode::Conflict)
            .message("An expired key cannot be rotated.")
            .hint("extend it with PATCH first, or create a new key"));
    }
    // The replacement is a new key, which the record of who disabled the old one does
    // not name: an owner may not rotate their way out of an administrator's decision.
    if !old.enabled && !principal.acts_for_everyone() {
        refuse_if_switched_off_by_someone_else(state, principal, id).await?;
    }
    let spec = KeySpec {
        name: old.name.clone(),
        scopes: old.scopes.clone(),
        prefix: prefix_of(&old),
        expires_at: old.expires_at,
        meta: old.meta.clone(),
        enabled: old.enabled,
        // The instance's global key stays global through a rotation.
        global: old.global,
    };
    let (key, mut replacement) = mint::mint(&spec, now)?;
    replacement.owner = old.owner;
    replacement.plan = old.plan;
    replacement.limits = old.limits.clone();
    replacement.allowed_cidrs = old.allowed_cidrs.clone();
    replacement.project = old.project;
    let grace_ms = i64::try_from(grace_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut entry = audit::entry(principal, addr, "key.rotate", Some(format!("key:{id}")));
    entry
        .detail
        .insert("replacement".into(), replacement.id.to_string().into());
    entry
        .detail
        .insert("grace_seconds".into(), grace_seconds.into());
    let mut event = OutboxEvent::for_key("key.rotated", &old, now);
    event.payload["data"]["replacement"] = serde_json::json!({
        "id": replacement.id, "start": replacement.start,
    });
    event.payload["data"]["grace_seconds"] = grace_seconds.into();
    entry.events.push(event);
    let previous = state
        .store
        .rotate_key(id, &replacement, now.saturating_add(grace_ms), &entry)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    sync_after_write(state).await;
    // The replacement inherits the limiter: rotating must not reset rate limits or quota.
    state.engine.carry_limits(id, replacement.id);
    tracing::info!(key_id = %id, replacement = %replacement.id, grace_seconds, "key rotated");
    Ok(RotatedKey {
        key: CreatedKey {
            record: view(state, &replacement, now),
            key,
        },
        previous: view(state, &previous, now),
    })
}
