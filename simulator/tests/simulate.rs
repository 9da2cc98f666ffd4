//! The README's main job, run as a test: the full simulated update (commit) and the broken one (rollback).

#[test]
fn simulated_update_commits_and_broken_update_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otter-simulate"))
        .arg("--work")
        .arg(dir.path().join("sim"))
        .env("OTTER_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("committed: version 2.0 on slot B"), "{stdout}");
    assert!(stdout.contains("rolled back: running slot A again"), "{stdout}");
    // The trial boot really happened in the new slot before each outcome.
    assert_eq!(stdout.matches("U-Boot boot script picks slot B").count(), 2, "{stdout}");
}
