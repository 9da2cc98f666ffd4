//! Installer behaviour on valid and hostile artifacts: every failure is a specific typed error and leaves the slot
//! either untouched (failure before the first payload byte) or invalidated (failure while writing).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use otter_artifact::ArtifactError;
use otter_artifact::manifest::{MANIFEST_ENTRY, SIGNATURE_ENTRY};
use otter_installer::{CancelToken, InstallError, Phase, Progress, Source};

const IMAGE_LEN: usize = 600_000;

fn artifact_error(r: Result<otter_installer::InstallReport, InstallError>) -> ArtifactError {
    match r {
        Err(InstallError::Artifact(e)) => e,
        other => panic!("expected an artifact error, got {other:?}"),
    }
}

#[test]
fn valid_round_trip() {
    let f = Fixture::new(IMAGE_LEN);
    let artifact = f.artifact();
    let a = f.path("a.otter");
    std::fs::write(&a, &artifact).unwrap();
    let slot = f.path("empty-slot.img");
    let phases = std::sync::Mutex::new(Vec::new());
    let progress = |p: &Progress| phases.lock().unwrap().push(p.phase);
    let req = f.request(Source::File(a), &slot);
    let report = otter_installer::install(&req, &progress, &CancelToken::new()).unwrap();
    assert_eq!(std::fs::read(&slot).unwrap(), f.image);
    assert_eq!(report.bytes_written, IMAGE_LEN as u64);
    assert_eq!(report.bytes_received, artifact.len() as u64);
    assert_eq!(report.manifest.version, "2.0.0");
    let phases = phases.into_inner().unwrap();
    assert_eq!(phases.first(), Some(&Phase::Connecting));
    assert_eq!(phases.last(), Some(&Phase::Done));
    assert!(phases.contains(&Phase::Verifying) && phases.contains(&Phase::Syncing));
}

#[test]
fn installs_over_a_larger_old_image_and_keeps_the_slot_size() {
    let f = Fixture::new(IMAGE_LEN);
    let (res, slot, old) = f.install_bytes(&f.artifact());
    res.unwrap();
    let bytes = std::fs::read(&slot).unwrap();
    assert_eq!(bytes.len(), old.len());
    assert_eq!(&bytes[..IMAGE_LEN], &f.image[..]);
}

#[test]
fn uncompressed_payload_round_trip() {
    let f = Fixture::new(IMAGE_LEN);
    let mut o = f.options();
    o.compression = otter_artifact::Compression::None;
    let (res, slot, _) = f.install_bytes(&f.artifact_with(&o));
    res.unwrap();
    assert_eq!(&std::fs::read(&slot).unwrap()[..IMAGE_LEN], &f.image[..]);
}

#[test]
fn skip_identical_rewrites_nothing_the_second_time() {
    let f = Fixture::new(IMAGE_LEN);
    let a = f.path("a.otter");
    std::fs::write(&a, f.artifact()).unwrap();
    let slot = f.path("slot.img");
    let mut req = f.request(Source::File(a), &slot);
    req.skip_identical = true;
    let first = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert_eq!(first.chunks_skipped, 0);
    let second = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    // Every chunk but the first (whose head was zeroed while installing) is already there.
    let chunks = IMAGE_LEN.div_ceil(CHUNK as usize) as u64;
    assert_eq!(second.chunks_skipped, chunks);
    assert_eq!(std::fs::read(&slot).unwrap(), f.image);
}

