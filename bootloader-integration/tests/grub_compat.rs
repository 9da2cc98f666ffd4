//! Compatibility of otter's grubenv codec with `grub-editenv` (Debian `grub-common`), both
//! directions, and the GRUB backend's file handling.

mod common;

use std::path::Path;
use std::process::Command;

use common::{run, tool};
use otter_bootloader::grub::{GRUBENV_SIZE, GrubBackend, GrubEnv};
use otter_bootloader::{BootBackend, BootError, Slot, SlotState};

fn editenv(file: &Path, args: &[&str]) -> String {
    let out = run(Command::new(tool("grub-editenv", "grub-common")).arg(file).args(args));
    String::from_utf8(out.stdout).unwrap()
}

/// Values that need escaping, and one that fills a good part of the block.
fn tricky() -> Vec<(&'static str, String)> {
    vec![
        ("ORDER", "A B".to_owned()),
        ("A_OK", "1".to_owned()),
        ("backslash", "C:\\dir\\".to_owned()),
        ("newline", "line1\nline2\n".to_owned()),
        ("both", "a\\\nb".to_owned()),
        ("empty", String::new()),
        ("name with spaces", "x = y".to_owned()),
        ("utf8", "grüße ✓".to_owned()),
        ("long", "L".repeat(600)),
    ]
}

fn listing(vars: &[(&str, String)]) -> String {
    vars.iter().map(|(n, v)| format!("{n}={v}\n")).collect()
}

#[test]
fn grub_editenv_reads_what_otter_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grubenv");
    let mut env = GrubEnv::new();
    for (n, v) in tricky() {
        env.set(n, &v).unwrap();
    }
    std::fs::write(&file, env.to_bytes().unwrap()).unwrap();
    assert_eq!(editenv(&file, &["list"]), listing(&tricky()));
    // grub-editenv can modify otter's block, and otter reads the result.
    editenv(&file, &["set", "added=1", "ORDER=B A"]);
    editenv(&file, &["unset", "empty"]);
    let back = GrubEnv::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(back.get("added"), Some("1"));
    assert_eq!(back.get("ORDER"), Some("B A"));
    assert_eq!(back.get("empty"), None);
    assert_eq!(back.get("both"), Some("a\\\nb"));
    assert_eq!(back.size(), GRUBENV_SIZE);
}

#[test]
fn otter_reads_what_grub_editenv_writes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grubenv");
    editenv(&file, &["create"]);
    let args: Vec<String> = tricky().iter().map(|(n, v)| format!("{n}={v}")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    editenv(&file, &[&["set"], &args[..]].concat());
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), GRUBENV_SIZE);
    let env = GrubEnv::from_bytes(&bytes).unwrap();
    let got: Vec<(String, String)> = env
        .iter()
        .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    let want: Vec<(String, String)> = tricky().into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
    assert_eq!(got, want);
    // Re-encoded by otter, grub-editenv lists the same.
    std::fs::write(&file, env.to_bytes().unwrap()).unwrap();
    assert_eq!(editenv(&file, &["list"]), listing(&tricky()));
}

#[test]
fn oversize_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grubenv");
    let mut env = GrubEnv::new();
    env.set("A_OK", "1").unwrap();
    env.set("B_OK", "1").unwrap();
    env.set("big", &"x".repeat(960)).unwrap();
    std::fs::write(&file, env.to_bytes().unwrap()).unwrap();
    assert!(editenv(&file, &["list"]).contains("B_OK=1"));
    let before = std::fs::read(&file).unwrap();
    let mut backend = GrubBackend::open(&file).unwrap();
    backend.set_try_next(Slot::B).unwrap();
    // ORDER, B_TRY and OTTER_TRIAL no longer fit next to the 960-byte variable.
    let err = backend.store().unwrap_err();
    assert!(matches!(&err, BootError::GrubEnv { reason, .. } if reason.to_string().contains("bytes")), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn invalid_block_is_an_error_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grubenv");
    let junk = b"# GRUB Environment Blok\nA_OK=1\n".to_vec();
    std::fs::write(&file, &junk).unwrap();
    let err = GrubBackend::open(&file).unwrap_err();
    assert!(matches!(err, BootError::GrubEnv { .. }), "{err}");
    assert!(err.to_string().contains("grubenv"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), junk);
    let err = GrubBackend::open(dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, BootError::Io { .. }), "{err}");
}

#[test]
fn backend_store_is_atomic_and_seen_by_grub_editenv() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grubenv");
    editenv(&file, &["create"]);
    editenv(&file, &["set", "ORDER=A B", "A_OK=1", "A_TRY=0", "B_OK=0", "B_TRY=0", "keep=me"]);
    let mut backend = GrubBackend::open(&file).unwrap();
    assert_eq!(backend.slot_state(Slot::B), SlotState::Bad);
    backend.set_try_next(Slot::B).unwrap();
    assert!(editenv(&file, &["list"]).contains("ORDER=A B\n"), "nothing written before store");
    backend.store().unwrap();
    let list = editenv(&file, &["list"]);
    for line in ["ORDER=B A\n", "B_OK=1\n", "B_TRY=0\n", "OTTER_TRIAL=B\n", "keep=me\n"] {
        assert!(list.contains(line), "{line:?} missing in {list:?}");
    }
    assert_eq!(std::fs::metadata(&file).unwrap().len(), GRUBENV_SIZE as u64);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["grubenv".to_owned()], "temp file left behind");
    // GRUB booted B (it sets B_TRY=1); the daemon sees the running last attempt.
    editenv(&file, &["set", "B_TRY=1"]);
    backend.reload().unwrap();
    assert_eq!(backend.slot_state(Slot::B), SlotState::Trying { attempts_left: 0 });
}

#[test]
fn a_symlinked_grubenv_is_written_through() {
    // Some images keep the block on the ESP and link /boot/grub/grubenv to it; GRUB reads the target.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("esp")).unwrap();
    let target = dir.path().join("esp/grubenv");
    editenv(&target, &["create"]);
    editenv(&target, &["set", "ORDER=A B", "A_OK=1", "B_OK=1", "A_TRY=0", "B_TRY=0"]);
    let link = dir.path().join("grubenv");
    std::os::unix::fs::symlink("esp/grubenv", &link).unwrap();
    let mut backend = GrubBackend::open(&link).unwrap();
    backend.set_try_next(Slot::B).unwrap();
    backend.store().unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
    assert!(editenv(&target, &["list"]).contains("ORDER=B A"), "{}", editenv(&target, &["list"]));
}
