//! HTTP/1.1 on the wire, as pure functions of a `BufRead`: the response head (bounded, parsed by `httparse`),
//! and the body's framing (`Content-Length`, chunked, or read to close). A body that ends before its framing says
//! it is complete is an [`io::ErrorKind::UnexpectedEof`] error, never a short clean end: the installer resumes on
//! it instead of taking a truncated file for the whole.

use std::io::{self, BufRead};

/// The largest response head (status line and headers): 64 KiB.
pub const MAX_HEAD: usize = 64 << 10;
/// The most headers in one response head.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (size, extensions): 4 KiB.
pub const MAX_CHUNK_LINE: usize = 4 << 10;
/// The most trailer bytes after the last chunk: 64 KiB.
pub const MAX_TRAILERS: usize = 64 << 10;

/// Why a response could not be read; [`super::HttpError`] adds the host.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not HTTP/1.x, or framing that contradicts itself.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// Over a bound.
    #[error("response too large: {0}")]
    TooLarge(&'static str),
    /// The connection closed before the head was complete; `started` says whether any byte of it arrived.
    #[error("connection closed before the response head was complete")]
    Closed {
        /// Whether any byte of the head arrived.
        started: bool,
    },
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// HTTP/1.0 (`false`) or 1.1 (`true`).
    pub http11: bool,
    /// The headers in order, names as received.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The first value of a header (case-insensitive name), if it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).next().and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of a header (case-insensitive name).
    pub fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let name = name.to_owned();
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(&name)).map(|(_, v)| v.as_slice())
    }

    /// Whether a comma-separated header has `token` (case-insensitive) among its elements.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }

    /// How the body is delimited (RFC 9112 6.3; there are no HEAD requests here). `Transfer-Encoding` wins over
    /// `Content-Length`; then the connection is not reused ([`Framing::Chunked`] with `reuse: false`), since the
    /// two disagreeing is how request smuggling starts. Any `Content-Length` that is not one plain decimal number
    /// (repeated, comma lists, signs, overflow) is malformed.
    pub fn framing(&self) -> Result<Framing, WireError> {
        if (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            return Ok(Framing::Length(0));
        }
        let te: Vec<&[u8]> = self.all("transfer-encoding").collect();
        let mut cl = self.all("content-length");
        let length = match (cl.next(), cl.next()) {
            (None, _) => None,
            (Some(_), Some(_)) => return Err(WireError::Malformed("more than one Content-Length")),
            (Some(v), None) => Some(parse_length(v)?),
        };
        if !te.is_empty() {
            let last = te.iter().flat_map(|v| v.split(|&b| b == b',')).map(<[u8]>::trim_ascii).next_back();
            return match last {
                Some(c) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked { reuse: length.is_none() }),
                // A final coding other than chunked: the body runs to the close (RFC 9112 6.3 item 4).
                _ => Ok(Framing::Close),
            };
        }
        Ok(length.map_or(Framing::Close, Framing::Length))
    }
}

/// A Content-Length value: decimal digits only, fitting u64.
fn parse_length(v: &[u8]) -> Result<u64, WireError> {
    let bad = WireError::Malformed("Content-Length is not a number");
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or(bad)
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked; `reuse` is false when a Content-Length came with it.
    Chunked {
        /// Whether the connection may carry another request afterwards.
        reuse: bool,
    },
    /// Until the server closes the connection.
    Close,
}

/// Reads one response head: up to [`MAX_HEAD`] bytes, at most [`MAX_HEADERS`] headers. Consumes exactly the head.
pub fn read_head(r: &mut impl BufRead) -> Result<Head, WireError> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if avail.is_empty() {
            return Err(WireError::Closed { started: !buf.is_empty() });
        }
        let old = buf.len();
        let take = avail.len().min(MAX_HEAD + 1 - old);
        buf.extend_from_slice(&avail[..take]);
        // The blank line may straddle two reads: look from a few bytes back.
        match find_head_end(&buf, old.saturating_sub(3)) {
            Some(end) if end > MAX_HEAD => return Err(WireError::TooLarge("head over 64 KiB")),
            Some(end) => {
                r.consume(end - old);
                buf.truncate(end);
                return parse_head(&buf);
            }
            None => {
                r.consume(take);
                if buf.len() > MAX_HEAD {
                    return Err(WireError::TooLarge("head over 64 KiB"));
                }
            }
        }
    }
}

