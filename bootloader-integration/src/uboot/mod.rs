//! Native U-Boot environment backend: codec ([`UBootEnv`]), `fw_env.config` ([`FwEnvConfig`]),
//! storage ([`EnvStorage`]) and the [`BootBackend`] on top ([`UBootBackend`]).

mod config;
mod env;
mod storage;

use std::path::{Path, PathBuf};

pub use config::{EnvDevice, FwEnvConfig};
pub use env::{
    CRC_LEN, DecodedCopy, EnvError, FLAG_ACTIVE, FLAG_OBSOLETE, FlagScheme, UBootEnv, header_len, next_flags,
    pick_current,
};
pub use storage::{CopyLocation, EnvStorage, Interruption, Loaded, provision};

use crate::scheme::{BootOrderScheme, EnvVars, MenderScheme, VarScheme};
use crate::{BootBackend, BootError, Slot, SlotState, fsutil};

/// The lock file libubootenv's `fw_printenv`/`fw_setenv` take; pass it to
/// [`UBootBackend::open`] on a device so the tools and otter never interleave.
pub const DEFAULT_LOCK_PATH: &str = "/var/lock/fw_printenv.lock";

/// How long [`UBootBackend`] waits for the lock file before giving up with [`BootError::EnvLocked`]. Long enough
/// for any `fw_setenv` (milliseconds), short enough that the engine loop stays responsive (systemd's watchdog
/// fires after 30 s, its stop timeout is 30 s). 5 seconds.
pub const DEFAULT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Boots a trial gets unless configured otherwise (as RAUC's script).
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// Which variables encode the slot states; chosen in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UBootScheme {
    /// The default: `BOOT_ORDER` + `BOOT_A_LEFT`/`BOOT_B_LEFT` (RAUC-compatible), see
    /// [`crate::scheme::BootOrderScheme`]. Works with any U-Boot that can run a script.
    BootOrder {
        /// Boots a trial gets (1..=9).
        attempts: u32,
    },
    /// Mender's `mender_boot_part`/`upgrade_available`/`bootcount`/`bootlimit`, see
    /// [`crate::scheme::MenderScheme`].
    Mender {
        /// `mender_boot_part` of slot A (Mender's default layout: 2).
        part_a: u32,
        /// `mender_boot_part` of slot B (Mender's default layout: 3).
        part_b: u32,
        /// Boots a trial gets (1..=9), written to `bootlimit`.
        attempts: u32,
    },
}

impl Default for UBootScheme {
    fn default() -> Self {
        UBootScheme::BootOrder { attempts: DEFAULT_ATTEMPTS }
    }
}

#[derive(Debug, Clone, Copy)]
enum SchemeImpl {
    BootOrder(BootOrderScheme),
    Mender(MenderScheme),
}

impl SchemeImpl {
    fn new(scheme: UBootScheme) -> Result<Self, BootError> {
        Ok(match scheme {
            UBootScheme::BootOrder { attempts } => SchemeImpl::BootOrder(BootOrderScheme::new(attempts)?),
            UBootScheme::Mender { part_a, part_b, attempts } => {
                SchemeImpl::Mender(MenderScheme::new(part_a, part_b, attempts)?)
            }
        })
    }

    fn get(&self) -> &dyn VarScheme {
        match self {
            SchemeImpl::BootOrder(s) => s,
            SchemeImpl::Mender(s) => s,
        }
    }
}

/// A variable change not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Set(String, String),
    Remove(String),
}

/// Records the changes a scheme makes so [`UBootBackend::store`] can replay them on a fresh
/// read taken under the lock.
struct Recorder<'a> {
    env: &'a mut UBootEnv,
    changes: &'a mut Vec<Change>,
}

impl EnvVars for Recorder<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name)
    }

    fn set_var(&mut self, name: &str, value: &str) -> Result<(), BootError> {
        self.env.set_var(name, value)?;
        self.changes.push(Change::Set(name.to_owned(), value.to_owned()));
        Ok(())
    }

    fn remove_var(&mut self, name: &str) {
        self.env.remove(name);
        self.changes.push(Change::Remove(name.to_owned()));
    }
}

