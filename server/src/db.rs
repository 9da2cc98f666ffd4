//! The database: one schema, two engines (SQLite embedded, PostgreSQL to scale), through sqlx's `Any` driver.
//!
//! Queries are written once in the dialect both engines share (`$1` placeholders, `RETURNING`, `ON CONFLICT`,
//! 64-bit integers for times and flags, JSON as text). Only the table definitions differ (the key column), so the
//! migrations are listed once with a placeholder for it.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor, Row};

/// A database error with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection string is not one this server understands.
    #[error("database url {0}: expected sqlite://PATH or postgres://…")]
    BadUrl(String),
    /// sqlx failed.
    #[error("database error")]
    Sql(#[from] sqlx::Error),
    /// The database holds a schema newer than this binary knows.
    #[error("database schema version {found} is newer than this otter-server ({known}); upgrade the server")]
    TooNew {
        /// The version in the database.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
}

/// Which engine a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite, one file in the data directory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The database handle shared by every request.
#[derive(Clone)]
pub struct Db {
    /// The pool.
    pub pool: AnyPool,
    /// The engine behind it.
    pub engine: Engine,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The key column of every table with a generated id.
const KEY_SQLITE: &str = "INTEGER PRIMARY KEY AUTOINCREMENT";
const KEY_POSTGRES: &str = "BIGSERIAL PRIMARY KEY";

/// The schema, one step per version; `{key}` is the engine's generated-key column. Never edit a released step:
/// add one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (
    id {key},
    controller_id TEXT NOT NULL UNIQUE,
    token_hash TEXT UNIQUE,
    compatible TEXT,
    created_ms BIGINT NOT NULL,
    last_seen_ms BIGINT,
    reported_version TEXT,
    reported_state TEXT NOT NULL DEFAULT 'registered',
    attributes TEXT NOT NULL DEFAULT '{}',
    attributes_ms BIGINT,
    enrolled_by TEXT
);
CREATE TABLE device_tags (
    device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE TABLE provisioning (
    id {key},
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    remaining BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE artifacts (
    id {key},
    sha256 TEXT NOT NULL UNIQUE,
    sha1 TEXT NOT NULL,
    md5 TEXT NOT NULL,
    size BIGINT NOT NULL,
    filename TEXT NOT NULL,
    version TEXT NOT NULL,
    compatible TEXT NOT NULL,
    security_version BIGINT NOT NULL,
    signer TEXT NOT NULL,
    description TEXT,
    uploaded_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE rollouts (
    id {key},
    name TEXT NOT NULL,
    artifact_id BIGINT NOT NULL REFERENCES artifacts(id),
    filter TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    current_group BIGINT NOT NULL DEFAULT 0,
    reason TEXT,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE rollout_groups (
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    idx BIGINT NOT NULL,
    state TEXT NOT NULL,
    approved_by TEXT,
    approved_ms BIGINT,
    started_ms BIGINT,
    PRIMARY KEY (rollout_id, idx)
);
CREATE TABLE rollout_members (
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    device_id BIGINT NOT NULL REFERENCES devices(id),
    group_idx BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE TABLE actions (
    id {key},
    device_id BIGINT NOT NULL REFERENCES devices(id),
    rollout_id BIGINT REFERENCES rollouts(id),
    group_idx BIGINT,
    artifact_id BIGINT NOT NULL REFERENCES artifacts(id),
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    active BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    last_message TEXT
);
CREATE INDEX actions_device ON actions(device_id, active);
CREATE INDEX actions_rollout ON actions(rollout_id, group_idx, state);
CREATE TABLE action_status (
    id {key},
    action_id BIGINT NOT NULL REFERENCES actions(id),
    at_ms BIGINT NOT NULL,
    execution TEXT NOT NULL,
    finished TEXT NOT NULL,
    code BIGINT,
    details TEXT NOT NULL
);
CREATE INDEX action_status_action ON action_status(action_id);
CREATE TABLE api_tokens (
    id {key},
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"#,
    // 2: failures an operator accepted by resuming a self-paused rollout (the rollout engine's module doc).
    r#"
ALTER TABLE rollout_groups ADD COLUMN accepted_failures BIGINT NOT NULL DEFAULT 0;
"#,
    // 3: what the poll reads in its one query: a rollout's speed as a column (the spec is JSON written by this
    // server, compact, so the pattern finds exactly the fast ones), and a device's rollouts by device. A device's
    // DDI auto-confirmation (JSON: initiator, remark, activated_ms; NULL = off).
    r#"
ALTER TABLE rollouts ADD COLUMN speed TEXT NOT NULL DEFAULT 'standard';
UPDATE rollouts SET speed = 'fast' WHERE spec LIKE '%"speed":"fast"%';
CREATE INDEX rollout_members_device ON rollout_members(device_id);
ALTER TABLE devices ADD COLUMN auto_confirm TEXT;
"#,
];

/// Connections to a SQLite database: one per core the server may run on, plus one (a write waiting for the lock
/// while reads go on), at most four. Each runs its queries on its own thread, so more than the cores only adds
/// threads and a memory map of the database each.
fn sqlite_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores as u32 + 1).clamp(2, 4)
}

impl Db {
    /// Opens (creating if needed) the database at `url` and brings its schema up to date.
    ///
    /// `sqlite://PATH` is one file; WAL mode lets readers go on while a writer commits. `postgres://…` is shared by
    /// every instance; migrations take an advisory lock so two instances starting together don't race.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        Self::open_with(url, true).await
    }

    /// Opens an existing database: a SQLite file that is not there is an error, not a new empty database (for
    /// checks such as `audit-verify`, where an empty database would pass).
    pub async fn open_existing(url: &str) -> Result<Self, DbError> {
        Self::open_with(url, false).await
    }

    async fn open_with(url: &str, create: bool) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Engine::Postgres
        } else {
            return Err(DbError::BadUrl(url.to_owned()));
        };
        let pool = match engine {
            Engine::Sqlite => {
                // The Any driver takes only the URL; the pragmas are set on each new connection.
                let sep = if url.contains('?') { '&' } else { '?' };
                let full = format!("{url}{sep}mode={}", if create { "rwc" } else { "rw" });
                let opts = AnyConnectOptions::from_str(&full)?.disable_statement_logging();
                AnyPoolOptions::new()
                    .max_connections(sqlite_connections())
                    // No ping before each use: every query is already a round trip to the connection's thread,
                    // and the poll is one query. A broken connection fails its query and is replaced.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL: readers go on while a writer commits; NORMAL sync is durable in WAL mode except
                            // for the last transactions before a power cut, which a poll repeats.
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA busy_timeout = 10000",
                                "PRAGMA foreign_keys = ON",
                                // Reads through a memory map: a page the connection's cache lost (each write by
                                // another connection empties it) costs no system call and no copy. The poll is
                                // reads only, thousands a second.
                                "PRAGMA mmap_size = 268435456",
                            ] {
                                conn.execute(pragma).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?
            }
            Engine::Postgres => {
                let opts = AnyConnectOptions::from_str(url)?.disable_statement_logging();
                // No ping before each use (a round trip per request); a connection the server dropped fails one
                // query, which the device repeats at its next poll, and is replaced.
                AnyPoolOptions::new().max_connections(16).test_before_acquire(false).connect_with(opts).await?
            }
        };
        let db = Db { pool, engine };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        if self.engine == Engine::Postgres {
            // Held to the end of the transaction: one instance migrates, the others wait and find it done.
            sqlx::query("SELECT pg_advisory_xact_lock(7401)").execute(&mut *tx).await?;
        }
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").await?;
        let current: Option<i64> =
            sqlx::query("SELECT MAX(version) AS v FROM schema_version").fetch_one(&mut *tx).await?.try_get("v")?;
        let current = current.unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(DbError::TooNew { found: current, known });
        }
        let key = match self.engine {
            Engine::Sqlite => KEY_SQLITE,
            Engine::Postgres => KEY_POSTGRES,
        };
        for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let sql = step.replace("{key}", key);
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.execute(statement).await?;
            }
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A setting (server-wide, shared by every instance), created with `init` the first time it is asked for.
    pub async fn setting_or_init(&self, name: &str, init: impl FnOnce() -> String) -> Result<String, DbError> {
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(init())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1").bind(name).fetch_one(&self.pool).await?;
        Ok(row.try_get("value")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("otter.db").display());
        let db = Db::open(&url).await.unwrap();
        let v: i64 = sqlx::query("SELECT MAX(version) AS v FROM schema_version")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .try_get("v")
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        drop(db);
        // Opening again applies nothing twice.
        let db = Db::open(&url).await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM schema_version")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
        sqlx::query("INSERT INTO schema_version (version) VALUES (999)").execute(&db.pool).await.unwrap();
        drop(db);
        assert!(matches!(Db::open(&url).await, Err(DbError::TooNew { found: 999, .. })));
    }

    #[tokio::test]
    async fn a_setting_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("d.db").display())).await.unwrap();
        assert_eq!(db.setting_or_init("k", || "first".into()).await.unwrap(), "first");
        assert_eq!(db.setting_or_init("k", || "second".into()).await.unwrap(), "first");
    }

    #[test]
    fn an_unknown_url_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(matches!(rt.block_on(Db::open("mysql://x")), Err(DbError::BadUrl(_))));
    }
}
