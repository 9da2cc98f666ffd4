//! The hawkBit DDI client against the test server (`otter-ddi-server`), on a simulated device: file slots, a real
//! U-Boot env file, simulated power-ons (`otterd::sim::power_on`) and a fresh runtime + poller per boot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_bootloader::Slot;
use otter_ddi_server::{ActionSpec, ActionStatus, DdiServer, Fault, TlsSetup, Trigger};
use otterd::engine::{JobRecord, Outcome};
use otterd::fixture::{Device, DeviceSpec};
use otterd::hawkbit::client::{DdiClient, DdiError};
use otterd::runtime::Command;
use otterd::sim::Boot;
use serde_json::Value;

const TYPE: &str = "test-gw";
const SLOT: u64 = 4 << 20;
/// Generous: shared, noisy machines.
const LONG: Duration = Duration::from_secs(90);

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LONG, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 3 MiB image whose first bytes are not zero (so an invalidated slot head is visible).
fn image(dir: &Path, seed: u8) -> PathBuf {
    otterd::fixture::pattern_image(dir, seed, 3 << 20).unwrap()
}

/// A signed artifact of `version` holding `image`, in 256 KiB chunks.
fn artifact_of(key: &ed25519_dalek::SigningKey, version: &str, image: &Path) -> Vec<u8> {
    let mut o = BuildOptions::new(vec![TYPE.into()], version);
    o.chunk_size = 256 << 10;
    o.level = 1;
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: image.to_owned(), base: None };
    let mut out = Vec::new();
    builder::create(&o, &[src], std::slice::from_ref(key), &mut out).unwrap();
    out
}

struct Rig {
    dir: tempfile::TempDir,
    server: DdiServer,
    device: Device,
    artifact: Vec<u8>,
    /// Another signed artifact (version 3.0, another image), not on the server.
    other_artifact: Vec<u8>,
    new_image: PathBuf,
}

struct Opts {
    reboot_policy: &'static str,
    server_extra: String,
    server: Option<DdiServer>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            reboot_policy: "immediate",
            server_extra: "auth = \"target-token\"\ntoken = \"tok-1\"\n".into(),
            server: None,
        }
    }
}

fn rig(opts: Opts) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.path().join("release")).unwrap();
    let old = image(dir.path(), 1);
    let new_image = image(dir.path(), 2);
    let other_artifact = artifact_of(&key, "3.0", &image(dir.path(), 3));
    let artifact = artifact_of(&key, "2.0", &new_image);
    let server = opts.server.unwrap_or_else(|| DdiServer::start().unwrap());
    server.add_target("dev1", Some("tok-1"));
    server.add_artifact("update-2.0.otter", artifact.clone());
    server.add_artifact("update-2.0.swu", b"not ours".to_vec());
    let mut spec = DeviceSpec::new(TYPE, &dir.path().join("release.pub"));
    spec.slot_size = SLOT;
    spec.reboot_policy = opts.reboot_policy.into();
    let root = dir.path().join("root");
    spec.extra_config = format!(
        r#"[health]
commit_deadline = "60s"

[[health.command]]
name = "app"
run = ["sh", "-c", "test ! -e {root}/etc/otter/unhealthy"]
timeout = "20s"

[server]
url = "{url}"
controller_id = "dev1"
poll_min = "200ms"
poll_max = "2s"
backoff_initial = "200ms"
backoff_max = "2s"
jitter_percent = 0
progress_interval = "100ms"
resume_backoff = "50ms"
timeout = "10s"
{extra}"#,
        root = root.display(),
        url = server.url(),
        extra = opts.server_extra,
    );
    let device = Device::create(&root, &spec, Some(&old)).unwrap();
    Rig { dir, server, device, artifact, other_artifact, new_image }
}

impl Rig {
    fn boot(&self) -> Boot {
        Boot::start(&self.device).unwrap()
    }

    fn action_done(&self, id: u64) -> bool {
        !matches!(
            self.server.action(id).unwrap().status,
            ActionStatus::Running | ActionStatus::WaitingConfirmation | ActionStatus::Canceling
        )
    }

    /// (execution, finished) of every feedback, consecutive `proceeding` collapsed into one.
    fn sequence(&self, id: u64) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for f in self.server.action(id).unwrap().feedback {
            let e = f["status"]["execution"].as_str().unwrap().to_owned();
            let r = f["status"]["result"]["finished"].as_str().unwrap().to_owned();
            if out.last().is_some_and(|l| l.0 == "proceeding" && e == "proceeding") {
                continue;
            }
            out.push((e, r));
        }
        out
    }

    /// Install (first boot), trial boot, commit; checks the feedback sequence.
    fn complete(&self, id: u64) {
        self.boot().until_reboot(LONG).unwrap();
        let record = self.boot().until_finished(LONG, || self.action_done(id)).unwrap();
        assert_eq!(record.outcome, Outcome::Committed);
        let seq = self.sequence(id);
        let words: Vec<&str> = seq.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(words, ["proceeding", "downloaded", "closed"]);
        assert_eq!(seq[2].1, "success");
    }

    /// Boots, lets the install of the offered action run over a slow link until the installer made some chunks
    /// durable (its resume record exists), and cuts the power; returns the record's path.
    fn power_cut_mid_install(&self) -> PathBuf {
        self.server.inject(Fault::SlowBody { piece: 64 << 10, delay: Duration::from_millis(150) });
        let record = self.device.root.join("var/lib/otter/install-resume.json");
        {
            let _boot = self.boot();
            // The installer checkpoints every 2 s: once there is a record, some chunks are durable in the slot.
            wait_for("a resume checkpoint", || record.exists());
            // The power failure: the loop stops with the job still installing.
        }
        self.server.clear_faults();
        record
    }

    fn slot_head(&self, slot: Slot) -> Vec<u8> {
        let data = std::fs::read(self.device.slot_file(slot)).unwrap();
        data[..4096].to_vec()
    }
}

