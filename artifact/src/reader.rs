//! The streaming, verifying artifact reader.
//!
//! Order of trust: the manifest bytes and the signature block are read into bounded buffers, the signature is
//! checked over the raw bytes, and only then is the manifest parsed as JSON and checked against the device policy.
//! Payload bytes are handed out only after that, one chunk at a time, each chunk checked against its signed hash.

use std::io::Read;

use sha2::Digest as _;

use crate::delta::BaseWindow;
use crate::error::ArtifactError;
use crate::keys::{KeyId, Keyring, SignatureBlock};
use crate::manifest::{Compression, Digest, MANIFEST_ENTRY, Manifest, Payload, SIGNATURE_ENTRY};
use crate::tar::TarReader;

/// Hard limits that bound what an artifact can make a reader allocate or accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest manifest accepted, in bytes (default 1 MiB).
    pub max_manifest: u64,
    /// Largest signature block accepted, in bytes (default 64 KiB).
    pub max_signature_block: u64,
    /// Largest zstd window a chunk frame may ask for, in bytes (default 8 MiB: what a level-19 frame needs at most
    /// without `--long`, and small enough for a 256 MiB gateway).
    pub max_window: u64,
    /// Largest installed size of one payload, in bytes (default 64 GiB).
    pub max_image_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_manifest: 1 << 20, max_signature_block: 64 << 10, max_window: 8 << 20, max_image_size: 64 << 30 }
    }
}

/// What the device accepts, checked after the signature and before any payload byte is handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// This device's type; the artifact must list it in `compatible`. `None` skips the check (build hosts).
    pub device_type: Option<String>,
    /// Lowest `security_version` accepted (anti-rollback).
    pub min_security_version: u64,
    /// Hard limits.
    pub limits: Limits,
}

/// Identifies a stored chunk returned by [`ArtifactReader::read_stored_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Index of the payload in the manifest.
    pub payload: usize,
    /// Index of the chunk in the payload.
    pub index: usize,
}

/// Decodes and verifies single chunks; reusable across chunks and payloads (one per decoding thread).
///
/// This is the one acceptance rule for chunks, shared by every reader (`otter-artifact verify`, the installer):
/// a chunk with a signed `stored_sha256` (format 1.1) is checked *before* decoding, so the zstd decoder only ever
/// parses authenticated bytes; it must be a frame with a content checksum, and its decoded bytes are then the
/// deterministic decoding of signed bytes, checked by that checksum and the exact decoded length; their SHA-256 is
/// not computed again. A chunk without one (format 1.0) is checked after decoding, against its decoded `sha256`.
/// Whether a signed manifest's decoded hashes agree with its own signed frames is the signer's check
/// ([`ChunkDecoder::check_decoded`], used before signing), not a second rule for readers.
pub struct ChunkDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
    max_window: u64,
    check_decoded: bool,
}

