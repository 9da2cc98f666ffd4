//! The effects around the engine: one loop thread that owns the engine, the bootloader and the state file, and
//! carries out the engine's actions. Long work (installing, health checks) runs on its own threads and reports
//! back through the loop's channel, so the loop stays responsive and its watchdog pings prove it is alive: if the
//! loop itself gets stuck, the pings stop and systemd kills and restarts the daemon.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use otter_artifact::{Keyring, Limits, Policy};
use otter_bootloader::{BootBackend, Slot, SlotState};
use otter_installer::{CancelToken, InstallError, InstallRequest, Progress, Source, Target};

use crate::config::{BootloaderSettings, Settings};
use crate::engine::{
    Action, ArtifactInfo, BootChange, BootView, Engine, EngineConfig, Event, JobPhase, JobRecord, Persisted, Rejection,
};
use crate::health::{self, HealthFailure};
use crate::notify::Notifier;
use crate::state::StateStore;

/// How the runtime reboots and tells time; the real one runs the configured command, the simulator's power-cycles
/// a simulated device.
pub trait Platform: Send {
    /// Reboots. `Ok(true)` means "the machine is going down now": the loop ends (simulation); `Ok(false)` means
    /// the request was handed to the system (systemd will stop the daemon shortly).
    fn reboot(&mut self, command: &[String]) -> Result<bool, String>;
    /// Seconds since the epoch.
    fn now(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// Reboots by running the configured command (`systemctl reboot`).
#[derive(Debug, Default)]
pub struct SystemPlatform;

impl Platform for SystemPlatform {
    fn reboot(&mut self, command: &[String]) -> Result<bool, String> {
        let status = std::process::Command::new(&command[0])
            .args(&command[1..])
            .status()
            .map_err(|e| format!("running {:?}: {e}", command[0]))?;
        if status.success() { Ok(false) } else { Err(format!("{command:?} exited with {status}")) }
    }
}

/// A request from outside the loop (D-Bus, server client, tests).
#[derive(Debug)]
pub enum Command {
    /// Install an artifact; replies with the job id.
    Install {
        /// File path or URL.
        source: String,
        /// Requested by a server.
        automatic: bool,
        /// Server-side id.
        remote_id: Option<String>,
        /// HTTP settings for a URL source (headers, CA bundle, client certificate), or the open artifact file a
        /// local caller handed over; `None`: defaults.
        settings: Option<Box<InstallSettings>>,
        /// Reply.
        reply: Sender<Result<u64, Rejection>>,
    },
    /// Install an artifact for a server (automatic), with per-download HTTP settings (auth headers, TLS, a fresh
    /// link hook) and the server's hash of the file; replies with the job id.
    InstallRemote {
        /// URL.
        source: String,
        /// Server-side id (e.g. the hawkBit action id).
        remote_id: String,
        /// Download settings.
        options: Box<InstallSettings>,
        /// Reply.
        reply: Sender<Result<u64, Rejection>>,
    },
    /// Cancel the job.
    Cancel {
        /// Reply.
        reply: Sender<Result<(), Rejection>>,
    },
    /// Reboot into the new slot now (manual policy).
    Reboot {
        /// Reply.
        reply: Sender<Result<(), Rejection>>,
    },
    /// Local inhibitors held or released.
    SetInhibited(bool),
    /// The local inhibitors now held, as (who, why); empty when none is. Logged, shown in the status, and fed to
    /// the engine like `SetInhibited`.
    SetInhibitors(Vec<(String, String)>),
    /// Mark a slot in the bootloader (outside any job: refused while one is in progress); replies with the slot.
    Mark {
        /// What to mark it.
        state: MarkState,
        /// Which slot.
        slot: SlotRef,
        /// Reply.
        reply: Sender<Result<Slot, Rejection>>,
    },
    /// The finished jobs, oldest first.
    History {
        /// Reply.
        reply: Sender<Vec<JobRecord>>,
    },
    /// Stop the loop.
    Stop,
}

/// Download settings of an install: a server's ([`Command::InstallRemote`]) or a local request's options.
#[derive(Debug, Clone, Default)]
pub struct InstallSettings {
    /// HTTP settings: CA, client certificate, headers, URL refresh hook.
    pub http: otter_installer::HttpOptions,
    /// SHA-256 of the whole artifact file, as the server announced it.
    pub expected_sha256: Option<[u8; 32]>,
    /// The artifact as an open file the caller handed over (D-Bus `InstallFd`); the job's source is then only
    /// its name.
    pub fd: Option<otter_installer::source::SharedFd>,
}

/// What `Command::Mark` does to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkState {
    /// Commit it: bootable, any trial ended.
    Good,
    /// The bootloader will not boot it.
    Bad,
    /// Boot it next: the booted slot is re-committed; the other slot is put on trial (bounded attempts), and the
    /// daemon assesses it after it booted like any trial.
    Active,
}

/// Which slot a `Command::Mark` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRef {
    /// The slot the system runs from.
    Booted,
    /// The other one.
    Other,
    /// A slot by name.
    Slot(Slot),
}

