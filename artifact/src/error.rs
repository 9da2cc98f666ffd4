//! Typed errors of the artifact format.

use std::io;

/// Everything that can be wrong with an artifact, or with reading one.
///
/// Every variant names what failed and with what, so one line of it is a useful message for an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// An I/O error from the underlying stream or file.
    #[error("i/o error {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The stream ended early.
    #[error("artifact is truncated: stream ended in the {at}")]
    Truncated {
        /// Where the stream ended.
        at: String,
    },
    /// A tar header is malformed.
    #[error("malformed tar header: {reason}")]
    TarHeader {
        /// What is wrong.
        reason: String,
    },
    /// An entry name is not allowed.
    #[error("entry name {name:?} is not allowed: {reason}")]
    BadEntryName {
        /// The offending name.
        name: String,
        /// Why it is rejected.
        reason: String,
    },
    /// An entry is a link, device, directory or extension header.
    #[error("entry {name:?} is a {kind}; artifacts may only contain regular files")]
    NotARegularFile {
        /// The entry name.
        name: String,
        /// What it is instead.
        kind: String,
    },
    /// An entry appears where another one was expected (wrong order, extra or missing entries).
    #[error("unexpected entry {found:?} where {expected} was expected")]
    UnexpectedEntry {
        /// The entry found (or "end of archive").
        found: String,
        /// What the format requires at this position.
        expected: String,
    },
    /// Data follows the end-of-archive marker.
    #[error("unexpected data after the end-of-archive marker")]
    TrailingData,
    /// The manifest or signature block exceeds its size limit.
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The signature block cannot be parsed.
    #[error("malformed signature block, line {line}: {reason}")]
    MalformedSignatureBlock {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The signature block holds no signature at all.
    #[error("artifact is not signed")]
    NotSigned,
    /// None of the signatures is by a key in the keyring.
    #[error("artifact is signed only by unknown keys ({key_ids}); the keyring holds {keyring}")]
    UnknownKey {
        /// Key ids of the signatures present.
        key_ids: String,
        /// Key ids in the keyring.
        keyring: String,
    },
    /// A signature by a trusted key does not verify: the manifest was changed after signing, or the signature is
    /// corrupt.
    #[error("signature by key {key_id} does not verify the manifest (tampered or corrupt)")]
    BadSignature {
        /// The key id of the failing signature.
        key_id: String,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("malformed manifest: {reason}")]
    MalformedManifest {
        /// The parser's message.
        reason: String,
    },
    /// The manifest parses but breaks a rule of the format.
    #[error("invalid manifest: {field}: {reason}")]
    InvalidManifest {
        /// The field at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A delta payload's base region, read from the device (its running slot), is not the image the delta was made
    /// against: the device is not running the delta's base. Checked before the region is used.
    #[error(
        "payload {payload:?}: the base differs from the delta's at byte {offset} (the slot it reads is not the image \
         this delta was made from)"
    )]
    DeltaBaseMismatch {
        /// The payload.
        payload: String,
        /// Offset in the base image of the first chunk that differs (or could not be read).
        offset: u64,
    },
    /// A delta payload's chunk was to be decoded with no base at hand.
    #[error("payload {payload:?} is a delta: it can only be read with its base image (the running slot)")]
    DeltaNeedsBase {
        /// The payload.
        payload: String,
    },
    /// The manifest's format major version is not one this reader understands.
    #[error("unsupported artifact format version {found} (this reader supports {supported}.x)")]
    UnsupportedFormat {
        /// The version in the manifest.
        found: String,
        /// The supported major version.
        supported: u32,
    },
    /// The artifact is not meant for this device type.
    #[error("artifact is for {compatible:?}, not for device type {device:?}")]
    Incompatible {
        /// This device's type.
        device: String,
        /// The device types the artifact names.
        compatible: Vec<String>,
    },
    /// The artifact's security version is below the anti-rollback minimum.
    #[error("artifact security_version {found} is below the minimum {minimum} (anti-rollback)")]
    SecurityVersionTooLow {
        /// The artifact's security version.
        found: u64,
        /// The minimum allowed on this device.
        minimum: u64,
    },
    /// A payload entry's stored size differs from the manifest.
    #[error("payload {payload:?}: stored size is {actual} bytes, the manifest declares {declared}")]
    StoredSizeMismatch {
        /// The payload name.
        payload: String,
        /// Declared stored size.
        declared: u64,
        /// Size in the tar header.
        actual: u64,
    },
    /// A chunk decoded to a different length than declared (including the decompression-bomb guard).
    #[error("payload {payload:?} chunk {chunk}: decoded size differs from the declared {declared} bytes")]
    ChunkSizeMismatch {
        /// The payload name.
        payload: String,
        /// The chunk index.
        chunk: u64,
        /// Declared decoded size.
        declared: u64,
    },
    /// A chunk's SHA-256 differs from the signed manifest.
    #[error("payload {payload:?} chunk {chunk}: sha256 mismatch (corrupt or tampered payload)")]
    ChunkHashMismatch {
        /// The payload name.
        payload: String,
        /// The chunk index.
        chunk: u64,
    },
    /// The whole payload's SHA-256 differs from the manifest.
    #[error("payload {payload:?}: image sha256 mismatch")]
    ImageHashMismatch {
        /// The payload name.
        payload: String,
    },
    /// A chunk frame needs a larger decoder window than this device allows.
    #[error("payload {payload:?} chunk {chunk}: zstd window of {window} bytes exceeds the limit of {limit}")]
    WindowTooLarge {
        /// The payload name.
        payload: String,
        /// The chunk index.
        chunk: u64,
        /// The window the frame asks for.
        window: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A chunk is not a single valid zstd frame.
    #[error("payload {payload:?} chunk {chunk}: invalid zstd frame: {reason}")]
    Decompress {
        /// The payload name.
        payload: String,
        /// The chunk index.
        chunk: u64,
        /// The decoder's message.
        reason: String,
    },
    /// A chunk with a signed `stored_sha256` is a zstd frame without a content checksum: its decoded bytes would
    /// go unchecked, since readers rely on the checksum instead of hashing them again.
    #[error("payload {payload:?} chunk {chunk}: zstd frame has no content checksum (required with a stored_sha256)")]
    FrameWithoutChecksum {
        /// The payload name.
        payload: String,
        /// The chunk index.
        chunk: u64,
    },
    /// A key file cannot be read or parsed.
    #[error("key file {path}: {reason}")]
    BadKeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl ArtifactError {
    /// A stable, machine-readable code for the error class (used by the daemon's D-Bus errors and reports).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Truncated { .. } => "truncated",
            Self::TarHeader { .. }
            | Self::BadEntryName { .. }
            | Self::NotARegularFile { .. }
            | Self::UnexpectedEntry { .. }
            | Self::TrailingData => "malformed-archive",
            Self::TooLarge { .. } => "too-large",
            Self::MalformedSignatureBlock { .. } | Self::NotSigned => "not-signed",
            Self::UnknownKey { .. } => "unknown-key",
            Self::BadSignature { .. } => "bad-signature",
            Self::MalformedManifest { .. } | Self::InvalidManifest { .. } => "invalid-manifest",
            Self::UnsupportedFormat { .. } => "unsupported-format",
            Self::Incompatible { .. } => "incompatible",
            Self::SecurityVersionTooLow { .. } => "rollback-refused",
            Self::StoredSizeMismatch { .. }
            | Self::ChunkSizeMismatch { .. }
            | Self::ChunkHashMismatch { .. }
            | Self::ImageHashMismatch { .. }
            | Self::Decompress { .. }
            | Self::FrameWithoutChecksum { .. } => "corrupt-payload",
            Self::WindowTooLarge { .. } => "window-too-large",
            Self::DeltaBaseMismatch { .. } => "delta-base-mismatch",
            Self::DeltaNeedsBase { .. } => "delta-needs-base",
            Self::BadKeyFile { .. } => "bad-key",
        }
    }
}
