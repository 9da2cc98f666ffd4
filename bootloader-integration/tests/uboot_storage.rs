//! Robustness of the U-Boot environment storage: corrupt copies, torn writes, locking.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{EnvFiles, Layout, as_nobody, env_pairs, fw_printenv, fw_setenv, nobody_dir, run, tool};
use otter_bootloader::uboot::{
    DEFAULT_LOCK_PATH, EnvStorage, FlagScheme, Interruption, UBootBackend, UBootEnv, UBootScheme, next_flags, provision,
};
use otter_bootloader::{BootBackend, BootError, Slot};

const SIZE: usize = 0x2000;

fn old_env() -> UBootEnv {
    UBootEnv::from_pairs([
        ("BOOT_ORDER", "A B"),
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "3"),
        ("bootcmd", "run otter_boot"),
    ])
    .unwrap()
}

/// Big enough that half a copy ends inside the variables, not in the padding.
fn new_env() -> UBootEnv {
    let blob = "x".repeat(SIZE * 2 / 3);
    UBootEnv::from_pairs([
        ("BOOT_ORDER", "B A"),
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "3"),
        ("bootcmd", "run otter_boot"),
        ("OTTER_TRIAL", "B"),
        ("blob", &blob),
    ])
    .unwrap()
}

fn corrupt(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn one_corrupt_copy_falls_back_to_the_other() {
    for bad in [0usize, 1] {
        let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
        let storage = EnvStorage::open(&files.config()).unwrap();
        provision(&files.config(), &old_env(), 0).unwrap();
        let loaded = storage.read().unwrap();
        storage.store(&new_env(), &loaded).unwrap();
        // Now copy 1 holds new (current), copy 0 old.
        corrupt(&files.copies[bad], 100);
        let loaded = storage.read().unwrap();
        let want = if bad == 1 { old_env() } else { new_env() };
        assert_eq!(loaded.current, 1 - bad, "copy {bad} corrupt");
        assert_eq!(loaded.env, want, "copy {bad} corrupt");
        assert!(!loaded.valid[bad]);
        assert_eq!(fw_printenv(&files.config_path), env_pairs(&want), "fw_printenv agrees");
        // The next store replaces the corrupt copy, never the good one.
        let good_before = std::fs::read(&files.copies[1 - bad]).unwrap();
        let mut env = loaded.env.clone();
        env.set("x", "1").unwrap();
        storage.store(&env, &loaded).unwrap();
        assert_eq!(std::fs::read(&files.copies[1 - bad]).unwrap(), good_before);
        assert_eq!(storage.read().unwrap().env, env);
    }
}

#[test]
fn both_copies_corrupt_is_a_typed_error_and_nothing_is_written() {
    for layout in [Layout::RedundantFiles, Layout::SingleFile, Layout::SingleAtOffset(0x800)] {
        let files = EnvFiles::new(layout, SIZE);
        provision(&files.config(), &old_env(), 0).unwrap();
        let mut backend =
            UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap();
        backend.set_try_next(Slot::B).unwrap();
        let storage = EnvStorage::open(&files.config()).unwrap();
        for c in storage.copies() {
            corrupt(&c.path, c.offset as usize + 50);
        }
        let before = files.snapshot();
        let err = backend.store().unwrap_err();
        assert!(matches!(err, BootError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert_eq!(files.snapshot(), before, "store wrote over a corrupt env");
        assert!(matches!(backend.reload(), Err(BootError::Corrupt { .. })));
        let err = UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap_err();
        assert!(matches!(err, BootError::Corrupt { .. }), "{err}");
        assert_eq!(files.snapshot(), before, "open wrote over a corrupt env");
    }
}

#[test]
fn a_never_written_env_is_corrupt_not_defaulted() {
    let files = EnvFiles::new(Layout::SingleFile, SIZE); // all zeroes: CRC fails
    let err = UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap_err();
    assert!(matches!(err, BootError::Corrupt { .. }), "{err}");
    assert_eq!(files.snapshot(), vec![vec![0u8; SIZE]]);
}

/// Reads the env the way both implementations do and checks it is exactly `old` or `new`.
fn assert_old_or_new(files: &EnvFiles, what: &str) -> bool {
    let env = EnvStorage::open(&files.config()).unwrap().read().unwrap().env;
    let tool_view = fw_printenv(&files.config_path);
    assert_eq!(env_pairs(&env), tool_view, "{what}: otter and fw_printenv disagree");
    if env == old_env() {
        false
    } else if env == new_env() {
        true
    } else {
        panic!("{what}: a mix of old and new: {:?}", env_pairs(&env));
    }
}

#[test]
fn torn_redundant_store_reads_old_or_new_never_a_mix() {
    for layout in [Layout::RedundantFiles, Layout::RedundantImage(0x400, 0x2400, 0x8000)] {
        let files = EnvFiles::new(layout, SIZE);
        provision(&files.config(), &old_env(), 0).unwrap();
        let storage = EnvStorage::open(&files.config()).unwrap();
        let loaded = storage.read().unwrap();

        storage.store_interrupted(&new_env(), &loaded, Interruption::MidFirstCopy).unwrap();
        assert!(!assert_old_or_new(&files, "cut mid-copy"), "cut mid-copy must read old");

        storage.store_interrupted(&new_env(), &loaded, Interruption::AfterFirstCopy).unwrap();
        assert!(assert_old_or_new(&files, "cut after the copy"), "complete copy must read new");

        // Every cut point of the new copy: the current copy stays intact, so old is read until
        // the new copy's variables are complete (the padding after them is the same zeroes).
        provision(&files.config(), &old_env(), 0).unwrap();
        let loaded = storage.read().unwrap();
        let image =
            new_env().to_bytes(SIZE, Some(next_flags(loaded.flags.unwrap(), FlagScheme::Incremental)), 0).unwrap();
        let target = &storage.copies()[1 - loaded.current];
        for cut in (0..SIZE).step_by(509).chain([SIZE - 1]) {
            let mut bytes = std::fs::read(&target.path).unwrap();
            let off = target.offset as usize;
            bytes[off..off + cut].copy_from_slice(&image[..cut]);
            std::fs::write(&target.path, &bytes).unwrap();
            let env = storage.read().unwrap().env;
            let complete = cut >= 5 + new_env().data_bytes().len();
            let want = if complete { new_env() } else { old_env() };
            assert!(env == want, "cut at {cut}: expected the {} env", if complete { "new" } else { "old" });
        }
    }
}

#[test]
fn torn_store_on_nor_boolean_flags() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    let mut config = files.config();
    config.flag_scheme = FlagScheme::Boolean;
    provision(&config, &old_env(), 0).unwrap();
    let storage = EnvStorage::open(&config).unwrap();
    let loaded = storage.read().unwrap();
    assert_eq!((loaded.current, loaded.flags), (0, Some(1)));

    // New copy written as active, old flag not yet cleared: both active → copy 0 (old).
    storage.store_interrupted(&new_env(), &loaded, Interruption::AfterFirstCopy).unwrap();
    assert_eq!(storage.read().unwrap().env, old_env());
    storage.store_interrupted(&new_env(), &loaded, Interruption::MidFirstCopy).unwrap();
    assert_eq!(storage.read().unwrap().env, old_env());

    storage.store(&new_env(), &loaded).unwrap();
    let raw = storage.read_raw().unwrap();
    assert_eq!((raw[0][4], raw[1][4]), (0, 1), "old obsolete, new active");
    let loaded = storage.read().unwrap();
    assert_eq!((loaded.current, &loaded.env), (1, &new_env()));
    // And back.
    storage.store(&old_env(), &loaded).unwrap();
    let raw = storage.read_raw().unwrap();
    assert_eq!((raw[0][4], raw[1][4]), (1, 0));
    assert_eq!(storage.read().unwrap().env, old_env());
}

#[test]
fn single_file_store_is_an_atomic_replace() {
    let files = EnvFiles::new(Layout::SingleFile, SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    let storage = EnvStorage::open(&files.config()).unwrap();
    assert!(storage.copies()[0].whole_file);
    let loaded = storage.read().unwrap();
    for at in [Interruption::MidFirstCopy, Interruption::AfterFirstCopy] {
        storage.store_interrupted(&new_env(), &loaded, at).unwrap();
        assert!(!assert_old_or_new(&files, "before the rename"), "{at:?}: must read old");
    }
    storage.store(&new_env(), &loaded).unwrap();
    assert!(assert_old_or_new(&files, "after the rename"));
    let leftovers: Vec<_> = std::fs::read_dir(files.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp") || n.contains("otter-new"))
        .collect();
    assert!(leftovers.is_empty(), "temp file left behind: {leftovers:?}");
    assert_eq!(std::fs::metadata(&files.copies[0]).unwrap().len(), SIZE as u64);
}

#[test]
fn single_copy_at_an_offset_cannot_be_atomic_and_says_so() {
    // A torn in-place write of the only copy is detected (CRC) rather than read as a mix.
    let files = EnvFiles::new(Layout::SingleAtOffset(0x1000), SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    let storage = EnvStorage::open(&files.config()).unwrap();
    assert!(!storage.copies()[0].whole_file);
    let loaded = storage.read().unwrap();
    storage.store_interrupted(&new_env(), &loaded, Interruption::MidFirstCopy).unwrap();
    assert!(matches!(storage.read(), Err(BootError::Corrupt { .. })));
}

#[test]
fn storage_outside_the_device_is_rejected() {
    let files = EnvFiles::new(Layout::RedundantImage(0, 0x7000, 0x8000), SIZE);
    let err = EnvStorage::open(&files.config()).unwrap_err();
    assert!(matches!(err, BootError::Storage { .. }), "{err}");
    let files = EnvFiles::new(Layout::RedundantImage(-0x9000, 0, 0x8000), SIZE);
    let err = EnvStorage::open(&files.config()).unwrap_err();
    assert!(err.to_string().contains("before the start"), "{err}");
}

/// Holds an flock on `path` in a child process (util-linux `flock`) until killed.
struct HeldLock(Child);

impl HeldLock {
    fn take(path: &std::path::Path) -> Self {
        Self::take_with(Command::new(tool("flock", "util-linux")), path)
    }

    /// The lock taken by the unprivileged user `nobody`: the local attacker.
    fn take_as_nobody(path: &std::path::Path) -> Self {
        Self::take_with(as_nobody(&[tool("flock", "util-linux").to_str().unwrap()]), path)
    }

    fn take_with(mut flock: Command, path: &std::path::Path) -> Self {
        // The marker in a directory every user may write (the holder may be `nobody`).
        let marker_dir = tempfile::tempdir().unwrap();
        common::let_nobody_traverse(marker_dir.path());
        std::fs::set_permissions(marker_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        let marker = marker_dir.path().join("taken");
        // --no-fork: flock execs the shell, which execs sleep, so killing the child releases
        // the lock (a forked sleep would keep holding it).
        let child = flock
            .arg("--no-fork")
            .arg(path)
            .args(["sh", "-c", "touch \"$0\" && exec sleep 60"])
            .arg(&marker)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "flock child never took {}", path.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(marker_dir);
        HeldLock(child)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn store_waits_for_the_lock() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    let mut backend = UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap();
    backend.set_try_next(Slot::B).unwrap();
    let held = HeldLock::take(&files.lock);
    let before = files.snapshot();
    let worker = std::thread::spawn(move || {
        backend.store().unwrap();
        backend
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!worker.is_finished(), "store did not wait for the lock");
    assert_eq!(files.snapshot(), before, "wrote while another process held the lock");
    drop(held);
    let backend = worker.join().unwrap();
    assert!(!backend.has_unstored_changes());
    assert_eq!(EnvStorage::open(&files.config()).unwrap().read().unwrap().env.get("BOOT_ORDER"), Some("B A"));
}

#[test]
fn default_lock_is_the_one_fw_setenv_takes() {
    // libubootenv 0.3 always locks /var/lock/fw_printenv.lock; otter's default is the same file.
    assert_eq!(DEFAULT_LOCK_PATH, "/var/lock/fw_printenv.lock");
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    let mut backend = UBootBackend::open(&files.config(), UBootScheme::default(), None).unwrap();
    backend.set_try_next(Slot::B).unwrap();

    let held = HeldLock::take(std::path::Path::new(DEFAULT_LOCK_PATH));
    let config_path = files.config_path.clone();
    let tool_thread = std::thread::spawn(move || fw_setenv(&config_path, "bootdelay", "9"));
    let worker = std::thread::spawn(move || {
        backend.store().unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!tool_thread.is_finished(), "fw_setenv did not wait for the lock");
    assert!(!worker.is_finished(), "otter did not wait for the lock");
    drop(held);
    tool_thread.join().unwrap();
    worker.join().unwrap();
    // Both stores happened, one after the other, neither lost.
    let env = EnvStorage::open(&files.config()).unwrap().read().unwrap().env;
    assert_eq!(env.get("bootdelay"), Some("9"));
    assert_eq!(env.get("BOOT_ORDER"), Some("B A"));
}

#[test]
fn character_devices_are_refused() {
    // /dev/null stands in for an MTD/UBI character device: never written like a block device.
    let config = otter_bootloader::uboot::FwEnvConfig::parse("/dev/null 0 0x2000\n").unwrap();
    let err = EnvStorage::open(&config).unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
}

/// Runs `f` on a thread and gives its result, or `None` if it is still running after `bound` (a hang).
fn within<T: Send + 'static>(bound: Duration, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(bound).ok()
}

/// A lock file as an older otter or libubootenv left it: root's, world-readable and -writable.
fn legacy_lock_file(files: &EnvFiles) {
    std::fs::write(&files.lock, b"").unwrap();
    std::fs::set_permissions(&files.lock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    common::let_nobody_traverse(files.dir.path());
}

#[test]
fn a_lock_held_by_another_user_is_env_locked_within_the_bound_and_nothing_is_written() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    let mut backend = UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap();
    backend.set_try_next(Slot::B).unwrap();
    legacy_lock_file(&files);
    let held = HeldLock::take_as_nobody(&files.lock);
    let before = files.snapshot();
    let config = files.config();
    let lock = files.lock.clone();
    let started = Instant::now();
    // A blocking flock would never return while nobody holds the lock.
    let (store, open) = within(Duration::from_secs(60), move || {
        let store = backend.store();
        let open =
            UBootBackend::open_with_lock_wait(&config, UBootScheme::default(), Some(&lock), Duration::from_secs(1));
        (store, open.map(|_| ()))
    })
    .expect("the backend waited for the lock without bound");
    let elapsed = started.elapsed();
    assert!(matches!(store, Err(BootError::EnvLocked { .. })), "{store:?}");
    assert!(store.unwrap_err().to_string().contains("env-locked"));
    assert!(
        matches!(open, Err(BootError::EnvLocked { ref waited, .. }) if *waited == Duration::from_secs(1)),
        "{open:?}"
    );
    assert!(elapsed >= otter_bootloader::uboot::DEFAULT_LOCK_WAIT, "gave up after {elapsed:?}");
    assert_eq!(files.snapshot(), before, "wrote without the lock");
    drop(held);
}

#[test]
fn a_symlink_planted_at_the_lock_path_is_refused_and_its_target_survives() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    // A root-only file the attacker wants truncated, and a lock directory the attacker can write.
    let victim = files.dir.path().join("shadow");
    std::fs::write(&victim, b"root:precious:19000:0:99999:7:::\n").unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let lock_dir = nobody_dir(files.dir.path(), "lock");
    let lock = lock_dir.join("fw_printenv.lock");
    run(&mut as_nobody(&["ln", "-s", victim.to_str().unwrap(), lock.to_str().unwrap()]));
    let err = UBootBackend::open(&files.config(), UBootScheme::default(), Some(&lock)).unwrap_err();
    assert!(matches!(err, BootError::LockFile { .. }), "{err:?}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"root:precious:19000:0:99999:7:::\n");
}

#[test]
fn a_lock_file_planted_by_another_user_or_not_a_file_is_refused() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    let lock_dir = nobody_dir(files.dir.path(), "lock");
    // Owned by the attacker: whoever owns it can hold it (or chmod it open again) whenever they like.
    let lock = lock_dir.join("fw_printenv.lock");
    run(&mut as_nobody(&["touch", lock.to_str().unwrap()]));
    let err = UBootBackend::open(&files.config(), UBootScheme::default(), Some(&lock)).unwrap_err();
    assert!(matches!(err, BootError::LockFile { .. }), "{err:?}");
    // A FIFO: opening it for writing would block until a reader comes.
    let fifo = lock_dir.join("fifo.lock");
    run(&mut as_nobody(&["mkfifo", "-m", "0666", fifo.to_str().unwrap()]));
    let config = files.config();
    let err = within(Duration::from_secs(30), move || {
        UBootBackend::open(&config, UBootScheme::default(), Some(&fifo)).map(|_| ())
    })
    .expect("opening a FIFO at the lock path hung");
    assert!(matches!(err, Err(BootError::LockFile { .. })), "{err:?}");
}

#[test]
fn the_lock_file_is_owner_only_so_other_users_cannot_even_open_it() {
    use std::os::unix::fs::PermissionsExt;
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &old_env(), 0).unwrap();
    UBootBackend::open(&files.config(), UBootScheme::default(), Some(&files.lock)).unwrap();
    assert_eq!(std::fs::metadata(&files.lock).unwrap().permissions().mode() & 0o777, 0o600);
    // A world-writable one from an older otter or libubootenv is made owner-only at the next lock.
    legacy_lock_file(&files);
    UBootBackend::open(&files.config(), UBootScheme::default(), Some(&files.lock)).unwrap();
    assert_eq!(std::fs::metadata(&files.lock).unwrap().permissions().mode() & 0o777, 0o600);
    let out = as_nobody(&[tool("flock", "util-linux").to_str().unwrap(), "-n", files.lock.to_str().unwrap(), "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody could take the lock");
}
