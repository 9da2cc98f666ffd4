//! Creating and re-signing artifacts (build-host side).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use ed25519_dalek::SigningKey;
use sha2::Digest as _;

use crate::error::ArtifactError;
use crate::keys::SignatureBlock;
use crate::manifest::{
    Base, Chunk, Compression, DEFAULT_CHUNK_SIZE, DELTA_FORMAT_VERSION, Digest, FORMAT_VERSION, KIND_SLOT_DELTA,
    KIND_SLOT_IMAGE, MANIFEST_ENTRY, MAX_REFERENCE, Manifest, Payload, Reference, SIGNATURE_ENTRY,
};
use crate::reader::Limits;
use crate::tar::{TarReader, TarWriter};

/// Default zstd level: 19 gives the smallest artifacts whose frames still decode with at most an 8 MiB window.
pub const DEFAULT_LEVEL: i32 = 19;

/// An image to put into an artifact.
#[derive(Debug, Clone)]
pub struct ImageSource {
    /// Payload name, e.g. `rootfs`.
    pub name: String,
    /// Slot class it installs into.
    pub slot_class: String,
    /// The image file.
    pub path: PathBuf,
    /// Make a delta payload (`slot-delta`) against this older image instead of a full one.
    pub base: Option<DeltaBase>,
}

/// The image a delta payload is made against (the one the devices run), and how far around each chunk to look.
#[derive(Debug, Clone)]
pub struct DeltaBase {
    /// The base image file (the decoded payload of the artifact the devices installed).
    pub path: PathBuf,
    /// Bytes of the base on each side of a chunk's own offset that its patch may refer to: the device holds about
    /// twice this plus one chunk of its running slot while it decodes. Capped so a reference stays within
    /// [`MAX_REFERENCE`].
    pub window: u64,
}

/// Default [`DeltaBase::window`]: 16 MiB on each side (measured in `docs/delta-study.md`: 0.057 of the full
/// artifact on a monthly Debian update, 44 MiB of device memory; 32 MiB doubled both the patches and the memory).
pub const DEFAULT_DELTA_WINDOW: u64 = 16 << 20;

/// A base image opened for making patches: its description for the manifest, and the file.
struct OpenBase {
    file: File,
    base: Base,
    window: u64,
}

impl OpenBase {
    fn open(src: &DeltaBase, chunk_size: u64) -> Result<Self, ArtifactError> {
        let file = File::open(&src.path).map_err(io_err(format!("opening base image {}", src.path.display())))?;
        let size = file.metadata().map_err(io_err(format!("reading size of {}", src.path.display())))?.len();
        let mut whole = sha2::Sha256::new();
        let mut chunks = Vec::new();
        let mut buf = Vec::new();
        for offset in (0..size).step_by(chunk_size as usize) {
            buf.resize(chunk_size.min(size - offset) as usize, 0);
            file.read_exact_at(&mut buf, offset).map_err(io_err(format!("reading {}", src.path.display())))?;
            whole.update(&buf);
            chunks.push(Digest::of(&buf));
        }
        let base = Base { size, sha256: Digest(whole.finalize().into()), chunk_size, chunks };
        Ok(Self { file, base, window: src.window })
    }

    /// The base chunks within the window around `range` of the new image, bounded by [`MAX_REFERENCE`], or the one
    /// base chunk at the same offset when it is identical (its patch is then found at once).
    fn reference_for(&self, range: std::ops::Range<u64>, hash: &Digest) -> Option<Reference> {
        let cs = self.base.chunk_size;
        let same = range.start / cs;
        if range.start.is_multiple_of(cs) && self.base.chunks.get(same as usize) == Some(hash) {
            return Some(Reference { first: same, count: 1 });
        }
        let span = MAX_REFERENCE.min(range.end - range.start + 2 * self.window) / cs;
        let last = self.base.chunks.len() as u64;
        let first = (range.start.saturating_sub(self.window) / cs).min(last);
        let end = range.end.saturating_add(self.window).div_ceil(cs).min(last).min(first + span.max(1));
        (end > first).then(|| Reference { first, count: end - first })
    }

