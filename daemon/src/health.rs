//! Health assessment of a trial boot: configured commands with timeouts, systemd units that must be active, and a
//! drop-in directory of check scripts. All must pass before the deadline for the new slot to be committed.
//!
//! Checks run one after the other — commands, then the scripts of `check_dir` in name order, then units — and the
//! first failure ends the assessment. Every check is bounded by its own timeout, by the overall deadline and by the
//! cancel flag; a check that overstays any of them is killed with SIGKILL together with everything it started (each
//! check runs in its own process group) and reaped before [`run_all`] returns.
//!
//! Blocking by design: the runtime calls [`run_all`] on a thread of its own.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

/// One configured command check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCheck {
    /// Name used in messages.
    pub name: String,
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
}

/// What to check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthSettings {
    /// Commands that must exit 0.
    pub commands: Vec<CommandCheck>,
    /// systemd units that must be active.
    pub units: Vec<String>,
    /// Directory of executable check scripts, run in name order; each must exit 0.
    pub check_dir: Option<PathBuf>,
    /// Timeout for each script of `check_dir`.
    pub script_timeout: Duration,
    /// The `systemctl` program.
    pub systemctl: PathBuf,
}

/// The first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {reason}")]
pub struct HealthFailure {
    /// Which check.
    pub check: String,
    /// What went wrong.
    pub reason: String,
}

/// The target systemd's boot assessment revolves around (systemd.special(7)): checks are ordered before it, and the
/// slot is committed once it is active.
pub const BOOT_COMPLETE_TARGET: &str = "boot-complete.target";

impl HealthSettings {
    /// True when `units` lists [`BOOT_COMPLETE_TARGET`]: the checks are wired into systemd's boot assessment, where
    /// `otter-health-check.service` (ordered before the target, required by it) runs the commands and scripts and
    /// the daemon waits for the units.
    pub fn uses_boot_assessment(&self) -> bool {
        self.units.iter().any(|unit| unit == BOOT_COMPLETE_TARGET)
    }

    /// What `otterd health-check` runs: the commands and the scripts, no units. That command runs in
    /// `otter-health-check.service`, which is ordered before `boot-complete.target` (and is itself usually in
    /// `units`): waiting there for the target, or for the service itself, could only end at the deadline.
    pub fn boot_checks(&self) -> HealthSettings {
        HealthSettings { units: Vec::new(), ..self.clone() }
    }

    /// What the daemon runs on a trial boot. With boot assessment only the units: the commands and scripts already
    /// run in `otter-health-check.service`, which the target requires, and running them twice would double their
    /// time and side effects. Without it (no systemd, the simulator, an image without the units) everything.
    pub fn trial_checks(&self) -> HealthSettings {
        if self.uses_boot_assessment() {
            HealthSettings { commands: Vec::new(), check_dir: None, ..self.clone() }
        } else {
            self.clone()
        }
    }
}

/// Reason given when the cancel flag stopped the assessment.
pub const CANCELLED: &str = "cancelled";

/// Bytes of a check's combined stdout/stderr kept for the failure reason (the last ones).
const OUTPUT_TAIL: usize = 4096;
/// How often a running check is polled for exit, timeout, deadline and cancel. 20 ms.
const POLL: Duration = Duration::from_millis(20);
/// How often `systemctl is-active` is asked again while a unit is not active yet. 500 ms.
const UNIT_POLL: Duration = Duration::from_millis(500);
/// Longest a single `systemctl is-active` call may take. 10 s.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the rest of a check's output after it exited: a background process it left behind may
/// hold the pipe open indefinitely, and must not hold up the verdict. 200 ms.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);
/// Spawn attempts when the program is momentarily busy (ETXTBSY: it is being written, or another thread's fork
/// still holds a write descriptor to it).
const SPAWN_ATTEMPTS: u32 = 5;

