//! A local unprivileged user against the real `otterd` binary on a simulated device (`otterd::fixture`): the
//! bootloader env lock cannot freeze the daemon or keep it from stopping, and links planted next to its state
//! file are never written through. The attacker is the real user `nobody` (`setpriv`), the daemon runs as root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use otterd::fixture::{Device, DeviceSpec};

/// systemd's `TimeoutStopSec=` in the shipped unit: otterd must be gone within it after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `args` as the unprivileged user `nobody`.
fn as_nobody(args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]).args(args);
    c
}

/// A device root that `nobody` can reach into (not write), with the daemon's log next to it.
fn device(dir: &Path) -> Device {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.join("release")).unwrap();
    Device::create(&dir.join("root"), &DeviceSpec::new("local-attacks", &dir.join("release.pub")), None).unwrap()
}

/// otterd as systemd runs it (without D-Bus), logging to `log`.
struct Otterd {
    child: Child,
    log: PathBuf,
}

impl Otterd {
    fn start(root: &Path, log: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_otterd"))
            .arg("--root")
            .arg(root)
            .args(["--no-dbus", "run"])
            .env("OTTER_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("starting otterd");
        Self { child, log: log.to_owned() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `bound` for `needle` in the log.
    fn wait_for_log(&self, needle: &str, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends SIGTERM and waits up to `bound` for the exit.
    fn terminate(&mut self, bound: Duration) -> Option<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Otterd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- otterd log ---\n{}", self.log());
        }
    }
}

/// `nobody` holding an flock on `path` (util-linux `flock`) until dropped.
struct HeldLock(Child);

impl HeldLock {
    fn take_as_nobody(path: &Path, marker_dir: &Path) -> Self {
        let marker = marker_dir.join("lock-taken");
        let child =
            as_nobody(&["flock", "--no-fork", path.to_str().unwrap(), "sh", "-c", "touch \"$0\" && exec sleep 600"])
                .arg(&marker)
                .spawn()
                .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "nobody never took {}", path.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        HeldLock(child)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A device whose env lock file is as an older otter or libubootenv left it (0666, so `nobody` can open it), held
/// by `nobody`; returns the device, the lock's path and the holder.
fn device_with_env_lock_held_by_nobody(dir: &Path) -> (Device, PathBuf, HeldLock) {
    let device = device(dir);
    let lock = device.root.join("run/fw_printenv.lock");
    std::fs::write(&lock, b"").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let markers = dir.join("markers");
    std::fs::create_dir(&markers).unwrap();
    std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let held = HeldLock::take_as_nobody(&lock, &markers);
    (device, lock, held)
}

#[test]
fn an_env_lock_held_by_another_user_neither_freezes_otterd_nor_outlives_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (device, lock, held) = device_with_env_lock_held_by_nobody(dir.path());

    let mut otterd = Otterd::start(&device.root, &dir.path().join("otterd.log"));
    // A blocking flock would keep otterd in its start-up forever; the bounded wait gives up with `env-locked`.
    assert!(otterd.wait_for_log("env-locked", Duration::from_secs(60)), "otterd is frozen on the env lock");
    assert!(otterd.wait_for_log("ready", Duration::from_secs(30)), "otterd never became ready");
    let status = otterd.terminate(STOP_TIMEOUT).expect("otterd did not stop within the unit's stop timeout");
    assert!(status.success(), "{status:?}");
    // The lock is owner-only from now on: no other user can even open it again.
    assert_eq!(std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777, 0o600);
    drop(held);
}

#[test]
fn a_lock_held_at_start_up_only_delays_otterd_until_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let (device, _, held) = device_with_env_lock_held_by_nobody(dir.path());
    let mut otterd = Otterd::start(&device.root, &dir.path().join("otterd.log"));
    assert!(otterd.wait_for_log("env-locked", Duration::from_secs(60)), "otterd never gave up waiting");
    assert!(!otterd.log().contains("booted slot A"), "the env was read although locked");
    // Released: the daemon opens the env by itself (no restart) and learns which slot it runs from.
    drop(held);
    assert!(
        otterd.wait_for_log("booted slot A", Duration::from_secs(90)),
        "otterd stayed without its bootloader after the lock was released"
    );
    assert!(otterd.terminate(STOP_TIMEOUT).expect("otterd did not stop").success());
}

#[test]
fn sigterm_while_start_up_waits_for_the_env_lock_stops_otterd_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (device, _, held) = device_with_env_lock_held_by_nobody(dir.path());
    let mut otterd = Otterd::start(&device.root, &dir.path().join("otterd.log"));
    // Give it time to reach the lock (it waits up to 5 s there); the stop must not wait for the lock.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = otterd.terminate(STOP_TIMEOUT).expect("otterd did not stop within the unit's stop timeout");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < STOP_TIMEOUT);
    drop(held);
}

#[test]
fn links_planted_next_to_the_state_file_are_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let device = device(dir.path());
    // A root-only file the attacker wants overwritten, and a state directory they can write (a misconfigured
    // StateDirectoryMode, or a state_dir on shared storage).
    let victim = dir.path().join("shadow");
    std::fs::write(&victim, b"root:precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let state_dir = device.root.join("var/lib/otter");
    std::os::unix::fs::chown(&state_dir, Some(65534), Some(65534)).unwrap();
    for d in ["var", "var/lib"] {
        std::fs::set_permissions(device.root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for name in ["state.json.new", "state.json.tmp", "state.json.otter-new"] {
        let link = state_dir.join(name);
        let status = as_nobody(&["ln", "-s", victim.to_str().unwrap(), link.to_str().unwrap()]).status().unwrap();
        assert!(status.success());
    }
    // The daemon's own store, as root: what every persist() does.
    let store = otterd::state::StateStore::new(&state_dir).unwrap();
    let state = otterd::engine::Persisted { security_version: 4, ..Default::default() };
    store.save(&state).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"root:precious\n", "root wrote through a planted link");
    assert!(std::fs::symlink_metadata(store.path()).unwrap().file_type().is_file());
    assert_eq!(store.load().0, state);
}
