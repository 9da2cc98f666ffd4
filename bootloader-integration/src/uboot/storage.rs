//! Where the U-Boot environment lives: a plain file, or a file / raw block device at an offset,
//! with one or two copies. Thin I/O around the codec in [`super::env`].

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::config::FwEnvConfig;
use super::env::{DecodedCopy, FLAG_OBSOLETE, FlagScheme, UBootEnv, next_flags, pick_current};
use crate::BootError;
use crate::fsutil::{self, ReplaceStop, io_err};

/// One copy's resolved location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyLocation {
    /// File or device.
    pub path: PathBuf,
    /// Byte offset, negative offsets resolved.
    pub offset: u64,
    /// Whether the copy is a whole regular file (offset 0, file length = env size).
    pub whole_file: bool,
}

/// The environment as read from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The variables of the current copy.
    pub env: UBootEnv,
    /// Index of the current copy (0 for a single copy).
    pub current: usize,
    /// Flag byte of the current copy (redundant only).
    pub flags: Option<u8>,
    /// Which copies passed their CRC check.
    pub valid: Vec<bool>,
}

/// Where a store stops, for power-cut tests ([`EnvStorage::store_interrupted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// Only the first half of the new copy reaches storage (redundant or in-place single
    /// copy); for a whole-file single copy: the temp file is written but not renamed.
    MidFirstCopy,
    /// The new copy is complete, nothing after it happened (boolean scheme: the old copy's
    /// flag is not cleared; whole-file single copy: not renamed).
    AfterFirstCopy,
}

/// The storage of one U-Boot environment (one or two copies).
#[derive(Debug, Clone)]
pub struct EnvStorage {
    copies: Vec<CopyLocation>,
    size: usize,
    flag_scheme: FlagScheme,
    pad: u8,
}

impl EnvStorage {
    /// Resolves the locations in `config`: negative offsets count from the end of the device
    /// (or file), and every copy must lie within its device. Does not read the environment.
    pub fn open(config: &FwEnvConfig) -> Result<Self, BootError> {
        let size = config.env_size();
        let mut copies = Vec::new();
        for dev in &config.devices {
            let path = &dev.path;
            let mut f = File::open(path).map_err(io_err(path))?;
            // Seeking to the end gives the size of block devices and regular files alike.
            let len = f.seek(SeekFrom::End(0)).map_err(io_err(path))?;
            let file_type = f.metadata().map_err(io_err(path))?.file_type();
            if file_type.is_char_device() {
                // MTD/UBI character devices need erase-before-write (and UBI volume updates):
                // writing them like a block device would corrupt the flash.
                return Err(BootError::Storage {
                    device: path.clone(),
                    reason: "mtd and ubi character devices are not supported yet".to_owned(),
                });
            }
            let is_file = file_type.is_file();
            let offset = if dev.offset < 0 {
                len.checked_sub(dev.offset.unsigned_abs())
            } else {
                Some(dev.offset.unsigned_abs())
            };
            let storage_err = |reason: String| BootError::Storage { device: path.clone(), reason };
            let offset = offset.ok_or_else(|| {
                storage_err(format!("offset {} lies before the start of the {len}-byte device", dev.offset))
            })?;
            if offset.saturating_add(size as u64) > len {
                return Err(storage_err(format!(
                    "environment of {size:#x} bytes at offset {offset:#x} does not fit in {len:#x} bytes"
                )));
            }
            copies.push(CopyLocation {
                path: path.clone(),
                offset,
                whole_file: is_file && offset == 0 && len == size as u64,
            });
        }
        Ok(Self { copies, size, flag_scheme: config.flag_scheme, pad: 0 })
    }

    /// Pads stored copies with `pad` (default 0x00, as U-Boot's `saveenv`).
    pub fn with_padding(mut self, pad: u8) -> Self {
        self.pad = pad;
        self
    }

    /// The copies' locations.
    pub fn copies(&self) -> &[CopyLocation] {
        &self.copies
    }

    /// Size of one copy in bytes.
    pub fn env_size(&self) -> usize {
        self.size
    }

    fn redundant(&self) -> bool {
        self.copies.len() == 2
    }

    /// The raw bytes of every copy.
    pub fn read_raw(&self) -> Result<Vec<Vec<u8>>, BootError> {
        self.copies.iter().map(|c| fsutil::read_at(&c.path, c.offset, self.size)).collect()
    }

    /// Reads the current copy. No valid copy → [`BootError::Corrupt`].
    pub fn read(&self) -> Result<Loaded, BootError> {
        let raw = self.read_raw()?;
        let redundant = self.redundant();
        let decoded: Vec<Option<DecodedCopy>> =
            raw.iter().map(|bytes| UBootEnv::decode(bytes, redundant).ok()).collect();
        let valid: Vec<bool> = decoded.iter().map(Option::is_some).collect();
        let current = if redundant {
            let flags = [0, 1].map(|i| decoded[i].as_ref().and_then(|d| d.flags));
            pick_current(flags, self.flag_scheme)
        } else {
            valid[0].then_some(0)
        };
        let current = current.ok_or_else(|| BootError::Corrupt { device: self.copies[0].path.clone() })?;
        let corrupt = || BootError::Corrupt { device: self.copies[0].path.clone() };
        let DecodedCopy { env, flags } = decoded.into_iter().nth(current).flatten().ok_or_else(corrupt)?;
        Ok(Loaded { env, current, flags, valid })
    }

