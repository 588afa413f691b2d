//! The audit log: building entries for handlers, and `GET /api/v1/audit`.

use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::engine::Principal;
use crate::http::error::ApiError;
use crate::http::extract::{AuditRead, ClientAddr, Need, QueryParams};
use axum::Json;
use axum::extract::State;
use keygate_api::ErrorBody;
use keygate_api::accounts::{AuditList, AuditView};
use keygate_store::{AuditEntry, AuditFilter};
use serde::Deserialize;
use utoipa::IntoParams;

/// An audit entry for `action` by `principal`, from `addr`, about `target`.
pub fn entry(
    principal: &Principal,
    addr: &ClientAddr,
    action: &str,
    target: Option<String>,
) -> AuditEntry {
    AuditEntry {
        at: now_ms(),
        actor: principal.actor(),
        action: action.into(),
        target,
        ip: addr.text(),
        credential: principal.credential(),
        detail: Default::default(),
        events: Vec::new(),
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// An action (`key.create`) or a family of them (`key`).
    pub action: Option<String>,
    /// `user:<id>`, `instance`, `anonymous`, ...
    pub actor: Option<String>,
    /// `key:<id>`, `user:<id>`, ...
    pub target: Option<String>,
    /// Entries at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Entries older than this sequence number (from `next_before`).
    pub before: Option<u64>,
    /// Entries newer than this sequence number, oldest first (for following the log).
    pub after: Option<u64>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses(
        (status = 200, description = "Newest first (oldest first with `after`)", body = AuditList),
        (status = 400, description = "Bad filter", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Needs audit:read", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_audit(
    State(state): State<AppState>,
    _caller: Need<AuditRead>,
    QueryParams(params): QueryParams<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("`limit` must be between 1 and 1000."));
    }
    let since = params
        .since
        .map(|text| {
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .map(crate::clock::millis_of)
                .map_err(|_| {
                    ApiError::invalid("`since` must be an RFC 3339 time like 2030-01-31T12:00:00Z.")
                })
        })
        .transpose()?;
    let filter = AuditFilter {
        action: params.action,
        actor: params.actor,
        target: params.target,
        since,
        before_seq: params.before,
        after_seq: params.after,
        limit,
    };
    let records = state.store.list_audit(&filter).await?;
    let next_before = (records.len() == limit as usize && filter.after_seq.is_none())
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    let entries = records
        .into_iter()
        .map(|r| AuditView {
            seq: r.seq,
            at: time_of(r.entry.at),
            actor: r.entry.actor,
            action: r.entry.action,
            target: r.entry.target,
            ip: r.entry.ip,
            credential: r.entry.credential,
            detail: r.entry.detail,
        })
        .collect();
    Ok(Json(AuditList {
        entries,
        next_before,
    }))
}
