//! The device's reports: `deploymentBase/{id}/feedback`, `cancelAction/{id}/feedback` and
//! `confirmationBase/{id}/feedback`, and its standing consent (`confirmationBase/activateAutoConfirm`,
//! `deactivateAutoConfirm`). What each report does to the action is decided by pure functions
//! ([`on_deployment`], [`on_cancel`], [`on_confirmation`]) following hawkBit's semantics; the handlers apply the
//! decision with a compare-and-set ([`actions::transition`]), store the status in `action_status`, update the
//! device, and append an audit entry for every state change.
//!
//! Limits, as hawkBit's quotas: at most [`MAX_DETAILS`] details per status and [`MAX_STATUSES`] statuses per action
//! (a closing status is always accepted, so a device can finish an action whose history is full); over them the
//! answer is 429. A detail longer than [`MAX_DETAIL_BYTES`] is cut there (hawkBit splits long messages; the start of
//! a failure message is what an operator needs).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;

use super::auth::{Register, authenticate};
use super::json::{ActivateAutoConfirm, Confirmation, ConfirmationFeedback, Execution, Feedback, Finished};
use super::{own_action, read_json};
use crate::AppState;
use crate::actions::{self, Action};
use crate::artifacts;
use crate::devices::{self, Identity};
use crate::error::{HttpError, HttpResult};
use crate::model::{ActionKind, ActionState};

/// Details kept per status (hawkBit's `maxMessagesPerActionStatus`).
pub const MAX_DETAILS: usize = 50;
/// Bytes kept per detail (1 KiB).
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Statuses kept per action (hawkBit's `maxStatusEntriesPerAction`).
pub const MAX_STATUSES: i64 = 1000;

/// What a report does to its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Recorded in the history; the state stays.
    Record,
    /// Moves the action to `to` if it is in one of `from`.
    Move {
        /// States the move starts from.
        from: &'static [ActionState],
        /// The new state.
        to: ActionState,
    },
}

const OPEN: &[ActionState] = &[ActionState::Running, ActionState::Downloaded, ActionState::Canceling];

/// A deployment feedback (hawkBit `DdiRootController.generateUpdateStatus` + the repository's handling):
/// `closed` ends the action, `failure` as an error and anything else as finished; `downloaded` marks the download
/// done and, for a download-only action, ends it (hawkBit closes such an action on `downloaded`); `rejected`,
/// `canceled` and the progress words only go into the history (hawkBit records `rejected` as a warning and keeps
/// the action running).
pub fn on_deployment(kind: ActionKind, execution: Execution, finished: Finished) -> Decision {
    match (execution, finished) {
        (Execution::Closed, Finished::Failure) => Decision::Move { from: OPEN, to: ActionState::Error },
        (Execution::Closed, _) => Decision::Move { from: OPEN, to: ActionState::Finished },
        (Execution::Downloaded, _) if kind == ActionKind::DownloadOnly => {
            Decision::Move { from: &[ActionState::Running, ActionState::Downloaded], to: ActionState::Finished }
        }
        (Execution::Downloaded, _) => Decision::Move { from: &[ActionState::Running], to: ActionState::Downloaded },
        _ => Decision::Record,
    }
}

/// A cancel feedback (hawkBit `generateActionCancelStatus` + `addCancelActionStatus`): `closed` with success (or
/// no result) confirms the cancel; `rejected`, or `closed` with failure, refuses it and the action runs on; the
/// rest (`canceled` included, which hawkBit flags as a client mistake) goes into the history.
pub fn on_cancel(execution: Execution, finished: Finished) -> Decision {
    const CANCELING: &[ActionState] = &[ActionState::Canceling];
    match (execution, finished) {
        (Execution::Closed, Finished::Failure) | (Execution::Rejected, _) => {
            Decision::Move { from: CANCELING, to: ActionState::Running }
        }
        (Execution::Closed, _) => Decision::Move { from: CANCELING, to: ActionState::Canceled },
        _ => Decision::Record,
    }
}

