//! The device registry for operators: list (filtered, paged), register, tags, tokens, a device's page (inventory,
//! desired vs reported, action history with the device's messages), and direct deployments.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Caller, Page};
use crate::AppState;
use crate::actions::{self, Action, StatusEntry};
use crate::auth::Permission;
use crate::db::{Db, Engine};
use crate::devices::{self, Device};
use crate::error::{HttpError, HttpResult};
use crate::model::ActionKind;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/devices", get(list).post(register))
        .route("/api/v1/devices/{id}", get(one))
        .route("/api/v1/devices/{id}/tags", put(set_tags))
        .route("/api/v1/devices/{id}/token", post(rotate).delete(revoke))
        .route("/api/v1/devices/{id}/actions", get(device_actions).post(deploy))
        .route("/api/v1/actions/{id}/cancel", post(cancel_action))
}

/// Filters of the device list; all optional, all must hold.
#[derive(Debug, Default, Deserialize)]
pub struct DeviceQuery {
    /// Controller id contains this.
    pub q: Option<String>,
    /// Carries this tag.
    pub tag: Option<String>,
    /// Reports this version.
    pub version: Option<String>,
    /// In this reported state (`registered`, `in-sync`, `pending`, `error`).
    pub state: Option<String>,
    /// Of this device type.
    pub compatible: Option<String>,
    /// Not seen since this time (ms), or never.
    pub unseen_since_ms: Option<i64>,
    /// Reports the inventory attribute of this name (with `attr_value`: with exactly that value).
    pub attr_key: Option<String>,
    /// The value `attr_key` must have.
    pub attr_value: Option<String>,
    /// Entries to skip (paging).
    pub offset: Option<i64>,
    /// Entries to return (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// A page of devices and the total that match.
#[derive(Debug, Serialize)]
pub struct DevicePage {
    /// Devices matching the filters in all.
    pub total: i64,
    /// This page.
    pub devices: Vec<Device>,
}

/// The filtered device list: one query for the total, one for the page and one for the page's tags, all on
/// indexed or small columns, so a console stays fast at tens of thousands of devices.
pub async fn search(db: &Db, q: &DeviceQuery) -> HttpResult<DevicePage> {
    let attr_key = q.attr_key.clone().unwrap_or_default();
    let attr_value = q.attr_value.clone().unwrap_or_default();
    // Attributes are a JSON object of strings stored as text; each engine reads it with its own JSON functions
    // (as the rollout filter does). json_each avoids quoting the key into a JSON path.
    let attr_sql = match db.engine {
        Engine::Sqlite => {
            "($8 = '' OR EXISTS (SELECT 1 FROM json_each(d.attributes) j WHERE j.key = $8 AND ($9 = '' OR j.value = $9)))"
        }
        Engine::Postgres => {
            "($8 = '' OR (d.attributes::jsonb ->> $8) = $9 OR ($9 = '' AND (d.attributes::jsonb ->> $8) IS NOT NULL))"
        }
    };
    let where_sql = format!(
        "WHERE ($1 = '' OR d.controller_id LIKE $2 ESCAPE '\\') \
         AND ($3 = '' OR EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag = $3)) \
         AND ($4 = '' OR d.reported_version = $4) AND ($5 = '' OR d.reported_state = $5) \
         AND ($6 = '' OR d.compatible = $6) AND ($7 < 0 OR d.last_seen_ms IS NULL OR d.last_seen_ms < $7) \
         AND {attr_sql}"
    );
    let needle = q.q.clone().unwrap_or_default();
    let like = format!("%{}%", needle.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let (tag, version, state, compatible) = (
        q.tag.clone().unwrap_or_default(),
        q.version.clone().unwrap_or_default(),
        q.state.clone().unwrap_or_default(),
        q.compatible.clone().unwrap_or_default(),
    );
    let unseen = q.unseen_since_ms.unwrap_or(-1);
    let bind = |sql| {
        sqlx::query(sql)
            .bind(needle.clone())
            .bind(like.clone())
            .bind(tag.clone())
            .bind(version.clone())
            .bind(state.clone())
            .bind(compatible.clone())
            .bind(unseen)
            .bind(attr_key.clone())
            .bind(attr_value.clone())
    };
    let count_sql = format!("SELECT COUNT(*) AS n FROM devices d {where_sql}");
    let total: i64 = bind(&count_sql).fetch_one(&db.pool).await?.try_get("n")?;
    let (offset, limit) = Page { offset: q.offset, limit: q.limit }.bounds();
    let page_sql = format!("SELECT d.* FROM devices d {where_sql} ORDER BY d.controller_id LIMIT $10 OFFSET $11");
    let rows = bind(&page_sql).bind(limit).bind(offset).fetch_all(&db.pool).await?;
    let ids = rows.iter().map(|r| r.try_get("id")).collect::<Result<Vec<i64>, _>>()?;
    let mut tags = tags_of_many(db, &ids).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (r, id) in rows.iter().zip(&ids) {
        out.push(devices::from_row(r, tags.remove(id).unwrap_or_default())?);
    }
    Ok(DevicePage { total, devices: out })
}

/// The tags of several devices in one query, sorted per device.
async fn tags_of_many(db: &Db, ids: &[i64]) -> Result<HashMap<i64, Vec<String>>, sqlx::Error> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let params = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT device_id, tag FROM device_tags WHERE device_id IN ({params}) ORDER BY device_id, tag");
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(*id);
    }
    for r in query.fetch_all(&db.pool).await? {
        out.entry(r.try_get("device_id")?).or_default().push(r.try_get("tag")?);
    }
    Ok(out)
}