enum Msg {
    Command(Command),
    Progress(Progress),
    InstallDone(Box<Result<otter_installer::InstallReport, InstallError>>),
    HealthDone(Result<(), HealthFailure>),
}

/// What the daemon is doing, for status displays (D-Bus properties, `STATUS=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The booted slot.
    pub booted: Option<Slot>,
    /// The bootloader's next slot.
    pub primary: Option<Slot>,
    /// `idle`, `installing`, `awaiting-reboot`, `rebooting`, `assessing`, `rolling-back`, `error`.
    pub operation: String,
    /// Latest install progress.
    pub progress: Option<Progress>,
    /// The job in progress.
    pub job: Option<crate::engine::Job>,
    /// The last finished job.
    pub last: Option<JobRecord>,
    /// A condition that keeps the daemon from updating (corrupt env, unknown booted slot...).
    pub error: Option<String>,
    /// What the bootloader says about each slot (empty if its environment is unusable).
    pub slots: Vec<(Slot, SlotState)>,
    /// Local inhibitors held, as (who, why).
    pub inhibitors: Vec<(String, String)>,
}

impl Status {
    /// A one-line summary for `STATUS=`.
    pub fn line(&self) -> String {
        let slot = self.booted.map_or("?".to_owned(), |s| s.to_string());
        if let Some(e) = &self.error {
            return format!("booted {slot}; cannot update: {e}");
        }
        match (&self.job, &self.progress) {
            (Some(j), Some(p)) if j.phase == JobPhase::Installing => {
                format!("installing job {} into slot {}: {}%", j.id, j.target, p.percent())
            }
            (Some(j), _) => format!("booted {slot}; job {} {}", j.id, self.operation),
            (None, _) => match &self.last {
                Some(r) => format!("booted {slot}; idle; last job {} {}", r.job.id, r.outcome.word()),
                None => format!("booted {slot}; idle"),
            },
        }
    }
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// `Stop` was received.
    Stopped,
    /// The platform rebooted (simulation).
    Rebooted,
}

/// A handle to a running loop: send commands, read the status.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Msg>,
    status: Arc<Mutex<Status>>,
    subscribers: Arc<Mutex<Subscribers>>,
}

/// Who wants to hear about finished jobs and status changes.
#[derive(Default)]
struct Subscribers {
    finished: Vec<Sender<JobRecord>>,
    status: Vec<Sender<Status>>,
}

impl Handle {
    /// Sends a command (ignored once the loop ended).
    pub fn send(&self, c: Command) {
        let _ = self.tx.send(Msg::Command(c));
    }

    /// Requests an install and waits for the engine's answer.
    pub fn install(&self, source: &str, automatic: bool) -> Result<u64, Rejection> {
        let (reply, rx) = mpsc::channel();
        self.send(Command::Install { source: source.to_owned(), automatic, remote_id: None, settings: None, reply });
        rx.recv().unwrap_or_else(|_| Err(Rejection::NotNow("the daemon stopped".into())))
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Receives every job that finishes from now on, including jobs the start-up reconciliation ended (those are
    /// delivered when [`Runtime::run`] starts, so subscribe between `start` and `run`).
    pub fn subscribe(&self) -> Receiver<JobRecord> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).finished.push(tx);
        rx
    }

