//! The update engine: every decision otterd makes, as a pure function of (state, event).
//!
//! [`Engine::handle`] takes an [`Event`] (something that happened: a request, an install finishing, a health
//! verdict, a clock tick, the daemon starting in some slot) and returns the [`Action`]s to carry out. It does no
//! I/O: the runtime persists [`Engine::persisted`] whenever it changed *before* it executes the actions, so after
//! a power cut the engine restarts from a state that never claims more than what had happened.
//!
//! Job phases, in order:
//!
//! ```text
//! Installing ─► Installed ─► AwaitingReboot ─► Rebooting ─► Assessing ─► (committed)
//!     │             │              │                │            │
//!     ▼             ▼              ▼                ▼            ▼
//!  (failed)   (cancelled)    (cancelled)     (rolled back)  RollingBack ─► (rolled back)
//! ```

use std::collections::VecDeque;

use otter_bootloader::{Slot, SlotState};
use serde::{Deserialize, Serialize};

/// Minutes after midnight (UTC) of `now`, the clock the maintenance window is given in.
pub fn minute_of_day(now: u64) -> u32 {
    ((now % 86_400) / 60) as u32
}

/// Finished jobs kept in the history.
pub const HISTORY_LEN: usize = 20;
/// Digests of failed artifacts remembered (oldest dropped first).
pub const FAILED_DIGESTS_LEN: usize = 32;

/// Where a job's phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobPhase {
    /// Downloading and writing the inactive slot.
    Installing,
    /// The slot holds the verified image; the bootloader is being told to try it.
    Installed,
    /// The bootloader will try the new slot at the next boot; waiting for the reboot policy.
    AwaitingReboot,
    /// A reboot into the new slot was requested.
    Rebooting,
    /// Booted into the new slot on trial; health checks are running.
    Assessing,
    /// The trial failed; the new slot is marked bad and the device reboots into the old one.
    RollingBack,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// The new slot passed its health checks and was committed.
    Committed,
    /// The device is back on the old slot.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// The job failed before any reboot; the device never left the old slot.
    Failed {
        /// Stable error code.
        code: String,
        /// Human-readable message.
        message: String,
    },
    /// Cancelled on request; the device never left the old slot.
    Cancelled,
}

impl Outcome {
    /// A short word for the outcome (`committed`, `rolled-back`, `failed`, `cancelled`).
    pub fn word(&self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::RolledBack { .. } => "rolled-back",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The artifact a job installs, once its manifest was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    /// SHA-256 of the signed manifest.
    pub digest: String,
    /// Display version.
    pub version: String,
    /// Anti-rollback counter.
    pub security_version: u64,
}

/// The one job in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Sequential id.
    pub id: u64,
    /// File path or URL.
    pub source: String,
    /// Whether a server (not a local user) asked for it; automatic jobs never retry a failed artifact.
    pub automatic: bool,
    /// Server-side identity of the job (e.g. a hawkBit action id), if any.
    #[serde(default)]
    pub remote_id: Option<String>,
    /// The slot the job was started from.
    pub from: Slot,
    /// The slot being installed (always `!from`).
    pub target: Slot,
    /// Current phase.
    pub phase: JobPhase,
    /// The verified artifact, once known.
    pub artifact: Option<ArtifactInfo>,
    /// When the job started (seconds since the epoch).
    pub started_at: u64,
    /// When the phase last changed.
    pub updated_at: u64,
    /// When the current health assessment started.
    pub assess_started_at: Option<u64>,
    /// How many times the new slot started an assessment (more than one: the trial boot was restarted).
    pub trial_boots: u32,
    /// Why a rollback was started, while rolling back.
    pub rollback_reason: Option<String>,
    /// Cancel was requested after the slot was installed; the job ends `cancelled` once the new slot is durably
    /// marked bad. A start-up that finds the device in the new slot rolls back instead of assessing it.
    #[serde(default)]
    pub cancel_requested: bool,
}

/// Failure code of an install cut off by a restart or power failure. The slot holds no valid image, but the
/// installer's resume record lets the same artifact continue where it stopped, so a server-driven job is retried.
pub const INTERRUPTED: &str = "interrupted";

/// Failure code of a job stopped because its state could not be saved (full or read-only state directory).
pub const STATE_NOT_SAVED: &str = "state-not-saved";

/// A finished job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job as it was when it ended.
    pub job: Job,
    /// How it ended.
    pub outcome: Outcome,
    /// When it ended.
    pub finished_at: u64,
}

/// Everything that must survive a reboot or a power cut.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The job in progress.
    pub job: Option<Job>,
    /// Finished jobs, newest last, at most [`HISTORY_LEN`].
    pub history: VecDeque<JobRecord>,
    /// Highest `security_version` ever committed: artifacts below it are refused.
    pub security_version: u64,
    /// Manifest digests of artifacts that failed (install error from the artifact, or rolled back).
    pub failed_digests: VecDeque<String>,
    /// Id of the most recent job (ids start at 1).
    pub next_job_id: u64,
}

