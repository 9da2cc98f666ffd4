//! Where an artifact comes from: a file, stdin, or HTTP(S) with resume ([`http`]).

pub mod http;

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Opens `source`. For URLs this sends the first request and checks its status.
pub fn open(
    source: &Source,
    http: &HttpOptions,
    cancel: &CancelToken,
    received: ByteCounter,
) -> Result<OpenedSource, InstallError> {
    let err = |error| InstallError::Source { source_name: source.name(), error };
    let (stream, length) = match source {
        Source::File(path) => file_stream(File::open(path).map_err(err)?, false).map_err(err)?,
        Source::Fd { fd, .. } => file_stream(File::from(fd.0.try_clone().map_err(err)?), true).map_err(err)?,
        Source::Stdin => (Stream::Pipe(Box::new(io::stdin())), None),
        Source::Url(url) => {
            let r = HttpReader::open(url, http, cancel.clone(), received.clone())?;
            let length = r.length;
            (Stream::Http(Box::new(r)), length)
        }
    };
    let reader = SourceReader { stream, received, hasher: None, skipped: false };
    Ok(OpenedSource { reader, length })
}

/// A stream over an open file: seekable when it is a regular file or a block device (`rewind`: start reading at
/// its beginning, for a descriptor someone else opened), read-through otherwise (pipes, character devices).
fn file_stream(mut f: File, rewind: bool) -> io::Result<(Stream, Option<u64>)> {
    let meta = f.metadata()?;
    let seekable = meta.is_file() || meta.file_type().is_block_device();
    let length = meta.is_file().then_some(meta.len());
    if rewind && seekable {
        f.rewind()?;
    }
    let reader = io::BufReader::with_capacity(256 << 10, f);
    Ok(match seekable {
        true => (Stream::File(reader), length),
        false => (Stream::Pipe(Box::new(reader)), length),
    })
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

/// Raised through `io::Error` when the connection could not be resumed.
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
