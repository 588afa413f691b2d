//! Usage metering: decisions per key by outcome, by minute, hour, day or month, as JSON
//! or CSV — including what this node has counted and not yet flushed.

use crate::AppState;
use crate::clock::{millis_of, now_ms, time_of};
use crate::http::error::ApiError;
use crate::http::extract::{KeysRead, Need, PathId, QueryParams};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keygate_api::ErrorBody;
use keygate_api::keys::{UsageReport, UsageRow};
use keygate_core::limit::month_of;
use keygate_core::usage::MinuteCounts;
use keygate_core::{KeyIndex, UnixMillis};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::IntoParams;
use uuid::Uuid;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// At most this many buckets in one answer (minute granularity: about a week).
const MAX_BUCKETS: i64 = 10_080;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Granularity {
    Minute,
    Hour,
    Day,
    Month,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Start (RFC 3339, inclusive); default: 24 hours before `to`.
    pub from: Option<String>,
    /// End (RFC 3339, exclusive); default: now.
    pub to: Option<String>,
    /// `minute`, `hour` (default), `day` or `month` (calendar months, UTC).
    pub granularity: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
    /// Only keys of this user (admins; users always see their own).
    pub user_id: Option<Uuid>,
    /// Only keys on this plan.
    pub plan_id: Option<Uuid>,
    /// Only the project-level keys of this project.
    pub project_id: Option<Uuid>,
    /// Only this key.
    pub key_id: Option<Uuid>,
}

fn parse_time(text: &str, name: &str) -> Result<UnixMillis, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(millis_of)
        .map_err(|_| {
            ApiError::invalid(format!(
                "`{name}` must be an RFC 3339 time like 2030-01-31T12:00:00Z."
            ))
        })
}

struct Window {
    from: UnixMillis,
    to: UnixMillis,
    granularity: Granularity,
    csv: bool,
}

fn window(params: &UsageParams) -> Result<Window, ApiError> {
    let to = params
        .to
        .as_deref()
        .map(|t| parse_time(t, "to"))
        .transpose()?
        .unwrap_or_else(now_ms);
    let from = params
        .from
        .as_deref()
        .map(|t| parse_time(t, "from"))
        .transpose()?
        .unwrap_or(to - DAY);
    if from >= to {
        return Err(ApiError::invalid("`from` must be before `to`."));
    }
    let granularity = match params.granularity.as_deref().unwrap_or("hour") {
        "minute" => Granularity::Minute,
        "hour" => Granularity::Hour,
        "day" => Granularity::Day,
        "month" => Granularity::Month,
        _ => {
            return Err(ApiError::invalid(
                "`granularity` must be minute, hour, day or month.",
            ));
        }
    };
    let step = match granularity {
        Granularity::Minute => MINUTE,
        Granularity::Hour => HOUR,
        Granularity::Day | Granularity::Month => DAY,
    };
    if (to - from) / step > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "The range is too long for this granularity; choose a coarser one.",
        ));
    }
    let csv = match params.format.as_deref().unwrap_or("json") {
        "json" => false,
        "csv" => true,
        _ => return Err(ApiError::invalid("`format` must be json or csv.")),
    };
    Ok(Window {
        from,
        to,
        granularity,
        csv,
    })
}

fn bucket_of(at: UnixMillis, granularity: Granularity) -> UnixMillis {
    match granularity {
        Granularity::Minute => at - at.rem_euclid(MINUTE),
        Granularity::Hour => at - at.rem_euclid(HOUR),
        Granularity::Day => at - at.rem_euclid(DAY),
        Granularity::Month => keygate_core::limit::month_start(month_of(at).0),
    }
}

/// Stored rows plus this node's unflushed counts, bucketed.
async fn report(
    state: &AppState,
    keys: Option<Vec<Uuid>>,
    window: &Window,
) -> Result<Vec<UsageRow>, ApiError> {
    let store_bucket = match window.granularity {
        Granularity::Minute => MINUTE,
        Granularity::Hour => HOUR,
        Granularity::Day | Granularity::Month => DAY,
    };
    let stored = state
        .store
        .usage(keys.as_deref(), window.from, window.to, store_bucket)
        .await?;
    let mut buckets: BTreeMap<UnixMillis, MinuteCounts> = BTreeMap::new();
    let mut add = |counts: &MinuteCounts| {
        let start = bucket_of(counts.minute, window.granularity);
        buckets
            .entry(start)
            .or_insert(MinuteCounts {
                minute: start,
                ..Default::default()
            })
            .add(counts);
    };
    // Stored rows come grouped by bucket and labelled with its start, which may lie
    // before `from` (the store counted only minutes from `from` on): a bucket is in the
    // window when any part of it is.
    stored
        .iter()
        .filter(|c| c.minute + store_bucket > window.from && c.minute < window.to)
        .for_each(&mut add);
    {
        let index = state.engine.index();
        for_each_key(&index, keys.as_deref(), |key| {
            key.usage
                .unflushed_minutes()
                .iter()
                .filter(|c| c.minute >= window.from && c.minute < window.to)
                .for_each(&mut add);
        });
    }
    Ok(buckets
        .into_values()
        .map(|c| UsageRow {
            start: time_of(c.minute),
            valid: c.valid,
            rate_limited: c.rate_limited,
            quota_exceeded: c.quota_exceeded,
            denied: c.denied,
            total: c.total(),
        })
        .collect())
}

