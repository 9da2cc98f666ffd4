//! The fleet scenario: `otter-server` and six simulated gateways, each a real otterd runtime and hawkBit client
//! on its own simulated device (file slots, U-Boot env file, reboots), polling the server over HTTP.
//!
//! An operator publishes a good release and rolls it out in three groups — one canary, half of the rest after an
//! approver's approval, then everyone — and the rollout advances group by group until every gateway has committed
//! it. Then a broken release (its application fails the health check) goes to a new canary: the canary rolls back
//! to the good release, reports the failure, and the rollout pauses itself before any other gateway is touched.
//! Everything the operator does goes through the server's REST API, as a console or a build pipeline would.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use otterd::engine::Outcome;
use otterd::fixture::Device;
use otterd::runtime::RunEnd;
use otterd::sim::Boot;
use serde_json::{Value, json};

use crate::{Clock, DEVICE_TYPE, ServerLink, device_spec};

/// Gateways in the fleet.
const FLEET: usize = 6;
/// The longest any phase may take before the demo gives up (shared, slow machines).
const PATIENCE: Duration = Duration::from_secs(300);

/// One simulated gateway, booting again and again until told to stop.
struct Gateway {
    id: String,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<()>>,
}

fn boot_loop(id: String, device: Device, clock: Arc<Clock>, stop: Arc<AtomicBool>) -> Result<()> {
    while !stop.load(Ordering::SeqCst) {
        let mut boot = Boot::start(&device)?;
        loop {
            if let Ok(record) = boot.finished.try_recv() {
                let version = record.job.artifact.as_ref().map_or("?", |a| a.version.as_str()).to_owned();
                match &record.outcome {
                    Outcome::Committed => clock.say(format!("{id}: {version} committed on slot {}", record.job.target)),
                    Outcome::RolledBack { reason } => {
                        clock.say(format!("{id}: {version} rolled back to slot {} ({reason})", record.job.from))
                    }
                    other => clock.say(format!("{id}: job ended: {other:?}")),
                }
            }
            if stop.load(Ordering::SeqCst) {
                boot.stop();
                return Ok(());
            }
            match boot.wait(Duration::from_millis(50)) {
                Some(RunEnd::Rebooted) => break,
                Some(RunEnd::Stopped) => bail!("{id}: otterd stopped by itself"),
                None => {}
            }
        }
    }
    Ok(())
}

/// The operator's side: the REST API with a token.
struct Operator {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl Operator {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut rb = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().with_context(|| format!("calling {path}"))?;
        let status = r.status();
        let v: Value = r.json().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {}", v["message"]);
        }
        Ok(v)
    }
    fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None)
    }
    fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }
    fn publish(&self, file: &Path) -> Result<Value> {
        let name = file.file_name().context("artifact name")?.to_string_lossy().into_owned();
        let r = self
            .http
            .post(format!("{}/api/v1/artifacts?filename={name}", self.url))
            .bearer_auth(&self.token)
            .body(std::fs::read(file)?)
            .send()?;
        let status = r.status();
        let v: Value = r.json()?;
        if !status.is_success() {
            bail!("upload: HTTP {status}: {}", v["message"]);
        }
        Ok(v)
    }
}

/// One line per change: the rollout's state and each group's progress.
fn progress_line(r: &Value) -> String {
    let mut s =
        format!("rollout {} \"{}\": {}", r["id"], r["name"].as_str().unwrap_or(""), r["state"].as_str().unwrap_or("?"));
    for g in r["groups"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            " | {} {} {}/{}{}",
            g["name"].as_str().unwrap_or("?"),
            g["state"].as_str().unwrap_or("?"),
            g["finished"],
            g["total"],
            if g["failed"].as_i64().unwrap_or(0) > 0 { format!(" ({} failed)", g["failed"]) } else { String::new() }
        ));
    }
    s
}

