//! The otter installer: streams a signed artifact from a file, stdin or HTTP(S) into slot devices or files.
//!
//! Three stages run at once, connected by small bounded channels so memory stays flat whatever the image size:
//!
//! ```text
//!  source ─► tar/manifest/signature ─► stored chunks ─► [decode + sha256] × N ─► slot writer (aligned, O_DIRECT)
//!  (this thread)                                        (worker threads)          (writer thread)
//! ```
//!
//! Nothing reaches a slot before the artifact's signature and the device policy have been checked, and no chunk is
//! written before its hash matched the signed manifest. The slot's first block is zeroed before the first write and
//! written last, after everything else is durable, so an interrupted or failed install never leaves a slot that
//! looks valid.
//!
//! An install that stops part-way (power cut, killed process, lost connection) can continue later from the chunks
//! it had made durable, when the request names a resume record (see [`resume`]).

mod error;
mod pipeline;
pub mod resume;
pub mod slot;
pub mod source;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use otter_artifact::{ArtifactError, ArtifactReader, Digest, KeyId, Keyring, Manifest, Policy};

pub use error::{DigestAlgorithm, InstallError};
pub use pipeline::DECODER_THREAD;
use slot::SlotWriter;
pub use source::{Announced, HttpOptions, Source, UrlRefresh};

