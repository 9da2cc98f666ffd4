//! HTTP(S) sources: a body that resumes dropped connections with `Range` + `If-Range`, and treats the server and
//! the network as untrusted:
//!
//! - credentials ([`HttpOptions::headers`]) go only to one origin (scheme, host, port), checked per request,
//!   redirects and refreshed links included (redirects are followed here, not by the HTTP client, so no header
//!   travels to a host it was not meant for);
//! - only `http`/`https` URLs are requested, and with [`HttpOptions::https_only`] no plain `http` one at all;
//! - nothing is read past the announced size ([`Announced::size`], `Content-Length`);
//! - a connection that delivers less than [`STALL_MIN_BYTES`] per [`crate::InstallRequest::stall_timeout`] is stalled: it is
//!   resumed like a dropped one, and when the resumes run out the download fails as [`InstallError::Stalled`];
//! - every digest the server announced is checked on the whole file ([`Announced`]);
//! - with [`HttpOptions::pin_entity`] a file that changed on the server fails as [`InstallError::ArtifactReplaced`].
//!
//! URLs in errors are redacted ([`otter_common::redact`]): pre-signed query strings and userinfo are secrets.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otter_common::http::{Client, Origin, Request, Response, Scheme, Url};
use otter_common::{error_chain, redact};

use super::{ByteCounter, Cancelled, ResumeExhausted, SourceChangedMarker};
use crate::CancelToken;
use crate::error::{DigestAlgorithm, InstallError};

/// Fewer bytes than this within one [`crate::InstallRequest::stall_timeout`] of waiting for the network is a stall (a
/// slow-loris server sending a byte a second is no download): 4 KiB.
pub const STALL_MIN_BYTES: u64 = 4 << 10;
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 8;

/// HTTP client settings.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// PEM bundle of CA certificates to trust instead of the system roots (a private update server's CA).
    pub ca_bundle: Option<std::path::PathBuf>,
    /// PEM file with a client certificate and its private key (mutual TLS).
    pub client_identity: Option<std::path::PathBuf>,
    /// Extra request headers (e.g. an authorization token). They are credentials: sent only to requests whose
    /// origin is [`HttpOptions::credential_origin`].
    pub headers: Vec<(String, String)>,
    /// The origin (`scheme://host[:port]`) [`HttpOptions::headers`] may go to; `None`: the origin of the URL first
    /// requested. A request anywhere else (a redirect to a CDN, a pre-signed link on another host) goes without
    /// them.
    pub credential_origin: Option<String>,
    /// Refuse plain `http://` URLs (the first one, a refreshed link, a redirect target) with
    /// [`InstallError::InsecureLink`]: set when the server itself is reached over `https`.
    pub https_only: bool,
    /// How many times a dropped or stalled connection is resumed before giving up.
    pub max_resumes: u32,
    /// First wait before a resume; doubles on each further attempt.
    pub initial_backoff: Duration,
    /// Longest wait between resumes.
    pub max_backoff: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// A read that delivers nothing for this long counts as a dropped connection.
    pub read_timeout: Duration,
    /// Asked for a fresh URL when the server answers 401 or 403 (a pre-signed, short-lived link expired); the
    /// download then continues from where it was at the new URL. `None` from the hook means "no fresh link".
    pub refresh: Option<UrlRefresh>,
    /// What the server that offered the URL announced about the file; each part given is enforced.
    pub announced: Announced,
    /// The download is bound to one file: a file that changed on the server (a `200` to an `If-Range`, a new
    /// validator) fails as [`InstallError::ArtifactReplaced`] instead of starting over with whatever is there now.
    pub pin_entity: bool,
}

/// What an update server announced about a file (DDI: the artifact's `size`, `hashes`, and its chunk's
/// `version`). Every part that is `Some` is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    /// Size in bytes: no byte past it is read, and a `Content-Length` that differs is refused.
    pub size: Option<u64>,
    /// SHA-1 of the whole file.
    pub sha1: Option<[u8; 20]>,
    /// MD5 of the whole file.
    pub md5: Option<[u8; 16]>,
    /// SHA-256 of the whole file.
    pub sha256: Option<[u8; 32]>,
    /// The version the verified manifest must carry ([`InstallError::VersionMismatch`]).
    pub version: Option<String>,
}

