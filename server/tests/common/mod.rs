//! A real otter-server device API on 127.0.0.1: a temp data directory (SQLite), a temp keyring with a fresh
//! signing key, `ddi::router` behind `axum::serve`. Shared by `ddi.rs` and `otterd.rs`.
//!
//! With `OTTER_TEST_POSTGRES=postgres://USER@HOST:PORT` (a server where USER may create databases) each server
//! gets a fresh PostgreSQL database there instead, so the same tests check the queries on both engines.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_server::AppState;
use otter_server::artifacts::Artifact;
use otter_server::config::Config;
use otter_server::model::ActionKind;
use sqlx::Row;

/// The device type of the test artifacts.
pub const TYPE: &str = "test-gw";

/// A running server.
pub struct Server {
    /// Its state (database, store, link signer).
    pub state: AppState,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The data directory and keyring.
    pub dir: tempfile::TempDir,
    /// The key artifacts are signed with.
    pub key: ed25519_dalek::SigningKey,
    /// The public key file (for devices).
    pub public_key: PathBuf,
}

/// Starts a server; `configure` adjusts the settings (public_url is set to the listener's address).
pub async fn start(configure: impl FnOnce(&mut Config)) -> Server {
    start_with(configure, |r| r).await
}

/// Starts a server whose router goes through `wrap` (e.g. a fault-injecting middleware).
pub async fn start_with(
    configure: impl FnOnce(&mut Config),
    wrap: impl FnOnce(axum::Router) -> axum::Router,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.path().join("release")).unwrap();
    let public_key = dir.path().join("release.pub");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut config = Config::new(dir.path().join("data"), public_key.clone());
    config.public_url = url.clone();
    config.database = postgres_database().await;
    configure(&mut config);
    let state = AppState::open(config).await.unwrap();
    let app = wrap(otter_server::ddi::router(state.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { state, url, dir, key, public_key }
}

/// A fresh database on the PostgreSQL server named by `OTTER_TEST_POSTGRES`, if set.
async fn postgres_database() -> Option<String> {
    let base = std::env::var("OTTER_TEST_POSTGRES").ok()?;
    let base = base.trim_end_matches('/');
    sqlx::any::install_default_drivers();
    let name = format!("otter_test_{}", hex::encode(rand_bytes()));
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&format!("{base}/postgres")).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    Some(format!("{base}/{name}"))
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    b
}

/// A deterministic image of `len` bytes (half noise, half runs).
pub fn image(dir: &Path, seed: u8, len: usize) -> PathBuf {
    let mut data = Vec::with_capacity(len);
    let mut x = u32::from(seed) | 1;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (data.len() >> 12) % 2 == 0 {
            data.extend_from_slice(&x.to_le_bytes())
        } else {
            data.extend_from_slice(&[seed; 4])
        }
    }
    data.truncate(len);
    let p = dir.join(format!("image-{seed}.img"));
    std::fs::write(&p, data).unwrap();
    p
}

/// A signed `.otter` of `version` holding `image`, in 256 KiB chunks.
pub fn artifact_bytes(key: &ed25519_dalek::SigningKey, version: &str, image: &Path) -> Vec<u8> {
    let mut o = BuildOptions::new(vec![TYPE.into()], version);
    o.chunk_size = 256 << 10;
    o.level = 1;
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: image.to_owned() };
    let mut out = Vec::new();
    builder::create(&o, &[src], std::slice::from_ref(key), &mut out).unwrap();
    out
}

/// A body stream of one chunk, for `artifacts::ingest`.
struct Once(Option<Bytes>);

impl futures_core::Stream for Once {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.take().map(Ok))
    }
}

impl Server {
    /// Uploads a signed artifact through the verifying ingest.
    pub async fn upload(&self, bytes: Vec<u8>, filename: &str) -> Artifact {
        let (a, _) = otter_server::artifacts::ingest(&self.state, Once(Some(bytes.into())), filename, "operator:test")
            .await
            .unwrap();
        a
    }

    /// Builds and uploads an artifact of `version` (image of `len` bytes).
    pub async fn publish(&self, version: &str, seed: u8, len: usize) -> (Artifact, Vec<u8>) {
        let img = image(self.dir.path(), seed, len);
        let bytes = artifact_bytes(&self.key, version, &img);
        (self.upload(bytes.clone(), &format!("update-{version}.otter")).await, bytes)
    }

    /// Registers a device with a target token; returns (row id, token).
    pub async fn device(&self, controller_id: &str) -> (i64, String) {
        let (d, t) =
            otter_server::devices::register(&self.state.db, controller_id, Some(TYPE), &[], true, "operator:test")
                .await
                .unwrap();
        (d.id, t.unwrap())
    }

    /// Creates an action.
    pub async fn action(&self, device: i64, artifact: i64, kind: ActionKind, confirm: bool) -> i64 {
        otter_server::actions::create(&self.state.db, device, artifact, kind, None, confirm).await.unwrap()
    }

    /// `{url}/{tenant}/controller/v1/{id}`.
    pub fn base(&self, controller_id: &str) -> String {
        format!("{}/DEFAULT/controller/v1/{controller_id}", self.url)
    }

    /// The stored state of an action.
    pub async fn action_state(&self, id: i64) -> String {
        otter_server::actions::get(&self.state.db, id).await.unwrap().unwrap().state.as_str().to_owned()
    }

    /// (event, actor, subject, detail) of every audit entry, oldest first.
    pub async fn audit(&self) -> Vec<(String, String, String, serde_json::Value)> {
        let rows = sqlx::query("SELECT event, actor, subject, detail FROM audit ORDER BY seq")
            .fetch_all(&self.state.db.pool)
            .await
            .unwrap();
        rows.iter()
            .map(|r| {
                let detail: String = r.get("detail");
                (r.get("event"), r.get("actor"), r.get("subject"), serde_json::from_str(&detail).unwrap())
            })
            .collect()
    }

    /// Runs a statement (test set-up that has no API of its own here).
    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(&self.state.db.pool).await.unwrap();
    }

    /// An integer from a query.
    pub async fn int(&self, sql: &str) -> i64 {
        sqlx::query(sql).fetch_one(&self.state.db.pool).await.unwrap().get::<i64, _>(0)
    }

    /// A nullable text from a query.
    pub async fn text(&self, sql: &str) -> Option<String> {
        sqlx::query(sql).fetch_one(&self.state.db.pool).await.unwrap().get::<Option<String>, _>(0)
    }
}
