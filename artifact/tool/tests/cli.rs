//! `otter-artifact` end to end: every subcommand through the real binary, including errors as one line on stderr.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_otter-artifact");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN).current_dir(dir).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with exactly one line on stderr, starting with the tool's name.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.starts_with("otter-artifact: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect();
    std::fs::write(d.path().join("rootfs.img"), image).unwrap();
    ok(d.path(), &["keygen", "--out", "old"]);
    ok(d.path(), &["keygen", "--out", "new"]);
    d
}

fn create(dir: &Path, key: &str, out: &str) {
    ok(
        dir,
        &[
            "create",
            "--key",
            key,
            "--compatible",
            "gw-a",
            "--compatible",
            "gw-b",
            "--version",
            "3.1",
            "--security-version",
            "4",
            "--image",
            "rootfs=rootfs.img",
            "--level",
            "3",
            "--chunk-size-kib",
            "64",
            "-o",
            out,
        ],
    );
}

#[test]
fn keygen_writes_a_private_key_only_the_owner_can_read() {
    let d = setup();
    let mode = std::fs::metadata(d.path().join("old.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(d.path().join("old.pub")).unwrap().starts_with("otter-ed25519-public "));
    // Never overwrites a key.
    fails(d.path(), &["keygen", "--out", "old"]);
}

#[test]
fn create_verify_inspect() {
    let d = setup();
    create(d.path(), "old.key", "a.otter");
    let v = ok(d.path(), &["verify", "--key", "old.pub", "a.otter"]);
    assert!(v.contains("valid, version 3.1"), "{v}");
    let j: serde_json::Value = serde_json::from_str(&ok(d.path(), &["inspect", "--json", "a.otter"])).unwrap();
    assert_eq!(j["manifest"]["compatible"], serde_json::json!(["gw-a", "gw-b"]));
    assert_eq!(j["manifest"]["security_version"], 4);
    assert_eq!(j["manifest"]["payloads"][0]["chunk_size"], 65536);
    assert_eq!(j["manifest"]["payloads"][0]["chunks"].as_array().unwrap().len(), 5);
    assert_eq!(j["verified"], false);
    let text = ok(d.path(), &["inspect", "a.otter"]);
    assert!(text.contains("security_version: 4") && text.contains("slot class rootfs"), "{text}");
}

#[test]
fn verify_refuses_a_wrong_key_and_a_damaged_payload() {
    let d = setup();
    create(d.path(), "old.key", "a.otter");
    let e = fails(d.path(), &["verify", "--key", "new.pub", "a.otter"]);
    assert!(e.contains("unknown keys"), "{e}");
    let mut bytes = std::fs::read(d.path().join("a.otter")).unwrap();
    let at = bytes.len() - 3000;
    bytes[at] ^= 0x40;
    std::fs::write(d.path().join("bad.otter"), bytes).unwrap();
    let e = fails(d.path(), &["verify", "--key", "old.pub", "bad.otter"]);
    assert!(e.contains("payload \"rootfs\""), "{e}");
}

#[test]
fn sign_adds_a_signature_for_key_rotation() {
    let d = setup();
    create(d.path(), "old.key", "a.otter");
    ok(d.path(), &["sign", "--key", "new.key", "a.otter", "-o", "both.otter"]);
    // A device that only trusts the new key accepts it; one that trusts both (a keyring dir) too.
    ok(d.path(), &["verify", "--key", "new.pub", "both.otter"]);
    std::fs::create_dir(d.path().join("ring")).unwrap();
    std::fs::copy(d.path().join("old.pub"), d.path().join("ring/old.pub")).unwrap();
    std::fs::copy(d.path().join("new.pub"), d.path().join("ring/new.pub")).unwrap();
    ok(d.path(), &["verify", "--keyring", "ring", "both.otter"]);
    let j: serde_json::Value = serde_json::from_str(&ok(d.path(), &["inspect", "--json", "both.otter"])).unwrap();
    assert_eq!(j["signatures"].as_array().unwrap().len(), 2);
    // Payload entries are copied byte for byte: the artifacts differ only in the signature block.
    let a = std::fs::read(d.path().join("a.otter")).unwrap();
    let b = std::fs::read(d.path().join("both.otter")).unwrap();
    let n = a.len().min(b.len()) / 2;
    assert_eq!(a[a.len() - n..], b[b.len() - n..]);
}

#[test]
fn verify_install_and_sign_all_refuse_bytes_after_the_end_of_the_archive() {
    let d = setup();
    create(d.path(), "old.key", "a.otter");
    let mut bytes = std::fs::read(d.path().join("a.otter")).unwrap();
    bytes.extend_from_slice(&[0u8; 512]);
    std::fs::write(d.path().join("padded.otter"), bytes).unwrap();
    let trailing = "unexpected data after the end-of-archive marker";
    let e = fails(d.path(), &["verify", "--key", "old.pub", "padded.otter"]);
    assert!(e.contains(trailing), "{e}");
    let e = fails(d.path(), &["install", "--key", "old.pub", "--slot", "slot.img", "padded.otter"]);
    assert!(e.contains(trailing), "{e}");
    // The slot was written but never made valid: its first block is zeroed.
    assert!(std::fs::read(d.path().join("slot.img")).unwrap()[..4096].iter().all(|&b| b == 0));
    let e = fails(d.path(), &["sign", "--key", "new.key", "padded.otter", "-o", "signed.otter"]);
    assert!(e.contains(trailing), "{e}");
    assert!(!d.path().join("signed.otter").exists());
}

#[test]
fn install_from_stdin_into_a_file_slot() {
    let d = setup();
    create(d.path(), "old.key", "a.otter");
    let out = Command::new(BIN)
        .current_dir(d.path())
        .args(["install", "--key", "old.pub", "--device-type", "gw-b", "--slot", "slot.img", "-"])
        .stdin(Stdio::from(std::fs::File::open(d.path().join("a.otter")).unwrap()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(d.path().join("slot.img")).unwrap(), std::fs::read(d.path().join("rootfs.img")).unwrap());
}

#[test]
fn install_refuses_incompatible_and_rolled_back_artifacts() {
    let d = setup();
    create(d.path(), "old.key", "a.otter");
    let e = fails(d.path(), &["install", "--key", "old.pub", "--device-type", "gw-c", "--slot", "s.img", "a.otter"]);
    assert!(e.contains("not for device type \"gw-c\""), "{e}");
    let e =
        fails(d.path(), &["install", "--key", "old.pub", "--min-security-version", "5", "--slot", "s.img", "a.otter"]);
    assert!(e.contains("below the minimum 5"), "{e}");
    let e = fails(d.path(), &["install", "--key", "old.pub", "--slot", "s.img", "--slot-size", "1000", "a.otter"]);
    assert!(e.contains("the image needs 300000"), "{e}");
}

#[test]
fn missing_input_is_one_clear_line() {
    let d = setup();
    let e = fails(d.path(), &["verify", "--key", "old.pub", "nope.otter"]);
    assert!(e.contains("nope.otter"), "{e}");
    let e = fails(
        d.path(),
        &[
            "create",
            "--key",
            "missing.key",
            "--compatible",
            "x",
            "--version",
            "1",
            "--image",
            "rootfs=rootfs.img",
            "-o",
            "x.otter",
        ],
    );
    assert!(e.contains("missing.key"), "{e}");
    assert!(!d.path().join("x.otter").exists() && !d.path().join("x.otter.tmp").exists());
}

#[test]
fn an_install_killed_mid_way_resumes_from_its_record() {
    let d = setup();
    // 48 chunks of 64 KiB that do not compress away.
    let image: Vec<u8> =
        (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i / 4096) as u8).collect();
    std::fs::write(d.path().join("rootfs.img"), &image).unwrap();
    create(d.path(), "old.key", "a.otter");
    let artifact = std::fs::read(d.path().join("a.otter")).unwrap();
    let pipe = d.path().join("pipe");
    assert!(Command::new("mkfifo").arg(&pipe).status().unwrap().success());
    let record = d.path().join("resume.json");
    let mut child = Command::new(BIN)
        .current_dir(d.path())
        .args(["install", "--key", "old.pub", "--slot", "slot.img", "--resume-file", "resume.json", "pipe"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut fifo = std::fs::OpenOptions::new().write(true).open(&pipe).unwrap();
        let (a, b) = (artifact.len() * 4 / 10, artifact.len() * 6 / 10);
        fifo.write_all(&artifact[..a]).unwrap();
        // Checkpoints come at most every 2 s: the chunks that arrive after this pause trigger one.
        std::thread::sleep(std::time::Duration::from_millis(2200));
        fifo.write_all(&artifact[a..b]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !record.exists() {
            assert!(std::time::Instant::now() < deadline, "no resume record appeared");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The power cut: no cleanup of any kind.
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let slot = std::fs::read(d.path().join("slot.img")).unwrap();
    assert!(slot[..4096].iter().all(|&b| b == 0), "an interrupted slot is not a valid image");

    let out =
        ok(d.path(), &["install", "--key", "old.pub", "--slot", "slot.img", "--resume-file", "resume.json", "a.otter"]);
    let resumed: u64 = out
        .split(", ")
        .find_map(|part| part.strip_suffix(" chunks resumed"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resumed count in {out:?}"));
    assert!(resumed > 0 && resumed < 48, "{out}");
    assert_eq!(std::fs::read(d.path().join("slot.img")).unwrap(), image);
    assert!(!record.exists());
}

#[test]
fn a_device_without_system_ca_certificates_still_installs_over_plain_http() {
    use std::io::{Read as _, Write as _};
    let d = setup();
    create(d.path(), "old.key", "a.otter");
    let artifact = std::fs::read(d.path().join("a.otter")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/a.otter", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = [0u8; 4096];
        let _ = conn.read(&mut req).unwrap();
        write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", artifact.len()).unwrap();
        conn.write_all(&artifact).unwrap();
    });
    // rustls finds the system's roots through these; pointing them at nothing is a device without ca-certificates.
    std::fs::write(d.path().join("no-certs.pem"), "").unwrap();
    std::fs::create_dir(d.path().join("no-certs")).unwrap();
    let out = Command::new(BIN)
        .current_dir(d.path())
        .env("SSL_CERT_FILE", d.path().join("no-certs.pem"))
        .env("SSL_CERT_DIR", d.path().join("no-certs"))
        .args(["install", "--key", "old.pub", "--slot", "slot.img", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(d.path().join("slot.img")).unwrap(), std::fs::read(d.path().join("rootfs.img")).unwrap());
}

/// Runs `args` as the unprivileged user `nobody`: the local attacker.
fn as_nobody(args: &[&str]) {
    let status = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(args)
        .status()
        .expect("setpriv (util-linux) runs");
    assert!(status.success(), "as nobody: {args:?}");
}

#[test]
fn links_planted_at_the_output_temp_name_are_never_written_through() {
    let d = setup();
    // An output directory the attacker can write (a shared build or /tmp-like directory without the sticky
    // protections), next to a root-only file they want overwritten.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = d.path().join("shadow");
    std::fs::write(&victim, b"root:precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(65534), Some(65534)).unwrap();
    for name in ["x.otter.tmp", "x.otter.new", "y.otter.tmp"] {
        as_nobody(&["ln", "-s", victim.to_str().unwrap(), out_dir.join(name).to_str().unwrap()]);
    }
    create(d.path(), "old.key", "out/x.otter");
    ok(d.path(), &["sign", "--key", "new.key", "out/x.otter", "-o", "out/y.otter"]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root:precious\n", "root wrote through a planted link");
    ok(d.path(), &["verify", "--key", "new.pub", "out/y.otter"]);
    // An existing output keeps its mode.
    std::fs::set_permissions(out_dir.join("x.otter"), std::fs::Permissions::from_mode(0o640)).unwrap();
    create(d.path(), "old.key", "out/x.otter");
    assert_eq!(std::fs::metadata(out_dir.join("x.otter")).unwrap().permissions().mode() & 0o777, 0o640);
    let mut names: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["x.otter", "x.otter.new", "x.otter.tmp", "y.otter", "y.otter.tmp"], "no temp file left");
}
