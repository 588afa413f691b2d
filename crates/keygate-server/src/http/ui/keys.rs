//! Keys: the searchable table, the new-key form, rotate / disable / revoke, and a page per
//! key with its usage.

use super::chart::{self, Bar};
use super::{Me, NoFields, Posted, Session};
use super::{error_page, filled, optional_id, render, usernames, when, when_ms, with_status};
use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, PathId, QueryParams};
use crate::http::keys as api;
use crate::http::usage::{UsageParams, rows_for};
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keygate_api::keys::{CreateKeyRequest, RotateKeyRequest, UpdateKeyRequest, UsageRow};
use keygate_core::{IndexedKey, KeyRecord};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Rows per page of the keys table.
const PAGE: usize = 25;

/// One row of the keys table, formatted for display.
struct KeyRow {
    id: Uuid,
    name: String,
    start: String,
    owner: String,
    level: String,
    project: String,
    scopes: String,
    plan: String,
    last_used: String,
    expires: String,
    state: String,
    revocable: bool,
}

/// What the new-key form keeps when it is refused.
#[derive(Default, serde::Deserialize)]
pub struct NewKeyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    project_id: String,
    #[serde(default)]
    scopes: String,
    #[serde(default)]
    plan_id: String,
    #[serde(default)]
    expires: String,
    #[serde(default)]
    allowed_cidrs: String,
}

#[derive(Default)]
struct KeyErrors {
    name: Option<String>,
    project: Option<String>,
    scopes: Option<String>,
    plan: Option<String>,
    expires: Option<String>,
    cidrs: Option<String>,
    other: Option<String>,
}

/// The table's search, filters and page (`GET /ui/keys?q=&state=&level=&project=&page=`).
#[derive(Default, serde::Deserialize)]
pub struct Filter {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    page: Option<usize>,
}

impl Filter {
    fn link(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("q", &self.q),
            ("state", &self.state),
            ("level", &self.level),
            ("project", &self.project),
        ] {
            if !value.is_empty() {
                query.append_pair(name, value);
            }
        }
        query.append_pair("page", &page.to_string());
        format!("/ui/keys?{}", query.finish())
    }
}

#[derive(Template)]
#[template(path = "ui/keys.html")]
struct KeysPage {
    me: Option<Me>,
    me_csrf: String,
    keys: Vec<KeyRow>,
    total: usize,
    filter: Filter,
    previous: Option<String>,
    next: Option<String>,
    projects: Vec<(String, String)>,
    plans: Vec<(String, String)>,
    created: Option<String>,
    message: Option<String>,
    form: NewKeyForm,
    errors: KeyErrors,
}

/// The keys `session` may see — everyone's for administrators, their own for users —
/// newest first, as the in-memory index holds them (limits and live usage included).
/// Administrators' lists walk the index (every key is there, revoked and expired ones
/// too; only pointers are copied while it is locked); a user's come from the store's
/// owner index, so a user's page never costs a walk over everyone's keys.
pub(super) async fn visible(
    state: &AppState,
    session: &Session,
) -> Result<Vec<Arc<IndexedKey>>, ApiError> {
    if session.principal.acts_for_everyone() {
        let mut keys: Vec<Arc<IndexedKey>> = state.engine.index().shared().cloned().collect();
        keys.sort_by(|a, b| {
            (b.record.created_at, b.record.id).cmp(&(a.record.created_at, a.record.id))
        });
        return Ok(keys);
    }
    let Some(me) = session.user_id() else {
        return Ok(Vec::new());
    };
    let records = state
        .store
        .list_keys(keygate_store::KeyPage {
            limit: u32::MAX,
            offset: 0,
            owner: Some(me),
        })
        .await?;
    let index = state.engine.index();
    // Newest first, as the store answers; a key the index does not have yet (written a
    // moment ago by another node) appears on the next load.
    Ok(records
        .iter()
        .filter_map(|r| index.get_by_id(r.id).cloned())
        .collect())
}

