//! Errors as HTTP answers: a status and a JSON body `{"error": CODE, "message": TEXT}`, the same for the device
//! API and the operator API. Internal errors are logged with their chain and answered without it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::db::DbError;

/// An error a handler answers with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// 400: the request is malformed or asks for something invalid.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credential.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the resource is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// 410: the action is no longer active (DDI).
    #[error("{0}")]
    Gone(String),
    /// 413: the body is too large.
    #[error("{0}")]
    TooLarge(String),
    /// 429: a quota is used up (DDI: too many statuses on an action, too many messages in one, too many
    /// attributes), answered as hawkBit does.
    #[error("{0}")]
    Quota(String),
    /// 422: well-formed but refused (an artifact with a bad signature).
    #[error("{0}")]
    Unprocessable(String),
    /// 500: logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl HttpError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            HttpError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            HttpError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            HttpError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            HttpError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            HttpError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            HttpError::Gone(_) => (StatusCode::GONE, "gone"),
            HttpError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            HttpError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
            HttpError::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "quota"),
            HttpError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if let HttpError::Internal(e) = &self {
            tracing::error!("{e:#}");
        }
        let (status, code) = self.status();
        (status, Json(serde_json::json!({"error": code, "message": self.to_string()}))).into_response()
    }
}

impl From<DbError> for HttpError {
    fn from(e: DbError) -> Self {
        HttpError::Internal(e.into())
    }
}

impl From<sqlx::Error> for HttpError {
    fn from(e: sqlx::Error) -> Self {
        HttpError::Internal(e.into())
    }
}

/// A handler's result.
pub type HttpResult<T> = Result<T, HttpError>;
