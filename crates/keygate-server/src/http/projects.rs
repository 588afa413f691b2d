//! `/api/v1/projects`: projects, their members, and who may act in them.

use crate::AppState;
use crate::clock::{now_ms, time_of};
use crate::engine::Principal;
use crate::http::audit;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, Need, PathId, ProjectsRead, ProjectsWrite};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keygate_api::accounts::{MemberRequest, MemberView, ProjectList, ProjectRequest, ProjectView};
use keygate_api::{ErrorBody, ErrorCode};
use keygate_store::Project;
use uuid::Uuid;

fn view(project: &Project) -> ProjectView {
    ProjectView {
        id: project.id,
        name: project.name.clone(),
        members: project
            .members
            .iter()
            .map(|(user_id, role)| MemberView {
                user_id: *user_id,
                role: role.clone(),
            })
            .collect(),
        created_at: time_of(project.created_at),
    }
}

fn role_of(project: &Project, principal: &Principal) -> Option<String> {
    let me = principal.user_id()?;
    project
        .members
        .iter()
        .find(|(user, _)| *user == me)
        .map(|(_, role)| role.clone())
}

/// A project the caller may see (admins: any; users: those they belong to), else 404.
async fn visible(state: &AppState, principal: &Principal, id: Uuid) -> Result<Project, ApiError> {
    let project = state
        .store
        .get_project(id)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    if principal.acts_for_everyone() || role_of(&project, principal).is_some() {
        Ok(project)
    } else {
        Err(ApiError::not_found("project"))
    }
}

/// A project the caller may change: admins, and the project's owners.
pub async fn owned(state: &AppState, principal: &Principal, id: Uuid) -> Result<Project, ApiError> {
    let project = visible(state, principal, id).await?;
    if principal.acts_for_everyone() || role_of(&project, principal).as_deref() == Some("owner") {
        Ok(project)
    } else {
        Err(ApiError::new(ErrorCode::InsufficientPermissions)
            .message("Only the project's owners may change it."))
    }
}

