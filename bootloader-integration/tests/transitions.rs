//! Every transition of the U-Boot (BOOT_ORDER, Mender) and GRUB schemes through the real
//! backends on files: otter writes with its backend; the "bootloader" reads with the reference
//! tool (`fw_printenv` / `grub-editenv list`), decides with the scheme's boot simulation and
//! writes back with the reference tool (`fw_setenv -s` / `grub-editenv set`). After every
//! simulated reboot the daemon side opens a fresh backend, as otterd would.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{EnvFiles, Layout, fw_printenv, fw_setenv_script, run, tool};
use otter_bootloader::grub::{GrubBackend, GrubEnv};
use otter_bootloader::scheme::{BootOrderScheme, GrubScheme, MenderScheme, VarScheme};
use otter_bootloader::uboot::{UBootBackend, UBootEnv, UBootScheme, provision};
use otter_bootloader::{BootBackend, Slot, SlotState};

use SlotState::{Bad, Good};

fn trying(n: u32) -> SlotState {
    SlotState::Trying { attempts_left: n }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    TryNext(Slot),
    MarkGood(Slot),
    MarkBad(Slot),
    Store,
    /// Reboot: the bootloader boots this slot.
    Boot(Slot),
    /// Reload without storing: unstored changes are gone.
    Reload,
    /// States of A and B and the primary, as the daemon sees them.
    Expect(SlotState, SlotState, Slot),
}

use Step::*;

/// A device: the daemon's backend plus the bootloader's side.
trait Device {
    fn backend(&mut self) -> &mut dyn BootBackend;
    /// Power cycle: the bootloader picks a slot and saves its counters; the daemon restarts.
    fn reboot(&mut self) -> Option<Slot>;
}

fn run_steps(name: &str, dev: &mut dyn Device, steps: &[Step]) {
    for (i, step) in steps.iter().enumerate() {
        let ctx = format!("{name}, step {i} {step:?}");
        match *step {
            TryNext(s) => dev.backend().set_try_next(s).unwrap(),
            MarkGood(s) => dev.backend().mark_good(s).unwrap(),
            MarkBad(s) => dev.backend().mark_bad(s).unwrap(),
            Store => dev.backend().store().unwrap(),
            Reload => dev.backend().reload().unwrap(),
            Boot(s) => assert_eq!(dev.reboot(), Some(s), "{ctx}"),
            Expect(a, b, primary) => {
                let be = dev.backend();
                assert_eq!(be.slot_state(Slot::A), a, "{ctx}: state of A");
                assert_eq!(be.slot_state(Slot::B), b, "{ctx}: state of B");
                assert_eq!(be.primary(), Some(primary), "{ctx}: primary");
            }
        }
    }
}

struct UBootDevice {
    files: EnvFiles,
    scheme: UBootScheme,
    sim: Box<dyn VarScheme>,
    backend: UBootBackend,
}

impl UBootDevice {
    fn new(scheme: UBootScheme, initial: &[(&str, &str)], layout: Layout) -> Self {
        let files = EnvFiles::new(layout, 0x4000);
        let mut env = UBootEnv::from_pairs([("bootcmd", "run otter_script"), ("bootdelay", "0")]).unwrap();
        for (n, v) in initial {
            env.set(n, v).unwrap();
        }
        provision(&files.config(), &env, 0).unwrap();
        let sim: Box<dyn VarScheme> = match scheme {
            UBootScheme::BootOrder { attempts } => Box::new(BootOrderScheme::new(attempts).unwrap()),
            UBootScheme::Mender { part_a, part_b, attempts } => {
                Box::new(MenderScheme::new(part_a, part_b, attempts).unwrap())
            }
        };
        let backend = Self::open(&files, scheme);
        Self { files, scheme, sim, backend }
    }

    fn open(files: &EnvFiles, scheme: UBootScheme) -> UBootBackend {
        UBootBackend::open(&files.config(), scheme, Some(files.lock.as_path())).unwrap()
    }
}

impl Device for UBootDevice {
    fn backend(&mut self) -> &mut dyn BootBackend {
        &mut self.backend
    }