    /// A patch of `target` against its reference region, or a plain frame when that is not smaller.
    fn encode(&self, level: i32, target: &[u8], hash: &Digest, offset: u64) -> Result<Compressed, ArtifactError> {
        use zstd::zstd_safe::{CCtx, CParameter};
        let plain = || -> Result<Vec<u8>, ArtifactError> {
            let mut c = zstd::bulk::Compressor::new(level).map_err(io_err("creating zstd encoder"))?;
            c.set_parameter(CParameter::ChecksumFlag(true)).map_err(io_err("configuring zstd"))?;
            c.compress(target).map_err(io_err("compressing a chunk"))
        };
        let Some(reference) = self.reference_for(offset..offset + target.len() as u64, hash) else {
            return Ok((plain()?, None));
        };
        let region = self.base.region(reference);
        let mut prefix = vec![0u8; (region.end - region.start) as usize];
        self.file.read_exact_at(&mut prefix, region.start).map_err(io_err("reading the base image"))?;
        let window_log = (prefix.len() as u64 + target.len() as u64).next_power_of_two().trailing_zeros().max(10);
        let zstd = |code: usize| ArtifactError::Io {
            context: "making a zstd patch".into(),
            source: io::Error::other(zstd::zstd_safe::get_error_name(code)),
        };
        let mut cctx = CCtx::create();
        // Long-distance matching finds the base's long runs at any level; without it the fast levels' small hash
        // tables miss most of a 40 MiB reference (a chunk identical to its base came out 4x larger at level 1).
        for p in [
            CParameter::CompressionLevel(level),
            CParameter::WindowLog(window_log),
            CParameter::EnableLongDistanceMatching(true),
            CParameter::ChecksumFlag(true),
        ] {
            cctx.set_parameter(p).map_err(zstd)?;
        }
        cctx.ref_prefix(&prefix).map_err(zstd)?;
        let mut patch = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
        cctx.compress2(&mut patch, target).map_err(zstd)?;
        // A patch far smaller than the chunk cannot lose to a plain frame; otherwise compare.
        if patch.len() * 8 > target.len() {
            let plain = plain()?;
            if plain.len() <= patch.len() {
                return Ok((plain, None));
            }
        }
        Ok((patch, Some(reference)))
    }
}

/// A chunk's stored bytes and the base region they were made against.
type Compressed = (Vec<u8>, Option<Reference>);

/// Everything about an artifact except its payloads.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Device types it may be installed on.
    pub compatible: Vec<String>,
    /// Display version.
    pub version: String,
    /// Anti-rollback counter.
    pub security_version: u64,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Optional description.
    pub description: Option<String>,
    /// Decoded chunk size in bytes.
    pub chunk_size: u64,
    /// How chunks are stored.
    pub compression: Compression,
    /// zstd level.
    pub level: i32,
    /// Compression threads (0: one per CPU).
    pub threads: usize,
}

