//! The device registry: identities, target tokens, tags, inventory attributes and what each device reports.
//! Shared by the device API (authentication, inventory) and the operator API (registry, tokens).

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::auth::{new_secret, prefix, secret_hash};
use crate::db::{Db, now_ms};
use crate::error::{HttpError, HttpResult};

/// Longest controller id accepted (hawkBit allows 256).
pub const MAX_ID: usize = 256;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Row id.
    pub id: i64,
    /// The DDI controller id.
    pub controller_id: String,
    /// Device type (set at registration, or from the `compatible` inventory attribute).
    pub compatible: Option<String>,
    /// When it was registered (ms).
    pub created_ms: i64,
    /// Its last request (ms).
    pub last_seen_ms: Option<i64>,
    /// The version it last reported running (set when an update closes with success, or from inventory).
    pub reported_version: Option<String>,
    /// `registered`, `in-sync`, `pending`, `error`.
    pub reported_state: String,
    /// Inventory attributes (DDI `configData`).
    pub attributes: BTreeMap<String, String>,
    /// When the attributes were last sent (ms); `None` = never, so the device is asked for them.
    pub attributes_ms: Option<i64>,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether the device has a target token (false = revoked or never issued).
    pub has_token: bool,
}

/// Whether `id` is acceptable as a controller id: 1–256 characters, no control characters, no `/`.
pub fn valid_controller_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID && !id.chars().any(|c| c.is_control() || c == '/' || c == '\\')
}

/// A device's tags, sorted.
pub async fn tags_of(db: &Db, id: i64) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query("SELECT tag FROM device_tags WHERE device_id = $1 ORDER BY tag")
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(|r| r.try_get("tag")).collect()
}

/// Builds a device from its row (tags read separately).
pub fn from_row(r: &sqlx::any::AnyRow, tags: Vec<String>) -> Result<Device, sqlx::Error> {
    let attributes: String = r.try_get("attributes")?;
    let token: Option<String> = r.try_get("token_hash")?;
    Ok(Device {
        id: r.try_get("id")?,
        controller_id: r.try_get("controller_id")?,
        compatible: r.try_get("compatible")?,
        created_ms: r.try_get("created_ms")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        reported_version: r.try_get("reported_version")?,
        reported_state: r.try_get("reported_state")?,
        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
        attributes_ms: r.try_get("attributes_ms")?,
        tags,
        has_token: token.is_some(),
    })
}

/// The device with this controller id, if registered.
pub async fn by_controller_id(db: &Db, controller_id: &str) -> Result<Option<Device>, sqlx::Error> {
    let Some(r) = sqlx::query("SELECT * FROM devices WHERE controller_id = $1")
        .bind(controller_id)
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(None);
    };
    let id: i64 = r.try_get("id")?;
    Ok(Some(from_row(&r, tags_of(db, id).await?)?))
}

/// The device holding this target token, if any.
pub async fn by_token(db: &Db, token: &str) -> Result<Option<Device>, sqlx::Error> {
    let Some(r) = sqlx::query("SELECT * FROM devices WHERE token_hash = $1")
        .bind(secret_hash(token))
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(None);
    };
    let id: i64 = r.try_get("id")?;
    Ok(Some(from_row(&r, tags_of(db, id).await?)?))
}

/// Registers a device and issues its target token (shown once). Refuses an id already registered.
pub async fn register(
    db: &Db,
    controller_id: &str,
    compatible: Option<&str>,
    tags: &[String],
    with_token: bool,
    by: &str,
) -> HttpResult<(Device, Option<String>)> {
    let mut tx = db.pool.begin().await?;
    let Some((_, token)) = insert(&mut tx, controller_id, compatible, tags, with_token, by).await? else {
        return Err(HttpError::Conflict(format!("device {controller_id} is already registered")));
    };
    tx.commit().await?;
    crate::audit::append(
        db,
        by,
        "device.registered",
        &format!("device:{controller_id}"),
        serde_json::json!({"compatible": compatible, "tags": tags}),
    )
    .await?;
    let device = by_controller_id(db, controller_id).await?.expect("just inserted");
    Ok((device, token))
}