#[test]
fn bad_signature() {
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    let text = String::from_utf8(e[1].1.clone()).unwrap();
    // Flip one hex digit of the signature itself.
    let pos = text.len() - 2;
    let flipped = if &text[pos..pos + 1] == "0" { "1" } else { "0" };
    let text = format!("{}{}{}", &text[..pos], flipped, &text[pos + 1..]);
    e[1].1 = text.into_bytes();
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    assert!(matches!(artifact_error(res), ArtifactError::BadSignature { .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn unknown_key() {
    let f = Fixture::new(IMAGE_LEN);
    let other = Fixture::new(IMAGE_LEN);
    let (res, slot, old) = f.install_bytes(&other.artifact());
    assert!(matches!(artifact_error(res), ArtifactError::UnknownKey { .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn manifest_edited_after_signing() {
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    let m = String::from_utf8(e[0].1.clone()).unwrap();
    e[0].1 = m.replace("\"security_version\": 5", "\"security_version\": 9").into_bytes();
    assert_ne!(e[0].1, m.as_bytes());
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    assert!(matches!(artifact_error(res), ArtifactError::BadSignature { .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn payload_byte_flipped() {
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    // A byte in the third chunk's frame: the first two chunks are written, then the third fails its hash.
    let m = parse_manifest(&e[0].1);
    let at = (m.payloads[0].chunks[0].stored_size + m.payloads[0].chunks[1].stored_size + 40) as usize;
    e[2].1[at] ^= 0x01;
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    match artifact_error(res) {
        ArtifactError::ChunkHashMismatch { chunk, .. } | ArtifactError::Decompress { chunk, .. } => {
            assert_eq!(chunk, 2)
        }
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn truncated_at_manifest_signature_and_payload() {
    let f = Fixture::new(IMAGE_LEN);
    let artifact = f.artifact();
    let e = entries(&artifact);
    let manifest_len = e[0].1.len();
    let sig_start = 512 + manifest_len.div_ceil(512) * 512;
    let cases = [
        (300, SlotAfter::Untouched),                     // inside the manifest's header
        (512 + manifest_len / 2, SlotAfter::Untouched),  // inside the manifest
        (sig_start + 512 + 20, SlotAfter::Untouched),    // inside the signature block
        (artifact.len() / 2, SlotAfter::Invalidated),    // mid-payload
        (artifact.len() - 1024, SlotAfter::Invalidated), // end-of-archive marker missing
    ];
    for (cut, expect) in cases {
        let (res, slot, old) = f.install_bytes(&artifact[..cut]);
        assert!(matches!(artifact_error(res), ArtifactError::Truncated { .. }), "cut at {cut}");
        assert_slot(&slot, &old, &f.image, expect);
    }
}

#[test]
fn entries_out_of_order() {
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    e.swap(0, 1);
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    match artifact_error(res) {
        ArtifactError::UnexpectedEntry { found, .. } => assert_eq!(found, SIGNATURE_ENTRY),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn extra_entry() {
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    e.push(("evil.sh".into(), b"#!/bin/sh\n".to_vec()));
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    match artifact_error(res) {
        ArtifactError::UnexpectedEntry { found, .. } => assert_eq!(found, "evil.sh"),
        other => panic!("{other:?}"),
    }
    // The whole image was written before the extra entry showed up, but the head never was.
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn extra_entry_between_signature_and_payload() {
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    e.insert(2, ("evil.sh".into(), b"x".to_vec()));
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    assert!(matches!(artifact_error(res), ArtifactError::UnexpectedEntry { .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn missing_entry() {
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    e.pop();
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    match artifact_error(res) {
        ArtifactError::UnexpectedEntry { found, .. } => assert_eq!(found, "end of archive"),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
    let mut e = entries(&f.artifact());
    e.remove(1);
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    assert!(matches!(artifact_error(res), ArtifactError::UnexpectedEntry { .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn dotdot_name() {
    let f = Fixture::new(IMAGE_LEN);
    let artifact = f.artifact();
    let payload = entries(&artifact).remove(2).1;
    let header = raw_header("../../etc/passwd", payload.len() as u64, b'0', "");
    let (res, slot, old) = f.install_bytes(&signed_head_then(&artifact, &header, &payload));
    match artifact_error(res) {
        ArtifactError::BadEntryName { name, .. } => assert_eq!(name, "../../etc/passwd"),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn symlink_entry() {
    let f = Fixture::new(IMAGE_LEN);
    let header = raw_header("rootfs.img.zst", 0, b'2', "/dev/mmcblk0");
    let (res, slot, old) = f.install_bytes(&signed_head_then(&f.artifact(), &header, &[]));
    match artifact_error(res) {
        ArtifactError::NotARegularFile { kind, .. } => assert_eq!(kind, "symbolic link"),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn symlink_in_place_of_the_manifest() {
    let f = Fixture::new(IMAGE_LEN);
    let mut raw = raw_header(MANIFEST_ENTRY, 0, b'2', "/etc/shadow").to_vec();
    raw.extend_from_slice(&[0u8; 1024]);
    let (res, slot, old) = f.install_bytes(&raw);
    assert!(matches!(artifact_error(res), ArtifactError::NotARegularFile { .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn payload_larger_than_declared() {
    // A validly signed manifest whose payload entry carries more bytes than declared.
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&f.artifact());
    e[2].1.extend_from_slice(&[0u8; 4096]);
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    match artifact_error(res) {
        ArtifactError::StoredSizeMismatch { declared, actual, .. } => assert_eq!(actual, declared + 4096),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

/// One zstd frame of `data` with a content checksum, as signed frames must have.
fn compress_checked(data: &[u8], level: i32) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(level).unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true)).unwrap();
    c.compress(data).unwrap()
}

/// The fixture's artifact with its first chunk's frame replaced by `frame`, the manifest's sizes adjusted and
/// re-signed; with `sign_frame` the manifest also carries the frame's stored hash (a signed bad frame), else the
/// original chunk's.
fn replace_first_chunk(f: &Fixture, frame: Vec<u8>, sign_frame: bool) -> Vec<u8> {
    let mut e = entries(&f.artifact());
    let mut m = parse_manifest(&e[0].1);
    let p = &mut m.payloads[0];
    let old_first = p.chunks[0].stored_size as usize;
    p.stored_size = p.stored_size - old_first as u64 + frame.len() as u64;
    p.chunks[0].stored_size = frame.len() as u64;
    if sign_frame {
        p.chunks[0].stored_sha256 = Some(otter_artifact::Digest::of(&frame));
    }
    let mut data = frame;
    data.extend_from_slice(&e[2].1[old_first..]);
    e[2].1 = data;
    e[0].1 = m.to_bytes();
    e[1].1 = f.sign(&e[0].1);
    assemble(&e)
}

#[test]
fn chunk_decoding_to_more_than_declared() {
    // The signed manifest says the first chunk is CHUNK bytes; its frame decodes to twice that.
    let f = Fixture::new(IMAGE_LEN);
    let big = compress_checked(&vec![7u8; 2 * CHUNK as usize], 3);
    // Signed as it is: the decoder's own guard must catch it.
    let (res, slot, old) = f.install_bytes(&replace_first_chunk(&f, big, true));
    assert!(matches!(artifact_error(res), ArtifactError::ChunkSizeMismatch { chunk: 0, .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn zstd_bomb() {
    // A few hundred stored bytes that decode to 1 GiB, in a validly signed artifact that declares one small chunk.
    let f = Fixture::new(IMAGE_LEN);
    let zeros = vec![0u8; 1 << 30];
    let bomb = compress_checked(&zeros, 19);
    drop(zeros);
    assert!(bomb.len() < 64 << 10, "bomb is {} bytes", bomb.len());
    let mut e = entries(&f.artifact());
    let mut m = parse_manifest(&e[0].1);
    let p = &mut m.payloads[0];
    p.size = CHUNK;
    p.chunks.truncate(1);
    p.chunks[0].stored_size = bomb.len() as u64;
    p.chunks[0].stored_sha256 = Some(otter_artifact::Digest::of(&bomb));
    p.stored_size = bomb.len() as u64;
    e[2].1 = bomb;
    e[0].1 = m.to_bytes();
    e[1].1 = f.sign(&e[0].1);
    let (res, slot, old) = f.install_bytes(&assemble(&e));
    // The frame header announces 1 GiB (content size or window), caught before any decoding.
    match artifact_error(res) {
        ArtifactError::ChunkSizeMismatch { .. } | ArtifactError::WindowTooLarge { .. } => {}
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn an_unsigned_frame_never_reaches_the_decoder() {
    // The same bomb spliced in without a matching signed stored hash: rejected on its hash, before the decoder
    // parses a byte of it (the decoder's own checks would report a size or window error instead).
    let f = Fixture::new(IMAGE_LEN);
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
    let (res, slot, old) = f.install_bytes(&replace_first_chunk(&f, bomb, false));
    assert!(matches!(artifact_error(res), ArtifactError::ChunkHashMismatch { chunk: 0, .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn format_1_0_artifacts_without_stored_hashes_are_checked_after_decoding() {
    let f = Fixture::new(IMAGE_LEN);
    let strip = |tamper: bool| {
        let mut e = entries(&f.artifact());
        let mut m = parse_manifest(&e[0].1);
        m.format_version = "1.0".into();
        for c in &mut m.payloads[0].chunks {
            c.stored_sha256 = None;
        }
        if tamper {
            m.payloads[0].chunks[3].sha256 = otter_artifact::Digest::of(b"something else");
        }
        e[0].1 = m.to_bytes();
        e[1].1 = f.sign(&e[0].1);
        assemble(&e)
    };
    let (res, slot, _) = f.install_bytes(&strip(false));
    res.unwrap();
    assert_eq!(&std::fs::read(&slot).unwrap()[..IMAGE_LEN], &f.image[..]);
    let (res, slot, old) = f.install_bytes(&strip(true));
    assert!(matches!(artifact_error(res), ArtifactError::ChunkHashMismatch { chunk: 3, .. }));
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn window_larger_than_the_device_allows() {
    let f = Fixture::new(IMAGE_LEN);
    let a = f.path("a.otter");
    std::fs::write(&a, f.artifact()).unwrap();
    let (slot, old) = f.old_slot("slot.img");
    let mut req = f.request(Source::File(a), &slot);
    req.policy.limits.max_window = 16 << 10;
    let res = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new());
    match artifact_error(res) {
        ArtifactError::WindowTooLarge { limit, .. } => assert_eq!(limit, 16 << 10),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn incompatible_device_type() {
    let f = Fixture::new(IMAGE_LEN);
    let mut o = f.options();
    o.compatible = vec!["other-board".into()];
    let (res, slot, old) = f.install_bytes(&f.artifact_with(&o));
    match artifact_error(res) {
        ArtifactError::Incompatible { device, compatible } => {
            assert_eq!(device, DEVICE);
            assert_eq!(compatible, vec!["other-board".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn security_version_below_minimum() {
    let f = Fixture::new(IMAGE_LEN);
    let a = f.path("a.otter");
    std::fs::write(&a, f.artifact()).unwrap();
    let (slot, old) = f.old_slot("slot.img");
    let mut req = f.request(Source::File(a), &slot);
    req.policy.min_security_version = 6;
    let res = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new());
    match artifact_error(res) {
        ArtifactError::SecurityVersionTooLow { found, minimum } => {
            assert_eq!((found, minimum), (5, 6))
        }
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn slot_smaller_than_the_image() {
    let f = Fixture::new(IMAGE_LEN);
    let a = f.path("a.otter");
    std::fs::write(&a, f.artifact()).unwrap();
    let slot = f.path("small.img");
    let old = image_bytes(IMAGE_LEN / 2, 3);
    std::fs::write(&slot, &old).unwrap();
    let mut req = f.request(Source::File(a), &slot);
    req.targets[0].max_size = Some(old.len() as u64);
    match otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()) {
        Err(InstallError::SlotTooSmall { capacity, needed, .. }) => {
            assert_eq!((capacity, needed), (old.len() as u64, IMAGE_LEN as u64))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&slot).unwrap(), old);
}

#[test]
fn no_target_for_the_slot_class() {
    let f = Fixture::new(IMAGE_LEN);
    let a = f.path("a.otter");
    std::fs::write(&a, f.artifact()).unwrap();
    let (slot, old) = f.old_slot("slot.img");
    let mut req = f.request(Source::File(a), &slot);
    req.targets[0].slot_class = "appfs".into();
    assert!(matches!(
        otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()),
        Err(InstallError::NoTarget { .. })
    ));
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn missing_source_file() {
    let f = Fixture::new(1000);
    let (slot, old) = f.old_slot("slot.img");
    let req = f.request(Source::File(f.path("nope.otter")), &slot);
    assert!(matches!(
        otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()),
        Err(InstallError::Source { .. })
    ));
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn http_resumes_after_the_connection_is_cut() {
    let f = Fixture::new(IMAGE_LEN);
    let artifact = f.artifact();
    let faults = Faults { cut_after: Some(artifact.len() as u64 / 3), ..Faults::default() };
    faults.cuts.store(2, Ordering::SeqCst);
    let server = HttpServer::start(artifact.clone(), faults);
    let slot = f.path("slot.img");
    let mut req = f.request(Source::Url(server.url.clone()), &slot);
    req.http.initial_backoff = Duration::from_millis(10);
    let report = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert_eq!(std::fs::read(&slot).unwrap(), f.image);
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "one request and two resumes: {requests:?}");
    assert!(requests[1].contains("Range: bytes=") || requests[1].contains("range: bytes="));
    assert!(requests[1].to_ascii_lowercase().contains("if-range: \"otter-test-1\""));
    // Resuming re-sends nothing: what crossed the wire stays within 5% of the artifact.
    let sent = server.body_bytes_sent.load(Ordering::SeqCst);
    assert!(sent <= artifact.len() as u64 * 105 / 100, "{sent} bytes sent for {}", artifact.len());
    assert_eq!(report.bytes_received, artifact.len() as u64);
}

#[test]
fn http_gives_up_after_bounded_resumes() {
    let f = Fixture::new(IMAGE_LEN);
    let artifact = f.artifact();
    let faults = Faults { cut_after: Some(20_000), ..Faults::default() };
    faults.cuts.store(usize::MAX, Ordering::SeqCst);
    let server = HttpServer::start(artifact, faults);
    let (slot, old) = f.old_slot("slot.img");
    let mut req = f.request(Source::Url(server.url.clone()), &slot);
    req.http.initial_backoff = Duration::from_millis(1);
    req.http.max_resumes = 3;
    match otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()) {
        Err(InstallError::ConnectionLost { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn http_without_range_support_starts_over() {
    let f = Fixture::new(IMAGE_LEN);
    let artifact = f.artifact();
    let faults = Faults { cut_after: Some(artifact.len() as u64 / 2), no_ranges: true, ..Faults::default() };
    faults.cuts.store(1, Ordering::SeqCst);
    let server = HttpServer::start(artifact.clone(), faults);
    let slot = f.path("slot.img");
    let mut req = f.request(Source::Url(server.url.clone()), &slot);
    req.http.initial_backoff = Duration::from_millis(1);
    otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    assert_eq!(std::fs::read(&slot).unwrap(), f.image);
    // A 200 to the range request means starting the whole install again.
    assert_eq!(server.requests.lock().unwrap().len(), 3);
}

#[test]
fn http_error_statuses() {
    let f = Fixture::new(IMAGE_LEN);
    for status in [404u16, 500] {
        let server = HttpServer::start(f.artifact(), Faults { status: Some(status), ..Faults::default() });
        let (slot, old) = f.old_slot("slot.img");
        let req = f.request(Source::Url(server.url.clone()), &slot);
        match otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()) {
            Err(InstallError::HttpStatus { status: s, url }) => {
                assert_eq!(s, status);
                assert_eq!(url, server.url);
            }
            other => panic!("{other:?}"),
        }
        assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
    }
}

#[test]
fn cancel_mid_install() {
    let f = Fixture::new(4 << 20);
    let artifact = f.artifact();
    let faults = Faults { throttle: Some(Duration::from_millis(20)), ..Faults::default() };
    let server = HttpServer::start(artifact.clone(), faults);
    let (slot, old) = f.old_slot("slot.img");
    let req = f.request(Source::Url(server.url.clone()), &slot);
    let cancel = CancelToken::new();
    let progress = |p: &Progress| {
        if p.phase == Phase::Writing && p.bytes_written > 0 {
            cancel.cancel();
        }
    };
    let started = std::time::Instant::now();
    let res = otter_installer::install(&req, &progress, &cancel);
    assert!(matches!(res, Err(InstallError::Cancelled)), "{res:?}");
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
    // It stopped well before the whole (throttled) artifact was sent.
    let sent = server.body_bytes_sent.load(Ordering::SeqCst);
    assert!(sent < artifact.len() as u64 / 2, "{sent} of {} sent", artifact.len());
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn stdin_like_stream_without_length() {
    // Any `Read` works: the reader never seeks. Exercised through a pipe from a child process.
    let f = Fixture::new(IMAGE_LEN);
    let a = f.path("a.otter");
    std::fs::write(&a, f.artifact()).unwrap();
    let fifo = f.path("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let writer = {
        let (a, fifo) = (a.clone(), fifo.clone());
        std::thread::spawn(move || std::fs::write(&fifo, std::fs::read(a).unwrap()).unwrap())
    };
    let slot = f.path("slot.img");
    let req = f.request(Source::File(fifo), &slot);
    otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()).unwrap();
    writer.join().unwrap();
    assert_eq!(std::fs::read(&slot).unwrap(), f.image);
}

#[test]
fn stored_payload_is_one_valid_zstd_stream() {
    // Independent frames concatenated are still one zstd stream: the reference `zstd` tool decodes it.
    let f = Fixture::new(IMAGE_LEN);
    let e = entries(&f.artifact());
    let z = f.path("rootfs.img.zst");
    std::fs::write(&z, &e[2].1).unwrap();
    let out = std::process::Command::new("zstd").args(["-d", "-c", "-q"]).arg(&z).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, f.image);
}

#[test]
fn full_disk_is_a_typed_no_space_error() {
    // /dev/full answers every write with ENOSPC, like a slot on a full filesystem.
    let f = Fixture::new(IMAGE_LEN);
    let a = f.path("a.otter");
    std::fs::write(&a, f.artifact()).unwrap();
    let req = f.request(Source::File(a), std::path::Path::new("/dev/full"));
    match otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()) {
        Err(e @ InstallError::Slot { .. }) => assert_eq!(e.code(), "no-space", "{e}"),
        other => panic!("{other:?}"),
    }
}

/// The fixture's artifact with `extra` bytes after its end-of-archive marker.
fn with_trailing(artifact: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut a = artifact.to_vec();
    a.extend_from_slice(extra);
    a
}

/// The fixture's first chunk compressed as one frame, with or without zstd's content checksum.
fn first_chunk_frame(f: &Fixture, checksum: bool) -> Vec<u8> {
    match checksum {
        true => compress_checked(&f.image[..CHUNK as usize], 3),
        false => zstd::bulk::compress(&f.image[..CHUNK as usize], 3).unwrap(),
    }
}

/// What `otter-artifact verify` does with an artifact: the full reader over every byte.
fn verify(f: &Fixture, artifact: &[u8]) -> Result<(), ArtifactError> {
    otter_artifact::ArtifactReader::open(artifact, &f.keyring, &f.policy())?.verify_all()
}

#[test]
fn whatever_verify_rejects_install_rejects_with_the_same_error() {
    let f = Fixture::new(IMAGE_LEN);
    let good = f.artifact();
    let cut = |n: usize| good[..good.len() - n].to_vec();
    let format_1_0_with_a_wrong_decoded_hash = {
        let mut e = entries(&good);
        let mut m = parse_manifest(&e[0].1);
        m.format_version = "1.0".into();
        m.payloads[0].chunks.iter_mut().for_each(|c| c.stored_sha256 = None);
        m.payloads[0].chunks[3].sha256 = otter_artifact::Digest::of(b"something else");
        e[0].1 = m.to_bytes();
        e[1].1 = f.sign(&e[0].1);
        assemble(&e)
    };
    let mut flipped = good.clone();
    let payload_end = good.len() - 1024 - 512;
    flipped[payload_end - 3000] ^= 0x10;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a zero block after the end-of-archive marker", with_trailing(&good, &[0; 512])),
        ("one byte after the end-of-archive marker", with_trailing(&good, b"x")),
        ("a second artifact after the first", with_trailing(&good, &good)),
        ("a signed zstd frame without a content checksum", replace_first_chunk(&f, first_chunk_frame(&f, false), true)),
        ("a stored byte flipped", flipped),
        ("a format 1.0 chunk that does not decode to its signed hash", format_1_0_with_a_wrong_decoded_hash),
        ("the end-of-archive marker cut short", cut(600)),
        ("the end-of-archive marker missing", cut(1024)),
    ];
    for (what, artifact) in cases {
        let verified = verify(&f, &artifact).expect_err(what);
        let (res, slot, old) = f.install_bytes(&artifact);
        let installed = artifact_error(res);
        assert_eq!(
            std::mem::discriminant(&installed),
            std::mem::discriminant(&verified),
            "{what}: verify says {verified}, install says {installed}"
        );
        assert_eq!(installed.code(), verified.code(), "{what}");
        // Every payload byte was read before these failures: the slot was written to and must be left invalid.
        assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
    }
}

#[test]
fn bytes_after_the_end_of_archive_marker_are_trailing_data_whatever_the_source() {
    // The whole-file hash (a hawkBit download) reads to the end of the stream too; the trailing bytes are refused
    // before it, and a pipe gets the same answer as a file.
    let f = Fixture::new(IMAGE_LEN);
    let artifact = with_trailing(&f.artifact(), b"appended");
    let a = f.path("a.otter");
    std::fs::write(&a, &artifact).unwrap();
    let (slot, old) = f.old_slot("slot.img");
    let mut req = f.request(Source::File(a), &slot);
    req.expected_sha256 = Some(otter_artifact::Digest::of(&artifact).0);
    let res = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new());
    assert!(matches!(artifact_error(res), ArtifactError::TrailingData));
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);

    let fifo = f.path("pipe");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let writer = {
        let (artifact, fifo) = (artifact.clone(), fifo.clone());
        std::thread::spawn(move || std::fs::write(&fifo, artifact).ok())
    };
    let (slot, old) = f.old_slot("slot2.img");
    let res = otter_installer::install(&f.request(Source::File(fifo), &slot), &|_: &Progress| {}, &CancelToken::new());
    writer.join().unwrap();
    assert!(matches!(artifact_error(res), ArtifactError::TrailingData));
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
}

#[test]
fn a_signed_frame_must_carry_zstd_s_content_checksum() {
    // The installer does not hash a signed frame's decoded bytes again: the frame's checksum and exact length catch
    // a faulty decode. A frame without the checksum would leave the decoded bytes unchecked, so it is refused, by
    // verify and install alike; the same frame with it installs.
    let f = Fixture::new(IMAGE_LEN);
    let (res, slot, old) = f.install_bytes(&replace_first_chunk(&f, first_chunk_frame(&f, false), true));
    match artifact_error(res) {
        ArtifactError::FrameWithoutChecksum { payload, chunk: 0 } => assert_eq!(payload, "rootfs"),
        other => panic!("{other:?}"),
    }
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
    let (res, slot, _) = f.install_bytes(&replace_first_chunk(&f, first_chunk_frame(&f, true), true));
    res.unwrap();
    assert_eq!(&std::fs::read(&slot).unwrap()[..IMAGE_LEN], &f.image[..]);
}

#[test]
fn a_format_1_0_frame_without_checksum_still_installs_on_its_decoded_hash() {
    // 1.0 artifacts were written without the frame checksum; their chunks are checked after decoding instead.
    let f = Fixture::new(IMAGE_LEN);
    let mut e = entries(&replace_first_chunk(&f, first_chunk_frame(&f, false), false));
    let mut m = parse_manifest(&e[0].1);
    m.format_version = "1.0".into();
    m.payloads[0].chunks.iter_mut().for_each(|c| c.stored_sha256 = None);
    e[0].1 = m.to_bytes();
    e[1].1 = f.sign(&e[0].1);
    let artifact = assemble(&e);
    verify(&f, &artifact).unwrap();
    let (res, slot, _) = f.install_bytes(&artifact);
    res.unwrap();
    assert_eq!(&std::fs::read(&slot).unwrap()[..IMAGE_LEN], &f.image[..]);
}

#[test]
fn a_signed_frame_decides_what_installs_and_signing_refuses_a_manifest_that_contradicts_it() {
    // Stored hashes right, but a decoded chunk hash or the image hash wrong: only whoever holds a trusted key can
    // make such a manifest (a broken builder). verify and install agree on it: both take the signed frames'
    // decoding, checked by the frames' checksums and exact lengths, and the slot holds exactly that. Signing is
    // where the contradiction is caught: `sign` checks every hash before it vouches for them.
    let f = Fixture::new(IMAGE_LEN);
    let resigned = |edit: &dyn Fn(&mut otter_artifact::Manifest)| {
        let mut e = entries(&f.artifact());
        let mut m = parse_manifest(&e[0].1);
        edit(&mut m);
        e[0].1 = m.to_bytes();
        e[1].1 = f.sign(&e[0].1);
        assemble(&e)
    };
    let wrong_chunk = resigned(&|m| m.payloads[0].chunks[2].sha256 = otter_artifact::Digest::of(b"not the chunk"));
    let wrong_image = resigned(&|m| m.payloads[0].sha256 = otter_artifact::Digest::of(b"not the image"));
    let other_key = otter_artifact::keys::generate().unwrap();
    for (what, artifact) in [("decoded chunk hash", &wrong_chunk), ("image hash", &wrong_image)] {
        verify(&f, artifact).unwrap_or_else(|e| panic!("wrong {what}: verify says {e}"));
        let (res, slot, _) = f.install_bytes(artifact);
        res.unwrap_or_else(|e| panic!("wrong {what}: install says {e}"));
        assert_eq!(&std::fs::read(&slot).unwrap()[..IMAGE_LEN], &f.image[..], "wrong {what}");
    }
    let refused = otter_artifact::builder::add_signature(&wrong_chunk[..], &other_key, std::io::sink());
    assert!(matches!(refused, Err(ArtifactError::ChunkHashMismatch { chunk: 2, .. })), "{refused:?}");
    let refused = otter_artifact::builder::add_signature(&wrong_image[..], &other_key, std::io::sink());
    assert!(matches!(refused, Err(ArtifactError::ImageHashMismatch { .. })), "{refused:?}");
    let refused =
        otter_artifact::builder::add_signature(&with_trailing(&f.artifact(), b"x")[..], &other_key, std::io::sink());
    assert!(matches!(refused, Err(ArtifactError::TrailingData)), "{refused:?}");
    // A consistent artifact gets the signature, byte for byte what it was plus one signature line.
    let mut out = Vec::new();
    otter_artifact::builder::add_signature(&f.artifact()[..], &other_key, &mut out).unwrap();
    let mut ring = f.keyring.clone();
    ring.add(other_key.verifying_key());
    otter_artifact::ArtifactReader::open(&out[..], &ring, &f.policy()).unwrap().verify_all().unwrap();
}
