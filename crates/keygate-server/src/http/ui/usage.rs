//! Usage: requests by outcome over a range, for all visible keys or by key, project, plan
//! or user; as a chart and a table, and as CSV.

use super::chart;
use super::keys::window_params;
use super::{Me, Session, error_page, optional_id, render, usernames, when};
use crate::AppState;
use crate::http::error::ApiError;
use crate::http::extract::QueryParams;
use crate::http::usage::{csv_text, rows_for};
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use keygate_api::keys::UsageRow;

/// How many keys the key menu offers.
const KEY_CHOICES: usize = 500;

/// The page's filters, as in its URL (empty: no filter).
#[derive(Default, serde::Deserialize)]
pub struct UsageQuery {
    #[serde(default)]
    range: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    user: String,
}

impl UsageQuery {
    fn query_string(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("range", &self.range),
            ("key", &self.key),
            ("project", &self.project),
            ("plan", &self.plan),
            ("user", &self.user),
        ] {
            if !value.is_empty() {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }
}

/// The rows for `query` as `session` may see them, and the window's name.
async fn rows(
    state: &AppState,
    session: &Session,
    query: &UsageQuery,
) -> Result<(Vec<UsageRow>, super::keys::Window), ApiError> {
    let id = |text: &str, name: &str| {
        optional_id(text).map_err(|()| ApiError::invalid(format!("Choose a {name} from the list.")))
    };
    let mut window = window_params(&query.range);
    window.params.key_id = id(&query.key, "key")?;
    window.params.project_id = id(&query.project, "project")?;
    window.params.plan_id = id(&query.plan, "plan")?;
    window.params.user_id = id(&query.user, "user")?;
    let (rows, _) = rows_for(state, &session.principal, &window.params).await?;
    Ok((rows, window))
}

struct Choices {
    keys: Vec<(String, String)>,
    projects: Vec<(String, String)>,
    plans: Vec<(String, String)>,
    users: Vec<(String, String)>,
}

async fn choices(state: &AppState, session: &Session) -> Result<Choices, ApiError> {
    let everyone = session.principal.acts_for_everyone();
    let me = session.user_id();
    // The newest keys (a longer list is no use as a menu; every key's own page has
    // its usage too).
    let keys = super::keys::visible(state, session)
        .await?
        .iter()
        .take(KEY_CHOICES)
        .map(|k| {
            let name = format!("{} ({}…)", k.record.name, k.record.start);
            (k.record.id.to_string(), name)
        })
        .collect();
    let projects = state
        .store
        .load_projects()
        .await?
        .into_iter()
        .filter(|p| everyone || p.members.iter().any(|(u, _)| Some(*u) == me))
        .map(|p| (p.id.to_string(), p.name))
        .collect();
    let (plans, users) = if everyone {
        let plans = state
            .store
            .load_plans()
            .await?
            .into_iter()
            .map(|p| (p.id.to_string(), p.name))
            .collect();
        let mut users: Vec<(String, String)> = usernames(state)
            .await?
            .into_iter()
            .map(|(id, name)| (id.to_string(), name))
            .collect();
        users.sort_by(|a, b| a.1.cmp(&b.1));
        (plans, users)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Choices {
        keys,
        projects,
        plans,
        users,
    })
}

struct Line {
    start: String,
    valid: u64,
    rate_limited: u64,
    quota_exceeded: u64,
    denied: u64,
    total: u64,
}

#[derive(Template)]
#[template(path = "ui/usage.html")]
struct UsagePage {
    me: Option<Me>,
    query: UsageQuery,
    range: String,
    choices: Choices,
    chart: String,
    lines: Vec<Line>,
    total: u64,
    refused: u64,
    csv_link: String,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Response {
    let loaded = async {
        let (rows, window) = rows(&state, &session, &query).await?;
        let choices = choices(&state, &session).await?;
        Ok::<_, ApiError>((rows, window, choices))
    };
    let (rows, window, choices) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let chart = chart::bars(
        &window.bars(&rows),
        &format!("Requests over the last {}", window.name),
    );
    let total = rows.iter().map(|r| r.total).sum();
    let refused = rows.iter().map(|r| r.total.saturating_sub(r.valid)).sum();
    let lines = rows
        .iter()
        .rev()
        .map(|r| Line {
            start: when(Some(r.start)),
            valid: r.valid,
            rate_limited: r.rate_limited,
            quota_exceeded: r.quota_exceeded,
            denied: r.denied,
            total: r.total,
        })
        .collect();
    render(&UsagePage {
        me: session.me(),
        csv_link: format!("/ui/usage.csv?{}", query.query_string()),
        range: window.name.into(),
        query,
        choices,
        chart,
        lines,
        total,
        refused,
    })
}

/// The same rows as the page, as a CSV download.
pub async fn csv(
    State(state): State<AppState>,
    session: Session,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Response {
    match rows(&state, &session, &query).await {
        Ok((rows, window)) => {
            let mut response = (
                [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                csv_text(&rows),
            )
                .into_response();
            let name = format!("attachment; filename=\"keygate-usage-{}.csv\"", window.name);
            if let Ok(value) = HeaderValue::from_str(&name) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(err) => error_page(&session, err),
    }
}
