//! Honest state under faults, against the real runtime on a simulated device (file slots, a real U-Boot env
//! file): a state directory that turns read-only, a bootloader store that fails, a reboot command that fails.
//!
//! Needs root: the faults are real mounts (a tmpfs remounted read-only), not simulated errors.

use std::path::{Path, PathBuf};
use std::process::Command as Cmd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_bootloader::Slot;
use otterd::engine::{JobRecord, Outcome, Rejection};
use otterd::fixture::{Device, DeviceSpec};
use otterd::runtime::{Command, Handle, Platform, RebootError, Rebooting, RunEnd, Runtime, Status};

const TYPE: &str = "faults-gw";
/// Generous: shared, noisy machines.
const LONG: Duration = Duration::from_secs(90);

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < LONG, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tmpfs mounted over a directory of the device, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    /// Mounts a fresh tmpfs of `size` at `dir`, keeping what `dir` held.
    fn tmpfs(dir: &Path, size: &str) -> Self {
        let keep = tempfile::tempdir().unwrap();
        copy_dir(dir, keep.path());
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()]);
        copy_dir(keep.path(), dir);
        Self(dir.to_owned())
    }

    fn read_only(&self, ro: bool) {
        run("mount", &["-o", if ro { "remount,ro" } else { "remount,rw" }, self.0.to_str().unwrap()]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg(&self.0).status();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Cmd::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {} (these tests need root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts reboots; fails them while `fail` is set (as a `systemctl reboot` refused by logind would).
#[derive(Clone, Default)]
struct Recorder {
    reboots: Arc<AtomicUsize>,
    attempts: Arc<Mutex<Vec<Instant>>>,
    fail: Arc<AtomicBool>,
}

impl Platform for Recorder {
    fn reboot(&mut self, command: &[String]) -> Result<Rebooting, RebootError> {
        self.attempts.lock().unwrap().push(Instant::now());
        if self.fail.load(Ordering::SeqCst) {
            return Err(RebootError::Spawn { command: command.to_vec(), source: std::io::Error::other("injected") });
        }
        self.reboots.fetch_add(1, Ordering::SeqCst);
        Ok(Rebooting::Requested)
    }
}

/// Builds a signed artifact of version `version` with anti-rollback counter `security_version`.
fn build(dir: &Path, version: &str, security_version: u64) -> PathBuf {
    let key = otter_artifact::keys::read_signing_key(&dir.join("release.key")).unwrap();
    let image = dir.join(format!("image-{version}.img"));
    let data: Vec<u8> =
        (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ version.len() as u8).collect();
    std::fs::write(&image, data).unwrap();
    let mut o = BuildOptions::new(vec![TYPE.into()], version);
    o.chunk_size = 256 << 10;
    o.level = 1;
    o.security_version = security_version;
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: image, base: None };
    let mut artifact = Vec::new();
    builder::create(&o, &[src], &[key], &mut artifact).unwrap();
    let path = dir.join(format!("update-{version}.otter"));
    std::fs::write(&path, artifact).unwrap();
    path
}

struct Rig {
    _dir: tempfile::TempDir,
    device: Device,
    artifact: PathBuf,
}

fn rig() -> Rig {
    rig_with("manual")
}

fn rig_with(policy: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.path().join("release")).unwrap();
    let artifact_path = build(dir.path(), "2.0", 0);
    let mut spec = DeviceSpec::new(TYPE, &dir.path().join("release.pub"));
    spec.slot_size = 2 << 20;
    spec.reboot_policy = policy.into();
    let device = Device::create(&dir.path().join("root"), &spec, None).unwrap();
    Rig { _dir: dir, device, artifact: artifact_path }
}

struct Running {
    handle: Handle,
    finished: Receiver<JobRecord>,
    thread: Option<JoinHandle<RunEnd>>,
}

impl Running {
    fn start(rig: &Rig, platform: Recorder) -> Self {
        let settings = otterd::config::load(&rig.device.root).unwrap();
        let (runtime, handle) = Runtime::start(settings, Box::new(platform)).unwrap();
        let finished = handle.subscribe();
        let thread = Some(std::thread::spawn(move || runtime.run()));
        Self { handle, finished, thread }
    }

    fn status_until(&self, what: &str, f: impl Fn(&Status) -> bool) -> Status {
        wait_for(what, || f(&self.handle.status()));
        self.handle.status()
    }

    fn request(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<Result<(), Rejection>>) -> Command,
    ) -> Result<(), Rejection> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.send(make(tx));
        rx.recv_timeout(LONG).unwrap()
    }

    fn running(&self) -> bool {
        !self.thread.as_ref().unwrap().is_finished()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn env_bytes(rig: &Rig) -> Vec<u8> {
    std::fs::read(rig.device.root.join("boot/uboot.env")).unwrap()
}

fn slot_is_blank(rig: &Rig, slot: Slot) -> bool {
    std::fs::read(rig.device.slot_file(slot)).unwrap().iter().all(|&b| b == 0)
}

fn state_dir(rig: &Rig) -> PathBuf {
    rig.device.root.join("var/lib/otter")
}

/// Item 12: on a read-only state directory an install takes no step (no bootloader change, no write to the
/// slot, no reboot), ends `state-not-saved`, the daemon keeps running and shows it, and recovers once the
/// directory is writable again.
#[test]
fn a_read_only_state_dir_stops_the_job_before_any_effect() {
    let rig = rig();
    let var = Mount::tmpfs(&state_dir(&rig), "1m");
    var.read_only(true);
    let platform = Recorder::default();
    let rt = Running::start(&rig, platform.clone());
    let env_before = env_bytes(&rig);

    let r = rt.handle.install(rig.artifact.to_str().unwrap(), false);
    assert!(matches!(r, Err(Rejection::StateNotSaved(_))), "{r:?}");
    let record = rt.finished.recv_timeout(LONG).expect("the job's end is reported");
    assert!(matches!(&record.outcome, Outcome::Failed { code, .. } if code == "state-not-saved"), "{record:?}");
    let status = rt.status_until("the error in the status", |s| s.error.is_some());
    assert!(status.error.as_deref().unwrap().contains("state not saved"), "{status:?}");
    assert!(status.job.is_none(), "{status:?}");

    // Nothing happened to the device, and the daemon is still up.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env_bytes(&rig), env_before, "the bootloader env was not touched");
    assert!(slot_is_blank(&rig, Slot::B), "nothing was written to slot B");
    assert_eq!(platform.reboots.load(Ordering::SeqCst), 0);
    assert!(rt.running(), "the daemon keeps running");
    // A new install is refused up front while the state still cannot be saved.
    let r = rt.handle.install(rig.artifact.to_str().unwrap(), false);
    assert!(matches!(r, Err(Rejection::StateNotSaved(_))), "{r:?}");
    assert_eq!(env_bytes(&rig), env_before);

    // Writable again: the retry saves the history, the error clears, installs work.
    var.read_only(false);
    rt.status_until("the error to clear", |s| s.error.is_none());
    let saved = std::fs::read_to_string(state_dir(&rig).join("state.json")).unwrap();
    assert!(saved.contains("state-not-saved"), "{saved}");
    rt.handle.install(rig.artifact.to_str().unwrap(), false).unwrap();
    rt.status_until("the install", |s| s.operation == "awaiting-reboot");
    assert!(!slot_is_blank(&rig, Slot::B));
}

/// Item 12: the state directory turns read-only while an update waits for its reboot: the reboot is not taken
/// (the daemon would come up in the trial with a state that says it never asked for it), the caller is told so,
/// and the update still waits.
#[test]
fn a_save_failing_before_the_reboot_takes_no_reboot() {
    let rig = rig();
    let var = Mount::tmpfs(&state_dir(&rig), "1m");
    let platform = Recorder::default();
    let rt = Running::start(&rig, platform.clone());
    rt.handle.install(rig.artifact.to_str().unwrap(), false).unwrap();
    rt.status_until("the install", |s| s.operation == "awaiting-reboot");

    var.read_only(true);
    let r = rt.request(|reply| Command::Reboot { reply });
    assert!(matches!(r, Err(Rejection::StateNotSaved(_))), "{r:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(platform.reboots.load(Ordering::SeqCst), 0, "no reboot on an unsaved state");
    let status = rt.handle.status();
    assert_eq!(status.operation, "awaiting-reboot", "{status:?}");
    assert!(status.error.as_deref().unwrap_or_default().contains("state not saved"), "{status:?}");

    var.read_only(false);
    rt.status_until("the error to clear", |s| s.error.is_none());
    rt.request(|reply| Command::Reboot { reply }).unwrap();
    wait_for("the reboot", || platform.reboots.load(Ordering::SeqCst) == 1);
}

/// Item 14: a failing reboot command is an event: the update waits for its reboot again (not stuck in
/// `rebooting`), the error shows in the status, Cancel works, and automatic attempts back off.
#[test]
fn a_failed_reboot_is_reported_and_retried_with_backoff() {
    let rig = rig_with("immediate");
    let platform = Recorder::default();
    platform.fail.store(true, Ordering::SeqCst);
    let rt = Running::start(&rig, platform.clone());
    rt.handle.install(rig.artifact.to_str().unwrap(), false).unwrap();
    let status = rt.status_until("the reboot error", |s| s.reboot_error.is_some());
    assert_eq!(status.operation, "awaiting-reboot", "{status:?}");
    assert!(status.line().contains("reboot failed") && status.line().contains("injected"), "{}", status.line());
    // Retried automatically, after the backoff (5 s; the engine's clock has whole seconds).
    wait_for("a second attempt", || platform.attempts.lock().unwrap().len() >= 2);
    let attempts = platform.attempts.lock().unwrap().clone();
    assert!(attempts[1] - attempts[0] >= Duration::from_millis(3900), "{:?}", attempts[1] - attempts[0]);
    // A request is answered with the failure, and Cancel is possible (the job is not stuck).
    let r = rt.request(|reply| Command::Reboot { reply });
    assert!(matches!(&r, Err(Rejection::RebootFailed(m)) if m.contains("injected")), "{r:?}");
    rt.request(|reply| Command::Cancel { reply }).unwrap();
    let record = rt.finished.recv_timeout(LONG).unwrap();
    assert_eq!(record.outcome, Outcome::Cancelled);
    assert_eq!(platform.reboots.load(Ordering::SeqCst), 0);
    assert!(rt.running());
}

/// Item 13: Cancel while an update waits for its reboot, with a bootloader env that cannot be written: Cancel
/// says so (the update is not cancelled), and when the device then boots the trial the bootloader still holds,
/// it is rolled back, never adopted and committed; the job ends `cancelled` once back in the old slot.
#[test]
fn cancel_tells_the_truth_when_the_revert_cannot_be_stored() {
    let rig = rig();
    let boot_dir = rig.device.root.join("boot");
    let boot = Mount::tmpfs(&boot_dir, "1m");
    let platform = Recorder::default();
    let rt = Running::start(&rig, platform.clone());
    rt.handle.install(rig.artifact.to_str().unwrap(), false).unwrap();
    rt.status_until("the install", |s| s.operation == "awaiting-reboot");

    boot.read_only(true);
    let r = rt.request(|reply| Command::Cancel { reply });
    assert!(matches!(&r, Err(Rejection::Bootloader(m)) if m.contains("Read-only")), "{r:?}");
    assert!(rt.finished.try_recv().is_err(), "no job end is reported");
    let status = rt.handle.status();
    assert!(status.job.as_ref().is_some_and(|j| j.cancel_requested), "{status:?}");
    // Nor does it reboot into the update it was asked to cancel.
    assert!(matches!(rt.request(|reply| Command::Reboot { reply }), Err(Rejection::NoRebootPending)));
    drop(rt);
    boot.read_only(false);

    // The device restarts (power cut); the bootloader still tries the new slot.
    assert_eq!(otterd::sim::power_on(&rig.device).unwrap(), Slot::B);
    let platform = Recorder::default();
    let rt = Running::start(&rig, platform.clone());
    wait_for("the rollback reboot", || platform.reboots.load(Ordering::SeqCst) >= 1);
    let status = rt.handle.status();
    assert_eq!(status.operation, "rolling-back", "{status:?}");
    assert!(status.slots.contains(&(Slot::B, otter_bootloader::SlotState::Bad)), "{status:?}");
    assert!(rt.finished.try_recv().is_err(), "nothing committed");
    drop(rt);

    assert_eq!(otterd::sim::power_on(&rig.device).unwrap(), Slot::A);
    let rt = Running::start(&rig, Recorder::default());
    let record = rt.finished.recv_timeout(LONG).unwrap();
    assert_eq!(record.outcome, Outcome::Cancelled);
    let status = rt.status_until("idle", |s| s.job.is_none());
    assert!(status.slots.contains(&(Slot::B, otter_bootloader::SlotState::Bad)), "{status:?}");
}

fn env_var(rig: &Rig, name: &str) -> Option<String> {
    let loaded = otter_bootloader::uboot::EnvStorage::open(&rig.device.env_config).unwrap().read().unwrap();
    loaded.env.get(name).map(str::to_owned)
}

/// Installs `artifact` and commits it across a simulated reboot; returns the finished record.
fn install_and_commit(rig: &Rig, artifact: &Path) -> JobRecord {
    let rt = Running::start(rig, Recorder::default());
    rt.handle.install(artifact.to_str().unwrap(), false).unwrap();
    rt.status_until("the install", |s| s.operation == "awaiting-reboot");
    rt.request(|reply| Command::Reboot { reply }).unwrap();
    drop(rt);
    let slot = otterd::sim::power_on(&rig.device).unwrap();
    let rt = Running::start(rig, Recorder::default());
    let record = rt.finished.recv_timeout(LONG).unwrap();
    assert_eq!(record.job.target, slot);
    record
}

/// Item 15: the anti-rollback floor lives in the bootloader env as well as in state.json: losing the state file
/// does not let an older signed artifact in; a fresh device is seeded from its image's security-version file;
/// a trial adopted after the state was lost raises the floor when it commits.
#[test]
fn the_anti_rollback_floor_survives_a_lost_state_file() {
    let rig = rig();
    let v5 = build(rig.device.root.parent().unwrap(), "5.0", 5);
    let v3 = build(rig.device.root.parent().unwrap(), "3.0", 3);
    let record = install_and_commit(&rig, &v5);
    assert_eq!(record.outcome, Outcome::Committed);
    assert_eq!(env_var(&rig, "OTTER_SECURITY_VERSION").as_deref(), Some("5"));

    // The state file is lost (or was corrupt and moved aside): an older signed artifact is still refused.
    std::fs::remove_file(state_dir(&rig).join("state.json")).unwrap();
    let rt = Running::start(&rig, Recorder::default());
    rt.handle.install(v3.to_str().unwrap(), false).unwrap();
    let record = rt.finished.recv_timeout(LONG).unwrap();
    assert!(matches!(&record.outcome, Outcome::Failed { code, .. } if code == "rollback-refused"), "{record:?}");
}

#[test]
fn a_fresh_device_is_seeded_from_its_image_and_an_adopted_trial_raises_the_floor() {
    let rig = rig();
    let dir = rig.device.root.parent().unwrap().to_owned();
    let image_file = rig.device.root.join("usr/lib/otter/security-version");
    std::fs::create_dir_all(image_file.parent().unwrap()).unwrap();
    std::fs::write(&image_file, "4\n").unwrap();
    let v3 = build(&dir, "3.0", 3);
    let rt = Running::start(&rig, Recorder::default());
    rt.status_until("started", |s| s.booted.is_some());
    assert_eq!(env_var(&rig, "OTTER_SECURITY_VERSION").as_deref(), Some("4"), "seeded at the first start");
    rt.handle.install(v3.to_str().unwrap(), false).unwrap();
    let record = rt.finished.recv_timeout(LONG).unwrap();
    assert!(matches!(&record.outcome, Outcome::Failed { code, .. } if code == "rollback-refused"), "{record:?}");

    // An update to an image that declares 9 is installed; the state is lost before its trial boot.
    let v9 = build(&dir, "9.0", 9);
    rt.handle.install(v9.to_str().unwrap(), false).unwrap();
    rt.status_until("the install", |s| s.operation == "awaiting-reboot");
    rt.request(|reply| Command::Reboot { reply }).unwrap();
    drop(rt);
    std::fs::remove_file(state_dir(&rig).join("state.json")).unwrap();
    std::fs::write(&image_file, "9\n").unwrap(); // the simulated root is shared: the new image's file
    assert_eq!(otterd::sim::power_on(&rig.device).unwrap(), Slot::B);
    let rt = Running::start(&rig, Recorder::default());
    let record = rt.finished.recv_timeout(LONG).unwrap();
    assert_eq!(record.outcome, Outcome::Committed, "{record:?}");
    assert_eq!(record.job.source, "(adopted trial boot)");
    assert_eq!(env_var(&rig, "OTTER_SECURITY_VERSION").as_deref(), Some("9"));
}