/// The U-Boot environment as a [`BootBackend`].
///
/// The lock file is held only while reading ([`UBootBackend::open`], [`BootBackend::reload`])
/// and storing, never in between, so `fw_printenv` keeps working while the daemon runs.
/// [`BootBackend::store`] re-reads the environment under the lock and replays otter's changes
/// onto it, so a variable changed by `fw_setenv` since the last read is not lost; then it writes
/// the non-current copy (see [`EnvStorage::store`]). A corrupt environment is an error at open,
/// reload and store, and is never overwritten.
#[derive(Debug)]
pub struct UBootBackend {
    storage: EnvStorage,
    lock_path: PathBuf,
    lock_wait: std::time::Duration,
    scheme: SchemeImpl,
    env: UBootEnv,
    changes: Vec<Change>,
}

impl UBootBackend {
    /// Opens the environment described by `config` and reads it, holding the flock on
    /// `lock_path` (`None`: [`DEFAULT_LOCK_PATH`]) while reading; waits at most [`DEFAULT_LOCK_WAIT`] for it.
    pub fn open(config: &FwEnvConfig, scheme: UBootScheme, lock_path: Option<&Path>) -> Result<Self, BootError> {
        Self::open_with_lock_wait(config, scheme, lock_path, DEFAULT_LOCK_WAIT)
    }

    /// [`UBootBackend::open`] waiting at most `lock_wait` for the lock, here and in every later
    /// [`BootBackend::store`] and [`BootBackend::reload`].
    pub fn open_with_lock_wait(
        config: &FwEnvConfig,
        scheme: UBootScheme,
        lock_path: Option<&Path>,
        lock_wait: std::time::Duration,
    ) -> Result<Self, BootError> {
        let scheme = SchemeImpl::new(scheme)?;
        let storage = EnvStorage::open(config)?;
        let lock_path = lock_path.unwrap_or(Path::new(DEFAULT_LOCK_PATH)).to_owned();
        let mut backend = Self { storage, lock_path, lock_wait, scheme, env: UBootEnv::new(), changes: Vec::new() };
        backend.reload()?;
        Ok(backend)
    }

    /// The in-memory environment (including unstored changes).
    pub fn env(&self) -> &UBootEnv {
        &self.env
    }

    /// The storage layer.
    pub fn storage(&self) -> &EnvStorage {
        &self.storage
    }

    /// Whether there are changes not yet stored.
    pub fn has_unstored_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    fn apply(
        &mut self,
        f: impl FnOnce(&dyn VarScheme, &mut dyn EnvVars) -> Result<(), BootError>,
    ) -> Result<(), BootError> {
        let scheme = self.scheme;
        let mut rec = Recorder { env: &mut self.env, changes: &mut self.changes };
        f(scheme.get(), &mut rec)
    }
}

impl BootBackend for UBootBackend {
    fn slot_state(&self, slot: Slot) -> SlotState {
        self.scheme.get().state(&self.env, slot)
    }

    fn primary(&self) -> Option<Slot> {
        self.scheme.get().primary(&self.env)
    }

    fn set_try_next(&mut self, slot: Slot) -> Result<(), BootError> {
        self.apply(|s, e| s.try_next(e, slot))
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), BootError> {
        self.apply(|s, e| s.mark_good(e, slot))
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), BootError> {
        self.apply(|s, e| s.mark_bad(e, slot))
    }

    fn store(&mut self) -> Result<(), BootError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let _lock = fsutil::lock(&self.lock_path, self.lock_wait)?;
        let loaded = self.storage.read()?;
        let mut env = loaded.env.clone();
        for change in &self.changes {
            match change {
                // The anti-rollback floor only rises: a higher floor another writer stored since our read stays.
                Change::Set(n, v) if n == crate::SECURITY_VERSION_VAR => match v.parse() {
                    Ok(ours) => crate::raise_security_version_in(&mut env, ours)?,
                    Err(_) => env.set_var(n, v)?,
                },
                Change::Set(n, v) => env.set_var(n, v)?,
                Change::Remove(n) => env.remove_var(n),
            }
        }
        // Nothing changed on storage: spare the flash a write.
        if env != loaded.env {
            self.storage.store(&env, &loaded)?;
        }
        self.env = env;
        self.changes.clear();
        Ok(())
    }

    fn reload(&mut self) -> Result<(), BootError> {
        let _lock = fsutil::lock(&self.lock_path, self.lock_wait)?;
        let loaded = self.storage.read()?;
        self.env = loaded.env;
        self.changes.clear();
        Ok(())
    }

    fn security_version(&self) -> Option<u64> {
        crate::security_version_of(&self.env)
    }

    fn raise_security_version(&mut self, version: u64) -> Result<(), BootError> {
        self.apply(|_, e| crate::raise_security_version_in(e, version))
    }
}