    fn reboot(&mut self) -> Option<Slot> {
        let before: BTreeMap<String, String> = fw_printenv(&self.files.config_path).into_iter().collect();
        let mut vars = before.clone();
        let booted = self.sim.simulate_boot(&mut vars);
        let script: String =
            vars.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, v)| format!("{k}={v}\n")).collect();
        if !script.is_empty() {
            fw_setenv_script(&self.files.config_path, &script);
        }
        self.backend = Self::open(&self.files, self.scheme);
        booted
    }
}

struct GrubDevice {
    dir: tempfile::TempDir,
    backend: GrubBackend,
}

fn grubenv(dir: &Path) -> std::path::PathBuf {
    dir.join("grubenv")
}

fn editenv(file: &Path, args: &[String]) -> String {
    let out = run(Command::new(tool("grub-editenv", "grub-common")).arg(file).args(args));
    String::from_utf8(out.stdout).unwrap()
}

impl GrubDevice {
    fn new(initial: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = grubenv(dir.path());
        editenv(&file, &["create".to_owned()]);
        let mut args = vec!["set".to_owned()];
        args.extend(initial.iter().map(|(n, v)| format!("{n}={v}")));
        editenv(&file, &args);
        let backend = GrubBackend::open(&file).unwrap();
        Self { dir, backend }
    }
}

impl Device for GrubDevice {
    fn backend(&mut self) -> &mut dyn BootBackend {
        &mut self.backend
    }

    fn reboot(&mut self) -> Option<Slot> {
        let file = grubenv(self.dir.path());
        // grub-editenv list cannot show newlines unambiguously; these variables have none.
        let before: BTreeMap<String, String> = editenv(&file, &["list".to_owned()])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut vars = before.clone();
        let booted = GrubScheme.simulate_boot(&mut vars);
        let mut args = vec!["set".to_owned()];
        args.extend(vars.iter().filter(|(k, v)| before.get(*k) != Some(*v)).map(|(k, v)| format!("{k}={v}")));
        if args.len() > 1 {
            editenv(&file, &args);
        }
        // Cross-check: otter's codec reads what grub-editenv wrote.
        GrubEnv::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
        self.backend = GrubBackend::open(&file).unwrap();
        booted
    }
}

const BOOT_ORDER_SETTLED: &[(&str, &str)] = &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")];

#[test]
fn boot_order_scheme() {
    let scheme = UBootScheme::BootOrder { attempts: 3 };
    let scenarios: &[(&str, &[Step])] = &[
        (
            "update confirmed",
            &[
                Expect(Good, Good, Slot::A),
                Boot(Slot::A),
                MarkGood(Slot::A),
                Store,
                TryNext(Slot::B),
                Expect(Good, trying(3), Slot::B),
                Store,
                Boot(Slot::B),
                Expect(Good, trying(2), Slot::B),
                MarkGood(Slot::B),
                Expect(Good, Good, Slot::B),
                Store,
                Boot(Slot::B),
                Expect(Good, Good, Slot::B),
            ],
        ),
        (
            "attempts run out, fall back, mark bad",
            &[
                TryNext(Slot::B),
                Store,
                Boot(Slot::B),
                Boot(Slot::B),
                Boot(Slot::B),
                Expect(Good, trying(0), Slot::A),
                Boot(Slot::A),
                Expect(Good, trying(0), Slot::A),
                MarkBad(Slot::B),
                MarkGood(Slot::A),
                Store,
                Expect(Good, Bad, Slot::A),
                Boot(Slot::A),
                Boot(Slot::A),
                Expect(Good, Bad, Slot::A),
            ],
        ),
        (
            "unhealthy trial marked bad at once",
            &[
                TryNext(Slot::B),
                Store,
                Boot(Slot::B),
                MarkBad(Slot::B),
                Store,
                Expect(Good, Bad, Slot::A),
                Boot(Slot::A),
            ],
        ),
        (
            "unstored changes are dropped",
            &[
                TryNext(Slot::B),
                Reload,
                Expect(Good, Good, Slot::A),
                TryNext(Slot::B),
                Boot(Slot::A),
                Expect(Good, Good, Slot::A),
            ],
        ),
        (
            "a second update after a failed one",
            &[
                TryNext(Slot::B),
                Store,
                Boot(Slot::B),
                MarkBad(Slot::B),
                Store,
                Boot(Slot::A),
                TryNext(Slot::B),
                Store,
                Expect(Good, trying(3), Slot::B),
                Boot(Slot::B),
                MarkGood(Slot::B),
                Store,
                Boot(Slot::B),
                Expect(Good, Good, Slot::B),
            ],
        ),
    ];
    for layout in [|| Layout::SingleFile, || Layout::RedundantFiles] {
        for (name, steps) in scenarios {
            let mut dev = UBootDevice::new(scheme, BOOT_ORDER_SETTLED, layout());
            run_steps(name, &mut dev, steps);
        }
    }
}