/// What the bootloader says, as read at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootView {
    /// The slot the bootloader will boot next.
    pub primary: Option<Slot>,
    /// State of slot A.
    pub a: SlotState,
    /// State of slot B.
    pub b: SlotState,
    /// The anti-rollback floor the environment keeps (0 if none).
    pub security_version: u64,
}

impl BootView {
    /// State of `slot`.
    pub fn state(&self, slot: Slot) -> SlotState {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }
}

/// When reboots into a new slot may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootPolicy {
    /// As soon as the new slot is ready (and nothing inhibits).
    Immediate,
    /// Only when asked (`Reboot()` on D-Bus).
    Manual,
    /// Daily, between two times of day (minutes after midnight, UTC); the window may
    /// wrap past midnight.
    Window {
        /// Start, minutes after midnight.
        start: u32,
        /// End (exclusive), minutes after midnight.
        end: u32,
    },
}

impl RebootPolicy {
    /// Whether `minute` (after midnight) is inside the policy's window.
    pub fn allows(&self, minute: u32) -> bool {
        match *self {
            Self::Immediate => true,
            Self::Manual => false,
            Self::Window { start, end } if start <= end => (start..end).contains(&minute),
            Self::Window { start, end } => minute >= start || minute < end,
        }
    }
}

/// Configuration the engine's decisions depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Reboot policy.
    pub reboot: RebootPolicy,
    /// Seconds the new slot has to pass its health checks.
    pub commit_deadline: u64,
    /// The `security_version` the running image declares (`/usr/lib/otter/security-version`; 0 if none). It
    /// becomes part of the floor once the running slot is committed: at start-up outside a trial (seeding a fresh
    /// device), and when a trial, ours or adopted, commits.
    pub image_security_version: u64,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The daemon started; `booted` is the slot it runs from (the truth), `boot` what the bootloader says.
    Started {
        /// The booted slot.
        booted: Slot,
        /// The bootloader's view.
        boot: BootView,
        /// Now (seconds since the epoch).
        now: u64,
    },
    /// Install an artifact.
    InstallRequested {
        /// File path or URL.
        source: String,
        /// Requested by a server rather than a local user.
        automatic: bool,
        /// Server-side id, if any.
        remote_id: Option<String>,
        /// Now.
        now: u64,
    },
    /// The installer finished writing and verifying the slot.
    InstallSucceeded {
        /// The artifact installed.
        artifact: ArtifactInfo,
        /// Now.
        now: u64,
    },
    /// The installer failed, or was cancelled.
    InstallFailed {
        /// Stable error code (for the record and the server).
        code: String,
        /// Message.
        message: String,
        /// The artifact's digest, if its manifest was read.
        digest: Option<String>,
        /// What the engine decides by: cancelled, the artifact's fault (never retried automatically), other.
        cause: FailureCause,
        /// Now.
        now: u64,
    },
    /// The bootloader changes of the last decision were stored.
    BootStored {
        /// Now.
        now: u64,
    },
    /// Storing bootloader changes failed.
    BootFailed {
        /// Message.
        message: String,
        /// Now.
        now: u64,
    },
    /// Cancel the job.
    CancelRequested {
        /// Now.
        now: u64,
    },
    /// Reboot now (manual policy).
    RebootRequested {
        /// Now.
        now: u64,
    },
    /// Local inhibitors changed.
    InhibitedChanged {
        /// Whether any inhibitor is held.
        inhibited: bool,
        /// Now.
        now: u64,
    },
    /// The state could not be saved before the runtime's next step; that step and all after it were not taken.
    /// A job that has not switched the bootloader yet ends `state-not-saved`; a later one holds (a dropped
    /// reboot is waited for again).
    StateNotSaved {
        /// Why.
        message: String,
        /// Now.
        now: u64,
    },
    /// The reboot command failed: the device is not going down. The job waits for its reboot again (or keeps
    /// rolling back); automatic attempts back off (5 s doubling to 5 minutes).
    RebootFailed {
        /// The error.
        message: String,
        /// Now.
        now: u64,
    },
    /// Periodic clock tick.
    Tick {
        /// Now.
        now: u64,
    },
    /// All health checks passed.
    HealthPassed {
        /// Now.
        now: u64,
    },
    /// A health check failed.
    HealthFailed {
        /// What failed.
        reason: String,
        /// Now.
        now: u64,
    },
}

