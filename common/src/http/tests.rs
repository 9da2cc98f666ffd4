//! The client against scripted servers on 127.0.0.1: each test writes the server's side byte by byte.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// A scripted server: `handle(n, conn)` serves the `n`-th connection (from 0).
struct Server {
    base: String,
    port: u16,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(handle: impl Fn(usize, TcpStream, &Mutex<Vec<String>>) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h, handle) = (connections.clone(), heads.clone(), Arc::new(handle));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let n = c.fetch_add(1, Ordering::SeqCst);
                let (h, handle) = (h.clone(), handle.clone());
                std::thread::spawn(move || handle(n, conn, &h));
            }
        });
        Self { base: format!("http://127.0.0.1:{port}"), port, connections, heads }
    }

    /// Answers every request on every connection with `answer`, keeping connections open.
    fn answering(answer: &'static [u8]) -> Self {
        Self::start(move |_, conn, heads| {
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            while let Some(h) = read_request(&mut r) {
                heads.lock().unwrap().push(h);
                if w.write_all(answer).is_err() {
                    return;
                }
            }
        })
    }

    fn url(&self, path: &str) -> Url {
        Url::parse(&format!("{}{path}", self.base)).unwrap()
    }
}

/// A request's head and its Content-Length body (as text); `None` when the peer closed.
fn read_request(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    head.push_str(&String::from_utf8_lossy(&body));
    Some(head)
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(10)).proxies(Proxies::none()).build().unwrap()
}

fn get(c: &Client, url: Url) -> Result<(u16, Vec<u8>), HttpError> {
    let mut r = c.send(&Request::get(url))?;
    let mut body = Vec::new();
    r.read_to_end(&mut body).map_err(|e| HttpError::Io { host: String::new(), source: e })?;
    Ok((r.status(), body))
}

fn body_error(answer: &'static [u8]) -> io::Error {
    let s = Server::start(move |_, mut conn, _| {
        read_request(&mut BufReader::new(conn.try_clone().unwrap()));
        let _ = conn.write_all(answer);
    });
    let mut r = client().send(&Request::get(s.url("/"))).unwrap();
    r.read_to_end(&mut Vec::new()).unwrap_err()
}

#[test]
fn chunked_bodies_arrive_whole_over_split_writes() {
    let s = Server::start(|_, mut conn, _| {
        read_request(&mut BufReader::new(conn.try_clone().unwrap()));
        let parts: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5",
            b";name=\"v\"\r\nhel",
            b"lo\r",
            b"\n6\r\n wor",
            b"ld\r\n0\r\nX-Trailer: 1\r",
            b"\n\r\n",
        ];
        for p in parts {
            conn.write_all(p).unwrap();
            conn.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (status, body) = get(&client(), s.url("/")).unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));
}