/// Projects the session's user may pin a key to, as (id, name).
async fn pinnable_projects(
    state: &AppState,
    session: &Session,
) -> Result<Vec<(String, String)>, ApiError> {
    let me = session.user_id();
    Ok(state
        .store
        .load_projects()
        .await?
        .iter()
        .filter(|p| {
            session.principal.acts_for_everyone()
                || p.members.iter().any(|(user, _)| Some(*user) == me)
        })
        .map(|p| (p.id.to_string(), p.name.clone()))
        .collect())
}

struct Names {
    users: HashMap<Uuid, String>,
    projects: HashMap<Uuid, String>,
    plans: HashMap<Uuid, String>,
}

async fn names(state: &AppState) -> Result<Names, ApiError> {
    Ok(Names {
        users: usernames(state).await?,
        projects: state
            .store
            .load_projects()
            .await?
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect(),
        plans: state
            .store
            .load_plans()
            .await?
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect(),
    })
}

fn row(state: &AppState, record: &KeyRecord, names: &Names, now: i64) -> KeyRow {
    let view = api::view(state, record, now);
    let name_of = |map: &HashMap<Uuid, String>, id: Option<Uuid>, none: &str| {
        id.map(|id| map.get(&id).cloned().unwrap_or_else(|| id.to_string()))
            .unwrap_or_else(|| none.into())
    };
    KeyRow {
        id: record.id,
        name: record.name.clone(),
        start: record.start.clone(),
        owner: name_of(&names.users, record.owner, "instance"),
        level: view.level.clone(),
        project: name_of(&names.projects, record.project, "—"),
        scopes: if record.scopes.is_empty() {
            "—".into()
        } else {
            record.scopes.join(" ")
        },
        plan: name_of(&names.plans, record.plan, "—"),
        last_used: when(view.last_used_at),
        expires: when(record.expires_at.map(time_of)),
        revocable: !record.global && (view.state == "active" || view.state == "disabled"),
        state: view.state,
    }
}

/// Does a key match the table's search and filters? Read from the record and the name
/// maps alone, so filtering every key costs no lookups.
fn matches(
    record: &KeyRecord,
    names: &Names,
    filter: &Filter,
    project_id: Option<Uuid>,
    now: i64,
) -> bool {
    let level = if record.project.is_some() {
        "project"
    } else {
        "user"
    };
    let q = filter.q.trim().to_lowercase();
    let named = |map: &HashMap<Uuid, String>, id: Option<Uuid>| {
        id.and_then(|id| map.get(&id))
            .is_some_and(|name| name.to_lowercase().contains(&q))
    };
    (q.is_empty()
        || record.name.to_lowercase().contains(&q)
        || record.start.to_lowercase().contains(&q)
        || record.scopes.iter().any(|s| s.to_lowercase().contains(&q))
        || named(&names.users, record.owner)
        || named(&names.projects, record.project)
        || record.id.to_string().starts_with(&q))
        && (filter.state.is_empty() || record.state(now).as_str() == filter.state)
        && (filter.level.is_empty() || level == filter.level)
        && project_id.is_none_or(|p| record.project == Some(p))
}

struct Notice {
    created: Option<String>,
    message: Option<String>,
}

