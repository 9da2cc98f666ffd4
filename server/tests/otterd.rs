//! Real otterd devices (simulated hardware: file slots, a U-Boot env file, `otterd::sim::power_on`) against
//! otter-server's device API: the whole update, a download whose signed link expires half-way, and rollouts as an
//! operator runs them: cancelled mid-download, held by a closed maintenance window, a fast release, and a device
//! whose token is revoked and later rotated.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use common::{Backend, Server, TYPE, image, start, start_with};
use otter_bootloader::Slot;
use otter_server::config::Config;
use otter_server::model::ActionKind;
use otterd::engine::{JobRecord, Outcome};
use otterd::fixture::{Device, DeviceSpec};
use otterd::sim::Boot;

/// Each slot of the simulated device (4 MiB).
const SLOT: u64 = 4 << 20;
/// Generous: shared, noisy machines.
const LONG: Duration = Duration::from_secs(120);

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LONG, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A simulated gateway configured for the server as `dev1` with its target token; booted from A with `old`.
/// It polls every second whatever the server says.
fn device(dir: &std::path::Path, s: &Server, token: &str) -> Device {
    device_polling(dir, s, token, "1s")
}

/// [`device`], following the server's `sleep` up to `poll_max`.
fn device_polling(dir: &std::path::Path, s: &Server, token: &str, poll_max: &str) -> Device {
    let old = image(dir, 1, 3 << 20);
    let mut spec = DeviceSpec::new(TYPE, &s.public_key);
    spec.slot_size = SLOT;
    spec.extra_config = format!(
        r#"[health]
commit_deadline = "60s"

[server]
url = "{url}"
controller_id = "dev1"
auth = "target-token"
token = "{token}"
poll_min = "200ms"
poll_max = "{poll_max}"
backoff_initial = "200ms"
backoff_max = "1s"
jitter_percent = 0
progress_interval = "100ms"
resume_backoff = "50ms"
timeout = "10s"
"#,
        url = s.url,
    );
    Device::create(&dir.join("root"), &spec, Some(&old)).unwrap()
}

