//! Deployments offered by the poll: start the install (or download only), fail an action with its reason, answer
//! a server's cancel request.

use std::sync::mpsc;

use super::PART;
use super::client::{DdiClient, DdiError, action_id};
use super::model::{self, DeploymentBase, Execution, Feedback, Finished, HandlingType, MaintenanceWindow};
use super::worker::{Worker, interrupted};
use crate::engine::{JobPhase, Outcome, Rejection};
use crate::runtime::{Command, InstallSettings};

impl Worker {
    pub(super) fn deployment(&mut self, href: &str) -> Result<(), DdiError> {
        let id =
            action_id(href).ok_or_else(|| DdiError::Malformed { url: href.into(), message: "no action id".into() })?;
        if self.reported.get(&id).closed {
            tracing::debug!("hawkbit: action {id} already reported closed");
            return Ok(());
        }
        self.status = self.handle.status();
        if let Some(job) = &self.status.job {
            if job.remote_id.as_deref() == Some(id.as_str()) {
                if job.phase == JobPhase::AwaitingReboot {
                    // The server may have turned a soft action into a forced one (its link's `c` changed).
                    let d = self.client.deployment(href)?;
                    if d.deployment.update == HandlingType::Forced {
                        self.forced.insert(id);
                    }
                }
            } else {
                tracing::info!("hawkbit: action {id} waits: job {} is in progress", job.id);
            }
            return Ok(());
        }
        if let Some(last) = self.status.last.clone()
            && last.job.remote_id.as_deref() == Some(id.as_str())
            && !interrupted(&last)
        {
            self.final_result(last);
            return Ok(());
        }
        let d = self.client.deployment(href)?;
        self.start(&id, href, &d)
    }

    fn fail(&mut self, id: &str, details: Vec<String>) {
        tracing::error!("hawkbit: action {id} failed: {}", details.join("; "));
        let f = Feedback::new(Execution::Closed, Finished::Failure, details);
        match self.client.deployment_feedback(id, &f) {
            Ok(()) | Err(DdiError::Gone { .. }) => self.reported.update(id, |r| r.closed = true),
            Err(e) => tracing::warn!("hawkbit: reporting failure of action {id}: {e}"),
        }
    }

    fn start(&mut self, id: &str, href: &str, d: &DeploymentBase) -> Result<(), DdiError> {
        let dep = &d.deployment;
        let Some((chunk, artifact)) = dep.artifact(PART) else {
            let names: Vec<&str> =
                dep.chunks.iter().flat_map(|c| c.artifacts.iter().map(|a| a.filename.as_str())).collect();
            self.fail(id, vec![format!("no .otter artifact in a chunk of part {PART:?} (artifacts: {names:?})")]);
            return Ok(());
        };
        let Some(url) = artifact.url().map(str::to_owned) else {
            self.fail(id, vec![format!("artifact {} has no download link", artifact.filename)]);
            return Ok(());
        };
        let expected_sha256 = match artifact.hashes.sha256.as_deref().map(parse_sha256) {
            Some(Some(h)) => Some(h),
            Some(None) => {
                self.fail(id, vec![format!("artifact {} has an invalid sha256", artifact.filename)]);
                return Ok(());
            }
            None => {
                tracing::warn!("hawkbit: artifact {} has no sha256; relying on the signature", artifact.filename);
                None
            }
        };
        if dep.download == HandlingType::Skip {
            tracing::info!("hawkbit: action {id}: download skipped for now");
            return Ok(());
        }
        let window_closed = dep.maintenance_window == Some(MaintenanceWindow::Unavailable);
        if dep.update == HandlingType::Skip || window_closed {
            return self.download_only(id, artifact, &url, expected_sha256, window_closed);
        }
        let mut http = self.client.download_options();
        let (client, href_owned, filename) = (self.client.clone(), href.to_owned(), artifact.filename.clone());
        // A pre-signed link expired: the deployment again, for a fresh link to the same file.
        http.refresh = Some(otter_installer::UrlRefresh::new(move || {
            let d = client.deployment(&href_owned).ok()?;
            let (_, a) = d.deployment.artifact(PART).filter(|(_, a)| a.filename == filename)?;
            a.url().map(str::to_owned)
        }));
        let (reply, rx) = mpsc::channel();
        self.handle.send(Command::InstallRemote {
            source: url,
            remote_id: id.to_owned(),
            options: Box::new(InstallSettings { http, expected_sha256, fd: None }),
            reply,
        });
        match rx.recv().unwrap_or_else(|_| Err(Rejection::NotNow("the daemon stopped".into()))) {
            Ok(job) => {
                tracing::info!("hawkbit: action {id}: installing {} {} as job {job}", chunk.name, chunk.version);
                if dep.update == HandlingType::Forced {
                    self.forced.insert(id.to_owned());
                }
                self.status = self.handle.status();
                let target = self.status.job.as_ref().map_or("?".into(), |j| j.target.to_string());
                let details = vec![format!(
                    "downloading {} ({} {}, {} bytes) into slot {target}",
                    artifact.filename, chunk.name, chunk.version, artifact.size
                )];
                self.last_progress = None;
                self.feedback(id, &Feedback::new(Execution::Proceeding, Finished::None, details).progress(0, 100));
            }
            Err(Rejection::Busy { id: job, .. }) => tracing::info!("hawkbit: action {id} waits for job {job}"),
            Err(Rejection::NotNow(m)) => self.fail(id, vec![format!("refused: {m}")]),
        }
        Ok(())
    }