    /// Stores `env` as the new current copy; `loaded` is what [`EnvStorage::read`] returned
    /// under the same lock. Redundant: writes the non-current copy (flag + 1, or active) and
    /// fsyncs it; on NOR then clears the old copy's flag. Single copy in a whole regular file
    /// (`uboot.env` on FAT): durable replace ([`otter_common::durable`]: exclusive temp file,
    /// fsync, rename, fsync file and dir) rather than libubootenv's in-place write, because a
    /// power cut in the middle of an in-place write leaves a copy failing its CRC, and U-Boot
    /// then boots with its built-in default environment, losing the A/B state; U-Boot looks the
    /// file up by name, so a new inode is fine. A symlink at the configured path is written
    /// through (the file it points to is replaced, the link stays), as `fw_setenv` does. Single copy at an offset or on a device: in place, then fsync — that cannot be
    /// atomic, so use a redundant pair on raw storage.
    pub fn store(&self, env: &UBootEnv, loaded: &Loaded) -> Result<Loaded, BootError> {
        self.store_inner(env, loaded, None)?;
        Ok(self.after_store(env, loaded))
    }

    /// Test hook for power-cut tests: performs [`EnvStorage::store`] up to `at` and stops, as a
    /// power cut would.
    pub fn store_interrupted(&self, env: &UBootEnv, loaded: &Loaded, at: Interruption) -> Result<(), BootError> {
        self.store_inner(env, loaded, Some(at))
    }

    fn after_store(&self, env: &UBootEnv, loaded: &Loaded) -> Loaded {
        if self.redundant() {
            let target = 1 - loaded.current;
            let mut valid = loaded.valid.clone();
            valid[target] = true;
            Loaded {
                env: env.clone(),
                current: target,
                flags: Some(next_flags(loaded.flags.unwrap_or(0), self.flag_scheme)),
                valid,
            }
        } else {
            Loaded { env: env.clone(), current: 0, flags: None, valid: vec![true] }
        }
    }

    fn store_inner(&self, env: &UBootEnv, loaded: &Loaded, stop: Option<Interruption>) -> Result<(), BootError> {
        let too_large = |e| match e {
            super::env::EnvError::TooLarge { needed, available } => {
                BootError::TooLarge { device: self.copies[0].path.clone(), needed, available }
            }
            other => BootError::Storage { device: self.copies[0].path.clone(), reason: other.to_string() },
        };
        if !self.redundant() {
            let bytes = env.to_bytes(self.size, None, self.pad).map_err(too_large)?;
            let copy = &self.copies[0];
            if copy.whole_file {
                let replace_stop = match stop {
                    None => ReplaceStop::Never,
                    Some(_) => ReplaceStop::BeforeRename,
                };
                return fsutil::replace_file(&copy.path, &bytes, replace_stop);
            }
            let bytes = match stop {
                Some(Interruption::MidFirstCopy) => &bytes[..bytes.len() / 2],
                _ => &bytes[..],
            };
            return fsutil::write_at_synced(&copy.path, copy.offset, bytes);
        }
        let flags = next_flags(loaded.flags.unwrap_or(0), self.flag_scheme);
        let bytes = env.to_bytes(self.size, Some(flags), self.pad).map_err(too_large)?;
        let target = &self.copies[1 - loaded.current];
        // The non-current copy first, synced, so the current one stays intact until the new one
        // is complete: a power cut leaves at least one valid copy.
        let first = match stop {
            Some(Interruption::MidFirstCopy) => &bytes[..bytes.len() / 2],
            _ => &bytes[..],
        };
        fsutil::write_at_synced(&target.path, target.offset, first)?;
        if stop.is_some() {
            return Ok(());
        }
        if self.flag_scheme == FlagScheme::Boolean {
            let old = &self.copies[loaded.current];
            fsutil::write_at_synced(&old.path, old.offset + super::env::CRC_LEN as u64, &[FLAG_OBSOLETE])?;
        }
        Ok(())
    }
}

/// Writes a fresh environment into storage regardless of what is there, e.g. to provision an
/// image. Never used by the backend, which refuses to overwrite a corrupt environment.
pub fn provision(config: &FwEnvConfig, env: &UBootEnv, pad: u8) -> Result<(), BootError> {
    let storage = EnvStorage::open(config)?.with_padding(pad);
    for (i, copy) in storage.copies.iter().enumerate() {
        // Copy 0 current: flags 1 and 0 mean "newer" (incremental) and active/obsolete (NOR).
        let flags = storage.redundant().then(|| u8::from(i == 0));
        let bytes = env
            .to_bytes(storage.size, flags, pad)
            .map_err(|e| BootError::Storage { device: copy.path.clone(), reason: e.to_string() })?;
        write_copy(copy, &bytes)?;
    }
    Ok(())
}

fn write_copy(copy: &CopyLocation, bytes: &[u8]) -> Result<(), BootError> {
    fsutil::write_at_synced(&copy.path, copy.offset, bytes)
}
