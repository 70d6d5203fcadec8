//! `push/*`: blob uploads in every form the spec defines, and manifest pushes.
//!
//! The spec's words these checks hold registries to (distribution-spec v1.1, "Push"):
//! - a monolithic or closing `PUT` answers `201 Created` with a `Location`;
//! - each chunk answers `202 Accepted` with `Location` and `Range: 0-<end>`, and "if a chunk is
//!   uploaded out of order, the registry MUST respond with a `416`";
//! - an upload's status `GET` answers `204 No Content` with `Location` and `Range`;
//! - a successful mount answers `201`; one that cannot mount "SHOULD return a `202`";
//! - a manifest push answers `201` with `Location`, and `Docker-Content-Digest` that "MUST match
//!   the digest provided by the client".

use crate::fixtures::Blob;
use crate::http::Reply;
use crate::report::Report;
use crate::suite::{Ctx, IMAGE_TAGS, INDEX_TAG};
use anyhow::{anyhow, ensure, Context as _, Result};
use berth_oci::{media, Digest};
use bytes::Bytes;
use reqwest::{Method, Url};

/// Where the chunked upload stands between its checks.
#[derive(Default)]
struct Chunked {
    /// The session's latest `Location`.
    location: Option<Url>,
    /// Bytes accepted so far.
    sent: usize,
}

/// Chunk boundaries of the chunked blob: two `PATCH`es, the rest in the closing `PUT`.
const CHUNK_ENDS: [usize; 2] = [400_000, 800_000];

/// Runs the group.
pub async fn run(ctx: &Ctx, report: &mut Report) {
    report.record("push/blob-post-put", blob_post_put(ctx).await);
    report.record("push/blob-post-single", blob_post_single(ctx).await);
    let mut chunked = Chunked::default();
    report.record("push/chunked-patch", chunked_patch(ctx, &mut chunked).await);
    report.record("push/chunked-status", chunked_status(ctx, &mut chunked).await);
    report.record("push/chunked-out-of-order", chunked_out_of_order(ctx).await);
    report.record("push/chunked-final-put", chunked_final_put(ctx, &mut chunked).await);
    report.record("push/streamed", streamed(ctx).await);
    report.record("push/digest-mismatch", digest_mismatch(ctx).await);
    report.record("push/mount", mount(ctx).await);
    report.record("push/mount-unknown", mount_unknown(ctx).await);
    report.record("push/upload-cancel", upload_cancel(ctx).await);
    report.record("push/manifest-by-tag", manifest_by_tag(ctx).await);
    report.record("push/manifest-by-digest", manifest_by_digest(ctx).await);
    report.record("push/manifest-blob-unknown", manifest_blob_unknown(ctx).await);
    report.record("push/index", index(ctx).await);
    report.record("push/manifest-invalid", manifest_invalid(ctx).await);
    report.record("push/name-invalid", name_invalid(ctx).await);
}

/// The common assertions on a blob upload's closing reply: `201`, `Location` that serves the
/// blob, and (when sent) the right `Docker-Content-Digest`.
async fn expect_blob_created(ctx: &Ctx, reply: &Reply, blob: &Blob) -> Result<()> {
    reply.expect_status(201)?;
    let location = reply.location()?;
    if reply.header("Docker-Content-Digest").is_some() {
        reply.expect_digest(&blob.digest)?;
    }
    // "<blob-location> is a pullable blob URL".
    let head = ctx
        .reg
        .call_url(Method::HEAD, location)
        .send()
        .await
        .context("HEAD of the returned Location")?;
    head.expect_status(200)
        .context("the Location of the created blob does not serve it")?;
    head.expect_length(blob.bytes.len())?;
    Ok(())
}

/// After a blob push by another path than the monolithic one: `GET` it back byte for byte
/// (following a redirect to object storage, as clients do).
async fn expect_blob_content(ctx: &Ctx, blob: &Blob) -> Result<()> {
    let (get, _) = crate::pull::fetch_blob(ctx, Method::GET, &blob.digest, None).await?;
    get.expect_status(200)?;
    get.expect_body(&blob.bytes)?;
    Ok(())
}

