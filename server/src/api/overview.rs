//! `GET /api/v1/overview`: the fleet at a glance, for the console's first page — devices by version and state,
//! rollouts in progress with their groups, recent failures with the devices' messages, devices not seen for a
//! while, devices below a security version.
//!
//! A fixed number of aggregate queries whatever the fleet's size (grouped counts, counts, and short lists with a
//! `LIMIT`), never one query per device, so the page stays fast at tens of thousands of devices.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::Caller;
use crate::AppState;
use crate::auth::Permission;
use crate::db::{Db, now_ms};
use crate::error::HttpResult;
use crate::rollout::{self, RolloutView};

/// Longest lists in the overview (the console links to the full, paged lists).
pub const LIST: i64 = 10;
/// Default for "not seen for a while": 24 hours, in ms.
pub const UNSEEN_MS: i64 = 24 * 3600 * 1000;
/// Most rollouts in progress shown.
pub const ROLLOUTS: i64 = 20;

/// Query of the overview.
#[derive(Debug, Default, Deserialize)]
pub struct OverviewQuery {
    /// A device not heard from for this long (ms) is "unseen" (default 24 hours).
    pub unseen_ms: Option<i64>,
    /// Devices below this security version are listed (default: the highest of any uploaded artifact).
    pub min_security_version: Option<i64>,
}

/// Devices with one (version, state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionState {
    /// The reported version (`None`: not known yet).
    pub version: Option<String>,
    /// The reported state.
    pub state: String,
    /// How many devices.
    pub devices: i64,
}

/// A failed action, with the device's last message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The action.
    pub action_id: i64,
    /// The device.
    pub controller_id: String,
    /// The version it failed to install.
    pub version: String,
    /// Its rollout, if any.
    pub rollout_id: Option<i64>,
    /// The device's last message.
    pub message: Option<String>,
    /// When it failed (ms).
    pub at_ms: i64,
}

/// A device and when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Controller id.
    pub controller_id: String,
    /// Last request (ms), `None` = never.
    pub last_seen_ms: Option<i64>,
}

/// A count and the first few of what it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed<T> {
    /// How many in all.
    pub total: i64,
    /// The first [`LIST`].
    pub first: Vec<T>,
}

/// The overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When it was computed (ms).
    pub now_ms: i64,
    /// Registered devices.
    pub devices: i64,
    /// Devices per (reported version, state).
    pub by_version_state: Vec<VersionState>,
    /// Rollouts not finished or cancelled, newest first, with their groups' progress.
    pub rollouts: Vec<RolloutView>,
    /// The most recent failed actions.
    pub failures: Vec<Failure>,
    /// The threshold for `unseen` (ms ago).
    pub unseen_ms: i64,
    /// Devices not seen for `unseen_ms` (or never), longest unseen first.
    pub unseen: Listed<Seen>,
    /// The security version `below` is measured against (`None`: no artifact yet).
    pub min_security_version: Option<i64>,
    /// Devices whose last successful update's security version is below it, or unknown.
    pub below: Listed<String>,
}

/// `GET /api/v1/overview`.
pub async fn overview(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<OverviewQuery>,
) -> HttpResult<Json<Overview>> {
    caller.require(Permission::Read)?;
    Ok(Json(compute(&st.db, &q, now_ms()).await?))
}

/// Computes the overview at `now`: each part is one or two aggregate queries.
pub async fn compute(db: &Db, q: &OverviewQuery, now: i64) -> HttpResult<Overview> {
    let unseen_ms = q.unseen_ms.unwrap_or(UNSEEN_MS).max(0);
    let min_security_version = match q.min_security_version {
        Some(m) => Some(m),
        None => {
            sqlx::query("SELECT MAX(security_version) AS m FROM artifacts").fetch_one(&db.pool).await?.try_get("m")?
        }
    };
    Ok(Overview {
        now_ms: now,
        devices: count(db, "SELECT COUNT(*) AS n FROM devices", &[]).await?,
        by_version_state: by_version_state(db).await?,
        rollouts: rollouts_in_progress(db).await?,
        failures: recent_failures(db).await?,
        unseen_ms,
        unseen: unseen(db, now.saturating_sub(unseen_ms)).await?,
        min_security_version,
        below: match min_security_version {
            Some(min) => below(db, min).await?,
            None => Listed { total: 0, first: Vec::new() },
        },
    })
}

