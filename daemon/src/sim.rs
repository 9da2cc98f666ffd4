//! Simulated boots of a [`crate::fixture::Device`], for the simulator (`otter-simulate`) and integration tests.
//!
//! [`power_on`] does what U-Boot and the boot script do at power-on: pick a slot from the env file, spend one
//! attempt, save the env, and "boot the kernel" with `otter.slot=` on its command line. A fresh runtime then
//! starts from what is on disk, with [`SimPlatform`], whose reboot ends the current boot — nothing carries over
//! in memory between boots.

use otter_bootloader::Slot;
use otter_bootloader::scheme::{BootOrderScheme, VarScheme};
use otter_bootloader::uboot::EnvStorage;

use crate::fixture::Device;
use crate::runtime::{Platform, RebootError, Rebooting};

/// Boot attempts per trial (the fixture's `bootloader.attempts`).
pub const ATTEMPTS: u32 = 3;

/// A reboot in a simulation ends the current boot; the caller then powers the device on again.
#[derive(Debug, Default)]
pub struct SimPlatform;

impl Platform for SimPlatform {
    fn reboot(&mut self, _command: &[String]) -> Result<Rebooting, RebootError> {
        Ok(Rebooting::Now)
    }
}

/// The bootloader step of a power-on; returns the slot booted.
pub fn power_on(device: &Device) -> anyhow::Result<Slot> {
    let storage = EnvStorage::open(&device.env_config)?;
    let loaded = storage.read()?;
    let mut env = loaded.env.clone();
    let slot =
        BootOrderScheme::new(ATTEMPTS)?.simulate_boot(&mut env).ok_or_else(|| anyhow::anyhow!("no bootable slot"))?;
    storage.store(&env, &loaded)?;
    device.set_booted(slot)?;
    Ok(slot)
}

/// `BOOT_ORDER`, the attempt counters and `OTTER_TRIAL`, on one line.
pub fn env_summary(device: &Device) -> anyhow::Result<String> {
    let loaded = EnvStorage::open(&device.env_config)?.read()?;
    let get = |k| loaded.env.get(k).unwrap_or("-").to_owned();
    let trial = loaded.env.get("OTTER_TRIAL").map(|t| format!(" OTTER_TRIAL={t}")).unwrap_or_default();
    Ok(format!(
        "BOOT_ORDER=\"{}\" BOOT_A_LEFT={} BOOT_B_LEFT={}{trial}",
        get("BOOT_ORDER"),
        get("BOOT_A_LEFT"),
        get("BOOT_B_LEFT")
    ))
}

/// One simulated boot of a device: the power-on, then a fresh runtime (and, when the device has a `[server]`,
/// its hawkBit poller) with the runtime's loop on its own thread. The boot ends when otterd reboots (the loop
/// returns [`RunEnd::Rebooted`]) or when it is stopped; dropping it stops it.
pub struct Boot {
    /// The slot the bootloader step chose.
    pub slot: Slot,
    /// The runtime's handle.
    pub handle: crate::runtime::Handle,
    /// Every job that ends during this boot.
    pub finished: std::sync::mpsc::Receiver<crate::engine::JobRecord>,
    poller: Option<crate::hawkbit::Poller>,
    thread: Option<std::thread::JoinHandle<crate::runtime::RunEnd>>,
}

impl Boot {
    /// Powers the device on and starts otterd on it.
    pub fn start(device: &Device) -> anyhow::Result<Self> {
        let slot = power_on(device)?;
        let settings = crate::config::load(&device.root)?;
        let (runtime, handle) = crate::runtime::Runtime::start(settings.clone(), Box::new(SimPlatform))?;
        let finished = handle.subscribe();
        let poller = match settings.server {
            Some(_) => Some(crate::hawkbit::Poller::start(&settings, handle.clone())?),
            None => None,
        };
        let thread = std::thread::Builder::new().name("sim-runtime".into()).spawn(move || runtime.run())?;
        Ok(Self { slot, handle, finished, poller, thread: Some(thread) })
    }

    /// The hawkBit poller of this boot, if the device has a server.
    pub fn poller(&self) -> Option<&crate::hawkbit::Poller> {
        self.poller.as_ref()
    }

    /// Whether the runtime's loop has ended (a reboot, or a stop).
    pub fn is_over(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits up to `timeout` for the loop to end by itself and returns how it ended; `None` on timeout (the boot
    /// keeps running).
    pub fn wait(&mut self, timeout: std::time::Duration) -> Option<crate::runtime::RunEnd> {
        let start = std::time::Instant::now();
        while !self.is_over() {
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if let Some(p) = self.poller.take() {
            p.stop();
        }
        // A panicked runtime thread is a stop as far as the device is concerned; the caller sees it as one.
        self.thread.take().map(|t| t.join().unwrap_or(crate::runtime::RunEnd::Stopped))
    }

    /// Waits up to `timeout` for otterd to reboot the device (the boot then is over).
    pub fn until_reboot(mut self, timeout: std::time::Duration) -> anyhow::Result<()> {
        match self.wait(timeout) {
            Some(crate::runtime::RunEnd::Rebooted) => Ok(()),
            Some(end) => anyhow::bail!("the boot ended without a reboot: {end:?}"),
            None => anyhow::bail!("no reboot within {timeout:?}; status {:?}", self.handle.status()),
        }
    }

    /// Waits up to `timeout` for a job to end, then for `done` (e.g. "the server has the result"), then stops
    /// the boot and returns the job's record.
    pub fn until_finished(
        self,
        timeout: std::time::Duration,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<crate::engine::JobRecord> {
        let start = std::time::Instant::now();
        let record = self
            .finished
            .recv_timeout(timeout)
            .map_err(|_| anyhow::anyhow!("no job ended within {timeout:?}; status {:?}", self.handle.status()))?;
        while !done() {
            if start.elapsed() > timeout {
                anyhow::bail!("the job ended but the condition never held within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.stop();
        Ok(record)
    }

    /// Stops the poller and the runtime and waits for the loop to end.
    pub fn stop(mut self) -> crate::runtime::RunEnd {
        self.halt();
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(crate::runtime::RunEnd::Stopped))
            .unwrap_or(crate::runtime::RunEnd::Stopped)
    }

    fn halt(&mut self) {
        if let Some(p) = self.poller.take() {
            p.stop();
        }
        self.handle.send(crate::runtime::Command::Stop);
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        self.halt();
    }
}
