//! The client commands of `otter-server`: what a build pipeline runs against a server's REST API (publish an
//! artifact, start a rollout, watch it to the end) and what an operator runs by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

/// Where the server is and who is asking.
#[derive(Args, Clone)]
pub struct Remote {
    /// The server's URL.
    #[arg(long, env = "OTTER_SERVER_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API token (prefer the environment: it is a secret).
    #[arg(long, env = "OTTER_SERVER_TOKEN", hide_env_values = true)]
    token: String,
}

/// Client commands.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Upload a signed artifact; prints it as JSON (its `id` is what a rollout needs).
    Publish {
        #[command(flatten)]
        remote: Remote,
        /// The .otter file.
        file: PathBuf,
        /// The file name devices see (default: the file's own name).
        #[arg(long)]
        filename: Option<String>,
    },
    /// Rollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// List devices (filtered).
    Devices {
        #[command(flatten)]
        remote: Remote,
        /// Only with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only reporting this version.
        #[arg(long)]
        version: Option<String>,
    },
    /// The compliance report.
    Compliance {
        #[command(flatten)]
        remote: Remote,
        /// CSV instead of JSON.
        #[arg(long)]
        csv: bool,
        /// Flag devices below this security version.
        #[arg(long)]
        min_security_version: Option<i64>,
    },
}

/// Rollout commands.
#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Create a rollout; prints it as JSON.
    Create {
        #[command(flatten)]
        remote: Remote,
        /// A name.
        #[arg(long)]
        name: String,
        /// The artifact id (from `publish`).
        #[arg(long)]
        artifact: i64,
        /// The target filter as JSON (`{"tags":["lab"],"compatible":"gw"}`), or @FILE.
        #[arg(long, default_value = "{}")]
        filter: String,
        /// The groups and options as JSON (`{"groups":[{"name":"canary","percent":10},…]}`), or @FILE.
        #[arg(long)]
        spec: String,
    },
    /// Follow a rollout until it finishes (exit 0), pauses (exit 2) or is cancelled (exit 1).
    Watch {
        #[command(flatten)]
        remote: Remote,
        /// The rollout id.
        id: i64,
        /// Give up after this many seconds (exit 4).
        #[arg(long, default_value_t = 86_400)]
        timeout: u64,
        /// Seconds between checks.
        #[arg(long, default_value_t = 2)]
        interval: u64,
    },
    /// Approve the group waiting for approval.
    Approve {
        #[command(flatten)]
        remote: Remote,
        /// The rollout id.
        id: i64,
        /// The group index (from 0) being approved.
        #[arg(long)]
        group: i64,
    },
    /// Pause a rollout.
    Pause {
        #[command(flatten)]
        remote: Remote,
        /// The rollout id.
        id: i64,
    },
    /// Resume a paused rollout.
    Resume {
        #[command(flatten)]
        remote: Remote,
        /// The rollout id.
        id: i64,
    },
    /// Cancel a rollout and its open actions.
    Cancel {
        #[command(flatten)]
        remote: Remote,
        /// The rollout id.
        id: i64,
    },
}

struct Api {
    http: Client,
    url: String,
    token: String,
}

impl Api {
    fn new(r: &Remote) -> anyhow::Result<Self> {
        otter_common::http::init_tls();
        let http = Client::builder().timeout(Duration::from_secs(3600)).build().context("building the HTTP client")?;
        Ok(Self { http, url: r.url.trim_end_matches('/').to_owned(), token: r.token.clone() })
    }
    fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token)
    }
    fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        let resp = rb.send().with_context(|| format!("reaching {}", self.url))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body: Value = resp.json().unwrap_or(Value::Null);
            let msg = body.get("message").and_then(Value::as_str).unwrap_or("(no message)");
            bail!("server answered {status}: {msg}");
        }
        Ok(resp)
    }
    fn json(&self, rb: RequestBuilder) -> anyhow::Result<Value> {
        self.send(rb)?.json().context("reading the server's answer")
    }
}

fn json_arg(s: &str) -> anyhow::Result<Value> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => s.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
}

/// Prints to stdout; a reader that went away (`| head`) ends the output quietly instead of a panic.
fn print(v: &Value) {
    out(&format!("{}\n", serde_json::to_string_pretty(v).expect("values serialise")));
}

