//! Scrub: re-hash stored blobs and check every manifest's references, so damage that no
//! request has met yet (a torn write from before a crash, a disk that rots, a hand-edited
//! store) is found and reported, one line per problem.
//!
//! Checks, for the repositories selected:
//! - every blob row has bytes, of the recorded size, hashing to its digest;
//! - every manifest parses, and each blob and child manifest it references is in the
//!   repository with the size its descriptor declares;
//! - every tag points at a manifest of its repository.
//!
//! Repair quarantines damaged blobs (torn, wrong size, missing): their bytes are moved to
//! `quarantine/` (bytes first), then their rows are forgotten, so the digest answers 404 and a
//! client pushes it again. A blob whose bytes hash to its digest is never touched.

use crate::blob::BlobStore;
use crate::error::Result;
use crate::hash::{Budget, HashThread};
use crate::meta::Meta;
use berth_oci::{manifest, Digest};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

/// What to scrub.
#[derive(Default)]
pub struct ScrubOptions<'a> {
    /// Quarantine damaged blobs.
    pub repair: bool,
    /// Only repositories this accepts (and the blobs they link); all when `None`.
    pub repos: Option<&'a (dyn Fn(&str) -> bool + Sync)>,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The bytes hash to another digest.
    TornBlob {
        /// The blob.
        digest: Digest,
        /// What its bytes hash to.
        actual: Digest,
        /// Repositories that link it.
        repos: Vec<String>,
    },
    /// A blob row with no bytes.
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// Repositories that link it.
        repos: Vec<String>,
    },
    /// Stored bytes of another size than recorded.
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Size in the database.
        recorded: u64,
        /// Size of the stored bytes.
        stored: u64,
        /// Repositories that link it.
        repos: Vec<String>,
    },
    /// A manifest references content its repository does not have.
    MissingReference {
        /// Repository.
        repo: String,
        /// The manifest.
        manifest: String,
        /// What it references.
        child: Digest,
    },
    /// A descriptor's size differs from the referenced content's.
    DescriptorSize {
        /// Repository.
        repo: String,
        /// The manifest.
        manifest: String,
        /// What it references.
        child: Digest,
        /// Size the descriptor declares.
        declared: u64,
        /// Size of the content.
        actual: u64,
    },
    /// A stored manifest does not parse.
    BadManifest {
        /// Repository.
        repo: String,
        /// The manifest.
        manifest: String,
        /// Why.
        message: String,
    },
    /// A tag points at no manifest of its repository.
    DanglingTag {
        /// Repository.
        repo: String,
        /// The tag.
        tag: String,
        /// The digest it names.
        manifest: String,
    },
}

impl Problem {
    /// A short name for the kind of problem (for JSON and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::TornBlob { .. } => "torn-blob",
            Problem::MissingBlob { .. } => "missing-blob",
            Problem::SizeMismatch { .. } => "size-mismatch",
            Problem::MissingReference { .. } => "missing-reference",
            Problem::DescriptorSize { .. } => "descriptor-size",
            Problem::BadManifest { .. } => "bad-manifest",
            Problem::DanglingTag { .. } => "dangling-tag",
        }
    }

    /// The damaged blob a repair would quarantine, if this is one.
    fn damaged_blob(&self) -> Option<&Digest> {
        match self {
            Problem::TornBlob { digest, .. }
            | Problem::MissingBlob { digest, .. }
            | Problem::SizeMismatch { digest, .. } => Some(digest),
            _ => None,
        }
    }

    /// The problem as JSON, for `scrub --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = match self {
            Problem::TornBlob { digest, actual, repos } => {
                serde_json::json!({ "digest": digest.to_string(), "actual": actual.to_string(), "repositories": repos })
            }
            Problem::MissingBlob { digest, repos } => {
                serde_json::json!({ "digest": digest.to_string(), "repositories": repos })
            }
            Problem::SizeMismatch {
                digest,
                recorded,
                stored,
                repos,
            } => serde_json::json!({
                "digest": digest.to_string(), "recorded": recorded, "stored": stored, "repositories": repos
            }),
            Problem::MissingReference { repo, manifest, child } => serde_json::json!({
                "repository": repo, "manifest": manifest, "digest": child.to_string()
            }),
            Problem::DescriptorSize {
                repo,
                manifest,
                child,
                declared,
                actual,
            } => serde_json::json!({
                "repository": repo, "manifest": manifest, "digest": child.to_string(),
                "declared": declared, "actual": actual
            }),
            Problem::BadManifest {
                repo,
                manifest,
                message,
            } => serde_json::json!({
                "repository": repo, "manifest": manifest, "message": message
            }),
            Problem::DanglingTag { repo, tag, manifest } => serde_json::json!({
                "repository": repo, "tag": tag, "manifest": manifest
            }),
        };
        v["problem"] = self.kind().into();
        v
    }
}

