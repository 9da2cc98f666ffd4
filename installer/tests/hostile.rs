//! The HTTP source against a hostile server on 127.0.0.1: credentials that must stay on their origin, links that
//! are not http(s), endless and trickling bodies, a file replaced behind its URL, wrong digests and versions.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Fixture, ScriptedServer, SlotAfter, assert_slot, has_header};
use otter_installer::source::{ByteCounter, parse_link};
use otter_installer::{Announced, CancelToken, DigestAlgorithm, HttpOptions, InstallError, Progress, Source};

/// Writes a complete `200` answer with `Content-Length` and an ETag.
fn ok(conn: &mut TcpStream, etag: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body));
}

fn fast(mut http: HttpOptions) -> HttpOptions {
    http.initial_backoff = Duration::from_millis(10);
    http.max_backoff = Duration::from_millis(50);
    http.connect_timeout = Duration::from_secs(10);
    http.read_timeout = Duration::from_secs(10);
    http
}

fn read_all(url: &str, http: &HttpOptions) -> std::io::Result<Vec<u8>> {
    let mut opened =
        otter_installer::source::open(&Source::Url(url.to_owned()), http, &CancelToken::new(), ByteCounter::default())
            .map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    opened.reader.read_to_end(&mut out)?;
    Ok(out)
}

/// Installs from `url` into a fresh old-image slot.
fn install_url(
    f: &Fixture,
    url: &str,
    http: HttpOptions,
) -> (Result<otter_installer::InstallReport, InstallError>, std::path::PathBuf, Vec<u8>) {
    install_url_stalling_after(f, url, http, otter_installer::DEFAULT_STALL_TIMEOUT)
}

fn install_url_stalling_after(
    f: &Fixture,
    url: &str,
    http: HttpOptions,
    stall_timeout: Duration,
) -> (Result<otter_installer::InstallReport, InstallError>, std::path::PathBuf, Vec<u8>) {
    let (slot, old) = f.old_slot("slot.img");
    let mut req = f.request(Source::Url(url.to_owned()), &slot);
    req.http = fast(http);
    req.stall_timeout = stall_timeout;
    (otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new()), slot, old)
}

#[test]
fn credentials_go_only_to_their_origin_whatever_the_link_or_redirect() {
    let storage = ScriptedServer::start(|_, _, conn| ok(conn, "s", b"payload"));
    let target = format!("{}/file?X-Sig=secret", storage.base);
    let server = {
        let target = target.clone();
        ScriptedServer::start(move |_, head, conn| {
            if head.starts_with("GET /redirect") {
                let _ = write!(conn, "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n");
            } else {
                ok(conn, "o", b"own");
            }
        })
    };
    let http = HttpOptions {
        headers: vec![("Authorization".into(), "GatewayToken tenant-wide".into())],
        credential_origin: Some(server.base.clone()),
        ..HttpOptions::default()
    };
    // A link on the server's own origin carries the token.
    assert_eq!(read_all(&format!("{}/own", server.base), &http).unwrap(), b"own");
    // A link to another host, offered directly or through a redirect, does not.
    assert_eq!(read_all(&target, &http).unwrap(), b"payload");
    assert_eq!(read_all(&format!("{}/redirect", server.base), &http).unwrap(), b"payload");
    let own = server.heads();
    assert_eq!(own.len(), 2);
    assert!(own.iter().all(|h| has_header(h, "authorization")), "the server's own origin gets the token: {own:?}");
    let foreign = storage.heads();
    assert_eq!(foreign.len(), 2);
    assert!(foreign.iter().all(|h| !has_header(h, "authorization")), "another origin got the token: {foreign:?}");
    // Same host, another port is another origin.
    let other_port = format!("{}/own", storage.base);
    let _ = read_all(&other_port, &http);
    assert!(!has_header(storage.heads().last().unwrap(), "authorization"));
}

