//! The poller's loop: polls, schedules the next poll, follows the runtime's jobs and reports their progress and
//! results as DDI feedback.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use super::client::{DdiClient, DdiError};
use super::consent::ConfirmationBroker;
use super::inventory;
use super::model::{self, ConfigData, Execution, Feedback, Finished, Mode};
use super::reported::Reported;
use super::trigger::Trigger;
use crate::config::{ServerAuth, ServerSettings, Settings};
use crate::engine::{JobPhase, JobRecord, Outcome};
use crate::runtime::{Command, Handle, Status};

/// Loop state on the poller thread.
pub(super) struct Worker {
    pub(super) handle: Handle,
    pub(super) finished: Receiver<JobRecord>,
    pub(super) watch: Receiver<Status>,
    pub(super) status: Status,
    pub(super) client: Arc<DdiClient>,
    pub(super) reported: Reported,
    pub(super) settings: Settings,
    pub(super) server: ServerSettings,
    pub(super) broker: ConfirmationBroker,
    /// The server's last valid `sleep`.
    pub(super) sleep: Option<Duration>,
    /// Jobs whose interruption the server was told about (the same record arrives at start-up twice: as the last
    /// job and from the runtime's finished-job stream).
    pub(super) interrupted_told: HashSet<u64>,
    /// Consecutive failed polls.
    pub(super) failures: u32,
    /// (action, when, percent) of the last progress feedback.
    pub(super) last_progress: Option<(String, Instant, u32)>,
    /// Actions the server forces: reboot as soon as the slot is ready, whatever the reboot policy.
    pub(super) forced: HashSet<String>,
    /// Final results the server has not acknowledged yet.
    pub(super) pending_final: Vec<JobRecord>,
    /// Attributes last uploaded.
    pub(super) inventory_sent: Option<BTreeMap<String, String>>,
    pub(super) rng: u64,
    /// Actions waiting for a "not now" to pass (an inhibitor, start-up), with the reason last told to the server.
    pub(super) waiting: HashMap<String, String>,
}

/// How often the runtime's progress is looked at while a server job runs (200 ms).
const FOLLOW_TICK: Duration = Duration::from_millis(200);
/// A progress feedback goes out at least every this many progress intervals while an install runs, moving or not.
const PROGRESS_HEARTBEAT: u32 = 6;
/// Poll interval before the server told one, and after a garbage `sleep` (5 minutes).
const DEFAULT_SLEEP: Duration = Duration::from_secs(300);

impl Worker {
    pub(super) fn run(&mut self, trigger: &Trigger) {
        tracing::info!(
            "hawkbit: polling {} as {}",
            otter_common::redact::url(&self.server.url),
            self.server.controller_id
        );
        if self.server.url.starts_with("http://")
            && matches!(self.server.auth, ServerAuth::TargetToken(_) | ServerAuth::GatewayToken(_))
        {
            tracing::warn!(
                "hawkbit: the server token goes over plain http to {}: anyone on the network can read it and act as \
                 this device (or, with a gateway token, as every device of the tenant); use https",
                otter_common::redact::url(&self.server.url)
            );
        }
        // A result that ended before this start (trial boot assessed while offline, crash before reporting).
        if let Some(last) = self.status.last.clone() {
            self.final_result(last);
        }
        let mut next_poll = Instant::now();
        loop {
            self.follow_runtime();
            let now = Instant::now();
            if now >= next_poll {
                next_poll = now + self.poll_and_schedule();
                continue;
            }
            let busy = self.status.job.as_ref().is_some_and(|j| j.remote_id.is_some());
            let wait = (next_poll - now).min(if busy { FOLLOW_TICK } else { Duration::from_secs(1) });
            let (poll, stop) = trigger.wait(wait);
            if stop {
                break;
            }
            if poll {
                next_poll = Instant::now();
            }
        }
        tracing::debug!("hawkbit: poller stopped");
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64: enough to spread a fleet's polls; not for secrets.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let pct = f64::from(self.server.jitter_percent) / 100.0;
        let unit = (self.rng % 10_000) as f64 / 10_000.0 * 2.0 - 1.0;
        d.mul_f64(1.0 + pct * unit)
    }

    /// Polls once and returns the time until the next poll: the server's `sleep` clamped to the configured
    /// bounds, or the backoff after a failure; with jitter, never zero.
    fn poll_and_schedule(&mut self) -> Duration {
        let d = match self.poll() {
            Ok(()) => {
                self.failures = 0;
                self.sleep.unwrap_or(DEFAULT_SLEEP).clamp(self.server.poll_min, self.server.poll_max)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let d = self
                    .server
                    .backoff_initial
                    .saturating_mul(1 << (self.failures - 1).min(20))
                    .min(self.server.backoff_max);
                tracing::warn!("hawkbit: poll failed ({} in a row): {e}; retrying in {d:?}", self.failures);
                d
            }
        };
        self.jitter(d).max(Duration::from_millis(100))
    }

