//! `GET /{tenant}/controller/v1/{controllerId}`: the poll. Tells the device how long to sleep and what to look at:
//! at most one action link (consent, cancel or deployment), the last installed action, and `configData` when the
//! server wants the device's attributes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::auth::{Known, Register, authenticate_as};
use super::controller_url;
use super::json::{BaseLinks, Config, ControllerBase, Link, Polling};
use crate::AppState;
use crate::config::ddi_sleep;
use crate::db::{Db, now_ms};
use crate::devices::{self, Identity};
use crate::error::HttpResult;
use crate::hints;
use crate::model::{ActionKind, ActionState, RolloutState, Speed, Window};

/// Everything a poll is answered from, read with the device's identity in one query: the poll is the hot path of a
/// fleet (100,000 devices every 30 s is 3,333 polls a second), and each query costs more than the rest of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollView {
    /// The device.
    pub identity: Identity,
    /// Its open action, if any.
    pub open: Option<OpenAction>,
    /// Its last finished, installing action (the `installedBase`).
    pub installed: Option<i64>,
    /// Whether it belongs to a fast release under way (scheduled, running or waiting for an approval): then it is
    /// told to poll at the fast interval, so it learns of its group's start within seconds.
    pub fast: bool,
}

/// The open action as the poll sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAction {
    /// Its id.
    pub id: i64,
    /// Forced, soft or download-only.
    pub kind: ActionKind,
    /// Its state.
    pub state: ActionState,
    /// Its rollout's maintenance window, if any.
    pub window: Option<Window>,
}

impl Known for PollView {
    fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// Reads the [`PollView`] of the device with this controller id, if registered. At most one open action per
/// device (the oldest wins if a race made two, as in [`crate::actions::active_for`]).
pub async fn view(db: &Db, controller_id: &str) -> Result<Option<PollView>, sqlx::Error> {
    let r = sqlx::query(
        "SELECT d.id, d.controller_id, d.token_hash, d.last_seen_ms, d.attributes_ms, \
           a.id AS action_id, a.kind AS action_kind, a.state AS action_state, r.spec AS action_spec, \
           (SELECT MAX(f.id) FROM actions f WHERE f.device_id = d.id AND f.state = $2 AND f.kind <> $3) AS installed, \
           CAST(CASE WHEN EXISTS (SELECT 1 FROM rollout_members m JOIN rollouts q ON q.id = m.rollout_id \
                WHERE m.device_id = d.id AND q.speed = $4 AND q.state IN ($5, $6, $7)) THEN 1 ELSE 0 END AS BIGINT) AS fast \
         FROM devices d \
         LEFT JOIN actions a ON a.device_id = d.id AND a.active = 1 \
         LEFT JOIN rollouts r ON r.id = a.rollout_id \
         WHERE d.controller_id = $1 ORDER BY a.id LIMIT 1",
    )
    .bind(controller_id)
    .bind(ActionState::Finished.as_str())
    .bind(ActionKind::DownloadOnly.as_str())
    .bind(Speed::Fast.as_str())
    .bind(RolloutState::Scheduled.as_str())
    .bind(RolloutState::Running.as_str())
    .bind(RolloutState::WaitingApproval.as_str())
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = r else { return Ok(None) };
    let decode = |what: &str, v: &str| sqlx::Error::Decode(format!("{what} {v:?}").into());
    let open = match r.try_get::<Option<i64>, _>("action_id")? {
        None => None,
        Some(id) => {
            let kind: String = r.try_get("action_kind")?;
            let state: String = r.try_get("action_state")?;
            let spec: Option<String> = r.try_get("action_spec")?;
            Some(OpenAction {
                id,
                kind: ActionKind::parse(&kind).ok_or_else(|| decode("action kind", &kind))?,
                state: ActionState::parse(&state).ok_or_else(|| decode("action state", &state))?,
                window: spec.as_deref().and_then(hints::window_in),
            })
        }
    };
    Ok(Some(PollView {
        identity: devices::identity_from_row(&r)?,
        open,
        installed: r.try_get("installed")?,
        fast: r.try_get::<i64, _>("fast")? != 0,
    }))
}

/// The poll.
pub async fn base(
    State(state): State<AppState>,
    Path((tenant, controller_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<Json<ControllerBase>> {
    let view = authenticate_as(&state, &tenant, &controller_id, &headers, Register::IfAllowed, view).await?;
    let sleep = if view.fast { state.config.fast_poll } else { state.config.poll };
    let base = controller_url(&state, &view.identity.controller_id);
    let mut links = BaseLinks::default();
    if let Some(a) = &view.open {
        match a.state {
            ActionState::WaitConfirmation => {
                links.confirmation_base = Some(Link::to(format!("{base}/confirmationBase/{}", a.id)));
            }
            ActionState::Canceling => links.cancel_action = Some(Link::to(format!("{base}/cancelAction/{}", a.id))),
            ActionState::Running | ActionState::Downloaded => {
                let c = offer_tag(a.id, a.kind, a.window.map(|w| w.is_open(now_ms())));
                links.deployment_base = Some(Link::to(format!("{base}/deploymentBase/{}?c={c}", a.id)));
            }
            // Only open actions are read.
            ActionState::Canceled | ActionState::Finished | ActionState::Error => {}
        }
    }
    if let Some(id) = view.installed {
        links.installed_base = Some(Link::to(format!("{base}/installedBase/{id}")));
    }
    if view.identity.attributes_ms.is_none() {
        links.config_data = Some(Link::to(format!("{base}/configData")));
    }
    Ok(Json(ControllerBase { config: Config { polling: Polling { sleep: ddi_sleep(sleep) } }, links }))
}

/// The `c` of a deployment link: changes whenever what the action offers changes (its kind, soft to forced say,
/// or its maintenance window opening or closing), so a client that compares links sees a new offer and fetches the
/// deployment again. Stable otherwise, so a client caching by URL does not refetch on every poll.
pub fn offer_tag(action_id: i64, kind: ActionKind, window_open: Option<bool>) -> u32 {
    let kind = match kind {
        ActionKind::Forced => 1u8,
        ActionKind::Soft => 2,
        ActionKind::DownloadOnly => 3,
    };
    let window = match window_open {
        None => 0u8,
        Some(false) => 1,
        Some(true) => 2,
    };
    let mut h = Sha256::new();
    h.update(action_id.to_be_bytes());
    h.update([kind, window]);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_tag_changes_with_the_offer_only() {
        let t = offer_tag(5, ActionKind::Soft, None);
        assert_eq!(t, offer_tag(5, ActionKind::Soft, None));
        assert_ne!(t, offer_tag(5, ActionKind::Forced, None));
        assert_ne!(offer_tag(5, ActionKind::Soft, Some(false)), offer_tag(5, ActionKind::Soft, Some(true)));
        assert_ne!(t, offer_tag(6, ActionKind::Soft, None));
    }
}
