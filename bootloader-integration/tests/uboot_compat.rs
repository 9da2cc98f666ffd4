//! Byte compatibility of otter's U-Boot environment with the independent implementations:
//! libubootenv's `fw_printenv`/`fw_setenv` (Debian `libubootenv-tool`) and U-Boot's
//! `mkenvimage` (Debian `u-boot-tools`), in both directions.

mod common;

use std::process::Command;

use common::{EnvFiles, Layout, env_pairs, fw_printenv, fw_setenv, fw_setenv_script, pairs, run, tool};
use otter_bootloader::uboot::{EnvStorage, FwEnvConfig, UBootBackend, UBootEnv, UBootScheme, provision};
use otter_bootloader::{BootBackend, Slot, SlotState};

const SIZE: usize = 0x4000;

fn sample() -> UBootEnv {
    UBootEnv::from_pairs([
        ("bootdelay", "2"),
        ("bootcmd", "run otter_boot; reset"),
        ("otter_boot", "load mmc 0:2 ${loadaddr} /boot/vmlinuz && bootz ${loadaddr}"),
        ("BOOT_ORDER", "A B"),
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "3"),
        ("empty", ""),
        ("spaces", "  a  b  "),
        ("utf8", "grüße ✓"),
    ])
    .unwrap()
}

#[test]
fn fw_printenv_reads_what_otter_writes() {
    let layouts = [
        ("single file", Layout::SingleFile),
        ("single at offset", Layout::SingleAtOffset(0x10_0000)),
        ("redundant files", Layout::RedundantFiles),
        ("redundant image", Layout::RedundantImage(0x8000, 0xC000, 0x2_0000)),
    ];
    for (name, layout) in layouts {
        for pad in [0x00, 0xFF] {
            let files = EnvFiles::new(layout_clone(&layout), SIZE);
            provision(&files.config(), &sample(), pad).unwrap();
            assert_eq!(fw_printenv(&files.config_path), env_pairs(&sample()), "{name}, padding {pad:#x}");
        }
    }
}

fn layout_clone(l: &Layout) -> Layout {
    match l {
        Layout::SingleFile => Layout::SingleFile,
        Layout::SingleAtOffset(o) => Layout::SingleAtOffset(*o),
        Layout::RedundantFiles => Layout::RedundantFiles,
        Layout::RedundantImage(a, b, c) => Layout::RedundantImage(*a, *b, *c),
    }
}

fn mkenvimage(args: &[&str], input: &str, size: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("env.txt");
    let out = dir.path().join("env.bin");
    std::fs::write(&txt, input).unwrap();
    run(Command::new(tool("mkenvimage", "u-boot-tools"))
        .args(args)
        .arg("-s")
        .arg(format!("{size:#x}"))
        .arg("-o")
        .arg(&out)
        .arg(&txt));
    std::fs::read(out).unwrap()
}

const MKENV_INPUT: &str = "\
# a comment
bootdelay=2
bootcmd=run otter_boot; reset

BOOT_ORDER=A B
BOOT_A_LEFT=3
BOOT_B_LEFT=3
utf8=grüße ✓
";

fn mkenv_expected() -> UBootEnv {
    UBootEnv::from_pairs([
        ("bootdelay", "2"),
        ("bootcmd", "run otter_boot; reset"),
        ("BOOT_ORDER", "A B"),
        ("BOOT_A_LEFT", "3"),
        ("BOOT_B_LEFT", "3"),
        ("utf8", "grüße ✓"),
    ])
    .unwrap()
}

#[test]
fn otter_reads_mkenvimage_and_writes_the_same_bytes() {
    let expected = mkenv_expected();
    // (mkenvimage flags, redundant, otter flag byte, padding)
    let cases: [(&[&str], bool, Option<u8>, u8); 4] = [
        (&[], false, None, 0xFF),
        (&["-p", "0"], false, None, 0x00),
        (&["-r"], true, Some(1), 0xFF),
        (&["-r", "-p", "0"], true, Some(1), 0x00),
    ];
    for (args, redundant, flags, pad) in cases {
        let image = mkenvimage(args, MKENV_INPUT, SIZE);
        assert_eq!(image.len(), SIZE);
        let decoded = UBootEnv::decode(&image, redundant).unwrap_or_else(|e| panic!("mkenvimage {args:?}: {e}"));
        assert_eq!(decoded.env, expected, "mkenvimage {args:?}");
        assert_eq!(decoded.flags, flags, "mkenvimage {args:?}");
        // Same variables in the same order, same padding: byte-identical image.
        let ours = expected.to_bytes(SIZE, flags, pad).unwrap();
        assert!(ours == image, "otter's image differs from mkenvimage {args:?}");
    }
}