/// Follows a rollout until `done` says so, approving groups that wait for approval with `approver`.
fn follow(clock: &Clock, op: &Operator, approver: &Operator, id: i64, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let r = op.get(&format!("/api/v1/rollouts/{id}"))?;
        let line = progress_line(&r);
        if line != last {
            clock.say(format!("server: {line}"));
            last = line;
        }
        if done(&r) {
            return Ok(r);
        }
        if r["state"] == "waiting-approval" {
            let group = r["current_group"].as_i64().context("no current group")?;
            let name = r["groups"][group as usize]["name"].as_str().unwrap_or("?").to_owned();
            approver.post(&format!("/api/v1/rollouts/{id}/approve"), json!({"group": group}))?;
            clock.say(format!("approver: group {name} approved (the rollout's creator could not have)"));
        }
        if start.elapsed() > PATIENCE {
            bail!("rollout {id} did not get there: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the fleet scenario in `work` with the release built by `main`.
pub fn run(work: &Path, exe: &Path, public_key: &Path, initial: &Path, good: &Path, broken: &Path) -> Result<()> {
    println!(
        "\n=== fleet: otter-server, {FLEET} gateways, a canary rollout that advances and one that halts itself ==="
    );
    let clock = Arc::new(Clock(Instant::now()));
    let dir = work.join("fleet");
    std::fs::create_dir_all(&dir)?;

    // The server, in this process, on SQLite in its data directory.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut config = otter_server::config::Config::new(dir.join("server"), public_key.to_owned());
    config.public_url = url.clone();
    // A demo minute is short: devices poll every second.
    config.poll = Duration::from_secs(1);
    config.fast_poll = Duration::from_secs(1);
    let state = rt.block_on(otter_server::AppState::open(config))?;
    let token = |name: &str, role| -> Result<String> {
        let (_, t) = rt
            .block_on(otter_server::api::issue_api_token(&state.db, name, role, "local:demo"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(t)
    };
    otter_common::http::init_tls();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build()?;
    use otter_server::auth::Role;
    let op = Operator { http: http.clone(), url: url.clone(), token: token("olga", Role::Operator)? };
    let approver = Operator { http, url: url.clone(), token: token("arno", Role::Approver)? };
    rt.spawn(otter_server::serve(state.clone(), listener, std::future::pending()));
    clock.say(format!(
        "otter-server at {url} (SQLite in {}); operator olga, approver arno",
        dir.join("server").display()
    ));

    // The gateways: registered by the operator, each with its own target token.
    let mut gateways = Vec::new();
    for i in 1..=FLEET {
        let id = format!("gw-{i:02}");
        let reg =
            op.post("/api/v1/devices", json!({"controller_id": id, "compatible": DEVICE_TYPE, "tags": ["field"]}))?;
        let token = reg["target_token"].as_str().context("no target token")?.to_owned();
        let root = dir.join(&id);
        let link = ServerLink { url: &url, tenant: "DEFAULT", controller: &id, token: &token };
        let device = Device::create(&root, &device_spec(exe, &root, public_key, &link), Some(initial))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, gid) = (clock.clone(), stop.clone(), id.clone());
        let thread = std::thread::Builder::new().name(id.clone()).spawn(move || boot_loop(gid, device, c, s))?;
        gateways.push(Gateway { id, stop, thread });
    }
    clock.say(format!("{FLEET} gateways registered and booted on version 1.0 (slot A), polling every second"));
    let start = Instant::now();
    while op.get("/api/v1/devices?unseen_since_ms=1")?["total"].as_i64() != Some(0) {
        if start.elapsed() > PATIENCE {
            bail!("not every gateway reached the server");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    clock.say("every gateway has checked in");

    let result = rollouts(&clock, &op, &approver, good, broken);
    for g in &gateways {
        g.stop.store(true, Ordering::SeqCst);
    }
    for g in gateways {
        g.thread.join().map_err(|_| anyhow::anyhow!("{} panicked", g.id))??;
    }
    result?;

    let audit = op.get("/api/v1/audit/verify")?;
    clock.say(format!("audit log: {} entries, hash chain intact: {}", audit["entries"], audit["broken"].is_null()));
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

fn versions(op: &Operator) -> Result<String> {
    let c = op.get("/api/v1/compliance")?;
    Ok(c["versions"]
        .as_object()
        .map(|m| m.iter().map(|(v, n)| format!("{n} on {v}")).collect::<Vec<_>>().join(", "))
        .unwrap_or_default())
}

fn rollouts(clock: &Clock, op: &Operator, approver: &Operator, good: &Path, broken: &Path) -> Result<()> {
    let a = op.publish(good)?;
    clock.say(format!(
        "olga publishes {} (version {}, security version {}, signed by key {}): verified by the server",
        a["filename"].as_str().unwrap_or("?"),
        a["version"].as_str().unwrap_or("?"),
        a["security_version"],
        a["signer"].as_str().unwrap_or("?")
    ));
    let spec = json!({
        "kind": "forced",
        "groups": [
            {"name": "canary", "devices": ["gw-01"]},
            {"name": "half", "percent": 50, "approval": true},
            {"name": "rest", "percent": 100}
        ]
    });
    let r = op.post(
        "/api/v1/rollouts",
        json!({"name": "2.0 to the field", "artifact_id": a["id"], "filter": {"tags": ["field"]}, "spec": spec}),
    )?;
    clock.say("olga starts a rollout of 2.0: canary gw-01, then half of the rest after approval, then the rest");
    let id = r["id"].as_i64().context("rollout id")?;
    let done = follow(clock, op, approver, id, |r| r["state"] == "finished" || r["state"] == "paused")?;
    if done["state"] != "finished" {
        bail!("the good rollout did not finish: {}", progress_line(&done));
    }
    clock.say(format!("fleet: {}", versions(op)?));

    let b = op.publish(broken)?;
    clock.say(format!(
        "olga publishes {} (version {}): its application crashes on start",
        b["filename"].as_str().unwrap_or("?"),
        b["version"].as_str().unwrap_or("?")
    ));
    let spec = json!({
        "kind": "forced",
        "groups": [
            {"name": "canary", "devices": ["gw-02"], "error_threshold": 0},
            {"name": "rest", "percent": 100}
        ]
    });
    let r = op.post(
        "/api/v1/rollouts",
        json!({"name": "2.1 to the field", "artifact_id": b["id"], "filter": {"tags": ["field"]}, "spec": spec}),
    )?;
    let id = r["id"].as_i64().context("rollout id")?;
    clock.say("olga starts a rollout of 2.1: canary gw-02, then everyone");
    let halted = follow(clock, op, approver, id, |r| r["state"] == "paused" || r["state"] == "finished")?;
    if halted["state"] != "paused" {
        bail!("the broken rollout did not halt: {}", progress_line(&halted));
    }
    clock.say(format!("server: the rollout paused itself: {}", halted["reason"].as_str().unwrap_or("?")));
    let rest = &halted["groups"][1];
    if rest["started"].as_bool() == Some(true)
        || rest["in_flight"].as_i64().unwrap_or(0) > 0
        || rest["finished"].as_i64().unwrap_or(0) > 0
    {
        bail!("the rest of the fleet was touched: {rest}");
    }
    let canary = op.get("/api/v1/devices/gw-02")?;
    let last = &canary["actions"][0];
    clock.say(format!(
        "gw-02 reported: {}",
        last["statuses"].as_array().and_then(|s| s.last()).map(|s| s["details"].to_string()).unwrap_or_default()
    ));
    clock.say(format!("fleet: {} — no other gateway was offered 2.1", versions(op)?));
    println!("ok: the canary rollout of 2.0 reached every gateway; the broken 2.1 stopped at its canary");
    Ok(())
}
