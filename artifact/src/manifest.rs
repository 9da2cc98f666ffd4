//! The manifest: what an artifact contains, signed as exact bytes. See `docs/artifact-format.md`.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ArtifactError;
use crate::tar::check_name;

/// The format major version this crate reads and writes. Readers reject any other major version.
pub const FORMAT_MAJOR: u32 = 1;
/// The format version string this crate writes for full artifacts (1.1: chunks carry `stored_sha256`).
pub const FORMAT_VERSION: &str = "1.1";
/// The format version string of delta artifacts (1.2 added `slot-delta` payloads, their `base` and the chunks'
/// `reference`; full artifacts stay 1.1 so that 1.1 readers keep reading them).
pub const DELTA_FORMAT_VERSION: &str = "1.2";
/// Name of the first tar entry.
pub const MANIFEST_ENTRY: &str = "manifest.json";
/// Name of the second tar entry.
pub const SIGNATURE_ENTRY: &str = "manifest.sig";
/// Smallest allowed chunk size, in bytes (4 KiB: the largest common block size, for aligned writes).
pub const MIN_CHUNK_SIZE: u64 = 4096;
/// Largest allowed chunk size, in bytes (16 MiB: bounds the memory a reader needs per chunk).
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;
/// Default chunk size, in bytes (4 MiB; see the measurement in `docs/artifact-format.md`).
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Most payloads one artifact may carry.
pub const MAX_PAYLOADS: usize = 16;
/// Largest reference region of one delta chunk, in bytes (40 MiB: +-16 MiB around a 4 MiB chunk plus alignment to
/// the base's chunks). It is what a device holds of its running slot while it decodes a delta, so it bounds memory.
pub const MAX_REFERENCE: u64 = 40 << 20;

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl std::str::FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("expected 64 lowercase hex digits, got {s:?}"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
        Ok(Self(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a payload's chunks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Each chunk is one zstd frame.
    Zstd,
    /// Chunks are stored as they are.
    None,
}

/// Payload kind: a raw slot image. Other kinds may be added in later minor versions.
pub const KIND_SLOT_IMAGE: &str = "slot-image";
/// Payload kind (format 1.2): a raw slot image whose chunks are zstd frames patched against regions of a base image
/// (the one the device runs), described by the payload's `base`. A 1.1 reader refuses it as an unknown kind.
pub const KIND_SLOT_DELTA: &str = "slot-delta";

/// The image a delta payload's chunks refer to (format 1.2): the image the device must be running, identified
/// chunk by chunk so that a device can check exactly the regions it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// Size of the base image in bytes.
    pub size: u64,
    /// SHA-256 of the whole base image (the `sha256` of the full artifact's payload that installed it).
    pub sha256: Digest,
    /// Size of every base chunk but the last: a multiple of 4096 from 4 KiB to 16 MiB.
    pub chunk_size: u64,
    /// SHA-256 of each base chunk, in image order: exactly `ceil(size / chunk_size)` digests.
    pub chunks: Vec<Digest>,
}

impl Base {
    /// Byte range of base chunk `index`.
    pub fn chunk_range(&self, index: usize) -> std::ops::Range<u64> {
        let start = index as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    /// Byte range of the base chunks `reference` names.
    pub fn region(&self, reference: Reference) -> std::ops::Range<u64> {
        self.chunk_range(reference.first as usize).start
            ..self.chunk_range((reference.first + reference.count - 1) as usize).end
    }
}

/// The region of the base image a delta chunk's frame was compressed against: base chunks `first ..
/// first + count`, used as zstd's reference prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// Index of the first base chunk.
    pub first: u64,
    /// Number of base chunks, at least 1.
    pub count: u64,
}

/// One chunk of a payload, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// SHA-256 of the chunk's decoded (installed) bytes.
    pub sha256: Digest,
    /// Length of the chunk as stored in the artifact (the zstd frame), in bytes.
    pub stored_size: u64,
    /// SHA-256 of the chunk's stored bytes (the zstd frame), since format 1.1: lets a reader check a frame before
    /// the decoder sees a byte of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_sha256: Option<Digest>,
    /// The base region the frame was compressed against (format 1.2, `slot-delta` payloads only); a delta chunk
    /// without one is an ordinary frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// One payload entry of the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Logical name, e.g. `rootfs`.
    pub name: String,
    /// Name of the tar entry holding the stored bytes.
    pub file: String,
    /// What the payload is; `slot-image` is the only kind defined in format 1.0.
    pub kind: String,
    /// Which slot class it is installed into, e.g. `rootfs`.
    pub slot_class: String,
    /// How the chunks are stored.
    pub compression: Compression,
    /// Size of the installed (decoded) image in bytes.
    pub size: u64,
    /// SHA-256 of the installed image.
    pub sha256: Digest,
    /// Size of the stored tar entry in bytes (the sum of the chunks' stored sizes).
    pub stored_size: u64,
    /// Decoded size of every chunk but the last, in bytes.
    pub chunk_size: u64,
    /// The chunks in order.
    pub chunks: Vec<Chunk>,
    /// The image the chunks are patched against (format 1.2, `slot-delta` payloads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
}