#[test]
fn otter_storage_reads_a_redundant_pair_made_by_mkenvimage() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    let image = mkenvimage(&["-r"], MKENV_INPUT, SIZE);
    std::fs::write(&files.copies[0], &image).unwrap();
    std::fs::write(&files.copies[1], &image).unwrap();
    let loaded = EnvStorage::open(&files.config()).unwrap().read().unwrap();
    assert_eq!(loaded.env, mkenv_expected());
    assert_eq!(loaded.current, 0, "equal flags: copy 0");
    assert_eq!(fw_printenv(&files.config_path), env_pairs(&mkenv_expected()));
}

#[test]
fn otter_reads_what_fw_setenv_writes() {
    for layout in [
        Layout::SingleFile,
        Layout::SingleAtOffset(0x2000),
        Layout::RedundantFiles,
        Layout::RedundantImage(0, 0x4000, 0x8000),
    ] {
        let files = EnvFiles::new(layout, SIZE);
        provision(&files.config(), &sample(), 0).unwrap();
        fw_setenv(&files.config_path, "BOOT_ORDER", "B A");
        fw_setenv_script(&files.config_path, "BOOT_B_LEFT=2\nnew_var=hello world\nbootdelay=\n");
        let storage = EnvStorage::open(&files.config()).unwrap();
        let env = storage.read().unwrap().env;
        assert_eq!(env.get("BOOT_ORDER"), Some("B A"));
        assert_eq!(env.get("BOOT_B_LEFT"), Some("2"));
        assert_eq!(env.get("new_var"), Some("hello world"));
        assert_eq!(env.get("bootdelay"), None, "deleted by the script");
        assert_eq!(env_pairs(&env), fw_printenv(&files.config_path));
    }
}

#[test]
fn alternating_stores_by_otter_and_fw_setenv_in_a_redundant_pair() {
    for layout in [Layout::RedundantFiles, Layout::RedundantImage(0x1000, 0x9000, 0x10000)] {
        let files = EnvFiles::new(layout, SIZE);
        provision(&files.config(), &sample(), 0).unwrap();
        let storage = EnvStorage::open(&files.config()).unwrap();
        // Two stores per round: 140 rounds take the flag byte past 255 → 0 in both
        // implementations.
        let mut wrapped = false;
        for round in 0..140u32 {
            let loaded = storage.read().unwrap();
            let mut env = loaded.env.clone();
            env.set("otter_round", &round.to_string()).unwrap();
            storage.store(&env, &loaded).unwrap();
            let flags: Vec<u8> = storage.read_raw().unwrap().iter().map(|c| c[4]).collect();
            wrapped |= flags.contains(&255) && flags.contains(&0);
            let seen = fw_printenv(&files.config_path);
            assert!(
                seen.contains(&("otter_round".to_owned(), round.to_string())),
                "round {round}: fw_printenv does not see otter's store: {seen:?}"
            );
            fw_setenv(&files.config_path, "tool_round", &round.to_string());
            let env = storage.read().unwrap().env;
            assert_eq!(env.get("tool_round"), Some(round.to_string().as_str()), "round {round}");
            assert_eq!(env.get("otter_round"), Some(round.to_string().as_str()), "round {round}");
            let flags: Vec<u8> = storage.read_raw().unwrap().iter().map(|c| c[4]).collect();
            wrapped |= flags.contains(&255) && flags.contains(&0);
        }
        assert!(wrapped, "the flag byte never wrapped around");
    }
}