fn repos_list(repos: &[String]) -> String {
    if repos.is_empty() {
        "no repository".to_owned()
    } else {
        repos.join(", ")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::TornBlob { digest, actual, repos } => write!(
                f,
                "torn blob {digest} (in {}): its bytes hash to {actual}",
                repos_list(repos)
            ),
            Problem::MissingBlob { digest, repos } => {
                write!(f, "missing blob {digest} (in {}): recorded, but no bytes stored", repos_list(repos))
            }
            Problem::SizeMismatch { digest, recorded, stored, repos } => write!(
                f,
                "size mismatch {digest} (in {}): {stored} bytes stored, {recorded} recorded",
                repos_list(repos)
            ),
            Problem::MissingReference { repo, manifest, child } => {
                write!(f, "missing reference {child} in {repo}: manifest {manifest} needs it")
            }
            Problem::DescriptorSize { repo, manifest, child, declared, actual } => write!(
                f,
                "size mismatch {child} in {repo}: manifest {manifest} declares {declared} bytes, the content has {actual}"
            ),
            Problem::BadManifest { repo, manifest, message } => {
                write!(f, "bad manifest {manifest} in {repo}: {message}")
            }
            Problem::DanglingTag { repo, tag, manifest } => {
                write!(f, "dangling tag {repo}:{tag}: names manifest {manifest}, which {repo} does not have")
            }
        }
    }
}

/// How far a scrub is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Blobs checked.
    pub blobs_done: u64,
    /// Blobs to check.
    pub blobs_total: u64,
    /// Bytes hashed.
    pub bytes_done: u64,
    /// Bytes to hash.
    pub bytes_total: u64,
}

/// What a scrub found.
#[derive(Debug, Clone, Default)]
pub struct ScrubReport {
    /// Blobs re-hashed.
    pub blobs: u64,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// Manifests checked.
    pub manifests: u64,
    /// Tags checked.
    pub tags: u64,
    /// Problems, in the order found.
    pub problems: Vec<Problem>,
    /// Damaged blobs quarantined (with `repair`).
    pub quarantined: Vec<Digest>,
}

impl fmt::Display for ScrubReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scrub: {} blobs ({} bytes) re-hashed, {} manifests and {} tags checked: {} problems",
            self.blobs,
            self.bytes,
            self.manifests,
            self.tags,
            self.problems.len()
        )?;
        if !self.quarantined.is_empty() {
            write!(f, ", {} blobs quarantined", self.quarantined.len())?;
        }
        Ok(())
    }
}

/// Re-hashes one blob's stored bytes.
async fn hash_blob(blobs: &BlobStore, budget: &Budget, digest: &Digest) -> Result<(Digest, u64)> {
    let read = blobs.get(digest, None).await?;
    let mut s = read.stream;
    let mut h = HashThread::start(Sha256::new());
    let mut n = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| crate::Error::Corrupt(format!("reading blob {digest}: {e}")))?;
        n += chunk.len() as u64;
        let held = h.take(budget, chunk.len()).await?;
        h.feed(chunk, held).await?;
    }
    let h = h.finish().await?;
    Ok((Digest::from_sha256(&h.finalize()), n))
}

