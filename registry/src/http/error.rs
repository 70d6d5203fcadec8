//! One error type for every handler, written out in one place as the distribution spec's
//! envelope: `{"errors":[{"code","message","detail"}]}`. Server-side failures are logged with
//! their cause and answered with a generic message, so internals never leak to clients.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{DigestError, ManifestError, NameError};
use berth_storage::Error as StoreError;

/// An error answered to a client.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: serde_json::Value,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl AppError {
    /// An error with the spec's `code` and an explanation of what to do.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }

    /// Adds machine-readable detail.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Adds a response header (e.g. `Range` on 416).
    pub fn header(mut self, name: HeaderName, value: String) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.push((name, v));
        }
        self
    }

    /// 400 NAME_INVALID.
    pub fn name_invalid(e: NameError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", e.to_string())
    }

    /// 400 DIGEST_INVALID.
    pub fn digest_invalid(e: DigestError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    }

    /// 405 UNSUPPORTED for a method the route does not take.
    pub fn method(method: &axum::http::Method, what: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not supported on {what}"),
        )
    }

    /// The spec's code, for logs and tests.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// Formats an upload's `Range` header value: the inclusive range received so far. A session
/// with no bytes reports `0-0`, as distribution does and docker expects.
pub fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            StoreError::BlobUnknown { digest, .. } => {
                Self::new(S::NOT_FOUND, "BLOB_UNKNOWN", msg).detail(serde_json::json!({ "digest": digest }))
            }
            StoreError::UploadUnknown { .. } => Self::new(S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", msg),
            StoreError::OutOfOrder { offset, .. } => Self::new(S::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID", msg)
                .header(header::RANGE, range_value(offset)),
            StoreError::SizeMismatch { .. } => Self::new(S::BAD_REQUEST, "SIZE_INVALID", msg),
            StoreError::DigestMismatch { .. } => Self::new(S::BAD_REQUEST, "DIGEST_INVALID", msg),
            StoreError::NameUnknown { .. } => Self::new(S::NOT_FOUND, "NAME_UNKNOWN", msg),
            StoreError::ManifestUnknown { .. } => Self::new(S::NOT_FOUND, "MANIFEST_UNKNOWN", msg),
            StoreError::ManifestBlobUnknown { digest, .. } => {
                Self::new(S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", msg).detail(serde_json::json!({ "digest": digest }))
            }
            StoreError::QuotaExceeded {
                quota, usage, limit, ..
            } => Self::new(S::FORBIDDEN, "DENIED", msg)
                .detail(serde_json::json!({ "quota": quota, "usage": usage, "limit": limit })),
            StoreError::ImmutableTag { tag, digest, .. } => {
                Self::new(S::FORBIDDEN, "DENIED", msg).detail(serde_json::json!({ "tag": tag, "digest": digest }))
            }
            StoreError::Body { .. } => Self::new(S::BAD_REQUEST, "BLOB_UPLOAD_INVALID", msg),
            StoreError::UploadDamaged { .. } => {
                tracing::error!(error = %msg, "damaged upload");
                Self::new(
                    S::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    "the upload's staged data is damaged: start the upload again",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Self::new(
                    S::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error; the registry log has the cause",
                )
            }
        }
    }
}

impl From<ManifestError> for AppError {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::Invalid(m) => Self::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", m),
            ManifestError::Unsupported(m) => Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED", m),
            _ => Self::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // 404s are routine (clients HEAD before every upload): keep them out of the info log.
        if self.status == StatusCode::NOT_FOUND {
            tracing::debug!(code = self.code, message = %self.message, "request refused");
        } else if !self.status.is_server_error() {
            tracing::info!(code = self.code, message = %self.message, "request refused");
        }
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": self.detail }]
        });
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
