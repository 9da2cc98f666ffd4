//! The D-Bus service: `io.otter.Updater1` at `/io/otter/Updater1` (see `docs/dbus-api.md`).
//!
//! Thin by design: a method checks the caller, turns the call into a [`Command`] for the runtime loop and maps the
//! engine's answer to a named error; properties are a copy of the loop's [`Status`], fed from [`Handle::watch`]
//! by a forwarding thread that also emits the change signals, and `Completed` is fed from [`Handle::subscribe`].
//! The loop stays the only owner of the engine and the bootloader.
//!
//! zbus runs on a small tokio runtime owned by [`Service`] (one worker thread plus tokio's blocking pool, used for
//! the round trips to the loop). tokio is linked anyway through the installer's HTTP client, so this adds no second
//! async runtime to the binary.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otter_api::{BUS_NAME, Dict, Error, HistoryEntry, Inhibitor, LastError, OBJECT_PATH, Progress, SlotInfo};
use otter_bootloader::{Slot, SlotState};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue};
use zbus::{Connection, interface};

use crate::config::Settings;
use crate::engine::{JobPhase, JobRecord, Outcome, Rejection};
use crate::runtime::{Command, Handle, InstallSettings, MarkState, SlotRef, Status};

/// Which bus the service connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (on the device).
    System,
    /// The session bus of the user running otterd (demos).
    Session,
    /// A bus at this address (`unix:path=/run/…`; tests run a private `dbus-daemon`).
    Address(String),
}

/// A callback that asks the update server client to poll now (`CheckForUpdate()`).
pub type Trigger = Arc<dyn Fn() + Send + Sync>;

/// How the service is set up.
pub struct Options {
    /// The bus to serve on.
    pub bus: Bus,
    /// Called by `CheckForUpdate()`; without one the method fails with `NoServer`.
    pub check_for_update: Option<Trigger>,
    /// Consent requests from the update server (`GetConfirmations()`, `Confirm()`, `ConfirmationRequested`);
    /// without one those methods fail with `NoServer`.
    pub consent: Option<crate::hawkbit::ConfirmationBroker>,
    /// Besides root, members of this group may call mutating methods.
    pub group: String,
    /// The device type (the `Compatible` property).
    pub compatible: String,
    /// The devices of slot A and slot B (shown by `GetSlots()`).
    pub slot_devices: [PathBuf; 2],
}

impl Options {
    /// Options for `settings` on `bus`: group `otter`, no update server.
    pub fn new(bus: Bus, settings: &Settings) -> Self {
        Self {
            bus,
            check_for_update: None,
            consent: None,
            group: "otter".into(),
            compatible: settings.compatible.clone(),
            slot_devices: [settings.slot_a.clone(), settings.slot_b.clone()],
        }
    }
}

/// The running service; dropping it leaves the bus.
pub struct Service {
    conn: Connection,
    // Declared last so it is dropped after the connection.
    rt: tokio::runtime::Runtime,
}

impl Service {
    /// Connects to the bus, serves the interface and takes the well-known name. Returns once the name is owned,
    /// so that READY=1 (sent when the loop runs) means the API is reachable. Call it between [`Runtime::start`]
    /// and [`Runtime::run`], so that jobs the start-up ended are still signalled.
    ///
    /// [`Runtime::start`]: crate::runtime::Runtime::start
    /// [`Runtime::run`]: crate::runtime::Runtime::run
    pub fn start(handle: Handle, options: Options) -> Result<Self, zbus::Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otterd-dbus")
            .enable_all()
            .build()
            .map_err(|e| zbus::Error::InputOutput(Arc::new(e)))?;
        let watch = handle.watch();
        let finished = handle.subscribe();
        let updater = Updater {
            status: handle.status(),
            handle,
            inhibitors: Arc::new(Mutex::new(Inhibitors::default())),
            check_for_update: options.check_for_update,
            consent: options.consent.clone(),
            group: options.group,
            compatible: options.compatible,
            slot_devices: options.slot_devices,
            progress_sent: Instant::now(),
        };
        let conn = rt.block_on(async {
            let builder = match &options.bus {
                Bus::System => zbus::connection::Builder::system()?,
                Bus::Session => zbus::connection::Builder::session()?,
                Bus::Address(a) => zbus::connection::Builder::address(a.as_str())?,
            };
            // Serve first, then request the name: a client that sees the name finds the object.
            builder.serve_at(OBJECT_PATH, updater)?.name(BUS_NAME)?.build().await
        })?;
        tracing::info!("serving {BUS_NAME} on {}", bus_label(&options.bus));
        spawn_forwarders(rt.handle().clone(), conn.clone(), watch, finished);
        if let Some(broker) = &options.consent {
            spawn_consent_forwarder(rt.handle().clone(), conn.clone(), broker.subscribe());
        }
        Ok(Self { conn, rt })
    }

    /// The connection (for tests and callers that serve more).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The runtime zbus runs on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
}