/// A bootloader change; all changes of one decision are stored together, in one atomic store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootChange {
    /// Mark a slot bad.
    MarkBad(Slot),
    /// Put a slot on trial for the next boot.
    TryNext(Slot),
    /// Commit a slot.
    MarkGood(Slot),
    /// Raise the anti-rollback floor the environment keeps (never lowers it).
    RaiseSecurityVersion(u64),
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Apply these bootloader changes and store them once; then feed back `BootStored` or `BootFailed`.
    Boot(Vec<BootChange>),
    /// Start installing into `target`; feed back `InstallSucceeded` / `InstallFailed`.
    Install {
        /// Source.
        source: String,
        /// Slot to write.
        target: Slot,
        /// Lowest acceptable security version.
        min_security_version: u64,
        /// Manifest digests to refuse (automatic jobs only).
        refuse: Vec<String>,
    },
    /// Cancel the running install.
    CancelInstall,
    /// Reboot the device; feed back `RebootFailed` if it did not go down.
    Reboot,
    /// Run the health checks; feed back `HealthPassed` / `HealthFailed`.
    StartHealthChecks,
    /// A job ended (report it: D-Bus signal, server feedback).
    Finished(Box<JobRecord>),
}

/// Why a request was refused (or an event did not apply). Callers decide by variant: [`Rejection::Busy`] and
/// [`Rejection::Inhibited`] mean "try again later", the others that the request cannot succeed as things are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Another job is in progress.
    #[error("busy: job {id} is {phase:?}")]
    Busy {
        /// The running job.
        id: u64,
        /// Its phase.
        phase: JobPhase,
    },
    /// A local application holds an inhibitor: no install starts and no reboot happens until it is released.
    /// Not a failure: try again later.
    #[error("a local application inhibits {0}")]
    Inhibited(Inhibits),
    /// The daemon has not (yet) learned which slot it runs from.
    #[error("the daemon is still starting: the booted slot is not known")]
    NotBooted,
    /// Updating is impossible as the device is (unusable bootloader environment, unknown booted slot); the
    /// message is the condition the status shows.
    #[error("cannot update: {0}")]
    Unusable(String),
    /// Cancel without a job.
    #[error("no update in progress")]
    NothingToCancel,
    /// Cancel once the device rebooted into the new slot (it is assessed, then committed or rolled back).
    #[error("cannot cancel: the update is {0:?}")]
    NotCancellable(JobPhase),
    /// Reboot without an update waiting for it.
    #[error("no update is waiting for a reboot")]
    NoRebootPending,
    /// Marking this slot bad would leave the bootloader nothing to boot.
    #[error("slot {0} is the only bootable slot; not marking it bad")]
    OnlyBootableSlot(Slot),
    /// Storing a bootloader change failed; nothing changed.
    #[error("bootloader: {0}")]
    Bootloader(String),
    /// The state file could not be written: the daemon takes no step it could not record.
    #[error("state-not-saved: {0}")]
    StateNotSaved(String),
    /// The reboot command failed; the update waits for its reboot again.
    #[error("reboot failed: {0}")]
    RebootFailed(String),
    /// The daemon stopped before it answered.
    #[error("the daemon stopped")]
    Stopped,
    /// An event arrived in a phase it does not apply to (a late install or health result, a duplicate
    /// bootloader acknowledgement): nothing changed. Not a caller's error; the runtime logs it.
    #[error("event {event} does not apply while {phase}")]
    WrongPhase {
        /// The event's name.
        event: &'static str,
        /// The job's phase, or `idle`.
        phase: PhaseName,
    },
}

/// What an inhibitor held off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inhibits {
    /// Starting an install.
    Updates,
    /// Rebooting into the new slot.
    Reboots,
}

impl std::fmt::Display for Inhibits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Updates => "updates",
            Self::Reboots => "reboots",
        })
    }
}

/// A job phase or `idle`, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseName(pub Option<JobPhase>);

impl std::fmt::Display for PhaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p:?}"),
            None => f.write_str("idle"),
        }
    }
}

/// Why an install failed, as the engine needs to know it: the runtime classifies the installer's error by
/// variant ([`otter_installer::InstallError::is_artifact_fault`]), never by its code string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// Cancelled on request: the job ends `cancelled`.
    Cancelled,
    /// The artifact itself is at fault (invalid, not for this device, too old...): never retried automatically.
    Artifact,
    /// Anything else (network, disk, source): an automatic retry may succeed.
    Other,
}

/// The engine: persisted state plus what is known only while running.
#[derive(Debug, Clone)]
pub struct Engine {
    /// State that survives restarts; persist it whenever it changes, before executing actions.
    pub persisted: Persisted,
    config: EngineConfig,
    /// The slot the system runs from (known after `Started`).
    booted: Option<Slot>,
    inhibited: bool,
    /// A bootloader store is in flight for this phase transition.
    boot_pending: bool,
    /// Reboots that failed in a row, the last one's error, and when the next automatic attempt is due.
    reboot_failure: Option<RebootFailure>,
    /// No automatic reboot before this time (after a failure, or while a rollback reboot is under way).
    reboot_due: u64,
    /// The floor the environment holds, as far as the engine asked for it.
    env_security_version: u64,
}

