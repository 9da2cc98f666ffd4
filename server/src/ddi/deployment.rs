//! The action documents a device reads: `deploymentBase/{id}` (its open action), `installedBase/{id}` (a
//! finished one), `confirmationBase[/{id}]` (an action waiting for consent) and `cancelAction/{id}`.
//!
//! A deployment names one chunk, part `os`, with the artifact's version, its three hashes and a download link
//! signed for this device that expires after `--link-ttl`; a device whose link expired reads the deployment again
//! for a fresh one.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;

use super::auth::{Register, authenticate};
use super::json::{
    ActionHistory, Artifact as DdiArtifact, ArtifactLinks, AutoConfirm, Cancel, CancelActionToStop, Chunk,
    ConfirmationBase, ConfirmationBaseAction, ConfirmationLinks, Deployment, DeploymentBase, Handling, Hashes, Link,
    MaintenanceWindow,
};
use super::{controller_url, hawkbit_status, own_action};
use crate::AppState;
use crate::actions::{self, Action};
use crate::artifacts;
use crate::db::now_ms;
use crate::devices::{self, Identity};
use crate::error::{HttpError, HttpResult};
use crate::hints;
use crate::links::{Grant, url_escape};
use crate::model::{ActionKind, ActionState};

/// The software-module part every DDI client here looks for.
pub const PART: &str = "os";
/// `?actionHistory=-1` (all) still reads at most this many statuses: the per-action quota.
const HISTORY_MAX: i64 = 1000;

type Params = Path<(String, String, String)>;

/// `GET deploymentBase/{actionId}`: the device's open action (running or downloaded), else 404.
pub async fn deployment_base(
    State(state): State<AppState>,
    Path((tenant, controller_id, action_id)): Params,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> HttpResult<Json<DeploymentBase>> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let history = history_param(query.as_deref())?;
    let action = own_action(&state, device.id, &action_id).await?;
    if !matches!(action.state, ActionState::Running | ActionState::Downloaded) {
        return Err(HttpError::NotFound(format!("action {} is not an open deployment", action.id)));
    }
    let deployment = deployment(&state, &device, &action).await?;
    let action_history = action_history(&state, &action, history).await?;
    Ok(Json(DeploymentBase { id: action.id.to_string(), deployment, action_history }))
}

/// `GET installedBase/{actionId}`: a finished action of the device, else 404.
pub async fn installed_base(
    State(state): State<AppState>,
    Path((tenant, controller_id, action_id)): Params,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> HttpResult<Json<DeploymentBase>> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let history = history_param(query.as_deref())?;
    let action = own_action(&state, device.id, &action_id).await?;
    if action.state != ActionState::Finished {
        return Err(HttpError::NotFound(format!("action {} is not installed", action.id)));
    }
    let deployment = deployment(&state, &device, &action).await?;
    let action_history = action_history(&state, &action, history).await?;
    Ok(Json(DeploymentBase { id: action.id.to_string(), deployment, action_history }))
}

