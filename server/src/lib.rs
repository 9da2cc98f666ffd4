//! otter-server: the fleet side of otter in one binary.
//!
//! - [`ddi`]: hawkBit's Direct Device Integration API for devices (otterd, or any DDI client), and the signed
//!   artifact downloads ([`links`]).
//! - [`api`]: the operator's versioned REST API (`/api/v1`), with role-checked tokens ([`auth`]).
//! - [`console`]: the web console (`/console/`), static files built in, working through that API.
//! - [`rollout`]: staged rollouts; decisions in a pure engine, effects on the database in a scheduler tick.
//! - [`audit`]: the hash-chained audit log.
//! - [`db`]: one schema on SQLite or PostgreSQL.
//!
//! The server keeps no state outside the database and the artifact store, so instances sharing one PostgreSQL
//! database (and one artifact directory) are interchangeable.

pub mod actions;
pub mod api;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod db;
pub mod ddi;
pub mod devices;
pub mod error;
pub mod hints;
pub mod links;
pub mod model;
pub mod rollout;

use std::sync::Arc;

use otter_artifact::Keyring;

use crate::artifacts::Store;
use crate::config::Config;
use crate::db::Db;
use crate::links::LinkSigner;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// The shared parts of [`AppState`].
pub struct Inner {
    /// The settings.
    pub config: Config,
    /// The database.
    pub db: Db,
    /// Keys artifacts must be signed with.
    pub keyring: Keyring,
    /// Signs and checks download links (key shared by every instance through the database).
    pub links: LinkSigner,
    /// The artifact files.
    pub store: Store,
    /// Devices' `last_seen_ms` waiting to be written (see [`devices::SeenBuffer`]).
    pub seen: devices::SeenBuffer,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens the database (migrating it), the keyring and the artifact store.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&config.data).with_context(|| format!("creating {}", config.data.display()))?;
        let keyring = if config.keyring.is_dir() {
            Keyring::from_dir(&config.keyring)
        } else {
            Keyring::from_file(&config.keyring)
        }
        .with_context(|| format!("reading the keyring {}", config.keyring.display()))?;
        let db = Db::open(&config.database_url()).await.context("opening the database")?;
        let key =
            db.setting_or_init("link_key", || auth::new_secret("")).await.context("reading the download link key")?;
        let links = LinkSigner::new(key.into_bytes());
        let store = Store::open(config.artifacts_dir()).context("opening the artifact store")?;
        Ok(Self(Arc::new(Inner { config, db, keyring, links, store, seen: Default::default() })))
    }
}

/// The whole HTTP application: the device API (with the artifact downloads), the operator API and the console.
///
/// The device API works on at most `config.max_device_requests` requests at once; more are answered `503` at
/// once instead of queueing, so a fleet polling faster than the server can answer (after an outage, say) costs
/// bounded memory and gets a clear "come back later" — DDI clients retry with their back-off.
pub fn app(state: AppState) -> axum::Router {
    use axum::error_handling::HandleErrorLayer;
    use axum::http::StatusCode;
    let shed = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, "5")], "server busy, retry later")
        }))
        .load_shed()
        // Global: the router applies a layer to each route, and the limit is for all of them together.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(state.config.max_device_requests.max(1)));
    axum::Router::new().merge(ddi::router(state.clone()).layer(shed)).merge(api::router(state)).merge(console::router())
}

/// Serves `state` on `listener` until `shutdown` completes, with the rollout scheduler running beside it.
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scheduler = rollout::spawn_scheduler(state.clone());
    let flusher = tokio::spawn(flush_seen(state.clone()));
    let served = axum::serve(listener, app(state.clone())).with_graceful_shutdown(shutdown).await;
    scheduler.abort();
    flusher.abort();
    if let Err(e) = state.seen.flush(&state.db).await {
        tracing::warn!("writing devices' last-seen times at shutdown: {e}");
    }
    served
}

/// Writes the devices' pending last-seen times once a second.
async fn flush_seen(state: AppState) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = state.seen.flush(&state.db).await {
            tracing::warn!("writing devices' last-seen times: {e}");
        }
    }
}
