//! Console sign-in: the API token in an `HttpOnly` cookie instead of in page JavaScript.
//!
//! `POST /api/v1/session` with `{"token": "otk_…"}` checks the token and answers with
//! `Set-Cookie: otter_session=TOKEN; HttpOnly; SameSite=Strict; Path=/` (plus `Secure` when `--public-url` is
//! https). The cookie carries the token itself, not a session id: [`super::Caller`] looks the token up on every
//! request, exactly as for the `Authorization` header, so revoking the token ends the console session at once and
//! there is no session table to keep in step. A script on the page cannot read the cookie (`HttpOnly`), and another
//! site cannot make the browser send it (`SameSite=Strict`); as a second line, a request that changes something
//! must also carry `X-Otter-Console: 1`, a header a cross-site form or image cannot add (403 without it).
//! `DELETE /api/v1/session` clears the cookie.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Caller, caller_of_token};
use crate::AppState;
use crate::error::{HttpError, HttpResult};

/// The cookie's name.
pub const COOKIE: &str = "otter_session";
/// The header a cookie-authenticated request that changes something must carry, with the value `1`.
pub const CSRF_HEADER: &str = "x-otter-console";

/// The API token in the request's session cookie, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Refuses (403) a cookie-authenticated request that may change something (anything but GET and HEAD) unless it
/// carries `X-Otter-Console: 1`.
pub fn check_csrf(method: &Method, headers: &HeaderMap) -> HttpResult<()> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    if headers.get(CSRF_HEADER).is_some_and(|v| v == "1") {
        Ok(())
    } else {
        Err(HttpError::Forbidden(format!("a console request that changes something needs the header {CSRF_HEADER}: 1")))
    }
}

fn cookie(state: &AppState, value: &str, max_age: Option<u32>) -> HeaderValue {
    let secure = if state.config.public_url.starts_with("https://") { "; Secure" } else { "" };
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    HeaderValue::from_str(&format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/{secure}{age}"))
        .expect("a token is printable ASCII")
}

/// The sign-in request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API token (`otk_…`).
    pub token: String,
}

/// `POST /api/v1/session`: checks the token and sets the session cookie; answers with who signed in.
pub async fn sign_in(State(st): State<AppState>, headers: HeaderMap, Json(req): Json<SignIn>) -> HttpResult<Response> {
    check_csrf(&Method::POST, &headers)?;
    let token = req.token.trim();
    // Anything else could not be a token we issued, and must not reach the Set-Cookie header.
    if !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(HttpError::Unauthorized("unknown or revoked API token".into()));
    }
    let caller: Caller = caller_of_token(&st, token)
        .await?
        .ok_or_else(|| HttpError::Unauthorized("unknown or revoked API token".into()))?;
    Ok(([(header::SET_COOKIE, cookie(&st, token, None))], Json(caller)).into_response())
}

/// `DELETE /api/v1/session`: clears the session cookie (the token itself stays valid; revoke it to end it
/// everywhere).
pub async fn sign_out(State(st): State<AppState>, headers: HeaderMap) -> HttpResult<Response> {
    check_csrf(&Method::DELETE, &headers)?;
    Ok(([(header::SET_COOKIE, cookie(&st, "", Some(0)))], Json(serde_json::json!({"signed_out": true})))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; otter_session=otk_abc; b=2"));
        assert_eq!(cookie_token(&h).as_deref(), Some("otk_abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("otter_session_x=1; otter_session="));
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn only_reads_go_without_the_console_header() {
        let none = HeaderMap::new();
        assert!(check_csrf(&Method::GET, &none).is_ok());
        assert!(matches!(check_csrf(&Method::POST, &none), Err(HttpError::Forbidden(_))));
        let mut with = HeaderMap::new();
        with.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(check_csrf(&Method::DELETE, &with).is_ok());
    }
}
