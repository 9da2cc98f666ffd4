//! The platform the loop acts on: the bootloader, the reboot, the booted slot.

use std::time::{SystemTime, UNIX_EPOCH};

use std::path::PathBuf;

use otter_bootloader::{BootBackend, BootError, Slot, SlotState};

use super::{MarkState, Runtime, SlotRef};
use crate::config::{BootloaderSettings, Settings};
use crate::engine::{BootChange, Event, Rejection};

/// How the runtime reboots and tells time; the real one runs the configured command, the simulator's power-cycles
/// a simulated device.
pub trait Platform: Send {
    /// Reboots. [`Rebooting::Now`] means "the machine is going down now": the loop ends (simulation);
    /// [`Rebooting::Requested`] means the request was handed to the system (systemd will stop the daemon shortly).
    /// An error means the device is not going down: the engine hears it and retries later.
    fn reboot(&mut self, command: &[String]) -> Result<Rebooting, RebootError>;
    /// Seconds since the epoch.
    fn now(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

/// A reboot that was set off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebooting {
    /// The machine is going down now (simulation): the loop ends.
    Now,
    /// The system was asked to reboot; it stops the daemon shortly.
    Requested,
}

/// Why a reboot was not set off.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    /// The reboot command is empty.
    #[error("no reboot command configured")]
    NoCommand,
    /// The reboot command could not be run.
    #[error("cannot run reboot command {command:?}: {source}")]
    Spawn {
        /// The command.
        command: Vec<String>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The reboot command failed.
    #[error("reboot command {command:?} exited with {status}")]
    Exit {
        /// The command.
        command: Vec<String>,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}

/// Reboots by running the configured command (`systemctl reboot`).
#[derive(Debug, Default)]
pub struct SystemPlatform;

impl Platform for SystemPlatform {
    fn reboot(&mut self, command: &[String]) -> Result<Rebooting, RebootError> {
        let (program, args) = command.split_first().ok_or(RebootError::NoCommand)?;
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .map_err(|source| RebootError::Spawn { command: command.to_vec(), source })?;
        if status.success() {
            Ok(Rebooting::Requested)
        } else {
            Err(RebootError::Exit { command: command.to_vec(), status })
        }
    }
}

/// Why the bootloader environment could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenBootError {
    /// `fw_env.config` could not be read.
    #[error("cannot read {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backend refused the environment (corrupt, malformed config, lock...).
    #[error(transparent)]
    Backend(#[from] BootError),
}

/// Opens the configured bootloader backend.
pub fn open_bootloader(settings: &Settings) -> Result<Box<dyn BootBackend + Send>, OpenBootError> {
    match &settings.bootloader {
        BootloaderSettings::UBoot { fw_env_config, lock_file, scheme } => {
            let text = std::fs::read_to_string(fw_env_config)
                .map_err(|source| OpenBootError::Config { path: fw_env_config.clone(), source })?;
            let mut cfg = otter_bootloader::uboot::FwEnvConfig::parse(&text)?;
            // Device paths in fw_env.config are device paths too: resolve them under the root.
            for d in &mut cfg.devices {
                if let Ok(rel) = d.path.strip_prefix("/") {
                    d.path = settings.root.join(rel);
                }
            }
            let backend = otter_bootloader::uboot::UBootBackend::open(&cfg, *scheme, Some(lock_file))?;
            Ok(Box::new(backend))
        }
        BootloaderSettings::Grub { grubenv } => {
            Ok(Box::new(otter_bootloader::grub::GrubBackend::open(grubenv.clone())?))
        }
    }
}

/// Where the image declares its `security_version`, under the root: one decimal number.
pub const IMAGE_SECURITY_VERSION_FILE: &str = "usr/lib/otter/security-version";

/// The running image's `security_version` ([`IMAGE_SECURITY_VERSION_FILE`]); 0 when the image has none. A file
/// that is not a small decimal number is reported and counts as none (it can only fail to raise the floor).
pub fn image_security_version(settings: &Settings) -> u64 {
    use std::io::Read;
    let path = settings.root.join(IMAGE_SECURITY_VERSION_FILE);
    let mut text = String::new();
    // Bounded: a number, not whatever the path turns out to be.
    match std::fs::File::open(&path).and_then(|f| f.take(64).read_to_string(&mut text)) {
        Ok(_) => match text.trim().parse() {
            Ok(v) => v,
            Err(_) => {
                tracing::warn!("{}: not a security version: {text:?}", path.display());
                0
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!("{}: {e}", path.display());
            0
        }
    }
}

/// Why the booted slot is not known.
#[derive(Debug, thiserror::Error)]
pub enum BootedSlotError {
    /// The command line file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command line names no slot.
    #[error("cannot tell the booted slot: no otter.slot= and no known root= in {path}")]
    Unknown {
        /// The file.
        path: PathBuf,
    },
}

/// The slot the system was booted from, from the configured command line file.
pub fn booted_slot(settings: &Settings) -> Result<Slot, BootedSlotError> {
    let path = &settings.cmdline;
    let cmdline =
        std::fs::read_to_string(path).map_err(|source| BootedSlotError::Read { path: path.clone(), source })?;
    otter_bootloader::booted_slot(&cmdline, &settings.root_map)
        .ok_or_else(|| BootedSlotError::Unknown { path: path.clone() })
}

impl Runtime {
    /// Marks a slot in the bootloader and stores it at once. Refused while a job is in progress (the job owns the
    /// bootloader state until it ends), and when it would leave no bootable slot.
    pub(super) fn mark(&mut self, state: MarkState, slot: SlotRef) -> Result<Slot, Rejection> {
        self.engine.check_idle()?;
        let booted = self.engine.booted().ok_or(Rejection::NotBooted)?;
        let slot = match slot {
            SlotRef::Booted => booted,
            SlotRef::Other => !booted,
            SlotRef::Slot(s) => s,
        };
        let boot =
            self.boot.as_mut().ok_or_else(|| Rejection::Unusable("the bootloader environment is unusable".into()))?;
        if state == MarkState::Bad && boot.slot_state(!slot) == SlotState::Bad {
            return Err(Rejection::OnlyBootableSlot(slot));
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
                Err(Rejection::Bootloader(e.to_string()))
            }
        }
    }

    pub(super) fn apply_boot(&mut self, changes: &[BootChange], now: u64) -> Event {
        let Some(boot) = self.boot.as_mut() else {
            return Event::BootFailed { message: "bootloader environment unusable".into(), now };
        };
        let result = changes
            .iter()
            .try_for_each(|c| match *c {
                BootChange::MarkBad(s) => boot.mark_bad(s),
                BootChange::TryNext(s) => boot.set_try_next(s),
                BootChange::MarkGood(s) => boot.mark_good(s),
                BootChange::RaiseSecurityVersion(v) => boot.raise_security_version(v),
            })
            .and_then(|()| boot.store());
        match result {
            Ok(()) => {
                tracing::info!("bootloader: {changes:?} stored; next boot {:?}", boot.primary());
                self.last_boot_error = None;
                Event::BootStored { now }
            }
            Err(e) => {
                tracing::error!("bootloader: {changes:?} failed: {e}");
                // Drop the half-applied in-memory changes so the view matches storage again.
                let _ = boot.reload();
                self.last_boot_error = Some(e.to_string());
                Event::BootFailed { message: e.to_string(), now }
            }
        }
    }

    /// Reboots; a failure is the engine's `RebootFailed` (and the answer to a request that asked for it).
    pub(super) fn reboot(&mut self, now: u64) -> Option<Event> {
        tracing::info!("rebooting");
        self.notifier.status("rebooting");
        match self.platform.reboot(&self.settings.reboot_command) {
            Ok(Rebooting::Now) => {
                self.halted = true;
                None
            }
            Ok(Rebooting::Requested) => None,
            Err(e) => {
                tracing::error!("reboot failed: {e}");
                self.request_error = Some(Rejection::RebootFailed(e.to_string()));
                Some(Event::RebootFailed { message: e.to_string(), now })
            }
        }
    }
}