fn feedback_details(f: &Value) -> String {
    f["status"]["details"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

#[test]
fn full_flow_reports_proceeding_downloaded_then_closed_success_after_the_trial_boot() {
    let r = rig(Opts::default());
    r.server.require_auth(true);
    let mut spec = ActionSpec::new("update-2.0.swu", "2.0");
    spec.artifacts.push("update-2.0.otter".into());
    let id = r.server.create_action("dev1", spec);

    let b = r.boot();
    assert_eq!(b.slot, Slot::A);
    b.until_reboot(LONG).unwrap();
    let b = r.boot();
    assert_eq!(b.slot, Slot::B, "trial boot of the new slot");
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    assert_eq!(record.outcome, Outcome::Committed);
    assert_eq!(record.job.remote_id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: true });

    let seq = r.sequence(id);
    let expect = |e: &str, f: &str| (e.to_owned(), f.to_owned());
    assert_eq!(seq, vec![expect("proceeding", "none"), expect("downloaded", "none"), expect("closed", "success")]);
    let fb = r.server.action(id).unwrap().feedback;
    assert!(fb.iter().all(|f| f["timestamp"].as_u64().is_some_and(|t| t > 1_600_000_000_000)), "{fb:#?}");
    assert!(feedback_details(&fb[0]).contains("update-2.0.otter"), "{}", fb[0]);
    assert_eq!(fb[0]["status"]["result"]["progress"], serde_json::json!({"cnt": 0, "of": 100}));
    let downloaded = fb.iter().find(|f| f["status"]["execution"] == "downloaded").unwrap();
    assert!(feedback_details(downloaded).contains("slot B"), "{downloaded}");
    let closed = fb.last().unwrap();
    assert!(feedback_details(closed).contains("committed"), "{closed}");
    // Progress feedback, if any, counts up to 100.
    for f in fb.iter().filter(|f| f["status"]["execution"] == "proceeding") {
        let p = &f["status"]["result"]["progress"];
        assert_eq!(p["of"], 100);
        assert!(p["cnt"].as_u64().unwrap() <= 100);
    }
    // The right header on every request, artifact downloads included; the image is in slot B.
    for req in r.server.requests() {
        assert_eq!(req.header("authorization"), Some("TargetToken tok-1"), "{} {}", req.method, req.path);
    }
    let b_img = std::fs::read(r.device.slot_file(Slot::B)).unwrap();
    let new = std::fs::read(&r.new_image).unwrap();
    assert_eq!(&b_img[..new.len()], &new[..]);
    // Reported once: another boot sends nothing more.
    let before = r.server.requests_to("/feedback").len();
    let b = r.boot();
    wait_for("a few polls", || {
        r.server.requests_to("/controller/v1/dev1").iter().filter(|q| q.path.ends_with("/dev1")).count() >= 5
    });
    drop(b);
    assert_eq!(r.server.requests_to("/feedback").len(), before);
    let _ = &r.dir;
}

#[test]
fn failed_health_reports_closed_failure_after_the_rollback() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    r.boot().until_reboot(LONG).unwrap();
    std::fs::write(r.device.root.join("etc/otter/unhealthy"), "x").unwrap();
    let b = r.boot();
    assert_eq!(b.slot, Slot::B);
    b.until_reboot(LONG).unwrap();
    let b = r.boot();
    assert_eq!(b.slot, Slot::A, "fell back to the old slot");
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    assert!(matches!(record.outcome, Outcome::RolledBack { .. }), "{record:?}");
    let seq = r.sequence(id);
    assert_eq!(seq.last().unwrap(), &("closed".to_owned(), "failure".to_owned()), "{seq:?}");
    assert_eq!(seq[seq.len() - 2].0, "downloaded");
    let fb = r.server.action(id).unwrap().feedback;
    let details = feedback_details(fb.last().unwrap());
    assert!(details.contains("rolled back") && details.contains("slot A"), "{details}");
}

