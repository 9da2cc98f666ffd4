//! The URLs the client requests: `http`/`https`, a host (DNS name, IPv4, `[IPv6]`), an optional port, and the
//! path and query as given. Parsing is strict and small: a host that is not plain ASCII (no IDNA here) or a URL
//! with spaces or control characters in its host is refused, never guessed at.

use std::fmt;

use super::HttpError;
use crate::redact;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain TCP.
    Http,
    /// TLS.
    Https,
}

impl Scheme {
    /// The scheme's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// Port 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Scheme, host and port: what decides where credentials may go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The scheme.
    pub scheme: Scheme,
    /// The host, lowercase; an IPv6 address in brackets.
    pub host: String,
    /// The port, the scheme's default when the URL names none.
    pub port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// An absolute `http`/`https` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    origin: Origin,
    /// `user:password` as written (percent-encoded), sent as Basic authorization like reqwest did.
    userinfo: Option<String>,
    /// Path and query, starting with `/`; the fragment is dropped (it never goes on the wire).
    target: String,
}

fn invalid(url: &str, reason: &'static str) -> HttpError {
    HttpError::InvalidUrl { url: redact::url(url), reason }
}

impl Url {
    /// Parses an absolute `http`/`https` URL. Userinfo (`user:pw@`) is kept and sent as `Authorization: Basic`
    /// (reqwest's behaviour, which download links with userinfo rely on); bytes that may not appear in a request
    /// line (spaces, controls, non-ASCII) in the path or query are percent-encoded, everything else is kept verbatim.
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid(url, "not an absolute URL"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid(url, "not http or https")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| invalid(url, "bad host or port"))?;
        let port = match port {
            Some(p) => p,
            None => scheme.default_port(),
        };
        let tail = tail.split('#').next().unwrap_or_default();
        let target = match tail.starts_with('/') {
            true => encode_target(tail),
            false => format!("/{}", encode_target(tail)),
        };
        Ok(Self { origin: Origin { scheme, host, port }, userinfo, target })
    }

    /// The origin (scheme, host, port).
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.origin.scheme
    }

    /// The host (an IPv6 address in brackets).
    pub fn host(&self) -> &str {
        &self.origin.host
    }

    /// The port (the scheme's default when none is written).
    pub fn port(&self) -> u16 {
        self.origin.port
    }

    /// The request target: path and query.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// `user:password` as written in the URL, if any.
    pub fn userinfo(&self) -> Option<&str> {
        self.userinfo.as_deref()
    }

    /// `host` or `host:port` for the `Host` header (and `CONNECT`): the port only when it is not the default.
    pub fn authority(&self) -> String {
        match self.origin.port == self.origin.scheme.default_port() {
            true => self.origin.host.clone(),
            false => format!("{}:{}", self.origin.host, self.origin.port),
        }
    }

    /// Resolves a `Location` against this URL: absolute, scheme-relative (`//host/x`), absolute-path or
    /// relative-path references. The result is parsed like any URL.
    pub fn join(&self, reference: &str) -> Result<Url, HttpError> {
        if reference.contains("://") {
            return Url::parse(reference);
        }
        let base = format!("{}{}", self.scheme().as_str(), "://");
        let authority = match &self.userinfo {
            Some(u) => format!("{u}@{}", self.authority()),
            None => self.authority(),
        };
        if let Some(rest) = reference.strip_prefix("//") {
            return Url::parse(&format!("{base}{rest}"));
        }
        if reference.starts_with('/') {
            return Url::parse(&format!("{base}{authority}{reference}"));
        }
        let path = self.target.split('?').next().unwrap_or("/");
        let joined = match reference.strip_prefix('?') {
            Some(q) => format!("{path}?{q}"),
            None if reference.is_empty() => self.target.clone(),
            None => format!("{}/{reference}", &path[..path.rfind('/').unwrap_or(0)]),
        };
        Url::parse(&format!("{base}{authority}{}", remove_dot_segments(&joined)))
    }
}

impl fmt::Display for Url {
    /// The URL with userinfo (the `Display` form goes into messages: redact it like any URL before showing).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.origin.scheme.as_str())?;
        if let Some(u) = &self.userinfo {
            write!(f, "{u}@")?;
        }
        write!(f, "{}{}", self.authority(), self.target)
    }
}

