//! The blocking HTTP/1.1 client of the device: `std::net::TcpStream`, rustls (ring) with the system's or a given
//! CA bundle and an optional client identity, one idle keep-alive connection per client, and the proxies named by
//! `https_proxy`/`http_proxy`/`no_proxy`. It replaces reqwest, hyper and tokio's blocking bridge on the device.
//!
//! What it does not do, on purpose: follow redirects (the installer follows them itself, deciding per hop where
//! credentials go; the DDI client follows none), decompress, speak HTTP/2, or proxy through an `https://` proxy.
//! Every size that comes from the network is bounded ([`wire`]), and a body that ends early is an error.

mod proxy;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod url;
pub mod wire;

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use proxy::{NoProxy, Proxies, Proxy};
pub use url::{Origin, Scheme, Url};
use wire::{Chunked, Framing, Head, WireError};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("otter/", env!("CARGO_PKG_VERSION"));
/// Interim (1xx) responses skipped before the final one, at most.
const MAX_INTERIM: usize = 8;
/// The read buffer of a connection: 32 KiB (larger reads bypass it).
const BUF: usize = 32 << 10;

/// A failed HTTP request or client setup. URLs in it are redacted ([`crate::redact`]); header values never appear.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an `http`/`https` URL this client can request.
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl {
        /// The URL (redacted).
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header name that is not a token, or a value with CR, LF or another control byte (header injection).
    #[error("invalid header {name:?}: the name must be a token and the value may not contain control bytes")]
    InvalidHeader {
        /// The header's name (its value is not shown: it may be a credential).
        name: String,
    },
    /// A CA bundle or client identity could not be read.
    #[error("reading {what} {}: {source}", path.display())]
    ReadPem {
        /// `CA bundle` or `client identity`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A CA bundle or client identity is not usable PEM.
    #[error("parsing {what} {}: {reason}", path.display())]
    BadPem {
        /// `CA bundle` or `client identity`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A proxy setting is unusable, or the proxy refused or broke the tunnel.
    #[error("proxy {proxy}: {what}")]
    Proxy {
        /// The proxy's origin (no credentials).
        proxy: String,
        /// What went wrong.
        what: String,
    },
    /// No TCP connection (DNS, refused, unreachable).
    #[error("connecting to {host}: {source}")]
    Connect {
        /// `host:port`.
        host: String,
        /// The last address's error.
        source: io::Error,
    },
    /// Connecting, sending or waiting for the response head took longer than the client's timeout.
    #[error("{host}: timed out {what}")]
    Timeout {
        /// `host:port`.
        host: String,
        /// `connecting`, `waiting for the response`.
        what: &'static str,
    },
    /// The TLS handshake failed (unknown issuer, wrong name, no client certificate accepted).
    #[error("{host}: TLS: {source}")]
    Tls {
        /// `host:port`.
        host: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The response is not HTTP/1.x or contradicts itself.
    #[error("{host}: malformed response: {what}")]
    Malformed {
        /// `host:port`.
        host: String,
        /// What is wrong.
        what: &'static str,
    },
    /// The response head is over a bound ([`wire::MAX_HEAD`], [`wire::MAX_HEADERS`]).
    #[error("{host}: response too large: {what}")]
    TooLarge {
        /// `host:port`.
        host: String,
        /// Which bound.
        what: &'static str,
    },
    /// The connection failed while sending or reading the head (reset, closed before the response).
    #[error("{host}: {source}")]
    Io {
        /// `host:port`.
        host: String,
        /// The transport's error.
        source: io::Error,
    },
}

impl HttpError {
    /// An I/O error on the way to `host`, classified: timeouts, TLS alerts and malformed bodies get their variant.
    fn io(host: &str, e: io::Error, what: &'static str) -> Self {
        let host = host.to_owned();
        if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
            return HttpError::Timeout { host, what };
        }
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return HttpError::Tls { host, source: tls.clone() };
        }
        HttpError::Io { host, source: e }
    }

    fn wire(host: &str, e: WireError) -> Self {
        let host = host.to_owned();
        match e {
            WireError::Malformed(what) => HttpError::Malformed { host, what },
            WireError::TooLarge(what) => HttpError::TooLarge { host, what },
            WireError::Closed { .. } => HttpError::Io {
                host,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the response"),
            },
            WireError::Io(e) => HttpError::io(&host, e, "waiting for the response"),
        }
    }
}

/// Checks a header: the name a token (RFC 9110 5.6.2), the value without CR, LF, NUL or other controls but tab.
pub fn check_header(name: &str, value: &str) -> Result<(), HttpError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let ok_name = !name.is_empty() && name.bytes().all(token);
    let ok_value = value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    match ok_name && ok_value {
        true => Ok(()),
        false => Err(HttpError::InvalidHeader { name: name.escape_debug().to_string() }),
    }
}

