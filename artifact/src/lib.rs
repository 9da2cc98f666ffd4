//! The otter artifact format: a signed manifest and chunked, independently verifiable payloads in a plain tar
//! stream. The normative description is `docs/artifact-format.md`; this crate is its reference implementation.
//!
//! - [`ArtifactReader`] reads an artifact from any `Read` without seeking or temporary storage: signature first,
//!   then policy, then payload chunks, each verified against the signed manifest before it is handed out.
//! - `builder` (feature `build-host`) creates and re-signs artifacts, and `keys::generate`/`keys::write_keypair`
//!   make signing keys: build-host code that a device binary (`cargo build -p otterd`) does not compile in.

#[cfg(any(test, feature = "build-host"))]
pub mod builder;
pub mod delta;
mod error;
pub mod keys;
pub mod manifest;
mod reader;
pub mod tar;
#[cfg(any(test, feature = "build-host"))]
pub mod testing;

pub use delta::BaseWindow;
pub use error::ArtifactError;
pub use keys::{KeyId, Keyring, SignatureBlock};
pub use manifest::{Base, Chunk, Compression, Digest, Manifest, Payload, Reference};
pub use reader::{ArtifactReader, ChunkDecoder, ChunkRef, Limits, Policy};
