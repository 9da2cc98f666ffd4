//! The platform the loop acts on: the bootloader, the reboot, the booted slot.

use std::time::{SystemTime, UNIX_EPOCH};

use otter_bootloader::{BootBackend, Slot, SlotState};

use super::{MarkState, Runtime, SlotRef};
use crate::config::{BootloaderSettings, Settings};
use crate::engine::{BootChange, Event, Rejection};

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

impl Runtime {
    /// Marks a slot in the bootloader and stores it at once. Refused while a job is in progress (the job owns the
    /// bootloader state until it ends), and when it would leave no bootable slot.
    pub(super) fn mark(&mut self, state: MarkState, slot: SlotRef) -> Result<Slot, Rejection> {
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

    pub(super) fn reboot(&mut self) {
        tracing::info!("rebooting");
        self.notifier.status("rebooting");
        match self.platform.reboot(&self.settings.reboot_command) {
            Ok(true) => self.halted = true,
            Ok(false) => {}
            Err(e) => tracing::error!("reboot failed: {e}"),
        }
    }
}
