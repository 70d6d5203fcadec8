//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`.
//!
//! Manifests are the only bodies read whole, under the configured cap; they are stored and
//! served byte-exact (the digest is of the bytes as pushed, never of a re-serialisation).

use super::error::AppError;
use crate::AppState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{manifest, validate_tag, Digest};
use berth_storage::meta::Reference;
use futures::StreamExt;

/// A reference is a digest when it has an algorithm separator; otherwise a tag.
enum Ref {
    Tag(String),
    Digest(Digest),
}

fn parse_ref(reference: &str) -> Result<Ref, AppError> {
    if reference.contains(':') {
        super::parse_digest(reference).map(Ref::Digest)
    } else {
        validate_tag(reference)
            .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string()))?;
        Ok(Ref::Tag(reference.to_owned()))
    }
}

impl Ref {
    fn as_ref(&self) -> Reference<'_> {
        match self {
            Ref::Tag(t) => Reference::Tag(t),
            Ref::Digest(d) => Reference::Digest(d),
        }
    }
}

pub(super) async fn get(state: &AppState, name: &str, reference: &str, head: bool) -> Result<Response, AppError> {
    let r = parse_ref(reference)?;
    let m = state.meta.get_manifest(name, r.as_ref(), !head).await?;
    if !head {
        state.pulls.record(name, &m.digest.to_string());
    }
    let body = match m.content {
        Some(c) if !head => Body::from(c),
        _ => Body::empty(),
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &m.media_type)
        .header(header::CONTENT_LENGTH, m.size)
        .header("docker-content-digest", m.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", m.digest))
        .body(body)
        .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string()))
}

async fn read_capped(body: Body, cap: usize) -> Result<Vec<u8>, AppError> {
    let mut s = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            AppError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("reading the manifest failed: {e}"),
            )
        })?;
        if out.len() + chunk.len() > cap {
            return Err(AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("manifest is larger than this registry's limit of {cap} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(super) async fn put(state: &AppState, name: &str, reference: &str, req: Request) -> Result<Response, AppError> {
    let r = parse_ref(reference)?;
    let cap = state.config.max_manifest_bytes;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > cap {
            return Err(AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("manifest of {len} bytes is larger than this registry's limit of {cap} bytes"),
            ));
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_capped(req.into_body(), cap).await?;
    let digest = Digest::of(&body);
    let tag = match &r {
        Ref::Digest(d) if *d != digest => {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("manifest has digest {digest}, not {d} as in the URL"),
            ))
        }
        Ref::Digest(_) => None,
        Ref::Tag(t) => Some(t.as_str()),
    };
    let parsed = manifest::parse(&body, content_type.as_deref())?;
    state.meta.put_manifest(name, &digest, &parsed, &body, tag).await?;
    tracing::info!(%digest, tag, media_type = %parsed.media_type, "manifest stored");
    let mut resp = (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/manifests/{digest}")),
            (header::CONTENT_LENGTH, "0".to_owned()),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_string(),
            ),
        ],
    )
        .into_response();
    if let Some(subject) = &parsed.subject {
        if let Ok(v) = subject.digest.to_string().parse() {
            resp.headers_mut().insert("oci-subject", v);
        }
    }
    Ok(resp)
}

pub(super) async fn delete(state: &AppState, name: &str, reference: &str) -> Result<Response, AppError> {
    match parse_ref(reference)? {
        Ref::Digest(d) => state.meta.delete_manifest(name, &d).await?,
        Ref::Tag(t) => state.meta.delete_tag(name, &t).await?,
    }
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}
