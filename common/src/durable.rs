//! Replacing a file durably: the one way otter writes a file that must be either the old or the new one after a
//! power cut — the daemon's state, its hawkBit report log, the installer's resume record, a U-Boot env file or
//! grubenv, and the artifacts `otter-artifact` writes.
//!
//! The sequence, and why each step:
//! 1. Create a temp file with a random name in the target's directory, exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`,
//!    mode 0600): a name planted in advance (a symlink to `/etc/shadow`, a hard link, a FIFO) makes the create fail
//!    instead of being written through, and nobody else can open the file while it is being written.
//! 2. Write, give it the old file's permission bits (and, as root, its owner), fsync it: without the fsync the
//!    rename could reach the disk before the data.
//! 3. Rename it over the target (`renameat` in the directory opened once, so the two names are in the same
//!    directory whatever happens to the path meanwhile). A symlink at the target is replaced, never followed.
//! 4. fsync the file again, then the directory: without them the rename itself could be lost. The second fsync of
//!    the file is for FAT (where U-Boot envs usually live): vfat keeps a file's metadata in its directory entry and
//!    writes that entry with the file's inode, which the directory fsync does not do; without it, a power cut after
//!    the next replace freed the old clusters left the entry pointing at free clusters — a broken FAT, found by the
//!    QEMU end-to-end power-cut test.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// Permission bits of a file that did not exist before (the process umask still applies).
const NEW_FILE_MODE: u32 = 0o644;

/// How often [`Replacement::create`] tries another random name when one is taken.
const NAME_ATTEMPTS: usize = 16;

/// Which step of a durable replace failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Opening the target's directory.
    OpenDir,
    /// Reading the metadata of the file being replaced.
    Inspect,
    /// Creating the temp file.
    Create,
    /// Writing the temp file.
    Write,
    /// Giving the temp file the old file's mode and owner.
    Permissions,
    /// fsyncing the file.
    Sync,
    /// Renaming the temp file over the target.
    Rename,
    /// fsyncing the directory.
    SyncDir,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::OpenDir => "cannot open the directory of",
            Step::Inspect => "cannot inspect",
            Step::Create => "cannot create a temp file to replace",
            Step::Write => "cannot write the replacement of",
            Step::Permissions => "cannot give the replacement the mode and owner of",
            Step::Sync => "cannot sync the replacement of",
            Step::Rename => "cannot rename the replacement over",
            Step::SyncDir => "cannot sync the directory of",
        })
    }
}

/// A durable replace failed. The target is unchanged unless the step is [`Step::SyncDir`] or a [`Step::Sync`]
/// after the rename (then the new contents are in place but may not survive a power cut).
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// A step failed with an I/O error.
    #[error("{step} {path}: {source}")]
    Io {
        /// The file being replaced.
        path: PathBuf,
        /// What was being done.
        step: Step,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The target has no file name (`/`, `..`).
    #[error("cannot replace {path}: not a file name")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The target is a directory.
    #[error("cannot replace {path}: it is a directory")]
    IsDirectory {
        /// The path given.
        path: PathBuf,
    },
}

impl ReplaceError {
    /// The file that was being replaced.
    pub fn path(&self) -> &Path {
        match self {
            ReplaceError::Io { path, .. } | ReplaceError::NotAFile { path } | ReplaceError::IsDirectory { path } => {
                path
            }
        }
    }
}

impl From<ReplaceError> for io::Error {
    fn from(e: ReplaceError) -> Self {
        let kind = match &e {
            ReplaceError::Io { source, .. } => source.kind(),
            ReplaceError::NotAFile { .. } => io::ErrorKind::InvalidInput,
            ReplaceError::IsDirectory { .. } => io::ErrorKind::IsADirectory,
        };
        io::Error::new(kind, e)
    }
}

/// Replaces `path` with `bytes` durably (see the [module docs](self)): a power cut leaves either the old or the
/// new file, complete; a link or file planted at any temp name is never written through; the new file keeps the
/// old one's permission bits (and owner, where the caller may set it).
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    let mut r = Replacement::create(path)?;
    r.write_all(bytes).map_err(|source| r.error(Step::Write, source))?;
    r.commit()
}

/// A replacement of one file being written: a temp file in the target's directory that [`Replacement::commit`]
/// renames over the target. Dropped without `commit`, the temp file is removed and the target is untouched. For
/// outputs too large to hold in memory (whole artifacts); implements [`Write`] (unbuffered: wrap it in a
/// `BufWriter` for small writes).
#[derive(Debug)]
pub struct Replacement {
    path: PathBuf,
    dir: OwnedFd,
    name: OsString,
    temp_name: OsString,
    file: Option<File>,
    old: Option<FileStat>,
}

