//! Plans (administrators): the table, a new-plan form and an edit page per plan.
//!
//! Rate limits are typed as `LIMIT/SECONDS` with an optional `:BURST`, comma-separated
//! (`100/60, 5000/3600:200`): one field that reads like the limit it sets.

use super::{Me, Posted, Session, admin_only, error_page, filled, render, with_status};
use crate::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, PathId};
use crate::http::plans as api;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keygate_api::keys::{Overage, PlanPatch, PlanRequest, PlanView, RateLimit};
use uuid::Uuid;

/// `100/60, 5000/3600:200` → rate limits; the message names the part that is wrong.
fn parse_rate_limits(text: &str) -> Result<Vec<RateLimit>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let wrong = || format!("`{part}` is not LIMIT/SECONDS or LIMIT/SECONDS:BURST.");
            let (rate, burst) = match part.split_once(':') {
                Some((rate, burst)) => (rate, Some(burst.trim().parse().map_err(|_| wrong())?)),
                None => (part, None),
            };
            let (limit, period) = rate.split_once('/').ok_or_else(wrong)?;
            let limit = RateLimit {
                limit: limit.trim().parse().map_err(|_| wrong())?,
                period_seconds: period
                    .trim()
                    .trim_end_matches('s')
                    .parse()
                    .map_err(|_| wrong())?,
                burst,
            };
            limit.validate().map_err(|m| format!("`{part}`: {m}"))?;
            Ok(limit)
        })
        .collect()
}

