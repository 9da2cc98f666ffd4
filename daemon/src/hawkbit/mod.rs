//! The Eclipse hawkBit DDI client: polls the server on its own thread and turns its answers into runtime commands,
//! and the runtime's progress and finished jobs into DDI feedback.
//!
//! - [`model`]: the DDI JSON documents, typed; [`model::parse_sleep`].
//! - [`client`]: one blocking method per DDI resource, with TargetToken / GatewayToken / client-certificate auth.
//! - [`reported`]: the durable "already reported" log.
//! - [`inventory`]: the `configData` attributes.
//! - [`Poller`]: the loop. [`Trigger`] wakes it at once (D-Bus `CheckForUpdate()`); [`ConfirmationBroker`] lets
//!   local applications answer consent requests when `server.auto_confirm` is off.
//!
//! Feedback per action, in order: `proceeding` (accepted, then throttled progress), `downloaded` (the slot holds
//! the verified image), and after the reboot and the health check `closed`/`success` — or `closed`/`failure` with
//! the reason whenever it fails. See `docs/hawkbit.md`.

pub mod client;
pub mod inventory;
pub mod model;
pub mod reported;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use client::{DdiClient, DdiError, action_id};
use model::{
    ConfigData, Confirmation, ConfirmationFeedback, DeploymentBase, Execution, Feedback, Finished, HandlingType,
    MaintenanceWindow, Mode,
};
use reported::Reported;

use crate::config::{ServerSettings, Settings};
use crate::engine::{JobPhase, JobRecord, Outcome, Rejection};
use crate::runtime::{Command, Handle, InstallSettings, Status};

/// The software-module part whose `.otter` artifact is ours.
pub const PART: &str = "os";

#[derive(Default)]
struct Wake {
    poll: bool,
    stop: bool,
}

/// Wakes the poller: [`Trigger::fire`] makes it poll at once. Cheap to clone.
#[derive(Clone, Default)]
pub struct Trigger(Arc<(Mutex<Wake>, Condvar)>);

impl Trigger {
    /// Polls the server now (returns at once; the poll happens on the poller's thread).
    pub fn fire(&self) {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).poll = true;
        self.0.1.notify_all();
    }

    /// The trigger as a plain callback, for APIs that take one (D-Bus `CheckForUpdate()`).
    pub fn callback(&self) -> Arc<dyn Fn() + Send + Sync> {
        let t = self.clone();
        Arc::new(move || t.fire())
    }

    fn stop(&self) {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.0.1.notify_all();
    }

    /// Waits up to `timeout`; returns (poll requested, stop requested) and clears the poll request.
    fn wait(&self, timeout: Duration) -> (bool, bool) {
        let guard = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) =
            self.0.1.wait_timeout_while(guard, timeout, |w| !w.poll && !w.stop).unwrap_or_else(|e| e.into_inner());
        let r = (guard.poll, guard.stop);
        guard.poll = false;
        r
    }
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trigger")
    }
}

/// An update waiting for consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationRequest {
    /// hawkBit action id.
    pub action_id: String,
    /// Version of our software module.
    pub version: String,
    /// Artifact file names.
    pub artifacts: Vec<String>,
    /// When the server asked.
    pub requested_at: SystemTime,
}

/// Why [`ConfirmationBroker::answer`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no update waits for consent under action id {0:?}")]
pub struct UnknownConfirmation(pub String);

#[derive(Default)]
struct BrokerState {
    pending: BTreeMap<String, ConfirmationRequest>,
    answers: BTreeMap<String, (bool, Option<String>)>,
    subscribers: Vec<Sender<ConfirmationRequest>>,
}

/// Consent requests from the server for local applications (the D-Bus layer), when `server.auto_confirm` is off.
///
/// The poller calls [`ConfirmationBroker::offer`] for each `confirmationBase` it sees; the D-Bus service lists
/// [`ConfirmationBroker::pending`] (or follows [`ConfirmationBroker::subscribe`] to emit a signal) and calls
/// [`ConfirmationBroker::answer`]; the poller then sends the decision at once.
#[derive(Clone, Default)]
pub struct ConfirmationBroker {
    state: Arc<Mutex<BrokerState>>,
    trigger: Trigger,
}

