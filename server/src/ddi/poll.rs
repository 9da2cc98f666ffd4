//! `GET /{tenant}/controller/v1/{controllerId}`: the poll. Tells the device how long to sleep and what to look at:
//! at most one action link (consent, cancel or deployment), the last installed action, and `configData` when the
//! server wants the device's attributes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::auth::{Register, authenticate};
use super::controller_url;
use super::json::{BaseLinks, Config, ControllerBase, Link, Polling};
use crate::AppState;
use crate::actions::{self, Action};
use crate::config::ddi_sleep;
use crate::db::now_ms;
use crate::error::HttpResult;
use crate::hints;
use crate::model::{ActionKind, ActionState};

/// The poll.
pub async fn base(
    State(state): State<AppState>,
    Path((tenant, controller_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> HttpResult<Json<ControllerBase>> {
    let device = authenticate(&state, &tenant, &controller_id, &headers, Register::IfAllowed).await?;
    let fast = hints::in_fast_release(&state.db, device.id).await?;
    let sleep = if fast { state.config.fast_poll } else { state.config.poll };
    let base = controller_url(&state, &device.controller_id);
    let mut links = BaseLinks::default();
    if let Some(a) = actions::active_for(&state.db, device.id).await? {
        match a.state {
            ActionState::WaitConfirmation => {
                links.confirmation_base = Some(Link::to(format!("{base}/confirmationBase/{}", a.id)));
            }
            ActionState::Canceling => links.cancel_action = Some(Link::to(format!("{base}/cancelAction/{}", a.id))),
            ActionState::Running | ActionState::Downloaded => {
                let window_open = hints::window_of(&state.db, &a).await?.map(|w| w.is_open(now_ms()));
                let c = offer_tag(&a, window_open);
                links.deployment_base = Some(Link::to(format!("{base}/deploymentBase/{}?c={c}", a.id)));
            }
            // `active_for` returns open actions only.
            ActionState::Canceled | ActionState::Finished | ActionState::Error => {}
        }
    }
    if let Some(a) = actions::last_finished(&state.db, device.id).await? {
        links.installed_base = Some(Link::to(format!("{base}/installedBase/{}", a.id)));
    }
    if device.attributes_ms.is_none() {
        links.config_data = Some(Link::to(format!("{base}/configData")));
    }
    Ok(Json(ControllerBase { config: Config { polling: Polling { sleep: ddi_sleep(sleep) } }, links }))
}

/// The `c` of a deployment link: changes whenever what the action offers changes (its kind, soft to forced say,
/// or its maintenance window opening or closing), so a client that compares links sees a new offer and fetches the
/// deployment again. Stable otherwise, so a client caching by URL does not refetch on every poll.
pub fn offer_tag(a: &Action, window_open: Option<bool>) -> u32 {
    let kind = match a.kind {
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
    h.update(a.id.to_be_bytes());
    h.update([kind, window]);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_tag_changes_with_the_offer_only() {
        let a = Action {
            id: 5,
            device_id: 1,
            rollout_id: None,
            group_idx: None,
            artifact_id: 1,
            kind: ActionKind::Soft,
            state: ActionState::Running,
            created_ms: 0,
            updated_ms: 0,
            last_message: None,
        };
        let t = offer_tag(&a, None);
        assert_eq!(t, offer_tag(&Action { state: ActionState::Downloaded, updated_ms: 9, ..a.clone() }, None));
        assert_ne!(t, offer_tag(&Action { kind: ActionKind::Forced, ..a.clone() }, None));
        assert_ne!(offer_tag(&a, Some(false)), offer_tag(&a, Some(true)));
        assert_ne!(t, offer_tag(&Action { id: 6, ..a }, None));
    }
}