#[test]
fn flag_wraparound_is_read_alike() {
    // Copy 0 has flag 255, copy 1 has flag 0: copy 1 is newer in both implementations.
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    let old = UBootEnv::from_pairs([("which", "old")]).unwrap();
    let new = UBootEnv::from_pairs([("which", "new")]).unwrap();
    std::fs::write(&files.copies[0], old.to_bytes(SIZE, Some(255), 0).unwrap()).unwrap();
    std::fs::write(&files.copies[1], new.to_bytes(SIZE, Some(0), 0).unwrap()).unwrap();
    assert_eq!(fw_printenv(&files.config_path), pairs(&[("which", "new")]));
    let storage = EnvStorage::open(&files.config()).unwrap();
    let loaded = storage.read().unwrap();
    assert_eq!((loaded.current, loaded.flags), (1, Some(0)));
    assert_eq!(loaded.env.get("which"), Some("new"));

    // Otter's next store goes to copy 0 with flag 1; fw_printenv follows.
    let newer = UBootEnv::from_pairs([("which", "newer")]).unwrap();
    storage.store(&newer, &loaded).unwrap();
    assert_eq!(std::fs::read(&files.copies[0]).unwrap()[4], 1);
    assert_eq!(fw_printenv(&files.config_path), pairs(&[("which", "newer")]));

    // The other way round: 254 → 255 written by otter, then fw_setenv wraps to 0.
    std::fs::write(&files.copies[0], old.to_bytes(SIZE, Some(254), 0).unwrap()).unwrap();
    std::fs::write(&files.copies[1], old.to_bytes(SIZE, Some(253), 0).unwrap()).unwrap();
    let loaded = storage.read().unwrap();
    storage.store(&new, &loaded).unwrap();
    assert_eq!(std::fs::read(&files.copies[1]).unwrap()[4], 255);
    fw_setenv(&files.config_path, "which", "tool");
    assert_eq!(std::fs::read(&files.copies[0]).unwrap()[4], 0, "fw_setenv wrapped");
    let loaded = storage.read().unwrap();
    assert_eq!((loaded.current, loaded.env.get("which")), (0, Some("tool")));
}

#[test]
fn negative_offsets_count_from_the_end() {
    // libubootenv 0.3 rejects negative offsets on regular files, so otter writes through a
    // negative config and fw_printenv reads through the equivalent positive one.
    let len = 0x2_0000u64;
    let files = EnvFiles::new(Layout::RedundantImage(-0x8000, -0x4000, len), SIZE);
    let config = files.config();
    assert_eq!(config.devices[0].offset, -0x8000);
    let storage = EnvStorage::open(&config).unwrap();
    let offsets: Vec<u64> = storage.copies().iter().map(|c| c.offset).collect();
    assert_eq!(offsets, vec![len - 0x8000, len - 0x4000]);
    provision(&config, &sample(), 0).unwrap();
    let positive = files.dir.path().join("positive.config");
    std::fs::write(
        &positive,
        format!(
            "{img} {:#x} {SIZE:#x}\n{img} {:#x} {SIZE:#x}\n",
            len - 0x8000,
            len - 0x4000,
            img = files.copies[0].display()
        ),
    )
    .unwrap();
    assert_eq!(fw_printenv(&positive), env_pairs(&sample()));
    // The bytes before the env area are untouched.
    let img = std::fs::read(&files.copies[0]).unwrap();
    assert!(img[..(len - 0x8000) as usize].iter().all(|&b| b == 0x5A));
}

#[test]
fn backend_store_is_seen_by_fw_printenv_and_fw_setenv_by_backend() {
    for layout in [Layout::SingleFile, Layout::RedundantFiles] {
        let files = EnvFiles::new(layout, SIZE);
        provision(&files.config(), &sample(), 0).unwrap();
        let mut backend =
            UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap();
        backend.set_try_next(Slot::B).unwrap();
        backend.store().unwrap();
        let seen = fw_printenv(&files.config_path);
        for (k, v) in [("BOOT_ORDER", "B A"), ("BOOT_B_LEFT", "3"), ("OTTER_TRIAL", "B"), ("bootdelay", "2")] {
            assert!(seen.contains(&(k.to_owned(), v.to_owned())), "{k}={v} missing in {seen:?}");
        }
        // The boot script took two attempts (as U-Boot would, written by the reference tool).
        fw_setenv(&files.config_path, "BOOT_B_LEFT", "1");
        backend.reload().unwrap();
        assert_eq!(backend.slot_state(Slot::B), SlotState::Trying { attempts_left: 1 });
        backend.mark_good(Slot::B).unwrap();
        backend.store().unwrap();
        let seen = fw_printenv(&files.config_path);
        assert!(seen.contains(&("BOOT_B_LEFT".to_owned(), "3".to_owned())));
        assert!(!seen.iter().any(|(k, _)| k == "OTTER_TRIAL"));
    }
}

