//! An HTTP relay between a guest on QEMU's user network and a test server on the host's loopback.
//!
//! From the guest, the host is `10.0.2.2`: QEMU's user network (slirp) turns a connection to
//! `10.0.2.2:PORT` into one to the host's `127.0.0.1:PORT`. A server on the host's loopback is
//! therefore reachable, but the links it hands out name the address it sees itself
//! (`http://127.0.0.1:PORT/...`), which in the guest is the guest. The relay listens on its own
//! loopback port, forwards every request unchanged to the server, and in JSON answers replaces the
//! server's URL with the relay's URL as the guest sees it (`http://10.0.2.2:RELAY_PORT`), fixing
//! `Content-Length`. Every other answer (artifact downloads: `200`/`206`, throttled or cut off by
//! the server's faults) is streamed through byte for byte, so the guest sees what the server does.
//!
//! One request per connection, as the test server answers with `Connection: close`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Error;

/// The host as the guest sees it on QEMU's user network.
pub const GUEST_HOST_ADDR: &str = "10.0.2.2";

/// Longest wait for data from either side; a download the server throttles sends far more often.
const IDLE: Duration = Duration::from_secs(120);
/// Largest request or response head read.
const MAX_HEAD: usize = 64 << 10;
/// Largest JSON body rewritten (DDI answers are a few KiB).
const MAX_JSON: usize = 16 << 20;

/// A running relay; stops when dropped.
#[derive(Debug)]
pub struct HttpRelay {
    addr: SocketAddr,
    guest_url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpRelay {
    /// Starts a relay on 127.0.0.1 (a free port) for the plain-HTTP server at `upstream_url`
    /// (`http://127.0.0.1:PORT`, as `DdiServer::url` gives it).
    pub fn start(upstream_url: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Command {
            command: format!("HttpRelay::start({upstream_url:?})"),
            status: "refused".to_owned(),
            stderr: reason,
        };
        let upstream_addr = upstream_url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/').to_owned())
            .ok_or_else(|| bad("the relay speaks plain HTTP: the URL must start with http://".to_owned()))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| bad(format!("bind 127.0.0.1:0: {e}")))?;
        let addr = listener.local_addr().map_err(|e| bad(e.to_string()))?;
        let guest_url = format!("http://{GUEST_HOST_ADDR}:{}", addr.port());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            let rewrite = Arc::new((upstream_url.trim_end_matches('/').to_owned(), guest_url.clone()));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (upstream, rewrite) = (upstream_addr.clone(), Arc::clone(&rewrite));
                    std::thread::spawn(move || {
                        // A failed relay closes both sides; the client sees a dropped connection,
                        // as it would from the server itself.
                        let _ = relay(conn, &upstream, &rewrite.0, &rewrite.1);
                    });
                }
            })
        };
        Ok(Self { addr, guest_url, stop, thread: Some(thread) })
    }

    /// The relay's URL as the guest sees it: `http://10.0.2.2:PORT`.
    pub fn guest_url(&self) -> &str {
        &self.guest_url
    }

    /// The relay's address on the host.
    pub fn host_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Relays one request and its answer.
fn relay(mut client: TcpStream, upstream: &str, from: &str, to: &str) -> io::Result<()> {
    client.set_read_timeout(Some(IDLE))?;
    client.set_nodelay(true)?;
    let (head, mut body) = read_head(&mut client)?;
    let len = content_length(&head).unwrap_or(0);
    read_up_to(&mut client, &mut body, len)?;

    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(IDLE))?;
    server.set_nodelay(true)?;
    server.write_all(&head)?;
    server.write_all(&body)?;
    server.flush()?;

    let (head, mut rest) = read_head(&mut server)?;
    if is_json(&head) {
        let len = content_length(&head).filter(|l| *l <= MAX_JSON).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "a JSON answer without a usable Content-Length")
        })?;
        read_up_to(&mut server, &mut rest, len)?;
        rest.truncate(len);
        let text = String::from_utf8_lossy(&rest).replace(from, to);
        client.write_all(&with_content_length(&head, text.len()))?;
        client.write_all(text.as_bytes())?;
    } else {
        client.write_all(&head)?;
        client.write_all(&rest)?;
        // Piece by piece, flushed as it comes: a throttled body stays throttled.
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = server.read(&mut buf)?;
            if n == 0 {
                break;
            }
            client.write_all(&buf[..n])?;
        }
    }
    client.flush()?;
    client.shutdown(std::net::Shutdown::Both)
}

/// Reads up to and including the blank line that ends an HTTP head; returns the head and whatever
/// was read after it.
fn read_head(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            return Ok((data, rest));
        }
        if data.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too long"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the HTTP head"));
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// Reads from `stream` until `data` holds `len` bytes.
fn read_up_to(stream: &mut TcpStream, data: &mut Vec<u8>, len: usize) -> io::Result<()> {
    if data.len() < len {
        let mut more = vec![0u8; len - data.len()];
        stream.read_exact(&mut more)?;
        data.extend_from_slice(&more);
    }
    Ok(())
}

/// The head's header lines (after the request or status line), as (lowercase name, value).
fn headers(head: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    let text = std::str::from_utf8(head).unwrap_or("");
    text.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
}

fn content_length(head: &[u8]) -> Option<usize> {
    headers(head).find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok())
}

fn is_json(head: &[u8]) -> bool {
    headers(head).any(|(k, v)| k == "content-type" && v.to_ascii_lowercase().contains("json"))
}

/// `head` with its `Content-Length` replaced by `len`.
fn with_content_length(head: &[u8], len: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")) {
            out.push_str(&format!("Content-Length: {len}\r\n"));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &str) -> Vec<u8> {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn rewrites_links_in_json_and_fixes_the_length() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = format!("http://{}", l.local_addr().unwrap());
        let body = format!("{{\"href\":\"{upstream}/DEFAULT/controller/v1/x\"}}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/hal+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // The head and the body may come in separate pieces.
            let (mut head, mut body) = read_head(&mut c).unwrap();
            read_up_to(&mut c, &mut body, content_length(&head).unwrap()).unwrap();
            head.extend_from_slice(&body);
            c.write_all(answer.as_bytes()).unwrap();
            head
        });
        let relay = HttpRelay::start(&upstream).unwrap();
        let out = get(relay.host_addr(), "POST /x HTTP/1.1\r\nRange: bytes=5-\r\nContent-Length: 2\r\n\r\nhi");
        let request = server.join().unwrap();
        assert_eq!(request, b"POST /x HTTP/1.1\r\nRange: bytes=5-\r\nContent-Length: 2\r\n\r\nhi", "forwarded as sent");
        let out = String::from_utf8(out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let expect = format!("{{\"href\":\"{}/DEFAULT/controller/v1/x\"}}", relay.guest_url());
        assert_eq!(body, expect);
        assert!(head.contains(&format!("Content-Length: {}", expect.len())), "{head}");
        assert!(relay.guest_url().starts_with("http://10.0.2.2:"));
    }

    #[test]
    fn streams_other_bodies_unchanged() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = format!("http://{}", l.local_addr().unwrap());
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut answer = format!(
            "HTTP/1.1 206 Partial Content\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        answer.extend_from_slice(&payload);
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            read_head(&mut c).unwrap();
            // In pieces, as a throttled download comes.
            for piece in answer.chunks(30_000) {
                c.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let relay = HttpRelay::start(&upstream).unwrap();
        let out = get(relay.host_addr(), "GET /a HTTP/1.1\r\n\r\n");
        server.join().unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(out.starts_with(b"HTTP/1.1 206"));
        assert_eq!(&out[end..], &payload[..]);
    }
}
