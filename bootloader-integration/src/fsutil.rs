//! Thin file helpers: durable replace of an env file, positioned reads/writes with fsync, the flock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::BootError;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::Io { path: path.to_owned(), source }
}

/// What [`replace_file`] gets done before it stops (power-cut tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplaceStop {
    /// Do it all.
    Never,
    /// Stop after writing and syncing the temp file, before the rename.
    BeforeRename,
}

/// Replaces the env file at `path` with `bytes` through [`otter_common::durable`] (exclusive random temp file,
/// fsync, rename, fsync file again for FAT, fsync dir; keeps mode and owner). A symlink at `path`
/// (`/boot/uboot.env -> firmware/uboot.env`) is written through, as `fw_setenv` and U-Boot see it: the file it
/// finally points to is replaced in its own directory and the link stays. Replacing the link itself would leave
/// the bootloader reading the old target, never seeing the switch.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], stop: ReplaceStop) -> Result<(), BootError> {
    let target = std::fs::canonicalize(path).map_err(io_err(path))?;
    let mut r = otter_common::durable::Replacement::create(&target)?;
    r.write_all(bytes).map_err(io_err(&target))?;
    match stop {
        ReplaceStop::Never => r.commit()?,
        ReplaceStop::BeforeRename => r.abandon_before_rename()?,
    }
    Ok(())
}

/// Reads exactly `len` bytes at `offset` of `path`.
pub(crate) fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, BootError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).map_err(io_err(path))?;
    Ok(buf)
}

/// Writes `bytes` at `offset` of the existing `path` in place and fsyncs it before returning,
/// so whatever is written next (the other copy, a flag) cannot reach the disk first.
pub(crate) fn write_at_synced(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), BootError> {
    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.write_all_at(bytes, offset).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// An exclusive flock on a lock file, released on drop.
pub(crate) struct LockGuard {
    _lock: Flock<File>,
}

/// How often [`lock`] retries a held lock.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// Takes an exclusive flock on libubootenv's lock file `path` (the same file and lock type as `fw_setenv`, so
/// the two never interleave), waiting at most `wait`.
///
/// The lock file lives in a world-writable directory (`/var/lock`), so nothing about it is trusted: it is
/// opened without following a symlink and without truncating (a planted link to a root-owned file would
/// otherwise make root truncate it), created owner-only (0600: `fw_setenv` runs as root, and a lock file that
/// others can open is a lock anyone can hold), and refused unless it is a regular file owned by root or by us.
/// A lock file found readable by others is made owner-only. A lock still held after `wait` is
/// [`BootError::EnvLocked`]: a blocking wait would let any process that can open the file freeze the engine.
pub(crate) fn lock(path: &Path, wait: Duration) -> Result<LockGuard, BootError> {
    let lock_err = |source: std::io::Error| BootError::Lock { path: path.to_owned(), source };
    let refuse = |reason: String| BootError::LockFile { path: path.to_owned(), reason };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK: opening a FIFO or a device planted at the path never waits.
        .custom_flags(libc_flags::O_NOFOLLOW | libc_flags::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc_flags::ELOOP) => refuse("it is a symbolic link".to_owned()),
            _ => lock_err(e),
        })?;
    let meta = f.metadata().map_err(lock_err)?;
    if !meta.file_type().is_file() {
        return Err(refuse(format!("not a regular file ({:?})", meta.file_type())));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(refuse(format!("owned by uid {}, not by root", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 && meta.uid() == me {
        // Created by an older otter or libubootenv (0666): whoever can open it can hold it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(lock_err)?;
    }
    let deadline = Instant::now() + wait;
    let mut f = f;
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(LockGuard { _lock: lock }),
            Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                f = back;
                std::thread::sleep(LOCK_RETRY);
            }
            Err((_, Errno::EWOULDBLOCK)) => return Err(BootError::EnvLocked { path: path.to_owned(), waited: wait }),
            Err((_, errno)) => return Err(lock_err(errno.into())),
        }
    }
}

/// The few raw flag and errno values [`lock`] needs (std has no names for them).
mod libc_flags {
    pub(super) const O_NOFOLLOW: i32 = nix::fcntl::OFlag::O_NOFOLLOW.bits();
    pub(super) const O_NONBLOCK: i32 = nix::fcntl::OFlag::O_NONBLOCK.bits();
    pub(super) const ELOOP: i32 = nix::errno::Errno::ELOOP as i32;
}