#[test]
fn store_keeps_variables_fw_setenv_changed_since_the_last_read() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &sample(), 0).unwrap();
    let mut backend = UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap();
    backend.set_try_next(Slot::B).unwrap();
    // Someone else changes an unrelated variable between otter's read and store.
    fw_setenv(&files.config_path, "bootdelay", "7");
    backend.store().unwrap();
    let seen = fw_printenv(&files.config_path);
    assert!(seen.contains(&("bootdelay".to_owned(), "7".to_owned())), "{seen:?}");
    assert!(seen.contains(&("BOOT_ORDER".to_owned(), "B A".to_owned())), "{seen:?}");
    assert_eq!(backend.env().get("bootdelay"), Some("7"));
}

#[test]
fn config_from_disk_matches_the_tools() {
    // The same fw_env.config drives otter and the tools, including hex sizes without 0x and
    // libubootenv's extra columns.
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    let text = format!(
        "# comment\n\n{} 0x0 4000 0x4000 1 0\n{} 0 4000 4000 1 0\n",
        files.copies[0].display(),
        files.copies[1].display()
    );
    std::fs::write(&files.config_path, text).unwrap();
    let config = FwEnvConfig::load(&files.config_path).unwrap();
    assert_eq!(config.env_size(), 0x4000);
    provision(&config, &sample(), 0xFF).unwrap();
    assert_eq!(fw_printenv(&files.config_path), env_pairs(&sample()));
}

#[test]
fn a_symlinked_env_file_is_written_through_so_u_boot_sees_the_switch() {
    // /boot/uboot.env -> firmware/uboot.env: U-Boot reads the file on the FAT partition, fw_setenv writes through
    // the link; otter must too, and leave the link in place.
    let files = EnvFiles::new(Layout::SingleFile, SIZE);
    let dir = files.dir.path();
    std::fs::create_dir(dir.join("firmware")).unwrap();
    std::fs::rename(&files.copies[0], dir.join("firmware/uboot.env")).unwrap();
    std::os::unix::fs::symlink("firmware/uboot.env", &files.copies[0]).unwrap();
    provision(&files.config(), &sample(), 0).unwrap();
    // What the bootloader reads: the target itself.
    let target_config = dir.join("target.config");
    std::fs::write(&target_config, format!("{} 0x0 {SIZE:#x}\n", dir.join("firmware/uboot.env").display())).unwrap();

    let mut backend = UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap();
    backend.set_try_next(Slot::B).unwrap();
    backend.store().unwrap();
    assert!(std::fs::symlink_metadata(&files.copies[0]).unwrap().file_type().is_symlink(), "the link was replaced");
    let seen = fw_printenv(&target_config);
    assert!(seen.contains(&("BOOT_ORDER".to_owned(), "B A".to_owned())), "the target never saw the switch: {seen:?}");
    assert_eq!(fw_printenv(&files.config_path), seen);
    // And fw_setenv through the link is seen by otter, both ways still one file.
    fw_setenv(&files.config_path, "bootdelay", "5");
    backend.reload().unwrap();
    assert_eq!(backend.env().get("bootdelay"), Some("5"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("firmware")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["uboot.env"]);
}

#[test]
fn a_higher_floor_stored_by_another_writer_meanwhile_is_never_lowered() {
    let files = EnvFiles::new(Layout::RedundantFiles, SIZE);
    provision(&files.config(), &sample(), 0).unwrap();
    let mut otter = UBootBackend::open(&files.config(), UBootScheme::default(), Some(files.lock.as_path())).unwrap();
    otter.raise_security_version(5).unwrap();
    // Between otter's read and its store, another writer raises the floor further.
    fw_setenv(&files.config_path, otter_bootloader::SECURITY_VERSION_VAR, "9");
    otter.store().unwrap();
    let env: std::collections::BTreeMap<_, _> = fw_printenv(&files.config_path).into_iter().collect();
    assert_eq!(env.get(otter_bootloader::SECURITY_VERSION_VAR).map(String::as_str), Some("9"));
    assert_eq!(otter.security_version(), Some(9));
}