fn bus_label(bus: &Bus) -> String {
    match bus {
        Bus::System => "the system bus".into(),
        Bus::Session => "the session bus".into(),
        Bus::Address(a) => a.clone(),
    }
}

/// Two plain threads block on the loop's channels and hand each change to the zbus runtime.
fn spawn_forwarders(
    rt: tokio::runtime::Handle,
    conn: Connection,
    watch: Receiver<Status>,
    finished: Receiver<JobRecord>,
) {
    let (rt2, conn2) = (rt.clone(), conn.clone());
    std::thread::Builder::new()
        .name("otterd-dbus-status".into())
        .spawn(move || {
            while let Ok(status) = watch.recv() {
                if let Err(e) = rt.block_on(apply_status(&conn, status)) {
                    tracing::warn!("d-bus: cannot signal a status change: {e}");
                }
            }
        })
        .expect("spawning a thread");
    std::thread::Builder::new()
        .name("otterd-dbus-jobs".into())
        .spawn(move || {
            while let Ok(record) = finished.recv() {
                let (code, message) = outcome_detail(&record.outcome);
                let path = otter_api::job_path(record.job.id);
                let result = rt2.block_on(async {
                    let emitter = SignalEmitter::new(&conn2, OBJECT_PATH)?;
                    Updater::completed(&emitter, path, record.outcome.word(), &code, &message).await
                });
                if let Err(e) = result {
                    tracing::warn!("d-bus: cannot signal the end of job {}: {e}", record.job.id);
                }
            }
        })
        .expect("spawning a thread");
}

/// Emits `ConfirmationRequested` for each consent request the update server makes.
fn spawn_consent_forwarder(
    rt: tokio::runtime::Handle,
    conn: Connection,
    requests: Receiver<crate::hawkbit::ConfirmationRequest>,
) {
    std::thread::Builder::new()
        .name("otterd-dbus-consent".into())
        .spawn(move || {
            while let Ok(r) = requests.recv() {
                let result = rt.block_on(async {
                    let emitter = SignalEmitter::new(&conn, OBJECT_PATH)?;
                    Updater::confirmation_requested(&emitter, &r.action_id, &r.version).await
                });
                if let Err(e) = result {
                    tracing::warn!("d-bus: cannot signal the consent request of action {}: {e}", r.action_id);
                }
            }
        })
        .expect("spawning a thread");
}

/// The interval below which progress byte counts are not signalled (percent and phase changes always are).
/// 250 ms: well inside the API's promise of an update at least every second or every percent.
const PROGRESS_SIGNAL_INTERVAL: Duration = Duration::from_millis(250);

