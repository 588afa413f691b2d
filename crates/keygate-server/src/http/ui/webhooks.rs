//! Webhooks: endpoints the signed-in person may see, a new-endpoint form, and a page per
//! endpoint with its secret (reveal, rotate), a test event and the delivery log (retry).

use super::with_status;
use super::{Me, NoFields, Posted, Session, error_page, filled, optional_id, render, when};
use crate::AppState;
use crate::http::error::ApiError;
use crate::http::extract::{ClientAddr, JsonBody, PathId, QueryParams};
use crate::http::webhooks as api;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keygate_api::webhooks::{
    CreateWebhookRequest, EVENT_TYPES, RotateSecretRequest, UpdateWebhookRequest, WebhookView,
};
use uuid::Uuid;

struct EndpointRow {
    id: Uuid,
    url: String,
    description: String,
    events: String,
    owner: String,
    status: String,
}

/// The new-endpoint form, as typed. `events` repeats (one per ticked box), so the form is
/// read from the raw pairs rather than a struct.
#[derive(Default)]
struct EndpointForm {
    url: String,
    description: String,
    events: Vec<String>,
    /// `me` or a project id.
    owner: String,
}

#[derive(Default)]
struct EndpointErrors {
    url: Option<String>,
    events: Option<String>,
    owner: Option<String>,
    other: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/webhooks.html")]
struct WebhooksPage {
    me: Option<Me>,
    me_csrf: String,
    endpoints: Vec<EndpointRow>,
    event_types: &'static [&'static str],
    projects: Vec<(String, String)>,
    form: EndpointForm,
    errors: EndpointErrors,
    created: Option<(Uuid, String)>,
}

fn owner_text(view: &WebhookView, projects: &[(String, String)]) -> String {
    match (view.project_id, view.owner) {
        (Some(project), _) => projects
            .iter()
            .find(|(id, _)| *id == project.to_string())
            .map(|(_, name)| format!("project {name}"))
            .unwrap_or_else(|| format!("project {project}")),
        (None, Some(_)) => "user".into(),
        (None, None) => "instance".into(),
    }
}

async fn member_projects(
    state: &AppState,
    session: &Session,
) -> Result<Vec<(String, String)>, ApiError> {
    let me = session.user_id();
    Ok(state
        .store
        .load_projects()
        .await?
        .into_iter()
        .filter(|p| {
            session.principal.acts_for_everyone()
                || p.members.iter().any(|(user, _)| Some(*user) == me)
        })
        .map(|p| (p.id.to_string(), p.name))
        .collect())
}

async fn webhooks_page(
    state: &AppState,
    session: Session,
    form: EndpointForm,
    errors: EndpointErrors,
    created: Option<(Uuid, String)>,
) -> Response {
    let need = need_or_return!(session);
    let loaded = async {
        let axum::Json(list) = api::list_webhooks(State(state.clone()), need).await?;
        let projects = member_projects(state, &session).await?;
        Ok::<_, ApiError>((list.webhooks, projects))
    };
    let (endpoints, projects) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let rows = endpoints
        .iter()
        .map(|e| EndpointRow {
            id: e.id,
            url: e.url.clone(),
            description: e.description.clone(),
            events: if e.events.is_empty() {
                "every event".into()
            } else {
                e.events.join(" ")
            },
            owner: owner_text(e, &projects),
            status: e.status.clone(),
        })
        .collect();
    render(&WebhooksPage {
        me: session.me(),
        me_csrf: session.csrf(),
        endpoints: rows,
        event_types: EVENT_TYPES,
        projects,
        form,
        errors,
        created,
    })
}

pub async fn list(State(state): State<AppState>, session: Session) -> Response {
    webhooks_page(
        &state,
        session,
        EndpointForm::default(),
        EndpointErrors::default(),
        None,
    )
    .await
}

/// The raw pairs of a form (repeated names kept).
struct Pairs(Vec<(String, String)>);

