//! What the device API needs to know about rollouts when it answers a device: the maintenance window of its
//! action. Read from the database on each request, so every instance answers the same. (Whether a device is in a
//! fast release is read with the poll itself: [`crate::ddi::poll::view`].)

use sqlx::Row;

use crate::actions::Action;
use crate::db::Db;
use crate::model::{RolloutSpec, Window};

/// The maintenance window that applies to an action (its rollout's), if any.
pub async fn window_of(db: &Db, action: &Action) -> Result<Option<Window>, sqlx::Error> {
    let Some(rollout) = action.rollout_id else { return Ok(None) };
    let r = sqlx::query("SELECT spec FROM rollouts WHERE id = $1").bind(rollout).fetch_optional(&db.pool).await?;
    let Some(r) = r else { return Ok(None) };
    let spec: String = r.try_get("spec")?;
    Ok(window_in(&spec))
}

/// The maintenance window in a rollout's stored spec, if any.
pub fn window_in(spec: &str) -> Option<Window> {
    serde_json::from_str::<RolloutSpec>(spec).ok().and_then(|s| s.window)
}
