//! A/B slot model and bootloader backends for otter.
//!
//! The daemon talks to the bootloader through [`BootBackend`]: it reads the state of each
//! [`Slot`], asks for a one-shot trial of the other slot, and commits (mark good) or rejects
//! (mark bad) a slot after a boot. Every mutator changes memory only; [`BootBackend::store`] is
//! the one call that writes, in one atomic store.
//!
//! Backends:
//! - [`uboot::UBootBackend`]: a native U-Boot environment (codec, `fw_env.config`, redundant
//!   copies, libubootenv's lock) with the `BOOT_ORDER`/`BOOT_x_LEFT` or Mender variable scheme.
//! - [`grub::GrubBackend`]: a GRUB environment block with RAUC's `ORDER`/`x_OK`/`x_TRY` scheme.
//! - [`fake::FakeBootloader`]: in memory, simulates what the bootloader picks at the next boot.
//!
//! The booted slot comes from the kernel command line: [`booted_slot`].

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

pub mod fake;
mod fsutil;
pub mod grub;
pub mod scheme;
pub mod uboot;
mod vars;

pub use scheme::TRIAL_VAR;

/// One of the two A/B slots. Serialised as `"A"` / `"B"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot's name as the bootloader scripts spell it: `"A"` or `"B"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

impl std::ops::Not for Slot {
    type Output = Slot;

    /// The other slot.
    fn not(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a slot name (`A`, `B`, `a` or `b`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid slot name {0:?}: expected A or B")]
pub struct ParseSlotError(pub String);

impl FromStr for Slot {
    type Err = ParseSlotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            _ => Err(ParseSlotError(s.to_owned())),
        }
    }
}

/// What the bootloader environment says about one slot.
///
/// `Bad` means the slot was marked bad (or never set up); a good slot whose per-boot counter
/// ran down because nobody re-confirmed it is still `Good` — the daemon re-confirms the booted
/// slot on every healthy boot. `Trying` is only reported for a slot that otter itself put on
/// trial with [`BootBackend::set_try_next`] and that was neither marked good nor bad since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Committed: the bootloader may boot it (it is the primary or the fallback).
    Good,
    /// Marked bad: the bootloader will not boot it.
    Bad,
    /// On trial. `attempts_left` is how many more boots the bootloader will give it; 0 while
    /// the last attempt is running or once the trial is exhausted (then the bootloader falls
    /// back to the other slot).
    Trying {
        /// Boots the bootloader will still try this slot.
        attempts_left: u32,
    },
}

