//! Booting a disk under QEMU and capturing its serial console.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::tools::{self, UBOOT_ROM};
use crate::{DiskImage, Error};

/// How often a waiting call looks at the VM. 50 ms.
const POLL: Duration = Duration::from_millis(50);

/// What runs before the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// Debian's qemu-x86 U-Boot as the BIOS (`-bios u-boot.rom`); it runs `boot.scr` from the
    /// disk's boot partition.
    UBoot,
    /// QEMU's SeaBIOS booting a GRUB loader CD (`-cdrom <iso> -boot d`) that runs
    /// `grub/grub.cfg` from the disk's boot partition ([`crate::ImageBuilder::with_grub`]).
    GrubCdrom(PathBuf),
}

/// How QEMU is started: `qemu-system-x86_64 -m 512 -nographic -bios <qemu-x86 u-boot.rom>
/// -drive file=<disk>,format=raw,if=virtio` under TCG (this machine's KVM is nested and U-Boot
/// fails on it), plus the options set here.
#[derive(Debug, Clone)]
pub struct Qemu {
    firmware: Firmware,
    memory_mib: u32,
    timeout: Duration,
    network: bool,
    extra_args: Vec<String>,
    log: Option<PathBuf>,
}

impl Default for Qemu {
    fn default() -> Self {
        Self::new()
    }
}

impl Qemu {
    /// 512 MiB, no network, 120 s timeout per VM (one boot takes about 10 s under TCG; the
    /// margin is for a loaded machine).
    pub fn new() -> Self {
        Self {
            firmware: Firmware::UBoot,
            memory_mib: 512,
            timeout: Duration::from_secs(120),
            network: false,
            extra_args: Vec::new(),
            log: None,
        }
    }

    /// What boots the disk; [`Firmware::UBoot`] unless set.
    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// How long [`Qemu::boot`] waits for the guest to power off.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With a user-mode network (`-nic user,model=virtio-net-pci`: the initramfs loads
    /// `virtio_net`, the guest sees `eth0`; the host is 10.0.2.2 from the guest, and connections
    /// to it reach the host's loopback); off by default, which also keeps U-Boot from trying DHCP
    /// and TFTP when the boot script fails.
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }

    /// One more QEMU argument (e.g. a `-nic user,hostfwd=...` or `-qmp` for later suites).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Also writes each VM's console to `path` (replaced at every boot), for a failed test's
    /// post-mortem.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// The QEMU command line for `disk`.
    pub fn command(&self, disk: &DiskImage) -> Result<Command, Error> {
        let mut cmd = tools::command("qemu-system-x86_64", "qemu-system-x86")?;
        cmd.arg("-m").arg(self.memory_mib.to_string()).arg("-nographic");
        match &self.firmware {
            Firmware::UBoot => {
                let rom = PathBuf::from(UBOOT_ROM);
                if !rom.is_file() {
                    return Err(Error::MissingFile { path: rom, package: "u-boot-qemu".to_owned() });
                }
                // No display adapter: U-Boot's qemu-x86 build otherwise runs the VGA BIOS in its
                // real-mode emulator at every boot, and under TCG on a loaded machine that is
                // where it was seen to hang (after "Loading Environment", before "Video:"). The
                // console is the serial port either way.
                cmd.arg("-bios").arg(rom).arg("-vga").arg("none");
            }
            Firmware::GrubCdrom(iso) => {
                if !iso.is_file() {
                    return Err(Error::MissingFile {
                        path: iso.clone(),
                        package: "grub-pc-bin (qemu/build-image --with-grub makes it)".to_owned(),
                    });
                }
                cmd.arg("-cdrom").arg(iso).arg("-boot").arg("d");
            }
        }
        cmd.arg("-drive").arg(format!("file={},format=raw,if=virtio", disk.path().display()));
        cmd.arg("-nic").arg(if self.network { "user,model=virtio-net-pci" } else { "none" });
        cmd.args(&self.extra_args);
        Ok(cmd)
    }

    /// Starts the VM; the console is collected in the background.
    pub fn spawn(&self, disk: &DiskImage) -> Result<RunningVm, Error> {
        let mut cmd = self.command(disk)?;
        let line = format!("{cmd:?}");
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| {
                Error::Command { command: line, status: "not started".to_owned(), stderr: e.to_string() }
            })?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            child.stdout.take().map(|s| collect(s, Arc::clone(&output))),
            child.stderr.take().map(|s| collect(s, Arc::clone(&output))),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(RunningVm { child, output, readers, started: Instant::now(), log: self.log.clone() })
    }

    /// Boots `disk` and waits until the guest powers off (QEMU exits); returns the console.
    /// Not powered off within the timeout: the VM is killed and the error holds the console.
    pub fn boot(&self, disk: &DiskImage) -> Result<Console, Error> {
        self.spawn(disk)?.wait_for_exit(self.timeout)
    }
}

/// Appends everything read from `stream` to `sink` until EOF.
fn collect(mut stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut out) = sink.lock() {
                out.extend_from_slice(&buf[..n]);
            }
        }
    })
}

/// A running VM. Dropping it kills QEMU.
#[derive(Debug)]
pub struct RunningVm {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    log: Option<PathBuf>,
}

impl RunningVm {
    /// The console (QEMU's stdout and stderr) so far.
    pub fn console(&self) -> Console {
        let bytes = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        Console::from_bytes(&bytes, self.started.elapsed())
    }