fn boot(d: &Device) -> Boot {
    Boot::start(d).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Installs (first boot), trial-boots and commits action `id` on the device; returns the second boot's record.
fn install(rt: &tokio::runtime::Runtime, s: &Server, d: &Device, id: i64) -> JobRecord {
    let b = boot(d);
    assert_eq!(b.slot, Slot::A);
    b.until_reboot(LONG).unwrap();
    let b = boot(d);
    assert_eq!(b.slot, Slot::B, "trial boot of the new slot");
    b.until_finished(LONG, || {
        rt.block_on(s.action_state(id)) != "running" && rt.block_on(s.action_state(id)) != "downloaded"
    })
    .unwrap()
}

#[test]
fn an_otterd_device_installs_reports_and_the_server_records_it() {
    let rt = runtime();
    let s = rt.block_on(start(Backend::Sqlite, |_| {}));
    let (dev, token) = rt.block_on(s.device("dev1"));
    let (artifact, _) = rt.block_on(s.publish("2.0", 2, 3 << 20));
    let id = rt.block_on(s.action(dev, artifact.id, ActionKind::Forced, false));
    let dir = tempfile::tempdir().unwrap();
    let d = device(dir.path(), &s, &token);

    let record = install(&rt, &s, &d, id);
    assert_eq!(record.outcome, Outcome::Committed);
    assert_eq!(record.job.remote_id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(rt.block_on(s.action_state(id)), "finished");
    let device = rt.block_on(otter_server::devices::by_controller_id(&s.state.db, "dev1")).unwrap().unwrap();
    assert_eq!((device.reported_version.as_deref(), device.reported_state.as_str()), (Some("2.0"), "in-sync"));
    assert!(device.last_seen_ms.is_some());
    // History: proceeding (and progress) → downloaded → closed/success.
    let st = rt.block_on(otter_server::actions::statuses(&s.state.db, id, 1000)).unwrap();
    let mut words: Vec<&str> = st.iter().map(|x| x.execution.as_str()).collect();
    words.dedup();
    assert_eq!(words, ["proceeding", "downloaded", "closed"], "{st:#?}");
    assert_eq!(st.last().unwrap().finished, "success");
    assert!(st.last().unwrap().details.join(" ").contains("committed"), "{st:#?}");
    // Audit: the device's own state changes.
    let audit = rt.block_on(s.audit());
    let changes: Vec<&str> = audit.iter().filter(|e| e.0.starts_with("action.")).map(|e| e.0.as_str()).collect();
    assert_eq!(changes, ["action.downloaded", "action.finished"]);
    assert!(audit.iter().filter(|e| e.0.starts_with("action.")).all(|e| e.1 == "device:dev1"));
    // The device's inventory arrived (otterd sends it on its first poll, and again after the update).
    let b = boot(&d);
    wait_for("the inventory", || {
        let dev = rt.block_on(otter_server::devices::by_controller_id(&s.state.db, "dev1")).unwrap().unwrap();
        dev.attributes.get("device_type").map(String::as_str) == Some(TYPE) && dev.attributes_ms.is_some()
    });
    drop(b);
    let slot_b = std::fs::read(d.slot_file(Slot::B)).unwrap();
    // `publish` left the image it built in the server's directory.
    let published = std::fs::read(s.dir.path().join("image-2.img")).unwrap();
    assert_eq!(&slot_b[..published.len()], &published[..], "slot B holds the new image");
}

/// Requests to `/artifacts/` as (status, Range header).
type Seen = Arc<Mutex<Vec<(u16, Option<String>)>>>;

/// Cuts the first artifact download after `after` bytes, `pause` later: a connection that dies mid-way while the
/// link expires. Records every artifact request.
fn cut_first_download(seen: Seen, after: usize, pause: Duration) -> impl FnOnce(axum::Router) -> axum::Router {
    move |router| {
        router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let seen = seen.clone();
            async move {
                let artifact = req.uri().path().starts_with("/artifacts/");
                let range = req.headers().get("range").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let resp: Response = next.run(req).await;
                if !artifact {
                    return resp;
                }
                let first = {
                    let mut seen = seen.lock().unwrap();
                    seen.push((resp.status().as_u16(), range));
                    seen.len() == 1
                };
                if !first || resp.status() != 200 {
                    return resp;
                }
                truncated(resp, after, Tail::CutAfter(pause)).await
            }
        }))
    }
}

/// What a [`truncated`] answer does after its first bytes.
enum Tail {
    /// Waits, then fails the body: a connection cut.
    CutAfter(Duration),
    /// Sends nothing more until the client hangs up.
    Silent,
}

/// `resp` with only the first `after` bytes of its body, then `tail`.
async fn truncated(resp: Response, after: usize, tail: Tail) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(bytes.slice(..after))).await;
        match tail {
            Tail::CutAfter(pause) => {
                tokio::time::sleep(pause).await;
                let _ = tx.send(Err(std::io::Error::other("connection cut by the test"))).await;
            }
            Tail::Silent => tx.closed().await,
        }
    });
    Response::from_parts(parts, Body::from_stream(Rx(rx)))
}