    /// Receives the status each time it changes.
    pub fn watch(&self) -> Receiver<Status> {
        let (tx, rx) = mpsc::channel();
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).status.push(tx);
        rx
    }
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
}

/// Opens the configured bootloader backend.
pub fn open_bootloader(settings: &Settings) -> Result<Box<dyn BootBackend + Send>, String> {
    match &settings.bootloader {
        BootloaderSettings::UBoot { fw_env_config, lock_file, scheme } => {
            let text = std::fs::read_to_string(fw_env_config)
                .map_err(|e| format!("cannot read {}: {e}", fw_env_config.display()))?;
            let mut cfg = otter_bootloader::uboot::FwEnvConfig::parse(&text).map_err(|e| e.to_string())?;
            // Device paths in fw_env.config are device paths too: resolve them under the root.
            for d in &mut cfg.devices {
                if let Ok(rel) = d.path.strip_prefix("/") {
                    d.path = settings.root.join(rel);
                }
            }
            let backend = otter_bootloader::uboot::UBootBackend::open(&cfg, *scheme, Some(lock_file))
                .map_err(|e| e.to_string())?;
            Ok(Box::new(backend))
        }
        BootloaderSettings::Grub { grubenv } => {
            Ok(Box::new(otter_bootloader::grub::GrubBackend::open(grubenv.clone()).map_err(|e| e.to_string())?))
        }
    }
}

/// The slot the system was booted from, from the configured command line file.
pub fn booted_slot(settings: &Settings) -> Result<Slot, String> {
    let cmdline = std::fs::read_to_string(&settings.cmdline)
        .map_err(|e| format!("cannot read {}: {e}", settings.cmdline.display()))?;
    otter_bootloader::booted_slot(&cmdline, &settings.root_map).ok_or_else(|| {
        format!("cannot tell the booted slot: no otter.slot= and no known root= in {}", settings.cmdline.display())
    })
}

/// Error codes for which the artifact itself is at fault, so it must not be retried automatically.
fn artifact_fault(code: &str) -> bool {
    matches!(
        code,
        "truncated"
            | "malformed-archive"
            | "too-large"
            | "invalid-manifest"
            | "unsupported-format"
            | "incompatible"
            | "rollback-refused"
            | "corrupt-payload"
            | "window-too-large"
            | "previously-failed"
    )
}

