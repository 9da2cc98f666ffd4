//! Real otterd devices (simulated hardware: file slots, a U-Boot env file, `otterd::sim::power_on`) against
//! otter-server's device API: the whole update, and a download whose signed link expires half-way.

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
fn device(dir: &std::path::Path, s: &Server, token: &str) -> Device {
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
poll_max = "1s"
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
                let (parts, body) = resp.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(bytes.slice(..after))).await;
                    tokio::time::sleep(pause).await;
                    let _ = tx.send(Err(std::io::Error::other("connection cut by the test"))).await;
                });
                Response::from_parts(parts, Body::from_stream(Rx(rx)))
            }
        }))
    }
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
