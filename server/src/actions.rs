//! Actions: one deployment of one artifact to one device (hawkBit's action), created by a rollout group or
//! directly by an operator, and driven to a terminal state by the device's feedback or a cancel.

use serde::Serialize;
use sqlx::Row;

use crate::db::{Db, now_ms};
use crate::error::{HttpError, HttpResult};
use crate::model::{ActionKind, ActionState};

/// An action as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// Id (the DDI action id).
    pub id: i64,
    /// The device's row id.
    pub device_id: i64,
    /// The rollout it belongs to, if any.
    pub rollout_id: Option<i64>,
    /// The rollout group, if any.
    pub group_idx: Option<i64>,
    /// The artifact.
    pub artifact_id: i64,
    /// Forced, soft, download-only.
    pub kind: ActionKind,
    /// Where it stands.
    pub state: ActionState,
    /// Created (ms).
    pub created_ms: i64,
    /// Last change (ms).
    pub updated_ms: i64,
    /// The device's last message (details of its last feedback).
    pub last_message: Option<String>,
}

/// Builds an action from its row.
pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Action, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    let state: String = r.try_get("state")?;
    Ok(Action {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        rollout_id: r.try_get("rollout_id")?,
        group_idx: r.try_get("group_idx")?,
        artifact_id: r.try_get("artifact_id")?,
        kind: ActionKind::parse(&kind).ok_or_else(|| sqlx::Error::Decode(format!("action kind {kind:?}").into()))?,
        state: ActionState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("action state {state:?}").into()))?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        last_message: r.try_get("last_message")?,
    })
}

/// The device's open action (at most one: the oldest wins if a race made two).
pub async fn active_for(db: &Db, device_id: i64) -> Result<Option<Action>, sqlx::Error> {
    active_for_in(&mut *db.pool.acquire().await?, device_id).await
}

/// [`active_for`] on a connection (or inside a transaction: `&mut *tx`).
pub async fn active_for_in(conn: &mut sqlx::AnyConnection, device_id: i64) -> Result<Option<Action>, sqlx::Error> {
    let r = sqlx::query("SELECT * FROM actions WHERE device_id = $1 AND active = 1 ORDER BY id LIMIT 1")
        .bind(device_id)
        .fetch_optional(&mut *conn)
        .await?;
    r.as_ref().map(from_row).transpose()
}

/// The action with this id.
pub async fn get(db: &Db, id: i64) -> Result<Option<Action>, sqlx::Error> {
    let r = sqlx::query("SELECT * FROM actions WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    r.as_ref().map(from_row).transpose()
}

/// Creates an action for a device. Refuses (409) when the device already has an open action: one deployment at a
/// time, as a device can only install one thing at a time.
pub async fn create(
    db: &Db,
    device_id: i64,
    artifact_id: i64,
    kind: ActionKind,
    rollout: Option<(i64, i64)>,
    confirmation_required: bool,
) -> HttpResult<i64> {
    create_in(&mut *db.pool.acquire().await?, device_id, artifact_id, kind, rollout, confirmation_required).await
}

/// [`create`] on a connection, so a rollout creates its group's actions in the transaction that starts the group
/// (two scheduler instances cannot both start it, and a crash leaves all of it or none).
pub async fn create_in(
    conn: &mut sqlx::AnyConnection,
    device_id: i64,
    artifact_id: i64,
    kind: ActionKind,
    rollout: Option<(i64, i64)>,
    confirmation_required: bool,
) -> HttpResult<i64> {
    if active_for_in(conn, device_id).await?.is_some() {
        return Err(HttpError::Conflict("the device already has an open action".into()));
    }
    // A device that turned on auto-confirmation has consented in advance: the action runs at once, and its history
    // says who consented.
    let auto = match confirmation_required {
        true => crate::devices::auto_confirm_in(conn, device_id).await?,
        false => None,
    };
    let state =
        if confirmation_required && auto.is_none() { ActionState::WaitConfirmation } else { ActionState::Running };
    let now = now_ms();
    let r = sqlx::query(
        "INSERT INTO actions (device_id, rollout_id, group_idx, artifact_id, kind, state, active, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7) RETURNING id",
    )
    .bind(device_id)
    .bind(rollout.map(|r| r.0))
    .bind(rollout.map(|r| r.1))
    .bind(artifact_id)
    .bind(kind.as_str())
    .bind(state.as_str())
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let id: i64 = r.try_get("id")?;
    if let Some(auto) = auto {
        let details = [format!("confirmed automatically: {}", auto.describe())];
        add_status_in(conn, id, "confirmation-confirmed", "none", None, &details).await?;
    }
    Ok(id)
}

/// Moves an action to `to` if it is currently in one of `from` (compare-and-set: two instances, or a feedback
/// racing a cancel, cannot both win). Returns whether it moved.
pub async fn transition(
    db: &Db,
    id: i64,
    from: &[ActionState],
    to: ActionState,
    message: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let mut moved = false;
    for f in from {
        let n = sqlx::query(
            "UPDATE actions SET state = $1, active = $2, updated_ms = $3, last_message = COALESCE($4, last_message) \
             WHERE id = $5 AND state = $6",
        )
        .bind(to.as_str())
        .bind(i64::from(!to.is_terminal()))
        .bind(now_ms())
        .bind(message)
        .bind(id)
        .bind(f.as_str())
        .execute(&db.pool)
        .await?
        .rows_affected();
        if n > 0 {
            moved = true;
            break;
        }
    }
    Ok(moved)
}

/// Which open actions a cancel applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelScope {
    /// One action (an operator cancels a deployment).
    Action(i64),
    /// Every open action of a rollout (the rollout is cancelled).
    Rollout(i64),
}

