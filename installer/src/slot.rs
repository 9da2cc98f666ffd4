//! Writing an image into a slot: a block device or a regular file.
//!
//! Writes go through `O_DIRECT` where the kernel and filesystem allow it, so a multi-hundred-megabyte image does
//! not push everything else out of a small gateway's page cache; the few unaligned pieces (the first block, which
//! is written last, and a partial last block) go through a second, buffered descriptor.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::InstallError;
use crate::source::is_block_device;

/// Alignment for direct I/O, in bytes (covers 512-byte and 4 KiB logical block sizes).
pub const ALIGN: usize = 4096;

/// Size of the region at the start of a slot that is zeroed while the slot does not hold a complete, verified
/// image, in bytes. It covers the superblocks of ext4 (at 1 KiB), squashfs and erofs (at 1 KiB), so no mount or
/// bootloader recognises a half-written slot.
pub const HEAD: usize = 4096;

/// A heap buffer whose usable part starts at a 4 KiB boundary, made without `unsafe`: over-allocate and start at
/// the first aligned byte. Moving the buffer does not move its heap storage, so the alignment holds.
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer with room for `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        Self { raw, off, len: 0 }
    }

    /// How many bytes fit.
    pub fn capacity(&self) -> usize {
        self.raw.len() - ALIGN
    }

    /// Sets the length of the usable part and returns it (contents are whatever was there before).
    pub fn resize(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.capacity());
        self.len = len;
        &mut self.raw[self.off..self.off + len]
    }

    /// The usable part.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
}

/// An open slot.
pub struct SlotWriter {
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    capacity: Option<u64>,
    scratch: Option<AlignedBuf>,
}

impl SlotWriter {
    /// Opens the slot for writing (never creating a block device path; a regular file is created if missing).
    /// `max_size` limits a slot beyond what the device itself imposes (file-backed slots have no size of their own).
    pub fn open(path: &Path, max_size: Option<u64>) -> Result<Self, InstallError> {
        let err = |context: &str| {
            let slot = path.to_owned();
            let context = context.to_owned();
            move |error| InstallError::Slot { slot, context, error }
        };
        let block = is_block_device(path);
        let mut buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!block)
            .truncate(false)
            .open(path)
            .map_err(err("opening"))?;
        // lseek(SEEK_END) reports a block device's size without an ioctl; a regular file grows as needed.
        let capacity = match block {
            true => Some(buffered.seek(SeekFrom::End(0)).map_err(err("reading the device size"))?),
            false => None,
        };
        let capacity = match (capacity, max_size) {
            (Some(c), Some(m)) => Some(c.min(m)),
            (c, m) => c.or(m),
        };
        let direct = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path).ok();
        Ok(Self { path: path.to_owned(), buffered, direct, capacity, scratch: None })
    }

    /// The slot's size limit, if it has one.
    pub fn capacity(&self) -> Option<u64> {
        self.capacity
    }

    /// Whether `other` is this slot: the same block device, or the same file.
    pub fn same_device(&self, other: &File) -> bool {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        match (self.buffered.metadata(), other.metadata()) {
            (Ok(a), Ok(b)) if a.file_type().is_block_device() && b.file_type().is_block_device() => {
                a.rdev() == b.rdev()
            }
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }

    /// The slot's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, context: impl Into<String>) -> impl FnOnce(io::Error) -> InstallError {
        let slot = self.path.clone();
        let context = context.into();
        move |error| InstallError::Slot { slot, context, error }
    }

    /// Zeroes the first block and makes that durable: from here until [`SlotWriter::write_head`] the slot is
    /// recognisably not a valid image, whatever happens.
    pub fn invalidate(&mut self) -> Result<(), InstallError> {
        self.buffered.write_all_at(&[0u8; HEAD], 0).map_err(self.err("zeroing the first block"))?;
        self.buffered.sync_all().map_err(self.err("syncing"))
    }

    /// Writes `data` at `offset`; direct when everything is aligned and the filesystem allows it.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), InstallError> {
        let aligned = offset.is_multiple_of(ALIGN as u64)
            && data.len().is_multiple_of(ALIGN)
            && data.as_ptr().align_offset(ALIGN) == 0;
        if aligned && let Some(d) = &self.direct {
            match d.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // Some filesystems accept O_DIRECT at open and refuse it on write; fall back for good.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(self.err(format!("writing at offset {offset}"))(e)),
            }
        }
        self.buffered.write_all_at(data, offset).map_err(self.err(format!("writing at offset {offset}")))
    }

    /// Whether the slot already holds exactly `data` at `offset` (used to skip rewriting identical chunks).
    pub fn holds(&mut self, data: &[u8], offset: u64) -> Result<bool, InstallError> {
        let mut scratch = self.scratch.take().unwrap_or_else(|| AlignedBuf::new(data.len()));
        if scratch.capacity() < data.len() {
            scratch = AlignedBuf::new(data.len());
        }
        let result = self.read_at(scratch.resize(data.len()), offset).map(|read| read && scratch.as_slice() == data);
        self.scratch = Some(scratch);
        result
    }

    /// Reads `buf.len()` bytes at `offset` (direct when `buf` is aligned); `false` when the slot ends before.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<bool, InstallError> {
        if self.capacity.is_none_or(|c| c < offset + buf.len() as u64) {
            let len = self.buffered.metadata().map_err(self.err("reading the file size"))?.len();
            if len < offset + buf.len() as u64 {
                return Ok(false);
            }
        }
        let direct_ok = offset.is_multiple_of(ALIGN as u64)
            && buf.len().is_multiple_of(ALIGN)
            && buf.as_ptr().align_offset(ALIGN) == 0;
        let read = match (&self.direct, direct_ok) {
            (Some(d), true) => d.read_exact_at(buf, offset),
            _ => self.buffered.read_exact_at(buf, offset),
        };
        match read {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(self.err(format!("reading at offset {offset}"))(e)),
        }
    }

    /// Flushes everything written so far to stable storage.
    pub fn sync(&mut self) -> Result<(), InstallError> {
        if let Some(d) = &self.direct {
            d.sync_all().map_err(self.err("syncing"))?;
        }
        self.buffered.sync_all().map_err(self.err("syncing"))
    }

    /// Writes the first block of the image and syncs: the last write of an install, after everything else is
    /// durable, so the slot turns valid only when it is complete.
    pub fn write_head(&mut self, head: &[u8]) -> Result<(), InstallError> {
        self.buffered.write_all_at(head, 0).map_err(self.err("writing the first block"))?;
        self.buffered.sync_all().map_err(self.err("syncing"))
    }
}

/// Whether the slot at `path` starts with the zeroed head that marks "no valid image".
pub fn is_invalidated(path: &Path) -> io::Result<bool> {
    let f = File::open(path)?;
    let mut head = [0u8; HEAD];
    match f.read_exact_at(&mut head, 0) {
        Ok(()) => Ok(head.iter().all(|&b| b == 0)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(e),
    }
}
