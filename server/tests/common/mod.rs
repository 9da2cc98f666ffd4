//! Test support shared by the server's integration tests:
//! - a real otter-server device API on 127.0.0.1: a temp data directory, a temp keyring with a fresh signing key,
//!   `ddi::router` behind `axum::serve`;
//! - [`Backend`]: SQLite, or a fresh database on a real PostgreSQL server from the machine's packages, started
//!   once per test binary and stopped when it exits; [`on_both!`] runs a scenario on each.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
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
pub async fn start(backend: Backend, configure: impl FnOnce(&mut Config)) -> Server {
    start_with(backend, configure, |r| r).await
}

/// Starts a server whose router goes through `wrap` (e.g. a fault-injecting middleware).
pub async fn start_with(
    backend: Backend,
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
    config.database = backend.url();
    configure(&mut config);
    let state = AppState::open(config).await.unwrap();
    let app = wrap(otter_server::ddi::router(state.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { state, url, dir, key, public_key }
}

/// A deterministic image of `len` bytes (`otterd::fixture::pattern_image`).
pub fn image(dir: &Path, seed: u8, len: usize) -> PathBuf {
    otterd::fixture::pattern_image(dir, seed, len).unwrap()
}

/// A signed `.otter` of `version` holding `image`, in 256 KiB chunks.
pub fn artifact_bytes(key: &ed25519_dalek::SigningKey, version: &str, image: &Path) -> Vec<u8> {
    let mut o = BuildOptions::new(vec![TYPE.into()], version);
    o.chunk_size = 256 << 10;
    o.level = 1;
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: image.to_owned(), base: None };
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

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's data directory (the default of `otter-server`).
    Sqlite,
    /// A fresh database on the test binary's PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The `--database` URL for a test (`None`: the SQLite default in the data directory).
    pub fn url(self) -> Option<String> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some(postgres_database()),
        }
    }
}

struct Cluster {
    bin: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Debian installs PostgreSQL under /usr/lib/postgresql/VERSION/bin; take the newest.
fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OTTER_PG_BIN") {
        return p.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql): run tests/install-deps")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop().expect("no PostgreSQL server binaries under /usr/lib/postgresql: run tests/install-deps")
}

/// Runs a PostgreSQL tool; as root it runs as the `postgres` user (the server refuses to run as root).
fn pg(bin: &Path, tool: &str, args: &[&str]) {
    let is_root = nix_uid() == 0;
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    let out = cmd.args(args).output().unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nix_uid() -> u32 {
    // /proc/self/status "Uid:" line, real uid first.
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(1)
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("otter-pg-").tempdir().unwrap();
        if nix_uid() == 0 {
            let st = Command::new("chown").arg("postgres:").arg(dir.path()).status().unwrap();
            assert!(st.success());
        }
        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap();
        pg(
            &bin,
            "initdb",
            &["-D", data_s, "-A", "trust", "-U", "otter", "-E", "UTF8", "--no-sync", "--no-instructions"],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = format!("-h 127.0.0.1 -p {port} -k {} -F -c max_connections=300", dir.path().display());
        let log = dir.path().join("log");
        pg(&bin, "pg_ctl", &["-D", data_s, "-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"]);
        // Stop the server when this test binary exits, however it exits.
        let stop = format!(
            "while [ -d /proc/{} ]; do sleep 1; done; {} -D {data_s} -m immediate stop >/dev/null 2>&1",
            std::process::id(),
            bin.join("pg_ctl").display()
        );
        let mut watcher = if nix_uid() == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "sh", "-c", &stop]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &stop]);
            c
        };
        watcher
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // Deliberately not waited for: it outlives this process to stop the server after it.
        std::mem::forget(watcher.spawn().expect("starting the PostgreSQL watcher"));
        Cluster { bin, port, _dir: dir }
    })
}

/// A fresh, empty database on the test binary's PostgreSQL server.
pub fn postgres_database() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let c = cluster();
    let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    pg(&c.bin, "createdb", &["-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "otter", &name]);
    format!("postgres://otter@127.0.0.1:{}/{name}", c.port)
}

/// Runs each named scenario (`async fn NAME(b: Backend)`) as two tests, `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
    )*};
}

/// A whole otter-server (device API, operator API, console, rollout scheduler, last-seen flusher) on 127.0.0.1,
/// with an admin API token; its HTTP client does not follow redirects.
pub struct ApiServer {
    _dir: tempfile::TempDir,
    /// The data directory's parent (keys, images).
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The server's state.
    pub state: AppState,
    /// The release signing key (its public half is the keyring).
    pub key: ed25519_dalek::SigningKey,
    /// An admin API token.
    pub admin: String,
    /// The client.
    pub http: reqwest::Client,
}

/// Starts an [`ApiServer`]; `tune` adjusts the settings.
pub async fn api_server(backend: Backend, tune: impl FnOnce(&mut Config)) -> ApiServer {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.join("release")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::new(dir.join("data"), dir.join("release.pub"));
    config.public_url = format!("http://{addr}");
    config.database = backend.url();
    tune(&mut config);
    let state = AppState::open(config).await.unwrap();
    let role = otter_server::auth::Role::Admin;
    let (_, admin) = otter_server::api::issue_api_token(&state.db, "root", role, "test").await.unwrap();
    tokio::spawn(otter_server::serve(state.clone(), listener, std::future::pending()));
    otter_common::http::init_tls();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    ApiServer { _dir: tmp, dir, url: format!("http://{addr}"), state, key, admin, http }
}

impl ApiServer {
    /// An API call with a Bearer token: (status, JSON body, or the text as a JSON string).
    pub async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// A new API token of `role` named `name`.
    pub async fn token(&self, name: &str, role: &str) -> String {
        let body = serde_json::json!({"name": name, "role": role});
        let (s, v) = self.call(&self.admin, reqwest::Method::POST, "/api/v1/tokens", Some(body)).await;
        assert_eq!(s, reqwest::StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Uploads `bytes` as `filename` with `token`: (status, JSON answer).
    pub async fn upload_as(
        &self,
        token: &str,
        bytes: Vec<u8>,
        filename: &str,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/artifacts?filename={filename}", self.url))
            .bearer_auth(token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap())
    }
}

/// A small signed artifact (a 64 KiB-chunked image of `len` bytes) of `version` for `compatible`.
pub fn small_artifact(
    dir: &Path,
    key: &ed25519_dalek::SigningKey,
    version: &str,
    compatible: &str,
    security_version: u64,
    len: u32,
) -> Vec<u8> {
    let img = dir.join(format!("img-{version}"));
    std::fs::write(&img, (0..len).map(|i| (i * 7 + version.len() as u32) as u8).collect::<Vec<_>>()).unwrap();
    let mut o = BuildOptions::new(vec![compatible.into()], version);
    o.chunk_size = 64 << 10;
    o.level = 1;
    o.security_version = security_version;
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: img, base: None };
    let mut out = Vec::new();
    builder::create(&o, &[src], std::slice::from_ref(key), &mut out).unwrap();
    out
}
