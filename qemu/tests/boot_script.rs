//! otter's U-Boot boot script under real U-Boot (Debian's qemu-x86 build) in QEMU.
//!
//! Each test boots its own copy of the A/B image. Between boots the test plays the daemon: it
//! changes `uboot.env` with otter's own U-Boot backend (`otter_bootloader::uboot`), exactly as
//! otterd would on the device. After every boot it checks the serial console (which slot's init
//! ran, and that it got `otter.slot=` for that slot) and reads the env back twice, with otter's
//! codec and with libubootenv's `fw_printenv`, which must agree.
//!
//! `#[ignore]`d: plain `cargo test` skips them; `qemu/run-tests` runs them (about 10 s a boot).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use otter_bootloader::uboot::{FwEnvConfig, UBootBackend, UBootEnv, UBootScheme, provision};
use otter_bootloader::{BootBackend, Slot, SlotState};
use otter_qemu_tests::{Console, DiskImage, ImageBuilder, Qemu, UBOOT_ENV_SIZE, test_dir, tools, vars};

/// The scheme the boot script implements: BOOT_ORDER / BOOT_x_LEFT, 3 attempts.
const SCHEME: UBootScheme = UBootScheme::BootOrder { attempts: 3 };

/// The base image, built (or found up to date) once per test process.
fn base_image() -> &'static Path {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match IMAGE.get_or_init(|| ImageBuilder::new().build().map(|b| b.disk).map_err(|e| e.to_string())) {
        Ok(p) => p,
        Err(e) => panic!("cannot build the QEMU image: {e}"),
    }
}

/// One test's disk, VM settings and scratch directory.
struct Rig {
    name: &'static str,
    dir: PathBuf,
    disk: DiskImage,
    boots: usize,
}

impl Rig {
    fn new(name: &'static str) -> Rig {
        let base = base_image();
        let dir = test_dir(name).expect("test directory");
        let disk = DiskImage::copy_from(base, dir.join("disk.img")).expect("copy the base image");
        Rig { name, dir, disk, boots: 0 }
    }

    /// Boots once (until the guest powers off) and returns the console; the console is kept in
    /// `boot-<n>.log` in the test directory.
    fn run_vm(&mut self) -> Console {
        self.boots += 1;
        let log = self.dir.join(format!("boot-{}.log", self.boots));
        let started = Instant::now();
        let console = Qemu::new()
            .log_to(&log)
            .boot(&self.disk)
            .unwrap_or_else(|e| panic!("{}: boot {} failed: {e}", self.name, self.boots));
        eprintln!(
            "{}: boot {} took {:.1} s (log: {})",
            self.name,
            self.boots,
            started.elapsed().as_secs_f64(),
            log.display()
        );
        console
    }

    /// Boots once and returns the slot that came up, after checking the console: exactly one
    /// init ran, from the root filesystem of the slot named on the kernel command line, and it
    /// got to the end (power-off).
    fn boot(&mut self) -> Slot {
        let console = self.run_vm();
        match console.one_boot() {
            Ok(slot) => slot.parse().expect("slot name"),
            Err(e) => panic!("{}: boot {}: {e}; console:\n{}", self.name, self.boots, console.text()),
        }
    }

    /// Copies `uboot.env` out, lets `f` work on it with otter's U-Boot backend, stores and
    /// copies it back: what otterd does on the device.
    fn daemon<R>(&self, f: impl FnOnce(&mut UBootBackend) -> R) -> R {
        let co = self.disk.checkout_boot_file("uboot.env", &self.dir.join("env")).expect("checkout");
        assert!(co.exists(), "{}: no uboot.env on the boot partition", self.name);
        let mut backend = co.backend(SCHEME, &self.lock()).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let r = f(&mut backend);
        backend.store().expect("otter stores uboot.env");
        co.commit().expect("copy uboot.env back");
        r
    }

