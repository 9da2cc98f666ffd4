//! Where an artifact comes from: a file, stdin, or HTTP(S) with resume ([`http`]).

pub mod http;

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use http::{Announced, HttpOptions, HttpReader, UrlRefresh, parse_link};

use crate::CancelToken;
use crate::error::InstallError;

/// An artifact source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local file.
    File(PathBuf),
    /// Standard input.
    Stdin,
    /// An `http://` or `https://` URL.
    Url(String),
    /// An open file (or pipe) handed over by another process, e.g. over D-Bus: the daemon reads what the caller
    /// could open, whatever its own view of the filesystem (`PrivateTmp=`, `ProtectHome=`).
    Fd {
        /// The descriptor; a regular file is read from its start.
        fd: SharedFd,
        /// How it is named in messages (the caller's path).
        name: String,
    },
}

/// A file descriptor shared by the clones of a [`Source`].
#[derive(Clone)]
pub struct SharedFd(pub Arc<OwnedFd>);

impl SharedFd {
    /// Wraps a descriptor.
    pub fn new(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }
}

impl std::fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        write!(f, "SharedFd({})", self.0.as_raw_fd())
    }
}

impl PartialEq for SharedFd {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedFd {}

impl Source {
    /// Interprets a command-line argument: `-` is stdin, `http(s)://` a URL, anything else a path.
    pub fn parse(arg: &str) -> Self {
        if arg == "-" {
            Self::Stdin
        } else if arg.starts_with("http://") || arg.starts_with("https://") {
            Self::Url(arg.to_owned())
        } else {
            Self::File(PathBuf::from(arg))
        }
    }

    /// How the source is named in messages.
    pub fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Stdin => "stdin".into(),
            // Pre-signed query strings and userinfo are secrets: never in a message.
            Self::Url(u) => otter_common::redact::url(u),
            Self::Fd { name, .. } => name.clone(),
        }
    }
}

/// Counts the bytes a source delivered (for progress and for checking resume efficiency).
#[derive(Debug, Clone, Default)]
pub struct ByteCounter(Arc<AtomicU64>);