#[test]
fn forced_reboots_at_once_attempt_waits_for_the_policy_skip_only_downloads() {
    // Manual reboot policy: only a forced action reboots by itself.
    let r = rig(Opts { reboot_policy: "manual", ..Opts::default() });
    let forced = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    r.boot().until_reboot(LONG).unwrap();
    assert_eq!(r.sequence(forced).last().unwrap().0, "downloaded");

    let r = rig(Opts { reboot_policy: "manual", ..Opts::default() });
    let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
    spec.update = "attempt".into();
    spec.download = "attempt".into();
    let attempt = r.server.create_action("dev1", spec);
    let b = r.boot();
    wait_for("downloaded", || r.sequence(attempt).iter().any(|s| s.0 == "downloaded"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(!b.is_over(), "an attempt action must not reboot under the manual policy");
    assert_eq!(b.handle.status().operation, "awaiting-reboot");
    drop(b);

    let r = rig(Opts::default());
    let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
    spec.update = "skip".into();
    let skip = r.server.create_action("dev1", spec);
    let b = r.boot();
    wait_for("the download-only action to close", || r.action_done(skip));
    assert_eq!(r.sequence(skip), vec![("proceeding".into(), "none".into()), ("downloaded".into(), "none".into())]);
    assert!(b.handle.status().job.is_none() && b.handle.status().last.is_none(), "nothing installed");
    assert!(r.slot_head(Slot::B).iter().all(|&x| x == 0), "slot B untouched");
    let details = feedback_details(&r.server.action(skip).unwrap().feedback[1]);
    assert!(details.contains("sha256 verified"), "{details}");
}

#[test]
fn cancel_is_accepted_before_the_flip_and_rejected_after() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    r.server.inject(Fault::SlowBody { piece: 32 << 10, delay: Duration::from_millis(40) });
    r.server.inject(Fault::AfterBytes { after: 128 << 10, then: Trigger::Cancel(id) });
    let b = r.boot();
    let record = b.finished.recv_timeout(LONG).unwrap();
    assert_eq!(record.outcome, Outcome::Cancelled);
    wait_for("the cancel answer", || r.action_done(id));
    let a = r.server.action(id).unwrap();
    assert_eq!(a.status, ActionStatus::Canceled);
    assert_eq!(a.cancel_feedback[0]["status"]["execution"], "closed");
    assert_eq!(a.cancel_feedback[0]["status"]["result"]["finished"], "success");
    assert!(a.feedback.iter().all(|f| f["status"]["execution"] != "closed"), "no closed on the deployment");
    assert_eq!(b.handle.status().primary, Some(Slot::A));
    drop(b);

    let r = rig(Opts { reboot_policy: "manual", ..Opts::default() });
    let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
    spec.update = "attempt".into();
    let id = r.server.create_action("dev1", spec);
    let b = r.boot();
    wait_for("awaiting reboot", || b.handle.status().operation == "awaiting-reboot");
    r.server.cancel_action(id);
    wait_for("the cancel answer", || !r.server.action(id).unwrap().cancel_feedback.is_empty());
    let a = r.server.action(id).unwrap();
    assert_eq!(a.cancel_feedback[0]["status"]["execution"], "rejected");
    assert!(feedback_details(&a.cancel_feedback[0]).contains("slot B"));
    assert_eq!(a.status, ActionStatus::Running);
    assert_eq!(b.handle.status().operation, "awaiting-reboot");
}

#[test]
fn dropped_connection_resumes_without_downloading_twice() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let half = r.artifact.len() as u64 / 2;
    r.server.inject(Fault::AfterBytes { after: half, then: Trigger::Drop });
    r.complete(id);
    let downloads = r.server.requests_to("/artifacts/");
    assert_eq!(downloads.len(), 2, "one resume");
    assert_eq!(downloads[1].status, 206);
    assert_eq!(downloads[1].header("range"), Some(format!("bytes={half}-").as_str()));
    let sent = r.server.artifact_bytes_sent();
    assert!((sent as f64) < 1.2 * r.artifact.len() as f64, "{sent} bytes for a {}-byte artifact", r.artifact.len());
}

#[test]
fn an_install_cut_off_by_a_power_failure_continues_after_the_restart() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let record = r.power_cut_mid_install();
    let first_downloads = r.server.requests_to("/artifacts/").len();
    r.complete(id);
    let downloads = r.server.requests_to("/artifacts/");
    let resumed = downloads.last().unwrap();
    assert_eq!(downloads.len(), first_downloads + 2, "the manifest, then a range past the written chunks");
    assert_eq!(resumed.status, 206);
    let start: u64 =
        resumed.header("range").and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()).unwrap();
    assert!(start > 256 << 10, "at least one 256 KiB chunk was not fetched again (range from {start})");
    let details: Vec<String> = r.server.action(id).unwrap().feedback.iter().map(feedback_details).collect();
    // Told once: not again when the record shows up twice at start-up, nor at the trial boot of the reinstall.
    assert_eq!(details.iter().filter(|d| d.contains("interrupted by a restart")).count(), 1, "{details:?}");
    let (slot, image) = (std::fs::read(r.device.slot_file(Slot::B)).unwrap(), std::fs::read(&r.new_image).unwrap());
    assert!(slot[..image.len()] == image[..], "slot B holds the new image");
    assert!(!record.exists());
}

#[test]
fn expired_artifact_link_is_refreshed_and_the_download_resumes() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let third = r.artifact.len() as u64 / 3;
    r.server.inject(Fault::AfterBytes { after: third, then: Trigger::ExpireLinks(403) });
    r.complete(id);
    let downloads = r.server.requests_to("/artifacts/");
    let statuses: Vec<u16> = downloads.iter().map(|d| d.status).collect();
    assert_eq!(statuses, vec![200, 403, 206], "{downloads:#?}");
    assert!(downloads[2].query.contains("sig=1"), "fresh link used");
    assert_eq!(downloads[2].header("range"), Some(format!("bytes={third}-").as_str()));
    let sent = r.server.artifact_bytes_sent();
    assert!((sent as f64) < 1.2 * r.artifact.len() as f64);
}

#[test]
fn server_sha256_mismatch_fails_and_leaves_the_slot_invalid() {
    let r = rig(Opts::default());
    let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
    spec.sha256_override = Some("ab".repeat(32));
    let id = r.server.create_action("dev1", spec);
    let b = r.boot();
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    match &record.outcome {
        Outcome::Failed { code, .. } => assert_eq!(code, "digest-mismatch"),
        o => panic!("{o:?}"),
    }
    assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: false });
    let details = feedback_details(r.server.action(id).unwrap().feedback.last().unwrap());
    assert!(details.contains("sha256") && details.contains(&"ab".repeat(32)), "{details}");
    assert!(r.slot_head(Slot::B).iter().all(|&x| x == 0), "slot B head not written");
}

