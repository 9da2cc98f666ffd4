//! End to end: the real `otterd` inside the A/B disk image, updated through the hawkBit DDI test
//! server, under real U-Boot in QEMU.
//!
//! The image (`target/qemu/image-e2e`) carries, in both slots, the release build of otterd with
//! its glibc libraries, its configuration, a signing key's public half in the keyring, and an
//! rc.d hook (`HOOK` below) that brings up the user network, mounts the boot partition (where
//! `uboot.env` lives) and the data partition (otterd's state directory), and runs
//! `otterd --no-dbus` until the hawkBit action it works on is reported closed; then the test init
//! powers off. otterd's reboot command is `reboot -f`: the guest resets, U-Boot runs the boot
//! script again and boots the slot the env now names, all in one QEMU process, so one VM run
//! covers the install on A, the trial boot of B and whatever follows.
//!
//! Slot A is release 1.0; slot B of the built image is release 2.0 (`/etc/otter-e2e/version`),
//! whose bytes are the artifact's payload. Every test's disk starts with slot B erased, so a boot
//! of B can only come from what otterd wrote. The server runs on the host's loopback; an
//! [`HttpRelay`] puts it at `10.0.2.2` for the guest (its links name `127.0.0.1`, which in the
//! guest is the guest). The server's URL and token reach the guest as a file on the boot partition,
//! so the image stays the same from run to run and is built only when otterd changes.
//!
//! `#[ignore]`d: plain `cargo test` skips them; `qemu/run-tests` runs them (20-40 s of QEMU each).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_artifact::{Compression, Manifest};
use otter_bootloader::uboot::{UBootBackend, UBootScheme};
use otter_bootloader::{BootBackend, Slot, SlotState};
use otter_ddi_server::{ActionSpec, ActionStatus, DdiServer, Fault};
use otter_qemu_tests::{
    Console, DiskImage, HttpRelay, ImageBuilder, Qemu, RunningVm, guest, test_dir, tools, vars, work_dir,
};
use serde_json::Value;

/// `device.compatible` of the image and of the artifacts.
const DEVICE_TYPE: &str = "otter-qemu-x86";
const CONTROLLER: &str = "qemu-gw-1";
const TOKEN: &str = "e2e-target-token";
const ARTIFACT: &str = "gateway-os-2.0.otter";
/// Decoded chunk size of the artifacts: 1 MiB, so the power-cut test sees several checkpoints.
const CHUNK: u64 = 1 << 20;
/// One VM run holds several boots and an install; under TCG on a loaded machine that can take
/// minutes. Only a limit for a hung guest, never a speed check.
const VM_TIMEOUT: Duration = Duration::from_secs(300);
/// The scheme the boot script implements.
const SCHEME: UBootScheme = UBootScheme::BootOrder { attempts: 3 };

/// `/etc/otter/otter.toml` in both slots. The server part comes from the boot partition
/// (`SITE_FILE`), written per test.
const DEVICE_CONFIG: &str = r#"# otter QEMU end-to-end image
[device]
compatible = "otter-qemu-x86"
keyring_dir = "/etc/otter/keys"
# The data partition, mounted by the rc.d hook: shared by both slots.
state_dir = "/data/otter"

[slots]
a = "/dev/vda2"
b = "/dev/vda3"

[bootloader]
backend = "uboot"
scheme = "boot-order"
attempts = 3
fw_env_config = "/etc/fw_env.config"

[health]
commit_deadline = "120s"

# The release carries its own verdict: an image with this marker is broken.
[[health.command]]
name = "e2e-marker"
run = ["/bin/sh", "-c", "if [ -e /etc/otter-e2e/unhealthy ]; then echo 'this release is marked unhealthy'; exit 1; fi"]
timeout = "30s"

[reboot]
policy = "immediate"
command = ["/etc/otter-e2e/reboot"]
"#;

/// otterd's reboot command: U-Boot runs again in the same VM. First it prints the SHA-256 of the
/// slot that is not running, i.e. what an install just wrote, before that slot boots (and, mounted
/// read-write as root, changes).
const REBOOT: &str = r#"#!/bin/sh
slot=$(sed -n 's/.*otter\.slot=\([AB]\).*/\1/p' /proc/cmdline)
echo "OTTER-E2E-REBOOT=$slot"
case $slot in
  A) echo "OTTER-E2E-INACTIVE-SHA256=$(sha256sum /dev/vda3 | cut -d' ' -f1)" ;;
  B) echo "OTTER-E2E-INACTIVE-SHA256=$(sha256sum /dev/vda2 | cut -d' ' -f1)" ;;