/// The reboot command failed: shown in the status until the job ends; the next automatic attempt waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootFailure {
    /// The last error.
    pub message: String,
    /// Failures in a row.
    pub failures: u32,
    /// When the next automatic attempt is due (seconds since the epoch).
    pub retry_at: u64,
}

/// First wait after a failed reboot, seconds; it doubles with each failure in a row.
pub const REBOOT_RETRY_MIN: u64 = 5;
/// Longest wait between automatic reboot attempts, seconds (5 minutes).
pub const REBOOT_RETRY_MAX: u64 = 300;

/// The wait after the `failures`-th failure in a row: 5 s, 10 s, 20 s... at most 5 minutes.
pub fn reboot_backoff(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    REBOOT_RETRY_MIN.saturating_mul(1 << doublings).min(REBOOT_RETRY_MAX)
}

impl Engine {
    /// An engine over previously persisted state.
    pub fn new(persisted: Persisted, config: EngineConfig) -> Self {
        Self {
            persisted,
            config,
            booted: None,
            inhibited: false,
            boot_pending: false,
            reboot_failure: None,
            reboot_due: 0,
            env_security_version: 0,
        }
    }

    /// The slot the system runs from, once started.
    pub fn booted(&self) -> Option<Slot> {
        self.booted
    }

    /// The job in progress.
    pub fn job(&self) -> Option<&Job> {
        self.persisted.job.as_ref()
    }

    /// The reboot failure of the job in progress, if its last reboot attempt failed.
    pub fn reboot_failure(&self) -> Option<&RebootFailure> {
        self.reboot_failure.as_ref()
    }

    /// Whether local inhibitors are held.
    pub fn inhibited(&self) -> bool {
        self.inhibited
    }

    /// `Ok` when no job is in progress, so that something outside a job (marking a slot by hand) may touch the
    /// bootloader; `Busy` otherwise.
    pub fn check_idle(&self) -> Result<(), Rejection> {
        match &self.persisted.job {
            Some(job) => Err(Rejection::Busy { id: job.id, phase: job.phase }),
            None => Ok(()),
        }
    }

    /// Handles an event. `Err` means the request was refused and nothing changed.
    pub fn handle(&mut self, event: Event) -> Result<Vec<Action>, Rejection> {
        match event {
            Event::Started { booted, boot, now } => Ok(self.started(booted, boot, now)),
            Event::InstallRequested { source, automatic, remote_id, now } => {
                self.install_requested(source, automatic, remote_id, now)
            }
            Event::InstallSucceeded { artifact, now } => self.install_succeeded(artifact, now),
            Event::InstallFailed { code, message, digest, cause, now } => {
                self.install_failed(code, message, digest, cause, now)
            }
            Event::BootStored { now } => self.boot_stored(now),
            Event::BootFailed { message, now } => Ok(self.boot_failed(message, now)),
            Event::CancelRequested { now } => self.cancel(now),
            Event::RebootRequested { now } => self.reboot_requested(now),
            Event::InhibitedChanged { inhibited, now } => {
                self.inhibited = inhibited;
                Ok(self.maybe_reboot(now, false))
            }
            Event::Tick { now } => Ok(self.tick(now)),
            Event::StateNotSaved { message, now } => Ok(self.state_not_saved(message, now)),
            Event::RebootFailed { message, now } => self.reboot_failed(message, now),
            Event::HealthPassed { now } => self.health_passed(now),
            Event::HealthFailed { reason, now } => self.health_failed(reason, now),
        }
    }

    fn set_phase(&mut self, phase: JobPhase, now: u64) {
        if let Some(job) = &mut self.persisted.job {
            job.phase = phase;
            job.updated_at = now;
        }
    }

    fn phase(&self) -> Option<JobPhase> {
        self.persisted.job.as_ref().map(|j| j.phase)
    }

    /// The change that raises the environment's floor to `floor`, if it is lower.
    fn raise_floor(&mut self, floor: u64) -> Option<BootChange> {
        (floor > self.env_security_version).then(|| {
            self.env_security_version = floor;
            BootChange::RaiseSecurityVersion(floor)
        })
    }

    /// Whether the job in progress was cancelled and its revert is not durable yet.
    fn cancelling(&self) -> bool {
        self.persisted.job.as_ref().is_some_and(|j| j.cancel_requested)
    }

    /// `Ok` when the job is in `phase`; otherwise the event `event` does not apply.
    fn expect_phase(&self, event: &'static str, phase: JobPhase) -> Result<(), Rejection> {
        match self.phase() {
            Some(p) if p == phase => Ok(()),
            p => Err(Rejection::WrongPhase { event, phase: PhaseName(p) }),
        }
    }

