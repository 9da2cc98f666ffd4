//! Install and health-check jobs: each runs on its own thread and reports back through the loop's channel.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otter_artifact::{Keyring, Limits, Policy};
use otter_bootloader::Slot;
use otter_installer::{CancelToken, InstallError, InstallRequest, Progress, Source, Target};

use super::{Msg, Runtime};
use crate::engine::{ArtifactInfo, Event, FailureCause};
use crate::health::{self};

/// How the engine sees an install error: decided by variant, never by the error's code string.
fn failure_cause(e: &InstallError) -> FailureCause {
    match e {
        InstallError::Cancelled => FailureCause::Cancelled,
        e if e.is_artifact_fault() => FailureCause::Artifact,
        _ => FailureCause::Other,
    }
}

impl Runtime {
    /// An install thread ended: feed its result to the engine.
    pub(super) fn install_done(&mut self, result: Result<otter_installer::InstallReport, InstallError>, now: u64) {
        if let Some((thread, _)) = self.install.take() {
            let _ = thread.join();
        }
        let event = match result {
            Ok(report) => {
                tracing::info!(
                    "installed {} ({} bytes written, {} received, {} chunks resumed) in {:.1}s",
                    report.manifest.version,
                    report.bytes_written,
                    report.bytes_received,
                    report.chunks_resumed,
                    report.elapsed.as_secs_f64()
                );
                if let Some(e) = &report.checkpoint_error {
                    tracing::warn!("the install could not keep its resume record: {e}");
                }
                Event::InstallSucceeded {
                    artifact: ArtifactInfo {
                        digest: report.manifest_digest.to_string(),
                        version: report.manifest.version.clone(),
                        security_version: report.manifest.security_version,
                    },
                    now,
                }
            }
            Err(e) => {
                tracing::error!("install failed: {e}");
                Event::InstallFailed {
                    code: e.code().to_owned(),
                    message: e.to_string(),
                    digest: self.last_digest.take(),
                    cause: failure_cause(&e),
                    now,
                }
            }
        };
        self.dispatch(event);
    }

    pub(super) fn start_install(
        &mut self,
        source: String,
        target: Slot,
        min_security_version: u64,
        refuse: Vec<String>,
    ) {
        let keyring = Keyring::from_dir(&self.settings.keyring_dir);
        let tx = self.tx.clone();
        let keyring = match keyring {
            Ok(k) => k,
            Err(e) => {
                let _ = tx.send(Msg::InstallDone(Box::new(Err(InstallError::Artifact(e)))));
                return;
            }
        };
        let policy = Policy {
            device_type: Some(self.settings.compatible.clone()),
            min_security_version,
            limits: Limits { max_window: self.settings.max_window, ..Limits::default() },
        };
        let path = self.settings.slot_path(target).to_owned();
        let mut req = InstallRequest::new(
            Source::parse(&source),
            // A delta is patched against the image this device runs.
            vec![Target {
                slot_class: "rootfs".into(),
                path,
                max_size: self.settings.slot_size,
                base: Some(self.settings.slot_path(!target).to_owned()),
            }],
            keyring,
            policy,
        );
        req.skip_identical = self.settings.skip_identical;
        req.decode_threads = self.settings.decoders;
        // An install cut off by a power failure or a restart continues from here when the same artifact comes
        // again (the server retries the deployment, or the user re-runs the install).
        req.resume_file = Some(self.settings.state_dir.join("install-resume.json"));
        if let Some(server) = &self.settings.server {
            req.stall_timeout = server.stall_timeout;
        }
        let mut fallbacks = Vec::new();
        if let Some(options) = self.install_settings.take() {
            req.http = options.http;
            fallbacks = options.fallbacks;
            if let Some(locator) = options.locator {
                req.source = Source::parse(&locator);
            }
            if let Some(fd) = options.fd {
                req.source = Source::Fd { fd, name: source.clone() };
            }
        }
        req.refuse = refuse.iter().filter_map(|d| d.parse().ok()).collect();
        let cancel = CancelToken::new();
        self.last_digest = None;
        let thread_cancel = cancel.clone();
        tracing::info!("installing {source} into slot {target}");
        let thread = std::thread::spawn(move || {
            let last = Mutex::new(Instant::now());
            let progress = |p: &Progress| {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                // At most ten updates a second reach the loop; phase changes always do.
                if p.phase == otter_installer::Phase::Writing && last.elapsed() < Duration::from_millis(100) {
                    return;
                }
                *last = Instant::now();
                let _ = tx.send(Msg::Progress(*p));
            };
            let mut result = otter_installer::install(&req, &progress, &thread_cancel);
            for fallback in fallbacks {
                // Only a delta made for another base is replaced, and it failed before writing anything.
                match &result {
                    Err(e) if e.is_delta_for_another_base() => {
                        tracing::info!("{e}; installing {} instead", otter_common::redact::url(&fallback.source));
                    }
                    _ => break,
                }
                req.source = Source::parse(&fallback.source);
                req.http = fallback.http;
                result = otter_installer::install(&req, &progress, &thread_cancel);
            }
            // The pipeline's buffers are freed: give the pages back, whatever the outcome.
            crate::memory::release();
            let _ = tx.send(Msg::InstallDone(Box::new(result)));
        });
        self.install = Some((thread, cancel));
    }

    pub(super) fn start_health(&mut self) {
        let cancel = Arc::new(AtomicBool::new(false));
        self.health_cancel = Some(cancel.clone());
        let settings = self.settings.health.trial_checks();
        let deadline = Instant::now() + self.settings.commit_deadline;
        let tx = self.tx.clone();
        tracing::info!("assessing the trial boot: health checks, deadline {:?}", self.settings.commit_deadline);
        std::thread::spawn(move || {
            let result = health::run_all(&settings, deadline, &cancel);
            let _ = tx.send(Msg::HealthDone(result));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_errors_are_classified_by_variant() {
        assert_eq!(failure_cause(&InstallError::Cancelled), FailureCause::Cancelled);
        assert_eq!(failure_cause(&InstallError::Refused { digest: "d".into() }), FailureCause::Artifact);
        assert_eq!(
            failure_cause(&InstallError::Artifact(otter_artifact::ArtifactError::TrailingData)),
            FailureCause::Artifact
        );
        let stalled = InstallError::Stalled { source_name: "x".into(), seconds: 120 };
        assert_eq!(failure_cause(&stalled), FailureCause::Other);
        let lost = InstallError::ConnectionLost { url: "u".into(), attempts: 3, position: 0, last_error: "e".into() };
        assert_eq!(failure_cause(&lost), FailureCause::Other);
        // A bad signature is not the artifact's fault for blacklisting purposes (a key rotation may fix it).
        let unsigned = InstallError::Artifact(otter_artifact::ArtifactError::NotSigned);
        assert_eq!(failure_cause(&unsigned), FailureCause::Other);
    }
}
