//! `otter-simulate`: a full update on a simulated device, on any Linux machine, without root or hardware.
//!
//! The device is a directory: two file-backed slots holding real ext4 images, a real U-Boot environment file
//! (`uboot.env` with `fw_env.config`, exactly as on a board whose env lives on a FAT partition), the otter
//! configuration, the keyring and a kernel command line file. Each "boot" does what the board would do: the
//! bootloader step runs the same A/B selection as the U-Boot boot script on the env file (decrementing the
//! attempt counter), the command line names the chosen slot, and a fresh otterd runtime starts from what is on
//! disk — nothing carries over in memory between boots. A reboot requested by otterd ends that boot.
//!
//! The update comes from a server: an in-process hawkBit DDI test server (`otter-ddi-server`) with one target and
//! one forced action per scenario. otterd's DDI client polls it, streams the artifact from the action's link into
//! the inactive slot, and reports `proceeding`, `downloaded` and — after the reboot and the health check —
//! `closed`; the timeline shows the feedback the server received.
//!
//! Four scenarios: a good update (A → B, health check passes, committed); a bad one (the new version's
//! application is broken, the health check fails, B is marked bad and the device rolls back to A); a good one
//! whose slow download is cut by a power failure half-way: after the restart the install continues from the
//! chunks already in the slot (one HTTP `Range` request) and the update is committed. Scenario 4 is a monthly fix
//! by delta: 1.1 is 1.0's image with a few blocks changed, and one action offers both its full artifact and a
//! delta against 1.0's image. A device running 1.0 downloads only the delta, patches it against its running slot,
//! and commits; a second device running another release (1.0.1) refuses the delta before writing anything, falls
//! back to the full artifact and commits. The timeline checks the server's records: the bytes sent are the delta's
//! size and the full artifact was never requested.
//!
//! `otter-simulate [--work DIR]`; `otter-simulate check-health ROOT` is the health check the simulated device
//! runs (it reads the booted slot's image).

mod fleet;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use otter_artifact::builder::{self, BuildOptions, DeltaBase, ImageSource};
use otter_ddi_server::{ActionSpec, ActionStatus, DdiServer, Fault};
use otterd::engine::Outcome;
use otterd::fixture::{Device, DeviceSpec};
use otterd::hawkbit::Poller;
use otterd::runtime::{RunEnd, Runtime};
use otterd::sim::SimPlatform;

const DEVICE_TYPE: &str = "sim-gateway";
/// The device's hawkBit controller id and target token.
const CONTROLLER: &str = "sim-gw-0001";
const TOKEN: &str = "sim-target-token";
/// Slot size, bytes (16 MiB: small enough for a quick run, large enough for real ext4 images).
const SLOT_SIZE: u64 = 16 << 20;
/// Bytes of the base on each side of a chunk that a delta's patch may refer to (see [`build`]).
const DELTA_WINDOW: u64 = 1 << 20;

struct Clock(Instant);

impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        println!("[{:>6.2}s] {}", self.0.elapsed().as_secs_f64(), what.as_ref());
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
    // The application: 6 MiB that do not compress, so the artifact has some weight (~6 MiB).
    std::fs::create_dir_all(tree.join("usr/lib"))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ version.len() as u64;
    let app: Vec<u8> = (0..6 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(tree.join("usr/lib/app.bin"), app)?;
    let img = dir.join(format!("rootfs-{version}.ext4"));
    let _ = std::fs::remove_file(&img);
    run(Process::new("truncate").arg("-s").arg("12M").arg(&img))?;
    run(Process::new("mkfs.ext4").args(["-q", "-F", "-L", "rootfs", "-d"]).arg(&tree).arg(&img))?;
    Ok(img)
}