esac
umount /mnt/boot 2>/dev/null
sync
exec reboot -f
"#;

/// `uboot.env` on the FAT boot partition, mounted by the hook; the size is the boot script's
/// `otter_env_size`.
const FW_ENV_CONFIG: &str = "/mnt/boot/uboot.env 0x0 0x4000\n";

/// The system CA certificates (Debian's ca-certificates), copied into the image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The name of the per-test server settings on the boot partition.
const SITE_FILE: &str = "otter-e2e.toml";

/// `/etc/otter-qemu/rc.d/50-otterd`: run by the test init after the slot markers. Prints
/// `OTTER-E2E-*` markers: the release version, each new resume checkpoint of an install (chunks
/// written and synced), the action reported closed, otterd's exit status.
const HOOK: &str = r#"#!/bin/sh
# otter end-to-end suite: network, boot and data partitions, site config, then otterd until the
# hawkBit action it works on is reported closed. A reboot otterd asks for ends this early.
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
# The root is read-only (as on a product): the site config goes to a tmpfs over conf.d.
mount -t tmpfs -o mode=755 tmpfs /etc/otter/conf.d || echo "OTTER-E2E-ERROR=cannot mount conf.d"
mount -t vfat /dev/vda1 /mnt/boot || echo "OTTER-E2E-ERROR=cannot mount the boot partition"
mount -t ext4 /dev/vda4 /data || echo "OTTER-E2E-ERROR=cannot mount the data partition"
state=/data/otter
mkdir -p "$state"
# The site config holds the server token: owner-only, or otterd refuses it.
site=/etc/otter/conf.d/90-site.toml
(cp /mnt/boot/otter-e2e.toml "$site" && chmod 600 "$site") || echo "OTTER-E2E-ERROR=no site config"
echo "OTTER-E2E-VERSION=$(cat /etc/otter-e2e/version)"
NO_COLOR=1 otterd --no-dbus run &
pid=$!
# Running and not a zombie (kill -0 succeeds on a zombie).
running() { [ -r /proc/$pid/stat ] && ! grep -q ') Z ' /proc/$pid/stat; }
chunks=
while running; do
  if grep -q '"closed": true' "$state/hawkbit.json" 2>/dev/null; then
    echo "OTTER-E2E-REPORTED"
    kill $pid
    break
  fi
  c=$(sed -n 's/.*"chunks":\([0-9]*\).*/\1/p' "$state/install-resume.json" 2>/dev/null)
  if [ -n "$c" ] && [ "$c" != "$chunks" ]; then
    echo "OTTER-E2E-RESUME-CHUNKS=$c"
    chunks=$c
  fi
  usleep 200000
done
wait $pid
echo "OTTER-E2E-OTTERD-EXIT=$?"
umount /mnt/boot /data
"#;

/// What every test starts from, made once per test process.
struct Release {
    /// The base image: release 1.0 in slot A, 2.0 in slot B.
    disk: PathBuf,
    /// The signing key whose public half is in the image's keyring.
    key: PathBuf,
    /// Slot B of the base image: the 2.0 root filesystem, the artifacts' payload.
    payload: PathBuf,
    /// Slot A of the base image: the 1.0 root filesystem the device runs, the base of delta artifacts.
    running: PathBuf,
    /// The same with `/etc/otter-e2e/unhealthy` added: 2.0 fails its health check.
    payload_unhealthy: PathBuf,
}