#[test]
fn bodies_cut_short_are_errors_not_short_ends() {
    let e = body_error(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    let e = body_error(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nabc");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "mid-chunk: {e}");
    let e = body_error(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "before the last chunk: {e}");
    let e = body_error(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\n");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "overflowing chunk size: {e}");
}

#[test]
fn hostile_heads_are_typed_errors() {
    let head_error = |answer: Vec<u8>| {
        let answer = Arc::new(answer);
        let s = Server::start(move |_, mut conn, _| {
            read_request(&mut BufReader::new(conn.try_clone().unwrap()));
            let _ = conn.write_all(&answer);
        });
        client().send(&Request::get(s.url("/"))).unwrap_err()
    };
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 2000).flatten());
    assert!(matches!(head_error(huge), HttpError::TooLarge { .. }));
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    many.extend(std::iter::repeat_n(b"X: y\r\n", 101).flatten());
    many.extend(b"\r\n");
    assert!(matches!(head_error(many), HttpError::TooLarge { .. }));
    for bad in [
        &b"HTTP/1.1 abc OK\r\n\r\n"[..],
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
    ] {
        let e = head_error(bad.to_vec());
        assert!(matches!(e, HttpError::Malformed { .. }), "{}: {e}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn interim_responses_are_skipped_and_chunked_beats_content_length() {
    let s = Server::answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    );
    let c = client();
    assert_eq!(get(&c, s.url("/")).unwrap(), (200, b"ok".to_vec()));
    // Both framings: chunked is read, and the connection is not trusted with another request.
    assert_eq!(get(&c, s.url("/")).unwrap(), (200, b"ok".to_vec()));
    assert_eq!(s.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn header_injection_is_refused_before_anything_is_sent() {
    let s = Server::answering(b"HTTP/1.1 204 No Content\r\n\r\n");
    let c = client();
    for (n, v) in [("X-Token", "a\r\nEvil: 1"), ("X-Token", "a\nb"), ("X Token", "a"), ("X:Token", "a"), ("", "a")] {
        let e = c.send(&Request::get(s.url("/")).header(n, v)).unwrap_err();
        assert!(matches!(&e, HttpError::InvalidHeader { .. }), "{n:?}: {e}");
        assert!(!e.to_string().contains("Evil"), "the value is not shown: {e}");
    }
    let e = Client::builder().default_header("Authorization", "TargetToken x\r\n").build().unwrap_err();
    assert!(matches!(e, HttpError::InvalidHeader { .. }));
    assert_eq!(s.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn requests_carry_host_agent_keep_alive_and_json() {
    let s = Server::answering(b"HTTP/1.1 204 No Content\r\n\r\n");
    let url = Url::parse(&format!("http://u:p%40w@localhost:{}/a/b?x=1", s.port)).unwrap();
    let r = client().send(&Request::new(Method::Put, url).header("x-mixed", "Case").json(b"{\"a\":1}".to_vec()));
    assert_eq!(r.unwrap().status(), 204);
    let head = s.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("PUT /a/b?x=1 HTTP/1.1\r\n"), "{head}");
    for line in [
        format!("Host: localhost:{}", s.port),
        format!("User-Agent: otter/{}", env!("CARGO_PKG_VERSION")),
        "Connection: keep-alive".into(),
        "Content-Type: application/json".into(),
        "Content-Length: 7".into(),
        format!("Authorization: Basic {}", url::base64(b"u:p@w")),
        "x-mixed: Case".into(),
    ] {
        assert!(head.contains(&format!("{line}\r\n")), "{line} in {head}");
    }
    assert!(head.ends_with("{\"a\":1}"), "{head}");
}

#[test]
fn headers_are_looked_up_case_insensitively() {
    let s = Server::answering(b"HTTP/1.1 200 OK\r\nETAG: \"v1\"\r\ncontent-length: 0\r\n\r\n");
    let r = client().send(&Request::get(s.url("/"))).unwrap();
    assert_eq!(
        (r.header("etag"), r.header("Content-Length"), r.content_length()),
        (Some("\"v1\""), Some("0"), Some(0))
    );
}

#[test]
fn a_connection_read_to_its_end_is_reused() {
    let s = Server::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, s.url("/x")).unwrap(), (200, b"ok".to_vec()));
    }
    assert_eq!(s.heads.lock().unwrap().len(), 3);
    assert_eq!(s.connections.load(Ordering::SeqCst), 1, "one connection for three requests");
    // A body dropped unread takes its connection with it.
    drop(c.send(&Request::get(s.url("/x"))).unwrap());
    get(&c, s.url("/x")).unwrap();
    assert_eq!(s.connections.load(Ordering::SeqCst), 2);
}

/// The first connection answers one request, then takes the next and closes without answering (a server
/// whose keep-alive timer ran out as the request arrived); later connections answer normally.
fn closing_after_one() -> Server {
    Server::start(|n, conn, heads| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        let mut served = 0;
        while let Some(h) = read_request(&mut r) {
            heads.lock().unwrap().push(h);
            if n == 0 && served == 1 {
                return;
            }
            served += 1;
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    })
}

#[test]
fn a_stale_connection_is_retried_once_for_idempotent_requests_only() {
    let s = closing_after_one();
    let c = client();
    get(&c, s.url("/")).unwrap();
    assert_eq!(get(&c, s.url("/")).unwrap(), (200, b"ok".to_vec()), "the GET is sent again on a new connection");
    assert_eq!((s.connections.load(Ordering::SeqCst), s.heads.lock().unwrap().len()), (2, 3));

    let s = closing_after_one();
    get(&c, s.url("/")).unwrap();
    let e = c.send(&Request::new(Method::Post, s.url("/")).json(b"{}".to_vec())).unwrap_err();
    assert!(matches!(&e, HttpError::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof), "{e}");
    assert_eq!(s.connections.load(Ordering::SeqCst), 1, "a POST is not repeated");
}

#[test]
fn timeouts_and_refused_connections_are_typed() {
    let s = Server::start(|_, conn, _| {
        std::thread::sleep(Duration::from_secs(3));
        drop(conn);
    });
    let c = Client::builder().timeout(Duration::from_millis(300)).proxies(Proxies::none()).build().unwrap();
    assert!(matches!(c.send(&Request::get(s.url("/"))), Err(HttpError::Timeout { .. })));
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = c.send(&Request::get(Url::parse(&format!("http://127.0.0.1:{closed}/")).unwrap())).unwrap_err();
    assert!(matches!(&e, HttpError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused));
}

#[test]
fn a_silent_body_times_out_as_timed_out() {
    let s = Server::start(|_, mut conn, _| {
        read_request(&mut BufReader::new(conn.try_clone().unwrap()));
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab");
        std::thread::sleep(Duration::from_secs(3));
    });
    let c = Client::builder().timeout(Duration::from_millis(300)).proxies(Proxies::none()).build().unwrap();
    let mut r = c.send(&Request::get(s.url("/"))).unwrap();
    // The installer's stall detection counts on this kind (Linux reports a socket timeout as WouldBlock).
    assert_eq!(r.read_to_end(&mut Vec::new()).unwrap_err().kind(), io::ErrorKind::TimedOut);
}

#[test]
fn plain_http_goes_through_the_proxy_in_absolute_form() {
    let proxy = Server::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied");
    let proxies = Proxies::from_lookup(|k| match k {
        "HTTP_PROXY" => Some(format!("http://pu:pp@127.0.0.1:{}", proxy.port)),
        "no_proxy" => Some("localhost, .internal.example".into()),
        _ => None,
    })
    .unwrap();
    let c = Client::builder().proxies(proxies).build().unwrap();
    let (_, body) = get(&c, Url::parse("http://updates.example:8080/a.otter?x=1").unwrap()).unwrap();
    assert_eq!(body, b"proxied");
    let head = proxy.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET http://updates.example:8080/a.otter?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("Proxy-Authorization: Basic {}\r\n", url::base64(b"pu:pp"))), "{head}");
    assert!(head.contains("Host: updates.example:8080\r\n"), "{head}");

    // no_proxy: straight to the server, not to the proxy.
    let direct = Server::answering(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ndirect");
    assert_eq!(get(&c, Url::parse(&format!("http://localhost:{}/", direct.port)).unwrap()).unwrap().1, b"direct");
    assert_eq!(proxy.heads.lock().unwrap().len(), 1);
}

#[test]
fn no_proxy_lists_match_hosts_and_their_subdomains() {
    let n = NoProxy::parse(" example.com,.corp.example , *.lan,10.0.0.1, [::1]:8080,host:3128");
    for yes in ["example.com", "a.example.com", "x.corp.example", "corp.example", "b.lan", "10.0.0.1", "[::1]", "host"]
    {
        assert!(n.matches(yes), "{yes}");
    }
    for no in ["notexample.com", "example.com.evil", "10.0.0.10", "lan2"] {
        assert!(!n.matches(no), "{no}");
    }
    assert!(NoProxy::parse("*").matches("anything"));
    let p = Proxies::from_lookup(|k| (k == "https_proxy").then(|| "proxy.corp:3128".to_owned())).unwrap();
    assert!(p.for_url(&Url::parse("https://h/").unwrap()).is_some());
    assert!(p.for_url(&Url::parse("http://h/").unwrap()).is_none(), "https_proxy is for https only");
    let e = Proxies::from_lookup(|k| (k == "HTTPS_PROXY").then(|| "https://proxy:443".to_owned())).unwrap_err();
    assert!(matches!(e, HttpError::Proxy { .. }), "{e}");
}

/// A private CA, and a server certificate for 127.0.0.1 and localhost it signed.
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    server: rustls::ServerConfig,
}

fn pki(client_auth: bool) -> Pki {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    init_tls();
    let super::testing::PrivatePki { ca_pem, issuer, server_cert: cert, server_key: key } =
        super::testing::private_pki();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_auth {
        true => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap(),
            )
        }
        false => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    Pki { ca_pem, issuer, server }
}

/// Serves `conn` over TLS: one answer per request; records whether the client presented a certificate.
fn serve_tls(cfg: Arc<rustls::ServerConfig>, conn: TcpStream, heads: &Mutex<Vec<String>>) {
    let Ok(sc) = rustls::ServerConnection::new(cfg) else { return };
    let mut tls = rustls::StreamOwned::new(sc, conn);
    let mut r = BufReader::new(&mut tls);
    let Some(h) = read_request(&mut r) else { return };
    let cert = r.get_ref().conn.peer_certificates().is_some_and(|c| !c.is_empty());
    heads.lock().unwrap().push(format!("{h}client-cert: {cert}"));
    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure");
    let _ = tls.flush();
}

fn tls_server(cfg: rustls::ServerConfig) -> Server {
    let cfg = Arc::new(cfg);
    Server::start(move |_, conn, heads| serve_tls(cfg.clone(), conn, heads))
}

#[test]
fn tls_trusts_the_given_ca_only() {
    let p = pki(false);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let s = tls_server(p.server);
    let url = Url::parse(&format!("https://localhost:{}/", s.port)).unwrap();
    let c = Client::builder().ca_bundle(Some(&ca)).proxies(Proxies::none()).build().unwrap();
    assert_eq!(get(&c, url.clone()).unwrap(), (200, b"secure".to_vec()));

    let other = dir.path().join("other.pem");
    std::fs::write(&other, pki(false).ca_pem).unwrap();
    let c = Client::builder().ca_bundle(Some(&other)).proxies(Proxies::none()).build().unwrap();
    let e = c.send(&Request::get(url)).unwrap_err();
    assert!(matches!(&e, HttpError::Tls { source: rustls::Error::InvalidCertificate(_), .. }), "{e}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(Client::builder().ca_bundle(Some(&empty)).build(), Err(HttpError::BadPem { .. })));
}

#[test]
fn mutual_tls_presents_the_client_identity() {
    use rcgen::{CertificateParams, KeyPair};
    let p = pki(true);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["dev1".into()]).unwrap().signed_by(&key, &p.issuer).unwrap();
    let id = dir.path().join("client.pem");
    std::fs::write(&id, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let s = tls_server(p.server);
    let url = Url::parse(&format!("https://127.0.0.1:{}/", s.port)).unwrap();
    let c = Client::builder().ca_bundle(Some(&ca)).client_identity(Some(&id)).proxies(Proxies::none()).build();
    assert_eq!(get(&c.unwrap(), url.clone()).unwrap(), (200, b"secure".to_vec()));
    assert!(s.heads.lock().unwrap()[0].ends_with("client-cert: true"));
    // Without the identity the server refuses the handshake (TLS 1.3 reports it on the first read).
    let c = Client::builder().ca_bundle(Some(&ca)).proxies(Proxies::none()).build().unwrap();
    assert!(get(&c, url).is_err());
    assert_eq!(s.heads.lock().unwrap().len(), 1);
}

#[test]
fn https_goes_through_a_connect_tunnel() {
    let p = pki(false);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let cfg = Arc::new(p.server);
    // The proxy answers CONNECT, then is the TLS server itself (as if it relayed to it).
    let proxy = Server::start(move |_, conn, heads| {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let Some(h) = read_request(&mut r) else { return };
        heads.lock().unwrap().push(h);
        let mut w = conn.try_clone().unwrap();
        let _ = w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        serve_tls(cfg.clone(), conn, heads);
    });
    let proxies = Proxies::none().with_https(Proxy::parse(&format!("127.0.0.1:{}", proxy.port)).unwrap());
    let c = Client::builder().ca_bundle(Some(&ca)).proxies(proxies).build().unwrap();
    let url = Url::parse("https://localhost:8443/secret?sig=1").unwrap();
    assert_eq!(get(&c, url).unwrap(), (200, b"secure".to_vec()));
    let heads = proxy.heads.lock().unwrap().clone();
    assert!(heads[0].starts_with("CONNECT localhost:8443 HTTP/1.1\r\n"), "{heads:?}");
    assert!(heads[1].starts_with("GET /secret?sig=1 HTTP/1.1\r\n"), "inside the tunnel: {heads:?}");

    // A proxy that refuses the tunnel.
    let refusing = Server::answering(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n");
    let proxies = Proxies::none().with_https(Proxy::parse(&refusing.base).unwrap());
    let c = Client::builder().ca_bundle(Some(&ca)).proxies(proxies).build().unwrap();
    let e = c.send(&Request::get(Url::parse("https://localhost/").unwrap())).unwrap_err();
    assert!(matches!(&e, HttpError::Proxy { what, .. } if what.contains("407")), "{e}");
}
