//! Typed installer errors.

use std::io;
use std::path::PathBuf;

use otter_artifact::ArtifactError;

/// Why an install failed. The target slot is never left looking like it holds a valid image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The artifact is invalid, untrusted or not for this device.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// The source could not be opened or read.
    #[error("cannot read {source_name}: {error}")]
    Source {
        /// The file, `-` or URL.
        source_name: String,
        /// The underlying error.
        #[source]
        error: io::Error,
    },
    /// The server answered with an HTTP error status.
    #[error("{url}: server answered HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The HTTP client could not be set up (bad CA bundle, client certificate, header).
    #[error("http client setup: {0}")]
    HttpSetup(String),
    /// The connection kept dropping: the download could not be resumed.
    #[error("{url}: connection lost {attempts} times, giving up at byte {position}: {last_error}")]
    ConnectionLost {
        /// The URL.
        url: String,
        /// How many times it dropped.
        attempts: u32,
        /// Where the stream stopped.
        position: u64,
        /// The last error seen.
        last_error: String,
    },
    /// The server's copy changed while it was being downloaded (a resume got a full new body, or the
    /// validator changed); the install must start over.
    #[error("{url}: the artifact changed on the server during the download")]
    SourceChanged {
        /// The URL.
        url: String,
    },
    /// The slot cannot hold the image.
    #[error("slot {slot} holds {capacity} bytes, the image needs {needed}")]
    SlotTooSmall {
        /// The slot device or file.
        slot: PathBuf,
        /// Its capacity.
        capacity: u64,
        /// The image size.
        needed: u64,
    },
    /// Writing, reading or syncing the slot failed (including a full disk).
    #[error("slot {slot}: {context}: {error}")]
    Slot {
        /// The slot device or file.
        slot: PathBuf,
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        error: io::Error,
    },
    /// A delta's base is the slot it would be written to: it would overwrite what it reads.
    #[error("the delta's base {slot} is its target slot")]
    BaseIsTarget {
        /// The slot device or file.
        slot: PathBuf,
    },
    /// The artifact has a payload for a slot class no target was given for.
    #[error("artifact has payload {payload:?} for slot class {slot_class:?}, but no target slot is configured for it")]
    NoTarget {
        /// The payload name.
        payload: String,
        /// Its slot class.
        slot_class: String,
    },
    /// The artifact failed on this device before and is not retried automatically.
    #[error("artifact {digest} failed on this device before; not retrying it automatically")]
    Refused {
        /// Its manifest digest.
        digest: String,
    },
    /// The artifact stream's SHA-256 differs from the one the caller expected (e.g. the update server's).
    #[error("{source_name}: sha256 of the downloaded artifact is {actual}, the server announced {expected}")]
    StreamHashMismatch {
        /// The file or URL.
        source_name: String,
        /// Expected digest, hex.
        expected: String,
        /// Digest of the bytes received, hex.
        actual: String,
    },
    /// The source delivered nothing for [`crate::InstallRequest::stall_timeout`] (a stalled connection that could
    /// not be resumed, a slow-loris server, a pipe whose writer never writes).
    #[error("{source_name}: no data for {seconds} s; giving up")]
    Stalled {
        /// The file, `-`, descriptor name or URL (redacted).
        source_name: String,
        /// How long nothing arrived.
        seconds: u64,
    },
    /// The install was cancelled.
    #[error("install cancelled")]
    Cancelled,
    /// A link from a server (or a redirect) is not an absolute `http`/`https` URL (a path, `file:`...).
    #[error("{link}: not an http(s) URL; refusing to read it")]
    NotHttpUrl {
        /// The link (redacted).
        link: String,
    },
    /// A plain `http` link (or redirect) where only `https` is allowed ([`crate::HttpOptions::https_only`]).
    #[error("{url}: plain http link refused (the server is reached over https)")]
    InsecureLink {
        /// The URL (redacted).
        url: String,
    },
    /// More redirects than allowed.
    #[error("{url}: more than {limit} redirects")]
    TooManyRedirects {
        /// The URL first requested (redacted).
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The server sent more than the announced size (or `Content-Length`): an endless body.
    #[error("{url}: the body is longer than the announced {limit} bytes")]
    TooLong {
        /// The URL (redacted).
        url: String,
        /// The announced size.
        limit: u64,
    },
    /// The `Content-Length` differs from the size the server announced for the file.
    #[error("{url}: {actual} bytes served, {announced} announced")]
    LengthMismatch {
        /// The URL (redacted).
        url: String,
        /// The announced size.
        announced: u64,
        /// The `Content-Length`.
        actual: u64,
    },
    /// A digest of the whole file differs from the one the server announced.
    #[error("{url}: {algorithm} of the downloaded file is {actual}, the server announced {expected}")]
    DigestMismatch {
        /// The URL (redacted).
        url: String,
        /// Which digest.
        algorithm: DigestAlgorithm,
        /// Announced, hex.
        expected: String,
        /// Computed, hex.
        actual: String,
    },
    /// The file behind the URL changed during a download bound to one file ([`crate::HttpOptions::pin_entity`]).
    #[error("{url}: the server replaced the file during the download")]
    ArtifactReplaced {
        /// The URL (redacted).
        url: String,
    },
    /// The verified manifest's version is not the one the server announced.
    #[error("the artifact is version {actual:?}, the server announced {expected:?}")]
    VersionMismatch {
        /// Announced.
        expected: String,
        /// In the verified manifest.
        actual: String,
    },
}

