//! The effects around the engine: one loop thread that owns the engine, the bootloader and the state file, and
//! carries out the engine's actions. Long work (installing, health checks) runs on its own threads and reports
//! back through the loop's channel, so the loop stays responsive and its watchdog pings prove it is alive: if the
//! loop itself gets stuck, the pings stop and systemd kills and restarts the daemon.
//!
//! - [`handle`]: the commands other threads send, and the [`Handle`] they send them through.
//! - [`effects`]: the bootloader, the reboot and the booted slot: the platform the loop acts on.
//! - [`install`]: install and health-check jobs on their own threads, and how their results reach the engine.
//! - [`status`]: what the daemon shows (D-Bus properties, `STATUS=`) and who hears about finished jobs.

mod effects;
mod handle;
mod install;
mod status;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use otter_bootloader::{BootBackend, Slot};
use otter_installer::CancelToken;

use crate::config::Settings;
use crate::engine::{Action, BootView, Engine, EngineConfig, Event, JobRecord, Persisted, Rejection};
use crate::notify::Notifier;
use crate::state::{StateError, StateStore};

pub use effects::{
    BootedSlotError, OpenBootError, Platform, RebootError, Rebooting, SystemPlatform, booted_slot, open_bootloader,
};
pub use handle::{Command, Fallback, Handle, InstallSettings, MarkState, SlotRef};
use handle::{Msg, Subscribers};
pub use status::Status;

/// Why the runtime could not start (conditions that only keep it from updating are reported in the status
/// instead).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory cannot be created.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// `Stop` was received.
    Stopped,
    /// The platform rebooted (simulation).
    Rebooted,
}

/// The loop and everything it owns.
pub struct Runtime {
    settings: Settings,
    engine: Engine,
    saved: Persisted,
    store: StateStore,
    boot: Option<Box<dyn BootBackend + Send>>,
    platform: Box<dyn Platform>,
    notifier: Notifier,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    status: Arc<Mutex<Status>>,
    subscribers: Arc<Mutex<Subscribers>>,
    /// Jobs that ended before `run` (start-up reconciliation), delivered once subscribers had a chance to attach.
    early_records: Vec<JobRecord>,
    running: bool,
    /// The status last sent to watchers.
    published: Status,
    install: Option<(JoinHandle<()>, CancelToken)>,
    health_cancel: Option<Arc<AtomicBool>>,
    last_digest: Option<String>,
    /// Download settings that came with the install request being handled (D-Bus options or the server's); the
    /// install starts within that request, once the target is marked bad, and takes them.
    install_settings: Option<InstallSettings>,
    halted: bool,
    tick: Duration,
    /// When to open the bootloader environment again (it was locked by another process at start-up).
    boot_retry: Option<Instant>,
    /// A condition that keeps the daemon from updating at all (unusable bootloader env, unknown booted slot).
    unusable: Option<String>,
    /// Why the last save of the state failed, until one succeeds: no step is taken meanwhile.
    unsaved: Option<String>,
    /// Set when a request's steps failed after the engine accepted it (the state was not saved, the reboot
    /// failed), so that the request is not answered `Ok`.
    request_error: Option<Rejection>,
    /// The last bootloader store's error, if it failed.
    last_boot_error: Option<String>,
}

/// How long after a locked bootloader environment the runtime tries to open it again (15 s). Each attempt waits
/// for the lock at most `otter_bootloader::uboot::DEFAULT_LOCK_WAIT` (5 s).
const BOOT_RETRY: Duration = Duration::from_secs(15);