    /// `update: skip` (or a closed maintenance window): an A/B device keeps no copy of an artifact outside the
    /// slot, so "download only" fetches the file, checks its hash, and reports `downloaded` once.
    fn download_only(
        &mut self,
        id: &str,
        artifact: &model::Artifact,
        url: &str,
        expected: Option<[u8; 32]>,
        window_closed: bool,
    ) -> Result<(), DdiError> {
        if self.reported.get(id).downloaded {
            return Ok(());
        }
        let why = if window_closed { "maintenance window closed" } else { "download only" };
        let f = Feedback::new(
            Execution::Proceeding,
            Finished::None,
            vec![format!("{why}: downloading {}", artifact.filename)],
        );
        self.feedback(id, &f);
        match verify_download(&self.client, url, expected) {
            Ok(n) => {
                let details = vec![format!(
                    "{why}: {} downloaded ({n} bytes){}; not installed",
                    artifact.filename,
                    if expected.is_some() { ", sha256 verified" } else { "" }
                )];
                if self.feedback(id, &Feedback::new(Execution::Downloaded, Finished::None, details)) {
                    self.reported.update(id, |r| r.downloaded = true);
                }
            }
            Err(e) => self.fail(id, vec![format!("{why}: {e}")]),
        }
        Ok(())
    }

    pub(super) fn cancel(&mut self, href: &str) -> Result<(), DdiError> {
        let c = self.client.cancel_action(href)?;
        let stop = c.cancel_action.stop_id.clone();
        self.status = self.handle.status();
        let job = self.status.job.clone().filter(|j| j.remote_id.as_deref() == Some(stop.as_str()));
        let accept = match &job {
            Some(j) if j.phase == JobPhase::Installing => {
                let (reply, rx) = mpsc::channel();
                self.handle.send(Command::Cancel { reply });
                match rx.recv() {
                    Ok(Ok(())) => Ok("install stopped before the slot switch; device unchanged".to_owned()),
                    Ok(Err(r)) => Err(format!("cannot cancel: {r}")),
                    Err(_) => Err("the daemon stopped".to_owned()),
                }
            }
            Some(j) => Err(format!("slot {} already holds the new version and the bootloader was switched", j.target)),
            None => match self.status.last.as_ref().filter(|r| r.job.remote_id.as_deref() == Some(stop.as_str())) {
                Some(r) if matches!(r.outcome, Outcome::Committed | Outcome::RolledBack { .. }) => {
                    Err(format!("the update already ended: {}", r.outcome.word()))
                }
                _ => Ok("nothing was installed".to_owned()),
            },
        };
        let f = match &accept {
            Ok(m) => {
                self.reported.update(&stop, |r| r.cancel_accepted = true);
                Feedback::new(Execution::Closed, Finished::Success, vec![m.clone()])
            }
            Err(m) => Feedback::new(Execution::Rejected, Finished::None, vec![m.clone()]),
        };
        tracing::info!("hawkbit: cancel of action {stop}: {accept:?}");
        match self.client.cancel_feedback(&c.id, &f) {
            Ok(()) | Err(DdiError::Gone { .. }) => {
                if accept.is_ok() {
                    self.reported.update(&stop, |r| r.closed = true);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

fn parse_sha256(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text.trim()).ok()?.try_into().ok()
}

/// Downloads `url` to nowhere, hashing it; returns its length.
fn verify_download(client: &DdiClient, url: &str, expected: Option<[u8; 32]>) -> Result<u64, String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let opts = client.download_options();
    let cancel = otter_installer::CancelToken::new();
    let counter = otter_installer::source::ByteCounter::default();
    let mut src = otter_installer::source::open(&otter_installer::Source::Url(url.to_owned()), &opts, &cancel, counter)
        .map_err(|e| e.to_string())?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = src.reader.read(&mut buf).map_err(|e| format!("reading {url}: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let actual: [u8; 32] = hasher.finalize().into();
    match expected {
        Some(e) if e != actual => Err(format!(
            "sha256 of the downloaded artifact is {}, the server announced {}",
            hex::encode(actual),
            hex::encode(e)
        )),
        _ => Ok(total),
    }
}
