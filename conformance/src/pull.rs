//! `pull/*`: the `/v2/` base, manifests and blobs read back exactly as pushed.
//!
//! The spec's words these checks hold registries to (distribution-spec v1.1, "Pull"): a
//! manifest `GET` answers `200` with the manifest, and its `Content-Type` "MUST match what was
//! provided during the upload"; `HEAD` answers like `GET` without a body; an unknown manifest
//! or blob "MUST" answer `404`. Range reads are the `Range`/`206` of RFC 9110, which the spec's
//! "resumable pull" use case relies on.
//!
//! A blob `GET` may redirect (to object storage): the checks follow up to three redirects,
//! without the registry's credentials when the hop leaves the registry's origin.

use crate::fixtures::{Blob, Manifest};
use crate::http::Reply;
use crate::report::Report;
use crate::suite::{Ctx, IMAGE_TAGS, INDEX_TAG};
use anyhow::{bail, ensure, Context as _, Result};
use berth_oci::Digest;
use reqwest::Method;

/// Runs the group (without `pull/base`, which the suite runs first).
pub async fn run(ctx: &Ctx, report: &mut Report) {
    let tag = IMAGE_TAGS[0];
    let digest = ctx.fx.image.digest.to_string();
    report.record("pull/manifest-get-by-tag", manifest_get(ctx, tag, &ctx.fx.image).await);
    report.record(
        "pull/manifest-head-by-tag",
        manifest_head(ctx, tag, &ctx.fx.image).await,
    );
    report.record(
        "pull/manifest-get-by-digest",
        manifest_get(ctx, &digest, &ctx.fx.image).await,
    );
    report.record(
        "pull/manifest-head-by-digest",
        manifest_head(ctx, &digest, &ctx.fx.image).await,
    );
    report.record("pull/index-get", manifest_get(ctx, INDEX_TAG, &ctx.fx.index).await);
    report.record("pull/manifest-unknown", manifest_unknown(ctx).await);
    report.record("pull/blob-get", blob_get(ctx).await);
    report.record("pull/blob-head", blob_head(ctx).await);
    report.record("pull/blob-unknown", blob_unknown(ctx).await);
    report.record("pull/blob-range", blob_range(ctx).await);
    report.record("pull/blob-range-unsatisfiable", blob_range_unsatisfiable(ctx).await);
    report.record("pull/docker-schema2", docker_schema2(ctx).await);
}

/// `GET /v2/`: `200` (after answering any authentication challenge), and the version header,
/// when sent, says `registry/2.0`.
pub async fn base(ctx: &Ctx) -> Result<()> {
    let reply = ctx.reg.call(Method::GET, "/v2/").send().await?;
    if reply.status.as_u16() == 401 && !ctx.reg.has_credentials() {
        bail!(
            "{}: 401 (WWW-Authenticate: {:?}) and no --user/--password to answer it with",
            reply.request_line(),
            reply.header("WWW-Authenticate").unwrap_or("")
        );
    }
    if reply.status.as_u16() == 401 {
        bail!(
            "{}: still 401 after answering the challenge (WWW-Authenticate: {:?}); \
             are --user and --password right?",
            reply.request_line(),
            reply.header("WWW-Authenticate").unwrap_or("")
        );
    }
    reply.expect_status(200)?;
    if let Some(version) = reply.header("Docker-Distribution-API-Version") {
        ensure!(
            version == "registry/2.0",
            "Docker-Distribution-API-Version is {version:?}, expected \"registry/2.0\""
        );
    }
    Ok(())
}

/// The headers both `GET` and `HEAD` of a manifest must carry.
fn expect_manifest_headers(reply: &Reply, m: &Manifest) -> Result<()> {
    reply.expect_status(200)?;
    reply.expect_media_type(m.media_type)?;
    reply.expect_digest(&m.digest)?;
    Ok(())
}

/// `GET` by `reference`: `200`, the pushed `Content-Type`, `Docker-Content-Digest`, and the
/// exact bytes pushed.
async fn manifest_get(ctx: &Ctx, reference: &str, m: &Manifest) -> Result<()> {
    ctx.ensure_image().await?;
    let reply = ctx.fetch_manifest(Method::GET, &ctx.repo, reference).await?;
    expect_manifest_headers(&reply, m)?;
    reply.expect_body(&m.bytes)?;
    if reply.header("Content-Length").is_some() {
        reply.expect_length(m.bytes.len())?;
    }
    Ok(())
}

/// `HEAD` by `reference`: as `GET`, with `Content-Length` the manifest's size and no body.
async fn manifest_head(ctx: &Ctx, reference: &str, m: &Manifest) -> Result<()> {
    ctx.ensure_image().await?;
    let reply = ctx.fetch_manifest(Method::HEAD, &ctx.repo, reference).await?;
    expect_manifest_headers(&reply, m)?;
    reply.expect_length(m.bytes.len())?;
    reply.expect_body(b"")?;
    Ok(())
}

/// An unknown tag and an unknown digest: `404 MANIFEST_UNKNOWN` to `GET`, `404` to `HEAD`.
async fn manifest_unknown(ctx: &Ctx) -> Result<()> {
    ctx.ensure_image().await?;
    let unknown_digest = Digest::of(format!("no manifest, {}", ctx.repo).as_bytes()).to_string();
    for reference in ["no-such-tag", unknown_digest.as_str()] {
        let get = ctx.fetch_manifest(Method::GET, &ctx.repo, reference).await?;
        get.expect_error(404, "MANIFEST_UNKNOWN")?;
        let head = ctx.fetch_manifest(Method::HEAD, &ctx.repo, reference).await?;
        head.expect_status(404)?;
    }
    Ok(())
}

