//! A simulated device root for tests, demos and the simulator: file-backed slots, a real U-Boot environment file
//! (`uboot.env` + `fw_env.config`), the keyring, a kernel command line file and an otter configuration, all under
//! one directory that otterd is pointed at with `--root`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use otter_bootloader::Slot;
use otter_bootloader::uboot::{FwEnvConfig, UBootEnv};

/// What the simulated device looks like.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Device type (`device.compatible`).
    pub compatible: String,
    /// Size of each file-backed slot, bytes.
    pub slot_size: u64,
    /// The trusted public key file (`*.pub`), copied into the keyring.
    pub public_key: PathBuf,
    /// The slot the device boots from.
    pub booted: Slot,
    /// `reboot.policy`.
    pub reboot_policy: String,
    /// `reboot.command`.
    pub reboot_command: Vec<String>,
    /// Appended verbatim to the configuration (`[health]`, `[[health.command]]`...).
    pub extra_config: String,
}

impl DeviceSpec {
    /// A device of type `compatible` trusting `public_key`, booted from A, 16 MiB slots, immediate reboots by
    /// `true` (a no-op).
    pub fn new(compatible: &str, public_key: &Path) -> Self {
        Self {
            compatible: compatible.into(),
            slot_size: 16 << 20,
            public_key: public_key.into(),
            booted: Slot::A,
            reboot_policy: "immediate".into(),
            reboot_command: vec!["true".into()],
            extra_config: String::new(),
        }
    }
}

/// A created device root.
#[derive(Debug, Clone)]
pub struct Device {
    /// The root directory (`otterd --root`).
    pub root: PathBuf,
    /// The U-Boot environment location, resolved on the host.
    pub env_config: FwEnvConfig,
}

impl Device {
    /// Creates (or re-creates) the device root `root`: slot A and B files (A as given by `initial_a`, else
    /// zeros), a fresh U-Boot env with `BOOT_ORDER="A B"` and three attempts per slot, a command line naming
    /// `spec.booted`, and `etc/otter/otter.toml`.
    pub fn create(root: &Path, spec: &DeviceSpec, initial_a: Option<&Path>) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(root);
        for d in ["dev", "boot", "proc", "etc/otter/keys", "etc/otter/health.d", "var/lib/otter", "run"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(&spec.public_key, root.join("etc/otter/keys/release.pub"))?;
        if let Some(initial) = initial_a {
            std::fs::copy(initial, root.join("dev/slot-a.img"))?;
        }
        for s in ["a", "b"] {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(root.join(format!("dev/slot-{s}.img")))?;
            f.set_len(spec.slot_size)?;
        }
        std::fs::write(
            root.join("etc/fw_env.config"),
            "# device        offset  size\n/boot/uboot.env 0x0000  0x4000\n",
        )?;
        // The env "partition": a 16 KiB file, as U-Boot's ENV_IS_IN_FAT keeps it on the boot partition.
        std::fs::write(root.join("boot/uboot.env"), vec![0u8; 0x4000])?;
        let env_config = FwEnvConfig::parse(&format!("{} 0x0000 0x4000\n", root.join("boot/uboot.env").display()))?;
        let env = UBootEnv::from_pairs([("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")])?;
        otter_bootloader::uboot::provision(&env_config, &env, 0)?;
        let device = Self { root: root.to_owned(), env_config };
        device.set_booted(spec.booted)?;
        let command: Vec<String> = spec.reboot_command.iter().map(|a| format!("{a:?}")).collect();
        let config = format!(
            r#"# A simulated gateway: file-backed slots, U-Boot env in a file.
[device]
compatible = "{compatible}"
keyring_dir = "/etc/otter/keys"
state_dir = "/var/lib/otter"
cmdline = "/proc/cmdline"

[slots]
a = "/dev/slot-a.img"
b = "/dev/slot-b.img"
size = {size}

[bootloader]
backend = "uboot"
scheme = "boot-order"
attempts = 3
fw_env_config = "/etc/fw_env.config"
lock_file = "/run/fw_printenv.lock"

[reboot]
policy = "{policy}"
command = [{command}]

{extra}"#,
            compatible = spec.compatible,
            size = spec.slot_size,
            policy = spec.reboot_policy,
            command = command.join(", "),
            extra = spec.extra_config,
        );
        std::fs::write(root.join("etc/otter/otter.toml"), config)?;
        Ok(device)
    }

    /// Writes the kernel command line of a boot from `slot`.
    pub fn set_booted(&self, slot: Slot) -> std::io::Result<()> {
        let part = if slot == Slot::A { 2 } else { 3 };
        std::fs::write(
            self.root.join("proc/cmdline"),
            format!("console=ttyS0 root=/dev/vda{part} rootwait otter.slot={slot}\n"),
        )
    }

    /// The file backing `slot`.
    pub fn slot_file(&self, slot: Slot) -> PathBuf {
        self.root.join(format!("dev/slot-{}.img", slot.as_str().to_lowercase()))
    }
}

/// Writes `DIR/image-SEED.img`: `len` deterministic bytes, alternately 4 KiB of xorshift noise and 4 KiB of a
/// repeated byte — compresses a little, like a real filesystem, and its first bytes are not zero (so an
/// invalidated slot head is visible). For tests and demos that need distinct images without mkfs.
pub fn pattern_image(dir: &Path, seed: u8, len: usize) -> std::io::Result<PathBuf> {
    let mut data = Vec::with_capacity(len + 4);
    let mut x = u32::from(seed) | 1;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if (data.len() >> 12) % 2 == 0 {
            data.extend_from_slice(&x.to_le_bytes())
        } else {
            data.extend_from_slice(&[seed; 4])
        }
    }
    data.truncate(len);
    let p = dir.join(format!("image-{seed}.img"));
    std::fs::write(&p, data)?;
    Ok(p)
}

/// A private `dbus-daemon` listening on `DIR/bus`, for otterd and its clients in tests and benchmarks.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    /// The bus address (`unix:path=...`), for `otterd --bus-address` and clients.
    pub address: String,
}

impl PrivateBus {
    /// A bus where everyone may own any name and call anything.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::with_policy(
            dir,
            r#"  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>"#,
        )
    }

    /// A bus whose configuration holds `policy` (`<policy>` and `<include>` elements) in place of the open one.
    pub fn with_policy(dir: &Path, policy: &str) -> anyhow::Result<Self> {
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>otter-test</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
{policy}
</busconfig>
"#,
                dir.display()
            ),
        )?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting dbus-daemon (Debian package dbus): {e}"))?;
        let mut line = String::new();
        let read = child.stdout.take().map(|o| BufReader::new(o).read_line(&mut line));
        if !line.starts_with("unix:") {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("dbus-daemon printed {line:?} ({read:?})");
        }
        Ok(Self { child, address: line.trim().to_owned() })
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