impl BuildOptions {
    /// Options with the defaults for everything but what identifies the artifact.
    pub fn new(compatible: Vec<String>, version: impl Into<String>) -> Self {
        Self {
            compatible,
            version: version.into(),
            security_version: 0,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            description: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression: Compression::Zstd,
            level: DEFAULT_LEVEL,
            threads: 0,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArtifactError {
    let context = context.into();
    move |source| ArtifactError::Io { context, source }
}

/// Cuts `image` into chunks, compresses them in parallel into `stored`, and returns the payload description.
fn encode_image(opts: &BuildOptions, src: &ImageSource, stored: &mut File) -> Result<Payload, ArtifactError> {
    let image = File::open(&src.path).map_err(io_err(format!("opening image {}", src.path.display())))?;
    let size = image.metadata().map_err(io_err(format!("reading size of {}", src.path.display())))?.len();
    let count = size.div_ceil(opts.chunk_size) as usize;
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
    .min(count.max(1));
    let base = match &src.base {
        Some(b) if opts.compression == Compression::Zstd => Some(OpenBase::open(b, opts.chunk_size)?),
        Some(_) => {
            return Err(ArtifactError::Io {
                context: format!("making a delta of {}", src.name),
                source: io::Error::other("a delta payload is zstd-compressed"),
            });
        }
        None => None,
    };
    let next = AtomicUsize::new(0);
    type Encoded = (usize, Digest, Option<Digest>, Vec<u8>, Option<Reference>);
    let (tx, rx) = mpsc::sync_channel::<Result<Encoded, ArtifactError>>(threads * 2);
    let mut chunks = vec![None; count];
    let mut stored_size = 0u64;
    std::thread::scope(|s| -> Result<(), ArtifactError> {
        for _ in 0..threads {
            let tx = tx.clone();
            let (image, next, base) = (&image, &next, &base);
            s.spawn(move || {
                let mut compressor = match opts.compression {
                    // Each frame carries zstd's own checksum of its content, so the decoder checks its output.
                    Compression::Zstd => match zstd::bulk::Compressor::new(opts.level).and_then(|mut c| {
                        c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                        Ok(c)
                    }) {
                        Ok(c) => Some(c),
                        Err(e) => return drop(tx.send(Err(io_err("creating zstd encoder")(e)))),
                    },
                    Compression::None => None,
                };
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let offset = i as u64 * opts.chunk_size;
                    buf.resize(opts.chunk_size.min(size - offset) as usize, 0);
                    let result = image
                        .read_exact_at(&mut buf, offset)
                        .map_err(io_err(format!("reading {}", src.path.display())))
                        .and_then(|()| {
                            let hash = Digest::of(&buf);
                            match (&mut compressor, base) {
                                (Some(_), Some(base)) => {
                                    let (data, reference) = base.encode(opts.level, &buf, &hash, offset)?;
                                    Ok((i, hash, Some(Digest::of(&data)), data, reference))
                                }
                                (Some(c), None) => {
                                    let data = c.compress(&buf).map_err(io_err("compressing a chunk"))?;
                                    Ok((i, hash, Some(Digest::of(&data)), data, None))
                                }
                                (None, _) => Ok((i, hash, None, buf.clone(), None)),
                            }
                        });
                    if tx.send(result).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Chunks arrive in any order; write them to the stored file in order.
        let mut pending = BTreeMap::new();
        let mut want = 0;
        for result in rx {
            let (i, hash, stored_sha256, data, reference) = result?;
            pending.insert(i, (hash, stored_sha256, data, reference));
            while let Some((hash, stored_sha256, data, reference)) = pending.remove(&want) {
                stored.write_all(&data).map_err(io_err("writing compressed data to a temporary file"))?;
                stored_size += data.len() as u64;
                chunks[want] = Some(Chunk { sha256: hash, stored_size: data.len() as u64, stored_sha256, reference });
                want += 1;
            }
        }
        Ok(())
    })?;
    let chunks: Vec<Chunk> =
        chunks.into_iter().collect::<Option<_>>().ok_or_else(|| ArtifactError::Truncated { at: "image".into() })?;
    // The whole-image hash: one sequential pass over the file.
    let mut hasher = sha2::Sha256::new();
    let mut reader = io::BufReader::with_capacity(1 << 20, &image);
    io::copy(&mut reader, &mut hasher).map_err(io_err(format!("hashing {}", src.path.display())))?;
    let ext = match opts.compression {
        Compression::Zstd => "img.zst",
        Compression::None => "img",
    };
    Ok(Payload {
        name: src.name.clone(),
        file: format!("{}.{ext}", src.name),
        kind: if base.is_some() { KIND_SLOT_DELTA } else { KIND_SLOT_IMAGE }.into(),
        slot_class: src.slot_class.clone(),
        compression: opts.compression,
        size,
        sha256: Digest(hasher.finalize().into()),
        stored_size,
        chunk_size: opts.chunk_size,
        chunks,
        base: base.map(|b| b.base),
    })
}

/// Builds an artifact from `images`, signed by every key in `keys`, into `out`. Compressed chunks are staged in
/// anonymous temporary files (the manifest, which lists their hashes, must come first in the stream).
pub fn create(
    opts: &BuildOptions,
    images: &[ImageSource],
    keys: &[SigningKey],
    out: impl Write,
) -> Result<Manifest, ArtifactError> {
    let mut payloads = Vec::new();
    let mut staged = Vec::new();
    for src in images {
        let mut tmp = tempfile::tempfile().map_err(io_err("creating a temporary file"))?;
        payloads.push(encode_image(opts, src, &mut tmp)?);
        staged.push(tmp);
    }
    let delta = payloads.iter().any(Payload::is_delta);
    let manifest = Manifest {
        format_version: if delta { DELTA_FORMAT_VERSION } else { FORMAT_VERSION }.into(),
        compatible: opts.compatible.clone(),
        version: opts.version.clone(),
        security_version: opts.security_version,
        created: opts.created,
        description: opts.description.clone(),
        payloads,
    };
    manifest.validate()?;
    let bytes = manifest.to_bytes();
    let mut block = SignatureBlock::default();
    for k in keys {
        block.sign(k, &bytes);
    }
    let mut tar = TarWriter::new(out, opts.created);
    tar.append(MANIFEST_ENTRY, &bytes)?;
    tar.append(SIGNATURE_ENTRY, &block.to_bytes())?;
    for (p, mut tmp) in manifest.payloads.iter().zip(staged) {
        tmp.rewind().map_err(io_err("rewinding a temporary file"))?;
        tar.append_reader(&p.file, p.stored_size, &mut io::BufReader::with_capacity(1 << 20, tmp))?;
    }
    let mut out = tar.finish()?;
    out.flush().map_err(io_err("flushing the artifact"))?;
    Ok(manifest)
}

/// Reads the manifest and signature block of an artifact without verifying anything (for display).
pub fn read_unverified(input: impl Read) -> Result<(Manifest, SignatureBlock), ArtifactError> {
    let (manifest_bytes, block, _) = read_head(input)?;
    Ok((Manifest::parse(&manifest_bytes)?, block))
}

fn read_head<R: Read>(input: R) -> Result<(Vec<u8>, SignatureBlock, TarReader<R>), ArtifactError> {
    let mut tar = TarReader::new(input);
    let (manifest, block) = crate::reader::read_head(&mut tar, &Limits::default())?;
    Ok((manifest, block, tar))
}

/// Copies an artifact from `input` to `out`, adding a signature by `key` over its manifest. The manifest and the
/// payload entries are copied byte for byte, so existing signatures stay valid.
///
/// A signature vouches for every hash in the manifest, so the payloads are checked against all of them while they
/// are copied: stored and decoded chunk hashes and each image's hash. Readers take a signed frame's decoding as
/// the truth without hashing it again; this is where a manifest that contradicts its own frames is refused.
pub fn add_signature(input: impl Read, key: &SigningKey, out: impl Write) -> Result<Manifest, ArtifactError> {
    let (bytes, mut block, tar) = read_head(input)?;
    // Refuse to vouch for something that is not a valid manifest.
    let manifest = Manifest::parse(&bytes)?;
    block.sign(key, &bytes);
    let mut tar_out = TarWriter::new(out, manifest.created);
    tar_out.append(MANIFEST_ENTRY, &bytes)?;
    tar_out.append(SIGNATURE_ENTRY, &block.to_bytes())?;
    let mut out = tar_out.into_inner();
    let rest = Tee { inner: tar.into_rest()?, copy: &mut out };
    crate::reader::ArtifactReader::unverified(TarReader::new(rest), manifest.clone(), bytes).audit_all()?;
    out.flush().map_err(io_err("flushing the artifact"))?;
    Ok(manifest)
}

/// A reader that writes everything it reads to `copy`.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