async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<DeviceQuery>,
) -> HttpResult<Json<DevicePage>> {
    caller.require(Permission::Read)?;
    Ok(Json(search(&st.db, &q).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    controller_id: String,
    #[serde(default)]
    compatible: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

async fn register(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<NewDevice>,
) -> HttpResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require(Permission::Operate)?;
    let (device, token) =
        devices::register(&st.db, &req.controller_id, req.compatible.as_deref(), &req.tags, true, &caller.actor())
            .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({"device": device, "target_token": token}))))
}

/// What the fleet wants a device to run, what it runs, and what is in flight between the two.
#[derive(Debug, Serialize)]
pub struct DesiredReported {
    /// The version the fleet wants: the open action's, else a pending rollout's, else the last successful one's.
    pub desired_version: Option<String>,
    /// Where `desired_version` comes from: `action:N`, `rollout:N`, or `installed`.
    pub desired_source: Option<String>,
    /// The version the device reports running.
    pub reported_version: Option<String>,
    /// The open action's state, if any.
    pub in_flight: Option<String>,
    /// Whether the device runs what the fleet wants.
    pub in_sync: bool,
}

/// Computes [`DesiredReported`] for a device.
pub async fn desired_reported(db: &Db, d: &Device) -> HttpResult<DesiredReported> {
    let version_of = |id: i64| crate::artifacts::version_of(db, id);
    let mut desired = None;
    let mut in_flight = None;
    if let Some(a) = actions::active_for(db, d.id).await? {
        desired = Some((version_of(a.artifact_id).await?, format!("action:{}", a.id)));
        in_flight = Some(a.state.as_str().to_owned());
    }
    if desired.is_none() {
        let r = sqlx::query(
            "SELECT r.id, r.artifact_id FROM rollouts r JOIN rollout_members m ON m.rollout_id = r.id \
             WHERE m.device_id = $1 AND r.state NOT IN ('finished', 'cancelled') ORDER BY r.id DESC LIMIT 1",
        )
        .bind(d.id)
        .fetch_optional(&db.pool)
        .await?;
        if let Some(r) = r {
            desired =
                Some((version_of(r.try_get("artifact_id")?).await?, format!("rollout:{}", r.try_get::<i64, _>("id")?)));
        }
    }
    if desired.is_none() {
        let r = sqlx::query(
            "SELECT artifact_id FROM actions WHERE device_id = $1 AND state = 'finished' ORDER BY id DESC LIMIT 1",
        )
        .bind(d.id)
        .fetch_optional(&db.pool)
        .await?;
        if let Some(r) = r {
            desired = Some((version_of(r.try_get("artifact_id")?).await?, "installed".to_owned()));
        }
    }
    let (desired_version, desired_source) = desired.unzip();
    let in_sync = desired_version.is_none() || desired_version == d.reported_version;
    Ok(DesiredReported {
        desired_version,
        desired_source,
        reported_version: d.reported_version.clone(),
        in_flight,
        in_sync,
    })
}

/// An action with what the device said about it.
#[derive(Debug, Serialize)]
pub struct ActionHistory {
    /// The action.
    #[serde(flatten)]
    pub action: Action,
    /// The artifact's version.
    pub version: String,
    /// The device's statuses, oldest first (the last 50).
    pub statuses: Vec<StatusEntry>,
}