/// Makes release `version` as a small change of `base` (an image [`make_rootfs`] made): the same filesystem with
/// `/etc/os-release` naming `version` and the files `added` (path, content) written into it in place with debugfs,
/// so the two images differ in a few blocks — what a monthly fix changes.
fn change_rootfs(dir: &Path, base: &Path, version: &str, added: &[(&str, &str)]) -> Result<PathBuf> {
    let files = dir.join(format!("files-{version}"));
    std::fs::create_dir_all(&files)?;
    let os_release = format!("NAME=otter-sim\nVERSION_ID={version}\n");
    let mut commands = String::from("rm /etc/os-release\n");
    for (i, (path, content)) in
        std::iter::once(("/etc/os-release", os_release.as_str())).chain(added.iter().copied()).enumerate()
    {
        let file = files.join(i.to_string());
        std::fs::write(&file, content)?;
        commands.push_str(&format!("write {} {path}\n", file.display()));
    }
    std::fs::write(files.join("commands"), commands)?;
    let img = dir.join(format!("rootfs-{version}.ext4"));
    std::fs::copy(base, &img)?;
    run(Process::new("debugfs").arg("-w").arg("-f").arg(files.join("commands")).arg(&img))?;
    // debugfs reports a failed command on stderr only: check the result.
    if !debugfs_cat(&img, "/etc/os-release")?.contains(&format!("VERSION_ID={version}\n")) {
        bail!("debugfs did not write /etc/os-release of {version} into {}", img.display());
    }
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

/// Where a simulated device's hawkBit client connects, and as whom.
struct ServerLink<'a> {
    url: &'a str,
    tenant: &'a str,
    controller: &'a str,
    token: &'a str,
}

fn device_spec(exe: &Path, root: &Path, public_key: &Path, server: &ServerLink<'_>) -> DeviceSpec {
    let mut spec = DeviceSpec::new(DEVICE_TYPE, public_key);
    spec.slot_size = SLOT_SIZE;
    spec.extra_config = format!(
        r#"[health]
commit_deadline = "30s"
check_dir = "/etc/otter/health.d"

[[health.command]]
name = "application"
run = ["{exe}", "check-health", "{root}"]
timeout = "10s"

# The update server.
[server]
url = "{url}"
tenant = "{tenant}"
controller_id = "{controller}"
auth = "target-token"
token = "{token}"
poll_min = "500ms"
progress_interval = "1s"
"#,
        exe = exe.display(),
        root = root.display(),
        url = server.url,
        tenant = server.tenant,
        controller = server.controller,
        token = server.token,
    );
    spec
}

/// Prints the DDI feedback the server received since the last call.
fn print_feedback(clock: &Clock, server: &DdiServer, seen: &mut usize) {
    let requests = server.requests();
    for r in requests.iter().skip(*seen) {
        if r.path.contains("/artifacts/") {
            let name = requested_file(r);
            let what = match r.header("range") {
                Some(range) => format!("{range} (the rest of the file) of {name}"),
                None => format!("the whole of {name}"),
            };
            clock.say(format!("server -> artifact download: {what} [HTTP {}]", r.status));
            continue;
        }
        if !r.path.ends_with("/feedback") && !r.path.ends_with("/configData") {
            continue;
        }
        let body = r.json();
        let what = if r.path.ends_with("/configData") {
            format!(
                "configData ({} attributes, mode {})",
                body["data"].as_object().map_or(0, |d| d.len()),
                body["mode"]
            )
        } else {
            let st = &body["status"];
            let progress = st["result"]["progress"]["cnt"].as_u64().map(|c| format!(" {c}%")).unwrap_or_default();
            let details: Vec<&str> =
                st["details"].as_array().map(|d| d.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            format!(
                "{} {}/{}{progress}: {}",
                r.path.rsplit('/').nth(2).unwrap_or("?"),
                st["execution"].as_str().unwrap_or("?"),
                st["result"]["finished"].as_str().unwrap_or("?"),
                details.join("; ")
            )
        };
        clock.say(format!("server <- {what} [HTTP {}]", r.status));
    }
    *seen = requests.len();
}

/// The inputs of one scenario.
struct Scenario<'a> {
    title: &'a str,
    dir: PathBuf,
    exe: &'a Path,
    /// The action's artifacts: the update (`update-VERSION.otter`), then any alternatives (a delta of it). The
    /// device tries the smallest first.
    artifacts: &'a [&'a Path],
    initial: &'a Path,
    public_key: &'a Path,
    /// Serve the artifact slowly and cut the power during the first install, once the installer has recorded a
    /// resume checkpoint.
    power_cut: bool,
}

