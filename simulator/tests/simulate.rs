//! The README's main job, run as a test: the full simulated update (commit), the broken one (rollback), the one
//! cut off by a power failure (resumed, committed), and the fleet on otter-server with real otterd gateways (a
//! canary rollout with an approval that reaches everyone; a broken release that halts at its canary).

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
    // The fleet: every gateway committed 2.0 through the rollout, after an approver let the second group start.
    let fleet = &stdout[stdout.find("=== fleet").expect("the fleet ran")..];
    for i in 1..=6 {
        assert!(fleet.contains(&format!("gw-0{i}: 2.0 committed on slot B")), "gw-0{i}: {fleet}");
    }
    assert!(fleet.contains("approver: group half approved"), "{fleet}");
    assert!(fleet.contains("rollout 1 \"2.0 to the field\": finished"), "{fleet}");
    // 2.1 failed on its canary, which rolled back; the rollout paused itself before anyone else got it.
    assert!(fleet.contains("gw-02: 2.1 rolled back"), "{fleet}");
    assert!(fleet.contains("the rollout paused itself: group canary: 1 of 1 devices failed"), "{fleet}");
    assert!(fleet.contains("fleet: 6 on 2.0 — no other gateway was offered 2.1"), "{fleet}");
    assert!(!fleet.contains("2.1 committed"), "{fleet}");
    assert!(fleet.contains("hash chain intact: true"), "{fleet}");
}