async fn apply_status(conn: &Connection, new: Status) -> zbus::Result<()> {
    let iface_ref = conn.object_server().interface::<_, Updater>(OBJECT_PATH).await?;
    let mut iface = iface_ref.get_mut().await;
    let old = std::mem::replace(&mut iface.status, new);
    let e = iface_ref.signal_emitter();
    let new = &iface.status.clone();
    if old.operation != new.operation {
        iface.operation_changed(e).await?;
    }
    let (p_old, p_new) = (progress_of(&old), progress_of(new));
    if p_old != p_new
        && (p_old.percent != p_new.percent
            || p_old.message != p_new.message
            || iface.progress_sent.elapsed() >= PROGRESS_SIGNAL_INTERVAL)
    {
        iface.progress_sent = Instant::now();
        iface.progress_changed(e).await?;
    }
    if old.booted != new.booted {
        iface.booted_slot_changed(e).await?;
    }
    if old.primary != new.primary {
        iface.primary_slot_changed(e).await?;
    }
    if pending_reboot(&old) != pending_reboot(new) {
        iface.pending_reboot_changed(e).await?;
    }
    if last_error_of(&old) != last_error_of(new) {
        iface.last_error_changed(e).await?;
    }
    if old.inhibitors != new.inhibitors {
        iface.inhibitors_changed(e).await?;
    }
    // The install step of a job ended: the new slot is written and verified and the bootloader will try it.
    if let (Some(o), Some(n)) = (&old.job, &new.job)
        && o.id == n.id
        && matches!(o.phase, JobPhase::Installing | JobPhase::Installed)
        && matches!(n.phase, JobPhase::AwaitingReboot | JobPhase::Rebooting)
    {
        let version = n.artifact.as_ref().map_or("?", |a| a.version.as_str());
        let message = format!("slot {} holds version {version}; reboot pending", n.target);
        Updater::completed(e, otter_api::job_path(n.id), "installed", "", &message).await?;
    }
    Ok(())
}

fn outcome_detail(outcome: &Outcome) -> (String, String) {
    match outcome {
        Outcome::Committed => (String::new(), String::new()),
        Outcome::RolledBack { reason } => ("rolled-back".into(), reason.clone()),
        Outcome::Failed { code, message } => (code.clone(), message.clone()),
        Outcome::Cancelled => ("cancelled".into(), "the update was cancelled".into()),
    }
}

fn progress_of(s: &Status) -> Progress {
    let Some(job) = &s.job else { return Progress::default() };
    match (job.phase, &s.progress) {
        (JobPhase::Installing, Some(p)) => Progress {
            percent: p.percent(),
            bytes_done: p.bytes_written,
            bytes_total: p.total,
            message: match p.phase {
                otter_installer::Phase::Connecting => "connecting",
                otter_installer::Phase::Verifying => "verifying",
                otter_installer::Phase::Writing => "writing",
                otter_installer::Phase::Syncing => "syncing",
                otter_installer::Phase::Done => "done",
            }
            .into(),
        },
        (JobPhase::Installing, None) => Progress { message: "starting".into(), ..Progress::default() },
        (_, p) => {
            let total = p.map_or(0, |p| p.total);
            Progress { percent: 100, bytes_done: total, bytes_total: total, message: s.operation.clone() }
        }
    }
}

fn pending_reboot(s: &Status) -> bool {
    s.job.as_ref().is_some_and(|j| matches!(j.phase, JobPhase::AwaitingReboot | JobPhase::Rebooting))
}

fn last_error_of(s: &Status) -> LastError {
    if let Some(e) = &s.error {
        return LastError { code: "cannot-update".into(), message: e.clone() };
    }
    if let Some(e) = &s.reboot_error {
        // The job waits for a reboot that failed; it is retried with backoff.
        return LastError { code: "reboot-failed".into(), message: e.clone() };
    }
    match s.last.as_ref().map(|r| &r.outcome) {
        Some(o @ (Outcome::Failed { .. } | Outcome::RolledBack { .. })) => {
            let (code, message) = outcome_detail(o);
            LastError { code, message }
        }
        _ => LastError::default(),
    }
}

fn slot_name(s: Option<Slot>) -> String {
    s.map_or(String::new(), |s| s.to_string())
}

fn rejected(r: Rejection) -> Error {
    match r {
        Rejection::Busy { .. } => Error::Busy(r.to_string()),
        _ => Error::NotNow(r.to_string()),
    }
}

/// Most inhibitors one caller (one uid, whatever the number of its connections) may hold at once. An inhibitor
/// costs otterd a descriptor (the pipe's read end) and a watching thread; without a cap one `otter`-group member
/// holding a thousand exhausted the daemon's descriptors and a bootloader store failed for want of one.
pub const MAX_INHIBITORS_PER_CALLER: usize = 16;
/// Most inhibitors otterd holds at once, all callers together (bounds the descriptors and threads they cost well
/// below the default limit of 1024 open files, whoever the callers are).
pub const MAX_INHIBITORS: usize = 64;

/// One held inhibitor.
struct Held {
    uid: u32,
    who: String,
    why: String,
}

/// Inhibitors held, by id; each has a thread waiting for its pipe to close.
#[derive(Default)]
struct Inhibitors {
    next: u64,
    held: BTreeMap<u64, Held>,
}