/// `SELECT COUNT(*) AS n …` with integer parameters.
async fn count(db: &Db, sql: &str, params: &[i64]) -> Result<i64, sqlx::Error> {
    let mut q = sqlx::query(sql);
    for p in params {
        q = q.bind(*p);
    }
    q.fetch_one(&db.pool).await?.try_get("n")
}

async fn by_version_state(db: &Db) -> Result<Vec<VersionState>, sqlx::Error> {
    sqlx::query(
        "SELECT reported_version, reported_state, COUNT(*) AS n FROM devices GROUP BY reported_version, reported_state \
         ORDER BY reported_version, reported_state",
    )
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|r| {
        Ok(VersionState {
            version: r.try_get("reported_version")?,
            state: r.try_get("reported_state")?,
            devices: r.try_get("n")?,
        })
    })
    .collect()
}

/// The newest [`ROLLOUTS`] rollouts not finished or cancelled (a handful: one view each).
async fn rollouts_in_progress(db: &Db) -> HttpResult<Vec<RolloutView>> {
    let ids =
        sqlx::query("SELECT id FROM rollouts WHERE state NOT IN ('finished', 'cancelled') ORDER BY id DESC LIMIT $1")
            .bind(ROLLOUTS)
            .fetch_all(&db.pool)
            .await?;
    let mut out = Vec::with_capacity(ids.len());
    for r in ids {
        out.push(rollout::get(db, r.try_get("id")?).await?);
    }
    Ok(out)
}

async fn recent_failures(db: &Db) -> Result<Vec<Failure>, sqlx::Error> {
    sqlx::query(
        "SELECT x.id, d.controller_id, a.version, x.rollout_id, x.last_message, x.updated_ms FROM actions x \
         JOIN devices d ON d.id = x.device_id JOIN artifacts a ON a.id = x.artifact_id \
         WHERE x.state = 'error' ORDER BY x.updated_ms DESC, x.id DESC LIMIT $1",
    )
    .bind(LIST)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Failure {
            action_id: r.try_get("id")?,
            controller_id: r.try_get("controller_id")?,
            version: r.try_get("version")?,
            rollout_id: r.try_get("rollout_id")?,
            message: r.try_get("last_message")?,
            at_ms: r.try_get("updated_ms")?,
        })
    })
    .collect()
}

/// Devices not seen since `since` (or never), longest unseen first.
async fn unseen(db: &Db, since: i64) -> Result<Listed<Seen>, sqlx::Error> {
    const WHERE: &str = "WHERE last_seen_ms IS NULL OR last_seen_ms < $1";
    let total = count(db, &format!("SELECT COUNT(*) AS n FROM devices {WHERE}"), &[since]).await?;
    let first = sqlx::query(&format!(
        "SELECT controller_id, last_seen_ms FROM devices {WHERE} ORDER BY last_seen_ms, controller_id LIMIT $2"
    ))
    .bind(since)
    .bind(LIST)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|r| Ok(Seen { controller_id: r.try_get("controller_id")?, last_seen_ms: r.try_get("last_seen_ms")? }))
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(Listed { total, first })
}

/// Devices whose last successful update's security version (as the compliance report has it) is below `min`, or
/// unknown.
async fn below(db: &Db, min: i64) -> Result<Listed<String>, sqlx::Error> {
    const FROM: &str = "FROM (SELECT d.controller_id, (SELECT a.security_version FROM actions x \
         JOIN artifacts a ON a.id = x.artifact_id WHERE x.device_id = d.id AND x.state = 'finished' \
         ORDER BY x.id DESC LIMIT 1) AS sv FROM devices d) s WHERE s.sv IS NULL OR s.sv < $1";
    let total = count(db, &format!("SELECT COUNT(*) AS n {FROM}"), &[min]).await?;
    let first = sqlx::query(&format!("SELECT s.controller_id {FROM} ORDER BY s.controller_id LIMIT $2"))
        .bind(min)
        .bind(LIST)
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|r| r.try_get("controller_id"))
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Listed { total, first })
}
