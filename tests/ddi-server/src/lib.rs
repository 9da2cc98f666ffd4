//! A small hawkBit Direct Device Integration (DDI) server for tests and the simulator.
//!
//! It keeps targets and actions in memory the way hawkBit does (one open action per target is offered by the
//! poll; closed feedback closes it; feedback on a closed action is `410 Gone`), serves artifacts with
//! `Accept-Ranges`, `ETag` and `206 Partial Content`, records every request, and injects faults per test:
//! error statuses, malformed JSON, dropped connections, slow bodies, and events triggered after a number of
//! artifact bytes (drop, expire the pre-signed links, cancel the action, make it gone).
//!
//! Plain HTTP/1.1 over `std::net`, one thread per connection, `Connection: close`; optionally TLS (rustls, ring)
//! with an optional client-certificate requirement (mutual TLS).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, `PUT`...
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Query string (without `?`), possibly empty.
    pub query: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Whether the client presented a certificate (TLS only).
    pub client_cert: bool,
    /// Response status.
    pub status: u16,
    /// Artifact body bytes sent in the response.
    pub body_bytes_sent: u64,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Request {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What happens to an artifact download once it has sent a number of body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Close the connection.
    Drop,
    /// Invalidate every artifact link issued so far (they answer `status`, 401 or 403, from now on), then close.
    ExpireLinks(u16),
    /// Cancel this action on the server (the next poll offers `cancelAction`); the download goes on.
    Cancel(u64),
    /// Make this action gone (feedback answers 410); the download goes on.
    Gone(u64),
    /// Put other bytes behind the same artifact name (a new ETag, size and hashes: a server that serves "whatever
    /// is assigned now"), then close.
    Replace {
        /// Artifact name.
        name: String,
        /// The new content.
        data: Vec<u8>,
    },
}

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer the next `times` requests whose path contains `path` with `status`.
    Status {
        /// Path substring.
        path: String,
        /// HTTP status.
        status: u16,
        /// How many requests.
        times: u32,
    },
    /// Answer the next `times` requests whose path contains `path` with 200 and a body that is not JSON.
    MalformedJson {
        /// Path substring.
        path: String,
        /// How many requests.
        times: u32,
    },
    /// Send artifact bodies in pieces of `piece` bytes with `delay` between them.
    SlowBody {
        /// Piece size, bytes.
        piece: usize,
        /// Pause after each piece.
        delay: Duration,
    },
    /// Artifact bodies without `Content-Length` that never end: the file, then zeros until the client hangs up.
    EndlessBody,
    /// Answer the next request whose path contains `path` with 200 and a valid JSON document padded to `bytes`
    /// (a hostile or broken server's huge answer).
    HugeJson {
        /// Path substring.
        path: String,
        /// Body size.
        bytes: u64,
    },
    /// Once an artifact response has sent `after` body bytes, do `then` (once).
    AfterBytes {
        /// Body bytes of one response.
        after: u64,
        /// What happens.
        then: Trigger,
    },
}

/// An action as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    /// Waiting for the device's consent (`confirmationBase`).
    WaitingConfirmation,
    /// Offered as `deploymentBase`.
    Running,
    /// A cancel was requested; offered as `cancelAction`.
    Canceling,
    /// The device accepted the cancel.
    Canceled,
    /// The device reported `closed`.
    Closed {
        /// `finished: success`.
        success: bool,
    },
    /// Removed on the server: feedback answers 410.
    Gone,
}

impl ActionStatus {
    fn open(self) -> bool {
        matches!(self, Self::WaitingConfirmation | Self::Running | Self::Canceling)
    }
}

/// How to create an action.
#[derive(Debug, Clone)]
pub struct ActionSpec {
    /// Artifact names (added with [`DdiServer::add_artifact`]) in the `os` chunk.
    pub artifacts: Vec<String>,
    /// Chunk version.
    pub version: String,
    /// `download`: `skip` / `attempt` / `forced`.
    pub download: String,
    /// `update`: `skip` / `attempt` / `forced`.
    pub update: String,
    /// `maintenanceWindow`, if scheduled.
    pub maintenance_window: Option<String>,
    /// Ask for consent first.
    pub confirmation_required: bool,
    /// Announce this sha256 instead of the real one (to test the check).
    pub sha256_override: Option<String>,
    /// Announce this md5 instead of the real one.
    pub md5_override: Option<String>,
    /// Announce this download link instead of the server's own (a path, `file:`, another host, plain http).
    pub link_override: Option<String>,
}