#[test]
fn malformed_json_and_server_errors_back_off_and_the_daemon_keeps_running() {
    let r = rig(Opts::default());
    r.server.inject(Fault::Status { path: "/controller/v1/dev1".into(), status: 500, times: 2 });
    r.server.inject(Fault::MalformedJson { path: "/controller/v1/dev1".into(), times: 2 });
    r.server.set_sleep("garbage");
    let b = r.boot();
    wait_for("a good poll after the faults", || r.server.requests().iter().filter(|q| q.status == 200).count() >= 2);
    let polls: Vec<_> = r.server.requests().into_iter().filter(|q| q.path.ends_with("/dev1")).collect();
    assert_eq!(polls[..4].iter().map(|p| p.status).collect::<Vec<_>>(), vec![500, 500, 200, 200]);
    // Backoff doubles: 200 ms, 400 ms, 800 ms (no jitter in this test).
    let gap = |i: usize| polls[i + 1].at - polls[i].at;
    assert!(gap(0) >= Duration::from_millis(180), "{:?}", gap(0));
    assert!(gap(2) >= Duration::from_millis(700), "{:?}", gap(2));
    assert!(!b.is_over());
    // Still serving: an action now goes through.
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    wait_for("downloaded", || r.sequence(id).iter().any(|s| s.0 == "downloaded"));
}

#[test]
fn gone_mid_action_stops_the_install_and_reporting() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    r.server.inject(Fault::SlowBody { piece: 32 << 10, delay: Duration::from_millis(40) });
    r.server.inject(Fault::AfterBytes { after: 128 << 10, then: Trigger::Gone(id) });
    let b = r.boot();
    let record = b.finished.recv_timeout(LONG).unwrap();
    assert_eq!(record.outcome, Outcome::Cancelled);
    assert!(r.server.requests_to("/feedback").iter().any(|q| q.status == 410));
    std::thread::sleep(Duration::from_secs(1));
    let after = r.server.requests_to(&format!("deploymentBase/{id}/feedback"));
    assert_eq!(after.iter().filter(|q| q.status == 410).count(), 1, "nothing more is sent after 410");
    assert!(!b.is_over());
    assert_eq!(b.handle.status().primary, Some(Slot::A));
}

#[test]
fn gateway_token_is_sent() {
    let r = rig(Opts { server_extra: "auth = \"gateway-token\"\ntoken = \"gw-secret\"\n".into(), ..Opts::default() });
    r.server.require_auth(true);
    r.server.set_gateway_token(Some("gw-secret"));
    let _b = r.boot();
    wait_for("attributes", || !r.server.attributes("dev1").1.is_empty());
    assert!(r.server.requests().iter().all(|q| q.header("authorization") == Some("GatewayToken gw-secret")));
}

/// A private CA (its PEM and issuer) and a server certificate for 127.0.0.1 it signed, with the server's key.
fn private_pki() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>, rcgen::Certificate, rcgen::KeyPair) {
    let p = otter_common::http::testing::private_pki();
    (p.ca_pem, p.issuer, p.server_cert, p.server_key)
}

#[test]
fn client_certificate_with_a_private_ca() {
    use rcgen::{CertificateParams, KeyPair};
    let (ca_pem, issuer, server_cert, server_key) = private_pki();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["dev1".into()]).unwrap().signed_by(&client_key, &issuer).unwrap();
    let server = DdiServer::start_tls(&TlsSetup {
        cert_pem: server_cert.pem(),
        key_pem: server_key.serialize_pem(),
        client_ca_pem: Some(ca_pem.clone()),
    })
    .unwrap();
    let pki = tempfile::tempdir().unwrap();
    let r = rig(Opts {
        server: Some(server),
        server_extra:
            "auth = \"certificate\"\nca_bundle = \"/etc/otter/ca.pem\"\nclient_identity = \"/etc/otter/client.pem\"\n"
                .into(),
        ..Opts::default()
    });
    std::fs::write(r.device.root.join("etc/otter/ca.pem"), &ca_pem).unwrap();
    std::fs::write(
        r.device.root.join("etc/otter/client.pem"),
        format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
    )
    .unwrap();
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    r.complete(id);
    let reqs = r.server.requests();
    assert!(reqs.iter().any(|q| q.path.contains("/artifacts/")), "downloaded over mTLS");
    assert!(reqs.iter().all(|q| q.client_cert && q.header("authorization").is_none()));
    drop(pki);
}

#[test]
fn inventory_attributes_arrive_with_mode_merge() {
    let r = rig(Opts::default());
    let root = &r.device.root;
    std::fs::write(root.join("etc/machine-id"), "0123456789abcdef\n").unwrap();
    std::fs::write(root.join("etc/os-release"), "NAME=otter\nVERSION_ID=1.0\n").unwrap();
    std::fs::create_dir_all(root.join("sys/class/thermal/thermal_zone0")).unwrap();
    std::fs::write(root.join("sys/class/thermal/thermal_zone0/type"), "cpu-thermal\n").unwrap();
    std::fs::write(root.join("sys/class/thermal/thermal_zone0/temp"), "47500\n").unwrap();
    std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/osrelease"), "6.1.0-otter\n").unwrap();
    std::fs::write(root.join("proc/uptime"), "1234.56 100.0\n").unwrap();
    let inv = root.join("etc/otter/inventory.d");
    std::fs::create_dir_all(&inv).unwrap();
    std::fs::write(inv.join("10-hw"), "#!/bin/sh\necho hw_revision=3\necho 'not a pair'\necho modem=EC25\n").unwrap();
    std::process::Command::new("chmod").arg("+x").arg(inv.join("10-hw")).status().unwrap();
    let _b = r.boot();
    wait_for("attributes", || !r.server.attributes("dev1").1.is_empty());
    let (attrs, modes) = r.server.attributes("dev1");
    assert!(modes.iter().all(|m| m == "merge"), "{modes:?}");
    for (k, v) in [
        ("device_type", TYPE),
        ("os_version", "1.0"),
        ("slot_booted", "A"),
        ("kernel", "6.1.0-otter"),
        ("machine_id", "0123456789abcdef"),
        ("uptime_s", "1234"),
        ("cpu_temp_c", "47.5"),
        ("hw_revision", "3"),
        ("modem", "EC25"),
    ] {
        assert_eq!(attrs.get(k).map(String::as_str), Some(v), "{k} in {attrs:?}");
    }
    assert!(attrs.contains_key("storage_free_mib") && attrs.contains_key("slot_states"), "{attrs:?}");
}