fn out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Runs a client command.
pub fn run(c: ClientCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match c {
        ClientCommand::Publish { remote, file, filename } => {
            let api = Api::new(&remote)?;
            let name = filename
                .or_else(|| file.file_name().map(|n| n.to_string_lossy().into_owned()))
                .context("the file has no name")?;
            let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata()?.len();
            let body = reqwest::blocking::Body::sized(f, len);
            let v = api.json(
                api.req(Method::POST, "/api/v1/artifacts")
                    .query(&[("filename", name)])
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(body),
            )?;
            print(&v);
        }
        ClientCommand::Devices { remote, tag, version } => {
            let api = Api::new(&remote)?;
            let mut q = vec![("limit", "1000".to_owned())];
            q.extend(tag.map(|t| ("tag", t)));
            q.extend(version.map(|v| ("version", v)));
            print(&api.json(api.req(Method::GET, "/api/v1/devices").query(&q))?);
        }
        ClientCommand::Compliance { remote, csv, min_security_version } => {
            let api = Api::new(&remote)?;
            let mut q = vec![("format", if csv { "csv" } else { "json" }.to_owned())];
            q.extend(min_security_version.map(|m| ("min_security_version", m.to_string())));
            let text = api.send(api.req(Method::GET, "/api/v1/compliance").query(&q))?.text()?;
            out(&text);
            if !csv {
                out("\n");
            }
        }
        ClientCommand::Rollout(r) => return rollout(r),
    }
    Ok(ExitCode::SUCCESS)
}

fn rollout(r: RolloutCommand) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    match r {
        RolloutCommand::Create { remote, name, artifact, filter, spec } => {
            let api = Api::new(&remote)?;
            let body =
                json!({"name": name, "artifact_id": artifact, "filter": json_arg(&filter)?, "spec": json_arg(&spec)?});
            print(&api.json(api.req(Method::POST, "/api/v1/rollouts").json(&body))?);
        }
        RolloutCommand::Approve { remote, id, group } => {
            let api = Api::new(&remote)?;
            print(&api.json(
                api.req(Method::POST, &format!("/api/v1/rollouts/{id}/approve")).json(&json!({"group": group})),
            )?);
        }
        RolloutCommand::Pause { remote, id } => steer(&remote, id, "pause")?,
        RolloutCommand::Resume { remote, id } => steer(&remote, id, "resume")?,
        RolloutCommand::Cancel { remote, id } => steer(&remote, id, "cancel")?,
        RolloutCommand::Watch { remote, id, timeout, interval } => {
            let api = Api::new(&remote)?;
            let start = Instant::now();
            let mut last = String::new();
            loop {
                let v = api.json(api.req(Method::GET, &format!("/api/v1/rollouts/{id}")))?;
                let line = summary(&v);
                if line != last {
                    out(&format!("{line}\n"));
                    last = line;
                }
                match v.get("state").and_then(Value::as_str) {
                    Some("finished") => return Ok(ExitCode::SUCCESS),
                    Some("paused") => return Ok(ExitCode::from(2)),
                    Some("cancelled") => return Ok(ExitCode::from(1)),
                    _ => {}
                }
                if start.elapsed() > Duration::from_secs(timeout) {
                    eprintln!("otter-server: rollout {id} still {} after {timeout} s", v["state"]);
                    return Ok(ExitCode::from(4));
                }
                std::thread::sleep(Duration::from_secs(interval.max(1)));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn steer(remote: &Remote, id: i64, verb: &str) -> anyhow::Result<()> {
    let api = Api::new(remote)?;
    print(&api.json(api.req(reqwest::Method::POST, &format!("/api/v1/rollouts/{id}/{verb}")))?);
    Ok(())
}

/// One line about a rollout: its state, each group's progress, and why it paused.
fn summary(v: &Value) -> String {
    let mut s = format!("rollout {} {}", v["id"], v["state"].as_str().unwrap_or("?"));
    if let Some(groups) = v.get("groups").and_then(Value::as_array) {
        for g in groups {
            s.push_str(&format!(
                " | {} {} {}/{} ok {} failed",
                g["name"].as_str().unwrap_or("?"),
                g["state"].as_str().unwrap_or("?"),
                g["finished"],
                g["total"],
                g["failed"]
            ));
        }
    }
    if let Some(r) = v.get("reason").and_then(Value::as_str) {
        s.push_str(&format!(" — {r}"));
    }
    s
}