impl Payload {
    /// Decoded length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let start = index as u64 * self.chunk_size;
        self.chunk_size.min(self.size.saturating_sub(start))
    }

    /// Byte offset of chunk `index` in the installed image.
    pub fn chunk_offset(&self, index: usize) -> u64 {
        index as u64 * self.chunk_size
    }

    /// Whether this is a delta payload (kind `slot-delta`), which can only be decoded with its base at hand.
    pub fn is_delta(&self) -> bool {
        self.kind == KIND_SLOT_DELTA
    }

    /// Byte range of the base image that chunk `index` is patched against, if it is.
    pub fn reference_range(&self, index: usize) -> Option<std::ops::Range<u64>> {
        Some(self.base.as_ref()?.region(self.chunks[index].reference?))
    }
}

/// The manifest of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, `MAJOR.MINOR`.
    pub format_version: String,
    /// Device types this artifact may be installed on.
    pub compatible: Vec<String>,
    /// Human-readable version of the software inside.
    pub version: String,
    /// Monotonic anti-rollback counter.
    pub security_version: u64,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created: u64,
    /// Free-form description (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Payloads, in the order their entries follow in the tar stream.
    pub payloads: Vec<Payload>,
}

/// Upper bound of a zstd frame's size for `len` input bytes (`ZSTD_COMPRESSBOUND`), used to bound allocations for
/// stored chunks before they are verified.
pub fn zstd_bound(len: u64) -> u64 {
    let margin = if len < (128 << 10) { ((128 << 10) - len) >> 11 } else { 0 };
    len + (len >> 8) + margin
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ArtifactError {
    ArtifactError::InvalidManifest { field: field.into(), reason: reason.into() }
}

fn valid_chunk_size(size: u64) -> bool {
    (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) && size.is_multiple_of(MIN_CHUNK_SIZE)
}

/// The rules of a `slot-delta` payload (format 1.2): zstd frames, each checked on its stored bytes, and references
/// that lie inside the base and within [`MAX_REFERENCE`].
fn validate_delta(p: &Payload, base: &Base, f: &dyn Fn(&str) -> String) -> Result<(), ArtifactError> {
    if p.compression != Compression::Zstd {
        return Err(invalid(f("compression"), "a slot-delta payload is zstd-compressed"));
    }
    if base.size == 0 || !valid_chunk_size(base.chunk_size) {
        return Err(invalid(f("base"), "needs a size and a chunk_size that is a multiple of 4096 up to 16 MiB"));
    }
    if base.chunks.len() as u64 != base.size.div_ceil(base.chunk_size) {
        return Err(invalid(f("base.chunks"), "must hold one digest per base chunk"));
    }
    for (c, chunk) in p.chunks.iter().enumerate() {
        let field = |name: &str| f(&format!("chunks[{c}].{name}"));
        if chunk.stored_sha256.is_none() {
            return Err(invalid(field("stored_sha256"), "every chunk of a slot-delta payload needs one"));
        }
        let Some(r) = chunk.reference else { continue };
        let end = r.first.checked_add(r.count).filter(|&e| r.count > 0 && e <= base.chunks.len() as u64);
        if end.is_none() {
            return Err(invalid(field("reference"), "must name 1 or more chunks of the base"));
        }
        let len = p.reference_range(c).map_or(0, |r| r.end - r.start);
        if len > MAX_REFERENCE {
            return Err(invalid(field("reference"), format!("{len} bytes, more than the limit of {MAX_REFERENCE}")));
        }
    }
    Ok(())
}

impl Manifest {
    /// Parses and validates manifest bytes. Unknown fields are ignored (forward compatibility within a major
    /// version); an unknown major version is rejected before anything else is interpreted.
    pub fn parse(bytes: &[u8]) -> Result<Self, ArtifactError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: String,
        }
        let v: VersionOnly =
            serde_json::from_slice(bytes).map_err(|e| ArtifactError::MalformedManifest { reason: e.to_string() })?;
        let major = v.format_version.split('.').next().and_then(|m| m.parse::<u32>().ok());
        if major != Some(FORMAT_MAJOR) {
            return Err(ArtifactError::UnsupportedFormat { found: v.format_version, supported: FORMAT_MAJOR });
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ArtifactError::MalformedManifest { reason: e.to_string() })?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises the manifest to the bytes that get signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialisation cannot fail");
        out.push(b'\n');
        out
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self) -> Result<(), ArtifactError> {
        if self.compatible.is_empty() || self.compatible.iter().any(|c| c.is_empty()) {
            return Err(invalid("compatible", "must list at least one non-empty device type"));
        }
        if self.payloads.is_empty() {
            return Err(invalid("payloads", "must not be empty"));
        }
        if self.payloads.len() > MAX_PAYLOADS {
            return Err(invalid("payloads", format!("more than {MAX_PAYLOADS} payloads")));
        }
        let mut names = HashSet::new();
        let mut files = HashSet::new();
        for (i, p) in self.payloads.iter().enumerate() {
            let f = |name: &str| format!("payloads[{i}].{name}");
            if p.name.is_empty() || !names.insert(p.name.as_str()) {
                return Err(invalid(f("name"), "empty or duplicate payload name"));
            }
            check_name(&p.file).map_err(|e| invalid(f("file"), e.to_string()))?;
            if p.file == MANIFEST_ENTRY || p.file == SIGNATURE_ENTRY || !files.insert(p.file.as_str()) {
                return Err(invalid(f("file"), format!("{:?} is reserved or used twice", p.file)));
            }
            match (p.kind.as_str(), &p.base) {
                (KIND_SLOT_IMAGE, None) if p.chunks.iter().all(|c| c.reference.is_none()) => {}
                (KIND_SLOT_IMAGE, _) => {
                    return Err(invalid(f("base"), "a slot-image payload has no base and no chunk references"));
                }
                (KIND_SLOT_DELTA, Some(base)) => validate_delta(p, base, &f)?,
                (KIND_SLOT_DELTA, None) => return Err(invalid(f("base"), "a slot-delta payload needs a base")),
                (kind, _) => return Err(invalid(f("kind"), format!("unsupported payload kind {kind:?}"))),
            }
            if p.slot_class.is_empty() {
                return Err(invalid(f("slot_class"), "must not be empty"));
            }
            if p.size == 0 {
                return Err(invalid(f("size"), "an image cannot be empty"));
            }
            if !valid_chunk_size(p.chunk_size) {
                return Err(invalid(
                    f("chunk_size"),
                    format!("{} is not a multiple of 4096 between 4 KiB and 16 MiB", p.chunk_size),
                ));
            }
            let expected_chunks = p.size.div_ceil(p.chunk_size);
            if p.chunks.len() as u64 != expected_chunks {
                return Err(invalid(
                    f("chunks"),
                    format!("{} chunks listed, size and chunk_size need {expected_chunks}", p.chunks.len()),
                ));
            }
            let mut stored_total: u64 = 0;
            for (c, chunk) in p.chunks.iter().enumerate() {
                let len = p.chunk_len(c);
                let ok = match p.compression {
                    Compression::None => chunk.stored_size == len,
                    Compression::Zstd => chunk.stored_size > 0 && chunk.stored_size <= zstd_bound(len),
                };
                if !ok {
                    return Err(invalid(
                        format!("payloads[{i}].chunks[{c}].stored_size"),
                        format!("{} is impossible for a {len}-byte chunk", chunk.stored_size),
                    ));
                }
                stored_total += chunk.stored_size;
            }
            if stored_total != p.stored_size {
                return Err(invalid(
                    f("stored_size"),
                    format!("{} differs from the sum of the chunks, {stored_total}", p.stored_size),
                ));
            }
        }
        Ok(())
    }

    /// Creation time as an RFC 3339 UTC timestamp.
    pub fn created_rfc3339(&self) -> String {
        rfc3339(self.created)
    }
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION.into(),
            compatible: vec!["gw-x1".into()],
            version: "1.2.3".into(),
            security_version: 4,
            created: 1_700_000_000,
            description: None,
            payloads: vec![Payload {
                name: "rootfs".into(),
                file: "rootfs.img.zst".into(),
                kind: KIND_SLOT_IMAGE.into(),
                slot_class: "rootfs".into(),
                compression: Compression::Zstd,
                size: 10_000,
                sha256: Digest::of(b"x"),
                stored_size: 300,
                chunk_size: 4096,
                chunks: vec![
                    Chunk { sha256: Digest::of(b"a"), stored_size: 100, stored_sha256: None, reference: None },
                    Chunk { sha256: Digest::of(b"b"), stored_size: 100, stored_sha256: None, reference: None },
                    Chunk { sha256: Digest::of(b"c"), stored_size: 100, stored_sha256: None, reference: None },
                ],
                base: None,
            }],
        }
    }

    #[test]
    fn round_trips_and_ignores_unknown_fields() {
        let m = sample();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        v["future_field"] = serde_json::json!({"x": 1});
        v["payloads"][0]["future"] = serde_json::json!(true);
        v["format_version"] = "1.7".into();
        assert_eq!(Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap().version, "1.2.3");
    }

    #[test]
    fn rejects_unknown_major() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_bytes()).unwrap();
        v["format_version"] = "2.0".into();
        v["payloads"] = serde_json::json!("whatever a v2 manifest holds");
        assert!(matches!(
            Manifest::parse(&serde_json::to_vec(&v).unwrap()),
            Err(ArtifactError::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn rejects_inconsistent_chunks() {
        let mut m = sample();
        m.payloads[0].chunks.pop();
        assert!(matches!(m.validate(), Err(ArtifactError::InvalidManifest { .. })));
        let mut m = sample();
        m.payloads[0].stored_size = 301;
        assert!(matches!(m.validate(), Err(ArtifactError::InvalidManifest { .. })));
        let mut m = sample();
        m.payloads[0].chunks[0].stored_size = 1 << 30;
        m.payloads[0].stored_size = (1 << 30) + 200;
        assert!(matches!(m.validate(), Err(ArtifactError::InvalidManifest { .. })));
        let mut m = sample();
        m.payloads[0].file = "../x".into();
        assert!(matches!(m.validate(), Err(ArtifactError::InvalidManifest { .. })));
        let mut m = sample();
        m.payloads[0].kind = "bootloader".into();
        assert!(matches!(m.validate(), Err(ArtifactError::InvalidManifest { .. })));
    }

    #[test]
    fn chunk_geometry() {
        let p = &sample().payloads[0];
        assert_eq!((p.chunk_len(0), p.chunk_len(2)), (4096, 10_000 - 8192));
        assert_eq!(p.chunk_offset(2), 8192);
    }

    #[test]
    fn formats_time() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