#[test]
fn check_for_update_trigger_polls_at_once() {
    let r = rig(Opts::default());
    r.server.set_sleep("01:00:00");
    let b = r.boot();
    wait_for("the first poll", || !r.server.requests_to("/dev1").is_empty());
    let polls = || r.server.requests().iter().filter(|q| q.path.ends_with("/dev1")).count();
    std::thread::sleep(Duration::from_millis(500));
    let before = polls();
    (b.poller().unwrap().trigger().callback())();
    wait_for("a triggered poll", || polls() > before);
}

#[test]
fn closed_maintenance_window_downloads_only_then_installs_when_it_opens() {
    let r = rig(Opts::default());
    let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
    spec.maintenance_window = Some("unavailable".into());
    let id = r.server.create_action("dev1", spec);
    let b = r.boot();
    wait_for("the download in the closed window", || r.sequence(id).iter().any(|s| s.0 == "downloaded"));
    let fb = r.server.action(id).unwrap().feedback;
    assert!(feedback_details(fb.last().unwrap()).contains("maintenance window closed"), "{fb:#?}");
    assert!(b.handle.status().job.is_none(), "nothing installed while the window is closed");
    assert!(r.slot_head(Slot::B).iter().all(|&x| x == 0), "slot B untouched");
    // The window opens: the same action installs, reboots and commits.
    r.server.update_action(id, |s| s.maintenance_window = Some("available".into()));
    b.until_reboot(LONG).unwrap();
    let b = r.boot();
    assert_eq!(b.slot, Slot::B);
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    assert_eq!(record.outcome, Outcome::Committed);
    assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: true });
}

// ----- a hostile server and network -----

/// The failure details the server got last for `id`.
fn last_details(r: &Rig, id: u64) -> String {
    feedback_details(r.server.action(id).unwrap().feedback.last().unwrap())
}

fn failed_code(record: &JobRecord) -> &str {
    match &record.outcome {
        Outcome::Failed { code, .. } => code,
        o => panic!("expected a failure, got {o:?}"),
    }
}

#[test]
fn the_token_goes_only_to_the_servers_origin_not_to_a_storage_host() {
    let r = rig(Opts::default());
    r.server.require_auth(true);
    // A pre-signed link on another host (here: another port, which is another origin).
    let storage = DdiServer::start().unwrap();
    storage.add_target("dev1", None);
    storage.add_artifact("update-2.0.otter", r.artifact.clone());
    let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
    spec.link_override = Some(format!(
        "{}/DEFAULT/controller/v1/dev1/softwaremodules/1/artifacts/update-2.0.otter?sig=0",
        storage.url()
    ));
    let id = r.server.create_action("dev1", spec);
    r.boot().until_reboot(LONG).unwrap();
    let downloads = storage.requests_to("/artifacts/");
    assert!(!downloads.is_empty(), "downloaded from the storage host");
    for q in &downloads {
        assert_eq!(q.header("authorization"), None, "the token went to another origin");
    }
    assert!(r.server.requests().iter().all(|q| q.header("authorization") == Some("TargetToken tok-1")));
    assert_eq!(r.sequence(id)[0].0, "proceeding", "the action was carried out");
}

#[test]
fn links_that_are_not_http_are_refused_with_failure_feedback() {
    let r = rig(Opts::default());
    let local = r.dir.path().join("local.otter");
    std::fs::write(&local, &r.artifact).unwrap();
    let slot_b = std::fs::read(r.device.slot_file(Slot::B)).unwrap();
    let b = r.boot();
    for link in [local.display().to_string(), format!("file://{}", local.display())] {
        let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
        spec.link_override = Some(link.clone());
        let id = r.server.create_action("dev1", spec);
        wait_for("the action to fail", || r.action_done(id));
        assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: false }, "{link}");
        let details = last_details(&r, id);
        assert!(details.contains("not an http(s) URL") && details.contains("not-http-url"), "{details}");
    }
    let status = b.handle.status();
    assert!(status.job.is_none() && status.last.is_none(), "no install was started: {status:?}");
    assert!(std::fs::read(r.device.slot_file(Slot::B)).unwrap() == slot_b, "slot B untouched");
}

#[test]
fn a_huge_answer_is_not_read_whole() {
    let r = rig(Opts::default());
    let settings = otterd::config::load(&r.device.root).unwrap();
    let client = DdiClient::new(settings.server.as_ref().unwrap()).unwrap();
    // A valid JSON poll answer of 64 MiB: read whole, it parses.
    r.server.inject(Fault::HugeJson { path: "/controller/v1/dev1".into(), bytes: 64 << 20 });
    let e = client.poll().unwrap_err();
    assert!(matches!(e, DdiError::TooLarge { limit, .. } if limit == 1 << 20), "{e}");
    client.poll().expect("the next, normal answer");
}