impl ActionSpec {
    /// A forced install of one artifact.
    pub fn new(artifact: &str, version: &str) -> Self {
        Self {
            artifacts: vec![artifact.to_owned()],
            version: version.to_owned(),
            download: "forced".into(),
            update: "forced".into(),
            maintenance_window: None,
            confirmation_required: false,
            sha256_override: None,
            md5_override: None,
            link_override: None,
        }
    }
}

/// Server-side state of one action.
#[derive(Debug, Clone)]
pub struct Action {
    /// Id.
    pub id: u64,
    /// Target.
    pub target: String,
    /// How it was created.
    pub spec: ActionSpec,
    /// Status.
    pub status: ActionStatus,
    /// Every feedback body posted on `deploymentBase/{id}/feedback`, in order.
    pub feedback: Vec<Value>,
    /// Every body posted on `cancelAction/{id}/feedback`.
    pub cancel_feedback: Vec<Value>,
    /// Every body posted on `confirmationBase/{id}/feedback`.
    pub confirmation_feedback: Vec<Value>,
    /// Changes when the action changes (soft → forced), like hawkBit's `c` query.
    pub generation: u32,
}

struct Artifact {
    data: Arc<Vec<u8>>,
    sha256: String,
    sha1: String,
    md5: String,
    etag: String,
}

impl Artifact {
    fn new(data: Vec<u8>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&data));
        let sha1 = hex::encode(sha1::Sha1::digest(&data));
        let md5 = hex::encode(md5::Md5::digest(&data));
        let etag = format!("\"{}\"", &sha256[..16]);
        Self { data: Arc::new(data), sha256, sha1, md5, etag }
    }
}

struct Target {
    token: Option<String>,
    attributes: BTreeMap<String, String>,
    config_requested: bool,
    config_modes: Vec<String>,
}

#[derive(Default)]
struct State {
    sleep: String,
    tenant: String,
    require_auth: bool,
    gateway_token: Option<String>,
    targets: BTreeMap<String, Target>,
    artifacts: BTreeMap<String, Artifact>,
    actions: BTreeMap<u64, Action>,
    next_action: u64,
    faults: Vec<Fault>,
    requests: Vec<Request>,
    link_generation: u32,
    expired_status: u16,
    /// Base URL of the action links in poll answers instead of the server's own (a hostile or misconfigured
    /// server pointing the device elsewhere).
    action_link_base: Option<String>,
}

/// TLS settings for [`DdiServer::start_tls`].
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// PEM server certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// PEM CA whose client certificates are required (mutual TLS); `None` accepts any client.
    pub client_ca_pem: Option<String>,
}

/// A running server; stops when dropped.
pub struct DdiServer {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    scheme: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl DdiServer {
    /// Starts a plain-HTTP server on 127.0.0.1 (a free port), tenant `DEFAULT`, `sleep` 1 second.
    pub fn start() -> std::io::Result<Self> {
        Self::start_inner(None)
    }

    /// Starts an HTTPS server.
    pub fn start_tls(tls: &TlsSetup) -> std::io::Result<Self> {
        Self::start_inner(Some(Arc::new(server_config(tls)?)))
    }

