//! Resuming an interrupted install (a power cut, a killed process, a download that gave up) after the chunks it
//! had already written.
//!
//! While writing, the installer keeps a small *resume record* next to its other state: which artifact (the digest
//! of its signed manifest), which slot, how many leading chunks of each payload are in the slot and durable, and
//! the payload's first block (held back from the slot until the end, see [`crate::slot::HEAD`]). A checkpoint
//! syncs the slot first and then replaces the record atomically, so the record never claims more than the slot
//! holds.
//!
//! The record is a hint, never trusted: when an install of the same artifact into the same slot starts and finds
//! it, every chunk the record claims is read back from the slot and hashed against the signed manifest; the install
//! continues from the first chunk that does not match, skipping the source forward to it (a seek, or an HTTP
//! `Range` request). A stale, foreign or tampered record therefore only costs the read-back.

use std::io;
use std::path::{Path, PathBuf};

use otter_artifact::{Digest, Payload};
use serde::{Deserialize, Serialize};

use crate::error::InstallError;
use crate::slot::{AlignedBuf, HEAD, SlotWriter};

const FORMAT: &str = "otter-resume-1";

/// What an interrupted install had made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Always `otter-resume-1`.
    pub format: String,
    /// SHA-256 of the artifact's signed manifest (hex).
    pub manifest: String,
    /// Per payload, in manifest order.
    pub payloads: Vec<PayloadProgress>,
}

/// How far one payload got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadProgress {
    /// The slot it is written to.
    pub slot: PathBuf,
    /// Leading chunks written and synced.
    pub chunks: usize,
    /// The payload's first block (hex), not yet in the slot; empty while `chunks` is 0.
    pub head: String,
}

impl Record {
    /// A record for `digest` with one entry per slot.
    pub fn new(digest: &Digest, progress: Vec<PayloadProgress>) -> Self {
        Self { format: FORMAT.into(), manifest: digest.to_string(), payloads: progress }
    }

    /// Reads the record at `path`. A missing, unreadable or malformed record is no record: resuming is an
    /// optimisation, and everything it claims is verified anyway.
    pub fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice::<Self>(&text).ok().filter(|r| r.format == FORMAT)
    }

    /// Replaces the record at `path` atomically and durably ([`otter_common::durable::replace`]).
    pub fn store(&self, path: &Path) -> io::Result<()> {
        Ok(otter_common::durable::replace(path, &serde_json::to_vec(self).map_err(io::Error::other)?)?)
    }

    /// Removes the record at `path`, if there is one.
    pub fn remove(path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The progress of each payload, if this record is about the artifact `digest` written to `slots`.
    pub fn progress_for(&self, digest: &Digest, slots: &[&Path]) -> Option<&[PayloadProgress]> {
        let same = self.manifest == digest.to_string()
            && self.payloads.len() == slots.len()
            && self.payloads.iter().zip(slots).all(|(p, s)| p.slot == *s);
        same.then_some(&self.payloads)
    }
}

/// How many leading chunks of `payload`, up to `claimed`, the slot holds exactly as the signed manifest says.
/// Chunk 0 is checked with `head` (the block held back from the slot) in place of the slot's zeroed first block.
pub fn verified_prefix(
    slot: &mut SlotWriter,
    payload: &Payload,
    claimed: usize,
    head: &[u8],
) -> Result<usize, InstallError> {
    let claimed = claimed.min(payload.chunks.len());
    if claimed == 0 || head.len() != (payload.chunk_len(0) as usize).min(HEAD) {
        return Ok(0);
    }
    let mut buf = AlignedBuf::new(payload.chunk_size as usize);
    for index in 0..claimed {
        let data = buf.resize(payload.chunk_len(index) as usize);
        if !slot.read_at(data, payload.chunk_offset(index))? {
            return Ok(index);
        }
        if index == 0 {
            data[..head.len()].copy_from_slice(head);
        }
        if Digest::of(data) != payload.chunks[index].sha256 {
            return Ok(index);
        }
    }
    Ok(claimed)
}
