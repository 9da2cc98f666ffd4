//! otter's `grub.cfg` under real GRUB (Debian's i386-pc GRUB from a loader CD, SeaBIOS) in QEMU.
//!
//! The same disk as the U-Boot tests, with `grub/grub.cfg`, its QEMU board file and
//! `grub/grubenv` on the boot partition. Between boots the test plays the daemon with otter's
//! GRUB backend; after every boot it checks the console and reads the grubenv back with otter's
//! codec and with `grub-editenv list`, which must agree.
//!
//! `#[ignore]`d: plain `cargo test` skips them; `qemu/run-tests` runs them (about 14 s a boot).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use otter_bootloader::grub::{GrubBackend, GrubEnv};
use otter_bootloader::{BootBackend, Slot, SlotState};
use otter_qemu_tests::{BuiltImage, DiskImage, Firmware, ImageBuilder, Qemu, test_dir, tools, vars};

/// The GRUB image, built (or found up to date) once per test process.
fn grub_image() -> &'static BuiltImage {
    static IMAGE: OnceLock<Result<BuiltImage, String>> = OnceLock::new();
    match IMAGE.get_or_init(|| ImageBuilder::new().with_grub().build().map_err(|e| e.to_string())) {
        Ok(b) => b,
        Err(e) => panic!("cannot build the QEMU image with GRUB: {e}"),
    }
}

const GRUBENV: &str = "grub/grubenv";

struct Rig {
    name: &'static str,
    dir: PathBuf,
    disk: DiskImage,
    qemu: Qemu,
    boots: usize,
}

impl Rig {
    fn new(name: &'static str) -> Rig {
        let image = grub_image();
        let dir = test_dir(name).expect("test directory");
        let disk = DiskImage::copy_from(&image.disk, dir.join("disk.img")).expect("copy the base image");
        let iso = image.grub_iso.clone().expect("GRUB loader CD");
        Rig { name, dir, disk, qemu: Qemu::new().firmware(Firmware::GrubCdrom(iso)), boots: 0 }
    }

    /// Boots once and returns the slot that came up (see `Console::one_boot`).
    fn boot(&mut self) -> Slot {
        self.boots += 1;
        let log = self.dir.join(format!("boot-{}.log", self.boots));
        let started = Instant::now();
        let console = self
            .qemu
            .clone()
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
        match console.one_boot() {
            Ok(slot) => slot.parse().expect("slot name"),
            Err(e) => panic!("{}: boot {}: {e}; console:\n{}", self.name, self.boots, console.text()),
        }
    }

    /// Writes `grub/grubenv` holding `vars`, encoded by otter's codec.
    fn provision(&self, vars: &[(&str, &str)]) {
        let mut env = GrubEnv::new();
        for (k, v) in vars {
            env.set(k, v).expect("set variable");
        }
        let bytes = env.to_bytes().expect("otter encodes the grubenv");
        self.disk.write_boot_file(GRUBENV, &bytes, &self.dir).expect("write grubenv");
    }

    /// Lets `f` change the grubenv with otter's GRUB backend, stores it and puts it back.
    fn daemon<R>(&self, f: impl FnOnce(&mut GrubBackend) -> R) -> R {
        let co = self.disk.checkout_boot_file(GRUBENV, &self.dir.join("env")).expect("checkout");
        assert!(co.exists(), "{}: no grubenv on the boot partition", self.name);
        let mut backend = GrubBackend::open(co.path()).expect("otter opens the grubenv");
        let r = f(&mut backend);
        backend.store().expect("otter stores the grubenv");
        co.commit().expect("copy the grubenv back");
        r
    }

    /// The grubenv read with otter's codec and with `grub-editenv list` (which must agree), and
    /// otter's backend view of it.
    fn env(&self) -> (BTreeMap<String, String>, GrubBackend) {
        let co = self.disk.checkout_boot_file(GRUBENV, &self.dir.join("env")).expect("checkout");
        assert!(co.exists(), "{}: no grubenv on the boot partition", self.name);
        let bytes = std::fs::read(co.path()).expect("read grubenv");
        let decoded = GrubEnv::from_bytes(&bytes).expect("otter's codec decodes the grubenv");
        let otter: BTreeMap<String, String> = decoded
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let editenv = tools::grub_editenv_list(co.path()).expect("grub-editenv reads the grubenv");
        assert_eq!(otter, editenv, "{}: otter's codec and grub-editenv disagree", self.name);
        let backend = GrubBackend::open(co.path()).expect("otter opens the grubenv");
        (otter, backend)
    }
}

