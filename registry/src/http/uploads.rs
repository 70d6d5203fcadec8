//! `/v2/<name>/blobs/uploads/…`: open (with monolithic and mount shortcuts), append chunks,
//! report progress, finish, cancel. Protocol rules (ordering, hashing, commit) live in
//! `berth_storage::upload`; this module only reads headers and writes them.

use super::error::{range_value, AppError, Code};
use super::parse_digest;
use crate::auth::Access;
use crate::config::Action;
use crate::AppState;
use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{validate_repository, Digest};
use berth_storage::upload::ChunkCheck;
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct StartQuery {
    digest: Option<String>,
    mount: Option<String>,
    from: Option<String>,
}

#[derive(Deserialize, Default)]
struct PutQuery {
    digest: Option<String>,
}

fn session_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn session_response(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    (
        status,
        [
            (header::LOCATION, session_location(name, id)),
            (header::RANGE, range_value(size)),
            (header::CONTENT_LENGTH, "0".to_owned()),
            (header::HeaderName::from_static("docker-upload-uuid"), id.to_owned()),
        ],
    )
        .into_response()
}

fn created(name: &str, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (header::CONTENT_LENGTH, "0".to_owned()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_string(),
            ),
        ],
    )
        .into_response()
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>, AppError> {
    match h.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| AppError::new(Code::SizeInvalid, "Content-Length is not a number")),
    }
}

/// The chunk's constraints from `Content-Range: <start>-<end>` (inclusive; `bytes ` prefix
/// and `/total` suffix tolerated) and `Content-Length`.
fn chunk_check(h: &HeaderMap) -> Result<ChunkCheck, AppError> {
    let len = content_length(h)?;
    let Some(v) = h.get(header::CONTENT_RANGE) else {
        return Ok(ChunkCheck { start: None, len });
    };
    let bad = || {
        AppError::new(
            Code::BlobUploadInvalid,
            "Content-Range must be <start>-<end>, inclusive, starting where the upload ends",
        )
        .status(StatusCode::RANGE_NOT_SATISFIABLE)
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    let range_len = end.checked_sub(start).and_then(|d| d.checked_add(1)).ok_or_else(bad)?;
    if let Some(l) = len {
        if l != range_len {
            return Err(AppError::new(
                Code::SizeInvalid,
                format!("Content-Range covers {range_len} bytes but Content-Length is {l}"),
            ));
        }
    }
    Ok(ChunkCheck {
        start: Some(start),
        len: Some(range_len),
    })
}

pub(super) async fn start(state: &AppState, access: &Access, name: &str, req: Request) -> Result<Response, AppError> {
    let q: StartQuery = Query::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_default();
    if let (Some(mount), Some(from)) = (&q.mount, &q.from) {
        let digest = parse_digest(mount)?;
        validate_repository(from).map_err(AppError::name_invalid)?;
        // Mounting reads the source: without pull there, the client uploads like anyone else
        // (and learns nothing about the source's content).
        let may_read = access.can(&state.auth, from, Action::Pull);
        if may_read && state.meta.mount_blob(name, from, &digest).await?.is_some() {
            tracing::info!(%digest, from, "mounted blob");
            return Ok(created(name, &digest));
        }
        // Not mountable: fall through to an ordinary session, as the spec asks.
    }
    if let Some(d) = &q.digest {
        // Monolithic upload in one POST.
        let digest = parse_digest(d)?;
        let check = chunk_check(req.headers())?;
        let upload = state.uploads.start(name).await?;
        let body = req.into_body().into_data_stream();
        match state.uploads.finish(name, &upload.id, &digest, check, Some(body)).await {
            Ok(size) => {
                tracing::info!(%digest, size, "blob stored");
                return Ok(created(name, &digest));
            }
            Err(e) => {
                // A one-shot upload has no session for the client to go back to.
                let _ = state.uploads.cancel(name, &upload.id).await;
                return Err(e.into());
            }
        }
    }
    let upload = state.uploads.start(name).await?;
    Ok(session_response(StatusCode::ACCEPTED, name, &upload.id, 0))
}

pub(super) async fn status(state: &AppState, name: &str, id: &str) -> Result<Response, AppError> {
    let u = state.uploads.status(name, id).await?;
    Ok(session_response(StatusCode::NO_CONTENT, name, &u.id, u.size))
}

pub(super) async fn patch(state: &AppState, name: &str, id: &str, req: Request) -> Result<Response, AppError> {
    let check = chunk_check(req.headers())?;
    let body = req.into_body().into_data_stream();
    let u = state.uploads.append(name, id, check, body).await?;
    Ok(session_response(StatusCode::ACCEPTED, name, &u.id, u.size))
}

pub(super) async fn put(state: &AppState, name: &str, id: &str, req: Request) -> Result<Response, AppError> {
    let q: PutQuery = Query::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_default();
    let digest = q
        .digest
        .as_deref()
        .ok_or_else(|| AppError::new(Code::DigestInvalid, "the final PUT of an upload needs ?digest=<digest>"))?;
    let digest = parse_digest(digest)?;
    let check = chunk_check(req.headers())?;
    // Always read the body: over HTTP/2 a body need not announce itself with Content-Length
    // or Transfer-Encoding, and an empty one appends nothing.
    let body = Some(req.into_body().into_data_stream());
    let size = state.uploads.finish(name, id, &digest, check, body).await?;
    tracing::info!(%digest, size, "blob stored");
    Ok(created(name, &digest))
}

pub(super) async fn cancel(state: &AppState, name: &str, id: &str) -> Result<Response, AppError> {
    state.uploads.cancel(name, id).await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}