/// GET, POST or PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }

    /// Whether a request may be sent again after a reused connection turned out dead before answering: GET and
    /// PUT are idempotent (RFC 9110 9.2.2); a POST (DDI feedback) is not repeated, it fails and its caller decides.
    fn idempotent(self) -> bool {
        matches!(self, Method::Get | Method::Put)
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: Url,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Request {
    /// A request without headers or body.
    pub fn new(method: Method, url: Url) -> Self {
        Self { method, url, headers: Vec::new(), body: None }
    }

    /// A GET.
    pub fn get(url: Url) -> Self {
        Self::new(Method::Get, url)
    }

    /// Adds a header (checked when sent: [`HttpError::InvalidHeader`]).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets a JSON body (`Content-Type: application/json`; `Content-Length` is always set for a body).
    pub fn json(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self.header("Content-Type", "application/json")
    }

    /// The URL.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    connect_timeout: Duration,
    timeout: Option<Duration>,
    headers: Vec<(String, String)>,
    ca_bundle: Option<PathBuf>,
    client_identity: Option<PathBuf>,
    proxies: Option<Proxies>,
}

impl ClientBuilder {
    /// Time for the TCP connection, over all of a host's addresses: 30 s unless set.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Longest wait of one socket read or write (a TLS handshake step, the head, any part of the body); the
    /// whole body may take longer. None unless set.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// A header sent with every request (a request's own header of the same name replaces it).
    pub fn default_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// PEM CA certificates trusted instead of the system's roots.
    pub fn ca_bundle(mut self, path: Option<&Path>) -> Self {
        self.ca_bundle = path.map(Path::to_owned);
        self
    }

    /// PEM certificate chain and private key presented to servers that ask (mutual TLS).
    pub fn client_identity(mut self, path: Option<&Path>) -> Self {
        self.client_identity = path.map(Path::to_owned);
        self
    }

    /// The proxies to use instead of those in the environment ([`Proxies::from_env`]).
    pub fn proxies(mut self, p: Proxies) -> Self {
        self.proxies = Some(p);
        self
    }

    /// Reads the TLS material and the proxy environment, checks the default headers.
    pub fn build(self) -> Result<Client, HttpError> {
        for (n, v) in &self.headers {
            check_header(n, v)?;
        }
        let tls = tls_config(self.ca_bundle.as_deref(), self.client_identity.as_deref())?;
        let proxies = match self.proxies {
            Some(p) => p,
            None => Proxies::from_env()?,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                tls,
                connect_timeout: self.connect_timeout.max(Duration::from_millis(1)),
                timeout: self.timeout.map(|t| t.max(Duration::from_millis(1))),
                headers: self.headers,
                proxies,
                idle: Mutex::new(None),
            }),
        })
    }
}

/// A blocking HTTP/1.1 client. Clones share the TLS setup and the idle connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    headers: Vec<(String, String)>,
    proxies: Proxies,
    /// The one connection kept for the next request, with where it leads.
    idle: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No headers: they carry tokens.
        f.debug_struct("Client")
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("timeout", &self.inner.timeout)
            .field("proxies", &self.inner.proxies)
            .finish_non_exhaustive()
    }
}

