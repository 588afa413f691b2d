//! Settings › API: the global key (masked, revealed, regenerated) and the instance's
//! switches.

use super::{Me, NoFields, Posted, Session, admin_only, error_page, render, with_status};
use crate::AppState;
use crate::http::extract::{ClientAddr, JsonBody, QueryParams};
use crate::http::system;
use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

#[derive(Template)]
#[template(path = "ui/settings.html")]
struct SettingsPage {
    me: Option<Me>,
    me_csrf: String,
    global_key: String,
    revealed: bool,
    api_access_enabled: bool,
    query_param_enabled: bool,
    keys_per_user: String,
    keys_per_user_error: Option<String>,
    message: Option<String>,
}

async fn settings_page(
    state: &AppState,
    session: Session,
    addr: ClientAddr,
    reveal: bool,
    message: Option<String>,
    keys_per_user_error: Option<String>,
) -> Response {
    if let Some(refused) = admin_only(&session) {
        return refused;
    }
    let need = need_or_return!(session);
    let shown = system::get_global_key(
        State(state.clone()),
        need,
        addr,
        QueryParams(system::RevealParams::new(reveal)),
    )
    .await;
    let global_key = match shown {
        Ok(axum::Json(view)) => view.key,
        Err(err) => return error_page(&session, err),
    };
    let settings = state.engine.settings();
    render(&SettingsPage {
        me: session.me(),
        me_csrf: session.csrf(),
        global_key,
        revealed: reveal,
        api_access_enabled: settings.api_access_enabled,
        query_param_enabled: settings.query_param_enabled,
        keys_per_user: settings
            .keys_per_user
            .map(|n| n.to_string())
            .unwrap_or_default(),
        keys_per_user_error,
        message,
    })
}

#[derive(serde::Deserialize)]
pub struct SettingsQuery {
    #[serde(default)]
    reveal: Option<bool>,
}

pub async fn page(
    State(state): State<AppState>,
    session: Session,
    addr: ClientAddr,
    QueryParams(query): QueryParams<SettingsQuery>,
) -> Response {
    settings_page(
        &state,
        session,
        addr,
        query.reveal.unwrap_or(false),
        None,
        None,
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct SettingsForm {
    #[serde(default)]
    api_access_enabled: Option<String>,
    #[serde(default)]
    query_param_enabled: Option<String>,
    #[serde(default)]
    keys_per_user: String,
}

pub async fn save(
    State(state): State<AppState>,
    addr: ClientAddr,
    Posted { session, form }: Posted<SettingsForm>,
) -> Response {
    let keys_per_user = match form.keys_per_user.trim() {
        "" => None,
        text => match text.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return with_status(
                    settings_page(
                        &state,
                        session,
                        addr,
                        false,
                        None,
                        Some("Enter a whole number of at least 1, or leave it empty.".into()),
                    )
                    .await,
                    StatusCode::BAD_REQUEST,
                );
            }
        },
    };
    let need = need_or_return!(session);
    let patch = keygate_api::system::SettingsPatch {
        api_access_enabled: Some(form.api_access_enabled.is_some()),
        query_param_enabled: Some(form.query_param_enabled.is_some()),
        keys_per_user: Some(keys_per_user),
    };
    let page_addr = ClientAddr(addr.0);
    let message =
        match system::patch_settings(State(state.clone()), need, addr, JsonBody(patch)).await {
            Ok(_) => "Settings saved.".to_string(),
            Err(err) => err.message.to_string(),
        };
    settings_page(&state, session, page_addr, false, Some(message), None).await
}

pub async fn regenerate(
    State(state): State<AppState>,
    addr: ClientAddr,
    Posted { session, .. }: Posted<NoFields>,
) -> Response {
    let need = need_or_return!(session);
    let page_addr = ClientAddr(addr.0);
    match system::regenerate_global_key(State(state.clone()), need, addr).await {
        Ok(_) => {
            settings_page(
                &state,
                session,
                page_addr,
                true,
                Some("A new global key was made; the old one no longer works.".into()),
                None,
            )
            .await
        }
        Err(err) => error_page(&session, err),
    }
}
