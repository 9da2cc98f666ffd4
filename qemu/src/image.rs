//! Disk images: building the base image and working on a test's copy of it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use otter_bootloader::uboot::{FwEnvConfig, UBootBackend, UBootEnv, UBootScheme};

use crate::tools::{self, run};
use crate::{Error, repo_root, work_dir};

/// Size of `uboot.env` on the boot partition: the boot script's `otter_env_size` and the size
/// column of the matching `fw_env.config`. 16 KiB.
pub const UBOOT_ENV_SIZE: usize = 0x4000;

/// Builds the A/B disk image with `qemu/build-image`. The script skips the build when nothing
/// that goes into the image changed, so calling this at the start of every test is cheap.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    out: Option<PathBuf>,
    overlays: Vec<PathBuf>,
    overlay_a: Option<PathBuf>,
    overlay_b: Option<PathBuf>,
    uboot_env: Option<PathBuf>,
    grub: bool,
    grubenv: Option<PathBuf>,
}

/// What [`ImageBuilder::build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The disk. Treat it as read-only: boot a [`DiskImage::copy_from`] of it.
    pub disk: PathBuf,
    /// The GRUB loader CD, with [`ImageBuilder::with_grub`].
    pub grub_iso: Option<PathBuf>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// The default image: no overlays, no `uboot.env`, U-Boot only, output in
    /// `work_dir()/image` (`image-grub` with [`ImageBuilder::with_grub`]).
    pub fn new() -> Self {
        Self {
            out: None,
            overlays: Vec::new(),
            overlay_a: None,
            overlay_b: None,
            uboot_env: None,
            grub: false,
            grubenv: None,
        }
    }

    /// Output directory (give each differently configured image its own, or they rebuild each
    /// other).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out = Some(dir.into());
        self
    }

    /// Also makes the disk bootable with GRUB running otter's `grub.cfg` (an empty
    /// `grub/grubenv` unless [`ImageBuilder::grubenv`]), and builds the loader CD
    /// ([`BuiltImage::grub_iso`]) to boot it with [`crate::Firmware::GrubCdrom`].
    pub fn with_grub(mut self) -> Self {
        self.grub = true;
        self
    }

    /// Puts the file at `path` on the boot partition as `grub/grubenv` (with GRUB).
    pub fn grubenv(mut self, path: impl Into<PathBuf>) -> Self {
        self.grubenv = Some(path.into());
        self
    }

    /// Copies `dir` over both root filesystems (e.g. otterd, its config, rc.d hooks in
    /// `/etc/otter-qemu/rc.d/`).
    pub fn overlay(mut self, dir: impl Into<PathBuf>) -> Self {
        self.overlays.push(dir.into());
        self
    }

    /// Copies `dir` over slot A's root filesystem only.
    pub fn overlay_a(mut self, dir: impl Into<PathBuf>) -> Self {
        self.overlay_a = Some(dir.into());
        self
    }

    /// Copies `dir` over slot B's root filesystem only.
    pub fn overlay_b(mut self, dir: impl Into<PathBuf>) -> Self {
        self.overlay_b = Some(dir.into());
        self
    }

    /// Puts the file at `path` on the boot partition as `uboot.env`.
    pub fn uboot_env(mut self, path: impl Into<PathBuf>) -> Self {
        self.uboot_env = Some(path.into());
        self
    }

    /// Builds (or reuses) the image.
    pub fn build(&self) -> Result<BuiltImage, Error> {
        tools::require_all()?;
        if self.grub {
            tools::require_grub()?;
        }
        let out_dir =
            self.out.clone().unwrap_or_else(|| work_dir().join(if self.grub { "image-grub" } else { "image" }));
        let script = repo_root().join("qemu").join("build-image");
        let mut cmd = Command::new(&script);
        cmd.arg("--out").arg(&out_dir);
        if self.grub {
            cmd.arg("--with-grub");
        }
        if let Some(e) = &self.grubenv {
            cmd.arg("--grubenv").arg(e);
        }
        for o in &self.overlays {
            cmd.arg("--overlay").arg(o);
        }
        if let Some(o) = &self.overlay_a {
            cmd.arg("--overlay-a").arg(o);
        }
        if let Some(o) = &self.overlay_b {
            cmd.arg("--overlay-b").arg(o);
        }
        if let Some(e) = &self.uboot_env {
            cmd.arg("--uboot-env").arg(e);
        }
        let out = run(&mut cmd)?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(Error::BadImage { path, reason: "build-image did not print the path of the disk".to_owned() });
        }
        let grub_iso = self.grub.then(|| out_dir.join("grub.iso"));
        if let Some(iso) = &grub_iso
            && !iso.is_file()
        {
            return Err(Error::BadImage { path: iso.clone(), reason: "build-image made no GRUB loader CD".to_owned() });
        }
        Ok(BuiltImage { disk: path, grub_iso })
    }
}