/// How a scenario ended.
struct Ended {
    outcome: Outcome,
    /// The version the job installed.
    version: Option<String>,
    /// The server's records of the artifact downloads.
    downloads: Vec<otter_ddi_server::Request>,
}

/// The file an artifact download asked for.
fn requested_file(r: &otter_ddi_server::Request) -> &str {
    r.path.rsplit('/').next().unwrap_or("?")
}

fn scenario(sc: Scenario<'_>) -> Result<Ended> {
    let Scenario { title, dir, exe, artifacts, initial, public_key, power_cut } = sc;
    let dir = dir.as_path();
    println!("\n=== {title} ===");
    let clock = Clock(Instant::now());
    let server = DdiServer::start()?;
    server.add_target(CONTROLLER, Some(TOKEN));
    server.require_auth(true);
    let mut offered = Vec::new();
    for artifact in artifacts {
        let name = artifact.file_name().context("artifact name")?.to_string_lossy().into_owned();
        let sha = server.add_artifact(&name, std::fs::read(artifact)?);
        offered.push(format!("{name} (sha256 {}...)", &sha[..16]));
    }
    let name = artifacts[0].file_name().context("artifact name")?.to_string_lossy().into_owned();
    let version = name.trim_start_matches("update-").trim_end_matches(".otter").to_owned();
    let mut spec = ActionSpec::new(&name, &version);
    for other in &artifacts[1..] {
        spec.artifacts.push(other.file_name().context("artifact name")?.to_string_lossy().into_owned());
    }
    let action = server.create_action(CONTROLLER, spec);
    clock.say(format!(
        "hawkBit test server at {}: target {CONTROLLER}, action {action} (forced) with {}",
        server.url(),
        offered.join(" and ")
    ));
    let root = dir.join("root");
    let (url, tenant) = (server.url(), server.tenant());
    let link = ServerLink { url: &url, tenant: &tenant, controller: CONTROLLER, token: TOKEN };
    let device = Device::create(&root, &device_spec(exe, &root, public_key, &link), Some(initial))?;
    let mut seen = 0;
    // A slow link (~1.3 MB/s), so the power can fail in the middle of the download.
    let mut cut_pending = power_cut;
    if power_cut {
        server.inject(Fault::SlowBody { piece: 64 << 10, delay: Duration::from_millis(50) });
    }
    let resume_record = root.join("var/lib/otter/install-resume.json");
    for boot in 1..=8 {
        let slot = otterd::sim::power_on(&device)?;
        clock.say(format!(
            "boot {boot}: U-Boot boot script picks slot {slot}; env now {}",
            otterd::sim::env_summary(&device)?
        ));
        let version = debugfs_cat(&device.slot_file(slot), "/etc/os-release")?
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_ID="))
            .unwrap_or("?")
            .to_owned();
        let settings = otterd::config::load(&device.root)?;
        let (runtime, handle) = Runtime::start(settings.clone(), Box::new(SimPlatform))?;
        let finished = handle.subscribe();
        let watch = handle.watch();
        let status = handle.status();
        clock.say(format!("otterd starts on slot {slot} (version {version}): {}", status.line()));
        if let Some(e) = &status.error {
            bail!("device cannot update: {e}");
        }
        let poller = Poller::start(&settings, handle.clone())?;
        let loop_thread = std::thread::spawn(move || runtime.run());
        // Follow the device until it reboots or a job ends.
        let mut last_op = status.operation.clone();
        let mut last_percent = None;
        let mut install_percent = None;
        let outcome = loop {
            print_feedback(&clock, &server, &mut seen);
            if let Ok(record) = finished.try_recv() {
                // An install cut off by the power failure: the server's action stays open and is installed again.
                let cut_off =
                    matches!(&record.outcome, Outcome::Failed { code, .. } if code == otterd::engine::INTERRUPTED);
                if !cut_off {
                    break Some(record);
                }
                clock.say(format!(
                    "otterd: job {} was cut off by the power failure; the action is still open",
                    record.job.id
                ));
            }
            // The power failure: once a checkpoint is on disk, everything stops where it is.
            if cut_pending && install_percent.is_some_and(|p| (40..90).contains(&p)) && resume_record.exists() {
                cut_pending = false;
                handle.send(otterd::runtime::Command::Stop);
                break None;
            }
            let s = match watch.recv_timeout(Duration::from_millis(50)) {
                Ok(s) => s,
                Err(_) if loop_thread.is_finished() => break None,
                Err(_) => continue,
            };
            if let (Some(j), Some(p)) = (&s.job, &s.progress)
                && j.phase == otterd::engine::JobPhase::Installing
                && p.total > 0
            {
                install_percent = Some(p.percent());
            }
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
                    (Some(j), "installing") => format!(
                        "hawkBit action {} accepted as job {}: streaming the artifact into slot {}",
                        j.remote_id.as_deref().unwrap_or("?"),
                        j.id,
                        j.target
                    ),
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
                // The result goes to the server right after the job ends.
                let start = Instant::now();
                while server.action(action).is_some_and(|a| a.status == ActionStatus::Running) {
                    if start.elapsed() > Duration::from_secs(30) {
                        bail!("the result never reached the server");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                poller.stop();
                handle.send(otterd::runtime::Command::Stop);
                let _ = loop_thread.join();
                print_feedback(&clock, &server, &mut seen);
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
                clock.say(format!("bootloader env: {}", otterd::sim::env_summary(&device)?));
                clock.say(format!(
                    "server: hawkBit action {action} is now {:?}",
                    server.action(action).map(|a| a.status)
                ));
                let version = record.job.artifact.as_ref().map(|a| a.version.clone());
                let downloads = server.requests_to("/artifacts/");
                return Ok(Ended { outcome: record.outcome, version, downloads });
            }
            None => {
                poller.stop();
                print_feedback(&clock, &server, &mut seen);
                match loop_thread.join() {
                    Ok(RunEnd::Rebooted) => clock.say("reboot"),
                    // Only the power failure above stops the loop from outside.
                    Ok(RunEnd::Stopped) if power_cut => {
                        clock.say(format!(
                            "POWER FAILURE during the download; the installer's resume record says the first {} \
                             chunks are verified and synced in slot B",
                            otter_installer::resume::Record::load(&resume_record)
                                .and_then(|r| r.payloads.first().map(|p| p.chunks.to_string()))
                                .unwrap_or_else(|| "?".into())
                        ));
                        server.clear_faults();
                    }
                    Ok(RunEnd::Stopped) => bail!("otterd stopped unexpectedly"),
                    Err(_) => bail!("otterd panicked"),
                }
            }
        }
    }
    bail!("no outcome after 8 boots")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check-health") {
        let root = args.get(2).context("usage: otter-simulate check-health ROOT")?;
        // A health check speaks in one line and its exit status.
        if let Err(e) = check_health(Path::new(root)) {
            eprintln!("{e:#}");
            std::process::exit(1);
        }
        return Ok(());
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
        artifacts.push(build(&work, version, &img, None)?);
    }
    let public = work.join("release.pub");
    if args.iter().any(|a| a == "--fleet-only") {
        return fleet::run(&work, &exe, &public, &v1, &artifacts[0], &artifacts[1]);
    }
    let (good_update, bad_update) = ([artifacts[0].as_path()], [artifacts[1].as_path()]);
    let sc = |title, dir: &str, artifacts, power_cut| Scenario {
        title,
        dir: work.join(dir),
        exe: &exe,
        artifacts,
        initial: &v1,
        public_key: &public,
        power_cut,
    };
    let good = scenario(sc("scenario 1: update 1.0 -> 2.0, healthy: commit", "good", &good_update, false))?.outcome;
    let bad =
        scenario(sc("scenario 2: update 1.0 -> 2.1, application broken: rollback", "bad", &bad_update, false))?.outcome;
    let cut = scenario(sc(
        "scenario 3: update 1.0 -> 2.0 over a slow link, power failure mid-download: resume, commit",
        "power-cut",
        &good_update,
        true,
    ))?
    .outcome;
    println!();
    match (&good, &bad, &cut) {
        (Outcome::Committed, Outcome::RolledBack { .. }, Outcome::Committed) => println!(
            "ok: the healthy update was committed, the broken one rolled back, the interrupted one resumed and was \
             committed"
        ),
        _ => bail!("unexpected outcomes: {good:?}, {bad:?}, {cut:?}"),
    }
    monthly_fix(&work, &exe, &public, &v1)?;
    fleet::run(&work, &exe, &public, &v1, &artifacts[0], &artifacts[1])
}

