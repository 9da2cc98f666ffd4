//! Resuming an interrupted install: the second attempt continues after the chunks the first one made durable,
//! fetches only the rest, and trusts nothing the resume record says without reading it back from the slot.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use otter_artifact::manifest::Manifest;
use otter_installer::resume::Record;
use otter_installer::{CancelToken, InstallError, InstallReport, InstallRequest, Progress, Source};
use sha2::Digest as _;

/// 32 chunks of 64 KiB.
const IMAGE_LEN: usize = 2 << 20;

struct Case {
    f: Fixture,
    artifact: Vec<u8>,
    manifest: Manifest,
    slot: PathBuf,
    old: Vec<u8>,
    record: PathBuf,
}

impl Case {
    fn new() -> Self {
        let f = Fixture::new(IMAGE_LEN);
        let artifact = f.artifact();
        let manifest = otter_artifact::builder::read_unverified(&artifact[..]).unwrap().0;
        let (slot, old) = f.old_slot("slot.img");
        let record = f.path("state/resume.json");
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        Self { f, artifact, manifest, slot, old, record }
    }

    fn request(&self, source: Source) -> InstallRequest {
        let mut req = self.f.request(source, &self.slot);
        req.resume_file = Some(self.record.clone());
        // A checkpoint after every chunk, so the interrupted attempt leaves a record however far it got.
        req.checkpoint_interval = Duration::ZERO;
        req.http.initial_backoff = Duration::from_millis(1);
        req
    }

    /// Installs from a copy of the artifact cut after `fraction` of its bytes: fails as truncated, like a
    /// download that died, and returns how many chunks the record claims.
    fn interrupted_file_install(&self, fraction: f64) -> usize {
        let cut = self.f.path("cut.otter");
        std::fs::write(&cut, &self.artifact[..(self.artifact.len() as f64 * fraction) as usize]).unwrap();
        let res = otter_installer::install(&self.request(Source::File(cut)), &|_: &Progress| {}, &CancelToken::new());
        assert!(matches!(res, Err(InstallError::Artifact(otter_artifact::ArtifactError::Truncated { .. }))), "{res:?}");
        assert_slot(&self.slot, &self.old, &self.f.image, SlotAfter::Invalidated);
        let record = Record::load(&self.record).expect("the interrupted install left a resume record");
        record.payloads[0].chunks
    }

    fn install(&self, source: Source) -> InstallReport {
        let report = otter_installer::install(&self.request(source), &|_: &Progress| {}, &CancelToken::new()).unwrap();
        assert_eq!(&std::fs::read(&self.slot).unwrap()[..IMAGE_LEN], &self.f.image[..]);
        assert!(!self.record.exists(), "a finished install removes its resume record");
        report
    }

    fn full_file(&self) -> Source {
        let p = self.f.path("full.otter");
        std::fs::write(&p, &self.artifact).unwrap();
        Source::File(p)
    }

