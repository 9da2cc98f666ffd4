//! Fuzzes the decoding of delta chunks (format 1.2): a signed patch frame decoded against a reference region of
//! the running slot. The stored-bytes hash is made to match, so every input reaches zstd with its reference prefix.
//!
//! Input: `flags, reference length (2 bytes), chunk length (2 bytes), body`. The reference is the body cycled to
//! its length (whole 4 KiB base chunks); the chunk is either the rest of the body as a raw frame, or a real patch
//! of a target made from the body (half reference, half new) against that reference, damaged at a fuzzed position.
//!
//! Checked on every input: decoding never writes beyond the chunk's declared length and never panics; an accepted
//! chunk is exactly the reference zstd decoder's output with that prefix and hashes as the manifest says; an
//! undamaged patch is always accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otter_artifact::manifest::{Base, Chunk, Compression, Digest, KIND_SLOT_DELTA, Payload, Reference};
use otter_artifact::{ArtifactError, ChunkDecoder};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

const BLOCK: usize = 4096;
const RAW: u8 = 1;
const DAMAGE: u8 = 2;

fn cycled(piece: &[u8], len: usize) -> Vec<u8> {
    match piece.is_empty() {
        true => vec![0; len],
        false => piece.iter().copied().cycle().take(len).collect(),
    }
}

fn patch(reference: &[u8], target: &[u8]) -> Vec<u8> {
    let log = (reference.len() + target.len()).next_power_of_two().trailing_zeros().max(10);
    let mut c = CCtx::create();
    for p in [CParameter::CompressionLevel(1), CParameter::WindowLog(log), CParameter::ChecksumFlag(true)] {
        c.set_parameter(p).expect("zstd parameter");
    }
    c.ref_prefix(reference).expect("zstd prefix");
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    c.compress2(&mut out, target).expect("zstd patch");
    out
}

/// What zstd itself makes of `frame` with `reference`, into at most `cap` bytes.
fn reference_decode(reference: &[u8], frame: &[u8], cap: usize) -> Option<Vec<u8>> {
    let mut d = DCtx::create();
    d.set_parameter(DParameter::WindowLogMax(31)).ok()?;
    d.ref_prefix(reference).ok()?;
    let mut out = Vec::with_capacity(cap);
    d.decompress(&mut out, frame).ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let blocks = (usize::from(u16::from_le_bytes([data[1], data[2]])) % 16) + 1;
    let len = (usize::from(u16::from_le_bytes([data[3], data[4]])) % (16 * BLOCK)) + 1;
    let body = &data[5..];
    let reference = cycled(body, blocks * BLOCK);
    let (frame, target) = if flags & RAW != 0 {
        (body.to_vec(), None)
    } else {
        let mut target = reference[..(len / 2).min(reference.len())].to_vec();
        let reversed: Vec<u8> = body.iter().rev().copied().collect();
        target.extend(cycled(&reversed, len - target.len()));
        let mut frame = patch(&reference, &target);
        if flags & DAMAGE != 0 && body.len() >= 2 {
            let at = usize::from(body[0]) * 31 % frame.len();
            frame[at] ^= body[1] | 1;
        }
        (frame, Some(target))
    };
    if frame.is_empty() {
        return;
    }
    let expected = target.clone().or_else(|| reference_decode(&reference, &frame, len)).unwrap_or_default();
    let payload = Payload {
        name: "rootfs".into(),
        file: "rootfs.img".into(),
        kind: KIND_SLOT_DELTA.into(),
        slot_class: "rootfs".into(),
        compression: Compression::Zstd,
        size: len as u64,
        sha256: Digest::of(&expected),
        stored_size: frame.len() as u64,
        chunk_size: (len as u64).next_multiple_of(BLOCK as u64),
        chunks: vec![Chunk {
            sha256: Digest::of(&expected),
            stored_size: frame.len() as u64,
            stored_sha256: Some(Digest::of(&frame)),
            reference: Some(Reference { first: 0, count: blocks as u64 }),
        }],
        base: Some(Base {
            size: reference.len() as u64,
            sha256: Digest::of(&reference),
            chunk_size: BLOCK as u64,
            chunks: reference.chunks(BLOCK).map(Digest::of).collect(),
        }),
    };
    let mut decoder = ChunkDecoder::new(8 << 20).expect("decoder");
    let mut out = vec![0u8; len];
    let result = decoder.decode_into(&payload, 0, &frame, Some(&reference), &mut out);
    match result {
        Ok(()) => {
            assert_eq!(Digest::of(&out), payload.chunks[0].sha256, "an accepted chunk hashes as signed");
            assert_eq!(out, expected, "an accepted chunk is zstd's decoding with the reference");
        }
        Err(ArtifactError::Decompress { .. } | ArtifactError::ChunkSizeMismatch { .. })
        | Err(ArtifactError::ChunkHashMismatch { .. } | ArtifactError::FrameWithoutChecksum { .. })
        | Err(ArtifactError::WindowTooLarge { .. }) => {
            assert!(flags & (RAW | DAMAGE) != 0, "an undamaged patch must decode: {result:?}");
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
});