    /// Ends the job with `outcome`, moving it into the history.
    fn finish(&mut self, outcome: Outcome, now: u64) -> Vec<Action> {
        let Some(job) = self.persisted.job.take() else { return Vec::new() };
        self.boot_pending = false;
        self.reboot_failure = None;
        self.reboot_due = 0;
        let remember_failure = matches!(outcome, Outcome::RolledBack { .. });
        if let (true, Some(a)) = (remember_failure, &job.artifact) {
            self.remember_failed(a.digest.clone());
        }
        if outcome == Outcome::Committed {
            // Committed only from the new slot itself: the running image is the committed one.
            let committed = job.artifact.as_ref().map_or(0, |a| a.security_version);
            self.persisted.security_version =
                self.persisted.security_version.max(committed).max(self.config.image_security_version);
        }
        let record = JobRecord { job, outcome, finished_at: now };
        self.persisted.history.push_back(record.clone());
        while self.persisted.history.len() > HISTORY_LEN {
            self.persisted.history.pop_front();
        }
        vec![Action::Finished(Box::new(record))]
    }

    fn remember_failed(&mut self, digest: String) {
        if !self.persisted.failed_digests.contains(&digest) {
            self.persisted.failed_digests.push_back(digest);
        }
        while self.persisted.failed_digests.len() > FAILED_DIGESTS_LEN {
            self.persisted.failed_digests.pop_front();
        }
    }

    fn started(&mut self, booted: Slot, boot: BootView, now: u64) -> Vec<Action> {
        self.booted = Some(booted);
        self.boot_pending = false;
        // The floor is the highest of what the state file and the environment keep, so that losing either
        // cannot lower it; the running image's own version counts once its slot is committed (not on trial:
        // a failing trial goes back to an older image).
        self.env_security_version = boot.security_version;
        let mut floor = self.persisted.security_version.max(boot.security_version);
        if !matches!(boot.state(booted), SlotState::Trying { .. }) {
            floor = floor.max(self.config.image_security_version);
        }
        self.persisted.security_version = floor;
        let Some(job) = self.persisted.job.clone() else {
            return self.started_idle(booted, boot, now);
        };
        let on_target = booted == job.target;
        let target_pending = boot.primary == Some(job.target)
            && matches!(boot.state(job.target), SlotState::Trying { attempts_left } if attempts_left > 0);
        if job.cancel_requested {
            return self.started_cancelled(&job, booted, now);
        }
        match (job.phase, on_target) {
            // Cut off while writing: the slot is invalid (marked bad before the install started).
            // Re-confirming the running slot in these branches matters: the boot spent one of its attempts, and
            // a run of power cuts must not exhaust it.
            (JobPhase::Installing, false) => {
                let mut a = vec![Action::Boot(vec![BootChange::MarkBad(job.target), BootChange::MarkGood(booted)])];
                a.extend(self.finish(
                    Outcome::Failed {
                        code: INTERRUPTED.into(),
                        message: "the install was interrupted by a restart".into(),
                    },
                    now,
                ));
                self.boot_pending = true;
                a
            }
            // The image is complete and verified; the bootloader may or may not have been told. Tell it (again).
            (JobPhase::Installed, false) => {
                self.boot_pending = true;
                vec![Action::Boot(vec![BootChange::MarkGood(booted), BootChange::TryNext(job.target)])]
            }
            // The daemon restarted without a reboot: the new slot is still waiting for its boot.
            (JobPhase::AwaitingReboot | JobPhase::Rebooting, false) if target_pending => {
                self.set_phase(JobPhase::AwaitingReboot, now);
                Vec::new()
            }
            // Expected the new slot, came up in the old one: the bootloader fell back.
            (JobPhase::AwaitingReboot | JobPhase::Rebooting, false) => {
                self.rolled_back(job.target, "the new slot did not boot; the bootloader fell back", now)
            }
            (JobPhase::Assessing, false) => self.rolled_back(
                job.target,
                "the trial boot ended before it was confirmed (reset, hang or crash); the bootloader fell back",
                now,
            ),
            (JobPhase::RollingBack, false) => {
                let reason = job.rollback_reason.unwrap_or_else(|| "the new slot failed".into());
                self.rolled_back(job.target, &reason, now)
            }
            // Booted into the new slot: assess it. `Installed` counts too: the power failed after the bootloader
            // was told to try the (complete, verified) slot but before that was persisted.
            (JobPhase::Installed | JobPhase::AwaitingReboot | JobPhase::Rebooting | JobPhase::Assessing, true) => {
                if let Some(j) = &mut self.persisted.job {
                    j.phase = JobPhase::Assessing;
                    j.updated_at = now;
                    j.assess_started_at = Some(now);
                    j.trial_boots += 1;
                }
                vec![Action::StartHealthChecks]
            }
            // We never switched to the target, yet run from it: someone else switched slots. Do not touch the
            // bootloader (never mark the running slot bad); just end the job honestly.
            (JobPhase::Installing, true) => self.finish(
                Outcome::Failed {
                    code: "slot-switched".into(),
                    message: format!("the device booted slot {booted} while the job was still {:?}", job.phase),
                },
                now,
            ),
            // Rolling back, yet on the new slot again: if marking it bad never reached storage (power cut), do it
            // now and reboot; if it was marked bad and still booted, the bootloader does not honour the rollback:
            // record that and stay up rather than reboot in a loop.
            (JobPhase::RollingBack, true) if boot.state(job.target) != SlotState::Bad => {
                if self.inhibited {
                    vec![Action::Boot(vec![BootChange::MarkBad(job.target)])]
                } else {
                    vec![Action::Boot(vec![BootChange::MarkBad(job.target)]), Action::Reboot]
                }
            }
            (JobPhase::RollingBack, true) => self.finish(
                Outcome::Failed {
                    code: "rollback-failed".into(),
                    message: format!("rolled back, but the bootloader booted slot {booted} again"),
                },
                now,
            ),
        }
    }

