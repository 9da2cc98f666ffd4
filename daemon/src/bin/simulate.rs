//! `otter-simulate`: a full update on a simulated device, on any Linux machine, without root or hardware.
//!
//! The device is a directory: two file-backed slots holding real ext4 images, a real U-Boot environment file
//! (`uboot.env` with `fw_env.config`, exactly as on a board whose env lives on a FAT partition), the otter
//! configuration, the keyring and a kernel command line file. Each "boot" does what the board would do: the
//! bootloader step runs the same A/B selection as the U-Boot boot script on the env file (decrementing the
//! attempt counter), the command line names the chosen slot, and a fresh otterd runtime starts from what is on
//! disk — nothing carries over in memory between boots. A reboot requested by otterd ends that boot.
//!
//! Two scenarios: a good update (A → B, health check passes, committed) and a bad one (the new version's
//! application is broken, the health check fails, B is marked bad and the device rolls back to A).
//!
//! `otter-simulate [--work DIR]`; `otter-simulate check-health ROOT` is the health check the simulated device
//! runs (it reads the booted slot's image).

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_bootloader::Slot;
use otter_bootloader::scheme::{BootOrderScheme, VarScheme};
use otter_bootloader::uboot::{EnvStorage, FwEnvConfig, UBootEnv};
use otterd::engine::Outcome;
use otterd::runtime::{Platform, RunEnd, Runtime};

const DEVICE_TYPE: &str = "sim-gateway";
/// Slot size, bytes (16 MiB: small enough for a quick run, large enough for real ext4 images).
const SLOT_SIZE: u64 = 16 << 20;

struct Clock(Instant);

impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        println!("[{:>6.2}s] {}", self.0.elapsed().as_secs_f64(), what.as_ref());
    }
}

/// A reboot in the simulation ends the current boot; the simulator then power-cycles the device.
struct SimPlatform;

impl Platform for SimPlatform {
    fn reboot(&mut self, _command: &[String]) -> Result<bool, String> {
        Ok(true)
    }
}

fn run(cmd: &mut Process) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Makes a real ext4 image (without root) whose `/etc/os-release` names `version` and whose `/etc/app.conf` says
/// whether the application works.
fn make_rootfs(dir: &Path, version: &str, app_ok: bool) -> Result<PathBuf> {
    let tree = dir.join(format!("tree-{version}"));
    std::fs::create_dir_all(tree.join("etc"))?;
    std::fs::write(tree.join("etc/os-release"), format!("NAME=otter-sim\nVERSION_ID={version}\n"))?;
    std::fs::write(tree.join("etc/app.conf"), if app_ok { "status=ok\n" } else { "status=crashes-on-start\n" })?;
    let img = dir.join(format!("rootfs-{version}.ext4"));
    let _ = std::fs::remove_file(&img);
    run(Process::new("truncate").arg("-s").arg("12M").arg(&img))?;
    run(Process::new("mkfs.ext4").args(["-q", "-F", "-L", "rootfs", "-d"]).arg(&tree).arg(&img))?;
    Ok(img)
}

