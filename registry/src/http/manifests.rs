//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`.
//!
//! Manifests are the only bodies read whole, under the configured cap; they are stored and
//! served byte-exact (the digest is of the bytes as pushed, never of a re-serialisation).

use super::error::{AppError, Code};
use crate::AppState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::{manifest, validate_tag, Digest};
use berth_storage::meta::Reference;

/// A reference is a digest when it has an algorithm separator; otherwise a tag.
enum Ref {
    Tag(String),
    Digest(Digest),
}

fn parse_ref(reference: &str) -> Result<Ref, AppError> {
    if reference.contains(':') {
        super::parse_digest(reference).map(Ref::Digest)
    } else {
        validate_tag(reference).map_err(|e| AppError::new(Code::ManifestInvalid, e.to_string()))?;
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
    // A reference that could never name a manifest names none: 404, as distribution answers
    // (clients probe with odd names and read 400 as a broken registry). PUT keeps the grammar.
    let r = parse_ref(reference).map_err(|_| {
        AppError::new(
            Code::ManifestUnknown,
            format!("manifest unknown: {:?} names no manifest in {name}", reference),
        )
    })?;
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
        .map_err(|e| AppError::new(Code::Unknown, e.to_string()))
}

pub(super) async fn put(state: &AppState, name: &str, reference: &str, req: Request) -> Result<Response, AppError> {
    let r = parse_ref(reference)?;
    let cap = state.config.max_manifest_bytes;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (parts, body) = req.into_parts();
    let body = super::body::read_capped(&parts.headers, body, cap, Code::SizeInvalid, "manifest").await?;
    let digest = Digest::of(&body);
    let tag = match &r {
        Ref::Digest(d) if *d != digest => {
            return Err(AppError::new(
                Code::DigestInvalid,
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