/// A blob request, following up to three redirects. Returns the final reply and the
/// `Docker-Content-Digest` of whichever hop sent one.
pub(crate) async fn fetch_blob(
    ctx: &Ctx,
    method: Method,
    digest: &Digest,
    range: Option<&str>,
) -> Result<(Reply, Option<String>)> {
    let mut url = ctx.reg.resolve(&Ctx::path(&ctx.repo, &format!("blobs/{digest}")))?;
    let mut digest_header = None;
    for _ in 0..4 {
        let same_origin = url.origin() == ctx.reg.base().origin();
        let mut call = ctx.reg.call_url(method.clone(), url.clone());
        if !same_origin {
            call = call.anonymous();
        }
        if let Some(range) = range {
            call = call.header("Range", range);
        }
        let reply = call.send().await?;
        if digest_header.is_none() {
            digest_header = reply.header("Docker-Content-Digest").map(str::to_owned);
        }
        if !matches!(reply.status.as_u16(), 301 | 302 | 303 | 307 | 308) {
            return Ok((reply, digest_header));
        }
        url = reply.location()?;
    }
    bail!("more than three redirects for blob {digest}")
}

fn expect_digest_header(header: Option<&str>, blob: &Blob) -> Result<()> {
    let want = blob.digest.to_string();
    match header {
        Some(got) if got == want => Ok(()),
        Some(got) => bail!("Docker-Content-Digest is {got:?}, expected {want:?}"),
        None => bail!("no Docker-Content-Digest header"),
    }
}

/// `GET` of a blob: `200`, `Content-Length`, `Docker-Content-Digest`, the exact bytes.
async fn blob_get(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.layer;
    ctx.ensure_blob(&ctx.repo, blob).await?;
    let (reply, digest) = fetch_blob(ctx, Method::GET, &blob.digest, None).await?;
    reply.expect_status(200)?;
    reply.expect_length(blob.bytes.len())?;
    reply.expect_body(&blob.bytes)?;
    expect_digest_header(digest.as_deref(), blob)
}

/// `HEAD` of a blob: `200`, `Content-Length`, `Docker-Content-Digest`, no body.
async fn blob_head(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.layer;
    ctx.ensure_blob(&ctx.repo, blob).await?;
    let (reply, digest) = fetch_blob(ctx, Method::HEAD, &blob.digest, None).await?;
    reply.expect_status(200)?;
    reply.expect_length(blob.bytes.len())?;
    reply.expect_body(b"")?;
    expect_digest_header(digest.as_deref(), blob)
}

/// A digest never pushed: `404 BLOB_UNKNOWN` to `GET`, `404` to `HEAD`.
async fn blob_unknown(ctx: &Ctx) -> Result<()> {
    ctx.ensure_blob(&ctx.repo, &ctx.fx.layer).await?;
    let unknown = Digest::of(format!("no blob, {}", ctx.repo).as_bytes());
    let (get, _) = fetch_blob(ctx, Method::GET, &unknown, None).await?;
    get.expect_error(404, "BLOB_UNKNOWN")?;
    let (head, _) = fetch_blob(ctx, Method::HEAD, &unknown, None).await?;
    head.expect_status(404)?;
    Ok(())
}

/// `Range: bytes=1-3`: `206`, `Content-Range: bytes 1-3/<size>`, exactly those three bytes.
async fn blob_range(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.layer;
    ctx.ensure_blob(&ctx.repo, blob).await?;
    let (reply, _) = fetch_blob(ctx, Method::GET, &blob.digest, Some("bytes=1-3")).await?;
    reply.expect_status(206)?;
    reply.expect_header("Content-Range", &format!("bytes 1-3/{}", blob.bytes.len()))?;
    reply.expect_body(&blob.bytes[1..4])?;
    if reply.header("Content-Length").is_some() {
        reply.expect_length(3)?;
    }
    Ok(())
}

/// A range wholly past the end: `416`.
async fn blob_range_unsatisfiable(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.layer;
    ctx.ensure_blob(&ctx.repo, blob).await?;
    let size = blob.bytes.len();
    let range = format!("bytes={}-{}", size + 100, size + 200);
    let (reply, _) = fetch_blob(ctx, Method::GET, &blob.digest, Some(&range)).await?;
    reply.expect_status(416).context(range)?;
    Ok(())
}

/// A Docker schema 2 manifest (Docker config and gzip layer media types) pushed and pulled
/// back: the `Content-Type` stays the Docker one, the bytes are unchanged.
async fn docker_schema2(ctx: &Ctx) -> Result<()> {
    let fx = &ctx.fx;
    ctx.ensure_blob(&ctx.repo, &fx.docker_config).await?;
    ctx.ensure_blob(&ctx.repo, &fx.docker_layer).await?;
    let put = ctx.put_manifest(&ctx.repo, "docker", &fx.docker).await?;
    put.expect_status(201)?;
    put.expect_digest(&fx.docker.digest)?;
    ctx.mark(&ctx.repo, "docker");
    let get = ctx.fetch_manifest(Method::GET, &ctx.repo, "docker").await?;
    expect_manifest_headers(&get, &fx.docker)?;
    get.expect_body(&fx.docker.bytes)?;
    let head = ctx
        .fetch_manifest(Method::HEAD, &ctx.repo, &fx.docker.digest.to_string())
        .await?;
    expect_manifest_headers(&head, &fx.docker).context("HEAD by digest")?;
    head.expect_length(fx.docker.bytes.len())?;
    Ok(())
}