/// A cancellation flag shared between the installer and whoever may cancel it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<(Mutex<bool>, Condvar)>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation; the install stops at its next check (at most one chunk later).
    pub fn cancel(&self) {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0.1.notify_all();
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` unless cancelled first; returns whether it was cancelled.
    pub fn sleep(&self, d: Duration) -> bool {
        let guard = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self.0.1.wait_timeout_while(guard, d, |c| !*c).unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// Where payloads of one slot class go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The slot class, e.g. `rootfs`.
    pub slot_class: String,
    /// The block device or file of the inactive slot.
    pub path: PathBuf,
    /// Size limit of the slot in bytes, on top of a block device's own size (a file-backed slot has none).
    pub max_size: Option<u64>,
    /// The image a delta payload for this slot class is patched against: the running slot of that class (a block
    /// device or file, only read). `None` refuses delta artifacts for this class.
    pub base: Option<PathBuf>,
}

/// Everything one install needs.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// Where the artifact comes from.
    pub source: Source,
    /// Target slots by slot class.
    pub targets: Vec<Target>,
    /// Trusted keys.
    pub keyring: Keyring,
    /// Device type, anti-rollback minimum and limits.
    pub policy: Policy,
    /// HTTP settings (for URL sources).
    pub http: HttpOptions,
    /// Compare each verified chunk with what the slot already holds and skip identical writes (saves flash wear
    /// when re-installing over a similar image, costs a read per chunk).
    pub skip_identical: bool,
    /// Decoding threads (0: one per CPU, at most 4).
    pub decode_threads: usize,
    /// Manifest digests to refuse after verification (artifacts that failed before and must not be retried
    /// automatically).
    pub refuse: Vec<Digest>,
    /// SHA-256 the whole artifact stream must have (e.g. the update server's hash of the file), checked on top of
    /// the signed manifest. The bytes are hashed in the order the source delivers them, across resumed
    /// connections; on a mismatch the install fails before the slot's first block is written.
    pub expected_sha256: Option<[u8; 32]>,
    /// Where to keep the resume record (see [`resume`]): with it, an interrupted install of the same artifact
    /// into the same slots continues after the chunks it had already written and synced, instead of starting over.
    /// `None` disables resuming.
    pub resume_file: Option<PathBuf>,
    /// Least time between two resume checkpoints; each one syncs the slot and rewrites the record. A fast local
    /// install finishes before the first; a slow download loses at most about this much work to a power cut.
    pub checkpoint_interval: Duration,
    /// Longest time the source may deliver no byte at all before the install fails as
    /// [`InstallError::Stalled`] (HTTP: after the resumes it allows; a pipe or descriptor: at once).
    pub stall_timeout: Duration,
}

/// Default [`InstallRequest::stall_timeout`]: 2 minutes.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);

impl InstallRequest {
    /// A request with default HTTP options, no identical-chunk skipping and automatic threading.
    pub fn new(source: Source, targets: Vec<Target>, keyring: Keyring, policy: Policy) -> Self {
        Self {
            source,
            targets,
            keyring,
            policy,
            http: HttpOptions::default(),
            skip_identical: false,
            decode_threads: 0,
            refuse: Vec::new(),
            expected_sha256: None,
            resume_file: None,
            checkpoint_interval: Duration::from_secs(2),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// What the installer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the source.
    Connecting,
    /// Reading and checking the manifest and signature.
    Verifying,
    /// Streaming payloads into the slots.
    Writing,
    /// Making the written data durable.
    Syncing,
    /// Finished successfully.
    Done,
}

/// A progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Current phase.
    pub phase: Phase,
    /// Artifact bytes read from the source.
    pub bytes_read: u64,
    /// Image bytes verified and written (or found identical).
    pub bytes_written: u64,
    /// Total image bytes to write (0 until the manifest is verified).
    pub total: u64,
    /// Length of the artifact, when the source tells.
    pub source_length: Option<u64>,
    /// SHA-256 of the signed manifest, once it was verified.
    pub manifest_digest: Option<Digest>,
}

impl Progress {
    /// Completion in percent, by image bytes written.
    pub fn percent(&self) -> u32 {
        match (self.phase, self.total) {
            (Phase::Done, _) => 100,
            (_, 0) => 0,
            (_, t) => (self.bytes_written.saturating_mul(100) / t).min(99) as u32,
        }
    }
}

/// What a successful install did.
#[derive(Debug, Clone)]
pub struct InstallReport {
    /// The verified manifest.
    pub manifest: Manifest,
    /// SHA-256 of the signed manifest bytes.
    pub manifest_digest: Digest,
    /// The key whose signature was accepted.
    pub signed_by: KeyId,
    /// Bytes received from the source (more than the artifact when a download restarted).
    pub bytes_received: u64,
    /// Image bytes written.
    pub bytes_written: u64,
    /// Chunks not rewritten because the slot already held them.
    pub chunks_skipped: u64,
    /// Chunks an earlier, interrupted install had written, found intact and not fetched again.
    pub chunks_resumed: u64,
    /// Why the resume record could not be written, if it could not (the install itself went on).
    pub checkpoint_error: Option<String>,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// Installs an artifact. On success every payload is in its slot, verified and synced. On failure the error says
/// why; a slot that was written to is left with its first block zeroed; a slot is not touched at all when the
/// failure comes before the first payload byte (bad signature, wrong device, unreachable source...).
pub fn install(
    req: &InstallRequest,
    progress: &(dyn Fn(&Progress) + Sync),
    cancel: &CancelToken,
) -> Result<InstallReport, InstallError> {
    let start = Instant::now();
    let received = source::ByteCounter::default();
    let mut restarted = false;
    loop {
        match install_once(req, progress, cancel, &received) {
            // The server's copy changed under a resumed download: one fresh start, then give up.
            Err(InstallError::SourceChanged { .. }) if !restarted => restarted = true,
            Ok(mut report) => {
                report.elapsed = start.elapsed();
                report.bytes_received = received.get();
                return Ok(report);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Turns an artifact error into an install error, unwrapping what the source smuggled through `io::Error`.
fn from_artifact(e: ArtifactError, source: &Source, cancel: &CancelToken) -> InstallError {
    match e {
        ArtifactError::Io { source: io, context } => {
            if cancel.is_cancelled() {
                return InstallError::Cancelled;
            }
            if io.get_ref().is_some_and(|i| i.is::<source::ResumeExhausted>()) {
                let inner = io.into_inner().expect("checked above");
                return inner.downcast::<source::ResumeExhausted>().map(|b| b.0).unwrap_or(InstallError::Cancelled);
            }
            if io.get_ref().is_some_and(|i| i.is::<source::SourceChangedMarker>()) {
                return InstallError::SourceChanged { url: source.name() };
            }
            InstallError::Source {
                source_name: source.name(),
                error: std::io::Error::new(io.kind(), format!("{context}: {io}")),
            }
        }
        other => InstallError::Artifact(other),
    }
}

/// Reports progress of one install attempt: the phase and counts, with what is known so far about the source and
/// the artifact.
struct Reporter<'a> {
    progress: &'a (dyn Fn(&Progress) + Sync),
    received: &'a source::ByteCounter,
    length: Option<u64>,
    digest: Option<Digest>,
    total: u64,
}

impl Reporter<'_> {
    fn report(&self, phase: Phase, written: u64) {
        (self.progress)(&Progress {
            phase,
            bytes_read: self.received.get(),
            bytes_written: written,
            total: self.total,
            source_length: self.length,
            manifest_digest: self.digest,
        });
    }
}

/// One attempt at an install, in stages: open the source, read and verify the manifest, plan the slots (and what a
/// previous attempt left in them), run the chunk pipeline, finish.
fn install_once(
    req: &InstallRequest,
    progress: &(dyn Fn(&Progress) + Sync),
    cancel: &CancelToken,
    received: &source::ByteCounter,
) -> Result<InstallReport, InstallError> {
    let mut reporter = Reporter { progress, received, length: None, digest: None, total: 0 };
    reporter.report(Phase::Connecting, 0);
    let opened = open_source(req, cancel, received)?;
    reporter.length = opened.length;
    reporter.report(Phase::Verifying, 0);
    let mut reader = read_manifest(req, opened.reader, cancel)?;
    let manifest = reader.manifest().clone();
    reporter.digest = Some(reader.manifest_digest());
    reporter.total = manifest.payloads.iter().map(|p| p.size).sum();
    let mut plan = plan_slots(req, &manifest, &reader.manifest_digest(), cancel)?;
    reporter.report(Phase::Writing, plan.resumed_bytes(&manifest));
    let outcome =
        pipeline::run(req, &mut reader, &mut plan, cancel, &|written| reporter.report(Phase::Writing, written))?;
    check_stream_hash(req, &mut reader, cancel)?;
    reporter.report(Phase::Syncing, outcome.written);
    let checkpoint_error = make_valid(req, &mut plan)?;
    reporter.report(Phase::Done, outcome.written);
    Ok(InstallReport {
        manifest_digest: reader.manifest_digest(),
        signed_by: reader.signed_by(),
        manifest,
        bytes_received: received.get(),
        bytes_written: outcome.written,
        chunks_skipped: outcome.skipped,
        chunks_resumed: plan.resumed.iter().sum::<usize>() as u64,
        checkpoint_error,
        elapsed: Duration::ZERO,
    })
}

/// Stage 1: opens the source, hashing the whole stream when the request names its expected hash.
fn open_source(
    req: &InstallRequest,
    cancel: &CancelToken,
    received: &source::ByteCounter,
) -> Result<source::OpenedSource, InstallError> {
    let mut opened =
        source::open_with_stall_timeout(&req.source, &req.http, cancel, received.clone(), req.stall_timeout)?;
    if req.expected_sha256.is_some() {
        opened.reader.hash_stream();
    }
    Ok(opened)
}

/// Stage 2: reads the manifest and signature, verifies them and checks the device policy and the refused list.
/// Nothing has touched a slot yet.
fn read_manifest(
    req: &InstallRequest,
    stream: source::SourceReader,
    cancel: &CancelToken,
) -> Result<ArtifactReader<source::SourceReader>, InstallError> {
    let reader =
        ArtifactReader::open(stream, &req.keyring, &req.policy).map_err(|e| from_artifact(e, &req.source, cancel))?;
    // The version the server named for this download (a server that serves "whatever is assigned now").
    if let Some(expected) = &req.http.announced.version
        && *expected != reader.manifest().version
    {
        return Err(InstallError::VersionMismatch {
            expected: expected.clone(),
            actual: reader.manifest().version.clone(),
        });
    }
    if req.refuse.contains(&reader.manifest_digest()) {
        return Err(InstallError::Refused { digest: reader.manifest_digest().to_string() });
    }
    Ok(reader)
}

/// Stage 3: opens every target and checks its size before the first byte is written anywhere, invalidates the
/// slots, and finds the chunks a previous, interrupted install of this artifact left in them (each checked against
/// the manifest).
fn plan_slots(
    req: &InstallRequest,
    manifest: &Manifest,
    digest: &Digest,
    cancel: &CancelToken,
) -> Result<pipeline::Plan, InstallError> {
    let mut slots = Vec::new();
    let mut bases = Vec::new();
    for p in &manifest.payloads {
        let t = req
            .targets
            .iter()
            .find(|t| t.slot_class == p.slot_class)
            .ok_or_else(|| InstallError::NoTarget { payload: p.name.clone(), slot_class: p.slot_class.clone() })?;
        let w = SlotWriter::open(&t.path, t.max_size)?;
        if let Some(capacity) = w.capacity()
            && capacity < p.size
        {
            return Err(InstallError::SlotTooSmall { slot: t.path.clone(), capacity, needed: p.size });
        }
        bases.push(if p.is_delta() { Some(open_base(p, t, &w)?) } else { None });
        slots.push(w);
    }
    if cancel.is_cancelled() {
        return Err(InstallError::Cancelled);
    }
    for s in &mut slots {
        s.invalidate()?;
    }
    let n = manifest.payloads.len();
    let mut plan = pipeline::Plan {
        slots,
        bases,
        resumed: vec![0; n],
        heads: vec![Vec::new(); n],
        checkpoint_error: Mutex::new(None),
    };
    if let Some(record_path) = &req.resume_file {
        resume_from_record(record_path, manifest, digest, &mut plan)?;
    }
    Ok(plan)
}

/// Opens the base of delta payload `p` (the target's running counterpart) and checks every region the delta refers
/// to against the signed base, before anything is written: a device not running the delta's base refuses it with
/// `delta-base-mismatch` and its slots untouched. The decoders check each region again as they read it.
fn open_base(
    p: &otter_artifact::Payload,
    t: &Target,
    slot: &SlotWriter,
) -> Result<otter_artifact::BaseWindow, InstallError> {
    let needs_base = || InstallError::Artifact(ArtifactError::DeltaNeedsBase { payload: p.name.clone() });
    let path = t.base.as_ref().ok_or_else(needs_base)?;
    let file = std::fs::File::open(path).map_err(|error| InstallError::Slot {
        slot: path.clone(),
        context: "opening the delta's base".into(),
        error,
    })?;
    if slot.same_device(&file) {
        return Err(InstallError::BaseIsTarget { slot: path.clone() });
    }
    // Read past the page cache where possible: see `BaseWindow`.
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).ok();
    let mut window = otter_artifact::BaseWindow::new(file, direct);
    window.check(p)?;
    Ok(window)
}

/// Fills `plan` with the chunks the resume record at `record_path` claims and the slots really hold.
fn resume_from_record(
    record_path: &std::path::Path,
    manifest: &Manifest,
    digest: &Digest,
    plan: &mut pipeline::Plan,
) -> Result<(), InstallError> {
    let paths: Vec<&std::path::Path> = plan.slots.iter().map(|s| s.path()).collect();
    let record = resume::Record::load(record_path);
    match record.as_ref().and_then(|r| r.progress_for(digest, &paths)) {
        Some(progress) => {
            for (p, payload) in manifest.payloads.iter().enumerate() {
                let head = hex::decode(&progress[p].head).unwrap_or_default();
                plan.resumed[p] = resume::verified_prefix(&mut plan.slots[p], payload, progress[p].chunks, &head)?;
                if plan.resumed[p] > 0 {
                    plan.heads[p] = head;
                }
            }
        }
        // A record of another artifact or slot is stale: this install overwrites what it describes. Should it
        // stay, it is harmless: it names another artifact, and whatever a record claims is verified.
        None if record.is_some() => {
            if let Err(e) = resume::Record::remove(record_path) {
                *plan.checkpoint_error.get_mut().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("removing the stale {}: {e}", record_path.display()));
            }
        }
        None => {}
    }
    Ok(())
}

/// Stage 5a, after every chunk is written: checks the whole stream's hash when the request names one.
fn check_stream_hash(
    req: &InstallRequest,
    reader: &mut ArtifactReader<source::SourceReader>,
    cancel: &CancelToken,
) -> Result<(), InstallError> {
    if let Some(expected) = req.expected_sha256 {
        // The rest of the stream (tar padding and end blocks) belongs to the file the server hashed. A resumed
        // install skipped part of the file, so there is no whole-file hash to compare; the signed chunk hashes
        // covered every byte either way.
        let actual = reader.get_mut().finish_hash().map_err(|source| {
            let context = "reading the end of the artifact".to_owned();
            from_artifact(ArtifactError::Io { context, source }, &req.source, cancel)
        })?;
        if let Some(actual) = actual
            && actual != expected
        {
            // The head was never written, so the slot stays invalid.
            return Err(InstallError::StreamHashMismatch {
                source_name: req.source.name(),
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
    }
    if req.http.announced.has_digest() && matches!(req.source, Source::Url(_)) {
        // The HTTP source compares the server's digests once the whole file went through it.
        reader.get_mut().finish_hash().map_err(|source| {
            let context = "reading the end of the artifact".to_owned();
            from_artifact(ArtifactError::Io { context, source }, &req.source, cancel)
        })?;
    }
    Ok(())
}

/// Stage 5b, the last: makes the slots valid (data synced first, then the first block) and removes the resume
/// record. Returns why the record could not be kept or removed, if it could not.
fn make_valid(req: &InstallRequest, plan: &mut pipeline::Plan) -> Result<Option<String>, InstallError> {
    // Data first, then the head: a power cut in between leaves the slot invalid, never half valid.
    for (slot, head) in plan.slots.iter_mut().zip(&plan.heads) {
        slot.sync()?;
        slot.write_head(head)?;
    }
    let mut checkpoint_error = plan.checkpoint_error.get_mut().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(path) = &req.resume_file
        && let Err(e) = resume::Record::remove(path)
    {
        checkpoint_error.get_or_insert(format!("removing {}: {e}", path.display()));
    }
    Ok(checkpoint_error)
}
