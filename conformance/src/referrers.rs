//! `referrers/*`: manifests with a `subject`, and the referrers API that lists them.
//!
//! The spec's words these checks hold registries to (distribution-spec v1.1, "Listing
//! Referrers" and "Pushing Manifests with Subject"): a registry that processed a `subject`
//! answers the push with `OCI-Subject: <subject digest>`; `GET /v2/<name>/referrers/<digest>`
//! answers `200` with an image index (`Content-Type: application/vnd.oci.image.index.v1+json`)
//! whose descriptors carry the referrer's `artifactType` and "all annotations"; a registry
//! supporting the API "MUST NOT return a `404`" and, with no referrers, returns an empty
//! `manifests` list; a registry that applies the `artifactType` filter says so with
//! `OCI-Filters-Applied: artifactType`.

use crate::expect::{array_field, short, str_field};
use crate::fixtures::{Manifest, ABSENT_TYPE, CONFIG_ARTIFACT_TYPE, SBOM_ANNOTATION, SBOM_TYPE, SIGNATURE_TYPE};
use crate::http::Reply;
use crate::report::Report;
use crate::suite::Ctx;
use anyhow::{anyhow, bail, ensure, Context as _, Result};
use berth_oci::{media, Digest};
use reqwest::Method;
use serde_json::Value;

/// Pages of referrers followed at most.
const MAX_PAGES: usize = 100;

/// Runs the group.
pub async fn run(ctx: &Ctx, report: &mut Report) {
    report.record("referrers/push-artifact", push_artifact(ctx).await);
    report.record("referrers/list-all", list_all(ctx).await);
    report.record("referrers/filter-artifact-type", filter_artifact_type(ctx).await);
    report.record("referrers/filter-no-match", filter_no_match(ctx).await);
    report.record(
        "referrers/artifact-type-from-config",
        artifact_type_from_config(ctx).await,
    );
    report.record("referrers/unknown-subject", unknown_subject(ctx).await);
    report.record("referrers/invalid-digest", invalid_digest(ctx).await);
}

/// Pushes the subject image, the empty blob, and the three referrers by digest, checking each
/// artifact push's `201`, `Docker-Content-Digest` and `OCI-Subject`.
async fn push_artifacts(ctx: &Ctx, assert: bool) -> Result<()> {
    let fx = &ctx.fx;
    ctx.ensure_image_manifests().await?;
    ctx.ensure_blob(&ctx.repo, &fx.empty).await?;
    for artifact in [&fx.sbom, &fx.signature, &fx.config_typed] {
        let digest = artifact.digest.to_string();
        if !assert {
            ctx.ensure_manifest(&ctx.repo, &digest, artifact).await?;
            continue;
        }
        let put = ctx.put_manifest(&ctx.repo, &digest, artifact).await?;
        put.expect_status(201)?;
        put.expect_digest(&artifact.digest)?;
        put.location()?;
        put.expect_header("OCI-Subject", &fx.image.digest.to_string())?;
        ctx.mark(&ctx.repo, &digest);
    }
    Ok(())
}

/// Three referrers of the image, pushed by digest: an SBOM and a signature (each with
/// `artifactType`, the empty config and a `subject`), and one without `artifactType` whose
/// config has a media type of its own. Each: `201` and `OCI-Subject` naming the subject.
async fn push_artifact(ctx: &Ctx) -> Result<()> {
    push_artifacts(ctx, true).await
}

/// Every descriptor listed for `subject` (with `?artifactType=` when given), following `Link`
/// pages; returns the first page's reply too, for its headers.
async fn list(ctx: &Ctx, subject: &Digest, artifact_type: Option<&str>) -> Result<(Reply, Vec<Value>)> {
    let mut call = ctx
        .reg
        .call(Method::GET, &Ctx::path(&ctx.repo, &format!("referrers/{subject}")));
    if let Some(t) = artifact_type {
        call = call.query("artifactType", t);
    }
    let first = call.send().await?;
    let mut descriptors = page_descriptors(&first)?;
    let mut next = first.next_link()?;
    let mut pages = 1;
    while let Some(url) = next {
        ensure!(pages < MAX_PAGES, "referrers still paginate after {MAX_PAGES} pages");
        let reply = ctx.reg.call_url(Method::GET, url).send().await?;
        descriptors.extend(page_descriptors(&reply)?);
        next = reply.next_link()?;
        pages += 1;
    }
    Ok((first, descriptors))
}

/// One page of a referrers list: `200`, an image index, its `manifests`.
fn page_descriptors(reply: &Reply) -> Result<Vec<Value>> {
    reply.expect_status(200)?;
    reply.expect_media_type(media::OCI_INDEX)?;
    let json = reply.json()?;
    ensure!(
        json.get("schemaVersion").and_then(Value::as_u64) == Some(2),
        "{}: schemaVersion is not 2: {}",
        reply.request_line(),
        short(&json)
    );
    if let Some(mt) = json.get("mediaType") {
        ensure!(
            mt.as_str() == Some(media::OCI_INDEX),
            "{}: mediaType is {mt}, expected {:?}",
            reply.request_line(),
            media::OCI_INDEX
        );
    }
    Ok(array_field(&json, "manifests")?.clone())
}