impl Runtime {
    /// Loads the state, opens the bootloader, works out the booted slot and feeds `Started` to the engine.
    /// Problems that prevent updating (corrupt env, unknown booted slot) do not stop the daemon: they are
    /// reported in the status and installs are refused.
    pub fn start(settings: Settings, platform: Box<dyn Platform>) -> Result<(Self, Handle), StartError> {
        let store = StateStore::new(&settings.state_dir)?;
        let (persisted, state_error) = store.load();
        if let Some(e) = &state_error {
            tracing::error!("{e}");
        }
        let config = EngineConfig {
            reboot: settings.reboot_policy,
            commit_deadline: settings.commit_deadline.as_secs(),
            image_security_version: effects::image_security_version(&settings),
        };
        let engine = Engine::new(persisted.clone(), config);
        let (tx, rx) = mpsc::channel();
        let notifier = Notifier::from_env();
        let tick = notifier.ping_interval().map_or(Duration::from_secs(1), |p| p.min(Duration::from_secs(1)));
        let status = Arc::new(Mutex::new(Status::default()));
        let subscribers = Arc::new(Mutex::new(Subscribers::default()));
        let mut rt = Self {
            settings,
            engine,
            saved: persisted,
            store,
            boot: None,
            boot_retry: None,
            platform,
            notifier,
            tx: tx.clone(),
            rx,
            status: status.clone(),
            subscribers: subscribers.clone(),
            early_records: Vec::new(),
            running: false,
            published: Status::default(),
            install: None,
            health_cancel: None,
            last_digest: None,
            install_settings: None,
            halted: false,
            tick,
            unusable: None,
            unsaved: None,
            request_error: None,
            last_boot_error: None,
        };
        let handle = Handle { tx, status, subscribers };
        rt.attach_bootloader();
        rt.publish();
        Ok((rt, handle))
    }

    /// Opens the bootloader environment and, with the booted slot, feeds `Started` to the engine. An environment
    /// that is locked by another process (a local user holding libubootenv's lock) is opened again later
    /// ([`BOOT_RETRY`]) instead of leaving the daemon unable to update until it is restarted.
    fn attach_bootloader(&mut self) {
        match open_bootloader(&self.settings) {
            Ok(b) => {
                self.boot = Some(b);
                self.boot_retry = None;
                self.unusable = None;
            }
            Err(e) => {
                tracing::error!("bootloader environment unusable: {e}");
                self.unusable = Some(format!("bootloader environment unusable: {e}"));
                let locked = matches!(e, OpenBootError::Backend(otter_bootloader::BootError::EnvLocked { .. }));
                self.boot_retry = locked.then(|| Instant::now() + BOOT_RETRY);
                return;
            }
        }
        match booted_slot(&self.settings) {
            Ok(booted) if self.boot.is_some() => {
                let b = self.boot.as_ref().expect("checked");
                let view = BootView {
                    primary: b.primary(),
                    a: b.slot_state(Slot::A),
                    b: b.slot_state(Slot::B),
                    security_version: b.security_version().unwrap_or(0),
                };
                tracing::info!(
                    "booted slot {booted}; bootloader: next {:?}, A {:?}, B {:?}",
                    view.primary,
                    view.a,
                    view.b
                );
                let now = self.platform.now();
                self.dispatch(Event::Started { booted, boot: view, now });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("{e}");
                self.set_error(e.to_string());
            }
        }
    }

    fn set_error(&mut self, e: String) {
        self.unusable = Some(e);
    }