/// The one cancel rule, for one action or a whole rollout: an action still waiting for the device's consent is
/// cancelled at once (the device never started it); one the device may be working on (`running`, `downloaded`)
/// goes to `canceling`, so the device is offered `cancelAction` and decides — it refuses once its slot flip is
/// done. Terminal actions and those already being cancelled are left alone. Returns how many became `canceled`
/// and how many `canceling`. Runs on the caller's connection, so a rollout cancels inside its own transaction.
pub async fn cancel_open(
    conn: &mut sqlx::AnyConnection,
    scope: CancelScope,
    message: &str,
) -> Result<(u64, u64), sqlx::Error> {
    let (column, id) = match scope {
        CancelScope::Action(id) => ("id", id),
        CancelScope::Rollout(id) => ("rollout_id", id),
    };
    let now = now_ms();
    let canceled = sqlx::query(&format!(
        "UPDATE actions SET state = $1, active = 0, updated_ms = $2, last_message = $3 WHERE {column} = $4 AND state = $5"
    ))
    .bind(ActionState::Canceled.as_str())
    .bind(now)
    .bind(message)
    .bind(id)
    .bind(ActionState::WaitConfirmation.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let canceling = sqlx::query(&format!(
        "UPDATE actions SET state = $1, updated_ms = $2, last_message = $3 WHERE {column} = $4 AND state IN ($5, $6)"
    ))
    .bind(ActionState::Canceling.as_str())
    .bind(now)
    .bind(message)
    .bind(id)
    .bind(ActionState::Running.as_str())
    .bind(ActionState::Downloaded.as_str())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((canceled, canceling))
}

/// Cancels one action ([`cancel_open`]'s rule). Returns the state it moved to, or `None` if it was already over
/// or being cancelled.
pub async fn request_cancel(db: &Db, id: i64, message: &str) -> Result<Option<ActionState>, sqlx::Error> {
    let mut conn = db.pool.acquire().await?;
    Ok(match cancel_open(&mut conn, CancelScope::Action(id), message).await? {
        (1, _) => Some(ActionState::Canceled),
        (_, 1) => Some(ActionState::Canceling),
        _ => None,
    })
}

/// One status a device reported on an action (DDI feedback), as stored in `action_status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEntry {
    /// When it arrived (ms).
    pub at_ms: i64,
    /// DDI `execution` (`proceeding`, `closed`, …), or `cancel-…`/`confirmation-…` for those channels.
    pub execution: String,
    /// DDI `finished` (`success`, `failure`, `none`).
    pub finished: String,
    /// The device's code, if it sent one.
    pub code: Option<i64>,
    /// The device's details.
    pub details: Vec<String>,
}

/// Appends a status to an action's history.
pub async fn add_status(
    db: &Db,
    action_id: i64,
    execution: &str,
    finished: &str,
    code: Option<i64>,
    details: &[String],
) -> Result<(), sqlx::Error> {
    add_status_in(&mut *db.pool.acquire().await?, action_id, execution, finished, code, details).await
}

/// [`add_status`] on a connection (or inside a transaction).
pub async fn add_status_in(
    conn: &mut sqlx::AnyConnection,
    action_id: i64,
    execution: &str,
    finished: &str,
    code: Option<i64>,
    details: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO action_status (action_id, at_ms, execution, finished, code, details) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(action_id)
    .bind(now_ms())
    .bind(execution)
    .bind(finished)
    .bind(code)
    .bind(serde_json::to_string(details).expect("strings serialise"))
    .execute(conn)
    .await?;
    Ok(())
}

/// How many statuses an action has.
pub async fn status_count(db: &Db, action_id: i64) -> Result<i64, sqlx::Error> {
    let r = sqlx::query("SELECT COUNT(*) AS n FROM action_status WHERE action_id = $1")
        .bind(action_id)
        .fetch_one(&db.pool)
        .await?;
    r.try_get("n")
}

/// The newest `limit` statuses of an action, oldest first.
pub async fn statuses(db: &Db, action_id: i64, limit: i64) -> Result<Vec<StatusEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT at_ms, execution, finished, code, details FROM action_status WHERE action_id = $1 \
         ORDER BY id DESC LIMIT $2",
    )
    .bind(action_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            let details: String = r.try_get("details")?;
            Ok(StatusEntry {
                at_ms: r.try_get("at_ms")?,
                execution: r.try_get("execution")?,
                finished: r.try_get("finished")?,
                code: r.try_get("code")?,
                details: serde_json::from_str(&details).unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    out.reverse();
    Ok(out)
}

/// A device's actions, newest first.
pub async fn of_device(db: &Db, device_id: i64, limit: i64) -> Result<Vec<Action>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM actions WHERE device_id = $1 ORDER BY id DESC LIMIT $2")
        .bind(device_id)
        .bind(limit)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Records the device's latest message on an action without changing its state.
pub async fn set_message(db: &Db, id: i64, message: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE actions SET last_message = $1 WHERE id = $2").bind(message).bind(id).execute(&db.pool).await?;
    Ok(())
}
