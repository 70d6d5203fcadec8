//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`.

use super::error::{AppError, Code};
use super::parse_digest;
use crate::AppState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_storage::Error as StoreError;
use std::ops::Range;

/// What a `Range` header asks of a blob of `size` bytes (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeAsk {
    /// No usable range: send everything with 200. Malformed and multi-range headers land here
    /// too: RFC 9110 lets a server ignore them, and every client copes with a full answer.
    Whole,
    /// One satisfiable range (end exclusive).
    Part(Range<u64>),
    /// A well-formed range that misses the blob: 416.
    Unsatisfiable,
}

pub(crate) fn parse_range(value: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(size.saturating_sub(n)..size)
            }
        }
        // bytes=A- and bytes=A-B
        (false, Some(first), last) if b.is_empty() || last.is_some() => {
            if first >= size {
                return RangeAsk::Unsatisfiable;
            }
            match last {
                Some(l) if l < first => RangeAsk::Whole,
                Some(l) => RangeAsk::Part(first..l.min(size - 1) + 1),
                None => RangeAsk::Part(first..size),
            }
        }
        _ => RangeAsk::Whole,
    }
}

pub(super) async fn get(
    state: &AppState,
    name: &str,
    digest: &str,
    head: bool,
    req: Request,
) -> Result<Response, AppError> {
    let digest = parse_digest(digest)?;
    let size = state
        .meta
        .linked_blob(name, &digest)
        .await?
        .ok_or_else(|| StoreError::BlobUnknown {
            repo: name.to_owned(),
            digest: digest.clone(),
        })?;
    // The access check is behind us (route) and the link lookup above is the repository's:
    // only now may the store's URL be handed out. The store answers ranges itself.
    if !head && size > 0 && state.config.redirect.enabled {
        let expiry = std::time::Duration::from_secs(state.config.redirect.expiry_secs);
        match state.blobs.presigned_get(&digest, expiry).await {
            Ok(Some(url)) => {
                return Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header(header::LOCATION, url)
                    .header("docker-content-digest", digest.to_string())
                    .header(header::CONTENT_LENGTH, 0)
                    .body(Body::empty())
                    .map_err(|e| AppError::new(Code::Unknown, e.to_string()));
            }
            Ok(None) => {}
            // Signing needs fresh credentials (an instance role's, say): if they cannot be had,
            // serve the bytes rather than fail the pull.
            Err(e) => tracing::warn!(error = %e, %digest, "cannot presign a blob URL: serving it directly"),
        }
    }
    let range = parse_range(req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest.to_string())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""));
    let (status, want) = match range {
        RangeAsk::Unsatisfiable => {
            return Ok(AppError::new(
                Code::BlobUnknown,
                format!("range not satisfiable: the blob has {size} bytes"),
            )
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{size}"))
            .into_response())
        }
        RangeAsk::Whole => (StatusCode::OK, None),
        RangeAsk::Part(r) => {
            b = b.header(header::CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end - 1));
            (StatusCode::PARTIAL_CONTENT, Some(r))
        }
    };
    let len = want.as_ref().map_or(size, |r| r.end - r.start);
    b = b.status(status).header(header::CONTENT_LENGTH, len);
    let body = if head || len == 0 {
        Body::empty()
    } else {
        let read = state.blobs.get(&digest, want).await?;
        Body::from_stream(read.stream)
    };
    b.body(body).map_err(|e| AppError::new(Code::Unknown, e.to_string()))
}

pub(super) async fn delete(state: &AppState, name: &str, digest: &str) -> Result<Response, AppError> {
    let digest = parse_digest(digest)?;
    if !state.meta.unlink_blob(name, &digest).await? {
        return Err(StoreError::BlobUnknown {
            repo: name.to_owned(),
            digest,
        }
        .into());
    }
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let p = |v: &str| parse_range(Some(v), 100);
        assert_eq!(parse_range(None, 100), RangeAsk::Whole);
        assert_eq!(p("bytes=0-9"), RangeAsk::Part(0..10));
        assert_eq!(p("bytes=90-"), RangeAsk::Part(90..100));
        assert_eq!(p("bytes=90-1000"), RangeAsk::Part(90..100));
        assert_eq!(p("bytes=-10"), RangeAsk::Part(90..100));
        assert_eq!(p("bytes=-1000"), RangeAsk::Part(0..100));
        assert_eq!(p("bytes=100-"), RangeAsk::Unsatisfiable);
        assert_eq!(p("bytes=-0"), RangeAsk::Unsatisfiable);
        assert_eq!(p("bytes=5-1"), RangeAsk::Whole);
        assert_eq!(p("bytes=0-1,5-6"), RangeAsk::Whole);
        assert_eq!(p("items=0-1"), RangeAsk::Whole);
        assert_eq!(p("bytes=x-1"), RangeAsk::Whole);
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeAsk::Unsatisfiable);
    }
}