fn release() -> &'static Release {
    static RELEASE: OnceLock<Result<Release, String>> = OnceLock::new();
    match RELEASE.get_or_init(build_release) {
        Ok(r) => r,
        Err(e) => panic!("cannot build the end-to-end image: {e}"),
    }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn build_release() -> Result<Release, String> {
    tools::require_all().map_err(|e| e.to_string())?;
    let dir = work_dir().join("e2e");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let started = Instant::now();
    let otterd = guest::build_release_binary("otterd", "otterd").map_err(|e| e.to_string())?;
    eprintln!("e2e: otterd built or up to date in {:.1} s", started.elapsed().as_secs_f64());

    // Kept across runs: the image carries the public key, and a new key would rebuild it.
    let key = dir.join("release.key");
    if !key.exists() {
        let k = otter_artifact::keys::generate().map_err(|e| e.to_string())?;
        otter_artifact::keys::write_keypair(&k, &dir.join("release")).map_err(|e| e.to_string())?;
    }
    let public = std::fs::read_to_string(dir.join("release.pub")).map_err(|e| format!("release.pub: {e}"))?;

    let common = dir.join("overlay");
    let _ = std::fs::remove_dir_all(&common);
    guest::install_with_libraries(&otterd, &common, "/usr/bin/otterd").map_err(|e| e.to_string())?;
    write_file(&common.join("etc/otter/otter.toml"), DEVICE_CONFIG, 0o644)?;
    write_file(&common.join("etc/otter/keys/release.pub"), &public, 0o644)?;
    write_file(&common.join("etc/fw_env.config"), FW_ENV_CONFIG, 0o644)?;
    write_file(&common.join("etc/otter-qemu/rc.d/50-otterd"), HOOK, 0o755)?;
    write_file(&common.join("etc/otter-e2e/reboot"), REBOOT, 0o755)?;
    write_file(&common.join("etc/otter-e2e/version"), "1.0\n", 0o644)?;
    // otterd's HTTP clients load the system's CA certificates at start-up and refuse to start
    // without any, even for a plain-HTTP server: the guest gets the host's, as an image would.
    let ca = Path::new(CA_BUNDLE);
    if !ca.is_file() {
        return Err(format!("{CA_BUNDLE} not found: install the Debian package ca-certificates"));
    }
    let ca_dest = common.join(CA_BUNDLE.trim_start_matches('/'));
    std::fs::create_dir_all(ca_dest.parent().expect("a directory")).map_err(|e| format!("{e}"))?;
    std::fs::copy(ca, &ca_dest).map_err(|e| format!("copy {CA_BUNDLE}: {e}"))?;
    let slot_b = dir.join("overlay-b");
    let _ = std::fs::remove_dir_all(&slot_b);
    write_file(&slot_b.join("etc/otter-e2e/version"), "2.0\n", 0o644)?;

    let built = ImageBuilder::new()
        .out_dir(work_dir().join("image-e2e"))
        .overlay(&common)
        .overlay_b(&slot_b)
        .build()
        .map_err(|e| e.to_string())?;
    let base = DiskImage::open(&built.disk);
    let payload = dir.join("rootfs-2.0.img");
    std::fs::write(&payload, base.read_partition(3).map_err(|e| e.to_string())?)
        .map_err(|e| format!("write {}: {e}", payload.display()))?;
    let running = dir.join("rootfs-1.0.img");
    std::fs::write(&running, base.read_partition(2).map_err(|e| e.to_string())?)
        .map_err(|e| format!("write {}: {e}", running.display()))?;

    // The broken variant: the same filesystem with the marker, written with debugfs (no mount).
    let payload_unhealthy = dir.join("rootfs-2.0-unhealthy.img");
    std::fs::copy(&payload, &payload_unhealthy).map_err(|e| format!("copy the payload: {e}"))?;
    let marker = dir.join("unhealthy");
    write_file(&marker, "set by the e2e suite\n", 0o644)?;
    let debugfs = |request: String| {
        tools::run(
            tools::command("debugfs", "e2fsprogs")
                .map_err(|e| e.to_string())?
                .arg("-w")
                .arg("-R")
                .arg(request)
                .arg(&payload_unhealthy),
        )
        .map_err(|e| e.to_string())
    };
    debugfs(format!("write {} /etc/otter-e2e/unhealthy", marker.display()))?;
    let check = debugfs("cat /etc/otter-e2e/unhealthy".to_owned())?;
    if !String::from_utf8_lossy(&check.stdout).contains("set by the e2e suite") {
        return Err("debugfs did not add the unhealthy marker to the payload".to_owned());
    }
    Ok(Release { disk: built.disk, key, payload, running, payload_unhealthy })
}

