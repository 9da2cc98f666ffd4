//! The server token stays secret: `otterd --check-config` and `otterd run` refuse a configuration file or token
//! file that others can read (or that an unprivileged user owns), naming the file; a token over plain http is
//! warned about. Through the real binary on a simulated device (`otterd::fixture`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use otterd::fixture::{Device, DeviceSpec};

fn device(dir: &Path, server: &str) -> Device {
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.join("release")).unwrap();
    let mut spec = DeviceSpec::new("secrets-test", &dir.join("release.pub"));
    spec.extra_config = server.to_owned();
    Device::create(&dir.join("root"), &spec, None).unwrap()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn otterd(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otterd"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env("OTTER_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const INLINE_TOKEN: &str = r#"
[server]
url = "https://hawkbit.example"
controller_id = "gw-1"
auth = "gateway-token"
token = "tenant-wide-secret"
"#;

#[test]
fn a_config_file_holding_a_token_that_others_can_read_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let device = device(dir.path(), INLINE_TOKEN);
    let config = device.root.join("etc/otter/otter.toml");
    chmod(&config, 0o644);
    let out = otterd(&device.root, &["--check-config"]);
    assert!(!out.status.success(), "a world-readable token was accepted");
    let err = stderr(&out);
    assert!(err.contains(&config.display().to_string()) && err.contains("0644"), "{err}");
    assert!(!err.contains("tenant-wide-secret"), "the message shows the token: {err}");
    // Group-readable is no better.
    chmod(&config, 0o640);
    assert!(!otterd(&device.root, &["--check-config"]).status.success());
    // Owner-only is fine.
    chmod(&config, 0o600);
    let out = otterd(&device.root, &["--check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn a_token_file_that_others_can_read_or_that_a_user_owns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = device(
        dir.path(),
        "[server]\nurl = \"https://hawkbit.example\"\ncontroller_id = \"gw-1\"\ntoken_file = \"/etc/otter/token\"\n",
    );
    let token = device.root.join("etc/otter/token");
    std::fs::write(&token, "device-secret\n").unwrap();
    chmod(&token, 0o644);
    let out = otterd(&device.root, &["--check-config"]);
    assert!(!out.status.success(), "a world-readable token file was accepted");
    assert!(stderr(&out).contains(&token.display().to_string()), "{}", stderr(&out));
    chmod(&token, 0o600);
    let out = otterd(&device.root, &["--check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Owned by an unprivileged user, who can read it (or swap it) whatever its mode.
    std::os::unix::fs::chown(&token, Some(65534), Some(65534)).unwrap();
    let out = otterd(&device.root, &["--check-config"]);
    assert!(!out.status.success(), "a token file owned by nobody was accepted");
    assert!(stderr(&out).contains("uid 65534"), "{}", stderr(&out));
}

#[test]
fn start_up_refuses_an_exposed_token_too() {
    let dir = tempfile::tempdir().unwrap();
    let device = device(dir.path(), INLINE_TOKEN);
    let config = device.root.join("etc/otter/otter.toml");
    chmod(&config, 0o644);
    let mut child = Command::new(env!("CARGO_BIN_EXE_otterd"))
        .arg("--root")
        .arg(&device.root)
        .args(["--no-dbus", "run"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("otterd started with a world-readable token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains(&config.display().to_string()), "{err}");
}

#[test]
fn a_token_over_plain_http_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let device = device(
        dir.path(),
        "[server]\nurl = \"http://user:pw@hawkbit.example:8080\"\ncontroller_id = \"gw-1\"\ntoken = \"t\"\n",
    );
    chmod(&device.root.join("etc/otter/otter.toml"), 0o600);
    let out = otterd(&device.root, &["--check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("warning") && err.contains("plain http"), "{err}");
    assert!(!err.contains("pw@"), "the warning shows the URL's password: {err}");
}