#[test]
fn only_http_links_are_read_and_https_only_refuses_plain_http() {
    for link in ["/etc/shadow", "file:///etc/shadow", "ftp://127.0.0.1/x", "relative/path", ""] {
        assert!(
            matches!(parse_link(link, false), Err(InstallError::NotHttpUrl { .. })),
            "{link:?} must be refused: {:?}",
            parse_link(link, false)
        );
    }
    assert!(parse_link("https://h/x", true).is_ok());
    let e = parse_link("http://user:pw@h/x?sig=s", true).unwrap_err();
    assert!(matches!(e, InstallError::InsecureLink { .. }), "{e}");
    assert_eq!(e.code(), "insecure-link");
    assert!(!e.to_string().contains("pw") && !e.to_string().contains("sig=s"), "secrets in {e}");

    // Opening one is refused before any request; a redirect to a local file or to plain http too.
    let server = ScriptedServer::start(|n, _, conn| {
        let to = if n == 0 { "file:///etc/passwd" } else { "http://127.0.0.1:9/x" };
        let _ = write!(conn, "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n");
    });
    let cancel = CancelToken::new();
    let open = |url: &str, http: &HttpOptions| {
        otter_installer::source::open(&Source::Url(url.into()), http, &cancel, ByteCounter::default()).map(|_| ())
    };
    let e = open(&format!("{}/a", server.base), &HttpOptions::default()).unwrap_err();
    assert!(matches!(e, InstallError::NotHttpUrl { .. }), "{e}");
    let https_only = HttpOptions { https_only: true, ..HttpOptions::default() };
    let e = open(&format!("{}/a", server.base), &https_only).unwrap_err();
    assert!(matches!(e, InstallError::InsecureLink { .. }), "{e}");
    assert_eq!(server.heads().len(), 1, "an insecure first link is never requested");
}