struct Rx(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl futures_core::Stream for Rx {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[test]
fn a_link_that_expires_mid_download_is_refreshed_and_the_device_finishes() {
    let rt = runtime();
    let seen: Seen = Arc::default();
    let third = 1 << 20;
    // Links live 1 second; the first download dies after 1 MiB, 3 seconds in: its link has expired by then.
    let configure = |c: &mut Config| c.link_ttl = Duration::from_secs(1);
    let s = rt.block_on(start_with(
        Backend::Sqlite,
        configure,
        cut_first_download(seen.clone(), third, Duration::from_secs(3)),
    ));
    let (dev, token) = rt.block_on(s.device("dev1"));
    let (artifact, _) = rt.block_on(s.publish("2.0", 2, 3 << 20));
    let id = rt.block_on(s.action(dev, artifact.id, ActionKind::Forced, false));
    let dir = tempfile::tempdir().unwrap();
    let d = device(dir.path(), &s, &token);

    let record = install(&rt, &s, &d, id);
    assert_eq!(record.outcome, Outcome::Committed);
    assert_eq!(rt.block_on(s.action_state(id)), "finished");
    let seen = seen.lock().unwrap().clone();
    let statuses: Vec<u16> = seen.iter().map(|x| x.0).collect();
    assert_eq!(statuses, [200, 403, 206], "{seen:?}");
    // The resume asked for the rest from where the cut left off, on the fresh link.
    let from: u64 =
        seen[2].1.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()).unwrap();
    assert!(from > 0 && from <= third as u64, "{seen:?}");
}

/// A rollout of `artifact` to every device, one group, from `spec` (JSON; `groups` defaults to one of 100 %).
async fn start_rollout(s: &Server, artifact: i64, mut spec: serde_json::Value) -> i64 {
    if spec.get("groups").is_none() {
        spec["groups"] = serde_json::json!([{"name": "all", "percent": 100}]);
    }
    let req = otter_server::rollout::CreateRollout {
        name: "test".into(),
        artifact_id: artifact,
        filter: Default::default(),
        spec: serde_json::from_value(spec).unwrap(),
    };
    let r = otter_server::rollout::create(&s.state, req, "operator:alice").await.unwrap();
    otter_server::rollout::tick(&s.state, otter_server::db::now_ms()).await.unwrap();
    r.id
}

/// The open (or last) action of a device.
async fn action_of(s: &Server, device: i64) -> Option<i64> {
    let a = otter_server::actions::of_device(&s.state.db, device, 1).await.unwrap();
    a.first().map(|a| a.id)
}

/// Holds every artifact download after `after` bytes until the test ends (the connection stays open, silent).
fn hold_downloads(after: usize, started: Arc<Mutex<usize>>) -> impl FnOnce(axum::Router) -> axum::Router {
    move |router| {
        router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let started = started.clone();
            async move {
                let artifact = req.uri().path().starts_with("/artifacts/");
                let resp: Response = next.run(req).await;
                if !artifact || resp.status() != 200 {
                    return resp;
                }
                *started.lock().unwrap() += 1;
                truncated(resp, after, Tail::Silent).await
            }
        }))
    }
}