/// A primary partition from the image's MBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number, as in `/dev/vda<number>` and U-Boot's `virtio 0:<number>`.
    pub number: u8,
    /// MBR type byte (0x0c FAT32 LBA, 0x83 Linux).
    pub kind: u8,
    /// The boot flag, which U-Boot's distro boot uses to find `boot.scr`.
    pub bootable: bool,
    /// Start, in bytes from the start of the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Parses the four primary entries of an MBR (first 512 bytes of the disk); empty entries are
/// skipped.
pub fn parse_mbr(sector: &[u8]) -> Option<Vec<Partition>> {
    if sector.len() < 512 || sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let mut parts = Vec::new();
    for i in 0..4u8 {
        let e = &sector[446 + 16 * usize::from(i)..][..16];
        let kind = e[4];
        let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if kind == 0 || sectors == 0 {
            continue;
        }
        parts.push(Partition {
            number: i + 1,
            kind,
            bootable: e[0] == 0x80,
            offset: u64::from(lba) * 512,
            size: u64::from(sectors) * 512,
        });
    }
    Some(parts)
}

/// A disk image a test owns and boots; files on its FAT boot partition are reached with mtools,
/// without mounting.
#[derive(Debug, Clone)]
pub struct DiskImage {
    path: PathBuf,
}