/// Runs every check; stops at the first failure, at `deadline`, or when `cancel` is set.
///
/// Order: `commands`, then the executables of `check_dir` in name order, then `units`. When `cancel` is set the
/// failure's reason is [`CANCELLED`]; when `deadline` passes, the reason says so and names the check that was
/// running.
pub fn run_all(settings: &HealthSettings, deadline: Instant, cancel: &AtomicBool) -> Result<(), HealthFailure> {
    let limits = Limits { deadline, cancel };
    for command in &settings.commands {
        let check = format!("command {}", command.name);
        limits.check_before(&check)?;
        info!(check = %check, argv = ?command.argv, "running health check");
        run_check(&check, &command.argv, command.timeout, &limits)?;
        debug!(check = %check, "health check passed");
    }
    if let Some(dir) = &settings.check_dir {
        for script in scripts_in(dir)? {
            let check = format!("script {}", script.display());
            limits.check_before(&check)?;
            info!(check = %check, "running health check");
            let argv = [script.to_string_lossy().into_owned()];
            run_check(&check, &argv, settings.script_timeout, &limits)?;
            debug!(check = %check, "health check passed");
        }
    }
    for unit in &settings.units {
        let check = format!("unit {unit}");
        limits.check_before(&check)?;
        info!(check = %check, "waiting for unit to be active");
        wait_active(&check, &settings.systemctl, unit, &limits)?;
        debug!(check = %check, "unit is active");
    }
    Ok(())
}

/// The bounds every check runs under.
struct Limits<'a> {
    deadline: Instant,
    cancel: &'a AtomicBool,
}

impl Limits<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Fails `check` before it starts if the assessment is already cancelled or out of time.
    fn check_before(&self, check: &str) -> Result<(), HealthFailure> {
        if self.cancelled() {
            return Err(failure(check, CANCELLED));
        }
        if Instant::now() >= self.deadline {
            return Err(failure(check, "the health deadline passed before it could run"));
        }
        Ok(())
    }

    /// Sleeps until `until` (capped at the deadline), waking early on cancel. True if cancelled.
    fn sleep_until(&self, until: Instant) -> bool {
        let until = until.min(self.deadline);
        loop {
            if self.cancelled() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            thread::sleep(POLL.min(until - now));
        }
    }
}

fn failure(check: &str, reason: impl Into<String>) -> HealthFailure {
    let failure = HealthFailure { check: check.to_owned(), reason: reason.into() };
    warn!(check = %failure.check, reason = %failure.reason, "health check failed");
    failure
}

/// Runs one command or script check: it passes when it exits 0 within its bounds.
fn run_check(check: &str, argv: &[String], timeout: Duration, limits: &Limits<'_>) -> Result<(), HealthFailure> {
    match run_bounded(argv, timeout, limits) {
        Ok(Run { end: End::Exited(status), output }) if status.success() => {
            debug!(check, output = %output, "check output");
            Ok(())
        }
        Ok(Run { end: End::Exited(status), output }) => Err(failure(check, with_output(describe(status), &output))),
        Ok(Run { end: End::TimedOut, output }) => {
            Err(failure(check, with_output(format!("timed out after {timeout:?} and was killed"), &output)))
        }
        Ok(Run { end: End::DeadlinePassed, output }) => Err(failure(
            check,
            with_output("still running when the health deadline passed, and was killed".to_owned(), &output),
        )),
        Ok(Run { end: End::Cancelled, .. }) => Err(failure(check, CANCELLED)),
        Err(error) => Err(failure(check, error)),
    }
}

