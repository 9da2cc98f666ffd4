//! `POST /{tenant}/controller/v1/{controllerId}/enroll` with `Authorization: ProvisioningToken <t>`: a new device
//! trades the fleet's provisioning token (limited in count and time) for its own target token.
//!
//! One transaction: the token's count goes down only if it is above zero and the token has not expired, and the
//! device is registered with the token's tags; an id that is already registered rolls it back (409, nothing
//! consumed), so a device cannot take over another's identity and a retry does not burn the count. The work per
//! request is constant (a bounded body, one indexed lookup by the token's hash), so an unknown token costs little.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use sqlx::Row;

use super::json::{EnrollAnswer, EnrollRequest};
use super::read_body;
use crate::AppState;
use crate::auth::secret_hash;
use crate::db::now_ms;
use crate::devices;
use crate::error::{HttpError, HttpResult};

/// Longest `compatible` a device may give itself.
const MAX_COMPATIBLE: usize = 128;

/// Reads `Authorization: ProvisioningToken <t>`.
fn provisioning_token(headers: &HeaderMap) -> HttpResult<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| HttpError::Unauthorized("enrollment needs Authorization: ProvisioningToken <token>".into()))?;
    match v.trim().split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("ProvisioningToken") && !t.trim().is_empty() => {
            Ok(t.trim().to_owned())
        }
        _ => Err(HttpError::Unauthorized("enrollment needs Authorization: ProvisioningToken <token>".into())),
    }
}

/// The enrollment.
pub async fn enroll(
    State(state): State<AppState>,
    Path((tenant, controller_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> HttpResult<(StatusCode, Json<EnrollAnswer>)> {
    if tenant != state.config.tenant {
        return Err(HttpError::NotFound(format!("no tenant {tenant:?}")));
    }
    let token = provisioning_token(&headers)?;
    let bytes = read_body(&headers, body).await?;
    let req: EnrollRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        EnrollRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| HttpError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    if let Some(c) = &req.compatible
        && (c.trim().is_empty() || c.len() > MAX_COMPATIBLE || c.chars().any(char::is_control))
    {
        return Err(HttpError::BadRequest(format!("compatible must be 1–{MAX_COMPATIBLE} characters")));
    }
    if !devices::valid_controller_id(&controller_id) {
        return Err(HttpError::BadRequest(format!(
            "controller id {controller_id:?}: 1–{} characters, no '/' or control characters",
            devices::MAX_ID
        )));
    }

    let hash = secret_hash(&token);
    let mut tx = state.db.pool.begin().await?;
    let row = sqlx::query(
        "UPDATE provisioning SET remaining = remaining - 1 WHERE token_hash = $1 AND remaining > 0 AND expires_ms > $2 \
         RETURNING id, name, tags",
    )
    .bind(&hash)
    .bind(now_ms())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        drop(tx);
        return Err(refusal(&state, &hash, &controller_id).await?);
    };
    let (prov_id, prov_name): (i64, String) = (row.try_get("id")?, row.try_get("name")?);
    let tags: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("tags")?)
        .map_err(|e| HttpError::Internal(anyhow::anyhow!("provisioning token {prov_id} has malformed tags: {e}")))?;
    let actor = format!("provisioning:{prov_name}");
    let inserted = devices::insert(&mut tx, &controller_id, req.compatible.as_deref(), &tags, true, &actor).await?;
    let Some((_, Some(target_token))) = inserted else {
        // Rolled back: the count is not consumed.
        drop(tx);
        tracing::warn!("ddi: enrollment of {controller_id:?} refused: already registered");
        return Err(HttpError::Conflict(format!("controller {controller_id} is already registered")));
    };
    tx.commit().await?;
    crate::audit::append(
        &state.db,
        &actor,
        "device.enrolled",
        &format!("device:{controller_id}"),
        serde_json::json!({"provisioning": prov_id, "tags": tags, "compatible": req.compatible}),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(EnrollAnswer { controller_id, target_token })))
}

/// Why a provisioning token was not accepted: unknown (401), or known but used up or expired (403).
async fn refusal(state: &AppState, hash: &str, controller_id: &str) -> HttpResult<HttpError> {
    let known = sqlx::query("SELECT remaining, expires_ms FROM provisioning WHERE token_hash = $1")
        .bind(hash)
        .fetch_optional(&state.db.pool)
        .await?;
    Ok(match known {
        None => {
            tracing::warn!("ddi: enrollment of {controller_id:?} with an unknown provisioning token");
            HttpError::Unauthorized("provisioning token not accepted".into())
        }
        Some(r) => {
            let remaining: i64 = r.try_get("remaining")?;
            let why = if remaining <= 0 { "used up" } else { "expired" };
            tracing::warn!("ddi: enrollment of {controller_id:?} with a provisioning token that is {why}");
            HttpError::Forbidden(format!("provisioning token {why}"))
        }
    })
}