async fn keys_page(
    state: &AppState,
    session: Session,
    filter: Filter,
    notice: Notice,
    form: NewKeyForm,
    errors: KeyErrors,
) -> Response {
    let loaded = async {
        let names = names(state).await?;
        let projects = pinnable_projects(state, &session).await?;
        let keys = visible(state, &session).await?;
        Ok::<_, ApiError>((names, projects, keys))
    };
    let (names, projects, keys) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let project_filter = optional_id(&filter.project).ok().flatten();
    let now = now_ms();
    let matching: Vec<Arc<IndexedKey>> = keys
        .into_iter()
        .filter(|k| matches(&k.record, &names, &filter, project_filter, now))
        .collect();
    let total = matching.len();
    let pages = total.div_ceil(PAGE).max(1);
    let page = filter.page.unwrap_or(1).clamp(1, pages);
    let rows: Vec<KeyRow> = matching
        .iter()
        .skip((page - 1) * PAGE)
        .take(PAGE)
        .map(|k| row(state, &k.record, &names, now))
        .collect();
    // Users cannot read plans; only administrators choose one.
    let plans = if session.me.admin {
        let mut plans: Vec<(String, String)> = names
            .plans
            .iter()
            .map(|(id, name)| (id.to_string(), name.clone()))
            .collect();
        plans.sort_by(|a, b| a.1.cmp(&b.1));
        plans
    } else {
        Vec::new()
    };
    render(&KeysPage {
        me: session.me(),
        me_csrf: session.csrf(),
        keys: rows,
        total,
        previous: (page > 1).then(|| filter.link(page - 1)),
        next: (page < pages).then(|| filter.link(page + 1)),
        filter,
        projects,
        plans,
        created: notice.created,
        message: notice.message,
        form: NewKeyForm {
            level: if form.level.is_empty() {
                "user".into()
            } else {
                form.level
            },
            ..form
        },
        errors,
    })
}

async fn plain_page(state: &AppState, session: Session, notice: Notice) -> Response {
    keys_page(
        state,
        session,
        Filter::default(),
        notice,
        NewKeyForm::default(),
        KeyErrors::default(),
    )
    .await
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    QueryParams(filter): QueryParams<Filter>,
) -> Response {
    keys_page(
        &state,
        session,
        filter,
        Notice {
            created: None,
            message: None,
        },
        NewKeyForm::default(),
        KeyErrors::default(),
    )
    .await
}

/// `2030-01-31` or `2030-01-31T12:00` (the browser's date or datetime-local input), UTC.
fn parse_expiry(text: &str) -> Option<time::OffsetDateTime> {
    use time::macros::format_description;
    let text = text.trim();
    if let Ok(date) = time::Date::parse(text, format_description!("[year]-[month]-[day]")) {
        return Some(date.with_hms(23, 59, 59).ok()?.assume_utc());
    }
    time::PrimitiveDateTime::parse(
        text,
        format_description!("[year]-[month]-[day]T[hour]:[minute]"),
    )
    .ok()
    .map(time::PrimitiveDateTime::assume_utc)
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split([' ', ',', '\n', '\r', '\t'])
        .filter(|s| !s.is_empty())
}