async fn history(db: &Db, device_id: i64, limit: i64) -> HttpResult<Vec<ActionHistory>> {
    let mut out = Vec::new();
    for a in actions::of_device(db, device_id, limit).await? {
        let version = crate::artifacts::version_of(db, a.artifact_id).await?;
        let statuses = actions::statuses(db, a.id, 50).await?;
        out.push(ActionHistory { action: a, version, statuses });
    }
    Ok(out)
}

async fn find(db: &Db, controller_id: &str) -> HttpResult<Device> {
    devices::by_controller_id(db, controller_id)
        .await?
        .ok_or_else(|| HttpError::NotFound(format!("no device {controller_id}")))
}

async fn one(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Read)?;
    let d = find(&st.db, &id).await?;
    let dr = desired_reported(&st.db, &d).await?;
    let actions = history(&st.db, d.id, 20).await?;
    let audit = crate::audit::list(
        &st.db,
        &crate::audit::Query { subject: Some(format!("device:{id}")), limit: Some(50), ..Default::default() },
    )
    .await?;
    Ok(Json(serde_json::json!({"device": d, "desired_reported": dr, "actions": actions, "audit": audit})))
}

async fn device_actions(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> HttpResult<Json<Vec<ActionHistory>>> {
    caller.require(Permission::Read)?;
    let d = find(&st.db, &id).await?;
    Ok(Json(history(&st.db, d.id, 100).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tags {
    tags: Vec<String>,
}

async fn set_tags(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<Tags>,
) -> HttpResult<Json<Device>> {
    caller.require(Permission::Operate)?;
    let d = find(&st.db, &id).await?;
    devices::set_tags(&st.db, d.id, &req.tags).await?;
    crate::audit::append(
        &st.db,
        &caller.actor(),
        "device.tagged",
        &format!("device:{id}"),
        serde_json::json!({"tags": req.tags}),
    )
    .await?;
    Ok(Json(find(&st.db, &id).await?))
}

async fn rotate(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Operate)?;
    let token = devices::rotate_token(&st.db, &id, &caller.actor()).await?;
    Ok(Json(serde_json::json!({"controller_id": id, "target_token": token})))
}

async fn revoke(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Operate)?;
    devices::revoke_token(&st.db, &id, &caller.actor()).await?;
    Ok(Json(serde_json::json!({"controller_id": id, "revoked": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deploy {
    artifact_id: i64,
    #[serde(default)]
    kind: ActionKind,
}

/// A direct deployment of one artifact to one device, outside any rollout.
async fn deploy(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<Deploy>,
) -> HttpResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require(Permission::Operate)?;
    let d = find(&st.db, &id).await?;
    let artifact = crate::artifacts::get(&st.db, req.artifact_id).await?;
    if let Some(c) = &d.compatible
        && !artifact.compatible.contains(c)
    {
        return Err(HttpError::Conflict(format!(
            "artifact {} is for {:?}, device {id} is a {c}",
            artifact.id, artifact.compatible
        )));
    }
    let action = actions::create(&st.db, d.id, artifact.id, req.kind, None, false).await?;
    crate::audit::append(
        &st.db,
        &caller.actor(),
        "action.created",
        &format!("device:{id}"),
        serde_json::json!({"action": action, "artifact": artifact.id, "version": artifact.version, "kind": req.kind}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({"action": action}))))
}

async fn cancel_action(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Operate)?;
    let a = actions::get(&st.db, id).await?.ok_or_else(|| HttpError::NotFound(format!("no action {id}")))?;
    let to = actions::request_cancel(&st.db, id, &format!("cancelled by {}", caller.actor()))
        .await?
        .ok_or_else(|| HttpError::Conflict(format!("action {id} is {} and cannot be cancelled", a.state.as_str())))?;
    let cid: String = sqlx::query("SELECT controller_id FROM devices WHERE id = $1")
        .bind(a.device_id)
        .fetch_one(&st.db.pool)
        .await?
        .try_get("controller_id")?;
    crate::audit::append(
        &st.db,
        &caller.actor(),
        "action.cancel-requested",
        &format!("device:{cid}"),
        serde_json::json!({"action": id, "state": to}),
    )
    .await?;
    Ok(Json(serde_json::json!({"action": id, "state": to})))
}
