//! Deployments offered by the poll: start the install (or download only), fail an action with its reason, answer
//! a server's cancel request.

use std::sync::mpsc;

use super::PART;
use super::client::{DdiClient, DdiError, action_id};
use super::model::{self, DeploymentBase, Execution, Feedback, Finished, HandlingType, MaintenanceWindow};
use super::worker::{Worker, interrupted};
use crate::engine::{JobPhase, Outcome, Rejection};
use crate::runtime::{Command, Fallback, InstallSettings};

impl Worker {
    pub(super) fn deployment(&mut self, href: &str) -> Result<(), DdiError> {
        let id = action_id(href).ok_or_else(|| DdiError::Malformed {
            url: otter_common::redact::url(href),
            message: "no action id".into(),
        })?;
        if self.reported.get(&id).closed {
            self.offered_again(&id);
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

    /// The server offers an action this device already closed (a server that reuses action ids, or one that lost
    /// the final feedback): answer with the same final feedback again, so the server's view converges.
    fn offered_again(&mut self, id: &str) {
        match self.reported.get(id).final_feedback {
            Some(f) => {
                tracing::info!(
                    "hawkbit: the server offers action {id} again, which this device closed ({:?}); sending its final \
                     feedback again",
                    f.status.result.finished
                );
                if let Err(e) = self.client.deployment_feedback(id, &f) {
                    tracing::warn!("hawkbit: resending the final feedback of action {id}: {e}");
                }
            }
            None => tracing::warn!(
                "hawkbit: the server offers action {id} again, which this device closed; no final feedback is stored \
                 for it (the server had said it was gone), so nothing is resent"
            ),
        }
    }

    pub(super) fn fail(&mut self, id: &str, details: Vec<String>) {
        let details: Vec<String> = details.iter().map(|d| otter_common::redact::text(d)).collect();
        tracing::error!("hawkbit: action {id} failed: {}", details.join("; "));
        let f = Feedback::new(Execution::Closed, Finished::Failure, details);
        match self.client.deployment_feedback(id, &f) {
            Ok(()) | Err(DdiError::Gone { .. }) => self.reported.update(id, |r| {
                r.closed = true;
                r.final_feedback = Some(f);
            }),
            Err(e) => tracing::warn!("hawkbit: reporting failure of action {id}: {e}"),
        }
    }

    fn start(&mut self, id: &str, href: &str, d: &DeploymentBase) -> Result<(), DdiError> {
        let dep = &d.deployment;
        // A delta and the full artifact may both be offered: the smallest first, the others if this device does
        // not run the delta's base.
        let candidates = dep.artifacts(PART);
        let Some(&(chunk, artifact)) = candidates.first() else {
            let names: Vec<&str> =
                dep.chunks.iter().flat_map(|c| c.artifacts.iter().map(|a| a.filename.as_str())).collect();
            self.fail(id, vec![format!("no .otter artifact in a chunk of part {PART:?} (artifacts: {names:?})")]);
            return Ok(());
        };
        let mut links = Vec::new();
        for &(c, a) in &candidates {
            match self.link(c, a) {
                Ok(link) => links.push(link),
                Err(m) => {
                    self.fail(id, vec![m]);
                    return Ok(());
                }
            }
        }
        let (url, announced) = links[0].clone();
        if dep.download == HandlingType::Skip {
            tracing::info!("hawkbit: action {id}: download skipped for now");
            return Ok(());
        }
        let window_closed = dep.maintenance_window == Some(MaintenanceWindow::Unavailable);
        if dep.update == HandlingType::Skip || window_closed {
            return self.download_only(id, artifact, &url, announced, window_closed);
        }
        // Bound before the first byte is installed, and kept in the report log: after a restart (a power cut mid
        // install) the same action must still name the same files.
        let bound = candidates.iter().map(|(c, a)| fingerprint(c, a)).collect::<Vec<_>>().join(" or ");
        match self.reported.get(id).artifact {
            Some(was) if was != bound => {
                self.fail(
                    id,
                    vec![format!(
                        "action {id} now names another artifact than the one it started installing (was {was}; now \
                         {bound}); the action is failed, not restarted"
                    )],
                );
                return Ok(());
            }
            Some(_) => {}
            None => self.reported.update(id, |r| r.artifact = Some(bound)),
        }
        let mut downloads = candidates.iter().zip(links).map(|(&(c, a), (url, announced))| Fallback {
            source: url,
            http: self.download_options(href, c, a, announced),
        });
        let Fallback { source, http } = downloads.next().expect("one candidate at least");
        let (reply, rx) = mpsc::channel();
        self.handle.send(Command::InstallRemote {
            source,
            remote_id: id.to_owned(),
            options: Box::new(InstallSettings { http, fallbacks: downloads.collect(), ..Default::default() }),
            reply,
        });
        match rx.recv().unwrap_or(Err(Rejection::Stopped)) {
            Ok(job) => {
                tracing::info!("hawkbit: action {id}: installing {} {} as job {job}", chunk.name, chunk.version);
                if dep.update == HandlingType::Forced {
                    self.forced.insert(id.to_owned());
                }
                self.status = self.handle.status();
                let target = self.status.job.as_ref().map_or("?".into(), |j| j.target.to_string());
                let mut details = vec![format!(
                    "downloading {} ({} {}, {} bytes) into slot {target}",
                    artifact.filename, chunk.name, chunk.version, artifact.size
                )];
                if let Some((_, full)) = candidates.get(1) {
                    details.push(format!(
                        "{} instead ({} bytes) if the first is a delta for another base than this device runs",
                        full.filename, full.size
                    ));
                }
                self.last_progress = Some((id.to_owned(), std::time::Instant::now(), 0));
                self.feedback(id, &Feedback::new(Execution::Proceeding, Finished::None, details).progress(0, 100));
            }
            Err(Rejection::Busy { id: job, .. }) => tracing::info!("hawkbit: action {id} waits for job {job}"),
            Err(r) if not_now(&r) => self.wait_for_next_poll(id, &r),
            Err(r) => self.fail(id, vec![format!("refused: {r}")]),
        }
        Ok(())
    }

    /// An artifact's download link and what the server announced of it; the message for the operator when either
    /// is unusable.
    fn link(
        &self,
        chunk: &model::Chunk,
        artifact: &model::Artifact,
    ) -> Result<(String, otter_installer::Announced), String> {
        let url = artifact.url().ok_or_else(|| format!("artifact {} has no download link", artifact.filename))?;
        // Only an http(s) link is downloaded; a path or `file:` link would make the daemon read local files.
        let https_only = self.client.download_options().https_only;
        if let Err(e) = otter_installer::source::parse_link(url, https_only) {
            return Err(format!("artifact {}: {e} ({})", artifact.filename, e.code()));
        }
        let announced = announced(chunk, artifact)?;
        if announced.sha256.is_none() {
            tracing::warn!("hawkbit: artifact {} has no sha256", artifact.filename);
        }
        Ok((url.to_owned(), announced))
    }

    /// The download settings of one artifact of the action at `href`, bound to it.
    fn download_options(
        &self,
        href: &str,
        chunk: &model::Chunk,
        artifact: &model::Artifact,
        announced: otter_installer::Announced,
    ) -> otter_installer::HttpOptions {
        let mut http = self.client.download_options();
        let (client, href_owned) = (self.client.clone(), href.to_owned());
        let (chunk_bound, artifact_bound) = (chunk.clone(), artifact.clone());
        // A pre-signed link expired: the deployment again, for a fresh link to the same file. A deployment that
        // now names another file (name, size, hashes or version) gives no link: the action is bound to the
        // artifacts it started with.
        http.refresh = Some(otter_installer::UrlRefresh::new(move || {
            let d = client.deployment(&href_owned).ok()?;
            let found = d.deployment.artifacts(PART);
            let same = found.iter().find(|(c, a)| {
                c.version == chunk_bound.version
                    && a.filename == artifact_bound.filename
                    && a.size == artifact_bound.size
                    && a.hashes == artifact_bound.hashes
            });
            if same.is_none() {
                tracing::warn!("hawkbit: the deployment now names another artifact; not following its link");
            }
            same.and_then(|(_, a)| a.url().map(str::to_owned))
        }));
        http.announced = announced;
        // The download is bound to this artifact: a file that changes behind the URL fails the action instead of
        // installing whatever the server serves now.
        http.pin_entity = true;
        http
    }

    /// The device says "not now" (a local application inhibits updates, the daemon is still starting or
    /// stopping): the action stays open and is tried again at the next poll. The server hears why in a
    /// `proceeding` feedback, once per reason, so a rollout sees a waiting device, not a failed one.
    fn wait_for_next_poll(&mut self, id: &str, why: &Rejection) {
        let reason = why.to_string();
        tracing::info!("hawkbit: action {id} waits for the next poll: {reason}");
        if self.waiting.get(id) == Some(&reason) {
            return;
        }
        let details = vec![format!("waiting: {reason}; trying again at the next poll")];
        if self.feedback(id, &Feedback::new(Execution::Proceeding, Finished::None, details)) {
            self.waiting.insert(id.to_owned(), reason);
        }
    }

    /// `update: skip` (or a closed maintenance window): an A/B device keeps no copy of an artifact outside the
    /// slot, so "download only" fetches the file, checks its hash, and reports `downloaded` once.
    fn download_only(
        &mut self,
        id: &str,
        artifact: &model::Artifact,
        url: &str,
        announced: otter_installer::Announced,
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
        let checked: Vec<&str> = [
            ("sha1", announced.sha1.is_some()),
            ("md5", announced.md5.is_some()),
            ("sha256", announced.sha256.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, given)| given.then_some(n))
        .collect();
        match verify_download(&self.client, url, announced) {
            Ok(n) => {
                let details = vec![format!(
                    "{why}: {} downloaded ({n} bytes){}; not installed",
                    artifact.filename,
                    if checked.is_empty() { String::new() } else { format!(", {} verified", checked.join(", ")) }
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

/// What the deployment says about our artifact, for the installer to enforce: size, every hash the server gives
/// (DDI: sha1, md5, sha256), and the version the manifest must carry.
fn announced(chunk: &model::Chunk, artifact: &model::Artifact) -> Result<otter_installer::Announced, String> {
    fn digest<const N: usize>(name: &str, file: &str, hex_text: Option<&str>) -> Result<Option<[u8; N]>, String> {
        hex_text
            .map(|h| {
                hex::decode(h.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| format!("artifact {file} has an invalid {name}: {h:?}"))
            })
            .transpose()
    }
    let f = &artifact.filename;
    Ok(otter_installer::Announced {
        // DDI always sends a size; 0 (absent) cannot be a valid artifact, so it is taken as "not announced".
        size: (artifact.size > 0).then_some(artifact.size),
        sha1: digest("sha1", f, artifact.hashes.sha1.as_deref())?,
        md5: digest("md5", f, artifact.hashes.md5.as_deref())?,
        sha256: digest("sha256", f, artifact.hashes.sha256.as_deref())?,
        version: (!chunk.version.is_empty()).then(|| chunk.version.clone()),
    })
}

/// What identifies the file an action names: name, version, size and every hash the server gave.
fn fingerprint(chunk: &model::Chunk, artifact: &model::Artifact) -> String {
    let h = &artifact.hashes;
    let hashes: Vec<String> = [("sha256", &h.sha256), ("sha1", &h.sha1), ("md5", &h.md5)]
        .iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name} {}", v.to_ascii_lowercase())))
        .collect();
    format!("{} version {} ({} bytes; {})", artifact.filename, chunk.version, artifact.size, hashes.join(", "))
}

/// Downloads `url` to nowhere; the installer's HTTP source enforces the announced size and hashes. Returns the
/// length.
fn verify_download(client: &DdiClient, url: &str, announced: otter_installer::Announced) -> Result<u64, String> {
    let opts = otter_installer::HttpOptions { announced, pin_entity: true, ..client.download_options() };
    let cancel = otter_installer::CancelToken::new();
    let counter = otter_installer::source::ByteCounter::default();
    let mut src = otter_installer::source::open(&otter_installer::Source::Url(url.to_owned()), &opts, &cancel, counter)
        .map_err(|e| e.to_string())?;
    std::io::copy(&mut src.reader, &mut std::io::sink())
        .map_err(|e| otter_common::redact::text(&format!("reading {url}: {e}")))
}

/// Whether a refusal means "not now" rather than "this action failed": the same request can succeed later
/// without anything changing on the server.
fn not_now(r: &Rejection) -> bool {
    matches!(r, Rejection::Busy { .. } | Rejection::Inhibited(_) | Rejection::NotBooted | Rejection::Stopped)
}
