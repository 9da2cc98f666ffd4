//! Artifact upload and listing.

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::Caller;
use crate::AppState;
use crate::artifacts::{self, Artifact};
use crate::auth::Permission;
use crate::error::HttpResult;

pub(super) fn routes() -> Router<AppState> {
    // The upload streams to disk under its own limit (`--max-upload`), checked while it arrives.
    Router::new()
        .route("/api/v1/artifacts", get(list).post(upload).layer(DefaultBodyLimit::disable()))
        .route("/api/v1/artifacts/{id}", get(one))
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    /// The file name devices see (default `update.otter`).
    filename: Option<String>,
}

/// `POST /api/v1/artifacts?filename=NAME` with the `.otter` file as the body: 201 with the artifact when new,
/// 200 with the existing one when the same bytes were uploaded before, 422 when the signature or contents are
/// refused, 413 when too large.
async fn upload(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> HttpResult<(StatusCode, Json<Artifact>)> {
    caller.require(Permission::Operate)?;
    let filename = q.filename.unwrap_or_else(|| "update.otter".into());
    let (artifact, new) = artifacts::ingest(&st, body.into_data_stream(), &filename, &caller.actor()).await?;
    Ok((if new { StatusCode::CREATED } else { StatusCode::OK }, Json(artifact)))
}

async fn list(State(st): State<AppState>, caller: Caller) -> HttpResult<Json<Vec<Artifact>>> {
    caller.require(Permission::Read)?;
    Ok(Json(artifacts::list(&st.db).await?))
}

async fn one(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> HttpResult<Json<Artifact>> {
    caller.require(Permission::Read)?;
    Ok(Json(artifacts::get(&st.db, id).await?))
}
