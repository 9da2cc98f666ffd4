//! The chunk pipeline: the reading thread feeds stored chunks to N decoder threads, which hand verified, decoded
//! chunks to one writer thread. Small bounded channels between the stages keep memory flat whatever the image size;
//! the first error of any stage stops all of them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use otter_artifact::{ArtifactError, ArtifactReader, BaseWindow, ChunkDecoder, ChunkRef, Digest, Manifest};

use crate::slot::{AlignedBuf, HEAD, SlotWriter};
use crate::source::SourceReader;
use crate::{CancelToken, InstallError, InstallRequest, resume};

/// Chunks waiting between two stages. With N decoders the pipeline holds N + 2 decoded chunks (N decoding, one
/// waiting, one being written) and N + 2 stored ones: 4 MiB chunks and two decoders need ~16 MiB of decoded
/// buffers plus their compressed sizes. A deeper queue bought no speed on the install benchmark (`bench/run`) and
/// cost 4 MiB of peak memory per step (`bench/footprint`).
const CHANNEL_DEPTH: usize = 1;
/// The name of an install's decoding threads (`install.decoders` of them).
pub const DECODER_THREAD: &str = "otter-decode";

/// Least time between two progress reports of the reading thread.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);

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
    fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }
    fn get(&self, make: impl FnOnce() -> T) -> T {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_else(make)
    }
    fn put(&self, t: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(t);
    }
}

/// The slots of one install and what a previous, interrupted install left in them.
pub(crate) struct Plan {
    /// One open slot per payload, in manifest order.
    pub slots: Vec<SlotWriter>,
    /// The checked base of each delta payload (its running slot), `None` for full payloads.
    pub bases: Vec<Option<BaseWindow>>,
    /// Leading chunks of each payload found intact in its slot (not fetched again).
    pub resumed: Vec<usize>,
    /// Each payload's held-back first block (written last).
    pub heads: Vec<Vec<u8>>,
    /// Why the resume record could not be kept, if it could not.
    pub checkpoint_error: Mutex<Option<String>>,
}

impl Plan {
    /// Image bytes the resumed chunks hold.
    pub fn resumed_bytes(&self, manifest: &Manifest) -> u64 {
        let payload = |(p, &n): (usize, &usize)| (0..n).map(|i| manifest.payloads[p].chunk_len(i)).sum::<u64>();
        self.resumed.iter().enumerate().map(payload).sum()
    }
}

/// What the pipeline did.
pub(crate) struct Outcome {
    /// Image bytes written or found identical, resumed chunks included.
    pub written: u64,
    /// Chunks not rewritten because the slot already held them.
    pub skipped: u64,
}

