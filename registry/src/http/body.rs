//! Request bodies read whole (manifests, token forms), under a cap.
//!
//! A body over its cap is answered with 413, but only after the rest of it has been read and
//! thrown away (up to [`DRAIN_LIMIT`] more bytes, for at most [`DRAIN_TIME`]): clients such as
//! curl, Go's net/http and Python's http.client write the whole body before they read the
//! answer, and a server that answers and closes with unread bytes in its receive buffer makes
//! the kernel send a reset, so the client would see "connection reset" instead of the error.
//! Beyond the drain limit the answer carries `Connection: close`.

use super::error::{AppError, Code};
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use futures::StreamExt;
use std::time::Duration;

/// Bytes past the cap read and discarded before a 413 is answered.
pub(crate) const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// How long discarding the rest of an oversized body may take.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The declared `Content-Length`, if there is one that parses.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Reads `body` whole when it has at most `cap` bytes; otherwise drains it and answers
/// `too_large` (a 413 with `code`). `what` names the body in messages ("manifest").
pub(crate) async fn read_capped(
    headers: &HeaderMap,
    body: Body,
    cap: usize,
    code: Code,
    what: &str,
) -> Result<Vec<u8>, AppError> {
    let declared = content_length(headers);
    if let Some(len) = declared.filter(|l| *l > cap as u64) {
        let msg = format!("{what} of {len} bytes is larger than this registry's limit of {cap} bytes");
        return Err(too_large(body, code, msg, len).await);
    }
    let mut s = body.into_data_stream();
    let mut out = Vec::with_capacity(declared.map_or(0, |l| l as usize));
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| AppError::new(code, format!("reading the {what} failed: {e}")))?;
        if out.len() + chunk.len() > cap {
            let msg = format!("{what} is larger than this registry's limit of {cap} bytes");
            return Err(too_large_stream(s, code, msg).await);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn too_large(body: Body, code: Code, msg: String, declared: u64) -> AppError {
    if declared > DRAIN_LIMIT {
        return over(code, msg, true);
    }
    too_large_stream(body.into_data_stream(), code, msg).await
}

/// Discards what is left of the body (bounded in bytes and time), then builds the 413.
async fn too_large_stream(mut s: axum::body::BodyDataStream, code: Code, msg: String) -> AppError {
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(c) => n += c.len() as u64,
                Err(_) => return true,
            }
            if n > DRAIN_LIMIT {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    over(code, msg, !drained)
}

fn over(code: Code, msg: String, close: bool) -> AppError {
    let e = AppError::new(code, msg).status(StatusCode::PAYLOAD_TOO_LARGE);
    if close {
        e.header(header::CONNECTION, "close".to_owned())
    } else {
        e
    }
}