#[test]
fn an_endless_artifact_body_fails_after_the_announced_size() {
    let r = rig(Opts::default());
    r.server.inject(Fault::EndlessBody);
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let b = r.boot();
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    assert_eq!(failed_code(&record), "too-long");
    assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: false });
    let details = last_details(&r, id);
    assert!(details.contains("longer than the announced"), "{details}");
    assert!(!details.contains("sig="), "the link's query string is redacted: {details}");
    assert!(r.slot_head(Slot::B).iter().all(|&x| x == 0), "slot B head not written");
}

#[test]
fn a_slow_loris_download_stalls_and_fails_while_progress_keeps_flowing() {
    let r = rig(Opts {
        server_extra: "auth = \"target-token\"\ntoken = \"tok-1\"\nstall_timeout = \"1s\"\nmax_resumes = 2\n".into(),
        ..Opts::default()
    });
    // 50 bytes a second: alive, useless.
    r.server.inject(Fault::SlowBody { piece: 1, delay: Duration::from_millis(20) });
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let b = r.boot();
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    assert_eq!(failed_code(&record), "stalled");
    assert_eq!(r.server.requests_to("/artifacts/").len(), 3, "the first connection and two resumes");
    // About three seconds without progress in percent: the heartbeat (6 x 100 ms) still reported.
    let proceeding =
        r.server.action(id).unwrap().feedback.iter().filter(|f| f["status"]["execution"] == "proceeding").count();
    assert!(proceeding >= 3, "{proceeding} progress feedbacks during the stall");
    assert!(last_details(&r, id).contains("no data"), "{}", last_details(&r, id));
}

#[test]
fn an_artifact_replaced_behind_the_same_url_fails_the_action_instead_of_installing_it() {
    let r = rig(Opts::default());
    // Half-way through, the server starts serving another build behind the same link (new ETag) and drops the
    // connection: the resume's If-Range fails and the answer is the other file.
    r.server.inject(Fault::AfterBytes {
        after: 600_000,
        then: Trigger::Replace { name: "update-2.0.otter".into(), data: r.other_artifact.clone() },
    });
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let b = r.boot();
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    assert_eq!(failed_code(&record), "artifact-replaced");
    assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: false });
    let details = last_details(&r, id);
    assert!(details.contains("not restarted"), "{details}");
    let other_size = r.other_artifact.len();
    assert!(details.contains(&format!("now names update-2.0.otter version 2.0 ({other_size} bytes)")), "{details}");
    assert!(r.slot_head(Slot::B).iter().all(|&x| x == 0), "slot B holds no valid image");
}

#[test]
fn the_version_the_action_names_must_be_the_artifacts_and_a_closed_action_offered_again_gets_its_final_feedback() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "1.5"));
    let b = r.boot();
    wait_for("the action to fail", || r.action_done(id));
    let record = b.handle.status().last.expect("a finished job");
    assert_eq!(failed_code(&record), "version-mismatch");
    let first = r.server.action(id).unwrap().feedback;
    let final_feedback = first.last().unwrap().clone();
    assert_eq!(final_feedback["status"]["result"]["finished"], "failure");
    // The server reuses the id (or lost the result): the device answers with the same final feedback.
    r.server.reopen_action(id);
    wait_for("the action to be closed again", || r.action_done(id));
    let again = r.server.action(id).unwrap().feedback;
    assert_eq!(again.len(), first.len() + 1);
    assert_eq!(again.last().unwrap(), &final_feedback, "the same final feedback");
    assert_eq!(b.handle.status().last.unwrap().job.id, record.job.id, "nothing installed again");
}

#[test]
fn action_links_outside_the_servers_origin_are_not_followed() {
    let r = rig(Opts::default());
    let elsewhere = DdiServer::start().unwrap();
    elsewhere.add_target("dev1", None);
    r.server.set_action_link_base(Some(&elsewhere.url()));
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let b = r.boot();
    wait_for("a few polls", || {
        r.server.requests_to("/controller/v1/dev1").iter().filter(|q| q.path.ends_with("dev1")).count() >= 3
    });
    assert!(elsewhere.requests().is_empty(), "the device followed a foreign link: {:?}", elsewhere.requests());
    assert!(b.handle.status().job.is_none());
    // Once the links are the server's own again, the action goes ahead.
    r.server.set_action_link_base(None);
    wait_for("the install to start", || !r.server.action(id).unwrap().feedback.is_empty());
}

/// An HTTPS DDI server with a private CA; returns it and the CA's PEM.
fn tls_server() -> (DdiServer, String) {
    let (ca_pem, _, server_cert, server_key) = private_pki();
    let tls = TlsSetup { cert_pem: server_cert.pem(), key_pem: server_key.serialize_pem(), client_ca_pem: None };
    (DdiServer::start_tls(&tls).unwrap(), ca_pem)
}