/// The `[server]` settings the hook copies from the boot partition into `conf.d`.
fn site_config(url: &str) -> String {
    format!(
        r#"[server]
url = "{url}"
controller_id = "{CONTROLLER}"
auth = "target-token"
token = "{TOKEN}"
poll_min = "1s"
poll_max = "5s"
backoff_initial = "1s"
backoff_max = "5s"
jitter_percent = 0
progress_interval = "2s"
timeout = "60s"
"#
    )
}

/// A published update: the artifact as served and its manifest.
struct Update {
    action: u64,
    artifact: Vec<u8>,
    manifest: Manifest,
}

impl Update {
    /// The SHA-256 of the image (hex), which the slot must hold after the install.
    fn image_sha256(&self) -> String {
        self.manifest.payloads[0].sha256.to_string()
    }

    /// Where each chunk's stored bytes start in the artifact: the offsets a resumed download may
    /// continue from.
    fn chunk_offsets(&self) -> Vec<u64> {
        let mut at = payload_offset(&self.artifact);
        let mut out = Vec::new();
        for c in &self.manifest.payloads[0].chunks {
            out.push(at);
            at += c.stored_size;
        }
        out
    }
}

/// The offset of the first payload's bytes: after the `manifest.json` and `manifest.sig` entries
/// and the payload's own tar header.
fn payload_offset(artifact: &[u8]) -> u64 {
    let mut at = 0usize;
    for _ in 0..2 {
        let size = std::str::from_utf8(&artifact[at + 124..at + 136])
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok())
            .expect("a tar size field") as usize;
        at += 512 + size.div_ceil(512) * 512;
    }
    (at + 512) as u64
}

/// A signed artifact of `payload` (release 2.0): a delta against `base` if given, else full.
fn build_artifact(payload: &Path, base: Option<&Path>) -> (Vec<u8>, Manifest) {
    let mut opts = BuildOptions::new(vec![DEVICE_TYPE.into()], "2.0");
    opts.chunk_size = CHUNK;
    opts.compression = Compression::Zstd;
    // Low: quick to build here and to decode under TCG; the empty space compresses anyway.
    opts.level = 3;
    let key = otter_artifact::keys::read_signing_key(&release().key).expect("signing key");
    let base = base.map(|b| builder::DeltaBase { path: b.to_owned(), window: builder::DEFAULT_DELTA_WINDOW });
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: payload.to_owned(), base };
    let mut artifact = Vec::new();
    let manifest = builder::create(&opts, &[src], &[key], &mut artifact).expect("build the artifact");
    (artifact, manifest)
}

/// One test's device (its own disk), hawkBit server and relay.
struct Device {
    name: &'static str,
    dir: PathBuf,
    disk: DiskImage,
    server: DdiServer,
    /// Kept running: the guest reaches the server through it.
    _relay: HttpRelay,
    runs: usize,
}

impl Device {
    fn new(name: &'static str) -> Device {
        let release = release();
        let dir = test_dir(name).expect("test directory");
        let disk = DiskImage::copy_from(&release.disk, dir.join("disk.img")).expect("copy the base image");
        let size = disk.partition(3).expect("slot B").size as usize;
        disk.write_partition(3, &vec![0u8; size]).expect("erase slot B");
        let server = DdiServer::start().expect("start the DDI server");
        server.require_auth(true);
        server.add_target(CONTROLLER, Some(TOKEN));
        let relay = HttpRelay::start(&server.url()).expect("start the relay");
        disk.write_boot_file(SITE_FILE, site_config(relay.guest_url()).as_bytes(), &dir).expect("site config");
        Device { name, dir, disk, server, _relay: relay, runs: 0 }
    }

    /// Builds a signed artifact of `payload` (release 2.0), puts it on the server and creates a
    /// forced deployment of it for this device.
    fn publish(&self, payload: &Path) -> Update {
        let (artifact, manifest) = build_artifact(payload, None);
        self.server.add_artifact(ARTIFACT, artifact.clone());
        let action = self.server.create_action(CONTROLLER, ActionSpec::new(ARTIFACT, "2.0"));
        eprintln!("{}: artifact of {} bytes, action {action}", self.name, artifact.len());
        Update { action, artifact, manifest }
    }

    /// QEMU for the next run, its console kept in `run-<n>.log`.
    fn qemu(&mut self) -> (Qemu, PathBuf) {
        self.runs += 1;
        let log = self.dir.join(format!("run-{}.log", self.runs));
        (Qemu::new().network(true).timeout(VM_TIMEOUT).log_to(&log), log)
    }

