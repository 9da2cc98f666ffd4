//! A corrupt U-Boot environment (no copy passes its CRC) is reported, refuses updates with a clear reason, and is
//! never written over: the daemon keeps running and the bytes on storage stay as they were.

use std::time::Duration;

use otterd::fixture::{Device, DeviceSpec};
use otterd::runtime::{Command, Runtime};

#[test]
fn corrupt_env_is_reported_refuses_installs_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.path().join("release")).unwrap();
    let device = Device::create(
        &dir.path().join("root"),
        &DeviceSpec::new("corrupt-env-test", &dir.path().join("release.pub")),
        None,
    )
    .unwrap();
    let env_file = device.root.join("boot/uboot.env");
    let mut bytes = std::fs::read(&env_file).unwrap();
    bytes[0] ^= 0xff; // the CRC no longer matches
    std::fs::write(&env_file, &bytes).unwrap();

    let settings = otterd::config::load(&device.root).unwrap();
    let (runtime, handle) = Runtime::start(settings, Box::new(otterd::sim::SimPlatform)).unwrap();
    let status = handle.status();
    let error = status.error.clone().expect("the corrupt env is reported in the status");
    assert!(error.contains("corrupt"), "{error}");
    assert!(status.line().contains("cannot update"), "{}", status.line());

    let thread = std::thread::spawn(move || runtime.run());
    let refused = handle.install("/anything.otter", false).unwrap_err().to_string();
    assert!(refused.contains("bootloader environment unusable"), "{refused}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!thread.is_finished(), "the daemon keeps running");
    handle.send(Command::Stop);
    thread.join().unwrap();
    assert_eq!(std::fs::read(&env_file).unwrap(), bytes, "nothing was written over the corrupt env");
    assert!(handle.status().job.is_none(), "no job was started");
}