/// Waits for `systemctl is-active UNIT` to say `active`; fails at once on `failed`, and at the deadline with the
/// last state seen otherwise (`activating`, `inactive`, ... are waited out: a target such as `boot-complete.target`
/// is inactive until the boot reaches it).
fn wait_active(check: &str, systemctl: &Path, unit: &str, limits: &Limits<'_>) -> Result<(), HealthFailure> {
    let argv = [systemctl.to_string_lossy().into_owned(), "is-active".to_owned(), unit.to_owned()];
    let mut last = String::from("not asked yet");
    loop {
        let next_poll = Instant::now() + UNIT_POLL;
        match run_bounded(&argv, SYSTEMCTL_TIMEOUT, limits) {
            Ok(Run { end: End::Exited(status), output }) => {
                // `is-active` prints the state on stdout (errors go to stderr, merged here); its exit status is 0
                // only for `active`.
                let state = output.lines().next().unwrap_or("").trim().to_owned();
                match state.as_str() {
                    "active" if status.success() => return Ok(()),
                    "failed" => return Err(failure(check, "the unit failed")),
                    "" => last = with_output(format!("systemctl {}", describe(status)), &output),
                    _ => last = state,
                }
                debug!(check, state = %last, "unit not active yet");
            }
            Ok(Run { end: End::TimedOut, .. }) => {
                last = format!("systemctl is-active did not answer within {SYSTEMCTL_TIMEOUT:?}");
            }
            Ok(Run { end: End::DeadlinePassed, .. }) => break,
            Ok(Run { end: End::Cancelled, .. }) => return Err(failure(check, CANCELLED)),
            // A missing systemctl will not appear later.
            Err(error) => return Err(failure(check, error)),
        }
        if limits.sleep_until(next_poll) {
            return Err(failure(check, CANCELLED));
        }
        if Instant::now() >= limits.deadline {
            break;
        }
    }
    Err(failure(check, format!("not active when the health deadline passed (last state: {last})")))
}

/// The executables of `dir` in name order. A missing directory holds nothing; dotfiles, directories and files
/// without an execute bit are skipped (with a debug log, so a forgotten `chmod +x` can be found).
fn scripts_in(dir: &Path) -> Result<Vec<PathBuf>, HealthFailure> {
    let check = || format!("check_dir {}", dir.display());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            debug!(dir = %dir.display(), "no health check directory; no scripts to run");
            return Ok(Vec::new());
        }
        Err(error) => return Err(failure(&check(), format!("cannot read the directory: {error}"))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| failure(&check(), format!("cannot read the directory: {error}")))?;
        names.push(entry.file_name());
    }
    names.sort();
    let mut scripts = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if name.as_encoded_bytes().starts_with(b".") {
            debug!(path = %path.display(), "skipping dotfile in the health check directory");
            continue;
        }
        // Follows symlinks: a link to an executable is run.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => scripts.push(path),
            Ok(meta) if meta.is_file() => {
                debug!(path = %path.display(), "skipping non-executable file in the health check directory");
            }
            Ok(_) => debug!(path = %path.display(), "skipping non-file in the health check directory"),
            Err(error) => {
                debug!(path = %path.display(), %error, "skipping unreadable entry in the health check directory");
            }
        }
    }
    Ok(scripts)
}

/// How a bounded run ended.
#[derive(Debug)]
enum End {
    /// The process exited by itself.
    Exited(ExitStatus),
    /// Its own timeout passed; it was killed.
    TimedOut,
    /// The overall deadline passed; it was killed.
    DeadlinePassed,
    /// The cancel flag was set; it was killed.
    Cancelled,
}

#[derive(Debug)]
struct Run {
    end: End,
    /// The last [`OUTPUT_TAIL`] bytes of stdout and stderr (interleaved as written), lossily decoded and trimmed.
    output: String,
}