/// `GET confirmationBase`: whether an action waits for the device's consent.
pub async fn confirmation_base(
    State(state): State<AppState>,
    Path((tenant, controller_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<Json<ConfirmationBase>> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let base = controller_url(&state, &device.controller_id);
    let mut links = ConfirmationLinks::default();
    if let Some(a) = actions::active_for(&state.db, device.id).await?
        && a.state == ActionState::WaitConfirmation
    {
        links.confirmation_base = Some(Link::to(format!("{base}/confirmationBase/{}", a.id)));
    }
    let auto = devices::auto_confirm(&state.db, device.id).await?;
    let auto_confirm = match auto {
        Some(a) => {
            links.deactivate_auto_confirm = Some(Link::to(format!("{base}/confirmationBase/deactivateAutoConfirm")));
            AutoConfirm { active: true, initiator: a.initiator, remark: a.remark, activated_at: Some(a.activated_ms) }
        }
        None => {
            links.activate_auto_confirm = Some(Link::to(format!("{base}/confirmationBase/activateAutoConfirm")));
            AutoConfirm { active: false, initiator: None, remark: None, activated_at: None }
        }
    };
    Ok(Json(ConfirmationBase { auto_confirm, links }))
}

/// `GET confirmationBase/{actionId}`: the deployment the device is asked to consent to.
pub async fn confirmation_action(
    State(state): State<AppState>,
    Path((tenant, controller_id, action_id)): Params,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> HttpResult<Json<ConfirmationBaseAction>> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let history = history_param(query.as_deref())?;
    let action = own_action(&state, device.id, &action_id).await?;
    if action.state != ActionState::WaitConfirmation {
        return Err(HttpError::NotFound(format!("action {} does not wait for confirmation", action.id)));
    }
    let confirmation = deployment(&state, &device, &action).await?;
    let action_history = action_history(&state, &action, history).await?;
    Ok(Json(ConfirmationBaseAction { id: action.id.to_string(), confirmation, action_history }))
}

/// `GET cancelAction/{actionId}`: the action being cancelled.
pub async fn cancel_action(
    State(state): State<AppState>,
    Path((tenant, controller_id, action_id)): Params,
    headers: HeaderMap,
) -> HttpResult<Json<Cancel>> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let action = own_action(&state, device.id, &action_id).await?;
    if action.state != ActionState::Canceling {
        return Err(HttpError::NotFound(format!("action {} is not being cancelled", action.id)));
    }
    let id = action.id.to_string();
    Ok(Json(Cancel { id: id.clone(), cancel_action: CancelActionToStop { stop_id: id } }))
}

/// DDI `download`/`update` for an action: forced → forced/forced, soft → attempt/attempt, download-only →
/// forced/skip; a closed maintenance window makes `update` skip (download now, install when it opens).
pub fn handling(kind: ActionKind, window_open: Option<bool>) -> (Handling, Handling, Option<MaintenanceWindow>) {
    let (download, update) = match kind {
        ActionKind::Forced => (Handling::Forced, Handling::Forced),
        ActionKind::Soft => (Handling::Attempt, Handling::Attempt),
        ActionKind::DownloadOnly => (Handling::Forced, Handling::Skip),
    };
    match window_open {
        None => (download, update, None),
        Some(true) => (download, update, Some(MaintenanceWindow::Available)),
        Some(false) => (download, Handling::Skip, Some(MaintenanceWindow::Unavailable)),
    }
}

/// The `deployment` of an action, with a freshly signed download link.
async fn deployment(state: &AppState, device: &Identity, action: &Action) -> HttpResult<Deployment> {
    let artifact = artifacts::get(&state.db, action.artifact_id).await?;
    let window_open = hints::window_of(&state.db, action).await?.map(|w| w.is_open(now_ms()));
    let (download, update, maintenance_window) = handling(action.kind, window_open);
    let expires = (now_ms() / 1000).max(0) as u64 + state.config.link_ttl.as_secs();
    let grant = Grant { sha256: artifact.sha256.clone(), device: device.controller_id.clone(), expires };
    let href = format!(
        "{}/artifacts/{}/{}?{}",
        state.config.public_url,
        artifact.sha256,
        url_escape(&artifact.filename),
        state.links.query(&grant)
    );
    let name = artifact.filename.strip_suffix(".otter").unwrap_or(&artifact.filename).to_owned();
    Ok(Deployment {
        download,
        update,
        maintenance_window,
        chunks: vec![Chunk {
            part: PART.into(),
            version: artifact.version.clone(),
            name,
            artifacts: vec![DdiArtifact {
                filename: artifact.filename.clone(),
                hashes: Hashes { sha1: artifact.sha1, md5: artifact.md5, sha256: artifact.sha256 },
                size: artifact.size.max(0) as u64,
                links: ArtifactLinks { download: Link::to(href.clone()), download_http: Link::to(href) },
            }],
        }],
    })
}

/// `?actionHistory=N` (hawkBit): N > 0 the newest N messages, N < 0 all of them, absent or 0 none. Other query
/// parameters (`c`) are ignored.
pub fn history_param(query: Option<&str>) -> HttpResult<i64> {
    let Some(q) = query else { return Ok(0) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("actionHistory=") {
            return v
                .parse::<i64>()
                .map_err(|_| HttpError::BadRequest(format!("actionHistory={v:?}: expected an integer")));
        }
    }
    Ok(0)
}

async fn action_history(state: &AppState, action: &Action, n: i64) -> HttpResult<Option<ActionHistory>> {
    if n == 0 {
        return Ok(None);
    }
    let limit = if n < 0 { HISTORY_MAX } else { n.min(HISTORY_MAX) };
    let mut messages = Vec::new();
    for s in actions::statuses(&state.db, action.id, limit).await? {
        if s.details.is_empty() {
            messages.push(format!("Device reported {} ({})", s.execution, s.finished));
        }
        messages.extend(s.details);
        if let Some(code) = s.code {
            messages.push(format!("Device reported status code: {code}"));
        }
    }
    if n > 0 && messages.len() > n as usize {
        messages.drain(..messages.len() - n as usize);
    }
    Ok((!messages.is_empty()).then(|| ActionHistory { status: hawkbit_status(action.state).to_owned(), messages }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handling_follows_the_kind_and_the_window() {
        use Handling::*;
        assert_eq!(handling(ActionKind::Forced, None), (Forced, Forced, None));
        assert_eq!(handling(ActionKind::Soft, None), (Attempt, Attempt, None));
        assert_eq!(handling(ActionKind::DownloadOnly, None), (Forced, Skip, None));
        assert_eq!(handling(ActionKind::Soft, Some(true)), (Attempt, Attempt, Some(MaintenanceWindow::Available)));
        assert_eq!(handling(ActionKind::Forced, Some(false)), (Forced, Skip, Some(MaintenanceWindow::Unavailable)));
    }

    #[test]
    fn the_history_parameter() {
        assert_eq!(history_param(None).unwrap(), 0);
        assert_eq!(history_param(Some("c=123")).unwrap(), 0);
        assert_eq!(history_param(Some("c=1&actionHistory=5")).unwrap(), 5);
        assert_eq!(history_param(Some("actionHistory=-1")).unwrap(), -1);
        assert!(history_param(Some("actionHistory=lots")).is_err());
    }
}
