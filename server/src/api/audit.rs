//! The audit log and the compliance report.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::Caller;
use crate::AppState;
use crate::audit::{self, Entry, Verification};
use crate::auth::Permission;
use crate::db::Db;
use crate::error::HttpResult;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit", get(list))
        .route("/api/v1/audit/verify", get(verify))
        .route("/api/v1/compliance", get(compliance))
}

/// Filters of the audit log as the API takes them: those of [`audit::Query`], plus `device` (a controller id: the
/// entries about that device, i.e. `subject=device:ID`).
#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    subject: Option<String>,
    device: Option<String>,
    actor: Option<String>,
    event: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

impl AuditQuery {
    fn into_query(self) -> HttpResult<audit::Query> {
        let subject = match (self.subject, self.device) {
            (Some(_), Some(_)) => {
                return Err(crate::error::HttpError::BadRequest("give subject or device, not both".into()));
            }
            (s, d) => s.or(d.map(|d| format!("device:{d}"))),
        };
        Ok(audit::Query { subject, actor: self.actor, event: self.event, before: self.before, limit: self.limit })
    }
}

async fn list(State(st): State<AppState>, caller: Caller, Query(q): Query<AuditQuery>) -> HttpResult<Json<Vec<Entry>>> {
    caller.require(Permission::Read)?;
    Ok(Json(audit::list(&st.db, &q.into_query()?).await?))
}

async fn verify(State(st): State<AppState>, caller: Caller) -> HttpResult<Json<Verification>> {
    caller.require(Permission::Read)?;
    Ok(Json(audit::verify(&st.db).await?))
}

/// One device's line in the compliance report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceCompliance {
    /// Controller id.
    pub controller_id: String,
    /// Device type.
    pub compatible: Option<String>,
    /// The version it reports.
    pub version: Option<String>,
    /// The sha256 of the artifact of its last successful update.
    pub artifact_sha256: Option<String>,
    /// The security version of that artifact.
    pub security_version: Option<i64>,
    /// When that update finished (ms).
    pub last_update_ms: Option<i64>,
    /// When its last failed update ended (ms).
    pub last_failure_ms: Option<i64>,
    /// The device's message for that failure.
    pub last_failure: Option<String>,
    /// Last request (ms).
    pub last_seen_ms: Option<i64>,
    /// Whether the security version is below the report's minimum.
    pub below_minimum: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Compliance {
    /// The minimum security version asked for.
    pub min_security_version: Option<i64>,
    /// Devices per reported version (`unknown` for none).
    pub versions: BTreeMap<String, i64>,
    /// Devices whose security version is below the minimum (or unknown, when a minimum is given).
    pub below_minimum: Vec<String>,
    /// Per device.
    pub devices: Vec<DeviceCompliance>,
}

#[derive(Debug, Deserialize)]
struct ComplianceQuery {
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Flag devices below this security version.
    min_security_version: Option<i64>,
}

/// Builds the report: one pass over the devices with their last successful and last failed action.
pub async fn report(db: &Db, min: Option<i64>) -> HttpResult<Compliance> {
    let rows = sqlx::query(
        "SELECT d.controller_id, d.compatible, d.reported_version, d.last_seen_ms, \
           (SELECT a.sha256 FROM actions x JOIN artifacts a ON a.id = x.artifact_id \
              WHERE x.device_id = d.id AND x.state = 'finished' ORDER BY x.id DESC LIMIT 1) AS ok_sha256, \
           (SELECT a.security_version FROM actions x JOIN artifacts a ON a.id = x.artifact_id \
              WHERE x.device_id = d.id AND x.state = 'finished' ORDER BY x.id DESC LIMIT 1) AS ok_sv, \
           (SELECT x.updated_ms FROM actions x WHERE x.device_id = d.id AND x.state = 'finished' ORDER BY x.id DESC LIMIT 1) AS ok_ms, \
           (SELECT x.updated_ms FROM actions x WHERE x.device_id = d.id AND x.state = 'error' ORDER BY x.id DESC LIMIT 1) AS fail_ms, \
           (SELECT x.last_message FROM actions x WHERE x.device_id = d.id AND x.state = 'error' ORDER BY x.id DESC LIMIT 1) AS fail_msg \
         FROM devices d ORDER BY d.controller_id",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut out = Compliance {
        min_security_version: min,
        versions: BTreeMap::new(),
        below_minimum: Vec::new(),
        devices: Vec::new(),
    };
    for r in rows {
        let security_version: Option<i64> = r.try_get("ok_sv")?;
        let below = min.is_some_and(|m| security_version.is_none_or(|s| s < m));
        let d = DeviceCompliance {
            controller_id: r.try_get("controller_id")?,
            compatible: r.try_get("compatible")?,
            version: r.try_get("reported_version")?,
            artifact_sha256: r.try_get("ok_sha256")?,
            security_version,
            last_update_ms: r.try_get("ok_ms")?,
            last_failure_ms: r.try_get("fail_ms")?,
            last_failure: r.try_get("fail_msg")?,
            last_seen_ms: r.try_get("last_seen_ms")?,
            below_minimum: below,
        };
        *out.versions.entry(d.version.clone().unwrap_or_else(|| "unknown".into())).or_default() += 1;
        if below {
            out.below_minimum.push(d.controller_id.clone());
        }
        out.devices.push(d);
    }
    Ok(out)
}

/// One CSV field (RFC 4180 quoting; a leading formula character is neutralised for spreadsheets).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// The report as CSV, one line per device.
pub fn to_csv(c: &Compliance) -> String {
    let mut out = String::from(
        "controller_id,compatible,version,artifact_sha256,security_version,last_update_ms,last_failure_ms,last_failure,last_seen_ms,below_minimum\n",
    );
    let opt = |v: &Option<String>| v.as_deref().map(csv_field).unwrap_or_default();
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    for d in &c.devices {
        out.push_str(
            &[
                csv_field(&d.controller_id),
                opt(&d.compatible),
                opt(&d.version),
                opt(&d.artifact_sha256),
                num(d.security_version),
                num(d.last_update_ms),
                num(d.last_failure_ms),
                opt(&d.last_failure),
                num(d.last_seen_ms),
                d.below_minimum.to_string(),
            ]
            .join(","),
        );
        out.push('\n');
    }
    out
}

async fn compliance(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ComplianceQuery>,
) -> HttpResult<Response> {
    caller.require(Permission::Read)?;
    let c = report(&st.db, q.min_security_version).await?;
    Ok(match q.format.as_deref() {
        Some("csv") => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"compliance.csv\""),
            ],
            to_csv(&c),
        )
            .into_response(),
        None | Some("json") => Json(c).into_response(),
        Some(other) => return Err(crate::error::HttpError::BadRequest(format!("format {other:?}: json or csv"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_neutralises_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
    }
}
