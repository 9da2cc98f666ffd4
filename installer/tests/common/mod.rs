//! Shared fixtures for installer tests: artifacts built with the real builder, surgery on their tar entries, and
//! a small HTTP server with fault injection.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_artifact::keys::{self, SignatureBlock};
use otter_artifact::manifest::Manifest;
use otter_artifact::tar::{BLOCK, TarReader, TarWriter, build_header};
use otter_artifact::{Keyring, Limits, Policy};
use otter_installer::{CancelToken, InstallError, InstallReport, InstallRequest, Progress, Source, Target};

pub const DEVICE: &str = "gw-test";
pub const CHUNK: u64 = 64 << 10;

/// A signing key, a keyring trusting it, a temp dir and an image.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: ed25519_dalek::SigningKey,
    pub keyring: Keyring,
    pub image: Vec<u8>,
}

/// Deterministic, moderately compressible bytes (so chunks have different hashes and real zstd frames).
pub fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 { (x & 0xff) as u8 } else { (i / 97) as u8 }
        })
        .collect()
}

impl Fixture {
    pub fn new(image_len: usize) -> Self {
        let key = keys::generate().unwrap();
        let mut keyring = Keyring::new();
        keyring.add(key.verifying_key());
        Self { dir: tempfile::tempdir().unwrap(), key, keyring, image: image_bytes(image_len, 7) }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn options(&self) -> BuildOptions {
        let mut o = BuildOptions::new(vec![DEVICE.into()], "2.0.0");
        o.chunk_size = CHUNK;
        o.level = 3;
        o.security_version = 5;
        o.created = 1_700_000_000;
        o
    }

    /// Builds an artifact of `self.image` with `opts`, signed by the fixture key.
    pub fn artifact_with(&self, opts: &BuildOptions) -> Vec<u8> {
        let img = self.path("image.bin");
        std::fs::write(&img, &self.image).unwrap();
        let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: img, base: None };
        let mut out = Vec::new();
        builder::create(opts, &[src], std::slice::from_ref(&self.key), &mut out).unwrap();
        out
    }

    pub fn artifact(&self) -> Vec<u8> {
        self.artifact_with(&self.options())
    }

    pub fn policy(&self) -> Policy {
        Policy { device_type: Some(DEVICE.into()), min_security_version: 0, limits: Limits::default() }
    }

    pub fn request(&self, source: Source, slot: &Path) -> InstallRequest {
        InstallRequest::new(
            source,
            vec![Target { slot_class: "rootfs".into(), path: slot.to_owned(), max_size: None, base: None }],
            self.keyring.clone(),
            self.policy(),
        )
    }

    /// A slot file holding an "old image": a recognisable, non-zero pattern bigger than the new image.
    pub fn old_slot(&self, name: &str) -> (PathBuf, Vec<u8>) {
        let old = image_bytes(self.image.len() + 8192, 99);
        let p = self.path(name);
        std::fs::write(&p, &old).unwrap();
        (p, old)
    }

    /// Installs `artifact` (written to a file) into a fresh old-image slot.
    pub fn install_bytes(&self, artifact: &[u8]) -> (Result<InstallReport, InstallError>, PathBuf, Vec<u8>) {
        let a = self.path("a.otter");
        std::fs::write(&a, artifact).unwrap();
        let (slot, old) = self.old_slot("slot.img");
        let req = self.request(Source::File(a), &slot);
        (otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()), slot, old)
    }

    /// Re-signs a manifest with the fixture key.
    pub fn sign(&self, manifest: &[u8]) -> Vec<u8> {
        let mut b = SignatureBlock::default();
        b.sign(&self.key, manifest);
        b.to_bytes()
    }
}

/// What a failed install must have left in the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotAfter {
    /// Failure before any payload byte: the slot is exactly as it was.
    Untouched,
    /// Failure while writing: the slot's first block is zeroed, so it holds no valid image.
    Invalidated,
}

pub fn assert_slot(slot: &Path, old: &[u8], new_image: &[u8], expect: SlotAfter) {
    let bytes = std::fs::read(slot).unwrap();
    assert_ne!(&bytes[..new_image.len().min(bytes.len())], new_image, "slot must not hold the new image");
    match expect {
        SlotAfter::Untouched => assert!(bytes == old, "slot must be untouched"),
        SlotAfter::Invalidated => {
            assert!(otter_installer::slot::is_invalidated(slot).unwrap(), "slot's first block must be zeroed")
        }
    }
}

/// The tar entries of an artifact, in order.
pub fn entries(artifact: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut r = TarReader::new(artifact);
    let mut out = Vec::new();
    while let Some(h) = r.next_entry().unwrap() {
        let mut data = vec![0u8; h.size as usize];
        r.read_data(&mut data, "entry").unwrap();
        out.push((h.name, data));
    }
    out
}

/// Builds a tar stream from entries.
pub fn assemble(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = TarWriter::new(Vec::new(), 0);
    for (n, d) in entries {
        w.append(n, d).unwrap();
    }
    w.finish().unwrap()
}

