//! Projects: the ones the signed-in person belongs to (all of them for administrators),
//! a new-project form, and a page per project with its members.

use super::{Me, NoFields, Posted, Session, error_page, render, usernames, when_ms, with_status};
use crate::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, PathId};
use crate::http::projects as api;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keygate_api::accounts::{MemberRequest, ProjectRequest};
use uuid::Uuid;

struct ProjectRow {
    id: Uuid,
    name: String,
    members: usize,
    role: String,
    created: String,
}

#[derive(Template)]
#[template(path = "ui/projects.html")]
struct ProjectsPage {
    me: Option<Me>,
    me_csrf: String,
    projects: Vec<ProjectRow>,
    message: Option<String>,
    name: String,
    name_error: Option<String>,
}

async fn projects_page(
    state: &AppState,
    session: Session,
    message: Option<String>,
    name: String,
    name_error: Option<String>,
) -> Response {
    let projects = match state.store.load_projects().await {
        Ok(projects) => projects,
        Err(err) => return error_page(&session, err.into()),
    };
    let me = session.user_id();
    let everyone = session.principal.acts_for_everyone();
    let mut rows: Vec<ProjectRow> = projects
        .into_iter()
        .filter_map(|p| {
            let role = p
                .members
                .iter()
                .find(|(user, _)| Some(*user) == me)
                .map(|(_, role)| role.clone());
            (everyone || role.is_some()).then(|| ProjectRow {
                id: p.id,
                members: p.members.len(),
                role: role.unwrap_or_else(|| "—".into()),
                created: when_ms(Some(p.created_at)),
                name: p.name,
            })
        })
        .collect();
    rows.sort_by_key(|a| a.name.to_lowercase());
    render(&ProjectsPage {
        me: session.me(),
        me_csrf: session.csrf(),
        projects: rows,
        message,
        name,
        name_error,
    })
}

pub async fn list(State(state): State<AppState>, session: Session) -> Response {
    projects_page(&state, session, None, String::new(), None).await
}

#[derive(serde::Deserialize)]
pub struct NameForm {
    #[serde(default)]
    name: String,
}

pub async fn create(
    State(state): State<AppState>,
    addr: ClientAddr,
    Posted { session, form }: Posted<NameForm>,
) -> Response {
    let need = need_or_return!(session);
    let request = ProjectRequest {
        name: form.name.trim().to_string(),
    };
    match api::create_project(State(state.clone()), need, addr, JsonBody(request)).await {
        Ok((_, axum::Json(project))) => {
            Redirect::to(&format!("/ui/projects/{}", project.id)).into_response()
        }
        Err(err) => with_status(
            projects_page(
                &state,
                session,
                None,
                form.name,
                Some(err.message.to_string()),
            )
            .await,
            StatusCode::BAD_REQUEST,
        ),
    }
}

struct MemberRow {
    id: Uuid,
    username: String,
    role: String,
}

#[derive(Template)]
#[template(path = "ui/project.html")]
struct ProjectPage {
    me: Option<Me>,
    me_csrf: String,
    id: Uuid,
    name: String,
    created: String,
    members: Vec<MemberRow>,
    can_manage: bool,
    message: Option<String>,
    member_error: Option<String>,
    name_error: Option<String>,
}

#[derive(Default)]
struct ProjectNotes {
    message: Option<String>,
    member_error: Option<String>,
    name_error: Option<String>,
}

async fn project_page(
    state: &AppState,
    session: Session,
    id: Uuid,
    notes: ProjectNotes,
) -> Response {
    let need = need_or_return!(session);
    let loaded = async {
        let axum::Json(project) = api::get_project(State(state.clone()), need, PathId(id)).await?;
        let users = usernames(state).await?;
        Ok::<_, ApiError>((project, users))
    };
    let (project, users) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let me = session.user_id();
    let can_manage = session.principal.acts_for_everyone()
        || project
            .members
            .iter()
            .any(|m| Some(m.user_id) == me && m.role == "owner");
    let mut members: Vec<MemberRow> = project
        .members
        .iter()
        .map(|m| MemberRow {
            id: m.user_id,
            username: users
                .get(&m.user_id)
                .cloned()
                .unwrap_or_else(|| m.user_id.to_string()),
            role: m.role.clone(),
        })
        .collect();
    members.sort_by(|a, b| a.username.cmp(&b.username));
    render(&ProjectPage {
        me: session.me(),
        me_csrf: session.csrf(),
        id: project.id,
        name: project.name,
        created: when_ms(Some(crate::clock::millis_of(project.created_at))),
        members,
        can_manage,
        message: notes.message,
        member_error: notes.member_error,
        name_error: notes.name_error,
    })
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    PathId(id): PathId,
) -> Response {
    project_page(&state, session, id, ProjectNotes::default()).await
}

