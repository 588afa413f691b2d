//! `/api/v1/plans`: named sets of rate limits and a monthly quota that keys take.

use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, Need, PathId, PlansRead, PlansWrite};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use keygate_api::ErrorBody;
use keygate_api::keys::{PlanList, PlanPatch, PlanRequest, PlanView};
use keygate_core::limit::{Limits, MAX_RATE_LIMITS, RateLimit};
use keygate_store::Plan;
use uuid::Uuid;

pub fn validate_rate_limits(limits: &[RateLimit]) -> Result<(), ApiError> {
    if limits.len() > MAX_RATE_LIMITS {
        return Err(ApiError::invalid(format!(
            "At most {MAX_RATE_LIMITS} rate limits."
        )));
    }
    for limit in limits {
        limit
            .validate()
            .map_err(|m| ApiError::invalid(format!("`rate_limits`: {m}.")))?;
    }
    Ok(())
}

/// A display name for a plan or a project: 1 to 100 characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 100
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "`name` must be 1 to 100 characters, no control characters.",
        ))
    }
}

fn view(plan: &Plan) -> PlanView {
    PlanView {
        id: plan.id,
        name: plan.name.clone(),
        rate_limits: plan.limits.rate_limits.clone(),
        monthly_quota: plan.limits.monthly_quota,
        overage: plan.limits.overage,
        created_at: time_of(plan.created_at),
        updated_at: time_of(plan.updated_at),
    }
}

#[utoipa::path(
    get, path = "/api/v1/plans", tag = "plans",
    responses((status = 200, description = "Every plan", body = PlanList), (status = 403, description = "Needs plans:read", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_plans(
    State(state): State<AppState>,
    _caller: Need<PlansRead>,
) -> Result<Json<PlanList>, ApiError> {
    let plans = state.store.load_plans().await?;
    Ok(Json(PlanList {
        plans: plans.iter().map(view).collect(),
    }))
}

#[utoipa::path(
    post, path = "/api/v1/plans", tag = "plans", request_body = PlanRequest,
    responses(
        (status = 201, description = "Created", body = PlanView),
        (status = 400, description = "Bad limits", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_plan(
    State(state): State<AppState>,
    caller: Need<PlansWrite>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<PlanRequest>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    validate_name(&body.name)?;
    validate_rate_limits(&body.rate_limits)?;
    let now = now_ms();
    let plan = Plan {
        id: Uuid::now_v7(),
        name: body.name.trim().to_string(),
        limits: Limits {
            rate_limits: body.rate_limits,
            monthly_quota: body.monthly_quota,
            overage: body.overage.unwrap_or_default(),
        },
        created_at: now,
        updated_at: now,
    };
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "plan.create",
        Some(format!("plan:{}", plan.id)),
    );
    state.store.create_plan(&plan, &entry).await?;
    super::keys::sync_after_write(&state).await;
    Ok((StatusCode::CREATED, Json(view(&plan))))
}

#[utoipa::path(
    get, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    responses((status = 200, description = "OK", body = PlanView), (status = 404, description = "No such plan", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_plan(
    State(state): State<AppState>,
    _caller: Need<PlansRead>,
    PathId(id): PathId,
) -> Result<Json<PlanView>, ApiError> {
    let plan = state
        .store
        .get_plan(id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan"))?;
    Ok(Json(view(&plan)))
}

#[utoipa::path(
    patch, path = "/api/v1/plans/{id}", tag = "plans",
    params(("id" = uuid::Uuid, Path, description = "Plan id")),
    request_body = PlanPatch,
    responses(
        (status = 200, description = "Changed; keys on the plan take the new limits at once", body = PlanView),
        (status = 400, description = "Bad limits", body = ErrorBody),
        (status = 404, description = "No such plan", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn update_plan(
    State(state): State<AppState>,
    caller: Need<PlansWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
    JsonBody(body): JsonBody<PlanPatch>,
) -> Result<Json<PlanView>, ApiError> {
    let mut plan = state
        .store
        .get_plan(id)
        .await?
        .ok_or_else(|| ApiError::not_found("plan"))?;
    if let Some(name) = body.name {
        validate_name(&name)?;
        plan.name = name.trim().to_string();
    }
    if let Some(rate_limits) = body.rate_limits {
        validate_rate_limits(&rate_limits)?;
        plan.limits.rate_limits = rate_limits;
    }
    if let Some(quota) = body.monthly_quota {
        plan.limits.monthly_quota = quota;
    }
    if let Some(overage) = body.overage {
        plan.limits.overage = overage;
    }
    plan.updated_at = now_ms();
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "plan.update",
        Some(format!("plan:{id}")),
    );
    if !state.store.update_plan(&plan, &entry).await? {
        return Err(ApiError::not_found("plan"));
    }
    super::keys::sync_after_write(&state).await;
    Ok(Json(view(&plan)))
}