    fn poll(&mut self) -> Result<(), DdiError> {
        let base = self.client.poll()?;
        match base.sleep().map(model::parse_sleep) {
            Some(Ok(d)) => self.sleep = Some(d),
            Some(Err(e)) => tracing::warn!("hawkbit: {e}; keeping {:?}", self.sleep.unwrap_or(DEFAULT_SLEEP)),
            None => {}
        }
        self.retry_finals();
        if self.send_answers() {
            // The links of this poll predate the answer (the confirmationBase is gone once answered): poll anew.
            self.broker.trigger.fire();
            return Ok(());
        }
        if base.links.config_data.is_some() || self.inventory_sent.is_none() {
            self.upload_inventory(base.links.config_data.is_some());
        }
        if let Some(l) = &base.links.cancel_action {
            self.cancel(&l.href)?;
        } else if let Some(l) = &base.links.confirmation_base {
            self.confirmation(&l.href)?;
        } else if let Some(l) = &base.links.deployment_base {
            self.deployment(&l.href)?;
        }
        Ok(())
    }

    fn follow_runtime(&mut self) {
        while let Ok(s) = self.watch.try_recv() {
            self.status = s;
        }
        while let Ok(record) = self.finished.try_recv() {
            self.status.last = Some(record.clone());
            self.final_result(record);
        }
        let Some(job) = self.status.job.clone() else { return };
        let Some(id) = job.remote_id.clone() else { return };
        match job.phase {
            JobPhase::Installing => {
                let Some(p) = self.status.progress else { return };
                let percent = p.percent();
                // Progress when it moved, and a heartbeat when it did not (a slow or stalled download that is
                // being resumed): the server sees the device is still at it.
                let heartbeat = self.server.progress_interval.saturating_mul(PROGRESS_HEARTBEAT);
                let due = match &self.last_progress {
                    Some((a, at, pc)) if *a == id => {
                        let since = at.elapsed();
                        (since >= self.server.progress_interval && percent > *pc) || since >= heartbeat
                    }
                    _ => true,
                };
                if due {
                    let details = vec![format!(
                        "writing slot {}: {percent}% ({} of {} KiB verified and written, {} KiB received)",
                        job.target,
                        p.bytes_written >> 10,
                        p.total >> 10,
                        p.bytes_read >> 10
                    )];
                    self.last_progress = Some((id.clone(), Instant::now(), percent));
                    let f = Feedback::new(Execution::Proceeding, Finished::None, details).progress(percent, 100);
                    self.feedback(&id, &f);
                }
            }
            _ => {
                if job.artifact.is_some() {
                    self.downloaded(&id, &job);
                }
                if job.phase == JobPhase::AwaitingReboot && self.forced.remove(&id) {
                    tracing::info!("hawkbit: action {id} is forced: rebooting now");
                    let (reply, _rx) = mpsc::channel();
                    self.handle.send(Command::Reboot { reply });
                }
            }
        }
    }

    /// Sends feedback on a deployment; a 410 marks the action as closed on our side (and cancels a running
    /// install of it). Returns whether the server took it.
    pub(super) fn feedback(&mut self, action: &str, f: &Feedback) -> bool {
        match self.client.deployment_feedback(action, f) {
            Ok(()) => true,
            Err(DdiError::Gone { .. }) => {
                self.gone(action);
                false
            }
            Err(e) => {
                tracing::warn!("hawkbit: feedback {:?} for action {action}: {e}", f.status.execution);
                false
            }
        }
    }

    pub(super) fn gone(&mut self, action: &str) {
        tracing::warn!("hawkbit: action {action} is no longer active on the server");
        self.reported.update(action, |r| r.closed = true);
        let installing = self
            .status
            .job
            .as_ref()
            .is_some_and(|j| j.remote_id.as_deref() == Some(action) && j.phase == JobPhase::Installing);
        if installing {
            let (reply, _rx) = mpsc::channel();
            self.handle.send(Command::Cancel { reply });
        }
    }

    fn downloaded(&mut self, id: &str, job: &crate::engine::Job) {
        let r = self.reported.get(id);
        if r.downloaded || r.closed {
            return;
        }
        let version = job.artifact.as_ref().map_or("?", |a| a.version.as_str());
        let details = vec![format!("artifact {version} verified and written to slot {}", job.target)];
        let f = Feedback::new(Execution::Downloaded, Finished::None, details).progress(100, 100);
        if self.feedback(id, &f) {
            self.reported.update(id, |r| r.downloaded = true);
        }
    }