/// Inserts a device with its tags inside the caller's transaction (enrollment consumes its provisioning token in
/// the same one), issuing a target token when asked. `None` when the id is already registered. No audit entry:
/// the caller writes it after its commit.
pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    controller_id: &str,
    compatible: Option<&str>,
    tags: &[String],
    with_token: bool,
    by: &str,
) -> HttpResult<Option<(i64, Option<String>)>> {
    if !valid_controller_id(controller_id) {
        return Err(HttpError::BadRequest(format!(
            "controller id {controller_id:?}: 1–{MAX_ID} characters, no '/' or control characters"
        )));
    }
    check_tags(tags)?;
    let token = with_token.then(|| new_secret(prefix::TARGET));
    let row = sqlx::query(
        "INSERT INTO devices (controller_id, token_hash, compatible, created_ms, enrolled_by) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (controller_id) DO NOTHING RETURNING id",
    )
    .bind(controller_id)
    .bind(token.as_deref().map(secret_hash))
    .bind(compatible)
    .bind(now_ms())
    .bind(by)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id: i64 = row.try_get("id")?;
    for t in tags {
        sqlx::query("INSERT INTO device_tags (device_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(t)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some((id, token)))
}

fn check_tags(tags: &[String]) -> HttpResult<()> {
    for t in tags {
        if t.is_empty() || t.len() > 100 || t.chars().any(char::is_control) {
            return Err(HttpError::BadRequest(format!("tag {t:?}: 1–100 characters, no control characters")));
        }
    }
    Ok(())
}

/// Replaces a device's tags.
pub async fn set_tags(db: &Db, id: i64, tags: &[String]) -> HttpResult<()> {
    check_tags(tags)?;
    let mut tx = db.pool.begin().await?;
    sqlx::query("DELETE FROM device_tags WHERE device_id = $1").bind(id).execute(&mut *tx).await?;
    for t in tags {
        sqlx::query("INSERT INTO device_tags (device_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(t)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Issues a new target token for a device (the old one stops working at once). Shown once.
pub async fn rotate_token(db: &Db, controller_id: &str, by: &str) -> HttpResult<String> {
    let token = new_secret(prefix::TARGET);
    set_token_hash(db, controller_id, Some(secret_hash(&token)), "device.token-rotated", by).await?;
    Ok(token)
}

/// Revokes a device's target token: it can no longer authenticate until a new one is issued.
pub async fn revoke_token(db: &Db, controller_id: &str, by: &str) -> HttpResult<()> {
    set_token_hash(db, controller_id, None, "device.token-revoked", by).await
}

async fn set_token_hash(db: &Db, controller_id: &str, hash: Option<String>, event: &str, by: &str) -> HttpResult<()> {
    let n = sqlx::query("UPDATE devices SET token_hash = $1 WHERE controller_id = $2")
        .bind(hash)
        .bind(controller_id)
        .execute(&db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(HttpError::NotFound(format!("no device {controller_id}")));
    }
    crate::audit::append(db, by, event, &format!("device:{controller_id}"), serde_json::json!({})).await?;
    Ok(())
}

/// Records that the device was heard from.
pub async fn touch(db: &Db, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET last_seen_ms = $1 WHERE id = $2").bind(now_ms()).bind(id).execute(&db.pool).await?;
    Ok(())
}

/// Devices per statement of [`SeenBuffer::flush`] (two parameters each: far below SQLite's and PostgreSQL's limits).
const SEEN_PER_STATEMENT: usize = 400;

/// `last_seen_ms` updates waiting to be written, so that a poll — the hot path, thousands a second — does not
/// write to the database: [`SeenBuffer::flush`] writes them all in one transaction, once a second (the server's
/// flusher task, started by `serve`). A device's first contact is written at once instead (the registry shows a
/// new device as seen right away); later ones at most a second late, and a crash loses at most that second.
#[derive(Debug, Default)]
pub struct SeenBuffer {
    pending: std::sync::Mutex<std::collections::HashMap<i64, i64>>,
}

impl SeenBuffer {
    /// Notes that device `id` was heard from at `at_ms` (memory only).
    pub fn note(&self, id: i64, at_ms: i64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let t = p.entry(id).or_insert(at_ms);
        *t = (*t).max(at_ms);
    }

    /// How many devices wait to be written.
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what is pending in one transaction (a time never moves backwards: another instance may have
    /// written a later one). On failure the entries are put back for the next flush.
    pub async fn flush(&self, db: &Db) -> Result<usize, sqlx::Error> {
        let batch: Vec<(i64, i64)> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let write = async {
            let mut tx = db.pool.begin().await?;
            // A few hundred devices per statement: one round trip to the database instead of one per device.
            for rows in batch.chunks(SEEN_PER_STATEMENT) {
                let values: Vec<String> =
                    (0..rows.len()).map(|k| format!("(${}, ${})", 2 * k + 1, 2 * k + 2)).collect();
                let sql = format!(
                    "WITH seen(id, at) AS (VALUES {}) UPDATE devices SET last_seen_ms = seen.at FROM seen \
                     WHERE devices.id = seen.id AND (devices.last_seen_ms IS NULL OR devices.last_seen_ms < seen.at)",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for (id, at) in rows {
                    q = q.bind(*id).bind(*at);
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await
        };
        match write.await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for (id, at) in batch {
                    self.note(id, at);
                }
                Err(e)
            }
        }
    }
}

/// What authenticating a device request needs: one row, no tags (the poll is the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Row id.
    pub id: i64,
    /// The DDI controller id.
    pub controller_id: String,
    /// SHA-256 of its target token; `None` = revoked or never issued.
    pub token_hash: Option<String>,
    /// Its last request (ms).
    pub last_seen_ms: Option<i64>,
    /// When it last sent attributes (ms); `None` = never, or asked for them again.
    pub attributes_ms: Option<i64>,
}

/// The identity of the device with this controller id, if registered.
pub async fn identity(db: &Db, controller_id: &str) -> Result<Option<Identity>, sqlx::Error> {
    let r = sqlx::query(
        "SELECT id, controller_id, token_hash, last_seen_ms, attributes_ms FROM devices WHERE controller_id = $1",
    )
    .bind(controller_id)
    .fetch_optional(&db.pool)
    .await?;
    r.as_ref().map(identity_from_row).transpose()
}

/// Builds an [`Identity`] from a row with the columns `id`, `controller_id`, `token_hash`, `last_seen_ms` and
/// `attributes_ms` (the poll reads them with more: `ddi::poll::view`).
pub fn identity_from_row(r: &sqlx::any::AnyRow) -> Result<Identity, sqlx::Error> {
    Ok(Identity {
        id: r.try_get("id")?,
        controller_id: r.try_get("controller_id")?,
        token_hash: r.try_get("token_hash")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        attributes_ms: r.try_get("attributes_ms")?,
    })
}

/// The controller id of the device holding this target token, if any.
pub async fn controller_id_of_token(db: &Db, token: &str) -> Result<Option<String>, sqlx::Error> {
    let r = sqlx::query("SELECT controller_id FROM devices WHERE token_hash = $1")
        .bind(secret_hash(token))
        .fetch_optional(&db.pool)
        .await?;
    r.map(|r| r.try_get("controller_id")).transpose()
}

/// Stores a device's inventory attributes (already merged and checked by the caller) and, when the device has no
/// compatible yet, takes it from them.
pub async fn set_attributes(
    db: &Db,
    id: i64,
    attributes: &BTreeMap<String, String>,
    compatible: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE devices SET attributes = $1, attributes_ms = $2, compatible = COALESCE(compatible, $3) WHERE id = $4",
    )
    .bind(serde_json::to_string(attributes).expect("strings serialise"))
    .bind(now_ms())
    .bind(compatible)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Asks the device for its attributes again at its next poll (DDI `configData` link), e.g. after an update.
pub async fn request_attributes(db: &Db, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET attributes_ms = NULL WHERE id = $1").bind(id).execute(&db.pool).await?;
    Ok(())
}

/// Records what the device reports: its state (`in-sync`, `pending`, `error`) and, when known, the version it runs.
pub async fn set_reported(db: &Db, id: i64, state: &str, version: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE devices SET reported_state = $1, reported_version = COALESCE($2, reported_version) WHERE id = $3",
    )
    .bind(state)
    .bind(version)
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seen_times_are_written_in_one_flush_and_never_move_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("d.db").display())).await.unwrap();
        let mut ids = Vec::new();
        for c in ["a", "b"] {
            ids.push(register(&db, c, None, &[], false, "test").await.unwrap().0.id);
        }
        let buf = SeenBuffer::default();
        buf.note(ids[0], 5_000);
        buf.note(ids[0], 4_000);
        buf.note(ids[1], 7_000);
        assert_eq!(buf.len(), 2);
        assert_eq!(buf.flush(&db).await.unwrap(), 2);
        assert!(buf.is_empty());
        let seen = |c: &'static str| {
            let db = db.clone();
            async move { by_controller_id(&db, c).await.unwrap().unwrap().last_seen_ms }
        };
        assert_eq!((seen("a").await, seen("b").await), (Some(5_000), Some(7_000)));
        // An older time (another instance wrote a later one) does not win.
        buf.note(ids[0], 1_000);
        buf.flush(&db).await.unwrap();
        assert_eq!(seen("a").await, Some(5_000));
        assert_eq!(buf.flush(&db).await.unwrap(), 0);
    }
}

/// A device's standing consent (DDI auto-confirmation): every action that asks for consent runs at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AutoConfirm {
    /// Who turned it on, as the device reported it (a user or an application on the device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// Why, as the device reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
    /// When (ms).
    pub activated_ms: i64,
}

