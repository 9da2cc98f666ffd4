//! `otter-artifact` end to end: every subcommand through the real binary, including errors as one line on stderr.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use otter_artifact::testing::noise;

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
    create_from(dir, key, "rootfs=rootfs.img", out);
}

/// `create` with `image` as its `--image NAME=FILE`.
fn create_from(dir: &Path, key: &str, image: &str, out: &str) {
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
            image,
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

/// `delta` from `from` to `to` into `out`, trusting `trust`, signed with old.key; small window, quick level. Level 4,
/// not 3: zstd indexes only the last `1 << max(hashLog + 3, chainLog + 1)` bytes of a reference prefix, 1 MiB at
/// level 3 and 2 MiB at level 4, and the regions here are up to 2 MiB + 64 KiB.
fn delta_args<'a>(from: &'a str, to: &'a str, out: &'a str, trust: &'a str) -> Vec<&'a str> {
    let args = ["delta", "--from", from, "--to", to, "-o", out, "--key", "old.key", "--trust-key", trust];
    [&args[..], &["--window-mib", "1", "--level", "4"]].concat()
}

/// old.img (3 MiB of noise) and new.img (old.img with 1000 bytes inserted at 1 MiB, which shifts everything
/// after it, and 64 KiB replaced at 2 MiB), their full artifacts old.otter and new.otter (64 KiB chunks, signed
/// with old.key), and d.otter, the delta between them.
struct Delta {
    dir: tempfile::TempDir,
    old: Vec<u8>,
    new: Vec<u8>,
}

impl Delta {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path().join(name)).unwrap()
    }

    fn manifest(&self, artifact: &str) -> serde_json::Value {
        let j: serde_json::Value = serde_json::from_str(&ok(self.path(), &["inspect", "--json", artifact])).unwrap();
        j["manifest"].clone()
    }
}

fn delta_setup() -> (Delta, String) {
    let dir = setup();
    let old = noise(3 << 20, 1);
    let mut new = old[..1 << 20].to_vec();
    new.extend(noise(1000, 2));
    new.extend_from_slice(&old[1 << 20..]);
    new[2 << 20..(2 << 20) + (64 << 10)].copy_from_slice(&noise(64 << 10, 3));
    std::fs::write(dir.path().join("old.img"), &old).unwrap();
    std::fs::write(dir.path().join("new.img"), &new).unwrap();
    create_from(dir.path(), "old.key", "rootfs=old.img", "old.otter");
    create_from(dir.path(), "old.key", "rootfs=new.img", "new.otter");
    let out = ok(dir.path(), &delta_args("old.otter", "new.otter", "d.otter", "old.pub"));
    (Delta { dir, old, new }, out)
}

