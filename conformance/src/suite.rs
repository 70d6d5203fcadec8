//! The run: its context, the set-up steps checks share, and the order of the groups.
//!
//! # Order and dependencies
//! `pull/base` runs first; then `push`, `pull`, `discovery`, `referrers`, and `management`
//! last, because it deletes. A check never relies on an earlier *check* having passed: what it
//! needs it asks for through an `ensure_*` step, which pushes the content the simplest way
//! (monolithic `POST` + `PUT`) unless this run already pushed it. So `--only pull` works, and a
//! broken chunked upload fails the chunked checks rather than every pull check after them.
//! When a set-up step itself fails, the check fails with a reason starting `set-up:`.

use crate::fixtures::{Blob, Fixtures, Manifest};
use crate::http::{Credentials, Registry, Reply};
use crate::report::Report;
use crate::{discovery, management, pull, push, referrers};
use anyhow::{Context as _, Result};
use reqwest::{Method, Url};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A group of checks, named like the prefix of its checks' names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Pulling manifests and blobs (and the `/v2/` base check).
    Pull,
    /// Pushing blobs (monolithic, chunked, streamed, mounted) and manifests.
    Push,
    /// Listing tags and repositories.
    Discovery,
    /// Deleting tags, manifests and blobs.
    Management,
    /// The referrers API.
    Referrers,
}

/// What to run, against what.
pub struct Options {
    /// The registry's base URL.
    pub url: Url,
    /// Credentials, answered to `Basic` and token-service challenges.
    pub credentials: Option<Credentials>,
    /// Repositories are created under this prefix.
    pub namespace: String,
    /// Run only these groups; all when empty.
    pub only: Vec<Group>,
}

/// Everything a check can reach: the registry, the run's names and content, and what this run
/// has already pushed.
pub struct Ctx {
    /// The registry under test.
    pub reg: Registry,
    /// This run's main repository.
    pub repo: String,
    /// A second repository: the source of cross-repository mounts.
    pub source_repo: String,
    /// A repository that never gets anything pushed to it.
    pub missing_repo: String,
    /// A syntactically invalid repository name (upper case), under the namespace.
    pub bad_repo: String,
    /// The content of this run.
    pub fx: Fixtures,
    /// `(repository, digest-or-tag)` pairs this run has pushed successfully.
    pushed: Mutex<HashSet<(String, String)>>,
}

/// The `Accept` header of manifest requests: every type the runner pushes. Registries may
/// refuse to serve a manifest whose type the client did not say it accepts.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The tags `ensure_image` creates.
pub const IMAGE_TAGS: [&str; 2] = ["alpha", "beta"];
/// The tag of the index.
pub const INDEX_TAG: &str = "index";

impl Ctx {
    /// A context for a run with this id and seed.
    pub fn new(reg: Registry, namespace: &str, run_id: &str, seed: u64) -> Self {
        Ctx {
            reg,
            repo: format!("{namespace}/main-{run_id}"),
            source_repo: format!("{namespace}/source-{run_id}"),
            missing_repo: format!("{namespace}/missing-{run_id}"),
            bad_repo: format!("{namespace}/BAD-{run_id}"),
            fx: Fixtures::new(run_id, seed),
            pushed: Mutex::new(HashSet::new()),
        }
    }

    /// Remembers that `key` (a digest or a tag) is now in `repo`.
    pub fn mark(&self, repo: &str, key: &str) {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        pushed.insert((repo.to_owned(), key.to_owned()));
    }

    /// Forgets `key` in `repo` (after a deletion).
    pub fn unmark(&self, repo: &str, key: &str) {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        pushed.remove(&(repo.to_owned(), key.to_owned()));
    }

    fn is_marked(&self, repo: &str, key: &str) -> bool {
        let pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        pushed.contains(&(repo.to_owned(), key.to_owned()))
    }

    /// `/v2/<repo>/<rest>`.
    pub fn path(repo: &str, rest: &str) -> String {
        format!("/v2/{repo}/{rest}")
    }

    /// `POST /v2/<repo>/blobs/uploads/` with `Content-Length: 0`: opens an upload session.
    pub async fn start_upload(&self, repo: &str) -> Result<Reply> {
        self.reg
            .call(Method::POST, &Self::path(repo, "blobs/uploads/"))
            .header("Content-Length", "0")
            .send()
            .await
    }