impl AutoConfirm {
    /// "auto-confirmation turned on by X (remark)".
    pub fn describe(&self) -> String {
        let by = self.initiator.as_deref().map(|i| format!(" by {i}")).unwrap_or_default();
        let why = self.remark.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        format!("auto-confirmation turned on{by}{why}")
    }
}

/// The device's auto-confirmation, if on.
pub async fn auto_confirm(db: &Db, device_id: i64) -> Result<Option<AutoConfirm>, sqlx::Error> {
    auto_confirm_in(&mut *db.pool.acquire().await?, device_id).await
}

/// [`auto_confirm`] on a connection (or in a transaction).
pub async fn auto_confirm_in(
    conn: &mut sqlx::AnyConnection,
    device_id: i64,
) -> Result<Option<AutoConfirm>, sqlx::Error> {
    let r = sqlx::query("SELECT auto_confirm FROM devices WHERE id = $1").bind(device_id).fetch_optional(conn).await?;
    let text: Option<String> = match r {
        Some(r) => r.try_get("auto_confirm")?,
        None => None,
    };
    text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(format!("auto_confirm: {e}").into())))
        .transpose()
}

/// Turns the device's auto-confirmation on (`Some`) or off (`None`), audited with the device as the actor.
pub async fn set_auto_confirm(db: &Db, device: &Identity, auto: Option<&AutoConfirm>) -> HttpResult<()> {
    let text = auto.map(|a| serde_json::to_string(a).expect("strings serialise"));
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE devices SET auto_confirm = $1 WHERE id = $2")
        .bind(text)
        .bind(device.id)
        .execute(&mut *tx)
        .await?;
    let (event, detail) = match auto {
        Some(a) => ("device.auto-confirm-on", serde_json::to_value(a).expect("serialisable")),
        None => ("device.auto-confirm-off", serde_json::json!({})),
    };
    let actor = format!("device:{}", device.controller_id);
    crate::audit::append_in(&mut tx, &actor, event, &actor, &detail.to_string()).await?;
    tx.commit().await?;
    Ok(())
}