#[test]
fn mender_scheme() {
    let scheme = UBootScheme::Mender { part_a: 2, part_b: 3, attempts: 2 };
    let settled: &[(&str, &str)] = &[
        ("mender_boot_part", "2"),
        ("mender_boot_part_hex", "2"),
        ("upgrade_available", "0"),
        ("bootcount", "0"),
        ("bootlimit", "1"),
    ];
    let scenarios: &[(&str, &[Step])] = &[
        (
            "update confirmed",
            &[
                Expect(Good, Good, Slot::A),
                Boot(Slot::A),
                TryNext(Slot::B),
                Expect(Good, trying(2), Slot::B),
                Store,
                Boot(Slot::B),
                Expect(Good, trying(1), Slot::B),
                MarkGood(Slot::B),
                Store,
                Expect(Good, Good, Slot::B),
                Boot(Slot::B),
                Boot(Slot::B),
                Expect(Good, Good, Slot::B),
            ],
        ),
        (
            "attempts run out: altbootcmd falls back",
            &[
                TryNext(Slot::B),
                Store,
                Boot(Slot::B),
                Boot(Slot::B),
                Expect(Good, trying(0), Slot::A),
                Boot(Slot::A),
                Expect(Good, trying(0), Slot::A),
                MarkBad(Slot::B),
                MarkGood(Slot::A),
                Store,
                Expect(Good, Bad, Slot::A),
                Boot(Slot::A),
            ],
        ),
        (
            "unhealthy trial marked bad at once",
            &[
                TryNext(Slot::B),
                Store,
                Boot(Slot::B),
                MarkBad(Slot::B),
                Store,
                Expect(Good, Bad, Slot::A),
                Boot(Slot::A),
                Expect(Good, Bad, Slot::A),
            ],
        ),
    ];
    for (name, steps) in scenarios {
        let mut dev = UBootDevice::new(scheme, settled, Layout::RedundantFiles);
        run_steps(name, &mut dev, steps);
    }
}

#[test]
fn grub_scheme() {
    let settled: &[(&str, &str)] = &[("ORDER", "A B"), ("A_OK", "1"), ("A_TRY", "0"), ("B_OK", "0"), ("B_TRY", "0")];
    let scenarios: &[(&str, &[Step])] = &[
        (
            "update confirmed",
            &[
                Expect(Good, Bad, Slot::A),
                Boot(Slot::A),
                MarkGood(Slot::A),
                Store,
                TryNext(Slot::B),
                Expect(Good, trying(1), Slot::B),
                Store,
                Boot(Slot::B),
                Expect(Good, trying(0), Slot::A),
                MarkGood(Slot::B),
                Store,
                Expect(Good, Good, Slot::B),
                Boot(Slot::B),
                MarkGood(Slot::B),
                Store,
                Boot(Slot::B),
            ],
        ),
        (
            "one attempt, fall back, mark bad",
            &[
                TryNext(Slot::B),
                Store,
                Boot(Slot::B),
                Boot(Slot::A),
                Expect(Good, trying(0), Slot::B),
                MarkBad(Slot::B),
                MarkGood(Slot::A),
                Store,
                Expect(Good, Bad, Slot::A),
                Boot(Slot::A),
                MarkGood(Slot::A),
                Store,
                Boot(Slot::A),
            ],
        ),
        (
            "unstored changes are dropped",
            &[TryNext(Slot::B), Reload, Expect(Good, Bad, Slot::A), TryNext(Slot::B), Boot(Slot::A)],
        ),
    ];
    for (name, steps) in scenarios {
        let mut dev = GrubDevice::new(settled);
        run_steps(name, &mut dev, steps);
    }
}