/// Spawns `argv` (no shell; stdin from /dev/null, stdout and stderr into one pipe) in a process group of its own,
/// and waits for it to exit, for `timeout`, for the deadline or for cancel — whichever comes first. In the last
/// three cases the whole process group is killed with SIGKILL and the child reaped before returning. `Err` is a
/// spawn failure, as a message naming the program.
fn run_bounded(argv: &[String], timeout: Duration, limits: &Limits<'_>) -> Result<Run, String> {
    let (program, args) = argv.split_first().ok_or("the command is empty")?;
    let (mut reader, writer) = io::pipe().map_err(|error| format!("cannot create a pipe: {error}"))?;
    let stderr = writer.try_clone().map_err(|error| format!("cannot create a pipe: {error}"))?;
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(writer).stderr(stderr).process_group(0);
    let started = Instant::now();
    let mut child = spawn(&mut command).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => format!("program not found: {program}"),
        _ => format!("cannot run {program}: {error}"),
    })?;
    // The command holds our copies of the pipe's write end; without dropping them the reader never sees EOF.
    drop(command);

    let tail = Arc::new(Mutex::new(Tail::default()));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let tail = Arc::clone(&tail);
        // Detached on purpose: if a grandchild keeps the pipe open after the check ended, the thread ends when it
        // does; the verdict does not wait for it.
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(&buf[..n]),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        });
    }

    let own_limit = started + timeout;
    let end = loop {
        match child.try_wait() {
            Ok(Some(status)) => break End::Exited(status),
            Ok(None) => {}
            Err(error) => {
                // Cannot happen for a child we own; kill rather than leave it running unobserved.
                warn!(program, %error, "cannot poll a health check process; killing it");
                break kill(&mut child, End::Cancelled);
            }
        }
        let now = Instant::now();
        if limits.cancelled() {
            break kill(&mut child, End::Cancelled);
        }
        if now >= own_limit {
            break kill(&mut child, End::TimedOut);
        }
        if now >= limits.deadline {
            break kill(&mut child, End::DeadlinePassed);
        }
        thread::sleep(POLL.min(own_limit.min(limits.deadline) - now));
    };
    // Wait briefly for the output after exit (the last write may still be in the pipe), never indefinitely.
    let _ = done_rx.recv_timeout(OUTPUT_GRACE);
    let output = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).text();
    Ok(Run { end, output })
}

fn spawn(command: &mut Command) -> io::Result<Child> {
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS => {
                attempt += 1;
                thread::sleep(POLL);
            }
            result => return result,
        }
    }
}

/// Kills the child's process group (the child leads it; nothing else can have taken the id while the child is
/// unreaped), then the child itself in case the group kill failed, and reaps it.
fn kill(child: &mut Child, end: End) -> End {
    if let Ok(pid) = i32::try_from(child.id()).map(Pid::from_raw)
        && let Err(error) = killpg(pid, Signal::SIGKILL)
    {
        debug!(pid = %pid, %error, "cannot kill the health check's process group");
    }
    // Harmless if it is already dead (it only errors once the child has been reaped, which has not happened).
    let _ = child.kill();
    if let Err(error) = child.wait() {
        warn!(%error, "cannot reap a killed health check process");
    }
    end
}

/// The last [`OUTPUT_TAIL`] bytes written.
#[derive(Debug, Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > OUTPUT_TAIL {
            let excess = self.bytes.len() - OUTPUT_TAIL;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let text = text.trim();
        if self.truncated { format!("…{text}") } else { text.to_owned() }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