impl ConfirmationBroker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates waiting for an answer, oldest action first.
    pub fn pending(&self) -> Vec<ConfirmationRequest> {
        self.lock().pending.values().cloned().collect()
    }

    /// Receives each new request once (e.g. to emit a D-Bus signal).
    pub fn subscribe(&self) -> Receiver<ConfirmationRequest> {
        let (tx, rx) = mpsc::channel();
        self.lock().subscribers.push(tx);
        rx
    }

    /// Confirms or denies the update of `action_id`; `details` goes to the server. Sent at once.
    pub fn answer(&self, action_id: &str, confirmed: bool, details: Option<String>) -> Result<(), UnknownConfirmation> {
        let mut s = self.lock();
        if s.pending.remove(action_id).is_none() {
            return Err(UnknownConfirmation(action_id.to_owned()));
        }
        s.answers.insert(action_id.to_owned(), (confirmed, details));
        drop(s);
        self.trigger.fire();
        Ok(())
    }

    /// Registers a request (idempotent); used by the poller.
    pub fn offer(&self, request: ConfirmationRequest) {
        let mut s = self.lock();
        if s.pending.contains_key(&request.action_id) || s.answers.contains_key(&request.action_id) {
            return;
        }
        s.subscribers.retain(|tx| tx.send(request.clone()).is_ok());
        s.pending.insert(request.action_id.clone(), request);
    }

    fn take_answers(&self) -> Vec<(String, bool, Option<String>)> {
        std::mem::take(&mut self.lock().answers).into_iter().map(|(k, (c, d))| (k, c, d)).collect()
    }
}

/// The DDI poller thread. Start it between [`crate::runtime::Runtime::start`] and `run` so it also hears about
/// jobs the start-up reconciliation ended (the result of a trial boot).
pub struct Poller {
    trigger: Trigger,
    broker: ConfirmationBroker,
    stopped: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Builds the client and starts polling at once.
    pub fn start(settings: &Settings, handle: Handle) -> Result<Self, DdiError> {
        let server = settings.server.clone().ok_or_else(|| DdiError::Setup("no [server] configured".into()))?;
        let client = Arc::new(DdiClient::new(&server)?);
        let trigger = Trigger::default();
        let broker = ConfirmationBroker { trigger: trigger.clone(), ..ConfirmationBroker::default() };
        let stopped = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            finished: handle.subscribe(),
            watch: handle.watch(),
            status: handle.status(),
            handle,
            client,
            reported: Reported::load(&settings.state_dir),
            settings: settings.clone(),
            server,
            broker: broker.clone(),
            sleep: None,
            failures: 0,
            last_progress: None,
            forced: HashSet::new(),
            interrupted_told: HashSet::new(),
            pending_final: Vec::new(),
            inventory_sent: None,
            rng: seed(),
        };
        let thread = {
            let (trigger, stopped) = (trigger.clone(), stopped.clone());
            std::thread::Builder::new()
                .name("hawkbit".into())
                .spawn(move || {
                    worker.run(&trigger);
                    stopped.store(true, Ordering::SeqCst);
                })
                .map_err(|e| DdiError::Setup(format!("starting the poller thread: {e}")))?
        };
        Ok(Self { trigger, broker, stopped, thread: Some(thread) })
    }

    /// Wakes the poller (D-Bus `CheckForUpdate()`).
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Consent requests, for the D-Bus layer.
    pub fn broker(&self) -> ConfirmationBroker {
        self.broker.clone()
    }

    /// Whether the thread ended (it only ends on [`Poller::stop`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Stops the thread after its current request and waits for it.
    pub fn stop(mut self) {
        self.trigger.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.trigger.stop();
    }
}

