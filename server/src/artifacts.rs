//! Artifacts: uploaded `.otter` files, verified against the server's keyring, stored content-addressed.
//!
//! An upload streams to a temporary file in the store while its sha256/sha1/md5 are computed (DDI announces all
//! three), bounded by `--max-upload`. Then the whole artifact is read back through the same verifying reader a
//! device uses: signature against the keyring first, then every chunk against the signed manifest, nothing after
//! the end. Only a file that passes is moved to `sha256/AB/ABCD…` and recorded; anything else is deleted and
//! refused with the reader's error. The same bytes uploaded twice are one artifact.

use std::path::{Path, PathBuf};

use md5::Md5;
use otter_artifact::{ArtifactReader, Policy};
use serde::Serialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::io::AsyncWriteExt;

use crate::AppState;
use crate::db::{Db, now_ms};
use crate::error::{HttpError, HttpResult};

/// The artifact directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `dir`.
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::create_dir_all(dir.join("sha256"))?;
        Ok(Self { dir })
    }

    /// Where the artifact with this sha256 (64 lowercase hex digits, checked by the caller) lives.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(&sha256[..2]).join(sha256)
    }

    /// A directory for uploads in progress (same filesystem as the store, so the final move is a rename).
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}

/// Whether `s` is a sha256 as the store names files (so it can go into a path).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A stored artifact, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Id.
    pub id: i64,
    /// SHA-256 of the file (hex).
    pub sha256: String,
    /// SHA-1 (hex; DDI announces it).
    pub sha1: String,
    /// MD5 (hex; DDI announces it).
    pub md5: String,
    /// Size in bytes.
    pub size: i64,
    /// The file name devices see.
    pub filename: String,
    /// The manifest's version.
    pub version: String,
    /// The manifest's compatible device types.
    pub compatible: Vec<String>,
    /// The manifest's security version.
    pub security_version: i64,
    /// The id of the key that signed it (hex).
    pub signer: String,
    /// The manifest's description.
    pub description: Option<String>,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// When (ms since the epoch).
    pub created_ms: i64,
}

impl Artifact {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        let compatible: String = r.try_get("compatible")?;
        Ok(Self {
            id: r.try_get("id")?,
            sha256: r.try_get("sha256")?,
            sha1: r.try_get("sha1")?,
            md5: r.try_get("md5")?,
            size: r.try_get("size")?,
            filename: r.try_get("filename")?,
            version: r.try_get("version")?,
            compatible: serde_json::from_str(&compatible).unwrap_or_default(),
            security_version: r.try_get("security_version")?,
            signer: r.try_get("signer")?,
            description: r.try_get("description")?,
            uploaded_by: r.try_get("uploaded_by")?,
            created_ms: r.try_get("created_ms")?,
        })
    }
}

/// The artifact with this id.
pub async fn get(db: &Db, id: i64) -> HttpResult<Artifact> {
    let r = sqlx::query("SELECT * FROM artifacts WHERE id = $1").bind(id).fetch_optional(&db.pool).await?;
    let r = r.ok_or_else(|| HttpError::NotFound(format!("no artifact {id}")))?;
    Ok(Artifact::from_row(&r)?)
}

/// The version of the artifact with this id (for views that show an action's or a rollout's release).
pub async fn version_of(db: &Db, id: i64) -> Result<String, sqlx::Error> {
    sqlx::query("SELECT version FROM artifacts WHERE id = $1").bind(id).fetch_one(&db.pool).await?.try_get("version")
}

/// Every artifact, newest first.
pub async fn list(db: &Db) -> HttpResult<Vec<Artifact>> {
    let rows = sqlx::query("SELECT * FROM artifacts ORDER BY id DESC").fetch_all(&db.pool).await?;
    Ok(rows.iter().map(Artifact::from_row).collect::<Result<_, _>>()?)
}

/// What the verifying read of an upload found.
struct Verified {
    version: String,
    compatible: Vec<String>,
    security_version: u64,
    signer: String,
    description: Option<String>,
}