pub async fn rename(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, form }: Posted<NameForm>,
) -> Response {
    let need = need_or_return!(session);
    let request = ProjectRequest {
        name: form.name.trim().to_string(),
    };
    let notes = match api::rename_project(
        State(state.clone()),
        need,
        addr,
        PathId(id),
        JsonBody(request),
    )
    .await
    {
        Ok(_) => ProjectNotes {
            message: Some("Renamed.".into()),
            ..Default::default()
        },
        Err(err) if err.code.status() == 400 => ProjectNotes {
            name_error: Some(err.message.to_string()),
            ..Default::default()
        },
        Err(err) => return error_page(&session, err),
    };
    let refused = notes.name_error.is_some();
    let page = project_page(&state, session, id, notes).await;
    if refused {
        with_status(page, StatusCode::BAD_REQUEST)
    } else {
        page
    }
}

pub async fn delete(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    match api::delete_project(State(state.clone()), need, addr, PathId(id)).await {
        Ok(axum::Json(project)) => {
            let message = format!(
                "Deleted {} and revoked its project-level keys.",
                project.name
            );
            projects_page(&state, session, Some(message), String::new(), None).await
        }
        Err(err) => error_page(&session, err),
    }
}

#[derive(serde::Deserialize)]
pub struct MemberForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    role: String,
}

pub async fn add_member(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, form }: Posted<MemberForm>,
) -> Response {
    // Owners only, before any name is looked up: others learn nothing about who exists.
    if let Err(err) = api::owned(&state, &session.principal, id).await {
        return error_page(&session, err);
    }
    let wanted = form.username.trim().to_lowercase();
    let user = match state.store.load_users().await {
        Ok(users) => users
            .into_iter()
            .find(|u| u.username.to_lowercase() == wanted),
        Err(err) => return error_page(&session, err.into()),
    };
    let page_state = state.clone();
    let refuse = |session, message: String| async move {
        let notes = ProjectNotes {
            member_error: Some(message),
            ..Default::default()
        };
        with_status(
            project_page(&page_state, session, id, notes).await,
            StatusCode::BAD_REQUEST,
        )
    };
    let Some(user) = user else {
        return refuse(
            session,
            format!("No user is called “{}”.", form.username.trim()),
        )
        .await;
    };
    let need = need_or_return!(session);
    let added = api::put_member(
        State(state.clone()),
        need,
        addr,
        Path((id.to_string(), user.id.to_string())),
        JsonBody(MemberRequest { role: form.role }),
    )
    .await;
    match added {
        Ok(_) => {
            let notes = ProjectNotes {
                message: Some(format!("{} is a member now.", user.username)),
                ..Default::default()
            };
            project_page(&state, session, id, notes).await
        }
        Err(err) if err.code.status() == 400 => refuse(session, err.message.to_string()).await,
        Err(err) => error_page(&session, err),
    }
}

pub async fn remove_member(
    State(state): State<AppState>,
    addr: ClientAddr,
    Path((id, user_id)): Path<(Uuid, Uuid)>,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    let removed = api::remove_member(
        State(state.clone()),
        need,
        addr,
        Path((id.to_string(), user_id.to_string())),
    )
    .await;
    match removed {
        Ok(_) => {
            let notes = ProjectNotes {
                message: Some("Removed from the project.".into()),
                ..Default::default()
            };
            project_page(&state, session, id, notes).await
        }
        Err(err) => error_page(&session, err),
    }
}
