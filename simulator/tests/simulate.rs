//! The README's main job, run as a test: the full simulated update (commit), the broken one (rollback), and the one
//! cut off by a power failure (resumed, committed).

#[test]
fn simulated_update_commits_broken_update_rolls_back_interrupted_update_resumes() {
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
    assert_eq!(stdout.matches("U-Boot boot script picks slot B").count(), 3, "{stdout}");
    // Scenario 3: the power failed with chunks recorded; after the restart only the rest of the file was fetched.
    let cut = &stdout[stdout.find("=== scenario 3").expect("scenario 3 ran")..];
    assert!(cut.contains("POWER FAILURE"), "{cut}");
    assert!(!cut.contains("says the first 0 chunks"), "{cut}");
    assert!(cut.contains("artifact download: bytes="), "{cut}");
    assert!(cut.contains("interrupted one resumed and was committed"), "{cut}");
}