/// The directory's entries, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn a_delta_is_a_fraction_of_the_new_artifact_verifies_with_its_base_and_installs_the_new_image() {
    let (d, out) = delta_setup();
    // One line per payload, then the summary.
    let line = out.lines().next().unwrap();
    assert!(line.starts_with("rootfs: delta against OLD's \"rootfs\", ") && line.contains("chunks patched"), "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");

    let (m, full) = (d.manifest("d.otter"), d.manifest("new.otter"));
    let (p, n) = (&m["payloads"][0], &full["payloads"][0]);
    assert_eq!((m["format_version"].as_str(), p["kind"].as_str()), (Some("1.2"), Some("slot-delta")), "{m}");
    assert_eq!(full["format_version"], "1.1", "a full artifact stays 1.1");
    // NEW's manifest fields and image, OLD's image as the base.
    for field in ["compatible", "version", "security_version", "created"] {
        assert_eq!(m[field], full[field], "{field}");
    }
    assert_eq!((&p["sha256"], &p["size"], &p["chunk_size"]), (&n["sha256"], &n["size"], &n["chunk_size"]));
    assert_eq!(p["base"]["size"], d.old.len());
    assert_eq!(p["base"]["sha256"], d.manifest("old.otter")["payloads"][0]["sha256"]);
    // What is left is the 1000 inserted and 64 KiB changed bytes of noise, plus each chunk's frame overhead.
    let (stored, new_stored) = (p["stored_size"].as_u64().unwrap(), n["stored_size"].as_u64().unwrap());
    assert!(new_stored > 3 << 20, "noise does not compress: {new_stored}");
    assert!(stored < new_stored / 20, "delta of {stored} bytes for a {new_stored}-byte artifact");
    let patched = p["chunks"].as_array().unwrap().iter().filter(|c| c.get("reference").is_some()).count();
    assert!(patched >= 45, "{patched} of 49 chunks patched");
    assert!(line.contains(&format!("{stored} bytes stored, NEW stores {new_stored} bytes")), "{line}");

    let text = ok(d.path(), &["inspect", "d.otter"]);
    let base_line = format!(
        "kind slot-delta: base of {} bytes in chunks of 64 KiB, sha256 {}",
        d.old.len(),
        p["base"]["sha256"].as_str().unwrap()
    );
    assert!(text.contains(&base_line) && text.contains(&format!("{patched} of 49 chunks patched")), "{text}");

    let v = ok(d.path(), &["verify", "--key", "old.pub", "--base", "rootfs=old.img", "d.otter"]);
    assert!(v.contains("d.otter: valid, version 3.1"), "{v}");
    // `--trust-key` is `verify`'s `--key` too, as in `delta`.
    ok(d.path(), &["verify", "--trust-key", "old.pub", "--base", "rootfs=old.img", "d.otter"]);

    std::fs::write(d.path().join("slot.img"), noise(1 << 20, 7)).unwrap();
    ok(d.path(), &["install", "--key", "old.pub", "--slot", "slot.img", "--base", "old.img", "d.otter"]);
    assert!(d.read("slot.img") == d.new, "the slot holds NEW's image");
}

#[test]
fn a_delta_over_another_image_is_refused_before_anything_is_written() {
    let (d, _) = delta_setup();
    let mut other = d.old.clone();
    other[(3 << 20) / 2] ^= 1;
    std::fs::write(d.path().join("other.img"), &other).unwrap();
    let before = noise(4 << 20, 7);
    std::fs::write(d.path().join("slot.img"), &before).unwrap();

    let e = fails(d.path(), &["install", "--key", "old.pub", "--slot", "slot.img", "--base", "other.img", "d.otter"]);
    assert!(e.contains("the base differs from the delta's at byte"), "{e}");
    assert!(d.read("slot.img") == before, "the slot was written");
    // A base shorter than the delta's is not it either.
    std::fs::write(d.path().join("short.img"), &d.old[..2 << 20]).unwrap();
    let e = fails(d.path(), &["install", "--key", "old.pub", "--slot", "slot.img", "--base", "short.img", "d.otter"]);
    assert!(e.contains("the base differs from the delta's at byte"), "{e}");
    // The slot being written cannot be the base it is read from.
    let e = fails(d.path(), &["install", "--key", "old.pub", "--slot", "slot.img", "--base", "slot.img", "d.otter"]);
    assert!(e.contains("is its target slot"), "{e}");
    // Without a base, the error says how to give one.
    let e = fails(d.path(), &["install", "--key", "old.pub", "--slot", "slot.img", "d.otter"]);
    assert!(e.contains("is a delta") && e.contains("pass it with --base"), "{e}");
    assert!(d.read("slot.img") == before, "the slot was written");
}

#[test]
fn verifying_a_delta_needs_its_base() {
    let (d, _) = delta_setup();
    let e = fails(d.path(), &["verify", "--key", "old.pub", "d.otter"]);
    assert!(e.contains("payload \"rootfs\" is a delta") && e.contains("pass it with --base rootfs=IMAGE"), "{e}");
    // The wrong base (new.img has old.img's first MiB, then the inserted bytes), or one for a slot class the
    // artifact has no payload of.
    let e = fails(d.path(), &["verify", "--key", "old.pub", "--base", "rootfs=new.img", "d.otter"]);
    assert!(e.contains("the base differs from the delta's at byte 1048576 "), "{e}");
    let e = fails(d.path(), &["verify", "--key", "old.pub", "--base", "boot=old.img", "d.otter"]);
    assert!(e.contains("no payload of slot class \"boot\""), "{e}");
    // A damaged delta does not verify even with its base.
    let mut bytes = d.read("d.otter");
    let at = bytes.len() - 3000;
    bytes[at] ^= 0x40;
    std::fs::write(d.path().join("bad.otter"), bytes).unwrap();
    let e = fails(d.path(), &["verify", "--key", "old.pub", "--base", "rootfs=old.img", "bad.otter"]);
    assert!(e.contains("payload \"rootfs\""), "{e}");
}

