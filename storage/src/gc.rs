//! Online garbage collection: no read-only window, safe beside concurrent pushes, on every
//! replica at once.
//!
//! # What is garbage
//! - A manifest is **kept** if a tag names it, if it is pinned (by hand or by a node that runs
//!   it: `meta/pins.rs`), if it was pushed or referenced within the grace
//!   period, if a kept index lists it, or if its subject is a kept manifest (referrers live as
//!   long as what they refer to). Every other manifest is swept.
//! - A repository's link to a blob is kept if a kept manifest of the repository references the
//!   blob, or if it was made or referenced within the grace period (a push uploads its blobs
//!   before its manifest); otherwise swept (`DELETE /v2/<name>/blobs/<digest>` removes a link at
//!   once).
//! - A blob (row and bytes) is kept while any repository links it, while an open upload session
//!   is being committed as it, or within the grace period; otherwise swept.
//! - Bytes under `blobs/` without a row, upload sessions without a chunk for longer than the
//!   upload expiry, and staged data of sessions that no longer exist are swept too.
//!
//! # How
//! 1. Expire upload sessions (row first, then their staged parts).
//! 2. Mark: read the reference graph in one snapshot ([`Meta::gc_graph`]) and compute in memory
//!    what is kept ([`plan`]).
//! 3. Sweep manifests (owners before what they own: an index before its children, a subject
//!    before its referrers, so one pass takes a whole unreferenced tree), then links, then
//!    blobs; each in its own short transaction that re-checks, under the row's lock, that
//!    nothing references the item (see `meta/gc.rs` for why that is race-free). An item a
//!    writer referenced after the mark is kept and counted in [`GcReport::kept_on_recheck`].
//! 4. Sweep bytes without a row, then staged data of unknown sessions and, on a local store,
//!    object_store's staging files of interrupted writes.
//!
//! The grace period also covers clock skew between replicas: timestamps are each writer's
//! clock.

use crate::blob::BlobStore;
use crate::error::Result;
use crate::meta::{GcGraph, Meta};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

/// What a run may do.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced content younger than this is kept: it may belong to a push in progress.
    pub grace: Duration,
    /// Upload sessions without a chunk for this long are purged.
    pub upload_expiry: Duration,
    /// Report what would be deleted; delete nothing.
    pub dry_run: bool,
}

/// What a run deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Manifests deleted.
    pub manifests: u64,
    /// Repository links to blobs deleted.
    pub links: u64,
    /// Blobs deleted (row and bytes).
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Stored blobs that had no row, deleted.
    pub orphan_blobs: u64,
    /// Their bytes.
    pub orphan_bytes: u64,
    /// Upload sessions expired.
    pub uploads_expired: u64,
    /// Staged objects and files removed (expired and unknown sessions, interrupted writes).
    pub staged_removed: u64,
    /// Candidates of the mark that a concurrent writer referenced before the sweep reached
    /// them: kept.
    pub kept_on_recheck: u64,
    /// Items whose deletion failed (logged; retried next run).
    pub errors: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        write!(
            f,
            "{verb} {} manifests, {} blob links, {} blobs ({} bytes), {} unrecorded blobs ({} bytes), \
             {} expired upload sessions, {} staged objects; {} kept on re-check, {} errors",
            self.manifests,
            self.links,
            self.blobs,
            self.blob_bytes,
            self.orphan_blobs,
            self.orphan_bytes,
            self.uploads_expired,
            self.staged_removed,
            self.kept_on_recheck,
            self.errors
        )
    }
}

/// The mark's verdict: what to sweep, in a safe order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (repository id, digest, size) of manifests to delete, owners first.
    pub manifests: Vec<(i64, String, u64)>,
    /// (repository id, digest) of links to delete.
    pub links: Vec<(i64, String)>,
    /// (digest, size) of blobs to delete.
    pub blobs: Vec<(String, u64)>,
}

