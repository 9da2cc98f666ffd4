//! Harness for booting A/B disk images under QEMU.
//!
//! The pieces, in the order a test uses them:
//! - [`ImageBuilder`] runs `qemu/build-image`: a raw disk with a FAT boot partition (otter's
//!   U-Boot script, `uboot.env`) and two ext4 root filesystems A and B, each with Debian's kernel
//!   and a busybox init that prints `OTTER-SLOT=<slot>` and powers off. Built once, cached under
//!   `target/qemu/`.
//! - [`DiskImage`] is a test's own copy of that disk, with access to files on the boot partition
//!   (`mcopy`), e.g. to hand `uboot.env` to otter's U-Boot backend and to `fw_printenv`
//!   ([`DiskImage::checkout_boot_file`]).
//! - [`Qemu`] boots a disk with Debian's qemu-x86 U-Boot (or, for the GRUB scheme, SeaBIOS and
//!   a GRUB loader CD: [`Firmware`]) under TCG and captures the serial console ([`Console`]),
//!   with a per-VM timeout; [`Qemu::spawn`] gives a [`RunningVm`] for tests that need to watch
//!   the console while the guest runs.
//! - [`tools`] checks that the host tools exist, so a missing package fails with its name.
//! - For the end-to-end suite: [`guest`] builds otterd and copies it with its glibc libraries
//!   into an overlay; [`HttpRelay`] lets the guest reach a test server on the host's loopback
//!   (QEMU's user network, the host is `10.0.2.2`) with the server's links rewritten to match.
//!
//! Everything a test writes goes under [`work_dir`] (`target/qemu/`), never into the source tree.

use std::path::PathBuf;

mod error;
pub mod guest;
mod image;
mod relay;
pub mod tools;
mod vm;

pub use error::Error;
pub use image::{BootFileCheckout, BuiltImage, DiskImage, ImageBuilder, Partition, UBOOT_ENV_SIZE, parse_mbr};
pub use relay::{GUEST_HOST_ADDR, HttpRelay};
pub use vm::{Console, Firmware, Qemu, RunningVm};

/// The repository root (the workspace this crate lives in).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".."))
}

/// Where images, per-test copies and console logs go: `$CARGO_TARGET_DIR/qemu`, else
/// `<repo>/target/qemu`.
pub fn work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target")).join("qemu")
}

/// A fresh, empty directory for one test's files: `work_dir()/runs/<name>`. Whatever a previous
/// run left there is removed first; it stays after the test for inspection.
pub fn test_dir(name: &str) -> Result<PathBuf, Error> {
    let dir = work_dir().join("runs").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    Ok(dir)
}

/// Environment variables as a map, for comparing what a boot left in an env with what is expected.
pub fn vars(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