impl Replacement {
    /// Creates the temp file for replacing `path` (which need not exist yet).
    pub fn create(path: &Path) -> Result<Self, ReplaceError> {
        let io_err = |step, source| ReplaceError::Io { path: path.to_owned(), step, source };
        let name = match path.file_name() {
            Some(n) => n.to_owned(),
            None => return Err(ReplaceError::NotAFile { path: path.to_owned() }),
        };
        let dir_path = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = nix::fcntl::open(dir_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| io_err(Step::OpenDir, e.into()))?;
        // lstat: the mode and owner of what is there now, a symlink's own (it is replaced, not followed).
        let old = match nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(nix::errno::Errno::ENOENT) => None,
            Err(e) => return Err(io_err(Step::Inspect, e.into())),
        };
        let kind = old.map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT);
        if kind == Some(SFlag::S_IFDIR) {
            return Err(ReplaceError::IsDirectory { path: path.to_owned() });
        }
        // Only a regular file's mode and owner carry over; a symlink's are meaningless.
        let old = old.filter(|_| kind == Some(SFlag::S_IFREG));
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let temp_name = temp_name(&name).map_err(|source| io_err(Step::Create, source))?;
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            // 0600 until written: nobody else can open it meanwhile and keep reading what follows.
            match nix::fcntl::openat(&dir, temp_name.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => {
                    return Ok(Self { path: path.to_owned(), dir, name, temp_name, file: Some(File::from(fd)), old });
                }
                Err(nix::errno::Errno::EEXIST) => last_err = Some(nix::errno::Errno::EEXIST),
                Err(e) => return Err(io_err(Step::Create, e.into())),
            }
        }
        Err(io_err(Step::Create, last_err.unwrap_or(nix::errno::Errno::EEXIST).into()))
    }

    /// The file being replaced.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, step: Step, source: io::Error) -> ReplaceError {
        ReplaceError::Io { path: self.path.clone(), step, source }
    }

    fn file(&self) -> &File {
        self.file.as_ref().expect("the file is taken only by commit/abandon, which consume self")
    }

    /// Gives the temp file its final mode and owner and fsyncs it.
    fn finish_temp(&self) -> Result<(), ReplaceError> {
        let file = self.file();
        let (mode, owner) = match &self.old {
            Some(st) => (st.st_mode & 0o7777, Some((st.st_uid, st.st_gid))),
            None => (NEW_FILE_MODE & !current_umask(), None),
        };
        if let Some((uid, gid)) = owner {
            let meta = file.metadata().map_err(|e| self.error(Step::Permissions, e))?;
            if (meta.uid(), meta.gid()) != (uid, gid) {
                // Best effort: only root may give a file away, and otterd runs as root without CAP_CHOWN (an
                // empty capability bounding set); then the file keeps its creator as owner, which takes access
                // away from nobody but the old owner.
                match std::os::unix::fs::fchown(file, Some(uid), Some(gid)) {
                    Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32) => {}
                    other => other.map_err(|e| self.error(Step::Permissions, e))?,
                }
            }
        }
        // After fchown, which clears set-id bits.
        file.set_permissions(Permissions::from_mode(mode)).map_err(|e| self.error(Step::Permissions, e))?;
        file.sync_all().map_err(|e| self.error(Step::Sync, e))
    }

    /// Makes the new contents durable and puts them in place: fsync, rename over the target, fsync the file
    /// again (FAT) and the directory.
    pub fn commit(mut self) -> Result<(), ReplaceError> {
        self.finish_temp()?;
        nix::fcntl::renameat(&self.dir, self.temp_name.as_os_str(), &self.dir, self.name.as_os_str())
            .map_err(|e| self.error(Step::Rename, e.into()))?;
        let file = self.file.take().expect("present until consumed");
        file.sync_all().map_err(|e| self.error(Step::Sync, e))?;
        self.remove_stale_temps();
        nix::unistd::fsync(&self.dir).map_err(|e| self.error(Step::SyncDir, e.into()))
    }

    /// Removes temp files of this target left by a power cut or a kill between create and rename (each has its
    /// own random name, so they would pile up). Only names of exactly our pattern; best effort.
    fn remove_stale_temps(&self) {
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", self.dir.as_raw_fd())) else {
            return;
        };
        let prefix = temp_prefix(&self.name);
        for entry in entries.flatten() {
            let n = entry.file_name();
            let is_ours = n
                .as_bytes()
                .strip_prefix(prefix.as_bytes())
                .and_then(|rest| rest.strip_suffix(b".tmp"))
                .is_some_and(|hex| hex.len() == 16 && hex.iter().all(u8::is_ascii_hexdigit));
            if is_ours {
                let _ = nix::unistd::unlinkat(&self.dir, n.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    /// For power-cut tests: does everything [`Replacement::commit`] does before the rename (the temp file is
    /// complete and synced) and stops there, leaving the temp file behind as a power cut would.
    pub fn abandon_before_rename(mut self) -> Result<(), ReplaceError> {
        self.finish_temp()?;
        self.file = None;
        self.temp_name.clear();
        Ok(())
    }
}

impl Write for Replacement {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut f = self.file();
        f.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if self.file.take().is_some() && !self.temp_name.is_empty() {
            // Not committed: the target stays as it was. The name is ours (created exclusively, random).
            let _ = nix::unistd::unlinkat(&self.dir, self.temp_name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// `.NAME.XXXXXXXXXXXXXXXX.tmp`: hidden, recognisably ours, 64 random bits.
fn temp_name(name: &OsStr) -> io::Result<OsString> {
    let r = getrandom::u64().map_err(|e| io::Error::other(e.to_string()))?;
    let mut t = temp_prefix(name);
    t.push(format!("{r:016x}.tmp"));
    Ok(t)
}

/// `.NAME.`, the name cut so the whole temp name stays within NAME_MAX (255 bytes).
fn temp_prefix(name: &OsStr) -> OsString {
    let bytes = name.as_bytes();
    let mut t = OsString::from(".");
    t.push(OsStr::from_bytes(&bytes[..bytes.len().min(200)]));
    t.push(".");
    t
}

/// The process umask. umask(2) can only read it by changing it, which races with other threads creating files;
/// `/proc/self/status` has it (Linux ≥ 4.7); else the usual 022.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Umask:")).and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        replace(&p, b"one").unwrap();
        replace(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(d.path()), ["state.json"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let e = replace(&d.path().join("no/such/file"), b"x").unwrap_err();
        assert!(matches!(e, ReplaceError::Io { step: Step::OpenDir, .. }), "{e:?}");
        assert_eq!(e.path(), d.path().join("no/such/file"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_old_files_mode_is_kept_and_a_new_file_is_not_world_writable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o600)).unwrap();
        replace(&p, b"new").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o600);
        std::fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        replace(&p, b"newer").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o640);
        let fresh = d.path().join("fresh");
        replace(&fresh, b"x").unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644 & !current_umask());
        assert_eq!(mode & 0o022, 0, "{mode:o}");
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = d.path().join("state.json");
        symlink(&victim, &p).unwrap();
        replace(&p, b"state").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
        assert_eq!(std::fs::read(&p).unwrap(), b"state");
    }

    #[test]
    fn links_planted_at_the_old_temp_names_are_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let p = d.path().join("state.json");
        for old_temp in ["state.json.new", "state.json.otter-new", "state.json.tmp"] {
            symlink(&victim, d.path().join(old_temp)).unwrap();
        }
        replace(&p, b"state").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&p).unwrap(), b"state");
    }

    #[test]
    fn as_root_the_old_files_owner_is_kept() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a file away; as anyone else the replace keeps the creator (tested above).
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("owned");
        std::fs::write(&p, b"old").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        replace(&p, b"new").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }

    #[test]
    fn a_directory_at_the_target_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("x")).unwrap();
        assert!(matches!(replace(&d.path().join("x"), b"y"), Err(ReplaceError::IsDirectory { .. })));
        assert_eq!(entries(d.path()), ["x"]);
    }

    #[test]
    fn dropping_an_uncommitted_replacement_leaves_the_target_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("artifact");
        std::fs::write(&p, b"old").unwrap();
        let mut r = Replacement::create(&p).unwrap();
        r.write_all(b"half").unwrap();
        drop(r);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(d.path()), ["artifact"]);
    }

    #[test]
    fn abandon_before_rename_leaves_the_old_file_and_a_complete_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("env");
        std::fs::write(&p, b"old").unwrap();
        let mut r = Replacement::create(&p).unwrap();
        r.write_all(b"new").unwrap();
        r.abandon_before_rename().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let names = entries(d.path());
        assert_eq!(names.len(), 2, "{names:?}");
        let temp = names.iter().find(|n| n.as_str() != "env").unwrap();
        assert!(temp.starts_with(".env.") && temp.ends_with(".tmp"), "{temp}");
        assert_eq!(std::fs::read(d.path().join(temp)).unwrap(), b"new");
        // The next replace clears what the "power cut" left, and nothing else.
        std::fs::write(d.path().join(".env.notours.tmp"), b"x").unwrap();
        replace(&p, b"newer").unwrap();
        assert_eq!(entries(d.path()), [".env.notours.tmp", "env"]);
    }

    #[test]
    fn the_temp_file_is_owner_only_while_it_is_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("public");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        let r = Replacement::create(&p).unwrap();
        let temp = entries(d.path()).into_iter().find(|n| n != "public").unwrap();
        assert_eq!(std::fs::metadata(d.path().join(temp)).unwrap().permissions().mode() & 0o777, 0o600);
        r.commit().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