    /// Writes a fresh `uboot.env` holding `vars` with otter's codec (as an image build would).
    fn provision(&self, vars: &[(&str, &str)]) {
        let dir = self.dir.join("env");
        std::fs::create_dir_all(&dir).expect("env dir");
        let path = dir.join("uboot.env");
        std::fs::write(&path, vec![0u8; UBOOT_ENV_SIZE]).expect("create uboot.env");
        let config =
            FwEnvConfig::parse(&format!("{} 0x0 {UBOOT_ENV_SIZE:#x}\n", path.display())).expect("fw_env.config");
        let mut env = UBootEnv::new();
        for (k, v) in vars {
            env.set(k, v).expect("set variable");
        }
        provision(&config, &env, 0x00).expect("otter provisions uboot.env");
        self.disk.put_boot_file(&path, "uboot.env").expect("put uboot.env");
    }

    /// The env on the boot partition, read with otter's codec and with `fw_printenv`; both must
    /// see the same variables. Also returns otter's backend view for state checks.
    fn env(&self) -> (BTreeMap<String, String>, UBootBackend) {
        let co = self.disk.checkout_boot_file("uboot.env", &self.dir.join("env")).expect("checkout");
        assert!(co.exists(), "{}: no uboot.env on the boot partition", self.name);
        co.checked_env(SCHEME, &self.lock()).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// otter's lock file, inside the test directory (the default one is under /var/lock).
    fn lock(&self) -> PathBuf {
        self.dir.join("fw_printenv.lock")
    }
}

/// The primary slot boots; a trial of B boots B and spends its attempts; B never confirms, so
/// after its three attempts A boots again; otter then marks B bad and A stays.
#[test]
#[ignore = "boots QEMU (about a minute); run with qemu/run-tests"]
fn unconfirmed_trial_falls_back_to_the_primary_slot() {
    let mut rig = Rig::new("unconfirmed_trial");
    rig.provision(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")]);

    assert_eq!(rig.boot(), Slot::A, "the primary slot boots");
    let (env, backend) = rig.env();
    assert_eq!(env, vars(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "2"), ("BOOT_B_LEFT", "3")]));
    assert_eq!(backend.primary(), Some(Slot::A));
    assert_eq!(backend.slot_state(Slot::A), SlotState::Good);

    // The daemon confirms A's boot, installs into B and puts B on trial.
    rig.daemon(|b| {
        b.mark_good(Slot::A).expect("mark A good");
        b.set_try_next(Slot::B).expect("try B next");
    });
    let (env, backend) = rig.env();
    assert_eq!(env["BOOT_ORDER"], "B A");
    assert_eq!(env["BOOT_B_LEFT"], "3");
    assert_eq!(env["OTTER_TRIAL"], "B");
    assert_eq!(backend.primary(), Some(Slot::B));

    // B boots and never confirms: each boot takes one attempt, OTTER_TRIAL is kept.
    for left in ["2", "1", "0"] {
        assert_eq!(rig.boot(), Slot::B, "the trial slot boots while it has attempts");
        let (env, backend) = rig.env();
        assert_eq!(
            env,
            vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", left), ("OTTER_TRIAL", "B")])
        );
        assert_eq!(backend.slot_state(Slot::B), SlotState::Trying { attempts_left: left.parse().unwrap() });
    }
    let (_, backend) = rig.env();
    assert_eq!(backend.primary(), Some(Slot::A), "otter predicts the fallback");

    // Attempts used up: the script falls back to A, B stays at 0 (the script never drops it
    // from BOOT_ORDER; that is otter's mark bad).
    assert_eq!(rig.boot(), Slot::A, "after the trial's attempts the primary slot boots again");
    let (env, _) = rig.env();
    assert_eq!(env, vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "2"), ("BOOT_B_LEFT", "0"), ("OTTER_TRIAL", "B")]));

    // The daemon sees it booted A while B was on trial: marks B bad and confirms A.
    rig.daemon(|b| {
        b.mark_bad(Slot::B).expect("mark B bad");
        b.mark_good(Slot::A).expect("mark A good");
    });
    assert_eq!(rig.boot(), Slot::A, "a slot marked bad is not booted");
    let (env, backend) = rig.env();
    assert_eq!(env, vars(&[("BOOT_ORDER", "A"), ("BOOT_A_LEFT", "2"), ("BOOT_B_LEFT", "0")]));
    assert_eq!(backend.slot_state(Slot::B), SlotState::Bad);
    assert_eq!(backend.slot_state(Slot::A), SlotState::Good);
}