    /// Monolithic push (`POST`, then `PUT ?digest=` with the whole blob); returns the `PUT`'s
    /// reply, whatever its status.
    pub async fn post_put(&self, repo: &str, blob: &Blob) -> Result<Reply> {
        let post = self.start_upload(repo).await?;
        post.expect_status(202)?;
        let location = post.location()?;
        self.reg
            .call_url(Method::PUT, location)
            .query("digest", &blob.digest.to_string())
            .header("Content-Type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the manifest's media type.
    pub async fn put_manifest(&self, repo: &str, reference: &str, m: &Manifest) -> Result<Reply> {
        self.reg
            .call(Method::PUT, &Self::path(repo, &format!("manifests/{reference}")))
            .header("Content-Type", m.media_type)
            .body(m.bytes.clone())
            .send()
            .await
    }

    /// `GET`/`HEAD` of a manifest, accepting every type the runner pushes.
    pub async fn fetch_manifest(&self, method: Method, repo: &str, reference: &str) -> Result<Reply> {
        self.reg
            .call(method, &Self::path(repo, &format!("manifests/{reference}")))
            .header("Accept", ACCEPT_MANIFESTS)
            .send()
            .await
    }

    /// Makes sure `blob` is in `repo`.
    pub async fn ensure_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        let key = blob.digest.to_string();
        if self.is_marked(repo, &key) {
            return Ok(());
        }
        self.post_put(repo, blob)
            .await
            .and_then(|r| r.expect_status(201).map(|_| ()))
            .with_context(|| format!("set-up: pushing blob {key} to {repo}"))?;
        self.mark(repo, &key);
        Ok(())
    }

    /// Makes sure `m` is in `repo` under `reference` (a tag, or its digest).
    pub async fn ensure_manifest(&self, repo: &str, reference: &str, m: &Manifest) -> Result<()> {
        if self.is_marked(repo, reference) {
            return Ok(());
        }
        self.put_manifest(repo, reference, m)
            .await
            .and_then(|r| r.expect_status(201).map(|_| ()))
            .with_context(|| format!("set-up: pushing manifest {} as {repo}:{reference}", m.digest))?;
        self.mark(repo, reference);
        self.mark(repo, &m.digest.to_string());
        Ok(())
    }

    /// Makes sure both image manifests are pushed, with their blobs: `image` as `alpha` and
    /// `beta`, `image2` by digest.
    pub async fn ensure_image_manifests(&self) -> Result<()> {
        let repo = &self.repo;
        let fx = &self.fx;
        for blob in [&fx.config, &fx.layer, &fx.chunked] {
            self.ensure_blob(repo, blob).await?;
        }
        for tag in IMAGE_TAGS {
            self.ensure_manifest(repo, tag, &fx.image).await?;
        }
        self.ensure_manifest(repo, &fx.image2.digest.to_string(), &fx.image2)
            .await
    }

    /// Makes sure the whole image is pushed: both manifests and the index, tagged `index`.
    pub async fn ensure_image(&self) -> Result<()> {
        self.ensure_image_manifests().await?;
        self.ensure_manifest(&self.repo, INDEX_TAG, &self.fx.index).await
    }
}

/// A short identifier unique to this run: repository names and the content seed derive from
/// it, so reruns against the same registry never collide.
fn run_identity() -> (String, u64) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
    // Lower-case hex: valid in a repository-name component.
    (format!("{:012x}", seed & 0xffff_ffff_ffff), seed)
}

/// Runs the selected groups, printing each check's line; returns the report for the tally.
pub async fn run(opts: Options) -> Result<Report> {
    let reg = Registry::new(opts.url, opts.credentials)?;
    let (run_id, seed) = run_identity();
    let ctx = Ctx::new(reg, &opts.namespace, &run_id, seed);
    let selected = |g: Group| opts.only.is_empty() || opts.only.contains(&g);
    let mut report = Report::default();

    if selected(Group::Pull) {
        report.record("pull/base", pull::base(&ctx).await);
    }
    if selected(Group::Push) {
        push::run(&ctx, &mut report).await;
    }
    if selected(Group::Pull) {
        pull::run(&ctx, &mut report).await;
    }
    if selected(Group::Discovery) {
        discovery::run(&ctx, &mut report).await;
    }
    if selected(Group::Referrers) {
        referrers::run(&ctx, &mut report).await;
    }
    if selected(Group::Management) {
        management::run(&ctx, &mut report).await;
    }
    Ok(report)
}