fn debugfs_cat(image: &Path, file: &str) -> Result<String> {
    let out = Process::new("debugfs").arg("-R").arg(format!("cat {file}")).arg(image).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The simulated device's health check: the booted slot's application must be healthy.
fn check_health(root: &Path) -> Result<()> {
    let cmdline = std::fs::read_to_string(root.join("proc/cmdline"))?;
    let slot = otter_bootloader::booted_slot(&cmdline, &[]).context("no otter.slot= on the command line")?;
    let image = root.join(format!("dev/slot-{}.img", slot.as_str().to_lowercase()));
    let conf = debugfs_cat(&image, "/etc/app.conf")?;
    if conf.trim() != "status=ok" {
        bail!("application on slot {slot} is not healthy: {}", conf.trim());
    }
    Ok(())
}

struct Device {
    root: PathBuf,
    env_cfg: FwEnvConfig,
}

impl Device {
    fn create(dir: &Path, exe: &Path, initial: &Path, public_key: &Path) -> Result<Self> {
        let root = dir.join("root");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["dev", "boot", "proc", "etc/otter/keys", "etc/otter/health.d", "var/lib/otter", "run"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(public_key, root.join("etc/otter/keys/release.pub"))?;
        // Slot A holds version 1.0; slot B is blank. Both are 16 MiB "partitions".
        std::fs::copy(initial, root.join("dev/slot-a.img"))?;
        for s in ["a", "b"] {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(root.join(format!("dev/slot-{s}.img")))?;
            f.set_len(SLOT_SIZE)?;
        }
        std::fs::write(
            root.join("etc/fw_env.config"),
            "# device        offset  size\n/boot/uboot.env 0x0000  0x4000\n",
        )?;
        // The env "partition": a 16 KiB file, as U-Boot's ENV_IS_IN_FAT keeps it on the boot partition.
        std::fs::write(root.join("boot/uboot.env"), vec![0u8; 0x4000])?;
        let env_cfg = FwEnvConfig::parse(&format!("{} 0x0000 0x4000\n", root.join("boot/uboot.env").display()))?;
        let env = UBootEnv::from_pairs([("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")])?;
        otter_bootloader::uboot::provision(&env_cfg, &env, 0)?;
        let config = format!(
            r#"# A simulated gateway: file-backed slots, U-Boot env in a file, health check reads the booted slot.
[device]
compatible = "{DEVICE_TYPE}"
keyring_dir = "/etc/otter/keys"
state_dir = "/var/lib/otter"
cmdline = "/proc/cmdline"

[slots]
a = "/dev/slot-a.img"
b = "/dev/slot-b.img"
size = {SLOT_SIZE}

[bootloader]
backend = "uboot"
scheme = "boot-order"
attempts = 3
fw_env_config = "/etc/fw_env.config"
lock_file = "/run/fw_printenv.lock"

[health]
commit_deadline = "30s"
check_dir = "/etc/otter/health.d"

[[health.command]]
name = "application"
run = ["{exe}", "check-health", "{root}"]
timeout = "10s"

[reboot]
policy = "immediate"
"#,
            exe = exe.display(),
            root = root.display()
        );
        std::fs::write(root.join("etc/otter/otter.toml"), config)?;
        Ok(Self { root, env_cfg })
    }

    fn env_summary(&self) -> Result<String> {
        let loaded = EnvStorage::open(&self.env_cfg)?.read()?;
        let get = |k| loaded.env.get(k).unwrap_or("-").to_owned();
        let trial = loaded.env.get("OTTER_TRIAL").map(|t| format!(" OTTER_TRIAL={t}")).unwrap_or_default();
        Ok(format!(
            "BOOT_ORDER=\"{}\" BOOT_A_LEFT={} BOOT_B_LEFT={}{trial}",
            get("BOOT_ORDER"),
            get("BOOT_A_LEFT"),
            get("BOOT_B_LEFT")
        ))
    }

    /// What U-Boot and the boot script do at power-on: pick a slot from the env, spend one attempt, save the env,
    /// and boot the kernel with `otter.slot=` on its command line.
    fn power_on(&self, clock: &Clock, n: u32) -> Result<Slot> {
        let storage = EnvStorage::open(&self.env_cfg)?;
        let loaded = storage.read()?;
        let mut env = loaded.env.clone();
        let slot = BootOrderScheme::new(3)?.simulate_boot(&mut env).context("no bootable slot")?;
        storage.store(&env, &loaded)?;
        std::fs::write(
            self.root.join("proc/cmdline"),
            format!("console=ttyS0 root=/dev/vda{} rootwait otter.slot={slot}\n", if slot == Slot::A { 2 } else { 3 }),
        )?;
        clock.say(format!("boot {n}: U-Boot boot script picks slot {slot}; env now {}", self.env_summary()?));
        Ok(slot)
    }
}

fn scenario(
    title: &str,
    dir: &Path,
    exe: &Path,
    artifact: &Path,
    initial: &Path,
    public_key: &Path,
) -> Result<Outcome> {
    println!("\n=== {title} ===");
    let clock = Clock(Instant::now());
    let device = Device::create(dir, exe, initial, public_key)?;
    let mut requested = false;
    for boot in 1..=8 {
        let slot = device.power_on(&clock, boot)?;
        let version = debugfs_cat(
            &device.root.join(format!("dev/slot-{}.img", slot.as_str().to_lowercase())),
            "/etc/os-release",
        )?;
        let version = version.lines().find_map(|l| l.strip_prefix("VERSION_ID=")).unwrap_or("?").to_owned();
        let settings = otterd::config::load(&device.root)?;
        let (runtime, handle) = Runtime::start(settings, Box::new(SimPlatform)).map_err(anyhow::Error::msg)?;
        let finished = handle.subscribe();
        let watch = handle.watch();
        let status = handle.status();
        clock.say(format!("otterd starts on slot {slot} (version {version}): {}", status.line()));
        if let Some(e) = &status.error {
            bail!("device cannot update: {e}");
        }
        let loop_thread = std::thread::spawn(move || runtime.run());
        if !requested {
            requested = true;
            clock.say(format!("request: install {}", artifact.display()));
            let id = handle.install(&artifact.to_string_lossy(), false).map_err(|r| anyhow::anyhow!("{r}"))?;
            clock.say(format!("job {id} accepted: installing into slot {}", !slot));
        }
        // Follow the device until it reboots or a job ends.
        let mut last_op = status.operation.clone();
        let mut last_percent = None;
        let outcome = loop {
            if let Ok(record) = finished.try_recv() {
                break Some(record);
            }
            let s = match watch.recv_timeout(Duration::from_millis(50)) {
                Ok(s) => s,
                Err(_) if loop_thread.is_finished() => break None,
                Err(_) => continue,
            };
            if let (Some(j), Some(p)) = (&s.job, &s.progress)
                && j.phase == otterd::engine::JobPhase::Installing
                && p.total > 0
                && last_percent.is_none_or(|l: u32| p.percent() >= l + 25)
            {
                last_percent = Some(p.percent());
                clock.say(format!(
                    "otterd: installing into slot {}: {}% ({} of {} KiB verified and written)",
                    j.target,
                    p.percent(),
                    p.bytes_written >> 10,
                    p.total >> 10
                ));
            }
            if s.operation != last_op {
                let detail = match (&s.job, s.operation.as_str()) {
                    (Some(j), "awaiting-reboot") => format!(
                        "slot {} holds verified version {}; bootloader set to try it next",
                        j.target,
                        j.artifact.as_ref().map_or("?", |a| a.version.as_str())
                    ),
                    (Some(_), "rebooting") => "reboot policy \"immediate\": rebooting into the new slot".into(),
                    (Some(j), "assessing") => format!("trial boot of slot {}: running health checks", j.target),
                    (Some(j), "rolling-back") => format!(
                        "{}; slot {} marked bad, rebooting into slot {}",
                        j.rollback_reason.as_deref().unwrap_or("health check failed"),
                        j.target,
                        j.from
                    ),
                    (_, op) => op.to_owned(),
                };
                clock.say(format!("otterd: {detail}"));
                last_op = s.operation.clone();
            }
        };
        match outcome {
            Some(record) => {
                handle.send(otterd::runtime::Command::Stop);
                let _ = loop_thread.join();
                let detail = match &record.outcome {
                    Outcome::Committed => format!(
                        "committed: version {} on slot {} is now the primary",
                        record.job.artifact.as_ref().map_or("?", |a| a.version.as_str()),
                        record.job.target
                    ),
                    Outcome::RolledBack { reason } => {
                        format!("rolled back: running slot {} again ({reason})", record.job.from)
                    }
                    other => format!("{other:?}"),
                };
                clock.say(format!("job {} {detail}", record.job.id));
                clock.say(format!("bootloader env: {}", device.env_summary()?));
                return Ok(record.outcome);
            }
            None => match loop_thread.join() {
                Ok(RunEnd::Rebooted) => clock.say("reboot"),
                Ok(RunEnd::Stopped) => bail!("otterd stopped unexpectedly"),
                Err(_) => bail!("otterd panicked"),
            },
        }
    }
    bail!("no outcome after 8 boots")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check-health") {
        let root = args.get(2).context("usage: otter-simulate check-health ROOT")?;
        return check_health(Path::new(root));
    }
    let work = match args.iter().position(|a| a == "--work") {
        Some(i) => PathBuf::from(args.get(i + 1).context("--work needs a directory")?),
        None => PathBuf::from("target/simulate"),
    };
    let exe = std::env::current_exe()?;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    println!("building the release: a signing key, three ext4 root filesystems and two signed artifacts");
    let key = otter_artifact::keys::generate()?;
    otter_artifact::keys::write_keypair(&key, &work.join("release"))?;
    let v1 = make_rootfs(&work, "1.0", true)?;
    let mut artifacts = Vec::new();
    for (version, ok) in [("2.0", true), ("2.1", false)] {
        let img = make_rootfs(&work, version, ok)?;
        let mut opts = BuildOptions::new(vec![DEVICE_TYPE.into()], version);
        opts.security_version = 1;
        opts.chunk_size = 1 << 20;
        let out = work.join(format!("update-{version}.otter"));
        let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: img };
        builder::create(&opts, &[src], std::slice::from_ref(&key), std::fs::File::create(&out)?)?;
        artifacts.push(out);
    }
    let public = work.join("release.pub");
    let good = scenario(
        "scenario 1: update 1.0 -> 2.0, healthy: commit",
        &work.join("good"),
        &exe,
        &artifacts[0],
        &v1,
        &public,
    )?;
    let bad = scenario(
        "scenario 2: update 1.0 -> 2.1, application broken: rollback",
        &work.join("bad"),
        &exe,
        &artifacts[1],
        &v1,
        &public,
    )?;
    println!();
    match (&good, &bad) {
        (Outcome::Committed, Outcome::RolledBack { .. }) => {
            println!("ok: the healthy update was committed, the broken one rolled back");
            Ok(())
        }
        _ => bail!("unexpected outcomes: {good:?}, {bad:?}"),
    }
}