impl Inhibitors {
    /// Tells the loop who holds inhibitors now (called with the lock held, so the loop sees changes in order).
    fn publish(&self, handle: &Handle) {
        handle.send(Command::SetInhibitors(self.held.values().map(|h| (h.who.clone(), h.why.clone())).collect()));
    }

    /// Refuses one more inhibitor for `uid` when it or otterd as a whole is at its cap.
    fn check_room(&self, uid: u32) -> Result<(), Error> {
        let of_caller = self.held.values().filter(|h| h.uid == uid).count();
        if of_caller >= MAX_INHIBITORS_PER_CALLER {
            return Err(Error::LimitExceeded(format!(
                "uid {uid} already holds {of_caller} inhibitors (at most {MAX_INHIBITORS_PER_CALLER} per caller)"
            )));
        }
        if self.held.len() >= MAX_INHIBITORS {
            return Err(Error::LimitExceeded(format!("otterd already holds {MAX_INHIBITORS} inhibitors")));
        }
        Ok(())
    }
}

/// Who called.
struct Caller {
    uid: u32,
    pid: Option<u32>,
    sender: String,
}

impl Caller {
    fn is_root(&self) -> bool {
        self.uid == 0
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "uid {}, pid {pid}, {}", self.uid, self.sender),
            None => write!(f, "uid {}, {}", self.uid, self.sender),
        }
    }
}

/// Whether `uid` is in `group` by the group database (primary group or member list).
fn in_group(uid: u32, group: &str) -> bool {
    use nix::unistd::{Group, Uid, User};
    let (Ok(Some(g)), Ok(Some(u))) = (Group::from_name(group), User::from_uid(Uid::from_raw(uid))) else {
        return false;
    };
    u.gid == g.gid || g.mem.contains(&u.name)
}

struct Updater {
    handle: Handle,
    /// The loop's status as last watched.
    status: Status,
    inhibitors: Arc<Mutex<Inhibitors>>,
    check_for_update: Option<Trigger>,
    consent: Option<crate::hawkbit::ConfirmationBroker>,
    group: String,
    compatible: String,
    slot_devices: [PathBuf; 2],
    progress_sent: Instant,
}

impl Updater {
    /// Identifies the sender of a call by asking the bus for its uid (the kernel's peer credentials, not anything
    /// the caller says) and refuses callers that are neither root nor in the group. This check stands on its own:
    /// a bus policy that lets too much through does not open the mutating methods.
    async fn authorize(&self, conn: &Connection, hdr: &Header<'_>, what: &str) -> Result<Caller, Error> {
        let sender = hdr.sender().ok_or_else(|| Error::NotAuthorized("the call has no sender".into()))?.to_owned();
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let name = zbus::names::BusName::from(sender.clone());
        let uid = dbus
            .get_connection_unix_user(name.clone())
            .await
            .map_err(|e| Error::NotAuthorized(format!("cannot identify the caller {sender}: {e}")))?;
        let pid = dbus.get_connection_unix_process_id(name).await.ok();
        let caller = Caller { uid, pid, sender: sender.to_string() };
        let group = self.group.clone();
        let allowed = uid == 0 || tokio::task::spawn_blocking(move || in_group(uid, &group)).await.unwrap_or(false);
        if !allowed {
            tracing::warn!("refused {what} from {caller}: neither root nor in group {}", self.group);
            return Err(Error::NotAuthorized(format!(
                "{what} needs root or membership in group {:?} (caller uid {uid})",
                self.group
            )));
        }
        tracing::info!("{what} from {caller}");
        Ok(caller)
    }

    /// Sends a command to the loop and waits for its reply on the blocking pool.
    async fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(mpsc::Sender<T>) -> Command + Send + 'static,
    ) -> Result<T, Error> {
        let handle = self.handle.clone();
        tokio::task::spawn_blocking(move || {
            let (tx, rx) = mpsc::channel();
            handle.send(make(tx));
            // The loop answers within milliseconds; a loop that does not is stuck and the watchdog will act.
            rx.recv_timeout(Duration::from_secs(30))
        })
        .await
        .map_err(|e| Error::Failed(format!("internal error: {e}")))?
        .map_err(|_| Error::Failed("the update engine did not answer".into()))
    }
}

