//! The audit log (administrators): filter by action, actor and target; page backwards.

use super::{Me, Session, admin_only, error_page, render, usernames, when};
use crate::AppState;
use crate::http::audit::{AuditParams, list_audit};
use crate::http::error::ApiError;
use crate::http::extract::QueryParams;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use std::collections::HashMap;
use uuid::Uuid;

const PAGE: u32 = 50;

/// One entry, with user ids shown as names.
pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub ip: String,
    pub detail: String,
}

/// `user:<id>` as `user:alice` when the user is known.
fn named(text: &str, users: &HashMap<Uuid, String>) -> String {
    text.strip_prefix("user:")
        .and_then(|id| Uuid::parse_str(id).ok())
        .and_then(|id| users.get(&id))
        .map(|name| format!("user:{name}"))
        .unwrap_or_else(|| text.to_string())
}

/// The filters of the page, as typed (empty: no filter).
#[derive(Default, serde::Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    before: Option<u64>,
}

/// Newest entries matching `query`, and the `before` of the next older page.
pub async fn audit_rows(
    state: &AppState,
    session: &Session,
    query: AuditQuery,
    limit: u32,
) -> Result<(Vec<AuditRow>, Option<u64>), ApiError> {
    let users = usernames(state).await?;
    // Names typed into the actor filter are looked up (`user:alice` → `user:<id>`).
    let actor = super::filled(&query.actor).map(|actor| {
        actor
            .strip_prefix("user:")
            .and_then(|name| users.iter().find(|(_, n)| *n == name))
            .map(|(id, _)| format!("user:{id}"))
            .unwrap_or_else(|| actor.to_string())
    });
    let params = AuditParams {
        action: super::filled(&query.action).map(str::to_string),
        actor,
        target: super::filled(&query.target).map(str::to_string),
        before: query.before,
        limit: Some(limit),
        ..Default::default()
    };
    let axum::Json(list) =
        list_audit(State(state.clone()), session.need()?, QueryParams(params)).await?;
    let rows = list
        .entries
        .into_iter()
        .map(|e| AuditRow {
            at: when(Some(e.at)),
            actor: named(&e.actor, &users),
            action: e.action,
            target: e.target.map(|t| named(&t, &users)).unwrap_or_default(),
            ip: e.ip.unwrap_or_default(),
            detail: if e.detail.is_empty() {
                String::new()
            } else {
                serde_json::Value::Object(e.detail).to_string()
            },
        })
        .collect();
    Ok((rows, list.next_before))
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    me: Option<Me>,
    action: String,
    actor: String,
    target: String,
    rows: Vec<AuditRow>,
    older: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Response {
    if let Some(refused) = admin_only(&session) {
        return refused;
    }
    let (action, actor, target) = (
        query.action.clone(),
        query.actor.clone(),
        query.target.clone(),
    );
    let (rows, next_before) = match audit_rows(&state, &session, query, PAGE).await {
        Ok(found) => found,
        Err(err) => return error_page(&session, err),
    };
    let older = next_before.map(|before| {
        let mut link = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [("action", &action), ("actor", &actor), ("target", &target)] {
            if !value.is_empty() {
                link.append_pair(name, value);
            }
        }
        link.append_pair("before", &before.to_string());
        format!("/ui/audit?{}", link.finish())
    });
    render(&AuditPage {
        me: session.me(),
        action,
        actor,
        target,
        rows,
        older,
    })
}