    /// Runs the VM until the guest powers off; returns the console.
    fn run(&mut self) -> Console {
        let (qemu, log) = self.qemu();
        let started = Instant::now();
        let console = qemu
            .boot(&self.disk)
            .unwrap_or_else(|e| panic!("{}: run {} failed (console: {}): {e}", self.name, self.runs, log.display()));
        eprintln!(
            "{}: run {} took {:.1} s (console: {})",
            self.name,
            self.runs,
            started.elapsed().as_secs_f64(),
            log.display()
        );
        console
    }

    /// Starts the VM and returns it running, with the path of its console log.
    fn spawn(&mut self) -> (RunningVm, PathBuf) {
        let (qemu, log) = self.qemu();
        let vm = qemu.spawn(&self.disk).unwrap_or_else(|e| panic!("{}: cannot start QEMU: {e}", self.name));
        (vm, log)
    }

    /// The env on the boot partition, read with otter's codec and with `fw_printenv`, which must
    /// agree; also otter's backend view of it.
    fn env(&self) -> (BTreeMap<String, String>, UBootBackend) {
        let co = self.disk.checkout_boot_file("uboot.env", &self.dir.join("env")).expect("checkout uboot.env");
        assert!(co.exists(), "{}: no uboot.env on the boot partition", self.name);
        co.checked_env(SCHEME, &self.dir.join("fw_printenv.lock")).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// The action on the server.
    fn action(&self, update: &Update) -> otter_ddi_server::Action {
        self.server.action(update.action).expect("the action exists")
    }

    /// (execution, finished) of every feedback on the action, consecutive `proceeding` (progress)
    /// collapsed into one.
    fn sequence(&self, update: &Update) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for f in self.action(update).feedback {
            let e = f["status"]["execution"].as_str().unwrap_or("?").to_owned();
            let r = f["status"]["result"]["finished"].as_str().unwrap_or("?").to_owned();
            if out.last().is_some_and(|l| l.0 == "proceeding" && e == "proceeding") {
                continue;
            }
            out.push((e, r));
        }
        out
    }

    /// The details of every feedback, each joined into one line.
    fn details(&self, update: &Update) -> Vec<String> {
        self.action(update).feedback.iter().map(details).collect()
    }

    /// Where to look when an assertion fails.
    fn logs(&self) -> String {
        format!("consoles: {}/run-*.log", self.dir.display())
    }
}