    fn start_inner(tls: Option<Arc<rustls::ServerConfig>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            sleep: "00:00:01".into(),
            tenant: "DEFAULT".into(),
            next_action: 1,
            expired_status: 403,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, tls) = (state.clone(), tls.clone());
                    std::thread::spawn(move || serve_connection(conn, &state, tls, scheme));
                }
            })
        };
        Ok(Self { state, addr, scheme, stop, thread: Some(thread) })
    }

    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The tenant.
    pub fn tenant(&self) -> String {
        lock(&self.state).tenant.clone()
    }

    /// Sets the `sleep` value the poll answers with (any string: tests send garbage too).
    pub fn set_sleep(&self, sleep: &str) {
        lock(&self.state).sleep = sleep.to_owned();
    }

    /// Requires a valid `TargetToken` or `GatewayToken` (or, over TLS, a client certificate).
    pub fn require_auth(&self, on: bool) {
        lock(&self.state).require_auth = on;
    }

    /// Sets the tenant's gateway token.
    pub fn set_gateway_token(&self, token: Option<&str>) {
        lock(&self.state).gateway_token = token.map(str::to_owned);
    }

    /// Registers a target (device) with an optional target token; it is asked for its attributes.
    pub fn add_target(&self, controller_id: &str, token: Option<&str>) {
        lock(&self.state).targets.insert(
            controller_id.to_owned(),
            Target {
                token: token.map(str::to_owned),
                attributes: BTreeMap::new(),
                config_requested: true,
                config_modes: Vec::new(),
            },
        );
    }

    /// Asks the target for its attributes again (the `configData` link appears in the next poll).
    pub fn request_attributes(&self, controller_id: &str) {
        if let Some(t) = lock(&self.state).targets.get_mut(controller_id) {
            t.config_requested = true;
        }
    }

    /// The target's attributes and the `mode` of every `configData` upload.
    pub fn attributes(&self, controller_id: &str) -> (BTreeMap<String, String>, Vec<String>) {
        let s = lock(&self.state);
        s.targets.get(controller_id).map(|t| (t.attributes.clone(), t.config_modes.clone())).unwrap_or_default()
    }

    /// Adds an artifact; returns its sha256 (hex).
    /// Adding under a name already used replaces the file behind the same links (new ETag and hashes).
    pub fn add_artifact(&self, name: &str, data: Vec<u8>) -> String {
        let art = Artifact::new(data);
        let sha256 = art.sha256.clone();
        lock(&self.state).artifacts.insert(name.to_owned(), art);
        sha256
    }

    /// Offers a closed action again, as running (a server that reuses action ids, or lost the device's final
    /// feedback).
    pub fn reopen_action(&self, id: u64) {
        if let Some(a) = lock(&self.state).actions.get_mut(&id) {
            a.status = ActionStatus::Running;
            a.generation += 1;
        }
    }

    /// Creates an action for a target; returns its id.
    pub fn create_action(&self, controller_id: &str, spec: ActionSpec) -> u64 {
        let mut s = lock(&self.state);
        let id = s.next_action;
        s.next_action += 1;
        let status = if spec.confirmation_required { ActionStatus::WaitingConfirmation } else { ActionStatus::Running };
        let action = Action {
            id,
            target: controller_id.to_owned(),
            spec,
            status,
            feedback: Vec::new(),
            cancel_feedback: Vec::new(),
            confirmation_feedback: Vec::new(),
            generation: 1,
        };
        s.actions.insert(id, action);
        id
    }

    /// Changes an action's `download`/`update` types (the `c` query of its link changes too).
    pub fn update_action(&self, id: u64, f: impl FnOnce(&mut ActionSpec)) {
        if let Some(a) = lock(&self.state).actions.get_mut(&id) {
            f(&mut a.spec);
            a.generation += 1;
        }
    }

    /// Requests cancellation of an action.
    pub fn cancel_action(&self, id: u64) {
        if let Some(a) = lock(&self.state).actions.get_mut(&id)
            && a.status.open()
        {
            a.status = ActionStatus::Canceling;
        }
    }

    /// Removes an action: it is no longer offered and feedback on it answers 410 Gone.
    pub fn make_gone(&self, id: u64) {
        if let Some(a) = lock(&self.state).actions.get_mut(&id) {
            a.status = ActionStatus::Gone;
        }
    }

    /// A snapshot of an action.
    pub fn action(&self, id: u64) -> Option<Action> {
        lock(&self.state).actions.get(&id).cloned()
    }

    /// Invalidates every artifact link issued so far; old links answer `status` (401 or 403).
    pub fn expire_links(&self, status: u16) {
        let mut s = lock(&self.state);
        s.link_generation += 1;
        s.expired_status = status;
    }

    /// Makes the poll's action links (`deploymentBase`...) point to `base` (e.g. another server's URL) instead of
    /// this server; `None` restores them.
    pub fn set_action_link_base(&self, base: Option<&str>) {
        lock(&self.state).action_link_base = base.map(str::to_owned);
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push(fault);
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).requests.clone()
    }

    /// Requests whose path contains `part`.
    pub fn requests_to(&self, part: &str) -> Vec<Request> {
        lock(&self.state).requests.iter().filter(|r| r.path.contains(part)).cloned().collect()
    }

    /// Artifact body bytes sent so far, over all responses.
    pub fn artifact_bytes_sent(&self) -> u64 {
        lock(&self.state).requests.iter().filter(|r| r.path.contains("/artifacts/")).map(|r| r.body_bytes_sent).sum()
    }
}