/// A consent decision (hawkBit `ConfirmationManagement`): `confirmed` starts the action; `denied` is recorded
/// and the action keeps waiting (the device may change its mind; an operator may cancel).
pub fn on_confirmation(c: Confirmation) -> Decision {
    match c {
        Confirmation::Confirmed => Decision::Move { from: &[ActionState::WaitConfirmation], to: ActionState::Running },
        Confirmation::Denied => Decision::Record,
    }
}

/// Checks the details against the quota and cuts long ones.
fn bounded_details(details: Option<Vec<String>>) -> HttpResult<Vec<String>> {
    let details = details.unwrap_or_default();
    if details.len() > MAX_DETAILS {
        return Err(HttpError::Quota(format!(
            "{} details in one status; at most {MAX_DETAILS} are accepted",
            details.len()
        )));
    }
    Ok(details.into_iter().map(|d| cut(d, MAX_DETAIL_BYTES)).collect())
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Refuses a non-closing status once the action's history is full.
async fn check_status_quota(state: &AppState, action: &Action, closing: bool) -> HttpResult<()> {
    if !closing && actions::status_count(&state.db, action.id).await? >= MAX_STATUSES {
        return Err(HttpError::Quota(format!(
            "action {} has {MAX_STATUSES} statuses; only a closing status is accepted now",
            action.id
        )));
    }
    Ok(())
}

type Params = Path<(String, String, String)>;

/// `POST deploymentBase/{actionId}/feedback`.
pub async fn deployment(
    State(state): State<AppState>,
    Path((tenant, controller_id, action_id)): Params,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<()> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let action = own_action(&state, device.id, &action_id).await?;
    if action.state == ActionState::WaitConfirmation {
        return Err(HttpError::NotFound(format!("action {} waits for confirmation, not for feedback", action.id)));
    }
    if action.state.is_terminal() {
        return Err(gone(&action));
    }
    let f: Feedback = read_json(&headers, body).await?;
    let details = bounded_details(f.status.details)?;
    let (execution, finished) = (f.status.execution, f.status.result.finished);
    let decision = on_deployment(action.kind, execution, finished);
    check_status_quota(&state, &action, matches!(decision, Decision::Move { to, .. } if to.is_terminal())).await?;
    let record =
        Status { channel: "", execution: execution.as_str(), finished: finished.as_str(), code: f.status.code };
    apply(&state, &device, &action, decision, record, &details).await
}

/// `POST cancelAction/{actionId}/feedback`.
pub async fn cancel(
    State(state): State<AppState>,
    Path((tenant, controller_id, action_id)): Params,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<()> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let action = own_action(&state, device.id, &action_id).await?;
    if action.state.is_terminal() {
        return Err(gone(&action));
    }
    if action.state != ActionState::Canceling {
        return Err(HttpError::Conflict(format!("action {} is not being cancelled", action.id)));
    }
    let f: Feedback = read_json(&headers, body).await?;
    let details = bounded_details(f.status.details)?;
    let (execution, finished) = (f.status.execution, f.status.result.finished);
    let decision = on_cancel(execution, finished);
    check_status_quota(&state, &action, matches!(decision, Decision::Move { to, .. } if to.is_terminal())).await?;
    let record =
        Status { channel: "cancel-", execution: execution.as_str(), finished: finished.as_str(), code: f.status.code };
    apply(&state, &device, &action, decision, record, &details).await
}

/// `POST confirmationBase/{actionId}/feedback`.
pub async fn confirmation(
    State(state): State<AppState>,
    Path((tenant, controller_id, action_id)): Params,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<()> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let action = own_action(&state, device.id, &action_id).await?;
    if action.state.is_terminal() {
        return Err(gone(&action));
    }
    if action.state != ActionState::WaitConfirmation {
        return Err(HttpError::NotFound(format!("action {} does not wait for confirmation", action.id)));
    }
    let f: ConfirmationFeedback = read_json(&headers, body).await?;
    let details = bounded_details(f.details)?;
    check_status_quota(&state, &action, false).await?;
    let execution = match f.confirmation {
        Confirmation::Confirmed => "confirmed",
        Confirmation::Denied => "denied",
    };
    let record = Status { channel: "confirmation-", execution, finished: "none", code: f.code };
    if f.confirmation == Confirmation::Denied {
        tracing::info!("ddi: {} denied action {}", device.controller_id, action.id);
    }
    apply(&state, &device, &action, on_confirmation(f.confirmation), record, &details).await
}

/// Longest initiator or remark of an auto-confirmation kept (hawkBit's limit for both).
const MAX_AUTO_CONFIRM_TEXT: usize = 128;

/// `POST confirmationBase/activateAutoConfirm`: the device consents in advance. An action waiting for its consent
/// now runs (as in hawkBit), and later ones run without asking (`actions::create_in`).
pub async fn activate_auto_confirm(
    State(state): State<AppState>,
    Path((tenant, controller_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<()> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    let bytes = super::read_body(&headers, body).await?;
    let req: ActivateAutoConfirm = if bytes.iter().all(u8::is_ascii_whitespace) {
        ActivateAutoConfirm::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| HttpError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    let text = |t: Option<String>| t.map(|t| cut(t, MAX_AUTO_CONFIRM_TEXT)).filter(|t| !t.is_empty());
    let auto = devices::AutoConfirm {
        initiator: text(req.initiator),
        remark: text(req.remark),
        activated_ms: crate::db::now_ms(),
    };
    devices::set_auto_confirm(&state.db, &device, Some(&auto)).await?;
    if let Some(a) = actions::active_for(&state.db, device.id).await?
        && a.state == ActionState::WaitConfirmation
    {
        let record = Status { channel: "confirmation-", execution: "confirmed", finished: "none", code: None };
        apply(&state, &device, &a, on_confirmation(Confirmation::Confirmed), record, &[auto.describe()]).await?;
    }
    Ok(())
}

/// `POST confirmationBase/deactivateAutoConfirm`: later actions that ask for consent wait for it again.
pub async fn deactivate_auto_confirm(
    State(state): State<AppState>,
    Path((tenant, controller_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<()> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::Never).await?;
    devices::set_auto_confirm(&state.db, &device, None).await
}

fn gone(action: &Action) -> HttpError {
    HttpError::Gone(format!("action {} is {} and takes no more feedback", action.id, action.state.as_str()))
}

/// A status as it goes into `action_status`: `channel` prefixes the execution of cancel and consent reports.
struct Status<'a> {
    channel: &'static str,
    execution: &'a str,
    finished: &'a str,
    code: Option<i64>,
}

/// Applies a decision: the move (compare-and-set), the status, the device's reported state, the audit entry.
async fn apply(
    state: &AppState,
    device: &Identity,
    action: &Action,
    decision: Decision,
    status: Status<'_>,
    details: &[String],
) -> HttpResult<()> {
    let message = (!details.is_empty()).then(|| details.join("; "));
    let moved_to = match decision {
        Decision::Record => None,
        Decision::Move { from, to } => {
            let moved = actions::transition(&state.db, action.id, from, to, message.as_deref()).await?;
            if !moved {
                // Another report or a cancel won the race; answer from where the action is now.
                let now = actions::get(&state.db, action.id).await?.unwrap_or_else(|| action.clone());
                if now.state.is_terminal() {
                    return Err(gone(&now));
                }
                if now.state != to {
                    tracing::info!(
                        "ddi: action {} is {}; {}{} does not move it",
                        action.id,
                        now.state.as_str(),
                        status.channel,
                        status.execution
                    );
                }
            }
            moved.then_some(to)
        }
    };
    let execution = format!("{}{}", status.channel, status.execution);
    actions::add_status(&state.db, action.id, &execution, status.finished, status.code, details).await?;
    if moved_to.is_none()
        && let Some(m) = &message
    {
        actions::set_message(&state.db, action.id, m).await?;
    }
    let Some(to) = moved_to else { return Ok(()) };
    let artifact = artifacts::get(&state.db, action.artifact_id).await?;
    match to {
        ActionState::Finished if action.kind != ActionKind::DownloadOnly || status.execution == "closed" => {
            devices::set_reported(&state.db, device.id, "in-sync", Some(&artifact.version)).await?;
            // As hawkBit: after an install, ask for the attributes again (versions and slots changed).
            devices::request_attributes(&state.db, device.id).await?;
        }
        ActionState::Error => devices::set_reported(&state.db, device.id, "error", None).await?,
        _ => {}
    }
    crate::audit::append(
        &state.db,
        &format!("device:{}", device.controller_id),
        &format!("action.{}", to.as_str()),
        &format!("device:{}", device.controller_id),
        serde_json::json!({
            "action": action.id,
            "from": action.state.as_str(),
            "report": execution,
            "finished": status.finished,
            "artifact": {"sha256": artifact.sha256, "version": artifact.version},
            "message": message,
        }),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_feedback_follows_hawkbit() {
        use ActionState::{Downloaded, Error};
        let to = |k, e, f| match on_deployment(k, e, f) {
            Decision::Move { to, .. } => Some(to),
            Decision::Record => None,
        };
        assert_eq!(to(ActionKind::Soft, Execution::Closed, Finished::Success), Some(ActionState::Finished));
        assert_eq!(to(ActionKind::Soft, Execution::Closed, Finished::None), Some(ActionState::Finished));
        assert_eq!(to(ActionKind::Soft, Execution::Closed, Finished::Failure), Some(Error));
        assert_eq!(to(ActionKind::Forced, Execution::Downloaded, Finished::None), Some(Downloaded));
        assert_eq!(to(ActionKind::DownloadOnly, Execution::Downloaded, Finished::None), Some(ActionState::Finished));
        for e in [
            Execution::Proceeding,
            Execution::Rejected,
            Execution::Canceled,
            Execution::Scheduled,
            Execution::Resumed,
            Execution::Download,
        ] {
            assert_eq!(to(ActionKind::Soft, e, Finished::None), None, "{e:?}");
        }
    }

    #[test]
    fn cancel_and_confirmation_feedback_follow_hawkbit() {
        assert_eq!(
            on_cancel(Execution::Closed, Finished::Success),
            Decision::Move { from: &[ActionState::Canceling], to: ActionState::Canceled }
        );
        assert_eq!(
            on_cancel(Execution::Rejected, Finished::None),
            Decision::Move { from: &[ActionState::Canceling], to: ActionState::Running }
        );
        assert_eq!(
            on_cancel(Execution::Closed, Finished::Failure),
            Decision::Move { from: &[ActionState::Canceling], to: ActionState::Running }
        );
        assert_eq!(on_cancel(Execution::Canceled, Finished::None), Decision::Record);
        assert_eq!(on_cancel(Execution::Proceeding, Finished::None), Decision::Record);
        assert_eq!(on_confirmation(Confirmation::Denied), Decision::Record);
        assert!(matches!(on_confirmation(Confirmation::Confirmed), Decision::Move { to: ActionState::Running, .. }));
    }

    #[test]
    fn details_are_bounded() {
        assert!(bounded_details(Some(vec!["x".into(); MAX_DETAILS + 1])).is_err());
        let long = "é".repeat(MAX_DETAIL_BYTES);
        let d = bounded_details(Some(vec![long])).unwrap();
        assert!(d[0].len() <= MAX_DETAIL_BYTES && d[0].chars().all(|c| c == 'é'));
        assert_eq!(bounded_details(None).unwrap(), Vec::<String>::new());
    }
}