fn with_output(reason: String, output: &str) -> String {
    if output.is_empty() { format!("{reason} (no output)") } else { format!("{reason}; output: {output}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous upper bound on scheduling noise for timing checks.
    const SLACK: Duration = Duration::from_secs(5);

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(120)
    }

    fn sh(name: &str, script: &str, timeout: Duration) -> CommandCheck {
        CommandCheck { name: name.to_owned(), argv: vec!["/bin/sh".into(), "-c".into(), script.into()], timeout }
    }

    fn settings(commands: Vec<CommandCheck>) -> HealthSettings {
        HealthSettings {
            commands,
            script_timeout: Duration::from_secs(30),
            systemctl: PathBuf::from("/nonexistent/systemctl"),
            ..HealthSettings::default()
        }
    }

    fn write_exec(path: &Path, body: &str) {
        fs::write(path, body).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Gone, or a zombie nobody reaped (as happens to orphans in a container whose PID 1 does not reap).
    fn process_gone(pid: u32) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        }
    }

    fn read_pid(path: &Path) -> u32 {
        // Written by the check's shell before it blocks; allow it a moment to appear.
        let until = Instant::now() + SLACK;
        loop {
            if let Some(pid) = fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()) {
                return pid;
            }
            assert!(Instant::now() < until, "{} never written", path.display());
            thread::sleep(POLL);
        }
    }

    #[test]
    fn nothing_configured_passes() {
        let cancel = AtomicBool::new(false);
        assert_eq!(run_all(&settings(vec![]), far(), &cancel), Ok(()));
    }

    #[test]
    fn passing_commands_pass() {
        let cancel = AtomicBool::new(false);
        let commands = vec![
            CommandCheck { name: "true".into(), argv: vec!["true".into()], timeout: Duration::from_secs(10) },
            sh("noisy", "echo fine; echo also fine >&2", Duration::from_secs(10)),
        ];
        assert_eq!(run_all(&settings(commands), far(), &cancel), Ok(()));
    }

    #[test]
    fn failing_command_reports_status_and_stderr() {
        let cancel = AtomicBool::new(false);
        let commands = vec![sh("app", "echo starting; echo 'connection refused' >&2; exit 3", Duration::from_secs(10))];
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        assert_eq!(failure.check, "command app");
        assert!(failure.reason.contains("exited with status 3"), "{failure}");
        assert!(failure.reason.contains("starting"), "{failure}");
        assert!(failure.reason.contains("connection refused"), "{failure}");
    }

    #[test]
    fn false_fails_without_output() {
        let cancel = AtomicBool::new(false);
        let commands =
            vec![CommandCheck { name: "f".into(), argv: vec!["false".into()], timeout: Duration::from_secs(10) }];
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        assert_eq!(failure.reason, "exited with status 1 (no output)");
    }

    #[test]
    fn only_the_last_output_is_kept() {
        let cancel = AtomicBool::new(false);
        // ~20 KiB of numbered lines, then a final marker.
        let commands = vec![sh(
            "chatty",
            "i=0; while [ $i -lt 2000 ]; do echo \"line $i padding\"; i=$((i+1)); done; echo THE-END >&2; exit 1",
            Duration::from_secs(30),
        )];
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        assert!(failure.reason.contains("THE-END"), "{failure}");
        assert!(!failure.reason.contains("line 0 padding"), "the start should have been dropped");
        assert!(failure.reason.contains('…'));
        assert!(failure.reason.len() < OUTPUT_TAIL + 200, "reason is {} bytes", failure.reason.len());
    }

    #[test]
    fn missing_program_is_named() {
        let cancel = AtomicBool::new(false);
        let commands = vec![CommandCheck {
            name: "ghost".into(),
            argv: vec!["/nonexistent/bin/ghost-check".into(), "--flag".into()],
            timeout: Duration::from_secs(10),
        }];
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        assert_eq!(failure.check, "command ghost");
        assert!(failure.reason.contains("/nonexistent/bin/ghost-check"), "{failure}");
        assert!(failure.reason.contains("not found"), "{failure}");
    }

    #[test]
    fn empty_argv_fails() {
        let cancel = AtomicBool::new(false);
        let commands = vec![CommandCheck { name: "empty".into(), argv: vec![], timeout: Duration::from_secs(10) }];
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        assert_eq!(failure.check, "command empty");
    }

    #[test]
    fn timeout_kills_the_child_and_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let cancel = AtomicBool::new(false);
        // The shell records its own pid and a background grandchild's, prints something, then blocks.
        let script = format!("sleep 300 & echo $$ $! > {}; echo partial progress >&2; wait", pids.display());
        let commands = vec![sh("hang", &script, Duration::from_millis(500))];
        let started = Instant::now();
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500) + SLACK, "took {took:?}");
        assert_eq!(failure.check, "command hang");
        assert!(failure.reason.contains("timed out after 500ms"), "{failure}");
        assert!(failure.reason.contains("partial progress"), "{failure}");
        let text = fs::read_to_string(&pids).unwrap();
        let mut ids = text.split_whitespace().map(|pid| pid.parse::<u32>().unwrap());
        let (shell, sleeper) = (ids.next().unwrap(), ids.next().unwrap());
        assert!(process_gone(shell), "the check's shell {shell} is still running");
        // The orphaned grandchild is killed by the group kill; its reaping is up to init, so allow a moment.
        let until = Instant::now() + SLACK;
        while !process_gone(sleeper) {
            assert!(Instant::now() < until, "the check's background sleep {sleeper} survived");
            thread::sleep(POLL);
        }
    }

    #[test]
    fn deadline_kills_a_running_check() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cancel = AtomicBool::new(false);
        let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
        let commands = vec![sh("slow", &script, Duration::from_secs(300))];
        let started = Instant::now();
        let deadline = started + Duration::from_millis(500);
        let failure = run_all(&settings(commands), deadline, &cancel).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(500) + SLACK);
        assert_eq!(failure.check, "command slow");
        assert!(failure.reason.contains("deadline"), "{failure}");
        assert!(process_gone(read_pid(&pid_file)));
    }

    #[test]
    fn deadline_already_passed_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let cancel = AtomicBool::new(false);
        let commands = vec![sh("late", &format!("touch {}", marker.display()), Duration::from_secs(10))];
        let failure = run_all(&settings(commands), Instant::now(), &cancel).unwrap_err();
        assert!(failure.reason.contains("deadline"), "{failure}");
        assert!(!marker.exists());
    }

    #[test]
    fn cancel_kills_a_running_check() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cancel = Arc::new(AtomicBool::new(false));
        let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
        let commands = vec![sh("slow", &script, Duration::from_secs(300))];
        let setter = {
            let cancel = Arc::clone(&cancel);
            let pid_file = pid_file.clone();
            thread::spawn(move || {
                let pid = read_pid(&pid_file);
                cancel.store(true, Ordering::Relaxed);
                pid
            })
        };
        let started = Instant::now();
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        assert!(started.elapsed() < SLACK * 2);
        assert_eq!(failure.reason, CANCELLED);
        assert!(process_gone(setter.join().unwrap()));
    }

    #[test]
    fn commands_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("second-ran");
        let cancel = AtomicBool::new(false);
        let commands = vec![
            sh("first", "exit 1", Duration::from_secs(10)),
            sh("second", &format!("touch {}", marker.display()), Duration::from_secs(10)),
        ];
        let failure = run_all(&settings(commands), far(), &cancel).unwrap_err();
        assert_eq!(failure.check, "command first");
        assert!(!marker.exists());
    }

    #[test]
    fn scripts_run_in_name_order_skipping_dotfiles_and_non_executables() {
        let dir = tempfile::tempdir().unwrap();
        let checks = dir.path().join("health.d");
        fs::create_dir(&checks).unwrap();
        let log = dir.path().join("log");
        let body = |tag: &str| format!("#!/bin/sh\necho {tag} >> {}\n", log.display());
        write_exec(&checks.join("20-second"), &body("20"));
        write_exec(&checks.join("10-first"), &body("10"));
        write_exec(&checks.join(".hidden"), &body("hidden"));
        fs::write(checks.join("15-not-executable"), body("not-executable")).unwrap();
        fs::create_dir(checks.join("12-a-directory")).unwrap();
        let cancel = AtomicBool::new(false);
        let settings = HealthSettings { check_dir: Some(checks), ..settings(vec![]) };
        assert_eq!(run_all(&settings, far(), &cancel), Ok(()));
        assert_eq!(fs::read_to_string(&log).unwrap(), "10\n20\n");
    }

    #[test]
    fn missing_check_dir_is_nothing_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = AtomicBool::new(false);
        let settings = HealthSettings { check_dir: Some(dir.path().join("absent")), ..settings(vec![]) };
        assert_eq!(run_all(&settings, far(), &cancel), Ok(()));
    }

    #[test]
    fn failing_script_is_named_and_stops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("later-ran");
        write_exec(&dir.path().join("10-bad"), "#!/bin/sh\necho 'disk is full' >&2\nexit 2\n");
        write_exec(&dir.path().join("20-later"), &format!("#!/bin/sh\ntouch {}\n", marker.display()));
        let cancel = AtomicBool::new(false);
        let settings = HealthSettings { check_dir: Some(dir.path().to_owned()), ..settings(vec![]) };
        let failure = run_all(&settings, far(), &cancel).unwrap_err();
        assert!(failure.check.starts_with("script ") && failure.check.ends_with("10-bad"), "{failure}");
        assert!(failure.reason.contains("exited with status 2"), "{failure}");
        assert!(failure.reason.contains("disk is full"), "{failure}");
        assert!(!marker.exists());
    }

    #[test]
    fn script_timeout_applies_to_each_script() {
        let dir = tempfile::tempdir().unwrap();
        write_exec(&dir.path().join("10-hang"), "#!/bin/sh\nexec sleep 300\n");
        let cancel = AtomicBool::new(false);
        let settings = HealthSettings {
            check_dir: Some(dir.path().to_owned()),
            script_timeout: Duration::from_millis(300),
            ..settings(vec![])
        };
        let started = Instant::now();
        let failure = run_all(&settings, far(), &cancel).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
        assert!(failure.reason.contains("timed out after 300ms"), "{failure}");
    }

    #[test]
    fn commands_run_before_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let checks = dir.path().join("health.d");
        fs::create_dir(&checks).unwrap();
        let marker = dir.path().join("script-ran");
        write_exec(&checks.join("10-check"), &format!("#!/bin/sh\ntouch {}\n", marker.display()));
        let cancel = AtomicBool::new(false);
        let settings = HealthSettings {
            check_dir: Some(checks),
            ..settings(vec![sh("first", "exit 1", Duration::from_secs(10))])
        };
        let failure = run_all(&settings, far(), &cancel).unwrap_err();
        assert_eq!(failure.check, "command first");
        assert!(!marker.exists(), "scripts must not run after a command failed");
    }

    /// A fake `systemctl` that answers `is-active UNIT` with the lines of `states-UNIT` in turn (repeating the last
    /// one) and logs its arguments.
    struct FakeSystemctl {
        dir: tempfile::TempDir,
    }

    impl FakeSystemctl {
        fn new(units: &[(&str, &[&str])]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            for (unit, states) in units {
                fs::write(dir.path().join(format!("states-{unit}")), states.join("\n") + "\n").unwrap();
            }
            let script = r#"#!/bin/sh
dir=$(dirname "$0")
echo "$@" >> "$dir/calls"
[ "$1" = is-active ] || { echo "unexpected verb $1" >&2; exit 64; }
[ -f "$dir/states-$2" ] || { echo inactive; exit 3; }
n=$(cat "$dir/count-$2" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$dir/count-$2"
state=$(sed -n "${n}p" "$dir/states-$2")
[ -n "$state" ] || state=$(tail -n 1 "$dir/states-$2")
echo "$state"
[ "$state" = active ]
"#;
            write_exec(&dir.path().join("systemctl"), script);
            FakeSystemctl { dir }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("systemctl")
        }

        fn calls(&self) -> Vec<String> {
            let calls = fs::read_to_string(self.dir.path().join("calls")).unwrap_or_default();
            calls.lines().map(str::to_owned).collect()
        }

        fn settings(&self, units: &[&str]) -> HealthSettings {
            HealthSettings {
                units: units.iter().map(|unit| (*unit).to_owned()).collect(),
                systemctl: self.path(),
                ..settings(vec![])
            }
        }
    }

    #[test]
    fn unit_activating_then_active_passes() {
        let fake = FakeSystemctl::new(&[("boot-complete.target", &["inactive", "activating", "active"])]);
        let cancel = AtomicBool::new(false);
        assert_eq!(run_all(&fake.settings(&["boot-complete.target"]), far(), &cancel), Ok(()));
        assert_eq!(fake.calls(), vec!["is-active boot-complete.target"; 3]);
    }

    #[test]
    fn failed_unit_fails_at_once() {
        let fake = FakeSystemctl::new(&[("app.service", &["activating", "failed"]), ("later.service", &["active"])]);
        let cancel = AtomicBool::new(false);
        let failure = run_all(&fake.settings(&["app.service", "later.service"]), far(), &cancel).unwrap_err();
        assert_eq!(failure.check, "unit app.service");
        assert!(failure.reason.contains("failed"), "{failure}");
        assert_eq!(fake.calls(), vec!["is-active app.service"; 2], "stops at the first failure");
    }

    #[test]
    fn unit_never_active_fails_at_the_deadline_with_its_last_state() {
        let fake = FakeSystemctl::new(&[("slow.service", &["activating"])]);
        let cancel = AtomicBool::new(false);
        let started = Instant::now();
        let failure =
            run_all(&fake.settings(&["slow.service"]), started + Duration::from_millis(1200), &cancel).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(1200) + SLACK);
        assert_eq!(failure.check, "unit slow.service");
        assert!(failure.reason.contains("deadline"), "{failure}");
        assert!(failure.reason.contains("activating"), "{failure}");
        assert!(fake.calls().len() >= 2, "polled more than once: {:?}", fake.calls());
    }

    #[test]
    fn units_are_waited_for_after_commands_and_scripts() {
        let fake = FakeSystemctl::new(&[("app.service", &["active"])]);
        let cancel = AtomicBool::new(false);
        let settings = HealthSettings {
            commands: vec![sh("first", "exit 1", Duration::from_secs(10))],
            ..fake.settings(&["app.service"])
        };
        assert_eq!(run_all(&settings, far(), &cancel).unwrap_err().check, "command first");
        assert!(fake.calls().is_empty(), "units must not be asked about after a failed command");
    }

    #[test]
    fn missing_systemctl_is_named() {
        let cancel = AtomicBool::new(false);
        let settings = HealthSettings { units: vec!["app.service".into()], ..settings(vec![]) };
        let failure = run_all(&settings, far(), &cancel).unwrap_err();
        assert_eq!(failure.check, "unit app.service");
        assert!(failure.reason.contains("/nonexistent/systemctl"), "{failure}");
    }

    #[test]
    fn cancel_stops_waiting_for_a_unit() {
        let fake = FakeSystemctl::new(&[("slow.service", &["activating"])]);
        let cancel = Arc::new(AtomicBool::new(false));
        let setter = {
            let cancel = Arc::clone(&cancel);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(700));
                cancel.store(true, Ordering::Relaxed);
            })
        };
        let started = Instant::now();
        let failure = run_all(&fake.settings(&["slow.service"]), far(), &cancel).unwrap_err();
        setter.join().unwrap();
        assert!(started.elapsed() < SLACK * 2);
        assert_eq!(failure.reason, CANCELLED);
    }

    #[test]
    fn boot_assessment_splits_the_checks_between_the_unit_and_the_daemon() {
        let all = HealthSettings {
            commands: vec![sh("app", "true", Duration::from_secs(1))],
            units: vec!["otter-health-check.service".into(), BOOT_COMPLETE_TARGET.into()],
            check_dir: Some("/etc/otter/health.d".into()),
            ..settings(vec![])
        };
        assert!(all.uses_boot_assessment());
        let boot = all.boot_checks();
        assert_eq!((boot.commands.len(), boot.check_dir.is_some(), boot.units.len()), (1, true, 0));
        let trial = all.trial_checks();
        assert_eq!((trial.commands.len(), trial.check_dir.is_some()), (0, false));
        assert_eq!(trial.units, all.units);

        // Without boot-complete.target the daemon runs everything itself.
        let alone = HealthSettings { units: vec!["app.service".into()], ..all.clone() };
        assert!(!alone.uses_boot_assessment());
        assert_eq!(alone.trial_checks(), alone);
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(b"  hello ");
        assert_eq!(tail.text(), "hello");
        tail.push(&vec![b'x'; OUTPUT_TAIL]);
        tail.push(b"end");
        assert!(tail.truncated);
        assert_eq!(tail.bytes.len(), OUTPUT_TAIL);
        assert!(tail.text().ends_with("xend"));
    }
}