impl Drop for DdiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server_config(tls: &TlsSetup) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?;
    let builder = match &tls.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(certs, key).map_err(|e| bad(&e))
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn serve_connection(conn: TcpStream, state: &Mutex<State>, tls: Option<Arc<rustls::ServerConfig>>, scheme: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = conn.set_nodelay(true);
    let host = conn.local_addr().map(|a| a.to_string()).unwrap_or_default();
    match tls {
        Some(cfg) => {
            let Ok(sc) = rustls::ServerConnection::new(cfg) else { return };
            let mut tls = rustls::StreamOwned::new(sc, conn);
            // Complete the handshake first to know whether a client certificate was presented.
            while tls.conn.is_handshaking() {
                if tls.conn.complete_io(&mut tls.sock).is_err() {
                    return;
                }
            }
            let cert = tls.conn.peer_certificates().is_some_and(|c| !c.is_empty());
            handle(&mut tls, state, cert, &format!("{scheme}://{host}"));
            tls.conn.send_close_notify();
            let _ = tls.conn.complete_io(&mut tls.sock);
        }
        None => {
            let mut conn = conn;
            handle(&mut conn, state, false, &format!("{scheme}://{host}"));
        }
    }
}

/// Method, path, query, headers, body.
type Parsed = (String, String, String, Vec<(String, String)>, Vec<u8>);

fn read_request(stream: &mut dyn Stream) -> Option<Parsed> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target, String::new()),
    };
    Some((method, path, query, headers, body))
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    /// The data, then zeros forever, without `Content-Length`.
    Endless(Arc<Vec<u8>>),
    /// An artifact slice: name, data, start offset.
    Artifact(Arc<Vec<u8>>, u64, u64),
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), "application/hal+json;charset=UTF-8".into())],
        body: Body::Bytes(serde_json::to_vec(v).expect("json")),
    }
}

fn status_reply(status: u16) -> Reply {
    json_reply(status, &json!({"errorCode": format!("test.{status}"), "message": reason(status)}))
}

fn handle(stream: &mut dyn Stream, state: &Mutex<State>, client_cert: bool, base: &str) {
    let Some((method, path, query, headers, body)) = read_request(stream) else { return };
    let at = std::time::Instant::now();
    let mut record = Request { method, path, query, headers, body, client_cert, status: 0, body_bytes_sent: 0, at };
    let (reply, slow, after) = route(state, &record, base);
    record.status = reply.status;
    let index = {
        let mut s = lock(state);
        s.requests.push(record);
        s.requests.len() - 1
    };
    let mut head = format!("HTTP/1.1 {} {}\r\nConnection: close\r\n", reply.status, reason(reply.status));
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match reply.body {
        Body::Bytes(b) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&b)).and_then(|()| stream.flush());
        }
        Body::Endless(data) => {
            // No Content-Length: the body ends when the connection does, which is never.
            head.push_str("\r\n");
            if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&data)).is_err() {
                return;
            }
            let mut sent = data.len() as u64;
            let zeros = vec![0u8; 64 << 10];
            while stream.write_all(&zeros).is_ok() {
                sent += zeros.len() as u64;
                lock(state).requests[index].body_bytes_sent = sent;
            }
        }
        Body::Artifact(data, start, end) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", end - start));
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut pos = start;
            let mut sent = 0u64;
            let piece = slow.map_or(64 << 10, |(p, _)| p.max(1));
            while pos < end {
                let n = (piece as u64).min(end - pos);
                let stop_at = after.as_ref().map(|(a, _)| *a).filter(|a| *a > sent && *a < sent + n);
                let n = stop_at.map_or(n, |a| a - sent);
                if stream.write_all(&data[pos as usize..(pos + n) as usize]).and_then(|()| stream.flush()).is_err() {
                    break;
                }
                pos += n;
                sent += n;
                lock(state).requests[index].body_bytes_sent = sent;
                if let Some((a, then)) = &after
                    && *a == sent
                {
                    let mut s = lock(state);
                    match then {
                        Trigger::Drop => return,
                        Trigger::ExpireLinks(status) => {
                            s.link_generation += 1;
                            s.expired_status = *status;
                            return;
                        }
                        Trigger::Cancel(id) => {
                            if let Some(a) = s.actions.get_mut(id) {
                                a.status = ActionStatus::Canceling;
                            }
                        }
                        Trigger::Gone(id) => {
                            if let Some(a) = s.actions.get_mut(id) {
                                a.status = ActionStatus::Gone;
                            }
                        }
                        Trigger::Replace { name, data } => {
                            s.artifacts.insert(name.clone(), Artifact::new(data.clone()));
                            return;
                        }
                    }
                }
                if let Some((_, d)) = slow {
                    std::thread::sleep(d);
                }
            }
        }
    }
}