#[test]
fn an_https_server_cannot_send_the_device_to_a_plain_http_link_unless_allowed() {
    for allow in [false, true] {
        let (server, ca) = tls_server();
        let r = rig(Opts {
            server: Some(server),
            server_extra: format!(
                "auth = \"target-token\"\ntoken = \"tok-1\"\nca_bundle = \"/etc/otter/ca.pem\"\n\
                 allow_insecure_downloads = {allow}\n"
            ),
            ..Opts::default()
        });
        std::fs::write(r.device.root.join("etc/otter/ca.pem"), &ca).unwrap();
        let plain = DdiServer::start().unwrap();
        plain.add_target("dev1", None);
        plain.add_artifact("update-2.0.otter", r.artifact.clone());
        let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
        spec.link_override = Some(format!(
            "{}/DEFAULT/controller/v1/dev1/softwaremodules/1/artifacts/update-2.0.otter?sig=0",
            plain.url()
        ));
        let id = r.server.create_action("dev1", spec);
        if allow {
            r.boot().until_reboot(LONG).unwrap();
            assert!(!plain.requests_to("/artifacts/").is_empty(), "allowed: downloaded over http");
            assert!(plain.requests().iter().all(|q| q.header("authorization").is_none()), "without the token");
        } else {
            let _b = r.boot();
            wait_for("the action to fail", || r.action_done(id));
            let details = last_details(&r, id);
            assert!(details.contains("insecure-link"), "{details}");
            assert!(plain.requests().is_empty(), "the http link was never requested");
        }
    }
}

/// Everything logged in this test process (installed once; tests look for their own lines).
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        #[derive(Clone)]
        struct W(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let w = W(logs.clone());
        let _ = tracing_subscriber::fmt().with_ansi(false).with_writer(move || w.clone()).try_init();
        logs
    })
    .clone()
}

#[test]
fn a_token_over_plain_http_is_warned_about_and_urls_in_logs_are_redacted() {
    let logs = captured_logs();
    let r = rig(Opts::default());
    let mut spec = ActionSpec::new("update-2.0.otter", "2.0");
    spec.sha256_override = Some("cd".repeat(32));
    let id = r.server.create_action("dev1", spec);
    let b = r.boot();
    let record = b.until_finished(LONG, || r.action_done(id)).unwrap();
    assert_eq!(failed_code(&record), "digest-mismatch");
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let url = r.server.url();
    assert!(
        text.lines().any(|l| l.contains("WARN") && l.contains("plain http") && l.contains(&url)),
        "no warning about the token over http to {url}"
    );
    // The artifact link's query (its signature) is not in any line about this server.
    // The hawkBit client's and the installer's lines (the runtime's own log line is the runtime's to redact).
    let ours = |l: &&str| l.contains("otterd::hawkbit") || l.contains("otter_installer");
    let leaks: Vec<&str> = text.lines().filter(ours).filter(|l| l.contains(&url) && l.contains("sig=")).collect();
    assert!(leaks.is_empty(), "a link query was logged: {leaks:#?}");
    assert!(!last_details(&r, id).contains("sig="), "{}", last_details(&r, id));
}

// ----- "not now" is not "failed"; secrets stay out of what the device shows -----

#[test]
fn an_inhibitor_makes_an_action_wait_for_the_next_poll_instead_of_failing_it() {
    let r = rig(Opts::default());
    let b = r.boot();
    b.handle.send(Command::SetInhibitors(vec![("recorder".into(), "recording a call".into())]));
    wait_for("the inhibitor to be held", || !b.handle.status().inhibitors.is_empty());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    let trigger = b.poller().unwrap().trigger().callback();
    trigger();
    wait_for("the waiting feedback", || !r.server.action(id).unwrap().feedback.is_empty());
    let polls = || r.server.requests().iter().filter(|q| q.path.ends_with("/dev1")).count();
    let seen = polls();
    wait_for("three more polls", || polls() >= seen + 3);
    let action = r.server.action(id).unwrap();
    assert_eq!(action.status, ActionStatus::Running, "the action stays open while inhibited");
    assert_eq!(action.feedback.len(), 1, "told once, not at every poll: {:#?}", action.feedback);
    assert_eq!(action.feedback[0]["status"]["execution"], "proceeding");
    let details = feedback_details(&action.feedback[0]);
    assert!(details.contains("inhibits updates") && details.contains("next poll"), "{details}");
    assert!(b.handle.status().job.is_none() && r.slot_head(Slot::B).iter().all(|&x| x == 0), "nothing installed");
    // Released: the same action installs at the next poll, and commits.
    b.handle.send(Command::SetInhibitors(Vec::new()));
    trigger();
    b.until_reboot(LONG).unwrap();
    let b = r.boot();
    assert_eq!(b.slot, Slot::B);
    assert_eq!(b.until_finished(LONG, || r.action_done(id)).unwrap().outcome, Outcome::Committed);
    assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: true });
}

#[test]
fn a_sources_userinfo_and_query_never_reach_the_job_history_or_status() {
    let r = rig(Opts::default());
    let b = r.boot();
    // A closed port: the install fails, and its message names the URL.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://user:hunter2@127.0.0.1:{port}/update.otter?X-Signature=s3cret");
    b.handle.install(&url, false).unwrap();
    let shown = b.handle.status().job.expect("a job").source;
    let record = b.finished.recv_timeout(LONG).expect("the failed job");
    let history = {
        let (reply, rx) = std::sync::mpsc::channel();
        b.handle.send(Command::History { reply });
        rx.recv_timeout(LONG).unwrap()
    };
    let Outcome::Failed { message, .. } = &record.outcome else { panic!("{record:?}") };
    for text in [&shown, &record.job.source, message, &format!("{history:?}"), &b.handle.status().line()] {
        assert!(!text.contains("hunter2") && !text.contains("s3cret"), "a secret shows: {text}");
    }
    assert_eq!(record.job.source, format!("http://REDACTED@127.0.0.1:{port}/update.otter?REDACTED"));
}