fn for_each_key(
    index: &KeyIndex,
    keys: Option<&[Uuid]>,
    mut f: impl FnMut(&keygate_core::IndexedKey),
) {
    match keys {
        Some(ids) => ids
            .iter()
            .filter_map(|id| index.get_by_id(*id))
            .for_each(|k| f(k)),
        None => index.for_each(|k| f(k)),
    }
}

fn respond(rows: Vec<UsageRow>, csv: bool) -> Response {
    if !csv {
        return Json(UsageReport { rows }).into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        csv_text(&rows),
    )
        .into_response()
}

/// The CSV form of a report (one header line, one line per bucket).
pub fn csv_text(rows: &[UsageRow]) -> String {
    let mut text = String::from("start,valid,rate_limited,quota_exceeded,denied,total\n");
    for row in rows {
        let start = row
            .start
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        text.push_str(&format!(
            "{start},{},{},{},{},{}\n",
            row.valid, row.rate_limited, row.quota_exceeded, row.denied, row.total
        ));
    }
    text
}

#[utoipa::path(
    get, path = "/api/v1/keys/{id}/usage", tag = "usage",
    params(("id" = uuid::Uuid, Path, description = "Key id"), UsageParams),
    responses(
        (status = 200, description = "Rows of decisions by outcome (JSON, or CSV with format=csv)", body = UsageReport),
        (status = 400, description = "Bad range or granularity", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn key_usage(
    State(state): State<AppState>,
    caller: Need<KeysRead>,
    PathId(id): PathId,
    QueryParams(params): QueryParams<UsageParams>,
) -> Result<Response, ApiError> {
    if params.user_id.is_some()
        || params.plan_id.is_some()
        || params.key_id.is_some()
        || params.project_id.is_some()
    {
        return Err(ApiError::invalid(
            "Filters belong to /api/v1/usage; this endpoint is about one key.",
        ));
    }
    let window = window(&params)?;
    super::keys::visible_key(&state, caller.principal(), id).await?;
    Ok(respond(
        report(&state, Some(vec![id]), &window).await?,
        window.csv,
    ))
}

#[utoipa::path(
    get, path = "/api/v1/usage", tag = "usage", params(UsageParams),
    responses(
        (status = 200, description = "Rows of decisions by outcome (JSON, or CSV with format=csv)", body = UsageReport),
        (status = 400, description = "Bad range or filter", body = ErrorBody),
        (status = 403, description = "Another user's usage", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
/// Usage across keys: all of them, or by user, plan, project or key.
pub async fn usage(
    State(state): State<AppState>,
    caller: Need<KeysRead>,
    QueryParams(params): QueryParams<UsageParams>,
) -> Result<Response, ApiError> {
    let (rows, csv) = rows_for(&state, caller.principal(), &params).await?;
    Ok(respond(rows, csv))
}

/// The rows `GET /api/v1/usage` answers for `principal` (and whether CSV was asked for).
pub async fn rows_for(
    state: &AppState,
    principal: &crate::engine::Principal,
    params: &UsageParams,
) -> Result<(Vec<UsageRow>, bool), ApiError> {
    let window = window(params)?;
    let user = if principal.acts_for_everyone() {
        params.user_id
    } else {
        let me = principal.user_id();
        if params.user_id.is_some_and(|asked| Some(asked) != me) {
            return Err(
                ApiError::new(keygate_api::ErrorCode::InsufficientPermissions)
                    .message("Only administrators may read other users' usage."),
            );
        }
        me
    };
    let filtered = user.is_some()
        || params.plan_id.is_some()
        || params.key_id.is_some()
        || params.project_id.is_some();
    let keys = filtered.then(|| {
        let index = state.engine.index();
        let mut ids = Vec::new();
        index.for_each(|k| {
            let r = &k.record;
            if user.is_none_or(|u| r.owner == Some(u))
                && params.plan_id.is_none_or(|p| r.plan == Some(p))
                && params.key_id.is_none_or(|id| r.id == id)
                && params.project_id.is_none_or(|p| r.project == Some(p))
            {
                ids.push(r.id);
            }
        });
        ids
    });
    Ok((report(state, keys, &window).await?, window.csv))
}