fn verify_file(path: &Path, keyring: &otter_artifact::Keyring) -> Result<Verified, otter_artifact::ArtifactError> {
    let f = std::fs::File::open(path).map_err(|source| otter_artifact::ArtifactError::Io {
        context: format!("opening {}", path.display()),
        source,
    })?;
    let mut r = ArtifactReader::open(std::io::BufReader::with_capacity(1 << 20, f), keyring, &Policy::default())?;
    r.verify_all()?;
    let m = r.manifest();
    Ok(Verified {
        version: m.version.clone(),
        compatible: m.compatible.clone(),
        security_version: m.security_version,
        signer: r.signed_by().to_string(),
        description: m.description.clone(),
    })
}

/// Receives an upload body, verifies it, stores it and records it (or finds the same bytes already recorded).
/// Returns the artifact and whether it is new.
pub async fn ingest<S, E>(state: &AppState, mut body: S, filename: &str, actor: &str) -> HttpResult<(Artifact, bool)>
where
    S: futures_core::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if filename.is_empty() || filename.len() > 200 || filename.contains(['/', '\\', '\0']) || filename.starts_with('.')
    {
        return Err(HttpError::BadRequest(format!("filename {filename:?}: 1–200 characters, no path")));
    }
    let tmp = tempfile::Builder::new()
        .prefix("upload-")
        .tempfile_in(state.store.tmp_dir())
        .map_err(|e| HttpError::Internal(e.into()))?;
    let (std_file, tmp_path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(std_file);
    let (mut s256, mut s1, mut m5) = (Sha256::new(), Sha1::new(), Md5::new());
    let mut size = 0u64;
    let max = state.config.max_upload;
    while let Some(chunk) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_next(cx)).await {
        let chunk = chunk.map_err(|e| HttpError::BadRequest(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > max {
            return Err(HttpError::TooLarge(format!("upload exceeds the limit of {max} bytes (--max-upload)")));
        }
        s256.update(&chunk);
        s1.update(&chunk);
        m5.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| HttpError::Internal(e.into()))?;
    }
    file.sync_all().await.map_err(|e| HttpError::Internal(e.into()))?;
    drop(file);
    let sha256 = hex::encode(s256.finalize());
    let (sha1, md5) = (hex::encode(s1.finalize()), hex::encode(m5.finalize()));

    let keyring = state.keyring.clone();
    let check_path = tmp_path.to_path_buf();
    let verified = tokio::task::spawn_blocking(move || verify_file(&check_path, &keyring))
        .await
        .map_err(|e| HttpError::Internal(e.into()))?
        .map_err(|e| HttpError::Unprocessable(format!("artifact refused: {}", otter_common::error_chain(&e))))?;

    let final_path = state.store.path_of(&sha256);
    std::fs::create_dir_all(final_path.parent().expect("store paths have a parent"))
        .map_err(|e| HttpError::Internal(e.into()))?;
    // Same bytes, same name: a concurrent upload of the same file renames over an identical file.
    tmp_path.persist(&final_path).map_err(|e| HttpError::Internal(e.error.into()))?;

    let compatible = serde_json::to_string(&verified.compatible).expect("strings serialise");
    let inserted = sqlx::query(
        "INSERT INTO artifacts (sha256, sha1, md5, size, filename, version, compatible, security_version, signer, \
         description, uploaded_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (sha256) DO NOTHING RETURNING id",
    )
    .bind(&sha256)
    .bind(&sha1)
    .bind(&md5)
    .bind(size as i64)
    .bind(filename)
    .bind(&verified.version)
    .bind(&compatible)
    .bind(verified.security_version.min(i64::MAX as u64) as i64)
    .bind(&verified.signer)
    .bind(&verified.description)
    .bind(actor)
    .bind(now_ms())
    .fetch_optional(&state.db.pool)
    .await?;
    let row = sqlx::query("SELECT * FROM artifacts WHERE sha256 = $1").bind(&sha256).fetch_one(&state.db.pool).await?;
    let artifact = Artifact::from_row(&row)?;
    if inserted.is_some() {
        crate::audit::append(
            &state.db,
            actor,
            "artifact.uploaded",
            &format!("artifact:{}", artifact.id),
            serde_json::json!({"sha256": sha256, "version": artifact.version, "compatible": artifact.compatible,
                "security_version": artifact.security_version, "signer": artifact.signer, "size": size}),
        )
        .await?;
    }
    Ok((artifact, inserted.is_some()))
}