impl Announced {
    /// Whether a digest of the whole file is to be checked (the installer then reads the source to its end).
    pub fn has_digest(&self) -> bool {
        self.sha1.is_some() || self.md5.is_some() || self.sha256.is_some()
    }
}

/// A hook that returns a fresh download URL (see [`HttpOptions::refresh`]).
#[derive(Clone)]
pub struct UrlRefresh(pub Arc<dyn Fn() -> Option<String> + Send + Sync>);

impl UrlRefresh {
    /// Wraps a closure.
    pub fn new(f: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    fn fresh(&self) -> Option<String> {
        (self.0)()
    }
}

impl std::fmt::Debug for UrlRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlRefresh(..)")
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            ca_bundle: None,
            client_identity: None,
            headers: Vec::new(),
            credential_origin: None,
            https_only: false,
            max_resumes: 8,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            refresh: None,
            announced: Announced::default(),
            pin_entity: false,
        }
    }
}

/// Parses a link to download: an absolute `http`/`https` URL, and not `http` when `https_only`.
pub fn parse_link(link: &str, https_only: bool) -> Result<Url, InstallError> {
    let not_http = || InstallError::NotHttpUrl { link: redact::url(link) };
    let url = Url::parse(link).map_err(|_| not_http())?;
    match url.scheme() {
        Scheme::Https => Ok(url),
        Scheme::Http if https_only => Err(InstallError::InsecureLink { url: redact::url(link) }),
        Scheme::Http => Ok(url),
    }
}

fn build_client(opts: &HttpOptions, stall_timeout: Duration) -> Result<Client, InstallError> {
    let timeout = opts.read_timeout.min(stall_timeout).max(Duration::from_millis(100));
    // The client follows no redirects: `HttpReader::send` does, deciding per hop whether credentials go along.
    Client::builder()
        .connect_timeout(opts.connect_timeout)
        // Each socket read and write waits at most this long (not the whole body): a silent server is noticed
        // within a stall window.
        .timeout(timeout)
        .ca_bundle(opts.ca_bundle.as_deref())
        .client_identity(opts.client_identity.as_deref())
        .build()
        .map_err(|e| InstallError::HttpSetup(error_chain(&e)))
}

/// The credential headers, checked now (a CR or LF in a token is a setup error, not a request sent).
fn credential_headers(opts: &HttpOptions) -> Result<Vec<(String, String)>, InstallError> {
    for (k, v) in &opts.headers {
        otter_common::http::check_header(k, v).map_err(|e| InstallError::HttpSetup(e.to_string()))?;
    }
    Ok(opts.headers.clone())
}

/// Digests of the whole body, computed while it is delivered in order.
#[derive(Clone)]
struct Hashers {
    sha1: Option<sha1::Sha1>,
    md5: Option<md5::Md5>,
    sha256: Option<sha2::Sha256>,
}

impl Hashers {
    fn new(a: &Announced) -> Option<Self> {
        use sha2::Digest as _;
        a.has_digest().then(|| Self {
            sha1: a.sha1.map(|_| sha1::Sha1::new()),
            md5: a.md5.map(|_| md5::Md5::new()),
            sha256: a.sha256.map(|_| sha2::Sha256::new()),
        })
    }

    fn update(&mut self, b: &[u8]) {
        use sha2::Digest as _;
        self.sha1.iter_mut().for_each(|h| h.update(b));
        self.md5.iter_mut().for_each(|h| h.update(b));
        self.sha256.iter_mut().for_each(|h| h.update(b));
    }

    fn check(self, a: &Announced, url: &str) -> Result<(), InstallError> {
        use sha2::Digest as _;
        let mismatch = |algorithm, expected: &[u8], actual: &[u8]| {
            (expected != actual).then(|| InstallError::DigestMismatch {
                url: redact::url(url),
                algorithm,
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            })
        };
        let checks = [
            self.sha256.zip(a.sha256).and_then(|(h, e)| mismatch(DigestAlgorithm::Sha256, &e, &h.finalize())),
            self.sha1.zip(a.sha1).and_then(|(h, e)| mismatch(DigestAlgorithm::Sha1, &e, &h.finalize())),
            self.md5.zip(a.md5).and_then(|(h, e)| mismatch(DigestAlgorithm::Md5, &e, &h.finalize())),
        ];
        checks.into_iter().flatten().next().map_or(Ok(()), Err)
    }
}

