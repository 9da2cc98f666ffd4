//! The README's main job, run as a test: the full simulated update (commit), the broken one (rollback), the one
//! cut off by a power failure (resumed, committed), the monthly fix by delta (only the delta downloaded; a device
//! on another release falls back to the full artifact), and the fleet on otter-server with real otterd gateways (a
//! canary rollout with an approval that reaches everyone; a broken release that halts at its canary).

#[test]
fn simulated_update_commits_broken_update_rolls_back_interrupted_update_resumes_delta_downloads_only_the_delta() {
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
    assert_eq!(stdout.matches("U-Boot boot script picks slot B").count(), 5, "{stdout}");
    // Scenario 3: the power failed with chunks recorded; after the restart only the rest of the file was fetched.
    let cut = &stdout[stdout.find("=== scenario 3").expect("scenario 3 ran")..];
    assert!(cut.contains("POWER FAILURE"), "{cut}");
    assert!(!cut.contains("says the first 0 chunks"), "{cut}");
    assert!(cut.contains("artifact download: bytes="), "{cut}");
    assert!(cut.contains("interrupted one resumed and was committed"), "{cut}");
    // Scenario 4: the device running 1.0 downloaded the delta alone (the simulator fails when the bytes it was
    // sent are not the delta's size, or the full artifact was requested); the one running 1.0.1 fell back to the
    // full artifact (the simulator fails unless it opened the delta once and the full artifact once, whole).
    let fix = &stdout[stdout.find("=== scenario 4:").expect("scenario 4 ran")..stdout.find("=== fleet").unwrap()];
    assert!(fix.contains("the whole of update-1.1-from-1.0.otter"), "{fix}");
    assert!(fix.contains("bytes: the delta; the full artifact is"), "{fix}");
    assert!(fix.contains("the full artifact was never requested"), "{fix}");
    let on_base = &fix[..fix.find("=== scenario 4, second device").expect("the second device ran")];
    assert!(!on_base.contains("the whole of update-1.1.otter"), "{on_base}");
    assert!(on_base.contains("committed: version 1.1 on slot B"), "{on_base}");
    let elsewhere = &fix[fix.find("=== scenario 4, second device").unwrap()..];
    assert!(elsewhere.contains("otterd starts on slot A (version 1.0.1)"), "{elsewhere}");
    assert!(elsewhere.contains("the whole of update-1.1-from-1.0.otter"), "{elsewhere}");
    assert!(elsewhere.contains("the whole of update-1.1.otter"), "{elsewhere}");
    assert!(elsewhere.contains("opened the delta once"), "{elsewhere}");
    assert!(elsewhere.contains("otterd refused it before writing anything"), "{elsewhere}");
    assert!(elsewhere.contains("committed: version 1.1 on slot B"), "{elsewhere}");
    assert!(fix.contains("ok: the device running 1.0 installed 1.1 from a"), "{fix}");
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
