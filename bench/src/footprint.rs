//! `otter-bench footprint`: the daemon's memory on a simulated gateway, through the jobs a device sees.
//!
//! Starts the release `otterd` on a simulated device (`otterd::fixture`: file slots, U-Boot env file) with its
//! D-Bus service on a private `dbus-daemon` and its hawkBit poller polling a local DDI server every 10 s, then
//! drives it with the release `otterctl`: an install from a file (handed over as a descriptor), an install over
//! loopback HTTP, a cancel half-way, and an install of a tampered artifact that fails. For each it prints the
//! daemon's peak RSS during the job (VmHWM, reset before the job through `clear_refs`) and its RSS after it,
//! next to the fresh idle figure (RSS, anonymous RSS and PSS).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use otterd::fixture::{Device, DeviceSpec, PrivateBus};

/// The release binaries and inputs, as `bench/footprint` passes them.
pub struct Inputs {
    /// The daemon under test.
    pub otterd: PathBuf,
    /// Its client.
    pub otterctl: PathBuf,
    /// A signed artifact for device type `bench`.
    pub artifact: PathBuf,
    /// The public key that signed it.
    pub key: PathBuf,
    /// Scratch space (the device root, the bus, logs).
    pub work: PathBuf,
}

/// One figure of `/proc/PID/status` or `smaps_rollup`, in KiB.
fn proc_kib(pid: u32, file: &str, field: &str) -> Result<u64> {
    otter_bench::proc_kib(pid, file, field).with_context(|| format!("no {field} in /proc/{pid}/{file}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The daemon under measurement.
struct Daemon {
    child: Child,
    ctl: PathBuf,
    bus: PrivateBus,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ctl(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(&self.ctl).args(["--address", &self.bus.address]).args(args).output()?;
        Ok(out)
    }

    fn ctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        if !out.status.success() {
            bail!("otterctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ctl_ok(&["--json", "status"])?)?)
    }

    /// Waits until the daemon has no job (the phase a cancel or a failure leaves).
    fn wait_idle(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.status()?["operation"] != "idle" {
            if Instant::now() > deadline {
                bail!("otterd not idle after 120 s: {}", self.status()?);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Resets the peak (VmHWM) to the current RSS.
    fn reset_peak(&self) -> Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").context("resetting VmHWM (needs root)")
    }

    fn rss(&self) -> Result<u64> {
        proc_kib(self.pid(), "status", "VmRSS:")
    }

    fn peak(&self) -> Result<u64> {
        proc_kib(self.pid(), "status", "VmHWM:")
    }
}

/// Measures the daemon with the default settings and with the one for a 128 MiB gateway (`install.decoders =
/// 1`), and prints a table for each.
pub fn run(inputs: &Inputs) -> Result<()> {
    measure(inputs, None)?;
    println!();
    measure(inputs, Some(1))
}

/// Starts otterd (with `install.decoders` when given), takes it through the jobs and prints the figures.
fn measure(inputs: &Inputs, decoders: Option<usize>) -> Result<()> {
    let _ = std::fs::remove_dir_all(&inputs.work);
    std::fs::create_dir_all(&inputs.work)?;
    let size = image_size(&inputs.artifact, &inputs.key)?;
    let ddi = otter_ddi_server::DdiServer::start()?;
    ddi.add_target("bench-1", Some("bench-token"));
    ddi.set_sleep("00:00:10");
    let mut spec = DeviceSpec::new("bench", &inputs.key);
    spec.slot_size = size;
    spec.reboot_policy = "manual".into();
    spec.extra_config = format!(
        "[server]\nurl = \"{}\"\ntenant = \"{}\"\ncontroller_id = \"bench-1\"\ntoken = \"bench-token\"\npoll_min = \"10s\"\n",
        ddi.url(),
        ddi.tenant()
    );
    if let Some(n) = decoders {
        spec.extra_config.push_str(&format!("[install]\ndecoders = {n}\n"));
    }
    let device = Device::create(&inputs.work.join("root"), &spec, None)?;
    // The configuration holds the token: owner-only, or otterd refuses it.
    let config = device.root.join("etc/otter/otter.toml");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let bus = PrivateBus::open(&inputs.work)?;
    let log = inputs.work.join("otterd.log");
    let child = Command::new(&inputs.otterd)
        .arg("--root")
        .arg(&device.root)
        .args(["--bus-address", &bus.address])
        .env("OTTER_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting otterd")?;
    let mut daemon = Daemon { child, ctl: inputs.otterctl.clone(), bus, log };
    let started = Instant::now();
    while daemon.ctl(&["status"]).map(|o| !o.status.success()).unwrap_or(true) {
        if started.elapsed() > Duration::from_secs(20) || daemon.child.try_wait()?.is_some() {
            bail!("otterd did not answer in 20 s; log: {}", daemon.log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two polls of the server, so the poller's HTTP client and TLS configuration exist.
    std::thread::sleep(Duration::from_secs(12));
    let polls = ddi.requests().iter().filter(|r| r.method == "GET" && r.path.ends_with("bench-1")).count();
    if polls == 0 {
        bail!("the poller did not poll in 12 s; log: {}", daemon.log.display());
    }
    let pid = daemon.pid();
    let idle = daemon.rss()?;
    println!(
        "otterd {} ({} bytes), image {:.0} MiB; D-Bus on, hawkBit poller on ({polls} polls); install.decoders {}",
        inputs.otterd.display(),
        std::fs::metadata(&inputs.otterd)?.len(),
        size as f64 / (1 << 20) as f64,
        decoders.map_or("default (one per CPU, at most 4)".to_owned(), |n| n.to_string())
    );
    println!(
        "fresh idle: RSS {:.1} MiB (anonymous {:.1}, file {:.1}), PSS {:.1} MiB",
        mib(idle),
        mib(proc_kib(pid, "status", "RssAnon:")?),
        mib(proc_kib(pid, "status", "RssFile:")?),
        mib(proc_kib(pid, "smaps_rollup", "Pss:")?)
    );
    println!(
        "{:<34} {:>9} {:>7} {:>10} {:>11} {:>8}",
        "job (until idle again)", "seconds", "MB/s", "peak MiB", "after MiB", "Δ idle"
    );

    let artifact = inputs.artifact.display().to_string();
    let url = crate::serve(inputs.artifact.clone())?;
    let tampered = tampered_copy(&inputs.artifact, &inputs.work)?;
    let tampered = tampered.display().to_string();
    let jobs: [(&str, Job); 4] = [
        ("install from a file", Job::Install(&artifact)),
        ("install over HTTP", Job::Install(&url)),
        ("install cancelled half-way", Job::CancelHalfway(&url)),
        ("install of a tampered artifact", Job::Fail(&tampered)),
    ];
    for (name, job) in jobs {
        daemon.reset_peak()?;
        let start = Instant::now();
        let installed = job.run(&daemon, size)?;
        let secs = start.elapsed().as_secs_f64();
        let peak = daemon.peak()?;
        // What a device would see a little later, with nothing left to do.
        std::thread::sleep(Duration::from_secs(2));
        let after = daemon.rss()?;
        let rate = installed.map_or("-".to_owned(), |t| format!("{:.0}", size as f64 / t / 1e6));
        println!(
            "{name:<34} {secs:>9.2} {rate:>7} {:>10.1} {:>11.1} {:>+8.1}",
            mib(peak),
            mib(after),
            mib(after) - mib(idle)
        );
    }
    println!(
        "after all jobs: RSS {:.1} MiB (anonymous {:.1}), PSS {:.1} MiB",
        mib(daemon.rss()?),
        mib(proc_kib(pid, "status", "RssAnon:")?),
        mib(proc_kib(pid, "smaps_rollup", "Pss:")?)
    );
    Ok(())
}

/// What the client asks of the daemon.
enum Job<'a> {
    /// Install and, once it waits for the reboot, cancel (back to idle with nothing to reboot into).
    Install(&'a str),
    /// Start an install and cancel it once half the image is written.
    CancelHalfway(&'a str),
    /// An install that must fail.
    Fail(&'a str),
}

impl Job<'_> {
    /// Runs the job until the daemon is idle again; an install returns how long it took until installed.
    fn run(&self, daemon: &Daemon, size: u64) -> Result<Option<f64>> {
        let mut installed = None;
        match self {
            Job::Install(source) => {
                let start = Instant::now();
                daemon.ctl_ok(&["install", source])?;
                installed = Some(start.elapsed().as_secs_f64());
                let phase = daemon.status()?;
                if phase["operation"] != "awaiting-reboot" {
                    bail!("after the install otterd is at {phase}");
                }
                daemon.ctl_ok(&["cancel"])?;
            }
            Job::CancelHalfway(source) => {
                let mut client = Command::new(&daemon.ctl)
                    .args(["--address", &daemon.bus.address, "install", source])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let s = daemon.status()?;
                    if s["operation"] == "installing" && s["progress"]["bytes_done"].as_u64().unwrap_or(0) >= size / 2 {
                        break;
                    }
                    if Instant::now() > deadline || client.try_wait()?.is_some() {
                        bail!("the install did not get half-way: {s}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                daemon.ctl_ok(&["cancel"])?;
                let _ = client.wait();
            }
            Job::Fail(source) => {
                let out = daemon.ctl(&["install", source])?;
                if out.status.success() {
                    bail!("the tampered artifact installed");
                }
            }
        }
        daemon.wait_idle()?;
        Ok(installed)
    }
}

/// The image size of the artifact's (single) payload.
fn image_size(artifact: &Path, key: &Path) -> Result<u64> {
    let keyring = otter_artifact::Keyring::from_file(key)?;
    let policy = otter_artifact::Policy::default();
    let reader = otter_artifact::ArtifactReader::open(std::fs::File::open(artifact)?, &keyring, &policy)?;
    let payload = reader.manifest().payloads.first().context("no payload")?;
    Ok(payload.size)
}

/// A copy of `artifact` with one byte changed in the middle of its payload data: it verifies up to that chunk.
fn tampered_copy(artifact: &Path, dir: &Path) -> Result<PathBuf> {
    let mut data = std::fs::read(artifact)?;
    let at = data.len() * 2 / 3;
    data[at] ^= 0x40;
    let path = dir.join("tampered.otter");
    std::fs::write(&path, data)?;
    Ok(path)
}