/// Why a request got no usable response.
enum SendError {
    /// No answer (connection refused, reset, timeout): worth another attempt.
    Transport(String),
    /// Refused by policy (a redirect to a non-HTTP or insecure URL, too many redirects): final.
    Refused(InstallError),
}

/// An HTTP body that survives dropped connections by resuming with `Range` + `If-Range`.
pub struct HttpReader {
    url: String,
    client: Client,
    opts: HttpOptions,
    /// A connection that delivers fewer than [`STALL_MIN_BYTES`] in this much waiting is stalled (resumed, and once
    /// the resumes run out, [`InstallError::Stalled`]); see [`crate::InstallRequest::stall_timeout`].
    stall_timeout: Duration,
    headers: Vec<(String, String)>,
    /// Where [`HttpReader::headers`] may go.
    credential_origin: Origin,
    cancel: CancelToken,
    response: Option<Response>,
    /// Bytes of the body delivered to the caller.
    position: u64,
    /// The body's length: the announced size, else `Content-Length`. Nothing is read past it.
    pub(super) length: Option<u64>,
    /// Strong validator for `If-Range`: the ETag, else Last-Modified.
    validator: Option<String>,
    resumes: u32,
    received: ByteCounter,
    /// Digests of everything delivered from byte 0 on; `None` once a range was skipped (no whole-file digest).
    hashers: Option<Hashers>,
    /// Time spent waiting for the network since the last progress, and the bytes received in it. Only the time
    /// inside reads counts: a caller that is slow to read (a slow slot) is not a stalled server.
    window: (Duration, u64),
    /// The last connection was given up as stalled (so running out of resumes is [`InstallError::Stalled`]).
    stalled: bool,
}

impl HttpReader {
    pub(super) fn open(
        url: &str,
        opts: &HttpOptions,
        stall_timeout: Duration,
        cancel: CancelToken,
        received: ByteCounter,
    ) -> Result<Self, InstallError> {
        let first = parse_link(url, opts.https_only)?;
        let credential_origin = match &opts.credential_origin {
            Some(o) => {
                Url::parse(o).map_err(|e| InstallError::HttpSetup(format!("credential origin: {e}")))?.origin().clone()
            }
            None => first.origin().clone(),
        };
        let mut r = Self {
            url: url.to_owned(),
            client: build_client(opts, stall_timeout)?,
            stall_timeout,
            headers: credential_headers(opts)?,
            credential_origin,
            opts: opts.clone(),
            cancel,
            response: None,
            position: 0,
            length: None,
            validator: None,
            resumes: 0,
            received,
            hashers: Hashers::new(&opts.announced),
            window: (Duration::ZERO, 0),
            stalled: false,
        };
        let source_error = |url: &str, message: String| InstallError::Source {
            source_name: redact::url(url),
            error: io::Error::other(message),
        };
        let send = |r: &Self, url: &str| match r.send(url, None) {
            Ok(resp) => Ok(resp),
            Err(SendError::Transport(m)) => Err(source_error(url, m)),
            Err(SendError::Refused(e)) => Err(e),
        };
        let mut resp = send(&r, url)?;
        // An expired pre-signed link: ask once for a fresh one.
        if matches!(resp.status(), 401 | 403)
            && let Some(fresh) = r.opts.refresh.as_ref().and_then(UrlRefresh::fresh)
        {
            resp = send(&r, &fresh)?;
            r.url = fresh;
        }
        let status = resp.status();
        if !(200..300).contains(&status) {
            return Err(InstallError::HttpStatus { url: redact::url(&r.url), status });
        }
        r.length = match (opts.announced.size, resp.content_length()) {
            (Some(announced), Some(actual)) if announced != actual => {
                return Err(InstallError::LengthMismatch { url: redact::url(&r.url), announced, actual });
            }
            (Some(n), _) | (None, Some(n)) => Some(n),
            (None, None) => None,
        };
        // Only a strong ETag or a Last-Modified date is a valid If-Range validator.
        r.validator = validator(&resp);
        r.response = Some(resp);
        r.window = (Duration::ZERO, 0);
        Ok(r)
    }

