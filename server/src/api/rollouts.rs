//! Rollouts for operators: create, list, look at one (group-by-group progress and why it paused), preview how
//! many devices a filter matches, approve, pause, resume, cancel. The rules live in `crate::rollout`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::Caller;
use crate::AppState;
use crate::auth::Permission;
use crate::error::HttpResult;
use crate::model::Filter;
use crate::rollout::{self, CreateRollout, RolloutView};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rollouts", get(list).post(create))
        .route("/api/v1/rollouts/preview", post(preview))
        .route("/api/v1/rollouts/{id}", get(one))
        .route("/api/v1/rollouts/{id}/approve", post(approve))
        .route("/api/v1/rollouts/{id}/pause", post(pause))
        .route("/api/v1/rollouts/{id}/resume", post(resume))
        .route("/api/v1/rollouts/{id}/cancel", post(cancel))
}

async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateRollout>,
) -> HttpResult<(StatusCode, Json<RolloutView>)> {
    caller.require(Permission::Operate)?;
    Ok((StatusCode::CREATED, Json(rollout::create(&st, req, &caller.actor()).await?)))
}

async fn list(State(st): State<AppState>, caller: Caller) -> HttpResult<Json<Vec<RolloutView>>> {
    caller.require(Permission::Read)?;
    Ok(Json(rollout::list(&st.db).await?))
}

async fn one(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> HttpResult<Json<RolloutView>> {
    caller.require(Permission::Read)?;
    Ok(Json(rollout::get(&st.db, id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Preview {
    filter: Filter,
}

/// How many devices a filter matches now (the rollout form's live count).
async fn preview(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<Preview>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Read)?;
    Ok(Json(serde_json::json!({"matching": rollout::count_matching(&st.db, &req.filter).await?})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approve {
    group: i64,
}

async fn approve(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Json(req): Json<Approve>,
) -> HttpResult<Json<RolloutView>> {
    caller.require(Permission::Approve)?;
    Ok(Json(rollout::approve(&st, id, req.group, &caller.actor()).await?))
}

async fn pause(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> HttpResult<Json<RolloutView>> {
    caller.require(Permission::Operate)?;
    Ok(Json(rollout::pause(&st, id, &caller.actor()).await?))
}

async fn resume(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> HttpResult<Json<RolloutView>> {
    caller.require(Permission::Operate)?;
    Ok(Json(rollout::resume(&st, id, &caller.actor()).await?))
}

async fn cancel(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> HttpResult<Json<RolloutView>> {
    caller.require(Permission::Operate)?;
    Ok(Json(rollout::cancel(&st, id, &caller.actor()).await?))
}