impl ChunkDecoder {
    /// A decoder refusing frames whose window exceeds `max_window` bytes.
    pub fn new(max_window: u64) -> Result<Self, ArtifactError> {
        let mut zstd = zstd::bulk::Decompressor::new()
            .map_err(|e| ArtifactError::Io { context: "creating zstd decoder".into(), source: e })?;
        let log = 63 - max_window.max(1 << 10).leading_zeros();
        zstd.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(log.clamp(10, 31)))
            .map_err(|e| ArtifactError::Io { context: "configuring zstd decoder".into(), source: e })?;
        Ok(Self { zstd, max_window, check_decoded: false })
    }

    /// Also checks every decoded chunk against its decoded `sha256` when the stored bytes were already checked: the
    /// consistency check of a manifest before it is signed (`otter-artifact sign`), on top of the acceptance rule.
    pub fn check_decoded(mut self) -> Self {
        self.check_decoded = true;
        self
    }

    /// Decodes stored chunk `index` of `payload` into `out`, which must be exactly the chunk's decoded length, and
    /// checks its SHA-256. `out` is never filled beyond its length, whatever the frame claims: that is the
    /// decompression-bomb guard.
    ///
    /// A chunk of a delta payload that has a reference is decoded against `reference`, the checked bytes of its base
    /// region ([`crate::BaseWindow::reference`]); its decoded bytes depend on more than its signed frame, so they
    /// are always checked against the chunk's signed `sha256` as well.
    pub fn decode_into(
        &mut self,
        payload: &Payload,
        index: usize,
        stored: &[u8],
        reference: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<(), ArtifactError> {
        let expected = payload.chunk_len(index);
        let reference = match (payload.chunks[index].reference, reference) {
            (Some(_), None) => return Err(ArtifactError::DeltaNeedsBase { payload: payload.name.clone() }),
            (Some(_), reference) => reference,
            (None, _) => None,
        };
        assert_eq!(out.len() as u64, expected, "caller passes a buffer of the chunk's decoded length");
        let chunk = index as u64;
        let mismatch = || ArtifactError::ChunkHashMismatch { payload: payload.name.clone(), chunk };
        let stored_checked = match &payload.chunks[index].stored_sha256 {
            Some(h) if Digest::of(stored) != *h => return Err(mismatch()),
            Some(_) => true,
            None => false,
        };
        match payload.compression {
            Compression::None => {
                if stored.len() != out.len() {
                    return Err(ArtifactError::ChunkSizeMismatch {
                        payload: payload.name.clone(),
                        chunk,
                        declared: expected,
                    });
                }
                out.copy_from_slice(stored);
            }
            Compression::Zstd => {
                let bad = |reason: String| ArtifactError::Decompress { payload: payload.name.clone(), chunk, reason };
                let header = frame_header(stored).map_err(|r| bad(r.into()))?;
                // With the stored bytes signed, the frame's checksum is what checks the decoder's output.
                if stored_checked && !header.checksum {
                    return Err(ArtifactError::FrameWithoutChecksum { payload: payload.name.clone(), chunk });
                }
                // A patch's window spans its reference and the chunk; both are bounded by the signed manifest.
                let limit = match reference {
                    Some(r) => self.max_window.max((r.len() as u64 + expected).next_power_of_two()),
                    None => self.max_window,
                };
                if header.window > limit {
                    return Err(ArtifactError::WindowTooLarge {
                        payload: payload.name.clone(),
                        chunk,
                        window: header.window,
                        limit,
                    });
                }
                let size_mismatch =
                    || ArtifactError::ChunkSizeMismatch { payload: payload.name.clone(), chunk, declared: expected };
                if header.content_size.is_some_and(|s| s != expected) {
                    return Err(size_mismatch());
                }
                match zstd::zstd_safe::find_frame_compressed_size(stored) {
                    Ok(n) if n == stored.len() => {}
                    Ok(_) => return Err(bad("chunk holds more than one zstd frame".into())),
                    Err(code) => return Err(bad(zstd::zstd_safe::get_error_name(code).into())),
                }
                // Decoding into a buffer of exactly the declared size: a frame that would produce more fails with
                // "destination buffer too small" instead of allocating.
                let failed = |e: String| if e.contains("too small") { size_mismatch() } else { bad(e) };
                let n = match reference {
                    None => self.zstd.decompress_to_buffer(stored, out).map_err(|e| failed(e.to_string()))?,
                    Some(reference) => decode_patch(stored, reference, limit, out)
                        .map_err(|code| failed(zstd::zstd_safe::get_error_name(code).into()))?,
                };
                if n != out.len() {
                    return Err(size_mismatch());
                }
            }
        }
        if (!stored_checked || self.check_decoded || reference.is_some())
            && Digest::of(out) != payload.chunks[index].sha256
        {
            return Err(mismatch());
        }
        Ok(())
    }
}

/// Decodes one patch frame against its reference prefix, with a context of its own (a prefix is borrowed for
/// one frame only). Decoding into a flat buffer of the chunk's size needs no window buffer.
fn decode_patch(stored: &[u8], reference: &[u8], window: u64, out: &mut [u8]) -> Result<usize, usize> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax((63 - window.leading_zeros()).clamp(10, 31)))?;
    dctx.ref_prefix(reference)?;
    dctx.decompress(out, stored)
}

struct FrameHeader {
    window: u64,
    content_size: Option<u64>,
    /// The frame ends with a checksum (XXH64) of its decoded content, which the decoder verifies.
    checksum: bool,
}

