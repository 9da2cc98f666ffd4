//! otterd: the otter update daemon.
//!
//! - [`engine`]: every decision, as a pure function of persisted state and events.
//! - [`runtime`]: the loop that carries out the engine's actions (installer, bootloader, reboot, health checks)
//!   and keeps the systemd watchdog fed.
//! - [`config`], [`state`], [`health`], [`notify`]: layered configuration, the atomically persisted state, health
//!   assessment of trial boots, and systemd notifications.
//! - [`hawkbit`]: the Eclipse hawkBit DDI client (polling, deployments, feedback, inventory).
//! - [`dbus`]: the `io.otter.Updater1` D-Bus service in front of the runtime.
//! - [`memory`]: the allocator settings that bring the resident memory back to idle after each job.
//! - [`secrets`]: files holding the server's token must be owner-only.
//! - `fixture` and `sim` (feature `sim`: the simulator, the demo and the tests; not in the device binary): a
//!   simulated device root and its power-ons (the U-Boot boot script's slot choice on the env file).

pub mod config;
pub mod dbus;
pub mod engine;
#[cfg(any(test, feature = "sim"))]
pub mod fixture;
pub mod hawkbit;
pub mod health;
pub mod memory;
pub mod notify;
pub mod runtime;
pub mod secrets;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod state;