/// The end of the head (after `\n\r\n` or `\n\n`), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match (buf.get(i + 1), buf.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Parses a complete head.
pub fn parse_head(buf: &[u8]) -> Result<Head, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(WireError::Malformed("incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooLarge("more than 100 headers")),
        Err(httparse::Error::Status | httparse::Error::Version) => {
            return Err(WireError::Malformed("bad status line"));
        }
        Err(_) => return Err(WireError::Malformed("bad header")),
    }
    let status = resp.code.ok_or(WireError::Malformed("bad status line"))?;
    let headers = resp.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect();
    Ok(Head { status, http11: resp.version == Some(1), headers })
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// The last chunk and trailers were read.
    Done,
}

/// Reads one line of at most `max` bytes (without its line ending); the connection closing first is
/// `UnexpectedEof`.
fn read_line(r: &mut impl BufRead, max: usize, what: &'static str) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a chunked body"));
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if line.len() + take > max + 2 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, WireError::TooLarge(what)));
        }
        line.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
    }
}

/// A chunk-size line: hex digits, then optional whitespace and `;extensions`, which are ignored.
fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let bad = |m| io::Error::new(io::ErrorKind::InvalidData, WireError::Malformed(m));
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad("chunk size is not hex"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(bad("chunk size is not hex"));
    }
    let mut n: u64 = 0;
    for &d in &line[..digits] {
        let v = u64::from((d as char).to_digit(16).unwrap_or(0));
        n = n.checked_mul(16).and_then(|n| n.checked_add(v)).ok_or_else(|| bad("chunk size overflows"))?;
    }
    Ok(n)
}

/// Reads chunked body bytes into `buf` from state `st`; `Ok(0)` only once the last chunk and the trailers are read.
pub fn read_chunked(r: &mut impl BufRead, st: &mut Chunked, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match *st {
            Chunked::Done => return Ok(0),
            Chunked::Size => {
                let n = parse_chunk_size(&read_line(r, MAX_CHUNK_LINE, "chunk-size line over 4 KiB")?)?;
                if n == 0 {
                    skip_trailers(r)?;
                    *st = Chunked::Done;
                } else {
                    *st = Chunked::Data(n);
                }
            }
            Chunked::Data(left) => {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a chunk"));
                }
                let left = left - n as u64;
                *st = if left == 0 { Chunked::DataEnd } else { Chunked::Data(left) };
                return Ok(n);
            }
            Chunked::DataEnd => {
                let mut b = read_byte(r)?;
                if b == b'\r' {
                    b = read_byte(r)?;
                }
                if b != b'\n' {
                    let e = WireError::Malformed("no CRLF after chunk");
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                *st = Chunked::Size;
            }
        }
    }
}

/// One byte; the connection closing first is `UnexpectedEof`.
fn read_byte(r: &mut impl BufRead) -> io::Result<u8> {
    let b = *r
        .fill_buf()?
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a chunked body"))?;
    r.consume(1);
    Ok(b)
}

