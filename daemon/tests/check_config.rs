//! Item 17: configuration cannot crash the daemon. Every value that used to wrap, overflow or make every update
//! fail is refused by `otterd --check-config` (the real binary), naming the file and the key.

use std::path::Path;
use std::process::Command;

const MINIMAL: &str = "[device]\ncompatible = \"gw\"\n[slots]\na = \"/dev/a\"\nb = \"/dev/b\"\n";
const SERVER: &str = "[server]\nurl = \"https://hb.example\"\ncontroller_id = \"gw-1\"\nauth = \"none\"\n";

fn check(root: &Path) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_otterd")).arg("--root").arg(root).arg("--check-config").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn values_that_overflow_wrap_or_fail_every_update_are_refused_with_file_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        // 307445734561825861 minutes wrapped to 44 s; u64::MAX seconds overflowed the trial deadline.
        ("[health]\ncommit_deadline = \"307445734561825861m\"\n", "health.commit_deadline", "maximum of 7 days"),
        ("[health]\ncommit_deadline = \"18446744073709551615\"\n", "health.commit_deadline", "maximum of 7 days"),
        ("[health]\ncommit_deadline = \"5124095576030431h\"\n", "health.commit_deadline", "maximum of 7 days"),
        ("[health]\ncommit_deadline = \"2d\"\n", "health.commit_deadline", "unknown unit"),
        ("[health]\ncommit_deadline = \"3s\"\n", "health.commit_deadline", "between 10s and 86400s"),
        // A check timeout of zero fails every check: every update would roll back.
        ("[health]\nscript_timeout = \"0s\"\n", "health.script_timeout", "between 1s and 3600s"),
        (
            "[[health.command]]\nname = \"app\"\nrun = [\"true\"]\ntimeout = \"0s\"\n",
            "health.command",
            "health.command[0].timeout: 0s is not between 1s and 3600s",
        ),
        // 2^44 MiB << 20 wrapped to 0.
        ("[install]\nmax_window_mib = 17592186044416\n", "install.max_window_mib", "not between 1 and 1024"),
        ("[install]\nmax_window_mib = 0\n", "install.max_window_mib", "not between 1 and 1024"),
        ("[install]\ndecoders = 0\n", "install.decoders", "not between 1 and 16"),
        ("[install]\ndecoders = 17\n", "install.decoders", "not between 1 and 16"),
        ("[server]\npoll_max = \"307445734561825861m\"\n", "server.poll_max", "maximum of 7 days"),
        ("[server]\ntimeout = \"18446744073709551615ms\"\n", "server.timeout", "maximum of 7 days"),
    ];
    for (text, key, message) in cases {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc/otter/conf.d");
        std::fs::create_dir_all(&etc).unwrap();
        let base = if text.starts_with("[server]") { format!("{MINIMAL}{SERVER}") } else { MINIMAL.to_owned() };
        std::fs::write(d.path().join("etc/otter/otter.toml"), base).unwrap();
        std::fs::write(etc.join("50-bad.toml"), text).unwrap();
        let (ok, out) = check(d.path());
        assert!(!ok, "{text:?} was accepted: {out}");
        assert!(!out.contains("panicked"), "{text:?}: {out}");
        assert!(out.contains("50-bad.toml"), "{text:?}: the file is named: {out}");
        assert!(out.contains(key), "{text:?}: the key {key} is named: {out}");
        assert!(out.contains(message), "{text:?}: {message:?} in {out}");
    }
    // The bounds themselves are fine.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("etc/otter")).unwrap();
    let good = "[health]\ncommit_deadline = \"24h\"\nscript_timeout = \"1s\"\n[install]\nmax_window_mib = 1024\ndecoders = 16\n";
    std::fs::write(d.path().join("etc/otter/otter.toml"), format!("{MINIMAL}{good}")).unwrap();
    let (ok, out) = check(d.path());
    assert!(ok, "{out}");
}
