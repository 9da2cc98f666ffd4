//! otterctl without a daemon: usage errors and one-line connection errors. (Against a real daemon on a private
//! dbus-daemon: daemon/tests/dbus.rs, which also needs this package's binary built.)

use std::process::Command;

fn otterctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_otterctl")).args(args).output().unwrap()
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    assert_eq!(otterctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(otterctl(&["mark", "sideways"]).status.code(), Some(2));
}

#[test]
fn unreachable_bus_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix:path={}/nobody-listens", dir.path().display());
    let out = otterctl(&["--address", &addr, "status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("otterctl: cannot connect to the bus at unix:path="), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