/// Scrubs the store, calling `progress` after each blob; with `repair`, quarantines damaged
/// blobs. Problems are returned, not raised: only failures to read the database or the store
/// are errors.
pub async fn scrub(
    meta: &Meta,
    blobs: &BlobStore,
    opts: &ScrubOptions<'_>,
    mut progress: impl FnMut(Progress),
) -> Result<ScrubReport> {
    let graph = meta.gc_graph().await?;
    let wanted = |name: &str| opts.repos.is_none_or(|f| f(name));
    let repo_names: HashMap<i64, &str> = graph.repos.iter().map(|(id, n)| (*id, n.as_str())).collect();
    let selected: BTreeSet<(&str, i64)> = graph
        .repos
        .iter()
        .filter(|(_, n)| wanted(n))
        .map(|(id, n)| (n.as_str(), *id))
        .collect();
    let mut linked: HashMap<&str, Vec<String>> = HashMap::new();
    let mut links_of: HashMap<i64, HashSet<&str>> = HashMap::new();
    for l in &graph.links {
        if let Some(name) = repo_names.get(&l.repo_id) {
            linked.entry(l.digest.as_str()).or_default().push((*name).to_owned());
        }
        links_of.entry(l.repo_id).or_default().insert(l.digest.as_str());
    }
    for v in linked.values_mut() {
        v.sort();
    }
    let sizes: HashMap<&str, u64> = graph.blobs.iter().map(|b| (b.digest.as_str(), b.size)).collect();
    let to_check: Vec<(&str, u64)> = graph
        .blobs
        .iter()
        .filter(|b| {
            opts.repos.is_none()
                || linked
                    .get(b.digest.as_str())
                    .is_some_and(|rs| rs.iter().any(|r| wanted(r)))
        })
        .map(|b| (b.digest.as_str(), b.size))
        .collect();
    let mut report = ScrubReport::default();
    let mut p = Progress {
        blobs_total: to_check.len() as u64,
        bytes_total: to_check.iter().map(|(_, s)| s).sum(),
        ..Progress::default()
    };
    progress(p);
    let budget = Budget::new(16 * 1024 * 1024);
    for (d, recorded) in &to_check {
        let Ok(digest) = d.parse::<Digest>() else {
            tracing::warn!(digest = d, "blob row with an unparsable digest: skipped");
            continue;
        };
        let repos = linked.get(d).cloned().unwrap_or_default();
        let problem = match blobs.stat(&digest).await? {
            None => Some(Problem::MissingBlob {
                digest: digest.clone(),
                repos,
            }),
            Some(stored) if stored != *recorded => Some(Problem::SizeMismatch {
                digest: digest.clone(),
                recorded: *recorded,
                stored,
                repos,
            }),
            Some(_) => {
                let (actual, n) = hash_blob(blobs, &budget, &digest).await?;
                report.bytes += n;
                p.bytes_done += n;
                (actual != digest).then(|| Problem::TornBlob {
                    digest: digest.clone(),
                    actual,
                    repos,
                })
            }
        };
        report.blobs += 1;
        p.blobs_done += 1;
        progress(p);
        if let Some(problem) = problem {
            report.problems.push(problem);
        }
    }

    let manifests_of: HashMap<i64, HashMap<&str, u64>> = graph.manifests.iter().fold(HashMap::new(), |mut m, x| {
        m.entry(x.repo_id).or_default().insert(x.digest.as_str(), x.size);
        m
    });
    let empty = HashMap::new();
    let no_links = HashSet::new();
    for (repo, repo_id) in &selected {
        let manifests = manifests_of.get(repo_id).unwrap_or(&empty);
        let links = links_of.get(repo_id).unwrap_or(&no_links);
        for (digest, media_type, content) in meta.scrub_manifests(*repo_id).await? {
            report.manifests += 1;
            let parsed = match manifest::parse(&content, Some(&media_type)) {
                Ok(p) => p,
                Err(e) => {
                    report.problems.push(Problem::BadManifest {
                        repo: (*repo).to_owned(),
                        manifest: digest.clone(),
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let refs = parsed
                .blobs
                .iter()
                .map(|d| {
                    (
                        d,
                        links
                            .contains(d.digest.to_string().as_str())
                            .then(|| sizes.get(d.digest.to_string().as_str()).copied())
                            .flatten(),
                    )
                })
                .chain(
                    parsed
                        .manifests
                        .iter()
                        .map(|d| (d, manifests.get(d.digest.to_string().as_str()).copied())),
                );
            for (desc, actual) in refs {
                match actual {
                    None => report.problems.push(Problem::MissingReference {
                        repo: (*repo).to_owned(),
                        manifest: digest.clone(),
                        child: desc.digest.clone(),
                    }),
                    Some(actual) if actual != desc.size => report.problems.push(Problem::DescriptorSize {
                        repo: (*repo).to_owned(),
                        manifest: digest.clone(),
                        child: desc.digest.clone(),
                        declared: desc.size,
                        actual,
                    }),
                    Some(_) => {}
                }
            }
        }
        for (tag, target) in meta.scrub_tags(*repo_id).await? {
            report.tags += 1;
            if !manifests.contains_key(target.as_str()) {
                report.problems.push(Problem::DanglingTag {
                    repo: (*repo).to_owned(),
                    tag,
                    manifest: target,
                });
            }
        }
    }

    if opts.repair {
        let damaged: Vec<Digest> = report
            .problems
            .iter()
            .filter_map(Problem::damaged_blob)
            .cloned()
            .collect();
        for digest in damaged {
            // Bytes first: a row without bytes is reported again; bytes without a row are
            // swept by the collector.
            if blobs.stat(&digest).await?.is_some() {
                let to = blobs.quarantine(&digest).await?;
                tracing::warn!(%digest, to = %to, "damaged blob quarantined");
            }
            meta.quarantine_blob(&digest.to_string()).await?;
            report.quarantined.push(digest);
        }
    }
    Ok(report)
}
