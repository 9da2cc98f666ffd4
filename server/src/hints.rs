//! What the device API needs to know about rollouts when it answers a device: whether the device is in a running
//! fast release (poll sooner) and the maintenance window of its action. Read from the database on each request,
//! so every instance answers the same.

use sqlx::Row;

use crate::actions::Action;
use crate::db::Db;
use crate::model::{RolloutSpec, RolloutState, Speed, Window};

/// Whether the device belongs to a fast release that is still under way (scheduled, running, waiting for an
/// approval): then it is told to poll at the fast interval, so it learns of its group's start within seconds.
pub async fn in_fast_release(db: &Db, device_id: i64) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT r.spec FROM rollouts r JOIN rollout_members m ON m.rollout_id = r.id \
         WHERE m.device_id = $1 AND r.state IN ($2, $3, $4)",
    )
    .bind(device_id)
    .bind(RolloutState::Scheduled.as_str())
    .bind(RolloutState::Running.as_str())
    .bind(RolloutState::WaitingApproval.as_str())
    .fetch_all(&db.pool)
    .await?;
    for r in rows {
        let spec: String = r.try_get("spec")?;
        if serde_json::from_str::<RolloutSpec>(&spec).is_ok_and(|s| s.speed == Speed::Fast) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The maintenance window that applies to an action (its rollout's), if any.
pub async fn window_of(db: &Db, action: &Action) -> Result<Option<Window>, sqlx::Error> {
    let Some(rollout) = action.rollout_id else { return Ok(None) };
    let r = sqlx::query("SELECT spec FROM rollouts WHERE id = $1").bind(rollout).fetch_optional(&db.pool).await?;
    let Some(r) = r else { return Ok(None) };
    let spec: String = r.try_get("spec")?;
    Ok(serde_json::from_str::<RolloutSpec>(&spec).ok().and_then(|s| s.window))
}