/// Takes one use of the first fault matching `f`.
fn take_fault<T>(faults: &mut Vec<Fault>, f: impl Fn(&mut Fault) -> Option<(T, bool)>) -> Option<T> {
    for i in 0..faults.len() {
        if let Some((t, used_up)) = f(&mut faults[i]) {
            if used_up {
                faults.remove(i);
            }
            return Some(t);
        }
    }
    None
}

type Slow = Option<(usize, Duration)>;
type After = Option<(u64, Trigger)>;

fn route(state: &Mutex<State>, req: &Request, base: &str) -> (Reply, Slow, After) {
    let mut s = lock(state);
    let path = req.path.clone();
    let status_fault = take_fault(&mut s.faults, |f| match f {
        Fault::Status { path: p, status, times } if path.contains(p.as_str()) && *times > 0 => {
            *times -= 1;
            Some((*status, *times == 0))
        }
        _ => None,
    });
    if let Some(status) = status_fault {
        return (status_reply(status), None, None);
    }
    let malformed = take_fault(&mut s.faults, |f| match f {
        Fault::MalformedJson { path: p, times } if path.contains(p.as_str()) && *times > 0 => {
            *times -= 1;
            Some(((), *times == 0))
        }
        _ => None,
    });
    let huge = take_fault(&mut s.faults, |f| match f {
        Fault::HugeJson { path: p, bytes } if path.contains(p.as_str()) => Some((*bytes, true)),
        _ => None,
    });
    if let Some(bytes) = huge {
        let mut body = br#"{"config":{"polling":{"sleep":"00:00:01"}},"_links":{},"pad":""#.to_vec();
        body.resize(usize::try_from(bytes).unwrap_or(usize::MAX).saturating_sub(2).max(body.len()), b'a');
        body.extend_from_slice(b"\"}");
        let reply = Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(body),
        };
        return (reply, None, None);
    }
    if malformed.is_some() {
        let reply = Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/hal+json".into())],
            body: Body::Bytes(b"{\"config\":{\"polling\":{\"sleep\":\"00:00:0".to_vec()),
        };
        return (reply, None, None);
    }
    // /{tenant}/controller/v1/{target}[/rest...]
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.len() < 4 || segs[0] != s.tenant || segs[1] != "controller" || segs[2] != "v1" {
        return (status_reply(404), None, None);
    }
    let target = segs[3].to_owned();
    let rest: Vec<&str> = segs[4..].to_vec();
    let Some(t) = s.targets.get(&target) else { return (status_reply(404), None, None) };
    if s.require_auth && !req.client_cert {
        let auth = req.header("authorization").unwrap_or("");
        let ok = match auth.split_once(' ') {
            Some(("TargetToken", tok)) => t.token.as_deref() == Some(tok),
            Some(("GatewayToken", tok)) => s.gateway_token.as_deref() == Some(tok),
            _ => false,
        };
        if !ok {
            return (status_reply(401), None, None);
        }
    }
    let me = format!("{base}/{}/controller/v1/{target}", s.tenant);
    let id_of = |x: &str| x.parse::<u64>().ok();
    let reply = match (req.method.as_str(), rest.as_slice()) {
        ("GET", []) => {
            let mut links = serde_json::Map::new();
            if let Some(a) = s.actions.values().find(|a| a.target == target && a.status.open()) {
                let (name, kind) = match a.status {
                    ActionStatus::WaitingConfirmation => ("confirmationBase", "confirmationBase"),
                    ActionStatus::Canceling => ("cancelAction", "cancelAction"),
                    _ => ("deploymentBase", "deploymentBase"),
                };
                let link_me = match &s.action_link_base {
                    Some(b) => format!("{b}/{}/controller/v1/{target}", s.tenant),
                    None => me.clone(),
                };
                links.insert(name.into(), json!({"href": format!("{link_me}/{kind}/{}?c={}", a.id, a.generation)}));
            }
            if t.config_requested {
                links.insert("configData".into(), json!({"href": format!("{me}/configData")}));
            }
            json_reply(200, &json!({"config": {"polling": {"sleep": s.sleep}}, "_links": links}))
        }
        ("GET", ["deploymentBase", id]) => match id_of(id).and_then(|id| s.actions.get(&id)) {
            Some(a) if a.target == target && a.status.open() => {
                json_reply(200, &deployment_json(&s, a, &me, "deployment"))
            }
            Some(_) => status_reply(410),
            None => status_reply(404),
        },
        ("GET", ["confirmationBase", id]) => match id_of(id).and_then(|id| s.actions.get(&id)) {
            Some(a) if a.target == target && a.status == ActionStatus::WaitingConfirmation => {
                json_reply(200, &deployment_json(&s, a, &me, "confirmation"))
            }
            Some(_) => status_reply(410),
            None => status_reply(404),
        },
        ("GET", ["cancelAction", id]) => match id_of(id).and_then(|id| s.actions.get(&id)) {
            Some(a) if a.target == target && a.status == ActionStatus::Canceling => {
                json_reply(200, &json!({"id": a.id.to_string(), "cancelAction": {"stopId": a.id.to_string()}}))
            }
            Some(_) => status_reply(410),
            None => status_reply(404),
        },
        ("POST", [kind @ ("deploymentBase" | "cancelAction" | "confirmationBase"), id, "feedback"]) => {
            let body = req.json();
            if body.is_null() {
                status_reply(400)
            } else {
                let kind = kind.to_string();
                match id_of(id).and_then(|id| s.actions.get_mut(&id)) {
                    Some(a) if a.target == target && a.status.open() => {
                        feedback(a, &kind, body);
                        json_reply(200, &json!({}))
                    }
                    Some(_) => status_reply(410),
                    None => status_reply(404),
                }
            }
        }
        ("PUT", ["configData"]) => {
            let body = req.json();
            let mode = body.get("mode").and_then(Value::as_str).unwrap_or("merge").to_owned();
            match body.get("data").and_then(Value::as_object) {
                Some(data) if !data.is_empty() && data.len() <= 100 => {
                    let t = s.targets.get_mut(&target).expect("checked");
                    if mode == "replace" {
                        t.attributes.clear();
                    }
                    for (k, v) in data {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        if mode == "remove" {
                            t.attributes.remove(k);
                        } else {
                            t.attributes.insert(k.clone(), v);
                        }
                    }
                    t.config_modes.push(mode);
                    t.config_requested = false;
                    json_reply(200, &json!({}))
                }
                _ => status_reply(400),
            }
        }
        ("GET", ["softwaremodules", _, "artifacts", name]) => {
            let slow = s.faults.iter().find_map(|f| match f {
                Fault::SlowBody { piece, delay } => Some((*piece, *delay)),
                _ => None,
            });
            let after = take_fault(&mut s.faults, |f| match f {
                Fault::AfterBytes { after, then } => Some(((*after, then.clone()), true)),
                _ => None,
            });
            let sig = req.query.split('&').find_map(|kv| kv.strip_prefix("sig=")).and_then(|v| v.parse::<u32>().ok());
            if sig != Some(s.link_generation) {
                return (status_reply(s.expired_status), None, None);
            }
            let endless = s.faults.contains(&Fault::EndlessBody);
            let Some(art) = s.artifacts.get(*name) else { return (status_reply(404), None, None) };
            let len = art.data.len() as u64;
            if endless {
                let headers = vec![("Content-Type".to_owned(), "application/octet-stream".to_owned())];
                return (Reply { status: 200, headers, body: Body::Endless(art.data.clone()) }, None, None);
            }
            let mut headers = vec![
                ("Accept-Ranges".to_owned(), "bytes".to_owned()),
                ("ETag".to_owned(), art.etag.clone()),
                ("Content-Type".to_owned(), "application/octet-stream".to_owned()),
            ];
            let range = req.header("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-'));
            let if_range_ok = req.header("if-range").is_none_or(|v| v == art.etag);
            let start = match range.map(str::parse::<u64>) {
                Some(Ok(n)) if if_range_ok => Some(n),
                Some(Err(_)) => return (status_reply(416), None, None),
                _ => None,
            };
            let reply = match start {
                Some(n) if n >= len => status_reply(416),
                Some(n) => {
                    headers.push(("Content-Range".into(), format!("bytes {n}-{}/{len}", len - 1)));
                    Reply { status: 206, headers, body: Body::Artifact(art.data.clone(), n, len) }
                }
                None => Reply { status: 200, headers, body: Body::Artifact(art.data.clone(), 0, len) },
            };
            return (reply, slow, after);
        }
        _ => status_reply(404),
    };
    (reply, None, None)
}