/// The descriptor of `m` among `descriptors`, checked field by field.
fn find_descriptor<'d>(descriptors: &'d [Value], m: &Manifest, artifact_type: &str) -> Result<&'d Value> {
    let digest = m.digest.to_string();
    let d = descriptors
        .iter()
        .find(|d| d.get("digest").and_then(Value::as_str) == Some(digest.as_str()))
        .ok_or_else(|| {
            anyhow!(
                "referrer {digest} ({artifact_type}) not listed; manifests: {}",
                short(&Value::Array(descriptors.to_vec()))
            )
        })?;
    let got_type = str_field(d, "artifactType")?;
    ensure!(
        got_type == artifact_type,
        "descriptor of {digest} has artifactType {got_type:?}, expected {artifact_type:?}"
    );
    let got_media = str_field(d, "mediaType")?;
    ensure!(
        got_media == m.media_type,
        "descriptor of {digest} has mediaType {got_media:?}, expected {:?}",
        m.media_type
    );
    let size = d.get("size").and_then(Value::as_u64);
    ensure!(
        size == Some(m.bytes.len() as u64),
        "descriptor of {digest} has size {size:?}, expected {}",
        m.bytes.len()
    );
    Ok(d)
}

/// The unfiltered list holds both artifacts with their `artifactType`, digest, size, and the
/// SBOM's annotations.
async fn list_all(ctx: &Ctx) -> Result<()> {
    push_artifacts(ctx, false).await?;
    let fx = &ctx.fx;
    let (_, descriptors) = list(ctx, &fx.image.digest, None).await?;
    let sbom = find_descriptor(&descriptors, &fx.sbom, SBOM_TYPE)?;
    find_descriptor(&descriptors, &fx.signature, SIGNATURE_TYPE)?;
    let annotation = sbom
        .get("annotations")
        .and_then(|a| a.get(SBOM_ANNOTATION.0))
        .and_then(Value::as_str);
    ensure!(
        annotation == Some(SBOM_ANNOTATION.1),
        "the SBOM's descriptor does not repeat its annotation {}={:?}: {sbom}",
        SBOM_ANNOTATION.0,
        SBOM_ANNOTATION.1
    );
    Ok(())
}

/// Fails unless the reply says the `artifactType` filter was applied.
fn expect_filtered(reply: &Reply) -> Result<()> {
    let applied = reply.require_header("OCI-Filters-Applied")?;
    ensure!(
        applied.split(',').any(|f| f.trim() == "artifactType"),
        "{}: OCI-Filters-Applied is {applied:?}, expected it to name artifactType",
        reply.request_line()
    );
    Ok(())
}

/// `?artifactType=<the SBOM's>`: the SBOM and only artifacts of that type, with
/// `OCI-Filters-Applied: artifactType`.
async fn filter_artifact_type(ctx: &Ctx) -> Result<()> {
    push_artifacts(ctx, false).await?;
    let fx = &ctx.fx;
    let (reply, descriptors) = list(ctx, &fx.image.digest, Some(SBOM_TYPE)).await?;
    expect_filtered(&reply)?;
    find_descriptor(&descriptors, &fx.sbom, SBOM_TYPE)?;
    for d in &descriptors {
        let t = d.get("artifactType").and_then(Value::as_str);
        ensure!(t == Some(SBOM_TYPE), "filtered on {SBOM_TYPE} but listed {}", short(d));
    }
    Ok(())
}

/// `?artifactType=<a type nothing has>`: `200`, an empty list.
async fn filter_no_match(ctx: &Ctx) -> Result<()> {
    push_artifacts(ctx, false).await?;
    let (reply, descriptors) = list(ctx, &ctx.fx.image.digest, Some(ABSENT_TYPE)).await?;
    expect_filtered(&reply)?;
    if !descriptors.is_empty() {
        bail!(
            "filtered on {ABSENT_TYPE} but listed {}",
            short(&Value::Array(descriptors))
        );
    }
    Ok(())
}

/// A referrer without `artifactType` is listed with its config's media type as `artifactType`
/// ("If the artifactType is empty or missing in an image manifest, the value of artifactType
/// MUST be set to the config descriptor mediaType value").
async fn artifact_type_from_config(ctx: &Ctx) -> Result<()> {
    push_artifacts(ctx, false).await?;
    let fx = &ctx.fx;
    let (_, descriptors) = list(ctx, &fx.image.digest, None).await?;
    find_descriptor(&descriptors, &fx.config_typed, CONFIG_ARTIFACT_TYPE)?;
    Ok(())
}

/// A subject nothing refers to (and that does not exist): `200` with an empty list, never 404.
async fn unknown_subject(ctx: &Ctx) -> Result<()> {
    ctx.ensure_image_manifests().await?;
    let unknown = Digest::of(format!("no subject, {}", ctx.repo).as_bytes());
    let (_, descriptors) = list(ctx, &unknown, None)
        .await
        .context("referrers of an unknown digest")?;
    ensure!(
        descriptors.is_empty(),
        "unknown subject has referrers: {}",
        short(&Value::Array(descriptors))
    );
    Ok(())
}

/// A reference that is not a digest at all: `400` ("If the request is invalid, such as a
/// `<digest>` with an invalid syntax, a `400 Bad Request` MUST be returned").
async fn invalid_digest(ctx: &Ctx) -> Result<()> {
    ctx.ensure_image_manifests().await?;
    let reply = ctx
        .reg
        .call(Method::GET, &Ctx::path(&ctx.repo, "referrers/not-a-digest"))
        .send()
        .await?;
    reply.expect_status(400)?;
    Ok(())
}