    /// Runs the loop until `Stop` or a (simulated) reboot.
    pub fn run(mut self) -> RunEnd {
        let line = self.status.lock().unwrap_or_else(|e| e.into_inner()).line();
        self.notifier.ready(&line);
        tracing::info!("ready: {line}");
        self.running = true;
        for record in std::mem::take(&mut self.early_records) {
            self.deliver(record);
        }
        let end = loop {
            if self.halted {
                break RunEnd::Rebooted;
            }
            self.notifier.watchdog();
            match self.rx.recv_timeout(self.tick) {
                Ok(Msg::Command(Command::Stop)) => break RunEnd::Stopped,
                Ok(msg) => self.message(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break RunEnd::Stopped,
            }
            let now = self.platform.now();
            self.dispatch(Event::Tick { now });
            if self.boot_retry.is_some_and(|at| Instant::now() >= at) {
                tracing::info!("opening the bootloader environment again");
                self.attach_bootloader();
                self.publish();
            }
        };
        self.notifier.stopping();
        if let Some((thread, cancel)) = self.install.take() {
            cancel.cancel();
            let _ = thread.join();
        }
        if let Some(c) = self.health_cancel.take() {
            c.store(true, Ordering::SeqCst);
        }
        end
    }

    fn message(&mut self, msg: Msg) {
        let now = self.platform.now();
        match msg {
            Msg::Command(Command::Install { source, automatic, remote_id, settings, reply }) => {
                let mut settings = settings.map(|s| *s).unwrap_or_default();
                let source = hide_secrets(source, &mut settings);
                self.install_settings = Some(settings);
                let result = self.request(Event::InstallRequested { source, automatic, remote_id, now });
                self.install_settings = None;
                let _ = reply.send(result.map(|()| self.engine.job().map_or(0, |j| j.id)));
            }
            Msg::Command(Command::InstallRemote { source, remote_id, mut options, reply }) => {
                let source = hide_secrets(source, &mut options);
                self.install_settings = Some(*options);
                let event = Event::InstallRequested { source, automatic: true, remote_id: Some(remote_id), now };
                let result = self.request(event);
                self.install_settings = None;
                let _ = reply.send(result.map(|()| self.engine.job().map_or(0, |j| j.id)));
            }
            Msg::Command(Command::Cancel { reply }) => {
                let mut result = self.request(Event::CancelRequested { now });
                // Cancelled means the revert is durable; a job still being cancelled means its store failed.
                if result.is_ok() && self.engine.job().is_some_and(|j| j.cancel_requested) {
                    let e = self.last_boot_error.clone().unwrap_or_else(|| "the revert was not stored".into());
                    tracing::error!("cancel not done: {e}");
                    result = Err(Rejection::Bootloader(e));
                }
                let _ = reply.send(result);
            }
            Msg::Command(Command::Reboot { reply }) => {
                let _ = reply.send(self.request(Event::RebootRequested { now }));
            }
            Msg::Command(Command::SetInhibited(inhibited)) => {
                self.dispatch(Event::InhibitedChanged { inhibited, now });
            }
            Msg::Command(Command::SetInhibitors(holders)) => {
                if holders.is_empty() {
                    tracing::info!("no inhibitor held");
                } else {
                    let list: Vec<String> = holders.iter().map(|(who, why)| format!("{who} ({why})")).collect();
                    tracing::info!("inhibitors held by: {}", list.join(", "));
                }
                let inhibited = !holders.is_empty();
                self.status.lock().unwrap_or_else(|e| e.into_inner()).inhibitors = holders;
                self.dispatch(Event::InhibitedChanged { inhibited, now });
            }
            Msg::Command(Command::Mark { state, slot, reply }) => {
                let result = self.mark(state, slot);
                self.publish();
                let _ = reply.send(result);
            }
            Msg::Command(Command::History { reply }) => {
                let _ = reply.send(self.engine.persisted.history.iter().cloned().collect());
            }
            Msg::Command(Command::Stop) => {}
            Msg::Progress(p) => {
                if let Some(d) = p.manifest_digest {
                    self.last_digest = Some(d.to_string());
                }
                self.status.lock().unwrap_or_else(|e| e.into_inner()).progress = Some(p);
            }
            Msg::InstallDone(result) => self.install_done(*result, now),
            Msg::HealthDone(result) => {
                self.health_cancel = None;
                let event = match result {
                    Ok(()) => Event::HealthPassed { now },
                    Err(f) => Event::HealthFailed { reason: f.to_string(), now },
                };
                self.dispatch(event);
            }
        }
    }

    /// Feeds a request; a rejection changes nothing and goes back to the caller.
    fn request(&mut self, event: Event) -> Result<(), Rejection> {
        if let Some(e) = &self.unusable
            && matches!(event, Event::InstallRequested { .. })
        {
            return Err(Rejection::Unusable(e.clone()));
        }
        // While the state cannot be saved, nothing new starts (a retry first: the disk may have space again).
        if self.unsaved.is_some()
            && let Err(e) = self.persist()
        {
            self.publish();
            return Err(Rejection::StateNotSaved(e.to_string()));
        }
        let actions = self.engine.handle(event)?;
        self.request_error = None;
        self.execute(actions);
        // The request's steps were not taken (or not all): say so rather than report success.
        match self.request_error.take() {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    /// Feeds an event and carries out the actions, including the events they feed back.
    fn dispatch(&mut self, event: Event) {
        if let Some(actions) = self.handle_event(event) {
            self.execute(actions);
        }
    }

    /// Feeds an event that is not a caller's request; an event the engine refuses is logged (it changed nothing,
    /// and is a sign that something upstream is out of step).
    fn handle_event(&mut self, event: Event) -> Option<Vec<Action>> {
        match self.engine.handle(event) {
            Ok(actions) => Some(actions),
            Err(r @ Rejection::WrongPhase { .. }) => {
                tracing::warn!("ignored: {r}");
                None
            }
            Err(r) => {
                tracing::debug!("event ignored: {r}");
                None
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            // The state must be durable before any effect that depends on it: an effect taken on a state that
            // is not on disk is one the next start knows nothing about (an install, a slot switch, a reboot).
            if let Err(e) = self.persist() {
                self.state_not_saved(&e, action, queue);
                break;
            }
            let now = self.platform.now();
            let feedback = match action {
                Action::Boot(changes) => Some(self.apply_boot(&changes, now)),
                Action::Install { source, target, min_security_version, refuse } => {
                    self.start_install(source, target, min_security_version, refuse);
                    None
                }
                Action::CancelInstall => {
                    if let Some((_, cancel)) = &self.install {
                        cancel.cancel();
                    }
                    None
                }
                Action::Reboot => self.reboot(now),
                Action::StartHealthChecks => {
                    self.start_health();
                    None
                }
                Action::Finished(record) => {
                    self.finished_job(*record);
                    None
                }
            };
            if let Some(more) = feedback.and_then(|event| self.handle_event(event)) {
                queue.extend(more);
            }
        }
        // No effect follows, so a failure here only needs reporting; the next change (or tick) retries.
        let _ = self.persist();
        self.publish();
    }

    /// Writes the engine's state if it changed (or the last write failed). A failure is logged once and shown in
    /// the status until a later save succeeds.
    fn persist(&mut self) -> Result<(), StateError> {
        // After a failure the save is retried even without a change: the error stays until a write succeeds.
        if self.engine.persisted == self.saved && self.unsaved.is_none() {
            return Ok(());
        }
        match self.store.save(&self.engine.persisted) {
            Ok(()) => {
                self.saved = self.engine.persisted.clone();
                if self.unsaved.take().is_some() {
                    tracing::info!("the state is saved again");
                }
                Ok(())
            }
            Err(e) => {
                if self.unsaved.is_none() {
                    tracing::error!("cannot save the state, taking no further step: {e}");
                }
                self.unsaved = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// A save failed before `action`: it and the rest of `queue` are dropped, and the engine ends or holds the
    /// job ([`Event::StateNotSaved`]). Of what the engine answers, only what takes no step on the device is
    /// carried out: stopping a running install and reporting the job's end.
    fn state_not_saved(&mut self, e: &StateError, action: Action, queue: VecDeque<Action>) {
        let dropped: Vec<Action> = std::iter::once(action).chain(queue).collect();
        self.request_error = Some(Rejection::StateNotSaved(e.to_string()));
        tracing::error!("state not saved; not carrying out {dropped:?}");
        let now = self.platform.now();
        for action in self.handle_event(Event::StateNotSaved { message: e.to_string(), now }).unwrap_or_default() {
            match action {
                Action::CancelInstall => {
                    if let Some((_, cancel)) = &self.install {
                        cancel.cancel();
                    }
                }
                Action::Finished(record) => self.finished_job(*record),
                other => tracing::error!("state not saved; not carrying out {other:?}"),
            }
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The form of an install's source that the job records: a URL without userinfo and query string (pre-signed
/// links carry their credentials there), which history, status, D-Bus and the journal then show to every local
/// user. The source itself goes to the install through `settings`.
fn hide_secrets(source: String, settings: &mut InstallSettings) -> String {
    let shown = otter_common::redact::url(&source);
    if shown != source {
        settings.locator = Some(source);
    }
    shown
}

#[cfg(test)]
mod tests;