/// zbus's interface macro emits undocumented public helpers; the lint is relaxed for this module only.
#[allow(missing_docs)]
mod iface {
    use super::*;

    #[interface(name = "io.otter.Updater1")]
    impl Updater {
        /// Install(s source, a{sv} options) → o job
        #[zbus(out_args("job"))]
        async fn install(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
            source: String,
            options: HashMap<String, OwnedValue>,
        ) -> Result<OwnedObjectPath, Error> {
            let caller = self.authorize(conn, &hdr, "Install").await?;
            let settings = install_options(options, &caller)?;
            let is_url = source.starts_with("http://") || source.starts_with("https://");
            if !is_url {
                // otterd would open the path as root: a member of the group could probe for or feed it any file
                // on the device. Members pass the file itself (InstallFd), opened with their own rights.
                if !caller.is_root() {
                    tracing::warn!("refused Install of a file path from {caller}: only root may name a path");
                    return Err(Error::NotAuthorized(format!(
                        "only root may have otterd open a file path (caller uid {}); pass the file with InstallFd \
                         (otterctl install FILE does)",
                        caller.uid
                    )));
                }
                let path = Path::new(&source);
                if !path.is_absolute() {
                    return Err(Error::InvalidArgument(format!("{source:?} is neither an absolute path nor a URL")));
                }
                if !path.is_file() {
                    return Err(Error::InvalidArgument(format!("{source}: no such file (as otterd sees it)")));
                }
            }
            let id = self
                .ask(move |reply| Command::Install { source, automatic: false, remote_id: None, settings, reply })
                .await?
                .map_err(rejected)?;
            Ok(otter_api::job_path(id))
        }

        /// InstallFd(h artifact, a{sv} options) → o job: installs from a file (or pipe) the caller opened, so the
        /// daemon needs no access to the caller's path. Option `name` (s) names it in the status and history.
        #[zbus(out_args("job"))]
        async fn install_fd(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
            artifact: OwnedFd,
            mut options: HashMap<String, OwnedValue>,
        ) -> Result<OwnedObjectPath, Error> {
            self.authorize(conn, &hdr, "InstallFd").await?;
            let name = match options.remove("name") {
                Some(v) => String::try_from(v)
                    .map_err(|_| Error::InvalidArgument("option \"name\" must be a string".into()))?,
                None => "(file descriptor)".into(),
            };
            if let Some(other) = options.keys().next() {
                return Err(Error::InvalidArgument(format!("unknown option {other:?} (InstallFd takes \"name\")")));
            }
            let fd = std::os::fd::OwnedFd::from(artifact);
            check_readable(&fd)?;
            let settings =
                InstallSettings { fd: Some(otter_installer::source::SharedFd::new(fd)), ..Default::default() };
            let settings = Some(Box::new(settings));
            let id = self
                .ask(move |reply| Command::Install { source: name, automatic: false, remote_id: None, settings, reply })
                .await?
                .map_err(rejected)?;
            Ok(otter_api::job_path(id))
        }

        /// Cancel()
        async fn cancel(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
        ) -> Result<(), Error> {
            self.authorize(conn, &hdr, "Cancel").await?;
            self.ask(|reply| Command::Cancel { reply }).await?.map_err(rejected)
        }

        /// CheckForUpdate()
        async fn check_for_update(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
        ) -> Result<(), Error> {
            self.authorize(conn, &hdr, "CheckForUpdate").await?;
            match &self.check_for_update {
                Some(trigger) => {
                    trigger();
                    Ok(())
                }
                None => Err(Error::NoServer("no update server is configured".into())),
            }
        }

        /// GetConfirmations() → a(ss): updates the server holds back until a local application consents
        /// (action id, version).
        async fn get_confirmations(&self) -> Result<Vec<(String, String)>, Error> {
            let broker =
                self.consent.as_ref().ok_or_else(|| Error::NoServer("no update server is configured".into()))?;
            Ok(broker.pending().into_iter().map(|r| (r.action_id, r.version)).collect())
        }