/// Where a connection leads: the target's origin, and the proxy it goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    origin: Origin,
    proxy: Option<Origin>,
}

/// How a request reaches its origin.
enum Route<'a> {
    Direct,
    /// Plain HTTP through a proxy: absolute-form request target.
    Forward(&'a Proxy),
    /// HTTPS through a proxy: `CONNECT`, then TLS inside the tunnel.
    Tunnel(&'a Proxy),
}

impl Client {
    /// A builder with a 30 s connect timeout, no I/O timeout, the system's roots and the environment's proxies.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            connect_timeout: Duration::from_secs(30),
            timeout: None,
            headers: Vec::new(),
            ca_bundle: None,
            client_identity: None,
            proxies: None,
        }
    }

    /// Sends a request and reads the response head; the body is the [`Response`]'s to read. Redirects are not
    /// followed. A reused connection that the server had closed (nothing of a response arrived) is replaced by a
    /// fresh one once, for GET and PUT.
    pub fn send(&self, req: &Request) -> Result<Response, HttpError> {
        let route = match self.inner.proxies.for_url(&req.url) {
            None => Route::Direct,
            Some(p) if req.url.scheme() == Scheme::Http => Route::Forward(p),
            Some(p) => Route::Tunnel(p),
        };
        let key = Key {
            origin: req.url.origin().clone(),
            proxy: match route {
                Route::Direct => None,
                Route::Forward(p) | Route::Tunnel(p) => Some(p.url.origin().clone()),
            },
        };
        let head = self.request_head(req, &route)?;
        let host = format!("{}:{}", req.url.host(), req.url.port());
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.take_idle(&key) {
                Some(c) => (c, true),
                None => (self.connect(&req.url, &route, key.clone())?, false),
            };
            match exchange(&mut conn, &head, req.body.as_deref()) {
                Ok(head) => return Response::new(head, conn, self.inner.clone(), &host),
                Err(Exchange::Stale(_)) if reused && !retried && req.method.idempotent() => retried = true,
                Err(Exchange::Stale(e)) => return Err(HttpError::io(&host, e, "waiting for the response")),
                Err(Exchange::Failed(e)) => return Err(HttpError::wire(&host, e)),
            }
        }
    }

    /// The request line and headers.
    fn request_head(&self, req: &Request, route: &Route<'_>) -> Result<Vec<u8>, HttpError> {
        let url = &req.url;
        let target = match route {
            Route::Forward(_) => format!("http://{}{}", url.authority(), url.target()),
            Route::Direct | Route::Tunnel(_) => url.target().to_owned(),
        };
        let mut h = format!("{} {target} HTTP/1.1\r\nHost: {}\r\n", req.method.as_str(), url.authority());
        let mut add = |n: &str, v: &str| -> Result<(), HttpError> {
            check_header(n, v)?;
            h.push_str(&format!("{n}: {v}\r\n"));
            Ok(())
        };
        add("User-Agent", USER_AGENT)?;
        add("Connection", "keep-alive")?;
        let has = |name: &str| req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        for (n, v) in &self.inner.headers {
            if !has(n) {
                add(n, v)?;
            }
        }
        if let Some(u) = url.userinfo().filter(|_| !has("authorization")) {
            add("Authorization", &url::basic_auth(u))?;
        }
        for (n, v) in &req.headers {
            add(n, v)?;
        }
        if let Route::Forward(p) = route
            && let Some(a) = &p.auth
        {
            add("Proxy-Authorization", a)?;
        }
        match &req.body {
            Some(b) => add("Content-Length", &b.len().to_string())?,
            None if req.method != Method::Get => add("Content-Length", "0")?,
            None => {}
        }
        h.push_str("\r\n");
        Ok(h.into_bytes())
    }

    /// The idle connection, if it leads to `key` and the server has not closed it (or sent anything unasked).
    fn take_idle(&self, key: &Key) -> Option<Conn> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.take() {
            Some(c) if c.key == *key && c.alive() => Some(c),
            _ => None,
        }
    }

    fn connect(&self, url: &Url, route: &Route<'_>, key: Key) -> Result<Conn, HttpError> {
        let timeout = self.inner.timeout;
        let tcp = match route {
            Route::Direct => tcp_connect(url.host(), url.port(), self.inner.connect_timeout, timeout)?,
            Route::Forward(p) | Route::Tunnel(p) => {
                tcp_connect(p.url.host(), p.url.port(), self.inner.connect_timeout, timeout)
                    .map_err(|e| HttpError::Proxy { proxy: p.url.origin().to_string(), what: e.to_string() })?
            }
        };
        let tcp = match route {
            Route::Tunnel(p) => p.tunnel(tcp, url)?,
            _ => tcp,
        };
        let stream = match url.scheme() {
            Scheme::Http => Stream::Plain(Tcp(tcp)),
            Scheme::Https => Stream::Tls(Box::new(tls_handshake(&self.inner.tls, url, tcp)?)),
        };
        Ok(Conn { io: BufReader::with_capacity(BUF, stream), key })
    }
}

