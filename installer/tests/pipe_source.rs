//! Sources that may never deliver: a pipe whose writer goes silent, a FIFO the caller opened read-write (so it
//! never sees EOF), a FIFO path with no writer. Every such install ends: cancelled when asked, `stalled` after
//! the request's stall timeout, and never blocked where a cancel cannot reach it.

mod common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::Fixture;
use otter_installer::source::SharedFd;
use otter_installer::{CancelToken, InstallError, InstallReport, InstallRequest, Phase, Progress, Source};

/// Generous bound on an install that must end (the machine is shared and noisy); the old code never ended.
const ENDS_WITHIN: Duration = Duration::from_secs(60);

/// Runs `req` on a thread; returns a channel with its result and one that reports when it reached `Verifying`
/// (the source is open and being read).
fn spawn_install(
    req: InstallRequest,
    cancel: CancelToken,
) -> (mpsc::Receiver<Result<InstallReport, InstallError>>, mpsc::Receiver<()>) {
    let (done_tx, done) = mpsc::channel();
    let (reading_tx, reading) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let progress = move |p: &Progress| {
            if p.phase == Phase::Verifying {
                let _ = reading_tx.try_send(());
            }
        };
        let _ = done_tx.send(otter_installer::install(&req, &progress, &cancel));
    });
    (done, reading)
}

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// A FIFO opened read-write, as a caller can hand it to `InstallFd`: there is always a writer (itself), so a
/// read never sees EOF, and nobody ever writes.
fn rdwr_fifo(path: &Path) -> OwnedFd {
    fifo(path);
    std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap().into()
}

fn status_flags(fd: &OwnedFd) -> nix::fcntl::OFlag {
    nix::fcntl::OFlag::from_bits_retain(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap())
}

#[test]
fn cancel_ends_an_install_reading_a_silent_read_write_fifo() {
    let f = Fixture::new(1 << 20);
    let (slot, old) = f.old_slot("slot.img");
    let fd = rdwr_fifo(&f.path("fifo"));
    let flags = status_flags(&fd);
    let source = Source::Fd { fd: SharedFd::new(fd.try_clone().unwrap()), name: "a fifo".into() };
    let cancel = CancelToken::new();
    let (done, reading) = spawn_install(f.request(source, &slot), cancel.clone());
    reading.recv_timeout(ENDS_WITHIN).expect("the install opened the source");
    cancel.cancel();
    let result = done.recv_timeout(ENDS_WITHIN).expect("a cancelled install reading a silent FIFO must end");
    assert!(matches!(result, Err(InstallError::Cancelled)), "{result:?}");
    common::assert_slot(&slot, &old, &f.image, common::SlotAfter::Untouched);
    // The caller's descriptor is left as it was handed over (the reader made it non-blocking while it read).
    assert_eq!(status_flags(&fd), flags);
}

#[test]
fn a_pipe_that_goes_silent_fails_as_stalled_after_the_stall_timeout() {
    let f = Fixture::new(2 << 20);
    let (slot, old) = f.old_slot("slot.img");
    let artifact = f.artifact();
    let (reader, mut writer) = std::io::pipe().unwrap();
    // Part of the artifact, then silence with the writer still open: no EOF, no byte.
    let part = artifact.len() * 3 / 5;
    let feeder = std::thread::spawn(move || {
        writer.write_all(&artifact[..part]).unwrap();
        writer
    });
    let mut req = f.request(Source::Fd { fd: SharedFd::new(reader.into()), name: "a pipe".into() }, &slot);
    req.stall_timeout = Duration::from_secs(1);
    let (done, _reading) = spawn_install(req, CancelToken::new());
    let result = done.recv_timeout(ENDS_WITHIN).expect("an install from a silent pipe must end");
    let _writer = feeder.join().unwrap();
    match &result {
        Err(e @ InstallError::Stalled { source_name, seconds }) => {
            assert_eq!(source_name, "a pipe");
            assert_eq!(*seconds, 1);
            assert_eq!(e.code(), "stalled");
        }
        other => panic!("expected stalled, got {other:?}"),
    }
    let bytes = std::fs::read(&slot).unwrap();
    assert_ne!(&bytes[..f.image.len()], &f.image[..], "no image in the slot");
    assert!(bytes == old || otter_installer::slot::is_invalidated(&slot).unwrap(), "slot invalid or untouched");
}

#[test]
fn a_silent_read_write_fifo_fails_as_stalled() {
    let f = Fixture::new(1 << 20);
    let (slot, _old) = f.old_slot("slot.img");
    let fd = rdwr_fifo(&f.path("fifo"));
    let mut req = f.request(Source::Fd { fd: SharedFd::new(fd), name: "a fifo".into() }, &slot);
    req.stall_timeout = Duration::from_millis(500);
    let (done, _reading) = spawn_install(req, CancelToken::new());
    let result = done.recv_timeout(ENDS_WITHIN).expect("an install from a silent FIFO must end");
    assert!(matches!(result, Err(InstallError::Stalled { .. })), "{result:?}");
}

#[test]
fn a_fifo_path_without_a_writer_waits_for_one_only_until_the_stall_timeout() {
    let f = Fixture::new(1 << 20);
    let (slot, old) = f.old_slot("slot.img");
    let path = f.path("fifo");
    fifo(&path);
    let mut req = f.request(Source::File(path), &slot);
    req.stall_timeout = Duration::from_secs(1);
    // Opening a FIFO for reading used to wait in open(2) for a writer, out of reach of cancel and stall timeout.
    let (done, _reading) = spawn_install(req, CancelToken::new());
    let result = done.recv_timeout(ENDS_WITHIN).expect("an install of a FIFO path nobody writes must end");
    assert!(matches!(result, Err(InstallError::Stalled { .. })), "{result:?}");
    common::assert_slot(&slot, &old, &f.image, common::SlotAfter::Untouched);
}

#[test]
fn a_pipe_that_delivers_installs_and_keeps_the_callers_flags() {
    let f = Fixture::new(2 << 20);
    let (slot, _old) = f.old_slot("slot.img");
    let artifact = f.artifact();
    let (reader, mut writer) = std::io::pipe().unwrap();
    let reader: OwnedFd = reader.into();
    let flags = status_flags(&reader);
    let feeder = std::thread::spawn(move || {
        // Slowly, in small pieces: the reader waits in poll() between them.
        for piece in artifact.chunks(256 << 10) {
            writer.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut req = f.request(Source::Fd { fd: SharedFd::new(reader.try_clone().unwrap()), name: "p".into() }, &slot);
    req.stall_timeout = Duration::from_secs(30);
    let (done, _reading) = spawn_install(req, CancelToken::new());
    let result = done.recv_timeout(ENDS_WITHIN).expect("install from a pipe");
    feeder.join().unwrap();
    result.unwrap();
    assert_eq!(&std::fs::read(&slot).unwrap()[..f.image.len()], &f.image[..]);
    assert_eq!(status_flags(&reader), flags);
}