/// Streams every remaining chunk of `reader` through decoding and verification into the plan's slots (all but
/// each payload's first block). `report` is called with the bytes written so far, at most every 100 ms.
pub(crate) fn run(
    req: &InstallRequest,
    reader: &mut ArtifactReader<SourceReader>,
    plan: &mut Plan,
    cancel: &CancelToken,
    report: &dyn Fn(u64),
) -> Result<Outcome, InstallError> {
    let manifest = reader.manifest().clone();
    let threads = match req.decode_threads {
        // A delta is decoded by one thread, in order: its base regions overlap from one chunk to the next, and one
        // window of them (up to 40 MiB) is what a delta costs in memory. A patch decodes in milliseconds.
        _ if manifest.payloads.iter().any(|p| p.is_delta()) => 1,
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4),
        n => n,
    };
    let max_chunk = manifest.payloads.iter().map(|p| p.chunk_size).max().unwrap_or(0) as usize;
    let shared = Shared {
        manifest: &manifest,
        first_error: FirstError::default(),
        written: AtomicU64::new(plan.resumed_bytes(&manifest)),
        skipped: AtomicU64::new(0),
        stored_pool: Pool::new(),
        decoded_pool: Pool::new(),
        max_chunk,
        max_window: req.policy.limits.max_window,
    };
    let (stored_tx, stored_rx) = mpsc::sync_channel::<(ChunkRef, Vec<u8>)>(CHANNEL_DEPTH);
    // Shared by the decoders only: when the last decoder exits, the receiver drops and the reading loop's `send`
    // fails instead of blocking forever.
    let stored_rx = Arc::new(Mutex::new(stored_rx));
    let (decoded_tx, decoded_rx) = mpsc::sync_channel::<(ChunkRef, AlignedBuf)>(CHANNEL_DEPTH);
    let digest = reader.manifest_digest();
    let checkpoints = req
        .resume_file
        .as_ref()
        .map(|path| Checkpoints::new(req, path, digest, &manifest, &plan.resumed, &plan.checkpoint_error));
    let writer = Writer {
        shared: &shared,
        slots: &mut plan.slots,
        heads: &mut plan.heads,
        done: plan.resumed.clone(),
        // A delta install is paced by its download and decoded by one thread: comparing each chunk with what the
        // slot holds costs little there, and spares the flash what it already has (a re-install, a resume).
        skip_identical: req.skip_identical || manifest.payloads.iter().any(|p| p.is_delta()),
        checkpoints,
        cancel,
    };

    std::thread::scope(|s| {
        // Named, so that `top -H` and /proc show an install's threads for what they are.
        // The bases go to the first decoder: a delta has only one.
        let mut bases = std::mem::take(&mut plan.bases);
        for _ in 0..threads {
            let (decoded_tx, stored_rx, shared) = (decoded_tx.clone(), Arc::clone(&stored_rx), &shared);
            let windows = std::mem::take(&mut bases);
            let decoder = std::thread::Builder::new().name(DECODER_THREAD.into());
            // As `Scope::spawn` would: a process that cannot start a thread is not going to install anything.
            decoder
                .spawn_scoped(s, move || decode_chunks(shared, windows, &stored_rx, decoded_tx))
                .expect("spawning a thread");
        }
        drop(decoded_tx);
        drop(stored_rx);
        let writer = s.spawn(move || writer.write_chunks(decoded_rx));
        // This thread reads the stream: network or file I/O overlaps with decoding and writing.
        read_chunks(req, reader, &plan.resumed, &shared, stored_tx, cancel, report);
        let _ = writer.join();
    });
    match shared.first_error.take() {
        Some(e) => Err(e),
        None => Ok(Outcome { written: shared.written.into_inner(), skipped: shared.skipped.into_inner() }),
    }
}

/// What the pipeline's threads share.
struct Shared<'a> {
    manifest: &'a Manifest,
    first_error: FirstError,
    written: AtomicU64,
    skipped: AtomicU64,
    stored_pool: Pool<Vec<u8>>,
    decoded_pool: Pool<AlignedBuf>,
    max_chunk: usize,
    max_window: u64,
}

/// The reading stage: hands stored chunks to the decoders in stream order, moving the source past chunks the slots
/// already hold. Ends at the end of the artifact, on the first error of any stage, or on cancellation.
fn read_chunks(
    req: &InstallRequest,
    reader: &mut ArtifactReader<SourceReader>,
    resumed: &[usize],
    shared: &Shared,
    stored_tx: mpsc::SyncSender<(ChunkRef, Vec<u8>)>,
    cancel: &CancelToken,
    report: &dyn Fn(u64),
) {
    let first_error = &shared.first_error;
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
                first_error.set(crate::from_artifact(e, &req.source, cancel));
                break;
            }
            continue;
        }
        let mut buf = shared.stored_pool.get(Vec::new);
        match reader.read_stored_chunk(&mut buf) {
            Ok(Some(at)) => {
                if stored_tx.send((at, buf)).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                first_error.set(crate::from_artifact(e, &req.source, cancel));
                break;
            }
        }
        if last_report.elapsed() >= REPORT_INTERVAL {
            last_report = Instant::now();
            report(shared.written.load(Ordering::Relaxed));
        }
    }
}