impl DiskImage {
    /// An existing image file.
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Copies `base` to `dest` (sparse) and opens the copy.
    pub fn copy_from(base: &Path, dest: impl Into<PathBuf>) -> Result<Self, Error> {
        let dest = dest.into();
        run(tools::command("cp", "coreutils")?.arg("--sparse=always").arg(base).arg(&dest))?;
        Ok(Self { path: dest })
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The primary partitions.
    pub fn partitions(&self) -> Result<Vec<Partition>, Error> {
        use std::io::Read;
        let mut sector = [0u8; 512];
        fs::File::open(&self.path)
            .and_then(|mut f| f.read_exact(&mut sector))
            .map_err(|e| Error::io("read the partition table of", &self.path, e))?;
        parse_mbr(&sector)
            .ok_or_else(|| Error::BadImage { path: self.path.clone(), reason: "no MBR partition table".to_owned() })
    }

    /// Primary partition `number` (as in `/dev/vda<number>`).
    pub fn partition(&self, number: u8) -> Result<Partition, Error> {
        self.partitions()?
            .into_iter()
            .find(|p| p.number == number)
            .ok_or_else(|| Error::BadImage { path: self.path.clone(), reason: format!("no partition {number}") })
    }

    /// The whole contents of partition `number` (e.g. 3 for slot B: what the guest sees as
    /// `/dev/vda3`).
    pub fn read_partition(&self, number: u8) -> Result<Vec<u8>, Error> {
        use std::os::unix::fs::FileExt;
        let p = self.partition(number)?;
        let len = usize::try_from(p.size).map_err(|_| Error::BadImage {
            path: self.path.clone(),
            reason: format!("partition {number} is too large to read into memory"),
        })?;
        let mut data = vec![0u8; len];
        fs::File::open(&self.path)
            .and_then(|f| f.read_exact_at(&mut data, p.offset))
            .map_err(|e| Error::io("read a partition of", &self.path, e))?;
        Ok(data)
    }

    /// Writes `data` at the start of partition `number` (an image written to a slot, or zeros to
    /// erase it); longer than the partition is an error.
    pub fn write_partition(&self, number: u8, data: &[u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let p = self.partition(number)?;
        if data.len() as u64 > p.size {
            return Err(Error::BadImage {
                path: self.path.clone(),
                reason: format!("{} bytes do not fit into partition {number} ({} bytes)", data.len(), p.size),
            });
        }
        fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|f| f.write_all_at(data, p.offset))
            .map_err(|e| Error::io("write a partition of", &self.path, e))
    }

    /// Checks the FAT file system of partition `number` with `fsck.fat -n` (on a copy in
    /// `scratch`; nothing is changed). `Ok(Ok(()))` when it finds nothing wrong but the dirty bit
    /// Linux sets while the file system is mounted (what a power cut leaves behind);
    /// `Ok(Err(report))` with fsck.fat's report otherwise.
    pub fn check_fat(&self, number: u8, scratch: &Path) -> Result<Result<(), String>, Error> {
        let copy = scratch.join(format!("partition-{number}.fsck"));
        fs::write(&copy, self.read_partition(number)?).map_err(|e| Error::io("write", &copy, e))?;
        let mut cmd = tools::command("fsck.fat", "dosfstools")?;
        let out = cmd.arg("-n").arg(&copy).output().map_err(|e| Error::Command {
            command: format!("{cmd:?}"),
            status: "not started".to_owned(),
            stderr: e.to_string(),
        })?;
        fs::remove_file(&copy).map_err(|e| Error::io("remove", &copy, e))?;
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok(if fat_report_is_clean(&report) { Ok(()) } else { Err(report.trim().to_owned()) })
    }

    /// The FAT boot partition: the one with the boot flag.
    pub fn boot_partition(&self) -> Result<Partition, Error> {
        self.partitions()?.into_iter().find(|p| p.bootable).ok_or_else(|| Error::BadImage {
            path: self.path.clone(),
            reason: "no partition has the boot flag".to_owned(),
        })
    }

    /// `-i image@@offset`, mtools' way to address a partition inside an image.
    fn mtools_image(&self) -> Result<String, Error> {
        let p = self.boot_partition()?;
        Ok(format!("{}@@{}", self.path.display(), p.offset))
    }

    fn mtools(&self, tool: &str) -> Result<Command, Error> {
        let mut cmd = tools::command(tool, "mtools")?;
        // The partition's geometry is not a whole number of tracks; mtools refuses it otherwise.
        cmd.env("MTOOLS_SKIP_CHECK", "1");
        Ok(cmd)
    }

    /// Whether the file `name` (a path like `uboot.env` or `grub/grubenv`) exists on the boot
    /// partition.
    pub fn has_boot_file(&self, name: &str) -> Result<bool, Error> {
        let mut cmd = self.mtools("mdir")?;
        cmd.arg("-b").arg("-i").arg(self.mtools_image()?).arg(format!("::{name}"));
        match run(&mut cmd) {
            Ok(_) => Ok(true),
            Err(Error::Command { stderr, .. }) if stderr.contains("not found") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copies `name` from the boot partition to `dest`; `Ok(false)` if there is no such file.
    pub fn get_boot_file(&self, name: &str, dest: &Path) -> Result<bool, Error> {
        if !self.has_boot_file(name)? {
            return Ok(false);
        }
        run(self
            .mtools("mcopy")?
            .arg("-n")
            .arg("-o")
            .arg("-i")
            .arg(self.mtools_image()?)
            .arg(format!("::{name}"))
            .arg(dest))?;
        Ok(true)
    }

    /// Copies `src` onto the boot partition as `name`, replacing it.
    pub fn put_boot_file(&self, src: &Path, name: &str) -> Result<(), Error> {
        run(self.mtools("mcopy")?.arg("-o").arg("-i").arg(self.mtools_image()?).arg(src).arg(format!("::{name}")))?;
        Ok(())
    }

    /// The contents of `name` on the boot partition, if it exists.
    pub fn read_boot_file(&self, name: &str, scratch: &Path) -> Result<Option<Vec<u8>>, Error> {
        let dest = scratch.join(format!("{}.read", file_name(name)));
        if !self.get_boot_file(name, &dest)? {
            return Ok(None);
        }
        let data = fs::read(&dest).map_err(|e| Error::io("read", &dest, e))?;
        fs::remove_file(&dest).map_err(|e| Error::io("remove", &dest, e))?;
        Ok(Some(data))
    }

    /// Writes `data` to the boot partition as `name`.
    pub fn write_boot_file(&self, name: &str, data: &[u8], scratch: &Path) -> Result<(), Error> {
        let src = scratch.join(format!("{}.write", file_name(name)));
        fs::write(&src, data).map_err(|e| Error::io("write", &src, e))?;
        self.put_boot_file(&src, name)?;
        fs::remove_file(&src).map_err(|e| Error::io("remove", &src, e))?;
        Ok(())
    }

    /// Copies `name` out of the boot partition into `dir` (if it exists), for host tools and
    /// otter's backends to work on as on the device, with an `fw_env.config` next to it;
    /// [`BootFileCheckout::commit`] puts it back.
    pub fn checkout_boot_file(&self, name: &str, dir: &Path) -> Result<BootFileCheckout, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let path = dir.join(file_name(name));
        if path.exists() {
            fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        }
        self.get_boot_file(name, &path)?;
        let config = dir.join("fw_env.config");
        let line = format!("{} 0x0 {:#x}\n", path.display(), UBOOT_ENV_SIZE);
        fs::write(&config, line).map_err(|e| Error::io("write", &config, e))?;
        Ok(BootFileCheckout { image: self.clone(), name: name.to_owned(), path, config })
    }
}

/// Whether an `fsck.fat -n` report lists no problem: only its banner, the dirty-bit notice
/// (exit status 1 on its own) and the summary line.
fn fat_report_is_clean(report: &str) -> bool {
    report.lines().map(str::trim).all(|l| {
        l.is_empty()
            || l.starts_with("fsck.fat ")
            || l.starts_with("Dirty bit is set.")
            || l == "Automatically removing dirty bit."
            || l == "Leaving filesystem unchanged."
            || (l.contains(" files, ") && l.ends_with(" clusters"))
    })
}

/// The last component of a boot-partition path (`grub/grubenv` → `grubenv`).
fn file_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// A boot-partition file copied out to the host; see [`DiskImage::checkout_boot_file`].
#[derive(Debug)]
pub struct BootFileCheckout {
    image: DiskImage,
    name: String,
    path: PathBuf,
    config: PathBuf,
}

impl BootFileCheckout {
    /// The host copy (may not exist if the image had no such file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An `fw_env.config` describing the host copy as a single 16 KiB environment
    /// (`<path> 0x0 0x4000`), for `fw_printenv -c` and otter's `FwEnvConfig`.
    pub fn fw_env_config(&self) -> &Path {
        &self.config
    }

    /// Whether the host copy exists.
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Copies the host copy back onto the image's boot partition.
    pub fn commit(&self) -> Result<(), Error> {
        self.image.put_boot_file(&self.path, &self.name)
    }

    /// otter's `FwEnvConfig` for the host copy (parsed from [`BootFileCheckout::fw_env_config`]).
    pub fn fw_config(&self) -> Result<FwEnvConfig, String> {
        let text = fs::read_to_string(&self.config).map_err(|e| format!("reading {}: {e}", self.config.display()))?;
        FwEnvConfig::parse(&text).map_err(|e| format!("otter cannot parse {}: {e}", self.config.display()))
    }

    /// otter's U-Boot backend on the host copy, with its lock file at `lock` (the default one is
    /// under /var/lock).
    pub fn backend(&self, scheme: UBootScheme, lock: &Path) -> Result<UBootBackend, String> {
        UBootBackend::open(&self.fw_config()?, scheme, Some(lock)).map_err(|e| format!("otter opens uboot.env: {e}"))
    }

    /// The host copy of `uboot.env` read twice, with otter's codec and with libubootenv's
    /// `fw_printenv`, which must see the same variables; also otter's backend on it, for state
    /// checks.
    pub fn checked_env(
        &self,
        scheme: UBootScheme,
        lock: &Path,
    ) -> Result<(BTreeMap<String, String>, UBootBackend), String> {
        let bytes = fs::read(&self.path).map_err(|e| format!("reading {}: {e}", self.path.display()))?;
        if bytes.len() != UBOOT_ENV_SIZE {
            return Err(format!("uboot.env has {} bytes, not {UBOOT_ENV_SIZE}", bytes.len()));
        }
        let decoded = UBootEnv::from_bytes(&bytes, false).map_err(|e| format!("otter's codec: {e}"))?;
        let otter: BTreeMap<String, String> = decoded
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let fw = tools::fw_printenv(&self.config).map_err(|e| format!("fw_printenv: {e}"))?;
        if otter != fw {
            return Err(format!("otter's codec and fw_printenv disagree: {otter:?} vs {fw:?}"));
        }
        Ok((otter, self.backend(scheme, lock)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mbr_entries() {
        let mut s = [0u8; 512];
        s[510] = 0x55;
        s[511] = 0xAA;
        // p1: bootable FAT at 1 MiB, 16 MiB long; p2: Linux right after it.
        let e1 = &mut s[446..462];
        e1[0] = 0x80;
        e1[4] = 0x0c;
        e1[8..12].copy_from_slice(&2048u32.to_le_bytes());
        e1[12..16].copy_from_slice(&32768u32.to_le_bytes());
        let e2 = &mut s[462..478];
        e2[4] = 0x83;
        e2[8..12].copy_from_slice(&34816u32.to_le_bytes());
        e2[12..16].copy_from_slice(&131072u32.to_le_bytes());
        let parts = parse_mbr(&s).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], Partition { number: 1, kind: 0x0c, bootable: true, offset: 1 << 20, size: 16 << 20 });
        assert_eq!(parts[1].number, 2);
        assert!(!parts[1].bootable);
        assert_eq!(parts[1].offset, 34816 * 512);
    }

    #[test]
    fn a_dirty_bit_alone_is_a_clean_fat() {
        let dirty = "fsck.fat 4.2 (2021-01-31)\nDirty bit is set. Fs was not properly unmounted and some data may be \
                     corrupt.\n Automatically removing dirty bit.\n\nLeaving filesystem unchanged.\n/tmp/p1.img: 4 \
                     files, 13/8167 clusters\n";
        assert!(fat_report_is_clean(dirty));
        let broken = "fsck.fat 4.2 (2021-01-31)\n/uboot.env\n  Contains a free cluster (7). Assuming EOF.\n/uboot.env\n  \
                      File size is 16384 bytes, cluster chain length is 0 bytes.\n  Truncating file to 0 bytes.\n\
                      Checking for unused clusters.\nReclaimed 8 unused clusters (16384 bytes).\nLeaving filesystem \
                      unchanged.\n/tmp/p1.img: 4 files, 5/8167 clusters\n";
        assert!(!fat_report_is_clean(broken));
    }

    #[test]
    fn rejects_a_sector_without_signature() {
        assert_eq!(parse_mbr(&[0u8; 512]), None);
        assert_eq!(parse_mbr(&[0u8; 100]), None);
    }
}
