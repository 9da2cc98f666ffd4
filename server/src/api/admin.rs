//! API tokens and provisioning tokens (admin only).

use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::Caller;
use crate::AppState;
use crate::auth::{Permission, Role, new_secret, prefix, secret_hash};
use crate::db::{Db, now_ms};
use crate::error::{HttpError, HttpResult};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/provisioning", get(list_provisioning).post(create_provisioning))
}

/// An API token as listed (never the secret).
#[derive(Debug, Serialize)]
struct TokenInfo {
    id: i64,
    name: String,
    role: String,
    created_by: String,
    created_ms: i64,
    revoked_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
}

/// Creates an API token; the secret is returned once. Used by the API and by `otter-server token create`.
pub async fn issue_api_token(db: &Db, name: &str, role: Role, by: &str) -> HttpResult<(i64, String)> {
    if name.trim().is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(HttpError::BadRequest("token name: 1–100 characters, no control characters".into()));
    }
    let secret = new_secret(prefix::API);
    let row = sqlx::query(
        "INSERT INTO api_tokens (name, token_hash, role, created_by, created_ms) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(name)
    .bind(secret_hash(&secret))
    .bind(role.as_str())
    .bind(by)
    .bind(now_ms())
    .fetch_one(&db.pool)
    .await?;
    let id: i64 = row.try_get("id")?;
    crate::audit::append(
        db,
        by,
        "token.created",
        &format!("token:{id}"),
        serde_json::json!({"name": name, "role": role}),
    )
    .await?;
    Ok((id, secret))
}

async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<NewToken>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Administer)?;
    let (id, token) = issue_api_token(&st.db, &req.name, req.role, &caller.actor()).await?;
    Ok(Json(serde_json::json!({"id": id, "name": req.name, "role": req.role, "token": token})))
}

async fn list_tokens(State(st): State<AppState>, caller: Caller) -> HttpResult<Json<Vec<TokenInfo>>> {
    caller.require(Permission::Administer)?;
    let rows = sqlx::query("SELECT id, name, role, created_by, created_ms, revoked_ms FROM api_tokens ORDER BY id")
        .fetch_all(&st.db.pool)
        .await?;
    let list = rows
        .iter()
        .map(|r| {
            Ok(TokenInfo {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                role: r.try_get("role")?,
                created_by: r.try_get("created_by")?,
                created_ms: r.try_get("created_ms")?,
                revoked_ms: r.try_get("revoked_ms")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Json(list))
}

async fn revoke_token(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Administer)?;
    let n = sqlx::query("UPDATE api_tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
        .bind(now_ms())
        .bind(id)
        .execute(&st.db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(HttpError::NotFound(format!("no active token {id}")));
    }
    crate::audit::append(&st.db, &caller.actor(), "token.revoked", &format!("token:{id}"), serde_json::json!({}))
        .await?;
    Ok(Json(serde_json::json!({"id": id, "revoked": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProvisioning {
    name: String,
    /// How many devices may enroll with it.
    count: i64,
    /// Seconds until it expires.
    expires_in_s: i64,
    /// Tags every enrolled device gets.
    #[serde(default)]
    tags: Vec<String>,
}

async fn create_provisioning(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<NewProvisioning>,
) -> HttpResult<Json<serde_json::Value>> {
    caller.require(Permission::Administer)?;
    if !(1..=1_000_000).contains(&req.count) {
        return Err(HttpError::BadRequest("count: 1..=1000000 devices".into()));
    }
    // At most a year: a provisioning credential is for a manufacturing batch, not forever.
    if !(60..=366 * 86_400).contains(&req.expires_in_s) {
        return Err(HttpError::BadRequest("expires_in_s: 60 seconds to 366 days".into()));
    }
    if req.name.trim().is_empty() || req.name.len() > 100 {
        return Err(HttpError::BadRequest("name: 1–100 characters".into()));
    }
    let secret = new_secret(prefix::PROVISIONING);
    let expires_ms = now_ms() + req.expires_in_s * 1000;
    let row = sqlx::query(
        "INSERT INTO provisioning (name, token_hash, remaining, expires_ms, tags, created_by, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&req.name)
    .bind(secret_hash(&secret))
    .bind(req.count)
    .bind(expires_ms)
    .bind(serde_json::to_string(&req.tags).expect("strings serialise"))
    .bind(caller.actor())
    .bind(now_ms())
    .fetch_one(&st.db.pool)
    .await?;
    let id: i64 = row.try_get("id")?;
    crate::audit::append(
        &st.db,
        &caller.actor(),
        "provisioning.created",
        &format!("provisioning:{id}"),
        serde_json::json!({"name": req.name, "count": req.count, "expires_ms": expires_ms, "tags": req.tags}),
    )
    .await?;
    Ok(Json(serde_json::json!({"id": id, "token": secret, "remaining": req.count, "expires_ms": expires_ms})))
}

async fn list_provisioning(State(st): State<AppState>, caller: Caller) -> HttpResult<Json<Vec<serde_json::Value>>> {
    caller.require(Permission::Administer)?;
    let rows = sqlx::query("SELECT id, name, remaining, expires_ms, tags, created_by FROM provisioning ORDER BY id")
        .fetch_all(&st.db.pool)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let tags: String = r.try_get("tags")?;
        out.push(serde_json::json!({
            "id": r.try_get::<i64, _>("id")?, "name": r.try_get::<String, _>("name")?,
            "remaining": r.try_get::<i64, _>("remaining")?, "expires_ms": r.try_get::<i64, _>("expires_ms")?,
            "tags": serde_json::from_str::<serde_json::Value>(&tags).unwrap_or_default(),
            "created_by": r.try_get::<String, _>("created_by")?,
        }));
    }
    Ok(Json(out))
}
