//! Runtime behaviour that needs its private seams (events the outside cannot inject).

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::Runtime;
use crate::engine::Event;
use crate::fixture::{Device, DeviceSpec};

/// Log lines, captured.
#[derive(Clone, Default)]
pub(super) struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A subscriber that writes into `captured`, for `tracing::subscriber::with_default`.
pub(super) fn capture(captured: &Captured) -> impl tracing::Subscriber + Send + Sync {
    let c = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || c.clone())
        .finish()
}

pub(super) fn device(dir: &std::path::Path) -> Device {
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.join("release")).unwrap();
    Device::create(&dir.join("root"), &DeviceSpec::new("runtime-test", &dir.join("release.pub")), None).unwrap()
}

#[test]
fn an_event_in_the_wrong_phase_is_logged_as_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let device = device(dir.path());
    let settings = crate::config::load(&device.root).unwrap();
    let captured = Captured::default();
    tracing::subscriber::with_default(capture(&captured), || {
        let (mut rt, _handle) = Runtime::start(settings, Box::new(crate::sim::SimPlatform)).unwrap();
        assert!(rt.engine.job().is_none(), "idle");
        rt.dispatch(Event::HealthPassed { now: 1 });
        rt.dispatch(Event::InstallSucceeded {
            artifact: crate::engine::ArtifactInfo { digest: "d".into(), version: "2".into(), security_version: 0 },
            now: 1,
        });
    });
    let log = captured.text();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warns.iter().any(|l| l.contains("health-passed") && l.contains("idle")), "{log}");
    assert!(warns.iter().any(|l| l.contains("install-succeeded") && l.contains("idle")), "{log}");
}