    /// Sends a GET for `url` (from byte `from`, with `If-Range`, when given), following redirects itself: each hop
    /// must be an allowed link, and carries the credentials only when it is on the credential origin.
    fn send(&self, url: &str, from: Option<u64>) -> Result<Response, SendError> {
        let mut current = parse_link(url, self.opts.https_only).map_err(SendError::Refused)?;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::get(current.clone());
            if current.origin() == &self.credential_origin {
                for (k, v) in &self.headers {
                    req = req.header(k, v);
                }
            }
            if let Some(from) = from {
                req = req.header("Range", format!("bytes={from}-"));
                if let Some(v) = &self.validator {
                    req = req.header("If-Range", v);
                }
            }
            let resp = self.client.send(&req).map_err(|e| SendError::Transport(redact::text(&error_chain(&e))))?;
            if !(300..400).contains(&resp.status()) {
                return Ok(resp);
            }
            let Some(location) = resp.header("location") else {
                return Ok(resp);
            };
            let next = current
                .join(location)
                .map_err(|_| SendError::Refused(InstallError::NotHttpUrl { link: redact::url(location) }))?;
            current = parse_link(&next.to_string(), self.opts.https_only).map_err(SendError::Refused)?;
        }
        Err(SendError::Refused(InstallError::TooManyRedirects { url: redact::url(url), limit: MAX_REDIRECTS }))
    }

    /// The error a changed file raises: a restart of the whole download, or, when the download is pinned to one
    /// file, [`InstallError::ArtifactReplaced`].
    fn changed(&self) -> io::Error {
        match self.opts.pin_entity {
            true => io::Error::other(ResumeExhausted(InstallError::ArtifactReplaced { url: redact::url(&self.url) })),
            false => io::Error::other(SourceChangedMarker),
        }
    }

    fn give_up(&self, e: InstallError) -> io::Error {
        io::Error::other(ResumeExhausted(e))
    }

    /// Re-requests the rest of the body from `position`.
    fn resume(&mut self, last_error: String) -> io::Result<()> {
        loop {
            if self.resumes >= self.opts.max_resumes {
                let e = match self.stalled {
                    true => InstallError::Stalled {
                        source_name: redact::url(&self.url),
                        seconds: self.stall_timeout.as_secs(),
                    },
                    false => InstallError::ConnectionLost {
                        url: redact::url(&self.url),
                        attempts: self.resumes,
                        position: self.position,
                        last_error: redact::text(&last_error),
                    },
                };
                return Err(self.give_up(e));
            }
            let backoff =
                self.opts.initial_backoff.saturating_mul(1 << self.resumes.min(16)).min(self.opts.max_backoff);
            self.resumes += 1;
            if self.cancel.sleep(backoff) {
                return Err(io::Error::other(Cancelled));
            }
            let resp = match self.send(&self.url, Some(self.position)) {
                Ok(r) => r,
                // Could not even reconnect: counts as another attempt.
                Err(SendError::Transport(_)) => continue,
                Err(SendError::Refused(e)) => return Err(self.give_up(e)),
            };
            match resp.status() {
                206 => {
                    if content_range_start(&resp) != Some(self.position) {
                        return Err(self.changed());
                    }
                    self.response = Some(resp);
                    self.window = (Duration::ZERO, 0);
                    return Ok(());
                }
                // A full body in reply to a range request: the entity changed (If-Range failed) or the server
                // cannot do ranges. Either way the bytes read so far cannot be continued.
                200 => return Err(self.changed()),
                s if (500..600).contains(&s) || s == 429 => continue,
                // An expired pre-signed link: continue from the same position at a fresh one (same entity, so
                // the If-Range validator still applies).
                401 | 403 if self.opts.refresh.is_some() => {
                    match self.opts.refresh.as_ref().and_then(UrlRefresh::fresh) {
                        Some(fresh) => self.url = fresh,
                        None => {
                            let status = resp.status();
                            return Err(self.give_up(InstallError::HttpStatus { url: redact::url(&self.url), status }));
                        }
                    }
                }
                s => return Err(self.give_up(InstallError::HttpStatus { url: redact::url(&self.url), status: s })),
            }
        }
    }

    /// Continues the body `n` bytes further on: one `Range` request from the new position (with `If-Range`). A
    /// server that answers with the whole body (no range support) is read through to the position instead; a
    /// changed entity is `SourceChanged` (or `ArtifactReplaced` when pinned).
    pub(super) fn skip(&mut self, n: u64) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let target = self.position + n;
        self.response = None;
        let resp = match self.send(&self.url, Some(target)) {
            Ok(r) => r,
            Err(SendError::Transport(m)) => return Err(io::Error::other(m)),
            Err(SendError::Refused(e)) => return Err(self.give_up(e)),
        };
        self.window = (Duration::ZERO, 0);
        match resp.status() {
            206 if content_range_start(&resp) == Some(target) => {
                self.response = Some(resp);
                self.position = target;
                // Part of the file is not read: there is no whole-file digest to compare (the signed chunk
                // hashes still cover every byte written).
                self.hashers = None;
                Ok(())
            }
            200 if self.validator.is_none() || validator(&resp) == self.validator => {
                self.response = Some(resp);
                self.position = 0;
                self.hashers = Hashers::new(&self.opts.announced);
                let mut rest = self.by_ref().take(target);
                let copied = io::copy(&mut rest, &mut io::sink())?;
                match copied == target {
                    true => Ok(()),
                    false => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body ended inside skipped data")),
                }
            }
            200 | 206 => Err(self.changed()),
            s => Err(self.give_up(InstallError::HttpStatus { url: redact::url(&self.url), status: s })),
        }
    }

    /// Whether the current connection made too little progress: under [`STALL_MIN_BYTES`] in
    /// [`crate::InstallRequest::stall_timeout`] of waiting for it.
    fn stalled_now(&self) -> bool {
        self.window.0 >= self.stall_timeout && self.window.1 < STALL_MIN_BYTES
    }

    /// Accounts one read: `waited` inside it, `n` bytes out of it. Enough bytes are progress: a new window starts.
    fn account(&mut self, waited: Duration, n: usize) {
        self.window.0 += waited;
        self.window.1 += n as u64;
        if self.window.1 >= STALL_MIN_BYTES {
            self.window = (Duration::ZERO, 0);
        }
    }

    /// The body ended: compare the digests of the whole file.
    fn at_end(&mut self) -> io::Result<usize> {
        if let Some(h) = self.hashers.take()
            && let Err(e) = h.check(&self.opts.announced, &self.url)
        {
            return Err(self.give_up(e));
        }
        Ok(0)
    }
}