    pub(super) fn final_result(&mut self, record: JobRecord) {
        let Some(id) = record.job.remote_id.clone() else { return };
        let r = self.reported.get(&id);
        if r.closed {
            return;
        }
        // A restart or power failure cut the install off: the action stays open and is installed again when the
        // server offers it next, continuing after the chunks already written.
        if interrupted(&record) {
            // Told once, and not at all once the action is being installed again.
            let reinstalling = self.status.job.as_ref().is_some_and(|j| j.remote_id.as_deref() == Some(id.as_str()));
            if !reinstalling && self.interrupted_told.insert(record.job.id) {
                let details = vec!["install interrupted by a restart; it continues where it stopped".into()];
                self.feedback(&id, &Feedback::new(Execution::Proceeding, Finished::None, details));
            }
            return;
        }
        if record.outcome == Outcome::Cancelled && r.cancel_accepted {
            self.reported.update(&id, |r| r.closed = true);
            return;
        }
        if record.job.artifact.is_some() && !r.downloaded {
            self.downloaded(&id, &record.job);
        }
        let version = record.job.artifact.as_ref().map_or("?", |a| a.version.as_str()).to_owned();
        let (finished, details) = match &record.outcome {
            Outcome::Committed => (
                Finished::Success,
                vec![format!("version {version} booted from slot {}, healthy, committed", record.job.target)],
            ),
            Outcome::RolledBack { reason } => (
                Finished::Failure,
                vec![
                    format!("version {version} in slot {} failed its trial boot: {reason}", record.job.target),
                    format!("rolled back: running slot {} again", record.job.from),
                ],
            ),
            Outcome::Failed { code, message } => {
                let mut details = vec![format!("install failed ({code}): {message}"), "device unchanged".into()];
                // The engine's record carries the installer's code; this one needs words for the operator.
                if code == "artifact-replaced" || code == "version-mismatch" {
                    details.push(
                        "the action is failed, not restarted: it is bound to the artifact it was assigned with; \
                         assign the update again to install what the server serves now"
                            .into(),
                    );
                    // What the deployment names now, for the operator (read again, not acted on).
                    let href = format!("{}/deploymentBase/{id}", self.client.base_url());
                    if let Ok(d) = self.client.deployment(&href)
                        && let Some((c, a)) = d.deployment.artifact(super::PART)
                    {
                        details.push(format!(
                            "the deployment now names {} version {} ({} bytes)",
                            a.filename, c.version, a.size
                        ));
                    }
                }
                (Finished::Failure, details)
            }
            Outcome::Cancelled => (Finished::Failure, vec!["cancelled on the device; device unchanged".into()]),
        };
        let details = details.iter().map(|d| otter_common::redact::text(d)).collect();
        let f = Feedback::new(Execution::Closed, finished, details);
        match self.client.deployment_feedback(&id, &f) {
            Ok(()) | Err(DdiError::Gone { .. }) => {
                self.reported.update(&id, |r| {
                    r.closed = true;
                    r.final_feedback = Some(f);
                });
                self.pending_final.retain(|p| p.job.remote_id.as_deref() != Some(id.as_str()));
                // The installed version changed: let the server see it.
                self.inventory_sent = None;
            }
            Err(e) => {
                tracing::warn!("hawkbit: reporting the result of action {id}: {e}; will retry");
                if !self.pending_final.iter().any(|p| p.job.remote_id == record.job.remote_id) {
                    self.pending_final.push(record);
                }
            }
        }
    }

    fn retry_finals(&mut self) {
        for r in std::mem::take(&mut self.pending_final) {
            self.final_result(r);
        }
    }

    fn upload_inventory(&mut self, requested: bool) {
        let data = inventory::collect(&self.settings, &self.status, &self.server.inventory_dir);
        if !requested && self.inventory_sent.as_ref() == Some(&data) {
            return;
        }
        match self.client.config_data(&ConfigData { mode: Mode::Merge, data: data.clone() }) {
            Ok(()) => self.inventory_sent = Some(data),
            Err(e) => tracing::warn!("hawkbit: uploading attributes: {e}"),
        }
    }
}

/// Whether a job ended because a restart cut its install off (see [`crate::engine::INTERRUPTED`]).
pub(super) fn interrupted(record: &JobRecord) -> bool {
    matches!(&record.outcome, Outcome::Failed { code, .. } if code == crate::engine::INTERRUPTED)
}