fn details(f: &Value) -> String {
    f["status"]["details"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

fn pair(e: &str, f: &str) -> (String, String) {
    (e.to_owned(), f.to_owned())
}

/// The `Range: bytes=N-` start of a request, if it has one.
fn range_start(r: &otter_ddi_server::Request) -> Option<u64> {
    r.header("range")?.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

/// Slot A runs 1.0; otterd polls the server, downloads and installs 2.0 into slot B, puts B on
/// trial and reboots; U-Boot boots B; otterd on B passes its health check, commits and reports
/// success; the guest powers off.
#[test]
#[ignore = "boots QEMU with otterd (about a minute); run with qemu/run-tests"]
fn update_through_hawkbit_is_committed_on_the_new_slot() {
    let mut dev = Device::new("e2e_update_committed");
    let update = dev.publish(&release().payload);
    let console = dev.run();
    let logs = dev.logs();

    // The server: the whole feedback sequence, closed with success.
    assert_eq!(
        dev.action(&update).status,
        ActionStatus::Closed { success: true },
        "feedback {:#?}; {logs}",
        dev.action(&update).feedback
    );
    assert_eq!(
        dev.sequence(&update),
        [pair("proceeding", "none"), pair("downloaded", "none"), pair("closed", "success")],
        "{logs}"
    );
    let details = dev.details(&update);
    assert!(details[0].contains(ARTIFACT), "the first feedback names the artifact: {details:?}");
    assert!(details.iter().any(|d| d.contains("slot B")), "{details:?}");
    let last = details.last().expect("feedback");
    assert!(last.contains("version 2.0") && last.contains("committed"), "{last}");
    for r in dev.server.requests() {
        assert_eq!(r.header("authorization"), Some(format!("TargetToken {TOKEN}").as_str()), "{} {}", r.method, r.path);
    }
    let downloads = dev.server.requests_to("/artifacts/");
    assert_eq!(downloads.len(), 1, "one download: {:?}", downloads.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!((downloads[0].status, downloads[0].body_bytes_sent), (200, update.artifact.len() as u64));

    // The console: A (1.0) installed and rebooted, B (2.0) booted, reported, powered off.
    assert_eq!(console.booted_slots(), ["A", "B"], "{logs}");
    assert_eq!(console.markers("OTTER-CMDLINE-SLOT"), ["A", "B"], "{logs}");
    assert_eq!(console.markers("OTTER-E2E-VERSION"), ["1.0", "2.0"], "{logs}");
    assert_eq!(console.markers("OTTER-E2E-REBOOT"), ["A"], "otterd rebooted once, from A; {logs}");
    assert!(
        console.contains_in_order(&[
            "OTTER-SLOT=A",
            "OTTER-E2E-REBOOT=A",
            "OTTER-SLOT=B",
            "OTTER-E2E-REPORTED",
            "OTTER-E2E-OTTERD-EXIT=0",
            "OTTER-POWEROFF"
        ]),
        "{logs}"
    );
    // The slot, when otterd rebooted into it: byte for byte the artifact's image.
    assert_eq!(console.markers("OTTER-E2E-INACTIVE-SHA256"), [update.image_sha256()], "slot B; {logs}");

    // The env: B committed and first, both slots with all their attempts, no trial left.
    let (env, backend) = dev.env();
    assert_eq!(env, vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")]), "{logs}");
    assert_eq!(backend.primary(), Some(Slot::B));
    assert_eq!(backend.slot_state(Slot::B), SlotState::Good);
}

/// The same update, but 2.0 fails its health check: otterd on B marks B bad and reboots, U-Boot
/// falls back to A, otterd on A records the rollback and reports the failure.
#[test]
#[ignore = "boots QEMU with otterd (about a minute); run with qemu/run-tests"]
fn failed_health_check_rolls_back_to_the_old_slot() {
    let mut dev = Device::new("e2e_rollback");
    let update = dev.publish(&release().payload_unhealthy);
    let console = dev.run();
    let logs = dev.logs();

    assert_eq!(
        dev.action(&update).status,
        ActionStatus::Closed { success: false },
        "feedback {:#?}; {logs}",
        dev.action(&update).feedback
    );
    assert_eq!(
        dev.sequence(&update),
        [pair("proceeding", "none"), pair("downloaded", "none"), pair("closed", "failure")],
        "{logs}"
    );
    let details = dev.details(&update);
    let last = details.last().expect("feedback");
    assert!(last.contains("version 2.0 in slot B failed its trial boot"), "{last}");
    assert!(last.contains("e2e-marker") && last.contains("marked unhealthy"), "names the failed check: {last}");
    assert!(last.contains("rolled back: running slot A again"), "{last}");

    // A installed, B booted and failed, A again, which reported.
    assert_eq!(console.booted_slots(), ["A", "B", "A"], "{logs}");
    assert_eq!(console.markers("OTTER-CMDLINE-SLOT"), ["A", "B", "A"], "{logs}");
    assert_eq!(console.markers("OTTER-E2E-VERSION"), ["1.0", "2.0", "1.0"], "{logs}");
    assert_eq!(console.markers("OTTER-E2E-REBOOT"), ["A", "B"], "after the install, then the rollback; {logs}");
    assert!(
        console.contains_in_order(&[
            "OTTER-SLOT=A",
            "OTTER-E2E-REBOOT=A",
            "OTTER-SLOT=B",
            "this release is marked unhealthy",
            "OTTER-E2E-REBOOT=B",
            "OTTER-SLOT=A",
            "OTTER-E2E-REPORTED",
            "OTTER-E2E-OTTERD-EXIT=0",
            "OTTER-POWEROFF"
        ]),
        "{logs}"
    );
    // The install itself was right: the health check refused a correctly written image.
    let hashes = console.markers("OTTER-E2E-INACTIVE-SHA256");
    assert_eq!(hashes.first().copied(), Some(update.image_sha256().as_str()), "slot B after the install; {logs}");

    // The env: B is marked bad (out of BOOT_ORDER), A is the only slot left.
    let (env, backend) = dev.env();
    assert_eq!(env["BOOT_ORDER"], "A", "{env:?}; {logs}");
    assert!(!env.contains_key("OTTER_TRIAL"), "{env:?}");
    assert_eq!(backend.primary(), Some(Slot::A));
    assert_eq!(backend.slot_state(Slot::B), SlotState::Bad);
    assert_eq!(backend.slot_state(Slot::A), SlotState::Good);
}

/// The power fails while otterd downloads (a throttled artifact): after the next power-on otterd
/// on A continues the same action with one `Range` request past the chunks it had made durable,
/// and the update completes.
///
/// Right after the cut it also checks the boot partition's FAT, where otterd had replaced
/// `uboot.env` seconds before (qemu/README.md, "What the power-cut test caught").
#[test]
#[ignore = "boots QEMU with otterd (about 90 s); run with qemu/run-tests"]
fn power_cut_during_the_download_resumes_after_the_next_boot() {
    let mut dev = Device::new("e2e_power_cut");
    let update = dev.publish(&release().payload);
    let offsets = update.chunk_offsets();
    // Wait for a checkpoint past the first MiB of the artifact (and past chunk 2).
    let wanted = offsets.iter().position(|&o| o >= 1 << 20).unwrap_or(offsets.len()).max(2);
    // A download of about a minute: the cut comes after a few seconds of it.
    let pieces = (update.artifact.len() / (16 << 10)).max(1) as u32;
    dev.server.inject(Fault::SlowBody { piece: 16 << 10, delay: Duration::from_secs(60) / pieces });

    let (mut vm, log) = dev.spawn();
    let seen = |c: &Console| c.markers("OTTER-E2E-RESUME-CHUNKS").iter().filter_map(|v| v.parse::<usize>().ok()).max();
    let waited = vm.wait_until(&format!("a resume checkpoint of {wanted} chunks"), VM_TIMEOUT, |c| {
        seen(c).is_some_and(|n| n >= wanted)
    });
    let before_cut = match waited {
        Ok(c) => c,
        Err(e) => panic!("no checkpoint before the cut (console: {}): {e}", log.display()),
    };
    let checkpointed = seen(&before_cut).expect("a checkpoint");
    // The power cut.
    let console = vm.kill().expect("kill QEMU");
    dev.server.clear_faults();
    let logs = dev.logs();
    assert_eq!(console.booted_slots(), ["A"], "{logs}");
    assert!(!console.contains("OTTER-E2E-REBOOT"), "the install finished before the cut; {logs}");
    assert_eq!(dev.action(&update).status, ActionStatus::Running, "{logs}");
    let cut = dev.server.requests_to("/artifacts/");
    assert_eq!(cut.len(), 1, "{logs}");
    assert!(cut[0].body_bytes_sent < update.artifact.len() as u64, "the first download was cut off");
    eprintln!(
        "{}: cut after a checkpoint of {checkpointed} chunks, {} of {} bytes sent",
        dev.name,
        cut[0].body_bytes_sent,
        update.artifact.len()
    );

    // What the cut left on the disk: a consistent boot partition (otterd had stored the env on
    // it twice, seconds before), and an env in which B is already marked bad (docs/daemon.md:
    // durably, before the installer writes to it).
    if let Err(report) = dev.disk.check_fat(1, &dev.dir).expect("run fsck.fat") {
        panic!(
            "the power cut left the FAT boot partition, which holds uboot.env, inconsistent \
             (qemu/README.md: \"What the power-cut test caught\"):\n{report}\n{logs}"
        );
    }
    let (env, backend) = dev.env();
    assert_eq!(env["BOOT_ORDER"], "A", "B is out of BOOT_ORDER before it is written: {env:?}; {logs}");
    assert_eq!(backend.slot_state(Slot::B), SlotState::Bad, "{env:?}");

    let console = dev.run();
    assert!(!console.contains("starting from the defaults"), "U-Boot did not load uboot.env; {logs}");
    assert_eq!(
        dev.action(&update).status,
        ActionStatus::Closed { success: true },
        "feedback {:#?}; {logs}",
        dev.action(&update).feedback
    );
    let details = dev.details(&update);
    assert!(details.iter().any(|d| d.contains("interrupted by a restart")), "{details:?}");
    let sequence = dev.sequence(&update);
    assert_eq!(sequence[sequence.len() - 2..], [pair("downloaded", "none"), pair("closed", "success")], "{logs}");
    assert_eq!(console.booted_slots(), ["A", "B"], "{logs}");
    assert_eq!(console.markers("OTTER-E2E-INACTIVE-SHA256"), [update.image_sha256()], "slot B; {logs}");

    // After the cut: the head of the artifact again (the manifest), then one range request that
    // starts at a chunk boundary at or after the last checkpoint the guest showed before the cut.
    let downloads = dev.server.requests_to("/artifacts/");
    let after: Vec<_> = downloads[1..].iter().map(|r| (r.status, range_start(r))).collect();
    assert_eq!(after.len(), 2, "the manifest, then the rest: {after:?}");
    assert_eq!(after[0], (200, None), "{after:?}");
    let (status, start) = after[1];
    let start = start.expect("the resumed download is a Range request");
    assert_eq!(status, 206);
    let resumed_at = offsets.iter().position(|&o| o == start);
    assert!(
        resumed_at.is_some_and(|chunk| chunk >= checkpointed),
        "the range starts at {start}: not a chunk boundary at or after chunk {checkpointed} ({:?}...)",
        &offsets[..offsets.len().min(8)]
    );
    assert!(start > 1 << 20, "past the first MiB: {start}");

    let (env, backend) = dev.env();
    assert_eq!(env, vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")]), "{logs}");
    assert_eq!(backend.slot_state(Slot::B), SlotState::Good);
}

/// The deployment offers the full 2.0 artifact and a delta of it against 1.0, which slot A runs
/// (its root is mounted read-only, so the slot holds exactly the bytes the delta was made from):
/// otterd downloads only the delta, checks slot A against the delta's signed base, patches 2.0
/// into slot B from it, and the update is committed as with the full artifact.
#[test]
#[ignore = "boots QEMU with otterd (about a minute); run with qemu/run-tests"]
fn update_by_delta_downloads_only_the_delta_and_is_committed() {
    let mut dev = Device::new("e2e_update_by_delta");
    let (full, _) = build_artifact(&release().payload, None);
    let (delta, manifest) = build_artifact(&release().payload, Some(&release().running));
    const DELTA: &str = "gateway-os-2.0-from-1.0.otter";
    dev.server.add_artifact(ARTIFACT, full.clone());
    dev.server.add_artifact(DELTA, delta.clone());
    let mut spec = ActionSpec::new(ARTIFACT, "2.0");
    spec.artifacts.push(DELTA.into());
    let action = dev.server.create_action(CONTROLLER, spec);
    eprintln!(
        "{}: full artifact {} bytes, delta {} bytes ({:.1} %)",
        dev.name,
        full.len(),
        delta.len(),
        100.0 * delta.len() as f64 / full.len() as f64
    );
    let update = Update { action, artifact: delta, manifest };
    let console = dev.run();
    let logs = dev.logs();

    assert_eq!(
        dev.sequence(&update),
        [pair("proceeding", "none"), pair("downloaded", "none"), pair("closed", "success")],
        "feedback {:#?}; {logs}",
        dev.action(&update).feedback
    );
    let downloads = dev.server.requests_to("/artifacts/");
    let fetched: Vec<(&str, u16, u64)> =
        downloads.iter().map(|r| (r.path.rsplit('/').next().unwrap_or(""), r.status, r.body_bytes_sent)).collect();
    assert_eq!(fetched, [(DELTA, 200, update.artifact.len() as u64)], "only the delta is downloaded; {logs}");
    assert!(update.artifact.len() * 2 < full.len(), "the delta is the smaller download");
    assert_eq!(console.booted_slots(), ["A", "B"], "{logs}");
    assert_eq!(console.markers("OTTER-E2E-VERSION"), ["1.0", "2.0"], "{logs}");
    // Slot B holds the full artifact's image byte for byte.
    assert_eq!(console.markers("OTTER-E2E-INACTIVE-SHA256"), [update.image_sha256()], "slot B; {logs}");
    let (_, backend) = dev.env();
    assert_eq!((backend.primary(), backend.slot_state(Slot::B)), (Some(Slot::B), SlotState::Good), "{logs}");
}
