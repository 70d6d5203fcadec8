//! `management/*`: deleting tags, manifests and blobs.
//!
//! The spec's words these checks hold registries to (distribution-spec v1.1, "Content
//! management"): a tag, manifest or blob `DELETE` answers `202 Accepted` on success; after a
//! manifest is deleted, a `GET` of its digest "and any tag pointing to that digest will return
//! a 404"; deleting a blob that is not found answers `404`. Deletion may be disabled (`400` or
//! `405`): that is reported as a failure, since the runner cannot then check the rest.
//!
//! Each check deletes content of its own (a dedicated tag, manifest or blob), never the image
//! other groups read.

use crate::report::Report;
use crate::suite::{Ctx, IMAGE_TAGS};
use anyhow::{ensure, Context as _, Result};
use berth_oci::Digest;
use reqwest::Method;
use serde_json::Value;

/// The tag `management/delete-tag` creates and deletes.
const DOOMED_TAG: &str = "doomed";
/// The tag that points at the manifest `management/delete-manifest` deletes.
const CONDEMNED_TAG: &str = "condemned";

/// Runs the group.
pub async fn run(ctx: &Ctx, report: &mut Report) {
    report.record("management/delete-tag", delete_tag(ctx).await);
    report.record("management/delete-manifest", delete_manifest(ctx).await);
    report.record("management/delete-blob", delete_blob(ctx).await);
    report.record("management/delete-blob-unknown", delete_blob_unknown(ctx).await);
}

/// Whether the main repository's tag list (all pages) contains `tag`.
async fn tag_listed(ctx: &Ctx, tag: &str) -> Result<bool> {
    let mut reply = ctx
        .reg
        .call(Method::GET, &Ctx::path(&ctx.repo, "tags/list"))
        .send()
        .await?;
    for _ in 0..1000 {
        reply.expect_status(200)?;
        let json = reply.json()?;
        let found = json
            .get("tags")
            .and_then(Value::as_array)
            .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag)));
        if found {
            return Ok(true);
        }
        match reply.next_link()? {
            Some(next) => reply = ctx.reg.call_url(Method::GET, next).send().await?,
            None => return Ok(false),
        }
    }
    Ok(false)
}

/// `DELETE` by tag: `202`; the tag is gone (`404`, not listed) and the manifest it pointed at
/// is still there by digest and by its other tags.
async fn delete_tag(ctx: &Ctx) -> Result<()> {
    let fx = &ctx.fx;
    ctx.ensure_image_manifests().await?;
    ctx.put_manifest(&ctx.repo, DOOMED_TAG, &fx.image)
        .await?
        .expect_status(201)
        .context("set-up: tagging the image for deletion")?;
    let delete = ctx
        .reg
        .call(
            Method::DELETE,
            &Ctx::path(&ctx.repo, &format!("manifests/{DOOMED_TAG}")),
        )
        .send()
        .await?;
    delete.expect_status(202)?;
    let get = ctx.fetch_manifest(Method::GET, &ctx.repo, DOOMED_TAG).await?;
    get.expect_status(404).context("the deleted tag")?;
    ensure!(
        !tag_listed(ctx, DOOMED_TAG).await?,
        "the deleted tag {DOOMED_TAG:?} is still in the tags list"
    );
    let by_digest = ctx
        .fetch_manifest(Method::GET, &ctx.repo, &fx.image.digest.to_string())
        .await?;
    by_digest
        .expect_status(200)
        .context("deleting a tag must not delete the manifest")?;
    let other = ctx.fetch_manifest(Method::HEAD, &ctx.repo, IMAGE_TAGS[0]).await?;
    other
        .expect_status(200)
        .context("deleting a tag must not delete the manifest's other tags")?;
    Ok(())
}

/// `DELETE` by digest: `202`; the manifest is gone by digest (`404 MANIFEST_UNKNOWN`) and so
/// is the tag that pointed at it.
async fn delete_manifest(ctx: &Ctx) -> Result<()> {
    let fx = &ctx.fx;
    let m = &fx.doomed_manifest;
    ctx.ensure_blob(&ctx.repo, &fx.config).await?;
    ctx.ensure_blob(&ctx.repo, &fx.doomed_layer).await?;
    ctx.put_manifest(&ctx.repo, CONDEMNED_TAG, m)
        .await?
        .expect_status(201)
        .context("set-up: pushing the manifest to delete")?;
    let digest = m.digest.to_string();
    let delete = ctx
        .reg
        .call(Method::DELETE, &Ctx::path(&ctx.repo, &format!("manifests/{digest}")))
        .send()
        .await?;
    delete.expect_status(202)?;
    let get = ctx.fetch_manifest(Method::GET, &ctx.repo, &digest).await?;
    get.expect_error(404, "MANIFEST_UNKNOWN")
        .context("the deleted manifest")?;
    let head = ctx.fetch_manifest(Method::HEAD, &ctx.repo, &digest).await?;
    head.expect_status(404).context("the deleted manifest")?;
    let tag = ctx.fetch_manifest(Method::GET, &ctx.repo, CONDEMNED_TAG).await?;
    tag.expect_status(404).context("a tag of the deleted manifest")?;
    ctx.unmark(&ctx.repo, &digest);
    Ok(())
}

/// `DELETE` of a blob: `202`; the blob is then `404 BLOB_UNKNOWN`.
async fn delete_blob(ctx: &Ctx) -> Result<()> {
    let blob = &ctx.fx.doomed_blob;
    ctx.ensure_blob(&ctx.repo, blob).await?;
    let path = Ctx::path(&ctx.repo, &format!("blobs/{}", blob.digest));
    let delete = ctx.reg.call(Method::DELETE, &path).send().await?;
    delete.expect_status(202)?;
    ctx.unmark(&ctx.repo, &blob.digest.to_string());
    let get = ctx.reg.call(Method::GET, &path).send().await?;
    get.expect_error(404, "BLOB_UNKNOWN").context("the deleted blob")?;
    let head = ctx.reg.call(Method::HEAD, &path).send().await?;
    head.expect_status(404).context("the deleted blob")?;
    Ok(())
}

/// `DELETE` of a blob the repository never had: `404` ("If the blob is not found, a `404 Not
/// Found` code MUST be returned").
async fn delete_blob_unknown(ctx: &Ctx) -> Result<()> {
    ctx.ensure_blob(&ctx.repo, &ctx.fx.layer).await?;
    let unknown = Digest::of(format!("never a blob, {}", ctx.repo).as_bytes());
    let delete = ctx
        .reg
        .call(Method::DELETE, &Ctx::path(&ctx.repo, &format!("blobs/{unknown}")))
        .send()
        .await?;
    delete.expect_status(404)?;
    Ok(())
}