        /// Confirm(s action, b accept, s details): consents to (or declines) an update the server holds back;
        /// the answer is sent to the server at once.
        async fn confirm(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
            action: String,
            accept: bool,
            details: String,
        ) -> Result<(), Error> {
            self.authorize(conn, &hdr, "Confirm").await?;
            let broker =
                self.consent.as_ref().ok_or_else(|| Error::NoServer("no update server is configured".into()))?;
            let details = (!details.is_empty()).then_some(details);
            broker.answer(&action, accept, details).map_err(|e| Error::InvalidArgument(e.to_string()))
        }

        /// Reboot()
        async fn reboot(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
        ) -> Result<(), Error> {
            self.authorize(conn, &hdr, "Reboot").await?;
            self.ask(|reply| Command::Reboot { reply }).await?.map_err(rejected)
        }

        /// Mark(s state, s slot) → s slot
        #[zbus(out_args("slot"))]
        async fn mark(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
            state: String,
            slot: String,
        ) -> Result<String, Error> {
            let state = match state.as_str() {
                "good" => MarkState::Good,
                "bad" => MarkState::Bad,
                "active" => MarkState::Active,
                _ => return Err(Error::InvalidArgument(format!("unknown state {state:?} (good, bad or active)"))),
            };
            let slot = match slot.as_str() {
                "booted" => SlotRef::Booted,
                "other" => SlotRef::Other,
                s => SlotRef::Slot(
                    s.parse()
                        .map_err(|_| Error::InvalidArgument(format!("unknown slot {s:?} (booted, other, A or B)")))?,
                ),
            };
            self.authorize(conn, &hdr, "Mark").await?;
            let slot = self.ask(move |reply| Command::Mark { state, slot, reply }).await?.map_err(rejected)?;
            Ok(slot.to_string())
        }

        /// GetSlots() → a(sa{sv})
        #[zbus(out_args("slots"))]
        async fn get_slots(&self) -> Vec<(String, Dict)> {
            let s = &self.status;
            s.slots
                .iter()
                .map(|&(slot, state)| {
                    let (state, attempts_left) = match state {
                        SlotState::Good => ("good", None),
                        SlotState::Bad => ("bad", None),
                        SlotState::Trying { attempts_left } => ("trying", Some(attempts_left)),
                    };
                    SlotInfo {
                        name: slot.to_string(),
                        state: state.into(),
                        attempts_left,
                        booted: s.booted == Some(slot),
                        primary: s.primary == Some(slot),
                        device: self.slot_devices[usize::from(slot == Slot::B)].display().to_string(),
                    }
                    .to_dbus()
                })
                .collect()
        }

        /// GetHistory() → aa{sv}
        #[zbus(out_args("jobs"))]
        async fn get_history(&self) -> Result<Vec<Dict>, Error> {
            let records = self.ask(|reply| Command::History { reply }).await?;
            Ok(records
                .iter()
                .map(|r| {
                    let (code, message) = outcome_detail(&r.outcome);
                    HistoryEntry {
                        id: r.job.id,
                        source: r.job.source.clone(),
                        result: r.outcome.word().into(),
                        code,
                        message,
                        version: r.job.artifact.as_ref().map(|a| a.version.clone()).unwrap_or_default(),
                        from: r.job.from.to_string(),
                        target: r.job.target.to_string(),
                        automatic: r.job.automatic,
                        started_at: r.job.started_at,
                        finished_at: r.finished_at,
                    }
                    .to_dbus()
                })
                .collect())
        }