/// A raw tar header of any type flag (links, devices) and any name (traversal), with a valid checksum: what the
/// writer refuses to produce.
pub fn raw_header(name: &str, size: u64, typeflag: u8, linkname: &str) -> [u8; BLOCK] {
    let mut h = build_header("x", size, 0).unwrap();
    h[..100].fill(0);
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[156] = typeflag;
    h[157..157 + linkname.len()].copy_from_slice(linkname.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// The artifact's genuine manifest and signature entries, then `header` with `data`, then the end marker.
pub fn signed_head_then(artifact: &[u8], header: &[u8; BLOCK], data: &[u8]) -> Vec<u8> {
    let e = entries(artifact);
    let mut w = TarWriter::new(Vec::new(), 0);
    w.append(&e[0].0, &e[0].1).unwrap();
    w.append(&e[1].0, &e[1].1).unwrap();
    let mut raw = w.into_inner();
    raw.extend_from_slice(header);
    raw.extend_from_slice(data);
    raw.resize(raw.len().div_ceil(BLOCK) * BLOCK + 2 * BLOCK, 0);
    raw
}

pub fn parse_manifest(bytes: &[u8]) -> Manifest {
    Manifest::parse(bytes).unwrap()
}

/// Fault injection for [`HttpServer`].
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer every request with this status.
    pub status: Option<u16>,
    /// Drop the connection after this many body bytes, for the first this-many responses.
    pub cut_after: Option<u64>,
    pub cuts: AtomicUsize,
    /// Ignore Range requests and always send the full body with 200.
    pub no_ranges: bool,
    /// Sleep this long after each 32 KiB of body.
    pub throttle: Option<Duration>,
}

/// A minimal HTTP/1.1 file server on loopback with Range support, an ETag, and fault injection.
pub struct HttpServer {
    pub url: String,
    pub body_bytes_sent: Arc<AtomicU64>,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl HttpServer {
    pub fn start(body: Vec<u8>, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/a.otter", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (body, faults) = (Arc::new(body), Arc::new(faults));
        {
            let (sent, requests, stop) = (sent.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (body, faults, sent, requests) = (body.clone(), faults.clone(), sent.clone(), requests.clone());
                    std::thread::spawn(move || serve(conn, &body, &faults, &sent, &requests));
                }
            });
        }
        Self { url, body_bytes_sent: sent, requests, stop }
    }
}

/// Reads a request's head (request line and headers, without the blank line); `None` if the peer closed first.
fn read_head(conn: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line);
    }
}

fn serve(mut conn: TcpStream, body: &[u8], faults: &Faults, sent: &AtomicU64, requests: &Mutex<Vec<String>>) {
    let Some(head) = read_head(&conn) else { return };
    requests.lock().unwrap().push(head.clone());
    if let Some(status) = faults.status {
        let _ = write!(conn, "HTTP/1.1 {status} Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let etag = "\"otter-test-1\"";
    let range_start = head
        .lines()
        .find_map(|l| l.strip_prefix("Range: bytes=").or_else(|| l.strip_prefix("range: bytes=")))
        .and_then(|r| r.trim().trim_end_matches('-').parse::<u64>().ok());
    let if_range_ok = head.lines().all(|l| {
        let l = l.to_ascii_lowercase();
        !l.starts_with("if-range:") || l.contains("otter-test-1")
    });
    let start = match range_start {
        Some(s) if !faults.no_ranges && if_range_ok => s as usize,
        _ => 0,
    };
    let part = &body[start.min(body.len())..];
    let status = if start > 0 {
        format!("206 Partial Content\r\nContent-Range: bytes {start}-{}/{}", body.len() - 1, body.len())
    } else {
        "200 OK".into()
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        part.len()
    );
    let cut = match faults.cut_after {
        Some(n) if faults.cuts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1)).is_ok() => {
            Some(n as usize)
        }
        _ => None,
    };
    let limit = cut.map_or(part.len(), |c| c.min(part.len()));
    for piece in part[..limit].chunks(32 << 10) {
        if conn.write_all(piece).is_err() {
            return;
        }
        sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        if let Some(t) = faults.throttle {
            std::thread::sleep(t);
        }
    }
    if cut.is_some() {
        // Abrupt close mid-body.
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    let _ = conn.flush();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}

/// A loopback HTTP server whose answers a test writes itself, raw: redirects, endless or trickling bodies, a
/// file that changes between requests. Records each request's head (request line and headers).
pub struct ScriptedServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Request heads in arrival order.
    pub heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
    }
}

impl ScriptedServer {
    /// Starts the server; `answer(n, head, conn)` writes the answer to the `n`-th request (from 0).
    pub fn start(answer: impl Fn(usize, &str, &mut TcpStream) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(answer);
        {
            let (heads, stop) = (heads.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let (heads, answer) = (heads.clone(), answer.clone());
                    std::thread::spawn(move || {
                        let Some(head) = read_head(&conn) else { return };
                        let n = {
                            let mut h = heads.lock().unwrap();
                            h.push(head.clone());
                            h.len() - 1
                        };
                        answer(n, &head, &mut conn);
                        let _ = conn.flush();
                    });
                }
            });
        }
        Self { base, heads, stop }
    }

    /// Request heads so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// Whether a request head carries a header (case-insensitive name).
pub fn has_header(head: &str, name: &str) -> bool {
    head.lines().any(|l| l.to_ascii_lowercase().starts_with(&format!("{}:", name.to_ascii_lowercase())))
}
