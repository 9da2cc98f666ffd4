//! The operator's REST API, `/api/v1`: JSON in and out, `Authorization: Bearer <API token>`, every call checked
//! against the token's role ([`Permission`]). The OpenAPI document (`server/openapi.json`, served at
//! `/api/v1/openapi.json`) lists every route; a test keeps the two in step.
//!
//! The web console signs in with the same tokens ([`session`]): `POST /api/v1/session` puts the token in an
//! `HttpOnly` cookie, which [`Caller`] accepts instead of the header — for a request that changes something only
//! together with the `X-Otter-Console: 1` header, which another site's page cannot send (CSRF).

mod admin;
pub use admin::issue_api_token;
mod artifacts;
mod audit;
mod devices;
pub mod overview;
mod rollouts;
pub mod session;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use sqlx::Row;

use crate::AppState;
use crate::auth::{Permission, Role, secret_hash};
use crate::error::{HttpError, HttpResult};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Who is calling: the name and role of a valid, unrevoked API token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// The actor string in the audit log.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.name)
    }

    /// Refuses (403) unless the role allows `p`.
    pub fn require(&self, p: Permission) -> HttpResult<()> {
        if self.role.allows(p) {
            Ok(())
        } else {
            Err(HttpError::Forbidden(format!("role {} may not {}", self.role.as_str(), describe(p))))
        }
    }
}

fn describe(p: Permission) -> &'static str {
    match p {
        Permission::Read => "read",
        Permission::Operate => "change devices, artifacts or rollouts",
        Permission::Approve => "approve rollouts",
        Permission::Administer => "manage tokens",
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = match parts.headers.get(axum::http::header::AUTHORIZATION) {
            Some(header) => header
                .to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .ok_or_else(|| HttpError::Unauthorized("expected Authorization: Bearer <token>".into()))?
                .trim()
                .to_owned(),
            None => {
                let token = session::cookie_token(&parts.headers).ok_or_else(|| {
                    HttpError::Unauthorized("an API token is required (Authorization: Bearer …)".into())
                })?;
                session::check_csrf(&parts.method, &parts.headers)?;
                token
            }
        };
        caller_of_token(state, &token)
            .await?
            .ok_or_else(|| HttpError::Unauthorized("unknown or revoked API token".into()))
    }
}

/// The caller holding API token `token`, if it exists and is not revoked (looked up on every request, so a revoked
/// token — and a console cookie carrying it — stops working at once).
pub async fn caller_of_token(state: &AppState, token: &str) -> HttpResult<Option<Caller>> {
    let Some(row) = sqlx::query("SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_ms IS NULL")
        .bind(secret_hash(token))
        .fetch_optional(&state.db.pool)
        .await?
    else {
        return Ok(None);
    };
    let role: String = row.try_get("role")?;
    Ok(Some(Caller {
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| HttpError::Internal(anyhow::anyhow!("stored role {role:?}")))?,
    }))
}

/// The `/api/v1` router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/session", post(session::sign_in).delete(session::sign_out))
        .route("/api/v1/overview", get(overview::overview))
        .merge(admin::routes())
        .merge(artifacts::routes())
        .merge(audit::routes())
        .merge(devices::routes())
        .merge(rollouts::routes())
        .with_state(state)
}

async fn openapi() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn whoami(caller: Caller) -> Json<Caller> {
    Json(caller)
}

/// Pagination of list calls: `offset` and `limit` (default 100, at most 1000).
#[derive(Debug, Clone, Copy, serde::Deserialize, Default)]
pub struct Page {
    /// Entries to skip.
    pub offset: Option<i64>,
    /// Entries to return.
    pub limit: Option<i64>,
}

impl Page {
    /// The bounded (offset, limit).
    pub fn bounds(&self) -> (i64, i64) {
        (self.offset.unwrap_or(0).max(0), self.limit.unwrap_or(100).clamp(1, 1000))
    }
}