    /// Start-up with a job the user cancelled whose revert may not have reached the bootloader: never assess or
    /// commit it. In the old slot, (re-)store the revert and end the job `cancelled` once stored; in the new slot
    /// (the revert never got stored before a reboot), mark it bad and reboot back.
    fn started_cancelled(&mut self, job: &Job, booted: Slot, now: u64) -> Vec<Action> {
        if booted != job.target {
            self.set_phase(JobPhase::AwaitingReboot, now);
            self.boot_pending = true;
            return vec![Action::Boot(vec![BootChange::MarkBad(job.target), BootChange::MarkGood(booted)])];
        }
        if let Some(j) = &mut self.persisted.job {
            j.phase = JobPhase::RollingBack;
            j.updated_at = now;
            j.rollback_reason = Some("the update was cancelled; it is not kept".into());
        }
        let mut a = vec![Action::Boot(vec![BootChange::MarkBad(job.target)])];
        if !self.inhibited {
            a.push(Action::Reboot);
        }
        a
    }

    fn started_idle(&mut self, booted: Slot, boot: BootView, now: u64) -> Vec<Action> {
        match boot.state(booted) {
            // A trial nobody knows about (state lost): assess it like ours rather than leave it half-committed.
            SlotState::Trying { .. } => {
                self.persisted.next_job_id += 1;
                let id = self.persisted.next_job_id;
                self.persisted.job = Some(Job {
                    id,
                    source: "(adopted trial boot)".into(),
                    automatic: false,
                    remote_id: None,
                    from: !booted,
                    target: booted,
                    phase: JobPhase::Assessing,
                    artifact: None,
                    started_at: now,
                    updated_at: now,
                    assess_started_at: Some(now),
                    trial_boots: 1,
                    rollback_reason: None,
                    cancel_requested: false,
                });
                vec![Action::StartHealthChecks]
            }
            // Re-confirm the running, committed slot so its boot counter never runs down. A running slot that reads
            // bad had its counter spent by boots the daemon did not confirm (power cuts): it is still the slot the
            // bootloader chose and that runs, so it is confirmed too.
            SlotState::Good | SlotState::Bad => {
                let mut changes = vec![BootChange::MarkGood(booted)];
                changes.extend(self.raise_floor(self.persisted.security_version));
                vec![Action::Boot(changes)]
            }
        }
    }

    /// The device is back on the old slot (`!target`): mark the new slot bad and re-confirm the running one, whose
    /// counter the boot just spent.
    fn rolled_back(&mut self, target: Slot, reason: &str, now: u64) -> Vec<Action> {
        let mut a = vec![Action::Boot(vec![BootChange::MarkBad(target), BootChange::MarkGood(!target)])];
        a.extend(self.finish(Outcome::RolledBack { reason: reason.into() }, now));
        a
    }

    fn install_requested(
        &mut self,
        source: String,
        automatic: bool,
        remote_id: Option<String>,
        now: u64,
    ) -> Result<Vec<Action>, Rejection> {
        if let Some(job) = &self.persisted.job {
            return Err(Rejection::Busy { id: job.id, phase: job.phase });
        }
        let booted = self.booted.ok_or(Rejection::NotBooted)?;
        // Inhibitors block starting an install as well as the reboot: an application saying "not now" must not
        // see the device start a (CPU, I/O and flash heavy) install under it.
        if self.inhibited {
            return Err(Rejection::Inhibited(Inhibits::Updates));
        }
        self.persisted.next_job_id += 1;
        let id = self.persisted.next_job_id;
        let target = !booted;
        self.persisted.job = Some(Job {
            id,
            source,
            automatic,
            remote_id,
            from: booted,
            target,
            phase: JobPhase::Installing,
            artifact: None,
            started_at: now,
            updated_at: now,
            assess_started_at: None,
            trial_boots: 0,
            rollback_reason: None,
            cancel_requested: false,
        });
        // The target is about to be overwritten: it is durably marked bad first, so that no bootloader fallback
        // can pick a half-written slot. The install starts when that store succeeded (`BootStored`).
        self.boot_pending = true;
        Ok(vec![Action::Boot(vec![BootChange::MarkBad(target)])])
    }