/// Splits `host[:port]` and checks both: a host of ASCII letters, digits, `-`, `.`, `_` (lowercased), or an IPv6
/// address in brackets; a port of 1 to 5 digits that fits `u16`.
pub(super) fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']')?;
            addr.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        }
        None => {
            let (h, p) = match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            };
            let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return None;
            }
            (h.to_ascii_lowercase(), p)
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse::<u16>().ok()?),
        Some(_) => return None,
    };
    Some((host, port))
}

/// Percent-encodes the bytes a request line may not carry (controls, space, non-ASCII, `"<>\^`{|}`); keeps the rest
/// (including existing `%XX` escapes) as written.
fn encode_target(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 3986 5.2.4 on a path with an optional query.
fn remove_dot_segments(target: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut p = format!("/{}", out.join("/"));
    if let Some(q) = query {
        p.push('?');
        p.push_str(q);
    }
    p
}

/// Standard base64 with padding (Basic authorization).
pub(super) fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

/// Decodes `%XX` escapes (userinfo); an invalid escape is kept as written.
pub(super) fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// `Basic base64(user:password)` for a URL's userinfo.
pub(super) fn basic_auth(userinfo: &str) -> String {
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut raw = percent_decode(user);
    raw.push(b':');
    raw.extend(percent_decode(pass));
    format!("Basic {}", base64(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_targets() {
        let u = Url::parse("HTTPS://Hb.Example:8443/a/b?x=1&y=%20#frag").unwrap();
        assert_eq!((u.scheme(), u.host(), u.port(), u.target()), (Scheme::Https, "hb.example", 8443, "/a/b?x=1&y=%20"));
        assert_eq!(u.authority(), "hb.example:8443");
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!((u.host(), u.port(), u.target()), ("[::1]", 8080, "/"));
        let u = Url::parse("http://10.0.0.1?q").unwrap();
        assert_eq!((u.port(), u.target(), u.authority()), (80, "/?q", "10.0.0.1".to_owned()));
        assert_eq!(
            Url::parse("http://h/a b\r\nX: y").unwrap().target(),
            "/a%20b%0D%0AX:%20y",
            "no request-line injection"
        );
        for bad in [
            "ftp://h/x",
            "/etc/shadow",
            "http://",
            "http://h:99999/",
            "http://h:x/",
            "http://[zz]/",
            "http://h st/",
            "http://bücher.example/",
            "http://h\r\n/",
        ] {
            assert!(matches!(Url::parse(bad), Err(HttpError::InvalidUrl { .. })), "{bad}");
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |s| Url::parse(s).unwrap().origin().clone();
        assert_eq!(o("https://h/x"), o("https://H:443/y"));
        assert_ne!(o("https://h/x"), o("http://h/x"));
        assert_ne!(o("https://h/x"), o("https://h:8443/x"));
        assert_eq!(o("https://u:p@h:8443/x").to_string(), "https://h:8443");
    }

    #[test]
    fn userinfo_becomes_basic_auth_and_is_redacted() {
        let u = Url::parse("http://me:p%40ss@h/x").unwrap();
        assert_eq!(basic_auth(u.userinfo().unwrap()), format!("Basic {}", base64(b"me:p@ss")));
        assert_eq!(base64(b"Aladdin:open sesame"), "QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(base64(b"a"), "YQ==");
        let e = Url::parse("gopher://me:secret@h/x").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn locations_resolve() {
        let base = Url::parse("http://h:81/a/b/c?q").unwrap();
        let j = |r| base.join(r).unwrap().to_string();
        assert_eq!(j("https://o/x"), "https://o/x");
        assert_eq!(j("//o/x"), "http://o/x");
        assert_eq!(j("/x?y"), "http://h:81/x?y");
        assert_eq!(j("d"), "http://h:81/a/b/d");
        assert_eq!(j("../d"), "http://h:81/a/d");
        assert_eq!(j("?z"), "http://h:81/a/b/c?z");
        assert!(base.join("file:///etc/passwd").is_err());
    }
}