#[test]
fn a_rollout_cancelled_mid_download_leaves_the_device_on_its_slot() {
    let rt = runtime();
    let started = Arc::new(Mutex::new(0));
    let s = rt.block_on(start_with(Backend::Sqlite, |_| {}, hold_downloads(1 << 20, started.clone())));
    let (dev, token) = rt.block_on(s.device("dev1"));
    let (artifact, _) = rt.block_on(s.publish("2.0", 2, 3 << 20));
    let rollout = rt.block_on(start_rollout(&s, artifact.id, serde_json::json!({"kind": "forced"})));
    let id = rt.block_on(action_of(&s, dev)).expect("the group started");
    let dir = tempfile::tempdir().unwrap();
    let d = device(dir.path(), &s, &token);
    let env_before = otterd::sim::env_summary(&d).unwrap();

    let b = boot(&d);
    assert_eq!(b.slot, Slot::A);
    wait_for("the download to start", || *started.lock().unwrap() > 0);
    let view = rt.block_on(otter_server::rollout::cancel(&s.state, rollout, "operator:alice")).unwrap();
    assert_eq!(view.state, otter_server::model::RolloutState::Cancelled);
    assert_eq!(rt.block_on(s.action_state(id)), "canceling", "the device is asked, not overruled");
    let record = b.until_finished(LONG, || rt.block_on(s.action_state(id)) == "canceled").unwrap();
    assert_eq!(record.outcome, Outcome::Cancelled);

    // The device's answer is on record, and it never left slot A.
    let st = rt.block_on(otter_server::actions::statuses(&s.state.db, id, 1000)).unwrap();
    assert!(
        st.iter().any(|x| x.execution == "cancel-closed" && x.details.join(" ").contains("device unchanged")),
        "{st:#?}"
    );
    // Slot B was taken out of the boot order before the first byte went into it; A is as it was.
    let env = otterd::sim::env_summary(&d).unwrap();
    assert_eq!(env_before, r#"BOOT_ORDER="A B" BOOT_A_LEFT=3 BOOT_B_LEFT=3"#);
    assert_eq!(env, r#"BOOT_ORDER="A" BOOT_A_LEFT=3 BOOT_B_LEFT=0"#);
    assert_eq!(otterd::sim::power_on(&d).unwrap(), Slot::A);
    let audit = rt.block_on(s.audit());
    assert!(audit.iter().any(|e| e.0 == "rollout.cancelled" && e.1 == "operator:alice"), "{audit:#?}");
    assert!(audit.iter().any(|e| e.0 == "action.canceled" && e.1 == "device:dev1"), "{audit:#?}");
}

#[test]
fn a_closed_maintenance_window_holds_the_install_until_it_opens() {
    let rt = runtime();
    let s = rt.block_on(start(Backend::Sqlite, |_| {}));
    let (dev, token) = rt.block_on(s.device("dev1"));
    let (artifact, _) = rt.block_on(s.publish("2.0", 2, 3 << 20));
    let minute = (otter_server::db::now_ms() / 60_000).rem_euclid(1440);
    // Opens in 12 hours, for an hour: closed for the whole test.
    let closed = serde_json::json!({"start_minute": (minute + 720) % 1440, "duration_minutes": 60});
    let rollout = rt.block_on(start_rollout(&s, artifact.id, serde_json::json!({"kind": "forced", "window": closed})));
    let id = rt.block_on(action_of(&s, dev)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = device(dir.path(), &s, &token);
    let env_before = otterd::sim::env_summary(&d).unwrap();

    let mut b = boot(&d);
    // Outside the window the device downloads (and verifies) but does not install.
    wait_for("the download outside the window", || rt.block_on(s.action_state(id)) == "downloaded");
    assert!(b.wait(Duration::from_secs(3)).is_none(), "no reboot while the window is closed");
    assert_eq!(otterd::sim::env_summary(&d).unwrap(), env_before, "bootloader env untouched");
    let st = rt.block_on(otter_server::actions::statuses(&s.state.db, id, 1000)).unwrap();
    assert!(st.iter().any(|x| x.details.join(" ").contains("maintenance window closed")), "{st:#?}");

    // The window opens (the operator moves it to now): the next poll offers the install, and it goes through.
    let spec = rt.block_on(s.text(&format!("SELECT spec FROM rollouts WHERE id = {rollout}"))).unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    spec["window"] = serde_json::json!({"start_minute": (minute + 1439) % 1440, "duration_minutes": 120});
    rt.block_on(s.exec(&format!("UPDATE rollouts SET spec = '{spec}' WHERE id = {rollout}")));
    b.until_reboot(LONG).unwrap();
    let b = boot(&d);
    assert_eq!(b.slot, Slot::B);
    let record = b.until_finished(LONG, || rt.block_on(s.action_state(id)) == "finished").unwrap();
    assert_eq!(record.outcome, Outcome::Committed);
}

#[test]
fn a_fast_release_reaches_a_device_that_would_otherwise_sleep_for_an_hour() {
    let rt = runtime();
    let s = rt.block_on(start(Backend::Sqlite, |c| {
        c.poll = Duration::from_secs(3600);
        c.fast_poll = Duration::from_secs(1);
    }));
    let (dev, token) = rt.block_on(s.device("dev1"));
    let (artifact, _) = rt.block_on(s.publish("2.0", 2, 3 << 20));
    // Waiting for an approval: the device is told to poll fast, and has nothing to install yet.
    let spec = serde_json::json!({"kind": "forced", "speed": "fast",
        "groups": [{"name": "all", "percent": 100, "approval": true}]});
    let rollout = rt.block_on(start_rollout(&s, artifact.id, spec));
    assert_eq!(rt.block_on(action_of(&s, dev)), None);
    let dir = tempfile::tempdir().unwrap();
    // The device follows the server's interval up to two hours.
    let d = device_polling(dir.path(), &s, &token, "2h");
    let b = boot(&d);
    wait_for("the first poll", || {
        rt.block_on(otter_server::devices::by_controller_id(&s.state.db, "dev1"))
            .unwrap()
            .unwrap()
            .last_seen_ms
            .is_some()
    });
    std::thread::sleep(Duration::from_millis(1500));

    // Approved after the device's first poll: it learns of it at its next (fast) poll, not in an hour.
    rt.block_on(otter_server::rollout::approve(&s.state, rollout, 0, "operator:carol")).unwrap();
    rt.block_on(otter_server::rollout::tick(&s.state, otter_server::db::now_ms())).unwrap();
    let id = rt.block_on(action_of(&s, dev)).expect("the group started");
    b.until_reboot(LONG).unwrap();
    let b = boot(&d);
    assert_eq!(b.slot, Slot::B);
    let record = b.until_finished(LONG, || rt.block_on(s.action_state(id)) == "finished").unwrap();
    assert_eq!(record.outcome, Outcome::Committed);
    // With the rollout over, the device is back to the standard interval.
    rt.block_on(otter_server::rollout::tick(&s.state, otter_server::db::now_ms())).unwrap();
    assert_eq!(rt.block_on(otter_server::rollout::get(&s.state.db, rollout)).unwrap().state.as_str(), "finished");
    let (_, poll) = rt.block_on(ddi_get(&s.base("dev1"), &token));
    assert_eq!(poll["config"]["polling"]["sleep"], "01:00:00");
}

/// A DDI GET with a target token: (status, JSON body or null).
async fn ddi_get(url: &str, token: &str) -> (u16, serde_json::Value) {
    let r =
        reqwest::Client::new().get(url).header("authorization", format!("TargetToken {token}")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[test]
fn a_revoked_device_gets_nothing_until_its_token_is_rotated() {
    let rt = runtime();
    let s = rt.block_on(start(Backend::Sqlite, |_| {}));
    let (dev, token) = rt.block_on(s.device("dev1"));
    let (artifact, _) = rt.block_on(s.publish("2.0", 2, 3 << 20));
    rt.block_on(otter_server::devices::revoke_token(&s.state.db, "dev1", "operator:alice")).unwrap();
    let id = rt.block_on(s.action(dev, artifact.id, ActionKind::Forced, false));
    let dir = tempfile::tempdir().unwrap();
    let d = device(dir.path(), &s, &token);
    let env_before = otterd::sim::env_summary(&d).unwrap();

    // The revoked token is refused; the device keeps running and retrying, and installs nothing.
    let mut b = boot(&d);
    assert_eq!(rt.block_on(ddi_get(&s.base("dev1"), &token)).0, 401);
    assert!(b.wait(Duration::from_secs(4)).is_none(), "otterd keeps running");
    assert_eq!(rt.block_on(s.action_state(id)), "running", "nothing fetched with a revoked token");
    assert_eq!(rt.block_on(otter_server::actions::status_count(&s.state.db, id)).unwrap(), 0);
    assert_eq!(otterd::sim::env_summary(&d).unwrap(), env_before);
    b.stop();

    // A rotated token, configured on the device, works again.
    let fresh = rt.block_on(otter_server::devices::rotate_token(&s.state.db, "dev1", "operator:alice")).unwrap();
    let conf = d.root.join("etc/otter/otter.toml");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains(&token), "{}", conf.display());
    std::fs::write(&conf, text.replace(&token, &fresh)).unwrap();
    let record = install(&rt, &s, &d, id);
    assert_eq!(record.outcome, Outcome::Committed);
    let audit = rt.block_on(s.audit());
    let events: Vec<&str> = audit.iter().filter(|e| e.0.starts_with("device.token")).map(|e| e.0.as_str()).collect();
    assert_eq!(events, ["device.token-revoked", "device.token-rotated"], "{audit:#?}");
}
