//! Delta artifacts (format 1.2) through the installer: the running slot is the base, every region of it is checked
//! before anything is written, and no chunk reaches the target unverified.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use otter_artifact::ArtifactError;
use otter_artifact::builder::{self, DeltaBase, ImageSource};
use otter_artifact::testing::noise;
use otter_installer::{CancelToken, InstallError, InstallReport, Progress, Source};

/// Not quite 48 chunks of 64 KiB: the last base chunk ends off any 4 KiB boundary, as direct reads must handle.
const BASE_LEN: usize = 48 * CHUNK as usize - 1000;

struct Delta {
    f: Fixture,
    base: Vec<u8>,
    /// The device's running slot: the base image and what follows it in the partition.
    running: PathBuf,
    artifact: Vec<u8>,
    /// Size of the full artifact of the same new image.
    full_len: usize,
}

/// The fixture's image becomes the new image: the base with 3000 bytes inserted at 1 MiB (everything after moves)
/// and 16 KiB rewritten at 2 MiB.
fn delta() -> Delta {
    let mut f = Fixture::new(0);
    let base = noise(BASE_LEN, 1);
    let mut new = base[..1 << 20].to_vec();
    new.extend(noise(3000, 2));
    new.extend_from_slice(&base[1 << 20..]);
    new[2 << 20..(2 << 20) + (16 << 10)].copy_from_slice(&noise(16 << 10, 3));
    f.image = new;
    let full_len = f.artifact().len();
    let base_img = f.path("base.img");
    std::fs::write(&base_img, &base).unwrap();
    let running = f.path("running.img");
    std::fs::write(&running, [&base[..], &noise(8192, 4)].concat()).unwrap();
    let src = ImageSource {
        name: "rootfs".into(),
        slot_class: "rootfs".into(),
        path: f.path("image.bin"),
        base: Some(DeltaBase { path: base_img, window: 256 << 10 }),
    };
    let mut artifact = Vec::new();
    builder::create(&f.options(), &[src], std::slice::from_ref(&f.key), &mut artifact).unwrap();
    Delta { f, base, running, artifact, full_len }
}

impl Delta {
    fn install(&self, artifact: &[u8], base: Option<&Path>) -> (Result<InstallReport, InstallError>, PathBuf, Vec<u8>) {
        let a = self.f.path("d.otter");
        std::fs::write(&a, artifact).unwrap();
        let (slot, old) = self.f.old_slot("slot.img");
        let mut req = self.f.request(Source::File(a), &slot);
        req.targets[0].base = base.map(Path::to_owned);
        (otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()), slot, old)
    }
}

#[test]
fn a_delta_installs_the_new_image_from_the_running_slot_for_a_fraction_of_the_download() {
    let d = delta();
    let (report, slot, _) = d.install(&d.artifact, Some(&d.running));
    let report = report.unwrap();
    let bytes = std::fs::read(&slot).unwrap();
    assert!(bytes[..d.f.image.len()] == d.f.image[..], "the slot holds the new image");
    assert_eq!(report.bytes_received, d.artifact.len() as u64);
    // 3000 + 16 KiB of new noise in a 3 MiB image whose full artifact cannot compress it.
    assert!(d.artifact.len() * 20 < d.full_len, "delta {} bytes, full {}", d.artifact.len(), d.full_len);
    assert!(std::fs::read(&d.running).unwrap()[..BASE_LEN] == d.base[..], "the base is only read");
}

#[test]
fn a_delta_installed_again_rewrites_nothing_the_slot_already_holds() {
    let d = delta();
    let a = d.f.path("d.otter");
    std::fs::write(&a, &d.artifact).unwrap();
    let slot = d.f.path("slot.img");
    let mut req = d.f.request(Source::File(a), &slot);
    req.targets[0].base = Some(d.running.clone());
    let first = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert_eq!(first.chunks_skipped, 0, "a fresh slot holds nothing of the image");
    let again = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert_eq!(again.chunks_skipped, first.manifest.payloads[0].chunks.len() as u64, "every chunk is in place");
    assert!(std::fs::read(&slot).unwrap() == d.f.image, "the slot holds the new image");
}

#[test]
fn a_device_not_running_the_base_refuses_before_writing_anything() {
    let d = delta();
    let mut other = std::fs::read(&d.running).unwrap();
    other[(40 << 16) + 5] ^= 0x20;
    let other_path = d.f.path("other.img");
    std::fs::write(&other_path, &other).unwrap();
    let (res, slot, old) = d.install(&d.artifact, Some(&other_path));
    match res {
        Err(e @ InstallError::Artifact(ArtifactError::DeltaBaseMismatch { offset, .. })) => {
            assert_eq!(offset, 40 * CHUNK);
            assert_eq!(e.code(), "delta-base-mismatch");
            assert!(e.is_delta_for_another_base(), "the full artifact may be tried instead");
            assert!(!e.is_artifact_fault(), "not blacklisted: the delta applies again once the device runs its base");
        }
        other => panic!("expected delta-base-mismatch, got {other:?}"),
    }
    assert_slot(&slot, &old, &d.f.image, SlotAfter::Untouched);
    // A running slot shorter than the base cannot be it either.
    let short = d.f.path("short.img");
    std::fs::write(&short, &d.base[..BASE_LEN - 1]).unwrap();
    let (res, slot, old) = d.install(&d.artifact, Some(&short));
    assert!(matches!(res, Err(InstallError::Artifact(ArtifactError::DeltaBaseMismatch { .. }))), "{res:?}");
    assert_slot(&slot, &old, &d.f.image, SlotAfter::Untouched);
}