/// Builds the signed artifact of `version` from `image`, like a release pipeline: `update-VERSION.otter`, or with a
/// `base` image a delta against it, `update-VERSION-from-BASE.otter`. Signed with the release key in `work`.
fn build(work: &Path, version: &str, image: &Path, base: Option<(&str, &Path)>) -> Result<PathBuf> {
    let key = otter_artifact::keys::read_signing_key(&work.join("release.key"))?;
    let mut opts = BuildOptions::new(vec![DEVICE_TYPE.into()], version);
    opts.security_version = 1;
    opts.chunk_size = 1 << 20;
    let out = match base {
        Some((from, _)) => work.join(format!("update-{version}-from-{from}.otter")),
        None => work.join(format!("update-{version}.otter")),
    };
    // The base is the image the devices run. A fix changes blocks in place, so 1 MiB around each chunk finds them
    // (the default, 16 MiB, covers the whole 16 MiB slot: at level 19 each changed chunk then took seconds to
    // patch, for a delta of the same size).
    let base = base.map(|(_, path)| DeltaBase { path: path.to_owned(), window: DELTA_WINDOW });
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: image.to_owned(), base };
    builder::create(&opts, &[src], std::slice::from_ref(&key), std::fs::File::create(&out)?)?;
    Ok(out)
}