#[test]
fn an_endless_body_fails_right_after_the_announced_size() {
    let f = Fixture::new(256 << 10);
    let artifact = Arc::new(f.artifact());
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let server = {
        let (artifact, sent) = (artifact.clone(), sent.clone());
        ScriptedServer::start(move |_, _, conn| {
            // No Content-Length: the body ends when the connection does, which is never.
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(&artifact);
            let zeros = vec![0u8; 64 << 10];
            while conn.write_all(&zeros).is_ok() {
                sent.fetch_add(zeros.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let url = format!("{}/a.otter", server.base);
    let announced =
        Announced { size: Some(artifact.len() as u64), sha256: Some(sha256(&artifact)), ..Announced::default() };
    let http = HttpOptions { announced, ..HttpOptions::default() };
    let start = Instant::now();
    let (result, slot, old) = install_url(&f, &url, http);
    let e = result.unwrap_err();
    assert!(matches!(e, InstallError::TooLong { limit, .. } if limit == artifact.len() as u64), "{e}");
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);
    // The server could push only what the socket buffers hold past the end, not an endless stream.
    assert!(sent.load(std::sync::atomic::Ordering::Relaxed) < 64 << 20);
}

#[test]
fn a_content_length_other_than_the_announced_size_is_refused() {
    let server = ScriptedServer::start(|_, _, conn| ok(conn, "e", &[7u8; 1000]));
    let http =
        HttpOptions { announced: Announced { size: Some(999), ..Announced::default() }, ..HttpOptions::default() };
    let e = otter_installer::source::open(
        &Source::Url(format!("{}/x", server.base)),
        &http,
        &CancelToken::new(),
        ByteCounter::default(),
    )
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(e, InstallError::LengthMismatch { announced: 999, actual: 1000, .. }), "{e}");
}

#[test]
fn a_slow_loris_is_stalled_resumed_then_failed_as_stalled() {
    let f = Fixture::new(256 << 10);
    let artifact = Arc::new(f.artifact());
    let server = {
        let artifact = artifact.clone();
        ScriptedServer::start(move |_, head, conn| {
            let from = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(str::to_owned))
                .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok())
                .unwrap_or(0);
            let status = match from {
                0 => "200 OK".to_owned(),
                n => {
                    format!("206 Partial Content\r\nContent-Range: bytes {n}-{}/{}", artifact.len() - 1, artifact.len())
                }
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"l\"\r\nConnection: close\r\n\r\n",
                artifact.len() - from
            );
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            // A byte every 20 ms: 50 B/s, alive but useless.
            for b in &artifact[from..] {
                if conn.write_all(&[*b]).and_then(|()| conn.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let http = HttpOptions { max_resumes: 2, ..HttpOptions::default() };
    let start = Instant::now();
    let (result, slot, old) =
        install_url_stalling_after(&f, &format!("{}/a.otter", server.base), http, Duration::from_secs(1));
    let e = result.unwrap_err();
    assert!(matches!(e, InstallError::Stalled { .. }), "{e}");
    assert_eq!(e.code(), "stalled");
    // Three connections of about a second each (the first, two resumes), generously bounded.
    assert!(start.elapsed() < Duration::from_secs(40), "took {:?}", start.elapsed());
    assert_eq!(server.heads().len(), 3, "the first connection and two resumes");
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn a_file_replaced_behind_its_url_fails_a_pinned_download_and_restarts_an_unpinned_one() {
    let f = Fixture::new(512 << 10);
    let mut opts = f.options();
    opts.version = "3.0.0".into();
    let first = Arc::new(f.artifact());
    let other = Arc::new(f.artifact_with(&opts));
    let serve = |first: Arc<Vec<u8>>, other: Arc<Vec<u8>>| {
        ScriptedServer::start(move |n, _, conn| {
            if n == 0 {
                // The first answer breaks off half-way...
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                    first.len()
                );
                let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(&first[..first.len() / 2]));
                let _ = conn.shutdown(std::net::Shutdown::Both);
            } else {
                // ...and the resume finds another file (its If-Range fails: 200, new ETag).
                ok(conn, "v2", &other);
            }
        })
    };
    let server = serve(first.clone(), other.clone());
    let http = HttpOptions { pin_entity: true, ..HttpOptions::default() };
    let (result, slot, old) = install_url(&f, &format!("{}/a.otter", server.base), http);
    let e = result.unwrap_err();
    assert!(matches!(e, InstallError::ArtifactReplaced { .. }), "{e}");
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);

    // Unpinned (a user's own URL): the documented restart with the new file.
    let server = serve(first, other);
    let (result, _, _) = install_url(&f, &format!("{}/a.otter", server.base), HttpOptions::default());
    assert_eq!(result.unwrap().manifest.version, "3.0.0");
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

#[test]
fn every_announced_digest_and_the_version_are_checked() {
    use md5::Digest as _;
    let f = Fixture::new(256 << 10);
    let artifact = Arc::new(f.artifact());
    let server = {
        let artifact = artifact.clone();
        ScriptedServer::start(move |_, _, conn| ok(conn, "d", &artifact))
    };
    let url = format!("{}/a.otter", server.base);
    let right = Announced {
        size: Some(artifact.len() as u64),
        sha1: Some(sha1::Sha1::digest(&*artifact).into()),
        md5: Some(md5::Md5::digest(&*artifact).into()),
        sha256: Some(sha256(&artifact)),
        version: Some("2.0.0".into()),
    };
    let with = |a: Announced| HttpOptions { announced: a, ..HttpOptions::default() };
    let (result, _, _) = install_url(&f, &url, with(right.clone()));
    result.unwrap();

    let mut wrong_md5 = right.clone();
    wrong_md5.md5 = Some([0; 16]);
    let (result, slot, old) = install_url(&f, &url, with(wrong_md5));
    let e = result.unwrap_err();
    assert!(matches!(e, InstallError::DigestMismatch { algorithm: DigestAlgorithm::Md5, .. }), "{e}");
    assert_eq!(e.code(), "digest-mismatch");
    assert_slot(&slot, &old, &f.image, SlotAfter::Invalidated);

    let wrong_sha1 = Announced { sha1: Some([1; 20]), sha256: None, md5: None, ..right.clone() };
    let (result, _, _) = install_url(&f, &url, with(wrong_sha1));
    assert!(matches!(result.unwrap_err(), InstallError::DigestMismatch { algorithm: DigestAlgorithm::Sha1, .. }));

    let other_version = Announced { version: Some("1.9.0".into()), ..right };
    let (result, slot, old) = install_url(&f, &url, with(other_version));
    let e = result.unwrap_err();
    assert!(
        matches!(&e, InstallError::VersionMismatch { expected, actual } if expected == "1.9.0" && actual == "2.0.0"),
        "{e}"
    );
    assert_eq!(e.code(), "version-mismatch");
    assert_slot(&slot, &old, &f.image, SlotAfter::Untouched);
}

#[test]
fn urls_in_errors_lose_their_secrets() {
    let server = ScriptedServer::start(|_, _, conn| {
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    });
    let url = format!("{}/a.otter?X-Amz-Signature=topsecret", server.base.replace("http://", "http://me:pw@"));
    let e = otter_installer::source::open(
        &Source::Url(url.clone()),
        &HttpOptions::default(),
        &CancelToken::new(),
        ByteCounter::default(),
    )
    .map(|_| ())
    .unwrap_err();
    let shown = e.to_string();
    assert!(matches!(e, InstallError::HttpStatus { status: 404, .. }), "{shown}");
    assert!(!shown.contains("topsecret") && !shown.contains("pw"), "{shown}");
    assert!(!Source::Url(url).name().contains("topsecret"));
}

#[test]
fn a_slow_but_steady_download_is_not_a_stall() {
    let f = Fixture::new(256 << 10);
    let artifact = Arc::new(f.artifact());
    let server = {
        let artifact = artifact.clone();
        ScriptedServer::start(move |_, _, conn| {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", artifact.len());
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            // 8 KiB every 100 ms: slow, but well above 4 KiB per stall timeout.
            for piece in artifact.chunks(8 << 10) {
                if conn.write_all(piece).and_then(|()| conn.flush()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let http = HttpOptions { max_resumes: 0, ..HttpOptions::default() };
    let (result, _, _) =
        install_url_stalling_after(&f, &format!("{}/a.otter", server.base), http, Duration::from_secs(1));
    result.unwrap();
    assert_eq!(server.heads().len(), 1, "one connection, never resumed");
}