#[test]
fn a_delta_needs_a_base_that_is_not_its_target() {
    let d = delta();
    let (res, slot, old) = d.install(&d.artifact, None);
    assert!(matches!(res, Err(InstallError::Artifact(ArtifactError::DeltaNeedsBase { .. }))), "{res:?}");
    assert_slot(&slot, &old, &d.f.image, SlotAfter::Untouched);

    let a = d.f.path("d.otter");
    std::fs::write(&a, &d.artifact).unwrap();
    let mut req = d.f.request(Source::File(a), &d.running);
    req.targets[0].base = Some(d.running.clone());
    let before = std::fs::read(&d.running).unwrap();
    let res = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new());
    assert!(matches!(res, Err(InstallError::BaseIsTarget { .. })), "{res:?}");
    assert!(std::fs::read(&d.running).unwrap() == before, "the running slot is untouched");
}

#[test]
fn a_patch_whose_output_is_not_the_signed_chunk_is_never_written() {
    let d = delta();
    // Re-sign a manifest that claims another decoded hash for chunk 20 (a patch over the shifted region): the
    // frame and its reference are genuine, but what they decode to is not what the manifest signs.
    let mut e = entries(&d.artifact);
    let mut m: serde_json::Value = serde_json::from_slice(&e[0].1).unwrap();
    assert!(m["payloads"][0]["chunks"][20]["reference"].is_object());
    m["payloads"][0]["chunks"][20]["sha256"] = otter_artifact::Digest::of(b"other").to_string().into();
    e[0].1 = serde_json::to_vec_pretty(&m).unwrap();
    e[1].1 = d.f.sign(&e[0].1);
    let (res, slot, old) = d.install(&assemble(&e), Some(&d.running));
    assert!(matches!(res, Err(InstallError::Artifact(ArtifactError::ChunkHashMismatch { chunk: 20, .. }))), "{res:?}");
    let bytes = std::fs::read(&slot).unwrap();
    let chunk = 20 * CHUNK as usize..21 * CHUNK as usize;
    assert!(bytes[chunk.clone()] == old[chunk], "chunk 20's decoded bytes never reached the slot");
    assert_slot(&slot, &old, &d.f.image, SlotAfter::Invalidated);
}

#[test]
fn a_delta_download_cut_twice_resumes_without_fetching_much_more_than_the_delta() {
    let d = delta();
    let faults = Faults { cut_after: Some(d.artifact.len() as u64 / 3), ..Faults::default() };
    faults.cuts.store(2, Ordering::SeqCst);
    let server = HttpServer::start(d.artifact.clone(), faults);
    let slot = d.f.path("slot.img");
    let mut req = d.f.request(Source::Url(server.url.clone()), &slot);
    req.targets[0].base = Some(d.running.clone());
    req.http.initial_backoff = Duration::from_millis(10);
    otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert!(std::fs::read(&slot).unwrap() == d.f.image, "the slot holds the new image");
    assert_eq!(server.requests.lock().unwrap().len(), 3, "one request and two resumes");
    let sent = server.body_bytes_sent.load(Ordering::SeqCst);
    assert!(sent <= d.artifact.len() as u64 * 105 / 100, "{sent} bytes sent for a {}-byte delta", d.artifact.len());
}

#[test]
fn a_delta_install_cut_off_resumes_after_the_chunks_it_made_durable() {
    let d = delta();
    let slot = d.f.path("slot.img");
    let record = d.f.path("resume.json");
    let request = |artifact: &[u8]| {
        let a = d.f.path("d.otter");
        std::fs::write(&a, artifact).unwrap();
        let mut req = d.f.request(Source::File(a), &slot);
        req.targets[0].base = Some(d.running.clone());
        req.resume_file = Some(record.clone());
        req.checkpoint_interval = Duration::ZERO;
        req
    };
    // The power fails (here: the stream ends) two thirds through the artifact.
    let cut = &d.artifact[..d.artifact.len() * 2 / 3];
    let res = otter_installer::install(&request(cut), &|_: &Progress| {}, &CancelToken::new());
    assert!(matches!(res, Err(InstallError::Artifact(ArtifactError::Truncated { .. }))), "{res:?}");
    let claimed = otter_installer::resume::Record::load(&record).expect("a resume record").payloads[0].chunks;
    assert!(claimed > 10, "the first attempt made {claimed} chunks durable");
    let report = otter_installer::install(&request(&d.artifact), &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert_eq!(report.chunks_resumed, claimed as u64, "the chunks already written are read back, not decoded again");
    assert!(std::fs::read(&slot).unwrap() == d.f.image, "the slot holds the new image");
    assert!(!record.exists(), "a finished install removes its record");
}