/// `12,345`: a byte count as people read it.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Requests for `name` among a scenario's artifact downloads, and the body bytes they were sent.
fn downloads_of(ended: &Ended, name: &str) -> (usize, u64) {
    let of: Vec<_> = ended.downloads.iter().filter(|r| requested_file(r) == name).collect();
    (of.len(), of.iter().map(|r| r.body_bytes_sent).sum())
}

/// Scenario 4, a monthly fix by delta: 1.1 is 1.0 with a few blocks changed, offered in one action as the full
/// artifact and as a delta against 1.0's image. A device running 1.0 downloads only the delta and commits; one
/// running another release (1.0.1) refuses the delta before writing anything, downloads the full artifact and
/// commits.
fn monthly_fix(work: &Path, exe: &Path, public: &Path, v1: &Path) -> Result<()> {
    println!(
        "\nbuilding the monthly fix: 1.1 is 1.0's image with /etc/os-release rewritten and a small file added; its \
         full artifact and a delta against 1.0's image"
    );
    let v11 = change_rootfs(work, v1, "1.1", &[("/etc/fixes", "2026-12: the monthly fix\n")])?;
    let full = build(work, "1.1", &v11, None)?;
    let delta = build(work, "1.1", &v11, Some(("1.0", v1)))?;
    // Another release: 1.0 with a hotfix only some gateways got. It is not the delta's base.
    let v101 = change_rootfs(work, v1, "1.0.1", &[("/etc/hotfix", "1.0.1: a hotfix for some gateways\n")])?;
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (full_name, delta_name) = (name(&full), name(&delta));
    let (full_size, delta_size) = (std::fs::metadata(&full)?.len(), std::fs::metadata(&delta)?.len());
    println!("{full_name}: {} bytes; {delta_name}: {} bytes", thousands(full_size), thousands(delta_size));
    let offer = [full.as_path(), delta.as_path()];
    let sc = |title, dir: &str, initial| Scenario {
        title,
        dir: work.join(dir),
        exe,
        artifacts: &offer,
        initial,
        public_key: public,
        power_cut: false,
    };

    let on_base = scenario(sc(
        "scenario 4: a monthly fix by delta: 1.0 -> 1.1, the server offers the full artifact and a delta against \
         1.0; the device runs 1.0",
        "delta",
        v1,
    ))?;
    let (full_requests, _) = downloads_of(&on_base, &full_name);
    let downloaded: u64 = on_base.downloads.iter().map(|r| r.body_bytes_sent).sum();
    if downloaded != delta_size {
        bail!("the device downloaded {downloaded} bytes, the delta is {delta_size}");
    }
    println!(
        "server records: downloaded {} bytes: the delta; the full artifact is {} bytes ({:.2} %)",
        thousands(downloaded),
        thousands(full_size),
        downloaded as f64 * 100.0 / full_size as f64
    );
    if full_requests > 0 {
        bail!("the device running the delta's base requested the full artifact {full_requests} times");
    }
    println!("server records: the full artifact was never requested");
    if !matches!(on_base.outcome, Outcome::Committed) || on_base.version.as_deref() != Some("1.1") {
        bail!("the device running 1.0 did not commit 1.1: {:?} ({:?})", on_base.outcome, on_base.version);
    }

    let elsewhere = scenario(sc(
        "scenario 4, second device: it runs 1.0.1, not the delta's base: the same action falls back to the full \
         artifact",
        "delta-fallback",
        &v101,
    ))?;
    let (delta_requests, delta_sent) = downloads_of(&elsewhere, &delta_name);
    let (full_requests, full_sent) = downloads_of(&elsewhere, &full_name);
    let ranged = elsewhere.downloads.iter().any(|r| r.header("range").is_some());
    // otterd checks a delta's base against the running slot before it writes anything (daemon/tests/hawkbit.rs
    // shows the slot untouched); here the server sees the delta opened once, then the full artifact from its first
    // byte.
    if delta_requests != 1 || full_requests != 1 || ranged || full_sent != full_size {
        bail!(
            "the device running 1.0.1: {delta_requests} requests for the delta, {full_requests} for the full \
             artifact ({full_sent} of {full_size} bytes sent, a range asked: {ranged})"
        );
    }
    println!(
        "server records: the device opened the delta once ({} bytes sent), then downloaded the full artifact from its \
         first byte: {} bytes in one request",
        thousands(delta_sent),
        thousands(full_sent)
    );
    println!(
        "the delta is made for 1.0's image and slot A holds 1.0.1: otterd refused it before writing anything and \
         installed the full artifact"
    );
    if !matches!(elsewhere.outcome, Outcome::Committed) || elsewhere.version.as_deref() != Some("1.1") {
        bail!("the device running 1.0.1 did not commit 1.1: {:?} ({:?})", elsewhere.outcome, elsewhere.version);
    }
    println!(
        "\nok: the device running 1.0 installed 1.1 from a {}-byte delta ({:.2} % of the full artifact) and \
         committed; the one running 1.0.1 refused the delta, installed the full artifact and committed",
        thousands(delta_size),
        delta_size as f64 * 100.0 / full_size as f64
    );
    Ok(())
}
