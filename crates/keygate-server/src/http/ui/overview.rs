//! Overview: keys by state, the last 24 hours of requests, keys nearing their expiry or
//! quota, and (for administrators) the newest audit entries.

use super::audit::{AuditRow, audit_rows};
use super::chart;
use super::keys::window_params;
use super::{Me, Session, error_page, render, when_ms};
use crate::AppState;
use crate::clock::now_ms;
use crate::http::error::ApiError;
use crate::http::usage::rows_for;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use keygate_core::KeyState;
use keygate_core::limit::month_of;
use uuid::Uuid;

/// Keys expiring within this many days are listed.
const EXPIRY_LEAD_DAYS: i64 = 7;
/// Keys that used this share of their monthly quota are listed.
const QUOTA_WARN_PERCENT: u64 = 80;

struct Attention {
    id: Uuid,
    name: String,
    why: String,
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct OverviewPage {
    me: Option<Me>,
    counts: Vec<(&'static str, usize)>,
    requests: u64,
    refused: u64,
    chart: String,
    attention: Vec<Attention>,
    audit: Option<Vec<AuditRow>>,
}

pub async fn page(State(state): State<AppState>, session: Session) -> Response {
    let window = window_params("24h");
    let loaded = async {
        let keys = super::keys::visible(&state, &session).await?;
        let (rows, _) = rows_for(&state, &session.principal, &window.params).await?;
        let audit = if session.me.admin {
            Some(
                audit_rows(&state, &session, Default::default(), 10)
                    .await?
                    .0,
            )
        } else {
            None
        };
        Ok::<_, ApiError>((keys, rows, audit))
    };
    let (keys, rows, audit) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let now = now_ms();
    let counts = KeyState::ALL
        .iter()
        .map(|s| {
            (
                s.as_str(),
                keys.iter().filter(|k| k.record.state(now) == *s).count(),
            )
        })
        .collect();
    let lead = EXPIRY_LEAD_DAYS * 86_400_000;
    let mut attention = Vec::new();
    for key in keys
        .iter()
        .filter(|k| k.record.state(now) == KeyState::Active)
    {
        let record = &key.record;
        if let Some(at) = record.expires_at.filter(|at| *at - now < lead) {
            attention.push(Attention {
                id: record.id,
                name: record.name.clone(),
                why: format!("expires {} UTC", when_ms(Some(at))),
            });
        }
        let quota = key
            .limits
            .as_ref()
            .and_then(|l| l.monthly_quota)
            .map(|limit| {
                let limiter = key.usage.limiter();
                let used = if limiter.month == month_of(now).0 {
                    limiter.used
                } else {
                    0
                };
                (used, limit)
            });
        if let Some((used, limit)) = quota
            && limit > 0
            // In u128: a quota near u64::MAX must not overflow the comparison.
            && u128::from(used) * 100 >= u128::from(limit) * u128::from(QUOTA_WARN_PERCENT)
        {
            attention.push(Attention {
                id: record.id,
                name: record.name.clone(),
                why: format!("used {used} of its {limit} requests this month"),
            });
        }
    }
    let requests = rows.iter().map(|r| r.total).sum();
    let refused = rows.iter().map(|r| r.total.saturating_sub(r.valid)).sum();
    render(&OverviewPage {
        me: session.me(),
        counts,
        requests,
        refused,
        chart: chart::bars(&window.bars(&rows), "Requests over the last 24 hours"),
        attention,
        audit,
    })
}