        /// Inhibit(s why) → h fd
        #[zbus(out_args("fd"))]
        async fn inhibit(
            &self,
            #[zbus(header)] hdr: Header<'_>,
            #[zbus(connection)] conn: &Connection,
            why: String,
        ) -> Result<OwnedFd, Error> {
            if why.trim().is_empty() {
                return Err(Error::InvalidArgument("say why updates are inhibited".into()));
            }
            let caller = self.authorize(conn, &hdr, "Inhibit").await?;
            // The check and the insertion happen under one lock, so concurrent calls cannot overshoot the caps.
            let mut inh = self.inhibitors.lock().unwrap_or_else(|e| e.into_inner());
            inh.check_room(caller.uid).inspect_err(|e| tracing::warn!("refused Inhibit from {caller}: {e}"))?;
            // The caller gets the write end of a pipe; the read end sees EOF once every copy of it is closed (the
            // holder exited or closed it), like logind's inhibitor fds. Both ends are close-on-exec, so nothing
            // otterd spawns keeps an inhibitor alive.
            let (mut reader, writer) = std::io::pipe().map_err(|e| Error::Failed(format!("pipe: {e}")))?;
            inh.next += 1;
            let id = inh.next;
            let (inhibitors, handle) = (self.inhibitors.clone(), self.handle.clone());
            std::thread::Builder::new()
                .name("otterd-inhibitor".into())
                .spawn(move || {
                    let mut buf = [0u8; 64];
                    // Anything written is ignored; only EOF (or an error) releases the inhibitor.
                    while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                    let mut inh = inhibitors.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(h) = inh.held.remove(&id) {
                        tracing::info!("inhibitor released: {} ({})", h.who, h.why);
                    }
                    inh.publish(&handle);
                })
                .map_err(|e| Error::Failed(format!("cannot watch the inhibitor: {e}")))?;
            inh.held.insert(id, Held { uid: caller.uid, who: caller.to_string(), why });
            inh.publish(&self.handle);
            drop(inh);
            Ok(OwnedFd::from(std::os::fd::OwnedFd::from(writer)))
        }

        /// Operation: idle, installing, awaiting-reboot, rebooting, assessing, rolling-back.
        #[zbus(property)]
        async fn operation(&self) -> String {
            if self.status.operation.is_empty() { "idle".into() } else { self.status.operation.clone() }
        }

        /// Progress (u percent, t bytes_done, t bytes_total, s message).
        #[zbus(property)]
        async fn progress(&self) -> Progress {
            progress_of(&self.status)
        }

        /// BootedSlot: A, B, or empty if unknown.
        #[zbus(property)]
        async fn booted_slot(&self) -> String {
            slot_name(self.status.booted)
        }

        /// PrimarySlot: the slot the bootloader boots next.
        #[zbus(property)]
        async fn primary_slot(&self) -> String {
            slot_name(self.status.primary)
        }

        /// Version: otterd's version.
        #[zbus(property(emits_changed_signal = "const"))]
        async fn version(&self) -> String {
            env!("CARGO_PKG_VERSION").into()
        }

        /// Compatible: the device type.
        #[zbus(property(emits_changed_signal = "const"))]
        async fn compatible(&self) -> String {
            self.compatible.clone()
        }

        /// PendingReboot: a new slot waits for the reboot.
        #[zbus(property)]
        async fn pending_reboot(&self) -> bool {
            pending_reboot(&self.status)
        }

        /// LastError (s code, s message).
        #[zbus(property)]
        async fn last_error(&self) -> LastError {
            last_error_of(&self.status)
        }

        /// Inhibitors a(ss): who, why.
        #[zbus(property)]
        async fn inhibitors(&self) -> Vec<Inhibitor> {
            self.status.inhibitors.iter().map(|(who, why)| Inhibitor { who: who.clone(), why: why.clone() }).collect()
        }

        /// ConfirmationRequested(s action, s version): the update server asks for consent (answer with `Confirm`).
        #[zbus(signal)]
        pub async fn confirmation_requested(
            emitter: &SignalEmitter<'_>,
            action: &str,
            version: &str,
        ) -> zbus::Result<()>;

        /// Completed(o job, s result, s code, s message)
        #[zbus(signal)]
        pub async fn completed(
            emitter: &SignalEmitter<'_>,
            job: OwnedObjectPath,
            result: &str,
            code: &str,
            message: &str,
        ) -> zbus::Result<()>;
    }
}