    /// Stored bytes of the first `n` chunks: what a resume does not fetch again.
    fn stored(&self, n: usize) -> u64 {
        self.manifest.payloads[0].chunks[..n].iter().map(|c| c.stored_size).sum()
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_file_install_resumes_after_the_chunks_already_written() {
    let c = Case::new();
    let claimed = c.interrupted_file_install(0.6);
    assert!((8..32).contains(&claimed), "{claimed} chunks recorded");
    let report = c.install(c.full_file());
    assert_eq!(report.chunks_resumed, claimed as u64);
    // Only what follows the resumed chunks was read: the head, then a seek past the skipped stored bytes.
    assert_eq!(report.bytes_received + c.stored(claimed), c.artifact.len() as u64);
    assert_eq!(report.bytes_written, IMAGE_LEN as u64);
}

#[test]
fn an_http_download_that_gave_up_resumes_with_a_range_request() {
    let c = Case::new();
    let faults = Faults { cut_after: Some(c.artifact.len() as u64 * 2 / 3), ..Faults::default() };
    faults.cuts.store(1, Ordering::SeqCst);
    let server = HttpServer::start(c.artifact.clone(), faults);
    let mut req = c.request(Source::Url(server.url.clone()));
    req.http.max_resumes = 0;
    match otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()) {
        Err(InstallError::ConnectionLost { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_slot(&c.slot, &c.old, &c.f.image, SlotAfter::Invalidated);
    let claimed = Record::load(&c.record).unwrap().payloads[0].chunks;
    assert!(claimed >= 8, "{claimed} chunks recorded");

    let report = c.install(Source::Url(server.url.clone()));
    assert_eq!(report.chunks_resumed, claimed as u64);
    assert_eq!(report.bytes_received + c.stored(claimed), c.artifact.len() as u64);
    let requests = server.requests.lock().unwrap().clone();
    // The cut download, the second attempt's first request (manifest), then the ranged request past the chunks.
    assert_eq!(requests.len(), 3, "{requests:?}");
    let skip_to = head_len(&c) + c.stored(claimed);
    assert!(requests[2].contains(&format!("bytes={skip_to}-")), "{skip_to}: {:?}", requests[2]);
    assert!(requests[2].to_ascii_lowercase().contains("if-range: \"otter-test-1\""));
}

/// Bytes of the artifact before the first payload byte (manifest and signature entries, payload header).
fn head_len(c: &Case) -> u64 {
    let len = c.artifact.len() as u64;
    let payload = &c.manifest.payloads[0];
    // The payload entry ends with padding to 512 bytes and the two 512-byte end-of-archive blocks.
    len - 1024 - payload.stored_size.next_multiple_of(512)
}

#[test]
fn a_server_without_ranges_is_read_through_to_the_resume_point() {
    let c = Case::new();
    c.interrupted_file_install(0.5);
    let claimed = Record::load(&c.record).unwrap().payloads[0].chunks;
    let server = HttpServer::start(c.artifact.clone(), Faults { no_ranges: true, ..Faults::default() });
    let report = c.install(Source::Url(server.url.clone()));
    assert_eq!(report.chunks_resumed, claimed as u64);
    // Nothing saved on the wire, but nothing rewritten either.
    assert_eq!(report.bytes_received, c.artifact.len() as u64 + head_len(&c));
}

#[test]
fn a_chunk_damaged_in_the_slot_after_the_record_is_written_again() {
    let c = Case::new();
    let claimed = c.interrupted_file_install(0.6);
    assert!(claimed > 5);
    flip_byte(&c.slot, 5 * CHUNK + 1000);
    let report = c.install(c.full_file());
    assert_eq!(report.chunks_resumed, 5, "resumes from the first chunk that does not verify");
    assert_eq!(report.bytes_received + c.stored(5), c.artifact.len() as u64);
}

#[test]
fn a_tampered_head_in_the_record_means_starting_over() {
    let c = Case::new();
    c.interrupted_file_install(0.6);
    let mut record = Record::load(&c.record).unwrap();
    let mut head = hex::decode(&record.payloads[0].head).unwrap();
    head[100] ^= 1;
    record.payloads[0].head = hex::encode(head);
    record.store(&c.record).unwrap();
    let report = c.install(c.full_file());
    assert_eq!(report.chunks_resumed, 0);
    assert_eq!(report.bytes_received, c.artifact.len() as u64);
}

#[test]
fn a_record_of_another_artifact_or_slot_is_not_used() {
    let c = Case::new();
    c.interrupted_file_install(0.6);
    let genuine = Record::load(&c.record).unwrap();

    let mut other_slot = genuine.clone();
    other_slot.payloads[0].slot = c.f.path("another-slot.img");
    other_slot.store(&c.record).unwrap();
    let report = c.install(c.full_file());
    assert_eq!(report.chunks_resumed, 0);

    // The same slot contents, but the record names another artifact (same image, another version).
    let mut opts = c.f.options();
    opts.version = "2.0.1".into();
    let other = c.f.artifact_with(&opts);
    let other_digest = otter_artifact::Digest::of(&read_entry(&other, 0));
    let mut other_artifact = genuine.clone();
    other_artifact.manifest = other_digest.to_string();
    other_artifact.store(&c.record).unwrap();
    let report = c.install(c.full_file());
    assert_eq!(report.chunks_resumed, 0);
}

fn read_entry(artifact: &[u8], n: usize) -> Vec<u8> {
    entries(artifact).swap_remove(n).1
}

#[test]
fn garbage_in_the_record_file_is_no_record() {
    let c = Case::new();
    c.interrupted_file_install(0.6);
    std::fs::write(&c.record, b"{\"format\":\"otter-resume-1\",\"manifest\":").unwrap();
    let report = c.install(c.full_file());
    assert_eq!(report.chunks_resumed, 0);
}

#[test]
fn the_server_hash_of_the_file_is_still_checked_when_nothing_was_skipped() {
    let c = Case::new();
    let whole: [u8; 32] = sha2::Sha256::digest(&c.artifact).into();
    let mut req = c.request(c.full_file());
    req.expected_sha256 = Some([0u8; 32]);
    match otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()) {
        Err(InstallError::StreamHashMismatch { .. }) => {}
        other => panic!("{other:?}"),
    }
    Record::remove(&c.record).unwrap();
    // A resumed install skipped part of the file, so only the signed chunk hashes apply; it completes.
    c.interrupted_file_install(0.6);
    let mut req = c.request(c.full_file());
    req.expected_sha256 = Some(whole);
    let report = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert!(report.chunks_resumed > 0);
    assert_eq!(&std::fs::read(&c.slot).unwrap()[..IMAGE_LEN], &c.f.image[..]);
}

#[test]
fn without_a_record_file_nothing_is_kept() {
    let c = Case::new();
    let mut req = c.request(c.full_file());
    req.resume_file = None;
    otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert!(std::fs::read_dir(c.record.parent().unwrap()).unwrap().next().is_none());
}

#[test]
fn an_unwritable_record_does_not_stop_the_install() {
    let c = Case::new();
    let mut req = c.request(c.full_file());
    req.resume_file = Some(c.f.path("no-such-dir/resume.json"));
    let report = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert!(report.checkpoint_error.as_deref().is_some_and(|e| e.contains("no-such-dir")), "{report:?}");
    assert_eq!(&std::fs::read(&c.slot).unwrap()[..IMAGE_LEN], &c.f.image[..]);
}