/// One decoding stage thread: decodes and verifies stored chunks until the channel closes or a stage failed.
fn decode_chunks(
    shared: &Shared,
    mut windows: Vec<Option<BaseWindow>>,
    stored_rx: &Mutex<mpsc::Receiver<(ChunkRef, Vec<u8>)>>,
    decoded_tx: mpsc::SyncSender<(ChunkRef, AlignedBuf)>,
) {
    let mut decoder = match ChunkDecoder::new(shared.max_window) {
        Ok(d) => d,
        Err(e) => return shared.first_error.set(e.into()),
    };
    loop {
        // Holding the lock only to receive keeps the decoders pulling work as they become free.
        let next = stored_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((at, stored)) = next else { return };
        if shared.first_error.failed() {
            return;
        }
        let payload = &shared.manifest.payloads[at.payload];
        let mut out = shared.decoded_pool.get(|| AlignedBuf::new(shared.max_chunk));
        let buf = out.resize(payload.chunk_len(at.index) as usize);
        let result = match windows.get_mut(at.payload).and_then(Option::as_mut) {
            Some(window) => window
                .reference(payload, at.index)
                .and_then(|reference| decoder.decode_into(payload, at.index, &stored, reference, buf)),
            None => decoder.decode_into(payload, at.index, &stored, None, buf),
        };
        shared.stored_pool.put(stored);
        if let Err(e) = result {
            return shared.first_error.set(e.into());
        }
        if decoded_tx.send((at, out)).is_err() {
            return;
        }
    }
}

/// The writing stage.
struct Writer<'a> {
    shared: &'a Shared<'a>,
    slots: &'a mut [SlotWriter],
    heads: &'a mut [Vec<u8>],
    /// Chunks of each payload written (or resumed) so far.
    done: Vec<usize>,
    skip_identical: bool,
    checkpoints: Option<Checkpoints<'a>>,
    cancel: &'a CancelToken,
}

impl Writer<'_> {
    /// Writes decoded chunks as they come; at the end, checks that every chunk of every payload arrived.
    fn write_chunks(mut self, decoded_rx: mpsc::Receiver<(ChunkRef, AlignedBuf)>) {
        let first_error = &self.shared.first_error;
        for (at, buf) in decoded_rx {
            if first_error.failed() {
                return;
            }
            if self.cancel.is_cancelled() {
                return first_error.set(InstallError::Cancelled);
            }
            if let Err(e) = self.write_chunk(at, &buf) {
                return first_error.set(e);
            }
            self.shared.decoded_pool.put(buf);
        }
        let payloads = &self.shared.manifest.payloads;
        if !first_error.failed() && self.done.iter().zip(payloads).any(|(d, p)| *d != p.chunks.len()) {
            first_error.set(InstallError::Artifact(ArtifactError::Truncated { at: "payload data".into() }));
        }
    }

    /// Writes one verified chunk (holding back a payload's first block) and records a checkpoint when one is due.
    fn write_chunk(&mut self, at: ChunkRef, buf: &AlignedBuf) -> Result<(), InstallError> {
        let payload = &self.shared.manifest.payloads[at.payload];
        let slot = &mut self.slots[at.payload];
        let offset = payload.chunk_offset(at.index);
        let data = buf.as_slice();
        // The first block is held back and written last (see `SlotWriter::write_head`).
        let (data, offset) = if at.index == 0 {
            let h = data.len().min(HEAD);
            self.heads[at.payload] = data[..h].to_vec();
            (&data[h..], offset + h as u64)
        } else {
            (data, offset)
        };
        if self.skip_identical && slot.holds(data, offset)? {
            self.shared.skipped.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.write_at(data, offset)?;
        }
        self.shared.written.fetch_add(buf.as_slice().len() as u64, Ordering::Relaxed);
        self.done[at.payload] += 1;
        if let Some(c) = &mut self.checkpoints {
            c.written(at, self.slots, self.heads)?;
        }
        Ok(())
    }
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

impl<'a> Checkpoints<'a> {
    /// Checkpoints into `path` for the artifact `digest`, starting from the `resumed` leading chunks of each payload.
    fn new(
        req: &InstallRequest,
        path: &'a PathBuf,
        digest: Digest,
        manifest: &Manifest,
        resumed: &[usize],
        error: &'a Mutex<Option<String>>,
    ) -> Self {
        Self {
            path,
            digest,
            interval: req.checkpoint_interval,
            last: Instant::now(),
            have: manifest
                .payloads
                .iter()
                .zip(resumed)
                .map(|(p, &r)| (0..p.chunks.len()).map(|i| i < r).collect())
                .collect(),
            prefix: resumed.to_vec(),
            recorded: resumed.to_vec(),
            error,
        }
    }
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