#[test]
fn an_action_stays_bound_to_its_artifact_across_a_power_cut() {
    let r = rig(Opts::default());
    let id = r.server.create_action("dev1", ActionSpec::new("update-2.0.otter", "2.0"));
    r.power_cut_mid_install();
    // Meanwhile the server serves another build of "2.0" for the same action (same name, same version).
    let key = otter_artifact::keys::read_signing_key(&r.dir.path().join("release.key")).unwrap();
    r.server.add_artifact("update-2.0.otter", artifact_of(&key, "2.0", &image(r.dir.path(), 4)));
    let downloads = r.server.requests_to("/artifacts/").len();
    let b = r.boot();
    wait_for("the action to be closed", || r.action_done(id));
    assert_eq!(r.server.action(id).unwrap().status, ActionStatus::Closed { success: false });
    let details = last_details(&r, id);
    assert!(details.contains("now names another artifact") && details.contains("not restarted"), "{details}");
    assert_eq!(r.server.requests_to("/artifacts/").len(), downloads, "the other file was not even downloaded");
    assert!(b.handle.status().job.is_none(), "nothing installing");
    assert!(r.slot_head(Slot::B).iter().all(|&x| x == 0), "slot B holds no valid image");
}

/// The rig's old image (slot A) with 64 KiB rewritten at 1 MiB: what a small fix changes.
fn small_change_of_the_old_image(r: &Rig) -> PathBuf {
    let mut bytes = std::fs::read(r.dir.path().join("image-1.img")).unwrap();
    bytes[1 << 20..(1 << 20) + (64 << 10)].fill(0x5a);
    let path = r.dir.path().join("fixed.img");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A delta of `image` against `base`, signed like the rig's artifacts.
fn delta_of(r: &Rig, version: &str, image: &Path, base: &Path) -> Vec<u8> {
    let key = otter_artifact::keys::read_signing_key(&r.dir.path().join("release.key")).unwrap();
    let mut o = BuildOptions::new(vec![TYPE.into()], version);
    o.chunk_size = 256 << 10;
    o.level = 1;
    let base = Some(builder::DeltaBase { path: base.to_owned(), window: 1 << 20 });
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: image.to_owned(), base };
    let mut out = Vec::new();
    builder::create(&o, &[src], std::slice::from_ref(&key), &mut out).unwrap();
    out
}

fn body_bytes_sent_for(r: &Rig, name: &str) -> (usize, u64) {
    let requests: Vec<_> = r.server.requests_to("/artifacts/").into_iter().filter(|q| q.path.ends_with(name)).collect();
    (requests.len(), requests.iter().map(|q| q.body_bytes_sent).sum())
}

#[test]
fn a_deployment_offering_a_delta_and_the_full_artifact_downloads_only_the_delta_when_the_device_runs_its_base() {
    let r = rig(Opts::default());
    let key = otter_artifact::keys::read_signing_key(&r.dir.path().join("release.key")).unwrap();
    let fixed = small_change_of_the_old_image(&r);
    let full = artifact_of(&key, "2.1", &fixed);
    let delta = delta_of(&r, "2.1", &fixed, &r.dir.path().join("image-1.img"));
    assert!(delta.len() * 4 < full.len(), "delta {} bytes, full {}", delta.len(), full.len());
    r.server.add_artifact("update-2.1.otter", full);
    r.server.add_artifact("update-2.1-from-2.0.otter", delta.clone());
    let mut spec = ActionSpec::new("update-2.1.otter", "2.1");
    spec.artifacts.push("update-2.1-from-2.0.otter".into());
    let id = r.server.create_action("dev1", spec);
    r.complete(id);
    assert!(std::fs::read(r.device.slot_file(Slot::B)).unwrap()[..3 << 20] == std::fs::read(&fixed).unwrap()[..]);
    assert_eq!(body_bytes_sent_for(&r, "update-2.1.otter"), (0, 0), "the full artifact was never requested");
    assert_eq!(body_bytes_sent_for(&r, "update-2.1-from-2.0.otter").1, delta.len() as u64);
    let first = r.server.action(id).unwrap().feedback[0].clone();
    assert!(feedback_details(&first).contains("update-2.1.otter instead"), "{}", feedback_details(&first));
}

#[test]
fn a_device_not_running_the_deltas_base_falls_back_to_the_full_artifact() {
    let r = rig(Opts::default());
    let key = otter_artifact::keys::read_signing_key(&r.dir.path().join("release.key")).unwrap();
    let fixed = small_change_of_the_old_image(&r);
    let full = artifact_of(&key, "2.1", &fixed);
    // A delta made from another release than the one in slot A (it differs in 4 KiB at 2 MiB).
    let mut other = std::fs::read(r.dir.path().join("image-1.img")).unwrap();
    other[2 << 20..(2 << 20) + 4096].fill(7);
    let other_base = r.dir.path().join("release-1.9.img");
    std::fs::write(&other_base, other).unwrap();
    let delta = delta_of(&r, "2.1", &fixed, &other_base);
    assert!(delta.len() < full.len(), "the delta is tried first");
    r.server.add_artifact("update-2.1.otter", full.clone());
    r.server.add_artifact("update-2.1-from-1.9.otter", delta);
    let mut spec = ActionSpec::new("update-2.1-from-1.9.otter", "2.1");
    spec.artifacts.push("update-2.1.otter".into());
    let id = r.server.create_action("dev1", spec);
    r.complete(id);
    assert!(std::fs::read(r.device.slot_file(Slot::B)).unwrap()[..3 << 20] == std::fs::read(&fixed).unwrap()[..]);
    let (delta_requests, _) = body_bytes_sent_for(&r, "update-2.1-from-1.9.otter");
    assert_eq!(delta_requests, 1, "the delta was opened once, its manifest refused against slot A");
    assert_eq!(body_bytes_sent_for(&r, "update-2.1.otter"), (1, full.len() as u64));
}
