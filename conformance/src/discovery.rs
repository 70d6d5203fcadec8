//! `discovery/*`: listing tags (with `n`, `last` and `Link` pagination) and the catalog.
//!
//! The spec's words these checks hold registries to (distribution-spec v1.1, "Content
//! discovery"): the tag list's tags "MUST be sorted in lexical order"; with `n`, "the response
//! MUST include … at most `<int>` results" and a `Link` header with `rel="next"` when more
//! remain; with `last`, the results are those after `<tagname>`; an unknown repository
//! answers `404` (`NAME_UNKNOWN`).

use crate::expect::{array_field, short, str_field};
use crate::http::Reply;
use crate::report::Report;
use crate::suite::{Ctx, IMAGE_TAGS, INDEX_TAG};
use anyhow::{anyhow, bail, ensure, Context as _, Result};
use reqwest::Method;
use serde_json::Value;

/// More pages than any test registry should need; a bound so that a registry whose `Link`
/// loops cannot hang the run.
const MAX_PAGES: usize = 1000;

/// Runs the group.
pub async fn run(ctx: &Ctx, report: &mut Report) {
    report.record("discovery/tags-list", tags_list(ctx).await);
    report.record("discovery/tags-page-link", tags_page_link(ctx).await);
    report.record("discovery/tags-page-last", tags_page_last(ctx).await);
    report.record("discovery/catalog", catalog(ctx).await);
    report.record("discovery/tags-unknown-repo", tags_unknown_repo(ctx).await);
}

/// The `tags` of a tags-list reply, after checking `name`.
fn page_tags(ctx: &Ctx, reply: &Reply) -> Result<Vec<String>> {
    reply.expect_status(200)?;
    let json = reply.json()?;
    let name = str_field(&json, "name")?;
    ensure!(
        name == ctx.repo,
        "{}: name is {name:?}, expected {:?}",
        reply.request_line(),
        ctx.repo
    );
    // An empty repository may answer `"tags": null`; ours is not empty, so insist on a list.
    array_field(&json, "tags")?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("non-string tag {t} in {}", short(&json)))
        })
        .collect()
}

/// Every tag of the main repository, following `Link` pages if the registry paginates.
async fn all_tags(ctx: &Ctx) -> Result<Vec<String>> {
    let mut reply = ctx
        .reg
        .call(Method::GET, &Ctx::path(&ctx.repo, "tags/list"))
        .send()
        .await?;
    let mut tags = Vec::new();
    for _ in 0..MAX_PAGES {
        tags.extend(page_tags(ctx, &reply)?);
        match reply.next_link()? {
            Some(next) => reply = ctx.reg.call_url(Method::GET, next).send().await?,
            None => return Ok(tags),
        }
    }
    bail!("tags list still has a next page after {MAX_PAGES} pages")
}

/// The full list contains every tag pushed, in lexical order.
async fn tags_list(ctx: &Ctx) -> Result<()> {
    ctx.ensure_image().await?;
    let tags = all_tags(ctx).await?;
    for want in IMAGE_TAGS.iter().chain([&INDEX_TAG]) {
        ensure!(tags.iter().any(|t| t == want), "tag {want:?} missing from {tags:?}");
    }
    ensure!(
        tags.windows(2).all(|w| w[0] < w[1]),
        "tags are not sorted lexically (or repeat): {tags:?}"
    );
    Ok(())
}

/// The first two tags in lexical order, from the full list (sorted here: the order the spec
/// asks for is what the pages are held to, whatever order the full list came in).
async fn first_two(ctx: &Ctx) -> Result<(String, String)> {
    ctx.ensure_image().await?;
    let mut tags = all_tags(ctx).await?;
    tags.sort();
    let mut tags = tags.into_iter();
    match (tags.next(), tags.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("set-up: the repository should have at least two tags"),
    }
}

/// `?n=1`: one tag, the first, and a `Link` to the next page, which yields the second.
async fn tags_page_link(ctx: &Ctx) -> Result<()> {
    let (first, second) = first_two(ctx).await?;
    let reply = ctx
        .reg
        .call(Method::GET, &Ctx::path(&ctx.repo, "tags/list"))
        .query("n", "1")
        .send()
        .await?;
    let tags = page_tags(ctx, &reply)?;
    ensure!(
        tags == [first.clone()],
        "{}: tags {tags:?}, expected [{first:?}]",
        reply.request_line()
    );
    let next = reply.next_link()?.ok_or_else(|| {
        anyhow!(
            "{}: no Link header with rel=\"next\" although more tags remain",
            reply.request_line()
        )
    })?;
    let reply = ctx.reg.call_url(Method::GET, next).send().await?;
    let tags = page_tags(ctx, &reply).context("following the Link header")?;
    ensure!(
        tags.first() == Some(&second),
        "{}: next page starts {:?}, expected {second:?}",
        reply.request_line(),
        tags.first()
    );
    Ok(())
}

/// `?n=1&last=<first>`: exactly the second tag.
async fn tags_page_last(ctx: &Ctx) -> Result<()> {
    let (first, second) = first_two(ctx).await?;
    let reply = ctx
        .reg
        .call(Method::GET, &Ctx::path(&ctx.repo, "tags/list"))
        .query("n", "1")
        .query("last", &first)
        .send()
        .await?;
    let tags = page_tags(ctx, &reply)?;
    ensure!(
        tags == [second.clone()],
        "{}: tags {tags:?}, expected [{second:?}]",
        reply.request_line()
    );
    Ok(())
}

/// The catalog lists the main repository: pages of 100 are walked, by `Link` when the
/// registry sends one and by `last` otherwise, until it turns up.
async fn catalog(ctx: &Ctx) -> Result<()> {
    ctx.ensure_image().await?;
    const PAGE: usize = 100;
    let mut url = ctx.reg.resolve("/v2/_catalog")?;
    url.query_pairs_mut().append_pair("n", &PAGE.to_string());
    let mut seen = 0;
    for _ in 0..MAX_PAGES {
        let reply = ctx.reg.call_url(Method::GET, url.clone()).send().await?;
        reply.expect_status(200)?;
        let json = reply.json()?;
        let repos: Vec<&str> = array_field(&json, "repositories")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            repos.len() <= PAGE,
            "{}: {} repositories on a page of n={PAGE}",
            reply.request_line(),
            repos.len()
        );
        if repos.contains(&ctx.repo.as_str()) {
            return Ok(());
        }
        seen += repos.len();
        url = match (reply.next_link()?, repos.last()) {
            (Some(next), _) => next,
            (None, Some(last)) if repos.len() == PAGE => {
                let mut u = ctx.reg.resolve("/v2/_catalog")?;
                u.query_pairs_mut()
                    .append_pair("n", &PAGE.to_string())
                    .append_pair("last", last);
                u
            }
            _ => bail!(
                "{:?} not in the catalog ({seen} repositories listed, last page: {})",
                ctx.repo,
                reply.excerpt()
            ),
        };
    }
    bail!("{:?} not found in {MAX_PAGES} catalog pages", ctx.repo)
}

/// A repository nothing was pushed to: `404 NAME_UNKNOWN`.
async fn tags_unknown_repo(ctx: &Ctx) -> Result<()> {
    let reply = ctx
        .reg
        .call(Method::GET, &Ctx::path(&ctx.missing_repo, "tags/list"))
        .send()
        .await?;
    reply.expect_error(404, "NAME_UNKNOWN")?;
    Ok(())
}
