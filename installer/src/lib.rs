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
pub mod resume;
pub mod slot;
pub mod source;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use otter_artifact::{ArtifactError, ArtifactReader, ChunkDecoder, ChunkRef, Digest, KeyId, Keyring, Manifest, Policy};

pub use error::{DigestAlgorithm, InstallError};
use slot::{AlignedBuf, HEAD, SlotWriter};
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

/// Records the first error of any pipeline stage; later ones are consequences.
#[derive(Default)]
struct FirstError {
    error: Mutex<Option<InstallError>>,
    failed: AtomicBool,
}

impl FirstError {
    fn set(&self, e: InstallError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    fn take(&self) -> Option<InstallError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A small free list so chunk buffers are reused instead of reallocated (and re-faulted) per chunk.
struct Pool<T>(Mutex<Vec<T>>);

impl<T> Pool<T> {
    fn get(&self, make: impl FnOnce() -> T) -> T {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_else(make)
    }
    fn put(&self, t: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    }
}

/// Chunks in flight between two stages. With N decoders the pipeline holds at most about 2 + N + 2 + 1 chunks, so
/// 4 MiB chunks and two decoders need ~30 MiB of buffers.
const CHANNEL_DEPTH: usize = 2;

fn install_once(
    req: &InstallRequest,
    progress: &(dyn Fn(&Progress) + Sync),
    cancel: &CancelToken,
    received: &source::ByteCounter,
) -> Result<InstallReport, InstallError> {
    let digest = std::cell::Cell::new(None);
    let report = |phase, written, total, length| Progress {
        phase,
        bytes_read: received.get(),
        bytes_written: written,
        total,
        source_length: length,
        manifest_digest: digest.get(),
    };
    progress(&report(Phase::Connecting, 0, 0, None));
    let opened = source::open_with_stall_timeout(&req.source, &req.http, cancel, received.clone(), req.stall_timeout)?;
    let length = opened.length;
    progress(&report(Phase::Verifying, 0, 0, length));
    let mut stream = opened.reader;
    if req.expected_sha256.is_some() {
        stream.hash_stream();
    }
    let mut reader =
        ArtifactReader::open(stream, &req.keyring, &req.policy).map_err(|e| from_artifact(e, &req.source, cancel))?;
    let manifest = reader.manifest().clone();
    // The version the server named for this download (a server that serves "whatever is assigned now").
    if let Some(expected) = &req.http.announced.version
        && *expected != manifest.version
    {
        return Err(InstallError::VersionMismatch { expected: expected.clone(), actual: manifest.version });
    }
    digest.set(Some(reader.manifest_digest()));
    if req.refuse.contains(&reader.manifest_digest()) {
        return Err(InstallError::Refused { digest: reader.manifest_digest().to_string() });
    }
    let total: u64 = manifest.payloads.iter().map(|p| p.size).sum();

    // Every target must exist and be large enough before the first byte is written anywhere.
    let mut slots = Vec::new();
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
        slots.push(w);
    }
    if cancel.is_cancelled() {
        return Err(InstallError::Cancelled);
    }
    for s in &mut slots {
        s.invalidate()?;
    }

    // Chunks a previous, interrupted install of this artifact left in the slots, each checked against the manifest.
    let checkpoint_error = Mutex::new(None);
    let mut resumed = vec![0usize; manifest.payloads.len()];
    let mut heads: Vec<Vec<u8>> = vec![Vec::new(); manifest.payloads.len()];
    if let Some(record_path) = &req.resume_file {
        let paths: Vec<&std::path::Path> = slots.iter().map(|s| s.path()).collect();
        let record = resume::Record::load(record_path);
        match record.as_ref().and_then(|r| r.progress_for(&reader.manifest_digest(), &paths)) {
            Some(progress) => {
                for (p, payload) in manifest.payloads.iter().enumerate() {
                    let head = hex::decode(&progress[p].head).unwrap_or_default();
                    resumed[p] = resume::verified_prefix(&mut slots[p], payload, progress[p].chunks, &head)?;
                    if resumed[p] > 0 {
                        heads[p] = head;
                    }
                }
            }
            // A record of another artifact or slot is stale: this install overwrites what it describes. Should it
            // stay, it is harmless: it names another artifact, and whatever a record claims is verified.
            None if record.is_some() => {
                if let Err(e) = resume::Record::remove(record_path) {
                    *checkpoint_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("removing the stale {}: {e}", record_path.display()));
                }
            }
            None => {}
        }
    }
    let resumed_bytes = |p: usize| (0..resumed[p]).map(|i| manifest.payloads[p].chunk_len(i)).sum::<u64>();
    let written = AtomicU64::new((0..resumed.len()).map(resumed_bytes).sum());
    progress(&report(Phase::Writing, written.load(Ordering::Relaxed), total, length));