#[test]
fn delta_refuses_inputs_that_do_not_verify_or_are_not_full_artifacts_and_writes_nothing() {
    let (d, _) = delta_setup();
    // A byte of a payload flipped in OLD or in NEW: the signed stored hashes catch it.
    for name in ["old.otter", "new.otter"] {
        let mut bytes = d.read(name);
        let at = bytes.len() - 5000;
        bytes[at] ^= 0x40;
        std::fs::write(d.path().join(format!("bad-{name}")), bytes).unwrap();
    }
    // NEW signed with a key the delta's maker does not trust.
    create_from(d.path(), "new.key", "rootfs=new.img", "foreign.otter");
    // A NEW with nothing in common with OLD.
    create_from(d.path(), "old.key", "boot=new.img", "boot.otter");
    let before = listing(d.path());
    let cases = [
        ("bad-old.otter", "new.otter", "old.pub", "OLD bad-old.otter"),
        ("old.otter", "bad-new.otter", "old.pub", "NEW bad-new.otter"),
        ("old.otter", "foreign.otter", "old.pub", "unknown keys"),
        ("old.otter", "new.otter", "new.pub", "unknown keys"),
        ("d.otter", "new.otter", "old.pub", "OLD d.otter: payload \"rootfs\" is a delta"),
        ("old.otter", "d.otter", "old.pub", "NEW d.otter: payload \"rootfs\" is a delta"),
        ("old.otter", "boot.otter", "old.pub", "OLD and NEW share no slot class (OLD has rootfs, NEW has boot)"),
    ];
    for (from, to, trust, want) in cases {
        let e = fails(d.path(), &delta_args(from, to, "out.otter", trust));
        assert!(e.contains(want), "{from} -> {to}: {e}");
        assert_eq!(listing(d.path()), before, "{from} -> {to} left a file");
    }
    // An existing output is left alone too.
    let e = fails(d.path(), &delta_args("bad-old.otter", "new.otter", "d.otter", "old.pub"));
    assert!(e.contains("OLD bad-old.otter"), "{e}");
    let m = d.manifest("d.otter");
    assert_eq!(m["payloads"][0]["kind"], "slot-delta");
}

#[test]
fn a_new_payload_without_an_old_counterpart_stays_a_full_payload() {
    let (d, _) = delta_setup();
    let args = ["create", "--key", "old.key", "--compatible", "gw-a", "--version", "4", "--level", "3"];
    let images = ["--image", "rootfs=new.img", "--image", "boot=rootfs.img", "--chunk-size-kib", "64"];
    ok(d.path(), &[&args[..], &images, &["-o", "two.otter"]].concat());
    let out = ok(d.path(), &delta_args("old.otter", "two.otter", "d2.otter", "old.pub"));
    assert!(out.lines().nth(1).unwrap().starts_with("boot: full (OLD has no slot class \"boot\"), "), "{out}");
    let m = d.manifest("d2.otter");
    assert_eq!(m["format_version"], "1.2");
    let kinds: Vec<&str> = m["payloads"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["slot-delta", "slot-image"]);
    assert!(m["payloads"][1].get("base").is_none());
    // The full payload needs no base; the delta does.
    ok(d.path(), &["verify", "--key", "old.pub", "--base", "rootfs=old.img", "d2.otter"]);
    let e = fails(d.path(), &["verify", "--key", "old.pub", "--base", "boot=old.img", "d2.otter"]);
    assert!(e.contains("pass it with --base rootfs=IMAGE"), "{e}");
}