/// A digest an update server announces for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-1.
    Sha1,
    /// MD5.
    Md5,
    /// SHA-256.
    Sha256,
}

impl std::fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sha1 => "sha1",
            Self::Md5 => "md5",
            Self::Sha256 => "sha256",
        })
    }
}

impl InstallError {
    /// Whether the artifact is a delta that this device cannot apply as it is: its running slot is not the delta's
    /// base, or it has none. Nothing was written; the same update in another form (the full artifact) may apply.
    pub fn is_delta_for_another_base(&self) -> bool {
        use otter_artifact::ArtifactError as A;
        matches!(self, Self::Artifact(A::DeltaBaseMismatch { .. } | A::DeltaNeedsBase { .. }))
    }

    /// Whether the artifact itself is at fault (malformed, not for this device, older than allowed, corrupt
    /// payload, failed here before), so that retrying the same artifact cannot succeed: an automatic job never
    /// retries it. Network, disk, key and cancellation errors are not the artifact's fault, nor is an artifact
    /// error this version does not know (it may be retried; never wrongly blacklisted), nor a delta whose base the
    /// device does not run now ([`InstallError::is_delta_for_another_base`]: it applies again after a rollback to
    /// its base).
    pub fn is_artifact_fault(&self) -> bool {
        use otter_artifact::ArtifactError as A;
        match self {
            Self::Artifact(e) => matches!(
                e,
                A::Truncated { .. }
                    | A::TarHeader { .. }
                    | A::BadEntryName { .. }
                    | A::NotARegularFile { .. }
                    | A::UnexpectedEntry { .. }
                    | A::TrailingData
                    | A::TooLarge { .. }
                    | A::MalformedManifest { .. }
                    | A::InvalidManifest { .. }
                    | A::UnsupportedFormat { .. }
                    | A::Incompatible { .. }
                    | A::SecurityVersionTooLow { .. }
                    | A::StoredSizeMismatch { .. }
                    | A::ChunkSizeMismatch { .. }
                    | A::ChunkHashMismatch { .. }
                    | A::ImageHashMismatch { .. }
                    | A::Decompress { .. }
                    | A::WindowTooLarge { .. }
            ),
            Self::Refused { .. } => true,
            _ => false,
        }
    }

    /// A stable, machine-readable code for the error class.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Artifact(e) => e.code(),
            Self::Source { .. } => "source-unavailable",
            Self::HttpStatus { .. } => "http-status",
            Self::HttpSetup(_) => "http-setup",
            Self::ConnectionLost { .. } => "connection-lost",
            Self::SourceChanged { .. } => "source-changed",
            Self::SlotTooSmall { .. } => "slot-too-small",
            Self::Slot { error, .. } if error.raw_os_error() == Some(libc::ENOSPC) => "no-space",
            Self::Slot { .. } => "slot-io",
            Self::NoTarget { .. } => "no-target",
            Self::BaseIsTarget { .. } => "base-is-target",
            Self::Refused { .. } => "previously-failed",
            Self::StreamHashMismatch { .. } => "stream-hash-mismatch",
            Self::Stalled { .. } => "stalled",
            Self::Cancelled => "cancelled",
            Self::NotHttpUrl { .. } => "not-http-url",
            Self::InsecureLink { .. } => "insecure-link",
            Self::TooManyRedirects { .. } => "too-many-redirects",
            Self::TooLong { .. } => "too-long",
            Self::LengthMismatch { .. } => "length-mismatch",
            Self::DigestMismatch { .. } => "digest-mismatch",
            Self::ArtifactReplaced { .. } => "artifact-replaced",
            Self::VersionMismatch { .. } => "version-mismatch",
        }
    }
}
