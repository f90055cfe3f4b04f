//! The API's one error type: a status, a stable code and a message for people. Causes are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edgefleet_protocol::api::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// An internal failure: the cause goes to the log, the client gets a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(&e)
    }
}

impl From<model_registry::BlobError> for ApiError {
    fn from(e: model_registry::BlobError) -> Self {
        use model_registry::BlobError;
        match e {
            BlobError::NotFound(d) => Self::not_found(format!("blob {d} is not stored")),
            BlobError::Range { start, end, total } => Self::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("range {start}..{end} is outside the blob's {total} bytes"),
            ),
            BlobError::Artifact(a) => match a {
                model_registry::ArtifactError::OverLimit { limit, .. } => Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("blob is larger than the limit of {limit} bytes"),
                ),
                model_registry::ArtifactError::Read { .. } => {
                    Self::bad_request("upload_interrupted", "the upload ended before its declared length")
                }
                other => Self::bad_request("digest_mismatch", other.to_string()),
            },
            BlobError::Io { .. } => Self::internal(&e),
            // The store is down or refusing: the reason (bucket, endpoint) goes to the log only.
            BlobError::Remote(_) => {
                tracing::warn!(error = %e, "the blob store failed");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "blob_store_unavailable",
                    "the blob store does not answer; try again",
                )
            }
        }
    }
}
