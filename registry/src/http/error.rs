//! One error type for every handler, written out in one place as the distribution spec's
//! envelope: `{"errors":[{"code","message","detail"}]}`. Server-side failures are logged with
//! their cause and answered with a generic message, so internals never leak to clients.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{DigestError, ManifestError, NameError};
use berth_storage::Error as StoreError;

/// The error codes a response may carry, each with the status it is answered with unless a
/// call site says otherwise (the distribution spec's table, plus distribution's own codes
/// that clients know: `UNKNOWN`, `UNAVAILABLE`, `PAGINATION_NUMBER_INVALID`, `NOT_FOUND`).
/// Written once here so no call site spells a code as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// The blob is unknown to the registry (404).
    BlobUnknown,
    /// The upload was invalid, or a chunk came out of order (400; 416 for ranges).
    BlobUploadInvalid,
    /// The upload session is unknown (404).
    BlobUploadUnknown,
    /// A digest did not match or could not be parsed (400).
    DigestInvalid,
    /// A manifest references a blob the repository does not have (400, as distribution).
    ManifestBlobUnknown,
    /// The manifest is invalid (400).
    ManifestInvalid,
    /// The manifest is unknown (404).
    ManifestUnknown,
    /// The repository name is invalid (400).
    NameInvalid,
    /// The repository is unknown (404).
    NameUnknown,
    /// A declared size did not match, or a body was too large (400; 413 for limits).
    SizeInvalid,
    /// Authentication is required (401).
    Unauthorized,
    /// The principal is known but not allowed (403).
    Denied,
    /// The operation is not supported (405; other statuses where the spec says so).
    Unsupported,
    /// Too many requests (429).
    TooManyRequests,
    /// A `n` pagination parameter is not a number (400).
    PaginationNumberInvalid,
    /// No such endpoint (404).
    NotFound,
    /// The registry cannot serve the request now: storage or database failing (503).
    Unavailable,
    /// An internal error; the cause is in the registry's log (500).
    Unknown,
}

impl Code {
    /// The code as the spec spells it in the error envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::NotFound => "NOT_FOUND",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unknown => "UNKNOWN",
        }
    }

    /// The status the code is answered with by default.
    pub fn status(self) -> StatusCode {
        use StatusCode as S;
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown
            | Code::NotFound => S::NOT_FOUND,
            Code::BlobUploadInvalid
            | Code::DigestInvalid
            | Code::ManifestBlobUnknown
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::SizeInvalid
            | Code::PaginationNumberInvalid => S::BAD_REQUEST,
            Code::Unauthorized => S::UNAUTHORIZED,
            Code::Denied => S::FORBIDDEN,
            Code::Unsupported => S::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => S::TOO_MANY_REQUESTS,
            Code::Unavailable => S::SERVICE_UNAVAILABLE,
            Code::Unknown => S::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to a client.
#[derive(Debug)]
pub struct AppError {
    status: StatusCode,
    code: Code,
    message: String,
    detail: serde_json::Value,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl AppError {
    /// An error with the spec's `code` (answered with the code's status) and an explanation
    /// of what to do.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        AppError {
            status: code.status(),
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
            headers: Vec::new(),
        }
    }

    /// Answers with `status` instead of the code's default (e.g. 416 for a bad range, 413
    /// for a body over a limit), where the spec pairs the code with another status.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
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
        Self::new(Code::NameInvalid, e.to_string())
    }

    /// 400 DIGEST_INVALID.
    pub fn digest_invalid(e: DigestError) -> Self {
        Self::new(Code::DigestInvalid, e.to_string())
    }

    /// 405 UNSUPPORTED for a method the route does not take.
    pub fn method(method: &axum::http::Method, what: &str) -> Self {
        Self::new(Code::Unsupported, format!("{method} is not supported on {what}"))
    }

    /// The spec's code, for logs and tests.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The status the error is answered with.
    pub fn http_status(&self) -> StatusCode {
        self.status
    }
}

/// Formats an upload's `Range` header value: the inclusive range received so far. A session
/// with no bytes reports `0-0`, as distribution does and docker expects.
pub fn range_value(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::BlobUnknown { digest, .. } => {
                Self::new(Code::BlobUnknown, msg).detail(serde_json::json!({ "digest": digest }))
            }
            StoreError::UploadUnknown { .. } => Self::new(Code::BlobUploadUnknown, msg),
            StoreError::OutOfOrder { offset, .. } => Self::new(Code::BlobUploadInvalid, msg)
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::RANGE, range_value(offset)),
            StoreError::SizeMismatch { .. } => Self::new(Code::SizeInvalid, msg),
            StoreError::DigestMismatch { .. } => Self::new(Code::DigestInvalid, msg),
            StoreError::NameUnknown { .. } => Self::new(Code::NameUnknown, msg),
            StoreError::ManifestUnknown { .. } => Self::new(Code::ManifestUnknown, msg),
            StoreError::ManifestBlobUnknown { digest, .. } => {
                Self::new(Code::ManifestBlobUnknown, msg).detail(serde_json::json!({ "digest": digest }))
            }
            StoreError::QuotaExceeded {
                quota, usage, limit, ..
            } => Self::new(Code::Denied, msg)
                .detail(serde_json::json!({ "quota": quota, "usage": usage, "limit": limit })),
            StoreError::ImmutableTag { tag, digest, .. } => {
                Self::new(Code::Denied, msg).detail(serde_json::json!({ "tag": tag, "digest": digest }))
            }
            StoreError::Body { .. } => Self::new(Code::BlobUploadInvalid, msg),
            StoreError::UploadDamaged { .. } => {
                tracing::error!(error = %msg, "damaged upload");
                Self::new(
                    Code::BlobUploadInvalid,
                    "the upload's staged data is damaged: start the upload again",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Self::new(Code::Unknown, "internal server error; the registry log has the cause")
            }
        }
    }
}

impl From<ManifestError> for AppError {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::Invalid(m) => Self::new(Code::ManifestInvalid, m),
            ManifestError::Unsupported(m) => Self::new(Code::Unsupported, m).status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            _ => Self::new(Code::ManifestInvalid, e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // 404s are routine (clients HEAD before every upload): keep them out of the info log.
        if self.status == StatusCode::NOT_FOUND {
            tracing::debug!(code = self.code.as_str(), message = %self.message, "request refused");
        } else if !self.status.is_server_error() {
            tracing::info!(code = self.code.as_str(), message = %self.message, "request refused");
        }
        let body = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": self.detail }]
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
