//! The D-Bus API end to end: a private `dbus-daemon` with its own configuration, the real `otterd` binary on a
//! simulated device (`otterd::fixture`), and independent clients (`busctl`, `gdbus`) besides `otterctl`.
//!
//! Needs `dbus-daemon`, `busctl`, `gdbus` and `setpriv` (Debian: dbus, systemd, libglib2.0-bin, util-linux; see
//! tests/apt-packages) and the `otterctl` binary next to `otterd` (`cargo test --workspace` builds both; alone:
//! `cargo build -p otterctl` first). A missing tool fails the test with its name; nothing is skipped.
//! The unprivileged-caller test needs root (to switch to `nobody`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_bootloader::Slot;
use otterd::fixture::{Device, DeviceSpec, PrivateBus};
use serde_json::Value;

const DEVICE_TYPE: &str = "dbus-gateway";
/// Image size, bytes (8 MiB: a few seconds from the slow HTTP source, well under a second from a file).
const IMAGE_LEN: usize = 8 << 20;
/// The checked-in introspection data.
const XML_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/io.otter.Updater1.xml");

fn tool(name: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: install the Debian package {package} (tests/install-deps does)");
}

fn otterctl_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_otterd")).with_file_name("otterctl");
    assert!(p.is_file(), "{} missing: run `cargo build -p otterctl` (cargo test --workspace builds it)", p.display());
    p
}

/// Deterministic, moderately compressible bytes.
fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 { (x & 0xff) as u8 } else { (i / 97) as u8 }
        })
        .collect()
}

/// A private bus with the shipped policy of the system bus. Most tests use `PrivateBus::open`, open to every local
/// user, so that otterd's own uid check is what refuses unprivileged callers.
fn system_like_bus(dir: &Path) -> PrivateBus {
    let policy_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/io.otter.Updater1.conf");
    let policy = format!(
        r#"  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{}</include>"#,
        policy_file.canonicalize().unwrap().display()
    );
    PrivateBus::with_policy(dir, &policy).unwrap()
}

/// The otterd binary on a simulated device, serving on the private bus.
struct Otterd {
    child: Child,
    log: PathBuf,
}

impl Drop for Otterd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(&self.log)
        {
            eprintln!("--- otterd log ---\n{log}");
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
    bus: PrivateBus,
    device: Device,
    artifact: PathBuf,
    otterd: Option<Otterd>,
}

impl Setup {
    /// A device on `policy`, a signed artifact for it, a bus, and otterd running.
    fn new(policy: &str) -> Self {
        Self::with_config(policy, "")
    }

    /// Like [`Setup::new`], with `extra` appended to the device's configuration.
    fn with_config(policy: &str, extra: &str) -> Self {
        Self::build(policy, extra, false)
    }

    fn build(policy: &str, extra: &str, system_bus_policy: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The unprivileged client must reach the bus socket and the artifact.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = otter_artifact::keys::generate().unwrap();
        otter_artifact::keys::write_keypair(&key, &dir.path().join("release")).unwrap();
        std::fs::write(dir.path().join("image.bin"), image_bytes(IMAGE_LEN, 3)).unwrap();
        let mut opts = BuildOptions::new(vec![DEVICE_TYPE.into()], "2.0");
        opts.chunk_size = 256 << 10;
        let artifact = dir.path().join("update.otter");
        let src = ImageSource {
            name: "rootfs".into(),
            slot_class: "rootfs".into(),
            path: dir.path().join("image.bin"),
            base: None,
        };
        builder::create(&opts, &[src], std::slice::from_ref(&key), std::fs::File::create(&artifact).unwrap()).unwrap();
        let mut spec = DeviceSpec::new(DEVICE_TYPE, &dir.path().join("release.pub"));
        spec.reboot_policy = policy.into();
        spec.extra_config = extra.into();
        let root = dir.path().join("root");
        spec.reboot_command = vec!["touch".into(), root.join("rebooted").display().to_string()];
        let device = Device::create(&root, &spec, None).unwrap();
        let bus = if system_bus_policy { system_like_bus(dir.path()) } else { PrivateBus::open(dir.path()).unwrap() };
        let mut s = Self { dir, bus, device, artifact, otterd: None };
        s.start_otterd();
        s
    }

    fn start_otterd(&mut self) {
        self.start_otterd_hiding(None);
    }