/// Parses a zstd frame header (RFC 8878 section 3.1.1) far enough to learn the window and content sizes.
fn frame_header(b: &[u8]) -> Result<FrameHeader, &'static str> {
    if b.len() < 6 {
        return Err("frame too short");
    }
    if b[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err("not a zstd frame (bad magic)");
    }
    let fhd = b[4];
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 {
        return Err("reserved frame header bit set");
    }
    if fhd & 0x03 != 0 {
        return Err("frames with a dictionary id are not allowed");
    }
    let mut pos = 5;
    let mut window = None;
    if !single_segment {
        let wd = b[pos];
        pos += 1;
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        window = Some(base + (base / 8) * u64::from(wd & 7));
    }
    let fcs_len = match (fcs_flag, single_segment) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    if b.len() < pos + fcs_len {
        return Err("frame header truncated");
    }
    let mut raw = [0u8; 8];
    raw[..fcs_len].copy_from_slice(&b[pos..pos + fcs_len]);
    let value = u64::from_le_bytes(raw);
    let content_size = match fcs_len {
        0 => None,
        2 => Some(value + 256),
        _ => Some(value),
    };
    let window = match window {
        Some(w) => w,
        None => content_size.ok_or("single-segment frame without content size")?,
    };
    Ok(FrameHeader { window, content_size, checksum: fhd & 0x04 != 0 })
}

/// A verified artifact being read. Created by [`ArtifactReader::open`], which has already checked the signature
/// and the policy; the payload methods then hand out chunks in stream order.
pub struct ArtifactReader<R> {
    tar: TarReader<R>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signed_by: KeyId,
    limits: Limits,
    /// Next chunk to read: `(payload, chunk)`; `payload == payloads.len()` once all are read.
    cursor: (usize, usize),
    finished: bool,
    decoder: Option<ChunkDecoder>,
    /// Also check the decoded hashes of signed frames and each image's hash (before signing, see
    /// [`ArtifactReader::audit_all`]); readers that accept artifacts do not.
    audit: bool,
    image_hash: sha2::Sha256,
    /// Chunks of the current payload were skipped, so `image_hash` does not cover the whole image.
    image_hash_incomplete: bool,
    stored: Vec<u8>,
    /// The base of each delta payload, by payload index ([`ArtifactReader::set_base`]).
    bases: Vec<Option<BaseWindow>>,
}