/// `POST` then `PUT ?digest=` with the whole blob.
async fn blob_post_put(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.post_put;
    let post = ctx.start_upload(&ctx.repo).await?;
    post.expect_status(202)?;
    let location = post.location()?;
    let put = ctx
        .reg
        .call_url(Method::PUT, location)
        .query("digest", &blob.digest.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(blob.bytes.clone())
        .send()
        .await?;
    put.expect_status(201)?;
    put.expect_digest(&blob.digest)?;
    expect_blob_created(ctx, &put, blob).await?;
    ctx.mark(&ctx.repo, &blob.digest.to_string());
    Ok(())
}

/// `POST ?digest=` with the blob as body: `201`, or `202` from a registry without single-request
/// uploads, after which the client proceeds with a `PUT` as the spec prescribes.
async fn blob_post_single(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.single;
    let post = ctx
        .reg
        .call(Method::POST, &Ctx::path(&ctx.repo, "blobs/uploads/"))
        .query("digest", &blob.digest.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(blob.bytes.clone())
        .send()
        .await?;
    post.expect_status_in(&[201, 202])?;
    let created = if post.status.as_u16() == 202 {
        let location = post
            .location()
            .context("202 to a single-request upload must carry a Location to PUT to")?;
        ctx.reg
            .call_url(Method::PUT, location)
            .query("digest", &blob.digest.to_string())
            .header("Content-Type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await?
    } else {
        post
    };
    expect_blob_created(ctx, &created, blob).await?;
    ctx.mark(&ctx.repo, &blob.digest.to_string());
    Ok(())
}

/// Asserts a chunk or status reply's `Range: 0-<end>` and returns its `Location`.
fn expect_progress(reply: &Reply, sent: usize) -> Result<Url> {
    let want = format!("0-{}", sent.saturating_sub(1));
    reply.expect_header("Range", &want)?;
    reply.location()
}

/// `PATCH` of one chunk with `Content-Range`.
async fn patch_chunk(ctx: &Ctx, location: Url, start: usize, chunk: Bytes) -> Result<Reply> {
    let end = start + chunk.len() - 1;
    ctx.reg
        .call_url(Method::PATCH, location)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", &format!("{start}-{end}"))
        .header("Content-Length", &chunk.len().to_string())
        .body(chunk)
        .send()
        .await
}

/// `POST` (`Content-Length: 0`), then two `PATCH`es with `Content-Range`: each `202` with
/// `Range` covering everything so far, and a `Location`.
async fn chunked_patch(ctx: &Ctx, state: &mut Chunked) -> Result<()> {
    let blob = &ctx.fx.chunked;
    let post = ctx.start_upload(&ctx.repo).await?;
    post.expect_status(202)?;
    let mut location = post.location()?;
    let mut start = 0;
    for end in CHUNK_ENDS {
        let chunk = blob.bytes.slice(start..end);
        let reply = patch_chunk(ctx, location, start, chunk).await?;
        reply.expect_status(202)?;
        // Keep the session for the next checks before asserting on `Range`.
        location = reply.location()?;
        state.location = Some(location.clone());
        state.sent = end;
        expect_progress(&reply, end)?;
        start = end;
    }
    Ok(())
}

fn session(state: &Chunked) -> Result<Url> {
    state
        .location
        .clone()
        .ok_or_else(|| anyhow!("no upload session: push/chunked-patch did not get one going"))
}

/// `GET` of the session: `204` with `Range` and `Location`.
async fn chunked_status(ctx: &Ctx, state: &mut Chunked) -> Result<()> {
    let reply = ctx.reg.call_url(Method::GET, session(state)?).send().await?;
    reply.expect_status(204)?;
    state.location = Some(expect_progress(&reply, state.sent)?);
    Ok(())
}

/// On a session of its own (so that a registry accepting the bad chunk does not spoil the
/// main chunked upload): one chunk, then a chunk that skips a byte, which must be refused with
/// `416`; the session survives it, its `Range` unchanged ("to get the current status after a
/// 416 error, issue a GET request").
async fn chunked_out_of_order(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.chunked;
    let post = ctx.start_upload(&ctx.repo).await?;
    post.expect_status(202)?;
    let first = 1000;
    let reply = patch_chunk(ctx, post.location()?, 0, blob.bytes.slice(..first)).await?;
    reply.expect_status(202)?;
    let location = expect_progress(&reply, first)?;
    let skip = first + 1;
    let reply = patch_chunk(ctx, location.clone(), skip, blob.bytes.slice(skip..skip + 1000)).await?;
    reply.expect_status(416)?;
    let status = ctx.reg.call_url(Method::GET, location.clone()).send().await?;
    status.expect_status(204).context("the session after the 416")?;
    expect_progress(&status, first).context("the session after the 416")?;
    let _ = ctx.reg.call_url(Method::DELETE, location).send().await;
    Ok(())
}

/// The closing `PUT ?digest=` carries the last chunk: `201`, `Location`, the digest of the
/// whole blob; the blob then reads back exactly.
async fn chunked_final_put(ctx: &Ctx, state: &mut Chunked) -> Result<()> {
    let blob = &ctx.fx.chunked;
    let start = state.sent;
    let chunk = blob.bytes.slice(start..);
    let end = blob.bytes.len() - 1;
    let put = ctx
        .reg
        .call_url(Method::PUT, session(state)?)
        .query("digest", &blob.digest.to_string())
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", &format!("{start}-{end}"))
        .header("Content-Length", &chunk.len().to_string())
        .body(chunk)
        .send()
        .await?;
    put.expect_status(201)?;
    put.expect_digest(&blob.digest)?;
    expect_blob_created(ctx, &put, blob).await?;
    expect_blob_content(ctx, blob)
        .await
        .context("the chunks were not assembled into the blob")?;
    ctx.mark(&ctx.repo, &blob.digest.to_string());
    Ok(())
}

/// A `PATCH` without `Content-Range`, streamed with no length (as docker sends layers), then a
/// `PUT ?digest=` with an empty body.
async fn streamed(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.streamed;
    let post = ctx.start_upload(&ctx.repo).await?;
    post.expect_status(202)?;
    let pieces: Vec<Bytes> = (0..blob.bytes.len())
        .step_by(64 * 1024)
        .map(|i| blob.bytes.slice(i..(i + 64 * 1024).min(blob.bytes.len())))
        .collect();
    let patch = ctx
        .reg
        .call_url(Method::PATCH, post.location()?)
        .header("Content-Type", "application/octet-stream")
        .stream(pieces)
        .send()
        .await?;
    patch.expect_status(202)?;
    let location = expect_progress(&patch, blob.bytes.len())?;
    let put = ctx
        .reg
        .call_url(Method::PUT, location)
        .query("digest", &blob.digest.to_string())
        .header("Content-Length", "0")
        .send()
        .await?;
    put.expect_status(201)?;
    put.expect_digest(&blob.digest)?;
    expect_blob_created(ctx, &put, blob).await?;
    expect_blob_content(ctx, blob).await?;
    ctx.mark(&ctx.repo, &blob.digest.to_string());
    Ok(())
}

/// A closing `PUT` whose digest is not the content's: `400 DIGEST_INVALID`, and nothing is
/// stored under either digest.
async fn digest_mismatch(ctx: &Ctx) -> Result<()> {
    let content = Bytes::from_static(b"these bytes are not what the digest says");
    let claimed = Digest::of(b"something else entirely");
    let post = ctx.start_upload(&ctx.repo).await?;
    post.expect_status(202)?;
    let location = post.location()?;
    let put = ctx
        .reg
        .call_url(Method::PUT, location.clone())
        .query("digest", &claimed.to_string())
        .header("Content-Type", "application/octet-stream")
        .body(content)
        .send()
        .await?;
    put.expect_error(400, "DIGEST_INVALID")?;
    let head = ctx
        .reg
        .call(Method::HEAD, &Ctx::path(&ctx.repo, &format!("blobs/{claimed}")))
        .send()
        .await?;
    head.expect_status(404)
        .context("a blob was stored under the wrong digest")?;
    // Best effort: the session may already be gone.
    let _ = ctx.reg.call_url(Method::DELETE, location).send().await;
    Ok(())
}

/// `POST ?mount=<digest>&from=<other repository>`: `201` with `Location`, and the blob is then
/// served from the target repository.
async fn mount(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.mounted;
    ctx.ensure_blob(&ctx.source_repo, blob).await?;
    let post = ctx
        .reg
        .call(Method::POST, &Ctx::path(&ctx.repo, "blobs/uploads/"))
        .query("mount", &blob.digest.to_string())
        .query("from", &ctx.source_repo)
        .header("Content-Length", "0")
        .send()
        .await?;
    post.expect_status(201)?;
    expect_blob_created(ctx, &post, blob).await?;
    expect_blob_content(ctx, blob).await?;
    ctx.mark(&ctx.repo, &blob.digest.to_string());
    Ok(())
}

/// A mount of a digest the registry has never seen falls back to an upload session: `202`
/// with `Location`.
async fn mount_unknown(ctx: &Ctx) -> Result<()> {
    let unknown = Digest::of(format!("never pushed, {}", ctx.repo).as_bytes());
    let post = ctx
        .reg
        .call(Method::POST, &Ctx::path(&ctx.repo, "blobs/uploads/"))
        .query("mount", &unknown.to_string())
        .query("from", &ctx.source_repo)
        .header("Content-Length", "0")
        .send()
        .await?;
    post.expect_status(202)?;
    let location = post.location()?;
    let _ = ctx.reg.call_url(Method::DELETE, location).send().await;
    Ok(())
}

/// `DELETE` of a session: `204`; the session is then unknown: `404 BLOB_UPLOAD_UNKNOWN`.
async fn upload_cancel(ctx: &Ctx) -> Result<()> {
    let post = ctx.start_upload(&ctx.repo).await?;
    post.expect_status(202)?;
    let location = post.location()?;
    let delete = ctx
        .reg
        .call_url(Method::DELETE, location.clone())
        .header("Content-Length", "0")
        .send()
        .await?;
    delete.expect_status(204)?;
    let get = ctx.reg.call_url(Method::GET, location).send().await?;
    get.expect_error(404, "BLOB_UPLOAD_UNKNOWN")?;
    Ok(())
}

/// The common assertions on a manifest push: `201`, `Docker-Content-Digest` of the exact
/// bytes, and a `Location` that serves the manifest.
async fn expect_manifest_created(ctx: &Ctx, reply: &Reply, digest: &Digest) -> Result<()> {
    reply.expect_status(201)?;
    reply.expect_digest(digest)?;
    let location = reply.location()?;
    let head = ctx
        .reg
        .call_url(Method::HEAD, location)
        .header("Accept", crate::suite::ACCEPT_MANIFESTS)
        .send()
        .await
        .context("HEAD of the returned Location")?;
    head.expect_status(200)
        .context("the Location of the pushed manifest does not serve it")?;
    Ok(())
}

/// An OCI image manifest pushed under two tags.
async fn manifest_by_tag(ctx: &Ctx) -> Result<()> {
    let fx = &ctx.fx;
    ctx.ensure_blob(&ctx.repo, &fx.config).await?;
    ctx.ensure_blob(&ctx.repo, &fx.layer).await?;
    for tag in IMAGE_TAGS {
        let put = ctx.put_manifest(&ctx.repo, tag, &fx.image).await?;
        expect_manifest_created(ctx, &put, &fx.image.digest)
            .await
            .with_context(|| format!("tag {tag}"))?;
        ctx.mark(&ctx.repo, tag);
        ctx.mark(&ctx.repo, &fx.image.digest.to_string());
    }
    Ok(())
}

/// An OCI image manifest pushed by its digest.
async fn manifest_by_digest(ctx: &Ctx) -> Result<()> {
    let fx = &ctx.fx;
    ctx.ensure_blob(&ctx.repo, &fx.config).await?;
    ctx.ensure_blob(&ctx.repo, &fx.chunked).await?;
    let digest = fx.image2.digest.to_string();
    let put = ctx.put_manifest(&ctx.repo, &digest, &fx.image2).await?;
    expect_manifest_created(ctx, &put, &fx.image2.digest).await?;
    ctx.mark(&ctx.repo, &digest);
    Ok(())
}

/// A manifest whose layer was never pushed: `400 MANIFEST_BLOB_UNKNOWN`.
async fn manifest_blob_unknown(ctx: &Ctx) -> Result<()> {
    let fx = &ctx.fx;
    ctx.ensure_blob(&ctx.repo, &fx.config).await?;
    let put = ctx
        .put_manifest(&ctx.repo, &fx.dangling.digest.to_string(), &fx.dangling)
        .await?;
    put.expect_error(400, "MANIFEST_BLOB_UNKNOWN")?;
    Ok(())
}

/// An OCI image index over both image manifests, by tag.
async fn index(ctx: &Ctx) -> Result<()> {
    let fx = &ctx.fx;
    ctx.ensure_image_manifests().await?;
    let put = ctx.put_manifest(&ctx.repo, INDEX_TAG, &fx.index).await?;
    expect_manifest_created(ctx, &put, &fx.index.digest).await?;
    ctx.mark(&ctx.repo, INDEX_TAG);
    ctx.mark(&ctx.repo, &fx.index.digest.to_string());
    Ok(())
}

/// A body that is not JSON at all: `400 MANIFEST_INVALID`.
async fn manifest_invalid(ctx: &Ctx) -> Result<()> {
    let put = ctx
        .reg
        .call(Method::PUT, &Ctx::path(&ctx.repo, "manifests/invalid"))
        .header("Content-Type", media::OCI_MANIFEST)
        .body(Bytes::from_static(
            b"{\"schemaVersion\": 2, \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\", \"config\": ",
        ))
        .send()
        .await?;
    put.expect_error(400, "MANIFEST_INVALID")?;
    let get = ctx.fetch_manifest(Method::HEAD, &ctx.repo, "invalid").await?;
    ensure!(
        get.status.as_u16() == 404,
        "the invalid manifest was tagged anyway: HEAD answered {}",
        get.status
    );
    Ok(())
}

/// A repository name with upper-case letters, which the name grammar
/// (`[a-z0-9]+(?:[._-][a-z0-9]+)*` per component) forbids: `400 NAME_INVALID`.
async fn name_invalid(ctx: &Ctx) -> Result<()> {
    let post = ctx.start_upload(&ctx.bad_repo).await?;
    post.expect_error(400, "NAME_INVALID")?;
    Ok(())
}