    /// (Re)starts otterd; with `hidden`, in a mount namespace where that directory is an empty tmpfs, as
    /// `PrivateTmp=`/`ProtectHome=` hide callers' files from the real service.
    fn start_otterd_hiding(&mut self, hidden: Option<&Path>) {
        self.otterd = None;
        let log = self.dir.path().join("otterd.log");
        let mut cmd = match hidden {
            None => Command::new(env!("CARGO_BIN_EXE_otterd")),
            Some(dir) => {
                let mut c = Command::new(tool("unshare", "util-linux"));
                c.args(["--mount", "sh", "-c", r#"mount -t tmpfs none "$0" && exec "$@""#])
                    .arg(dir)
                    .arg(env!("CARGO_BIN_EXE_otterd"));
                c
            }
        };
        let child = cmd
            .arg("--root")
            .arg(&self.device.root)
            .args(["--bus-address", &self.bus.address])
            .env("OTTER_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting otterd");
        self.otterd = Some(Otterd { child, log });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.busctl(&[
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                "io.otter.Updater1",
            ]);
            if String::from_utf8_lossy(&out.stdout).contains("true") {
                return;
            }
            if let Some(o) = &mut self.otterd
                && let Ok(Some(status)) = o.child.try_wait()
            {
                panic!("otterd exited with {status}: {}", std::fs::read_to_string(&o.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "otterd did not take its bus name in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn busctl(&self, args: &[&str]) -> Output {
        Command::new(tool("busctl", "systemd"))
            .arg(format!("--address={}", self.bus.address))
            .args(args)
            .output()
            .unwrap()
    }

    fn otterctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(otterctl_bin());
        c.args(["--address", &self.bus.address]).args(args);
        c
    }

    fn otterctl(&self, args: &[&str]) -> Output {
        self.otterctl_cmd(args).output().unwrap()
    }

    fn status_json(&self) -> Value {
        let out = self.otterctl(&["status", "--json"]);
        assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json parses")
    }

    fn slots_json(&self) -> Value {
        let out = self.otterctl(&["slots", "--json"]);
        assert!(out.status.success(), "slots: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("slots --json parses")
    }
}

/// Waits for a child, killing it after `limit` (a hung client must fail the test, not hang it).
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{child:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `<interface name="io.otter.Updater1">` element as it stands, from the start of its line.
fn interface_block(xml: &str) -> &str {
    let start = xml.find(r#"<interface name="io.otter.Updater1">"#).expect("interface in the XML");
    let start = xml[..start].rfind('\n').map_or(0, |i| i + 1);
    let end = start + xml[start..].find("</interface>").expect("end of the interface") + "</interface>".len();
    &xml[start..end]
}

/// The interface element, one trimmed line per line.
fn our_interface(xml: &str) -> String {
    interface_block(xml).lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

#[test]
fn introspection_equals_the_checked_in_xml() {
    let s = Setup::new("manual");
    let out = s.busctl(&["introspect", "--xml-interface", "io.otter.Updater1", "/io/otter/Updater1"]);
    assert!(out.status.success(), "busctl introspect: {}", text(&out.stderr));
    let served = our_interface(&text(&out.stdout));
    let checked_in = std::fs::read_to_string(XML_FILE).unwrap();
    if std::env::var_os("OTTER_BLESS").is_some() {
        let header = "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
                      \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
                      <!-- io.otter.Updater1 as otterd serves it; documented in docs/dbus-api.md.\n     \
                      Kept equal to the daemon by daemon/tests/dbus.rs (OTTER_BLESS=1 rewrites it). -->\n<node>\n";
        let body = interface_block(&text(&out.stdout)).to_owned();
        std::fs::write(XML_FILE, format!("{header}{body}\n</node>\n")).unwrap();
        return;
    }
    assert_eq!(
        served,
        our_interface(&checked_in),
        "the served interface differs from api/io.otter.Updater1.xml (OTTER_BLESS=1 rewrites the file)"
    );
}

#[test]
fn independent_clients_call_get_slots_and_read_progress() {
    let s = Setup::new("manual");
    let out = s.busctl(&["call", "io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1", "GetSlots"]);
    assert!(out.status.success(), "busctl GetSlots: {}", text(&out.stderr));
    let slots = text(&out.stdout);
    assert!(slots.starts_with("a(sa{sv}) 2 \"A\""), "{slots}");
    assert!(slots.contains("\"booted\" b true"), "{slots}");
    let gdbus = Command::new(tool("gdbus", "libglib2.0-bin"))
        .args(["call", "--address", &s.bus.address, "--dest", "io.otter.Updater1", "--object-path"])
        .args(["/io/otter/Updater1", "--method", "org.freedesktop.DBus.Properties.Get"])
        .args(["io.otter.Updater1", "Progress"])
        .output()
        .unwrap();
    assert!(gdbus.status.success(), "gdbus: {}", text(&gdbus.stderr));
    assert_eq!(text(&gdbus.stdout).trim(), "(<(uint32 0, uint64 0, uint64 0, '')>,)");
    let out = s.busctl(&["get-property", "io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1", "Operation"]);
    assert_eq!(text(&out.stdout).trim(), "s \"idle\"");
}

#[test]
fn otterctl_install_shows_progress_completes_and_an_inhibitor_blocks_the_reboot() {
    let s = Setup::new("manual");
    let out = s.otterctl(&["install", s.artifact.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "install: {stdout}{}", text(&out.stderr));
    assert!(stdout.contains("% "), "progress lines: {stdout}");
    assert!(stdout.contains("installed: slot B holds version 2.0"), "{stdout}");
    let status = s.status_json();
    assert_eq!(status["operation"], "awaiting-reboot", "{status}");
    assert_eq!(status["pending_reboot"], true);
    assert_eq!(status["progress"]["percent"], 100);
    let slots = s.slots_json();
    assert_eq!(slots[1]["name"], "B");
    assert_eq!(slots[1]["state"], "trying", "{slots}");
    assert_eq!(slots[1]["primary"], true);
    let image = std::fs::read(s.device.slot_file(Slot::B)).unwrap();
    assert_eq!(&image[..IMAGE_LEN], &image_bytes(IMAGE_LEN, 3)[..]);

    // While the inhibitor is held the reboot is refused (and the holder is listed); once the fd closed it goes.
    let ctl = otterctl_bin();
    let script = format!(
        "{ctl} --address {a} status --json; {ctl} --address {a} reboot",
        ctl = ctl.display(),
        a = s.bus.address
    );
    let out = s.otterctl(&["inhibit", "--why", "watching a film", "--", "sh", "-c", &script]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the reboot inside the inhibitor must fail: {stdout}");
    assert!(text(&out.stderr).contains("not now: a local application inhibits reboots"), "{}", text(&out.stderr));
    let inside: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(inside["inhibitors"][0]["why"], "watching a film", "{inside}");
    assert!(!s.device.root.join("rebooted").exists(), "rebooted despite the inhibitor");
    // The release reaches the engine asynchronously (pipe EOF → loop); the inhibitor list shows when it did.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.status_json()["inhibitors"].as_array().is_some_and(|a| !a.is_empty()) {
        assert!(Instant::now() < deadline, "inhibitor not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = s.otterctl(&["reboot"]);
    assert!(out.status.success(), "reboot: {}", text(&out.stderr));
    assert!(s.device.root.join("rebooted").exists(), "the reboot command did not run");
}

/// Serves `file` over HTTP slowly (64 KiB every 50 ms, ~1.3 MB/s), so an install takes seconds.
fn slow_http(file: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = std::fs::read(&file).unwrap();
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let _ = stream.read(&mut req);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for chunk in body.chunks(64 << 10) {
                    if stream.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
    });
    format!("http://{addr}/update.otter")
}

#[test]
fn cancel_mid_install_leaves_the_slot_invalid_and_a_second_install_is_busy() {
    let s = Setup::new("immediate");
    // Slot B holds an old image whose first block must not survive.
    std::fs::write(s.device.slot_file(Slot::B), vec![0x5a; 16 << 20]).unwrap();
    let url = slow_http(s.artifact.clone());
    let waiting = s.otterctl_cmd(&["--json", "install", &url]).stdout(Stdio::piped()).spawn().unwrap();
    // Wait until bytes are being written.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = s.status_json();
        if st["progress"]["bytes_done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = s.otterctl(&["install", s.artifact.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    assert!(text(&second.stderr).starts_with("otterctl: busy: job 1"), "{}", text(&second.stderr));
    let cancel = s.otterctl(&["cancel"]);
    assert!(cancel.status.success(), "cancel: {}", text(&cancel.stderr));
    let out = wait_output(waiting, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "exit code of a cancelled install");
    let done: Value = serde_json::from_slice(&out.stdout).expect("install --json parses");
    assert_eq!(done["result"], "cancelled", "{done}");
    assert_eq!(done["code"], "cancelled");
    // The slot is invalid (first block zeroed), the device still boots A, nothing rebooted.
    let slot = std::fs::read(s.device.slot_file(Slot::B)).unwrap();
    assert!(slot[..4096].iter().all(|&b| b == 0), "slot B's first block survived the cancel");
    let slots = s.slots_json();
    assert_eq!((&slots[0]["state"], &slots[0]["primary"]), (&Value::from("good"), &Value::from(true)), "{slots}");
    assert_eq!(slots[1]["state"], "bad", "{slots}");
    assert!(!s.device.root.join("rebooted").exists());
    let st = s.status_json();
    assert_eq!(st["operation"], "idle");
    assert_eq!(st["last_error"]["code"], "", "a cancel is not an error: {st}");
    let history: Value = serde_json::from_slice(&s.otterctl(&["history", "--json"]).stdout).unwrap();
    assert_eq!(history[0]["result"], "cancelled", "{history}");
}

#[test]
fn callers_neither_root_nor_in_the_group_are_not_authorized() {
    assert!(nix::unistd::Uid::effective().is_root(), "this test switches to nobody and needs root");
    let s = Setup::new("manual");
    let setpriv = tool("setpriv", "util-linux");
    let as_nobody = |args: &[&str]| {
        Command::new(&setpriv)
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(otterctl_bin())
            .args(["--address", &s.bus.address])
            .args(args)
            .output()
            .unwrap()
    };
    for args in [&["install", s.artifact.to_str().unwrap()][..], &["cancel"], &["mark", "bad", "other"]] {
        let out = as_nobody(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with("otterctl: not authorized: "), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // Reading is open to everyone.
    let out = as_nobody(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _: Value = serde_json::from_slice(&out.stdout).unwrap();
    // And an independent client gets the named error.
    let out = Command::new(&setpriv)
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(tool("dbus-send", "dbus"))
        .arg(format!("--bus={}", s.bus.address))
        .args(["--print-reply", "--dest=io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1.Reboot"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("io.otter.Updater1.Error.NotAuthorized"), "{}", text(&out.stderr));
    assert_eq!(s.status_json()["operation"], "idle");
}

#[test]
fn otterctl_hands_the_artifact_to_an_otterd_that_cannot_see_its_path() {
    let mut s = Setup::new("manual");
    let private = s.dir.path().join("home-of-the-caller");
    std::fs::create_dir(&private).unwrap();
    let artifact = private.join("update.otter");
    std::fs::copy(&s.artifact, &artifact).unwrap();
    s.start_otterd_hiding(Some(&private));
    // By path, the daemon cannot open it (its view of the directory is empty)...
    let by_path = s.busctl(&["call", "io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1", "Install"]);
    assert!(!by_path.status.success());
    let out = Command::new(tool("busctl", "systemd"))
        .arg(format!("--address={}", s.bus.address))
        .args(["call", "io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1", "Install", "sa{sv}"])
        .arg(&artifact)
        .arg("0")
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("as otterd sees it"), "{}", text(&out.stderr));
    // ...but otterctl opens it and passes the descriptor (InstallFd).
    let out = s.otterctl(&["install", artifact.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let image = std::fs::read(s.device.slot_file(Slot::B)).unwrap();
    assert!(image[..IMAGE_LEN] == image_bytes(IMAGE_LEN, 3)[..], "slot B holds the image");
    let log = std::fs::read_to_string(s.dir.path().join("otterd.log")).unwrap();
    assert!(log.contains(&format!("installing {} into slot B", artifact.display())), "{log}");
}

#[test]
fn install_fd_takes_pipes_and_refuses_what_it_cannot_read() {
    // busctl and gdbus cannot pass descriptors: the API crate's proxy does.
    let s = Setup::new("manual");
    let call = |fd: std::os::fd::BorrowedFd<'_>, options: &[(&str, &str)]| -> Result<String, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let conn = zbus::connection::Builder::address(s.bus.address.as_str()).unwrap().build().await.unwrap();
            let proxy = otter_api::Updater1Proxy::new(&conn).await.unwrap();
            let options = options.iter().map(|(k, v)| (*k, zbus::zvariant::Value::from(*v))).collect();
            let job = proxy.install_fd(zbus::zvariant::Fd::from(fd), options).await.map_err(|e| e.to_string())?;
            Ok(job.to_string())
        })
    };
    // A write-only descriptor and unknown options are refused before any job starts.
    let wo = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(s.dir.path().join("w")).unwrap();
    let err = call(wo.as_fd(), &[]).unwrap_err();
    assert!(err.contains("writing only"), "{err}");
    let dir = std::fs::File::open(s.dir.path()).unwrap();
    let err = call(dir.as_fd(), &[]).unwrap_err();
    assert!(err.contains("is a directory"), "{err}");
    let artifact = std::fs::File::open(&s.artifact).unwrap();
    let err = call(artifact.as_fd(), &[("tls-ca", "/x")]).unwrap_err();
    assert!(err.contains("unknown option"), "{err}");
    assert_eq!(s.status_json()["operation"], "idle");
    // A pipe: not seekable, read as a stream.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let artifact = std::fs::read(&s.artifact).unwrap();
    let feeder = std::thread::spawn(move || writer.write_all(&artifact).unwrap());
    let job = call(reader.as_fd(), &[("name", "a pipe")]).unwrap();
    assert!(job.starts_with("/io/otter/Updater1/job/"), "{job}");
    drop(reader);
    feeder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.status_json()["operation"] != "awaiting-reboot" {
        assert!(Instant::now() < deadline, "{}", s.status_json());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(s.dir.path().join("otterd.log")).unwrap();
    assert!(log.contains("installing a pipe into slot B"), "{log}");
    let image = std::fs::read(s.device.slot_file(Slot::B)).unwrap();
    assert!(image[..IMAGE_LEN] == image_bytes(IMAGE_LEN, 3)[..], "slot B holds the image");
}

/// otterd's threads named `name` now.
fn threads_named(pid: nix::unistd::Pid, name: &str) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter(|t| std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).is_ok_and(|c| c.trim() == name))
        .count()
}

#[test]
fn install_decoders_sets_the_decoding_threads_of_an_install() {
    // 5: more than the default ever starts (one per CPU, at most 4).
    let s = Setup::with_config("manual", "[install]\ndecoders = 5\n");
    let pid = s.otterd_pid();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let artifact = std::fs::read(&s.artifact).unwrap();
    // Half the artifact, then nothing until the writer is dropped: the install is held in its pipeline.
    let feeder = std::thread::spawn(move || {
        writer.write_all(&artifact[..artifact.len() / 2]).unwrap();
        writer
    });
    s.install_fd(reader.as_fd());
    drop(reader);
    let writer = feeder.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while threads_named(pid, otter_installer::DECODER_THREAD) != 5 {
        let n = threads_named(pid, otter_installer::DECODER_THREAD);
        assert!(Instant::now() < deadline, "{n} decoding threads, not 5: {}", s.status_json());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The truncated stream fails the install; its threads are gone with it.
    drop(writer);
    s.wait_operation("idle", Duration::from_secs(30));
    let history: Value = serde_json::from_slice(&s.otterctl(&["history", "--json"]).stdout).unwrap();
    assert_eq!((&history[0]["result"], &history[0]["code"]), (&"failed".into(), &"truncated".into()), "{history}");
    assert_eq!(threads_named(pid, otter_installer::DECODER_THREAD), 0);
}

#[test]
fn install_options_carry_http_headers_to_the_download() {
    let s = Setup::new("manual");
    let server = otter_ddi_server::DdiServer::start().unwrap();
    server.add_target("gw", Some("s3cret"));
    server.require_auth(true);
    server.add_artifact("a.otter", std::fs::read(&s.artifact).unwrap());
    let id = server.create_action("gw", otter_ddi_server::ActionSpec::new("a.otter", "2.0"));
    let url =
        format!("{}/{}/controller/v1/gw/softwaremodules/{id}/artifacts/a.otter?sig=0", server.url(), server.tenant());
    // Without the header the server refuses the download and the job fails with the HTTP status.
    let out = s.otterctl(&["--json", "install", &url]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("http-status"), "{}{}", text(&out.stdout), text(&out.stderr));
    // With it (RAUC's "http-headers" option, `otterctl install --header`), the install completes.
    let out = s.otterctl(&["install", "--header", "Authorization: TargetToken s3cret", &url]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let downloads = server.requests_to("/artifacts/");
    assert_eq!(downloads.last().unwrap().header("authorization"), Some("TargetToken s3cret"));
    let image = std::fs::read(s.device.slot_file(Slot::B)).unwrap();
    assert_eq!(&image[..IMAGE_LEN], &image_bytes(IMAGE_LEN, 3)[..]);
    // Options otterd does not know are refused, not ignored.
    let out = s.otterctl(&["cancel"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new("busctl")
        .args(["--address", &s.bus.address, "call", "io.otter.Updater1", "/io/otter/Updater1"])
        .args(["io.otter.Updater1", "Install", "sa{sv}", &url, "1", "tls-no-verify", "b", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown option"), "{}", text(&out.stderr));
}

#[test]
fn server_consent_is_asked_and_given_over_dbus() {
    let server = otter_ddi_server::DdiServer::start().unwrap();
    server.add_target("gw-consent", None);
    let config = format!(
        "[server]\nurl = \"{}\"\ncontroller_id = \"gw-consent\"\nauth = \"none\"\nauto_confirm = false\n\
         poll_min = \"200ms\"\n\
         poll_max = \"1s\"\njitter_percent = 0\ntimeout = \"10s\"\n",
        server.url()
    );
    let s = Setup::with_config("manual", &config);
    server.add_artifact("update.otter", std::fs::read(&s.artifact).unwrap());
    let mut spec = otter_ddi_server::ActionSpec::new("update.otter", "2.0");
    spec.confirmation_required = true;
    let action = server.create_action("gw-consent", spec);
    // The request shows up for local applications; nothing is installed before someone consents.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let out = s.otterctl(&["--json", "confirmations"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "no consent request appeared: {}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed[0]["action"], action.to_string(), "{listed}");
    assert_eq!(s.status_json()["operation"], "idle");
    // Consent is answered to the server, and the update proceeds.
    let out = s.otterctl(&["confirm", &action.to_string(), "--details", "maintenance crew on site"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    // The test server's actions are "forced": once installed, the device reboots into the new slot at once.
    while !matches!(s.status_json()["operation"].as_str(), Some("awaiting-reboot" | "rebooting")) {
        assert!(
            Instant::now() < deadline,
            "the update did not proceed after consent: {}\n{}",
            s.status_json(),
            std::fs::read_to_string(&s.otterd.as_ref().unwrap().log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = server.action(action).unwrap();
    assert!(a.confirmation_feedback.iter().any(|b| b["confirmation"] == "confirmed"), "{:?}", a.confirmation_feedback);
    // Answering again is an error: nothing waits any more.
    let out = s.otterctl(&["confirm", &action.to_string()]);
    assert!(!out.status.success());
}

#[test]
fn the_policy_file_lets_everyone_read_and_only_root_or_group_otter_call() {
    assert!(nix::unistd::Uid::effective().is_root(), "this test switches to nobody and needs root");
    let s = Setup::build("manual", "", true);
    let busctl = tool("busctl", "systemd");
    let as_nobody = |args: &[&str]| {
        Command::new(tool("setpriv", "util-linux"))
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&busctl)
            .arg(format!("--address={}", s.bus.address))
            .args(args)
            .output()
            .unwrap()
    };
    const DEST: [&str; 3] = ["io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1"];
    // Everyone may read properties and list slots and history.
    let out = as_nobody(&["get-property", DEST[0], DEST[1], DEST[2], "Operation"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "s \"idle\"");
    for method in ["GetSlots", "GetHistory"] {
        let out = as_nobody(&["call", DEST[0], DEST[1], DEST[2], method]);
        assert!(out.status.success(), "{method}: {}", text(&out.stderr));
    }
    // The bus itself refuses every other method to others, before otterd sees it.
    for method in ["Cancel", "Reboot", "CheckForUpdate"] {
        let out = as_nobody(&["call", DEST[0], DEST[1], DEST[2], method]);
        assert!(!out.status.success(), "{method}");
        assert!(text(&out.stderr).to_lowercase().contains("access denied"), "{method}: {}", text(&out.stderr));
    }
    // Root passes the policy: the answer comes from otterd (nothing to cancel), not from the bus.
    let out = s.busctl(&["call", DEST[0], DEST[1], DEST[2], "Cancel"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no update in progress"), "{}", text(&out.stderr));
}

// --- Per-caller limits: what a member of group `otter` may do without breaking otterd (issue 10, item 11) ---------

/// The member of group `otter` the limit tests run as: a real user whose primary group is `otter` (both created
/// once if missing, as an image would create them), so otterd's group check accepts it from the group database.
const MEMBER: &str = "otter-member";

fn ensure_otter_member() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        assert!(nix::unistd::Uid::effective().is_root(), "creating the otter group member needs root");
        // Other test binaries may create them at the same time: retry while the passwd/group lock is taken.
        for _ in 0..50 {
            let _ = Command::new(tool("groupadd", "passwd")).args(["-f", "-r", "otter"]).output();
            if Command::new("id").arg(MEMBER).output().is_ok_and(|o| o.status.success()) {
                return;
            }
            let _ = Command::new(tool("useradd", "passwd"))
                .args(["-r", "-M", "-N", "-g", "otter", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", MEMBER])
                .output();
            if Command::new("id").arg(MEMBER).output().is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot create user {MEMBER} in group otter");
    });
}

/// `program args…` as [`MEMBER`], with its groups from the group database.
fn as_member(program: &Path) -> Command {
    ensure_otter_member();
    let mut c = Command::new(tool("setpriv", "util-linux"));
    c.args([&format!("--reuid={MEMBER}"), "--regid=otter", "--init-groups", "--"]).arg(program);
    c
}

impl Setup {
    fn otterd_pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.otterd.as_ref().unwrap().child.id() as i32)
    }

    /// Descriptors otterd has open now.
    fn otterd_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.otterd_pid())).unwrap().count()
    }

    /// Calls `InstallFd(fd, {})` as root with the API crate's proxy; returns the job path.
    fn install_fd(&self, fd: std::os::fd::BorrowedFd<'_>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.address.as_str()).unwrap().build().await.unwrap();
            let proxy = otter_api::Updater1Proxy::new(&conn).await.unwrap();
            let options = std::collections::HashMap::from([("name", zbus::zvariant::Value::from("a silent fifo"))]);
            proxy.install_fd(zbus::zvariant::Fd::from(fd), options).await.unwrap().to_string()
        })
    }

    /// Waits (generously) until the status' operation is `op`.
    fn wait_operation(&self, op: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status_json();
            if st["operation"] == op {
                return;
            }
            assert!(Instant::now() < deadline, "operation did not become {op} within {limit:?}: {st}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn inhibitor_count(&self) -> usize {
        self.status_json()["inhibitors"].as_array().map_or(0, Vec::len)
    }
}

/// A FIFO opened read-write, as a caller can pass it to `InstallFd`: otterd's read never sees EOF (the descriptor
/// is itself a writer) and no byte ever comes.
fn silent_fifo(dir: &Path) -> std::fs::File {
    let path = dir.join("silent.fifo");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap()
}

#[test]
fn install_fd_of_a_read_write_fifo_is_cancelled_and_otterd_stays_responsive() {
    let s = Setup::new("manual");
    let fifo = silent_fifo(s.dir.path());
    let job = s.install_fd(fifo.as_fd());
    assert!(job.starts_with("/io/otter/Updater1/job/"), "{job}");
    s.wait_operation("installing", Duration::from_secs(20));
    let out = s.otterctl(&["cancel"]);
    assert!(out.status.success(), "cancel: {}", text(&out.stderr));
    // The install used to sit in a blocking read of the FIFO, deaf to the cancel, "installing" for ever.
    s.wait_operation("idle", Duration::from_secs(30));
    let history: Value = serde_json::from_slice(&s.otterctl(&["history", "--json"]).stdout).unwrap();
    assert_eq!(history[0]["result"], "cancelled", "{history}");
    assert_eq!(history[0]["source"], "a silent fifo", "{history}");
    // otterd takes the next job.
    let out = s.otterctl(&["install", s.artifact.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn sigterm_stops_otterd_while_it_installs_from_a_silent_fifo() {
    let mut s = Setup::new("manual");
    let fifo = silent_fifo(s.dir.path());
    s.install_fd(fifo.as_fd());
    s.wait_operation("installing", Duration::from_secs(20));
    nix::sys::signal::kill(s.otterd_pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    // otterd.service gives it TimeoutStopSec=30s before SIGKILL.
    let child = &mut s.otterd.as_mut().unwrap().child;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "otterd did not stop within 30 s of SIGTERM during an install from a FIFO");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "otterd exited with {status}");
}

#[test]
fn an_otter_group_member_holds_at_most_16_inhibitors_and_cannot_exhaust_otterds_descriptors() {
    let s = Setup::new("manual");
    let before = s.otterd_fds();
    // Each holder is an `otterctl inhibit -- cat` that keeps its inhibitor until its stdin closes.
    let hold = |why: &str| {
        as_member(&otterctl_bin())
            .args(["--address", &s.bus.address, "inhibit", "--why", why, "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut holders = Vec::new();
    for i in 0..otterd::dbus::MAX_INHIBITORS_PER_CALLER {
        holders.push(hold(&format!("holder {i}")));
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.inhibitor_count() < i + 1 {
            assert!(Instant::now() < deadline, "inhibitor {i} of the member was not taken");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // One more (and many more) from the same user are refused with the named error, at no descriptor's cost.
    for i in 0..24 {
        let out = as_member(&otterctl_bin())
            .args(["--address", &s.bus.address, "inhibit", "--why", &format!("one too many {i}"), "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "inhibitor {} beyond the cap was granted", 16 + i);
        assert!(text(&out.stderr).starts_with("otterctl: limit exceeded: "), "{}", text(&out.stderr));
    }
    let out = as_member(&tool("dbus-send", "dbus"))
        .arg(format!("--bus={}", s.bus.address))
        .args(["--print-reply", "--dest=io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1.Inhibit"])
        .arg("string:why not")
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("io.otter.Updater1.Error.LimitExceeded"), "{}", text(&out.stderr));
    assert_eq!(s.inhibitor_count(), otterd::dbus::MAX_INHIBITORS_PER_CALLER);
    let held = s.otterd_fds();
    assert!(
        held <= before + otterd::dbus::MAX_INHIBITORS_PER_CALLER + 4,
        "otterd went from {before} to {held} descriptors"
    );
    // The cap is per caller: root still gets one, and otterd still answers.
    let out = s.otterctl(&["inhibit", "--why", "root's turn", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.otterctl(&["slots"]).status.success());
    // Released when the holders end.
    for mut h in holders {
        drop(h.stdin.take());
        wait_output(h, Duration::from_secs(30));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.inhibitor_count() > 0 {
        assert!(Instant::now() < deadline, "inhibitors not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = as_member(&otterctl_bin())
        .args(["--address", &s.bus.address, "inhibit", "--why", "after the release", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn only_root_may_make_otterd_read_a_file() {
    let s = Setup::new("manual");
    // A file only root can read, like the device's TLS key.
    let secret = s.dir.path().join("device-key.pem");
    std::fs::write(&secret, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret = secret.to_str().unwrap();
    let url = "https://127.0.0.1:9/update.otter";
    for option in ["--tls-ca", "--tls-cert"] {
        let out = as_member(&otterctl_bin())
            .args(["--address", &s.bus.address, "install", option, secret, url])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{option}");
        let err = text(&out.stderr);
        assert!(err.starts_with("otterctl: not authorized: "), "{option}: {err}");
        assert!(err.contains(option.trim_start_matches("--")), "{option}: {err}");
    }
    // An independent client gets the named error; a file path is refused to members too (they pass the file).
    let out = as_member(&tool("busctl", "systemd"))
        .arg(format!("--address={}", s.bus.address))
        .args(["call", "io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1", "Install", "sa{sv}", url])
        .args(["1", "tls-ca", "s", "/dev/zero"])
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("only root may pass option \"tls-ca\""), "{}", text(&out.stderr));
    let out = as_member(&tool("busctl", "systemd"))
        .arg(format!("--address={}", s.bus.address))
        .args(["call", "io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1", "Install", "sa{sv}"])
        .arg(&s.artifact)
        .arg("0")
        .output()
        .unwrap();
    assert!(text(&out.stderr).contains("only root may have otterd open a file path"), "{}", text(&out.stderr));
    assert_eq!(s.status_json()["operation"], "idle", "nothing started");
    assert_eq!(s.otterctl(&["history", "--json"]).stdout, b"[]\n", "no job ran");
    // Root may, but only regular files (a directory, a FIFO or /dev/zero is refused before anything reads it).
    let out = s.otterctl(&["install", "--tls-ca", s.dir.path().to_str().unwrap(), url]);
    assert!(text(&out.stderr).contains("is not a regular file"), "{}", text(&out.stderr));
    // A member installs by passing the file it opened itself.
    let out =
        as_member(&otterctl_bin()).args(["--address", &s.bus.address, "install"]).arg(&s.artifact).output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

// --- The shipped policy, the interface and the docs agree ----------------------------------------------------------

/// The methods of the checked-in introspection XML.
fn xml_methods() -> Vec<String> {
    let xml = std::fs::read_to_string(XML_FILE).unwrap();
    xml.split("<method name=\"").skip(1).map(|m| m[..m.find('"').unwrap()].to_owned()).collect()
}

/// The `io.otter.Updater1` methods the policy file opens to everybody (its `context="default"` policy).
fn policy_open_methods() -> Vec<String> {
    let policy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/io.otter.Updater1.conf"))
            .unwrap();
    let default = &policy[policy.find(r#"<policy context="default">"#).expect("a default policy")..];
    let default = &default[..default.find("</policy>").unwrap()];
    default
        .lines()
        .filter(|l| l.contains("<allow") && l.contains(r#"send_interface="io.otter.Updater1""#))
        .map(|l| {
            let m = &l[l.find("send_member=\"").expect("an allow names its member") + 13..];
            m[..m.find('"').unwrap()].to_owned()
        })
        .collect()
}

/// The method table of docs/dbus-api.md: method name and its "who" column.
fn documented_methods() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dbus-api.md")).unwrap();
    let table = &doc[doc.find("## Methods").unwrap()..doc.find("## Properties").unwrap()];
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_start_matches('`');
            (name[..name.find('(').unwrap()].to_owned(), cells[2].to_owned())
        })
        .collect()
}

#[test]
fn the_policy_file_the_interface_and_the_docs_name_the_same_methods_and_callers() {
    let mut methods = xml_methods();
    methods.sort();
    let mut documented: Vec<String> = documented_methods().into_iter().map(|(m, _)| m).collect();
    documented.sort();
    assert_eq!(documented, methods, "docs/dbus-api.md documents other methods than api/io.otter.Updater1.xml");
    let mut open = policy_open_methods();
    open.sort();
    for m in &open {
        assert!(methods.contains(m), "the policy opens {m}, which the interface does not have");
    }
    let mut everyone: Vec<String> =
        documented_methods().into_iter().filter(|(_, who)| who == "everyone").map(|(m, _)| m).collect();
    everyone.sort();
    assert_eq!(open, everyone, "the policy file opens other methods to everybody than docs/dbus-api.md says");
}

#[test]
fn the_policy_file_opens_exactly_the_documented_methods_to_everybody() {
    assert!(nix::unistd::Uid::effective().is_root(), "this test switches to nobody and needs root");
    let s = Setup::build("manual", "", true);
    let everyone: Vec<String> =
        documented_methods().into_iter().filter(|(_, who)| who == "everyone").map(|(m, _)| m).collect();
    for method in xml_methods() {
        let out = Command::new(tool("setpriv", "util-linux"))
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(tool("busctl", "systemd"))
            .arg(format!("--address={}", s.bus.address))
            .args(["call", "io.otter.Updater1", "/io/otter/Updater1", "io.otter.Updater1", &method])
            .output()
            .unwrap();
        let denied = text(&out.stderr).to_lowercase().contains("access denied");
        // Methods open to everybody reach otterd (which may still answer with an error, e.g. NoServer).
        assert_eq!(denied, !everyone.contains(&method), "{method}: {}", text(&out.stderr));
    }
}

// --- otterctl and a closed pipe --------------------------------------------------------------------------------------

#[test]
fn otterctl_ends_quietly_when_its_reader_closed_the_pipe() {
    let s = Setup::new("manual");
    for args in [&["history"][..], &["--json", "history"], &["status"], &["slots"], &["--json", "slots"]] {
        // Like `otterctl history | head -0`: the reader is gone before otterctl writes a byte.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = s.otterctl_cmd(args).stdout(writer).stderr(Stdio::piped()).output().unwrap();
        assert_eq!(text(&out.stderr), "", "{args:?}: no panic, no error message");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
}

#[test]
fn otterctl_installs_a_delta_against_the_booted_slot_and_refuses_one_made_for_another_base() {
    use std::os::unix::fs::FileExt;
    let s = Setup::new("manual");
    // Slot A runs the base; the delta brings it to a release that differs in 64 KiB.
    let base = image_bytes(IMAGE_LEN, 3);
    let mut new = base.clone();
    new[(3 << 20) + 100..(3 << 20) + 100 + (64 << 10)].fill(9);
    let (base_img, new_img) = (s.dir.path().join("base.img"), s.dir.path().join("new.img"));
    std::fs::write(&base_img, &base).unwrap();
    std::fs::write(&new_img, &new).unwrap();
    let key = otter_artifact::keys::read_signing_key(&s.dir.path().join("release.key")).unwrap();
    let mut opts = BuildOptions::new(vec![DEVICE_TYPE.into()], "2.1");
    opts.chunk_size = 256 << 10;
    opts.level = 3;
    let window = 1 << 20;
    let base_src = Some(builder::DeltaBase { path: base_img, window });
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: new_img, base: base_src };
    let delta = s.dir.path().join("update-2.1-from-2.0.otter");
    builder::create(&opts, &[src], std::slice::from_ref(&key), std::fs::File::create(&delta).unwrap()).unwrap();
    assert!(std::fs::metadata(&delta).unwrap().len() < 256 << 10, "a delta of 64 KiB of change");
    let slot_a = std::fs::OpenOptions::new().write(true).open(s.device.slot_file(Slot::A)).unwrap();
    let slot_b_before = std::fs::read(s.device.slot_file(Slot::B)).unwrap();

    // Slot A holds something else: refused before anything is written, and otterd stays ready.
    let mut other = base.clone();
    other[5 << 20] ^= 1;
    slot_a.write_all_at(&other, 0).unwrap();
    let out = s.otterctl(&["install", delta.to_str().unwrap()]);
    assert!(!out.status.success());
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("delta-base-mismatch") || said.contains("base differs"), "{said}");
    assert!(std::fs::read(s.device.slot_file(Slot::B)).unwrap() == slot_b_before, "slot B untouched");
    assert_eq!(s.status_json()["operation"], "idle");

    // Slot A holds the base: slot B gets the new release from the delta.
    slot_a.write_all_at(&base, 0).unwrap();
    let out = s.otterctl(&["install", delta.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let image = std::fs::read(s.device.slot_file(Slot::B)).unwrap();
    assert!(image[..IMAGE_LEN] == new[..], "slot B holds the new release");
}