/// A booted slot that is not confirmed is skipped at the next boot: a trial of B boots once and
/// falls back to A; a trial that otter confirms keeps booting B.
#[test]
#[ignore = "boots QEMU five times (about 70 s); run with qemu/run-tests"]
fn grub_trial_boots_once_and_a_confirmed_slot_stays() {
    let mut rig = Rig::new("grub_trial");
    rig.provision(&[("ORDER", "A B"), ("A_OK", "1"), ("A_TRY", "0"), ("B_OK", "0"), ("B_TRY", "0")]);

    assert_eq!(rig.boot(), Slot::A, "the primary slot boots");
    let (env, backend) = rig.env();
    assert_eq!(env["A_TRY"], "1", "GRUB marks the slot it boots as tried");
    assert_eq!(backend.slot_state(Slot::A), SlotState::Good);
    assert_eq!(backend.slot_state(Slot::B), SlotState::Bad);

    rig.daemon(|b| {
        b.mark_good(Slot::A).expect("mark A good");
        b.set_try_next(Slot::B).expect("try B next");
    });
    assert_eq!(rig.boot(), Slot::B, "the trial slot boots");
    let (env, backend) = rig.env();
    assert_eq!(
        env,
        vars(&[("ORDER", "B A"), ("A_OK", "1"), ("A_TRY", "0"), ("B_OK", "1"), ("B_TRY", "1"), ("OTTER_TRIAL", "B")])
    );
    assert_eq!(backend.slot_state(Slot::B), SlotState::Trying { attempts_left: 0 });
    assert_eq!(backend.primary(), Some(Slot::A), "otter predicts the fallback");

    // B is not confirmed: the next boot skips it.
    assert_eq!(rig.boot(), Slot::A, "an unconfirmed trial falls back");
    let (env, _) = rig.env();
    assert_eq!(env["A_TRY"], "1");
    assert_eq!(env["B_TRY"], "1");

    // The daemon rejects that trial, starts another one and confirms it.
    rig.daemon(|b| {
        b.mark_bad(Slot::B).expect("mark B bad");
        b.mark_good(Slot::A).expect("mark A good");
        b.set_try_next(Slot::B).expect("try B next");
    });
    assert_eq!(rig.boot(), Slot::B);
    rig.daemon(|b| b.mark_good(Slot::B).expect("mark B good"));
    let (env, backend) = rig.env();
    assert_eq!(backend.slot_state(Slot::B), SlotState::Good);
    assert!(!env.contains_key("OTTER_TRIAL"));

    assert_eq!(rig.boot(), Slot::B, "a confirmed slot keeps booting");
    let (env, _) = rig.env();
    assert_eq!(env["B_OK"], "1");
    assert_eq!(env["B_TRY"], "1");
}

/// Every good slot was tried and none confirmed: GRUB clears their TRY flags and boots the
/// first in ORDER. The grubenv comes from `grub-editenv`, the independent implementation.
#[test]
#[ignore = "boots QEMU once (about 14 s); run with qemu/run-tests"]
fn grub_all_tried_starts_over() {
    let mut rig = Rig::new("grub_all_tried");
    let path = rig.dir.join("grubenv.editenv");
    let mut create = tools::command("grub-editenv", "grub-common").expect("grub-editenv");
    create.arg(&path).arg("create");
    tools::run(&mut create).expect("grub-editenv create");
    let mut set = tools::command("grub-editenv", "grub-common").expect("grub-editenv");
    set.arg(&path).arg("set").args(["ORDER=B A", "A_OK=1", "A_TRY=1", "B_OK=1", "B_TRY=1"]);
    tools::run(&mut set).expect("grub-editenv set");
    rig.disk.put_boot_file(&path, GRUBENV).expect("put grubenv");

    assert_eq!(rig.boot(), Slot::B, "the first slot in ORDER boots again");
    let (env, _) = rig.env();
    assert_eq!(env, vars(&[("ORDER", "B A"), ("A_OK", "1"), ("A_TRY", "0"), ("B_OK", "1"), ("B_TRY", "1")]));
}