fn seed() -> u64 {
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Loop state on the poller thread.
struct Worker {
    handle: Handle,
    finished: Receiver<JobRecord>,
    watch: Receiver<Status>,
    status: Status,
    client: Arc<DdiClient>,
    reported: Reported,
    settings: Settings,
    server: ServerSettings,
    broker: ConfirmationBroker,
    /// The server's last valid `sleep`.
    sleep: Option<Duration>,
    /// Jobs whose interruption the server was told about (the same record arrives at start-up twice: as the last
    /// job and from the runtime's finished-job stream).
    interrupted_told: HashSet<u64>,
    /// Consecutive failed polls.
    failures: u32,
    /// (action, when, percent) of the last progress feedback.
    last_progress: Option<(String, Instant, u32)>,
    /// Actions the server forces: reboot as soon as the slot is ready, whatever the reboot policy.
    forced: HashSet<String>,
    /// Final results the server has not acknowledged yet.
    pending_final: Vec<JobRecord>,
    /// Attributes last uploaded.
    inventory_sent: Option<BTreeMap<String, String>>,
    rng: u64,
}

/// How often the runtime's progress is looked at while a server job runs (200 ms).
const FOLLOW_TICK: Duration = Duration::from_millis(200);
/// Poll interval before the server told one, and after a garbage `sleep` (5 minutes).
const DEFAULT_SLEEP: Duration = Duration::from_secs(300);

impl Worker {
    fn run(&mut self, trigger: &Trigger) {
        tracing::info!("hawkbit: polling {} as {}", self.server.url, self.server.controller_id);
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

    // ----- following the runtime -----

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
                let due = match &self.last_progress {
                    Some((a, at, pc)) if *a == id => at.elapsed() >= self.server.progress_interval && percent > *pc,
                    _ => p.total > 0,
                };
                if due {
                    let details = vec![format!(
                        "writing slot {}: {percent}% ({} of {} KiB verified and written)",
                        job.target,
                        p.bytes_written >> 10,
                        p.total >> 10
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
    fn feedback(&mut self, action: &str, f: &Feedback) -> bool {
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

    fn gone(&mut self, action: &str) {
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

    fn final_result(&mut self, record: JobRecord) {
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
                (Finished::Failure, vec![format!("install failed ({code}): {message}"), "device unchanged".into()])
            }
            Outcome::Cancelled => (Finished::Failure, vec!["cancelled on the device; device unchanged".into()]),
        };
        let f = Feedback::new(Execution::Closed, finished, details);
        match self.client.deployment_feedback(&id, &f) {
            Ok(()) | Err(DdiError::Gone { .. }) => {
                self.reported.update(&id, |r| r.closed = true);
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

    // ----- actions offered by the poll -----

    fn deployment(&mut self, href: &str) -> Result<(), DdiError> {
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
        match rx.recv().unwrap_or(Err(Rejection::Stopped)) {
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
            Err(r) => self.fail(id, vec![format!("refused: {r}")]),
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

    fn cancel(&mut self, href: &str) -> Result<(), DdiError> {
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

    fn confirmation(&mut self, href: &str) -> Result<(), DdiError> {
        let d = self.client.deployment(href)?;
        if self.server.auto_confirm {
            let f = ConfirmationFeedback {
                confirmation: Confirmation::Confirmed,
                code: None,
                details: vec!["confirmed automatically (server.auto_confirm)".into()],
            };
            return self.client.confirmation_feedback(&d.id, &f);
        }
        let (version, artifacts) = match d.deployment.artifact(PART) {
            Some((c, a)) => (c.version.clone(), vec![a.filename.clone()]),
            None => (String::new(), Vec::new()),
        };
        self.broker.offer(ConfirmationRequest {
            action_id: d.id.clone(),
            version,
            artifacts,
            requested_at: SystemTime::now(),
        });
        Ok(())
    }

    /// Sends the consent answers given locally; returns whether there were any.
    fn send_answers(&mut self) -> bool {
        let answers = self.broker.take_answers();
        let any = !answers.is_empty();
        for (id, confirmed, details) in answers {
            let f = ConfirmationFeedback {
                confirmation: if confirmed { Confirmation::Confirmed } else { Confirmation::Denied },
                code: None,
                details: details.into_iter().collect(),
            };
            if let Err(e) = self.client.confirmation_feedback(&id, &f) {
                tracing::warn!("hawkbit: sending the consent answer for action {id}: {e}");
            }
        }
        any
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
fn interrupted(record: &JobRecord) -> bool {
    matches!(&record.outcome, Outcome::Failed { code, .. } if code == crate::engine::INTERRUPTED)
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