/// A trial of B that the daemon confirms: B keeps booting, each boot takes one attempt and each
/// confirmation gives them back.
#[test]
#[ignore = "boots QEMU (about 40 s); run with qemu/run-tests"]
fn confirmed_trial_keeps_booting_the_new_slot() {
    let mut rig = Rig::new("confirmed_trial");
    rig.provision(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")]);
    assert_eq!(rig.boot(), Slot::A);

    rig.daemon(|b| {
        b.mark_good(Slot::A).expect("mark A good");
        b.set_try_next(Slot::B).expect("try B next");
    });
    assert_eq!(rig.boot(), Slot::B, "the trial slot boots");
    let (env, backend) = rig.env();
    assert_eq!(env["BOOT_B_LEFT"], "2");
    assert_eq!(backend.slot_state(Slot::B), SlotState::Trying { attempts_left: 2 });

    // Healthy: the daemon commits B.
    rig.daemon(|b| b.mark_good(Slot::B).expect("mark B good"));
    let (env, backend) = rig.env();
    assert_eq!(env, vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")]));
    assert_eq!(backend.slot_state(Slot::B), SlotState::Good);

    for boot in 0..2 {
        assert_eq!(rig.boot(), Slot::B, "the committed slot keeps booting (boot {boot})");
        let (env, backend) = rig.env();
        assert_eq!(env, vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "2")]));
        assert_eq!(backend.slot_state(Slot::B), SlotState::Good);
        assert_eq!(backend.primary(), Some(Slot::B));
        rig.daemon(|b| b.mark_good(Slot::B).expect("mark B good"));
    }
}

/// No slot has attempts left: the script gives both their attempts back and resets; the next
/// pass boots the first slot in BOOT_ORDER. The env comes from U-Boot's own `mkenvimage`
/// (0xFF padding), the independent implementation.
#[test]
#[ignore = "boots QEMU twice in one run (about 20 s); run with qemu/run-tests"]
fn exhausted_slots_get_their_attempts_back() {
    let mut rig = Rig::new("exhausted_slots");
    let bytes = tools::mkenvimage(
        &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "0"), ("BOOT_B_LEFT", "0"), ("board_note", "kept")],
        UBOOT_ENV_SIZE,
        &rig.dir,
    )
    .expect("mkenvimage");
    rig.disk.write_boot_file("uboot.env", &bytes, &rig.dir).expect("write uboot.env");

    let console = rig.run_vm();
    assert!(
        console.contains_in_order(&["has attempts left; resetting both to 3", "resetting", "OTTER-SLOT=B"]),
        "expected a counter reset, a U-Boot reset, then slot B; console:\n{}",
        console.text()
    );
    assert_eq!(console.booted_slots(), ["B"], "the kernel ran once, after the reset");
    let (env, _) = rig.env();
    // Only the contract variables survive the FAT store (documented in docs/bootloader.md).
    assert_eq!(env, vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "2")]));
}

/// Without `uboot.env` the script starts from the defaults (A B, 3 attempts), boots A and
/// creates the file, which otter and fw_printenv then read.
#[test]
#[ignore = "boots QEMU (about 10 s); run with qemu/run-tests"]
fn missing_env_starts_from_the_defaults() {
    let mut rig = Rig::new("missing_env");
    assert!(!rig.disk.has_boot_file("uboot.env").unwrap(), "the base image has no uboot.env");
    assert_eq!(rig.boot(), Slot::A);
    let (env, backend) = rig.env();
    assert_eq!(env, vars(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "2"), ("BOOT_B_LEFT", "3")]));
    assert_eq!(backend.primary(), Some(Slot::A));
    assert_eq!(backend.slot_state(Slot::B), SlotState::Good);
}
