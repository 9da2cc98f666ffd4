//! otterd under a real `sd_notify` socket: the test binds `NOTIFY_SOCKET` like systemd does and reads what the
//! daemon process sends: READY=1 after start-up, STATUS= lines, WATCHDOG=1 pings from the engine loop (which stop
//! when the loop is stuck), and STOPPING=1 on SIGTERM. Also `--check-config`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use otter_bootloader::uboot::{FwEnvConfig, UBootEnv};

const OTTERD: &str = env!("CARGO_BIN_EXE_otterd");

/// A device root: file slots, a U-Boot env file, a command line, and a config whose reboot command is given.
fn device(root: &Path, reboot_command: &str, env_vars: &[(&str, &str)]) {
    for d in ["dev", "boot", "proc", "etc/otter/keys", "var/lib/otter", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for s in ["a", "b"] {
        std::fs::write(root.join(format!("dev/slot-{s}.img")), vec![0u8; 1 << 20]).unwrap();
    }
    std::fs::write(root.join("proc/cmdline"), "root=/dev/vda2 otter.slot=A\n").unwrap();
    std::fs::write(root.join("etc/fw_env.config"), "/boot/uboot.env 0x0 0x4000\n").unwrap();
    std::fs::write(root.join("boot/uboot.env"), vec![0u8; 0x4000]).unwrap();
    let cfg = FwEnvConfig::parse(&format!("{} 0x0 0x4000\n", root.join("boot/uboot.env").display())).unwrap();
    otter_bootloader::uboot::provision(&cfg, &UBootEnv::from_pairs(env_vars.iter().copied()).unwrap(), 0).unwrap();
    std::fs::write(
        root.join("etc/otter/otter.toml"),
        format!(
            r#"[device]
compatible = "notify-test"
[slots]
a = "/dev/slot-a.img"
b = "/dev/slot-b.img"
[bootloader]
fw_env_config = "/etc/fw_env.config"
lock_file = "/run/fw.lock"
[reboot]
policy = "immediate"
command = {reboot_command}
"#
        ),
    )
    .unwrap();
}

struct Daemon {
    child: Child,
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(dir: tempfile::TempDir, watchdog: Duration) -> Self {
        let sock_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&sock_path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let child = Command::new(OTTERD)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--no-dbus")
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .spawn()
            .unwrap();
        Self { child, socket, _dir: dir }
    }

    /// Collects notification messages for `d` (each datagram is one or more `KEY=VALUE` lines).
    fn collect(&self, d: Duration) -> Vec<(Instant, String)> {
        let end = Instant::now() + d;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.socket.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    out.push((Instant::now(), line.to_owned()));
                }
            }
        }
        out
    }
}

/// STATUS= lines may come before READY=1; nothing else may.
fn first_non_status(msgs: &[(Instant, String)]) -> Option<&str> {
    msgs.iter().map(|(_, m)| m.as_str()).find(|m| !m.starts_with("STATUS="))
}

fn count(msgs: &[(Instant, String)], what: &str) -> usize {
    msgs.iter().filter(|(_, m)| m == what).count()
}

#[test]
fn ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    device(
        &dir.path().join("root"),
        r#"["true"]"#,
        &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")],
    );
    let mut d = Daemon::start(dir, Duration::from_millis(400));
    let msgs = d.collect(Duration::from_secs(3));
    assert_eq!(first_non_status(&msgs), Some("READY=1"), "{msgs:?}");
    assert!(msgs.iter().any(|(_, m)| m.starts_with("STATUS=booted A; idle")), "{msgs:?}");
    // Pings at half the 400 ms interval, from the loop: about 15 in 3 s; ask for clearly more than a few.
    assert!(count(&msgs, "WATCHDOG=1") >= 5, "{msgs:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let msgs = d.collect(Duration::from_secs(2));
    assert!(msgs.iter().any(|(_, m)| m == "STOPPING=1"), "{msgs:?}");
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_stuck_engine_loop_stops_the_pings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // The bootloader is set to try B and the persisted job waits for the reboot; the reboot command hangs, which
    // blocks the engine loop the way a hung effect would.
    device(
        &root,
        r#"["sleep", "30"]"#,
        &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3"), ("OTTER_TRIAL", "B")],
    );
    let state = serde_json::json!({
        "job": {
            "id": 1, "source": "/x.otter", "automatic": false, "from": "A", "target": "B",
            "phase": "awaiting-reboot", "artifact": {"digest": "d", "version": "2", "security_version": 0},
            "started_at": 1, "updated_at": 1, "assess_started_at": null, "trial_boots": 0, "rollback_reason": null
        },
        "history": [], "security_version": 0, "failed_digests": [], "next_job_id": 1
    });
    std::fs::write(root.join("var/lib/otter/state.json"), state.to_string()).unwrap();
    let d = Daemon::start(dir, Duration::from_millis(400));
    let msgs = d.collect(Duration::from_secs(4));
    assert_eq!(first_non_status(&msgs), Some("READY=1"), "{msgs:?}");
    let stuck_at = msgs
        .iter()
        .find(|(_, m)| m == "STATUS=rebooting")
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("never tried to reboot: {msgs:?}"));
    let pings_after: Vec<_> = msgs.iter().filter(|(t, m)| m == "WATCHDOG=1" && *t > stuck_at).collect();
    assert!(pings_after.is_empty(), "pings continued while the loop was stuck: {msgs:?}");
    // The silence lasted several watchdog intervals (400 ms): systemd would have killed and restarted the daemon.
    assert!(Instant::now().duration_since(stuck_at) > Duration::from_secs(2));
}

#[test]
fn check_config_reports_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    device(&root, r#"["true"]"#, &[("BOOT_ORDER", "A B")]);
    let ok = Command::new(OTTERD).arg("--root").arg(&root).arg("--check-config").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("configuration ok"));
    std::fs::create_dir_all(root.join("etc/otter/conf.d")).unwrap();
    std::fs::write(root.join("etc/otter/conf.d/10-bad.toml"), "[reboot]\npolicy = \"whenever\"\n").unwrap();
    let bad = Command::new(OTTERD).arg("--root").arg(&root).arg("--check-config").output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("10-bad.toml") && err.contains("reboot.policy") && err.contains("whenever"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

#[test]
fn corrupt_state_starts_idle_and_never_reboots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let marker = dir.path().join("rebooted");
    device(
        &root,
        &format!(r#"["touch", "{}"]"#, marker.display()),
        &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")],
    );
    std::fs::write(root.join("var/lib/otter/state.json"), b"{\"job\": {\"phase\": \"rebooting\", \"id\": ").unwrap();
    let d = Daemon::start(dir, Duration::from_millis(400));
    let msgs = d.collect(Duration::from_secs(2));
    assert_eq!(first_non_status(&msgs), Some("READY=1"), "{msgs:?}");
    assert!(msgs.iter().any(|(_, m)| m == "STATUS=booted A; idle"), "{msgs:?}");
    assert!(!marker.exists(), "a corrupt state must never lead to a reboot");
    assert!(root.join("var/lib/otter/state.json.corrupt").exists(), "the corrupt file is kept for inspection");
}
