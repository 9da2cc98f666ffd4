//! Host tools: finding them (a missing one is an [`Error::MissingTool`] naming its Debian
//! package) and running them with their failures turned into errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::Error;

/// Host programs the harness uses, with the Debian package of each.
pub const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mkimage", "u-boot-tools"),
    ("mkenvimage", "u-boot-tools"),
    ("fw_printenv", "libubootenv-tool"),
    ("fw_setenv", "libubootenv-tool"),
    ("sfdisk", "fdisk"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mkfs.ext4", "e2fsprogs"),
    ("cpio", "cpio"),
    ("modprobe", "kmod"),
];

/// The U-Boot ROM for QEMU's `pc` machine (32-bit qemu-x86 build; the 64-bit one cannot zboot).
pub const UBOOT_ROM: &str = "/usr/lib/u-boot/qemu-x86/u-boot.rom";

/// The full path of `tool`, searched in `PATH` and then in the sbin directories (`mkfs.*` and
/// `sfdisk` live there and are not in a normal user's `PATH`).
pub fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The full path of `tool`, or an error naming `package`.
pub fn require(tool: &str, package: &str) -> Result<PathBuf, Error> {
    find(tool).ok_or_else(|| Error::MissingTool { tool: tool.to_owned(), package: package.to_owned() })
}

/// Checks every tool in [`TOOLS`] and the U-Boot ROM; the first one missing is the error.
pub fn require_all() -> Result<(), Error> {
    for (tool, package) in TOOLS {
        require(tool, package)?;
    }
    if !Path::new(UBOOT_ROM).is_file() {
        return Err(Error::MissingFile { path: PathBuf::from(UBOOT_ROM), package: "u-boot-qemu".to_owned() });
    }
    Ok(())
}

/// Checks what [`crate::ImageBuilder::with_grub`] needs: GRUB's tools and BIOS modules, and
/// xorriso for the loader CD.
pub fn require_grub() -> Result<(), Error> {
    require("grub-mkrescue", "grub-common")?;
    require("grub-editenv", "grub-common")?;
    require("xorriso", "xorriso")?;
    let modules = Path::new("/usr/lib/grub/i386-pc");
    if !modules.is_dir() {
        return Err(Error::MissingFile { path: modules.to_path_buf(), package: "grub-pc-bin".to_owned() });
    }
    Ok(())
}

/// A command for `tool` (resolved with [`require`]).
pub fn command(tool: &str, package: &str) -> Result<Command, Error> {
    Ok(Command::new(require(tool, package)?))
}

/// Runs `cmd` to completion; a start failure or a non-zero exit is an [`Error::Command`].
pub fn run(cmd: &mut Command) -> Result<Output, Error> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: line.clone(),
        status: "not started".to_owned(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// All variables of the environment described by the `fw_env.config` at `config`, as
/// libubootenv's `fw_printenv -c` reads them.
pub fn fw_printenv(config: &Path) -> Result<BTreeMap<String, String>, Error> {
    let out = run(command("fw_printenv", "libubootenv-tool")?.arg("-c").arg(config))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// All variables of the GRUB environment block at `path`, as `grub-editenv list` reads them.
pub fn grub_editenv_list(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let out = run(command("grub-editenv", "grub-common")?.arg(path).arg("list"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// An environment image of `size` bytes holding `vars`, made by U-Boot's `mkenvimage`
/// (single copy, 0xFF padding): the independent implementation to compare otter's codec with.
pub fn mkenvimage(vars: &[(&str, &str)], size: usize, dir: &Path) -> Result<Vec<u8>, Error> {
    let text_path = dir.join("mkenvimage.txt");
    let out_path = dir.join("mkenvimage.bin");
    let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&text_path, text).map_err(|e| Error::io("write", &text_path, e))?;
    run(command("mkenvimage", "u-boot-tools")?
        .arg("-s")
        .arg(format!("{size:#x}"))
        .arg("-o")
        .arg(&out_path)
        .arg(&text_path))?;
    std::fs::read(&out_path).map_err(|e| Error::io("read", &out_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let err = require("otter-no-such-tool", "otter-no-such-package").unwrap_err();
        assert!(matches!(err, Error::MissingTool { .. }));
        let msg = err.to_string();
        assert!(msg.contains("otter-no-such-tool"), "{msg}");
        assert!(msg.contains("otter-no-such-package"), "{msg}");
    }

    #[test]
    fn finds_tools_in_sbin() {
        // sh is everywhere; the lookup must not depend on PATH containing its directory.
        assert!(find("sh").is_some());
    }
}