/// Skips the trailer section (to its blank line), at most [`MAX_TRAILERS`] bytes.
fn skip_trailers(r: &mut impl BufRead) -> io::Result<()> {
    let mut total = 0;
    loop {
        let line = read_line(r, MAX_TRAILERS, "trailers over 64 KiB")?;
        if line.is_empty() {
            return Ok(());
        }
        total += line.len() + 2;
        if total > MAX_TRAILERS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, WireError::TooLarge("trailers over 64 KiB")));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};

    use super::*;

    /// A chunked body decoded from a reader that delivers one byte at a time (every split point).
    fn chunked(raw: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = BufReader::with_capacity(1, raw);
        let (mut st, mut out, mut buf) = (Chunked::Size, Vec::new(), [0u8; 3]);
        loop {
            match read_chunked(&mut r, &mut st, &mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn chunked_decoding_byte_by_byte_with_extensions_and_trailers() {
        let raw = b"4;a=b\r\nWiki\r\n5 ; x\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\nNEXT";
        assert_eq!(chunked(raw).unwrap(), b"Wikipedia in\r\n\r\nchunks.");
        let mut r = BufReader::with_capacity(1, &raw[..]);
        let mut st = Chunked::Size;
        while read_chunked(&mut r, &mut st, &mut [0; 8]).unwrap() > 0 {}
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT", "exactly the body is consumed");
    }

    #[test]
    fn chunked_errors_are_bounded_and_typed() {
        let kind = |raw: &[u8]| chunked(raw).unwrap_err().kind();
        assert_eq!(kind(b"5\r\nab"), io::ErrorKind::UnexpectedEof);
        assert_eq!(kind(b"2\r\nab\r\n"), io::ErrorKind::UnexpectedEof);
        assert_eq!(kind(b"2\r\nab\r\n0\r\nX: y\r\n"), io::ErrorKind::UnexpectedEof, "inside trailers");
        assert_eq!(kind(b"zz\r\n"), io::ErrorKind::InvalidData);
        assert_eq!(kind(b"-1\r\n"), io::ErrorKind::InvalidData);
        assert_eq!(kind(b"2\r\nabXY"), io::ErrorKind::InvalidData, "no CRLF after the data");
        assert_eq!(kind(b"10000000000000000\r\n"), io::ErrorKind::InvalidData, "overflow");
        let mut long = b"1;".to_vec();
        long.extend(vec![b'x'; MAX_CHUNK_LINE + 10]);
        assert_eq!(kind(&long), io::ErrorKind::InvalidData, "an endless chunk-size line");
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b"X: yyyyyyyyyyyyyyyyyyyyyy\r\n", 4000).flatten());
        assert_eq!(kind(&trailers), io::ErrorKind::InvalidData, "endless trailers");
    }

    #[test]
    fn heads_are_read_exactly_and_framed() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive, close\r\n\r\nabc";
        let mut r = BufReader::with_capacity(2, &raw[..]);
        let h = read_head(&mut r).unwrap();
        assert_eq!((h.status, h.http11, h.framing().unwrap()), (200, true, Framing::Length(3)));
        assert!(h.has_token("CONNECTION", "close"));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"abc");
        let h = parse_head(b"HTTP/1.0 200 OK\n\n").unwrap();
        assert_eq!((h.http11, h.framing().unwrap()), (false, Framing::Close));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing().unwrap(), Framing::Chunked { reuse: true });
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.framing().unwrap(), Framing::Chunked { reuse: false });
        let h = parse_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(h.framing().unwrap(), Framing::Length(0));
        assert!(matches!(read_head(&mut &b""[..]), Err(WireError::Closed { started: false })));
        assert!(matches!(read_head(&mut &b"HTTP/1.1 2"[..]), Err(WireError::Closed { started: true })));
        // Exactly at the bound, and one byte over, whatever the reads' sizes.
        let head = |len: usize| {
            let mut h = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
            h.resize(len - 4, b'a');
            h.extend(b"\r\n\r\n");
            h
        };
        for cap in [1, 7, 8192, MAX_HEAD * 2] {
            assert!(read_head(&mut BufReader::with_capacity(cap, &head(MAX_HEAD)[..])).is_ok(), "{cap}");
            let over = read_head(&mut BufReader::with_capacity(cap, &head(MAX_HEAD + 1)[..]));
            assert!(matches!(over, Err(WireError::TooLarge(_))), "{cap}");
        }
    }
}
