//! The audit log: append-only and hash-chained.
//!
//! Entry `n` stores the hash of entry `n-1` and its own hash over (previous hash, sequence number, time, actor,
//! event, subject, detail). Editing any entry breaks its own hash; deleting one breaks the sequence or the next
//! entry's link; deleting the newest entries is caught by the head (sequence and hash of the newest entry) kept in
//! the settings table and updated in the same transaction. `otter-server audit verify` walks the chain and prints
//! the head, so an auditor can also keep the head outside the server and compare.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{Db, DbError, now_ms};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HEAD: &str = "audit_head";
/// Tries before giving up when another instance appends at the same moment.
const RETRIES: usize = 20;

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who: `operator:NAME`, `device:ID`, `server`.
    pub actor: String,
    /// What happened, e.g. `rollout.created`.
    pub event: String,
    /// What it happened to, e.g. `rollout:3`.
    pub subject: String,
    /// JSON with the details.
    pub detail: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// The hash of an entry's contents after `prev_hash`.
pub fn entry_hash(
    prev_hash: &str,
    seq: i64,
    at_ms: i64,
    actor: &str,
    event: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev_hash.as_bytes(),
        &seq.to_be_bytes(),
        &at_ms.to_be_bytes(),
        actor.as_bytes(),
        event.as_bytes(),
        subject.as_bytes(),
        detail.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// Appends an entry. Safe against other instances appending at the same time (the sequence number is the key:
/// the loser of a race retries on the new head).
pub async fn append(
    db: &Db,
    actor: &str,
    event: &str,
    subject: &str,
    detail: serde_json::Value,
) -> Result<i64, DbError> {
    let detail = detail.to_string();
    let mut last_err = None;
    for _ in 0..RETRIES {
        match try_append(db, actor, event, subject, &detail).await {
            Ok(seq) => return Ok(seq),
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Err(last_err.expect("at least one try"))
}

async fn try_append(db: &Db, actor: &str, event: &str, subject: &str, detail: &str) -> Result<i64, DbError> {
    let mut tx = db.pool.begin().await?;
    let seq = append_in(&mut tx, actor, event, subject, detail).await?;
    tx.commit().await?;
    Ok(seq)
}

/// Appends an entry inside the caller's transaction (`&mut *tx`), so the entry commits with the change it records
/// or not at all (the rollout scheduler records each step this way).
///
/// On PostgreSQL it first takes a transaction-scoped advisory lock: appenders inside longer transactions then
/// queue for the head instead of colliding on the next sequence number and aborting their whole transaction. On
/// SQLite the transaction's write lock already serialises appenders.
pub async fn append_in(
    tx: &mut sqlx::AnyConnection,
    actor: &str,
    event: &str,
    subject: &str,
    detail: &str,
) -> Result<i64, DbError> {
    if tx.backend_name().eq_ignore_ascii_case("postgresql") {
        sqlx::query("SELECT pg_advisory_xact_lock(7402)").execute(&mut *tx).await?;
    }
    let last = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *tx).await?;
    let (prev_seq, prev_hash) = match last {
        Some(r) => (r.try_get::<i64, _>("seq")?, r.try_get::<String, _>("hash")?),
        None => (0, GENESIS.to_owned()),
    };
    let seq = prev_seq + 1;
    let at = now_ms();
    let hash = entry_hash(&prev_hash, seq, at, actor, event, subject, detail);
    sqlx::query(
        "INSERT INTO audit (seq, at_ms, actor, event, subject, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor)
    .bind(event)
    .bind(subject)
    .bind(detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2")
        .bind(HEAD)
        .bind(format!("{seq}:{hash}"))
        .execute(&mut *tx)
        .await?;
    Ok(seq)
}

fn row_entry(r: &sqlx::any::AnyRow) -> Result<Entry, sqlx::Error> {
    Ok(Entry {
        seq: r.try_get("seq")?,
        at_ms: r.try_get("at_ms")?,
        actor: r.try_get("actor")?,
        event: r.try_get("event")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// A filter for listing entries.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Query {
    /// Only entries about this subject (`device:gw-1`, `rollout:3`).
    pub subject: Option<String>,
    /// Only entries by this actor.
    pub actor: Option<String>,
    /// Only this event.
    pub event: Option<String>,
    /// Entries before this sequence number (paging backwards).
    pub before: Option<i64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// Entries matching `q`, newest first.
pub async fn list(db: &Db, q: &Query) -> Result<Vec<Entry>, DbError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = sqlx::query(
        "SELECT * FROM audit WHERE ($1 = '' OR subject = $1) AND ($2 = '' OR actor = $2) AND ($3 = '' OR event = $3) \
         AND seq < $4 ORDER BY seq DESC LIMIT $5",
    )
    .bind(q.subject.clone().unwrap_or_default())
    .bind(q.actor.clone().unwrap_or_default())
    .bind(q.event.clone().unwrap_or_default())
    .bind(q.before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(row_entry).collect::<Result<_, _>>()?)
}

/// What is wrong with the chain, at the first place it breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum ChainBreak {
    /// A sequence number is missing: entries were deleted.
    #[error("entry {expected} is missing (found {found} next): entries were deleted")]
    Missing {
        /// The sequence number expected.
        expected: i64,
        /// The one found instead.
        found: i64,
    },
    /// An entry's hash does not match its contents: it was edited.
    #[error("entry {seq} does not match its hash: it was edited")]
    Edited {
        /// The entry.
        seq: i64,
    },
    /// An entry does not link to the one before it.
    #[error("entry {seq} does not link to entry {}: the chain was rewritten", seq - 1)]
    Unlinked {
        /// The entry.
        seq: i64,
    },
    /// The newest entries are gone (the head records a later entry).
    #[error("the log ends at entry {found} but its head records entry {head}: the newest entries were deleted")]
    Truncated {
        /// The sequence number the head records.
        head: i64,
        /// The last one found.
        found: i64,
    },
    /// The head does not match the newest entry.
    #[error("the recorded head does not match entry {seq}")]
    HeadMismatch {
        /// The newest entry.
        seq: i64,
    },
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Entries checked.
    pub entries: i64,
    /// The newest entry's hash (keep it: a later check must extend it).
    pub head: String,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
}

/// Walks the whole chain (in pages, so memory stays flat on a long log).
pub async fn verify(db: &Db) -> Result<Verification, DbError> {
    let mut prev_hash = GENESIS.to_owned();
    let mut expected = 1i64;
    loop {
        let rows = sqlx::query("SELECT * FROM audit WHERE seq >= $1 ORDER BY seq LIMIT 1000")
            .bind(expected)
            .fetch_all(&db.pool)
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let e = row_entry(r)?;
            let broken = if e.seq != expected {
                Some(ChainBreak::Missing { expected, found: e.seq })
            } else if e.prev_hash != prev_hash {
                Some(ChainBreak::Unlinked { seq: e.seq })
            } else if entry_hash(&e.prev_hash, e.seq, e.at_ms, &e.actor, &e.event, &e.subject, &e.detail) != e.hash {
                Some(ChainBreak::Edited { seq: e.seq })
            } else {
                None
            };
            if broken.is_some() {
                return Ok(Verification { entries: expected - 1, head: prev_hash, broken });
            }
            prev_hash = e.hash;
            expected += 1;
        }
    }
    let found = expected - 1;
    let head = sqlx::query("SELECT value FROM settings WHERE name = $1").bind(HEAD).fetch_optional(&db.pool).await?;
    let broken = match head {
        None if found == 0 => None,
        None => Some(ChainBreak::HeadMismatch { seq: found }),
        Some(r) => {
            let v: String = r.try_get("value")?;
            let (s, h) = v.split_once(':').unwrap_or(("", ""));
            let s: i64 = s.parse().unwrap_or(-1);
            if s > found {
                Some(ChainBreak::Truncated { head: s, found })
            } else if s != found || h != prev_hash {
                Some(ChainBreak::HeadMismatch { seq: found })
            } else {
                None
            }
        }
    };
    Ok(Verification { entries: found, head: prev_hash, broken })
}

/// Whether an entry with this hash is in the chain (an auditor's saved head must still be there after a later
/// check; a rewritten chain has other hashes).
pub async fn chain_contains(db: &Db, hash: &str) -> Result<bool, DbError> {
    Ok(sqlx::query("SELECT seq FROM audit WHERE hash = $1").bind(hash).fetch_optional(&db.pool).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("a.db").display())).await.unwrap();
        (dir, db)
    }

    async fn three(db: &Db) {
        for i in 0..3 {
            append(db, "operator:ann", "test.event", &format!("thing:{i}"), json!({"i": i})).await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_intact_chain_verifies() {
        let (_d, db) = db().await;
        assert_eq!(verify(&db).await.unwrap(), Verification { entries: 0, head: GENESIS.into(), broken: None });
        three(&db).await;
        let v = verify(&db).await.unwrap();
        assert_eq!((v.entries, v.broken), (3, None));
        let newest = &list(&db, &Query::default()).await.unwrap()[0];
        assert_eq!((newest.seq, &newest.hash), (3, &v.head));
        let only = list(&db, &Query { subject: Some("thing:1".into()), ..Default::default() }).await.unwrap();
        assert_eq!(only.len(), 1);
    }

    #[tokio::test]
    async fn an_edited_entry_is_found() {
        let (_d, db) = db().await;
        three(&db).await;
        sqlx::query("UPDATE audit SET detail = '{\"i\":9}' WHERE seq = 2").execute(&db.pool).await.unwrap();
        assert_eq!(verify(&db).await.unwrap().broken, Some(ChainBreak::Edited { seq: 2 }));
    }

    #[tokio::test]
    async fn a_deleted_entry_is_found() {
        let (_d, db) = db().await;
        three(&db).await;
        sqlx::query("DELETE FROM audit WHERE seq = 2").execute(&db.pool).await.unwrap();
        assert_eq!(verify(&db).await.unwrap().broken, Some(ChainBreak::Missing { expected: 2, found: 3 }));
    }

    #[tokio::test]
    async fn a_deleted_tail_is_found() {
        let (_d, db) = db().await;
        three(&db).await;
        sqlx::query("DELETE FROM audit WHERE seq = 3").execute(&db.pool).await.unwrap();
        assert_eq!(verify(&db).await.unwrap().broken, Some(ChainBreak::Truncated { head: 3, found: 2 }));
    }

    #[tokio::test]
    async fn a_rewritten_chain_is_found() {
        // Recomputing an edited entry's own hash still leaves the next entry pointing at the old one.
        let (_d, db) = db().await;
        three(&db).await;
        let e = &list(&db, &Query { subject: Some("thing:1".into()), ..Default::default() }).await.unwrap()[0];
        let forged = entry_hash(&e.prev_hash, e.seq, e.at_ms, &e.actor, &e.event, &e.subject, "{}");
        sqlx::query("UPDATE audit SET detail = '{}', hash = $1 WHERE seq = 2")
            .bind(forged)
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(verify(&db).await.unwrap().broken, Some(ChainBreak::Unlinked { seq: 3 }));
    }
}