fn format_rate_limits(limits: &[RateLimit]) -> String {
    limits
        .iter()
        .map(|l| match l.burst {
            Some(burst) => format!("{}/{}:{burst}", l.limit, l.period_seconds),
            None => format!("{}/{}", l.limit, l.period_seconds),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plan form's fields, as typed.
#[derive(Default, serde::Deserialize)]
pub struct PlanForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    rate_limits: String,
    #[serde(default)]
    monthly_quota: String,
    #[serde(default)]
    overage: String,
}

#[derive(Default)]
struct PlanErrors {
    name: Option<String>,
    rate_limits: Option<String>,
    monthly_quota: Option<String>,
    other: Option<String>,
}

/// The typed form, checked: (rate limits, quota, overage).
fn parse_form(
    form: &PlanForm,
    errors: &mut PlanErrors,
) -> Option<(Vec<RateLimit>, Option<u64>, Overage)> {
    let limits = parse_rate_limits(&form.rate_limits)
        .map_err(|m| errors.rate_limits = Some(m))
        .ok();
    let quota = match filled(&form.monthly_quota) {
        None => Some(None),
        Some(text) => match text.replace(['_', ' '], "").parse::<u64>() {
            Ok(n) if n > 0 => Some(Some(n)),
            _ => {
                errors.monthly_quota =
                    Some("Enter a whole number of requests, or leave it empty.".into());
                None
            }
        },
    };
    let overage = match form.overage.as_str() {
        "allow" => Overage::Allow,
        _ => Overage::Block,
    };
    if form.name.trim().is_empty() {
        errors.name = Some("Give the plan a name.".into());
    }
    Some((limits?, quota?, overage)).filter(|_| errors.name.is_none())
}

fn sort_error(errors: &mut PlanErrors, err: ApiError) {
    let message = err.message.to_string();
    if message.contains("name") {
        errors.name = Some(message);
    } else if message.contains("rate") || message.contains("limit") {
        errors.rate_limits = Some(message);
    } else if message.contains("quota") {
        errors.monthly_quota = Some(message);
    } else {
        errors.other = Some(message);
    }
}

struct PlanRow {
    id: Uuid,
    name: String,
    rate_limits: String,
    monthly_quota: String,
    overage: &'static str,
}

#[derive(Template)]
#[template(path = "ui/plans.html")]
struct PlansPage {
    me: Option<Me>,
    me_csrf: String,
    plans: Vec<PlanRow>,
    form: PlanForm,
    errors: PlanErrors,
}

fn overage_text(overage: Overage) -> &'static str {
    match overage {
        Overage::Block => "block",
        Overage::Allow => "allow",
    }
}

async fn plans_page(
    state: &AppState,
    session: Session,
    form: PlanForm,
    errors: PlanErrors,
) -> Response {
    if let Some(refused) = admin_only(&session) {
        return refused;
    }
    let need = need_or_return!(session);
    let plans = match api::list_plans(State(state.clone()), need).await {
        Ok(axum::Json(list)) => list.plans,
        Err(err) => return error_page(&session, err),
    };
    let rows = plans
        .into_iter()
        .map(|p| PlanRow {
            id: p.id,
            rate_limits: if p.rate_limits.is_empty() {
                "—".into()
            } else {
                format_rate_limits(&p.rate_limits)
            },
            monthly_quota: p
                .monthly_quota
                .map(|q| q.to_string())
                .unwrap_or_else(|| "—".into()),
            overage: overage_text(p.overage),
            name: p.name,
        })
        .collect();
    render(&PlansPage {
        me: session.me(),
        me_csrf: session.csrf(),
        plans: rows,
        form,
        errors,
    })
}

pub async fn list(State(state): State<AppState>, session: Session) -> Response {
    plans_page(&state, session, PlanForm::default(), PlanErrors::default()).await
}

pub async fn create(
    State(state): State<AppState>,
    addr: ClientAddr,
    Posted { session, form }: Posted<PlanForm>,
) -> Response {
    let mut errors = PlanErrors::default();
    let Some((rate_limits, monthly_quota, overage)) = parse_form(&form, &mut errors) else {
        return with_status(
            plans_page(&state, session, form, errors).await,
            StatusCode::BAD_REQUEST,
        );
    };
    let need = need_or_return!(session);
    let request = PlanRequest {
        name: form.name.trim().to_string(),
        rate_limits,
        monthly_quota,
        overage: Some(overage),
    };
    match api::create_plan(State(state.clone()), need, addr, JsonBody(request)).await {
        Ok(_) => Redirect::to("/ui/plans").into_response(),
        Err(err) => {
            sort_error(&mut errors, err);
            with_status(
                plans_page(&state, session, form, errors).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

#[derive(Template)]
#[template(path = "ui/plan.html")]
struct PlanPage {
    me: Option<Me>,
    me_csrf: String,
    id: Uuid,
    form: PlanForm,
    errors: PlanErrors,
    message: Option<String>,
}

fn form_of(plan: &PlanView) -> PlanForm {
    PlanForm {
        name: plan.name.clone(),
        rate_limits: format_rate_limits(&plan.rate_limits),
        monthly_quota: plan
            .monthly_quota
            .map(|q| q.to_string())
            .unwrap_or_default(),
        overage: overage_text(plan.overage).into(),
    }
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    PathId(id): PathId,
) -> Response {
    if let Some(refused) = admin_only(&session) {
        return refused;
    }
    let need = need_or_return!(session);
    match api::get_plan(State(state.clone()), need, PathId(id)).await {
        Ok(axum::Json(plan)) => render(&PlanPage {
            me: session.me(),
            me_csrf: session.csrf(),
            id,
            form: form_of(&plan),
            errors: PlanErrors::default(),
            message: None,
        }),
        Err(err) => error_page(&session, err),
    }
}

pub async fn update(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, form }: Posted<PlanForm>,
) -> Response {
    let mut errors = PlanErrors::default();
    let refused = |session: Session, form, errors| {
        let mut page = render(&PlanPage {
            me: session.me(),
            me_csrf: session.csrf(),
            id,
            form,
            errors,
            message: None,
        });
        *page.status_mut() = StatusCode::BAD_REQUEST;
        page
    };
    let Some((rate_limits, monthly_quota, overage)) = parse_form(&form, &mut errors) else {
        return refused(session, form, errors);
    };
    let need = need_or_return!(session);
    let patch = PlanPatch {
        name: Some(form.name.trim().to_string()),
        rate_limits: Some(rate_limits),
        monthly_quota: Some(monthly_quota),
        overage: Some(overage),
    };
    match api::update_plan(
        State(state.clone()),
        need,
        addr,
        PathId(id),
        JsonBody(patch),
    )
    .await
    {
        Ok(axum::Json(plan)) => render(&PlanPage {
            me: session.me(),
            me_csrf: session.csrf(),
            id,
            form: form_of(&plan),
            errors: PlanErrors::default(),
            message: Some("Saved: keys on this plan take the new limits now.".into()),
        }),
        Err(err) if err.code.status() == 400 => {
            sort_error(&mut errors, err);
            refused(session, form, errors)
        }
        Err(err) => error_page(&session, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_read_as_typed_and_print_back_the_same() {
        let limits = parse_rate_limits(" 100/60, 5000/3600s:200 ").expect("valid");
        assert_eq!(limits.len(), 2);
        assert_eq!(
            (limits[1].limit, limits[1].period_seconds, limits[1].burst),
            (5000, 3600, Some(200))
        );
        assert_eq!(format_rate_limits(&limits), "100/60, 5000/3600:200");
        assert_eq!(parse_rate_limits("").expect("none"), Vec::new());
    }

    #[test]
    fn a_wrong_rate_limit_names_the_part_that_is_wrong() {
        let err = parse_rate_limits("100/60, lots").expect_err("refused");
        assert!(err.contains("`lots`"), "{err}");
        let err = parse_rate_limits("0/60").expect_err("refused");
        assert!(err.contains("`0/60`"), "{err}");
    }
}