/// Refuses a descriptor the daemon could not read an artifact from: opened write-only, or a directory.
fn check_readable(fd: &std::os::fd::OwnedFd) -> Result<(), Error> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| Error::InvalidArgument(format!("the artifact descriptor: {e}")))?;
    if nix::fcntl::OFlag::from_bits_truncate(flags) & nix::fcntl::OFlag::O_ACCMODE == nix::fcntl::OFlag::O_WRONLY {
        return Err(Error::InvalidArgument("the artifact descriptor is open for writing only".into()));
    }
    let file = std::fs::File::from(fd.try_clone().map_err(|e| Error::Failed(format!("dup: {e}")))?);
    match file.metadata() {
        Ok(m) if m.is_dir() => Err(Error::InvalidArgument("the artifact descriptor is a directory".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(Error::InvalidArgument(format!("the artifact descriptor: {e}"))),
    }
}

/// Reads `Install` options, named as RAUC's `InstallBundle` names them: `http-headers` (`as`, "Name: value"),
/// `tls-ca` (`s`, a PEM CA bundle to trust instead of the system roots) and `tls-cert` (`s`, a PEM file with the
/// client certificate and its key). Any other key is an error rather than silently ignored.
///
/// `tls-ca` and `tls-cert` make otterd read a file with its own (root) rights, and `tls-cert` makes it present
/// whatever key that file holds to a server the caller chose: only root may pass them ([`Error::NotAuthorized`]
/// for anyone else), and only as regular files of at most [`otter_common::http::MAX_PEM`] bytes (`/dev/zero` would be read until
/// memory runs out).
fn install_options(
    options: HashMap<String, OwnedValue>,
    caller: &Caller,
) -> Result<Option<Box<InstallSettings>>, Error> {
    if options.is_empty() {
        return Ok(None);
    }
    let mut http = otter_installer::HttpOptions::default();
    let file = |key: &str, v: OwnedValue| -> Result<PathBuf, Error> {
        if !caller.is_root() {
            tracing::warn!("refused option {key:?} from {caller}: only root may pass it");
            return Err(Error::NotAuthorized(format!(
                "only root may pass option {key:?}: it makes otterd read a file (caller uid {})",
                caller.uid
            )));
        }
        let path = PathBuf::from(
            String::try_from(v).map_err(|_| Error::InvalidArgument(format!("option {key:?} must be a string")))?,
        );
        // The same bounded read the HTTP client does later, so a bad file is the caller's error now.
        match otter_common::http::read_pem(&path) {
            Ok(_) => Ok(path),
            Err(e) => Err(Error::InvalidArgument(format!("option {key:?}: {}: {e}", path.display()))),
        }
    };
    for (key, value) in options {
        match key.as_str() {
            "http-headers" => {
                let list = Vec::<String>::try_from(value).map_err(|_| {
                    Error::InvalidArgument("option \"http-headers\" must be an array of strings".into())
                })?;
                for h in list {
                    let (name, v) = h
                        .split_once(':')
                        .ok_or_else(|| Error::InvalidArgument(format!("header {h:?} is not \"Name: value\"")))?;
                    http.headers.push((name.trim().to_owned(), v.trim().to_owned()));
                }
            }
            "tls-ca" => http.ca_bundle = Some(file(&key, value)?),
            "tls-cert" => http.client_identity = Some(file(&key, value)?),
            other => return Err(Error::InvalidArgument(format!("unknown option {other:?}"))),
        }
    }
    Ok(Some(Box::new(InstallSettings { http, ..Default::default() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reboot_is_the_last_error_until_the_reboot_happens() {
        let mut s =
            Status { reboot_error: Some("[\"systemctl\", \"reboot\"] exited with 1".into()), ..Status::default() };
        let e = last_error_of(&s);
        assert_eq!((e.code.as_str(), e.message.contains("exited with 1")), ("reboot-failed", true));
        s.reboot_error = None;
        assert_eq!(last_error_of(&s).code, "");
    }

    fn held(uid: u32) -> Held {
        Held { uid, who: format!("uid {uid}"), why: "test".into() }
    }

    #[test]
    fn inhibitors_are_capped_per_caller_and_in_all() {
        let mut inh = Inhibitors::default();
        for id in 0..MAX_INHIBITORS_PER_CALLER as u64 {
            inh.check_room(1000).unwrap();
            inh.held.insert(id, held(1000));
        }
        assert!(matches!(inh.check_room(1000), Err(Error::LimitExceeded(m)) if m.contains("per caller")));
        // Other callers fill the rest, up to the total.
        let mut id = 100;
        for uid in 2000.. {
            if inh.held.len() == MAX_INHIBITORS {
                break;
            }
            inh.check_room(uid).unwrap();
            for _ in 0..MAX_INHIBITORS_PER_CALLER.min(MAX_INHIBITORS - inh.held.len()) {
                inh.held.insert(id, held(uid));
                id += 1;
            }
        }
        assert!(matches!(inh.check_room(0), Err(Error::LimitExceeded(m)) if m.contains("otterd already holds")));
    }
}