impl Pairs {
    fn one(&self, name: &str) -> String {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

pub async fn create(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Response {
    // Read as pairs because `events` repeats; so the CSRF check is made here.
    let form = Pairs(pairs);
    if let Err(stale) = session.check(&form.one("csrf")) {
        return stale.into_response();
    }
    let form = EndpointForm {
        url: form.one("url").trim().to_string(),
        description: form.one("description"),
        events: form.all("events"),
        owner: form.one("owner"),
    };
    let mut errors = EndpointErrors::default();
    let (user_id, project_id) = match form.owner.as_str() {
        "" | "me" => (session.user_id(), None),
        text => match optional_id(text) {
            Ok(Some(project)) => (None, Some(project)),
            _ => {
                errors.owner = Some("Choose who the endpoint belongs to.".into());
                (None, None)
            }
        },
    };
    if form.url.is_empty() {
        errors.url = Some("Enter the URL keygate should send events to.".into());
    }
    if errors.url.is_some() || errors.owner.is_some() {
        return with_status(
            webhooks_page(&state, session, form, errors, None).await,
            StatusCode::BAD_REQUEST,
        );
    }
    let need = need_or_return!(session);
    let request = CreateWebhookRequest {
        url: form.url.clone(),
        events: form.events.clone(),
        enabled: Some(true),
        description: filled(&form.description).map(str::to_string),
        user_id,
        project_id,
        ..Default::default()
    };
    match api::create_webhook(State(state.clone()), need, addr, JsonBody(request)).await {
        Ok((_, axum::Json(created))) => {
            webhooks_page(
                &state,
                session,
                EndpointForm::default(),
                EndpointErrors::default(),
                Some((created.webhook.id, created.secret)),
            )
            .await
        }
        Err(err) => {
            let message = err.message.to_string();
            if message.contains("`url`") {
                errors.url = Some(message);
            } else if message.contains("`events`") {
                errors.events = Some(message);
            } else if message.contains("project") || message.contains("user") {
                errors.owner = Some(message);
            } else {
                errors.other = Some(message);
            }
            with_status(
                webhooks_page(&state, session, form, errors, None).await,
                StatusCode::BAD_REQUEST,
            )
        }
    }
}

struct DeliveryRow {
    id: Uuid,
    event_type: String,
    status: String,
    attempts: u32,
    result: String,
    next_attempt: String,
    created: String,
}

#[derive(Template)]
#[template(path = "ui/webhook.html")]
struct WebhookPage {
    me: Option<Me>,
    me_csrf: String,
    endpoint: WebhookView,
    events: String,
    owner: String,
    deliveries: Vec<DeliveryRow>,
    secret: Option<String>,
    previous_until: Option<String>,
    message: Option<String>,
}

#[derive(Default)]
struct Shown {
    secret: Option<String>,
    message: Option<String>,
}

async fn webhook_page(state: &AppState, session: Session, id: Uuid, shown: Shown) -> Response {
    let loaded = async {
        let axum::Json(endpoint) =
            api::get_webhook(State(state.clone()), session.need()?, PathId(id)).await?;
        let axum::Json(list) = api::list_deliveries(
            State(state.clone()),
            session.need()?,
            PathId(id),
            QueryParams(Default::default()),
        )
        .await?;
        let projects = member_projects(state, &session).await?;
        Ok::<_, ApiError>((endpoint, list.deliveries, projects))
    };
    let (endpoint, deliveries, projects) = match loaded.await {
        Ok(loaded) => loaded,
        Err(err) => return error_page(&session, err),
    };
    let deliveries = deliveries
        .into_iter()
        .map(|d| DeliveryRow {
            id: d.id,
            event_type: d.event_type,
            result: match (d.last_status_code, d.last_error) {
                (Some(code), _) => format!(
                    "HTTP {code}{}",
                    d.last_latency_ms
                        .map(|ms| format!(" in {ms} ms"))
                        .unwrap_or_default()
                ),
                (None, Some(error)) => error,
                (None, None) => "—".into(),
            },
            status: d.status,
            attempts: d.attempts,
            next_attempt: when(d.next_attempt_at),
            created: when(Some(d.created_at)),
        })
        .collect();
    render(&WebhookPage {
        me: session.me(),
        me_csrf: session.csrf(),
        events: if endpoint.events.is_empty() {
            "every event".into()
        } else {
            endpoint.events.join(" ")
        },
        owner: owner_text(&endpoint, &projects),
        previous_until: endpoint.previous_secret_expires_at.map(|at| when(Some(at))),
        endpoint,
        deliveries,
        secret: shown.secret,
        message: shown.message,
    })
}

pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    PathId(id): PathId,
) -> Response {
    webhook_page(&state, session, id, Shown::default()).await
}

/// Pauses or resumes an endpoint (paused endpoints keep their deliveries pending).
pub async fn update(
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
    let patch = UpdateWebhookRequest {
        enabled: Some(enabled),
        ..Default::default()
    };
    match api::update_webhook(
        State(state.clone()),
        need,
        addr,
        PathId(id),
        JsonBody(patch),
    )
    .await
    {
        Ok(_) => {
            let message = if enabled {
                "Resumed: pending deliveries go out now."
            } else {
                "Paused: events wait until you resume it."
            };
            webhook_page(
                &state,
                session,
                id,
                Shown {
                    message: Some(message.into()),
                    ..Default::default()
                },
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    match api::delete_webhook(State(state.clone()), need, addr, PathId(id)).await {
        Ok(_) => Redirect::to("/ui/webhooks").into_response(),
        Err(err) => error_page(&session, err),
    }
}

pub async fn reveal_secret(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    match api::reveal_secret(State(state.clone()), need, addr, PathId(id)).await {
        Ok(axum::Json(shown)) => {
            webhook_page(
                &state,
                session,
                id,
                Shown {
                    secret: Some(shown.secret),
                    message: None,
                },
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}

#[derive(serde::Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    overlap_seconds: String,
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    addr: ClientAddr,
    PathId(id): PathId,
    Posted { session, form }: Posted<RotateForm>,
) -> Response {
    let Ok(overlap_seconds) = form.overlap_seconds.trim().parse::<u64>() else {
        return error_page(
            &session,
            ApiError::invalid("Choose how long the old secret keeps signing."),
        );
    };
    let need = need_or_return!(session);
    let request = RotateSecretRequest {
        overlap_seconds: Some(overlap_seconds),
    };
    match api::rotate_secret(
        State(state.clone()),
        need,
        addr,
        PathId(id),
        JsonBody(request),
    )
    .await
    {
        Ok(axum::Json(rotated)) => {
            let message = match rotated.previous_secret_expires_at {
                Some(at) => format!(
                    "New secret made; the old one also signs until {} UTC.",
                    when(Some(at))
                ),
                None => "New secret made; the old one no longer signs.".into(),
            };
            webhook_page(
                &state,
                session,
                id,
                Shown {
                    secret: Some(rotated.secret),
                    message: Some(message),
                },
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}

pub async fn send_test(
    State(state): State<AppState>,
    PathId(id): PathId,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    match api::send_test(State(state.clone()), need, PathId(id)).await {
        Ok(_) => {
            webhook_page(
                &state,
                session,
                id,
                Shown {
                    message: Some("A webhook.test event is on its way.".into()),
                    ..Default::default()
                },
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}

pub async fn retry(
    State(state): State<AppState>,
    Path((id, delivery)): Path<(Uuid, Uuid)>,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    let retried = api::retry_delivery(
        State(state.clone()),
        need,
        Path((id.to_string(), delivery.to_string())),
    )
    .await;
    match retried {
        Ok(_) => {
            webhook_page(
                &state,
                session,
                id,
                Shown {
                    message: Some("The delivery is due again now.".into()),
                    ..Default::default()
                },
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}