/// Errors of the bootloader backends.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading or writing a file or device failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or device.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Taking the environment lock failed.
    #[error("failed to lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another process held the environment lock for longer than the backend waits
    /// ([`uboot::DEFAULT_LOCK_WAIT`]); nothing was read or written. Try again later (code `env-locked`).
    #[error("env-locked: {path} is held by another process (waited {waited:?}); nothing was written")]
    EnvLocked {
        /// The lock file.
        path: PathBuf,
        /// How long the backend waited.
        waited: std::time::Duration,
    },
    /// The lock file is not one otter can trust (a symlink, not a regular file, owned by another user).
    #[error("refusing lock file {path}: {reason}")]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Replacing an env file failed; the old file is still in place.
    #[error(transparent)]
    Replace(#[from] otter_common::durable::ReplaceError),
    /// `fw_env.config` is malformed.
    #[error("invalid fw_env.config {path}: line {line}: {message}")]
    Config {
        /// The configuration file (`<memory>` when parsed from a string).
        path: PathBuf,
        /// 1-based line number (0 for the file as a whole).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No copy of the U-Boot environment passes its CRC check. Nothing was written.
    #[error("u-boot environment on {device} is corrupt: no copy passes the crc check")]
    Corrupt {
        /// The (first) device or file holding the environment.
        device: PathBuf,
    },
    /// The environment does not fit into its storage.
    #[error("environment for {device} needs {needed} bytes but only {available} are available")]
    TooLarge {
        /// The device or file.
        device: PathBuf,
        /// Bytes the serialised environment needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A variable name or value cannot be stored in the environment.
    #[error("invalid environment variable {variable:?}: {reason}")]
    InvalidVariable {
        /// The variable name.
        variable: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The GRUB environment block is malformed. Nothing was written.
    #[error("grub environment block {path} is invalid: {reason}")]
    GrubEnv {
        /// The grubenv file.
        path: PathBuf,
        /// What is wrong.
        reason: grub::GrubEnvError,
    },
    /// The storage location is not usable (e.g. an offset outside the device).
    #[error("unusable environment storage {device}: {reason}")]
    Storage {
        /// The device or file.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The backend settings are invalid.
    #[error("invalid bootloader settings: {0}")]
    Settings(String),
    /// Injected by [`fake::FakeBootloader`] to test error paths.
    #[error("injected failure in fake bootloader: {0}")]
    Injected(&'static str),
}

/// The bootloader, seen from the daemon.
///
/// All mutators work in memory only; nothing reaches storage until [`BootBackend::store`].
/// A reboot (or [`BootBackend::reload`]) before `store` forgets them.
pub trait BootBackend {
    /// The state of `slot` in the in-memory view (including unstored changes). No I/O.
    fn slot_state(&self, slot: Slot) -> SlotState;

    /// The slot the bootloader will pick at the next boot according to the in-memory view, or
    /// `None` if it would boot neither (e.g. a rescue entry). No I/O.
    fn primary(&self) -> Option<Slot>;

    /// Makes `slot` the one-shot trial for the next boot, with the configured bounded number
    /// of attempts; when they run out the bootloader falls back to the other slot. In memory.
    fn set_try_next(&mut self, slot: Slot) -> Result<(), BootError>;

    /// Commits `slot`: it stays bootable and ends any trial of it. In memory.
    fn mark_good(&mut self, slot: Slot) -> Result<(), BootError>;

    /// Marks `slot` bad: the bootloader will not boot it. In memory.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), BootError>;

    /// Writes all in-memory changes in one atomic store. The only call that writes.
    fn store(&mut self) -> Result<(), BootError>;

    /// Re-reads the environment from storage, dropping unstored changes.
    fn reload(&mut self) -> Result<(), BootError>;

    /// The anti-rollback floor kept in the environment ([`SECURITY_VERSION_VAR`]) in the in-memory view;
    /// `None` when unset or not a number. No I/O. Default: a backend with no place for it has none.
    fn security_version(&self) -> Option<u64> {
        None
    }

    /// Raises the anti-rollback floor in the environment to `version`; never lowers it. In memory, stored with
    /// the next [`BootBackend::store`]. Default: nothing is kept.
    fn raise_security_version(&mut self, version: u64) -> Result<(), BootError> {
        let _ = version;
        Ok(())
    }
}

/// The environment variable that keeps the anti-rollback floor (the highest committed `security_version`)
/// next to the daemon's state file, so that losing or corrupting one of them cannot lower it.
pub const SECURITY_VERSION_VAR: &str = "OTTER_SECURITY_VERSION";

/// The floor as `vars` hold it.
fn security_version_of(vars: &dyn scheme::EnvVars) -> Option<u64> {
    vars.var(SECURITY_VERSION_VAR)?.trim().parse().ok()
}

/// Sets the floor in `vars` to `version` unless it already is at least that.
fn raise_security_version_in(vars: &mut dyn scheme::EnvVars, version: u64) -> Result<(), BootError> {
    if security_version_of(vars).is_some_and(|v| v >= version) {
        return Ok(());
    }
    vars.set_var(SECURITY_VERSION_VAR, &version.to_string())
}

/// The kernel command line parameter that names the booted slot.
pub const CMDLINE_SLOT_PARAM: &str = "otter.slot";

/// The slot the running system was booted from, from the kernel command line `cmdline` (the
/// contents of `/proc/cmdline`).
///
/// `otter.slot=A|B` (set by the boot script) wins; if it is present but names no slot, the
/// answer is `None` rather than a guess. Without it, the value of `root=` is looked up in
/// `root_map` (e.g. `("/dev/mmcblk0p2", Slot::A)`, `("PARTUUID=…", Slot::B)`). As in the
/// kernel, the last occurrence of a parameter counts.
pub fn booted_slot(cmdline: &str, root_map: &[(String, Slot)]) -> Option<Slot> {
    let mut slot_param = None;
    let mut root = None;
    for word in cmdline_words(cmdline) {
        if let Some(v) = word.strip_prefix("otter.slot=") {
            slot_param = Some(v.to_owned());
        } else if let Some(v) = word.strip_prefix("root=") {
            root = Some(v.to_owned());
        }
    }
    if let Some(v) = slot_param {
        return v.parse().ok();
    }
    let root = root?;
    root_map.iter().rev().find(|(r, _)| *r == root).map(|(_, slot)| *slot)
}

/// Splits a kernel command line into parameters; double quotes group spaces and are removed
/// (`foo="a b"` → `foo=a b`), as the kernel does.
fn cmdline_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_basics() {
        assert_eq!(!Slot::A, Slot::B);
        assert_eq!(!Slot::B, Slot::A);
        assert_eq!(Slot::ALL, [Slot::A, Slot::B]);
        assert_eq!(Slot::A.to_string(), "A");
        assert_eq!(Slot::B.to_string(), "B");
        for (s, slot) in [("A", Slot::A), ("a", Slot::A), ("B", Slot::B), ("b", Slot::B)] {
            assert_eq!(s.parse::<Slot>().unwrap(), slot);
        }
        for bad in ["", "C", "AB", " A", "0"] {
            assert!(bad.parse::<Slot>().is_err(), "{bad:?} parsed");
        }
        assert!(Slot::A < Slot::B);
    }

    fn map() -> Vec<(String, Slot)> {
        vec![("/dev/mmcblk0p2".to_owned(), Slot::A), ("/dev/mmcblk0p3".to_owned(), Slot::B)]
    }

    #[test]
    fn booted_slot_from_cmdline() {
        let cases: &[(&str, Option<Slot>)] = &[
            ("console=ttyS0 otter.slot=A root=/dev/mmcblk0p3", Some(Slot::A)),
            ("otter.slot=b", Some(Slot::B)),
            ("otter.slot=A otter.slot=B", Some(Slot::B)),
            ("root=/dev/mmcblk0p3 rw", Some(Slot::B)),
            ("root=/dev/mmcblk0p2\n", Some(Slot::A)),
            ("root=/dev/mmcblk0p4", None),
            ("otter.slot=C root=/dev/mmcblk0p2", None),
            ("xotter.slot=A", None),
            ("", None),
            ("foo=\"a b otter.slot=A\" root=/dev/mmcblk0p3", Some(Slot::B)),
            ("\"otter.slot=B\"", Some(Slot::B)),
        ];
        for (cmdline, want) in cases {
            assert_eq!(booted_slot(cmdline, &map()), *want, "{cmdline:?}");
        }
    }
}
