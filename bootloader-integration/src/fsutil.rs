//! Thin file helpers: atomic replace, positioned reads/writes with fsync, the flock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::BootError;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::Io { path: path.to_owned(), source }
}

/// The temp file name used by [`atomic_replace`] for `path`.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".otter-new");
    path.with_file_name(name)
}

/// What [`atomic_replace`] gets done before it stops (power-cut tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplaceStop {
    /// Do it all.
    Never,
    /// Stop after writing and syncing the temp file, before the rename.
    BeforeRename,
}

/// Replaces `path` with `bytes`: write `path.otter-new`, fsync it, rename it over `path`, fsync
/// the file again and the directory. A power cut leaves either the old or the new file, never a
/// mix: without the first fsync the rename could reach the disk before the data; without the last
/// ones the rename itself could be lost. The second fsync of the file is for FAT (where U-Boot
/// envs usually live): vfat keeps a file's metadata in its directory entry and writes that entry
/// with the file's inode, which the directory fsync does not do; without it, a power cut after
/// the next replace freed the old clusters left the entry pointing at free clusters — a broken
/// FAT, found by the QEMU end-to-end power-cut test. Keeps the old file's permission bits.
pub(crate) fn atomic_replace(path: &Path, bytes: &[u8], stop: ReplaceStop) -> Result<(), BootError> {
    let tmp = temp_path(path);
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    if stop == ReplaceStop::BeforeRename {
        return Ok(());
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    sync_dir_of(path)
}

/// fsyncs the directory containing `path`, so a rename or create in it is durable.
pub(crate) fn sync_dir_of(path: &Path) -> Result<(), BootError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
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

/// Takes an exclusive flock on `path`, creating it as libubootenv does (mode 0666, truncated),
/// blocking until it is free.
pub(crate) fn lock(path: &Path) -> Result<LockGuard, BootError> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o666)
        .open(path)
        .map_err(|source| BootError::Lock { path: path.to_owned(), source })?;
    let lock = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, errno)| BootError::Lock { path: path.to_owned(), source: errno.into() })?;
    Ok(LockGuard { _lock: lock })
}