    /// Waits until the console contains `needle`; the VM keeps running. A timeout or QEMU
    /// exiting first is an error ([`Error::Timeout`] with the console).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Console, Error> {
        self.wait_until(&format!("{needle:?}"), timeout, |c| c.contains(needle))
    }

    /// Waits until `done` holds for the console so far (`what` describes it for the error); the
    /// VM keeps running. A timeout or QEMU exiting first is an error ([`Error::Timeout`] with the
    /// console).
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Console) -> bool,
    ) -> Result<Console, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if done(&console) {
                return Ok(console);
            }
            let exited = self.child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() >= deadline {
                let console = self.finish()?;
                return Err(Error::Timeout {
                    after: timeout,
                    console: format!(
                        "{}\n[harness: waiting for {what}; QEMU {}]",
                        console.text(),
                        if exited { "exited" } else { "killed" }
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until QEMU exits (the guest powered off) and returns the whole console. On
    /// timeout the VM is killed and [`Error::Timeout`] holds the console.
    pub fn wait_for_exit(mut self, timeout: Duration) -> Result<Console, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return self.finish(),
                Ok(None) if Instant::now() >= deadline => {
                    let console = self.finish()?;
                    return Err(Error::Timeout { after: timeout, console: console.text().to_owned() });
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => return Err(Error::io("wait for", &PathBuf::from("qemu"), e)),
            }
        }
    }

    /// Kills QEMU (a power cut, from the guest's point of view) and returns the console.
    pub fn kill(mut self) -> Result<Console, Error> {
        self.finish()
    }

    /// Kills QEMU if still running, drains its output and writes the log.
    fn finish(&mut self) -> Result<Console, Error> {
        if self.child.try_wait().ok().flatten().is_none() {
            // Already exited between the check and the kill is fine.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let console = self.console();
        if let Some(log) = &self.log {
            std::fs::write(log, console.text()).map_err(|e| Error::io("write", log, e))?;
        }
        Ok(console)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A serial console capture, carriage returns removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    text: String,
    elapsed: Duration,
}

impl Console {
    /// From raw console bytes (invalid UTF-8 is replaced).
    pub fn from_bytes(bytes: &[u8], elapsed: Duration) -> Self {
        Self { text: String::from_utf8_lossy(bytes).replace('\r', ""), elapsed }
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Time from the VM's start to this capture.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Whether `needle` appears anywhere.
    pub fn contains(&self, needle: &str) -> bool {
        self.text.contains(needle)
    }

    /// The values of every `KEY=value` marker, in order: lines whose text starts with `KEY=`
    /// (after any leading noise such as escape sequences), value up to the end of the line.
    pub fn markers(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.text.lines().filter_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..])).map(str::trim).collect()
    }

    /// The slots whose init ran (`OTTER-SLOT=` markers), in boot order; more than one when the
    /// guest reset and booted again within one VM run.
    pub fn booted_slots(&self) -> Vec<&str> {
        self.markers("OTTER-SLOT")
    }

    /// Checks that the console shows exactly one complete boot of the test init and returns its
    /// slot name: one `OTTER-SLOT=` marker, `OTTER-CMDLINE-SLOT=` (the kernel's `otter.slot=`)
    /// naming the same slot, and `OTTER-POWEROFF`. The error says which check failed.
    pub fn one_boot(&self) -> Result<&str, String> {
        let slots = self.booted_slots();
        let [slot] = slots[..] else {
            return Err(format!("expected one OTTER-SLOT marker, got {slots:?}"));
        };
        let cmdline = self.markers("OTTER-CMDLINE-SLOT");
        if cmdline != [slot] {
            return Err(format!("the root filesystem of slot {slot} booted, but otter.slot= said {cmdline:?}"));
        }
        if !self.contains("OTTER-POWEROFF") {
            return Err(format!("slot {slot}'s init did not finish"));
        }
        Ok(slot)
    }

    /// Whether `needles` appear in this order (each after the end of the previous one).
    pub fn contains_in_order(&self, needles: &[&str]) -> bool {
        let mut rest = self.text.as_str();
        for n in needles {
            match rest.find(n) {
                Some(i) => rest = &rest[i + n.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers_after_noise() {
        let c = Console::from_bytes(
            b"U-Boot\r\n\x1b[0mOTTER-SLOT=A\r\nOTTER-CMDLINE-SLOT=A\r\nreset\r\nOTTER-SLOT=B\r\n",
            Duration::ZERO,
        );
        assert_eq!(c.booted_slots(), ["A", "B"]);
        assert_eq!(c.markers("OTTER-CMDLINE-SLOT"), ["A"]);
        assert!(c.contains_in_order(&["OTTER-SLOT=A", "reset", "OTTER-SLOT=B"]));
        assert!(!c.contains_in_order(&["OTTER-SLOT=B", "OTTER-SLOT=A"]));
        assert!(c.one_boot().unwrap_err().contains("expected one"));
    }

    #[test]
    fn one_boot_checks_the_command_line_and_the_end() {
        let ok = Console::from_bytes(b"OTTER-SLOT=B\nOTTER-CMDLINE-SLOT=B\nOTTER-POWEROFF\n", Duration::ZERO);
        assert_eq!(ok.one_boot(), Ok("B"));
        let wrong = Console::from_bytes(b"OTTER-SLOT=B\nOTTER-CMDLINE-SLOT=A\nOTTER-POWEROFF\n", Duration::ZERO);
        assert!(wrong.one_boot().unwrap_err().contains("otter.slot="));
        let cut = Console::from_bytes(b"OTTER-SLOT=A\nOTTER-CMDLINE-SLOT=A\n", Duration::ZERO);
        assert!(cut.one_boot().unwrap_err().contains("did not finish"));
    }
}
