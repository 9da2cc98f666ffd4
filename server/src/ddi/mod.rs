//! hawkBit's Direct Device Integration API, served to devices (otterd, RAUC's rauc-hawkbit-updater, SWUpdate's
//! suricatta, any DDI client), plus the signed artifact downloads and device enrollment.
//!
//! - [`auth`]: TargetToken, GatewayToken, client certificate through a trusted proxy; auto-registration.
//! - [`poll`]: the controller base (`sleep` and the links).
//! - [`deployment`]: `deploymentBase`, `installedBase`, `confirmationBase`, `cancelAction` documents.
//! - [`feedback`]: the device's reports, driving actions through their states.
//! - [`config_data`]: inventory attributes.
//! - [`download`]: artifact downloads by signed link, with ranges.
//! - [`enroll`]: a new device trades a provisioning token for its own target token.
//! - [`json`]: the documents, typed.
//!
//! Paths follow hawkBit: `/{tenant}/controller/v1/{controllerId}/…`; ids in links are absolute URLs built from
//! `--public-url`, so a device follows them as given.

pub mod auth;
pub mod config_data;
pub mod deployment;
pub mod download;
pub mod enroll;
pub mod feedback;
pub mod json;
pub mod poll;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::actions::{self, Action};
use crate::error::{HttpError, HttpResult};
use crate::links::url_escape;
use crate::model::ActionState;

/// The largest request body a device may send (64 KiB): a feedback with 50 details of 1 KiB fits, with room.
pub const MAX_BODY: usize = 64 << 10;

/// The device API and the artifact downloads, to be merged into the application's router.
pub fn router(state: AppState) -> Router {
    const C: &str = "/{tenant}/controller/v1/{controller_id}";
    Router::new()
        .route(C, get(poll::base))
        .route(&format!("{C}/deploymentBase/{{action_id}}"), get(deployment::deployment_base))
        .route(&format!("{C}/deploymentBase/{{action_id}}/feedback"), post(feedback::deployment))
        .route(&format!("{C}/installedBase/{{action_id}}"), get(deployment::installed_base))
        .route(&format!("{C}/cancelAction/{{action_id}}"), get(deployment::cancel_action))
        .route(&format!("{C}/cancelAction/{{action_id}}/feedback"), post(feedback::cancel))
        .route(&format!("{C}/confirmationBase"), get(deployment::confirmation_base))
        .route(&format!("{C}/confirmationBase/activateAutoConfirm"), post(feedback::activate_auto_confirm))
        .route(&format!("{C}/confirmationBase/deactivateAutoConfirm"), post(feedback::deactivate_auto_confirm))
        .route(&format!("{C}/confirmationBase/{{action_id}}"), get(deployment::confirmation_action))
        .route(&format!("{C}/confirmationBase/{{action_id}}/feedback"), post(feedback::confirmation))
        .route(&format!("{C}/configData"), put(config_data::put))
        .route(&format!("{C}/enroll"), post(enroll::enroll))
        .route("/artifacts/{sha256}/{filename}", get(download::get))
        .with_state(state)
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes: 413 above it, 400 with the parser's message when malformed.
pub async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> HttpResult<T> {
    let bytes = read_body(headers, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| HttpError::BadRequest(format!("malformed JSON body: {e}")))
}

/// Reads a body of at most [`MAX_BODY`] bytes.
pub async fn read_body(headers: &HeaderMap, body: Body) -> HttpResult<Bytes> {
    let too_large = || HttpError::TooLarge(format!("request body larger than {MAX_BODY} bytes"));
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    // Without a length (chunked), the limit is enforced while reading.
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| too_large())
}

/// `{public_url}/{tenant}/controller/v1/{controllerId}`.
pub fn controller_url(state: &AppState, controller_id: &str) -> String {
    format!(
        "{}/{}/controller/v1/{}",
        state.config.public_url,
        url_escape(&state.config.tenant),
        url_escape(controller_id)
    )
}

/// Parses an action id from a path (anything but a positive integer is no action: 404).
pub fn parse_action_id(s: &str) -> HttpResult<i64> {
    s.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| HttpError::NotFound(format!("no action {s:?}")))
}

/// The action `id` if it is this device's (another device's action is as unknown as a missing one: 404).
pub async fn own_action(state: &AppState, device_id: i64, id: &str) -> HttpResult<Action> {
    let id = parse_action_id(id)?;
    match actions::get(&state.db, id).await? {
        Some(a) if a.device_id == device_id => Ok(a),
        _ => Err(HttpError::NotFound(format!("no action {id} for this controller"))),
    }
}

/// An action's state in hawkBit's words, for `actionHistory.status`.
pub fn hawkbit_status(s: ActionState) -> &'static str {
    match s {
        ActionState::WaitConfirmation => "WAIT_FOR_CONFIRMATION",
        ActionState::Running => "RUNNING",
        ActionState::Downloaded => "DOWNLOADED",
        ActionState::Canceling => "CANCELING",
        ActionState::Canceled => "CANCELED",
        ActionState::Finished => "FINISHED",
        ActionState::Error => "ERROR",
    }
}