#[utoipa::path(
    get, path = "/api/v1/projects", tag = "projects",
    responses((status = 200, description = "Projects the caller may see", body = ProjectList)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn list_projects(
    State(state): State<AppState>,
    caller: Need<ProjectsRead>,
) -> Result<Json<ProjectList>, ApiError> {
    let principal = caller.principal();
    let projects = state.store.load_projects().await?;
    let projects = projects
        .iter()
        .filter(|p| principal.acts_for_everyone() || role_of(p, principal).is_some())
        .map(view)
        .collect();
    Ok(Json(ProjectList { projects }))
}

#[utoipa::path(
    post, path = "/api/v1/projects", tag = "projects", request_body = ProjectRequest,
    responses((status = 201, description = "Created; the creating user is its owner", body = ProjectView), (status = 400, description = "Bad name", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create_project(
    State(state): State<AppState>,
    caller: Need<ProjectsWrite>,
    addr: ClientAddr,
    JsonBody(body): JsonBody<ProjectRequest>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    super::plans::validate_name(&body.name)?;
    let now = now_ms();
    let project = Project {
        id: Uuid::now_v7(),
        name: body.name.trim().to_string(),
        members: caller
            .principal()
            .user_id()
            .map(|me| (me, "owner".to_string()))
            .into_iter()
            .collect(),
        created_at: now,
        updated_at: now,
    };
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "project.create",
        Some(format!("project:{}", project.id)),
    );
    state.store.create_project(&project, &entry).await?;
    super::keys::sync_after_write(&state).await;
    Ok((StatusCode::CREATED, Json(view(&project))))
}

#[utoipa::path(
    get, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses((status = 200, description = "OK", body = ProjectView), (status = 404, description = "No such project", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn get_project(
    State(state): State<AppState>,
    caller: Need<ProjectsRead>,
    PathId(id): PathId,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(view(&visible(&state, caller.principal(), id).await?)))
}

#[utoipa::path(
    patch, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    request_body = ProjectRequest,
    responses((status = 200, description = "Renamed", body = ProjectView), (status = 404, description = "No such project", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn rename_project(
    State(state): State<AppState>,
    caller: Need<ProjectsWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
    JsonBody(body): JsonBody<ProjectRequest>,
) -> Result<Json<ProjectView>, ApiError> {
    super::plans::validate_name(&body.name)?;
    let mut project = owned(&state, caller.principal(), id).await?;
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "project.update",
        Some(format!("project:{id}")),
    );
    state
        .store
        .rename_project(id, body.name.trim(), &entry)
        .await?;
    project.name = body.name.trim().to_string();
    Ok(Json(view(&project)))
}

#[utoipa::path(
    delete, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id")),
    responses((status = 200, description = "Deleted; its project-level keys are revoked", body = ProjectView), (status = 404, description = "No such project", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn delete_project(
    State(state): State<AppState>,
    caller: Need<ProjectsWrite>,
    addr: ClientAddr,
    PathId(id): PathId,
) -> Result<Json<ProjectView>, ApiError> {
    let project = owned(&state, caller.principal(), id).await?;
    let entry = audit::entry(
        caller.principal(),
        &addr,
        "project.delete",
        Some(format!("project:{id}")),
    );
    state.store.delete_project(id, &entry).await?;
    super::keys::sync_after_write(&state).await;
    Ok(Json(view(&project)))
}

#[utoipa::path(
    put, path = "/api/v1/projects/{id}/members/{user_id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id"), ("user_id" = uuid::Uuid, Path, description = "User id")),
    request_body = MemberRequest,
    responses((status = 200, description = "The project with its members", body = ProjectView), (status = 400, description = "Bad role or user", body = ErrorBody)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn put_member(
    State(state): State<AppState>,
    caller: Need<ProjectsWrite>,
    addr: ClientAddr,
    Path((id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<MemberRequest>,
) -> Result<Json<ProjectView>, ApiError> {
    let (id, user_id) = ids(&id, &user_id)?;
    if body.role != "owner" && body.role != "member" {
        return Err(ApiError::invalid("`role` must be owner or member."));
    }
    owned(&state, caller.principal(), id).await?;
    state
        .store
        .get_user(user_id)
        .await?
        .ok_or_else(|| ApiError::invalid("No user with this id."))?;
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "project.member",
        Some(format!("project:{id}")),
    );
    entry
        .detail
        .insert("user".into(), user_id.to_string().into());
    entry.detail.insert("role".into(), body.role.clone().into());
    state
        .store
        .set_member(id, user_id, Some(&body.role), &entry)
        .await?;
    super::keys::sync_after_write(&state).await;
    let project = state
        .store
        .get_project(id)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(Json(view(&project)))
}

#[utoipa::path(
    delete, path = "/api/v1/projects/{id}/members/{user_id}", tag = "projects",
    params(("id" = uuid::Uuid, Path, description = "Project id"), ("user_id" = uuid::Uuid, Path, description = "User id")),
    responses((status = 200, description = "The project with its members", body = ProjectView)),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn remove_member(
    State(state): State<AppState>,
    caller: Need<ProjectsWrite>,
    addr: ClientAddr,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Json<ProjectView>, ApiError> {
    let (id, user_id) = ids(&id, &user_id)?;
    owned(&state, caller.principal(), id).await?;
    let mut entry = audit::entry(
        caller.principal(),
        &addr,
        "project.member",
        Some(format!("project:{id}")),
    );
    entry
        .detail
        .insert("user".into(), user_id.to_string().into());
    entry.detail.insert("role".into(), serde_json::Value::Null);
    state.store.set_member(id, user_id, None, &entry).await?;
    super::keys::sync_after_write(&state).await;
    let project = state
        .store
        .get_project(id)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(Json(view(&project)))
}

fn ids(project: &str, user: &str) -> Result<(Uuid, Uuid), ApiError> {
    let parse = |text: &str| {
        Uuid::parse_str(text).map_err(|_| ApiError::invalid("An id in the path is not a UUID."))
    };
    Ok((parse(project)?, parse(user)?))
}

/// Checks that a project-level key may be pinned to `project`: it exists and the key's
/// owner belongs to it (administrators and the instance: any project).
pub async fn check_pin(
    state: &AppState,
    owner: Option<Uuid>,
    project: Uuid,
) -> Result<(), ApiError> {
    let project = state
        .store
        .get_project(project)
        .await?
        .ok_or_else(|| ApiError::invalid("`project_id` names no project."))?;
    let Some(owner) = owner else { return Ok(()) };
    let member = project.members.iter().any(|(user, _)| *user == owner);
    let admin = state
        .store
        .get_user(owner)
        .await?
        .is_some_and(|u| u.role == keygate_core::Role::Admin);
    if member || admin {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::ProjectForbidden)
            .message("The key's owner is not a member of this project."))
    }
}