    let threads = match req.decode_threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4),
        n => n,
    };
    let max_chunk = manifest.payloads.iter().map(|p| p.chunk_size).max().unwrap_or(0) as usize;
    let max_window = req.policy.limits.max_window;
    let first_error = FirstError::default();
    let skipped = AtomicU64::new(0);
    let stored_pool: Pool<Vec<u8>> = Pool(Mutex::new(Vec::new()));
    let decoded_pool: Pool<AlignedBuf> = Pool(Mutex::new(Vec::new()));
    let (stored_tx, stored_rx) = mpsc::sync_channel::<(ChunkRef, Vec<u8>)>(CHANNEL_DEPTH);
    // Shared by the decoders only: when the last decoder exits, the receiver drops and the reading loop's `send`
    // fails instead of blocking forever.
    let stored_rx = Arc::new(Mutex::new(stored_rx));
    let (decoded_tx, decoded_rx) = mpsc::sync_channel::<(ChunkRef, AlignedBuf)>(CHANNEL_DEPTH);

    std::thread::scope(|s| {
        for _ in 0..threads {
            let decoded_tx = decoded_tx.clone();
            let stored_rx = Arc::clone(&stored_rx);
            let (manifest, first_error) = (&manifest, &first_error);
            let (stored_pool, decoded_pool) = (&stored_pool, &decoded_pool);
            s.spawn(move || {
                let mut decoder = match ChunkDecoder::new(max_window) {
                    Ok(d) => d,
                    Err(e) => return first_error.set(e.into()),
                };
                loop {
                    // Holding the lock only to receive keeps the decoders pulling work as they become free.
                    let next = stored_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((at, stored)) = next else { return };
                    if first_error.failed() {
                        return;
                    }
                    let payload = &manifest.payloads[at.payload];
                    let mut out = decoded_pool.get(|| AlignedBuf::new(max_chunk));
                    let buf = out.resize(payload.chunk_len(at.index) as usize);
                    let result = decoder.decode_into(payload, at.index, &stored, buf);
                    stored_pool.put(stored);
                    if let Err(e) = result {
                        return first_error.set(e.into());
                    }
                    if decoded_tx.send((at, out)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(decoded_tx);
        drop(stored_rx);

        let writer = {
            let (manifest, first_error, written, skipped) = (&manifest, &first_error, &written, &skipped);
            let (decoded_pool, slots, heads) = (&decoded_pool, &mut slots, &mut heads);
            let skip_identical = req.skip_identical;
            let mut checkpoints = req.resume_file.as_ref().map(|path| Checkpoints {
                path,
                digest: digest.get().expect("set after verification"),
                interval: req.checkpoint_interval,
                last: Instant::now(),
                have: manifest
                    .payloads
                    .iter()
                    .zip(&resumed)
                    .map(|(p, &r)| (0..p.chunks.len()).map(|i| i < r).collect())
                    .collect(),
                prefix: resumed.clone(),
                recorded: resumed.clone(),
                error: &checkpoint_error,
            });
            let resumed = &resumed;
            s.spawn(move || {
                let mut done = resumed.clone();
                for (at, buf) in decoded_rx {
                    if first_error.failed() {
                        return;
                    }
                    if cancel.is_cancelled() {
                        return first_error.set(InstallError::Cancelled);
                    }
                    let payload = &manifest.payloads[at.payload];
                    let slot = &mut slots[at.payload];
                    let offset = payload.chunk_offset(at.index);
                    let data = buf.as_slice();
                    // The first block is held back and written last (see `SlotWriter::write_head`).
                    let (data, offset) = if at.index == 0 {
                        let h = data.len().min(HEAD);
                        heads[at.payload] = data[..h].to_vec();
                        (&data[h..], offset + h as u64)
                    } else {
                        (data, offset)
                    };
                    let result = match skip_identical {
                        true => slot.holds(data, offset).and_then(|same| {
                            if same {
                                skipped.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            } else {
                                slot.write_at(data, offset)
                            }
                        }),
                        false => slot.write_at(data, offset),
                    };
                    if let Err(e) = result {
                        return first_error.set(e);
                    }
                    written.fetch_add(buf.as_slice().len() as u64, Ordering::Relaxed);
                    decoded_pool.put(buf);
                    done[at.payload] += 1;
                    if let Some(c) = &mut checkpoints
                        && let Err(e) = c.written(at, slots, heads)
                    {
                        return first_error.set(e);
                    }
                }
                if !first_error.failed() && done.iter().zip(&manifest.payloads).any(|(d, p)| *d != p.chunks.len()) {
                    first_error.set(InstallError::Artifact(ArtifactError::Truncated { at: "payload data".into() }));
                }
            })
        };

        // This thread reads the stream: network or file I/O overlaps with decoding and writing.
        let mut last_report = Instant::now();
        loop {
            if first_error.failed() {
                break;
            }
            if cancel.is_cancelled() {
                first_error.set(InstallError::Cancelled);
                break;
            }
            // Chunks already in the slot: move the source past them instead of reading them.
            if let Some(at) = reader.cursor()
                && at.index == 0
                && resumed[at.payload] > 0
            {
                if let Err(e) = reader.skip_chunks(resumed[at.payload], |s, n| s.skip(n)) {
                    first_error.set(from_artifact(e, &req.source, cancel));
                    break;
                }
                continue;
            }
            let mut buf = stored_pool.get(Vec::new);
            match reader.read_stored_chunk(&mut buf) {
                Ok(Some(at)) => {
                    if stored_tx.send((at, buf)).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    first_error.set(from_artifact(e, &req.source, cancel));
                    break;
                }
            }
            if last_report.elapsed() >= Duration::from_millis(100) {
                last_report = Instant::now();
                progress(&report(Phase::Writing, written.load(Ordering::Relaxed), total, length));
            }
        }
        drop(stored_tx);
        let _ = writer.join();
    });
    if let Some(e) = first_error.take() {
        return Err(e);
    }

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
    progress(&report(Phase::Syncing, written.load(Ordering::Relaxed), total, length));
    // Data first, then the head: a power cut in between leaves the slot invalid, never half valid.
    for (slot, head) in slots.iter_mut().zip(&heads) {
        slot.sync()?;
        slot.write_head(head)?;
    }
    let mut checkpoint_error = checkpoint_error.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = &req.resume_file
        && let Err(e) = resume::Record::remove(path)
    {
        checkpoint_error.get_or_insert(format!("removing {}: {e}", path.display()));
    }
    let bytes_written = written.load(Ordering::Relaxed);
    progress(&report(Phase::Done, bytes_written, total, length));
    Ok(InstallReport {
        manifest_digest: reader.manifest_digest(),
        signed_by: reader.signed_by(),
        manifest,
        bytes_received: received.get(),
        bytes_written,
        chunks_skipped: skipped.load(Ordering::Relaxed),
        chunks_resumed: resumed.iter().sum::<usize>() as u64,
        checkpoint_error,
        elapsed: Duration::ZERO,
    })
}

/// Resume checkpoints, kept by the writer thread.
struct Checkpoints<'a> {
    path: &'a PathBuf,
    digest: Digest,
    interval: Duration,
    last: Instant,
    /// Which chunks of each payload are written.
    have: Vec<Vec<bool>>,
    /// Leading chunks of each payload that are written.
    prefix: Vec<usize>,
    /// What the record on disk says.
    recorded: Vec<usize>,
    /// The first failure to write the record; checkpoints stop after it.
    error: &'a Mutex<Option<String>>,
}

impl Checkpoints<'_> {
    /// Notes that chunk `at` is written and, when the interval has passed, syncs the slots and records the
    /// progress. Only a slot that cannot be synced is an install error.
    fn written(&mut self, at: ChunkRef, slots: &mut [SlotWriter], heads: &[Vec<u8>]) -> Result<(), InstallError> {
        let have = &mut self.have[at.payload];
        have[at.index] = true;
        let prefix = &mut self.prefix[at.payload];
        while *prefix < have.len() && have[*prefix] {
            *prefix += 1;
        }
        if self.last.elapsed() < self.interval || self.prefix == self.recorded {
            return Ok(());
        }
        if self.error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        self.last = Instant::now();
        // The data the record will claim must be durable before the record says so.
        for (slot, (now, before)) in slots.iter_mut().zip(self.prefix.iter().zip(&self.recorded)) {
            if now != before {
                slot.sync()?;
            }
        }
        let progress = slots
            .iter()
            .zip(&self.prefix)
            .zip(heads)
            .map(|((slot, &chunks), head)| resume::PayloadProgress {
                slot: slot.path().to_owned(),
                chunks,
                head: if chunks > 0 { hex::encode(head) } else { String::new() },
            })
            .collect();
        match resume::Record::new(&self.digest, progress).store(self.path) {
            Ok(()) => self.recorded.clone_from(&self.prefix),
            Err(e) => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{}: {e}", self.path.display()))
            }
        }
        Ok(())
    }
}