impl ByteCounter {
    /// Bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An opened source: a reader plus what is known about its length.
pub struct OpenedSource {
    /// The stream.
    pub reader: SourceReader,
    /// Its total length, when known.
    pub length: Option<u64>,
}

/// Opens `source`. For URLs this sends the first request and checks its status. A source that is a pipe, FIFO,
/// socket or character device (stdin, a descriptor, a path) is read by a [`PipeReader`] that stalls after
/// [`crate::DEFAULT_STALL_TIMEOUT`] (see [`open_with_stall_timeout`]).
pub fn open(
    source: &Source,
    http: &HttpOptions,
    cancel: &CancelToken,
    received: ByteCounter,
) -> Result<OpenedSource, InstallError> {
    open_with_stall_timeout(source, http, cancel, received, crate::DEFAULT_STALL_TIMEOUT)
}

/// Like [`open`]; a pipe, FIFO, socket or character device is read by a [`PipeReader`]: every wait checks
/// `cancel`, and a read that gets nothing for `stall_timeout` fails as [`InstallError::Stalled`].
pub fn open_with_stall_timeout(
    source: &Source,
    http: &HttpOptions,
    cancel: &CancelToken,
    received: ByteCounter,
    stall_timeout: Duration,
) -> Result<OpenedSource, InstallError> {
    let err = |error| InstallError::Source { source_name: source.name(), error };
    let pipe = |f: File| PipeReader::new(f, source.name(), cancel.clone(), stall_timeout);
    let (stream, length) = match source {
        Source::File(path) => file_stream(open_path(path).map_err(err)?, false, pipe).map_err(err)?,
        Source::Fd { fd, .. } => file_stream(File::from(fd.0.try_clone().map_err(err)?), true, pipe).map_err(err)?,
        Source::Stdin => {
            file_stream(File::from(io::stdin().as_fd().try_clone_to_owned().map_err(err)?), false, pipe).map_err(err)?
        }
        Source::Url(url) => {
            let r = HttpReader::open(url, http, stall_timeout, cancel.clone(), received.clone())?;
            let length = r.length;
            (Stream::Http(Box::new(r)), length)
        }
    };
    let reader = SourceReader { stream, received, hasher: None, skipped: false };
    Ok(OpenedSource { reader, length })
}

/// Opens a path for reading without blocking in `open(2)`: a FIFO opened plainly waits there for a writer, where
/// no cancel can reach it. `O_NONBLOCK` has no effect on reading regular files and block devices.
fn open_path(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

/// A stream over an open file: seekable when it is a regular file or a block device (`rewind`: start reading at
/// its beginning, for a descriptor someone else opened), read through a [`PipeReader`] otherwise (pipes, FIFOs,
/// sockets, character devices).
fn file_stream(
    mut f: File,
    rewind: bool,
    pipe: impl FnOnce(File) -> io::Result<PipeReader>,
) -> io::Result<(Stream, Option<u64>)> {
    let meta = f.metadata()?;
    let seekable = meta.is_file() || meta.file_type().is_block_device();
    let length = meta.is_file().then_some(meta.len());
    if !seekable {
        let reader = io::BufReader::with_capacity(256 << 10, pipe(f)?);
        return Ok((Stream::Pipe(Box::new(reader)), None));
    }
    if rewind {
        f.rewind()?;
    }
    Ok((Stream::File(io::BufReader::with_capacity(256 << 10, f)), length))
}

/// Longest single wait of a [`PipeReader`] before it checks its cancel token again: 200 ms.
const PIPE_POLL_SLICE: Duration = Duration::from_millis(200);

/// Reads a descriptor that may never deliver (a pipe whose writer stays silent, a FIFO opened read-write by the
/// caller, a socket) without ever blocking for long: the descriptor is switched to non-blocking and each wait is a
/// `poll()` of at most [`PIPE_POLL_SLICE`], after which the cancel token is checked. A read that gets no byte for
/// the stall timeout fails as [`InstallError::Stalled`]. The descriptor's original flags are restored on drop (it
/// may be shared with the caller, or be this process's stdin).
pub struct PipeReader {
    file: File,
    name: String,
    cancel: CancelToken,
    stall_timeout: Duration,
    /// The status flags to put back, when they were changed.
    restore: Option<nix::fcntl::OFlag>,
}

impl PipeReader {
    /// Wraps `file` (named `name` in errors); fails only when its flags cannot be read or set.
    pub fn new(file: File, name: String, cancel: CancelToken, stall_timeout: Duration) -> io::Result<Self> {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        let flags = OFlag::from_bits_retain(fcntl(&file, FcntlArg::F_GETFL)?);
        // Non-blocking even after poll() said "readable": whoever else holds the descriptor (the caller) may drain
        // it first, and a blocking read would then wait for a writer that may never come.
        let restore = match flags.contains(OFlag::O_NONBLOCK) {
            true => None,
            false => {
                fcntl(&file, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
                Some(flags)
            }
        };
        Ok(Self { file, name, cancel, stall_timeout, restore })
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        if let Some(flags) = self.restore {
            let _ = nix::fcntl::fcntl(&self.file, nix::fcntl::FcntlArg::F_SETFL(flags));
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        if buf.is_empty() {
            return Ok(0);
        }
        // Only time spent waiting inside this call counts: between calls the consumer may be busy (a slow slot).
        let start = std::time::Instant::now();
        loop {
            if self.cancel.is_cancelled() {
                return Err(io::Error::other(Cancelled));
            }
            // poll() before read(): a FIFO that no writer has opened yet reads as EOF at once, but polls as
            // "nothing yet" until a writer comes (and as readable or hung up once one came).
            let waited = start.elapsed();
            let Some(left) = self.stall_timeout.checked_sub(waited).filter(|l| !l.is_zero()) else {
                return Err(io::Error::other(ResumeExhausted(InstallError::Stalled {
                    source_name: self.name.clone(),
                    seconds: waited.as_secs(),
                })));
            };
            let slice = PollTimeout::try_from(left.min(PIPE_POLL_SLICE)).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, slice) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            match self.file.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

enum Stream {
    File(io::BufReader<File>),
    Pipe(Box<dyn Read + Send>),
    Http(Box<HttpReader>),
}

/// The byte stream of an opened source. Besides reading it can skip forward (a resumed install passes over chunks
/// the slot already holds): a file seeks, HTTP asks for the rest with a `Range` request, a pipe reads and discards.
/// It can also hash everything it delivers, for a check against the server's hash of the whole file.
pub struct SourceReader {
    stream: Stream,
    received: ByteCounter,
    hasher: Option<sha2::Sha256>,
    skipped: bool,
}

impl SourceReader {
    /// Starts hashing (SHA-256) everything read from here on.
    pub fn hash_stream(&mut self) {
        use sha2::Digest as _;
        self.hasher = Some(sha2::Sha256::new());
    }

    /// Moves forward by `n` bytes without delivering them.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        match &mut self.stream {
            Stream::File(f) => {
                let n = i64::try_from(n).map_err(|_| io::Error::other("skip too large"))?;
                f.seek_relative(n)?;
                self.skipped = true;
                Ok(())
            }
            Stream::Http(h) => {
                h.skip(n)?;
                self.skipped = true;
                Ok(())
            }
            // Read through, so the stream hash still covers everything.
            Stream::Pipe(_) => {
                let copied = io::copy(&mut self.by_ref().take(n), &mut io::sink())?;
                match copied == n {
                    true => Ok(()),
                    false => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended inside skipped data")),
                }
            }
        }
    }

    /// Reads the stream to its end and returns the SHA-256 of everything it delivered, or `None` when hashing was
    /// not started or bytes were skipped without being read.
    pub fn finish_hash(&mut self) -> io::Result<Option<[u8; 32]>> {
        use sha2::Digest as _;
        io::copy(self, &mut io::sink())?;
        match (self.hasher.take(), self.skipped) {
            (Some(h), false) => Ok(Some(h.finalize().into())),
            _ => Ok(None),
        }
    }
}

impl Read for SourceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = match &mut self.stream {
            Stream::File(f) => f.read(buf)?,
            Stream::Pipe(p) => p.read(buf)?,
            // Counts what it receives itself, resumed connections included.
            Stream::Http(h) => {
                return h.read(buf).inspect(|&n| self.hasher.iter_mut().for_each(|s| s.update(&buf[..n])));
            }
        };
        self.received.add(n);
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The error a cancelled read raises. Not `ErrorKind::Interrupted`: `read_exact` and friends retry those, which
/// would spin forever on a cancelled download.
#[derive(Debug)]
pub(crate) struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}
impl std::error::Error for Cancelled {}

/// The error a resume raises when the server sends a different entity; `install` maps it to `SourceChanged`.
#[derive(Debug)]
pub(crate) struct SourceChangedMarker;

impl std::fmt::Display for SourceChangedMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the artifact changed on the server during the download")
    }
}
impl std::error::Error for SourceChangedMarker {}

/// Raised through `io::Error` when the connection could not be resumed, or a source stalled: carries the install
/// error the read ended with.
#[derive(Debug)]
pub(crate) struct ResumeExhausted(pub InstallError);

impl std::fmt::Display for ResumeExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for ResumeExhausted {}

/// Whether `path` is a block device.
pub fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).map(|m| m.file_type().is_block_device()).unwrap_or(false)
}