/// A TCP connection to `host:port`, trying each resolved address in turn within `connect_timeout` overall.
fn tcp_connect(host: &str, port: u16, connect_timeout: Duration, io: Option<Duration>) -> Result<TcpStream, HttpError> {
    let shown = format!("{host}:{port}");
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let connect_err = |source| HttpError::Connect { host: shown.clone(), source };
    let addrs: Vec<_> = (name, port).to_socket_addrs().map_err(connect_err)?.collect();
    let deadline = Instant::now() + connect_timeout;
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // Share what is left between the addresses still to try, so one black hole does not use it all.
        let share = (left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX)).max(Duration::from_millis(1));
        match TcpStream::connect_timeout(addr, share) {
            Ok(s) => {
                let setup = |s: &TcpStream| {
                    s.set_read_timeout(io)?;
                    s.set_write_timeout(io)?;
                    s.set_nodelay(true)
                };
                setup(&s).map_err(connect_err)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.kind() != io::ErrorKind::TimedOut => Err(connect_err(e)),
        Some(_) => Err(HttpError::Timeout { host: shown, what: "connecting" }),
        None if addrs.is_empty() => Err(connect_err(io::Error::new(io::ErrorKind::NotFound, "no address"))),
        None => Err(HttpError::Timeout { host: shown, what: "connecting" }),
    }
}

fn tls_handshake(cfg: &Arc<rustls::ClientConfig>, url: &Url, tcp: TcpStream) -> Result<TlsStream, HttpError> {
    let host = format!("{}:{}", url.host(), url.port());
    let name = url.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let name = rustls::pki_types::ServerName::try_from(name)
        .map_err(|_| HttpError::InvalidUrl { url: url.origin().to_string(), reason: "not a TLS server name" })?;
    let conn = rustls::ClientConnection::new(cfg.clone(), name)
        .map_err(|source| HttpError::Tls { host: host.clone(), source })?;
    let mut s = rustls::StreamOwned::new(conn, Tcp(tcp));
    // Handshake now, so a certificate problem is a TLS error of the connect, not of the first read.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| HttpError::io(&host, e, "in the TLS handshake"))?;
    }
    Ok(s)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, Tcp>;

/// A socket whose read/write timeouts show as `TimedOut` (Linux reports them as `WouldBlock`, which callers
/// would take for a non-blocking socket).
struct Tcp(TcpStream);

fn timed_out(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock => io::Error::new(io::ErrorKind::TimedOut, "timed out"),
        _ => e,
    }
}

impl Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(timed_out)
    }
}

impl Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

