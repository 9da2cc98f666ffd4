//! Fuzzes chunk decoding *past the signature*: every input becomes a validly signed artifact (a fixed test key,
//! trusted by the keyring) around fuzzed chunks, so the zstd frame checks, the decoder and the installer's reader
//! and pipeline see hostile frames that the signature and the stored-bytes hash let through.
//!
//! Input: `flags, chunk count, last chunk length (2 bytes), body`. The body is cut into one piece per chunk; a piece
//! is either the stored chunk itself (raw: arbitrary frames) or the plain chunk, compressed here and then damaged
//! at a fuzzed position (valid frames, near-valid frames). The manifest signs what is stored.
//!
//! Checked on every input: `verify` (the full reader) and `install` (the installer into a file slot) agree — both
//! accept or both reject; an accepted install holds exactly the frames' decoding (the reference zstd decoder's
//! output); a rejected one leaves no valid slot (first block zeroed, or untouched).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use otter_artifact::keys::SignatureBlock;
use otter_artifact::manifest::{self, Chunk, Compression, Digest, Manifest, Payload};
use otter_artifact::tar::TarWriter;
use otter_artifact::{ArtifactReader, Keyring, Limits, Policy};
use otter_installer::{CancelToken, InstallRequest, Progress, Source, Target};

const CHUNK: u64 = 4096;
const DEVICE: &str = "fuzz";

/// Flags in the first input byte.
const ZSTD: u8 = 1;
const RAW: u8 = 2;
const STORED_HASH: u8 = 4;
const TRAILING: u8 = 8;
const NO_CHECKSUM: u8 = 16;
const DAMAGE: u8 = 32;

struct Fixed {
    key: ed25519_dalek::SigningKey,
    keyring: Keyring,
    dir: tempfile::TempDir,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        // A fixed test key: nothing secret, it only makes the fuzzed manifests verify.
        let key = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]);
        let mut keyring = Keyring::new();
        keyring.add(key.verifying_key());
        // tmpfs when there is one: the installer syncs its slot, which costs nothing there.
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("temp dir");
        Fixed { key, keyring, dir }
    })
}

/// `piece` repeated (or zeros) to exactly `len` bytes.
fn cycled(piece: &[u8], len: usize) -> Vec<u8> {
    match piece.is_empty() {
        true => vec![0; len],
        false => piece.iter().copied().cycle().take(len).collect(),
    }
}

fn compress(plain: &[u8], checksum: bool) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(1).expect("zstd compressor");
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(checksum)).expect("checksum flag");
    c.compress(plain).expect("compress")
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let flags = data[0];
    let count = 1 + usize::from(data[1] % 4);
    let last_len = 1 + u64::from(u16::from_le_bytes([data[2], data[3]])) % CHUNK;
    let body = &data[4..];
    let compression = if flags & ZSTD != 0 { Compression::Zstd } else { Compression::None };

    let mut chunks = Vec::new();
    let mut stored_all = Vec::new();
    let mut plain_all = Vec::new();
    for i in 0..count {
        let piece = &body[i * body.len() / count..(i + 1) * body.len() / count];
        let len = if i + 1 == count { last_len } else { CHUNK };
        let plain = cycled(piece, len as usize);
        let mut stored = match (compression, flags & RAW != 0) {
            (Compression::None, _) => plain.clone(),
            (Compression::Zstd, true) => piece[..piece.len().min(manifest::zstd_bound(len) as usize)].to_vec(),
            (Compression::Zstd, false) => compress(&plain, flags & NO_CHECKSUM == 0),
        };
        if flags & DAMAGE != 0 && piece.len() >= 2 && !stored.is_empty() {
            let at = usize::from(piece[0]) * 7 % stored.len();
            stored[at] ^= piece[1] | 1;
        }
        chunks.push(Chunk {
            sha256: Digest::of(&plain),
            stored_size: stored.len() as u64,
            stored_sha256: (flags & STORED_HASH != 0).then(|| Digest::of(&stored)),
            reference: None,
        });
        stored_all.extend_from_slice(&stored);
        plain_all.extend_from_slice(&plain);
    }
    let m = Manifest {
        format_version: if flags & STORED_HASH != 0 { "1.1" } else { "1.0" }.into(),
        compatible: vec![DEVICE.into()],
        version: "fuzz".into(),
        security_version: 0,
        created: 0,
        description: None,
        payloads: vec![Payload {
            name: "rootfs".into(),
            file: "rootfs.img".into(),
            kind: manifest::KIND_SLOT_IMAGE.into(),
            slot_class: "rootfs".into(),
            compression,
            size: (count as u64 - 1) * CHUNK + last_len,
            sha256: Digest::of(&plain_all),
            stored_size: stored_all.len() as u64,
            chunk_size: CHUNK,
            chunks,
            base: None,
        }],
    };
    let f = fixed();
    let manifest = m.to_bytes();
    let mut sig = SignatureBlock::default();
    sig.sign(&f.key, &manifest);
    let mut w = TarWriter::new(Vec::new(), 0);
    w.append(manifest::MANIFEST_ENTRY, &manifest).expect("tar");
    w.append(manifest::SIGNATURE_ENTRY, &sig.to_bytes()).expect("tar");
    w.append("rootfs.img", &stored_all).expect("tar");
    let mut artifact = w.finish().expect("tar");
    if flags & TRAILING != 0 {
        artifact.extend_from_slice(&body[..body.len().min(3)]);
        artifact.push(0);
    }

    let policy = Policy { device_type: Some(DEVICE.into()), min_security_version: 0, limits: Limits::default() };
    let verified = ArtifactReader::open(&artifact[..], &f.keyring, &policy).and_then(|mut r| r.verify_all());

    let source = f.dir.path().join("a.otter");
    let slot = f.dir.path().join("slot.img");
    std::fs::write(&source, &artifact).expect("write artifact");
    std::fs::write(&slot, vec![0xa5u8; 2 * CHUNK as usize]).expect("write slot");
    let targets = vec![Target { slot_class: "rootfs".into(), path: slot.clone(), max_size: None, base: None }];
    let mut req = InstallRequest::new(Source::File(source), targets, f.keyring.clone(), policy);
    req.decode_threads = 2;
    let installed = otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new());

    match (&verified, &installed) {
        (Ok(()), Ok(report)) => {
            // Whatever the manifest claims about decoded bytes, the slot holds exactly the decoding of the signed
            // frames (compared with the reference decoder).
            let written = std::fs::read(&slot).expect("read slot");
            let expected = match compression {
                Compression::None => stored_all.clone(),
                Compression::Zstd => zstd::stream::decode_all(&stored_all[..]).expect("reference decoder"),
            };
            assert_eq!(&written[..expected.len()], &expected[..], "slot differs from the frames' decoding");
            assert_eq!(report.bytes_written, m.payloads[0].size);
        }
        (Err(v), Err(i)) => {
            // With one defect both name it alike (the installer tests check that); with several, the installer's
            // reading thread may meet a later one (trailing data) before a decoder reports an earlier one.
            let _ = (v, i);
            let head = &std::fs::read(&slot).expect("read slot")[..CHUNK as usize];
            assert!(head.iter().all(|&b| b == 0) || head.iter().all(|&b| b == 0xa5), "a failed install left a head");
        }
        _ => panic!("verify and install disagree: verify {verified:?}, install {installed:?}"),
    }
});