    fn install_succeeded(&mut self, artifact: ArtifactInfo, now: u64) -> Result<Vec<Action>, Rejection> {
        self.expect_phase("install-succeeded", JobPhase::Installing)?;
        let job = self.persisted.job.as_mut().expect("checked by expect_phase");
        job.artifact = Some(artifact);
        job.phase = JobPhase::Installed;
        job.updated_at = now;
        self.boot_pending = true;
        Ok(vec![Action::Boot(vec![BootChange::TryNext(job.target)])])
    }

    fn install_failed(
        &mut self,
        code: String,
        message: String,
        digest: Option<String>,
        cause: FailureCause,
        now: u64,
    ) -> Result<Vec<Action>, Rejection> {
        self.expect_phase("install-failed", JobPhase::Installing)?;
        if let (FailureCause::Artifact, Some(d)) = (cause, digest) {
            self.remember_failed(d);
        }
        let outcome = match cause {
            FailureCause::Cancelled => Outcome::Cancelled,
            FailureCause::Artifact | FailureCause::Other => Outcome::Failed { code, message },
        };
        Ok(self.finish(outcome, now))
    }

    fn boot_stored(&mut self, now: u64) -> Result<Vec<Action>, Rejection> {
        // Every store the engine asks for while idle (re-confirming the booted slot) has nothing to follow up.
        let Some(job) = &self.persisted.job else { return Ok(Vec::new()) };
        let pending = std::mem::take(&mut self.boot_pending);
        // The rollback's "mark bad" is stored; the reboot follows (or already went out).
        if job.phase == JobPhase::RollingBack {
            return Ok(Vec::new());
        }
        if !pending {
            return Err(Rejection::WrongPhase { event: "boot-stored", phase: PhaseName(Some(job.phase)) });
        }
        // The cancelled update's slot is durably marked bad: only now is the job cancelled.
        if job.cancel_requested {
            return Ok(self.finish(Outcome::Cancelled, now));
        }
        Ok(match job.phase {
            JobPhase::Installing => {
                let refuse =
                    if job.automatic { self.persisted.failed_digests.iter().cloned().collect() } else { Vec::new() };
                vec![Action::Install {
                    source: job.source.clone(),
                    target: job.target,
                    min_security_version: self.persisted.security_version,
                    refuse,
                }]
            }
            JobPhase::Assessing => self.finish(Outcome::Committed, now),
            JobPhase::Installed => {
                self.set_phase(JobPhase::AwaitingReboot, now);
                // Immediate policy: reboot right away unless inhibited; otherwise wait for a tick or a request.
                self.maybe_reboot(now, false)
            }
            _ => Vec::new(),
        })
    }

    fn boot_failed(&mut self, message: String, now: u64) -> Vec<Action> {
        self.boot_pending = false;
        match self.phase() {
            Some(JobPhase::Installing | JobPhase::Installed) => {
                self.finish(Outcome::Failed { code: "bootloader".into(), message }, now)
            }
            // Committing or rolling back failed: stay in the phase; the tick retries the rollback reboot, and a
            // trial that never commits ends with the bootloader's fallback.
            _ => Vec::new(),
        }
    }

    fn reboot_failed(&mut self, message: String, now: u64) -> Result<Vec<Action>, Rejection> {
        match self.phase() {
            // The device is not going down: the update waits for its reboot again (Cancel and Reboot work).
            Some(JobPhase::Rebooting) => self.set_phase(JobPhase::AwaitingReboot, now),
            Some(JobPhase::RollingBack) => {}
            p => return Err(Rejection::WrongPhase { event: "reboot-failed", phase: PhaseName(p) }),
        }
        let failures = self.reboot_failure.as_ref().map_or(0, |f| f.failures).saturating_add(1);
        let retry_at = now.saturating_add(reboot_backoff(failures));
        self.reboot_due = retry_at;
        self.reboot_failure = Some(RebootFailure { message, failures, retry_at });
        Ok(Vec::new())
    }

    fn state_not_saved(&mut self, message: String, now: u64) -> Vec<Action> {
        self.boot_pending = false;
        match self.phase() {
            // The target is not on trial (marked bad before writing, or not yet marked at all): end the job.
            Some(JobPhase::Installing) => {
                let mut a = vec![Action::CancelInstall];
                a.extend(self.finish(Outcome::Failed { code: STATE_NOT_SAVED.into(), message }, now));
                a
            }
            Some(JobPhase::Installed) => self.finish(Outcome::Failed { code: STATE_NOT_SAVED.into(), message }, now),
            // The reboot was not taken: wait for it again (the policy or a request retries once saving works).
            Some(JobPhase::Rebooting) => {
                self.set_phase(JobPhase::AwaitingReboot, now);
                Vec::new()
            }
            // The bootloader already holds the trial, or the device runs it: the job stays; the runtime takes no
            // step until a save succeeds, and a trial that cannot be recorded as committed is never committed.
            _ => Vec::new(),
        }
    }

