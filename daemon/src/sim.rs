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