impl Runtime {
    /// Loads the state, opens the bootloader, works out the booted slot and feeds `Started` to the engine.
    /// Problems that prevent updating (corrupt env, unknown booted slot) do not stop the daemon: they are
    /// reported in the status and installs are refused.
    pub fn start(settings: Settings, platform: Box<dyn Platform>) -> Result<(Self, Handle), String> {
        let store = StateStore::new(&settings.state_dir).map_err(|e| e.to_string())?;
        let (persisted, state_error) = store.load();
        let mut status = Status::default();
        if let Some(e) = &state_error {
            tracing::error!("{e}");
        }
        let config =
            EngineConfig { reboot: settings.reboot_policy, commit_deadline: settings.commit_deadline.as_secs() };
        let engine = Engine::new(persisted.clone(), config);
        let (tx, rx) = mpsc::channel();
        let notifier = Notifier::from_env();
        let tick = notifier.ping_interval().map_or(Duration::from_secs(1), |p| p.min(Duration::from_secs(1)));
        let boot = match open_bootloader(&settings) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!("bootloader environment unusable: {e}");
                status.error = Some(format!("bootloader environment unusable: {e}"));
                None
            }
        };
        let status = Arc::new(Mutex::new(status));
        let subscribers = Arc::new(Mutex::new(Subscribers::default()));
        let mut rt = Self {
            settings,
            engine,
            saved: persisted,
            store,
            boot,
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
        };
        let handle = Handle { tx, status, subscribers };
        match booted_slot(&rt.settings) {
            Ok(booted) if rt.boot.is_some() => {
                let b = rt.boot.as_ref().expect("checked");
                let view = BootView { primary: b.primary(), a: b.slot_state(Slot::A), b: b.slot_state(Slot::B) };
                tracing::info!(
                    "booted slot {booted}; bootloader: next {:?}, A {:?}, B {:?}",
                    view.primary,
                    view.a,
                    view.b
                );
                let now = rt.platform.now();
                rt.dispatch(Event::Started { booted, boot: view, now });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("{e}");
                rt.set_error(e);
            }
        }
        rt.publish();
        Ok((rt, handle))
    }

    fn set_error(&mut self, e: String) {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).error = Some(e);
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
                self.install_settings = settings.map(|s| *s);
                let result = self.request(Event::InstallRequested { source, automatic, remote_id, now });
                self.install_settings = None;
                let _ = reply.send(result.map(|()| self.engine.job().map_or(0, |j| j.id)));
            }
            Msg::Command(Command::InstallRemote { source, remote_id, options, reply }) => {
                self.install_settings = Some(*options);
                let event = Event::InstallRequested { source, automatic: true, remote_id: Some(remote_id), now };
                let result = self.request(event);
                self.install_settings = None;
                let _ = reply.send(result.map(|()| self.engine.job().map_or(0, |j| j.id)));
            }
            Msg::Command(Command::Cancel { reply }) => {
                let _ = reply.send(self.request(Event::CancelRequested { now }));
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
            Msg::InstallDone(result) => {
                if let Some((thread, _)) = self.install.take() {
                    let _ = thread.join();
                }
                let event = match *result {
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
                        let code = e.code().to_owned();
                        Event::InstallFailed {
                            artifact_fault: artifact_fault(&code),
                            code,
                            message: e.to_string(),
                            digest: self.last_digest.take(),
                            now,
                        }
                    }
                };
                self.dispatch(event);
            }
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

    /// Marks a slot in the bootloader and stores it at once. Refused while a job is in progress (the job owns the
    /// bootloader state until it ends), and when it would leave no bootable slot.
    fn mark(&mut self, state: MarkState, slot: SlotRef) -> Result<Slot, Rejection> {
        self.engine.check_idle()?;
        let booted = self.engine.booted().ok_or_else(|| Rejection::NotNow("the booted slot is unknown".into()))?;
        let slot = match slot {
            SlotRef::Booted => booted,
            SlotRef::Other => !booted,
            SlotRef::Slot(s) => s,
        };
        let boot =
            self.boot.as_mut().ok_or_else(|| Rejection::NotNow("the bootloader environment is unusable".into()))?;
        if state == MarkState::Bad && boot.slot_state(!slot) == SlotState::Bad {
            return Err(Rejection::NotNow(format!("slot {slot} is the only bootable slot; not marking it bad")));
        }
        let result = match state {
            MarkState::Good => boot.mark_good(slot),
            MarkState::Bad => boot.mark_bad(slot),
            MarkState::Active if slot == booted => boot.mark_good(slot),
            MarkState::Active => boot.set_try_next(slot),
        }
        .and_then(|()| boot.store());
        match result {
            Ok(()) => {
                tracing::info!("slot {slot} marked {state:?}; next boot {:?}", boot.primary());
                Ok(slot)
            }
            Err(e) => {
                let _ = boot.reload();
                tracing::error!("marking slot {slot} {state:?} failed: {e}");
                Err(Rejection::NotNow(format!("bootloader: {e}")))
            }
        }
    }

    /// Feeds a request; a rejection changes nothing and goes back to the caller.
    fn request(&mut self, event: Event) -> Result<(), Rejection> {
        if let Some(e) = &self.status.lock().unwrap_or_else(|p| p.into_inner()).error
            && matches!(event, Event::InstallRequested { .. })
        {
            return Err(Rejection::NotNow(format!("cannot update: {e}")));
        }
        let actions = self.engine.handle(event)?;
        self.execute(actions);
        Ok(())
    }

    /// Feeds an event and carries out the actions, including the events they feed back.
    fn dispatch(&mut self, event: Event) {
        match self.engine.handle(event) {
            Ok(actions) => self.execute(actions),
            Err(r) => tracing::debug!("event ignored: {r}"),
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            // The state must be durable before any effect that depends on it.
            self.persist();
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
                Action::Reboot => {
                    self.reboot();
                    None
                }
                Action::StartHealthChecks => {
                    self.start_health();
                    None
                }
                Action::Finished(record) => {
                    self.finished_job(*record);
                    None
                }
            };
            if let Some(event) = feedback
                && let Ok(more) = self.engine.handle(event)
            {
                queue.extend(more);
            }
        }
        self.persist();
        self.publish();
    }

    fn persist(&mut self) {
        if self.engine.persisted != self.saved {
            match self.store.save(&self.engine.persisted) {
                Ok(()) => self.saved = self.engine.persisted.clone(),
                // Keep running: the engine retries at the next change; report it loudly.
                Err(e) => tracing::error!("cannot persist state: {e}"),
            }
        }
    }

    fn apply_boot(&mut self, changes: &[BootChange], now: u64) -> Event {
        let Some(boot) = self.boot.as_mut() else {
            return Event::BootFailed { message: "bootloader environment unusable".into(), now };
        };
        let result = changes
            .iter()
            .try_for_each(|c| match *c {
                BootChange::MarkBad(s) => boot.mark_bad(s),
                BootChange::TryNext(s) => boot.set_try_next(s),
                BootChange::MarkGood(s) => boot.mark_good(s),
            })
            .and_then(|()| boot.store());
        match result {
            Ok(()) => {
                tracing::info!("bootloader: {changes:?} stored; next boot {:?}", boot.primary());
                Event::BootStored { now }
            }
            Err(e) => {
                tracing::error!("bootloader: {changes:?} failed: {e}");
                // Drop the half-applied in-memory changes so the view matches storage again.
                let _ = boot.reload();
                Event::BootFailed { message: e.to_string(), now }
            }
        }
    }

    fn start_install(&mut self, source: String, target: Slot, min_security_version: u64, refuse: Vec<String>) {
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
            vec![Target { slot_class: "rootfs".into(), path, max_size: self.settings.slot_size }],
            keyring,
            policy,
        );
        req.skip_identical = self.settings.skip_identical;
        // An install cut off by a power failure or a restart continues from here when the same artifact comes
        // again (the server retries the deployment, or the user re-runs the install).
        req.resume_file = Some(self.settings.state_dir.join("install-resume.json"));
        if let Some(options) = self.install_settings.take() {
            req.http = options.http;
            req.expected_sha256 = options.expected_sha256;
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
            let result = otter_installer::install(&req, &progress, &thread_cancel);
            let _ = tx.send(Msg::InstallDone(Box::new(result)));
        });
        self.install = Some((thread, cancel));
    }

    fn start_health(&mut self) {
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

    fn reboot(&mut self) {
        tracing::info!("rebooting");
        self.notifier.status("rebooting");
        match self.platform.reboot(&self.settings.reboot_command) {
            Ok(true) => self.halted = true,
            Ok(false) => {}
            Err(e) => tracing::error!("reboot failed: {e}"),
        }
    }

    fn finished_job(&mut self, record: JobRecord) {
        tracing::info!("job {} finished: {:?}", record.job.id, record.outcome);
        if self.running {
            self.deliver(record);
        } else {
            self.early_records.push(record);
        }
    }

    fn deliver(&self, record: JobRecord) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.finished.retain(|s| s.send(record.clone()).is_ok());
    }

    fn publish(&mut self) {
        let status = {
            let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
            s.booted = self.engine.booted();
            s.primary = self.boot.as_ref().and_then(|b| b.primary());
            s.slots = self.boot.as_ref().map(|b| Slot::ALL.map(|x| (x, b.slot_state(x))).to_vec()).unwrap_or_default();
            s.job = self.engine.job().cloned();
            s.last = self.engine.persisted.history.back().cloned();
            s.operation = match self.engine.job().map(|j| j.phase) {
                None => "idle",
                Some(JobPhase::Installing | JobPhase::Installed) => "installing",
                Some(JobPhase::AwaitingReboot) => "awaiting-reboot",
                Some(JobPhase::Rebooting) => "rebooting",
                Some(JobPhase::Assessing) => "assessing",
                Some(JobPhase::RollingBack) => "rolling-back",
            }
            .to_owned();
            if s.job.is_none() {
                s.progress = None;
            }
            s.clone()
        };
        let line = status.line();
        if status != self.published {
            let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subs.status.retain(|s| s.send(status.clone()).is_ok());
            self.published = status;
        }
        self.notifier.status(&line);
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}
