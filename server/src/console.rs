//! The web console: static HTML, CSS and JavaScript modules built into the binary (`server/console/`), served
//! under `/console/`; `/` redirects there. No build step and nothing fetched from elsewhere: the page talks only
//! to this server's REST API (`/api/v1`), signed in through [`crate::api::session`].
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles from this origin only, no inline code,
//! no framing), `Referrer-Policy: no-referrer` and `Cache-Control: no-cache` with a content-hash `ETag`, so a
//! browser revalidates (cheaply, `304`) and never runs a stale module after an upgrade.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The policy sent with every console answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One built-in file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_bytes!(concat!("../console/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("lib.js", JS),
    asset!("chart.js", JS),
    asset!("overview.js", JS),
    asset!("devices.js", JS),
    asset!("artifacts.js", JS),
    asset!("rollouts.js", JS),
    asset!("audit.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The strong ETag of each asset (the start of its SHA-256), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| ASSETS.iter().map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..32])).collect())
}

/// The console's routes (no state: the assets are constants).
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/console/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        let mut r = (StatusCode::NOT_FOUND, "no such console file").into_response();
        security_headers(r.headers_mut());
        return r;
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = r.headers_mut();
    security_headers(h);
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex"));
    r
}
