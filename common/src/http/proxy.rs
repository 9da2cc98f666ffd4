//! Proxies as the environment names them, the way reqwest honoured them: `https_proxy`/`HTTPS_PROXY` for `https`
//! targets (a `CONNECT` tunnel, TLS inside it), `http_proxy`/`HTTP_PROXY` for `http` targets (absolute-form
//! requests), `no_proxy`/`NO_PROXY` for the hosts that go direct. Only `http://` proxies are supported; credentials
//! in a proxy URL become `Proxy-Authorization: Basic`.

use std::io::{BufReader, Write};
use std::net::TcpStream;

use super::url::{Scheme, Url, basic_auth};
use super::{HttpError, wire};

/// One proxy.
#[derive(Clone)]
pub struct Proxy {
    /// `http://host:port`.
    pub(super) url: Url,
    /// `Basic ...` from the proxy URL's userinfo.
    pub(super) auth: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The origin only: the userinfo is a credential.
        write!(f, "Proxy({})", self.url.origin())
    }
}

impl Proxy {
    /// Parses a proxy URL: `http://[user:pass@]host[:port]`, or `host:port` (taken as `http://`).
    pub fn parse(s: &str) -> Result<Self, HttpError> {
        let full = match s.contains("://") {
            true => s.to_owned(),
            false => format!("http://{s}"),
        };
        let url = Url::parse(&full)?;
        if url.scheme() != Scheme::Http {
            return Err(HttpError::Proxy {
                proxy: url.origin().to_string(),
                what: "only http:// proxies are supported".into(),
            });
        }
        let auth = url.userinfo().map(basic_auth);
        Ok(Self { url, auth })
    }

    fn name(&self) -> String {
        self.url.origin().to_string()
    }

    /// Opens a `CONNECT` tunnel to `target` over `tcp` (connected to the proxy).
    pub(super) fn tunnel(&self, tcp: TcpStream, target: &Url) -> Result<TcpStream, HttpError> {
        let fail = |what: String| HttpError::Proxy { proxy: self.name(), what };
        let authority = format!("{}:{}", target.host(), target.port());
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(a) = &self.auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        let mut w = &tcp;
        w.write_all(req.as_bytes()).map_err(|e| fail(format!("sending CONNECT: {e}")))?;
        // A small buffer: nothing may follow the proxy's answer before the TLS handshake starts.
        let mut r = BufReader::with_capacity(1024, &tcp);
        let head = wire::read_head(&mut r).map_err(|e| fail(format!("reading the CONNECT answer: {e}")))?;
        if !(200..300).contains(&head.status) {
            return Err(fail(format!("CONNECT {authority} answered {}", head.status)));
        }
        if !r.buffer().is_empty() {
            return Err(fail("bytes after the CONNECT answer".into()));
        }
        drop(r);
        Ok(tcp)
    }
}

/// The hosts that are reached directly: `no_proxy`'s comma-separated list of host names (each also matching its
/// subdomains; a leading `.` or `*.` is the same), IP addresses, or `*` for all. A `:port` in an entry is ignored;
/// CIDR ranges are not supported (reqwest did support them).
#[derive(Debug, Clone, Default)]
pub struct NoProxy {
    all: bool,
    hosts: Vec<String>,
}

impl NoProxy {
    /// Parses a `no_proxy` value.
    pub fn parse(list: &str) -> Self {
        let mut n = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                n.all = true;
                continue;
            }
            let e = entry.trim_start_matches("*.").trim_start_matches('.').to_ascii_lowercase();
            let e = match e.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
                None if e.matches(':').count() == 1 => e.split(':').next().unwrap_or_default().to_owned(),
                None => e,
            };
            n.hosts.push(e);
        }
        n
    }

    /// Whether `host` (as in a [`Url`]; IPv6 in brackets) goes direct.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.all
            || self.hosts.iter().any(|e| host == e || host.strip_suffix(e.as_str()).is_some_and(|p| p.ends_with('.')))
    }
}

/// The proxies of a client.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    http: Option<Proxy>,
    https: Option<Proxy>,
    no_proxy: NoProxy,
}

impl Proxies {
    /// No proxy at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// The proxies the process environment names (see the module's documentation).
    pub fn from_env() -> Result<Self, HttpError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The proxies named by `get` (`https_proxy`, `HTTPS_PROXY`, `http_proxy`, `HTTP_PROXY`, `no_proxy`,
    /// `NO_PROXY`; lowercase first, empty is unset). An unusable proxy URL is an error, not silently no proxy.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, HttpError> {
        let var =
            |lower: &str| get(lower).or_else(|| get(&lower.to_ascii_uppercase())).filter(|v| !v.trim().is_empty());
        let proxy = |lower| var(lower).map(|v| Proxy::parse(v.trim())).transpose();
        Ok(Self {
            http: proxy("http_proxy")?,
            https: proxy("https_proxy")?,
            no_proxy: var("no_proxy").map(|v| NoProxy::parse(&v)).unwrap_or_default(),
        })
    }

    /// Sets the proxy for `http` targets.
    pub fn with_http(mut self, p: Proxy) -> Self {
        self.http = Some(p);
        self
    }

    /// Sets the proxy for `https` targets.
    pub fn with_https(mut self, p: Proxy) -> Self {
        self.https = Some(p);
        self
    }

    /// Sets the hosts that go direct.
    pub fn with_no_proxy(mut self, n: NoProxy) -> Self {
        self.no_proxy = n;
        self
    }

    /// The proxy a request to `url` goes through, if any.
    pub fn for_url(&self, url: &Url) -> Option<&Proxy> {
        if self.no_proxy.matches(url.host()) {
            return None;
        }
        match url.scheme() {
            Scheme::Http => self.http.as_ref(),
            Scheme::Https => self.https.as_ref(),
        }
    }
}