pub async fn create(
    State(state): State<AppState>,
    addr: ClientAddr,
    Posted { session, form }: Posted<NewKeyForm>,
) -> Response {
    let mut errors = KeyErrors::default();
    let scopes: Vec<String> = words(&form.scopes).map(str::to_string).collect();
    let project = match (form.level.as_str(), optional_id(&form.project_id)) {
        ("project", Ok(None)) => {
            errors.project = Some("Choose the project this key is for.".into());
            None
        }
        ("project", Ok(Some(id))) => Some(id),
        ("project", Err(())) => {
            errors.project = Some("Choose a project from the list.".into());
            None
        }
        _ => None,
    };
    let plan = optional_id(&form.plan_id).unwrap_or_else(|()| {
        errors.plan = Some("Choose a plan from the list.".into());
        None
    });
    let expires_at = match filled(&form.expires) {
        None => None,
        Some(text) => match parse_expiry(text) {
            Some(at) if at > time::OffsetDateTime::now_utc() => Some(at),
            Some(_) => {
                errors.expires = Some("The expiry must be in the future.".into());
                None
            }
            None => {
                errors.expires = Some("Enter a date like 2030-01-31.".into());
                None
            }
        },
    };
    let mut cidrs = Vec::new();
    for text in words(&form.allowed_cidrs) {
        // A bare address is a network of one.
        let parsed = text.parse::<ipnet::IpNet>().or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(ipnet::IpNet::from)
                .map_err(|_| ())
        });
        match parsed {
            Ok(net) => cidrs.push(net),
            Err(()) => {
                errors.cidrs = Some(format!(
                    "`{text}` is not an address or network like 203.0.113.0/24."
                ));
                break;
            }
        }
    }
    if form.name.trim().is_empty() {
        errors.name = Some("Give the key a name.".into());
    }
    let refused = errors.name.is_some()
        || errors.project.is_some()
        || errors.plan.is_some()
        || errors.expires.is_some()
        || errors.cidrs.is_some();
    let notice = Notice {
        created: None,
        message: None,
    };
    if refused {
        return with_status(
            keys_page(&state, session, Filter::default(), notice, form, errors).await,
            StatusCode::BAD_REQUEST,
        );
    }
    let need = need_or_return!(session);
    let request = CreateKeyRequest {
        name: form.name.trim().to_string(),
        level: Some(if project.is_some() { "project" } else { "user" }.into()),
        project_id: project,
        scopes: Some(scopes),
        plan,
        expires_at,
        allowed_cidrs: (!cidrs.is_empty()).then_some(cidrs),
        ..Default::default()
    };
    match api::create_key(State(state.clone()), need, addr, JsonBody(request)).await {
        Ok((_, axum::Json(created))) => {
            plain_page(
                &state,
                session,
                Notice {
                    created: Some(created.key),
                    message: None,
                },
            )
            .await
        }
        Err(err) => {
            let message = err.message.to_string();
            if message.contains("`name`") {
                errors.name = Some(message);
            } else if message.contains("scope") {
                errors.scopes = Some(message);
            } else if message.contains("project") {
                errors.project = Some(message);
            } else if message.contains("plan") {
                errors.plan = Some(message);
            } else if message.contains("expires") {
                errors.expires = Some(message);
            } else if message.contains("cidr") || message.contains("network") {
                errors.cidrs = Some(message);
            } else {
                errors.other = Some(message);
            }
            with_status(
                keys_page(&state, session, Filter::default(), notice, form, errors).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

pub async fn revoke(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    let message = match api::revoke_key(State(state.clone()), need, addr, PathId(id)).await {
        Ok(axum::Json(view)) => format!("Revoked {}: requests with it are refused now.", view.name),
        Err(err) => err.message.to_string(),
    };
    plain_page(
        &state,
        session,
        Notice {
            created: None,
            message: Some(message),
        },
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    grace_seconds: String,
}

pub async fn rotate(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, form }: Posted<RotateForm>,
) -> Response {
    let Ok(grace_seconds) = form.grace_seconds.trim().parse::<u64>() else {
        return error_page(
            &session,
            ApiError::invalid("Choose how long the old key keeps working."),
        );
    };
    let need = need_or_return!(session);
    let rotated = api::rotate_key(
        State(state.clone()),
        need,
        addr,
        PathId(id),
        JsonBody(RotateKeyRequest { grace_seconds }),
    )
    .await;
    match rotated {
        Ok(axum::Json(rotated)) => {
            let message = match rotated.previous.expires_at {
                Some(at) if grace_seconds > 0 => format!(
                    "Rotated {}: the old key keeps working until {} UTC.",
                    rotated.previous.name,
                    when(Some(at))
                ),
                _ => format!(
                    "Rotated {}: the old key no longer works.",
                    rotated.previous.name
                ),
            };
            plain_page(
                &state,
                session,
                Notice {
                    created: Some(rotated.key.key),
                    message: Some(message),
                },
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}

pub async fn set_enabled(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, form }: Posted<super::EnabledForm>,
) -> Response {
    let enabled = match form.enabled() {
        Ok(enabled) => enabled,
        Err(err) => return error_page(&session, err),
    };
    let need = need_or_return!(session);
    let patch = UpdateKeyRequest {
        enabled: Some(enabled),
        ..Default::default()
    };
    match api::update_key(
        State(state.clone()),
        need,
        addr,
        PathId(id),
        JsonBody(patch),
    )
    .await
    {
        Ok(_) => axum::response::Redirect::to(&format!("/ui/keys/{id}")).into_response(),
        Err(err) => error_page(&session, err),
    }
}

/// Refusals over a window, by reason.
struct Refusals {
    rate_limited: u64,
    quota_exceeded: u64,
    denied: u64,
}

#[derive(Template)]
#[template(path = "ui/key.html")]
struct KeyDetailPage {
    me: Option<Me>,
    me_csrf: String,
    key: KeyRow,
    enabled: bool,
    created: String,
    usage_count: u64,
    quota: String,
    cidrs: String,
    range: String,
    chart: String,
    refusals: Refusals,
    allowed: u64,
}

#[derive(Default, serde::Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    range: String,
}

/// A usage window ending now, as the pages chart it.
pub(super) struct Window {
    pub name: &'static str,
    pub params: UsageParams,
    from: i64,
    to: i64,
    step: i64,
}

/// `24h` (hourly, the default), `7d` or `30d` (daily).
pub(super) fn window_params(range: &str) -> Window {
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    let (name, span, step, granularity) = match range {
        "7d" => ("7d", 7 * DAY, DAY, "day"),
        "30d" => ("30d", 30 * DAY, DAY, "day"),
        _ => ("24h", DAY, HOUR, "hour"),
    };
    let to = now_ms();
    let from = to - span;
    let rfc = |ms: i64| {
        time_of(ms)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Window {
        name,
        params: UsageParams {
            from: Some(rfc(from)),
            to: Some(rfc(to)),
            granularity: Some(granularity.into()),
            ..Default::default()
        },
        from,
        to,
        step,
    }
}

impl Window {
    /// One bar per bucket of the window, empty buckets included (a gap is a zero, not a
    /// missing bar).
    pub(super) fn bars(&self, rows: &[UsageRow]) -> Vec<Bar> {
        let by_start: HashMap<i64, &UsageRow> = rows
            .iter()
            .map(|r| (crate::clock::millis_of(r.start), r))
            .collect();
        let hourly = self.step < 86_400_000;
        let mut bars = Vec::new();
        let mut start = self.from - self.from.rem_euclid(self.step);
        while start < self.to {
            let at = time_of(start);
            let row = by_start.get(&start);
            bars.push(Bar {
                label: if hourly {
                    format!("{:02}:00", at.hour())
                } else {
                    format!("{:02}-{:02}", u8::from(at.month()), at.day())
                },
                allowed: row.map_or(0, |r| r.valid),
                refused: row.map_or(0, |r| r.total.saturating_sub(r.valid)),
            });
            start += self.step;
        }
        bars
    }
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    PathId(id): PathId,
    QueryParams(query): QueryParams<RangeQuery>,
) -> Response {
    let mut window = window_params(&query.range);
    window.params.key_id = Some(id);
    let range = window.name;
    let loaded = async {
        let record = api::visible_key(&state, &session.principal, id).await?;
        let names = names(&state).await?;
        let (rows, _) = rows_for(&state, &session.principal, &window.params).await?;
        Ok::<_, ApiError>((record, names, rows))
    };
    let (record, names, rows) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let now = now_ms();
    let view = api::view(&state, &record, now);
    let refusals = Refusals {
        rate_limited: rows.iter().map(|r| r.rate_limited).sum(),
        quota_exceeded: rows.iter().map(|r| r.quota_exceeded).sum(),
        denied: rows.iter().map(|r| r.denied).sum(),
    };
    let allowed = rows.iter().map(|r| r.valid).sum();
    let quota = {
        let index = state.engine.index();
        let limit = index
            .get_by_id(id)
            .and_then(|k| k.limits.as_ref().and_then(|l| l.monthly_quota));
        match (limit, view.quota_used) {
            (Some(limit), used) => format!("{} of {limit} this month", used.unwrap_or(0)),
            (None, _) => "no monthly quota".into(),
        }
    };
    let chart = chart::bars(
        &window.bars(&rows),
        &format!("Requests with this key over the last {range}"),
    );
    render(&KeyDetailPage {
        me: session.me(),
        me_csrf: session.csrf(),
        key: row(&state, &record, &names, now),
        enabled: record.enabled,
        created: when_ms(Some(record.created_at)),
        usage_count: view.usage_count,
        quota,
        cidrs: if record.allowed_cidrs.is_empty() {
            "anywhere".into()
        } else {
            record
                .allowed_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
        range: range.into(),
        chart,
        refusals,
        allowed,
    })
}