fn content_range_start(resp: &Response) -> Option<u64> {
    resp.header("content-range")
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The strong validator of a response for `If-Range`: its ETag unless weak, else Last-Modified. One that could
/// not be sent back as a header is none.
fn validator(resp: &Response) -> Option<String> {
    resp.header("etag")
        .filter(|v| !v.starts_with("W/"))
        .or_else(|| resp.header("last-modified"))
        .filter(|v| otter_common::http::check_header("If-Range", v).is_ok())
        .map(str::to_owned)
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.cancel.is_cancelled() {
                return Err(io::Error::other(Cancelled));
            }
            if self.response.is_some() && self.stalled_now() {
                self.window = (Duration::ZERO, 0);
                self.stalled = true;
                self.response = None;
                let msg = format!("stalled: fewer than {STALL_MIN_BYTES} bytes in {:?}", self.stall_timeout);
                self.resume(msg)?;
                continue;
            }
            // At most one byte past the known length: enough to tell an endless body from the end.
            let want = match self.length {
                Some(l) => buf
                    .len()
                    .min(usize::try_from(l.saturating_sub(self.position)).unwrap_or(usize::MAX).saturating_add(1)),
                None => buf.len(),
            };
            let started = Instant::now();
            let result = match self.response.as_mut() {
                Some(r) => r.read(&mut buf[..want]),
                None => Err(io::Error::other("no response")),
            };
            self.account(started.elapsed(), *result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) if self.length.is_none_or(|l| self.position >= l) => return self.at_end(),
                Ok(0) => {
                    let msg = format!("body ended at byte {} of {:?}", self.position, self.length);
                    self.response = None;
                    self.stalled = false;
                    self.resume(msg)?;
                }
                Ok(n) if self.length.is_some_and(|l| self.position + n as u64 > l) => {
                    let limit = self.length.unwrap_or_default();
                    self.response = None;
                    return Err(self.give_up(InstallError::TooLong { url: redact::url(&self.url), limit }));
                }
                Ok(n) => {
                    self.position += n as u64;
                    self.received.add(n);
                    if let Some(h) = &mut self.hashers {
                        h.update(&buf[..n]);
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.response = None;
                    // A read that timed out is a connection that stopped delivering: a stall.
                    self.stalled = e.kind() == io::ErrorKind::TimedOut || error_chain(&e).contains("timed out");
                    self.resume(error_chain(&e))?;
                }
            }
        }
    }
}
