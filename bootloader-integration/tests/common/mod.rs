//! Helpers shared by the integration tests: the reference tools and temp env files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The path of `tool`, or a failing test that says which Debian package provides it
/// (`tests/install-deps` installs them; a missing tool is a failure, never a skip).
pub fn tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{tool}` not found: install Debian package `{package}` (tests/install-deps does)");
}

/// Runs `cmd`, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `fw_printenv -c config`: the variables, as (name, value) lines sorted by name.
pub fn fw_printenv(config: &Path) -> Vec<(String, String)> {
    let out = run(Command::new(tool("fw_printenv", "libubootenv-tool")).arg("-c").arg(config));
    let text = String::from_utf8(out.stdout).expect("fw_printenv output is utf-8");
    let mut vars: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let (n, v) = l.split_once('=').unwrap_or_else(|| panic!("odd fw_printenv line {l:?}"));
            (n.to_owned(), v.to_owned())
        })
        .collect();
    vars.sort();
    vars
}

/// `fw_setenv -c config name value`.
pub fn fw_setenv(config: &Path, name: &str, value: &str) {
    run(Command::new(tool("fw_setenv", "libubootenv-tool")).arg("-c").arg(config).arg(name).arg(value));
}

/// `fw_setenv -c config -s script`: several variables in one store. libubootenv's script
/// format is `name=value` lines; `name=` deletes.
pub fn fw_setenv_script(config: &Path, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script");
    std::fs::write(&file, script).unwrap();
    run(Command::new(tool("fw_setenv", "libubootenv-tool")).arg("-c").arg(config).arg("-s").arg(&file));
}

/// Sorted owned pairs.
pub fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
    v.sort();
    v
}

/// Sorted UTF-8 pairs of an env.
pub fn env_pairs(env: &otter_bootloader::uboot::UBootEnv) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .iter()
        .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    v.sort();
    v
}

/// Env storage in a temp dir: `size` bytes per copy, one file per copy or both copies in one
/// image at offsets; writes `fw_env.config`.
pub struct EnvFiles {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub copies: Vec<PathBuf>,
    pub lock: PathBuf,
}

pub enum Layout {
    /// One whole file.
    SingleFile,
    /// One copy inside a larger image at an offset.
    SingleAtOffset(u64),
    /// Two files.
    RedundantFiles,
    /// Two copies in one image: offsets (may be negative) and image length.
    RedundantImage(i64, i64, u64),
}

impl EnvFiles {
    pub fn new(layout: Layout, size: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let (copies, config) = match layout {
            Layout::SingleFile => {
                std::fs::write(p("uboot.env"), vec![0u8; size]).unwrap();
                (vec![p("uboot.env")], format!("{} 0x0 {size:#x}\n", p("uboot.env").display()))
            }
            Layout::SingleAtOffset(off) => {
                std::fs::write(p("disk.img"), vec![0u8; off as usize + size + 4096]).unwrap();
                (vec![p("disk.img")], format!("{} {off:#x} {size:x}\n", p("disk.img").display()))
            }
            Layout::RedundantFiles => {
                std::fs::write(p("uboot.env"), vec![0u8; size]).unwrap();
                std::fs::write(p("uboot-redund.env"), vec![0u8; size]).unwrap();
                (
                    vec![p("uboot.env"), p("uboot-redund.env")],
                    format!(
                        "# redundant env in two files\n{} 0 {size:#x}\n{} 0 {size:#x}\n",
                        p("uboot.env").display(),
                        p("uboot-redund.env").display()
                    ),
                )
            }
            Layout::RedundantImage(o1, o2, len) => {
                std::fs::write(p("disk.img"), vec![0x5Au8; len as usize]).unwrap();
                let fmt = |o: i64| {
                    if o < 0 { format!("-{:#x}", -o) } else { format!("{o:#x}") }
                };
                (
                    vec![p("disk.img")],
                    format!(
                        "{img} {} {size:#x}\n{img} {} {size:#x}\n",
                        fmt(o1),
                        fmt(o2),
                        img = p("disk.img").display()
                    ),
                )
            }
        };
        let config_path = p("fw_env.config");
        std::fs::write(&config_path, config).unwrap();
        let lock = p("fw_printenv.lock");
        Self { dir, config_path, copies, lock }
    }

    pub fn config(&self) -> otter_bootloader::uboot::FwEnvConfig {
        otter_bootloader::uboot::FwEnvConfig::load(&self.config_path).unwrap()
    }

    /// All bytes of all backing files.
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.copies.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }
}

/// Runs `args` as the unprivileged user `nobody` (group `nogroup`, no supplementary groups): the local attacker.
pub fn as_nobody(args: &[&str]) -> Command {
    let mut c = Command::new(tool("setpriv", "util-linux"));
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]).args(args);
    c
}

/// Lets `nobody` reach into `dir` (a root-only temp dir) without being able to write there.
pub fn let_nobody_traverse(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory inside `parent` owned and writable by `nobody` (a lock or output directory the attacker can
/// plant names in).
pub fn nobody_dir(parent: &Path, name: &str) -> PathBuf {
    let_nobody_traverse(parent);
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    d
}
