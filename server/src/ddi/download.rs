//! `GET /artifacts/{sha256}/{filename}?device=…&expires=…&sig=…`: artifact downloads by signed link.
//!
//! The link is the only credential (see [`crate::links`]): a forged or edited one is 403, an expired one is 403
//! with a message telling the device to read its deployment again for a fresh link (otterd does that on 401/403,
//! and continues its download from where it was with `Range` + `If-Range`). The file is streamed from the
//! content-addressed store in bounded memory, with `Accept-Ranges`, a strong `ETag` (the sha256: the content can
//! never change under it), `Last-Modified`, single byte ranges (`bytes=a-`, `bytes=a-b`, `bytes=-n`), `If-Range`
//! and 416 for a range past the end. `HEAD` answers the same headers without the body. The filename in the path is
//! for the client's benefit; the sha256 names the file.

use std::io::SeekFrom;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::AppState;
use crate::artifacts::is_sha256;
use crate::db::now_ms;
use crate::error::{HttpError, HttpResult};
use crate::links::LinkError;

/// Read size of the streamed body (64 KiB).
const CHUNK: usize = 64 << 10;

/// What a `Range` header asks for, against a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The whole file (no range, a range we ignore, or an `If-Range` that does not match).
    Full,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A range outside the file: 416.
    Unsatisfiable,
}

/// Interprets `Range` (RFC 9110 §14): one byte range; several ranges or a malformed header are ignored (the whole
/// file is served, which the RFC allows).
pub fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else { return Wanted::Full };
    if spec.contains(',') {
        return Wanted::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Wanted::Full };
    let num =
        |s: &str| (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten();
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            // Suffix: the last n bytes.
            Some(0) => Wanted::Unsatisfiable,
            Some(n) if size > 0 => Wanted::Part { start: size.saturating_sub(n), end: size - 1 },
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::Full,
        },
        (a, "") => match num(a) {
            Some(a) if a < size => Wanted::Part { start: a, end: size - 1 },
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::Full,
        },
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a > b => Wanted::Full,
            (Some(a), Some(b)) if a < size => Wanted::Part { start: a, end: b.min(size - 1) },
            (Some(_), Some(_)) => Wanted::Unsatisfiable,
            _ => Wanted::Full,
        },
    }
}

/// `GET` (and `HEAD`) of an artifact.
pub async fn get(
    State(state): State<AppState>,
    Path((sha256, _filename)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> HttpResult<Response> {
    if !is_sha256(&sha256) {
        return Err(HttpError::NotFound("no such artifact".into()));
    }
    let now = (now_ms() / 1000).max(0) as u64;
    let grant = state.links.check(&sha256, query.as_deref().unwrap_or(""), now).map_err(|e| match e {
        LinkError::Expired => HttpError::Forbidden(
            "download link expired: read the deployment (deploymentBase) again for a fresh link".into(),
        ),
        LinkError::BadSignature | LinkError::Malformed => {
            tracing::warn!("ddi: refused a download of {sha256}: {e}");
            HttpError::Forbidden(format!("{e}"))
        }
    })?;
    let path = state.store.path_of(&sha256);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HttpError::NotFound("no such artifact".into()));
        }
        Err(e) => {
            return Err(HttpError::Internal(anyhow::Error::from(e).context(format!("opening {}", path.display()))));
        }
    };
    let meta = file.metadata().await.map_err(|e| HttpError::Internal(e.into()))?;
    let size = meta.len();
    let etag = format!("\"{sha256}\"");
    let last_modified = httpdate::fmt_http_date(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    let if_range_ok = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        // A strong ETag match, or the exact date we sent (the file never changes under its name).
        Some(v) => v.trim() == etag || v.trim() == last_modified,
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let want = if if_range_ok { wanted(range, size) } else { Wanted::Full };
    tracing::debug!("ddi: {} downloads {sha256} ({want:?})", grant.device);

    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex is a valid header"));
    h.insert(header::LAST_MODIFIED, HeaderValue::from_str(&last_modified).expect("a date is a valid header"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-transform"));
    let (status, start, len) = match want {
        Wanted::Full => (StatusCode::OK, 0, size),
        Wanted::Part { start, end } => {
            let v = format!("bytes {start}-{end}/{size}");
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&v).expect("digits are a valid header"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Wanted::Unsatisfiable => {
            let v = format!("bytes */{size}");
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&v).expect("digits are a valid header"));
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, h, "range not satisfiable").into_response());
        }
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(|e| HttpError::Internal(e.into()))?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), CHUNK);
    Ok((status, h, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let w = |r: &str| wanted(Some(r), 100);
        assert_eq!(wanted(None, 100), Wanted::Full);
        assert_eq!(w("bytes=10-"), Wanted::Part { start: 10, end: 99 });
        assert_eq!(w("bytes=10-19"), Wanted::Part { start: 10, end: 19 });
        assert_eq!(w("bytes=90-200"), Wanted::Part { start: 90, end: 99 });
        assert_eq!(w("bytes=-10"), Wanted::Part { start: 90, end: 99 });
        assert_eq!(w("bytes=-1000"), Wanted::Part { start: 0, end: 99 });
        assert_eq!(w("bytes=100-"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=100-200"), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=-0"), Wanted::Unsatisfiable);
        for ignored in ["bytes=1-2,5-6", "items=1-2", "bytes=x-", "bytes=5-1", "bytes=+1-", "bytes="] {
            assert_eq!(w(ignored), Wanted::Full, "{ignored}");
        }
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }
}