    fn cancel(&mut self, now: u64) -> Result<Vec<Action>, Rejection> {
        match self.phase() {
            None => Err(Rejection::NothingToCancel),
            Some(JobPhase::Installing) => Ok(vec![Action::CancelInstall]),
            // The job is cancelled once "mark bad" is durable (`BootStored`); until then it stays, marked as being
            // cancelled (persisted), and never reboots into the new slot: a failed store leaves a job the user can
            // cancel again, and a start-up in the new slot rolls back instead of assessing it.
            Some(JobPhase::Installed | JobPhase::AwaitingReboot) => {
                let job = self.persisted.job.as_mut().expect("job exists");
                job.cancel_requested = true;
                job.updated_at = now;
                let target = job.target;
                self.boot_pending = true;
                Ok(vec![Action::Boot(vec![BootChange::MarkBad(target)])])
            }
            Some(p) => Err(Rejection::NotCancellable(p)),
        }
    }

    fn reboot_requested(&mut self, now: u64) -> Result<Vec<Action>, Rejection> {
        match self.phase() {
            Some(JobPhase::AwaitingReboot) if !self.cancelling() => {
                if self.inhibited {
                    return Err(Rejection::Inhibited(Inhibits::Reboots));
                }
                Ok(self.maybe_reboot(now, true))
            }
            _ => Err(Rejection::NoRebootPending),
        }
    }

    fn tick(&mut self, now: u64) -> Vec<Action> {
        match self.persisted.job.clone() {
            Some(job) if job.phase == JobPhase::Assessing => {
                let started = job.assess_started_at.unwrap_or(job.updated_at);
                if now >= started.saturating_add(self.config.commit_deadline) {
                    let reason = format!("health checks did not pass within {} s", self.config.commit_deadline);
                    return self.health_failed(reason, now).unwrap_or_default();
                }
                Vec::new()
            }
            // The rollback reboot is repeated until the device goes down, but not faster than the backoff allows.
            Some(job) if job.phase == JobPhase::RollingBack && !self.inhibited && now >= self.reboot_due => {
                if self.reboot_failure.is_none() {
                    self.reboot_due = now.saturating_add(REBOOT_RETRY_MIN);
                }
                vec![Action::Reboot]
            }
            _ => self.maybe_reboot(now, false),
        }
    }

    /// Reboots into the new slot if the job waits for it, the policy allows it now (or it was requested) and no
    /// inhibitor is held.
    fn maybe_reboot(&mut self, now: u64, requested: bool) -> Vec<Action> {
        if self.phase() != Some(JobPhase::AwaitingReboot) || self.inhibited || self.cancelling() {
            return Vec::new();
        }
        if !requested && (!self.config.reboot.allows(minute_of_day(now)) || now < self.reboot_due) {
            return Vec::new();
        }
        self.set_phase(JobPhase::Rebooting, now);
        vec![Action::Reboot]
    }

    fn health_passed(&mut self, now: u64) -> Result<Vec<Action>, Rejection> {
        self.expect_phase("health-passed", JobPhase::Assessing)?;
        let job = self.persisted.job.as_ref().expect("checked by expect_phase");
        if Some(job.target) != self.booted {
            return Err(Rejection::WrongPhase { event: "health-passed", phase: PhaseName(Some(job.phase)) });
        }
        // The commit is recorded only once "mark good" is durable (`BootStored`): recorded first, a power cut in
        // between would report a commit while the bootloader still counts the trial down and falls back.
        // The floor rises in the same store as the commit: the committed image's version (the artifact's, or for an
        // adopted trial the image's own) is kept in the environment before the commit is recorded.
        let target = job.target;
        let committed = job.artifact.as_ref().map_or(0, |a| a.security_version);
        let floor = self.persisted.security_version.max(committed).max(self.config.image_security_version);
        self.set_phase(JobPhase::Assessing, now);
        self.boot_pending = true;
        let mut changes = vec![BootChange::MarkGood(target)];
        changes.extend(self.raise_floor(floor));
        Ok(vec![Action::Boot(changes)])
    }

    fn health_failed(&mut self, reason: String, now: u64) -> Result<Vec<Action>, Rejection> {
        self.expect_phase("health-failed", JobPhase::Assessing)?;
        let job = self.persisted.job.as_mut().expect("checked by expect_phase");
        let target = job.target;
        job.phase = JobPhase::RollingBack;
        job.updated_at = now;
        job.rollback_reason = Some(format!("health check failed: {reason}"));
        // Marking the trial slot bad makes the old slot primary again; the reboot takes the device back to it.
        let mut a = vec![Action::Boot(vec![BootChange::MarkBad(target)])];
        if !self.inhibited {
            a.push(Action::Reboot);
        }
        Ok(a)
    }
}