enum Stream {
    Plain(Tcp),
    Tls(Box<TlsStream>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            // A peer that closes without close_notify stays an `UnexpectedEof` error here: only framed bodies
            // (which end before the close) are complete without it; see `Response::read`.
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// An open connection and where it leads.
struct Conn {
    io: BufReader<Stream>,
    key: Key,
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self.io.get_ref() {
            Stream::Plain(t) => &t.0,
            Stream::Tls(s) => &s.sock.0,
        }
    }

    /// An idle connection is usable when nothing is waiting on it: no bytes (a server that answers unasked, or a
    /// TLS close_notify) and no EOF.
    fn alive(&self) -> bool {
        if !self.io.buffer().is_empty() {
            return false;
        }
        let tcp = self.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let waiting = tcp.peek(&mut [0u8; 1]);
        let restored = tcp.set_nonblocking(false).is_ok();
        restored && matches!(waiting, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Why an exchange failed.
enum Exchange {
    /// Nothing of a response arrived (the request could not be written, or the connection was closed or reset
    /// right away): on a reused connection, the server had closed it.
    Stale(io::Error),
    /// Anything else.
    Failed(WireError),
}

/// Writes the request and reads the final response head, skipping 1xx interim responses.
fn exchange(conn: &mut Conn, head: &[u8], body: Option<&[u8]>) -> Result<Head, Exchange> {
    let mut out = Vec::with_capacity(head.len() + body.map_or(0, <[u8]>::len));
    out.extend_from_slice(head);
    out.extend_from_slice(body.unwrap_or_default());
    let w = conn.io.get_mut();
    w.write_all(&out).and_then(|()| w.flush()).map_err(Exchange::Stale)?;
    for i in 0..=MAX_INTERIM {
        let h = match wire::read_head(&mut conn.io) {
            Ok(h) => h,
            Err(WireError::Closed { started: false }) if i == 0 => {
                return Err(Exchange::Stale(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")));
            }
            Err(WireError::Io(e))
                if i == 0 && matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) =>
            {
                return Err(Exchange::Stale(e));
            }
            Err(e) => return Err(Exchange::Failed(e)),
        };
        match h.status {
            101 => return Err(Exchange::Failed(WireError::Malformed("unrequested protocol switch"))),
            100..=199 => continue,
            _ => return Ok(h),
        }
    }
    Err(Exchange::Failed(WireError::Malformed("too many interim responses")))
}

/// Where a response's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// A response: status and headers read, the body to be read through [`Read`]. Read to its end, the connection
/// goes back to the client for the next request; dropped earlier, it is closed.
pub struct Response {
    head: Head,
    body: Body,
    content_length: Option<u64>,
    conn: Option<Conn>,
    reuse: bool,
    client: Arc<Inner>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response").field("status", &self.head.status).field("body", &self.body).finish()
    }
}

impl Response {
    fn new(head: Head, conn: Conn, client: Arc<Inner>, host: &str) -> Result<Self, HttpError> {
        let framing = head.framing().map_err(|e| HttpError::wire(host, e))?;
        let close = head.has_token("connection", "close") || !head.http11;
        let (body, reuse, content_length) = match framing {
            Framing::Length(n) => (Body::Length(n), !close, Some(n)),
            Framing::Chunked { reuse } => (Body::Chunked(Chunked::Size), reuse && !close, None),
            Framing::Close => (Body::Close, false, None),
        };
        let mut r = Self { head, body, content_length, conn: Some(conn), reuse, client };
        if r.body == Body::Length(0) {
            r.finish();
        }
        Ok(r)
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The head: headers with case-insensitive lookup ([`Head::get`]).
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// A header's first value (case-insensitive name), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    /// The body's length when `Content-Length` frames it.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The body was read to its end: keep the connection for the next request when it can carry one.
    fn finish(&mut self) {
        self.body = Body::Done;
        if let Some(c) = self.conn.take()
            && self.reuse
        {
            *self.client.idle.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
        }
    }
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(0) };
        let n = match &mut self.body {
            Body::Done => 0,
            Body::Length(left) => {
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = conn.io.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("connection closed {left} bytes before the end of the body"),
                    ));
                }
                *left -= n as u64;
                if *left == 0 {
                    self.finish();
                }
                return Ok(n);
            }
            Body::Chunked(st) => wire::read_chunked(&mut conn.io, st, buf)?,
            Body::Close => conn.io.read(buf)?,
        };
        if n == 0 {
            self.finish();
        }
        Ok(n)
    }
}

