//! `otter-server`: the fleet server, its local maintenance commands, and a client for build pipelines.
//! `main` parses arguments, runs the command, and prints the error chain once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use otter_server::config::Config;

mod client;

#[derive(Parser)]
#[command(name = "otter-server", version, about = "The otter fleet server: hawkBit DDI, rollouts, audit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the database is, for the local commands.
#[derive(clap::Args, Clone)]
struct Storage {
    /// The data directory (SQLite database and artifacts).
    #[arg(long, env = "OTTER_SERVER_DATA", default_value = "/var/lib/otter-server")]
    data: PathBuf,
    /// `sqlite://PATH` or `postgres://…` (default: DATA/otter.db).
    #[arg(long, env = "OTTER_SERVER_DATABASE")]
    database: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Serve),
    /// Create an operator API token (local: needs the database; prints the token once).
    Token {
        #[command(flatten)]
        storage: Storage,
        /// A name for the token (who or what uses it).
        #[arg(long)]
        name: String,
        /// viewer, operator, approver or admin.
        #[arg(long)]
        role: String,
    },
    /// Check the audit log's hash chain (local). Exit 0 intact, 3 broken.
    AuditVerify {
        #[command(flatten)]
        storage: Storage,
        /// Also require the chain to reach this head (a hash kept from an earlier check).
        #[arg(long)]
        expect_head: Option<String>,
    },
    /// Talk to a running server (for build pipelines and operators).
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(clap::Args)]
struct Serve {
    #[command(flatten)]
    storage: Storage,
    /// Artifact directory (default DATA/artifacts; shared by every instance on one PostgreSQL database).
    #[arg(long, env = "OTTER_SERVER_ARTIFACTS")]
    artifacts: Option<PathBuf>,
    /// Public keys artifacts must be signed with (a key file or a directory of *.pub).
    #[arg(long, env = "OTTER_SERVER_KEYRING")]
    keyring: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// The URL devices reach this server at (default: http://LISTEN).
    #[arg(long)]
    public_url: Option<String>,
    /// DDI tenant.
    #[arg(long, default_value = "DEFAULT")]
    tenant: String,
    /// Devices' poll interval, seconds.
    #[arg(long, default_value_t = 300)]
    poll: u64,
    /// Poll interval in a running fast release, seconds.
    #[arg(long, default_value_t = 10)]
    fast_poll: u64,
    /// Download link lifetime, seconds.
    #[arg(long, default_value_t = 900)]
    link_ttl: u64,
    /// Precision of devices' last-seen time, seconds (written at most this often per device).
    #[arg(long, default_value_t = 300)]
    seen_resolution: u64,
    /// Register unknown devices that authenticate with the gateway token on their first poll.
    #[arg(long)]
    auto_register: bool,
    /// The DDI gateway token (prefer the environment: it is a secret).
    #[arg(long, env = "OTTER_SERVER_GATEWAY_TOKEN", hide_env_values = true)]
    gateway_token: Option<String>,
    /// Largest artifact upload, bytes.
    #[arg(long, default_value_t = 8 << 30)]
    max_upload: u64,
    /// Trust X-Client-Cert-CN from a TLS-terminating proxy as the device identity.
    #[arg(long)]
    trust_proxy_client_cert: bool,
    /// Device requests worked on at once; more get 503 with Retry-After (bounded memory under overload).
    #[arg(long, default_value_t = 1024)]
    max_device_requests: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("OTTER_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otter-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

fn config_of(storage: &Storage, keyring: PathBuf) -> Config {
    let mut c = Config::new(storage.data.clone(), keyring);
    c.database = storage.database.clone();
    c
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(s) => {
            let mut c = config_of(&s.storage, s.keyring);
            c.artifacts = s.artifacts;
            c.listen = s.listen;
            c.public_url =
                s.public_url.unwrap_or_else(|| format!("http://{}", s.listen)).trim_end_matches('/').to_owned();
            c.tenant = s.tenant;
            c.poll = Duration::from_secs(s.poll.clamp(1, 86_400));
            c.fast_poll = Duration::from_secs(s.fast_poll.clamp(1, 86_400));
            c.link_ttl = Duration::from_secs(s.link_ttl.clamp(10, 7 * 86_400));
            c.seen_resolution = Duration::from_secs(s.seen_resolution.clamp(1, 3600));
            c.auto_register = s.auto_register;
            c.gateway_token = s.gateway_token.filter(|t| !t.is_empty());
            c.max_upload = s.max_upload;
            c.trust_proxy_client_cert = s.trust_proxy_client_cert;
            c.max_device_requests = s.max_device_requests.max(1);
            runtime()?.block_on(async move {
                let listen = c.listen;
                let state = otter_server::AppState::open(c).await?;
                let listener =
                    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
                tracing::info!("listening on {}", listener.local_addr()?);
                otter_server::serve(state, listener, shutdown_signal()).await.context("serving")?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Token { storage, name, role } => {
            let role = otter_server::auth::Role::parse(&role)
                .with_context(|| format!("role {role:?}: viewer, operator, approver or admin"))?;
            runtime()?.block_on(async move {
                std::fs::create_dir_all(&storage.data)
                    .with_context(|| format!("creating {}", storage.data.display()))?;
                let db = otter_server::db::Db::open(&config_of(&storage, PathBuf::new()).database_url()).await?;
                let (id, token) = otter_server::api::issue_api_token(&db, &name, role, "local:otter-server token")
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                eprintln!("token {id} ({}) for {name}:", role.as_str());
                println!("{token}");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::AuditVerify { storage, expect_head } => runtime()?.block_on(async move {
            let url = config_of(&storage, PathBuf::new()).database_url();
            let db = otter_server::db::Db::open_existing(&url).await.with_context(|| format!("opening {url}"))?;
            let v = otter_server::audit::verify(&db).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            if let Some(b) = &v.broken {
                eprintln!("otter-server: audit log broken: {b}");
                return Ok(ExitCode::from(3));
            }
            if let Some(h) = expect_head
                && !otter_server::audit::chain_contains(&db, &h).await?
            {
                eprintln!("otter-server: audit log does not contain the expected head {h}: it was rewritten");
                return Ok(ExitCode::from(3));
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Client(c) => client::run(c),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