fn read_small_entry<R: Read>(
    tar: &mut TarReader<R>,
    name: &str,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, ArtifactError> {
    let found = tar.next_entry()?;
    let header = found.ok_or_else(|| ArtifactError::UnexpectedEntry {
        found: "end of archive".into(),
        expected: format!("{name} ({what})"),
    })?;
    if header.name != name {
        return Err(ArtifactError::UnexpectedEntry { found: header.name, expected: format!("{name} ({what})") });
    }
    if header.size > limit {
        return Err(ArtifactError::TooLarge { what, size: header.size, limit });
    }
    let mut buf = vec![0u8; header.size as usize];
    tar.read_data(&mut buf, what)?;
    Ok(buf)
}

/// Reads the first two entries of an artifact: the raw manifest bytes and the parsed signature block, each within
/// its limit. Nothing is verified yet.
pub(crate) fn read_head<R: Read>(
    tar: &mut TarReader<R>,
    limits: &Limits,
) -> Result<(Vec<u8>, SignatureBlock), ArtifactError> {
    let manifest = read_small_entry(tar, MANIFEST_ENTRY, "manifest", limits.max_manifest)?;
    let sig = read_small_entry(tar, SIGNATURE_ENTRY, "signature block", limits.max_signature_block)?;
    Ok((manifest, SignatureBlock::parse(&sig)?))
}

impl<R: Read> ArtifactReader<R> {
    /// Reads the manifest and signature block from the start of `inner`, verifies the signature against `keyring`,
    /// parses the manifest and checks it against `policy`. No payload byte has been read when this returns.
    pub fn open(inner: R, keyring: &Keyring, policy: &Policy) -> Result<Self, ArtifactError> {
        let limits = policy.limits;
        let mut tar = TarReader::new(inner);
        let (manifest_bytes, block) = read_head(&mut tar, &limits)?;
        // The signature covers the raw bytes; nothing of the manifest is interpreted before it verifies.
        let signed_by = keyring.verify(&manifest_bytes, &block)?;
        let manifest = Manifest::parse(&manifest_bytes)?;
        if let Some(device) = &policy.device_type
            && !manifest.compatible.iter().any(|c| c == device)
        {
            return Err(ArtifactError::Incompatible { device: device.clone(), compatible: manifest.compatible });
        }
        if manifest.security_version < policy.min_security_version {
            return Err(ArtifactError::SecurityVersionTooLow {
                found: manifest.security_version,
                minimum: policy.min_security_version,
            });
        }
        for (i, p) in manifest.payloads.iter().enumerate() {
            if p.size > limits.max_image_size {
                return Err(ArtifactError::InvalidManifest {
                    field: format!("payloads[{i}].size"),
                    reason: format!("{} bytes exceeds the limit of {}", p.size, limits.max_image_size),
                });
            }
        }
        Ok(Self {
            tar,
            manifest,
            manifest_bytes,
            signed_by,
            limits,
            cursor: (0, 0),
            finished: false,
            decoder: None,
            audit: false,
            image_hash: sha2::Sha256::new(),
            image_hash_incomplete: false,
            stored: Vec::new(),
            bases: Vec::new(),
        })
    }

    /// Gives delta payload `payload` its base: the image its chunks are patched against, e.g. the running slot.
    /// Without one, [`ArtifactReader::next_chunk`] refuses the payload's patched chunks with
    /// [`ArtifactError::DeltaNeedsBase`].
    pub fn set_base(&mut self, payload: usize, base: std::fs::File) {
        if self.bases.len() <= payload {
            self.bases.resize_with(payload + 1, || None);
        }
        self.bases[payload] = Some(BaseWindow::new(base, None));
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact signed manifest bytes.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// SHA-256 of the signed manifest bytes: identifies the artifact.
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest_bytes)
    }

    /// The trusted key whose signature verified.
    pub fn signed_by(&self) -> KeyId {
        self.signed_by
    }

    /// Bytes consumed from the stream so far.
    pub fn position(&self) -> u64 {
        self.tar.position()
    }

    /// Reads the next stored (still compressed, not yet verified) chunk into `buf`, crossing payload entries as
    /// needed. At the end it checks that no entry follows the last payload and returns `Ok(None)`. The stored bytes
    /// must go through [`ChunkDecoder::decode_into`] before anything uses them.
    pub fn read_stored_chunk(&mut self, buf: &mut Vec<u8>) -> Result<Option<ChunkRef>, ArtifactError> {
        let (p, c) = self.cursor;
        if p == self.manifest.payloads.len() {
            if !self.finished {
                self.finish_archive()?;
            }
            return Ok(None);
        }
        if c == 0 {
            self.enter_payload(p)?;
        }
        let payload = &self.manifest.payloads[p];
        // Bounded by the manifest check `stored_size <= zstd_bound(chunk_size)` and `chunk_size <= 16 MiB`.
        let len = payload.chunks[c].stored_size as usize;
        buf.resize(len, 0);
        self.tar.read_data(buf, "payload data")?;
        self.cursor = if c + 1 == payload.chunks.len() { (p + 1, 0) } else { (p, c + 1) };
        Ok(Some(ChunkRef { payload: p, index: c }))
    }

    /// Reads and checks the tar header of payload `p`'s entry.
    fn enter_payload(&mut self, p: usize) -> Result<(), ArtifactError> {
        let payload = &self.manifest.payloads[p];
        let expected = || format!("{} (payload {:?})", payload.file, payload.name);
        let header = self
            .tar
            .next_entry()?
            .ok_or_else(|| ArtifactError::UnexpectedEntry { found: "end of archive".into(), expected: expected() })?;
        if header.name != payload.file {
            return Err(ArtifactError::UnexpectedEntry { found: header.name, expected: expected() });
        }
        if header.size != payload.stored_size {
            return Err(ArtifactError::StoredSizeMismatch {
                payload: payload.name.clone(),
                declared: payload.stored_size,
                actual: header.size,
            });
        }
        Ok(())
    }

    /// The next chunk [`ArtifactReader::read_stored_chunk`] returns, or `None` after the last payload.
    pub fn cursor(&self) -> Option<ChunkRef> {
        let (payload, index) = self.cursor;
        (payload < self.manifest.payloads.len()).then_some(ChunkRef { payload, index })
    }

    /// Passes over the next `count` stored chunks of the current payload without reading them (an install that
    /// resumes after chunks already verified in the slot). `skip` must move the underlying stream forward by
    /// exactly the byte count it is given: seek a file, re-request an HTTP range, or read and discard. The chunks
    /// are not verified here; the caller answers for them. After a skip, [`ArtifactReader::next_chunk`] cannot
    /// check that payload's whole-image hash and skips that check (every chunk it hands out is still checked).
    pub fn skip_chunks(
        &mut self,
        count: usize,
        skip: impl FnOnce(&mut R, u64) -> std::io::Result<()>,
    ) -> Result<(), ArtifactError> {
        let (p, c) = self.cursor;
        let Some(payload) = self.manifest.payloads.get(p) else {
            return Err(ArtifactError::TarHeader { reason: "no payload left to skip chunks of".into() });
        };
        if c + count > payload.chunks.len() {
            return Err(ArtifactError::TarHeader {
                reason: format!(
                    "cannot skip {count} chunks from chunk {c} of a {}-chunk payload",
                    payload.chunks.len()
                ),
            });
        }
        if count == 0 {
            return Ok(());
        }
        let bytes: u64 = payload.chunks[c..c + count].iter().map(|k| k.stored_size).sum();
        if c == 0 {
            self.enter_payload(p)?;
        }
        self.tar.skip_data(bytes, "payload data", skip)?;
        if c + count == self.manifest.payloads[p].chunks.len() {
            self.cursor = (p + 1, 0);
            self.image_hash = sha2::Sha256::new();
            self.image_hash_incomplete = false;
        } else {
            self.cursor = (p, c + count);
            self.image_hash_incomplete = true;
        }
        Ok(())
    }

    /// The underlying stream, e.g. to drain what follows the archive after the last chunk. Reading from it before
    /// the end desynchronises the reader.
    pub fn get_mut(&mut self) -> &mut R {
        self.tar.get_mut()
    }

    fn finish_archive(&mut self) -> Result<(), ArtifactError> {
        match self.tar.next_entry()? {
            None => {}
            Some(h) => {
                return Err(ArtifactError::UnexpectedEntry { found: h.name, expected: "end of archive".into() });
            }
        }
        self.tar.finish()?;
        self.finished = true;
        Ok(())
    }

    /// Reads, decodes and verifies the next chunk into `out` (resized to the chunk's length), by the same rule as the
    /// installer ([`ChunkDecoder`]). Returns `Ok(None)` at the end of the artifact.
    pub fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Option<ChunkRef>, ArtifactError> {
        let mut stored = std::mem::take(&mut self.stored);
        let result = self.next_chunk_inner(&mut stored, out);
        self.stored = stored;
        result
    }

    fn next_chunk_inner(&mut self, stored: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Option<ChunkRef>, ArtifactError> {
        let Some(at) = self.read_stored_chunk(stored)? else {
            return Ok(None);
        };
        let payload = &self.manifest.payloads[at.payload];
        out.resize(payload.chunk_len(at.index) as usize, 0);
        let decoder = match &mut self.decoder {
            Some(d) => d,
            None if self.audit => self.decoder.insert(ChunkDecoder::new(self.limits.max_window)?.check_decoded()),
            None => self.decoder.insert(ChunkDecoder::new(self.limits.max_window)?),
        };
        let reference = match self.bases.get_mut(at.payload).and_then(Option::as_mut) {
            Some(base) => base.reference(payload, at.index)?,
            None => None,
        };
        decoder.decode_into(payload, at.index, stored, reference, out)?;
        if !self.audit {
            return Ok(Some(at));
        }
        self.image_hash.update(&out[..]);
        if at.index + 1 == payload.chunks.len() {
            let whole: [u8; 32] = std::mem::take(&mut self.image_hash).finalize().into();
            if !std::mem::take(&mut self.image_hash_incomplete) && Digest(whole) != payload.sha256 {
                return Err(ArtifactError::ImageHashMismatch { payload: payload.name.clone() });
            }
        }
        Ok(Some(at))
    }

    /// Reads every remaining chunk, verifying all of it exactly as an installer does, and discards the data. Used
    /// by `verify`: what it rejects, an install rejects with the same error, and the other way round.
    pub fn verify_all(&mut self) -> Result<(), ArtifactError> {
        let mut out = Vec::new();
        while self.next_chunk(&mut out)?.is_some() {}
        Ok(())
    }
}

/// What the builder needs of the reader when it signs (build hosts only).
#[cfg(any(test, feature = "build-host"))]
impl<R: Read> ArtifactReader<R> {
    /// A reader over the payload entries of an artifact whose manifest was read but *not* verified (`tar` is
    /// positioned after the signature block): for checking what a manifest says before signing it.
    pub(crate) fn unverified(tar: TarReader<R>, manifest: Manifest, manifest_bytes: Vec<u8>) -> Self {
        Self {
            tar,
            manifest,
            manifest_bytes,
            signed_by: KeyId([0; 8]),
            limits: Limits::default(),
            cursor: (0, 0),
            finished: false,
            decoder: None,
            audit: true,
            image_hash: sha2::Sha256::new(),
            image_hash_incomplete: false,
            stored: Vec::new(),
            bases: Vec::new(),
        }
    }

    /// Reads every remaining chunk and checks, beyond the acceptance rule, that the manifest's decoded hashes and
    /// image hashes describe its own frames (a broken builder, or a manifest edited after the payloads were made).
    pub(crate) fn audit_all(&mut self) -> Result<(), ArtifactError> {
        self.audit = true;
        self.verify_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{self, BuildOptions, ImageSource};

    fn image(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| ((i / 7) as u8).wrapping_mul(31) ^ seed ^ (i % 251) as u8).collect()
    }

    /// Two payloads of 5 and 3 chunks of 4 KiB; returns the artifact, the images and a keyring.
    fn two_payloads() -> (Vec<u8>, Vec<Vec<u8>>, Keyring) {
        let dir = tempfile::tempdir().unwrap();
        let images = vec![image(5 * 4096 - 100, 1), image(3 * 4096, 2)];
        let sources: Vec<_> = ["rootfs", "boot"]
            .iter()
            .zip(&images)
            .map(|(name, bytes)| {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).unwrap();
                ImageSource { name: (*name).into(), slot_class: (*name).into(), path, base: None }
            })
            .collect();
        let mut opts = BuildOptions::new(vec!["t".into()], "1");
        opts.chunk_size = 4096;
        let key = crate::keys::generate().unwrap();
        let mut out = Vec::new();
        builder::create(&opts, &sources, std::slice::from_ref(&key), &mut out).unwrap();
        let mut ring = Keyring::new();
        ring.add(key.verifying_key());
        (out, images, ring)
    }

    fn discard(r: &mut &[u8], n: u64) -> std::io::Result<()> {
        std::io::copy(&mut Read::take(r, n), &mut std::io::sink()).map(|_| ())
    }

    #[test]
    fn skipping_chunks_hands_out_exactly_the_rest() {
        let (artifact, images, ring) = two_payloads();
        let mut r = ArtifactReader::open(&artifact[..], &ring, &Policy::default()).unwrap();
        // Skip three chunks of the first payload and the whole second one after reading the rest of the first.
        assert_eq!(r.cursor(), Some(ChunkRef { payload: 0, index: 0 }));
        r.skip_chunks(3, discard).unwrap();
        assert_eq!(r.cursor(), Some(ChunkRef { payload: 0, index: 3 }));
        let mut got = Vec::new();
        let mut out = Vec::new();
        while r.cursor().is_some_and(|c| c.payload == 0) {
            let at = r.next_chunk(&mut out).unwrap().unwrap();
            got.push((at, out.clone()));
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, images[0][3 * 4096..4 * 4096]);
        assert_eq!(got[1].1, images[0][4 * 4096..]);
        r.skip_chunks(3, discard).unwrap();
        assert_eq!(r.cursor(), None);
        assert!(r.next_chunk(&mut out).unwrap().is_none(), "the end of the archive is still checked");
    }

    #[test]
    fn skipping_is_bounded_by_the_payload_and_the_skip_must_move_the_stream() {
        let (artifact, _, ring) = two_payloads();
        let mut r = ArtifactReader::open(&artifact[..], &ring, &Policy::default()).unwrap();
        assert!(matches!(r.skip_chunks(6, discard), Err(ArtifactError::TarHeader { .. })));
        // A skip that fails (a ranged re-request refused, say) is a read error.
        let failed = r.skip_chunks(2, |_, _| Err(std::io::Error::other("no range support")));
        assert!(matches!(failed, Err(ArtifactError::Io { .. })), "{failed:?}");
    }

    #[test]
    fn chunks_after_a_skipped_payload_are_still_verified() {
        let (mut artifact, _, ring) = two_payloads();
        let manifest = builder::read_unverified(&artifact[..]).unwrap().0;
        // Flip a byte inside the second payload's stored data: its chunk hash catches it.
        let end = artifact.len() - 1024 - (512 - (manifest.payloads[1].stored_size % 512) as usize) % 512;
        let at = end - manifest.payloads[1].stored_size as usize + 20;
        artifact[at] ^= 1;
        let mut r = ArtifactReader::open(&artifact[..], &ring, &Policy::default()).unwrap();
        r.skip_chunks(5, discard).unwrap();
        let mut out = Vec::new();
        let err = r.next_chunk(&mut out).unwrap_err();
        assert!(
            matches!(
                err,
                ArtifactError::ChunkHashMismatch { chunk: 0, .. } | ArtifactError::Decompress { chunk: 0, .. }
            ),
            "{err:?}"
        );
    }
}
