//! Commands from other threads (D-Bus, the server client, tests) and the handle they go through.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use otter_bootloader::Slot;
use otter_installer::{InstallError, Progress};

use super::Status;
use crate::engine::{JobRecord, Rejection};
use crate::health::HealthFailure;

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
    /// The source exactly as requested, when the job records a redacted form of it (a URL with userinfo or a
    /// query string: the job, its history entry, the status and the logs never show those; the install reads this).
    pub locator: Option<String>,
    /// The artifact as an open file the caller handed over (D-Bus `InstallFd`); the job's source is then only
    /// its name.
    pub fd: Option<otter_installer::source::SharedFd>,
    /// Other artifacts of the same update, tried in order when the one before them is a delta whose base this
    /// device does not run (it fails before writing anything): a hawkBit deployment offering a delta and the full
    /// artifact.
    pub fallbacks: Vec<Fallback>,
}

/// An artifact installed instead when the one before it is a delta for another base.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// Its URL.
    pub source: String,
    /// Its download settings (announced size and hashes, link refresh).
    pub http: otter_installer::HttpOptions,
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

pub(super) enum Msg {
    Command(Command),
    Progress(Progress),
    InstallDone(Box<Result<otter_installer::InstallReport, InstallError>>),
    HealthDone(Result<(), HealthFailure>),
}

/// A handle to a running loop: send commands, read the status.
#[derive(Clone)]
pub struct Handle {
    pub(super) tx: Sender<Msg>,
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) subscribers: Arc<Mutex<Subscribers>>,
}

/// Who wants to hear about finished jobs and status changes.
#[derive(Default)]
pub(super) struct Subscribers {
    pub(super) finished: Vec<Sender<JobRecord>>,
    pub(super) status: Vec<Sender<Status>>,
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
        rx.recv().unwrap_or(Err(Rejection::Stopped))
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