/// The largest PEM file read (CA bundle, client identity): 1 MiB. The system's whole CA bundle is about 200 KiB.
pub const MAX_PEM: u64 = 1 << 20;

/// Reads a PEM file a caller named: a regular file only (not `/dev/zero`, a FIFO or a directory), at most
/// [`MAX_PEM`] bytes (reading at most one byte more to tell).
pub fn read_pem(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking open: opening a FIFO for reading would otherwise wait for a writer, forever.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file"));
    }
    let mut pem = Vec::new();
    f.take(MAX_PEM + 1).read_to_end(&mut pem)?;
    if pem.len() as u64 > MAX_PEM {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("larger than {MAX_PEM} bytes")));
    }
    Ok(pem)
}

/// Installs the process-wide rustls crypto provider (ring) once; later calls are no-ops.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS setup of a client: a CA bundle replaces the system's roots. Without one the system's roots are trusted;
/// a device that has none (no CA certificates installed) still gets a client, with an empty trust store: plain
/// `http://` works, and `https://` fails at connect (unknown issuer) until a CA bundle is configured — instead of no
/// client at all, which used to stop even a plain-http update server from working. A client identity (PEM
/// certificate chain and private key) is presented to servers that ask for one.
pub fn tls_config(
    ca_bundle: Option<&Path>,
    client_identity: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    init_tls();
    let bad = |what, path: &Path, reason: String| HttpError::BadPem { what, path: path.to_owned(), reason };
    let read =
        |what, path: &Path| read_pem(path).map_err(|source| HttpError::ReadPem { what, path: path.to_owned(), source });
    let certs = |what, path: &Path, pem: &[u8]| {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(what, path, e.to_string()))?;
        match certs.is_empty() {
            true => Err(bad(what, path, "no certificate in it".into())),
            false => Ok(certs),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle {
        Some(path) => {
            for c in certs("CA bundle", path, &read("CA bundle", path)?)? {
                roots.add(c).map_err(|e| bad("CA bundle", path, e.to_string()))?;
            }
        }
        None => {
            // Unreadable or missing system certificates leave the store empty (see above).
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client_identity {
        Some(path) => {
            let what = "client identity";
            let pem = read(what, path)?;
            let chain = certs(what, path, &pem)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(what, path, e.to_string()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad(what, path, e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_are_regular_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // A FIFO would block the open or the read forever; it must be refused, not read.
        let fifo_result = std::thread::spawn(move || read_pem(&fifo).map(|_| ()).map_err(|e| e.kind()));
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_PEM as usize + 10]).unwrap();
        let ok = dir.path().join("ok.pem");
        std::fs::write(&ok, b"-----BEGIN CERTIFICATE-----").unwrap();
        let zero = read_pem(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(zero.kind(), std::io::ErrorKind::InvalidInput, "{zero}");
        assert!(read_pem(&big).unwrap_err().to_string().contains("larger than"));
        assert_eq!(read_pem(&ok).unwrap(), b"-----BEGIN CERTIFICATE-----");
        assert!(read_pem(dir.path()).is_err(), "a directory");
        let start = std::time::Instant::now();
        while !fifo_result.is_finished() {
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "reading a FIFO hangs");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(fifo_result.join().unwrap(), Err(std::io::ErrorKind::InvalidInput));
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod client_tests;