fn deployment_json(s: &State, a: &Action, me: &str, key: &str) -> Value {
    let artifacts: Vec<Value> =
        a.spec
            .artifacts
            .iter()
            .filter_map(|name| {
                let art = s.artifacts.get(name)?;
                let href = a.spec.link_override.clone().unwrap_or_else(|| {
                    format!("{me}/softwaremodules/{}/artifacts/{name}?sig={}", a.id, s.link_generation)
                });
                let sha256 = a.spec.sha256_override.clone().unwrap_or_else(|| art.sha256.clone());
                let md5 = a.spec.md5_override.clone().unwrap_or_else(|| art.md5.clone());
                Some(json!({
                    "filename": name,
                    "size": art.data.len(),
                    "hashes": {"sha1": art.sha1, "md5": md5, "sha256": sha256},
                    "_links": {"download": {"href": href.clone()}, "download-http": {"href": href}}
                }))
            })
            .collect();
    let mut deployment = json!({
        "download": a.spec.download,
        "update": a.spec.update,
        "chunks": [{"part": "os", "version": a.spec.version, "name": "gateway-os", "artifacts": artifacts,
                    "metadata": [{"key": "origin", "value": "otter-ddi-server"}]}]
    });
    if let Some(w) = &a.spec.maintenance_window {
        deployment["maintenanceWindow"] = json!(w);
    }
    json!({"id": a.id.to_string(), key: deployment,
           "actionHistory": {"status": "RUNNING", "messages": ["created by the test server"]}})
}

fn feedback(a: &mut Action, kind: &str, body: Value) {
    let execution = body.pointer("/status/execution").and_then(Value::as_str).unwrap_or("").to_owned();
    let finished = body.pointer("/status/result/finished").and_then(Value::as_str).unwrap_or("").to_owned();
    match kind {
        "deploymentBase" => {
            a.feedback.push(body);
            match (execution.as_str(), finished.as_str()) {
                ("closed", f) => a.status = ActionStatus::Closed { success: f == "success" },
                // A download-only action is done once the device has the artifact.
                ("downloaded", _) if a.spec.update == "skip" => a.status = ActionStatus::Closed { success: true },
                _ => {}
            }
        }
        "cancelAction" => {
            a.cancel_feedback.push(body);
            match execution.as_str() {
                "closed" | "canceled" => a.status = ActionStatus::Canceled,
                "rejected" => a.status = ActionStatus::Running,
                _ => {}
            }
        }
        _ => {
            let confirmed = body.get("confirmation").and_then(Value::as_str) == Some("confirmed");
            a.confirmation_feedback.push(body);
            if confirmed {
                a.status = ActionStatus::Running;
            }
        }
    }
}
