//! `POST /api/v1/keys/free`: a self-service key on the free plan, one per email address.

use crate::AppState;
use crate::clock::now_ms;
use crate::engine::Principal;
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody};
use crate::mint::{self, KeySpec};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_api::keys::{FreeKeyRequest, FreeKeyResponse};
use keygate_api::{ErrorBody, ErrorCode};
use std::time::Instant;

/// Lower-cases the address and drops a `+tag`, so one mailbox gets one key.
pub fn normalize_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let local = local.split('+').next().unwrap_or(local);
    let valid = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && email.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii())
        && !domain.contains('@');
    valid.then(|| format!("{local}@{domain}"))
}

#[utoipa::path(
    post, path = "/api/v1/keys/free", tag = "keys", request_body = FreeKeyRequest,
    responses(
        (status = 201, description = "The key, shown this once", body = FreeKeyResponse),
        (status = 400, description = "Not an email address", body = ErrorBody),
        (status = 404, description = "Free keys are off on this instance", body = ErrorBody),
        (status = 409, description = "This address already has a free key", body = ErrorBody),
        (status = 429, description = "Too many free keys from this address", body = ErrorBody),
    )
)]
pub async fn create_free_key(
    State(state): State<AppState>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<FreeKeyRequest>,
) -> Result<(StatusCode, Json<FreeKeyResponse>), ApiError> {
    let Some(plan_name) = state.config.free_key_plan.clone() else {
        return Err(ApiError::new(ErrorCode::NotFound)
            .message("Free keys are not offered on this instance."));
    };
    let email = normalize_email(&body.email)
        .ok_or_else(|| ApiError::invalid("`email` is not an email address."))?;
    let address = addr.text().unwrap_or_default();
    if let Err(wait) = state
        .free_key_throttle
        .attempt(&email, &address, Instant::now())
    {
        return Err(ApiError::new(ErrorCode::RateLimited)
            .message("Too many free keys were created from this address.")
            .retry_after(wait.as_secs() + 1));
    }
    let plans = state.store.load_plans().await?;
    let plan = plans.iter().find(|p| p.name == plan_name).ok_or_else(|| {
        tracing::error!(plan = %plan_name, "free_key_plan names no plan");
        ApiError::new(ErrorCode::ServiceUnavailable)
            .message("Free keys are misconfigured on this instance.")
    })?;
    let now = now_ms();
    let mut meta = serde_json::Map::new();
    meta.insert("email".into(), email.clone().into());
    let spec = KeySpec {
        name: format!("free key for {email}"),
        meta,
        enabled: true,
        prefix: Some(state.config.key_prefix.clone()),
        ..Default::default()
    };
    let (key, mut record) = mint::mint(&spec, now)?;
    record.plan = Some(plan.id);
    // With `free_key_accounts`, the key comes with an account of its own (named after the
    // email, no password anyone knows), so it can do what an account does — manage its
    // keys and webhooks — within the user role.
    let account = if state.config.free_key_accounts {
        let username = if keygate_core::user::validate_username(&email).is_ok() {
            email.clone()
        } else {
            // The key id's first digits are its creation time; its last are random.
            let id = record.id.simple().to_string();
            format!("free-{}", &id[id.len() - 12..])
        };
        let user = keygate_core::UserRecord {
            id: uuid::Uuid::now_v7(),
            username,
            email: Some(email.clone()),
            role: keygate_core::Role::User,
            disabled: false,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        };
        let unknown = crate::passwords::generate_password().map_err(|e| ApiError::internal(&e))?;
        let hash = super::users::hash_password(&state, unknown).await?;
        record.owner = Some(user.id);
        record.scopes = state.config.user_key_scopes.clone();
        Some((user, hash))
    } else {
        None
    };
    let mut entry = audit::entry(
        &Principal::Open,
        &addr,
        "key.create_free",
        Some(format!("key:{}", record.id)),
    );
    entry.detail.insert("plan".into(), plan.name.clone().into());
    entry.events.push(keygate_store::OutboxEvent::for_key(
        "key.created",
        &record,
        now,
    ));
    if let Some((user, _)) = &account {
        entry
            .events
            .push(crate::webhooks::Notifier::user_created_event(user, now));
    }
    state
        .store
        .insert_free_key(
            &email,
            &record,
            account.as_ref().map(|(user, hash)| (user, hash.as_str())),
            &entry,
        )
        .await?;
    super::keys::sync_after_write(&state).await;
    Ok((
        StatusCode::CREATED,
        Json(FreeKeyResponse {
            api_key: key,
            plan: plan.name.clone(),
            monthly_limit: plan.limits.monthly_quota,
            // ChangeThisFile's words (its preset answers as its documentation shows).
            message: "Save this key — it will not be shown again.".into(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_normalise() {
        assert_eq!(
            normalize_email(" Ana+news@Example.COM ").as_deref(),
            Some("ana@example.com")
        );
        for bad in [
            "",
            "ana",
            "@example.com",
            "ana@",
            "ana@example",
            "ana@.com",
            "a b@example.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }
}