/// Marks from the roots (tags, young manifests) and returns everything unmarked and older
/// than `cutoff` (unix milliseconds).
pub fn plan(g: &GcGraph, cutoff: i64) -> Plan {
    type Key = (i64, String);
    let manifests: HashMap<Key, &crate::meta::GcManifest> =
        g.manifests.iter().map(|m| ((m.repo_id, m.digest.clone()), m)).collect();
    // Who owns whom: an index owns its child manifests, a subject its referrers.
    let mut owned: HashMap<Key, Vec<Key>> = HashMap::new();
    for (repo, parent, child) in &g.refs {
        let c = (*repo, child.clone());
        if manifests.contains_key(&c) {
            owned.entry((*repo, parent.clone())).or_default().push(c);
        }
    }
    for m in &g.manifests {
        if let Some(s) = &m.subject {
            owned
                .entry((m.repo_id, s.clone()))
                .or_default()
                .push((m.repo_id, m.digest.clone()));
        }
    }
    let mut kept: HashSet<Key> = HashSet::new();
    let mut queue: VecDeque<Key> = g
        .tags
        .iter()
        .cloned()
        .chain(
            g.manifests
                .iter()
                .filter(|m| m.last_referenced >= cutoff || g.pins.contains(&m.digest))
                .map(|m| (m.repo_id, m.digest.clone())),
        )
        .filter(|k| manifests.contains_key(k))
        .collect();
    while let Some(k) = queue.pop_front() {
        if !kept.insert(k.clone()) {
            continue;
        }
        for c in owned.get(&k).into_iter().flatten() {
            if !kept.contains(c) {
                queue.push_back(c.clone());
            }
        }
    }
    // Candidates in topological order (Kahn): a manifest comes after every candidate owning
    // it, since its re-check requires its owners gone. Ties by key, for a stable order.
    let candidates: HashSet<&Key> = manifests.keys().filter(|k| !kept.contains(*k)).collect();
    let mut indegree: HashMap<&Key, usize> = candidates.iter().map(|k| (*k, 0)).collect();
    for (owner, list) in &owned {
        if candidates.contains(owner) {
            for c in list {
                if let Some(d) = indegree.get_mut(c) {
                    *d += 1;
                }
            }
        }
    }
    let mut ready: Vec<&Key> = indegree.iter().filter(|(_, d)| **d == 0).map(|(k, _)| *k).collect();
    ready.sort();
    let mut ready: VecDeque<&Key> = ready.into();
    let mut order: Vec<&Key> = Vec::new();
    while let Some(k) = ready.pop_front() {
        order.push(k);
        let mut next: Vec<&Key> = Vec::new();
        for c in owned.get(k).into_iter().flatten() {
            if let Some(d) = indegree.get_mut(c) {
                *d -= 1;
                if *d == 0 {
                    next.push(c);
                }
            }
        }
        next.sort();
        ready.extend(next);
    }
    // A cycle cannot come from content addressing; if stored data has one anyway, its members
    // go last and their re-checks keep them.
    if order.len() < candidates.len() {
        let placed: HashSet<&Key> = order.iter().copied().collect();
        let mut rest: Vec<&Key> = candidates.iter().copied().filter(|k| !placed.contains(k)).collect();
        rest.sort();
        order.extend(rest);
    }
    let plan_manifests = order
        .into_iter()
        .filter_map(|k| manifests.get(k).map(|m| (m.repo_id, m.digest.clone(), m.size)))
        .collect();

    let mut referenced: HashSet<Key> = HashSet::new();
    for (repo, parent, child) in &g.refs {
        if kept.contains(&(*repo, parent.clone())) {
            referenced.insert((*repo, child.clone()));
        }
    }
    let mut links = Vec::new();
    let mut linked: HashSet<&str> = HashSet::new();
    for l in &g.links {
        if l.last_referenced >= cutoff || referenced.contains(&(l.repo_id, l.digest.clone())) {
            linked.insert(&l.digest);
        } else {
            links.push((l.repo_id, l.digest.clone()));
        }
    }
    links.sort();
    let uploading: HashSet<&str> = g.uploads.iter().filter_map(|(_, d)| d.as_deref()).collect();
    let mut blobs: Vec<(String, u64)> = g
        .blobs
        .iter()
        .filter(|b| {
            b.last_referenced < cutoff && !linked.contains(b.digest.as_str()) && !uploading.contains(b.digest.as_str())
        })
        .map(|b| (b.digest.clone(), b.size))
        .collect();
    blobs.sort();
    Plan {
        manifests: plan_manifests,
        links,
        blobs,
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs one collection over `meta` and `blobs`.
#[tracing::instrument(name = "gc", skip_all, fields(dry_run = opts.dry_run, grace_secs = opts.grace.as_secs()))]
pub async fn collect(meta: &Meta, blobs: &BlobStore, opts: &GcOptions) -> Result<GcReport> {
    let mut r = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    // The cutoff is taken before the mark reads anything: whatever is referenced after it
    // carries a later timestamp, so a slow run only ever keeps more.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let cutoff = millis(now).saturating_sub(millis(opts.grace));

    // 1. Expired upload sessions (their `updated_at` is in seconds).
    let upload_cutoff = (millis(now).saturating_sub(millis(opts.upload_expiry))) / 1000;
    for u in meta.expired_uploads(upload_cutoff).await? {
        if opts.dry_run {
            r.uploads_expired += 1;
            r.staged_removed += u.parts.len() as u64;
            continue;
        }
        match meta.expire_upload(&u.id, upload_cutoff).await {
            Ok(true) => {
                r.uploads_expired += 1;
                if let Some(m) = &u.multipart {
                    let key = object_store::path::Path::from(m.key.as_str());
                    if let Err(e) = blobs.mp_abort(&key, &m.id).await {
                        r.errors += 1;
                        tracing::warn!(upload = %u.id, error = %e, "aborting an expired session's multipart upload failed");
                    }
                }
                match blobs.delete_upload_dir(&u.id).await {
                    Ok(n) => r.staged_removed += n,
                    Err(e) => {
                        r.errors += 1;
                        tracing::warn!(upload = %u.id, error = %e, "removing an expired session's parts failed");
                    }
                }
            }
            Ok(false) => r.kept_on_recheck += 1,
            Err(e) => {
                r.errors += 1;
                tracing::warn!(upload = %u.id, error = %e, "expiring an upload session failed");
            }
        }
    }

    // 2. Mark.
    let graph = meta.gc_graph().await?;
    let plan = plan(&graph, cutoff);
    let repo = |id: i64| graph.repos.get(&id).map(String::as_str).unwrap_or("?");

    // 3. Sweep manifests, links, blobs.
    for (repo_id, digest, _) in &plan.manifests {
        if opts.dry_run {
            r.manifests += 1;
            continue;
        }
        match meta.gc_delete_manifest(*repo_id, digest, cutoff).await {
            Ok(true) => {
                r.manifests += 1;
                tracing::debug!(repo = repo(*repo_id), %digest, "manifest collected");
            }
            Ok(false) => r.kept_on_recheck += 1,
            Err(e) => {
                r.errors += 1;
                tracing::warn!(repo = repo(*repo_id), %digest, error = %e, "collecting a manifest failed");
            }
        }
    }
    for (repo_id, digest) in &plan.links {
        if opts.dry_run {
            r.links += 1;
            continue;
        }
        match meta.gc_delete_link(*repo_id, digest, cutoff).await {
            Ok(true) => r.links += 1,
            Ok(false) => r.kept_on_recheck += 1,
            Err(e) => {
                r.errors += 1;
                tracing::warn!(repo = repo(*repo_id), %digest, error = %e, "collecting a blob link failed");
            }
        }
    }
    let known: HashSet<&str> = graph.blobs.iter().map(|b| b.digest.as_str()).collect();
    // In a dry run the links above are still there, so the blobs they would free are
    // predicted by the plan rather than re-checked.
    for (digest, size) in &plan.blobs {
        if opts.dry_run {
            r.blobs += 1;
            r.blob_bytes += size;
            continue;
        }
        let Ok(d) = digest.parse::<berth_oci::Digest>() else {
            r.errors += 1;
            tracing::warn!(%digest, "stored blob digest is invalid: left alone");
            continue;
        };
        match meta.gc_delete_blob(digest, cutoff, || blobs.delete(&d)).await {
            Ok(true) => {
                r.blobs += 1;
                r.blob_bytes += size;
                tracing::debug!(%digest, size, "blob collected");
            }
            Ok(false) => r.kept_on_recheck += 1,
            Err(e) => {
                r.errors += 1;
                tracing::warn!(%digest, error = %e, "collecting a blob failed");
            }
        }
    }

    // 4. Bytes without a row. Listed after the sweep, so the bytes it deleted are not seen.
    for (d, size) in blobs.list_blobs().await? {
        let digest = d.to_string();
        if known.contains(digest.as_str()) {
            continue;
        }
        if opts.dry_run {
            // Recorded since the mark (an upload being committed) is not garbage.
            if !meta.blob_recorded(&digest).await? {
                r.orphan_blobs += 1;
                r.orphan_bytes += size;
            }
            continue;
        }
        match meta.gc_delete_orphan(&digest, || blobs.delete(&d)).await {
            Ok(true) => {
                r.orphan_blobs += 1;
                r.orphan_bytes += size;
                tracing::info!(%digest, size, "deleted stored bytes that had no blob row");
            }
            Ok(false) => {}
            Err(e) => {
                r.errors += 1;
                tracing::warn!(%digest, error = %e, "collecting unrecorded bytes failed");
            }
        }
    }

    // 5. Staged data of sessions that no longer exist. Listed before each session is looked up:
    //    a session's row is written before any of its parts, so a part listed here whose
    //    session is gone afterwards is garbage.
    for session in blobs.list_upload_sessions().await? {
        match meta.upload_exists(&session).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                r.errors += 1;
                tracing::warn!(upload = %session, error = %e, "looking up an upload session failed");
                continue;
            }
        }
        if opts.dry_run {
            r.staged_removed += 1;
            continue;
        }
        match blobs.delete_upload_dir(&session).await {
            Ok(n) => r.staged_removed += n.max(1),
            Err(e) => {
                r.errors += 1;
                tracing::warn!(upload = %session, error = %e, "removing staged data failed");
            }
        }
    }
    // Staging files of interrupted multipart writes under blobs/ (local stores): in flight
    // only while an upload is being committed as that digest.
    let old = SystemTime::now()
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for (path, digest, modified) in blobs.local_blob_staging().await? {
        if modified > old {
            continue;
        }
        if let Some(d) = &digest {
            match meta.upload_committing(&d.to_string()).await {
                Ok(false) => {}
                Ok(true) => continue,
                Err(e) => {
                    r.errors += 1;
                    tracing::warn!(path = %path.display(), error = %e, "looking up an upload failed");
                    continue;
                }
            }
        }
        if opts.dry_run {
            r.staged_removed += 1;
            continue;
        }
        match blobs.remove_local_file(path.clone()).await {
            Ok(()) => r.staged_removed += 1,
            Err(e) => {
                r.errors += 1;
                tracing::warn!(path = %path.display(), error = %e, "removing a staging file failed");
            }
        }
    }
    tracing::info!(report = %r, "garbage collection done");
    Ok(r)
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
